//! The public HTTP API (`/v1`, JSON) and the managers' internal routes
//! (`/internal`, bincode, token required). Every manager serves all of it:
//! writes are proposed through the leader, reads are linearizable unless the
//! client asks for `?stale=true`.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use goat_raft::limits::{self, limited};

use super::cluster::Manager;
use super::error::ApiError;
use super::json::MAX_BODY_BYTES;
use super::{internal, members, nodes, tasks};

/// Used by the tools (drill, bench) to name pages and submissions.
pub use super::tasks::{task_id_for_key, task_page, DEFAULT_PAGE, MAX_PAGE, NEXT_HEADER};

/// The public API in one table, one line per method and path: it builds the
/// router and the OpenAPI document's paths. Each handler carries its
/// operation (`#[utoipa::path]`: parameters, body, answers); the document
/// is built from the handlers listed here, and a test checks that each
/// handler's method and path are its line's (`openapi.rs`).
/// A route may add `, limit BYTES` to accept bodies larger than
/// [`MAX_BODY_BYTES`].
macro_rules! public_api {
    ($($method:ident $path:literal => $($handler:ident)::+ $(, limit $limit:expr)?;)*) => {
        /// `(method, path)` of every public route.
        pub const PUBLIC_ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn public_router() -> Router<Arc<Manager>> {
            Router::new()
                $(.route($path, limited(axum::routing::$method($($handler)::+), MAX_BODY_BYTES $(.max($limit))?)))*
        }

        /// The operations of the routes above, as their handlers describe
        /// them.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($handler)::+),*))]
        struct Operations;
    };
}

public_api! {
    get "/v1/health" => members::health;
    get "/v1/cluster" => members::cluster;
    post "/v1/cluster/members" => members::add_member;
    delete "/v1/cluster/members/{id}" => members::remove_member;
    post "/v1/cluster/leader" => super::transfer::transfer;
    get "/v1/cluster/verify" => super::verify::verify;
    get "/v1/cluster/headroom" => super::headroom::headroom;
    post "/v1/tasks" => tasks::submit_task;
    get "/v1/tasks" => tasks::list_tasks;
    get "/v1/tasks/{id}" => tasks::get_task;
    delete "/v1/tasks/{id}" => tasks::stop_task;
    get "/v1/stats" => tasks::stats;
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
    get "/v1/metrics" => members::metrics;
    get "/v1/openapi.json" => openapi_json;
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
        .route("/internal/propose", limited(post(internal::propose), limits::MAX_PROPOSE_BYTES))
        .route("/internal/read-index", limited(post(internal::read_index), limits::NO_BODY_BYTES))
        .route("/internal/status", limited(get(internal::status), limits::NO_BODY_BYTES))
        .route("/internal/elect", limited(post(super::transfer::internal_elect), limits::NO_BODY_BYTES))
        .route("/internal/state-digest", limited(get(super::verify::internal_state_digest), limits::NO_BODY_BYTES))
        .fallback(not_found)
        .with_state(manager.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(manager, super::auth::authenticate))
        .layer(axum::middleware::from_fn(crate::metrics::track_requests))
}

/// The OpenAPI document of the public API: the operations of the table
/// above, completed by [`super::openapi::complete`] (security, roles,
/// the errors every route shares). `docs/openapi.json` is this, committed.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    super::openapi::complete(Operations::openapi())
}

/// `GET /v1/openapi.json`: [`openapi`], rendered once.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "observability", summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the public API.", content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| super::openapi::render(&openapi())).clone();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
