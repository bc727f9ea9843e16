//! What a drill reports: per round and in total.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::Verdict;

/// What one round measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Round {
    /// The member the failure hit: `manager2`, `worker1` (several: `+`).
    pub victim: String,
    /// How long the command that caused the failure took. The times below
    /// run from when the victim stopped answering (kills) or from the start
    /// of the command (partitions, pauses).
    pub failure_call_ms: f64,
    /// How long the command that restarted it (kills) took.
    pub restore_call_ms: f64,
    /// From the failure until a survivor knew a new leader.
    pub leaderless_ms: Option<f64>,
    /// From the failure until a write through a survivor was accepted.
    pub first_write_ms: Option<f64>,
    /// Quorum loss, restarts: the longest a client's writes went
    /// unanswered (from the failure to the first accepted write after it).
    pub unavailable_ms: Option<f64>,
    /// Worker drills: the victim's tasks, and how long until all of them
    /// ran elsewhere.
    pub tasks_to_move: usize,
    pub tasks_moved: usize,
    pub moved_ms: Option<f64>,
    /// Partition drills: what the cut-off member's clients got.
    pub isolated_created: usize,
    pub isolated_errors: usize,
    /// Partition drills: how far the cut-off manager's applied index moved
    /// while it was cut off, from half a second after the cut (its own
    /// writes can not commit): must be 0.
    pub isolated_applied_delta: Option<u64>,
    /// Leader partitions: what the cut and the reconnection did to the
    /// workers and the echo tasks, once converged — nodes marked down,
    /// tasks placed again (generation changed), tasks whose container is
    /// not the one from before the cut. The workers heard the majority all
    /// along: all must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_marked_down: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generations_changed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers_restarted: Option<usize>,
    /// What clients saw during the failure: `write via survivor: 503` → count.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub client_saw: BTreeMap<String, usize>,
}

/// The whole drill's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    pub driver: String,
    pub rounds: Vec<Round>,
    pub first_write_median_ms: Option<f64>,
    pub first_write_max_ms: Option<f64>,
    pub leaderless_median_ms: Option<f64>,
    pub leaderless_max_ms: Option<f64>,
    /// Submissions sent, answered `201`, and answered otherwise.
    pub submitted: usize,
    pub acknowledged: usize,
    pub refused: BTreeMap<String, usize>,
    /// Acknowledged tasks missing from at least one manager: must be 0.
    pub acknowledged_lost: usize,
    /// The most running containers of one task after convergence (worker
    /// drills): must be at most 1.
    pub max_copies: Option<usize>,
    /// The application probe (`--probe-service`): what a client of the
    /// service saw from before the first failure until the last round
    /// converged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<super::probe::Figures>,
    /// `GET /v1/cluster/verify` after the last round.
    pub consistent: bool,
    pub converged: bool,
    pub applied_index: Option<u64>,
    pub digest: Option<String>,
    pub leader: Option<u64>,
    /// The history check of every client operation the drill made.
    pub history: Option<Verdict>,
    /// `--assert`: each limit and whether it held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<Checked>,
}

impl Report {
    /// The promises every drill keeps, whatever `--assert` says: the
    /// first one broken.
    pub fn broken(&self) -> Option<String> {
        if self.acknowledged_lost > 0 {
            return Some(format!("{} acknowledged tasks lost", self.acknowledged_lost));
        }
        if !self.consistent {
            return Some("the managers' states diverged".into());
        }
        if let Some(c) = self.max_copies.filter(|c| *c > 1) {
            return Some(format!("{c} running copies of one task"));
        }
        for r in &self.rounds {
            let disturbed = [
                ("nodes marked down", r.nodes_marked_down),
                ("tasks placed again", r.generations_changed),
                ("containers restarted", r.containers_restarted),
            ];
            if let Some((what, n)) = disturbed.iter().find_map(|(w, n)| n.filter(|n| *n > 0).map(|n| (w, n))) {
                return Some(format!("{}: {n} {what} although the workers heard the majority", r.victim));
            }
        }
        if let Some(h) = self.history.as_ref().filter(|h| !h.linearizable) {
            return Some(h.summary());
        }
        None
    }
}

/// One assertion checked against a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    pub assertion: String,
    pub passed: bool,
    /// What was measured, for people (`leaderless = 1520 ms`).
    pub actual: String,
}
