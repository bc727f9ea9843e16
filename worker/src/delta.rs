//! Which task reports a heartbeat carries: only those that changed since the
//! last heartbeat a manager accepted (a delta), and never more than
//! [`MAX_REPORT_BYTES`] of them.
//!
//! The leader commits only what differs from the replicated state and infers
//! nothing from a report's absence (see `heartbeat_commands`), and a manager
//! answers a heartbeat only once what it reported is committed, so a report
//! accepted once need not be sent again: an unchanged node's heartbeat is a
//! few hundred bytes whatever it runs. Every [`FULL_EVERY`] heartbeats, and
//! after any heartbeat that no manager accepted, every report is sent again
//! (a safety net, e.g. for a report the state machine refused).
//!
//! A node with more reports than fit in [`MAX_REPORT_BYTES`] (a full report
//! of thousands of tasks, after a restart) sends them over several
//! heartbeats, the next one at once: no heartbeat grows with the number of
//! tasks on its node, so none can exceed the managers' body limit.

use std::collections::{HashMap, HashSet};

use goat_storage::model::{TaskId, TaskReport};

/// Bytes of reports (as JSON) in one heartbeat, at most; a single report
/// larger than this still goes, alone. Well under the heartbeat route's
/// limit (`MAX_HEARTBEAT_BYTES`, 4 MiB).
pub const MAX_REPORT_BYTES: usize = 256 << 10;
/// Every this many accepted heartbeats, all reports are sent again.
pub const FULL_EVERY: u32 = 60;

/// What the worker last had accepted, per task.
#[derive(Debug, Default)]
pub struct ReportDelta {
    accepted: HashMap<TaskId, TaskReport>,
    /// Accepted heartbeats since the last full one; `None`: send all next.
    since_full: Option<u32>,
    /// Reports still to send in the current full pass.
    full_pending: Option<HashSet<TaskId>>,
}

/// The reports one heartbeat carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub reports: Vec<TaskReport>,
    /// More changed reports wait: send the next heartbeat at once.
    pub more: bool,
}

impl ReportDelta {
    /// The reports to send out of `all` (the worker's current ones).
    pub fn select(&mut self, all: &[TaskReport]) -> Selection {
        if self.since_full.is_none_or(|n| n >= FULL_EVERY) && self.full_pending.is_none() {
            // A full pass: every report once more, over as many heartbeats
            // as the byte budget needs.
            self.full_pending = Some(all.iter().map(|r| r.task_id).collect());
            self.since_full = Some(0);
        }
        let pending = self.full_pending.as_ref();
        let wanted = |r: &&TaskReport| {
            pending.is_some_and(|p| p.contains(&r.task_id)) || self.accepted.get(&r.task_id) != Some(*r)
        };
        let mut reports = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for report in all.iter().filter(wanted) {
            let size = serde_json::to_vec(report).map_or(0, |v| v.len() + 1);
            if !reports.is_empty() && bytes + size > MAX_REPORT_BYTES {
                more = true;
                break;
            }
            bytes += size;
            reports.push(report.clone());
        }
        Selection { reports, more }
    }

    /// A manager accepted a heartbeat that carried `sent`, when the
    /// worker's reports were `all`.
    pub fn accepted(&mut self, sent: &[TaskReport], all: &[TaskReport]) {
        for report in sent {
            self.accepted.insert(report.task_id, report.clone());
        }
        // Tasks the worker no longer reports are forgotten.
        if self.full_pending.is_some() || self.accepted.len() > all.len() {
            let live: HashSet<&TaskId> = all.iter().map(|r| &r.task_id).collect();
            self.accepted.retain(|id, _| live.contains(id));
            if let Some(pending) = &mut self.full_pending {
                for report in sent {
                    pending.remove(&report.task_id);
                }
                pending.retain(|id| live.contains(id));
                if pending.is_empty() {
                    self.full_pending = None;
                }
            }
        }
        if let Some(n) = &mut self.since_full {
            *n += 1;
        }
    }

    /// No manager accepted the last heartbeat: send everything next time.
    pub fn reset(&mut self) {
        self.accepted.clear();
        self.since_full = None;
        self.full_pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::model::ObservedState;
    use std::collections::BTreeMap;

    fn report(n: u128, state: ObservedState, reason: Option<String>) -> TaskReport {
        TaskReport {
            task_id: uuid::Uuid::from_u128(n),
            generation: 1,
            state,
            container_id: Some(format!("c{n}")),
            exit_code: None,
            host_ports: BTreeMap::new(),
            health: Default::default(),
            restarts: 0,
            reason,
        }
    }

    #[test]
    fn only_changes_go_after_the_first_accepted_heartbeat() {
        let mut d = ReportDelta::default();
        let mut all: Vec<TaskReport> = (0..3).map(|n| report(n, ObservedState::Running, None)).collect();
        let first = d.select(&all);
        assert_eq!(first.reports.len(), 3);
        d.accepted(&first.reports, &all);
        let second = d.select(&all);
        assert!(second.reports.is_empty() && !second.more);
        d.accepted(&second.reports, &all);
        all[1].state = ObservedState::Restarting;
        let third = d.select(&all);
        assert_eq!(third.reports, vec![all[1].clone()]);
        // Not accepted (no manager answered): everything again.
        d.reset();
        assert_eq!(d.select(&all).reports.len(), 3);
    }

    #[test]
    fn every_report_goes_again_every_full_every_heartbeats() {
        let mut d = ReportDelta::default();
        let all = vec![report(1, ObservedState::Running, None)];
        let mut sizes = Vec::new();
        for _ in 0..=FULL_EVERY + 1 {
            let s = d.select(&all);
            sizes.push(s.reports.len());
            d.accepted(&s.reports, &all);
        }
        assert_eq!(sizes.iter().filter(|n| **n == 1).count(), 2, "{sizes:?}");
    }

    #[test]
    fn thousands_of_reports_go_over_several_bounded_heartbeats() {
        let mut d = ReportDelta::default();
        let reason = Some("x".repeat(500));
        let all: Vec<TaskReport> = (0..5_000).map(|n| report(n, ObservedState::Running, reason.clone())).collect();
        let mut sent = 0;
        let mut beats = 0;
        loop {
            let s = d.select(&all);
            let bytes: usize = s.reports.iter().map(|r| serde_json::to_vec(r).unwrap().len()).sum();
            assert!(bytes <= MAX_REPORT_BYTES, "{bytes}");
            sent += s.reports.len();
            beats += 1;
            d.accepted(&s.reports, &all);
            if !s.more {
                break;
            }
        }
        assert_eq!(sent, 5_000);
        assert!(beats > 5, "{beats}");
        assert!(d.select(&all).reports.is_empty());
    }
}
