//! Where tasks go: Nomad-style feasibility filters, then ranking.
//!
//! Pure functions over a snapshot of the cluster state: no I/O, no clock.
//! The leader's placement loop builds a [`Scheduler`] from the applied state
//! and the set of nodes it currently believes alive, asks it for a node per
//! pending task, and commits the answers through Raft. Placements made in one
//! round are charged to their node at once, so a round never overcommits.
//!
//! Ranking is chosen per task (`strategy`) or per cluster (`goat manager
//! --scheduler`): bin-pack (the fullest node that still fits), spread (the
//! emptiest), or E-PVM (the node where the task raises the cluster's cost
//! the least). Ties go to the alphabetically first node, so every manager
//! would choose alike.
//!
//! E-PVM scores a node by the marginal cost of the task on it:
//! `Σ_r LIEB^(load_r after) − LIEB^(load_r before)` over cpu, memory and disk,
//! where `load_r` is the reserved fraction of the node's resource. In the
//! book's version the cpu terms cancel out (it used the same cpu load before
//! and after), so cpu never counted; here the task's own cpu is part of the
//! "after" load.

use std::collections::{BTreeMap, BTreeSet};

use goat_storage::fsm::ClusterState;
use goat_storage::model::{DesiredStatus, NodeStatus, Resources, Strategy, TaskSpec};

/// What is left on one node.
#[derive(Debug, Clone)]
struct Room {
    capacity: Resources,
    free: Resources,
    host_ports: BTreeSet<u16>,
    /// Tasks placed on it (live ones, and this round's).
    tasks: usize,
    /// Live copies of each service on the node.
    copies: BTreeMap<String, u32>,
}

/// Tasks one node holds, at most; placement refuses more with a reason.
///
/// Everything a node holds travels in messages that grow with its task
/// count: the assignment list a heartbeat or long poll answers with (each
/// task's spec), and a worker's report on each task. Workers send only
/// changed reports, at most 256 KiB per heartbeat (`goat_worker::delta`),
/// so no heartbeat fails however many tasks a node holds; this limit keeps
/// the rest bounded too: a full report of 1,024 tasks (from a worker that
/// does not send deltas) fits in the heartbeat route's 4 MiB limit with
/// up to 4 KiB per report, and a list of 1,024 typical specs (a few
/// hundred bytes each) is well under a MiB. Kubernetes' default is 110
/// pods per node.
pub const MAX_TASKS_PER_NODE: usize = 1_024;

/// A placement round over a fixed view of the cluster.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Eligible nodes, sorted by name.
    rooms: Vec<(String, Room)>,
    /// Where the next bounded search starts (see [`CANDIDATES`]).
    cursor: usize,
    /// The most copies of each service one node may hold (its
    /// `max_per_node`, else `ceil(replicas / eligible nodes)`).
    spread: BTreeMap<String, u32>,
}

/// In a cluster larger than this, a task is ranked among the first
/// `CANDIDATES` feasible nodes found from a rotating start, not among all of
/// them (as Nomad limits its search): placement stays O(candidates) per task
/// on 10,000 nodes, and the rotation spreads consecutive searches.
pub const CANDIDATES: usize = 32;

/// Why a task fits nowhere, in words an operator can act on.
pub type Unplaceable = String;

/// The reason given when no node can take any task.
pub const NO_NODES: &str = "no ready node with a healthy engine";

const GIB: f64 = (1u64 << 30) as f64;

impl Scheduler {
    /// Builds a round from `state`, considering only nodes for which
    /// `eligible(name)` holds (alive as far as the leader knows), that are
    /// ready and whose engine is healthy.
    pub fn new(state: &ClusterState, eligible: impl Fn(&str) -> bool) -> Scheduler {
        let mut rooms = BTreeMap::new();
        for node in state.nodes.values() {
            if node.status != NodeStatus::Ready || node.drain || !node.engine_healthy || !eligible(&node.name) {
                continue;
            }
            rooms.insert(
                node.name.clone(),
                Room {
                    capacity: node.capacity,
                    free: node.capacity,
                    host_ports: BTreeSet::new(),
                    tasks: 0,
                    copies: BTreeMap::new(),
                },
            );
        }
        for (name, room) in rooms.iter_mut() {
            for task in state.tasks_on(name) {
                let service = task.service.as_ref().filter(|_| task.desired == DesiredStatus::Run);
                charge(room, &task.spec, service.map(|s| s.name.as_str()));
            }
        }
        let nodes = rooms.len().max(1) as u64;
        let spread = state
            .services
            .values()
            .map(|s| {
                let even = u64::from(s.replicas).div_ceil(nodes).max(1) as u32;
                (s.name.clone(), s.spread.max_per_node.unwrap_or(even))
            })
            .collect();
        Scheduler { rooms: rooms.into_iter().collect(), cursor: 0, spread }
    }

    /// Like [`Scheduler::place_avoiding`], for a copy of `service` (if any):
    /// keeps to the service's spread.
    pub fn place_copy(
        &mut self,
        spec: &TaskSpec,
        default: Strategy,
        avoid: Option<&str>,
        service: Option<&str>,
    ) -> Result<String, Unplaceable> {
        let limit = service.and_then(|s| self.spread.get(s).map(|l| (s, *l)));
        if avoid.is_some() {
            if let Some(i) = self.best(spec, default, avoid, limit) {
                return Ok(self.take(i, spec, service));
            }
        }
        match self.best(spec, default, None, limit) {
            Some(i) => Ok(self.take(i, spec, service)),
            None => Err(self.explain(spec, limit)),
        }
    }

    /// Whether any node can take anything at all.
    pub fn has_nodes(&self) -> bool {
        !self.rooms.is_empty()
    }

    /// Like [`Scheduler::place`], but keeps off `avoid` (the node a task
    /// failed on) whenever another node fits.
    pub fn place_avoiding(
        &mut self,
        spec: &TaskSpec,
        default: Strategy,
        avoid: Option<&str>,
    ) -> Result<String, Unplaceable> {
        self.place_copy(spec, default, avoid, None)
    }

    /// Picks a node for `spec` and charges it, or says why none fits. The
    /// task's own strategy wins over `default`.
    pub fn place(&mut self, spec: &TaskSpec, default: Strategy) -> Result<String, Unplaceable> {
        self.place_copy(spec, default, None, None)
    }

    /// The index of the best feasible room, skipping `avoid`.
    fn best(
        &mut self,
        spec: &TaskSpec,
        default: Strategy,
        avoid: Option<&str>,
        spread: Option<(&str, u32)>,
    ) -> Option<usize> {
        let strategy = spec.strategy.unwrap_or(default);
        let n = self.rooms.len();
        let (start, limit) = if n > CANDIDATES {
            self.cursor = (self.cursor + 1) % n;
            (self.cursor, CANDIDATES)
        } else {
            (0, n)
        };
        let rooms = &self.rooms;
        (start..n)
            .chain(0..start)
            .filter(|i| {
                Some(rooms[*i].0.as_str()) != avoid && fits(&rooms[*i].1, spec) && spread_ok(&rooms[*i].1, spread)
            })
            .take(limit)
            .map(|i| (i, score(strategy, &rooms[i].1, spec)))
            // Highest score; on a tie the alphabetically first name.
            .max_by(|(a, sa), (b, sb)| sa.total_cmp(sb).then_with(|| rooms[*b].0.cmp(&rooms[*a].0)))
            .map(|(i, _)| i)
    }

    /// Charges room `i` with `spec` and returns its name.
    fn take(&mut self, i: usize, spec: &TaskSpec, service: Option<&str>) -> String {
        let (name, room) = &mut self.rooms[i];
        charge(room, spec, service);
        name.clone()
    }

    /// The first resource that no node has enough of, or the spread that
    /// no node with room satisfies.
    fn explain(&self, spec: &TaskSpec, limit: Option<(&str, u32)>) -> Unplaceable {
        if self.rooms.is_empty() {
            return NO_NODES.into();
        }
        if self.rooms.iter().all(|(_, r)| r.tasks >= MAX_TASKS_PER_NODE) {
            return format!("every ready node holds its maximum of {MAX_TASKS_PER_NODE} tasks");
        }
        if let Some((_, max)) = limit {
            if self.rooms.iter().any(|(_, r)| fits(r, spec)) {
                return format!("no other node satisfies max_per_node {max}");
            }
        }
        let largest = |f: fn(&Room) -> f64| self.rooms.iter().map(|(_, r)| f(r)).fold(0.0, f64::max);
        let mem = largest(|r| r.free.memory as f64);
        if (spec.memory as f64) > mem {
            return format!(
                "no node has {:.1} GiB free memory (largest: {:.1} GiB)",
                spec.memory as f64 / GIB,
                mem / GIB
            );
        }
        let cpu = largest(|r| r.free.cpu);
        if spec.cpu > cpu + 1e-9 {
            return format!("no node has {:.2} free cpu cores (largest: {:.2})", spec.cpu, cpu);
        }
        let disk = largest(|r| r.free.disk as f64);
        if (spec.disk as f64) > disk {
            return format!("no node has {:.1} GiB free disk (largest: {:.1} GiB)", spec.disk as f64 / GIB, disk / GIB);
        }
        let ports: Vec<String> = spec.ports.iter().filter_map(|p| p.host).map(|p| p.to_string()).collect();
        if !ports.is_empty() {
            return format!("no node has host port(s) {} free", ports.join(", "));
        }
        "no node has enough cpu, memory and disk at once".into()
    }
}

/// The E-PVM base: a resource's cost grows as LIEB^load.
const LIEB: f64 = 1.539_600_717_839_002;

/// Fraction of `capacity` in use when `free` is left (0 for an empty resource).
fn load(capacity: f64, free: f64) -> f64 {
    if capacity <= 0.0 {
        0.0
    } else {
        ((capacity - free) / capacity).clamp(0.0, 1.0)
    }
}

/// (before, after) load of each resource of `room` if `spec` is placed there.
fn loads(room: &Room, spec: &TaskSpec) -> [(f64, f64); 3] {
    let (cap, free) = (room.capacity, room.free);
    [
        (load(cap.cpu, free.cpu), load(cap.cpu, free.cpu - spec.cpu)),
        (load(cap.memory as f64, free.memory as f64), load(cap.memory as f64, free.memory as f64 - spec.memory as f64)),
        (load(cap.disk as f64, free.disk as f64), load(cap.disk as f64, free.disk as f64 - spec.disk as f64)),
    ]
}

/// How much `strategy` likes placing `spec` on `room`: higher is better.
fn score(strategy: Strategy, room: &Room, spec: &TaskSpec) -> f64 {
    let loads = loads(room, spec);
    let mean_after = loads.iter().map(|(_, after)| after).sum::<f64>() / loads.len() as f64;
    match strategy {
        Strategy::BinPack => mean_after,
        Strategy::Spread => -mean_after,
        Strategy::Epvm => -loads.iter().map(|(before, after)| LIEB.powf(*after) - LIEB.powf(*before)).sum::<f64>(),
    }
}

fn fits(room: &Room, spec: &TaskSpec) -> bool {
    spec.cpu <= room.free.cpu + 1e-9
        && spec.memory <= room.free.memory
        && spec.disk <= room.free.disk
        && spec.ports.iter().filter_map(|p| p.host).all(|port| !room.host_ports.contains(&port))
        && room.capacity.cpu > 0.0
        && room.tasks < MAX_TASKS_PER_NODE
}

/// Whether `room` may take one more copy of the service of `limit`.
fn spread_ok(room: &Room, limit: Option<(&str, u32)>) -> bool {
    limit.is_none_or(|(service, max)| room.copies.get(service).copied().unwrap_or(0) < max)
}

fn charge(room: &mut Room, spec: &TaskSpec, service: Option<&str>) {
    if let Some(service) = service {
        *room.copies.entry(service.to_string()).or_default() += 1;
    }
    room.free.cpu -= spec.cpu;
    room.free.memory = room.free.memory.saturating_sub(spec.memory);
    room.free.disk = room.free.disk.saturating_sub(spec.disk);
    room.host_ports.extend(spec.ports.iter().filter_map(|p| p.host));
    room.tasks += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::fsm::Command;
    use goat_storage::model::EngineStatus;
    use uuid::Uuid;

    const GB: u64 = 1 << 30;

    fn spec(cpu: f64, memory: u64, host_port: Option<u16>) -> TaskSpec {
        let mut s: TaskSpec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        s.cpu = cpu;
        s.memory = memory;
        if let Some(p) = host_port {
            s.ports = vec![goat_storage::model::PortMapping { container: 80, host: Some(p) }];
        }
        s
    }

    fn cluster(nodes: &[(&str, f64, u64)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, cpu, memory) in nodes {
            s.apply(&Command::UpsertNode {
                name: name.to_string(),
                capacity: Resources { cpu: *cpu, memory: *memory, disk: 100 * GB },
                engine: EngineStatus { healthy: true, error: None },
                at: 0,
            });
        }
        s
    }

    impl Scheduler {
        fn place_default(&mut self, spec: &TaskSpec) -> Result<String, Unplaceable> {
            self.place(spec, Strategy::BinPack)
        }
    }

    #[test]
    fn a_node_takes_at_most_max_tasks_per_node() {
        let s = cluster(&[("a", 1024.0, 1 << 40), ("b", 1024.0, 1 << 40)]);
        let mut sched = Scheduler::new(&s, |_| true);
        let tiny = spec(0.001, 0, None);
        let mut on_a = 0;
        for _ in 0..2 * MAX_TASKS_PER_NODE {
            if sched.place(&tiny, Strategy::BinPack).unwrap() == "a" {
                on_a += 1;
            }
        }
        assert_eq!(on_a, MAX_TASKS_PER_NODE, "bin-packing fills a up to the limit, then b");
        let why = sched.place(&tiny, Strategy::BinPack).unwrap_err();
        assert!(why.contains("maximum of 1024 tasks"), "{why}");
    }

    #[test]
    fn spread_picks_the_emptiest_node_and_alternates() {
        let s = cluster(&[("a", 2.0, 4 * GB), ("b", 2.0, 4 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        let placed: Vec<String> =
            (0..4).map(|_| sched.place(&spec(0.5, GB, None), Strategy::Spread).unwrap()).collect();
        assert_eq!(placed, ["a", "b", "a", "b"]);
        // Bin-pack on the same start fills one node first.
        let mut sched = Scheduler::new(&s, |_| true);
        let placed: Vec<String> =
            (0..4).map(|_| sched.place(&spec(0.5, GB, None), Strategy::BinPack).unwrap()).collect();
        assert_eq!(placed, ["a", "a", "a", "a"]);
    }

    #[test]
    fn epvm_counts_cpu() {
        // Same memory everywhere; a is busy on cpu, b is not. With the book's
        // defect (cpu terms cancelling) both would tie and a would win by name.
        let mut s = cluster(&[("a", 4.0, 8 * GB), ("b", 4.0, 8 * GB)]);
        let id = Uuid::from_u128(9);
        s.apply(&Command::SubmitTask { task_id: id, spec: spec(3.0, GB, None), at: 1 });
        s.apply(&Command::PlaceTask { task_id: id, node: "a".into(), at: 1 });
        let mut sched = Scheduler::new(&s, |_| true);
        let mut on_b = spec(0.5, GB, None);
        on_b.memory = 0;
        assert_eq!(sched.place(&on_b, Strategy::Epvm).unwrap(), "b");
    }

    #[test]
    fn epvm_prefers_the_node_where_cost_rises_least() {
        let s = cluster(&[("big", 8.0, 16 * GB), ("small", 2.0, 2 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        assert_eq!(sched.place(&spec(1.0, GB, None), Strategy::Epvm).unwrap(), "big");
    }

    #[test]
    fn a_task_s_own_strategy_wins_over_the_default() {
        let s = cluster(&[("a", 2.0, 4 * GB), ("b", 2.0, 4 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        assert_eq!(sched.place(&spec(0.5, GB, None), Strategy::BinPack).unwrap(), "a");
        let mut spread = spec(0.5, GB, None);
        spread.strategy = Some(Strategy::Spread);
        assert_eq!(sched.place(&spread, Strategy::BinPack).unwrap(), "b");
    }

    #[test]
    fn every_strategy_breaks_ties_by_name_and_handles_empty_clusters() {
        for strategy in [Strategy::BinPack, Strategy::Spread, Strategy::Epvm] {
            let s = cluster(&[("c", 2.0, GB), ("a", 2.0, GB), ("b", 2.0, GB)]);
            assert_eq!(Scheduler::new(&s, |_| true).place(&spec(0.1, 0, None), strategy).unwrap(), "a");
            let empty = ClusterState::default();
            assert_eq!(Scheduler::new(&empty, |_| true).place(&spec(0.1, 0, None), strategy).unwrap_err(), NO_NODES);
        }
    }

    #[test]
    fn a_failed_node_is_avoided_while_another_fits() {
        let s = cluster(&[("a", 2.0, 4 * GB), ("b", 2.0, GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        assert_eq!(sched.place_avoiding(&spec(0.5, GB, None), Strategy::Spread, Some("a")).unwrap(), "b");
        // b is full now: a is better than nothing.
        assert_eq!(sched.place_avoiding(&spec(0.5, GB, None), Strategy::Spread, Some("a")).unwrap(), "a");
        assert_eq!(sched.place_avoiding(&spec(0.1, 0, None), Strategy::Spread, None).unwrap(), "a");
    }

    #[test]
    fn large_clusters_rank_a_bounded_sample_and_still_fill_up() {
        let names: Vec<String> = (0..200).map(|i| format!("n{i:03}")).collect();
        let nodes: Vec<(&str, f64, u64)> = names.iter().map(|n| (n.as_str(), 1.0, GB)).collect();
        let s = cluster(&nodes);
        let mut sched = Scheduler::new(&s, |_| true);
        // 200 nodes × 4 tasks of a quarter node: exactly full, nothing left out.
        let mut placed = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..800 {
            *placed.entry(sched.place(&spec(0.25, GB / 4, None), Strategy::Spread).unwrap()).or_default() += 1;
        }
        assert_eq!(placed.len(), 200);
        assert!(placed.values().all(|n| *n == 4));
        assert!(sched.place(&spec(0.25, GB / 4, None), Strategy::Spread).is_err());
    }

    #[test]
    fn an_empty_cluster_places_nothing() {
        let mut sched = Scheduler::new(&ClusterState::default(), |_| true);
        assert_eq!(sched.place_default(&spec(0.1, 0, None)).unwrap_err(), "no ready node with a healthy engine");
    }

    #[test]
    fn bin_packs_and_never_overcommits() {
        let s = cluster(&[("a", 2.0, 4 * GB), ("b", 2.0, 2 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        // b is fuller after placement: it wins while it fits.
        assert_eq!(sched.place_default(&spec(0.5, GB, None)).unwrap(), "b");
        assert_eq!(sched.place_default(&spec(0.5, GB, None)).unwrap(), "b");
        assert_eq!(sched.place_default(&spec(0.5, GB, None)).unwrap(), "a");
        assert_eq!(sched.place_default(&spec(0.5, 3 * GB, None)).unwrap(), "a");
        let err = sched.place_default(&spec(0.5, GB, None)).unwrap_err();
        assert!(err.contains("memory"), "{err}");
    }

    #[test]
    fn ties_go_to_the_first_name() {
        let s = cluster(&[("b", 2.0, GB), ("a", 2.0, GB)]);
        assert_eq!(Scheduler::new(&s, |_| true).place_default(&spec(0.1, 0, None)).unwrap(), "a");
    }

    #[test]
    fn reasons_name_the_short_resource() {
        let s = cluster(&[("a", 2.0, 4 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        let err = sched.place_default(&spec(0.1, 64 * GB, None)).unwrap_err();
        assert_eq!(err, "no node has 64.0 GiB free memory (largest: 4.0 GiB)");
        let err = sched.place_default(&spec(8.0, GB, None)).unwrap_err();
        assert!(err.contains("cpu"), "{err}");
    }

    #[test]
    fn host_ports_conflict() {
        let s = cluster(&[("a", 4.0, 4 * GB)]);
        let mut sched = Scheduler::new(&s, |_| true);
        assert!(sched.place_default(&spec(0.1, 0, Some(7777))).is_ok());
        let err = sched.place_default(&spec(0.1, 0, Some(7777))).unwrap_err();
        assert!(err.contains("7777"), "{err}");
        assert!(sched.place_default(&spec(0.1, 0, Some(7778))).is_ok());
    }

    #[test]
    fn skips_ineligible_down_draining_and_unhealthy_nodes() {
        let mut s = cluster(&[("a", 2.0, GB), ("b", 2.0, GB), ("c", 2.0, GB), ("d", 2.0, GB)]);
        s.apply(&Command::SetNodeStatus { name: "b".into(), status: NodeStatus::Down, at: 1 });
        s.apply(&Command::SetNodeStatus { name: "c".into(), status: NodeStatus::Draining, at: 1 });
        s.apply(&Command::UpsertNode {
            name: "d".into(),
            capacity: Resources { cpu: 2.0, memory: GB, disk: GB },
            engine: EngineStatus { healthy: false, error: Some("down".into()) },
            at: 1,
        });
        let mut sched = Scheduler::new(&s, |n| n != "a");
        assert!(sched.place_default(&spec(0.1, 0, None)).is_err());
        // The drained node goes down and comes back: still drained.
        s.apply(&Command::SetNodeStatus { name: "c".into(), status: NodeStatus::Down, at: 2 });
        s.apply(&Command::UpsertNode {
            name: "c".into(),
            capacity: Resources { cpu: 2.0, memory: GB, disk: GB },
            engine: EngineStatus { healthy: true, error: None },
            at: 3,
        });
        assert_eq!(s.nodes["c"].status, NodeStatus::Draining);
        let mut sched = Scheduler::new(&s, |n| n != "a");
        assert!(sched.place_default(&spec(0.1, 0, None)).is_err());
        let mut sched = Scheduler::new(&s, |_| true);
        assert_eq!(sched.place_default(&spec(0.1, 0, None)).unwrap(), "a");
    }

    #[test]
    fn existing_placements_are_charged() {
        let mut s = cluster(&[("a", 2.0, 2 * GB)]);
        let id = Uuid::from_u128(1);
        s.apply(&Command::SubmitTask { task_id: id, spec: spec(1.5, GB, None), at: 1 });
        s.apply(&Command::PlaceTask { task_id: id, node: "a".into(), at: 2 });
        let mut sched = Scheduler::new(&s, |_| true);
        assert!(sched.place_default(&spec(1.0, 0, None)).unwrap_err().contains("cpu"));
        assert_eq!(sched.place_default(&spec(0.5, GB, None)).unwrap(), "a");
    }
}
