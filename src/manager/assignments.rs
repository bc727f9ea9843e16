//! `GET /v1/nodes/{name}/assignments`: a worker's long poll on its
//! assignments, so that it acts on a placement within milliseconds instead
//! of at its next heartbeat (up to a second later).
//!
//! The worker names the list it holds by its `version` (a fingerprint of
//! the tasks, generations and desired statuses, see
//! [`crate::control::assignments`]). The
//! leader answers at once when the node's list differs from it, otherwise
//! it waits until an applied batch changes the list or the wait is over
//! (then `304 Not Modified`). It wakes on the state machine's applied-index
//! watch, after every applied batch, events or not (a stop request changes
//! a task without an event).
//!
//! Every answer carries the applied log index it was computed at, like a
//! heartbeat's answer, so that the worker never replaces a list with an
//! older one (see `goat_worker::agent::AssignmentOrder`).
//!
//! Only the leader's state decides: a follower relays the poll to the leader
//! with a shorter wait (its relay times out after 10 s), or answers `421`
//! when the poll was already relayed to it — the heartbeat route's rule.
//!
//! A manager holds at most `--max-polls` polls at once (relayed ones
//! included); past that it answers `503` with `Retry-After`, and the
//! worker falls back on its heartbeats.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::state_machine::SharedState;
use goat_storage::model::HeartbeatReply;
use goat_storage::validate::check_name;
use goat_storage::Millis;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Leadership, Manager};
use super::error::{ApiError, ErrorCode};
use super::extract::{check_version, forwarded};
pub use crate::control::assignments::{must_answer, reply_at, version_of, version_on};

/// How long a poll waits when it does not say.
pub const DEFAULT_WAIT: Millis = Millis(10_000);
/// The longest wait a poll may ask for.
pub const MAX_WAIT: Millis = Millis(30_000);
/// The wait a follower relays a poll with: its relay to the leader times
/// out after 10 s.
const RELAYED_WAIT: Millis = Millis(8_000);

/// Waits until `node`'s list in `state` differs from `after` (its answer),
/// or until `until` passes or `closing` is cancelled (`None`).
pub async fn wait_for_change(
    state: &SharedState,
    node: &str,
    after: Option<&str>,
    until: Instant,
    closing: &CancellationToken,
) -> Option<HeartbeatReply> {
    let mut applied = state.watch_applied();
    loop {
        // Mark the watch seen before reading: a batch applied after the
        // read wakes the wait below.
        applied.borrow_and_update();
        {
            let now = state.read();
            if must_answer(&version_on(&now, node), after) {
                return Some(reply_at(&now, node));
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return None },
            _ = tokio::time::sleep_until(until) => return None,
            _ = closing.cancelled() => return None,
        }
    }
}

/// `?after=VERSION&wait=DURATION`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// The version of the list the worker holds (an earlier answer's
    /// `version`: 1 to 64 hex digits).
    #[param(min_length = 1, max_length = 64, pattern = r"^[0-9a-fA-F]{1,64}$")]
    pub after: Option<String>,
    /// How long to wait for a change (default 10 s; a wait over 30 s is cut
    /// to 30 s).
    pub wait: Option<Millis>,
}

fn poll_query(query: Result<Query<PollQuery>, QueryRejection>) -> Result<PollQuery, ApiError> {
    let query = super::extract::query_of(query)?;
    check_version(query.after.as_deref())?;
    Ok(query)
}

/// `GET /v1/nodes/{name}/assignments[?after=VERSION][&wait=DURATION]`.
#[utoipa::path(
    get,
    path = "/v1/nodes/{name}/assignments",
    tag = "nodes",
    summary = "A worker's long poll on its assignments (cluster token only)",
    params(crate::manager::params::NodeNamePath, PollQuery),
    responses(
        (status = 200, description = "The node's assignments and their version.", body = HeartbeatReply),
        (status = 304, description = "Unchanged: the list still has version `after` at the end of the wait."),
        crate::manager::error::NoSuchNode,
        crate::manager::error::NotLeader,
        (status = 503, description = "This manager holds its limit of polls (`busy`), or its leadership is not confirmed (`unavailable`); retry after `Retry-After`.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn poll(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let query = poll_query(query)?;
    let wait = query.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let _permit = m
        .poll_permit()
        .map_err(|max| ApiError::busy(format!("this manager already holds {max} assignment polls (--max-polls)")))?;
    match m.leadership() {
        Leadership::Confirmed { .. } => {}
        Leadership::Unconfirmed { ack_age, .. } => return Err(super::nodes::unconfirmed(ack_age)),
        Leadership::Follower => {
            if headers.contains_key("x-goat-forwarded-by") {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    ErrorCode::NotLeader,
                    "this manager does not lead",
                ));
            }
            let after = query.after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default();
            let path = format!("/v1/nodes/{name}/assignments?wait={}ms{after}", wait.min(RELAYED_WAIT).0);
            return forwarded(&m, reqwest::Method::GET, &path, Default::default()).await;
        }
    }
    if !m.state().read().state.nodes.contains_key(&name) {
        return Err(ApiError::not_found(format!("no node {name} (it registers with its first heartbeat)")));
    }
    let span = tracing::debug_span!("assignments_poll", node = %name);
    let _enter = span.enter();
    let until = Instant::now() + wait.as_duration();
    match wait_for_change(m.state(), &name, query.after.as_deref(), until, m.closing()).await {
        Some(reply) => Ok(Json(reply).into_response()),
        None => Ok(StatusCode::NOT_MODIFIED.into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiting_answers_a_changed_list_at_once_and_times_out_on_the_same() {
        let state = SharedState::default();
        let current = version_on(&state.read(), "w1");
        // A worker holding another list gets the current one, numbered.
        let far = Instant::now() + Duration::from_secs(30);
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            wait_for_change(&state, "w1", Some("ff"), far, &CancellationToken::new()),
        )
        .await
        .expect("answered at once")
        .expect("a list");
        assert_eq!((reply.version.as_str(), reply.index, reply.assignments.len()), (current.as_str(), 0, 0));
        // One holding the current list waits out its wait.
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(wait_for_change(&state, "w1", Some(&current), soon, &CancellationToken::new()).await.is_none());
    }

    #[test]
    fn bad_queries_name_the_field() {
        let e = poll_query(Ok(Query(PollQuery { after: Some("not hex".into()), wait: None }))).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("after"));
        assert!(poll_query(Ok(Query(PollQuery { after: Some("00ff".into()), wait: None }))).is_ok());
    }
}
