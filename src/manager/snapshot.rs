//! Backup and restore of the cluster state over the API.
//!
//! - `GET /v1/snapshot`: a linearizable copy of every task and node, as a
//!   [`Backup`] (JSON, versioned). It holds every secret value in clear,
//!   so it needs an `admin` token (see [`super::auth`]).
//! - `POST /v1/snapshot/restore`: replaces the state with a backup, by
//!   committing one `Command::Restore` through Raft. It destroys the current
//!   state, so it needs an `admin` token. API tokens are not part of a
//!   backup and a restore leaves them as they are.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::CommandResult;
use goat_storage::backup::Backup;

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::{consistent, forwarded, read_options, ReadOptions};
use crate::clock::now_ms;

/// The largest backup `POST /v1/snapshot/restore` accepts.
pub use goat_raft::limits::MAX_RESTORE_BYTES;

/// `GET /v1/snapshot`.
#[utoipa::path(
    get,
    path = "/v1/snapshot",
    tag = "maintenance",
    summary = "Save a backup of the cluster state",
    params(crate::manager::params::Stale),
    responses((status = 200, description = "The backup.", body = Backup)),
)]
pub async fn save(
    State(m): State<Arc<Manager>>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Backup>, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state().read();
    Ok(Json(Backup::of(&applied.state, applied.last_applied.map(|l| l.index), now_ms())))
}

/// What `POST /v1/snapshot/restore` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Restored {
    /// Always true.
    pub restored: bool,
    /// Tasks in the restored state.
    pub tasks: usize,
    /// Nodes in the restored state.
    pub nodes: usize,
}

/// `POST /v1/snapshot/restore` (admin).
#[utoipa::path(
    post,
    path = "/v1/snapshot/restore",
    tag = "maintenance",
    summary = "Restore a backup",
    request_body = Backup,
    responses(
        (status = 200, description = "Restored.", body = Restored),
        (status = 413, description = "The backup is over the limit.", body = crate::manager::error::ErrorBody),
        crate::manager::error::NotLeader,
        (status = 422, description = "The backup lists a task id or a node name twice (code `invalid`).", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn restore(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, ErrorCode::BodyTooLarge, format!("a backup is limited to {MAX_RESTORE_BYTES} bytes"))
        } else {
            ApiError::new(status, ErrorCode::BadBody, rejection.body_text())
        }
    })?;
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let backup: Backup = serde_path_to_error::deserialize(&mut deserializer).map_err(super::json::field_error)?;
    backup.check()?;
    // The leader proposes it, so that it can give every restored node a
    // full heartbeat deadline from now (a leader that has led for a while
    // would otherwise mark the restored nodes down at once, and move their
    // tasks, before their workers could report).
    if !m.is_leader() {
        if headers.contains_key("x-goat-forwarded-by") {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                ErrorCode::NotLeader,
                "this manager does not lead",
            ));
        }
        return forwarded(&m, reqwest::Method::POST, "/v1/snapshot/restore", body).await;
    }
    m.note_seen_all(backup.nodes.iter().map(|n| n.name.as_str()));
    let (tasks, nodes) = (backup.tasks.len(), backup.nodes.len());
    match m.propose(backup.into_command()).await? {
        CommandResult::Refused(refusal) => return Err(refusal.into()),
        CommandResult::Done => {}
        other => return Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
    m.kick_placement();
    let applied = m.state().read().last_applied.map(|l| l.index);
    tracing::warn!(tasks, nodes, ?applied, "restored the cluster state from a backup");
    Ok(Json(Restored { restored: true, tasks, nodes }).into_response())
}
