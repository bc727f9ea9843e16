//! `goat-bench`: the benchmarks (see `goat::bench`), a tool apart from the
//! product: the `goat` binary and image do not contain it. It starts the
//! `goat` binary found beside it (or `GOAT_BIN`) for its clusters.

use clap::Parser;

/// Measure Goat against a peer in the same run.
#[derive(Parser)]
#[command(name = "goat-bench", version)]
struct Cli {
    #[command(flatten)]
    args: goat::bench::BenchArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = goat::bench::run(cli.args).await {
        eprintln!("goat-bench: {e:#}");
        std::process::exit(1);
    }
}
