//! The receiving side of Raft RPCs: `/raft/vote`, `/raft/append` and
//! `/raft/snapshot`, mounted on the manager's own HTTP port. Each request
//! must carry the cluster token; without it the answer is 401 and Raft never
//! sees the request. Each route has its body limit (see [`crate::limits`]):
//! a declared length over it is refused with 413 before the body is read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::limits::{limited, MAX_APPEND_BYTES, MAX_SNAPSHOT_BYTES, MAX_VOTE_BYTES};
use crate::{bearer, Raft, TOKEN_HEADER};

#[derive(Clone)]
struct RaftService {
    raft: Raft,
    expected: Arc<str>,
}

/// The `/raft/*` routes for `raft`, guarded by `token`.
pub fn router(raft: Raft, token: &str) -> Router {
    let service = RaftService { raft, expected: bearer(token).into() };
    Router::new()
        .route("/raft/vote", limited(post(vote), MAX_VOTE_BYTES))
        .route("/raft/append", limited(post(append), MAX_APPEND_BYTES))
        .route("/raft/snapshot", limited(post(snapshot), MAX_SNAPSHOT_BYTES))
        .with_state(service)
}

/// Whether `headers` carry `expected` (compared without early exit).
pub fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(got) = headers.get(TOKEN_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    got.len() == expected.len() && got.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "missing or wrong cluster token").into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("undecodable Raft request: {e}")).into_response()
}

/// Decodes the request, checks the token, runs `handle`, encodes its result.
async fn serve<Req, Resp, Fut>(
    service: &RaftService,
    headers: &HeaderMap,
    body: &[u8],
    handle: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    if !token_matches(headers, &service.expected) {
        return unauthorized();
    }
    match decode::<Req>(body) {
        Ok(request) => encode(&handle(request).await).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn vote(State(service): State<RaftService>, headers: HeaderMap, body: Bytes) -> Response {
    let raft = service.raft.clone();
    serve(&service, &headers, &body, |req| async move { raft.vote(req).await }).await
}

async fn append(State(service): State<RaftService>, headers: HeaderMap, body: Bytes) -> Response {
    let raft = service.raft.clone();
    serve(&service, &headers, &body, |req| async move { raft.append_entries(req).await }).await
}

async fn snapshot(State(service): State<RaftService>, headers: HeaderMap, body: Bytes) -> Response {
    let raft = service.raft.clone();
    serve(&service, &headers, &body, |req| async move { raft.install_snapshot(req).await }).await
}
