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
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::cluster::Manager;
use super::nodes::liveness_commands;
use crate::clock::now_ms;
use crate::scheduler::{Scheduler, NO_NODES};

/// Placements committed per Raft entry, at most.
const PLACEMENT_BATCH: usize = 1_000;
/// Placement rounds start at most this often: submissions arriving in
/// between are placed together.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(20);
/// While no node can take anything, rounds only refresh reasons.
const NO_NODES_ROUND_INTERVAL: Duration = Duration::from_secs(1);

pub async fn supervise(manager: Arc<Manager>) {
    let mut metrics = manager.raft.metrics();
    let mut running: Option<CancellationToken> = None;
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            m.state == ServerState::Leader && m.current_leader == Some(manager.id)
        };
        match (leading, running.is_some()) {
            (true, false) => {
                let token = CancellationToken::new();
                let term = manager.raft.metrics().borrow().current_term;
                tracing::info!(term, "became leader: starting the control loops");
                tokio::spawn(placement_loop(manager.clone(), token.clone()));
                tokio::spawn(liveness_loop(manager.clone(), token.clone()));
                tokio::spawn(reschedule_loop(manager.clone(), token.clone()));
                running = Some(token);
            }
            (false, true) => {
                tracing::info!("no longer leader: stopping the control loops");
                if let Some(token) = running.take() {
                    token.cancel();
                }
            }
            _ => {}
        }
        if metrics.changed().await.is_err() {
            if let Some(token) = running.take() {
                token.cancel();
            }
            return;
        }
    }
}

/// Whether the leader currently believes `node` alive: heard from within the
/// deadline, or not yet due (every node gets a full deadline from `since`).
fn alive(last_seen: &HashMap<String, Instant>, node: &str, since: Instant, deadline: Duration) -> bool {
    let heard = last_seen.get(node).copied().unwrap_or(since).max(since);
    heard.elapsed() < deadline
}

async fn placement_loop(manager: Arc<Manager>, cancel: CancellationToken) {
    let since = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = manager.placement_kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        match place_pending(&manager, since).await {
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

/// One placement round: every pending task that fits gets a node; the
/// others get (or keep) a reason.
async fn place_pending(manager: &Manager, since: Instant) -> Result<Round, super::error::ApiError> {
    let round;
    let commands = {
        let seen = manager.last_seen.lock().map(|s| s.clone()).unwrap_or_default();
        let applied = manager.state.read();
        let state = &applied.state;
        if state.pending_tasks().next().is_none() {
            return Ok(Round::Done);
        }
        let mut scheduler = Scheduler::new(state, |node| alive(&seen, node, since, manager.node_down_after));
        round = if scheduler.has_nodes() { Round::Done } else { Round::NoNodes };
        let at = now_ms();
        let mut commands = Vec::new();
        for task in state.pending_tasks() {
            if !scheduler.has_nodes() && task.reason.as_deref() == Some(NO_NODES) {
                // Nothing can be placed anywhere and the task already says so.
                continue;
            }
            match scheduler.place_avoiding(&task.spec, manager.default_strategy, task.failed_on.as_deref()) {
                Ok(node) => {
                    tracing::debug!(task = %task.id, node = %node, "placing task");
                    commands.push(Command::PlaceTask { task_id: task.id, node, at });
                }
                Err(reason) if task.reason.as_deref() != Some(reason.as_str()) => {
                    tracing::debug!(task = %task.id, %reason, "task stays pending");
                    commands.push(Command::SetPendingReason { task_id: task.id, reason: Some(reason), at });
                }
                Err(_) => {}
            }
        }
        commands
    };
    let placed = commands.iter().filter(|c| matches!(c, Command::PlaceTask { .. })).count();
    if placed > 0 {
        tracing::info!(placed, "placement round");
    }
    for chunk in commands.chunks(PLACEMENT_BATCH) {
        let result = manager.propose(Command::Batch(chunk.to_vec())).await?;
        if let CommandResult::Batch(results) = result {
            let refused = results.iter().filter(|r| r.is_refused()).count();
            if refused > 0 {
                tracing::debug!(refused, "some placements were refused (state moved on)");
            }
        }
    }
    Ok(round)
}

/// Gives failed tasks another chance elsewhere, as their policy allows.
async fn reschedule_loop(manager: Arc<Manager>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let commands = crate::reschedule::due(&manager.state.read().state, now_ms());
        if commands.is_empty() {
            continue;
        }
        tracing::info!(tasks = commands.len(), "rescheduling failed tasks");
        match manager.propose(Command::Batch(commands)).await {
            Ok(_) => manager.placement_kick.notify_one(),
            Err(e) => tracing::warn!(error = %e.body.error, "could not reschedule failed tasks"),
        }
    }
}

async fn liveness_loop(manager: Arc<Manager>, cancel: CancellationToken) {
    let since = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
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
        if let Err(e) = manager.propose(Command::Batch(commands)).await {
            tracing::warn!(error = %e.body.error, "could not commit liveness decisions");
        }
        manager.placement_kick.notify_one();
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
