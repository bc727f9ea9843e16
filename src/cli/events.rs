//! `goat events`: follows `GET /v1/events` on any manager and prints one
//! line per event (or its JSON with `--json`).
//!
//! The managers come from `--addr` or `GOAT_ADDR` (comma-separated); when
//! one cannot be reached the next is tried. A stream that breaks is resumed
//! from the last index received, on the same manager or the next: event
//! indexes are the same on every manager.

use std::time::Duration;

use goat_storage::events::ClusterEvent;

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
pub fn describe(event: &ClusterEvent) -> String {
    let reason = |r: &Option<String>| r.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match event {
        ClusterEvent::Task { index, task, name, from, state, node, reason: why, .. } => {
            let id = task.to_string();
            let from = from.map(|f| format!("{} -> ", f.as_str())).unwrap_or_default();
            let node = node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
            format!(
                "{index} task {name} ({}) {from}{}{node}{}",
                id.get(..8).unwrap_or(&id),
                state.as_str(),
                reason(why)
            )
        }
        ClusterEvent::Node { index, node, status, reason: why, .. } => {
            format!("{index} node {node} {}{}", status.as_str(), reason(why))
        }
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
            StreamItem::Event { event, data } => {
                if args.client.json {
                    println!("{data}");
                } else {
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
        let task: ClusterEvent = serde_json::from_value(serde_json::json!({"type": "task", "index": 9, "at": 1,
            "task": "d16c67ea-cd5e-4e4d-8d0e-6f1f4f1b2a3c", "name": "echo", "from": "scheduled", "state": "running",
            "node": "w1", "reason": null}))
        .expect("a task event");
        assert_eq!(describe(&task), "9 task echo (d16c67ea) scheduled -> running on w1");
        let node: ClusterEvent = serde_json::from_value(serde_json::json!({"type": "node", "index": 3, "at": 1,
            "node": "w1", "status": "down", "reason": "missed"}))
        .expect("a node event");
        assert_eq!(describe(&node), "3 node w1 down: missed");
    }
}
