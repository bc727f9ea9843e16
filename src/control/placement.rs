//! Placement decisions: which pending task goes on which node, or why it
//! waits. Pure: the leader's placement loop (`crate::manager::leader`) reads
//! the state, calls [`decide`] and commits what it returns.

use goat_raft::Command;
use goat_storage::model::{Strategy, Timestamp};

use super::scheduler::{Scheduler, NO_NODES};

/// What placement needs of a pending task, copied out of the state.
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub id: goat_storage::model::TaskId,
    pub created_at: Timestamp,
    pub spec: goat_storage::model::TaskSpec,
    pub reason: Option<String>,
    pub failed_on: Option<String>,
    /// The service the task is a copy of: placement keeps to its spread.
    pub service: Option<String>,
}

impl PendingTask {
    pub fn of(task: &goat_storage::model::Task) -> PendingTask {
        PendingTask {
            id: task.id,
            created_at: task.created_at,
            spec: task.spec.clone(),
            reason: task.reason.clone(),
            failed_on: task.failed_on.clone(),
            service: task.service.as_ref().map(|s| s.name.clone()),
        }
    }
}

/// The commands for a chunk of pending tasks: a node for each task that
/// fits (charged to the scheduler at once, so later chunks of the round see
/// it), and a reason for each that does not, unless it already says so.
pub fn decide(scheduler: &mut Scheduler, tasks: &[PendingTask], default: Strategy, at: Timestamp) -> Vec<Command> {
    let mut commands = Vec::new();
    for task in tasks {
        if !scheduler.has_nodes() && task.reason.as_deref() == Some(NO_NODES) {
            // Nothing can be placed anywhere and the task already says so.
            continue;
        }
        match scheduler.place_copy(&task.spec, default, task.failed_on.as_deref(), task.service.as_deref()) {
            Ok(node) => commands.push(Command::PlaceTask { task_id: task.id, node, at }),
            Err(reason) if task.reason.as_deref() != Some(reason.as_str()) => {
                commands.push(Command::SetPendingReason { task_id: task.id, reason: Some(reason), at })
            }
            Err(_) => {}
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u128, memory: u64, reason: Option<&str>) -> PendingTask {
        let spec =
            serde_json::from_value(serde_json::json!({"name": "t", "image": "i", "memory": memory})).expect("spec");
        PendingTask {
            id: uuid::Uuid::from_u128(n),
            created_at: 1,
            spec,
            reason: reason.map(str::to_string),
            service: None,
            failed_on: None,
        }
    }

    #[test]
    fn a_round_places_what_fits_and_gives_the_others_a_reason_once() {
        use goat_storage::fsm::ClusterState;
        use goat_storage::model::{EngineStatus, Resources};
        let mut s = ClusterState::default();
        let engine = EngineStatus { healthy: true, error: None };
        let capacity = Resources { cpu: 1.0, memory: 1 << 30, disk: 1 << 30 };
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity, engine, at: 0 });
        let mut scheduler = Scheduler::new(&s, |_| true);
        let tasks = [pending(1, 1 << 29, None), pending(2, 1 << 29, None), pending(3, 1 << 29, None)];
        let commands = decide(&mut scheduler, &tasks, Strategy::BinPack, 5);
        assert!(
            matches!(&commands[..], [
            Command::PlaceTask { node: a, .. },
            Command::PlaceTask { node: b, .. },
            Command::SetPendingReason { reason: Some(r), .. },
        ] if a == "w1" && b == "w1" && r.contains("memory")),
            "{commands:?}"
        );
        // The same verdict is not committed again.
        let Command::SetPendingReason { reason: Some(r), .. } = &commands[2] else { unreachable!() };
        assert!(decide(&mut scheduler, &[pending(3, 1 << 29, Some(r))], Strategy::BinPack, 6).is_empty());
        // With no node at all, tasks that already say so are skipped.
        let mut none = Scheduler::new(&ClusterState::default(), |_| true);
        assert!(decide(&mut none, &[pending(4, 0, Some(NO_NODES))], Strategy::BinPack, 7).is_empty());
        assert_eq!(decide(&mut none, &[pending(5, 0, None)], Strategy::BinPack, 7).len(), 1);
    }
}
