//! `goat events`: follows `GET /v1/events` on any manager and prints one
//! line per event (or its JSON with `--json`).
//!
//! The managers come from `--addr` or `GOAT_ADDR` (comma-separated); when
//! one cannot be reached the next is tried. A stream that breaks is resumed
//! from the last index received, on the same manager or the next: event
//! indexes are the same on every manager.

use std::time::Duration;

use serde_json::Value;

use crate::client::StreamItem;

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
    let client = super::commands::client_with(&args.client, Duration::from_secs(3600 * 24 * 365))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let mut events = client.events(args.index);
    let mut printed = 0u64;
    loop {
        match events.next().await? {
            StreamItem::Open { .. } => {}
            StreamItem::Gap { message } => eprintln!("goat events: {message}"),
            StreamItem::Event { data, .. } => {
                if args.client.json {
                    println!("{data}");
                } else {
                    let event: Value = serde_json::from_str(&data).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line() {
        let task = serde_json::json!({"type": "task", "index": 9, "task": "d16c67ea-cd5e-4e4d", "name": "echo",
            "from": "scheduled", "state": "running", "node": "w1", "reason": null});
        assert_eq!(describe(&task), "9 task echo (d16c67ea) scheduled -> running on w1");
        let node = serde_json::json!({"type": "node", "index": 3, "node": "w1", "status": "down", "reason": "missed"});
        assert_eq!(describe(&node), "3 node w1 down: missed");
    }
}
