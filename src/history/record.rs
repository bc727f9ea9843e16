//! Recording a history as it happens: each operation is begun (its invoke
//! time taken) and ended (its completion time and outcome), from any task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::op::{Call, Operation, Outcome, Seen};

/// A shared, append-only history. Cloning shares it.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Operation>>,
}

/// An operation begun and not yet ended.
#[must_use = "end the operation, or it is recorded as never answered"]
pub struct Pending {
    op: Operation,
    recorder: Recorder,
    ended: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::new(Inner { start: Instant::now(), next_id: AtomicU64::new(0), ops: Mutex::new(Vec::new()) }),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes the invoke time of an operation about to be sent.
    pub fn begin(&self, client: &str, call: Call) -> Pending {
        let op = Operation {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            client: client.to_string(),
            call,
            invoke_us: self.now_us(),
            complete_us: None,
            outcome: Outcome::Unknown,
            seen: None,
            listed: None,
        };
        Pending { op, recorder: self.clone(), ended: false }
    }

    fn push(&self, op: Operation) {
        self.inner.ops.lock().push(op);
    }

    /// Everything recorded so far, by id.
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops = self.inner.ops.lock().clone();
        ops.sort_by_key(|o| o.id);
        ops
    }
}

impl Pending {
    fn finish(mut self, outcome: Outcome, seen: Option<Seen>, listed: Option<BTreeMap<String, Seen>>) {
        if outcome != Outcome::Unknown {
            self.op.complete_us = Some(self.recorder.now_us());
        }
        self.op.outcome = outcome;
        self.op.seen = seen;
        self.op.listed = listed;
        self.ended = true;
        self.recorder.push(self.op.clone());
    }

    /// Answered: it happened.
    pub fn ok(self) {
        self.finish(Outcome::Ok, None, None);
    }

    /// A read answered, or a stop that found (`Stopped`) or did not find
    /// (`Absent`) its task.
    pub fn saw(self, seen: Seen) {
        self.finish(Outcome::Ok, Some(seen), None);
    }

    /// A list answered with these tasks.
    pub fn listed(self, tasks: BTreeMap<String, Seen>) {
        self.finish(Outcome::Ok, None, Some(tasks));
    }

    /// Definitely did not happen.
    pub fn failed(self) {
        self.finish(Outcome::Failed, None, None);
    }

    /// May or may not have happened.
    pub fn unknown(self) {
        self.finish(Outcome::Unknown, None, None);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.ended {
            // Dropped mid-flight (a cancelled request): it may have happened.
            self.ended = true;
            self.recorder.push(self.op.clone());
        }
    }
}

/// What a task says of itself: stopped once asked to stop, else live.
pub fn seen_of(task: &goat_storage::model::Task) -> Seen {
    match task.desired {
        goat_storage::model::DesiredStatus::Stop => Seen::Stopped,
        goat_storage::model::DesiredStatus::Run => Seen::Live,
    }
}

/// What a task's JSON (as the API answers it) says of it.
pub fn seen_of_task(task: &serde_json::Value) -> Seen {
    if task["desired"] == "stop" {
        Seen::Stopped
    } else {
        Seen::Live
    }
}
