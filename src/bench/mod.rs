//! `goat-bench`: benchmarks that start their own clusters on loopback and
//! measure Goat against a peer in the same run, so that the figures are
//! ratios that survive a noisy machine.
//!
//! `goat-bench raft` measures the replicated store: write throughput and
//! latency (p50, p99) at several concurrencies, and the time from SIGKILL of
//! the leader to the first accepted write, for three Goat managers and for
//! three etcd members (Debian's etcd-server, writing through its HTTP JSON
//! gateway, payloads of the same size).
//!
//! `goat-bench tasks` measures task startup on the real Docker engine: N echo
//! tasks through three managers and a worker, against the same containers
//! started directly on the engine and against Docker Swarm (see `tasks`).
//!
//! `goat-bench services` measures a replicated service on the same engine:
//! creating 50 copies and a rolling update of 20, against Swarm's `docker
//! service create/update` and the engine driven directly (see `services`).

mod load;
mod procs;
mod raft_planned;
mod scale;
mod services;
mod stats;
mod tasks;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use goat_storage::Millis;

use load::{run_load, LoadResult};
use procs::{BenchCluster, EtcdCluster, GoatCluster};
pub use services::ServicesBenchArgs;
use stats::{median, ms};
pub use tasks::TasksBenchArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchKind,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchKind {
    /// The replicated store: writes/s, latency and failover, Goat vs etcd.
    Raft(RaftBenchArgs),
    /// Tasks on the real engine: N echo tasks, Goat vs raw Docker vs Swarm.
    Tasks(TasksBenchArgs),
    /// Services on the real engine: a 50-copy service and a rolling update
    /// of 20, Goat vs Swarm vs raw Docker.
    Services(ServicesBenchArgs),
    /// Placement throughput with thousands of simulated nodes (no Docker).
    Scheduler(scale::SchedulerBenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RaftBenchArgs {
    /// The etcd binary to compare against.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
    /// Measure Goat alone.
    #[arg(long)]
    pub no_etcd: bool,
    /// Client concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// How long each load step runs.
    #[arg(long, default_value = "5s", value_parser = Millis::parse)]
    pub duration: Millis,
    /// Bytes of JSON per write (a Goat task spec; the same for etcd).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Leader kills for the failover measurement.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Also measure planned failovers (Goat only): SIGTERM hand-overs of
    /// the leader under load, then a rolling restart of all three managers.
    #[arg(long)]
    pub planned: bool,
    /// SIGTERM hand-overs with --planned.
    #[arg(long, default_value_t = 5)]
    pub handovers: usize,
    /// Where the clusters keep their data (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchKind::Raft(args) => raft_bench(args).await,
        BenchKind::Scheduler(args) => scale::run(args).await,
        BenchKind::Tasks(args) => tasks::tasks_bench(args).await,
        BenchKind::Services(args) => services::services_bench(args).await,
    }
}

/// What one system measured.
struct SystemResult {
    name: &'static str,
    loads: Vec<(usize, LoadResult)>,
    failovers: Vec<Duration>,
}

async fn raft_bench(args: RaftBenchArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let http = reqwest::Client::builder()
        .default_headers(crate::client::bearer_headers(procs::BENCH_TOKEN))
        .no_proxy()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut results = Vec::new();
    let load_before = stats::loadavg();

    eprintln!("goat: starting three managers");
    let mut goat = GoatCluster::start(&dir, args.size)?;
    results.push(measure(&mut goat, &http, &args).await?);
    let planned = match args.planned {
        true => Some(raft_planned::measure(&mut goat, &http, args.handovers, 16).await?),
        false => None,
    };
    drop(goat);

    if !args.no_etcd {
        eprintln!("etcd: starting three members");
        let mut etcd = EtcdCluster::start(&args.etcd, &dir, args.size)?;
        // Without Goat's token: etcd refuses any Authorization header it
        // did not issue ("invalid auth token").
        let plain = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        results.push(measure(&mut etcd, &plain, &args).await?);
    }

    let mut report = report(&results, &args);
    let _ = writeln!(
        report,
        "\nMachine: {} cores, load average (1 min) {} at the start, {} at the end.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        stats::loadavg()
    );
    if let Some(planned) = &planned {
        raft_planned::report(&mut report, planned, 16);
    }
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Each write attempt after a kill gives up after this long and is retried
/// against the next survivor, for both systems alike: the measured time is
/// when the first write is accepted, to within this bound.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

async fn measure<C: BenchCluster>(
    cluster: &mut C,
    http: &reqwest::Client,
    args: &RaftBenchArgs,
) -> anyhow::Result<SystemResult> {
    let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
    cluster.set_load_member(leader);
    // Warm up connections, caches and the log.
    run_load(http, cluster, 16, Duration::from_secs(1)).await;
    let mut loads = Vec::new();
    for &concurrency in &args.concurrency {
        let result = run_load(http, cluster, concurrency, args.duration.as_duration()).await;
        eprintln!(
            "{}: c={concurrency}: {:.0} writes/s, p50 {:?}, p99 {:?}, {} errors",
            cluster.name(),
            result.throughput(),
            result.percentile(50.0),
            result.percentile(99.0),
            result.errors
        );
        loads.push((concurrency, result));
    }

    let mut failovers = Vec::new();
    for kill in 0..args.kills {
        let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
        let survivors: Vec<usize> = (0..cluster.members()).filter(|m| *m != leader).collect();
        cluster.kill(leader);
        let killed_at = Instant::now();
        let mut i = 0usize;
        let took = loop {
            let member = survivors[i % survivors.len()];
            i += 1;
            let attempt =
                cluster.write_to(http, member, 900_000_000 + kill * 10_000 + i).timeout(ATTEMPT_TIMEOUT).send().await;
            if matches!(&attempt, Ok(r) if r.status().is_success()) {
                break killed_at.elapsed();
            }
            anyhow::ensure!(
                killed_at.elapsed() < Duration::from_secs(60),
                "{}: no write accepted 60 s after a kill",
                cluster.name()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!("{}: kill {}: first accepted write after {took:?}", cluster.name(), kill + 1);
        failovers.push(took);
        cluster.start(leader)?;
        // Let the restarted member catch up before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(SystemResult { name: cluster.name(), loads, failovers })
}

fn report(results: &[SystemResult], args: &RaftBenchArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Replicated writes: three members on loopback, {} B per write, {} per step\n",
        args.size, args.duration
    );
    let _ = writeln!(out, "| system | concurrency | writes/s | p50 | p99 | errors |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for r in results {
        for (c, load) in &r.loads {
            let _ = writeln!(
                out,
                "| {} | {c} | {:.0} | {} | {} | {} |",
                r.name,
                load.throughput(),
                ms(load.percentile(50.0)),
                ms(load.percentile(99.0)),
                load.errors
            );
        }
    }
    if let [goat, etcd] = results {
        let _ = writeln!(out, "\n| concurrency | goat/etcd writes/s | goat/etcd p50 |");
        let _ = writeln!(out, "|---:|---:|---:|");
        for ((c, g), (_, e)) in goat.loads.iter().zip(&etcd.loads) {
            let _ = writeln!(
                out,
                "| {c} | {:.2}× | {:.2}× |",
                g.throughput() / e.throughput().max(f64::MIN_POSITIVE),
                g.percentile(50.0).as_secs_f64() / e.percentile(50.0).as_secs_f64().max(f64::MIN_POSITIVE)
            );
        }
    }
    let _ = writeln!(out, "\n### Failover: SIGKILL of the leader → first accepted write ({} kills)\n", args.kills);
    let _ = writeln!(out, "| system | median | max | all |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for r in results {
        let all: Vec<String> = r.failovers.iter().map(|d| format!("{}", d.as_millis())).collect();
        let max = r.failovers.iter().max().copied().unwrap_or_default();
        let _ = writeln!(out, "| {} | {} | {} | {} ms |", r.name, ms(median(&r.failovers)), ms(max), all.join(", "));
    }
    out
}
