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
//! The loops run on a [`LeaderHost`] (defined in `super::cluster`, beside
//! `Manager`): the real [`Manager`], or the
//! deterministic simulation's manager (tests/sim, docs/simulation.md), which
//! runs these very loops on a virtual clock. Hence tokio's `Instant`
//! (std's in production, virtual under the simulation's paused time).
//!   `super::gc`);
//! - services: turns each service into tasks, rolls updates out (see
//!   `super::service_loop`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use goat_raft::state_machine::SharedState;
use goat_raft::{Command, CommandResult, NodeId, Raft};
use goat_storage::model::Strategy;
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Batcher, LeaderHost, LeaderLease, Leadership, Manager, ProposeError};
use crate::control::lease::RoundGate;
use crate::control::nodes::liveness_commands;
use crate::control::placement::{decide, PendingTask};
use crate::control::scheduler::{Scheduler, NO_NODES};

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
    fn note_metrics(&self, metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) {
        Manager::note_metrics(self, metrics)
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
        tokio::spawn(super::service_loop::service_loop(self.clone(), term, cancel.clone()));
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
            manager.note_metrics(&m);
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
            manager.last_seen().lock().clear();
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
                tracing::warn!(error = %e, "placement round failed");
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
) -> Result<Round, crate::control::Error> {
    let mut scheduler = {
        let seen = manager.last_seen().lock().clone();
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
            tokio::task::spawn_blocking(rank).await.map_err(crate::control::Error::internal)?
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
            Ok(Err(e)) => result = Err(e.into()),
            Err(e) => result = Err(crate::control::Error::internal(e)),
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
            let seen = manager.last_seen().lock().clone();
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
