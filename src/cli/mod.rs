//! The operator's side of the `goat` binary: commands that talk to a running
//! cluster over its HTTP API (`run`, `status`, `stop`, `nodes`, `node drain`,
//! `members`, `snapshot`), `goat dev` (a whole local cluster in the
//! foreground), and the TOML configuration of `goat manager`/`goat worker`.
//!
//! - the HTTP client is [`crate::client`] (any manager of a list, with failover).
//! - [`commands`]: one function per subcommand, tables or `--json`.
//! - [`dev`]: `goat dev`.
//! - [`events`]: `goat events`, following the event stream.
//! - [`config`]: `--config FILE` for managers and workers.
//! - [`args`]: the commands' arguments; [`error`]: how they fail.
//! - [`tls`]: `goat tls init`, a CA and certificates for a TLS deployment.
//!
//! Exit codes scripts can rely on: see [`exit`].

pub mod args;
pub mod commands;
pub mod config;
pub mod dev;
pub mod error;
pub mod events;
pub mod service;
mod table;
pub mod tls;

pub use args::*;
pub use error::{exit, CliError};

/// Runs an operator command; returns the process exit code. Errors are
/// printed as one line on stderr. `log_json`: `--log-format json`, passed
/// on to the processes `goat dev` starts.
pub async fn main(command: OperatorCommand, log_json: bool) -> i32 {
    let result = match command {
        OperatorCommand::Dev(args) => dev::run(args, log_json).await,
        OperatorCommand::Run(args) => commands::run(args).await,
        OperatorCommand::Status(args) => commands::status(args).await,
        OperatorCommand::Stop(args) => commands::stop(args).await,
        OperatorCommand::Nodes(args) => commands::nodes(args).await,
        OperatorCommand::Node(args) => commands::node(args).await,
        OperatorCommand::Members(args) => commands::members(args).await,
        OperatorCommand::Snapshot(args) => commands::snapshot(args).await,
        OperatorCommand::Plan(args) => commands::plan(args).await,
        OperatorCommand::Token(args) => commands::token(args).await,
        OperatorCommand::Tls(args) => tls::run(args).await,
        OperatorCommand::Service(args) => service::run(args).await,
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("goat: {}", e.message);
            e.code
        }
    }
}
