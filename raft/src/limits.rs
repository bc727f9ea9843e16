//! Size limits on what one request or one log entry may carry, and the
//! per-route body limit that enforces them on the HTTP side.
//!
//! The numbers hang together: a batched log entry holds at most
//! [`MAX_ENTRY_BYTES`] of commands (one larger command goes alone), a
//! follower is sent at most [`MAX_PAYLOAD_ENTRIES`] entries per
//! AppendEntries, so `/raft/append` accepts what that makes plus one
//! restore entry ([`MAX_RESTORE_BYTES`], the only command allowed to be
//! larger). Every route has a limit; a request whose `Content-Length` is
//! over it is refused with `413` at once, before its body is read (a
//! body of up to 16 MiB is then read and dropped, never held, so that the
//! client sees the answer), and a body without a length is cut off at the
//! limit.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Serialize;

/// Commands in one batched log entry, at most.
pub const MAX_BATCH: usize = 512;
/// Bytes of commands (bincode) in one batched log entry, at most: a full
/// AppendEntries (`MAX_PAYLOAD_ENTRIES` of them) must replicate, and be
/// synced on the follower, well within one heartbeat interval (100 ms),
/// which openraft 0.9 also uses as the RPC's time limit. A single command
/// larger than this goes in an entry of its own.
pub const MAX_ENTRY_BYTES: usize = 128 << 10;
/// Entries per AppendEntries, at most (openraft's `max_payload_entries`).
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;
/// The largest backup `POST /v1/snapshot/restore` accepts; it becomes one
/// `Restore` log entry, the only command allowed to be this large.
pub const MAX_RESTORE_BYTES: usize = 64 << 20;
/// A snapshot travels in chunks of this size (`snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;

/// Room for the envelope around the payload (ids, terms, membership).
const ENVELOPE_BYTES: usize = 1 << 20;

/// `/raft/vote`: a vote request is a few dozen bytes.
pub const MAX_VOTE_BYTES: usize = 64 << 10;
/// `/raft/append`: a full AppendEntries, plus room for one restore entry.
pub const MAX_APPEND_BYTES: usize = MAX_PAYLOAD_ENTRIES as usize * MAX_ENTRY_BYTES + MAX_RESTORE_BYTES + ENVELOPE_BYTES;
/// `/raft/snapshot`: one chunk and its metadata.
pub const MAX_SNAPSHOT_BYTES: usize = SNAPSHOT_CHUNK_BYTES as usize + ENVELOPE_BYTES;
/// `/internal/propose`: one forwarded command (a restore at most).
pub const MAX_PROPOSE_BYTES: usize = MAX_RESTORE_BYTES + ENVELOPE_BYTES;
/// Routes that take no body.
pub const NO_BODY_BYTES: usize = 64 << 10;

/// The JSON body of a `413`.
#[derive(Debug, Serialize)]
struct TooLarge {
    error: String,
    code: &'static str,
    field: Option<String>,
    /// The route's limit, in bytes.
    limit: usize,
}

/// The `413` for a body over `limit` bytes.
pub fn too_large(limit: usize) -> Response {
    let body = TooLarge {
        error: format!("request body is over this route's limit of {limit} bytes"),
        code: "body_too_large",
        field: None,
        limit,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = (StatusCode::PAYLOAD_TOO_LARGE, json).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The rest of the body is never read: the connection cannot be reused.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether a request declaring `content_length` must be refused unread.
pub fn declared_over(content_length: Option<&HeaderValue>, limit: usize) -> bool {
    // An unparsable length is hyper's to refuse; here only a number counts.
    content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// Middleware: refuses a declared length over the limit at once, and
/// gives every `413` from the handler (a body without a length that ran
/// over) the same JSON body.
async fn enforce(State(limit): State<usize>, request: Request, next: Next) -> Response {
    if declared_over(request.headers().get(header::CONTENT_LENGTH), limit) {
        discard_body(request, limit);
        return too_large(limit);
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(limit);
    }
    response
}

/// Bytes of a refused body read and dropped after the answer, at most.
pub const MAX_DISCARD_BYTES: u64 = 16 << 20;

/// Lets a client that writes its whole body before it reads (most HTTP
/// clients) see the `413`: the answer goes out at once, and meanwhile a
/// body of at most [`MAX_DISCARD_BYTES`] is read and dropped, chunk by
/// chunk (never held), for at most a few seconds. A larger declared body
/// is not read at all: the connection closes after the answer.
fn discard_body(request: Request, limit: usize) {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    if declared > MAX_DISCARD_BYTES.max(limit as u64) {
        return;
    }
    let mut body = request.into_body().into_data_stream();
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = futures::StreamExt::next(&mut body).await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    });
}

/// `route` with a body limit of `limit` bytes (see the module's doc).
pub fn limited<S>(route: MethodRouter<S>, limit: usize) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.layer(DefaultBodyLimit::max(limit)).layer(axum::middleware::from_fn_with_state(limit, enforce))
}

/// The bincode size of `value`, without building it.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl bincode::enc::write::Writer for Count {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0 += bytes.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    match bincode::serde::encode_into_writer(value, &mut count, bincode::config::standard()) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_over_the_limit_are_refused() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(!declared_over(None, 10));
        assert!(!declared_over(Some(&v("10")), 10));
        assert!(declared_over(Some(&v("11")), 10));
        assert!(declared_over(Some(&v("262144000")), MAX_APPEND_BYTES));
        assert!(!declared_over(Some(&v("junk")), 10));
    }

    #[test]
    fn the_append_limit_holds_a_full_append_and_a_restore() {
        assert!(MAX_APPEND_BYTES >= MAX_PAYLOAD_ENTRIES as usize * MAX_ENTRY_BYTES + MAX_RESTORE_BYTES);
        assert!(MAX_APPEND_BYTES < 250_000_000);
        assert!(MAX_SNAPSHOT_BYTES > SNAPSHOT_CHUNK_BYTES as usize);
    }

    #[test]
    fn encoded_len_is_the_encoding_length() {
        let value = (7u64, "hello".to_string(), vec![1u32, 2, 3]);
        assert_eq!(encoded_len(&value), crate::codec::encode(&value).len());
    }

    #[tokio::test]
    async fn the_413_names_the_limit() {
        let response = too_large(1234);
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = axum::body::to_bytes(response.into_body(), 10_000).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["limit"], 1234);
        assert_eq!(json["code"], "body_too_large");
        assert!(json["error"].as_str().unwrap().contains("1234"));
    }
}
