//! Goat's Raft layer: openraft glued onto Goat's storage, and the transport
//! between managers.
//!
//! - [`TypeConfig`]: what a log entry carries (a storage `Command`), what
//!   applying one returns (a `CommandResult`), and how nodes are addressed.
//! - [`log_store`]: openraft's `RaftLogStorage` over the durable `RaftLog`.
//! - [`state_machine`]: openraft's `RaftStateMachine` over the pure
//!   `ClusterState`, persisted in the `StateStore`, with snapshots.
//! - [`network`]: Raft RPCs to peers over HTTP, bincode bodies, cluster token.
//! - [`service`]: the receiving end of those RPCs (`/raft/*` routes).
//! - [`timing`]: heartbeats, election timeouts and pre-votes, driven by
//!   Goat instead of openraft (see there why).
//! - [`tls`]: TLS for managers, workers and their clients (rustls).

// openraft's storage traits return its `StorageError` (over 200 bytes) by
// value; the helpers here return what those traits return.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

pub mod codec;
pub mod limits;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod timing;
pub mod tls;

pub use goat_storage::fsm::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Goat's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A manager's id in the Raft group.
pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

/// The header that carries the cluster token on internal requests.
pub const TOKEN_HEADER: &str = "authorization";

/// The value of [`TOKEN_HEADER`] for a token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The simulation's timing (openraft's own timers; managers use
/// [`timing::Timing`]).
///
/// The leader's heartbeat interval, in ms. openraft 0.9 also uses it as the
/// time limit of every AppendEntries round trip (the follower's fsync
/// included): under load an append slower than this counts as a failure,
/// and if appends keep failing the followers stop hearing from the leader
/// and elect another. See docs/benchmarks.md (placement with simulated
/// nodes) for the measurements behind the defaults.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// The shortest election timeout, in ms; the longest is 1.5 times it.
pub const ELECTION_TIMEOUT_MS: u64 = 400;

/// The Raft timing Goat runs with. A follower that hears nothing from the
/// leader for `election_timeout_ms` to 1.5 times that (randomized) stands
/// for election. openraft's leader lease makes the others refuse votes
/// until `election_timeout_max` has passed since their last heartbeat, so
/// the first candidate is usually refused and wins on its next attempt: a
/// failover takes about `max + one more timeout`, plus the first write's
/// commit.
pub fn raft_config(
    cluster_name: &str,
    snapshot_every: u64,
    heartbeat_interval_ms: u64,
    election_timeout_ms: u64,
) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_ms,
        election_timeout_max: election_timeout_ms * 3 / 2,
        install_snapshot_timeout: 2_000,
        // A follower that fell behind is sent at most this many entries per
        // AppendEntries: each must fit in one heartbeat interval (see
        // `HEARTBEAT_INTERVAL_MS`), and a batched entry can hold 512 commands.
        // With 1,000, a lagging follower was sent RPCs too big to ever finish
        // in time, never caught up, and the cluster kept electing leaders.
        max_payload_entries: limits::MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 1_000.min(snapshot_every),
        snapshot_max_chunk_size: limits::SNAPSHOT_CHUNK_BYTES,
        ..Default::default()
    }
}
