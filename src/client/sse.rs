//! `GET /v1/events` for clients: the server-sent event parser (the one of
//! the code base) and [`Events`], a stream that resumes from the last index
//! received, on the same manager or the next: event indexes are the same on
//! every manager.

use std::collections::VecDeque;
use std::time::Duration;

use goat_storage::events::ClusterEvent;

use super::http::{ApiFailure, Client, Error};

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseMessage {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a server-sent event stream into messages as bytes arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Adds `chunk` and returns the messages it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<SseMessage> {
        self.buffer.push_str(&chunk.replace("\r\n", "\n"));
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut message = SseMessage { event: "message".into(), ..SseMessage::default() };
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => message.event = value.to_string(),
                    "id" => message.id = Some(value.to_string()),
                    "data" => data.push(value),
                    _ => {} // comments (keep-alives) and unknown fields
                }
            }
            if !data.is_empty() {
                message.data = data.join("\n");
                messages.push(message);
            }
        }
        messages
    }
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
    response: Option<reqwest::Response>,
    parser: SseParser,
    queue: VecDeque<StreamItem>,
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
        Events {
            client,
            resume,
            next,
            pinned: false,
            last_event_id: false,
            failures: 0,
            response: None,
            parser: SseParser::default(),
            queue: VecDeque::new(),
        }
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
            match request.send_streaming(index).await {
                Ok(response) if response.status().is_success() => {
                    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE);
                    if !content_type.is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream")) {
                        return Err(Error::Decode(format!(
                            "{base}: /v1/events is not an event stream ({content_type:?})"
                        )));
                    }
                    self.failures = 0;
                    self.response = Some(response);
                    self.parser = SseParser::default();
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
            if let Some(item) = self.queue.pop_front() {
                return Ok(item);
            }
            if self.response.is_none() {
                self.connect().await?;
            }
            let Some(response) = self.response.as_mut() else { continue };
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                // The manager went away: resume where we are, on the next one.
                Ok(None) | Err(_) => {
                    self.response = None;
                    if self.pinned {
                        return Err(Error::NoAnswer("the event stream ended".into()));
                    }
                    tracing::info!(resume = self.resume.unwrap_or(0), "event stream ended; resuming");
                    self.next += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let manager = self.next % self.client.bases().len();
            for message in self.parser.push(&String::from_utf8_lossy(&chunk)) {
                let id = message.id.as_deref().and_then(|id| id.parse::<u64>().ok());
                match message.event.as_str() {
                    "open" => {
                        if self.resume.is_none() {
                            self.resume = id;
                        }
                        self.queue.push_back(StreamItem::Open { index: id.unwrap_or(0), manager });
                    }
                    "gap" => {
                        #[derive(serde::Deserialize)]
                        struct Gap {
                            error: String,
                        }
                        let message = serde_json::from_str::<Gap>(&message.data)
                            .map(|g| g.error)
                            .unwrap_or_else(|_| "some events were missed".into());
                        self.queue.push_back(StreamItem::Gap { message });
                    }
                    _ => {
                        if id.is_some() {
                            self.resume = id;
                        }
                        match serde_json::from_str::<ClusterEvent>(&message.data) {
                            Ok(event) => self.queue.push_back(StreamItem::Event { event, data: message.data }),
                            Err(e) => tracing::warn!(error = %e, data = message.data, "an event that is not one"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_at_blank_lines_whatever_the_chunks() {
        let mut p = SseParser::default();
        assert!(p.push("event: task\nid: 5").is_empty());
        let got = p.push("\ndata: {\"a\":1}\n\n:keep-alive\n\nevent: node\r\nid: 6\r\ndata: x\r\n\r\n");
        assert_eq!(
            got,
            vec![
                SseMessage { event: "task".into(), id: Some("5".into()), data: "{\"a\":1}".into() },
                SseMessage { event: "node".into(), id: Some("6".into()), data: "x".into() },
            ]
        );
    }
}
