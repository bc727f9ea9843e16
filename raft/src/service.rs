//! The receiving side of Raft RPCs: `/raft/vote`, `/raft/append`,
//! `/raft/snapshot` and Goat's `/raft/prevote` (see [`crate::timing`]),
//! mounted on the manager's own HTTP port. Each request
//! must carry a cluster token: a middleware checks it before the body is
//! read, so without it the answer is 401 and Raft never sees the request.
//! (The manager's own authentication layer checks it as well.)
//! Each route has its body limit (see [`crate::limits`]): a declared length
//! over it is refused with 413 before the body is read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::limits::{limited, MAX_APPEND_BYTES, MAX_SNAPSHOT_BYTES, MAX_VOTE_BYTES};
use crate::timing::{answer_prevote, Activity, PreVoteRequest, Timing};
use crate::{bearer, Raft, TOKEN_HEADER};

/// What the routes share: the Raft node, and the timers' view of it.
#[derive(Clone)]
struct Node {
    raft: Raft,
    timing: Timing,
    activity: Arc<Activity>,
}

/// The `/raft/*` routes for `raft`, guarded by `tokens` (the cluster token,
/// and during a rotation the previous one). Requests of a leader are
/// reported to `activity` (the follower's election timer).
pub fn router(raft: Raft, tokens: &[String], timing: Timing, activity: Arc<Activity>) -> Router {
    let accepted: Arc<[String]> = tokens.iter().filter(|t| !t.is_empty()).map(|t| bearer(t)).collect();
    Router::new()
        .route("/raft/vote", limited(post(vote), MAX_VOTE_BYTES))
        .route("/raft/prevote", limited(post(prevote), MAX_VOTE_BYTES))
        .route("/raft/append", limited(post(append), MAX_APPEND_BYTES))
        .route("/raft/snapshot", limited(post(snapshot), MAX_SNAPSHOT_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(accepted, require_token))
        .with_state(Node { raft, timing, activity })
}

async fn require_token(State(accepted): State<Arc<[String]>>, request: Request, next: Next) -> Response {
    if accepted.iter().any(|t| token_matches(request.headers(), t)) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

/// Whether `headers` carry `expected` (compared in constant time).
pub fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(got) = headers.get(TOKEN_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    constant_time_eq(got, expected.as_bytes())
}

/// Equality of two byte strings without an early exit on the first
/// difference (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn unauthorized() -> Response {
    let body = r#"{"error":"missing or wrong cluster token","code":"unauthorized","field":null}"#;
    (StatusCode::UNAUTHORIZED, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("undecodable Raft request: {e}")).into_response()
}

/// Decodes the request, runs `handle`, encodes its result.
async fn serve<Req, Resp, Fut>(body: &[u8], handle: impl FnOnce(Req) -> Fut) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    match decode::<Req>(body) {
        Ok(request) => encode(&handle(request).await).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn vote(State(node): State<Node>, body: Bytes) -> Response {
    serve(&body, |req| async move {
        let answer = node.raft.vote(req).await;
        // Granting a vote restarts the election timer, as in Raft.
        if answer.as_ref().is_ok_and(|r| r.vote_granted) {
            node.activity.touch();
        }
        answer
    })
    .await
}

async fn prevote(State(node): State<Node>, body: Bytes) -> Response {
    serve(&body, |req: PreVoteRequest| async move { answer_prevote(&node.raft, &node.timing, &node.activity, &req) })
        .await
}

async fn append(State(node): State<Node>, body: Bytes) -> Response {
    serve(&body, |req| async move {
        let _serving = node.activity.serving();
        node.raft.append_entries(req).await
    })
    .await
}

async fn snapshot(State(node): State<Node>, body: Bytes) -> Response {
    serve(&body, |req| async move {
        let _serving = node.activity.serving();
        node.raft.install_snapshot(req).await
    })
    .await
}
