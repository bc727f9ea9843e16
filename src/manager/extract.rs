//! What the HTTP handlers share: reading the query's read options, making
//! a read consistent, relaying a request to the leader, naming a Raft role.
//! Handlers import it; it imports no handler (nor the router).

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use goat_storage::model::TaskState;
use openraft::ServerState;
use serde::Deserialize;

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};

/// `?stale=true` reads from local state without asking the leader.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadOptions {
    /// Answer from this manager's state without asking the leader (may lag).
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    pub stale: bool,
    /// For `GET /v1/tasks`: only tasks in this state.
    #[serde(default)]
    pub state: Option<TaskState>,
    /// For `GET /v1/tasks`: at most this many tasks (default
    /// `tasks::DEFAULT_PAGE`, at most `tasks::MAX_PAGE`).
    #[serde(default)]
    #[param(minimum = 1, maximum = 5000)]
    pub limit: Option<usize>,
    /// For `GET /v1/tasks`: only tasks whose id comes after this one (the
    /// `X-Goat-Next` cursor of the previous page).
    #[serde(default)]
    pub after: Option<uuid::Uuid>,
}

pub fn read_options(
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<ReadOptions, ApiError> {
    query_of(query)
}

/// A route's query parameters, or a 400 `invalid_query` naming the
/// parameter at fault (`older_than`), or `query` when it is not one
/// parameter's fault (an unknown one, a malformed string).
pub fn query_of<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        // axum reads the query with serde_path_to_error: "Failed to
        // deserialize query string: older_than: invalid duration ...".
        let detail = text.split_once("query string: ").map_or(text.as_str(), |(_, d)| d);
        let parameter = detail
            .split_once(": ")
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        ApiError::field(ErrorCode::InvalidQuery, parameter.unwrap_or("query"), detail)
    })
}

/// The most hex digits of a version (`after`) of the long polls.
pub const MAX_VERSION_LEN: usize = 64;

/// Checks the `after` of a long poll: the `version` of an earlier answer,
/// 1 to [`MAX_VERSION_LEN`] hex digits. An empty `after=` is refused, not
/// read as absent: it is no version a manager ever answered.
pub fn check_version(after: Option<&str>) -> Result<(), ApiError> {
    match after {
        Some(after)
            if after.is_empty() || after.len() > MAX_VERSION_LEN || !after.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Err(ApiError::field(
                ErrorCode::InvalidField,
                "after",
                "must be a version from an earlier answer (1 to 64 hex digits)",
            ))
        }
        _ => Ok(()),
    }
}

/// Makes this manager's state current unless the client accepts stale data.
pub async fn consistent(manager: &Manager, options: &ReadOptions) -> Result<(), ApiError> {
    if options.stale {
        Ok(())
    } else {
        Ok(manager.linearize().await?)
    }
}

/// Relays a request to the leader and its answer back.
pub async fn forwarded(m: &Manager, method: reqwest::Method, path: &str, body: Bytes) -> Result<Response, ApiError> {
    let Some((status, bytes)) = m.forward_to_leader(method, path, body).await? else {
        return Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, ErrorCode::NotForwarded, "this manager leads"));
    };
    Ok((status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// A Raft role's name in the API.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
