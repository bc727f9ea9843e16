//! The cluster resource: `GET /v1/health`, `GET /v1/cluster`, the
//! managers (`/v1/cluster/members`) and `GET /v1/metrics`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::{forwarded, role_name};
use super::json::parse;

type Shared = State<Arc<Manager>>;

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthView {
    status: &'static str,
    id: u64,
    role: &'static str,
    leader: Option<u64>,
    term: u64,
    last_applied: Option<u64>,
    /// The last log index covered by this manager's latest snapshot.
    snapshot: Option<u64>,
    /// The last log index purged from this manager's log.
    purged: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "cluster",
    summary = "This manager's role, term and indexes (no token needed)",
    responses((status = 200, description = "This manager.", body = HealthView)),
)]
pub async fn health(State(m): Shared) -> Json<HealthView> {
    let metrics = m.raft().metrics().borrow().clone();
    Json(HealthView {
        status: "ok",
        id: m.id(),
        role: role_name(metrics.state),
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_applied: metrics.last_applied.map(|l| l.index),
        snapshot: metrics.snapshot.map(|l| l.index),
        purged: metrics.purged.map(|l| l.index),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberView {
    id: u64,
    addr: String,
    role: &'static str,
    voter: bool,
    /// The member's last applied index, as far as this manager knows: its
    /// own exactly; on the leader, each follower's replicated index.
    last_applied: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    id: u64,
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberView>,
}

#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    summary = "The leader, term and members",
    responses((status = 200, description = "The cluster as this manager sees it.", body = ClusterView)),
)]
pub async fn cluster(State(m): Shared) -> Json<ClusterView> {
    let metrics = m.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let role = if Some(*id) == metrics.current_leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            let last_applied = if *id == m.id() {
                metrics.last_applied.map(|l| l.index)
            } else {
                metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index)
            };
            MemberView { id: *id, addr: node.addr.clone(), role, voter: voters.contains(id), last_applied }
        })
        .collect();
    Json(ClusterView { id: m.id(), leader: metrics.current_leader, term: metrics.current_term, members })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: u64,
    addr: String,
}

/// What `POST /v1/cluster/members` answers.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AddedMember {
    pub id: u64,
    pub addr: String,
    /// Always true: the member is a voter when the answer is sent.
    pub voter: bool,
}

/// Adds a manager: first as a learner that catches up, then as a voter.
#[utoipa::path(
    post,
    path = "/v1/cluster/members",
    tag = "cluster",
    summary = "Add a manager (learner, then voter)",
    request_body = NewMember,
    responses(
        (status = 200, description = "Added as a voter.", body = AddedMember),
        crate::manager::error::MembershipRefused,
    ),
)]
pub async fn add_member(State(m): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    let member: NewMember = parse(body)?;
    if member.id == 0 {
        return Err(ApiError::field(ErrorCode::InvalidField, "id", "must be a positive integer"));
    }
    if member.addr.trim().is_empty() || member.addr.contains('/') {
        return Err(ApiError::field(ErrorCode::InvalidField, "addr", "must be HOST:PORT"));
    }
    if !m.is_leader() {
        return forwarded(&m, reqwest::Method::POST, "/v1/cluster/members", raw).await;
    }
    let node = BasicNode { addr: member.addr.clone() };
    m.raft().add_learner(member.id, node, true).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    let change = ChangeMembers::AddVoterIds([member.id].into());
    m.raft().change_membership(change, false).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    tracing::info!(member = member.id, addr = %member.addr, "added a manager");
    Ok((StatusCode::OK, Json(AddedMember { id: member.id, addr: member.addr, voter: true })).into_response())
}

/// Removes a manager from the group (voter or learner).
#[utoipa::path(
    delete,
    path = "/v1/cluster/members/{id}",
    tag = "cluster",
    summary = "Remove a manager",
    params(crate::manager::params::MemberIdPath),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such manager.", body = crate::manager::error::ErrorBody),
        crate::manager::error::MembershipRefused,
    ),
)]
pub async fn remove_member(State(m): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: u64 =
        id.parse().map_err(|_| ApiError::field(ErrorCode::InvalidField, "id", "must be a positive integer"))?;
    if !m.is_leader() {
        return forwarded(&m, reqwest::Method::DELETE, &format!("/v1/cluster/members/{id}"), Bytes::new()).await;
    }
    let metrics = m.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(ApiError::not_found(format!("no manager {id}")));
    }
    let is_voter = membership.voter_ids().any(|v| v == id);
    let change =
        if is_voter { ChangeMembers::RemoveVoters([id].into()) } else { ChangeMembers::RemoveNodes([id].into()) };
    m.raft().change_membership(change, false).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    tracing::info!(member = id, "removed a manager");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/metrics`: Prometheus text exposition format.
#[utoipa::path(
    get,
    path = "/v1/metrics",
    tag = "observability",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Text exposition format 0.0.4.", content_type = "text/plain; version=0.0.4", body = String),
    ),
)]
pub async fn metrics(State(m): Shared) -> Response {
    let body = crate::metrics::render(m.raft(), m.state(), m.activity());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}
