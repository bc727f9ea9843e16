//! A leader's lease on its own view: when it may decide from what it
//! sees. openraft 0.9's leader never steps down on its own; cut off from its
//! followers it keeps believing it leads while its view freezes (no
//! heartbeat reaches it, not even those its followers relay). So it decides
//! only while a quorum acknowledged it lately (`lease_holds`), and after a
//! lapse it gives every node a full deadline afresh (`RoundGate`). Pure: the
//! acknowledgement's age and the clock are passed in (the manager reads them
//! from openraft's `millis_since_quorum_ack`; the simulation from its own).

use std::time::Duration;

/// Whether a leader whose quorum last acknowledged it `ack_age` ago (None:
/// never in this term) may act on its own view. Pure, for the simulation.
pub fn lease_holds(ack_age: Option<Duration>, lease: Duration) -> bool {
    ack_age.is_some_and(|age| age <= lease)
}

/// The lease: long enough that a busy but healthy leader keeps it (a
/// worker's heartbeat interval, or the longest election timeout if that is
/// longer), short enough that a worker talking to a deposed leader is sent
/// on within about a second.
pub fn leader_lease(election_timeout: Duration) -> Duration {
    (election_timeout * 3 / 2).max(super::nodes::HEARTBEAT_INTERVAL.as_duration())
}

/// Whether a loop's round may decide, from its leader's confirmation, and
/// from when its nodes' deadlines run.
///
/// A leader decides from its own view only while a quorum confirms it
/// (`Leadership::Confirmed`): a leader cut off from its followers keeps
/// believing it leads, and its view — no heartbeats arrive, not even those
/// its followers relay — says every node is down. Rounds without that
/// confirmation are skipped. And once confirmed again, every node gets a
/// full deadline afresh: heartbeats relayed while the leader could not be
/// reached were lost, so its silence proves nothing. Pure (the clock is
/// passed in), for the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundGate<T> {
    since: T,
    lapsed: bool,
}

impl<T: Copy> RoundGate<T> {
    /// Loops that start at `now`: every node's deadline runs from now.
    pub fn new(now: T) -> RoundGate<T> {
        RoundGate { since: now, lapsed: false }
    }

    /// A round at `now`: `Some(since)`, when deadlines run from, if the
    /// round may decide (the leadership is `confirmed`); None to skip it.
    pub fn round(&mut self, now: T, confirmed: bool) -> Option<T> {
        if !confirmed {
            self.lapsed = true;
            return None;
        }
        if self.lapsed {
            self.lapsed = false;
            self.since = now;
        }
        Some(self.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::nodes::liveness_commands;
    use goat_storage::fsm::Command;
    use std::collections::HashMap;
    use std::time::Instant;

    #[test]
    fn rounds_decide_only_while_a_quorum_confirms_the_leader() {
        let lease = Duration::from_millis(1_000);
        assert!(lease_holds(Some(Duration::from_millis(120)), lease));
        assert!(!lease_holds(Some(Duration::from_millis(1_001)), lease), "acknowledged too long ago");
        assert!(!lease_holds(None, lease), "never acknowledged in this term");

        // Times in ms from the loops' start.
        let mut gate = RoundGate::new(0u64);
        assert_eq!(gate.round(500, true), Some(0), "deadlines run from the start");
        assert_eq!(gate.round(1_000, true), Some(0));
        // Cut off: every round is skipped, however long it lasts...
        for now in (1_500..30_000).step_by(500) {
            assert_eq!(gate.round(now, false), None);
        }
        // ...and confirmed again, every node gets a full deadline from then.
        assert_eq!(gate.round(30_000, true), Some(30_000));
        assert_eq!(gate.round(30_500, true), Some(30_000));
    }

    /// The defect of issue 15: a leader cut off for longer than the node
    /// deadline judged every node down from its frozen view. Through the
    /// gate, the same frozen view decides nothing, and after the cut the
    /// nodes are judged from fresh heartbeats only.
    #[test]
    fn a_cut_off_leader_judges_no_node_down() {
        use goat_storage::fsm::ClusterState;
        use goat_storage::model::{EngineStatus, Resources};
        let mut s = ClusterState::default();
        let engine = EngineStatus { healthy: true, error: None };
        let capacity = Resources { cpu: 1.0, memory: 1 << 30, disk: 1 << 30 };
        for name in ["w1", "w2"] {
            s.apply(&Command::UpsertNode { name: name.into(), capacity, engine: engine.clone(), at: 0 });
        }
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let deadline = Duration::from_secs(10);
        // Heard at 1 s; then the leader is cut off from 2 s to 20 s.
        let seen = HashMap::from([("w1".to_string(), at(1_000)), ("w2".to_string(), at(1_000))]);
        let mut gate = RoundGate::new(at(0));
        let judge = |gate: &mut RoundGate<Instant>, now: u64, confirmed: bool, seen: &HashMap<String, Instant>| {
            let since = gate.round(at(now), confirmed)?;
            // `alive` at time `now`, without waiting for the clock.
            let commands = liveness_commands(&s, now, |node| {
                let heard = seen.get(node).copied().unwrap_or(since).max(since);
                at(now).saturating_duration_since(heard) < deadline
            });
            Some(commands)
        };
        assert_eq!(judge(&mut gate, 1_500, true, &seen).map(|c| c.len()), Some(0));
        for now in (2_000..20_000).step_by(500) {
            assert!(judge(&mut gate, now, false, &seen).is_none(), "a round ran at {now} ms while cut off");
        }
        // Back at 20 s: 19 s since the last heartbeat, yet no node is due.
        assert_eq!(judge(&mut gate, 20_000, true, &seen).map(|c| c.len()), Some(0));
        // A node still silent a full deadline after the cut is due.
        let fresh = HashMap::from([("w1".to_string(), at(20_500))]);
        let late = judge(&mut gate, 30_000, true, &fresh).expect("a round");
        assert!(
            matches!(&late[..], [Command::SetNodeStatus { name, .. }] if name == "w2"),
            "only the silent node: {late:?}"
        );
    }
}
