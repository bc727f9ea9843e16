//! The operations of a history and their JSON lines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the client asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// `POST /v1/tasks` with an `Idempotency-Key`: the task id is known
    /// before the answer (the API derives it from the key).
    Create { task: String },
    /// `GET /v1/tasks/{id}` (linearizable: not `?stale=true`).
    Read { task: String },
    /// `GET /v1/tasks` (linearizable).
    List,
    /// `DELETE /v1/tasks/{id}`.
    Stop { task: String },
}

impl Call {
    /// The task this call names (`None` for a list).
    pub fn task(&self) -> Option<&str> {
        match self {
            Call::Create { task } | Call::Read { task } | Call::Stop { task } => Some(task),
            Call::List => None,
        }
    }
}

/// How the operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered: it happened (a read: it saw `observed`).
    Ok,
    /// Definitely did not happen (a 4xx other than a read's or stop's 404,
    /// a connection refused).
    Failed,
    /// May or may not have happened (timeout, 5xx, connection broken).
    Unknown,
}

/// What the client saw of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// No such task (404, or not in a list).
    Absent,
    /// The task exists, desired `run`.
    Live,
    /// The task exists, desired `stop`.
    Stopped,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Unique within the history.
    pub id: u64,
    /// Who made it: a label for people (`load`, `probe`, `manager2`).
    #[serde(default)]
    pub client: String,
    #[serde(flatten)]
    pub call: Call,
    /// Microseconds from the start of the recording.
    pub invoke_us: u64,
    /// When the answer came (`None` with `unknown`: never).
    #[serde(default)]
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
    /// A read: what it saw. A stop: `absent` for a 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Seen>,
    /// A list: every task it returned (absent from the map: not listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<BTreeMap<String, Seen>>,
}

impl Operation {
    /// One line for people.
    pub fn describe(&self) -> String {
        let what = match &self.call {
            Call::Create { task } => format!("create {}", short(task)),
            Call::Read { task } => format!("read {}", short(task)),
            Call::Stop { task } => format!("stop {}", short(task)),
            Call::List => format!("list ({} tasks)", self.listed.as_ref().map_or(0, BTreeMap::len)),
        };
        let end = self.complete_us.map(|c| format!("{:.3}s", c as f64 / 1e6)).unwrap_or_else(|| "-".into());
        let seen = self.seen.map(|s| format!(" saw {s:?}").to_lowercase()).unwrap_or_default();
        format!(
            "#{} [{:.3}s, {end}] {} {what}: {:?}{seen}",
            self.id,
            self.invoke_us as f64 / 1e6,
            self.client,
            self.outcome
        )
        .replace("Ok", "ok")
        .replace("Failed", "failed")
        .replace("Unknown", "unknown")
    }
}

fn short(task: &str) -> &str {
    task.get(..8).unwrap_or(task)
}

/// A history as JSON lines (one operation per line).
pub fn to_json_lines(ops: &[Operation]) -> String {
    let mut out = String::new();
    for op in ops {
        if let Ok(line) = serde_json::to_string(op) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Parses JSON lines written by [`to_json_lines`]; names the bad line.
pub fn from_json_lines(text: &str) -> Result<Vec<Operation>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
