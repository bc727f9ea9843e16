//! Authentication and roles, for every route, in one place.
//!
//! [`authenticate`] is a middleware around the whole router (the public
//! API, `/internal/*`, the workers' routes and the `/raft/*` routes merged
//! in): it runs before routing and before any extractor, so a request's
//! body is never read before its token is checked. Every route but
//! `GET /v1/health` needs `Authorization: Bearer <secret>`:
//!
//! - no token or an unknown one: `401` (`code: "unauthorized"`);
//! - a token whose role is too small for the route: `403` (`"forbidden"`).
//!
//! Who may do what ([`required`]): `read` tokens every `GET` (events and
//! metrics included) but backups and tokens; `submit` tokens also create
//! and stop tasks; `admin` tokens everything else (nodes, drains, members,
//! backups, restore, tokens). The cluster token (`--token`, and during a
//! rotation `--previous-token`) has every right and is the only secret
//! the internal routes accept: Raft, `/internal/*`, worker heartbeats and
//! assignment polls.
//!
//! API tokens live in the replicated state ([`Command::CreateToken`]) as the
//! SHA-256 of a 256-bit random secret: a token works on every manager as
//! soon as its entry is applied there, and stops as soon as its revocation
//! is. Secrets are compared in constant time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::service::constant_time_eq;
use goat_raft::{Command, CommandResult};
use goat_storage::model::{ApiToken, Role};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::{consistent, read_options, ReadOptions};
use super::json::parse;
use crate::clock::now_ms;

/// What a route needs, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone: `GET /v1/health` only.
    Public,
    /// A token with at least this role (or the cluster token).
    Role(Role),
    /// The cluster token: internal routes (members and workers).
    Cluster,
}

/// Who sent a request, once authenticated (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster token: a manager, a worker, or an operator holding it.
    Cluster,
    /// An API token.
    Token { id: String, role: Role },
}

impl Caller {
    fn grants(&self, access: Access) -> bool {
        match (self, access) {
            (_, Access::Public) | (Caller::Cluster, _) => true,
            (Caller::Token { role, .. }, Access::Role(needed)) => *role >= needed,
            (Caller::Token { .. }, Access::Cluster) => false,
        }
    }
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Public => "no token",
            Access::Role(role) => role.as_str(),
            Access::Cluster => "the cluster token",
        }
    }
}

/// What `method path` needs. Decided on the raw path before routing, so an
/// unknown route needs a token too (and answers 404 only to a caller that
/// has one).
pub fn required(method: &Method, path: &str) -> Access {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match segments.as_slice() {
        ["v1", "health"] if read => Access::Public,
        ["raft", ..] | ["internal", ..] => Access::Cluster,
        ["v1", "nodes", _, "heartbeat"] | ["v1", "nodes", _, "assignments"] => Access::Cluster,
        ["v1", "snapshot", ..] | ["v1", "tokens", ..] => Access::Role(Role::Admin),
        _ if read => Access::Role(Role::Read),
        ["v1", "tasks"] if *method == Method::POST => Access::Role(Role::Submit),
        ["v1", "tasks", _] if *method == Method::DELETE => Access::Role(Role::Submit),
        ["v1", "services"] if *method == Method::POST => Access::Role(Role::Submit),
        ["v1", "services", _] if *method == Method::PUT || *method == Method::DELETE => Access::Role(Role::Submit),
        ["v1", "services", _, "scale" | "rollback" | "promote"] if *method == Method::POST => {
            Access::Role(Role::Submit)
        }
        _ => Access::Role(Role::Admin),
    }
}

/// SHA-256 of a secret, hex: what the state keeps of a token.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Who `authorization` (the header's value) is, if anyone.
pub fn identify(m: &Manager, authorization: Option<&HeaderValue>) -> Option<Caller> {
    // `Bearer <secret>`, the scheme in any case (RFC 7235).
    let value = authorization?.to_str().ok()?;
    let (scheme, secret) = value.trim().split_once(' ')?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return None;
    }
    let presented = goat_raft::bearer(secret);
    if m.is_cluster_bearer(&presented) {
        return Some(Caller::Cluster);
    }
    let hash = hash_secret(secret);
    let applied = m.state().read();
    // Every stored hash is compared, each in constant time: how long this
    // takes says nothing about which one (if any) matched.
    let mut found = None;
    for token in applied.state.tokens.values() {
        if constant_time_eq(hash.as_bytes(), token.hash.as_bytes()) {
            found = Some(Caller::Token { id: token.id.clone(), role: token.role });
        }
    }
    found
}

/// The middleware: 401 or 403 before the route (and its body) is touched.
pub async fn authenticate(State(m): State<Arc<Manager>>, mut request: Request, next: Next) -> Response {
    let access = required(request.method(), request.uri().path());
    if access == Access::Public {
        return next.run(request).await;
    }
    let Some(caller) = identify(&m, request.headers().get(header::AUTHORIZATION)) else {
        let mut response = ApiError::unauthorized().into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if !caller.grants(access) {
        let has = match &caller {
            Caller::Token { role, .. } => role.as_str(),
            Caller::Cluster => "cluster",
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "{} {} needs {}; this token has the {has} role",
                request.method(),
                request.uri().path(),
                access.name()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: Role,
    /// What the token is for: at most 128 characters, no control
    /// characters (C0, DEL, C1).
    #[serde(default)]
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    name: String,
}

/// A token as listings show it: no secret, no hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: u64,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> TokenView {
        TokenView { id: t.id.clone(), name: t.name.clone(), role: t.role, created_at: t.created_at }
    }
}

/// What `POST /v1/tokens` answers: the token and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// `goat_` and 64 hex digits: send it as `Authorization: Bearer <secret>`.
    pub secret: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// `POST /v1/tokens` (admin): `201` with the token and its secret, shown
/// this once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Create an API token",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token and its secret (shown this once).", body = CreatedToken),
    ),
)]
pub async fn create(State(m): State<Arc<Manager>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let new: NewToken = parse(body)?;
    if new.name.chars().count() > 128 || new.name.chars().any(char::is_control) {
        return Err(ApiError::field(ErrorCode::InvalidField, "name", "at most 128 characters, no control characters"));
    }
    let secret = format!("goat_{}", random_hex(32));
    let token = ApiToken {
        id: random_hex(8),
        name: new.name,
        role: new.role,
        hash: hash_secret(&secret),
        created_at: now_ms(),
    };
    let view = TokenView::from(&token);
    match m.propose(Command::CreateToken { token }).await? {
        CommandResult::Done => {}
        CommandResult::Refused(refusal) => return Err(refusal.into()),
        other => return Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
    tracing::info!(token = %view.id, role = view.role.as_str(), name = %view.name, "created an API token");
    Ok((StatusCode::CREATED, Json(CreatedToken { token: view, secret })).into_response())
}

/// `GET /v1/tokens` (admin): every token, without secrets.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    summary = "List the API tokens",
    params(crate::manager::params::Stale),
    responses((status = 200, description = "The tokens, without secrets.", body = Vec<TokenView>)),
)]
pub async fn list(
    State(m): State<Arc<Manager>>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state().read();
    let tokens: Vec<TokenView> = applied.state.tokens.values().map(TokenView::from).collect();
    Ok(Json(tokens).into_response())
}

/// `DELETE /v1/tokens/{id}` (admin): `204`; the token stops working on each
/// manager as it applies the revocation.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "tokens",
    summary = "Revoke an API token",
    params(crate::manager::params::TokenIdPath),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "No such token.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn revoke(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::field(ErrorCode::InvalidField, "id", "must be a token id (hex)"));
    }
    match m.propose(Command::RevokeToken { id: id.clone() }).await? {
        CommandResult::Done => {}
        CommandResult::Refused(refusal) => return Err(refusal.into()),
        other => return Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
    tracing::info!(token = %id, "revoked an API token");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(method: Method, path: &str) -> Access {
        required(&method, path)
    }

    #[test]
    fn every_route_class_needs_what_the_docs_say() {
        use Access::{Cluster, Public};
        use Role::{Admin, Read, Submit};
        let role = Access::Role;
        assert_eq!(needs(Method::GET, "/v1/health"), Public);
        assert_eq!(needs(Method::POST, "/v1/health"), role(Admin));
        for path in ["/v1/tasks", "/v1/tasks/x", "/v1/cluster", "/v1/nodes", "/v1/events", "/v1/metrics", "/v1/stats"] {
            assert_eq!(needs(Method::GET, path), role(Read), "{path}");
        }
        assert_eq!(needs(Method::GET, "/v1/snapshot"), role(Admin));
        assert_eq!(needs(Method::POST, "/v1/snapshot/restore"), role(Admin));
        assert_eq!(needs(Method::GET, "/v1/tokens"), role(Admin));
        assert_eq!(needs(Method::POST, "/v1/tasks"), role(Submit));
        assert_eq!(needs(Method::DELETE, "/v1/tasks/abc"), role(Submit));
        assert_eq!(needs(Method::POST, "/v1/services"), role(Submit));
        assert_eq!(needs(Method::PUT, "/v1/services/web"), role(Submit));
        assert_eq!(needs(Method::DELETE, "/v1/services/web"), role(Submit));
        for action in ["scale", "rollback", "promote"] {
            assert_eq!(needs(Method::POST, &format!("/v1/services/web/{action}")), role(Submit));
        }
        assert_eq!(needs(Method::GET, "/v1/services/web/endpoints"), role(Read));
        assert_eq!(needs(Method::POST, "/v1/services/web/other"), role(Admin));
        assert_eq!(needs(Method::PUT, "/v1/nodes/w1/drain"), role(Admin));
        assert_eq!(needs(Method::POST, "/v1/cluster/members"), role(Admin));
        assert_eq!(needs(Method::POST, "/v1/cluster/leader"), role(Admin));
        assert_eq!(needs(Method::POST, "/raft/prevote"), Cluster);
        assert_eq!(needs(Method::POST, "/internal/elect"), Cluster);
        assert_eq!(needs(Method::DELETE, "/v1/cluster/members/2"), role(Admin));
        assert_eq!(needs(Method::POST, "/v1/nodes/w1/heartbeat"), Cluster);
        assert_eq!(needs(Method::GET, "/v1/nodes/w1/assignments"), Cluster);
        assert_eq!(needs(Method::POST, "/raft/append"), Cluster);
        assert_eq!(needs(Method::POST, "/internal/propose"), Cluster);
        assert_eq!(needs(Method::POST, "/nowhere"), role(Admin));
    }

    #[test]
    fn roles_include_the_smaller_ones() {
        let token = |role| Caller::Token { id: "1".into(), role };
        assert!(token(Role::Admin).grants(Access::Role(Role::Submit)));
        assert!(token(Role::Submit).grants(Access::Role(Role::Read)));
        assert!(!token(Role::Read).grants(Access::Role(Role::Submit)));
        assert!(!token(Role::Submit).grants(Access::Role(Role::Admin)));
        assert!(!token(Role::Admin).grants(Access::Cluster));
        assert!(Caller::Cluster.grants(Access::Cluster));
    }

    #[test]
    fn secrets_are_kept_as_sha256() {
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
