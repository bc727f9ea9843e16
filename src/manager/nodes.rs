//! Workers as the leader sees them: heartbeats in, assignments out.
//!
//! A worker's heartbeat lands on any manager; a follower relays it to the
//! leader, which (1) notes the time in memory — liveness deadlines are not
//! replicated, only a node's change of status is — (2) turns what changed in
//! the worker's report into commands, committed in one batch, and (3)
//! answers with the full list of tasks the node should hold.
//!
//! Deciding what to commit and what to assign are pure functions of the
//! applied state, in `crate::control::nodes`.

use std::sync::Arc;
use tokio::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::Command;
use goat_storage::model::*;
use goat_storage::validate::check_name;
use serde::Serialize;

use super::cluster::LeaderHost;
use super::cluster::{Leadership, Manager};
use super::error::{ApiError, ErrorCode};
use super::extract::{consistent, forwarded, read_options, ReadOptions};
use super::json::parse;
use crate::clock::now_ms;
use crate::control::assignments::heartbeat_reply;
pub use crate::control::nodes::{
    assignments, heartbeat_commands, liveness_commands, requeue_commands, window_ends_at, HEARTBEAT_INTERVAL,
};

/// The largest heartbeat accepted: a report for each of a node's tasks
/// (a few hundred bytes each), for thousands of tasks.
pub const MAX_HEARTBEAT_BYTES: usize = 4 << 20;

/// `POST /v1/nodes/{name}/heartbeat`.
#[utoipa::path(
    post,
    path = "/v1/nodes/{name}/heartbeat",
    tag = "nodes",
    summary = "A worker's heartbeat (cluster token only)",
    params(crate::manager::params::NodeNamePath),
    request_body = Heartbeat,
    responses(
        (status = 200, description = "Every task the node should hold.", body = HeartbeatReply),
        crate::manager::error::BodyOverLimit,
        crate::manager::error::NotLeader,
    ),
)]
pub async fn heartbeat(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    let hb: Heartbeat = parse(body)?;
    match heartbeat_route(&*m) {
        HeartbeatRoute::Here => {}
        HeartbeatRoute::Refuse(e) => return Err(e),
        HeartbeatRoute::Forward => {
            if headers.contains_key("x-goat-forwarded-by") {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    ErrorCode::NotLeader,
                    "this manager does not lead",
                ));
            }
            return forwarded(&m, reqwest::Method::POST, &format!("/v1/nodes/{name}/heartbeat"), raw).await;
        }
    }
    Ok(Json(answer_heartbeat(&*m, &name, &hb).await?).into_response())
}

/// Where a heartbeat is handled, from this manager's leadership.
pub enum HeartbeatRoute {
    /// This manager leads and a quorum confirmed it lately: answer.
    Here,
    /// This manager believes it leads but cannot confirm it: 503, so that
    /// the worker tries another manager (see [`unconfirmed`]).
    Refuse(ApiError),
    /// A follower: relay it to the leader.
    Forward,
}

pub fn heartbeat_route<H: LeaderHost>(m: &H) -> HeartbeatRoute {
    match m.leadership() {
        Leadership::Confirmed { .. } => HeartbeatRoute::Here,
        Leadership::Unconfirmed { ack_age, .. } => HeartbeatRoute::Refuse(unconfirmed(ack_age)),
        Leadership::Follower => HeartbeatRoute::Forward,
    }
}

/// The leader's answer to a heartbeat of `name` (routed [`HeartbeatRoute::Here`]):
/// (1) note the time in memory, (2) commit what changed in the report, (3)
/// answer with the node's assignments, numbered with the index they were
/// computed at (see `super::assignments`).
pub async fn answer_heartbeat<H: LeaderHost>(m: &H, name: &str, hb: &Heartbeat) -> Result<HeartbeatReply, ApiError> {
    use tracing::Instrument;
    let span = tracing::debug_span!("heartbeat", node = %name);
    answer_heartbeat_in(m, name, hb).instrument(span).await
}

async fn answer_heartbeat_in<H: LeaderHost>(m: &H, name: &str, hb: &Heartbeat) -> Result<HeartbeatReply, ApiError> {
    m.last_seen().lock().insert(name.to_string(), Instant::now());
    // Usually nothing changed: one short look at the state decides and
    // answers. (The lock is the state machine's: hold it briefly.)
    let (commands, unchanged) = {
        let applied = m.state().read();
        let commands = heartbeat_commands(&applied.state, name, hb, m.now_ms());
        let unchanged = commands.is_empty().then(|| heartbeat_reply(&applied, name, hb.held.as_deref()));
        (commands, unchanged)
    };
    Ok(match unchanged {
        Some(reply) => reply,
        None => {
            m.propose(Command::Batch(commands)).await?;
            m.placement_kick().notify_one();
            heartbeat_reply(&m.state().read(), name, hb.held.as_deref())
        }
    })
}

/// The answer of a manager that believes it leads but cannot confirm it (no
/// quorum acknowledgement within its lease) to a worker: 503, so that the
/// worker tries another manager at once. Its view may be frozen: it was
/// perhaps deposed without hearing of it, and answering from that view
/// would keep the worker from the real leader while that one moves its
/// tasks.
pub fn unconfirmed(ack_age: Option<std::time::Duration>) -> ApiError {
    let since = match ack_age {
        Some(age) => format!("no quorum acknowledged it for {} ms", age.as_millis()),
        None => "no quorum acknowledged it yet in this term".to_string(),
    };
    ApiError::unavailable(format!("this manager cannot confirm that it still leads ({since}): try another manager"))
}

/// `PUT /v1/nodes/{name}/drain`: the node takes no new tasks and its tasks
/// are moved to other nodes.
#[utoipa::path(
    put,
    path = "/v1/nodes/{name}/drain",
    tag = "nodes",
    summary = "Drain a node",
    params(crate::manager::params::NodeNamePath),
    responses(
        (status = 200, description = "The node, `draining`; its tasks are moved elsewhere.", body = Node),
        crate::manager::error::NoSuchNode,
    ),
)]
pub async fn drain(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    // Read the current placement (not a follower's possibly older view):
    // every task placed on the node so far is moved.
    m.linearize().await?;
    if !m.state().read().state.nodes.contains_key(&name) {
        return Err(ApiError::not_found(format!("no node {name}")));
    }
    let at = now_ms();
    let mut commands = vec![Command::SetNodeStatus { name: name.clone(), status: NodeStatus::Draining, at }];
    commands.extend(requeue_commands(&m.state().read().state, &name, &format!("node {name} is draining"), at));
    m.propose(Command::Batch(commands)).await?;
    m.kick_placement();
    tracing::info!(node = %name, "draining node");
    let node = m.state().read().state.nodes.get(&name).cloned();
    Ok((StatusCode::OK, Json(node)).into_response())
}

/// `DELETE /v1/nodes/{name}/drain`: ends a drain (Nomad's `node drain
/// -disable`, kubectl's `uncordon`): the node takes tasks again. Tasks moved
/// away stay where they went; a node that is down stays down until it
/// reports, then comes back `ready`.
#[utoipa::path(
    delete,
    path = "/v1/nodes/{name}/drain",
    tag = "nodes",
    summary = "End a drain",
    params(crate::manager::params::NodeNamePath),
    responses(
        (status = 200, description = "The node, ready again.", body = Node),
        crate::manager::error::NoSuchNode,
    ),
)]
pub async fn undrain(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    m.linearize().await?;
    if !m.state().read().state.nodes.contains_key(&name) {
        return Err(ApiError::not_found(format!("no node {name}")));
    }
    m.propose(Command::SetNodeStatus { name: name.clone(), status: NodeStatus::Ready, at: now_ms() }).await?;
    m.kick_placement();
    tracing::info!(node = %name, "drain ended");
    let node = m.state().read().state.nodes.get(&name).cloned();
    Ok((StatusCode::OK, Json(node)).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    node: Node,
    allocated: Resources,
    tasks: usize,
}

/// `GET /v1/nodes`.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    summary = "List worker nodes",
    params(crate::manager::params::Stale),
    responses((status = 200, description = "Every node, with what is allocated on it.", body = Vec<NodeView>)),
)]
pub async fn list_nodes(
    State(m): State<Arc<Manager>>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state().read();
    let state = &applied.state;
    Ok(Json(
        state
            .nodes
            .values()
            .map(|n| NodeView {
                node: n.clone(),
                allocated: state.allocated(&n.name),
                tasks: state.tasks_on(&n.name).count(),
            })
            .collect(),
    ))
}
