//! `goat drill`: cause a real failure in a running compose deployment
//! (deploy/up.sh) under a steady load of submissions, and measure what the
//! cluster does about it.
//!
//! Failures are caused with the `docker` CLI on the deployment's containers
//! (found by their compose labels): `docker kill` (SIGKILL), `docker network
//! disconnect`/`connect` on the cluster network, `docker start`. The load is
//! tasks that can never be placed (1024 cores), so thousands of them cost no
//! containers; every `201` is recorded and must be found on every manager
//! afterwards. Worker drills first place a few echo tasks (with health
//! checks) and watch them move, then count their running copies.
//!
//! Measured: time without a leader, time to the first accepted write
//! (probing the survivors like `goat bench raft` does), acknowledged tasks
//! lost, tasks moved and how long that took, running copies per task after
//! convergence, and the managers' state digests (`GET /v1/cluster/verify`).
//! The drill stops the tasks it submitted before it exits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures::StreamExt;
use goat_storage::Millis;
use serde::Serialize;
use serde_json::{json, Value};

/// After cutting a leader off, how long until its applied index must stop
/// moving (entries committed just before the cut are still being applied).
const ISOLATION_GRACE: Duration = Duration::from_millis(500);

/// The failures a drill can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL the leader's container, then start it again.
    KillLeader,
    /// SIGKILL a follower's container, then start it again.
    KillFollower,
    /// Cut the leader off the cluster network, then reconnect it.
    PartitionLeader,
    /// SIGKILL the busiest worker's container (its tasks keep running), then
    /// start it again.
    KillWorker,
    /// Cut the busiest worker off the cluster network, then reconnect it.
    PartitionWorker,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The failure to cause.
    pub scenario: Scenario,
    /// The managers' published API addresses.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")]
    pub managers: Vec<String>,
    /// The deployment's compose project.
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = "goat")]
    pub project: String,
    /// Submissions per second, spread over the managers, during each round.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long the failure lasts before the member is restarted or
    /// reconnected (worker drills: at least until its tasks moved).
    #[arg(long, default_value = "2s", value_parser = Millis::parse)]
    pub hold: Millis,
    /// Rounds: the failure is caused this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Echo tasks placed before a worker drill, to watch them move.
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// How long to wait for the cluster to converge after each round.
    #[arg(long, default_value = "90s", value_parser = Millis::parse)]
    pub settle: Millis,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A token with the admin role (or the cluster token; deploy/up.sh
    /// prints it).
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The deployment's TLS files (deploy/up.sh prints them).
    #[command(flatten)]
    pub tls: goat_raft::tls::TlsArgs,
}

/// What one round measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// The member the failure hit: `manager2`, `worker1`.
    pub victim: String,
    /// How long the `docker` command that caused the failure took. The
    /// times below run from when the victim stopped answering (kills) or
    /// from the start of the command (partitions).
    pub failure_call_ms: f64,
    /// How long `docker start` (kills) took.
    pub restore_call_ms: f64,
    /// From the failure until a survivor knew a new leader.
    pub leaderless_ms: Option<f64>,
    /// From the failure until a write through a survivor was accepted.
    pub first_write_ms: Option<f64>,
    /// Worker drills: the victim's tasks, and how long until all of them
    /// ran elsewhere.
    pub tasks_to_move: usize,
    pub tasks_moved: usize,
    pub moved_ms: Option<f64>,
    /// Partition drills: what the cut-off member's clients got.
    pub isolated_created: usize,
    pub isolated_errors: usize,
    /// Partition drills: how far the cut-off manager's applied index moved
    /// while it was cut off, from half a second after the cut (its own
    /// writes can not commit): must be 0.
    pub isolated_applied_delta: Option<u64>,
}

/// The whole drill's report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub rounds: Vec<Round>,
    pub first_write_median_ms: Option<f64>,
    pub first_write_max_ms: Option<f64>,
    pub leaderless_median_ms: Option<f64>,
    pub leaderless_max_ms: Option<f64>,
    /// Submissions sent, answered `201`, and answered otherwise.
    pub submitted: usize,
    pub acknowledged: usize,
    pub refused: BTreeMap<String, usize>,
    /// Acknowledged tasks missing from at least one manager: must be 0.
    pub acknowledged_lost: usize,
    /// The most running containers of one task after convergence (worker
    /// drills): must be at most 1.
    pub max_copies: Option<usize>,
    /// `GET /v1/cluster/verify` after the last round.
    pub consistent: bool,
    pub converged: bool,
    pub applied_index: Option<u64>,
    pub digest: Option<String>,
    pub leader: Option<u64>,
}

/// Runs the drill and prints its report.
pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let report = drill(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if report.acknowledged_lost > 0 || !report.consistent || report.max_copies.is_some_and(|c| c > 1) {
        bail!("the drill found a broken promise (see the report)");
    }
    Ok(())
}

/// A compose deployment, reached through its published APIs and the
/// `docker` CLI.
struct Deployment {
    project: String,
    http: reqwest::Client,
    /// `https` with TLS.
    scheme: &'static str,
    /// Manager id → published API address.
    managers: BTreeMap<u64, String>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .context("running the docker CLI (is it installed?)")?;
    if !output.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

impl Deployment {
    async fn discover(args: &DrillArgs) -> anyhow::Result<Deployment> {
        let tls = args.tls.load()?;
        let scheme = goat_raft::tls::scheme(tls.as_ref());
        let http = goat_raft::tls::client_builder(tls.as_ref())
            .default_headers(crate::cli::client::bearer_headers(&args.token))
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the HTTP client")?;
        let mut managers = BTreeMap::new();
        for addr in &args.managers {
            let health: Value = http
                .get(format!("{scheme}://{addr}/v1/health"))
                .send()
                .await
                .with_context(|| format!("no manager answers at {addr}"))?
                .json()
                .await
                .with_context(|| format!("{addr} did not answer /v1/health with JSON"))?;
            let id = health["id"].as_u64().with_context(|| format!("{addr}: no id in {health}"))?;
            managers.insert(id, addr.clone());
        }
        let deployment = Deployment { project: args.project.clone(), http, scheme, managers };
        for id in deployment.managers.keys() {
            deployment.container(&format!("manager{id}")).await?;
        }
        Ok(deployment)
    }

    fn network(&self) -> String {
        format!("{}-net", self.project)
    }

    fn url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme, self.managers[&id])
    }

    /// The container of a compose service of this project.
    async fn container(&self, service: &str) -> anyhow::Result<String> {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .await?;
        ids.lines()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no container for service {service} in compose project {}", self.project))
    }

    async fn health(&self, id: u64, timeout: Duration) -> Option<Value> {
        let response = self.http.get(format!("{}/v1/health", self.url(id))).timeout(timeout).send().await.ok()?;
        response.json().await.ok()
    }

    /// The leader every answering manager in `among` agrees on, if any.
    async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let mut seen = BTreeSet::new();
        for id in among {
            let health = self.health(*id, Duration::from_millis(500)).await?;
            seen.insert(health["leader"].as_u64()?);
        }
        let leader = *seen.iter().next()?;
        (seen.len() == 1 && among.contains(&leader)).then_some(leader)
    }

    async fn wait_leader(&self, among: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader(among).await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("managers {among:?} agreed on no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn verify(&self, id: u64, wait: Duration) -> anyhow::Result<Value> {
        let url = format!("{}/v1/cluster/verify?wait={}ms", self.url(id), wait.as_millis());
        let response = self.http.get(url).timeout(wait + Duration::from_secs(10)).send().await?;
        Ok(response.json().await?)
    }

    async fn submit(&self, id: u64, spec: &Value, timeout: Duration) -> (Option<u16>, Option<Value>) {
        let sent = self.http.post(format!("{}/v1/tasks", self.url(id))).json(spec).timeout(timeout).send().await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                (Some(status), response.json().await.ok())
            }
            Err(_) => (None, None),
        }
    }

    async fn tasks(&self, id: u64) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/v1/tasks?stale=true", self.url(id));
        Ok(self.http.get(url).timeout(Duration::from_secs(30)).send().await?.error_for_status()?.json().await?)
    }
}

/// One submission of the load.
#[derive(Debug, Clone)]
struct Outcome {
    manager: u64,
    sent: Instant,
    status: Option<u16>,
    task: Option<String>,
}

/// Steady submissions, round-robin over the managers, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<Outcome>>,
}

fn load_spec(run: &str) -> Value {
    json!({"name": "drill-load", "image": "goat-echo:latest", "cpu": 1024, "labels": {"drill": run}})
}

impl Load {
    fn start(deployment: Arc<Deployment>, rate: f64, run: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 1000.0));
            let ids: Vec<u64> = deployment.managers.keys().copied().collect();
            let spec = load_spec(&run);
            let mut requests = Vec::new();
            let mut tick = tokio::time::interval(period);
            let mut i = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = ids[i % ids.len()];
                i += 1;
                let deployment = deployment.clone();
                let spec = spec.clone();
                requests.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let (status, body) = deployment.submit(id, &spec, Duration::from_secs(15)).await;
                    let task = body.as_ref().and_then(|b| b["id"].as_str()).map(str::to_string);
                    Outcome { manager: id, sent, status, task }
                }));
            }
            let mut outcomes = Vec::new();
            for request in requests {
                if let Ok(outcome) = request.await {
                    outcomes.push(outcome);
                }
            }
            outcomes
        });
        Load { stop, handle }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

/// When the engine recorded the container's last exit.
async fn finished_at(container: &str) -> Option<SystemTime> {
    let text = docker(&["inspect", "-f", "{{.State.FinishedAt}}", container]).await.ok()?;
    parse_rfc3339_utc(&text)
}

/// The `Instant` of a wall-clock time in the recent past.
fn instant_of(wall: SystemTime) -> Instant {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let ago = now_wall.duration_since(wall).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses Docker's `2026-11-25T13:42:18.534123456Z` (UTC only).
fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    let text = text.trim().strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-');
    let (year, month, day): (i64, u32, u32) =
        (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, m, sec): (u64, u64, u64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let nanos: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").get(..9)?.parse().ok()? };
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + h * 3_600 + m * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// When manager `id` stopped answering its API, watched every few ms from
/// `since` for up to 30 s: the start of the first of two failed probes in a
/// row (one slow answer on a busy machine is not a death).
async fn wait_silent(deployment: &Deployment, id: u64, since: Instant) -> Option<Instant> {
    let mut first_failure: Option<Instant> = None;
    while since.elapsed() < Duration::from_secs(30) {
        let probe_sent = Instant::now();
        if deployment.health(id, Duration::from_secs(1)).await.is_none() {
            match first_failure {
                Some(at) => return Some(at),
                None => first_failure = Some(probe_sent),
            }
        } else {
            first_failure = None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first_failure
}

/// When a survivor first knew a leader other than `victim` (None: the same
/// leader stayed), and when a write through a survivor was first accepted
/// (the probe's task ids are acknowledged writes too), watching from `from`.
async fn measure_failover(
    deployment: &Deployment,
    survivors: &[u64],
    victim: Option<u64>,
    from: Instant,
    run: &str,
) -> (Option<Instant>, Option<Instant>, Vec<String>) {
    let leaderless = async {
        loop {
            for id in survivors {
                if let Some(health) = deployment.health(*id, Duration::from_millis(200)).await {
                    let leader = health["leader"].as_u64();
                    if leader.is_some() && leader != victim {
                        return Some(Instant::now());
                    }
                }
            }
            if from.elapsed() > Duration::from_secs(30) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let first_write = async {
        let spec = load_spec(run);
        let mut i = 0usize;
        loop {
            let id = survivors[i % survivors.len()];
            i += 1;
            if let (Some(201), Some(body)) = deployment.submit(id, &spec, Duration::from_millis(200)).await {
                return (Some(Instant::now()), body["id"].as_str().map(str::to_string));
            }
            if from.elapsed() > Duration::from_secs(30) {
                return (None, None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (leaderless, (first_write, probe)) = tokio::join!(leaderless, first_write);
    (leaderless, first_write, probe.into_iter().collect())
}

/// The tasks a worker drill watches: echo tasks with a health check.
async fn place_echo_tasks(deployment: &Deployment, n: usize, run: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let first = *deployment.managers.keys().next().context("no managers")?;
    for i in 0..n {
        let spec = json!({
            "name": format!("drill-echo-{i}"), "image": "goat-echo:latest", "cpu": 0.01, "memory": 16 << 20,
            "ports": [{"container": 7777}], "strategy": "spread", "labels": {"drill": run},
            "health_check": {"path": "/health", "port": 7777, "interval": "1s"}
        });
        match deployment.submit(first, &spec, Duration::from_secs(15)).await {
            (Some(201), Some(body)) => ids.push(body["id"].as_str().context("task without id")?.to_string()),
            other => bail!("submitting an echo task failed: {other:?}"),
        }
    }
    wait_running(deployment, &ids, None, Duration::from_secs(60)).await?;
    Ok(ids)
}

/// Waits until every task of `ids` runs healthy (and not on `avoid`);
/// returns where.
async fn wait_running(
    deployment: &Deployment,
    ids: &[String],
    avoid: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + timeout;
    let survivors: Vec<u64> = deployment.managers.keys().copied().collect();
    loop {
        let mut placed = BTreeMap::new();
        for id in &survivors {
            let Ok(response) = deployment.http.get(format!("{}/v1/tasks", deployment.url(*id))).send().await else {
                continue;
            };
            let Ok(tasks) = response.json::<Vec<Value>>().await else { continue };
            for task in tasks {
                let (Some(tid), Some(state), Some(node)) =
                    (task["id"].as_str(), task["state"].as_str(), task["node"].as_str())
                else {
                    continue;
                };
                // Healthy: the worker reached its task over the network.
                let healthy = task["health"] == "healthy";
                if ids.iter().any(|i| i == tid) && state == "running" && healthy && Some(node) != avoid {
                    placed.insert(tid.to_string(), node.to_string());
                }
            }
            break;
        }
        if placed.len() == ids.len() {
            return Ok(placed);
        }
        if Instant::now() > deadline {
            bail!("{} of {} tasks running within {timeout:?}", placed.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Running containers of each task, as the engine sees them.
async fn copies(ids: &[String]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for id in ids {
        let running = docker(&["ps", "-q", "--filter", &format!("label=goat.task={id}")]).await?;
        out.insert(id.clone(), running.lines().filter(|l| !l.is_empty()).count());
    }
    Ok(out)
}

/// Waits until every task has exactly one running copy (or time is up);
/// returns the most copies of one task seen at the end.
async fn wait_one_copy_each(ids: &[String], timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = copies(ids).await?;
        let max = counts.values().copied().max().unwrap_or(0);
        if counts.values().all(|c| *c == 1) || Instant::now() > deadline {
            return Ok(max);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stop_tasks(deployment: &Deployment, ids: &[String]) {
    let Some(first) = deployment.managers.keys().next().copied() else { return };
    futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let url = format!("{}/v1/tasks/{id}", deployment.url(first));
            let http = deployment.http.clone();
            async move {
                let _ = http.delete(url).send().await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// Cuts a container off the cluster network; returns its aliases there, to
/// reconnect it under the same names.
async fn disconnect(network: &str, container: &str) -> anyhow::Result<Vec<String>> {
    let template = format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}");
    let aliases: Vec<String> =
        serde_json::from_str(&docker(&["inspect", "-f", &template, container]).await?).unwrap_or_default();
    docker(&["network", "disconnect", network, container]).await?;
    // Docker adds the short container id as an alias by itself.
    Ok(aliases.into_iter().filter(|a| !container.starts_with(a.as_str())).collect())
}

async fn reconnect(network: &str, container: &str, aliases: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["network", "connect"];
    for alias in aliases {
        args.push("--alias");
        args.push(alias);
    }
    args.push(network);
    args.push(container);
    docker(&args).await.map(|_| ())
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2])
}

async fn manager_round(
    deployment: &Arc<Deployment>,
    args: &DrillArgs,
    run: &str,
    probes: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let leader = deployment.wait_leader(&ids, Duration::from_secs(30)).await?;
    let victim = match args.scenario {
        Scenario::KillFollower => *ids.iter().find(|id| **id != leader).context("no follower")?,
        _ => leader,
    };
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    let service = format!("manager{victim}");
    let container = deployment.container(&service).await?;
    let mut round = Round { victim: service, ..Round::default() };
    let network = deployment.network();

    let mut aliases = Vec::new();
    let called = Instant::now();
    let lost_leader = (victim == leader).then_some(victim);
    let (t0, leader_at, write_at, probe) = match args.scenario {
        Scenario::PartitionLeader => {
            aliases = disconnect(&network, &container).await?;
            // The cut happens somewhere inside the call: count from its
            // start (an upper bound on the times below).
            round.failure_call_ms = ms(called.elapsed());
            let (leader_at, write_at, probe) = measure_failover(deployment, &survivors, lost_leader, called, run).await;
            (called, leader_at, write_at, probe)
        }
        _ => {
            // `docker kill` returns well after the process died (the engine
            // tears down networks and port mappings first: 0.3-3 s on a busy
            // machine). So watch while it runs: once the victim stops
            // answering, probe the survivors; count from the moment the
            // engine recorded the death (`State.FinishedAt`).
            let kill_args = ["kill", container.as_str()];
            let kill = docker(&kill_args);
            let watch = async {
                let silent = wait_silent(deployment, victim, called).await;
                let from = silent.unwrap_or_else(Instant::now);
                (silent, measure_failover(deployment, &survivors, lost_leader, from, run).await)
            };
            let (killed, (silent, (leader_at, write_at, probe))) = tokio::join!(kill, watch);
            killed?;
            round.failure_call_ms = ms(called.elapsed());
            let died = match finished_at(&container).await {
                Some(wall) => instant_of(wall),
                None => silent.unwrap_or(called),
            };
            (died, leader_at, write_at, probe)
        }
    };
    // A follower's loss leaves the leader in place: no leaderless time.
    round.leaderless_ms = leader_at.filter(|_| lost_leader.is_some()).map(|t| ms(t.saturating_duration_since(t0)));
    round.first_write_ms = write_at.map(|t| ms(t.saturating_duration_since(t0)));
    probes.extend(probe);

    if args.scenario == Scenario::PartitionLeader {
        // The cut-off leader's own clients: it must not acknowledge.
        let hold_until = t0 + args.hold.as_duration().max(Duration::from_secs(6));
        let spec = load_spec(run);
        // What was committed before the cut may still be applied just
        // after it: measure from half a second in.
        tokio::time::sleep((t0 + ISOLATION_GRACE).saturating_duration_since(Instant::now())).await;
        let start_index =
            deployment.health(victim, Duration::from_secs(1)).await.and_then(|h| h["last_applied"].as_u64());
        let mut highest = start_index;
        while Instant::now() < hold_until {
            let (status, body) = deployment.submit(victim, &spec, Duration::from_secs(8)).await;
            match status {
                Some(201) => {
                    round.isolated_created += 1;
                    if let Some(id) = body.as_ref().and_then(|b| b["id"].as_str()) {
                        probes.push(id.to_string());
                    }
                }
                _ => round.isolated_errors += 1,
            }
            if let Some(health) = deployment.health(victim, Duration::from_secs(1)).await {
                highest = highest.max(health["last_applied"].as_u64());
            }
        }
        round.isolated_applied_delta = match (start_index, highest) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            (None, Some(b)) => Some(b),
            _ => None,
        };
        reconnect(&network, &container, &aliases).await?;
    } else {
        let left = (t0 + args.hold.as_duration()).saturating_duration_since(Instant::now());
        tokio::time::sleep(left).await;
        let restoring = Instant::now();
        docker(&["start", &container]).await?;
        round.restore_call_ms = ms(restoring.elapsed());
    }
    Ok(round)
}

async fn worker_round(deployment: &Arc<Deployment>, args: &DrillArgs, echo: &[String]) -> anyhow::Result<Round> {
    let placed = wait_running(deployment, echo, None, Duration::from_secs(60)).await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let (node, count) =
        per_node.iter().max_by_key(|(_, c)| **c).map(|(n, c)| (n.to_string(), *c)).context("no tasks")?;
    let service = node
        .strip_prefix(&format!("{}-", deployment.project))
        .with_context(|| format!("node {node} is not a worker of project {}", deployment.project))?
        .to_string();
    let container = deployment.container(&service).await?;
    let network = deployment.network();
    let mut round = Round { victim: service, tasks_to_move: count, ..Round::default() };

    let called = Instant::now();
    let aliases = match args.scenario {
        Scenario::PartitionWorker => disconnect(&network, &container).await?,
        _ => {
            docker(&["kill", &container]).await?;
            Vec::new()
        }
    };
    let t0 = Instant::now();
    round.failure_call_ms = ms(t0 - called);
    let moved = wait_running(deployment, echo, Some(&node), args.settle.as_duration()).await;
    if moved.is_ok() {
        round.moved_ms = Some(ms(t0.elapsed()));
        round.tasks_moved = count;
    }
    let left = (t0 + args.hold.as_duration()).saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    match args.scenario {
        Scenario::PartitionWorker => reconnect(&network, &container, &aliases).await?,
        _ => {
            docker(&["start", &container]).await?;
        }
    }
    moved?;
    Ok(round)
}

/// Runs the drill's rounds and checks the promises afterwards.
pub async fn drill(args: &DrillArgs) -> anyhow::Result<Report> {
    let deployment = Arc::new(Deployment::discover(args).await?);
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let run = format!("{:08x}", rand::random::<u32>());
    let worker_drill = matches!(args.scenario, Scenario::KillWorker | Scenario::PartitionWorker);
    let echo = if worker_drill { place_echo_tasks(&deployment, args.tasks, &run).await? } else { Vec::new() };

    let mut report = Report {
        scenario: serde_json::to_value(args.scenario)?.as_str().unwrap_or_default().to_string(),
        ..Report::default()
    };
    let mut acknowledged = Vec::new();
    let mut max_copies = None;
    for round_no in 0..args.repeat.max(1) {
        let load = Load::start(deployment.clone(), args.rate, run.clone());
        let mut probes = Vec::new();
        let round = if worker_drill {
            worker_round(&deployment, args, &echo).await
        } else {
            manager_round(&deployment, args, &run, &mut probes).await
        };
        let converging = Instant::now();
        // Convergence: one leader all agree on, every manager at one state.
        let leader = deployment.wait_leader(&ids, args.settle.as_duration()).await;
        let converged_after = converging.elapsed();
        let outcomes = load.finish().await;
        let round = round?;
        leader?;
        if worker_drill {
            let copies = wait_one_copy_each(&echo, args.settle.as_duration()).await?;
            max_copies = Some(max_copies.unwrap_or(0).max(copies));
        }
        eprintln!(
            "round {}: {} leaderless {:?} ms, first write {:?} ms, moved {:?} ms; docker call {} ms, docker start {} ms, agreed leader {:?} after that",
            round_no + 1,
            round.victim,
            round.leaderless_ms,
            round.first_write_ms,
            round.moved_ms,
            round.failure_call_ms,
            round.restore_call_ms,
            converged_after
        );
        report.submitted += outcomes.len();
        for outcome in &outcomes {
            match (outcome.status, &outcome.task) {
                (Some(201), Some(task)) => acknowledged.push(task.clone()),
                (Some(status), _) => *report.refused.entry(status.to_string()).or_default() += 1,
                (None, _) => *report.refused.entry("no answer".into()).or_default() += 1,
            }
            let _ = (outcome.manager, outcome.sent);
        }
        acknowledged.extend(probes);
        report.rounds.push(round);
    }
    report.acknowledged = acknowledged.len();
    report.max_copies = max_copies;

    let verdict = deployment.verify(ids[0], args.settle.as_duration()).await?;
    report.consistent = verdict["consistent"].as_bool().unwrap_or(false);
    report.converged = verdict["converged"].as_bool().unwrap_or(false);
    let first = &verdict["managers"][0]["state"];
    report.applied_index = first["applied_index"].as_u64();
    report.digest = first["digest"].as_str().map(str::to_string);
    report.leader = first["leader"].as_u64();

    let wanted: BTreeSet<&str> = acknowledged.iter().map(String::as_str).collect();
    let mut lost = BTreeSet::new();
    for id in &ids {
        let tasks = deployment.tasks(*id).await?;
        let held: BTreeSet<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
        lost.extend(wanted.difference(&held).map(|s| s.to_string()));
    }
    report.acknowledged_lost = lost.len();

    let firsts: Vec<f64> = report.rounds.iter().filter_map(|r| r.first_write_ms).collect();
    let gaps: Vec<f64> = report.rounds.iter().filter_map(|r| r.leaderless_ms).collect();
    report.first_write_median_ms = median(&firsts);
    report.first_write_max_ms = firsts.iter().copied().reduce(f64::max);
    report.leaderless_median_ms = median(&gaps);
    report.leaderless_max_ms = gaps.iter().copied().reduce(f64::max);

    // Leave the deployment as it was: stop what the drill submitted.
    stop_tasks(&deployment, &acknowledged).await;
    stop_tasks(&deployment, &echo).await;
    Ok(report)
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "-".into())
}

/// The report for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "goat drill {}: {} round(s)", r.scenario, r.rounds.len());
    for (i, round) in r.rounds.iter().enumerate() {
        let _ = write!(out, "  {:>2}. {:<9}", i + 1, round.victim);
        if round.leaderless_ms.is_some() || round.first_write_ms.is_some() {
            let _ = write!(
                out,
                " leaderless {:>8}, first write {:>8}",
                if round.leaderless_ms.is_none() { "kept".to_string() } else { opt(round.leaderless_ms) },
                opt(round.first_write_ms)
            );
        }
        if round.tasks_to_move > 0 {
            let _ =
                write!(out, " {}/{} tasks moved in {}", round.tasks_moved, round.tasks_to_move, opt(round.moved_ms));
        }
        if let Some(delta) = round.isolated_applied_delta {
            let _ = write!(
                out,
                "; cut-off leader: {} created, {} errors, applied +{delta}",
                round.isolated_created, round.isolated_errors
            );
        }
        let _ = writeln!(out, " [docker call {:.0} ms]", round.failure_call_ms);
    }
    if !r.rounds.iter().all(|x| x.first_write_ms.is_none()) {
        let _ = writeln!(
            out,
            "first accepted write: median {}, max {}; without a leader: median {}, max {}",
            opt(r.first_write_median_ms),
            opt(r.first_write_max_ms),
            opt(r.leaderless_median_ms),
            opt(r.leaderless_max_ms)
        );
    }
    let refused: Vec<String> = r.refused.iter().map(|(k, v)| format!("{v}×{k}")).collect();
    let _ = writeln!(
        out,
        "submissions: {} sent, {} acknowledged, {} lost{}",
        r.submitted,
        r.acknowledged,
        r.acknowledged_lost,
        if refused.is_empty() { String::new() } else { format!(", refused: {}", refused.join(", ")) }
    );
    if let Some(copies) = r.max_copies {
        let _ = writeln!(out, "running copies per task after convergence: at most {copies}");
    }
    let _ = writeln!(
        out,
        "state: {} at index {} (digest {}), leader {}",
        if r.converged {
            "all managers agree"
        } else if r.consistent {
            "consistent, not converged"
        } else {
            "DIVERGED"
        },
        r.applied_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        r.digest.as_deref().unwrap_or("-"),
        r.leader.map(|l| format!("manager{l}")).unwrap_or_else(|| "-".into())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times_parse() {
        let t = parse_rfc3339_utc("2026-11-25T13:42:18.534123456Z").unwrap();
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since.as_secs(), 1_795_614_138);
        assert_eq!(since.subsec_nanos(), 534_123_456);
        let t = parse_rfc3339_utc("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap(), Duration::from_millis(86_401_500));
        assert_eq!(parse_rfc3339_utc("0001-01-01T00:00:00Z"), None, "a container that never ran");
        assert_eq!(parse_rfc3339_utc("yesterday"), None);
    }

    #[test]
    fn median_of_an_odd_and_an_even_count() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_report_names_broken_promises() {
        let report = Report {
            scenario: "kill-leader".into(),
            rounds: vec![Round { victim: "manager1".into(), first_write_ms: Some(310.0), ..Round::default() }],
            acknowledged: 10,
            acknowledged_lost: 0,
            consistent: true,
            converged: false,
            ..Report::default()
        };
        let text = render(&report);
        assert!(text.contains("manager1"), "{text}");
        assert!(text.contains("first write   310 ms"), "{text}");
        assert!(text.contains("consistent, not converged"), "{text}");
        assert!(text.contains("10 acknowledged, 0 lost"), "{text}");
    }
}
