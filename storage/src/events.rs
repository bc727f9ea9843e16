//! The cluster's event stream, read from the histories that tasks and nodes
//! already keep (`Task::events`, `Node::events`): nothing is stored twice.
//!
//! **Indexing.** Every history entry carries an `index` derived from the
//! Raft log index of the entry that produced it:
//! `index = log_index × 2^20 + position`, where `position` counts the events
//! produced while applying that entry (a batch entry produces many). Every
//! manager applies the same entries in the same order, so every manager
//! gives an event the same index, and indexes only grow.
//!
//! **Retention.** A task keeps its last `MAX_EVENTS` events, a node its last
//! `MAX_NODE_EVENTS`. A full history may have dropped older events, so the
//! stream is complete only from [`complete_from`]: the newest first index
//! of any full history. A reader resuming from an older index is told so.
//!
//! Pure functions of the state, no I/O.

use serde::{Deserialize, Serialize};

use crate::fsm::{ClusterState, Dirty, MAX_EVENTS, MAX_NODE_EVENTS};
use crate::model::{NodeStatus, TaskId, TaskState, Timestamp};

/// Bits of an event index that number the events of one log entry.
pub const POSITION_BITS: u32 = 20;

/// The index of the first event produced by log entry `log_index`.
pub fn first_index(log_index: u64) -> u64 {
    log_index << POSITION_BITS
}

/// The largest index an event of log entry `log_index` (or an earlier one)
/// can have: a reader that has applied up to `log_index` has seen every
/// event up to here.
pub fn last_index(log_index: u64) -> u64 {
    first_index(log_index + 1) - 1
}

/// One event of the stream, as `GET /v1/events` sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A task changed state.
    Task {
        index: u64,
        at: Timestamp,
        task: TaskId,
        name: String,
        /// The state it left; `None` for its first event (or when that
        /// event is no longer retained).
        from: Option<TaskState>,
        state: TaskState,
        node: Option<String>,
        reason: Option<String>,
    },
    /// A node registered or changed status.
    Node { index: u64, at: Timestamp, node: String, status: NodeStatus, reason: Option<String> },
}

impl ClusterEvent {
    pub fn index(&self) -> u64 {
        match self {
            ClusterEvent::Task { index, .. } | ClusterEvent::Node { index, .. } => *index,
        }
    }

    /// `task` or `node`: the SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterEvent::Task { .. } => "task",
            ClusterEvent::Node { .. } => "node",
        }
    }
}

/// The task events of `id` with an index above `after`, oldest first.
fn task_events_after(state: &ClusterState, id: &TaskId, after: u64, out: &mut Vec<ClusterEvent>) {
    let Some(task) = state.tasks.get(id) else { return };
    // Histories are in index order: walk back from the newest.
    let start = task.events.iter().rposition(|e| e.index <= after).map_or(0, |i| i + 1);
    for i in start..task.events.len() {
        let e = &task.events[i];
        out.push(ClusterEvent::Task {
            index: e.index,
            at: e.at,
            task: task.id,
            name: task.spec.name.clone(),
            from: i.checked_sub(1).map(|p| task.events[p].state),
            state: e.state,
            node: e.node.clone(),
            reason: e.reason.clone(),
        });
    }
}

fn node_events_after(state: &ClusterState, name: &str, after: u64, out: &mut Vec<ClusterEvent>) {
    let Some(node) = state.nodes.get(name) else { return };
    let start = node.events.iter().rposition(|e| e.index <= after).map_or(0, |i| i + 1);
    out.extend(node.events[start..].iter().map(|e| ClusterEvent::Node {
        index: e.index,
        at: e.at,
        node: node.name.clone(),
        status: e.status,
        reason: e.reason.clone(),
    }));
}

/// Every retained event with an index above `after`, oldest first.
pub fn events_after(state: &ClusterState, after: u64) -> Vec<ClusterEvent> {
    let mut out = Vec::new();
    for id in state.tasks.keys() {
        task_events_after(state, id, after, &mut out);
    }
    for name in state.nodes.keys() {
        node_events_after(state, name, after, &mut out);
    }
    out.sort_by_key(ClusterEvent::index);
    out
}

/// The events the tasks and nodes in `changed` got at or above index
/// `from`: what applying the entries from `from` on produced. Costs what
/// changed, not the size of the state.
pub fn events_of(state: &ClusterState, changed: &Dirty, from: u64) -> Vec<ClusterEvent> {
    let after = from.saturating_sub(1);
    let mut out = Vec::new();
    for id in &changed.tasks {
        task_events_after(state, id, after, &mut out);
    }
    for name in &changed.nodes {
        node_events_after(state, name, after, &mut out);
    }
    out.retain(|e| e.index() >= from);
    out.sort_by_key(ClusterEvent::index);
    out
}

/// The lowest index from which every event is still retained: events below
/// it may have been dropped from a full history. 0 when nothing was.
pub fn complete_from(state: &ClusterState) -> u64 {
    let tasks = state.tasks.values().filter(|t| t.events.len() >= MAX_EVENTS).map(|t| t.events[0].index);
    let nodes = state.nodes.values().filter(|n| n.events.len() >= MAX_NODE_EVENTS).map(|n| n.events[0].index);
    tasks.chain(nodes).max().unwrap_or(0)
}

/// What a history is keyed by in a [`Backlog`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Task(TaskId),
    Node(String),
}

/// The retained events after an index, read from the state a bounded
/// number of histories or events at a time, so that the reader holds the
/// state lock for short looks only, never for the whole backlog.
///
/// First [`Backlog::scan`] walks the histories in key order, a chunk per
/// call, noting for each the index of its first event after `after` (and
/// [`complete_from`] on the way). Then [`Backlog::take`] hands out the
/// events in index order, merging the histories (a heap of their next
/// indexes), a chunk per call. Between calls the state may move on:
/// events applied meanwhile have higher indexes than any event noted, so
/// the order holds; a history that is gone (a task collected) is skipped.
/// Memory: one heap entry per history with events to send.
#[derive(Debug)]
pub struct Backlog {
    after: u64,
    /// Where the scan stands: the last task and node key looked at.
    task_cursor: Option<TaskId>,
    node_cursor: Option<String>,
    scanned: bool,
    complete_from: u64,
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(u64, Source)>>,
}

impl Backlog {
    pub fn new(after: u64) -> Backlog {
        Backlog {
            after,
            task_cursor: None,
            node_cursor: None,
            scanned: false,
            complete_from: 0,
            heads: Default::default(),
        }
    }

    /// Looks at up to `chunk` more histories; true once all were.
    pub fn scan(&mut self, state: &ClusterState, chunk: usize) -> bool {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut left = chunk.max(1);
        if self.scanned {
            return true;
        }
        let from = self.task_cursor.map_or(Unbounded, Excluded);
        for (id, task) in state.tasks.range((from, Unbounded)).take(left) {
            self.task_cursor = Some(*id);
            left -= 1;
            if task.events.len() >= MAX_EVENTS {
                self.complete_from = self.complete_from.max(task.events[0].index);
            }
            if let Some(next) = task.events.iter().map(|e| e.index).find(|i| *i > self.after) {
                self.heads.push(std::cmp::Reverse((next, Source::Task(*id))));
            }
        }
        if left == 0 {
            return false;
        }
        let from = match &self.node_cursor {
            Some(name) => Excluded(name.clone()),
            None => Unbounded,
        };
        for (name, node) in state.nodes.range((from, Unbounded)).take(left) {
            self.node_cursor = Some(name.clone());
            left -= 1;
            if node.events.len() >= MAX_NODE_EVENTS {
                self.complete_from = self.complete_from.max(node.events[0].index);
            }
            if let Some(next) = node.events.iter().map(|e| e.index).find(|i| *i > self.after) {
                self.heads.push(std::cmp::Reverse((next, Source::Node(name.clone()))));
            }
        }
        self.scanned = left > 0;
        self.scanned
    }

    /// [`complete_from`] of the histories scanned so far (of the state,
    /// once the scan is over).
    pub fn complete_from(&self) -> u64 {
        self.complete_from
    }

    /// Whether every event was taken.
    pub fn is_done(&self) -> bool {
        self.scanned && self.heads.is_empty()
    }

    /// Up to `chunk` more events, in index order. Call after the scan.
    pub fn take(&mut self, state: &ClusterState, chunk: usize) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        while out.len() < chunk {
            let Some(std::cmp::Reverse((index, source))) = self.heads.pop() else { break };
            let mut one = Vec::new();
            match &source {
                Source::Task(id) => task_events_after(state, id, index - 1, &mut one),
                Source::Node(name) => node_events_after(state, name, index - 1, &mut one),
            }
            let mut events = one.into_iter();
            if let Some(event) = events.next() {
                let next = events.next().map(|e| e.index());
                out.push(event);
                if let Some(next) = next {
                    self.heads.push(std::cmp::Reverse((next, source)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::Command;
    use crate::model::{EngineStatus, ObservedState, Resources, TaskReport};
    use uuid::Uuid;

    fn spec() -> crate::model::TaskSpec {
        serde_json::from_str(r#"{"name": "echo", "image": "goat-echo:latest"}"#).unwrap()
    }

    fn upsert(name: &str, at: u64) -> Command {
        Command::UpsertNode {
            name: name.into(),
            capacity: Resources { cpu: 1.0, memory: 1 << 30, disk: 0 },
            engine: EngineStatus { healthy: true, error: None },
            at,
        }
    }

    fn report(id: TaskId, state: ObservedState) -> Command {
        let report = TaskReport {
            task_id: id,
            generation: 1,
            state,
            container_id: None,
            exit_code: None,
            host_ports: Default::default(),
            health: Default::default(),
            restarts: 0,
            reason: None,
        };
        Command::ReportTask { node: "w1".into(), report, at: 9 }
    }

    /// Applies `commands` as consecutive log entries from `first`, like the
    /// Raft state machine does.
    fn apply_entries(s: &mut ClusterState, first: u64, commands: Vec<Command>) {
        for (i, c) in commands.into_iter().enumerate() {
            s.begin_entry(first + i as u64);
            s.apply(&c);
        }
    }

    #[test]
    fn indexes_come_from_the_log_index_and_the_position_in_the_entry() {
        assert_eq!(first_index(3), 3 << 20);
        assert_eq!(last_index(3), (4 << 20) - 1);
        let mut s = ClusterState::default();
        let id = Uuid::from_u128(1);
        apply_entries(&mut s, 5, vec![upsert("w1", 1), Command::SubmitTask { task_id: id, spec: spec(), at: 2 }]);
        // One entry, two events: positions 0 and 1.
        let batch = Command::Batch(vec![
            Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 },
            report(id, ObservedState::Running),
        ]);
        apply_entries(&mut s, 7, vec![batch]);
        let all = events_after(&s, 0);
        let indexes: Vec<u64> = all.iter().map(ClusterEvent::index).collect();
        assert_eq!(indexes, [5 << 20, 6 << 20, 7 << 20, (7 << 20) + 1]);
        assert_eq!(all[0].kind(), "node");
        assert!(matches!(
            &all[3],
            ClusterEvent::Task { from: Some(TaskState::Scheduled), state: TaskState::Running, .. }
        ));
        // The same entries applied elsewhere give the same indexes.
        let mut other = ClusterState::default();
        apply_entries(&mut other, 5, vec![upsert("w1", 1), Command::SubmitTask { task_id: id, spec: spec(), at: 2 }]);
        apply_entries(
            &mut other,
            7,
            vec![Command::Batch(vec![
                Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 },
                report(id, ObservedState::Running),
            ])],
        );
        assert_eq!(events_after(&other, 0), all);
    }

    #[test]
    fn resuming_returns_only_what_follows_and_what_an_entry_produced() {
        let mut s = ClusterState::default();
        let id = Uuid::from_u128(1);
        apply_entries(&mut s, 1, vec![upsert("w1", 1), Command::SubmitTask { task_id: id, spec: spec(), at: 2 }]);
        s.take_dirty();
        apply_entries(&mut s, 3, vec![Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 }]);
        let after_two = events_after(&s, last_index(2));
        assert_eq!(after_two.len(), 1);
        assert_eq!(after_two[0].index(), first_index(3));
        // What entry 3 produced, from the keys it changed.
        let produced = events_of(&s, &s.clone().take_dirty(), first_index(3));
        assert_eq!(produced, after_two);
        assert!(events_after(&s, last_index(3)).is_empty());
        // Node status changes are events; a repeated status is not.
        apply_entries(
            &mut s,
            4,
            vec![
                Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Down, at: 4 },
                Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Down, at: 5 },
                upsert("w1", 6),
                Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Draining, at: 7 },
            ],
        );
        let statuses: Vec<_> = events_after(&s, last_index(3))
            .into_iter()
            .filter_map(|e| match e {
                ClusterEvent::Node { status, reason, .. } => Some((status, reason.unwrap_or_default())),
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [
                (NodeStatus::Down, "missed its heartbeat deadline".to_string()),
                (NodeStatus::Ready, "heartbeats resumed".to_string()),
                (NodeStatus::Draining, "draining on request".to_string()),
            ]
        );
    }

    #[test]
    fn full_histories_move_the_complete_from_mark() {
        let mut s = ClusterState::default();
        let id = Uuid::from_u128(1);
        apply_entries(
            &mut s,
            1,
            vec![upsert("w1", 1), Command::SubmitTask { task_id: id, spec: spec(), at: 2 }, {
                Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 }
            }],
        );
        assert_eq!(complete_from(&s), 0, "nothing dropped yet");
        let flips: Vec<Command> = (0..100)
            .map(|i| report(id, if i % 2 == 0 { ObservedState::Running } else { ObservedState::Restarting }))
            .collect();
        apply_entries(&mut s, 10, flips);
        let events = &s.tasks[&id].events;
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(complete_from(&s), events[0].index);
        // The oldest retained event has lost its predecessor.
        let retained = events_after(&s, 0);
        assert!(matches!(retained.iter().find(|e| e.kind() == "task"), Some(ClusterEvent::Task { from: None, .. })));
        assert_eq!(retained.last().map(ClusterEvent::index), Some(first_index(109)));
    }

    #[test]
    fn a_reloaded_state_numbers_on_as_the_applied_one_does() {
        let mut s = ClusterState::default();
        let id = Uuid::from_u128(1);
        apply_entries(&mut s, 1, vec![upsert("w1", 1), Command::SubmitTask { task_id: id, spec: spec(), at: 2 }]);
        // An entry numbered at or below the last event's range (as after an
        // entry with more than 2^20 events) still gets higher indexes.
        apply_entries(&mut s, 2, vec![Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 }]);
        let indexes: Vec<u64> = s.tasks[&id].events.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [first_index(2), first_index(2) + 1]);
        // Loaded from its parts (a restart, a snapshot), a state numbers
        // the next events as the one that applied everything did.
        let mut reloaded = ClusterState::from_parts(s.tasks.clone(), s.nodes.clone());
        for state in [&mut s, &mut reloaded] {
            apply_entries(state, 2, vec![report(id, ObservedState::Running)]);
        }
        assert_eq!(events_after(&reloaded, 0), events_after(&s, 0));
        assert_eq!(s.tasks[&id].events.last().map(|e| e.index), Some(first_index(2) + 2));
    }

    /// A state with `n` tasks, each with a few events, interleaved.
    fn busy_state(n: u128) -> ClusterState {
        let mut s = ClusterState::default();
        apply_entries(&mut s, 1, vec![upsert("w1", 1), upsert("w2", 1)]);
        let ids: Vec<TaskId> = (0..n).map(Uuid::from_u128).collect();
        let mut entry = 2;
        for id in &ids {
            apply_entries(&mut s, entry, vec![Command::SubmitTask { task_id: *id, spec: spec(), at: 2 }]);
            entry += 1;
        }
        for id in ids.iter().rev() {
            apply_entries(&mut s, entry, vec![Command::PlaceTask { task_id: *id, node: "w1".into(), at: 3 }]);
            entry += 1;
        }
        apply_entries(
            &mut s,
            entry,
            vec![Command::SetNodeStatus { name: "w2".into(), status: NodeStatus::Down, at: 4 }],
        );
        s
    }

    fn drain(backlog: &mut Backlog, state: &ClusterState, chunk: usize) -> Vec<ClusterEvent> {
        while !backlog.scan(state, chunk) {}
        let mut out = Vec::new();
        while !backlog.is_done() {
            out.extend(backlog.take(state, chunk));
        }
        out
    }

    #[test]
    fn the_backlog_in_chunks_is_the_backlog_at_once() {
        let s = busy_state(20);
        for after in [0, first_index(5), first_index(30), u64::MAX - 1] {
            for chunk in [1, 3, 1000] {
                let mut backlog = Backlog::new(after);
                assert_eq!(drain(&mut backlog, &s, chunk), events_after(&s, after), "after {after}, chunk {chunk}");
                assert_eq!(backlog.complete_from(), complete_from(&s));
            }
        }
    }

    #[test]
    fn the_backlog_keeps_its_order_while_the_state_moves_on() {
        let mut s = busy_state(10);
        let mut backlog = Backlog::new(0);
        while !backlog.scan(&s, 2) {}
        let mut out = backlog.take(&s, 5);
        // Applied meanwhile: more events, a task collected.
        let next = s.tasks.values().flat_map(|t| t.events.iter()).map(|e| e.index).max().unwrap() >> POSITION_BITS;
        apply_entries(&mut s, next + 1, vec![report(Uuid::from_u128(3), ObservedState::Running)]);
        s.tasks.remove(&Uuid::from_u128(9));
        while !backlog.is_done() {
            out.extend(backlog.take(&s, 5));
        }
        let indexes: Vec<u64> = out.iter().map(ClusterEvent::index).collect();
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "in order, once each: {indexes:?}");
        assert!(out.iter().any(|e| e.index() == first_index(next + 1)), "the new event is there");
    }

    #[test]
    fn events_serialize_with_their_type() {
        let e = ClusterEvent::Node { index: 7, at: 1, node: "w1".into(), status: NodeStatus::Ready, reason: None };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "node");
        assert_eq!(json["status"], "ready");
        assert_eq!(serde_json::from_value::<ClusterEvent>(json).unwrap(), e);
    }
}
