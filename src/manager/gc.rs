//! Collecting what the cluster no longer needs: finished tasks after
//! `--task-retention`, and down nodes an operator removes.
//!
//! - The leader's loop (started with the other leader loops) looks every
//!   [`interval`] for tasks that are collectable at `now - retention`
//!   (`goat_storage::fsm::collectable`: completed, or failed and never to
//!   run again) and proposes `Command::CollectTasks` with their ids and
//!   that cutoff, at most [`MAX_PER_COMMAND`] ids per command. The state
//!   machine checks each again against the cutoff in the command, so
//!   every manager removes the same tasks.
//! - `POST /v1/gc[?older_than=DURATION]` (cluster token) runs one
//!   collection now, with the retention or the age given.
//! - `DELETE /v1/nodes/{name}` (cluster token) removes a `down` node that
//!   holds no live task; `409` otherwise. A worker that comes back under
//!   that name registers again with its next heartbeat.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::{Command, CommandResult};
use goat_storage::fsm::{collectable, ClusterState};
use goat_storage::model::{TaskId, Timestamp};
use goat_storage::validate::check_name;
use goat_storage::Millis;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::cluster::Manager;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::control::Error;

/// Task ids per `CollectTasks` command, at most (about 17 bytes each).
pub const MAX_PER_COMMAND: usize = 1_000;
/// Tasks looked at per look at the state.
const SCAN_CHUNK: usize = 4_096;

/// How often the leader collects: a tenth of the retention, between 1 s
/// and 1 min.
pub fn interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The collection cutoff at `now`: tasks unchanged since then may go.
pub fn cutoff(now: Timestamp, retention: Duration) -> Timestamp {
    now.saturating_sub(retention.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// Up to `max` collectable task ids after `after` (in id order), looking at
/// no more than `SCAN_CHUNK` tasks; returns them and where the look ended
/// (`None`: at the end of the tasks).
pub fn collectable_ids(
    state: &ClusterState,
    after: Option<TaskId>,
    cutoff: Timestamp,
    max: usize,
) -> (Vec<TaskId>, Option<TaskId>) {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    let mut ids = Vec::new();
    let mut last = None;
    for (looked, (id, task)) in state.tasks.range((from, Unbounded)).enumerate() {
        if looked == SCAN_CHUNK || ids.len() == max {
            return (ids, last);
        }
        last = Some(*id);
        if collectable(task, cutoff) {
            ids.push(*id);
        }
    }
    (ids, None)
}

/// One collection over every task, proposed through `propose`. Returns how
/// many tasks were removed.
async fn collect<F, Fut>(manager: &Manager, cutoff: Timestamp, propose: F) -> Result<u64, Error>
where
    F: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = Result<CommandResult, Error>>,
{
    let mut removed = 0;
    let mut cursor = None;
    let mut batch = Vec::new();
    loop {
        let (ids, next) = {
            let applied = manager.state().read();
            collectable_ids(&applied.state, cursor, cutoff, MAX_PER_COMMAND - batch.len())
        };
        batch.extend(ids);
        let end = next.is_none();
        if batch.len() >= MAX_PER_COMMAND || (end && !batch.is_empty()) {
            let task_ids = std::mem::take(&mut batch);
            match propose(Command::CollectTasks { task_ids, cutoff }).await? {
                CommandResult::Collected(n) => removed += n,
                other => return Err(Error::internal(format!("unexpected result {other:?}"))),
            }
        }
        if end {
            return Ok(removed);
        }
        cursor = next;
        tokio::task::yield_now().await;
    }
}

/// The leader's collection loop; ends when `token` is cancelled.
pub async fn gc_loop(manager: Arc<Manager>, term: u64, token: CancellationToken) {
    let retention = manager.task_retention();
    let every = interval(retention);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cut = cutoff(now_ms(), retention);
        // Proposed on this manager only and fenced to this leadership
        // (`Manager::propose_as_leader`): a deposed leader's collection is
        // dropped, never forwarded.
        let propose = |command| async { manager.propose_as_leader(term, command, &token).await.map_err(Error::from) };
        match collect(&manager, cut, propose).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, cutoff = cut, "collected finished tasks"),
            Err(e) => tracing::debug!(error = %e, "task collection did not finish"),
        }
    }
}

/// `?older_than=DURATION`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GcQuery {
    /// Collect tasks finished longer ago than this (default: the
    /// manager's `--task-retention`).
    pub older_than: Option<Millis>,
}

/// What `POST /v1/gc` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Collected {
    /// How many finished tasks were removed.
    pub collected: u64,
    /// Tasks finished before this time (ms since the epoch) were removed.
    #[schema(value_type = u64)]
    pub cutoff: Timestamp,
}

/// `POST /v1/gc[?older_than=DURATION]` (admin).
#[utoipa::path(
    post,
    path = "/v1/gc",
    tag = "maintenance",
    summary = "Collect finished tasks now",
    params(GcQuery),
    responses((status = 200, description = "How many tasks were removed, and the cutoff.", body = Collected)),
)]
pub async fn run(
    State(m): State<Arc<Manager>>,
    query: Result<Query<GcQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = super::extract::query_of(query)?;
    let retention = query.older_than.map_or(m.task_retention(), |d| d.as_duration());
    // Look at the current state: a follower catches up first.
    m.linearize().await?;
    let cut = cutoff(now_ms(), retention);
    let removed = collect(&m, cut, |command| m.propose(command)).await?;
    tracing::info!(removed, cutoff = cut, "collected finished tasks on request");
    Ok(Json(Collected { collected: removed, cutoff: cut }).into_response())
}

/// `DELETE /v1/nodes/{name}` (admin): `204`, or `409` if the node
/// is not down or still holds live tasks.
#[utoipa::path(
    delete,
    path = "/v1/nodes/{name}",
    tag = "nodes",
    summary = "Remove a down node",
    params(crate::manager::params::NodeNamePath),
    responses(
        (status = 204, description = "Removed."),
        crate::manager::error::NoSuchNode,
        (status = 409, description = "The node is not down, or still holds live tasks.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn remove_node(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    m.linearize().await?;
    {
        let applied = m.state().read();
        if !applied.state.nodes.contains_key(&name) {
            return Err(ApiError::not_found(format!("no node {name}")));
        }
        if let Some(refusal) = applied.state.node_removal_refused(&name) {
            return Err(refusal.into());
        }
    }
    match m.propose(Command::RemoveNode { name: name.clone(), at: now_ms() }).await? {
        CommandResult::Done => {}
        CommandResult::Refused(refusal) => return Err(refusal.into()),
        other => return Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
    m.forget_seen(&name);
    tracing::info!(node = %name, "removed a down node");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_interval_and_cutoff_follow_the_retention() {
        assert_eq!(interval(Duration::from_secs(24 * 3600)), Duration::from_secs(60));
        assert_eq!(interval(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(cutoff(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(cutoff(10, Duration::from_secs(3)), 0);
    }

    #[test]
    fn collectable_ids_are_found_in_bounded_looks() {
        let mut s = ClusterState::default();
        let spec: goat_storage::model::TaskSpec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        let n = SCAN_CHUNK as u128 + 10;
        for i in 0..n {
            let id = Uuid::from_u128(i);
            s.apply(&Command::SubmitTask { task_id: id, spec: spec.clone(), at: 1 });
            if i % 2 == 0 {
                s.apply(&Command::StopTask { task_id: id, at: 2 });
            }
        }
        let (ids, next) = collectable_ids(&s, None, 5, usize::MAX);
        assert_eq!(ids.len(), SCAN_CHUNK / 2);
        assert_eq!(next, Some(Uuid::from_u128(SCAN_CHUNK as u128 - 1)));
        let (rest, end) = collectable_ids(&s, next, 5, usize::MAX);
        assert_eq!((rest.len(), end), (5, None));
        let (few, next) = collectable_ids(&s, None, 5, 3);
        assert_eq!((few.len(), next), (3, Some(Uuid::from_u128(4))));
        assert!(collectable_ids(&s, None, 1, 10).0.is_empty(), "finished after the cutoff");
    }
}
