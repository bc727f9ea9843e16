//! `goat-bench scheduler`: placement throughput with many simulated nodes.
//!
//! No Docker is involved: the benchmark plays the workers itself, sending
//! the heartbeats a worker would. Each round: three managers; N nodes
//! register with an unhealthy engine (so nothing can be placed yet); T tasks
//! are submitted and wait `pending`; then every node reports a healthy
//! engine and the leader places all T tasks. Placement throughput is T over
//! the time from the first node turning healthy to the last task placed.
//! Finally every node acknowledges its placements as running in one more
//! heartbeat, and the managers' resident memory is read from /proc.
//!
//! The machine is shared and noisy: each round reports the load average
//! before and after, and how many leader elections happened during it (the
//! highest Raft term before and after), so a slow round can be told apart
//! from a lost leader. A failed round keeps its managers' logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use goat_storage::model::{EngineStatus, Heartbeat, HeartbeatReply, Resources, TaskReport};
use serde_json::json;

use crate::client::{HealthView, Stats};

use super::procs::{BenchCluster, GoatCluster};

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerBenchArgs {
    /// Simulated node counts, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub nodes: Vec<usize>,
    /// Tasks placed in each round.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Concurrent requests when submitting and heartbeating.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the managers' data and logs of every round (printed), not only
    /// of a failed one; set `GOAT_BENCH_MANAGER_LOG` for their log filter.
    #[arg(long)]
    pub keep: bool,
}

struct Round {
    nodes: usize,
    tasks: usize,
    submit: Duration,
    flip: Duration,
    place: Duration,
    ack: Duration,
    rss_mib: Vec<f64>,
    /// Raft terms started during the round (0 = the same leader throughout).
    elections: u64,
    /// Each manager's longest Raft timer lateness (ms): how long its Raft
    /// runtime was stalled at worst (`goat_raft_timer_max_lateness_ms`).
    stall_ms: Vec<u64>,
    /// The 1-minute load average before and after the round.
    load: (f64, f64),
    /// Unchanged heartbeats with every report and the list back (before).
    full: Steady,
    /// Unchanged heartbeats with no report and no list back (now).
    delta: Steady,
}

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .default_headers(crate::client::bearer_headers(super::procs::BENCH_TOKEN))
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut rounds = Vec::new();
    for &nodes in &args.nodes {
        let temp = tempfile::tempdir()?;
        // Simulated nodes heartbeat only when the benchmark says so: keep
        // them from being marked down meanwhile.
        let cluster = GoatCluster::start_with(temp.path(), 0, &["--node-down-after", "1h"])?;
        let load_before = load_average();
        let round = match measure(&cluster, &http, nodes, &args).await {
            Ok(round) => {
                if args.keep {
                    drop(cluster);
                    eprintln!("{nodes} nodes: managers' data and logs kept in {}", temp.keep().display());
                }
                Round { load: (load_before, load_average()), ..round }
            }
            Err(e) => {
                drop(cluster);
                let kept = temp.keep();
                bail!("{nodes} nodes: {e:#} (managers' logs kept in {})", kept.display());
            }
        };
        eprintln!(
            "{nodes} nodes: {} tasks placed in {:?} ({:.0}/s); acknowledged in {:?}; managers' RSS {:?} MiB; \
             {} election(s); longest Raft runtime stall {:?} ms; load {:.1} -> {:.1}",
            round.tasks,
            round.place,
            round.tasks as f64 / round.place.as_secs_f64(),
            round.ack,
            round.rss_mib,
            round.elections,
            round.stall_ms,
            round.load.0,
            round.load.1
        );
        eprintln!(
            "heartbeats failed and sent again so far: {}",
            FAILED_HEARTBEATS.load(std::sync::atomic::Ordering::Relaxed)
        );
        rounds.push(round);
    }
    let report = report(&rounds);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The 1-minute load average (0 if unknown).
fn load_average() -> f64 {
    super::stats::loadavg().parse().unwrap_or(0.0)
}

/// The highest Raft term any manager reports.
async fn highest_term(http: &reqwest::Client, cluster: &GoatCluster) -> u64 {
    let mut highest = 0;
    for addr in cluster.addrs() {
        let health = http.get(format!("http://{addr}/v1/health")).send().await;
        if let Ok(health) = health {
            if let Ok(v) = health.json::<HealthView>().await {
                highest = highest.max(v.term);
            }
        }
    }
    highest
}

/// Each manager's `goat_raft_timer_max_lateness_ms` (0 if unreadable).
async fn timer_stalls(http: &reqwest::Client, cluster: &GoatCluster) -> Vec<u64> {
    let mut stalls = Vec::new();
    for addr in cluster.addrs() {
        let text = match http.get(format!("http://{addr}/v1/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("goat_raft_timer_max_lateness_ms "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        stalls.push(value as u64);
    }
    stalls
}

/// Heartbeats that failed and were sent again (all rounds).
static FAILED_HEARTBEATS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn heartbeat(engine_healthy: bool, tasks: Vec<TaskReport>, held: Option<String>) -> Heartbeat {
    Heartbeat {
        capacity: Resources { cpu: 64.0, memory: 256 << 30, disk: 1 << 40 },
        usage: Resources::default(),
        engine: EngineStatus {
            healthy: engine_healthy,
            error: (!engine_healthy).then(|| "simulated: not ready yet".to_string()),
        },
        tasks,
        held,
        advertise: None,
    }
}

/// Sends one heartbeat for each of `nodes` nodes, `concurrency` at a time;
/// `reports` gives each node's task reports from its last assignments.
async fn heartbeat_all(
    http: &reqwest::Client,
    url: &str,
    nodes: usize,
    concurrency: usize,
    healthy: bool,
    reports: &BTreeMap<String, Vec<TaskReport>>,
    held: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<BTreeMap<String, HeartbeatReply>> {
    let replies: Vec<anyhow::Result<(String, HeartbeatReply)>> = stream::iter(0..nodes)
        .map(|i| {
            let name = node_name(i);
            let held = held.and_then(|h| h.get(&name).cloned());
            let beat = heartbeat(healthy, reports.get(&name).cloned().unwrap_or_default(), held);
            async move {
                // A worker whose heartbeat fails (no leader for a moment)
                // sends the next one; so does the simulated node, a few
                // times, and the failures are counted.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let response = http
                        .post(format!("{url}/v1/nodes/{name}/heartbeat"))
                        .header("authorization", "Bearer bench")
                        .json(&beat)
                        .send()
                        .await;
                    let error = match response {
                        Ok(r) if r.status().is_success() => return Ok((name, r.json::<HeartbeatReply>().await?)),
                        Ok(r) => r.status().to_string(),
                        Err(e) => e.to_string(),
                    };
                    FAILED_HEARTBEATS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if attempts >= 5 {
                        bail!("heartbeat of {name}: {error} ({attempts} attempts)");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    replies.into_iter().collect()
}

async fn stats(http: &reqwest::Client, url: &str) -> anyhow::Result<Stats> {
    Ok(http.get(format!("{url}/v1/stats?stale=true")).send().await?.json().await?)
}

/// Waits until `count(stats) >= want`, polling every 50 ms.
async fn wait_count(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = stats(http, url).await?;
        let have = s.tasks_in(what);
        if have >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {want} tasks {what} after {timeout:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn measure(
    cluster: &GoatCluster,
    http: &reqwest::Client,
    nodes: usize,
    args: &SchedulerBenchArgs,
) -> anyhow::Result<Round> {
    let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
    let url = cluster.client_url(leader);
    let term_before = highest_term(http, cluster).await;
    let none = BTreeMap::new();
    heartbeat_all(http, &url, nodes, args.concurrency, false, &none, None).await?;

    let started = Instant::now();
    let submitted: Vec<bool> = stream::iter(0..args.tasks)
        .map(|i| {
            let spec = json!({"name": format!("t{i}"), "image": "goat-echo:latest", "cpu": 0.01});
            let url = &url;
            async move {
                let r = http.post(format!("{url}/v1/tasks")).json(&spec).send().await;
                matches!(r, Ok(r) if r.status() == 201)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let submit = started.elapsed();
    let ok = submitted.iter().filter(|s| **s).count();
    if ok != args.tasks {
        bail!("{} of {} submissions failed", args.tasks - ok, args.tasks);
    }
    wait_count(http, &url, "pending", args.tasks, Duration::from_secs(120)).await?;

    let flip_started = Instant::now();
    heartbeat_all(http, &url, nodes, args.concurrency, true, &none, None).await?;
    let flip = flip_started.elapsed();
    wait_count(http, &url, "scheduled", args.tasks, Duration::from_secs(600)).await?;
    let place = flip_started.elapsed();

    // Every node learns its assignments and reports them running.
    let ack_started = Instant::now();
    let replies = heartbeat_all(http, &url, nodes, args.concurrency, true, &none, None).await?;
    let versions: BTreeMap<String, String> = replies.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect();
    let reports: BTreeMap<String, Vec<TaskReport>> = replies
        .into_iter()
        .map(|(name, reply)| {
            let reports = reply
                .assignments
                .into_iter()
                .map(|a| TaskReport::running(a.task_id, a.generation, format!("sim-{}", a.task_id)))
                .collect();
            (name, reports)
        })
        .collect();
    heartbeat_all(http, &url, nodes, args.concurrency, true, &reports, None).await?;
    wait_count(http, &url, "running", args.tasks, Duration::from_secs(600)).await?;
    let ack = ack_started.elapsed();

    // Unchanged heartbeats, as workers sent them before (every report and
    // the whole list back) and as they send them now (only changed reports,
    // none here, and the version held: no list back), back to back.
    let leader_pid = cluster.pids().get(leader).copied().flatten();
    let empty = BTreeMap::new();
    let full = steady(http, &url, leader_pid, nodes, args.concurrency, &reports, None).await?;
    let delta = steady(http, &url, leader_pid, nodes, args.concurrency, &empty, Some(&versions)).await?;

    let rss_mib = cluster.pids().into_iter().flatten().map(rss_mib).collect();
    let elections = highest_term(http, cluster).await.saturating_sub(term_before);
    let stall_ms = timer_stalls(http, cluster).await;
    Ok(Round {
        nodes,
        tasks: args.tasks,
        submit,
        flip,
        place,
        ack,
        rss_mib,
        elections,
        stall_ms,
        load: (0.0, 0.0),
        full,
        delta,
    })
}

/// Rounds of unchanged heartbeats from every node, per measurement.
const STEADY_ROUNDS: usize = 3;

/// Unchanged heartbeats: how many per second the leader answered, and the
/// CPU it spent on them.
#[derive(Debug, Clone, Copy, Default)]
struct Steady {
    per_second: f64,
    /// Leader CPU seconds per heartbeat.
    cpu_per_beat: f64,
}

async fn steady(
    http: &reqwest::Client,
    url: &str,
    leader_pid: Option<u32>,
    nodes: usize,
    concurrency: usize,
    reports: &BTreeMap<String, Vec<TaskReport>>,
    held: Option<&BTreeMap<String, String>>,
) -> anyhow::Result<Steady> {
    let cpu_before = leader_pid.map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    for _ in 0..STEADY_ROUNDS {
        let replies = heartbeat_all(http, url, nodes, concurrency, true, reports, held).await?;
        if held.is_some() && replies.values().any(|r| !r.unchanged) {
            bail!("an unchanged heartbeat naming its list's version was answered with a list");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = leader_pid.map(cpu_seconds).unwrap_or(0.0) - cpu_before;
    let beats = (nodes * STEADY_ROUNDS) as f64;
    Ok(Steady { per_second: beats / elapsed, cpu_per_beat: cpu / beats })
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn report(rounds: &[Round]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Placement with simulated nodes (three managers on loopback)\n");
    let _ = writeln!(
        out,
        "| nodes | tasks | submit (tasks/s) | nodes turned healthy in | all placed after | placements/s | all acknowledged running after | managers' RSS (MiB) | elections | longest Raft stall (ms) | load avg before → after |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|");
    for r in rounds {
        let rss: Vec<String> = r.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        let stalls: Vec<String> = r.stall_ms.iter().map(|m| m.to_string()).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} s | {:.2} s | {:.0} | {:.2} s | {} | {} | {} | {:.1} → {:.1} |",
            r.nodes,
            r.tasks,
            r.tasks as f64 / r.submit.as_secs_f64(),
            r.flip.as_secs_f64(),
            r.place.as_secs_f64(),
            r.tasks as f64 / r.place.as_secs_f64(),
            r.ack.as_secs_f64(),
            rss.join(", "),
            r.elections,
            stalls.join(", "),
            r.load.0,
            r.load.1
        );
    }
    let _ = writeln!(out, "\nUnchanged heartbeats ({STEADY_ROUNDS} rounds from every node, concurrency as above):\n");
    let _ = writeln!(
        out,
        "| nodes | tasks | protocol | heartbeats/s | leader CPU per heartbeat | leader cores at 1 heartbeat/s per node |"
    );
    let _ = writeln!(out, "|---:|---:|---|---:|---:|---:|");
    for r in rounds {
        for (name, s) in [("every report, list back (before)", r.full), ("delta + held version (now)", r.delta)] {
            let _ = writeln!(
                out,
                "| {} | {} | {name} | {:.0} | {:.0} µs | {:.2} |",
                r.nodes,
                r.tasks,
                s.per_second,
                s.cpu_per_beat * 1e6,
                s.cpu_per_beat * r.nodes as f64
            );
        }
    }
    let _ =
        writeln!(out, "\nTarget: 5,000 placements/s on this 2-core machine (Nomad's C2M: ~1,500/s on 6,100 hosts).");
    out
}
