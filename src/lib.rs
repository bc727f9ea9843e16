//! Goat as a library: the manager, the control logic, the CLI and the tools,
//! so that tests, `goat dev` and the simulation can start them in-process.
//! The `goat` binary (`src/main.rs`) only parses the command line.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod control;
pub mod drill;
pub mod echo;
pub mod headroom;
pub mod history;
pub mod manager;
pub mod metrics;

pub use control::{reschedule, scheduler, Error, ErrorKind};
pub use goat_worker::shutdown_signal;
