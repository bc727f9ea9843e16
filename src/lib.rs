//! Goat as a library: the manager, the control logic, the client, the CLI
//! and the tools, so that tests, `goat dev` and the simulation can start
//! them in-process. The `goat` binary (`src/main.rs`) only parses the
//! command line; the tools have binaries of their own (`src/bin/`):
//! `goat-echo` (the echo app, [`echo`]) and `goat-bench` (the benchmarks,
//! [`bench`], behind the `tools` feature with the dependencies only they
//! use). Neither is linked into `goat`.

#[cfg(feature = "tools")]
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod control;
pub mod drill;
pub mod echo;
pub mod headroom;
pub mod history;
pub mod launch;
pub mod manager;
pub mod metrics;
/// The test harness (process and compose clusters, workers, fixtures):
/// only with the `testing` feature, which the integration tests enable.
#[cfg(feature = "testing")]
pub mod testing;

pub use control::{reschedule, scheduler, Error, ErrorKind};
pub use goat_worker::shutdown_signal;
