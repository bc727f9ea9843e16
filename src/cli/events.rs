//! `goat events`: follows `GET /v1/events` on any manager and prints one
//! line per event (or its JSON with `--json`).
//!
//! The managers come from `--addr` or `GOAT_ADDR` (comma-separated); when
//! one cannot be reached the next is tried. A stream that breaks is resumed
//! from the last index received, on the same manager or the next: event
//! indexes are the same on every manager.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::client::base_url_with;

/// `goat events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Managers (the next is tried when one is down), token, TLS.
    #[command(flatten)]
    pub client: super::ClientArgs,
    /// Start after this event index (0: every retained event); default: new
    /// events only.
    #[arg(long)]
    pub index: Option<u64>,
    /// Exit after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

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

/// One line for a person.
pub fn describe(event: &Value) -> String {
    let index = event["index"].as_u64().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let reason = event["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
    match event["type"].as_str() {
        Some("task") => {
            let id = text(&event["task"]);
            let from = event["from"].as_str().map(|f| format!("{f} -> ")).unwrap_or_default();
            let node = event["node"].as_str().map(|n| format!(" on {n}")).unwrap_or_default();
            format!(
                "{index} task {} ({}) {from}{}{node}{reason}",
                text(&event["name"]),
                id.get(..8).unwrap_or(&id),
                text(&event["state"])
            )
        }
        Some("node") => format!("{index} node {} {}{reason}", text(&event["node"]), text(&event["status"])),
        _ => format!("{index} {event}"),
    }
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let tls = args.client.tls().map_err(|e| anyhow::anyhow!(e.message))?;
    let scheme = goat_raft::tls::scheme(tls.as_ref());
    let addrs: Vec<String> =
        args.client.addr.iter().filter(|a| !a.trim().is_empty()).map(|a| base_url_with(a, scheme)).collect();
    if addrs.is_empty() {
        bail!("no manager address: use --addr or GOAT_ADDR");
    }
    let http = goat_raft::tls::client_builder(tls.as_ref())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("HTTP client")?;
    let mut resume = args.index;
    let mut printed = 0u64;
    let mut failures = 0usize;
    let mut next = 0usize;
    loop {
        let url = &addrs[next % addrs.len()];
        let mut request = http.get(format!("{url}/v1/events"));
        if let Some(token) = args.client.token.as_deref().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        if let Some(index) = resume {
            request = request.query(&[("index", index)]);
        }
        let mut response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                bail!("{url}: {status}: {}", body["error"].as_str().unwrap_or("unexpected answer"));
            }
            Err(e) => {
                failures += 1;
                if failures >= addrs.len() {
                    bail!("no manager reachable (tried {}): {e}", addrs.join(", "));
                }
                next += 1;
                continue;
            }
        };
        failures = 0;
        let mut parser = SseParser::default();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                // The manager went away: resume where we are, on the next one.
                Ok(None) | Err(_) => break,
            };
            for message in parser.push(&String::from_utf8_lossy(&chunk)) {
                match message.event.as_str() {
                    "open" => {
                        if resume.is_none() {
                            resume = message.id.as_deref().and_then(|id| id.parse().ok());
                        }
                    }
                    "gap" => {
                        let gap: Value = serde_json::from_str(&message.data).unwrap_or_default();
                        eprintln!("goat events: {}", gap["error"].as_str().unwrap_or("some events were missed"));
                    }
                    _ => {
                        if let Some(index) = message.id.as_deref().and_then(|id| id.parse().ok()) {
                            resume = Some(index);
                        }
                        if args.client.json {
                            println!("{}", message.data);
                        } else {
                            let event: Value = serde_json::from_str(&message.data).unwrap_or_default();
                            println!("{}", describe(&event));
                        }
                        printed += 1;
                        if args.limit.is_some_and(|limit| printed >= limit) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        eprintln!("goat events: stream from {url} ended; resuming from {}", resume.unwrap_or(0));
        next += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_across_chunks_and_comments_skipped() {
        let mut p = SseParser::default();
        assert!(p.push("event: task\nid: 5").is_empty());
        let got = p.push("\ndata: {\"a\":1}\n\n:keep-alive\n\nevent: node\r\nid: 6\r\ndata: x\r\n\r\n");
        assert_eq!(
            got,
            [
                SseMessage { event: "task".into(), id: Some("5".into()), data: "{\"a\":1}".into() },
                SseMessage { event: "node".into(), id: Some("6".into()), data: "x".into() },
            ]
        );
    }

    #[test]
    fn events_read_as_one_line() {
        let task = serde_json::json!({"type": "task", "index": 9, "task": "d16c67ea-cd5e-4e4d", "name": "echo",
            "from": "scheduled", "state": "running", "node": "w1", "reason": null});
        assert_eq!(describe(&task), "9 task echo (d16c67ea) scheduled -> running on w1");
        let node = serde_json::json!({"type": "node", "index": 3, "node": "w1", "status": "down", "reason": "missed"});
        assert_eq!(describe(&node), "3 node w1 down: missed");
        assert_eq!(super::super::client::base_url("127.0.0.1:7101/"), "http://127.0.0.1:7101");
    }
}
