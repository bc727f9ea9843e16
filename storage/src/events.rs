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

    #[test]
    fn events_serialize_with_their_type() {
        let e = ClusterEvent::Node { index: 7, at: 1, node: "w1".into(), status: NodeStatus::Ready, reason: None };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "node");
        assert_eq!(json["status"], "ready");
        assert_eq!(serde_json::from_value::<ClusterEvent>(json).unwrap(), e);
    }
}
