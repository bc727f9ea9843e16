//! `goat`: one binary for every role of the orchestrator.
//!
//! - `goat manager`: a member of the Raft-replicated control plane.
//! - `goat worker`: the agent that runs tasks as Docker containers.
//! - `goat dev`, `run`, `status`, `stop`, `nodes`, `node`, `members`,
//!   `snapshot`: the operator's commands (see `cli`).
//! - `goat events`: follows a cluster's task and node events.
//! - `goat drill`: failures caused in a compose deployment, measured.
//!
//! The echo application and the benchmarks are binaries of their own
//! (`goat-echo`, `goat-bench`: `src/bin/`), not part of this one.

use goat::{cli, drill, manager};

/// mimalloc instead of glibc's malloc: under write load a manager spent a
/// fifth of its CPU in glibc's `_int_malloc`/`_int_free`/consolidation
/// (`perf record`, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "goat", version, about = "A container orchestrator with a Raft-replicated control plane")]
struct Cli {
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, env = "GOAT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// A TOML file of `goat manager` or `goat worker` settings (flag > GOAT_*
    /// environment variable > file > default).
    #[arg(long, global = true, env = "GOAT_CONFIG")]
    config: Option<std::path::PathBuf>,
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
    /// Follow the cluster's task and node events.
    Events(cli::events::EventsArgs),
    #[command(flatten)]
    Operator(cli::OperatorCommand),
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

#[tokio::main]
async fn main() {
    use clap::CommandFactory;
    let argv = match cli::config::apply(std::env::args_os().collect(), &Cli::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("goat: {e}");
            std::process::exit(cli::exit::USAGE);
        }
    };
    let cli = Cli::parse_from(argv);
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Operator(command) => {
            std::process::exit(cli::main(command, matches!(cli.log_format, LogFormat::Json)).await)
        }
        Command::Manager(args) => match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => manager::run(args.into(), listener, goat::shutdown_signal()).await,
            Err(e) => Err(anyhow::Error::new(e).context(format!("binding {}", args.listen))),
        },
        Command::Worker(args) => goat_worker::run(args.into(), goat::shutdown_signal()).await,
        Command::Events(args) => cli::events::run(args).await,
        Command::Drill(args) => drill::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("goat: {e:#}");
        std::process::exit(1);
    }
}
