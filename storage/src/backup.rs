//! Backups of the cluster state, for `goat snapshot save` and `restore`.
//!
//! A backup is the state machine's content (every task and node) in JSON,
//! with a format name and version and the log index it was taken at. It is
//! restored by committing one [`Command::Restore`] through Raft, so every
//! manager replaces its state with the same content at the same log index.
//! Nothing here does I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fsm::{ClusterState, Command, MAX_EVENTS, MAX_NODE_EVENTS, MAX_RESCHEDULES_KEPT};
use crate::model::{Node, Task, Timestamp};
use crate::validate::{check_name, validate_spec, FieldError};

/// Event indexes a backup may carry: anything larger could not be followed
/// by the events the restored cluster produces next (`index + 1` wraps).
pub const MAX_EVENT_INDEX: u64 = 1 << 62;

/// The `format` field of every backup.
pub const FORMAT: &str = "goat-snapshot";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// A saved copy of the cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub format: String,
    pub version: u32,
    /// The log index the state was read at (informative).
    pub last_applied: Option<u64>,
    /// When it was taken, in ms since the epoch.
    #[schema(value_type = u64)]
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
            tasks: state.tasks.values().map(|t| (**t).clone()).collect(),
            nodes: state.nodes.values().cloned().collect(),
        }
    }

    /// Whether this build can restore it: format, version, no repeated id
    /// or name, every task's spec valid as if it were submitted now
    /// (`tasks[i].spec.<field>`), node names valid and every task's node
    /// present, and every history (events, reschedules) within the kept
    /// limit with increasing event indexes. A bad field is named.
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
            check_name(&format!("nodes[{i}].name"), &node.name)?;
            if !names.insert(node.name.as_str()) {
                return Err(FieldError::new(format!("nodes[{i}].name"), format!("node {} appears twice", node.name)));
            }
            check_history(&format!("nodes[{i}].events"), node.events.iter().map(|e| e.index), MAX_NODE_EVENTS)?;
        }
        for (i, task) in self.tasks.iter().enumerate() {
            validate_spec(&task.spec).map_err(|e| e.under(&format!("tasks[{i}].spec")))?;
            if let Some(node) = &task.node {
                if !names.contains(node.as_str()) {
                    return Err(FieldError::new(
                        format!("tasks[{i}].node"),
                        format!("names node {node:?}, which is not in the backup's nodes"),
                    ));
                }
            }
            check_history(&format!("tasks[{i}].events"), task.events.iter().map(|e| e.index), MAX_EVENTS)?;
            if task.reschedules.len() > MAX_RESCHEDULES_KEPT {
                return Err(FieldError::new(
                    format!("tasks[{i}].reschedules"),
                    format!("holds {} entries, at most {MAX_RESCHEDULES_KEPT} are kept", task.reschedules.len()),
                ));
            }
        }
        Ok(())
    }
}

/// A history's length is at most `max` and its event indexes increase and
/// stay below [`MAX_EVENT_INDEX`].
fn check_history(field: &str, indexes: impl ExactSizeIterator<Item = u64>, max: usize) -> Result<(), FieldError> {
    if indexes.len() > max {
        return Err(FieldError::new(field, format!("holds {} events, at most {max} are kept", indexes.len())));
    }
    let mut previous = None;
    for (j, index) in indexes.enumerate() {
        if index > MAX_EVENT_INDEX {
            return Err(FieldError::new(format!("{field}[{j}].index"), format!("must be at most {MAX_EVENT_INDEX}")));
        }
        if previous.is_some_and(|p| index <= p) {
            return Err(FieldError::new(format!("{field}[{j}].index"), "must be greater than the previous event's"));
        }
        previous = Some(index);
    }
    Ok(())
}

impl Backup {
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

    /// Point 4(e): specs and histories are validated, naming the field.
    #[test]
    fn a_backups_specs_and_events_are_validated() {
        let field = |b: &Backup| b.check().unwrap_err().field;
        let mut b = Backup::of(&source(), None, 1);
        b.tasks[1].spec.name = "not a name".into();
        assert_eq!(field(&b), "tasks[1].spec.name");
        let mut b = Backup::of(&source(), None, 1);
        b.tasks[0].spec.restart_policy.initial_delay = crate::Millis(0);
        assert_eq!(field(&b), "tasks[0].spec.restart_policy.initial_delay");
        let mut b = Backup::of(&source(), None, 1);
        b.tasks[0].node = Some("w9".into());
        assert_eq!(field(&b), "tasks[0].node");
        let mut b = Backup::of(&source(), None, 1);
        let first = b.tasks[0].events[0].clone();
        b.tasks[0].events = vec![first; MAX_EVENTS + 1];
        assert_eq!(field(&b), "tasks[0].events");
        let mut b = Backup::of(&source(), None, 1);
        let mut e = b.tasks[0].events[0].clone();
        b.tasks[0].events.push(e.clone());
        assert!(field(&b).starts_with("tasks[0].events["), "{}", field(&b));
        e.index = u64::MAX;
        b.tasks[0].events = vec![e];
        assert_eq!(field(&b), "tasks[0].events[0].index");
        let mut b = Backup::of(&source(), None, 1);
        b.tasks[0].reschedules = vec![1; MAX_RESCHEDULES_KEPT + 1];
        assert_eq!(field(&b), "tasks[0].reschedules");
        let mut b = Backup::of(&source(), None, 1);
        b.nodes[0].name = "-x".into();
        assert_eq!(field(&b), "nodes[0].name");
        let mut b = Backup::of(&source(), None, 1);
        let e = b.nodes[0].events[0].clone();
        b.nodes[0].events.push(e);
        assert_eq!(field(&b), "nodes[0].events[1].index");
        Backup::of(&source(), None, 1).check().unwrap();
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
