//! `goat`: one binary for every role of the orchestrator.
//!
//! - `goat manager`: a member of the Raft-replicated control plane.
//! - `goat worker`: the agent that runs tasks as Docker containers.
//! - `goat echo`: the echo application used as Goat's first workload.
//! - `goat bench`: benchmarks against a running cluster.
//! - `goat drill`: failures caused in a compose deployment, measured.

mod bench;
mod clock;
mod drill;
mod echo;
mod manager;
mod reschedule;
mod scheduler;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "goat", version, about = "A container orchestrator with a Raft-replicated control plane")]
struct Cli {
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, env = "GOAT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a manager.
    Manager(manager::ManagerArgs),
    /// Run a worker.
    Worker(goat_worker::WorkerArgs),
    /// Run the echo application (POST / answers the request body).
    Echo(echo::EchoArgs),
    /// Measure a running cluster.
    Bench(bench::BenchArgs),
    /// Cause a failure in a compose deployment under load and measure it.
    Drill(drill::DrillArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Manager(args) => manager::run(args).await,
        Command::Worker(args) => goat_worker::run(args).await,
        Command::Echo(args) => echo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Drill(args) => drill::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("goat: {e:#}");
        std::process::exit(1);
    }
}
