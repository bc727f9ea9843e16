//! Goat's own Raft timers: heartbeats, election timeouts and a pre-vote.
//!
//! openraft 0.9.25 ties three things to its `heartbeat_interval`: how often
//! the leader sends heartbeats, the time limit of every AppendEntries round
//! trip (`replication/mod.rs`), and the tick that checks election timeouts
//! (1.5 × the interval, `raft/mod.rs`). And a follower that has seen a
//! leader stands only after its lease (`election_timeout_max`) plus an
//! election timeout (`core/raft_core.rs`, `handle_tick_election`), while the
//! others refuse votes during that same lease (`engine_impl.rs`,
//! `handle_vote_req`). A short heartbeat therefore meant replication round
//! trips that fail under load, and a long one a failover of 1–1.5 s.
//!
//! So Goat turns openraft's heartbeat and election off (`enable_heartbeat`,
//! `enable_elect`) and drives them from here ([`drive`]):
//!
//! - the leader calls `trigger().heartbeat()` every `heartbeat`;
//! - a follower counts silence only while no request of a leader is being
//!   served ([`Activity`]): a follower whose own disk is slow is not
//!   "unheard", its leader is waiting for it. After a randomized election
//!   timeout (`election_timeout` to 1.5 times it) of silence it asks its
//!   peers for a pre-vote (`/raft/prevote`), and only if a majority would
//!   vote for it does it `trigger().elect()`. A peer grants the pre-vote
//!   only if it has heard no leader for a lease and the candidate's log is
//!   at least as long as its own; a leader grants it only if no quorum
//!   acknowledged it within the election timeout. So a restarted or cut-off
//!   manager cannot depose a healthy leader by raising the term.
//! - openraft's own vote lease (`election_timeout_max` in its config) is set
//!   to `election_timeout − heartbeat`: shorter than any candidate's
//!   timeout, so a real candidate is never refused for it, but longer than
//!   a heartbeat, so a follower that hears its leader refuses.
//! - openraft's `heartbeat_interval` becomes the replication round trip's
//!   time limit alone (`rpc_timeout`), long enough for a loaded machine.
//!
//! None of this touches Raft's safety: votes are still granted by openraft
//! alone (one per term, only to a log at least as up to date), so timers
//! decide only *when* an election happens, never what it may decide.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::network::Network;
use crate::{NodeId, Raft};

/// The leader's heartbeat interval, in ms (`--raft-heartbeat`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
/// The shortest election timeout, in ms (`--election-timeout`); a follower
/// waits a random time between it and 1.5 times it.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 300;
/// The time limit of one replication round trip, in ms
/// (`--raft-rpc-timeout`): a follower's fsync included, under load.
pub const DEFAULT_RPC_TIMEOUT_MS: u64 = 1_000;

/// Goat's Raft timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub rpc_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: Duration::from_millis(DEFAULT_ELECTION_TIMEOUT_MS),
            rpc_timeout: Duration::from_millis(DEFAULT_RPC_TIMEOUT_MS),
        }
    }
}

impl Timing {
    /// Checks the three knobs against each other: the lease
    /// (`election_timeout − heartbeat`) must hold at least one heartbeat.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() {
            return Err("--raft-heartbeat must be above 0".into());
        }
        if self.election_timeout < self.heartbeat * 2 {
            return Err(format!(
                "--election-timeout ({:?}) must be at least twice --raft-heartbeat ({:?})",
                self.election_timeout, self.heartbeat
            ));
        }
        if self.rpc_timeout < self.heartbeat {
            return Err(format!(
                "--raft-rpc-timeout ({:?}) must be at least --raft-heartbeat ({:?})",
                self.rpc_timeout, self.heartbeat
            ));
        }
        Ok(())
    }

    /// How long a follower that heard a leader refuses to vote for anyone
    /// else (openraft's lease) or to grant a pre-vote.
    pub fn lease(&self) -> Duration {
        self.election_timeout - self.heartbeat
    }

    /// A random election timeout in `[election_timeout, 1.5 × it)`.
    pub fn random_election_timeout(&self) -> Duration {
        let min = self.election_timeout.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(min..min + (min / 2).max(1)))
    }

    /// openraft's config for this timing: its own heartbeat and election
    /// off, `heartbeat_interval` the replication time limit, its vote lease
    /// [`Timing::lease`]. (openraft's `validate` would insist on an election
    /// timeout above the heartbeat interval, which no longer means anything
    /// here: this config is not passed through it.)
    pub fn config(&self, cluster_name: &str, snapshot_every: u64) -> openraft::Config {
        let lease = self.lease().as_millis() as u64;
        let mut config = crate::raft_config(cluster_name, snapshot_every, 50, 400);
        config.heartbeat_interval = self.rpc_timeout.as_millis() as u64;
        config.election_timeout_min = lease.max(1);
        config.election_timeout_max = lease.max(1) + 1;
        config.enable_heartbeat = false;
        config.enable_elect = false;
        config
    }
}

/// What a follower knows of its leader's requests: how many are being
/// served now, when the last one ended, and the counters `/v1/metrics`
/// shows.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    /// Elections this manager started (after a granted pre-vote, or told to
    /// by a leader handing over).
    pub elections_started: AtomicU64,
    /// Pre-votes this manager asked for that a majority refused.
    pub prevotes_refused: AtomicU64,
    /// Leaderships this manager handed over on purpose.
    pub transfers: AtomicU64,
    /// The longest a timer round woke late, in ms (the runtime was busy).
    pub max_timer_lateness_ms: AtomicU64,
    /// Set while this leader hands over: it stops sending heartbeats.
    pub handing_over: std::sync::atomic::AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            elections_started: AtomicU64::new(0),
            prevotes_refused: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
            max_timer_lateness_ms: AtomicU64::new(0),
            handing_over: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Held while a leader's request is served; its end counts as hearing the
/// leader.
pub struct Serving<'a>(&'a Activity);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// A leader's request (AppendEntries, InstallSnapshot) arrived.
    pub fn serving(&self) -> Serving<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Serving(self)
    }

    /// Counts as hearing a leader now (a request served, a vote granted).
    pub fn touch(&self) {
        *self.last.lock() = Instant::now();
    }

    /// How long this manager has not heard a leader: zero while one of its
    /// requests is being served.
    pub fn silence(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().elapsed()
    }
}

/// `/raft/prevote`: would the receiver vote for this candidate now?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would stand in (its current term + 1).
    pub term: u64,
    /// The candidate's last log index. (openraft's metrics do not carry the
    /// last log's term; the real vote compares whole log ids.)
    pub last_log_index: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// Why not, for the log.
    pub reason: String,
}

/// The receiver's side of a pre-vote. Pure apart from reading `raft`'s
/// metrics and `activity`.
pub fn answer_prevote(raft: &Raft, timing: &Timing, activity: &Activity, req: &PreVoteRequest) -> PreVoteResponse {
    let m = raft.metrics().borrow().clone();
    let refuse = |reason: String| PreVoteResponse { granted: false, reason };
    if req.term <= m.current_term {
        return refuse(format!("term {} is not above mine ({})", req.term, m.current_term));
    }
    if req.last_log_index < m.last_log_index {
        return refuse("the candidate's log is behind mine".into());
    }
    if m.state == ServerState::Leader {
        let acked = m.millis_since_quorum_ack.map(Duration::from_millis);
        if acked.is_some_and(|age| age < timing.election_timeout) {
            return refuse(format!("I lead, and a quorum acknowledged me {acked:?} ago"));
        }
    } else if m.current_leader.is_some() {
        let silence = activity.silence();
        if silence < timing.lease() {
            return refuse(format!("I heard leader {:?} {silence:?} ago", m.current_leader));
        }
    }
    PreVoteResponse { granted: true, reason: String::new() }
}

/// Runs the timers for `raft` until it shuts down: heartbeats while it
/// leads, elections (after a pre-vote) while it follows.
pub async fn drive(raft: Raft, timing: Timing, activity: Arc<Activity>, network: Network, me: NodeId) {
    let round = (timing.heartbeat / 5).clamp(Duration::from_millis(2), Duration::from_millis(10));
    let mut timeout = timing.random_election_timeout();
    let mut next_heartbeat = Instant::now();
    // When this manager last stood (or was told to wait): silence counts
    // from the later of this and the last leader request.
    let mut stood_at: Option<Instant> = None;
    let mut expected = Instant::now() + round;
    loop {
        tokio::time::sleep_until(expected.into()).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(expected);
        if late > timing.heartbeat {
            let ms = late.as_millis() as u64;
            activity.max_timer_lateness_ms.fetch_max(ms, Ordering::Relaxed);
            tracing::warn!(late_ms = ms, "the Raft timer woke late: this runtime was busy");
        }
        expected = now + round;
        let m = raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return;
        }
        let voters: Vec<(NodeId, String)> = {
            let membership = m.membership_config.membership();
            membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone()))).collect()
        };
        if !voters.iter().any(|(id, _)| *id == me) {
            continue;
        }
        if m.state == ServerState::Leader {
            stood_at = None;
            if now >= next_heartbeat && !activity.handing_over.load(Ordering::Acquire) {
                next_heartbeat = now + timing.heartbeat;
                if raft.trigger().heartbeat().await.is_err() {
                    return;
                }
            }
            continue;
        }
        let silence = activity.silence();
        let since_stood = stood_at.map(|at| now.saturating_duration_since(at)).unwrap_or(Duration::MAX);
        if silence.min(since_stood) < timeout {
            continue;
        }
        // Silent long enough: would a majority vote for this manager?
        stood_at = Some(now);
        timeout = timing.random_election_timeout();
        let request = PreVoteRequest { candidate: me, term: m.current_term + 1, last_log_index: m.last_log_index };
        let granted = prevote(&network, &voters, me, &request, timing.election_timeout).await;
        if granted {
            tracing::info!(term = request.term, ?silence, "no leader heard: standing for election");
            activity.elections_started.fetch_add(1, Ordering::Relaxed);
            if raft.trigger().elect().await.is_err() {
                return;
            }
        } else {
            activity.prevotes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(term = request.term, ?silence, "pre-vote refused: not standing");
        }
    }
}

/// Asks every other voter for a pre-vote at once; true as soon as a
/// majority (this manager included) grants it.
async fn prevote(
    network: &Network,
    voters: &[(NodeId, String)],
    me: NodeId,
    request: &PreVoteRequest,
    limit: Duration,
) -> bool {
    use futures::stream::{FuturesUnordered, StreamExt};
    let majority = voters.len() / 2 + 1;
    let mut granted = 1;
    if granted >= majority {
        return true;
    }
    let mut asks: FuturesUnordered<_> = voters
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, addr)| async move { (*id, network.prevote(addr, request, limit).await) })
        .collect();
    while let Some((peer, answer)) = asks.next().await {
        match answer {
            Ok(r) if r.granted => {
                granted += 1;
                if granted >= majority {
                    return true;
                }
            }
            Ok(r) => tracing::debug!(peer, reason = %r.reason, "pre-vote refused"),
            Err(e) => tracing::debug!(peer, error = %e, "pre-vote not answered"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_shorter_than_any_timeout_and_longer_than_a_heartbeat() {
        let t = Timing::default();
        t.validate().unwrap();
        assert!(t.lease() < t.election_timeout);
        assert!(t.lease() >= t.heartbeat);
        for _ in 0..100 {
            let r = t.random_election_timeout();
            assert!(r >= t.election_timeout && r < t.election_timeout * 3 / 2);
        }
        let c = t.config("x", 100);
        assert!(!c.enable_elect && !c.enable_heartbeat);
        assert_eq!(c.heartbeat_interval, 1_000);
        assert_eq!(c.election_timeout_max, t.lease().as_millis() as u64 + 1);
    }

    #[test]
    fn bad_knobs_are_refused() {
        let mut t = Timing { election_timeout: Duration::from_millis(80), ..Timing::default() };
        assert!(t.validate().unwrap_err().contains("--election-timeout"));
        t = Timing { rpc_timeout: Duration::from_millis(10), ..Timing::default() };
        assert!(t.validate().unwrap_err().contains("--raft-rpc-timeout"));
    }

    #[test]
    fn silence_is_zero_while_a_request_is_served() {
        let a = Activity::default();
        let serving = a.serving();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.silence(), Duration::ZERO);
        drop(serving);
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.silence() >= Duration::from_millis(5));
    }
}
