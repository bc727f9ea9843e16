//! Services on the HTTP edge: `/v1/services` (apply, list, show, scale,
//! rollback, promote, delete) and `/v1/services/{name}/endpoints` (the
//! healthy copies, with a long poll). Every change is one Raft command; the
//! leader's service loop (`super::service_loop`) turns services into tasks.
//! What to do with a service's copies is decided in `crate::control::service`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::{Command, CommandResult};
use goat_storage::fsm::ClusterState;
use goat_storage::model::*;
use goat_storage::validate::{check_name, validate_service};
use goat_storage::Millis;
use serde::{Deserialize, Serialize};

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::{check_version, consistent, read_options, ReadOptions};
use super::json::{integral_floats_to_integers, parse};
use crate::clock::now_ms;
use crate::control::service::{counts, placement_reason, VersionCounts};

type Shared = State<Arc<Manager>>;

/// One version as `GET /v1/services/{name}` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: u64,
    #[schema(schema_with = TaskSpec::stored_template_schema)]
    pub template: TaskSpec,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    pub desired: u32,
    pub live: u32,
    pub placed: u32,
    pub running: u32,
    pub healthy: u32,
}

/// A service with its counts, as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub replicas: u32,
    pub spread: Spread,
    pub update: UpdatePolicy,
    pub current: u64,
    /// Newest first.
    pub versions: Vec<VersionView>,
    pub deployment: Option<Deployment>,
    /// Why it is not placed in full, if it is not.
    pub reason: Option<String>,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
}

pub fn view(state: &ClusterState, service: &Service, now: Timestamp) -> ServiceView {
    let tasks: Vec<&Task> = state.service_tasks(&service.name).collect();
    let counted = counts(service, &tasks, now);
    let service = service.redacted();
    let mut versions: Vec<VersionView> = service
        .versions
        .iter()
        .map(|v| {
            let c = counted
                .iter()
                .find(|c| c.version == v.version)
                .cloned()
                .unwrap_or(VersionCounts { version: v.version, ..VersionCounts::default() });
            let desired = if v.version == service.current { service.replicas } else { 0 };
            VersionView {
                version: v.version,
                template: v.template.clone(),
                created_at: v.created_at,
                desired,
                live: c.live,
                placed: c.placed,
                running: c.running,
                healthy: c.healthy,
            }
        })
        .collect();
    versions.reverse();
    ServiceView {
        name: service.name.clone(),
        replicas: service.replicas,
        spread: service.spread,
        update: service.update,
        current: service.current,
        versions,
        deployment: service.deployment.clone(),
        reason: placement_reason(&service, &tasks, now),
        created_at: service.created_at,
        updated_at: service.updated_at,
    }
}

fn service_of(result: CommandResult) -> Result<Service, ApiError> {
    match result {
        CommandResult::Service(service) => Ok(*service),
        CommandResult::Refused(refusal) => Err(refusal.into()),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Answers with the service as applied on this manager.
fn answer(m: &Manager, status: StatusCode, service: &Service) -> Response {
    let applied = m.state.read();
    let now = now_ms();
    // A follower answers a write the leader applied: its own state may not
    // have applied it yet, so its stored copy is used only if it is at
    // least as new as the one the write returned (else a changed spec was
    // answered with the previous `current`).
    let body = match applied.state.services.get(&service.name) {
        Some(stored) if stored.updated_at >= service.updated_at => view(&applied.state, stored, now),
        _ => view(&applied.state, service, now),
    };
    (status, Json(body)).into_response()
}

async fn apply(m: &Manager, spec: ServiceSpec) -> Result<Response, ApiError> {
    validate_service(&spec)?;
    let span = tracing::info_span!("service_apply", service = %spec.name);
    let _enter = span.enter();
    let at = now_ms();
    let service = service_of(m.propose(Command::PutService { spec, at }).await?)?;
    let status = if service.created_at == at { StatusCode::CREATED } else { StatusCode::OK };
    Ok(answer(m, status, &service))
}

/// `POST /v1/services`: create a service, or apply a changed spec to it
/// (the same spec again changes nothing).
#[utoipa::path(
    post,
    path = "/v1/services",
    tag = "services",
    summary = "Create a service or apply a changed spec (same spec: no-op)",
    request_body = ServiceSpec,
    responses(
        (status = 201, description = "Created.", body = ServiceView),
        (status = 200, description = "Applied (or unchanged).", body = ServiceView),
        crate::manager::error::ServiceConflict,
        crate::manager::error::BodyOverLimit,
        crate::manager::error::ServiceRuleAcross,
    ),
)]
pub async fn create(State(m): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let spec = parse_spec(body)?;
    apply(&m, spec).await
}

/// A service spec from a request body. Its `template` is a task spec
/// without `name` (the service names its copies): the name is filled in
/// before the spec is read, so every other field error names its path
/// (`template.cpu`).
pub fn parse_spec(body: Result<Bytes, BytesRejection>) -> Result<ServiceSpec, ApiError> {
    spec_of(parse(body)?)
}

/// The service spec a JSON object holds (see [`parse_spec`]).
fn spec_of(mut value: serde_json::Value) -> Result<ServiceSpec, ApiError> {
    integral_floats_to_integers(&mut value);
    let name = value.get("name").cloned().unwrap_or_else(|| serde_json::Value::String(String::new()));
    if let Some(template) = value.get_mut("template").and_then(|t| t.as_object_mut()) {
        if template.contains_key("name") {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "template.name",
                "must be absent: the service names its copies",
            ));
        }
        template.insert("name".into(), name);
    }
    serde_path_to_error::deserialize(value).map_err(super::json::field_error)
}

/// The body of `PUT /v1/services/{name}` in the OpenAPI document: a
/// service spec without `name`, which the path gives. (A rule "the body's
/// name equals the path's" would span the path and the body, which a JSON
/// Schema cannot state; so the body has no name.)
pub struct ServiceSpecByPath;

impl utoipa::PartialSchema for ServiceSpecByPath {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let mut schema = <ServiceSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.properties.shift_remove("name");
            object.required.retain(|r| r != "name");
            object.description = Some("A service spec without `name`: the path names the service.".into());
        }
        schema
    }
}

impl utoipa::ToSchema for ServiceSpecByPath {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <ServiceSpec as utoipa::ToSchema>::schemas(schemas);
    }
}

/// `PUT /v1/services/{name}`: like `POST /v1/services`, with the name in
/// the path and not in the body.
#[utoipa::path(
    put,
    path = "/v1/services/{name}",
    tag = "services",
    summary = "Apply a spec to the service of that name",
    params(crate::manager::params::ServiceNamePath),
    request_body = ServiceSpecByPath,
    responses(
        (status = 201, description = "Created.", body = ServiceView),
        (status = 200, description = "Applied (or unchanged).", body = ServiceView),
        crate::manager::error::ServiceConflict,
        crate::manager::error::BodyOverLimit,
        crate::manager::error::ServiceRuleAcross,
    ),
)]
pub async fn put(
    State(m): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let mut value: serde_json::Value = parse(body)?;
    if let Some(object) = value.as_object_mut() {
        if object.contains_key("name") {
            return Err(ApiError::field(ErrorCode::InvalidField, "name", "must be absent: the path names the service"));
        }
        object.insert("name".into(), serde_json::Value::String(name));
    }
    apply(&m, spec_of(value)?).await
}

/// `GET /v1/services`.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    summary = "List services with their counts",
    params(crate::manager::params::Stale),
    responses((status = 200, description = "The services.", body = Vec<ServiceView>)),
)]
pub async fn list(State(m): Shared, query: Result<Query<ReadOptions>, QueryRejection>) -> Result<Response, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state.read();
    let now = now_ms();
    let views: Vec<ServiceView> = applied.state.services.values().map(|s| view(&applied.state, s, now)).collect();
    Ok(Json(views).into_response())
}

/// `GET /v1/services/{name}`.
#[utoipa::path(
    get,
    path = "/v1/services/{name}",
    tag = "services",
    summary = "A service: versions, counts, deployment",
    params(crate::manager::params::ServiceNamePath, crate::manager::params::Stale),
    responses(
        (status = 200, description = "The service.", body = ServiceView),
        crate::manager::error::NoSuchService,
    ),
)]
pub async fn get(
    State(m): Shared,
    Path(name): Path<String>,
    query: Result<Query<ReadOptions>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state.read();
    let service = applied.state.services.get(&name).ok_or_else(|| ApiError::not_found(format!("no service {name}")))?;
    Ok(Json(view(&applied.state, service, now_ms())).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Scale {
    /// Copies wanted, 0 to 10000 (as a spec's `replicas`).
    #[schema(maximum = 10_000)]
    replicas: u32,
}

/// `POST /v1/services/{name}/scale` with `{"replicas": N}`.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/scale",
    tag = "services",
    summary = "Change the replica count",
    params(crate::manager::params::ServiceNamePath),
    request_body = Scale,
    responses(
        (status = 200, description = "The service.", body = ServiceView),
        crate::manager::error::NoSuchService,
        crate::manager::error::ServiceConflict,
    ),
)]
pub async fn scale(
    State(m): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let scale: Scale = parse(body)?;
    if scale.replicas > MAX_REPLICAS {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "replicas",
            format!("must be between 0 and {MAX_REPLICAS}"),
        ));
    }
    let service = service_of(m.propose(Command::ScaleService { name, replicas: scale.replicas, at: now_ms() }).await?)?;
    Ok(answer(&m, StatusCode::OK, &service))
}

/// `POST /v1/services/{name}/rollback`: the previous version comes back.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/rollback",
    tag = "services",
    summary = "Bring the previous version back",
    params(crate::manager::params::ServiceNamePath),
    responses(
        (status = 200, description = "The service.", body = ServiceView),
        crate::manager::error::NoSuchService,
        (status = 409, description = "No previous version.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn rollback(State(m): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let service = service_of(m.propose(Command::RollbackService { name, at: now_ms() }).await?)?;
    Ok(answer(&m, StatusCode::OK, &service))
}

/// `POST /v1/services/{name}/promote`: a deployment paused on its canaries
/// goes on.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/promote",
    tag = "services",
    summary = "Promote a deployment paused on its canaries",
    params(crate::manager::params::ServiceNamePath),
    responses(
        (status = 200, description = "The service.", body = ServiceView),
        crate::manager::error::NoSuchService,
        (status = 409, description = "No deployment waits on its canaries.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn promote(State(m): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let service = service_of(m.propose(Command::PromoteService { name, at: now_ms() }).await?)?;
    Ok(answer(&m, StatusCode::OK, &service))
}

/// `DELETE /v1/services/{name}`: removes the service and stops every copy.
#[utoipa::path(
    delete,
    path = "/v1/services/{name}",
    tag = "services",
    summary = "Remove a service and stop every copy",
    params(crate::manager::params::ServiceNamePath),
    responses(
        (status = 202, description = "The removed service.", body = Service),
        crate::manager::error::NoSuchService,
    ),
)]
pub async fn delete(State(m): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let service = service_of(m.propose(Command::DeleteService { name, at: now_ms() }).await?)?;
    Ok((StatusCode::ACCEPTED, Json(service.redacted())).into_response())
}

/// One healthy copy, where clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    #[schema(value_type = uuid::Uuid)]
    pub task: TaskId,
    pub node: String,
    /// The node's advertised address (its name if it advertises none).
    pub address: String,
    /// The host port of the template's first published port (0 if none).
    pub port: u16,
    pub version: u64,
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoints {
    pub service: String,
    /// A fingerprint of the list: pass it as `after` to wait for a change.
    pub version: String,
    pub endpoints: Vec<Endpoint>,
}

/// The healthy copies of `name` in `state` (None: no such service).
pub fn endpoints(state: &ClusterState, name: &str) -> Option<Endpoints> {
    let service = state.services.get(name)?;
    let mut list: Vec<Endpoint> = state
        .service_tasks(&service.name)
        .filter(|t| t.desired == DesiredStatus::Run && t.is_healthy())
        .filter_map(|t| {
            let node = state.nodes.get(t.node.as_deref()?)?;
            if node.status == NodeStatus::Down {
                return None;
            }
            let port = t.spec.ports.first().map_or(0, |p| t.host_ports.get(&p.container).copied().unwrap_or(0));
            Some(Endpoint {
                task: t.id,
                node: node.name.clone(),
                address: node.address.clone().unwrap_or_else(|| node.name.clone()),
                port,
                version: t.service.as_ref().map_or(0, |s| s.version),
                generation: t.generation,
            })
        })
        .collect();
    list.sort_by(|a, b| (&a.node, a.task).cmp(&(&b.node, b.task)));
    let version = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for e in &list {
            (e.task, &e.address, e.port, e.generation).hash(&mut h);
        }
        format!("{:016x}", h.finish())
    };
    Some(Endpoints { service: service.name.clone(), version, endpoints: list })
}

/// `?after=VERSION&wait=DURATION&stale=BOOL`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EndpointsQuery {
    /// The `version` of an earlier answer (1 to 64 hex digits): with
    /// `wait`, answer when the endpoints differ from that version.
    #[param(min_length = 1, max_length = 64, pattern = r"^[0-9a-fA-F]{1,64}$")]
    pub after: Option<String>,
    /// How long to wait for a change from `after` (none: answer now; a
    /// wait over 30 s is cut to 30 s).
    pub wait: Option<Millis>,
    /// Answer from this manager's state without asking the leader (may lag).
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    pub stale: bool,
}

/// The longest wait: a longer one is cut to this, as the workers'
/// assignment poll does (a long poll may answer before its `wait`; any
/// duration the OpenAPI document allows is accepted).
const MAX_WAIT: Millis = Millis(30_000);

/// `GET /v1/services/{name}/endpoints[?after=VERSION&wait=DURATION]`: the
/// healthy copies; with `wait`, answers once the list differs from
/// `after` (or at once if it already does), else after `wait` with the same
/// list.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/endpoints",
    tag = "services",
    summary = "Healthy copies (task, node, address, port); `wait` long-polls for a change from `after`",
    params(crate::manager::params::ServiceNamePath, EndpointsQuery),
    responses(
        (status = 200, description = "The endpoints.", body = Endpoints),
        crate::manager::error::NoSuchService,
        (status = 503, description = "This manager holds its limit of polls (`busy`), has no leader (`unavailable`) or is shutting down; retry after `Retry-After`.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn list_endpoints(
    State(m): Shared,
    Path(name): Path<String>,
    query: Result<Query<EndpointsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    let query = super::extract::query_of(query)?;
    check_version(query.after.as_deref())?;
    consistent(&m, &ReadOptions { stale: query.stale, ..ReadOptions::default() }).await?;
    let wait = query.wait.unwrap_or(Millis(0)).min(MAX_WAIT);
    let _permit = if wait.0 > 0 {
        Some(
            m.poll_permit()
                .map_err(|max| ApiError::busy(format!("this manager already holds {max} polls (--max-polls)")))?,
        )
    } else {
        None
    };
    let until = tokio::time::Instant::now() + Duration::from_millis(wait.0);
    let mut applied = m.state.watch_applied();
    loop {
        applied.borrow_and_update();
        let current = {
            let state = m.state.read();
            endpoints(&state.state, &name).ok_or_else(|| ApiError::not_found(format!("no service {name}")))?
        };
        if wait.0 == 0 || query.after.as_deref() != Some(current.version.as_str()) {
            return Ok(([(header::CACHE_CONTROL, "no-store")], Json(current)).into_response());
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return Err(ApiError::unavailable("shutting down")) },
            _ = tokio::time::sleep_until(until) => return Ok(Json(current).into_response()),
            _ = m.closing().cancelled() => return Err(ApiError::unavailable("shutting down")),
        }
    }
}
