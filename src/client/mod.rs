//! The one HTTP client of Goat's API, over the model types: used by the
//! CLI, `goat drill`, `goat dev`, the benchmarks and the integration tests.
//!
//! A [`Client`] knows a list of managers. A request goes to the one that
//! answered last and moves on to the next one when a manager does not
//! answer (connection refused, timeout) or answers 503 (no leader yet,
//! shutting down). A 4xx is the cluster's answer and is returned as is:
//! asking another manager would give the same.
//!
//! Submitting a task is not idempotent by itself (each submission gets a
//! new id): after a timeout or a 503 it may have been applied.
//! [`Client::submit`] therefore sends an `Idempotency-Key` (the API derives
//! the task id from it), which makes every retry name the same task; a
//! submission without one ([`Request`] without
//! [`Request::idempotency_key`]) is only retried elsewhere when it was
//! never sent (connection refused or connect timeout).
//!
//! [`Request::on`] pins a request to one manager (no failover): for the
//! drills and tests that talk to a given member.
//!
//! `GET /v1/events` is read by [`Events`] (its bytes split into server-sent
//! events by `eventsource-stream`), resumed on the next manager when a
//! stream breaks.

mod http;
pub mod sse;
pub mod views;

pub use http::{
    base_url, bearer_headers, encode_query, error_text, Answer, ApiFailure, Builder, Client, Error, Request,
    IDEMPOTENCY_HEADER, NEXT_HEADER,
};
pub use sse::{Events, StreamItem};
pub use views::{ClusterView, HealthView, MemberView, NodeView, Stats};
