//! The loops that run on the leader, and only there.
//!
//! `supervise` watches this manager's Raft role. When it becomes leader it
//! starts every loop under one cancellation token; when it stops leading —
//! deposed, partitioned, shutting down — it cancels that token, and every
//! loop ends. (Swarm once kept one loop running on a deposed leader.) The
//! loops keep nothing that cannot be rebuilt from the store: a new leader
//! starts from the replicated state and fresh liveness deadlines.
//!
//! - placement: puts pending tasks on nodes (see `crate::control::scheduler`);
//! - rescheduling: gives tasks that failed on a node another chance
//!   elsewhere, under their reschedule policy (see `crate::control::reschedule`);
//! - liveness: marks nodes whose heartbeats stopped `down`, after giving
//!   every node a full deadline from the moment this manager took over, so a
//!   leader change never marks a healthy node down; moves their tasks, or
//!   lets tasks with a disconnect window wait `unknown` until it ends (see
//!   `crate::control::nodes::liveness_commands`);
//! - collection: removes finished tasks after `--task-retention` (see
//!   `super::gc`).
//!
//! The loops run on a [`LeaderHost`]: the real [`Manager`], or the
//! deterministic simulation's manager (tests/sim, docs/simulation.md), which
//! runs these very loops on a virtual clock. Hence tokio's `Instant`
//! (std's in production, virtual under the simulation's paused time).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use goat_raft::state_machine::SharedState;
use goat_raft::{Command, CommandResult, NodeId, Raft};
use goat_storage::model::Strategy;
use openraft::{BasicNode, ServerState};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Batcher, Leadership, Manager, ProposeError};
use super::error::ApiError;
use crate::control::lease::RoundGate;
use crate::control::nodes::liveness_commands;
use crate::control::placement::{decide, PendingTask};
use crate::control::scheduler::{Scheduler, NO_NODES};

/// What the leader loops (and the heartbeat handler's core,
/// `super::nodes::answer_heartbeat`) need of the manager they run on.
/// Implemented by [`Manager`] and by the simulation's manager; the methods
/// with a body are the production behaviour, which the simulation keeps
/// too (its "legacy" host overrides `leadership` and `propose_as_leader` to
/// show what the code did before the fence and the lease).
pub trait LeaderHost: Send + Sync + 'static {
    fn id(&self) -> NodeId;
    fn raft(&self) -> &Raft;
    fn state(&self) -> &SharedState;
    fn lease(&self) -> &LeaderLease;
    fn batcher(&self) -> &Batcher;
    /// When each node last sent a heartbeat to this manager.
    fn last_seen(&self) -> &Mutex<HashMap<String, Instant>>;
    fn placement_kick(&self) -> &Notify;
    fn node_down_after(&self) -> Duration;
    fn leader_wait(&self) -> Duration;
    fn default_strategy(&self) -> Strategy;
    /// This manager's wall clock, in ms since the epoch (what stamps commands).
    fn now_ms(&self) -> u64;

    /// Sends `command` to `leader` (at `addr`) to append: its
    /// `/internal/propose`.
    fn propose_remotely(
        &self,
        leader: NodeId,
        addr: &str,
        command: &Command,
    ) -> impl Future<Output = Result<CommandResult, ProposeError>> + Send;

    /// Commits `command` through whoever leads (forwarding when this manager
    /// does not), waiting through an election: `Manager::propose`.
    fn propose(&self, command: Command) -> impl Future<Output = Result<CommandResult, ApiError>> + Send {
        propose_through_leader(self, command)
    }

    /// Starts the loops that run beside placement, liveness and rescheduling
    /// (collection, on the real manager).
    fn start_other_loops(self: &Arc<Self>, _term: u64, _cancel: &CancellationToken) {}

    /// Whether CPU-heavy work (ranking a placement chunk) runs inline
    /// instead of on tokio's blocking pool (the simulation: one thread).
    fn inline_cpu(&self) -> bool {
        false
    }

    /// Whether this manager leads, and whether a quorum confirmed it lately.
    fn leadership(&self) -> Leadership {
        self.lease().leadership(self.raft())
    }

    /// Appends `command` here, through the batcher, if this manager leads.
    fn propose_locally(&self, command: Command) -> impl Future<Output = Result<CommandResult, ProposeError>> + Send {
        self.batcher().propose(command)
    }

    /// Commits a decision of the leader loops of `term`: here only (never
    /// forwarded: another leader must decide for itself), only while this
    /// manager still leads in `term`, and fenced — the state machine
    /// applies it only if the entry was appended in this very leadership
    /// (`Command::Fenced`). Given up when `cancel` fires (the loops stop)
    /// or after `--leader-wait`.
    fn propose_as_leader(
        &self,
        term: u64,
        command: Command,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<CommandResult, ProposeError>> + Send {
        propose_as_leader(self, term, command, cancel)
    }
}

/// [`LeaderHost::propose_as_leader`]'s production behaviour (a function, so
/// that a host that overrides the method can still call it).
pub async fn propose_as_leader<H: LeaderHost + ?Sized>(
    host: &H,
    term: u64,
    command: Command,
    cancel: &CancellationToken,
) -> Result<CommandResult, ProposeError> {
    if !leads_in(host.raft(), host.id(), term) {
        return Err(ProposeError::NotLeader);
    }
    let fenced = Command::Fenced { term, leader: host.id(), command: Box::new(command) };
    tokio::select! {
        _ = cancel.cancelled() => Err(ProposeError::Failed("dropped: this manager stopped leading".into())),
        result = tokio::time::timeout(host.leader_wait(), host.propose_locally(fenced)) => match result {
            Ok(result) => result,
            Err(_) => Err(ProposeError::Failed("not committed: this leader may have lost its quorum".into())),
        },
    }
}

impl LeaderHost for Manager {
    fn id(&self) -> NodeId {
        self.id
    }
    fn raft(&self) -> &Raft {
        &self.raft
    }
    fn state(&self) -> &SharedState {
        &self.state
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
        self.node_down_after
    }
    fn leader_wait(&self) -> Duration {
        self.leader_wait
    }
    fn default_strategy(&self) -> Strategy {
        self.default_strategy
    }
    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }
    fn propose_remotely(
        &self,
        leader: NodeId,
        addr: &str,
        command: &Command,
    ) -> impl Future<Output = Result<CommandResult, ProposeError>> + Send {
        Manager::propose_remotely(self, leader, addr, command)
    }
    fn start_other_loops(self: &Arc<Self>, term: u64, cancel: &CancellationToken) {
        tokio::spawn(super::gc::gc_loop(self.clone(), term, cancel.clone()));
    }
}

/// Commits `command` through whoever leads, waiting (bounded by
/// `--leader-wait`) through an election. Returns the state machine's result.
pub async fn propose_through_leader<H: LeaderHost + ?Sized>(
    host: &H,
    command: Command,
) -> Result<CommandResult, ApiError> {
    let deadline = Instant::now() + host.leader_wait();
    let mut last_error = String::from("no leader elected yet");
    loop {
        let leader = {
            let metrics = host.raft().metrics();
            let m = metrics.borrow();
            m.current_leader.and_then(|id| Some((id, m.membership_config.membership().get_node(&id)?.addr.clone())))
        };
        let attempt = match leader {
            Some((leader, _)) if leader == host.id() => {
                // A leader cut off from its followers does not know it
                // yet: its write would wait for a quorum forever. Bound
                // it; the outcome is then unknown (503), never a 201.
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, host.propose_locally(command.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(ProposeError::Failed("not committed: this leader may have lost its quorum".into())),
                }
            }
            Some((leader, addr)) => host.propose_remotely(leader, &addr, &command).await,
            None => Err(ProposeError::NotLeader),
        };
        match attempt {
            Ok(result) => return Ok(result),
            Err(ProposeError::NotLeader) => {}
            Err(ProposeError::Failed(e)) => last_error = e,
        }
        if Instant::now() >= deadline {
            return Err(ApiError::unavailable(format!(
                "no leader accepted the write within {:?}: {last_error}",
                host.leader_wait()
            )));
        }
        wait_for_leader_change(host.raft(), Duration::from_millis(50)).await;
    }
}

/// Sleeps until `raft`'s metrics change or `at_most` passes.
pub async fn wait_for_leader_change(raft: &Raft, at_most: Duration) {
    let mut metrics = raft.metrics();
    // A cloned receiver starts at the version openraft's own receiver
    // last saw, so without this `changed()` returns at once and the
    // retry loops spin instead of waiting (found by the simulation).
    metrics.borrow_and_update();
    // Raft shut down (its metrics sender is gone): `changed()` fails at
    // once, so sleep instead, or every retry loop spins hot until its
    // deadline — and under the simulation's paused clock, which only
    // moves while every task waits, that deadline never came (found by
    // the simulation, seeds 69, 81, 176, 192, 199).
    if let Ok(Err(_)) = tokio::time::timeout(at_most, metrics.changed()).await {
        tokio::time::sleep(at_most).await;
    }
}

/// Whether `id` leads in `term` by `raft`'s metrics (believed, not confirmed).
pub fn leads_in(raft: &Raft, id: NodeId, term: u64) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(id) && m.current_term == term
}

/// A leader's lease on its own view (`crate::control::lease`): the term
/// this manager leads in and when a quorum last acknowledged it, from
/// openraft's `millis_since_quorum_ack`, dated when the metrics arrived (so
/// a stalled Raft core ages it too).
pub struct LeaderLease {
    id: NodeId,
    lease: Duration,
    noted: Mutex<Option<(u64, Option<Instant>)>>,
}

impl LeaderLease {
    pub fn new(id: NodeId, lease: Duration) -> LeaderLease {
        LeaderLease { id, lease, noted: Mutex::new(None) }
    }

    /// How recent a quorum's acknowledgement must be.
    pub fn duration(&self) -> Duration {
        self.lease
    }

    /// Takes in openraft's metrics (called on each change).
    pub fn note(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) {
        let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id);
        let acked =
            metrics.millis_since_quorum_ack.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
        let noted = leading.then_some((metrics.current_term, acked));
        if let Ok(mut q) = self.noted.lock() {
            *q = noted;
        }
    }

    /// Whether this manager leads by `raft`, and whether a quorum confirmed
    /// it within the lease.
    pub fn leadership(&self, raft: &Raft) -> Leadership {
        let (term, leading) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.state == ServerState::Leader && m.current_leader == Some(self.id))
        };
        if !leading {
            return Leadership::Follower;
        }
        let acked = match self.noted.lock().map(|q| *q) {
            Ok(Some((noted_term, acked))) if noted_term == term => acked,
            _ => None,
        };
        let ack_age = acked.map(|at| at.elapsed());
        if crate::control::lease::lease_holds(ack_age, self.lease) {
            Leadership::Confirmed { term }
        } else {
            Leadership::Unconfirmed { term, ack_age }
        }
    }
}

/// Placement rounds start at most this often: submissions arriving in
/// between are placed together.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(20);
/// While no node can take anything, rounds only refresh reasons.
const NO_NODES_ROUND_INTERVAL: Duration = Duration::from_secs(1);

pub async fn supervise<H: LeaderHost>(manager: Arc<H>) {
    let mut metrics = manager.raft().metrics();
    // The term the running loops were started in, and their token.
    let mut running: Option<(u64, CancellationToken)> = None;
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            manager.lease().note(&m);
            (m.state == ServerState::Leader && m.current_leader == Some(manager.id()), m.current_term)
        };
        // Loops bound to another term stop: a manager deposed and elected
        // again between two looks at the metrics starts fresh loops too.
        if running.as_ref().is_some_and(|(t, _)| !leading || *t != term) {
            tracing::info!("no longer leader (in that term): stopping the control loops");
            if let Some((_, token)) = running.take() {
                token.cancel();
            }
        }
        if leading && running.is_none() {
            let token = CancellationToken::new();
            tracing::info!(term, "became leader: starting the control loops");
            // Liveness counts only heartbeats this leadership received.
            if let Ok(mut seen) = manager.last_seen().lock() {
                seen.clear();
            }
            let leading = Leading { term, cancel: token.clone() };
            tokio::spawn(placement_loop(manager.clone(), leading.clone()));
            tokio::spawn(liveness_loop(manager.clone(), leading.clone()));
            tokio::spawn(reschedule_loop(manager.clone(), leading));
            manager.start_other_loops(term, &token);
            running = Some((term, token));
        }
        if metrics.changed().await.is_err() {
            if let Some((_, token)) = running.take() {
                token.cancel();
            }
            return;
        }
    }
}

/// The leadership a set of control loops runs for: every decision they
/// commit is bound to `term` (see `Manager::propose_as_leader`), and they
/// end when `cancel` fires.
#[derive(Clone)]
struct Leading {
    term: u64,
    cancel: CancellationToken,
}

/// Looks at the leadership for one round of the loops of `leading`:
/// `Err(())` if the loop must end (deposed, or another term), `Ok(None)` to
/// skip the round (unconfirmed), or `Ok(Some(since))`.
fn gate_round<H: LeaderHost>(
    manager: &H,
    leading: &Leading,
    gate: &mut RoundGate<Instant>,
) -> Result<Option<Instant>, ()> {
    match manager.leadership() {
        Leadership::Confirmed { term } if term == leading.term => Ok(gate.round(Instant::now(), true)),
        Leadership::Unconfirmed { term, ack_age } if term == leading.term => {
            tracing::debug!(?ack_age, "no recent quorum acknowledgement: skipping the round");
            Ok(gate.round(Instant::now(), false))
        }
        _ => Err(()),
    }
}

/// Whether the leader currently believes `node` alive: heard from within the
/// deadline, or not yet due (every node gets a full deadline from `since`).
fn alive(last_seen: &HashMap<String, Instant>, node: &str, since: Instant, deadline: Duration) -> bool {
    let heard = last_seen.get(node).copied().unwrap_or(since).max(since);
    heard.elapsed() < deadline
}

async fn placement_loop<H: LeaderHost>(manager: Arc<H>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = manager.placement_kick().notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&*manager, &leading, &mut gate) else { return };
        let Some(since) = since else { continue };
        // Cancelled (deposed), the round is dropped with its proposals.
        let round = tokio::select! {
            _ = leading.cancel.cancelled() => return,
            round = place_pending(&manager, &leading, since) => round,
        };
        match round {
            Ok(Round::Done) => tokio::time::sleep(MIN_ROUND_INTERVAL).await,
            // With no node to place on, only reasons can change: no hurry.
            Ok(Round::NoNodes) => tokio::time::sleep(NO_NODES_ROUND_INTERVAL).await,
            Err(e) => {
                tracing::warn!(error = %e.body.error, "placement round failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How a placement round went.
enum Round {
    Done,
    /// No node can take any task.
    NoNodes,
}

/// Pending tasks read per look at the state. A round walks the backlog in
/// such chunks, so it holds the state's lock (which the state machine needs
/// to apply entries, and heartbeats to read) for a short while at a time,
/// and the first placements of a big backlog are committing while the rest
/// are being decided.
const CHUNK: usize = 2_000;

/// One placement round: every pending task that fits gets a node; the
/// others get (or keep) a reason. The round's decisions are committed in
/// pipelined batches, and the round returns once all are applied, so the
/// next round sees the room they took.
async fn place_pending<H: LeaderHost>(
    manager: &Arc<H>,
    leading: &Leading,
    since: Instant,
) -> Result<Round, super::error::ApiError> {
    let mut scheduler = {
        let seen = manager.last_seen().lock().map(|s| s.clone()).unwrap_or_default();
        let applied = manager.state().read();
        if applied.state.pending_tasks().next().is_none() {
            return Ok(Round::Done);
        }
        Scheduler::new(&applied.state, |node| alive(&seen, node, since, manager.node_down_after()))
    };
    let round = if scheduler.has_nodes() { Round::Done } else { Round::NoNodes };
    let mut cursor = None;
    let mut commits = tokio::task::JoinSet::new();
    let (mut placed, mut waiting) = (0, 0);
    loop {
        let chunk: Vec<PendingTask> = {
            let applied = manager.state().read();
            let has_nodes = scheduler.has_nodes();
            applied
                .state
                .pending_tasks_after(cursor)
                .filter(|t| has_nodes || t.reason.as_deref() != Some(NO_NODES))
                .take(CHUNK)
                .map(PendingTask::of)
                .collect()
        };
        let Some(last) = chunk.last() else { break };
        cursor = Some((last.created_at, last.id));
        // Ranking thousands of tasks is CPU work: off the async threads,
        // which serve heartbeats and drive Raft.
        let (default, now) = (manager.default_strategy(), manager.now_ms());
        let rank = move || {
            let commands = decide(&mut scheduler, &chunk, default, now);
            (scheduler, commands)
        };
        let (back, commands) = if manager.inline_cpu() {
            rank()
        } else {
            tokio::task::spawn_blocking(rank).await.map_err(super::error::ApiError::internal)?
        };
        scheduler = back;
        if commands.is_empty() {
            continue;
        }
        let n = commands.iter().filter(|c| matches!(c, Command::PlaceTask { .. })).count();
        placed += n;
        waiting += commands.len() - n;
        let manager = manager.clone();
        let leading = leading.clone();
        commits.spawn(async move {
            manager.propose_as_leader(leading.term, Command::Batch(commands), &leading.cancel).await
        });
    }
    let mut result = Ok(round);
    while let Some(done) = commits.join_next().await {
        match done {
            Ok(Ok(CommandResult::Batch(results))) => {
                let refused = results.iter().filter(|r| r.is_refused()).count();
                if refused > 0 {
                    tracing::debug!(refused, "some placements were refused (state moved on)");
                }
            }
            Ok(Ok(CommandResult::Refused(reason))) => {
                tracing::warn!(%reason, "placements refused: decided in another leadership")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => result = Err(super::error::ApiError::unavailable(format!("{e:?}"))),
            Err(e) => result = Err(super::error::ApiError::internal(e)),
        }
    }
    if placed > 0 {
        tracing::info!(placed, waiting, "placement round");
    }
    result
}

/// Gives failed tasks another chance elsewhere, as their policy allows.
async fn reschedule_loop<H: LeaderHost>(manager: Arc<H>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&*manager, &leading, &mut gate) else { return };
        if since.is_none() {
            continue;
        }
        let commands = crate::control::reschedule::due(&manager.state().read().state, manager.now_ms());
        if commands.is_empty() {
            continue;
        }
        tracing::info!(tasks = commands.len(), "rescheduling failed tasks");
        match manager.propose_as_leader(leading.term, Command::Batch(commands), &leading.cancel).await {
            Ok(CommandResult::Refused(reason)) => tracing::warn!(%reason, "rescheduling refused"),
            Ok(_) => manager.placement_kick().notify_one(),
            Err(e) => tracing::warn!(error = ?e, "could not reschedule failed tasks"),
        }
    }
}

async fn liveness_loop<H: LeaderHost>(manager: Arc<H>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&*manager, &leading, &mut gate) else { return };
        let Some(since) = since else { continue };
        let commands = {
            let seen = manager.last_seen().lock().map(|s| s.clone()).unwrap_or_default();
            let applied = manager.state().read();
            liveness_commands(&applied.state, manager.now_ms(), |node| {
                alive(&seen, node, since, manager.node_down_after())
            })
        };
        if commands.is_empty() {
            continue;
        }
        for command in &commands {
            match command {
                Command::SetNodeStatus { name, .. } => {
                    tracing::warn!(node = %name, "node missed its heartbeat deadline: marking it down")
                }
                Command::RequeueTask { task_id, reason, .. } => {
                    tracing::info!(task = %task_id, %reason, "moving the task of a down node")
                }
                Command::DisconnectTask { task_id, .. } => {
                    tracing::info!(task = %task_id, "its node is down: waiting out the task's disconnect window")
                }
                Command::ExpireDisconnect { task_id, .. } => {
                    tracing::info!(task = %task_id, "disconnect window over, node still down: moving the task")
                }
                _ => {}
            }
        }
        match manager.propose_as_leader(leading.term, Command::Batch(commands), &leading.cancel).await {
            Ok(CommandResult::Refused(reason)) => tracing::warn!(%reason, "liveness decisions refused"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "could not commit liveness decisions (dropped, not forwarded)"),
        }
        manager.placement_kick().notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_gives_every_node_a_full_deadline() {
        let deadline = Duration::from_millis(200);
        let long_ago = Instant::now() - Duration::from_secs(60);
        let seen = HashMap::from([("old".to_string(), long_ago)]);
        // Leader just took over: even a node last seen long ago is not due.
        assert!(alive(&seen, "old", Instant::now(), deadline));
        assert!(alive(&seen, "never-seen", Instant::now(), deadline));
        // A leader that has led for a while: the old node is overdue.
        let since = Instant::now() - Duration::from_secs(1);
        assert!(!alive(&seen, "old", since, deadline));
        assert!(!alive(&seen, "never-seen", since, deadline));
        let fresh = HashMap::from([("w".to_string(), Instant::now())]);
        assert!(alive(&fresh, "w", since, deadline));
    }
}
