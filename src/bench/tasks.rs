//! `goat-bench tasks`: how fast Goat gets echo tasks running on a real
//! Docker engine, against the same engine driven directly and against
//! Docker Swarm, in one run on one machine.
//!
//! - Goat: three managers and one worker (child processes of this binary);
//!   N echo tasks submitted at once, timed until all are `running` and
//!   `healthy`, then stopped and timed until their containers are gone.
//! - Raw engine: the same N containers, with exactly the create request the
//!   worker sends (`goat_worker::runtime::create_body` of the same task
//!   spec, host port chosen the same way), created and started through the
//!   Engine API with the worker's parallelism (`MAX_IN_FLIGHT`), timed until
//!   each answers `GET /health` on its host port.
//! - Swarm: one service of N replicas, timed until N tasks are running.
//! - Crash → serving again: `POST /crash` to one echo, then `POST /` every
//!   10 ms until it echoes again (Goat: a different task each time, so each
//!   is a first restart; Swarm: a 1-replica service with a published port).
//!
//! Every step has a deadline; containers, services and the swarm this
//! benchmark made are removed on the way out, on error paths too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::future::join_all;
use futures::StreamExt;
use goat_storage::model::{Health, Node, Task, TaskId, TaskSpec, TaskState};
use goat_storage::Millis;
use goat_worker::agent::MAX_IN_FLIGHT;
use goat_worker::runtime::{create_body, free_host_port, ContainerConfig};
use serde_json::json;

use super::procs::{BenchCluster, GoatCluster, GoatWorker};
use super::stats::{median, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct TasksBenchArgs {
    /// Echo tasks (containers, replicas) started at once.
    #[arg(long, default_value_t = 50)]
    pub tasks: usize,
    /// Crashes for the crash → serving again measurement (per system).
    #[arg(long, default_value_t = 5)]
    pub crashes: usize,
    /// Cores reserved per container, in all three systems (Goat and raw:
    /// CPU shares; Swarm: `--reserve-cpu`).
    #[arg(long, default_value_t = 0.01)]
    pub cpu: f64,
    /// Also cap each container at `--cpu` cores (a CFS quota: Goat's
    /// `cpu_hard_limit`, Docker's NanoCpus, Swarm's `--limit-cpu`). A tiny
    /// quota throttles the container's own start.
    #[arg(long)]
    pub cpu_hard_limit: bool,
    /// The echo image (must exist locally: deploy/build-images.sh).
    #[arg(long, default_value = "goat-echo:latest")]
    pub image: String,
    /// Skip the raw engine baseline.
    #[arg(long)]
    pub no_raw: bool,
    /// Skip Docker Swarm.
    #[arg(long)]
    pub no_swarm: bool,
    /// Deadline of each step (start all, stop all, one crash).
    #[arg(long, default_value = "120s", value_parser = Millis::parse)]
    pub timeout: Millis,
    /// Where the Goat processes keep their data and logs (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Memory reservation and limit of every echo container, in all three systems.
pub(super) const MEMORY: u64 = 16 << 20;
pub(super) const ECHO_PORT: u16 = 7777;
const NODE: &str = "bench-worker";
pub(super) const RAW_LABEL: &str = "goat.bench=raw";
const RAW_LABEL_KEY: &str = "goat.bench";
const RAW_LABEL_VALUE: &str = "raw";
const SWARM_SERVICE: &str = "goat-bench-echo";
const SWARM_CRASH_SERVICE: &str = "goat-bench-crash";
const SWARM_CRASH_PORT: u16 = 17777;
const POLL: Duration = Duration::from_millis(50);

/// Starting N containers and stopping them, as one system did it.
#[derive(Default)]
pub(super) struct StartResult {
    /// First submit → all running (and healthy where the system checks).
    pub(super) all_running: Option<Duration>,
    /// Named intermediate milestones, from the same origin.
    phases: Vec<(String, Duration)>,
    /// Stop request → all containers gone.
    all_removed: Option<Duration>,
}

pub(super) struct CrashResult {
    method: String,
    times: Vec<Duration>,
}

struct SystemResult {
    name: &'static str,
    start: Option<StartResult>,
    crash: Option<CrashResult>,
    /// Goat only: crash → the API shows the task running again.
    crash_api: Option<CrashResult>,
    errors: Vec<String>,
}

impl SystemResult {
    fn new(name: &'static str) -> SystemResult {
        SystemResult { name, start: None, crash: None, crash_api: None, errors: Vec::new() }
    }
}

pub async fn tasks_bench(args: TasksBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let (docker, http) = engine_and_api(&args.image).await?;

    let mut results = Vec::new();
    if !args.no_raw {
        eprintln!("raw engine: {} containers", args.tasks);
        let mut raw = SystemResult::new("raw engine");
        match raw_start(&docker, &http, &args, &mut raw.crash, &mut raw.errors).await {
            Ok(start) => raw.start = Some(start),
            Err(e) => raw.errors.push(format!("{e:#}")),
        }
        if let Err(e) = remove_labeled(&docker, RAW_LABEL, args.timeout.as_duration()).await {
            raw.errors.push(format!("cleanup: {e:#}"));
        }
        results.push(raw);
    }

    eprintln!("goat: three managers, one worker, {} tasks", args.tasks);
    let mut goat = SystemResult::new("goat");
    if let Err(e) = goat_bench(&docker, &http, &args, &dir, &mut goat).await {
        goat.errors.push(format!("{e:#}"));
    }
    if let Err(e) = remove_labeled(&docker, &format!("goat.node={NODE}"), args.timeout.as_duration()).await {
        goat.errors.push(format!("cleanup: {e:#}"));
    }
    results.push(goat);

    if !args.no_swarm {
        eprintln!("swarm: {} replicas", args.tasks);
        let mut swarm = SystemResult::new("swarm");
        if let Err(e) = swarm_bench(&http, &args, &mut swarm).await {
            swarm.errors.push(format!("{e:#}"));
        }
        results.push(swarm);
    }

    for r in &results {
        for e in &r.errors {
            eprintln!("{}: error: {e}", r.name);
        }
    }
    let report = report(&results, &args);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- raw engine

pub(super) async fn raw_start(
    docker: &Docker,
    http: &reqwest::Client,
    args: &TasksBenchArgs,
    crash: &mut Option<CrashResult>,
    errors: &mut Vec<String>,
) -> anyhow::Result<StartResult> {
    remove_labeled(docker, RAW_LABEL, args.timeout.as_duration()).await?;
    let deadline = Instant::now() + args.timeout.as_duration();
    let started = Instant::now();
    // The worker's parallelism: at most MAX_IN_FLIGHT creates and starts at
    // once (waiting for /health does not hold a slot, as in the worker).
    let permits = tokio::sync::Semaphore::new(MAX_IN_FLIGHT);
    let ports = parking_lot::Mutex::new(std::collections::BTreeSet::new());
    let runs = (0..args.tasks).map(|i| raw_one(docker, http, args, i, started, deadline, &permits, &ports));
    let mut running = Vec::new();
    let mut healthy = Vec::new();
    let mut containers = Vec::new();
    for r in join_all(runs).await {
        let (run, health, id, port) = r?;
        running.push(run);
        healthy.push(health);
        containers.push((id, port));
    }
    let all = healthy.iter().max().copied().unwrap_or_default();
    eprintln!("raw engine: all {} running and answering /health after {all:?}", args.tasks);
    let mut result = StartResult {
        all_running: Some(all),
        phases: vec![("all started (start call returned)".into(), running.iter().max().copied().unwrap_or_default())],
        all_removed: None,
    };
    match raw_crashes(docker, http, args, &containers).await {
        Ok(c) => *crash = Some(c),
        Err(e) => errors.push(format!("crash: {e:#}")),
    }
    // Stop (SIGTERM) then remove, as the worker does, with its parallelism.
    let ids = labeled(docker, RAW_LABEL).await?;
    let stopping = Instant::now();
    let removals = ids.iter().map(|id| async move {
        let _ = docker.stop_container(id, Some(StopContainerOptions { t: Some(5), signal: None })).await;
        docker.remove_container(id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await
    });
    let removed: Vec<_> = futures::stream::iter(removals).buffer_unordered(MAX_IN_FLIGHT).collect().await;
    for r in removed {
        r.context("removing a raw container")?;
    }
    result.all_removed = Some(stopping.elapsed());
    Ok(result)
}

/// Creates and starts one container with the request the worker would
/// send for the same task (same HostConfig: memory, CPU, port binding,
/// restart policy `no`; the host port chosen the same way), then waits for
/// its `/health` on that port. Returns (started, healthy) times since
/// `origin`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn raw_one(
    docker: &Docker,
    http: &reqwest::Client,
    args: &TasksBenchArgs,
    i: usize,
    origin: Instant,
    deadline: Instant,
    permits: &tokio::sync::Semaphore,
    ports: &parking_lot::Mutex<std::collections::BTreeSet<u16>>,
) -> anyhow::Result<(Duration, Duration, String, u16)> {
    let spec = echo_spec(args, i);
    let mut config = ContainerConfig::for_task("bench-raw", TaskId::new_v4(), 1, &spec);
    config.name = format!("goat-bench-raw-{i}");
    // Not a worker's container: its own label only.
    config.labels = BTreeMap::from([(RAW_LABEL_KEY.to_string(), RAW_LABEL_VALUE.to_string())]);
    let port = {
        let mut taken = ports.lock();
        let port = free_host_port(&taken).context("no free host port")?;
        taken.insert(port);
        port
    };
    config.pin_ports(&BTreeMap::from([(ECHO_PORT, port)]));
    let body = create_body(&config, None);
    let _permit = permits.acquire().await.context("semaphore")?;
    let options = CreateContainerOptions { name: Some(config.name.clone()), ..Default::default() };
    let created = docker.create_container(Some(options), body).await.context("creating a raw container")?;
    docker.start_container(&created.id, None).await.context("starting a raw container")?;
    drop(_permit);
    let started = origin.elapsed();
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        let answer = http.get(&url).timeout(Duration::from_millis(500)).send().await;
        if matches!(&answer, Ok(r) if r.status().is_success()) {
            return Ok((started, origin.elapsed(), created.id, port));
        }
        if Instant::now() > deadline {
            bail!("raw container {i} (port {port}) did not answer /health in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The floor for crash → serving again on this engine: `POST /crash`, the
/// exit seen by inspecting every 10 ms, `docker start` of the same container
/// at once (no restart delay), until `POST /` echoes again on its port.
async fn raw_crashes(
    docker: &Docker,
    http: &reqwest::Client,
    args: &TasksBenchArgs,
    containers: &[(String, u16)],
) -> anyhow::Result<CrashResult> {
    let mut times = Vec::new();
    for (k, (id, port)) in containers.iter().take(args.crashes).enumerate() {
        let crashed = Instant::now();
        let deadline = crashed + args.timeout.as_duration();
        let answer = http.post(format!("http://127.0.0.1:{port}/crash")).timeout(Duration::from_secs(2)).send().await;
        anyhow::ensure!(matches!(&answer, Ok(r) if r.status().is_success()), "POST /crash refused: {answer:?}");
        loop {
            let info = docker.inspect_container(id, None).await.context("inspecting a raw container")?;
            if !info.state.and_then(|s| s.running).unwrap_or(false) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "raw container {id} did not exit after /crash");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        docker.start_container(id, None).await.context("restarting a raw container")?;
        while !echoes(http, *port, "after").await {
            anyhow::ensure!(Instant::now() < deadline, "raw container {id} not echoing again after its restart");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = crashed.elapsed();
        eprintln!("raw engine: crash {}: serving again after {took:?}", k + 1);
        times.push(took);
    }
    Ok(CrashResult {
        method: "POST /crash → exit seen (inspect every 10 ms) → `docker start` at once, no delay → POST / echoes \
                 again on the same port: the engine's floor"
            .into(),
        times,
    })
}

/// Ids of all containers (running or not) with `label` (`key=value`).
pub(super) async fn labeled(docker: &Docker, label: &str) -> anyhow::Result<Vec<String>> {
    labeled_in_state(docker, label, None).await
}

async fn labeled_in_state(docker: &Docker, label: &str, status: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    if let Some(status) = status {
        filters.insert("status".to_string(), vec![status.to_string()]);
    }
    let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let list = tokio::time::timeout(Duration::from_secs(20), docker.list_containers(Some(options)))
        .await
        .context("listing containers timed out")?
        .context("listing containers")?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

/// Force-removes every container with `label`, and waits until none is left.
/// The local Docker engine, with `image` present, and the HTTP client the
/// engine benchmarks (tasks, services) send Goat's API requests with.
pub(super) async fn engine_and_api(image: &str) -> anyhow::Result<(Docker, reqwest::Client)> {
    let docker = Docker::connect_with_unix_defaults()
        .context("connecting to the Docker engine")?
        .negotiate_version()
        .await
        .context("negotiating the Docker API version")?;
    docker
        .inspect_image(image)
        .await
        .with_context(|| format!("image {image} not found locally: run deploy/build-images.sh"))?;
    let http = reqwest::Client::builder()
        .default_headers(crate::client::bearer_headers(super::procs::BENCH_TOKEN))
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    Ok((docker, http))
}

pub(super) async fn remove_labeled(docker: &Docker, label: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ids = labeled(docker, label).await?;
        if ids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} containers with label {label} still there after {timeout:?}", ids.len());
        }
        let removals = ids
            .iter()
            .map(|id| docker.remove_container(id, Some(RemoveContainerOptions { force: true, ..Default::default() })));
        join_all(removals).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------- goat

/// The Goat side of a benchmark on the real engine (`tasks`, `services`):
/// the containers an earlier run of worker `node` left removed, three
/// managers started in `dir`, and worker `node` ready. Gives the cluster,
/// the leader's client URL, the worker (killed on drop: keep it) and its
/// node as the API shows it.
pub(super) async fn goat_on_engine(
    docker: &Docker,
    http: &reqwest::Client,
    node: &str,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<(GoatCluster, String, GoatWorker, Node)> {
    remove_labeled(docker, &format!("goat.node={node}"), timeout).await?;
    let cluster = GoatCluster::start(dir, 256)?;
    let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
    let url = cluster.client_url(leader);
    let (worker, view) = cluster.start_worker(node, &dir.join("goat")).await?;
    Ok((cluster, url, worker, view))
}

async fn goat_bench(
    docker: &Docker,
    http: &reqwest::Client,
    args: &TasksBenchArgs,
    dir: &Path,
    result: &mut SystemResult,
) -> anyhow::Result<()> {
    let (_cluster, url, _worker, node) = goat_on_engine(docker, http, NODE, dir, args.timeout.as_duration()).await?;
    let (cpu, memory) = (node.capacity.cpu, node.capacity.memory);
    let (want_cpu, want_memory) = (args.cpu * args.tasks as f64, MEMORY * args.tasks as u64);
    anyhow::ensure!(
        cpu >= want_cpu && memory >= want_memory,
        "the worker offers {cpu} cores and {memory} B; {} tasks need {want_cpu} cores and {want_memory} B",
        args.tasks
    );

    let mut start = StartResult::default();
    let ids = goat_start_all(docker, http, &url, args, &mut start).await?;
    match goat_crashes(docker, http, &url, &ids, args).await {
        Ok((crash, api)) => {
            result.crash = Some(crash);
            result.crash_api = Some(api);
        }
        Err(e) => result.errors.push(format!("crash: {e:#}")),
    }
    let stopped = goat_stop_all(docker, http, &url, &ids, args).await;
    start.all_removed = stopped.as_ref().ok().copied();
    result.start = Some(start);
    stopped.map(|_| ())
}

pub(super) fn echo_spec(args: &TasksBenchArgs, i: usize) -> TaskSpec {
    let spec = json!({
        "name": format!("bench-echo-{i}"),
        "image": args.image,
        "cpu": args.cpu,
        "cpu_hard_limit": args.cpu_hard_limit,
        "memory": MEMORY,
        "ports": [{"container": ECHO_PORT}],
        "health_check": {"path": "/health", "port": ECHO_PORT, "interval": "500ms"},
    });
    serde_json::from_value(spec).expect("the bench's echo spec is a TaskSpec")
}

/// Submits all tasks at once and waits until all are running and healthy.
/// Returns the task ids.
async fn goat_start_all(
    docker: &Docker,
    http: &reqwest::Client,
    url: &str,
    args: &TasksBenchArgs,
    start: &mut StartResult,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let submits = (0..args.tasks).map(|i| async move {
        let response = http.post(format!("{url}/v1/tasks")).json(&echo_spec(args, i)).send().await?;
        let status = response.status();
        let text = response.text().await.context("reading a submit answer")?;
        anyhow::ensure!(status.is_success(), "submit of task {i}: {status}: {text}");
        let task: Task = serde_json::from_str(&text).with_context(|| format!("submit answer not a task: {text}"))?;
        Ok(task.id.to_string())
    });
    let ids: Vec<String> = join_all(submits).await.into_iter().collect::<Result<_, _>>()?;
    start.phases.push(("all submitted (201)".into(), started.elapsed()));

    let deadline = started + args.timeout.as_duration();
    let node_label = format!("goat.node={NODE}");
    let mut milestones: [Option<Duration>; 4] = [None; 4];
    let names = [
        "all placed (scheduled on the node)",
        "all containers running on the engine",
        "all reported running",
        "all running and healthy",
    ];
    let mut last = (0, 0, 0, 0);
    loop {
        let tasks = goat_tasks(http, url, &ids).await;
        let placed = tasks.iter().filter(|t| t.node.as_deref() == Some(NODE)).count();
        let running = tasks.iter().filter(|t| t.state == TaskState::Running).count();
        let healthy = tasks.iter().filter(|t| t.state == TaskState::Running && t.health == Health::Healthy).count();
        let containers = labeled_in_state(docker, &node_label, Some("running")).await.map(|c| c.len()).unwrap_or(0);
        let now = started.elapsed();
        for (slot, count) in milestones.iter_mut().zip([placed, containers, running, healthy]) {
            if slot.is_none() && count >= args.tasks {
                *slot = Some(now);
            }
        }
        if (placed, containers, running, healthy) != last {
            last = (placed, containers, running, healthy);
            eprintln!("goat: {now:?}: placed {placed}, containers {containers}, running {running}, healthy {healthy}");
        }
        if healthy >= args.tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not all {} tasks running and healthy after {:?}: placed {placed}, containers {containers}, \
                 running {running}, healthy {healthy}",
                args.tasks,
                args.timeout
            );
        }
        tokio::time::sleep(POLL).await;
    }
    for (name, at) in names.iter().zip(milestones) {
        if let Some(at) = at {
            start.phases.push((name.to_string(), at));
        }
    }
    start.all_running = milestones[3];
    // Per-task placement latency from the tasks' own history (manager clocks).
    let tasks = goat_tasks(http, url, &ids).await;
    let placements: Vec<Duration> = tasks
        .iter()
        .filter_map(|t| {
            let scheduled = t.events.iter().find(|e| e.state == TaskState::Scheduled)?.at;
            Some(Duration::from_millis(scheduled.saturating_sub(t.created_at)))
        })
        .collect();
    if let Some(max) = placements.iter().max() {
        start.phases.push(("placement latency per task (created → scheduled), max".into(), *max));
        start.phases.push(("placement latency per task, median".into(), median(&placements)));
    }
    eprintln!("goat: all {} running and healthy after {:?}", args.tasks, start.all_running.unwrap_or_default());
    Ok(ids)
}

/// Our tasks as the leader has them (an empty list if it does not answer).
async fn goat_tasks(http: &reqwest::Client, url: &str, ids: &[String]) -> Vec<Task> {
    let tasks: Vec<Task> =
        match http.get(format!("{url}/v1/tasks?limit={}", crate::manager::api::MAX_PAGE)).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
    tasks
        .into_iter()
        .filter(|t| {
            let id = t.id.to_string();
            ids.contains(&id)
        })
        .collect()
}

/// Crashes a different task each time (so each is its first restart, with
/// the default policy's 200 ms ±20 % delay) and times until it echoes again
/// (on the host port the engine gives it now), then until the manager's API
/// shows it running on that port.
async fn goat_crashes(
    docker: &Docker,
    http: &reqwest::Client,
    url: &str,
    ids: &[String],
    args: &TasksBenchArgs,
) -> anyhow::Result<(CrashResult, CrashResult)> {
    let tasks = goat_tasks(http, url, ids).await;
    let picked: Vec<(String, String)> =
        tasks.iter().filter_map(|t| Some((t.id.to_string(), t.container_id.clone()?))).take(args.crashes).collect();
    anyhow::ensure!(picked.len() >= args.crashes.min(args.tasks), "tasks without a container id: {tasks:?}");
    let mut serving = Vec::new();
    let mut reported = Vec::new();
    let mut moved = 0;
    for (k, (id, container)) in picked.into_iter().enumerate() {
        let endpoint = Endpoint::Container(docker, container.clone());
        let before = endpoint.port().await;
        let crashed = Instant::now();
        let (took, port) = crash_and_wait(http, &endpoint, args.timeout.as_duration()).await?;
        if before != Some(port) {
            moved += 1;
        }
        // Until the API shows the task running again on the port it answers on.
        let deadline = crashed + args.timeout.as_duration();
        let shown = loop {
            let task = goat_tasks(http, url, std::slice::from_ref(&id)).await;
            if task
                .first()
                .is_some_and(|t| t.state == TaskState::Running && t.host_ports.get(&ECHO_PORT) == Some(&port))
            {
                break crashed.elapsed();
            }
            if Instant::now() > deadline {
                bail!("task {id} not shown running on port {port} {:?} after its crash", args.timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "goat: crash {}: serving again after {took:?} (port {before:?} → {port}), API shows it after {shown:?}",
            k + 1
        );
        serving.push(took);
        reported.push(shown);
    }
    Ok((
        CrashResult {
            method: format!(
                "POST /crash → POST / echoes again on the container's host port ({moved} of {} came back \
                 on a different port); a different task each time: first restart, default policy on-failure, \
                 initial_delay 200 ms ±20 %",
                serving.len()
            ),
            times: serving,
        },
        CrashResult {
            method: "POST /crash → the API shows the task running on its new host port".into(),
            times: reported,
        },
    ))
}

/// Whether `POST http://127.0.0.1:{port}/` echoes `body` right now.
async fn echoes(http: &reqwest::Client, port: u16, body: &str) -> bool {
    let answer = http.post(format!("http://127.0.0.1:{port}/")).body(body.to_string()).timeout(POLL * 4).send().await;
    match answer {
        Ok(r) if r.status().is_success() => r.text().await.is_ok_and(|t| t == body),
        _ => false,
    }
}

/// Where a crashed echo answers again.
enum Endpoint<'a> {
    /// A fixed host port (Swarm's published port).
    Fixed(u16),
    /// The IPv4 host port the engine binds for this container now: starting a
    /// stopped container again assigns it a new port.
    Container(&'a Docker, String),
}

impl Endpoint<'_> {
    async fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Fixed(port) => Some(*port),
            Endpoint::Container(docker, id) => container_port(docker, id).await,
        }
    }
}

/// The IPv4 host port of the container's echo port, if it has one now.
async fn container_port(docker: &Docker, id: &str) -> Option<u16> {
    let info = docker.inspect_container(id, None).await.ok()?;
    let key = format!("{ECHO_PORT}/tcp");
    let bindings = info.network_settings?.ports?.get(&key).cloned().flatten()?;
    bindings
        .into_iter()
        .filter(|b| b.host_ip.as_deref().is_none_or(|ip| !ip.contains(':')))
        .find_map(|b| b.host_port?.parse().ok())
}

/// `POST /crash` on the echo behind `endpoint`, then polls `POST /` every
/// 10 ms until it echoes again. The echo dies 50 ms after answering the
/// crash: an echo counts only once one attempt has failed (the old process
/// is gone). Returns the time and the port it answered on.
async fn crash_and_wait(
    http: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    timeout: Duration,
) -> anyhow::Result<(Duration, u16)> {
    let ready = Instant::now() + timeout;
    let port = loop {
        if let Some(port) = endpoint.port().await {
            if echoes(http, port, "before").await {
                break port;
            }
        }
        if Instant::now() > ready {
            bail!("the echo does not answer before the crash");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let crashed = Instant::now();
    let answer = http.post(format!("http://127.0.0.1:{port}/crash")).timeout(Duration::from_secs(2)).send().await;
    if !matches!(&answer, Ok(r) if r.status().is_success()) {
        bail!("POST /crash on port {port} was not accepted: {answer:?}");
    }
    let deadline = crashed + timeout;
    let mut died = false;
    loop {
        let now_port = endpoint.port().await;
        match now_port {
            Some(p) if echoes(http, p, "after").await => {
                if died {
                    return Ok((crashed.elapsed(), p));
                }
            }
            _ => died = true,
        }
        if Instant::now() > deadline {
            bail!("not echoing again {timeout:?} after a crash (port before {port}, now {now_port:?}, died: {died})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops (DELETE) every task at once; the time until their containers are gone.
async fn goat_stop_all(
    docker: &Docker,
    http: &reqwest::Client,
    url: &str,
    ids: &[String],
    args: &TasksBenchArgs,
) -> anyhow::Result<Duration> {
    let stopping = Instant::now();
    let stops = ids.iter().map(|id| async move {
        let response = http.delete(format!("{url}/v1/tasks/{id}")).send().await?;
        anyhow::ensure!(response.status().is_success(), "DELETE /v1/tasks/{id}: {}", response.status());
        Ok(())
    });
    for r in join_all(stops).await {
        r?;
    }
    let label = format!("goat.node={NODE}");
    let deadline = stopping + args.timeout.as_duration();
    loop {
        let left = labeled(docker, &label).await?.len();
        if left == 0 {
            let took = stopping.elapsed();
            eprintln!("goat: all containers removed {took:?} after the stop requests");
            return Ok(took);
        }
        if Instant::now() > deadline {
            bail!("{left} goat containers still there {:?} after stopping their tasks", args.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
}

// --------------------------------------------------------------------- swarm

/// Runs `docker ARGS` with a deadline; its stdout, or an error with stderr.
pub(super) async fn docker_cli(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("docker").args(args).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("docker {} timed out", args.join(" ")))?
    .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

/// A swarm for a benchmark: joined (`docker swarm init`) unless the engine
/// already is in one; on the way out it removes the benchmark's services and
/// leaves a swarm it made, whatever happened before (also on drop, if the
/// run was cut short). Used by `goat-bench tasks` and `goat-bench services`.
pub(super) struct SwarmGuard {
    leave: bool,
    done: bool,
    services: [&'static str; 2],
}

impl SwarmGuard {
    /// Joins a swarm for a benchmark whose Swarm services are `services`.
    pub(super) async fn join(services: [&'static str; 2]) -> anyhow::Result<SwarmGuard> {
        let state = docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await?;
        let leave = match state.trim() {
            "inactive" => {
                docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).await?;
                true
            }
            "active" => {
                eprintln!("swarm: this engine is already in a swarm: using it, not leaving it");
                false
            }
            other => bail!("the engine's swarm state is {other:?}: neither inactive nor active"),
        };
        Ok(SwarmGuard { leave, done: false, services })
    }

    fn cleanup_blocking(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("docker")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        let [a, b] = self.services;
        run(&["service", "rm", a, b]);
        if self.leave {
            run(&["swarm", "leave", "--force"]);
        }
    }

    /// Removes the services, waits for their containers to go (before
    /// leaving the swarm), then leaves a swarm this run made.
    pub(super) async fn cleanup(mut self) -> anyhow::Result<()> {
        self.done = true;
        let [a, b] = self.services;
        let _ = docker_cli(&["service", "rm", a, b]).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut result = Ok(());
        for service in self.services {
            if let Err(e) = wait_service_containers_gone(service, deadline).await {
                result = Err(e);
            }
        }
        if self.leave {
            docker_cli(&["swarm", "leave", "--force"]).await?;
        }
        result
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        self.cleanup_blocking();
    }
}

pub(super) async fn wait_service_containers_gone(service: &str, deadline: Instant) -> anyhow::Result<()> {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    loop {
        let left = docker_cli(&["ps", "-aq", "--filter", &filter]).await?;
        if left.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("containers of service {service} still there: {}", left.split_whitespace().count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn swarm_bench(http: &reqwest::Client, args: &TasksBenchArgs, result: &mut SystemResult) -> anyhow::Result<()> {
    let guard = SwarmGuard::join([SWARM_SERVICE, SWARM_CRASH_SERVICE]).await?;
    let measured = swarm_measure(http, args, result).await;
    let cleaned = guard.cleanup().await;
    measured.and(cleaned)
}

async fn swarm_measure(http: &reqwest::Client, args: &TasksBenchArgs, result: &mut SystemResult) -> anyhow::Result<()> {
    let _ = docker_cli(&["service", "rm", SWARM_SERVICE, SWARM_CRASH_SERVICE]).await;
    let pre = Instant::now() + Duration::from_secs(60);
    wait_service_containers_gone(SWARM_SERVICE, pre).await?;
    wait_service_containers_gone(SWARM_CRASH_SERVICE, pre).await?;

    let replicas = args.tasks.to_string();
    let cpu = args.cpu.to_string();
    let memory = format!("{}m", MEMORY >> 20);
    let mut start = StartResult::default();
    let started = Instant::now();
    let mut create = vec!["service", "create", "--detach", "--name", SWARM_SERVICE, "--replicas", &replicas];
    create.extend(["--no-resolve-image", swarm_cpu_flag(args), &cpu, "--limit-memory", &memory, &args.image]);
    docker_cli(&create).await?;
    start.phases.push(("service created (CLI returned)".into(), started.elapsed()));
    let deadline = started + args.timeout.as_duration();
    let mut last = usize::MAX;
    loop {
        let running = swarm_running(SWARM_SERVICE).await?.len();
        if running != last {
            last = running;
            eprintln!("swarm: {:?}: {running} running", started.elapsed());
        }
        if running >= args.tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!("swarm: {running}/{} replicas running after {:?}", args.tasks, args.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
    start.all_running = Some(started.elapsed());
    eprintln!("swarm: all {} running after {:?}", args.tasks, started.elapsed());
    let stopping = Instant::now();
    docker_cli(&["service", "rm", SWARM_SERVICE]).await?;
    wait_service_containers_gone(SWARM_SERVICE, stopping + args.timeout.as_duration()).await?;
    start.all_removed = Some(stopping.elapsed());
    result.start = Some(start);

    match swarm_crashes(http, args).await {
        Ok(crash) => result.crash = Some(crash),
        Err(e) => result.errors.push(format!("crash: {e:#}")),
    }
    Ok(())
}

/// The service's tasks that are running now, as (task id, image).
pub(super) async fn swarm_running_tasks(service: &str) -> anyhow::Result<Vec<(String, String)>> {
    let out = docker_cli(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.Image}} {{.CurrentState}}",
    ])
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut fields = l.splitn(3, ' ');
            let (id, image, state) = (fields.next()?, fields.next()?, fields.next()?);
            state.starts_with("Running").then(|| (id.to_string(), image.to_string()))
        })
        .collect())
}

/// Ids of the service's tasks that are running now.
pub(super) async fn swarm_running(service: &str) -> anyhow::Result<Vec<String>> {
    Ok(swarm_running_tasks(service).await?.into_iter().map(|(id, _)| id).collect())
}

/// One replica with a published port through the routing mesh; crash it and
/// time until the port echoes again. Falls back to `docker kill` + `docker
/// service ps` if the published port never echoes here.
async fn swarm_crashes(http: &reqwest::Client, args: &TasksBenchArgs) -> anyhow::Result<CrashResult> {
    // The routing mesh first; if it never answers here, the port published
    // in host mode (bound on the node by the engine, like Goat's ports).
    for (mode, publish) in [
        ("the routing mesh", format!("published={SWARM_CRASH_PORT},target={ECHO_PORT}")),
        ("host-mode publishing", format!("mode=host,published={SWARM_CRASH_PORT},target={ECHO_PORT}")),
    ] {
        create_crash_service(args, &publish).await?;
        let ready = Instant::now() + Duration::from_secs(30);
        let mut answers = true;
        while !echoes(http, SWARM_CRASH_PORT, "ready").await {
            if Instant::now() > ready {
                answers = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !answers {
            eprintln!("swarm: port {SWARM_CRASH_PORT} never echoed through {mode}");
            docker_cli(&["service", "rm", SWARM_CRASH_SERVICE]).await?;
            wait_service_containers_gone(SWARM_CRASH_SERVICE, Instant::now() + Duration::from_secs(60)).await?;
            continue;
        }
        let mut times = Vec::new();
        for k in 0..args.crashes {
            let endpoint = Endpoint::Fixed(SWARM_CRASH_PORT);
            let (took, _) = crash_and_wait(http, &endpoint, args.timeout.as_duration()).await?;
            eprintln!("swarm: crash {}: serving again after {took:?}", k + 1);
            times.push(took);
        }
        return Ok(CrashResult {
            method: format!(
                "POST /crash → POST / echoes again on published port {SWARM_CRASH_PORT} through {mode}; \
                 default restart policy: any, delay 5 s"
            ),
            times,
        });
    }
    create_crash_service(args, &format!("published={SWARM_CRASH_PORT},target={ECHO_PORT}")).await?;
    let mut times = Vec::new();
    eprintln!("swarm: measuring with docker kill + docker service ps instead");
    for k in 0..args.crashes {
        let ready = Instant::now() + args.timeout.as_duration();
        let before = loop {
            let running = swarm_running(SWARM_CRASH_SERVICE).await?;
            if !running.is_empty() {
                break running;
            }
            if Instant::now() > ready {
                bail!("swarm: the crash service has no running task after {:?}", args.timeout);
            }
            tokio::time::sleep(POLL).await;
        };
        let filter = format!("label=com.docker.swarm.service.name={SWARM_CRASH_SERVICE}");
        let container = docker_cli(&["ps", "-q", "--filter", &filter]).await?;
        let container = container.split_whitespace().next().context("no running container of the crash service")?;
        let killed = Instant::now();
        docker_cli(&["kill", container]).await?;
        let deadline = killed + args.timeout.as_duration();
        loop {
            let now = swarm_running(SWARM_CRASH_SERVICE).await?;
            if now.iter().any(|id| !before.contains(id)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("swarm: no new task running {:?} after docker kill", args.timeout);
            }
            tokio::time::sleep(POLL).await;
        }
        let took = killed.elapsed();
        eprintln!("swarm: kill {}: new task running after {took:?}", k + 1);
        times.push(took);
    }
    Ok(CrashResult {
        method: "docker kill → `docker service ps` shows a new task running (the published port did not answer here)"
            .into(),
        times,
    })
}

/// Swarm's counterpart of Goat's cpu: a reservation, or a hard limit.
fn swarm_cpu_flag(args: &TasksBenchArgs) -> &'static str {
    if args.cpu_hard_limit {
        "--limit-cpu"
    } else {
        "--reserve-cpu"
    }
}

async fn create_crash_service(args: &TasksBenchArgs, publish: &str) -> anyhow::Result<()> {
    let cpu = args.cpu.to_string();
    let memory = format!("{}m", MEMORY >> 20);
    docker_cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        SWARM_CRASH_SERVICE,
        "--replicas",
        "1",
        "--no-resolve-image",
        swarm_cpu_flag(args),
        &cpu,
        "--limit-memory",
        &memory,
        "--publish",
        publish,
        &args.image,
    ])
    .await
    .map(|_| ())
}

// -------------------------------------------------------------------- report

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(super) fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()),
        _ => "—".into(),
    }
}

fn report(results: &[SystemResult], args: &TasksBenchArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} echo containers at once on one engine ({}, cpu {} {}, memory {} MiB, host port chosen by \
         the worker; parallelism {MAX_IN_FLIGHT})\n",
        args.tasks,
        args.image,
        args.cpu,
        if args.cpu_hard_limit { "as a hard limit (CFS quota)" } else { "as CPU shares" },
        MEMORY >> 20
    );
    let raw = results.iter().find(|r| r.name == "raw engine").and_then(|r| r.start.as_ref());
    let raw_all = raw.and_then(|s| s.all_running);
    let raw_removed = raw.and_then(|s| s.all_removed);
    let _ = writeln!(out, "| system | first request → all running | vs raw | stop → all containers gone | vs raw |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for r in results {
        let Some(s) = &r.start else {
            let _ = writeln!(out, "| {} | failed | — | — | — |", r.name);
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.name,
            s.all_running.map(secs).unwrap_or_else(|| "—".into()),
            ratio(s.all_running, raw_all),
            s.all_removed.map(secs).unwrap_or_else(|| "—".into()),
            ratio(s.all_removed, raw_removed)
        );
    }
    let _ = writeln!(
        out,
        "\n\"Running\": raw engine = started and answering `GET /health` on its host port; goat = `running` and \
         `healthy` (health check every 500 ms); swarm = `docker service ps` shows the task `Running` (no health check)."
    );
    for r in results {
        if let Some(s) = r.start.as_ref().filter(|s| !s.phases.is_empty()) {
            let _ = writeln!(out, "\n{} milestones (from the first request):\n", r.name);
            let _ = writeln!(out, "| milestone | at |");
            let _ = writeln!(out, "|---|---:|");
            for (name, at) in &s.phases {
                let _ = writeln!(out, "| {name} | {} |", ms(*at));
            }
        }
    }
    let _ = writeln!(out, "\n### Crash → serving again ({} crashes)\n", args.crashes);
    let _ = writeln!(out, "| system | median | max | all | method |");
    let _ = writeln!(out, "|---|---:|---:|---|---|");
    for (name, c) in results.iter().flat_map(|r| [(r.name, &r.crash), (r.name, &r.crash_api)]) {
        let Some(c) = c else { continue };
        let all: Vec<String> = c.times.iter().map(|d| d.as_millis().to_string()).collect();
        let max = c.times.iter().max().copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ms | {} |",
            name,
            ms(median(&c.times)),
            ms(max),
            all.join(", "),
            c.method
        );
    }
    let errors: Vec<String> =
        results.iter().flat_map(|r| r.errors.iter().map(|e| format!("- {}: {e}", r.name))).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Errors\n\n{}", errors.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_spec_is_a_valid_task_spec() {
        let args = TasksBenchArgs {
            tasks: 50,
            crashes: 5,
            cpu: 0.01,
            cpu_hard_limit: false,
            image: "goat-echo:latest".into(),
            no_raw: false,
            no_swarm: false,
            timeout: Millis(120_000),
            dir: None,
            out: None,
        };
        let spec = echo_spec(&args, 3);
        assert_eq!(spec.name, "bench-echo-3");
        assert_eq!(spec.ports[0].host, None);
        assert_eq!(spec.health_check.map(|h| h.interval), Some(Millis(500)));
        assert_eq!(spec.restart_policy, goat_storage::model::RestartPolicy::default());
    }

    #[test]
    fn ratios_and_missing_figures() {
        let s = Duration::from_secs;
        assert_eq!(ratio(Some(s(3)), Some(s(2))), "1.50×");
        assert_eq!(ratio(None, Some(s(2))), "—");
        assert_eq!(ratio(Some(s(2)), Some(Duration::ZERO)), "—");
    }
}
