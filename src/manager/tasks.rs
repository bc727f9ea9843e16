//! The tasks resource: `POST /v1/tasks`, `GET /v1/tasks[/{id}]`,
//! `DELETE /v1/tasks/{id}`, `GET /v1/stats`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::{Command, CommandResult};
use goat_storage::fsm::RefusalKind;
use goat_storage::model::{Task, TaskSpec, TaskState};
use goat_storage::validate::validate_spec;
use serde::Serialize;
use uuid::Uuid;

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::{consistent, read_options, ReadOptions};
use super::json::parse;
use crate::clock::now_ms;

type Shared = State<Arc<Manager>>;

/// Tasks per page of `GET /v1/tasks` when the client does not say.
pub const DEFAULT_PAGE: usize = 1_000;
/// The most tasks one page may hold.
pub const MAX_PAGE: usize = 5_000;
/// The response header that carries the cursor of the next page.
pub const NEXT_HEADER: &str = "x-goat-next";

/// One page of tasks in id order: up to `limit` tasks after `after` (in
/// `state`, if given), and the cursor of the next page if there are more.
pub fn task_page(
    tasks: &goat_storage::fsm::Tasks,
    after: Option<Uuid>,
    state: Option<TaskState>,
    limit: usize,
) -> (Vec<&Task>, Option<Uuid>) {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    let mut page = Vec::new();
    for task in tasks.range((from, Unbounded)).map(|(_, t)| &**t).filter(|t| state.is_none_or(|s| t.state == s)) {
        if page.len() == limit {
            let next = page.last().map(|t: &&Task| t.id);
            return (page, next);
        }
        page.push(task);
    }
    (page, None)
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
    let invalid =
        || ApiError::field(ErrorCode::InvalidHeader, "Idempotency-Key", "must be 1 to 128 visible ASCII characters");
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
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "Submit a task",
    request_body = TaskSpec,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128, pattern = r"^[!-~]+$", description = "Makes the submission safe to retry: the same key names the same task (1 to 128 visible ASCII characters)."),
    ),
    responses(
        (status = 201, description = "Committed; the stored task, `pending`.", body = Task),
        (status = 200, description = "A resend with an Idempotency-Key already used for the same spec: the task it created.", body = Task),
        (status = 409, description = "The Idempotency-Key was used for another spec.", body = crate::manager::error::ErrorBody),
        crate::manager::error::BodyOverLimit,
        crate::manager::error::TaskRuleAcross,
    ),
)]
pub async fn submit_task(
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
    m.kick_placement();
    let location = format!("/v1/tasks/{}", task.id);
    // Created by this request, or by an earlier one with the same key.
    let status = if task.created_at == at { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, [(header::LOCATION, location)], Json(task.redacted())).into_response())
}

/// What `GET /v1/stats` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Tasks by state (states without tasks left out).
    pub tasks: std::collections::BTreeMap<String, usize>,
    /// Nodes by status (statuses without nodes left out).
    pub nodes: std::collections::BTreeMap<String, usize>,
    /// The log index the counts were read at.
    pub last_applied: Option<u64>,
}

/// `GET /v1/stats`: how many tasks are in each state and nodes in each
/// status, without listing them.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "tasks",
    summary = "Counts of tasks by state and nodes by status",
    params(crate::manager::params::Stale),
    responses((status = 200, description = "The counts.", body = Stats)),
)]
pub async fn stats(
    State(m): Shared,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Stats>, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state().read();
    let mut tasks = std::collections::BTreeMap::<String, usize>::new();
    for task in applied.state.tasks.values() {
        *tasks.entry(task.state.as_str().to_string()).or_default() += 1;
    }
    let mut nodes = std::collections::BTreeMap::<String, usize>::new();
    for node in applied.state.nodes.values() {
        let status = serde_json::to_value(node.status).ok().and_then(|v| v.as_str().map(str::to_string));
        *nodes.entry(status.unwrap_or_default()).or_default() += 1;
    }
    Ok(Json(Stats { tasks, nodes, last_applied: applied.last_applied.map(|l| l.index) }))
}

pub fn parse_task_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::field(ErrorCode::InvalidField, "id", format!("{id:?} is not a task id (a UUID)")))
}

/// `GET /v1/tasks[?state=S][&limit=N][&after=ID]`: a JSON array of tasks
/// in id order, a page at a time; when more follow, the `X-Goat-Next`
/// header holds the cursor to pass as `after` (and `Link` the next page's
/// URL).
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "List tasks, a page at a time",
    params(ReadOptions),
    responses(
        (status = 200, description = "A page of tasks (optionally in one state), in id order. When more follow, `X-Goat-Next` holds the cursor to pass as `after` and `Link` the next page.", body = Vec<Task>, headers(("X-Goat-Next" = String, description = "The `after` of the next page."), ("Link" = String, description = "The next page, `rel=\"next\"`."))),
    ),
)]
pub async fn list_tasks(
    State(m): Shared,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let options = read_options(query)?;
    let limit = options.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::field(ErrorCode::InvalidField, "limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    consistent(&m, &options).await?;
    let (body, next) = {
        let applied = m.state().read();
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

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "One task, with its event history",
    params(crate::manager::params::TaskIdPath, crate::manager::params::Stale),
    responses(
        (status = 200, description = "The task.", body = Task),
        crate::manager::error::NoSuchTask,
    ),
)]
pub async fn get_task(
    State(m): Shared,
    Path(id): Path<String>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_task_id(&id)?;
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state().read();
    applied.state.tasks.get(&id).map(|t| Json(t.redacted())).ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Stop a task",
    params(crate::manager::params::TaskIdPath),
    responses(
        (status = 202, description = "Desired status set to `stop`; completes when its worker confirms.", body = Task),
        crate::manager::error::NoSuchTask,
    ),
)]
pub async fn stop_task(State(m): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_task_id(&id)?;
    let task = task_of(m.propose(Command::StopTask { task_id: id, at: now_ms() }).await?)?;
    Ok((StatusCode::ACCEPTED, Json(task.redacted())).into_response())
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
