//! The answers of the API that are views rather than model types
//! (`GET /v1/health`, `/v1/cluster`, `/v1/stats`), as the client reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    pub status: String,
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    /// The last log index covered by the manager's latest snapshot.
    #[serde(default)]
    pub snapshot: Option<u64>,
    /// The last log index purged from the manager's log.
    #[serde(default)]
    pub purged: Option<u64>,
}

/// One member of `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    pub voter: bool,
    pub last_applied: Option<u64>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The manager that answered.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberView>,
}

/// `GET /v1/stats`: tasks per state, nodes per status.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub tasks: BTreeMap<String, usize>,
    pub nodes: BTreeMap<String, usize>,
    pub last_applied: Option<u64>,
}

impl Stats {
    /// Tasks in `state` (`running`, ...).
    pub fn tasks_in(&self, state: &str) -> usize {
        self.tasks.get(state).copied().unwrap_or(0)
    }
}

/// One node of `GET /v1/nodes`: the node, what its tasks take, how many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: goat_storage::model::Node,
    pub allocated: goat_storage::model::Resources,
    pub tasks: usize,
}
