//! Assignment lists and their versions, as pure functions of the applied
//! state: the answer a worker gets (to a heartbeat or a long poll on
//! `GET /v1/nodes/{name}/assignments`, see `crate::manager::assignments`)
//! and the version that names it.

use goat_raft::state_machine::Applied;
use goat_storage::model::{Assignment, DesiredStatus, HeartbeatReply};

use super::nodes::{assignments, HEARTBEAT_INTERVAL};

/// FNV-1a over each task's id, generation and desired status, in task-id
/// order: the same list gives the same version on every manager. A task's
/// spec is left out: it never changes for a given task and generation
/// (a heartbeat's answer carries the full list anyway).
pub fn fingerprint<'a>(tasks: impl Iterator<Item = (&'a uuid::Uuid, u64, DesiredStatus)>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    let mut count = 0u64;
    for (id, generation, desired) in tasks {
        eat(id.as_bytes());
        eat(&generation.to_le_bytes());
        eat(&[match desired {
            DesiredStatus::Run => 0,
            DesiredStatus::Stop => 1,
        }]);
        count += 1;
    }
    eat(&count.to_le_bytes());
    format!("{hash:016x}")
}

/// The version of an assignment list (as sent in an answer).
pub fn version_of(list: &[Assignment]) -> String {
    fingerprint(list.iter().map(|a| (&a.task_id, a.generation, a.desired)))
}

/// The version of `node`'s assignments in `applied`, without building the
/// list (a waiting poll computes it after every applied batch).
pub fn version_on(applied: &Applied, node: &str) -> String {
    // `assignments` lists the same tasks in the same (task-id) order.
    fingerprint(applied.state.tasks_on(node).map(|t| (&t.id, t.generation, t.desired)))
}

/// The answer for `node` at `applied`'s index: its list, numbered.
pub fn reply_at(applied: &Applied, node: &str) -> HeartbeatReply {
    let list = assignments(&applied.state, node);
    HeartbeatReply {
        version: version_of(&list),
        assignments: list,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        index: applied.last_applied.map_or(0, |l| l.index),
        unchanged: false,
    }
}

/// The answer to a heartbeat from `node` that holds the list of version
/// `held` (if it said): no list when that is still the current version
/// (computed without building the list: the cost of an unchanged heartbeat
/// does not grow with the specs of the node's tasks), else the full list.
pub fn heartbeat_reply(applied: &Applied, node: &str, held: Option<&str>) -> HeartbeatReply {
    if let Some(held) = held.filter(|h| !h.is_empty()) {
        let version = version_on(applied, node);
        if version == held {
            return HeartbeatReply {
                assignments: Vec::new(),
                heartbeat_interval: HEARTBEAT_INTERVAL,
                index: applied.last_applied.map_or(0, |l| l.index),
                version,
                unchanged: true,
            };
        }
    }
    reply_at(applied, node)
}

/// Whether a poll that holds `after` must be answered now: the list has
/// another version than the worker's (or the worker named none).
pub fn must_answer(current: &str, after: Option<&str>) -> bool {
    after != Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_raft::Command;
    use goat_storage::fsm::ClusterState;
    use goat_storage::model::{EngineStatus, Resources};
    use uuid::Uuid;

    /// w1 registered with one task placed on it.
    fn placed() -> (ClusterState, Uuid) {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode {
            name: "w1".into(),
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            engine: EngineStatus { healthy: true, error: None },
            at: 1,
        });
        let id = Uuid::from_u128(7);
        let spec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        s.apply(&Command::SubmitTask { task_id: id, spec, at: 1 });
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 2 });
        (s, id)
    }

    fn applied(state: ClusterState) -> Applied {
        Applied { state, ..Applied::default() }
    }

    #[test]
    fn an_unchanged_heartbeat_is_answered_without_the_list() {
        let (mut s, id) = placed();
        let full = heartbeat_reply(&applied(s.clone()), "w1", None);
        assert!(!full.unchanged);
        assert_eq!(full.assignments.len(), 1);
        let again = heartbeat_reply(&applied(s.clone()), "w1", Some(&full.version));
        assert!(again.unchanged && again.assignments.is_empty());
        assert_eq!(again.version, full.version);
        // A stale or empty version gets the whole list.
        assert!(!heartbeat_reply(&applied(s.clone()), "w1", Some("")).unchanged);
        s.apply(&Command::StopTask { task_id: id, at: 3 });
        let changed = heartbeat_reply(&applied(s), "w1", Some(&full.version));
        assert!(!changed.unchanged);
        assert_eq!(changed.assignments[0].desired, DesiredStatus::Stop);
    }

    #[test]
    fn the_version_follows_what_the_worker_acts_on() {
        let (mut s, id) = placed();
        let before = version_on(&applied(s.clone()), "w1");
        assert_eq!(before.len(), 16);
        // The same list, built or not, on any manager: the same version.
        assert_eq!(version_of(&assignments(&s, "w1")), before);
        assert_eq!(version_on(&applied(s.clone()), "w1"), before);
        // Empty lists have a version too, unlike any non-empty one.
        assert_ne!(version_on(&applied(s.clone()), "w2"), before);
        // A stop (no event, no state change) changes it.
        s.apply(&Command::StopTask { task_id: id, at: 3 });
        let stopped = version_on(&applied(s.clone()), "w1");
        assert_ne!(stopped, before);
        // A report that changes nothing the worker acts on does not.
        s.apply(&Command::SetPendingReason { task_id: id, reason: Some("x".into()), at: 4 });
        assert_eq!(version_on(&applied(s), "w1"), stopped);
    }

    #[test]
    fn a_poll_is_answered_at_once_unless_it_holds_the_current_version() {
        assert!(must_answer("00ab", None), "no version: answer");
        assert!(must_answer("00ab", Some("00ac")), "another version: answer");
        assert!(!must_answer("00ab", Some("00ab")), "the same: wait");
    }
}
