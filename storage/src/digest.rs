//! A fingerprint of the replicated state, to prove that managers agree.
//!
//! The digest is FNV-1a (128-bit) over a canonical encoding of the state:
//! bincode (standard configuration) of the tasks and nodes, both kept in
//! `BTreeMap`s, so the same state gives the same bytes on every manager
//! whatever order it was built in. Derived indexes and the dirty set are not
//! part of the encoding. Pure: no I/O, no clock.
//!
//! FNV is not a cryptographic hash: it detects divergence between honest
//! replicas, not tampering.

use crate::fsm::ClusterState;

const FNV128_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const FNV128_PRIME: u128 = 0x0000000001000000000000000000013B;

/// FNV-1a, 128 bits, over `bytes`.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    let mut hash = FNV128_OFFSET;
    for byte in bytes {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(FNV128_PRIME);
    }
    hash
}

/// The canonical bytes of a state: what its digest is computed over.
pub fn canonical_encoding(state: &ClusterState) -> Vec<u8> {
    crate::state_store::encode(&(&state.tasks, &state.nodes))
}

/// The state's digest as 32 lowercase hex digits.
pub fn state_digest(state: &ClusterState) -> String {
    format!("{:032x}", fnv1a_128(&canonical_encoding(state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::Command;
    use crate::model::{EngineStatus, Resources, TaskSpec};

    fn spec(name: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({"name": name, "image": "goat-echo:latest"})).unwrap()
    }

    fn submit(id: u128, name: &str, at: u64) -> Command {
        Command::SubmitTask { task_id: uuid::Uuid::from_u128(id), spec: spec(name), at }
    }

    fn node(name: &str) -> Command {
        Command::UpsertNode {
            name: name.into(),
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 0 },
            engine: EngineStatus { healthy: true, error: None },
            at: 5,
        }
    }

    fn built(commands: &[Command]) -> ClusterState {
        let mut state = ClusterState::default();
        for c in commands {
            state.apply(c);
        }
        state
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a_128(b""), FNV128_OFFSET);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn the_same_state_gives_the_same_digest_whatever_the_order_it_was_built_in() {
        // Replicas apply the same commands in the same order (events are
        // numbered in that order, so the order of commands is part of the
        // state): the same digest.
        let commands = [submit(1, "a", 1), submit(2, "b", 2), node("w1"), node("w2")];
        let a = built(&commands);
        let b = built(&commands);
        assert_eq!(state_digest(&a), state_digest(&b));
        assert_eq!(state_digest(&a).len(), 32);
        // A state loaded from its parts (as a restarted manager does), its
        // maps filled in another order: the same digest.
        let tasks = a.tasks.iter().rev().map(|(k, v)| (*k, v.clone())).collect();
        let nodes = a.nodes.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
        let c = ClusterState::from_parts(tasks, nodes);
        assert_eq!(state_digest(&a), state_digest(&c));
        // The dirty set is not part of it.
        let mut d = a.clone();
        d.take_dirty();
        assert_eq!(state_digest(&a), state_digest(&d));
    }

    #[test]
    fn any_difference_changes_the_digest() {
        let base = built(&[submit(1, "a", 1), node("w1")]);
        let digest = state_digest(&base);
        assert_ne!(digest, state_digest(&ClusterState::default()));
        assert_ne!(digest, state_digest(&built(&[submit(1, "a", 1)])), "a node less");
        assert_ne!(digest, state_digest(&built(&[submit(1, "b", 1), node("w1")])), "another name");
        assert_ne!(digest, state_digest(&built(&[submit(1, "a", 2), node("w1")])), "another time");
        assert_ne!(digest, state_digest(&built(&[submit(3, "a", 1), node("w1")])), "another id");
        let mut stopped = base.clone();
        stopped.apply(&Command::StopTask { task_id: uuid::Uuid::from_u128(1), at: 9 });
        assert_ne!(digest, state_digest(&stopped), "another task state");
    }

    #[test]
    fn a_refused_command_leaves_the_digest_alone() {
        let mut state = built(&[submit(1, "a", 1)]);
        let before = state_digest(&state);
        let result = state.apply(&Command::StopTask { task_id: uuid::Uuid::from_u128(99), at: 9 });
        assert!(result.is_refused());
        assert_eq!(before, state_digest(&state));
    }
}
