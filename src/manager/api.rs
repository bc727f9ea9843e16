//! The public HTTP API (`/v1`, JSON) and the managers' internal routes
//! (`/internal`, bincode, token required). Every manager serves all of it:
//! writes are proposed through the leader, reads are linearizable unless the
//! client asks for `?stale=true`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use goat_raft::limits::{self, limited};
use goat_raft::{codec, Command, CommandResult};
use goat_storage::fsm::RefusalKind;
use goat_storage::model::{Task, TaskSpec, TaskState};
use goat_storage::validate::validate_spec;
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cluster::{InternalStatus, Manager, ProposeError};
use super::error::ApiError;
use super::extract::{consistent, forwarded, read_options, role_name, ReadOptions};
use super::json::{parse, MAX_BODY_BYTES};
use super::nodes;
use crate::clock::now_ms;

type Shared = State<Arc<Manager>>;

/// The public API in one table, one line per method and path: it builds the
/// router, and a test checks it against `docs/openapi.json` both ways (a
/// route added here must be documented there).
/// A route may add `, limit BYTES` to accept bodies larger than
/// [`MAX_BODY_BYTES`].
macro_rules! public_api {
    ($($method:ident $path:literal => $handler:expr $(, limit $limit:expr)?;)*) => {
        /// `(method, path)` of every public route.
        #[cfg_attr(not(test), allow(dead_code))] // read by the OpenAPI test
        pub const PUBLIC_ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn public_router() -> Router<Arc<Manager>> {
            Router::new()
                $(.route($path, limited(axum::routing::$method($handler), MAX_BODY_BYTES $(.max($limit))?)))*
        }
    };
}

public_api! {
    get "/v1/health" => health;
    get "/v1/cluster" => cluster;
    post "/v1/cluster/members" => add_member;
    delete "/v1/cluster/members/{id}" => remove_member;
    get "/v1/cluster/verify" => super::verify::verify;
    get "/v1/cluster/headroom" => super::headroom::headroom;
    post "/v1/tasks" => submit_task;
    get "/v1/tasks" => list_tasks;
    get "/v1/tasks/{id}" => get_task;
    delete "/v1/tasks/{id}" => stop_task;
    get "/v1/stats" => stats;
    post "/v1/services" => super::services::create;
    get "/v1/services" => super::services::list;
    get "/v1/services/{name}" => super::services::get;
    put "/v1/services/{name}" => super::services::put;
    delete "/v1/services/{name}" => super::services::delete;
    post "/v1/services/{name}/scale" => super::services::scale;
    post "/v1/services/{name}/rollback" => super::services::rollback;
    post "/v1/services/{name}/promote" => super::services::promote;
    get "/v1/services/{name}/endpoints" => super::services::list_endpoints;
    get "/v1/nodes" => nodes::list_nodes;
    delete "/v1/nodes/{name}" => super::gc::remove_node;
    post "/v1/nodes/{name}/heartbeat" => nodes::heartbeat, limit nodes::MAX_HEARTBEAT_BYTES;
    get "/v1/nodes/{name}/assignments" => super::assignments::poll;
    put "/v1/nodes/{name}/drain" => nodes::drain;
    delete "/v1/nodes/{name}/drain" => nodes::undrain;
    get "/v1/events" => super::events::stream;
    get "/v1/metrics" => metrics;
    get "/v1/openapi.json" => super::openapi::document;
    get "/v1/snapshot" => super::snapshot::save;
    post "/v1/snapshot/restore" => super::snapshot::restore, limit super::snapshot::MAX_RESTORE_BYTES;
    post "/v1/gc" => super::gc::run;
    post "/v1/tokens" => super::auth::create;
    get "/v1/tokens" => super::auth::list;
    delete "/v1/tokens/{id}" => super::auth::revoke;
}

/// The whole HTTP surface of a manager: the public API, the internal
/// routes, and `extra` (the `/raft/*` routes), all behind one
/// authentication layer ([`super::auth::authenticate`]).
pub fn router(manager: Arc<Manager>, extra: Router) -> Router {
    public_router()
        .route("/internal/propose", limited(post(internal_propose), limits::MAX_PROPOSE_BYTES))
        .route("/internal/read-index", limited(post(internal_read_index), limits::NO_BODY_BYTES))
        .route("/internal/status", limited(get(internal_status), limits::NO_BODY_BYTES))
        .route("/internal/state-digest", limited(get(super::verify::internal_state_digest), limits::NO_BODY_BYTES))
        .fallback(not_found)
        .with_state(manager.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(manager, super::auth::authenticate))
        .layer(axum::middleware::from_fn(crate::metrics::track_requests))
}

/// `GET /v1/metrics`: Prometheus text exposition format.
async fn metrics(State(m): Shared) -> Response {
    let body = crate::metrics::render(&m.raft, &m.state);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Tasks per page of `GET /v1/tasks` when the client does not say.
pub const DEFAULT_PAGE: usize = 1_000;
/// The most tasks one page may hold.
pub const MAX_PAGE: usize = 5_000;
/// The response header that carries the cursor of the next page.
pub const NEXT_HEADER: &str = "x-goat-next";

/// One page of tasks in id order: up to `limit` tasks after `after` (in
/// `state`, if given), and the cursor of the next page if there are more.
pub fn task_page(
    tasks: &std::collections::BTreeMap<Uuid, Task>,
    after: Option<Uuid>,
    state: Option<TaskState>,
    limit: usize,
) -> (Vec<&Task>, Option<Uuid>) {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    let mut page = Vec::new();
    for task in tasks.range((from, Unbounded)).map(|(_, t)| t).filter(|t| state.is_none_or(|s| t.state == s)) {
        if page.len() == limit {
            let next = page.last().map(|t: &&Task| t.id);
            return (page, next);
        }
        page.push(task);
    }
    (page, None)
}

#[derive(Serialize)]
struct HealthView {
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

async fn health(State(m): Shared) -> Json<HealthView> {
    let metrics = m.raft.metrics().borrow().clone();
    Json(HealthView {
        status: "ok",
        id: m.id,
        role: role_name(metrics.state),
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_applied: metrics.last_applied.map(|l| l.index),
        snapshot: metrics.snapshot.map(|l| l.index),
        purged: metrics.purged.map(|l| l.index),
    })
}

#[derive(Serialize)]
struct MemberView {
    id: u64,
    addr: String,
    role: &'static str,
    voter: bool,
    /// The member's last applied index, as far as this manager knows: its
    /// own exactly; on the leader, each follower's replicated index.
    last_applied: Option<u64>,
}

#[derive(Serialize)]
struct ClusterView {
    id: u64,
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberView>,
}

async fn cluster(State(m): Shared) -> Json<ClusterView> {
    let metrics = m.raft.metrics().borrow().clone();
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
            let last_applied = if *id == m.id {
                metrics.last_applied.map(|l| l.index)
            } else {
                metrics.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index)
            };
            MemberView { id: *id, addr: node.addr.clone(), role, voter: voters.contains(id), last_applied }
        })
        .collect();
    Json(ClusterView { id: m.id, leader: metrics.current_leader, term: metrics.current_term, members })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: u64,
    addr: String,
}

/// Adds a manager: first as a learner that catches up, then as a voter.
async fn add_member(State(m): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    let member: NewMember = parse(body)?;
    if member.id == 0 {
        return Err(ApiError::field("invalid_field", "id", "must be a positive integer"));
    }
    if member.addr.trim().is_empty() || member.addr.contains('/') {
        return Err(ApiError::field("invalid_field", "addr", "must be HOST:PORT"));
    }
    if !m.is_leader() {
        return forwarded(&m, reqwest::Method::POST, "/v1/cluster/members", raw).await;
    }
    let node = BasicNode { addr: member.addr.clone() };
    m.raft.add_learner(member.id, node, true).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    let change = ChangeMembers::AddVoterIds([member.id].into());
    m.raft.change_membership(change, false).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    tracing::info!(member = member.id, addr = %member.addr, "added a manager");
    Ok((StatusCode::OK, Json(serde_json::json!({"id": member.id, "addr": member.addr, "voter": true}))).into_response())
}

/// Removes a manager from the group (voter or learner).
async fn remove_member(State(m): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::field("invalid_field", "id", "must be a positive integer"))?;
    if !m.is_leader() {
        return forwarded(&m, reqwest::Method::DELETE, &format!("/v1/cluster/members/{id}"), Bytes::new()).await;
    }
    let metrics = m.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(ApiError::not_found(format!("no manager {id}")));
    }
    let is_voter = membership.voter_ids().any(|v| v == id);
    let change =
        if is_voter { ChangeMembers::RemoveVoters([id].into()) } else { ChangeMembers::RemoveNodes([id].into()) };
    m.raft.change_membership(change, false).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    tracing::info!(member = id, "removed a manager");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn task_of(result: CommandResult) -> Result<Task, ApiError> {
    match result {
        CommandResult::Task(task) => Ok(*task),
        CommandResult::Refused(refusal) => Err(refusal.into()),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// The header that makes a submission safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Task ids derived from idempotency keys live in their own UUID namespace.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x9f1c_5d2e_7a4b_4c3d_8e6f_0a1b_2c3d_4e5f);

/// The task id of a submission: random, or derived from the client's
/// `Idempotency-Key` (1 to 128 visible ASCII characters), so that a retry
/// of the same submission names the same task. The state machine answers a
/// second `SubmitTask` with the same id and spec with the stored task, and
/// refuses it with another spec.
fn submission_id(headers: &HeaderMap) -> Result<Uuid, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(Uuid::new_v4());
    };
    let invalid = || ApiError::field("invalid_header", "Idempotency-Key", "must be 1 to 128 visible ASCII characters");
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(task_id_for_key(key))
}

/// The task id a submission with this `Idempotency-Key` creates (clients
/// that record histories know it before the answer).
pub fn task_id_for_key(key: &str) -> Uuid {
    Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes())
}

/// `POST /v1/tasks`: `201` with the new task; with an `Idempotency-Key`
/// already used for the same spec, `200` with the task it created (and
/// `409` for another spec).
async fn submit_task(
    State(m): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: TaskSpec = parse(body)?;
    validate_spec(&spec)?;
    let task_id = submission_id(&headers)?;
    let span = tracing::info_span!("submit", task = %task_id, name = %spec.name);
    let _enter = span.enter();
    let at = now_ms();
    let result = m.propose(Command::SubmitTask { task_id, spec, at }).await?;
    if result.refusal().is_some_and(|r| r.kind == RefusalKind::Conflict) {
        // The only conflict of a submission: its id is taken by another spec.
        return Err(ApiError::conflict(format!(
            "task {task_id} already exists with another spec: an Idempotency-Key names one submission"
        )));
    }
    let task = task_of(result)?;
    m.placement_kick.notify_one();
    let location = format!("/v1/tasks/{}", task.id);
    // Created by this request, or by an earlier one with the same key.
    let status = if task.created_at == at { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, [(header::LOCATION, location)], Json(task.redacted())).into_response())
}

/// `GET /v1/stats`: how many tasks are in each state and nodes in each
/// status, without listing them.
async fn stats(
    State(m): Shared,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state.read();
    let mut tasks = std::collections::BTreeMap::<&str, usize>::new();
    for task in applied.state.tasks.values() {
        *tasks.entry(task.state.as_str()).or_default() += 1;
    }
    let mut nodes = std::collections::BTreeMap::<String, usize>::new();
    for node in applied.state.nodes.values() {
        let status = serde_json::to_value(node.status).ok().and_then(|v| v.as_str().map(str::to_string));
        *nodes.entry(status.unwrap_or_default()).or_default() += 1;
    }
    Ok(Json(serde_json::json!({"tasks": tasks, "nodes": nodes, "last_applied": applied.last_applied.map(|l| l.index)})))
}

fn parse_task_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::field("invalid_field", "id", format!("{id:?} is not a task id (a UUID)")))
}

/// `GET /v1/tasks[?state=S][&limit=N][&after=ID]`: a JSON array of tasks
/// in id order, a page at a time; when more follow, the `X-Goat-Next`
/// header holds the cursor to pass as `after` (and `Link` the next page's
/// URL).
async fn list_tasks(
    State(m): Shared,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let options = read_options(query)?;
    let limit = options.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::field("invalid_field", "limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    consistent(&m, &options).await?;
    let (body, next) = {
        let applied = m.state.read();
        let (page, next) = task_page(&applied.state.tasks, options.after, options.state, limit);
        let page: Vec<Task> = page.into_iter().map(Task::redacted).collect();
        (serde_json::to_vec(&page).map_err(ApiError::internal)?, next)
    };
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(next) = next {
        let state = options.state.map(|s| format!("&state={}", s.as_str())).unwrap_or_default();
        let stale = if options.stale { "&stale=true" } else { "" };
        let link = format!("</v1/tasks?limit={limit}&after={next}{state}{stale}>; rel=\"next\"");
        for (name, value) in [(NEXT_HEADER, next.to_string()), ("link", link)] {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    Ok(response)
}

async fn get_task(
    State(m): Shared,
    Path(id): Path<String>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_task_id(&id)?;
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state.read();
    applied.state.tasks.get(&id).map(|t| Json(t.redacted())).ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

async fn stop_task(State(m): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_task_id(&id)?;
    let task = task_of(m.propose(Command::StopTask { task_id: id, at: now_ms() }).await?)?;
    Ok((StatusCode::ACCEPTED, Json(task.redacted())).into_response())
}

/// A follower's forwarded command, proposed here if this manager leads.
async fn internal_propose(State(m): Shared, body: Bytes) -> Response {
    let command: Command = match codec::decode(&body) {
        Ok(c) => c,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string()).into_response(),
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
            m.placement_kick.notify_one();
        }
        result
    } else {
        Err(ProposeError::NotLeader)
    };
    codec::encode(&answer).into_response()
}

async fn internal_read_index(State(m): Shared) -> Response {
    match m.read_index().await {
        Ok(index) => codec::encode(&index).into_response(),
        Err(ProposeError::NotLeader) => {
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", "not the leader").into_response()
        }
        Err(ProposeError::Failed(e)) => ApiError::unavailable(e).into_response(),
    }
}

async fn internal_status(State(m): Shared) -> Response {
    let initialized = m.raft.is_initialized().await.unwrap_or(false);
    Json(InternalStatus { id: m.id, initialized }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::fsm::ClusterState;

    #[test]
    fn pages_walk_every_task_once_in_id_order() {
        let mut s = ClusterState::default();
        let spec: TaskSpec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        for i in 0..10u128 {
            s.apply(&Command::SubmitTask { task_id: Uuid::from_u128(i * 7 % 10), spec: spec.clone(), at: 1 });
        }
        s.apply(&Command::StopTask { task_id: Uuid::from_u128(4), at: 2 });
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = task_page(&s.tasks, after, None, 3);
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|t| t.id.as_u128()));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // An exact fit has no next page; a filter pages over the matches.
        assert_eq!(task_page(&s.tasks, None, None, 10).1, None);
        let (page, next) = task_page(&s.tasks, None, Some(TaskState::Completed), 1);
        assert_eq!((page.len(), page[0].id.as_u128(), next), (1, 4, None));
    }
}
