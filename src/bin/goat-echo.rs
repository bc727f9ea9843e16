//! `goat-echo`: the echo application, Goat's first workload and its test
//! subject (see `goat::echo`). A binary of its own, so that its image holds
//! nothing of the orchestrator.

use clap::Parser;

/// The echo API: `POST /` answers the request body.
#[derive(Parser)]
#[command(name = "goat-echo", version)]
struct Cli {
    #[command(flatten)]
    args: goat::echo::EchoArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = goat::echo::run(cli.args).await {
        eprintln!("goat-echo: {e:#}");
        std::process::exit(1);
    }
}
