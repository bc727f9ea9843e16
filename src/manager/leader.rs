//! The loops that run on the leader, and only there.
//!
//! `supervise` watches this manager's Raft role. When it becomes leader it
//! starts every loop under one cancellation token; when it stops leading —
//! deposed, partitioned, shutting down — it cancels that token, and every
//! loop ends. (Swarm once kept one loop running on a deposed leader.) The
//! loops keep nothing that cannot be rebuilt from the store: a new leader
//! starts from the replicated state and fresh liveness deadlines.
//!
//! - placement: puts pending tasks on nodes (see `crate::scheduler`);
//! - rescheduling: gives tasks that failed on a node another chance
//!   elsewhere, under their reschedule policy (see `crate::reschedule`);
//! - liveness: marks nodes whose heartbeats stopped `down`, after giving
//!   every node a full deadline from the moment this manager took over, so a
//!   leader change never marks a healthy node down; moves their tasks, or
//!   lets tasks with a disconnect window wait `unknown` until it ends (see
//!   `nodes::liveness_commands`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use goat_raft::{Command, CommandResult};
use goat_storage::model::{Strategy, Timestamp};
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::cluster::{Leadership, Manager};
use super::nodes::liveness_commands;
use crate::clock::now_ms;
use crate::scheduler::{Scheduler, NO_NODES};

/// Placement rounds start at most this often: submissions arriving in
/// between are placed together.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(20);
/// While no node can take anything, rounds only refresh reasons.
const NO_NODES_ROUND_INTERVAL: Duration = Duration::from_secs(1);

pub async fn supervise(manager: Arc<Manager>) {
    let mut metrics = manager.raft.metrics();
    // The term the running loops were started in, and their token.
    let mut running: Option<(u64, CancellationToken)> = None;
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            manager.note_metrics(&m);
            (m.state == ServerState::Leader && m.current_leader == Some(manager.id), m.current_term)
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
            if let Ok(mut seen) = manager.last_seen.lock() {
                seen.clear();
            }
            let leading = Leading { term, cancel: token.clone() };
            tokio::spawn(placement_loop(manager.clone(), leading.clone()));
            tokio::spawn(liveness_loop(manager.clone(), leading.clone()));
            tokio::spawn(reschedule_loop(manager.clone(), leading));
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

/// Whether a loop's round may decide, from its leader's confirmation, and
/// from when its nodes' deadlines run.
///
/// A leader decides from its own view only while a quorum confirms it
/// (`Leadership::Confirmed`): a leader cut off from its followers keeps
/// believing it leads, and its view — no heartbeats arrive, not even those
/// its followers relay — says every node is down. Rounds without that
/// confirmation are skipped. And once confirmed again, every node gets a
/// full deadline afresh: heartbeats relayed while the leader could not be
/// reached were lost, so its silence proves nothing. Pure (the clock is
/// passed in), for the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundGate<T> {
    since: T,
    lapsed: bool,
}

impl<T: Copy> RoundGate<T> {
    /// Loops that start at `now`: every node's deadline runs from now.
    pub fn new(now: T) -> RoundGate<T> {
        RoundGate { since: now, lapsed: false }
    }

    /// A round at `now`: `Some(since)`, when deadlines run from, if the
    /// round may decide (the leadership is `confirmed`); None to skip it.
    pub fn round(&mut self, now: T, confirmed: bool) -> Option<T> {
        if !confirmed {
            self.lapsed = true;
            return None;
        }
        if self.lapsed {
            self.lapsed = false;
            self.since = now;
        }
        Some(self.since)
    }
}

/// Looks at the leadership for one round of the loops of `leading`:
/// `Err(())` if the loop must end (deposed, or another term), `Ok(None)` to
/// skip the round (unconfirmed), or `Ok(Some(since))`.
fn gate_round(manager: &Manager, leading: &Leading, gate: &mut RoundGate<Instant>) -> Result<Option<Instant>, ()> {
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

async fn placement_loop(manager: Arc<Manager>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = manager.placement_kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&manager, &leading, &mut gate) else { return };
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

/// What placement needs of a pending task, copied out of the state.
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub id: goat_storage::model::TaskId,
    pub created_at: Timestamp,
    pub spec: goat_storage::model::TaskSpec,
    pub reason: Option<String>,
    pub failed_on: Option<String>,
}

impl PendingTask {
    fn of(task: &goat_storage::model::Task) -> PendingTask {
        PendingTask {
            id: task.id,
            created_at: task.created_at,
            spec: task.spec.clone(),
            reason: task.reason.clone(),
            failed_on: task.failed_on.clone(),
        }
    }
}

/// The commands for a chunk of pending tasks: a node for each task that
/// fits (charged to the scheduler at once, so later chunks of the round see
/// it), and a reason for each that does not, unless it already says so.
pub fn decide(scheduler: &mut Scheduler, tasks: &[PendingTask], default: Strategy, at: Timestamp) -> Vec<Command> {
    let mut commands = Vec::new();
    for task in tasks {
        if !scheduler.has_nodes() && task.reason.as_deref() == Some(NO_NODES) {
            // Nothing can be placed anywhere and the task already says so.
            continue;
        }
        match scheduler.place_avoiding(&task.spec, default, task.failed_on.as_deref()) {
            Ok(node) => commands.push(Command::PlaceTask { task_id: task.id, node, at }),
            Err(reason) if task.reason.as_deref() != Some(reason.as_str()) => {
                commands.push(Command::SetPendingReason { task_id: task.id, reason: Some(reason), at })
            }
            Err(_) => {}
        }
    }
    commands
}

/// One placement round: every pending task that fits gets a node; the
/// others get (or keep) a reason. The round's decisions are committed in
/// pipelined batches, and the round returns once all are applied, so the
/// next round sees the room they took.
async fn place_pending(
    manager: &Arc<Manager>,
    leading: &Leading,
    since: Instant,
) -> Result<Round, super::error::ApiError> {
    let mut scheduler = {
        let seen = manager.last_seen.lock().map(|s| s.clone()).unwrap_or_default();
        let applied = manager.state.read();
        if applied.state.pending_tasks().next().is_none() {
            return Ok(Round::Done);
        }
        Scheduler::new(&applied.state, |node| alive(&seen, node, since, manager.node_down_after))
    };
    let round = if scheduler.has_nodes() { Round::Done } else { Round::NoNodes };
    let mut cursor = None;
    let mut commits = tokio::task::JoinSet::new();
    let (mut placed, mut waiting) = (0, 0);
    loop {
        let chunk: Vec<PendingTask> = {
            let applied = manager.state.read();
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
        let default = manager.default_strategy;
        let (back, commands) = tokio::task::spawn_blocking(move || {
            let commands = decide(&mut scheduler, &chunk, default, now_ms());
            (scheduler, commands)
        })
        .await
        .map_err(super::error::ApiError::internal)?;
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
async fn reschedule_loop(manager: Arc<Manager>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&manager, &leading, &mut gate) else { return };
        if since.is_none() {
            continue;
        }
        let commands = crate::reschedule::due(&manager.state.read().state, now_ms());
        if commands.is_empty() {
            continue;
        }
        tracing::info!(tasks = commands.len(), "rescheduling failed tasks");
        match manager.propose_as_leader(leading.term, Command::Batch(commands), &leading.cancel).await {
            Ok(CommandResult::Refused(reason)) => tracing::warn!(%reason, "rescheduling refused"),
            Ok(_) => manager.placement_kick.notify_one(),
            Err(e) => tracing::warn!(error = ?e, "could not reschedule failed tasks"),
        }
    }
}

async fn liveness_loop(manager: Arc<Manager>, leading: Leading) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = leading.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(since) = gate_round(&manager, &leading, &mut gate) else { return };
        let Some(since) = since else { continue };
        let commands = {
            let seen = manager.last_seen.lock().map(|s| s.clone()).unwrap_or_default();
            let applied = manager.state.read();
            liveness_commands(&applied.state, now_ms(), |node| alive(&seen, node, since, manager.node_down_after))
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
        manager.placement_kick.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u128, memory: u64, reason: Option<&str>) -> PendingTask {
        let spec =
            serde_json::from_value(serde_json::json!({"name": "t", "image": "i", "memory": memory})).expect("spec");
        PendingTask {
            id: uuid::Uuid::from_u128(n),
            created_at: 1,
            spec,
            reason: reason.map(str::to_string),
            failed_on: None,
        }
    }

    #[test]
    fn a_round_places_what_fits_and_gives_the_others_a_reason_once() {
        use goat_storage::fsm::ClusterState;
        use goat_storage::model::{EngineStatus, Resources};
        let mut s = ClusterState::default();
        let engine = EngineStatus { healthy: true, error: None };
        let capacity = Resources { cpu: 1.0, memory: 1 << 30, disk: 1 << 30 };
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity, engine, at: 0 });
        let mut scheduler = Scheduler::new(&s, |_| true);
        let tasks = [pending(1, 1 << 29, None), pending(2, 1 << 29, None), pending(3, 1 << 29, None)];
        let commands = decide(&mut scheduler, &tasks, Strategy::BinPack, 5);
        assert!(
            matches!(&commands[..], [
            Command::PlaceTask { node: a, .. },
            Command::PlaceTask { node: b, .. },
            Command::SetPendingReason { reason: Some(r), .. },
        ] if a == "w1" && b == "w1" && r.contains("memory")),
            "{commands:?}"
        );
        // The same verdict is not committed again.
        let Command::SetPendingReason { reason: Some(r), .. } = &commands[2] else { unreachable!() };
        assert!(decide(&mut scheduler, &[pending(3, 1 << 29, Some(r))], Strategy::BinPack, 6).is_empty());
        // With no node at all, tasks that already say so are skipped.
        let mut none = Scheduler::new(&ClusterState::default(), |_| true);
        assert!(decide(&mut none, &[pending(4, 0, Some(NO_NODES))], Strategy::BinPack, 7).is_empty());
        assert_eq!(decide(&mut none, &[pending(5, 0, None)], Strategy::BinPack, 7).len(), 1);
    }

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

    #[test]
    fn rounds_decide_only_while_a_quorum_confirms_the_leader() {
        use super::super::cluster::lease_holds;
        let lease = Duration::from_millis(1_000);
        assert!(lease_holds(Some(Duration::from_millis(120)), lease));
        assert!(!lease_holds(Some(Duration::from_millis(1_001)), lease), "acknowledged too long ago");
        assert!(!lease_holds(None, lease), "never acknowledged in this term");

        // Times in ms from the loops' start.
        let mut gate = RoundGate::new(0u64);
        assert_eq!(gate.round(500, true), Some(0), "deadlines run from the start");
        assert_eq!(gate.round(1_000, true), Some(0));
        // Cut off: every round is skipped, however long it lasts...
        for now in (1_500..30_000).step_by(500) {
            assert_eq!(gate.round(now, false), None);
        }
        // ...and confirmed again, every node gets a full deadline from then.
        assert_eq!(gate.round(30_000, true), Some(30_000));
        assert_eq!(gate.round(30_500, true), Some(30_000));
    }

    /// The defect of issue 15: a leader cut off for longer than the node
    /// deadline judged every node down from its frozen view. Through the
    /// gate, the same frozen view decides nothing, and after the cut the
    /// nodes are judged from fresh heartbeats only.
    #[test]
    fn a_cut_off_leader_judges_no_node_down() {
        use goat_storage::fsm::ClusterState;
        use goat_storage::model::{EngineStatus, Resources};
        let mut s = ClusterState::default();
        let engine = EngineStatus { healthy: true, error: None };
        let capacity = Resources { cpu: 1.0, memory: 1 << 30, disk: 1 << 30 };
        for name in ["w1", "w2"] {
            s.apply(&Command::UpsertNode { name: name.into(), capacity, engine: engine.clone(), at: 0 });
        }
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let deadline = Duration::from_secs(10);
        // Heard at 1 s; then the leader is cut off from 2 s to 20 s.
        let seen = HashMap::from([("w1".to_string(), at(1_000)), ("w2".to_string(), at(1_000))]);
        let mut gate = RoundGate::new(at(0));
        let judge = |gate: &mut RoundGate<Instant>, now: u64, confirmed: bool, seen: &HashMap<String, Instant>| {
            let since = gate.round(at(now), confirmed)?;
            // `alive` at time `now`, without waiting for the clock.
            let commands = liveness_commands(&s, now, |node| {
                let heard = seen.get(node).copied().unwrap_or(since).max(since);
                at(now).saturating_duration_since(heard) < deadline
            });
            Some(commands)
        };
        assert_eq!(judge(&mut gate, 1_500, true, &seen).map(|c| c.len()), Some(0));
        for now in (2_000..20_000).step_by(500) {
            assert!(judge(&mut gate, now, false, &seen).is_none(), "a round ran at {now} ms while cut off");
        }
        // Back at 20 s: 19 s since the last heartbeat, yet no node is due.
        assert_eq!(judge(&mut gate, 20_000, true, &seen).map(|c| c.len()), Some(0));
        // A node still silent a full deadline after the cut is due.
        let fresh = HashMap::from([("w1".to_string(), at(20_500))]);
        let late = judge(&mut gate, 30_000, true, &fresh).expect("a round");
        assert!(
            matches!(&late[..], [Command::SetNodeStatus { name, .. }] if name == "w2"),
            "only the silent node: {late:?}"
        );
    }
}
