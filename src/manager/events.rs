//! `GET /v1/events`: task and node events as server-sent events, from this
//! manager's own applied state (a follower serves it as well as the leader).
//!
//! A stream first replays the retained events after the client's index
//! (`?index=N` or the `Last-Event-ID` header), then follows the state
//! machine's feed. Every event's SSE `id` is its index, the same on every
//! manager (see `goat_storage::events`), so a client can resume on any
//! manager. A client that fell behind the feed, or a manager that installed
//! a snapshot, re-reads the histories from the last index sent: nothing is
//! skipped and nothing is sent twice.
//!
//! The retained events are read from the state a chunk at a time (see
//! `goat_storage::events::Backlog`): the state lock is held for short
//! looks, never for the whole backlog, and a stream holds one heap entry
//! per history rather than a copy of every event. A manager serves at most
//! `--max-streams` streams at once; past that, `503` with `Retry-After`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use goat_raft::state_machine::Feed;
use goat_storage::events::{last_index, Backlog, ClusterEvent};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send the events after this index.
    pub index: Option<u64>,
}

/// Where the client wants to start: `?index=` wins over `Last-Event-ID`.
fn resume_point(query: &EventsQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if let Some(index) = query.index {
        return Ok(Some(index));
    }
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    text.parse().map(Some).map_err(|_| {
        ApiError::field(
            ErrorCode::InvalidHeader,
            "Last-Event-ID",
            format!("{text:?} is not an event index (an integer)"),
        )
    })
}

/// What a stream sends next, in order.
enum Item {
    /// `event: open`: where the stream starts (its `id` is the resume point).
    Open {
        index: u64,
        position: u64,
        complete_from: u64,
    },
    /// `event: gap`: events after `after` and before `complete_from` may be
    /// missing (no longer retained).
    Gap {
        after: u64,
        complete_from: u64,
    },
    Event(ClusterEvent),
}

impl Item {
    fn to_sse(&self) -> Event {
        match self {
            Item::Open { index, position, complete_from } => Event::default().event("open").id(index.to_string()).data(
                serde_json::json!({"index": index, "position": position, "complete_from": complete_from}).to_string(),
            ),
            Item::Gap { after, complete_from } => Event::default().event("gap").data(
                serde_json::json!({
                    "after": after,
                    "complete_from": complete_from,
                    "error": format!(
                        "events after {after} and before {complete_from} are no longer retained and some are missing; \
                         the stream goes on with every retained event (re-read /v1/tasks and /v1/nodes to resync)"
                    ),
                })
                .to_string(),
            ),
            Item::Event(event) => Event::default()
                .event(event.kind())
                .id(event.index().to_string())
                .data(serde_json::to_string(event).unwrap_or_default()),
        }
    }
}

/// Histories looked at, and events copied, per look at the state.
const CHUNK: usize = 256;

/// Scans the histories for the events after `after`, a chunk per short
/// read of the state, yielding in between: the state machine is never
/// kept waiting for the whole backlog.
async fn scan(manager: &Manager, after: u64) -> Backlog {
    let mut backlog = Backlog::new(after);
    loop {
        let done = backlog.scan(&manager.state().read().state, CHUNK);
        if done {
            return backlog;
        }
        tokio::task::yield_now().await;
    }
}

/// One client's stream.
struct Follower {
    manager: Arc<Manager>,
    feed: tokio::sync::broadcast::Receiver<Feed>,
    /// The index of the last event sent (or the resume point).
    last: u64,
    queue: VecDeque<Item>,
    /// Retained events still to send before the feed's, read a chunk at
    /// a time.
    backlog: Option<Backlog>,
    /// Counts this stream against `--max-streams` while it lives.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follower {
    /// Starts sending the retained events after `after` (again), with a
    /// gap marker first if some are gone.
    async fn replay(&mut self, after: u64) {
        let backlog = scan(&self.manager, after).await;
        let complete = backlog.complete_from();
        if after.saturating_add(1) < complete {
            self.queue.push_back(Item::Gap { after, complete_from: complete });
        }
        self.backlog = Some(backlog);
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                if let Item::Event(event) = &item {
                    if event.index() <= self.last {
                        continue;
                    }
                    self.last = event.index();
                }
                return Some(item.to_sse());
            }
            if let Some(backlog) = &mut self.backlog {
                // The feed's events come after the backlog's: it waits.
                let events = backlog.take(&self.manager.state().read().state, CHUNK);
                self.queue.extend(events.into_iter().map(Item::Event));
                if backlog.is_done() {
                    self.backlog = None;
                }
                continue;
            }
            let received = tokio::select! {
                _ = self.manager.closing().cancelled() => return None,
                received = self.feed.recv() => received,
            };
            match received {
                Ok(Feed::Events(events)) => {
                    self.queue.extend(events.iter().filter(|e| e.index() > self.last).cloned().map(Item::Event));
                }
                Ok(Feed::Reset) | Err(RecvError::Lagged(_)) => {
                    tracing::debug!(after = self.last, "event stream re-reading the histories");
                    self.queue.clear();
                    self.replay(self.last).await;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /v1/events[?index=N]`.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "observability",
    summary = "Follow task and node events (server-sent events)",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, minimum = 0, description = "Resume after this event index (`index` wins)."),
    ),
    responses(
        (status = 200, description = "An SSE stream: first `event: open` (its `id` the resume point), then task and node events, each with its index as `id`.", content_type = "text/event-stream", body = String),
        (status = 503, description = "This manager serves its limit of streams (`busy`), or is shutting down.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn stream(
    State(m): State<Arc<Manager>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let query = super::extract::query_of(query)?;
    let resume = resume_point(&query, &headers)?;
    let permit = m
        .stream_permit()
        .map_err(|max| ApiError::busy(format!("this manager already serves {max} event streams (--max-streams)")))?;
    // Subscribe first, then read: what is applied in between comes twice
    // and is sent once.
    let feed = m.state().subscribe();
    let position = m.state().read().last_applied.map_or(0, |l| last_index(l.index));
    let start = resume.unwrap_or(position);
    // Without a resume point the scan finds no event to send, only where
    // the retained events are complete from.
    let backlog = scan(&m, if resume.is_some() { start } else { u64::MAX }).await;
    let complete = backlog.complete_from();
    let mut queue = VecDeque::from([Item::Open { index: start, position, complete_from: complete }]);
    if resume.is_some() && start.saturating_add(1) < complete {
        queue.push_back(Item::Gap { after: start, complete_from: complete });
    }
    tracing::debug!(from = start, "event stream opened");
    let follower = Follower { manager: m, feed, last: start, queue, backlog: Some(backlog), _permit: permit };
    let events = futures::stream::unfold(follower, |mut f| async move { f.next().await.map(|e| (Ok(e), f)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_query_wins_over_the_header_and_bad_ids_are_named() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&EventsQuery::default(), &headers).unwrap(), None);
        headers.insert("last-event-id", HeaderValue::from_static("42"));
        assert_eq!(resume_point(&EventsQuery::default(), &headers).unwrap(), Some(42));
        assert_eq!(resume_point(&EventsQuery { index: Some(7) }, &headers).unwrap(), Some(7));
        headers.insert("last-event-id", HeaderValue::from_static("x"));
        let e = resume_point(&EventsQuery::default(), &headers).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("Last-Event-ID"));
    }
}
