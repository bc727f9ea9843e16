//! The one test harness (feature `testing`): real `goat manager` processes
//! on loopback, each with its own data directory, killed with SIGKILL and
//! restarted from that directory ([`Cluster`]); real `goat worker`s on the
//! Docker engine ([`worker`]); a compose deployment of containers
//! ([`compose`]); and the task specs the tests submit ([`fixtures`]).
//!
//! The integration tests use it through a dev-dependency of the `goat`
//! package on itself with this feature (`tests/common` re-exports it);
//! the managers and workers are started with the command lines of
//! [`crate::launch`], like `goat dev` and the benchmarks start theirs, and
//! "a leader" means [`crate::client::Client::wait_leader`] everywhere.

pub mod cluster;
pub mod compose;
pub mod fixtures;
pub mod worker;

pub use cluster::*;
pub use fixtures::{echo_spec, spec};
pub mod answer;
pub use answer::{answer, Answer, ErrorBody, ErrorCode};
