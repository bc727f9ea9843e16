//! One simulated cluster: managers (real openraft, real log store and state
//! machine on the in-memory engine), simulated workers, a client, the fault
//! schedule, and the invariant checks. Everything runs on one tokio
//! current-thread runtime with paused (virtual) time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use goat::manager::cluster::{wait_for_leader_change, Batcher, LeaderHost, LeaderLease, Leadership, ProposeError};
use goat::manager::error::ApiError;
use goat::manager::nodes::{answer_heartbeat, heartbeat_route, HeartbeatRoute};
use goat_raft::log_store::LogStore;
use goat_raft::state_machine::{SharedState, StateMachine};
use goat_raft::{raft_config, Command, CommandResult, NodeId, Raft};
use goat_storage::digest::state_digest;
use goat_storage::engine::Engine;
use goat_storage::mem_engine::MemEngine;
use goat_storage::model::{
    Assignment, DesiredStatus, EngineStatus, Heartbeat, NodeStatus, Resources, Strategy, TaskReport, TaskSpec,
};
use goat_storage::raft_log::RaftLog;
use goat_storage::state_store::StateStore;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::disk::{NoSyncEngine, SimLog};
use super::net::SimNetwork;

/// Which `LeaderHost` the real leader loops and heartbeat handler run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A host that behaves as the code before the fix of the trustworthy-core
    /// issue, part 1, point 2 (issue 15.2): loop proposals go through
    /// whoever leads now (forwarded when this manager no longer leads),
    /// unfenced; and its leadership is "confirmed" whenever it believes it
    /// leads (no quorum lease), so liveness is judged from the leader's own
    /// view and a leader cut off from its quorum still answers heartbeats.
    Legacy,
    /// The production behaviour (`LeaderHost`'s own methods): loop
    /// proposals are local, bound to the loops' term and fenced
    /// (`Command::Fenced`); rounds and heartbeat answers need the quorum
    /// lease (`LeaderLease`).
    Fixed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Fixed => "fixed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub mode: Mode,
    /// The engine's flush does nothing (acknowledged before durable).
    pub broken_flush: bool,
    pub managers: u64,
    pub workers: usize,
    pub tasks: usize,
    /// Faults start and end within this time; then everything heals.
    pub fault_phase: Duration,
    /// After healing, how long the cluster gets to converge.
    pub settle: Duration,
    pub node_down_after: Duration,
}

impl Options {
    pub fn new(seed: u64, mode: Mode) -> Options {
        Options {
            seed,
            mode,
            broken_flush: false,
            managers: 3,
            workers: 2,
            tasks: 8,
            fault_phase: Duration::from_secs(26),
            settle: Duration::from_secs(12),
            node_down_after: Duration::from_secs(8),
        }
    }
}

/// The sim's client and workers have network addresses too.
const WORKER_BASE: u64 = 100;
const CLIENT: u64 = 200;
/// As `--leader-wait`.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// A node is judged heard-by-a-majority only after this much more than its
/// deadline of uninterrupted hearing (heartbeat period, failover, one
/// retry to another manager).
const TRUTH_SLACK: Duration = Duration::from_secs(3);
const SNAPSHOT_EVERY: u64 = 150;
/// As the worker agent's: how long a heartbeat may take, and the pause
/// before the next one to another manager after a failure.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_HEARTBEAT_GAP: Duration = Duration::from_millis(150);
const EPOCH_MS: u64 = 1_700_000_000_000;

/// What one run found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub seed: u64,
    pub mode: String,
    pub broken_flush: bool,
    pub violations: Vec<String>,
    pub trace_hash: String,
    pub trace_events: u64,
    pub sim_ms: u64,
    pub faults: BTreeMap<String, u64>,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub acked: usize,
    pub nodes_marked_down: u64,
    pub requeued_tasks: usize,
    pub leaders: usize,
    /// Terms in which two managers led (openraft's (term, node) leader ids).
    #[serde(default)]
    pub shared_terms: usize,
    /// The last trace lines (on failure, to see what happened).
    pub tail: Vec<String>,
}

#[derive(Default)]
struct Net {
    /// Directed links cut, per active fault.
    cuts: BTreeMap<u64, Vec<(u64, u64)>>,
    loss: BTreeMap<u64, f64>,
    dup: BTreeMap<u64, f64>,
    extra_delay_ms: BTreeMap<u64, u64>,
}

impl Net {
    fn cut(&self, from: u64, to: u64) -> bool {
        self.cuts.values().any(|c| c.contains(&(from, to)))
    }
    fn loss(&self) -> f64 {
        self.loss.values().copied().fold(0.0, f64::max)
    }
}

/// A running manager (one incarnation: a kill ends it): the `LeaderHost`
/// that the real leader loops (`goat::manager::leader::supervise`) and
/// heartbeat handler (`goat::manager::nodes::answer_heartbeat`) run on.
pub struct Running {
    pub id: NodeId,
    pub raft: Raft,
    pub shared: SharedState,
    batcher: Batcher,
    last_seen: Mutex<HashMap<String, Instant>>,
    lease: LeaderLease,
    placement_kick: Notify,
    stop: CancellationToken,
    world: Arc<World>,
    legacy: bool,
}

impl LeaderHost for Running {
    fn id(&self) -> NodeId {
        self.id
    }
    fn raft(&self) -> &Raft {
        &self.raft
    }
    fn state(&self) -> &SharedState {
        &self.shared
    }
    fn lease(&self) -> &LeaderLease {
        &self.lease
    }
    fn batcher(&self) -> &Batcher {
        &self.batcher
    }
    fn last_seen(&self) -> &Mutex<HashMap<String, Instant>> {
        &self.last_seen
    }
    fn placement_kick(&self) -> &Notify {
        &self.placement_kick
    }
    fn node_down_after(&self) -> Duration {
        self.world.opts.node_down_after
    }
    fn leader_wait(&self) -> Duration {
        LEADER_WAIT
    }
    fn default_strategy(&self) -> Strategy {
        Strategy::BinPack
    }
    fn now_ms(&self) -> u64 {
        self.world.now_ms(self.id)
    }
    fn inline_cpu(&self) -> bool {
        true
    }
    /// `/internal/propose` on `leader`, over the simulated network.
    fn propose_remotely(
        &self,
        leader: NodeId,
        _addr: &str,
        command: &Command,
    ) -> impl Future<Output = Result<CommandResult, ProposeError>> + Send {
        let command = command.clone();
        async move { self.world.forward_propose(self.id, leader, command, true).await.map(|(r, _)| r) }
    }

    fn leadership(&self) -> Leadership {
        if self.legacy {
            // No lease: believing it leads is enough.
            return match leading(&self.raft, self.id) {
                (true, term) => Leadership::Confirmed { term },
                _ => Leadership::Follower,
            };
        }
        self.lease.leadership(&self.raft)
    }

    /// Production's path (the batcher), except that a leader loop's fenced
    /// decision goes to `client_write` directly, so that the simulator
    /// learns the term of the entry that carries it.
    async fn propose_locally(&self, command: Command) -> Result<CommandResult, ProposeError> {
        let Command::Fenced { term: loop_term, .. } = &command else { return self.batcher.propose(command).await };
        let loop_term = *loop_term;
        let (result, entry_term) = write_local(&self.raft, command).await?;
        let applied = !matches!(result, CommandResult::Refused(_));
        self.world.record_loop_commit(self.id, loop_term, entry_term, applied);
        Ok(result)
    }

    async fn propose_as_leader(
        &self,
        term: u64,
        command: Command,
        cancel: &CancellationToken,
    ) -> Result<CommandResult, ProposeError> {
        if !self.legacy {
            return goat::manager::cluster::propose_as_leader(self, term, command, cancel).await;
        }
        // Before the fix: `Manager::propose`, forwarded to whoever
        // leads now, unfenced.
        match self.world.propose_forwarding(self, command).await {
            Ok((result, Some(entry_term))) => {
                self.world.record_loop_commit(self.id, term, entry_term, true);
                Ok(result)
            }
            Ok((result, None)) => Ok(result),
            Err(e) => Err(ProposeError::Failed(e)),
        }
    }
}

struct Slot {
    engine: MemEngine,
    running: Option<Arc<Running>>,
    disk_delay: Duration,
    clock_offset_ms: i64,
}

struct WorkerState {
    frozen: bool,
    /// (task, generation) it runs.
    running: BTreeMap<uuid::Uuid, u64>,
    /// Since when a majority of managers has heard it without a break.
    heard_since: Option<Instant>,
}

#[derive(Default)]
struct Checks {
    violations: Vec<String>,
    /// Who led in each term. openraft 0.9's default leader id is
    /// (term, node): two candidates of one term can both win (a voter may
    /// grant a greater (term, node) after a smaller one), and their log ids
    /// still differ, so that is counted, not a violation.
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
    digests: BTreeMap<u64, (String, NodeId)>,
    placements: BTreeMap<(uuid::Uuid, u64), String>,
    judged_downs: BTreeSet<(String, u64)>,
    acked: BTreeSet<uuid::Uuid>,
    /// The trace's tail when the first violation was seen.
    first_tail: Vec<String>,
}

struct Trace {
    hash: u64,
    events: u64,
    tail: VecDeque<String>,
    /// Every line, when `GOAT_SIM_TRACE_DIR` names a folder (see
    /// [`full_trace_file`]).
    full: Option<std::io::BufWriter<std::fs::File>>,
}

/// `GOAT_SIM_TRACE_DIR=D`: each run writes its whole trace to
/// `D/<seed>-<mode>-<pid>.trace`, so that two runs of one seed whose hashes
/// differ can be compared line by line (`diff`) to find where they part.
fn full_trace_file() -> Option<std::io::BufWriter<std::fs::File>> {
    let dir = std::env::var("GOAT_SIM_TRACE_DIR").ok()?;
    let run = std::env::var("GOAT_SIM_RUN").unwrap_or_else(|_| "here".into()).replace(':', "-");
    let path = std::path::Path::new(&dir).join(format!("{run}-{}.trace", std::process::id()));
    std::fs::File::create(path).ok().map(std::io::BufWriter::new)
}

#[derive(Default)]
struct Stats {
    faults: BTreeMap<String, u64>,
    messages: u64,
    lost: u64,
    duplicated: u64,
    downs: u64,
}

pub struct World {
    pub opts: Options,
    start: Instant,
    rng: Mutex<StdRng>,
    net: Mutex<Net>,
    slots: Mutex<Vec<Slot>>,
    workers: Mutex<Vec<WorkerState>>,
    trace: Mutex<Trace>,
    checks: Mutex<Checks>,
    stats: Mutex<Stats>,
    next_fault: Mutex<u64>,
}

fn leading(raft: &Raft, id: NodeId) -> (bool, u64) {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader && m.current_leader == Some(id), m.current_term)
}

fn leader_of(raft: &Raft) -> Option<NodeId> {
    raft.metrics().borrow().current_leader
}

async fn write_local(raft: &Raft, command: Command) -> Result<(CommandResult, u64), ProposeError> {
    match raft.client_write(command).await {
        Ok(response) => Ok((response.data, response.log_id.leader_id.term)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NotLeader),
        Err(e) => Err(ProposeError::Failed(e.to_string())),
    }
}

impl World {
    /// Must be called inside the paused runtime: `start` is read from its
    /// clock (outside any runtime `tokio::time::Instant::now()` is the real
    /// clock, and every virtual timestamp would be off by a real delay).
    pub fn new(opts: Options) -> Arc<World> {
        assert!(tokio::runtime::Handle::try_current().is_ok(), "World::new outside the simulation's runtime");
        let slots = (0..opts.managers)
            .map(|_| Slot { engine: MemEngine::new(), running: None, disk_delay: Duration::ZERO, clock_offset_ms: 0 })
            .collect();
        let workers = (0..opts.workers)
            .map(|_| WorkerState { frozen: false, running: BTreeMap::new(), heard_since: None })
            .collect();
        Arc::new(World {
            rng: Mutex::new(StdRng::seed_from_u64(opts.seed)),
            opts,
            start: Instant::now(),
            net: Mutex::default(),
            slots: Mutex::new(slots),
            workers: Mutex::new(workers),
            trace: Mutex::new(Trace {
                hash: 0xcbf29ce484222325,
                events: 0,
                tail: VecDeque::new(),
                full: full_trace_file(),
            }),
            checks: Mutex::default(),
            stats: Mutex::default(),
            next_fault: Mutex::new(0),
        })
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Manager `id`'s wall clock (what `clock::now_ms` reads there).
    pub fn now_ms(&self, id: NodeId) -> u64 {
        let offset = self.slots.lock().get(id as usize - 1).map_or(0, |s| s.clock_offset_ms);
        (EPOCH_MS as i64 + self.elapsed_ms() as i64 + offset).max(0) as u64
    }

    fn rand<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.rng.lock())
    }

    pub fn trace(&self, line: impl AsRef<str>) {
        let line = format!("{:>7} {}", self.elapsed_ms(), line.as_ref());
        let mut t = self.trace.lock();
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            t.hash ^= u64::from(b);
            t.hash = t.hash.wrapping_mul(0x100000001b3);
        }
        t.events += 1;
        if let Some(file) = t.full.as_mut() {
            use std::io::Write;
            // Best effort: a debugging aid, not part of the verdict.
            let _ = writeln!(file, "{line}");
        }
        t.tail.push_back(line);
        if t.tail.len() > 400 {
            t.tail.pop_front();
        }
    }

    /// The last trace lines and the virtual time (for the watchdog).
    pub fn tail(&self) -> (u64, Vec<String>) {
        (self.elapsed_ms(), self.trace.lock().tail.iter().cloned().collect())
    }

    fn violation(&self, what: String) {
        self.trace(format!("VIOLATION {what}"));
        let tail: Vec<String> = self.trace.lock().tail.iter().cloned().collect();
        let mut c = self.checks.lock();
        if c.violations.is_empty() {
            c.first_tail = tail;
        }
        if c.violations.len() < 20 {
            c.violations.push(format!("t={}ms {what}", self.elapsed_ms()));
        }
    }

    fn count_fault(&self, kind: &str) {
        *self.stats.lock().faults.entry(kind.to_string()).or_default() += 1;
    }

    pub fn disk_delay(&self, id: NodeId) -> Duration {
        self.slots.lock()[id as usize - 1].disk_delay
    }

    pub fn raft_of(&self, id: NodeId) -> Option<Raft> {
        self.running(id).map(|r| r.raft.clone())
    }

    fn running(&self, id: NodeId) -> Option<Arc<Running>> {
        self.slots.lock().get((id as usize).wrapping_sub(1)).and_then(|s| s.running.clone())
    }

    /// One leg of a message: false if it is lost (cut link, dropped, or the
    /// link was cut while it travelled); otherwise it arrives after a delay.
    pub async fn leg(&self, from: u64, to: u64, kind: &str) -> bool {
        let (cut, loss, extra) = {
            let net = self.net.lock();
            (net.cut(from, to), net.loss(), net.extra_delay_ms.values().copied().max().unwrap_or(0))
        };
        self.stats.lock().messages += 1;
        if cut {
            self.trace(format!("{kind} {from}->{to} cut"));
            return false;
        }
        let (dropped, delay) = self.rand(|r| (r.gen_bool(loss), r.gen_range(1..=3) + r.gen_range(0..=extra)));
        if dropped {
            self.stats.lock().lost += 1;
            self.trace(format!("{kind} {from}->{to} dropped"));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.net.lock().cut(from, to) {
            self.trace(format!("{kind} {from}->{to} cut in flight"));
            return false;
        }
        self.trace(format!("{kind} {from}->{to} +{delay}ms"));
        true
    }

    /// Whether to deliver a request a second time.
    pub fn duplicate(&self) -> bool {
        let p = self.net.lock().dup.values().copied().fold(0.0, f64::max);
        let yes = p > 0.0 && self.rand(|r| r.gen_bool(p));
        if yes {
            self.stats.lock().duplicated += 1;
        }
        yes
    }

    // ---- managers -------------------------------------------------------

    async fn boot(self: &Arc<Self>, id: NodeId) {
        let mem = self.slots.lock()[id as usize - 1].engine.clone();
        let engine: Arc<dyn Engine> = if self.opts.broken_flush { Arc::new(NoSyncEngine(mem)) } else { Arc::new(mem) };
        let log = SimLog {
            inner: LogStore::new(RaftLog::new_inline(engine.clone())).with_inline_io(),
            world: self.clone(),
            id,
        };
        let sm = match StateMachine::open(StateStore::new(engine)) {
            Ok(sm) => sm.with_inline_io(),
            Err(e) => {
                self.violation(format!("manager {id} cannot load its state after a restart: {e}"));
                return;
            }
        };
        let shared = sm.shared();
        // openraft draws one election timeout per Raft instance from
        // `thread_rng` in [min, max); a range of one value makes it the
        // seed's choice instead.
        let timeout =
            self.rand(|r| r.gen_range(goat_raft::ELECTION_TIMEOUT_MS..goat_raft::ELECTION_TIMEOUT_MS * 3 / 2));
        let mut config = raft_config("goat-sim", SNAPSHOT_EVERY, goat_raft::HEARTBEAT_INTERVAL_MS, timeout);
        config.election_timeout_max = config.election_timeout_min + 1;
        let config = Arc::new(config.validate().expect("sim raft config"));
        let network = SimNetwork { world: self.clone(), from: id };
        let raft = match Raft::new(id, config, network, log, sm).await {
            Ok(raft) => raft,
            Err(e) => {
                self.violation(format!("manager {id} cannot start raft: {e}"));
                return;
            }
        };
        self.trace(format!("boot {id} election-timeout {timeout}ms"));
        let running = Arc::new(Running {
            id,
            batcher: Batcher::start(raft.clone()),
            raft,
            shared,
            last_seen: Mutex::default(),
            lease: LeaderLease::new(
                id,
                goat::control::lease::leader_lease(Duration::from_millis(goat_raft::ELECTION_TIMEOUT_MS)),
            ),
            placement_kick: Notify::new(),
            stop: CancellationToken::new(),
            world: self.clone(),
            legacy: self.opts.mode == Mode::Legacy,
        });
        self.slots.lock()[id as usize - 1].running = Some(running.clone());
        tokio::spawn(goat::manager::leader::supervise(running.clone()));
        tokio::spawn(watch_applied(self.clone(), running.clone()));
        tokio::spawn(watch_leaders(self.clone(), running));
        self.refresh_truth();
    }

    async fn kill(self: &Arc<Self>, id: NodeId) {
        let Some(running) = self.slots.lock()[id as usize - 1].running.take() else { return };
        self.refresh_truth();
        running.stop.cancel();
        let _ = running.raft.shutdown().await;
        // Let whatever the dead process had in flight finish failing.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let engine = self.slots.lock()[id as usize - 1].engine.clone();
        let unsynced = engine.unsynced_batches();
        let kept = if self.opts.broken_flush { 0 } else { self.rand(|r| r.gen_range(0..=unsynced)) };
        engine.crash_keeping(kept);
        self.trace(format!("kill {id}: crash kept {kept} of {unsynced} unsynced batches"));
    }

    fn current_leader(&self) -> Option<NodeId> {
        let slots = self.slots.lock();
        slots
            .iter()
            .filter_map(|s| s.running.as_ref())
            .map(|r| {
                let m = r.raft.metrics();
                let m = m.borrow();
                (m.current_term, m.state == ServerState::Leader, r.id)
            })
            .filter(|(_, leads, _)| *leads)
            .max()
            .map(|(_, _, id)| id)
    }

    // ---- ground truth for liveness ------------------------------------------

    /// Recomputes, for every worker, whether a majority of managers hears it
    /// now: it is not frozen, no packet loss is being injected, and some
    /// majority of running managers is connected (both ways) among itself
    /// and to the worker.
    fn refresh_truth(&self) {
        let n = self.opts.managers;
        let up: Vec<u64> = {
            let slots = self.slots.lock();
            (1..=n).filter(|id| slots[*id as usize - 1].running.is_some()).collect()
        };
        let net = self.net.lock();
        let lossy = net.loss() > 0.0;
        let both = |a: u64, b: u64| !net.cut(a, b) && !net.cut(b, a);
        let majority = (n / 2 + 1) as usize;
        let mut workers = self.workers.lock();
        let now = Instant::now();
        for (i, w) in workers.iter_mut().enumerate() {
            let addr = WORKER_BASE + i as u64;
            let heard = !w.frozen
                && !lossy
                && (0u32..(1 << up.len())).any(|mask| {
                    let set: Vec<u64> =
                        up.iter().enumerate().filter(|(j, _)| mask & (1 << j) != 0).map(|(_, m)| *m).collect();
                    set.len() >= majority
                        && set.iter().all(|a| both(*a, addr) && set.iter().all(|b| a == b || both(*a, *b)))
                });
            match (heard, w.heard_since) {
                (true, None) => w.heard_since = Some(now),
                (false, Some(_)) => w.heard_since = None,
                _ => {}
            }
        }
    }

    // ---- invariant checks --------------------------------------------------

    fn check_leader(&self, term: u64, id: NodeId) {
        let others = {
            let mut c = self.checks.lock();
            let set = c.leaders.entry(term).or_default();
            if !set.insert(id) {
                return;
            }
            set.len() > 1
        };
        if others {
            self.trace(format!("second leader {id} in term {term} (leader ids differ: (term, node))"));
        }
    }

    fn check_applied(&self, r: &Running) {
        let (index, digest, placed, downs) = {
            let applied = r.shared.read();
            let index = applied.last_applied.map_or(0, |l| l.index);
            let placed: Vec<(uuid::Uuid, u64, String)> =
                applied.state.tasks.values().filter_map(|t| t.node.clone().map(|n| (t.id, t.generation, n))).collect();
            let downs: Vec<(String, u64)> = applied
                .state
                .nodes
                .values()
                .flat_map(|n| {
                    n.events.iter().filter(|e| e.status == NodeStatus::Down).map(|e| (n.name.clone(), e.index))
                })
                .collect();
            (index, state_digest(&applied.state), placed, downs)
        };
        self.trace(format!("applied {} {index} {}", r.id, &digest[..12]));
        let mut found = Vec::new();
        {
            let mut c = self.checks.lock();
            match c.digests.get(&index) {
                Some((d, other)) if *d != digest => found.push(format!(
                    "applied states differ at index {index}: manager {other} has {d}, manager {} has {digest}",
                    r.id
                )),
                Some(_) => {}
                None => {
                    c.digests.insert(index, (digest, r.id));
                }
            }
            for (task, generation, node) in placed {
                match c.placements.get(&(task, generation)) {
                    Some(n) if *n != node => found.push(format!(
                        "task {task} generation {generation} placed on two nodes: {n} and {node} (manager {})",
                        r.id
                    )),
                    Some(_) => {}
                    None => {
                        c.placements.insert((task, generation), node);
                    }
                }
            }
            let new_downs: Vec<(String, u64)> =
                downs.into_iter().filter(|d| c.judged_downs.insert(d.clone())).collect();
            drop(c);
            let workers = self.workers.lock();
            let now = Instant::now();
            for (name, index) in new_downs {
                self.stats.lock().downs += 1;
                let Some(i) = name.strip_prefix('w').and_then(|n| n.parse::<usize>().ok()) else { continue };
                if let Some(since) = workers.get(i).and_then(|w| w.heard_since) {
                    if now.duration_since(since) >= self.opts.node_down_after + TRUTH_SLACK {
                        found.push(format!(
                            "node {name} marked down (event {index}) while a majority of managers had heard it without a break for {} ms",
                            now.duration_since(since).as_millis()
                        ));
                    }
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// A leader-loop decision of `origin`'s term-`loop_term` loops, carried
    /// by an entry of term `commit_term`, was `applied` (not refused by the
    /// fence): in another term, that is a deposed leader's decision.
    fn record_loop_commit(&self, origin: NodeId, loop_term: u64, commit_term: u64, applied: bool) {
        self.trace(format!(
            "loop-commit from {origin} loop-term {loop_term} log-term {commit_term}{}",
            if applied { "" } else { " refused" }
        ));
        if commit_term != loop_term && applied {
            self.violation(format!(
                "a deposed leader decided: a decision of manager {origin}'s term-{loop_term} loops was committed in term {commit_term}"
            ));
        }
    }

    // ---- proposals -------------------------------------------------------------

    /// The legacy host's loop proposals: `Manager::propose`'s retry loop
    /// (`cluster::propose_through_leader`, which API writes run for real), but
    /// straight to `client_write` and forwarded unbatched, to learn the term
    /// of the entry that carries an unfenced decision.
    async fn propose_forwarding(
        self: &Arc<Self>,
        r: &Running,
        command: Command,
    ) -> Result<(CommandResult, Option<u64>), String> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last = String::from("no leader");
        loop {
            let attempt = match leader_of(&r.raft) {
                Some(leader) if leader == r.id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let local = async { write_local(&r.raft, command.clone()).await.map(|(res, t)| (res, Some(t))) };
                    match tokio::time::timeout(left, local).await {
                        Ok(result) => result,
                        Err(_) => Err(ProposeError::Failed("this leader may have lost its quorum".into())),
                    }
                }
                Some(leader) => self.forward_propose(r.id, leader, command.clone(), false).await,
                None => Err(ProposeError::NotLeader),
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(ProposeError::NotLeader) => {}
                Err(ProposeError::Failed(e)) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!("no leader accepted the write: {last}"));
            }
            wait_for_leader_change(&r.raft, Duration::from_millis(50)).await;
        }
    }

    /// `/internal/propose` on `to`.
    async fn forward_propose(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        command: Command,
        batched: bool,
    ) -> Result<(CommandResult, Option<u64>), ProposeError> {
        let call = async {
            if !self.leg(from, to, "propose").await {
                return std::future::pending().await;
            }
            let Some(target) = self.running(to) else { return Err(ProposeError::Failed(format!("{to} is down"))) };
            let result = if batched {
                target.batcher.propose(command).await.map(|res| (res, None))
            } else {
                write_local(&target.raft, command).await.map(|(res, t)| (res, Some(t)))
            };
            if !self.leg(to, from, "propose-reply").await {
                return std::future::pending().await;
            }
            result
        };
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap_or_else(|_| Err(ProposeError::Failed(format!("leader {to} did not answer"))))
    }

    // ---- heartbeats ----------------------------------------------------------------

    /// `POST /v1/nodes/{name}/heartbeat` on manager `r`: the real routing
    /// and answer (`goat::manager::nodes`), over the simulated relay.
    async fn handle_heartbeat(
        self: &Arc<Self>,
        r: Arc<Running>,
        name: String,
        hb: Heartbeat,
        forwarded: bool,
    ) -> Result<Vec<Assignment>, String> {
        let http = |e: ApiError| format!("{} {}", e.status.as_u16(), e.body.error);
        match heartbeat_route(&*r) {
            HeartbeatRoute::Here => {
                answer_heartbeat(&*r, &name, &hb).await.map(|reply| reply.assignments).map_err(http)
            }
            HeartbeatRoute::Refuse(e) => Err(http(e)),
            HeartbeatRoute::Forward if forwarded => Err("421 not leader".into()),
            HeartbeatRoute::Forward => {
                // forward_to_leader: wait (bounded) for a leader to forward to.
                let deadline = Instant::now() + LEADER_WAIT;
                loop {
                    if let Some(leader) = leader_of(&r.raft).filter(|l| *l != r.id) {
                        if let Ok(reply) = self.forward_heartbeat(r.id, leader, name.clone(), hb.clone()).await {
                            return reply;
                        }
                    } else if leading(&r.raft, r.id).0 {
                        return Err("421 this manager leads".into());
                    }
                    if Instant::now() >= deadline {
                        return Err("503 no leader reachable".into());
                    }
                    wait_for_leader_change(&r.raft, Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A follower relaying a heartbeat to the leader (and the answer back).
    async fn forward_heartbeat(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        name: String,
        hb: Heartbeat,
    ) -> Result<Result<Vec<Assignment>, String>, ()> {
        let call = async {
            if !self.leg(from, to, "hb-fwd").await {
                return std::future::pending().await;
            }
            let Some(target) = self.running(to) else { return Err(()) };
            let reply = Box::pin(self.handle_heartbeat(target, name, hb, true)).await;
            if !self.leg(to, from, "hb-fwd-reply").await {
                return std::future::pending().await;
            }
            match reply {
                Err(e) if e.starts_with("421") => Err(()),
                other => Ok(other),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call).await.unwrap_or(Err(()))
    }

    /// A worker's heartbeat to manager `to`, as the worker sees it.
    async fn send_heartbeat(
        self: &Arc<Self>,
        worker: usize,
        to: NodeId,
        hb: Heartbeat,
    ) -> Result<Vec<Assignment>, String> {
        let from = WORKER_BASE + worker as u64;
        let call = async {
            if !self.leg(from, to, "hb").await {
                return std::future::pending().await;
            }
            let Some(target) = self.running(to) else { return Err(format!("{to} refused the connection")) };
            let reply = self.handle_heartbeat(target, format!("w{worker}"), hb, false).await;
            if !self.leg(to, from, "hb-reply").await {
                return std::future::pending().await;
            }
            reply
        };
        tokio::time::timeout(HEARTBEAT_TIMEOUT, call).await.unwrap_or_else(|_| Err("timed out".into()))
    }

    // ---- the client -----------------------------------------------------------

    /// `POST /v1/tasks` (or a stop) on manager `to`: the manager stamps and
    /// proposes the command.
    async fn send_client(
        self: &Arc<Self>,
        to: NodeId,
        make: impl FnOnce(u64) -> Command,
    ) -> Result<CommandResult, String> {
        let call = async {
            if !self.leg(CLIENT, to, "client").await {
                return std::future::pending().await;
            }
            let Some(target) = self.running(to) else { return Err(format!("{to} refused the connection")) };
            let command = make(self.now_ms(to));
            let reply = LeaderHost::propose(&*target, command).await.map_err(|e| e.to_string());
            if !self.leg(to, CLIENT, "client-reply").await {
                return std::future::pending().await;
            }
            reply
        };
        tokio::time::timeout(Duration::from_secs(10), call).await.unwrap_or_else(|_| Err("timed out".into()))
    }

    // ---- the run ----------------------------------------------------------------

    pub async fn run(self: Arc<Self>) -> Report {
        let n = self.opts.managers;
        for id in 1..=n {
            self.boot(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> =
            (1..=n).map(|id| (id, BasicNode { addr: format!("m{id}") })).collect();
        if let Some(first) = self.raft_of(1) {
            if let Err(e) = first.initialize(members).await {
                self.violation(format!("bootstrap failed: {e}"));
            }
        }
        for i in 0..self.opts.workers {
            tokio::spawn(worker_loop(self.clone(), i));
        }
        let client = tokio::spawn(client_loop(self.clone()));
        let schedule = super::faults::schedule(&self);
        for fault in schedule {
            tokio::spawn(super::faults::inject(self.clone(), fault));
        }
        tokio::time::sleep(self.opts.fault_phase).await;
        self.heal().await;
        tokio::time::sleep(self.opts.settle).await;
        let _ = client.await;
        self.final_checks().await;
        let report = self.report();
        for id in 1..=n {
            let running = self.slots.lock()[id as usize - 1].running.take();
            if let Some(r) = running {
                r.stop.cancel();
                let _ = r.raft.shutdown().await;
            }
        }
        report
    }

    /// Ends every fault: links back, no loss, fast disks, workers thawed,
    /// dead managers restarted.
    pub async fn heal(self: &Arc<Self>) {
        *self.net.lock() = Net::default();
        for slot in self.slots.lock().iter_mut() {
            slot.disk_delay = Duration::ZERO;
        }
        for w in self.workers.lock().iter_mut() {
            w.frozen = false;
        }
        for id in 1..=self.opts.managers {
            if self.running(id).is_none() {
                self.boot(id).await;
            }
        }
        self.refresh_truth();
        self.trace("heal");
    }

    async fn final_checks(self: &Arc<Self>) {
        // Converged: every manager applied the same index.
        let mut converged = false;
        for _ in 0..200 {
            let indexes: BTreeSet<u64> = (1..=self.opts.managers)
                .map(|id| self.running(id).map_or(u64::MAX, |r| r.shared.read().last_applied.map_or(0, |l| l.index)))
                .collect();
            if indexes.len() == 1 && !indexes.contains(&u64::MAX) {
                converged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !converged {
            self.violation("managers did not converge on one applied index after healing".into());
        }
        let acked = self.checks.lock().acked.clone();
        for id in 1..=self.opts.managers {
            let Some(r) = self.running(id) else { continue };
            self.check_applied(&r);
            let state = r.shared.read();
            let missing: Vec<_> = acked.iter().filter(|t| !state.state.tasks.contains_key(t)).collect();
            if !missing.is_empty() {
                let (n, first) = (missing.len(), missing[0]);
                drop(state);
                self.violation(format!("manager {id} lost {n} acknowledged task(s), e.g. {first}"));
            }
        }
    }

    fn report(&self) -> Report {
        let mut trace = self.trace.lock();
        if let Some(file) = trace.full.as_mut() {
            use std::io::Write;
            let _ = file.flush();
        }
        let checks = self.checks.lock();
        let stats = self.stats.lock();
        let requeued =
            self.running(1).map_or(0, |r| r.shared.read().state.tasks.values().filter(|t| t.generation > 1).count());
        Report {
            seed: self.opts.seed,
            mode: self.opts.mode.name().into(),
            broken_flush: self.opts.broken_flush,
            violations: checks.violations.clone(),
            trace_hash: format!("{:016x}", trace.hash),
            trace_events: trace.events,
            sim_ms: self.elapsed_ms(),
            faults: stats.faults.clone(),
            messages: stats.messages,
            lost: stats.lost,
            duplicated: stats.duplicated,
            acked: checks.acked.len(),
            nodes_marked_down: stats.downs,
            requeued_tasks: requeued,
            leaders: checks.leaders.values().map(|s| s.len()).sum(),
            shared_terms: checks.leaders.values().filter(|s| s.len() > 1).count(),
            tail: checks.first_tail.clone(),
        }
    }

    // ---- fault actions (used by `faults`) ------------------------------------------

    pub fn fault_id(&self) -> u64 {
        let mut n = self.next_fault.lock();
        *n += 1;
        *n
    }

    pub fn resolve(&self, target: Option<NodeId>) -> Option<NodeId> {
        target.or_else(|| self.current_leader())
    }

    pub fn set_cuts(&self, fault: u64, cuts: Option<Vec<(u64, u64)>>) {
        {
            let mut net = self.net.lock();
            match cuts {
                Some(c) => net.cuts.insert(fault, c),
                None => net.cuts.remove(&fault),
            };
        }
        self.refresh_truth();
    }

    pub fn set_loss(&self, fault: u64, p: Option<f64>) {
        match p {
            Some(p) => self.net.lock().loss.insert(fault, p),
            None => self.net.lock().loss.remove(&fault),
        };
        self.refresh_truth();
    }

    pub fn set_dup(&self, fault: u64, p: Option<f64>) {
        match p {
            Some(p) => self.net.lock().dup.insert(fault, p),
            None => self.net.lock().dup.remove(&fault),
        };
    }

    pub fn set_delay(&self, fault: u64, ms: Option<u64>) {
        match ms {
            Some(ms) => self.net.lock().extra_delay_ms.insert(fault, ms),
            None => self.net.lock().extra_delay_ms.remove(&fault),
        };
    }

    pub fn set_disk_delay(&self, id: NodeId, delay: Duration) {
        self.slots.lock()[id as usize - 1].disk_delay = delay;
    }

    pub fn jump_clock(&self, id: NodeId, by_ms: i64) {
        self.slots.lock()[id as usize - 1].clock_offset_ms += by_ms;
    }

    pub fn set_frozen(&self, worker: usize, frozen: bool) {
        self.workers.lock()[worker].frozen = frozen;
        self.refresh_truth();
    }

    pub async fn kill_manager(self: &Arc<Self>, id: NodeId) {
        self.kill(id).await;
    }

    pub async fn restart_manager(self: &Arc<Self>, id: NodeId) {
        if self.running(id).is_none() {
            self.boot(id).await;
        }
    }

    pub fn note_fault(&self, kind: &str, detail: String) {
        self.count_fault(kind);
        self.trace(format!("fault {kind} {detail}"));
    }

    pub fn manager_addrs(&self) -> Vec<u64> {
        (1..=self.opts.managers).collect()
    }

    pub fn worker_addrs(&self) -> Vec<u64> {
        (0..self.opts.workers as u64).map(|i| WORKER_BASE + i).collect()
    }

    pub fn random<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        self.rand(f)
    }
}

async fn watch_applied(w: Arc<World>, r: Arc<Running>) {
    let mut rx = r.shared.watch_applied();
    loop {
        tokio::select! {
            biased;
            _ = r.stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        w.check_applied(&r);
    }
}

async fn watch_leaders(w: Arc<World>, r: Arc<Running>) {
    let mut metrics = r.raft.metrics();
    loop {
        let (leads, term) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader, m.current_term)
        };
        if leads {
            w.check_leader(term, r.id);
        }
        tokio::select! {
            biased;
            _ = r.stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

// ---- workers and the client -------------------------------------------------------

async fn worker_loop(w: Arc<World>, i: usize) {
    let n = w.opts.managers;
    let mut target = 1 + (i as u64 % n);
    let capacity = Resources { cpu: 4.0, memory: 4 << 30, disk: 10 << 30 };
    let mut pause = Duration::from_millis(1_000);
    loop {
        tokio::time::sleep(pause).await;
        pause = Duration::from_millis(1_000);
        let (frozen, running) = {
            let workers = w.workers.lock();
            (workers[i].frozen, workers[i].running.clone())
        };
        if frozen {
            continue;
        }
        let tasks = running
            .iter()
            .map(|(task, generation)| TaskReport::running(*task, *generation, format!("c-{generation}-{task}")))
            .collect();
        let hb = Heartbeat {
            capacity,
            usage: Resources::default(),
            engine: EngineStatus { healthy: true, error: None },
            tasks,
            held: None,
            advertise: None,
        };
        match w.send_heartbeat(i, target, hb).await {
            Ok(list) => {
                let now: BTreeMap<uuid::Uuid, u64> = list
                    .iter()
                    .filter(|a| a.desired == DesiredStatus::Run)
                    .map(|a| (a.task_id, a.generation))
                    .collect();
                if now != running {
                    w.trace(format!("w{i} runs {now:?}"));
                }
                w.workers.lock()[i].running = now;
            }
            Err(e) => {
                w.trace(format!("w{i} heartbeat to {target} failed: {e}"));
                target = target % n + 1;
                pause = MIN_HEARTBEAT_GAP;
            }
        }
    }
}

async fn client_loop(w: Arc<World>) {
    let n = w.opts.managers;
    let mut acked: Vec<uuid::Uuid> = Vec::new();
    for k in 0..w.opts.tasks {
        let pause = w.random(|r| r.gen_range(500..3_000));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if !acked.is_empty() && w.random(|r| r.gen_bool(0.15)) {
            let task_id = acked[w.random(|r| r.gen_range(0..acked.len()))];
            let to = w.random(|r| r.gen_range(1..=n));
            let result = w.send_client(to, |at| Command::StopTask { task_id, at }).await;
            w.trace(format!("client stop {task_id} via {to}: {:?}", result.as_ref().map(|_| ())));
        }
        let task_id = uuid::Uuid::from_u128(w.random(|r| r.gen()));
        let mut spec =
            serde_json::json!({"name": format!("t{k}"), "image": "goat-echo:latest", "cpu": 0.5, "memory": 64 << 20});
        if w.random(|r| r.gen_bool(0.3)) {
            spec["disconnect_window"] = serde_json::json!(5_000);
        }
        let spec: TaskSpec = serde_json::from_value(spec).expect("sim task spec");
        for attempt in 0..4 {
            let to = w.random(|r| r.gen_range(1..=n));
            let spec = spec.clone();
            match w.send_client(to, |at| Command::SubmitTask { task_id, spec, at }).await {
                Ok(CommandResult::Task(_)) => {
                    w.trace(format!("client ack {task_id} via {to}"));
                    w.checks.lock().acked.insert(task_id);
                    acked.push(task_id);
                    break;
                }
                other => {
                    w.trace(format!("client submit {task_id} via {to} attempt {attempt}: {other:?}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
