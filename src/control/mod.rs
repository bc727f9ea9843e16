//! The control core: the leader's decisions as pure functions of the
//! replicated state. No HTTP, no sockets, no files, no clocks: callers pass
//! the state and the time in and commit the commands that come out. The
//! HTTP edge and the leader's loops (`crate::manager`) call into it; it
//! imports nothing from them (checked by `tests/layout.rs`).
//!
//! - [`scheduler`]: ranks nodes for a task (bin-pack, spread, epvm).
//! - [`placement`]: which pending task goes where, or why it waits.
//! - [`reschedule`]: failed tasks that get another chance elsewhere.
//! - [`nodes`]: heartbeats, liveness, drains, and a node's assignments.
//! - [`assignments`]: assignment lists as answered, and their versions.
//! - [`error`]: the core's error, by kind ([`Error`], [`ErrorKind`]).
//! - [`lease`]: when a leader may decide from its own view (quorum lease).
//! - [`transfer`]: which follower a leader hands over to.
//! - [`service`]: a service's copies: how many, which version, which to stop.
//! - [`deployment`]: the deployment state machine (rolling updates).

pub mod assignments;
pub mod deployment;
pub mod error;
pub mod lease;
pub mod nodes;
pub mod placement;
pub mod reschedule;
pub mod scheduler;
pub mod service;
pub mod transfer;

pub use error::{Error, ErrorKind};
