//! Headroom before a failure: if a node died now, would each of its tasks
//! find a place on the others?
//!
//! Pure: the real scheduler ([`crate::scheduler::Scheduler`]) on a copy of
//! the applied state with that node removed, placing the node's tasks in
//! the order the leader would once they are pending again (oldest first),
//! each placement charged before the next, with the cluster's default
//! strategy. A task that fits nowhere gets the scheduler's own reason.
//! Served by `GET /v1/cluster/headroom` and `goat plan node-loss [NODE]`.

use goat_storage::fsm::ClusterState;
use goat_storage::model::{DesiredStatus, Strategy, TaskId};
use serde::{Deserialize, Serialize};

use crate::scheduler::Scheduler;

/// The plan for one node's loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeLoss {
    /// The node assumed lost.
    pub node: String,
    /// It was chosen as the busiest (no node was named).
    pub busiest: bool,
    /// Its tasks that would be placed again (desired `run`).
    pub tasks: usize,
    /// How many of them would find a place.
    pub placed: usize,
    /// Every one of them would.
    pub fits: bool,
    /// Nodes left that take tasks (ready, not drained, engine healthy).
    pub nodes_left: usize,
    /// Each task: where it would go, or why it could not.
    pub moves: Vec<Move>,
}

/// One task of the lost node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Move {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub name: String,
    /// The node it would be placed on.
    pub to: Option<String>,
    /// Why no node would take it (the scheduler's reason).
    pub reason: Option<String>,
}

/// Why there is no plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlan {
    /// The named node is not in the cluster.
    UnknownNode(String),
    /// No node runs any task: nothing to lose.
    NoNodes,
}

/// The node with the most tasks to place again (ties: the first name).
pub fn busiest(state: &ClusterState) -> Option<String> {
    state
        .nodes
        .keys()
        .map(|name| (live_tasks(state, name), name))
        .max_by(|(a, na), (b, nb)| a.cmp(b).then_with(|| nb.cmp(na)))
        .map(|(_, name)| name.clone())
}

fn live_tasks(state: &ClusterState, node: &str) -> usize {
    state.tasks_on(node).filter(|t| t.desired == DesiredStatus::Run).count()
}

/// If `node` (or the busiest node) died now: where each of its tasks would
/// go, with the cluster's default strategy `default`.
pub fn node_loss(state: &ClusterState, node: Option<&str>, default: Strategy) -> Result<NodeLoss, NoPlan> {
    let (node, busiest_chosen) = match node {
        Some(name) if state.nodes.contains_key(name) => (name.to_string(), false),
        Some(name) => return Err(NoPlan::UnknownNode(name.to_string())),
        None => (busiest(state).ok_or(NoPlan::NoNodes)?, true),
    };
    let mut tasks: Vec<_> = state.tasks_on(&node).filter(|t| t.desired == DesiredStatus::Run).collect();
    tasks.sort_by_key(|t| (t.created_at, t.id));
    let mut without = state.clone();
    without.nodes.remove(&node);
    let mut scheduler = Scheduler::new(&without, |name| name != node);
    let nodes_left = without.nodes.values().filter(|n| n.status == goat_storage::model::NodeStatus::Ready).count();
    let moves: Vec<Move> = tasks
        .iter()
        .map(|task| {
            let placed = if scheduler.has_nodes() {
                scheduler.place(&task.spec, default)
            } else {
                Err(crate::scheduler::NO_NODES.to_string())
            };
            let (to, reason) = match placed {
                Ok(to) => (Some(to), None),
                Err(reason) => (None, Some(reason)),
            };
            Move { task: task.id, name: task.spec.name.clone(), to, reason }
        })
        .collect();
    let placed = moves.iter().filter(|m| m.to.is_some()).count();
    Ok(NodeLoss {
        node,
        busiest: busiest_chosen,
        tasks: moves.len(),
        placed,
        fits: placed == moves.len(),
        nodes_left,
        moves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::fsm::Command;
    use goat_storage::model::{EngineStatus, Resources, TaskSpec};
    use uuid::Uuid;

    const GB: u64 = 1 << 30;

    fn spec(name: &str, cpu: f64) -> TaskSpec {
        let mut s: TaskSpec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        s.name = name.to_string();
        s.cpu = cpu;
        s.memory = 64 << 20;
        s
    }

    fn cluster(nodes: &[(&str, f64)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, cpu) in nodes {
            s.apply(&Command::UpsertNode {
                name: name.to_string(),
                capacity: Resources { cpu: *cpu, memory: 8 * GB, disk: 100 * GB },
                engine: EngineStatus { healthy: true, error: None },
                at: 0,
            });
        }
        s
    }

    fn run(s: &mut ClusterState, n: u128, name: &str, cpu: f64, on: &str) -> Uuid {
        let id = Uuid::from_u128(n);
        s.apply(&Command::SubmitTask { task_id: id, spec: spec(name, cpu), at: n as u64 });
        let placed = s.apply(&Command::PlaceTask { task_id: id, node: on.into(), at: n as u64 });
        assert!(!placed.is_refused(), "placing {name} on {on}");
        id
    }

    #[test]
    fn a_node_whose_big_task_fits_nowhere_else_names_it_and_why() {
        // big (3 cores) runs on a 4-core node; the others have 2 cores.
        let mut s = cluster(&[("big-node", 4.0), ("small-a", 2.0), ("small-b", 2.0)]);
        let big = run(&mut s, 1, "big", 3.0, "big-node");
        run(&mut s, 2, "little", 0.5, "big-node");
        run(&mut s, 3, "other", 1.0, "small-a");
        let plan = node_loss(&s, Some("big-node"), Strategy::BinPack).unwrap();
        assert_eq!((plan.tasks, plan.placed, plan.fits, plan.nodes_left), (2, 1, false, 2));
        let stuck = plan.moves.iter().find(|m| m.to.is_none()).expect("a task without a place");
        assert_eq!((stuck.task, stuck.name.as_str()), (big, "big"));
        let reason = stuck.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("cpu"), "the scheduler's reason names the resource: {reason}");
        // little fits: bin-pack puts it on the fuller small node.
        let little = plan.moves.iter().find(|m| m.name == "little").unwrap();
        assert_eq!(little.to.as_deref(), Some("small-a"));
        // The busiest node is big-node (two tasks).
        let busiest = node_loss(&s, None, Strategy::BinPack).unwrap();
        assert!(busiest.busiest);
        assert_eq!(busiest.node, "big-node");
        // Losing small-a: its task fits on big-node's or small-b's room.
        let plan = node_loss(&s, Some("small-a"), Strategy::BinPack).unwrap();
        assert!(plan.fits, "{plan:?}");
    }

    #[test]
    fn placements_of_one_loss_are_charged_in_turn() {
        // Two 1.5-core tasks; the one survivor has 2 cores: only the first
        // (oldest) fits.
        let mut s = cluster(&[("a", 4.0), ("b", 2.0)]);
        run(&mut s, 1, "first", 1.5, "a");
        run(&mut s, 2, "second", 1.5, "a");
        let plan = node_loss(&s, Some("a"), Strategy::Spread).unwrap();
        assert_eq!(plan.moves[0].to.as_deref(), Some("b"));
        assert_eq!(plan.moves[1].to, None);
        assert_eq!(plan.placed, 1);
    }

    #[test]
    fn stopped_tasks_and_unknown_nodes() {
        let mut s = cluster(&[("a", 4.0)]);
        let id = run(&mut s, 1, "gone", 1.0, "a");
        s.apply(&Command::StopTask { task_id: id, at: 5 });
        let plan = node_loss(&s, Some("a"), Strategy::BinPack).unwrap();
        assert_eq!(plan.tasks, 0, "a task asked to stop is not placed again");
        assert!(plan.fits);
        assert_eq!(node_loss(&s, Some("zz"), Strategy::BinPack), Err(NoPlan::UnknownNode("zz".into())));
        assert_eq!(node_loss(&ClusterState::default(), None, Strategy::BinPack), Err(NoPlan::NoNodes));
        // The only node lost: nothing is left to take a task.
        let mut s = cluster(&[("only", 4.0)]);
        run(&mut s, 1, "t", 1.0, "only");
        let plan = node_loss(&s, None, Strategy::BinPack).unwrap();
        assert_eq!(plan.nodes_left, 0);
        assert_eq!(plan.moves[0].reason.as_deref(), Some(crate::scheduler::NO_NODES));
    }
}
