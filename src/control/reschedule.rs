//! When a failed task gets another chance on another node.
//!
//! A task fails on its node when its restarts run out (or it cannot start
//! at all there). The worker gives up; the leader, which knows every node,
//! decides whether to place it again: under the task's reschedule policy, at
//! most `attempts` times within `interval`, each after `delay` doubling up to
//! `max_delay` since the failure. Pure: the leader's loop passes the clock.

use goat_raft::Command;
use goat_storage::fsm::ClusterState;
use goat_storage::model::{Task, Timestamp};

/// The reschedules that are due at `now`.
pub fn due(state: &ClusterState, now: Timestamp) -> Vec<Command> {
    state
        .failed_tasks()
        .filter(|task| next_attempt_at(task, now).is_some_and(|at| at <= now))
        .map(|task| Command::RescheduleTask { task_id: task.id, generation: task.generation, at: now })
        .collect()
}

/// When the failed `task` may be rescheduled, or `None` if its policy says
/// it stays failed.
pub fn next_attempt_at(task: &Task, now: Timestamp) -> Option<Timestamp> {
    let policy = task.spec.reschedule_policy;
    let window_start = now.saturating_sub(policy.interval.0);
    let recent = task.reschedules.iter().filter(|at| **at >= window_start).count() as u32;
    if recent >= policy.attempts {
        return None;
    }
    let delay = policy.delay.0.saturating_mul(1u64 << recent.min(32)).min(policy.max_delay.0);
    Some(task.updated_at.saturating_add(delay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::model::{EngineStatus, ObservedState, Resources, TaskReport, TaskSpec};
    use goat_storage::Millis;
    use uuid::Uuid;

    /// A task that failed on w1 at time 1000, with a policy of 2 attempts in
    /// 1 min, delay 100 ms doubling up to 150 ms.
    fn failed() -> (ClusterState, Uuid) {
        let mut s = ClusterState::default();
        let engine = EngineStatus { healthy: true, error: None };
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: Resources::default(), engine, at: 0 });
        let mut spec: TaskSpec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        spec.reschedule_policy.attempts = 2;
        spec.reschedule_policy.interval = Millis(60_000);
        spec.reschedule_policy.delay = Millis(100);
        spec.reschedule_policy.max_delay = Millis(150);
        let id = Uuid::from_u128(3);
        s.apply(&Command::SubmitTask { task_id: id, spec, at: 0 });
        fail(&mut s, id, 1, 1_000);
        (s, id)
    }

    fn fail(s: &mut ClusterState, id: Uuid, generation: u64, at: Timestamp) {
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: at - 1 });
        let report = TaskReport {
            task_id: id,
            generation,
            state: ObservedState::Failed,
            container_id: None,
            exit_code: Some(1),
            host_ports: Default::default(),
            health: Default::default(),
            restarts: 5,
            reason: Some("exit code 1".into()),
        };
        s.apply(&Command::ReportTask { node: "w1".into(), report, at });
    }

    #[test]
    fn waits_its_delay_then_reschedules_with_growing_delays_until_attempts_run_out() {
        let (mut s, id) = failed();
        assert!(due(&s, 1_050).is_empty(), "within the first delay");
        let commands = due(&s, 1_100);
        assert_eq!(commands.len(), 1);
        s.apply(&commands[0]);
        assert!(due(&s, 1_200).is_empty(), "now pending, not failed");

        // Fails again: the second delay is doubled, capped at 150 ms.
        fail(&mut s, id, 2, 2_000);
        assert_eq!(next_attempt_at(&s.tasks[&id], 2_000), Some(2_150));
        assert!(due(&s, 2_100).is_empty());
        s.apply(&due(&s, 2_150)[0]);

        // Third failure: two reschedules within the minute, none left.
        fail(&mut s, id, 3, 3_000);
        assert_eq!(next_attempt_at(&s.tasks[&id], 3_000), None);
        assert!(due(&s, 10_000).is_empty());
        // Once the window has passed, attempts are available again.
        assert!(!due(&s, 70_000).is_empty());
    }

    #[test]
    fn stopped_or_never_policies_stay_failed() {
        let (mut s, id) = failed();
        s.apply(&Command::StopTask { task_id: id, at: 1_001 });
        assert!(due(&s, 100_000).is_empty());
        let (mut s, id) = failed();
        if let Some(t) = s.tasks.get_mut(&id) {
            t.spec.reschedule_policy.attempts = 0;
        }
        assert!(due(&s, 100_000).is_empty());
    }
}
