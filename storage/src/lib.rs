//! Goat's storage layer: the task model and every on-disk store, with no
//! networking.
//!
//! - [`digest`]: a fingerprint of the replicated state.
//! - [`model`]: tasks, nodes and the worker/leader messages (plain data).
//! - [`validate`]: the rules a submitted task spec must meet.
//! - [`fsm`]: the replicated state machine, pure and deterministic.
//! - [`events`]: the cluster's event stream, read from task and node histories.
//! - [`engine`]: the key-value engine trait, with its sled implementation.
//! - [`mem_engine`]: an in-memory engine that loses unsynced writes on a
//!   simulated crash (tests and the simulation only).
//! - [`raft_log`]: the Raft log and vote, durable before acknowledged.
//! - [`state_store`]: the state machine's persisted copy and its snapshots.
//! - [`backup`]: saved copies of the cluster state (`goat snapshot`).

pub mod backup;
pub mod digest;
pub mod duration;
pub mod engine;
pub mod events;
pub mod fsm;
pub mod mem_engine;
pub mod model;
pub mod raft_log;
pub mod state_store;
pub mod validate;
pub mod worker_state;

pub use duration::Millis;
