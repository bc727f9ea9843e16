//! `GET /v1/events` for clients: [`Events`], a stream that resumes from the
//! last index received, on the same manager or the next: event indexes are
//! the same on every manager.
//!
//! The response's bytes become server-sent events through
//! `eventsource-stream` (the HTML spec's parsing rules): it keeps the bytes
//! of a UTF-8 character that a chunk boundary splits until the rest
//! arrives, which decoding each chunk on its own would corrupt.
//!
//! A stream has no end, so the client's request timeout (which bounds a
//! whole answer) does not apply to it: it is broken when nothing arrives
//! for [`IDLE`], not when it has been open for long.

use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::{BoxStream, Stream, StreamExt};
use goat_storage::events::ClusterEvent;

use super::http::{ApiFailure, Client, Error};

/// How long a stream may send nothing (no event, no keep-alive comment:
/// managers send one every 15 s) before it counts as broken; also the
/// longest wait for a manager's answer to the request.
pub const IDLE: Duration = Duration::from_secs(45);

/// The timeout of the request itself: none in practice (see the module's
/// doc); [`IDLE`] watches the stream instead.
const UNBOUNDED: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The server-sent events of one response, as they arrive; the error says
/// why the response is done (a broken or silent connection, bytes that
/// are not an event stream).
type SseStream = BoxStream<'static, Result<Event, EventStreamError<String>>>;

/// Splits a byte stream (a response body's chunks) into server-sent
/// events; a gap of [`IDLE`] between chunks ends it with an error.
fn sse_of<B: AsRef<[u8]> + Send + 'static>(
    bytes: impl Stream<Item = Result<B, reqwest::Error>> + Send + 'static,
) -> SseStream {
    let bytes = Some(bytes.map(|chunk| chunk.map_err(|e| e.to_string())).boxed());
    let watched = futures::stream::unfold(bytes, |bytes| async move {
        let mut bytes = bytes?;
        match tokio::time::timeout(IDLE, bytes.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(bytes))),
            Ok(None) => None,
            Err(_) => Some((Err(format!("nothing arrived for {IDLE:?}")), None)),
        }
    });
    watched.eventsource().boxed()
}

/// What [`Events::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// `event: open`: a stream (re)started; events follow `index`.
    Open { index: u64, manager: usize },
    /// `event: gap`: events in between are no longer retained.
    Gap { message: String },
    /// A task or node event, and its JSON as sent.
    Event { event: ClusterEvent, data: String },
}

/// A followed `GET /v1/events`.
pub struct Events {
    client: Client,
    resume: Option<u64>,
    next: usize,
    pinned: bool,
    last_event_id: bool,
    failures: usize,
    stream: Option<SseStream>,
}

impl Client {
    /// Follows `GET /v1/events` after `index` (new events only if `None`).
    pub fn events(&self, index: Option<u64>) -> Events {
        Events::new(self.clone(), index)
    }
}

impl Events {
    pub fn new(client: Client, resume: Option<u64>) -> Events {
        let next = client.preferred();
        Events { client, resume, next, pinned: false, last_event_id: false, failures: 0, stream: None }
    }

    /// Only from manager `index` of the client's list: a broken stream is
    /// an error rather than resumed elsewhere.
    pub fn on(mut self, index: usize) -> Events {
        self.next = index;
        self.pinned = true;
        self
    }

    /// Asks for the resume point with the `Last-Event-ID` header instead
    /// of `?index=`.
    pub fn by_last_event_id(mut self) -> Events {
        self.last_event_id = true;
        self
    }

    /// The index of the last event received (the resume point).
    pub fn resume_point(&self) -> Option<u64> {
        self.resume
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let n = self.client.bases().len();
        loop {
            let index = self.next % n;
            let request = match (self.resume, self.last_event_id) {
                (Some(at), false) => self.client.get(format!("/v1/events?index={at}")),
                (Some(at), true) => self.client.get("/v1/events").header("last-event-id", &at.to_string()),
                (None, _) => self.client.get("/v1/events"),
            };
            let base = self.client.bases()[index].clone();
            let sent = tokio::time::timeout(IDLE, request.timeout(UNBOUNDED).send_streaming(index)).await;
            let sent =
                sent.map_err(|_| format!("no answer within {IDLE:?}")).and_then(|s| s.map_err(|e| e.to_string()));
            match sent {
                Ok(response) if response.status().is_success() => {
                    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE);
                    if !content_type.is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream")) {
                        return Err(Error::Decode(format!(
                            "{base}: /v1/events is not an event stream ({content_type:?})"
                        )));
                    }
                    self.failures = 0;
                    self.stream = Some(sse_of(response.bytes_stream()));
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    return Err(Error::Api(ApiFailure::of(status, &body)));
                }
                Err(e) => {
                    self.failures += 1;
                    if self.pinned || self.failures >= n {
                        return Err(Error::NotSent(format!("no manager streams events ({base}: {e})")));
                    }
                    self.next += 1;
                }
            }
        }
    }

    /// The next item; a broken stream is resumed (after the last index
    /// received) on the next manager.
    pub async fn next(&mut self) -> Result<StreamItem, Error> {
        loop {
            if self.stream.is_none() {
                self.connect().await?;
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            let broken = match stream.next().await {
                Some(Ok(event)) => match self.item_of(event) {
                    Some(item) => return Ok(item),
                    None => continue,
                },
                None => "the event stream ended".to_string(),
                // The connection broke, or the bytes are not an event
                // stream (not UTF-8, a line the parser refuses): either way
                // this response is done.
                Some(Err(e)) => format!("the event stream broke: {e}"),
            };
            // The manager went away: resume where we are, on the next one.
            self.stream = None;
            if self.pinned {
                return Err(Error::NoAnswer(broken));
            }
            tracing::info!(resume = self.resume.unwrap_or(0), reason = broken, "event stream ended; resuming");
            self.next += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What an event of the stream is, keeping the resume point; `None`
    /// for an event that is none of Goat's (logged, skipped).
    fn item_of(&mut self, message: Event) -> Option<StreamItem> {
        // The parser keeps the last `id:` seen for events without one, as
        // the spec says; only `open` and the task and node events carry one.
        let id = message.id.parse::<u64>().ok();
        match message.event.as_str() {
            "open" => {
                if self.resume.is_none() {
                    self.resume = id;
                }
                let manager = self.next % self.client.bases().len();
                Some(StreamItem::Open { index: id.unwrap_or(0), manager })
            }
            "gap" => {
                #[derive(serde::Deserialize)]
                struct Gap {
                    error: String,
                }
                let message = serde_json::from_str::<Gap>(&message.data)
                    .map(|g| g.error)
                    .unwrap_or_else(|_| "some events were missed".into());
                Some(StreamItem::Gap { message })
            }
            _ => {
                if id.is_some() {
                    self.resume = id;
                }
                match serde_json::from_str::<ClusterEvent>(&message.data) {
                    Ok(event) => Some(StreamItem::Event { event, data: message.data }),
                    Err(e) => {
                        tracing::warn!(error = %e, data = message.data, "an event that is not one");
                        None
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use goat_storage::model::NodeStatus;

    use super::*;

    /// `Events` on a response that arrives as `chunks` (no server: the
    /// stream is already open, pinned so that its end is an error).
    fn events_of(chunks: Vec<Vec<u8>>) -> Events {
        let client = Client::builder(&["127.0.0.1:1"]).build().expect("a client");
        let mut events = client.events(None).on(0);
        events.stream = Some(sse_of(futures::stream::iter(chunks.into_iter().map(Ok))));
        events
    }

    fn node_event(index: u64, reason: &str) -> ClusterEvent {
        ClusterEvent::Node {
            index,
            at: 1_700_000_000_000,
            node: "w1".into(),
            status: NodeStatus::Down,
            reason: Some(reason.into()),
        }
    }

    #[tokio::test]
    async fn events_are_split_at_blank_lines_whatever_the_chunks() {
        let first = serde_json::to_string(&node_event(5, "missed")).expect("JSON");
        let second = serde_json::to_string(&node_event(6, "back")).expect("JSON");
        let text = format!(
            "event: open\nid: 4\ndata: {{}}\n\n:keep-alive\n\nevent: node\nid: 5\ndata: {first}\n\n\
             event: gap\ndata: {{\"error\":\"lost some\"}}\n\nevent: node\r\nid: 6\r\ndata: {second}\r\n\r\n"
        );
        // Cut anywhere, in pieces of 7 bytes: the same events.
        let chunks = text.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
        let mut events = events_of(chunks);
        assert_eq!(events.next().await.expect("open"), StreamItem::Open { index: 4, manager: 0 });
        assert_eq!(
            events.next().await.expect("an event"),
            StreamItem::Event { event: node_event(5, "missed"), data: first }
        );
        assert_eq!(events.next().await.expect("gap"), StreamItem::Gap { message: "lost some".into() });
        assert_eq!(
            events.next().await.expect("an event"),
            StreamItem::Event { event: node_event(6, "back"), data: second }
        );
        assert_eq!(events.resume_point(), Some(6));
        assert!(matches!(events.next().await, Err(Error::NoAnswer(_))), "a pinned stream that ends is an error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_nothing_for_idle_is_broken() {
        let mut events = events_of(Vec::new());
        events.stream = Some(sse_of(futures::stream::pending::<Result<Vec<u8>, reqwest::Error>>()));
        let started = tokio::time::Instant::now();
        assert!(matches!(events.next().await, Err(Error::NoAnswer(_))), "a pinned stream that breaks is an error");
        // Paused time: the clock moved exactly as far as the waits asked.
        assert!(started.elapsed() >= IDLE);
    }

    #[tokio::test]
    async fn a_character_split_between_chunks_arrives_whole() {
        let reason = "l’hôte a disparu — 節点";
        let data = serde_json::to_string(&node_event(9, reason)).expect("JSON");
        let text = format!("event: node\nid: 9\ndata: {data}\n\n");
        // Cut inside the three bytes of the first '’'.
        let cut = text.find('’').expect("the character") + 1;
        assert!(!text.is_char_boundary(cut));
        let chunks = vec![text.as_bytes()[..cut].to_vec(), text.as_bytes()[cut..].to_vec()];
        let mut events = events_of(chunks);
        let StreamItem::Event { event, data: sent } = events.next().await.expect("the event") else {
            panic!("a node event")
        };
        assert_eq!(event, node_event(9, reason));
        assert_eq!(sent, data);
    }
}
