//! The path and query parameters the handlers share, as the OpenAPI
//! document states them (`utoipa::IntoParams`). The handlers read the path
//! as a `String` and check it themselves (a 400 naming the field, never
//! axum's plain-text rejection); these types say what they accept, with the
//! same rules: a name as `goat_storage::validate::check_name` reads it, a
//! task id as `tasks::parse_task_id` reads it.
//!
//! The query structs the handlers deserialize (`extract::ReadOptions`,
//! `assignments::PollQuery`, ...) derive `IntoParams` themselves; here are
//! only the ones no handler deserializes as such. Imports nothing of the
//! crate.

use utoipa::IntoParams;

/// `{id}` of `/v1/tasks/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by utoipa only
pub struct TaskIdPath {
    /// The task's id: a UUID, in full (no prefix), any case, with or
    /// without hyphens.
    id: uuid::Uuid,
}

/// `{name}` of `/v1/nodes/{name}/...`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct NodeNamePath {
    /// The worker's name: 1–63 characters of `[a-zA-Z0-9_.-]`, starting
    /// with a letter or digit.
    #[param(min_length = 1, max_length = 63, pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    name: String,
}

/// `{name}` of `/v1/services/{name}/...`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ServiceNamePath {
    /// The service's name: 1–63 characters of `[a-zA-Z0-9_.-]`, starting
    /// with a letter or digit.
    #[param(min_length = 1, max_length = 63, pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    name: String,
}

/// `{id}` of `/v1/cluster/members/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct MemberIdPath {
    /// The manager's Raft id, a positive integer.
    #[param(minimum = 1)]
    id: u64,
}

/// `{id}` of `/v1/tokens/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TokenIdPath {
    /// The token's id (as `POST /v1/tokens` and `GET /v1/tokens` show it):
    /// 1 to 64 hex digits.
    #[param(min_length = 1, max_length = 64, pattern = r"^[0-9a-fA-F]+$")]
    id: String,
}

/// `?stale=true`, for the reads that take nothing else.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Stale {
    /// Answer from this manager's state without asking the leader (may lag).
    stale: Option<bool>,
}

/// The pattern of the `after` version of the long polls: what an earlier
/// answer's `version` holds (hex, at most 64 digits, never empty).
pub const VERSION_PATTERN: &str = r"^[0-9a-fA-F]{1,64}$";
