//! Backups of the cluster state, for `goat snapshot save` and `restore`.
//!
//! A backup is the state machine's content (every task and node) in JSON,
//! with a format name and version and the log index it was taken at. It is
//! restored by committing one [`Command::Restore`] through Raft, so every
//! manager replaces its state with the same content at the same log index.
//! Nothing here does I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fsm::{ClusterState, Command};
use crate::model::{Node, Task, Timestamp};
use crate::validate::FieldError;

/// The `format` field of every backup.
pub const FORMAT: &str = "goat-snapshot";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// A saved copy of the cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub format: String,
    pub version: u32,
    /// The log index the state was read at (informative).
    pub last_applied: Option<u64>,
    /// When it was taken, in ms since the epoch.
    pub taken_at: Timestamp,
    pub tasks: Vec<Task>,
    pub nodes: Vec<Node>,
}

impl Backup {
    /// A backup of `state`.
    pub fn of(state: &ClusterState, last_applied: Option<u64>, taken_at: Timestamp) -> Backup {
        Backup {
            format: FORMAT.to_string(),
            version: VERSION,
            last_applied,
            taken_at,
            tasks: state.tasks.values().cloned().collect(),
            nodes: state.nodes.values().cloned().collect(),
        }
    }

    /// Whether this build can restore it: format, version, no repeated id
    /// or name, and each task's events within the kept limit.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.format != FORMAT {
            return Err(FieldError::new("format", format!("is {:?}, expected {FORMAT:?}", self.format)));
        }
        if self.version != VERSION {
            return Err(FieldError::new(
                "version",
                format!("{} is not supported (this build reads {VERSION})", self.version),
            ));
        }
        let mut ids = BTreeSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            if !ids.insert(task.id) {
                return Err(FieldError::new(format!("tasks[{i}].id"), format!("task {} appears twice", task.id)));
            }
        }
        let mut names = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !names.insert(node.name.as_str()) {
                return Err(FieldError::new(format!("nodes[{i}].name"), format!("node {} appears twice", node.name)));
            }
        }
        Ok(())
    }

    /// The command that puts this backup in place of the current state.
    pub fn into_command(self) -> Command {
        Command::Restore { tasks: self.tasks, nodes: self.nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::CommandResult;
    use crate::model::{EngineStatus, Resources, TaskState};
    use uuid::Uuid;

    fn spec(name: &str) -> crate::model::TaskSpec {
        serde_json::from_value(serde_json::json!({"name": name, "image": "goat-echo:latest"})).unwrap()
    }

    fn node(s: &mut ClusterState, name: &str) {
        let engine = EngineStatus { healthy: true, error: None };
        s.apply(&Command::UpsertNode { name: name.into(), capacity: Resources::default(), engine, at: 1 });
    }

    /// Two tasks (one placed on w1) and nodes w1, w2.
    fn source() -> ClusterState {
        let mut s = ClusterState::default();
        node(&mut s, "w1");
        node(&mut s, "w2");
        for i in 1..=2u128 {
            s.apply(&Command::SubmitTask { task_id: Uuid::from_u128(i), spec: spec(&format!("t{i}")), at: 2 });
        }
        s.apply(&Command::PlaceTask { task_id: Uuid::from_u128(1), node: "w1".into(), at: 3 });
        s
    }

    #[test]
    fn restore_replaces_everything_and_marks_old_and_new_keys_dirty() {
        let saved = Backup::of(&source(), Some(42), 9);
        let text = serde_json::to_string(&saved).unwrap();
        let back: Backup = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        back.check().unwrap();

        // A different cluster: one unrelated task and node.
        let mut target = ClusterState::default();
        node(&mut target, "other");
        let stray = Uuid::from_u128(99);
        target.apply(&Command::SubmitTask { task_id: stray, spec: spec("stray"), at: 5 });
        target.take_dirty();

        assert_eq!(target.apply(&back.into_command()), CommandResult::Done);
        let expected = source();
        assert_eq!(target.tasks, expected.tasks);
        assert_eq!(target.nodes, expected.nodes);
        let dirty = target.take_dirty();
        assert!(dirty.tasks.contains(&stray) && dirty.tasks.contains(&Uuid::from_u128(1)));
        assert!(dirty.nodes.contains("other") && dirty.nodes.contains("w2"));
        // The indexes are rebuilt: task 2 is pending, task 1 placed on w1.
        let pending: Vec<_> = target.pending_tasks().map(|t| t.id).collect();
        assert_eq!(pending, [Uuid::from_u128(2)]);
        assert_eq!(target.tasks_on("w1").count(), 1);
        assert_eq!(target.tasks[&Uuid::from_u128(1)].state, TaskState::Scheduled);
    }

    #[test]
    fn restore_into_an_empty_state_and_then_applying_more_works() {
        let mut target = ClusterState::default();
        target.apply(&Backup::of(&source(), None, 1).into_command());
        let placed = target.apply(&Command::PlaceTask { task_id: Uuid::from_u128(2), node: "w2".into(), at: 10 });
        assert!(!placed.is_refused(), "{placed:?}");
        assert_eq!(target.pending_tasks().count(), 0);
    }

    #[test]
    fn bad_backups_are_refused_naming_the_field() {
        let mut b = Backup::of(&source(), None, 1);
        b.version = 7;
        assert_eq!(b.check().unwrap_err().field, "version");
        let mut b = Backup::of(&source(), None, 1);
        b.format = "etcd".into();
        assert_eq!(b.check().unwrap_err().field, "format");
        let mut b = Backup::of(&source(), None, 1);
        b.tasks.push(b.tasks[0].clone());
        assert_eq!(b.check().unwrap_err().field, "tasks[2].id");
        let mut b = Backup::of(&source(), None, 1);
        b.nodes.push(b.nodes[1].clone());
        assert_eq!(b.check().unwrap_err().field, "nodes[2].name");
        // The state machine refuses duplicates too, changing nothing.
        let mut s = source();
        let before = s.clone();
        assert!(s.apply(&Command::Restore { tasks: b.tasks.clone(), nodes: b.nodes }).is_refused());
        assert_eq!(s.tasks, before.tasks);
    }

    #[test]
    fn restore_roundtrips_through_bincode() {
        let cfg = bincode::config::standard();
        let command = Backup::of(&source(), Some(3), 1).into_command();
        let bytes = bincode::serde::encode_to_vec(&command, cfg).unwrap();
        let (back, _): (Command, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, command);
    }
}
