//! The managers' internal routes (`/internal`, bincode, cluster token):
//! a follower's forwarded write, the leader's read index, a peer's status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::{codec, Command, CommandResult};

use super::cluster::{InternalStatus, Manager, ProposeError};
use super::error::{ApiError, ErrorCode};

type Shared = State<Arc<Manager>>;

/// A follower's forwarded command, proposed here if this manager leads.
pub async fn propose(State(m): Shared, body: Bytes) -> Response {
    let command: Command = match codec::decode(&body) {
        Ok(c) => c,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadBody, e.to_string()).into_response(),
    };
    // A leader loop's decision is committed by the leader that took it or
    // not at all (`Manager::propose_as_leader`): never taken from another.
    if matches!(command, Command::Fenced { .. }) {
        let refused = CommandResult::Refused(goat_storage::fsm::Refusal::invalid(
            "a leader's decision is never forwarded to another",
        ));
        return codec::encode(&Ok::<_, ProposeError>(refused)).into_response();
    }
    let answer: Result<CommandResult, ProposeError> = if m.is_leader() {
        let result = m.propose_locally(command).await;
        if result.is_ok() {
            m.kick_placement();
        }
        result
    } else {
        Err(ProposeError::NotLeader)
    };
    codec::encode(&answer).into_response()
}

pub async fn read_index(State(m): Shared) -> Response {
    match m.read_index().await {
        Ok(index) => codec::encode(&index).into_response(),
        Err(ProposeError::NotLeader) => {
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, ErrorCode::NotLeader, "not the leader").into_response()
        }
        Err(ProposeError::Failed(e)) => ApiError::unavailable(e).into_response(),
    }
}

pub async fn status(State(m): Shared) -> Response {
    let initialized = m.raft().is_initialized().await.unwrap_or(false);
    Json(InternalStatus { id: m.id(), initialized }).into_response()
}
