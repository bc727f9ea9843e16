//! The agent: the worker's loops.
//!
//! - The **supervisor** owns the containers. Each round it lists this node's
//!   containers, reconciles them against the assignments and the local
//!   restart records, persists what changed, publishes the task reports and
//!   starts the engine actions: concurrently (at most [`MAX_IN_FLIGHT`]),
//!   never two on the same task or container. It wakes on a container exit
//!   (engine event stream), a new assignment list, a health verdict, a
//!   restart delay falling due, an action completing, or a periodic tick
//!   (the safety net for missed events). It never needs a manager: restarts
//!   happen locally.
//! - The **heartbeat** loop sends the latest reports to a manager about once
//!   a second, and soon after any report changes, and passes the assignment
//!   list of the answer to the supervisor. An unreachable manager only means
//!   trying the next one. Alongside, a **long poll** on the node's
//!   assignments brings each new list as soon as the leader commits it;
//!   every list carries the applied log index it was computed at and an
//!   older one never replaces a newer one ([`AssignmentOrder`]).
//! - The **exit watcher** follows the engine's event stream, resubscribing
//!   with backoff when it breaks.
//!
//! The supervisor and the heartbeat share a [`Status`] (engine health and
//! reports) behind a mutex; assignments flow the other way in a watch
//! channel.
//!
//! The modules: [`supervisor`] (the containers), [`link`] (the link to the
//! managers: heartbeats, the long poll on the assignments, their order) and
//! [`capacity`] (what the host offers).

pub mod capacity;
pub mod link;
pub mod supervisor;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use goat_storage::model::{EngineStatus, Resources, TaskReport};
use tokio::sync::Notify;

pub use capacity::{detect_capacity, limit_capacity};
pub use link::{heartbeat_loop, AssignmentOrder, HeartbeatConfig, REGRESSION_AFTER, REGRESSION_ANSWERS};
pub use supervisor::{watch_exits, Round, Supervisor, MAX_IN_FLIGHT};

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the supervisor last saw, for the heartbeat to send.
#[derive(Debug, Clone)]
pub struct Status {
    pub engine: EngineStatus,
    pub reports: Vec<TaskReport>,
    pub usage: Resources,
    /// Unix ms of the last heartbeat a manager accepted (set by the
    /// heartbeat loop), for the optional self-fencing.
    pub last_manager_contact: Option<u64>,
    /// Notified when the engine status or a report changes, so that the
    /// heartbeat goes out at once (rate-limited) instead of at its period.
    pub changed: Arc<Notify>,
}

impl Status {
    pub fn new(engine: EngineStatus) -> Status {
        Status {
            engine,
            reports: Vec::new(),
            usage: Resources::default(),
            last_manager_contact: None,
            changed: Arc::new(Notify::new()),
        }
    }
}

/// Whether a worker that has been cut off from every manager should stop
/// its tasks itself (`--stop-tasks-after-manager-loss`): only when the
/// operator set a `limit`, and no manager has accepted a heartbeat for that
/// long (counted from the worker's start if none ever did). Off by default:
/// a partitioned worker keeps its tasks running, which is what keeps a
/// service up when the managers, not the workers, fail.
pub fn manager_loss_fence(limit: Option<Duration>, last_contact: Option<u64>, started_at: u64, now: u64) -> bool {
    let Some(limit) = limit else { return false };
    let since = now.saturating_sub(last_contact.unwrap_or(started_at).max(started_at));
    Duration::from_millis(since) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_fencing_is_off_by_default_and_counts_from_the_last_contact() {
        let limit = Some(Duration::from_secs(30));
        // Off unless asked for, however long the managers are gone.
        assert!(!manager_loss_fence(None, None, 0, u64::MAX));
        assert!(!manager_loss_fence(None, Some(1), 0, 10_000_000));
        // Counted from the last accepted heartbeat.
        assert!(!manager_loss_fence(limit, Some(100_000), 0, 129_999));
        assert!(manager_loss_fence(limit, Some(100_000), 0, 130_000));
        // Never reached a manager: counted from the worker's start.
        assert!(!manager_loss_fence(limit, None, 50_000, 79_999));
        assert!(manager_loss_fence(limit, None, 50_000, 80_000));
        // A contact from before this worker started counts as its start.
        assert!(!manager_loss_fence(limit, Some(10), 50_000, 60_000));
        // A clock that went backwards never fences.
        assert!(!manager_loss_fence(limit, Some(200_000), 0, 100_000));
    }
}
