//! `goat drill`: cause a real failure in a running deployment under a
//! steady load of client operations, measure what the cluster does about
//! it, and check the history of those operations for linearizability.
//!
//! A driver (`--driver`, see [`driver`]) causes the failures: `compose`
//! (the containers of deploy/up.sh, through the `docker` CLI), `procs` (the
//! processes `goat dev` starts, by their pids) or `ssh` (machines running
//! the systemd units, through `ssh HOST sudo systemctl ...` and `iptables`).
//! The load is tasks that can never be placed (1024 cores), so thousands of
//! them cost no containers, each submitted with an `Idempotency-Key` (its
//! task id is known before the answer), interleaved with reads of earlier
//! submissions and lists. Every operation is recorded (invoke and
//! completion time, outcome ok / failed / unknown) and the history is
//! checked against a model of the task API ([`crate::history`]); `--history
//! FILE` keeps it. Worker drills first place a few echo tasks (with health
//! checks) and watch them move, then count their running copies.
//!
//! Measured: time without a leader, time to the first accepted write
//! (probing the survivors like `goat-bench raft` does), acknowledged tasks
//! lost, tasks moved and how long that took, running copies per task after
//! convergence, what clients saw while a quorum was lost, and the managers'
//! state digests (`GET /v1/cluster/verify`). `--assert` turns figures into
//! pass/fail, `--junit FILE` writes them for CI ([`gate`]). The drill stops
//! the tasks it submitted before it exits.

mod driver;
pub use driver::compose_container;
pub mod gate;
pub mod probe;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use goat_storage::Millis;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

pub use driver::{Driver, DriverKind, Member, Proc, ProcsFile, SshHosts};
pub use report::{Checked, Report, Round};

use crate::client::{self, Answer, Client};
use crate::history::{self, seen_of_task, Call, Recorder, Seen};

/// After cutting a leader off, how long until its applied index must stop
/// moving (entries committed just before the cut are still being applied).
const ISOLATION_GRACE: Duration = Duration::from_millis(500);

/// The failures a drill can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL the leader, then start it again.
    KillLeader,
    /// SIGKILL a follower, then start it again.
    KillFollower,
    /// Cut the leader off the cluster network, then reconnect it.
    PartitionLeader,
    /// SIGSTOP the leader (`docker pause`) for `--hold`, then resume it:
    /// a process that freezes and comes back believing it still leads.
    PauseLeader,
    /// One-way cut: the leader's peers cannot reach it, it still reaches
    /// them; healed after `--hold`.
    AsymmetricPartition,
    /// SIGKILL the leader and a follower (quorum lost): what a client of the
    /// survivor sees; then start one (quorum back), then the other.
    KillTwoManagers,
    /// Restart every manager in turn (SIGTERM, start, wait until it is
    /// back), followers first, the leader last.
    RollingRestart,
    /// SIGKILL the busiest worker (its tasks keep running), then start it
    /// again.
    KillWorker,
    /// Cut the busiest worker off the cluster network, then reconnect it.
    PartitionWorker,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The failure to cause.
    pub scenario: Scenario,
    /// How failures are caused: `compose` (deploy/up.sh's containers),
    /// `procs` (`goat dev`'s processes, `--dev-dir`), `ssh` (machines with
    /// the systemd units, `--ssh-host`).
    #[arg(long, value_enum, default_value = "compose")]
    pub driver: DriverKind,
    /// The managers' API addresses (procs: read from the deployment file).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")]
    pub managers: Vec<String>,
    /// The deployment's compose project (`--driver compose`).
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = "goat")]
    pub project: String,
    /// `goat dev --data-dir DIR`'s directory (`--driver procs`): it holds
    /// `deployment.json` (pids, command lines, logs).
    #[arg(long, env = "GOAT_DEV_DIR")]
    pub dev_dir: Option<std::path::PathBuf>,
    /// `--driver ssh`: a manager's machine, ID=[USER@]HOST. Repeatable.
    #[arg(long = "ssh-host", value_parser = driver::parse_host_pair)]
    pub ssh_hosts: Vec<(String, String)>,
    /// `--driver ssh`: a worker's machine, NODE=[USER@]HOST. Repeatable.
    #[arg(long = "ssh-worker", value_parser = driver::parse_host_pair)]
    pub ssh_workers: Vec<(String, String)>,
    /// `--driver ssh`: extra ssh options, e.g. "-i ~/.ssh/drill -p 2222".
    #[arg(long, default_value = "")]
    pub ssh_options: String,
    /// `--driver ssh`: the managers' port on their machines.
    #[arg(long, default_value_t = 7101)]
    pub ssh_port: u16,
    /// The cluster token, or an admin token (procs: read from the
    /// deployment file; compose: deploy/up.sh prints it).
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Limits the report must meet, e.g. 'leaderless<1s,lost=0,copies<=1'
    /// (measures: leaderless, first_write, moved, unavailable, lost,
    /// copies, refused, linearizable, consistent, converged; with
    /// --probe-service: app_failed, app_gap, app_requests). Exit 1 if one
    /// fails.
    #[arg(long = "assert", value_parser = gate::parse_arg)]
    pub assertions: Option<gate::Assertions>,
    /// Write a JUnit XML report here (one testcase per scenario, history
    /// check and assertion).
    #[arg(long)]
    pub junit: Option<std::path::PathBuf>,
    /// Write the history of client operations here (JSON lines).
    #[arg(long)]
    pub history: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The application probe: follow this service's endpoints
    /// (`/v1/services/NAME/endpoints?wait=`) and send it echo requests
    /// (`POST /`, the body must come back) throughout the drill, each
    /// retried once on another copy; reports failed requests and the
    /// longest gap without an answer. A service of that name that does not
    /// exist is created (`--probe-replicas` copies of `--probe-image`) and
    /// removed afterwards; an existing one is left as it is.
    #[arg(long, value_name = "NAME")]
    pub probe_service: Option<String>,
    /// Copies of the service the probe creates.
    #[arg(long, default_value_t = 3)]
    pub probe_replicas: u32,
    /// The image of the service the probe creates: it must echo `POST /`
    /// on port 7777 and answer `GET /health` there (goat-echo does).
    #[arg(long, default_value = "goat-echo:latest")]
    pub probe_image: String,
    /// The probe's requests per second.
    #[arg(long, default_value_t = 50.0)]
    pub probe_rate: f64,
    /// kill-worker: also remove the containers the killed worker started
    /// (`docker rm -f`, label goat.node=NODE), as the loss of its machine
    /// would; by default they keep running, as after a crash of the agent
    /// alone.
    #[arg(long)]
    pub remove_containers: bool,
    /// The deployment's TLS files (deploy/up.sh prints them).
    #[command(flatten)]
    pub tls: goat_raft::tls::TlsArgs,
}

/// Runs the drill, prints its report, writes `--history` and `--junit`;
/// fails when a promise is broken or an assertion does not hold.
pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let recorder = Recorder::new();
    let outcome = drill_with(&args, &recorder).await;
    let operations = recorder.operations();
    if let Some(path) = &args.history {
        std::fs::write(path, history::to_json_lines(&operations))
            .with_context(|| format!("writing the history to {}", path.display()))?;
        eprintln!("history: {} operations written to {}", operations.len(), path.display());
    }
    let outcome = outcome.map(|mut report| {
        let checked = args.assertions.as_ref().map(|a| gate::evaluate(&report, &a.0)).unwrap_or_default();
        report.assertions = checked;
        report
    });
    let text = match &outcome {
        Ok(report) if args.json => serde_json::to_string_pretty(report)?,
        Ok(report) => render(report),
        Err(e) => format!("goat drill {}: {e:#}\n", scenario_name(args.scenario)),
    };
    if let Some(path) = &args.junit {
        let result = outcome.as_ref().map(Clone::clone).map_err(|e| format!("{e:#}"));
        let broken = result.as_ref().ok().and_then(Report::broken);
        let checked = result.as_ref().map(|r| r.assertions.clone()).unwrap_or_default();
        let cases =
            gate::cases(&scenario_name(args.scenario), started.elapsed().as_secs_f64(), &result, broken, &checked);
        let suite = format!("goat drill ({})", driver_name(args.driver));
        std::fs::write(path, gate::junit(&suite, &cases, &text))
            .with_context(|| format!("writing the JUnit report to {}", path.display()))?;
    }
    let report = outcome?;
    if args.json {
        println!("{text}");
    } else {
        print!("{text}");
    }
    if let Some(broken) = report.broken() {
        bail!("the drill found a broken promise: {broken}");
    }
    let failed: Vec<String> =
        report.assertions.iter().filter(|c| !c.passed).map(|c| format!("{} ({})", c.assertion, c.actual)).collect();
    if !failed.is_empty() {
        bail!("assertion failed: {}", failed.join("; "));
    }
    Ok(())
}

fn scenario_name(s: Scenario) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn driver_name(d: DriverKind) -> String {
    serde_json::to_value(d).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A deployment, reached through its APIs and a driver.
struct Deployment {
    driver: Driver,
    /// Every manager, each reached by its index ([`Deployment::on`]).
    client: Client,
    /// Manager id → API address.
    managers: BTreeMap<u64, String>,
    /// Manager id → its index in `client`.
    index: BTreeMap<u64, usize>,
    history: Recorder,
    /// This run's label on every task it submits.
    run: String,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// A create's or stop's outcome from its answer: 2xx happened, another
/// 4xx did not, 5xx or a timeout may have; a connection refused before
/// anything was sent did not.
fn write_outcome(answer: &Result<Answer, client::Error>) -> history::Outcome {
    match answer {
        Ok(a) if a.status.is_success() => history::Outcome::Ok,
        Ok(a) if a.status.is_client_error() => history::Outcome::Failed,
        Ok(_) => history::Outcome::Unknown,
        Err(client::Error::NotSent(_)) => history::Outcome::Failed,
        Err(_) => history::Outcome::Unknown,
    }
}

impl Deployment {
    async fn discover(args: &DrillArgs, history: Recorder) -> anyhow::Result<Deployment> {
        let driver = match args.driver {
            DriverKind::Compose => Driver::compose(&args.project),
            DriverKind::Procs => {
                let dir = args.dev_dir.as_deref().context(
                    "--driver procs needs --dev-dir DIR (or GOAT_DEV_DIR): the directory `goat dev --data-dir DIR` \
                     writes deployment.json to",
                )?;
                Driver::procs(dir)?
            }
            DriverKind::Ssh => {
                let mut hosts = SshHosts {
                    port: args.ssh_port,
                    options: args.ssh_options.split_whitespace().map(str::to_string).collect(),
                    ..SshHosts::default()
                };
                for (id, target) in &args.ssh_hosts {
                    let id: u64 = id.parse().with_context(|| format!("--ssh-host {id}=...: not a manager id"))?;
                    hosts.managers.insert(id, target.clone());
                }
                hosts.workers = args.ssh_workers.iter().cloned().collect();
                if hosts.managers.is_empty() {
                    bail!("--driver ssh needs --ssh-host ID=[USER@]HOST for every manager");
                }
                Driver::ssh(hosts)
            }
        };
        let addrs = driver.manager_addrs().unwrap_or_else(|| args.managers.clone());
        let token = args.token.clone().filter(|t| !t.is_empty()).or_else(|| driver.token());
        let tls = args.tls.load()?;
        let client = Client::builder(&addrs)
            .token(token)
            .tls(tls.as_ref())
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .build()?;
        let mut managers = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (i, addr) in addrs.iter().enumerate() {
            let health = client
                .get("/v1/health")
                .on(i)
                .json_answer::<client::HealthView>()
                .await
                .with_context(|| format!("no manager answers /v1/health at {addr}"))?;
            managers.insert(health.id, addr.clone());
            index.insert(health.id, i);
        }
        let ids: Vec<u64> = managers.keys().copied().collect();
        driver.check(&ids).await?;
        let run = format!("{:08x}", rand::random::<u32>());
        Ok(Deployment { driver, client, managers, index, history, run })
    }

    /// A request to manager `id` only.
    fn on(&self, id: u64, method: reqwest::Method, path: impl Into<String>) -> client::Request<'_> {
        self.client.request(method, path).on(self.index[&id])
    }

    async fn health(&self, id: u64, timeout: Duration) -> Option<client::HealthView> {
        self.client.health_of(self.index[&id], timeout).await.ok()
    }

    /// Waits until every manager in `among` names the same leader among
    /// them ([`Client::wait_leader`], each health asked within 500 ms).
    async fn wait_leader(&self, among: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let indices: Vec<usize> = among.iter().map(|id| self.index[id]).collect();
        Ok(self.client.wait_leader(&indices, Duration::from_millis(500), timeout).await?)
    }

    async fn verify(&self, id: u64, wait: Duration) -> anyhow::Result<Value> {
        let path = format!("/v1/cluster/verify?wait={}ms", wait.as_millis());
        Ok(self.on(id, reqwest::Method::GET, path).timeout(wait + Duration::from_secs(10)).json_answer().await?)
    }

    /// `POST /v1/tasks` with a fresh `Idempotency-Key`, recorded.
    async fn submit(&self, id: u64, spec: &Value, timeout: Duration, client: &str) -> (Option<u16>, Option<Value>) {
        let key = uuid::Uuid::new_v4().to_string();
        let task = crate::manager::api::task_id_for_key(&key).to_string();
        let pending = self.history.begin(&format!("{client}@manager{id}"), Call::Create { task });
        let answer = self
            .on(id, reqwest::Method::POST, "/v1/tasks")
            .idempotency_key(&key)
            .json(spec)
            .timeout(timeout)
            .send()
            .await;
        let result = match &answer {
            Ok(a) => (Some(a.status.as_u16()), serde_json::from_slice(&a.body).ok()),
            Err(_) => (None, None),
        };
        match write_outcome(&answer) {
            history::Outcome::Ok => pending.ok(),
            history::Outcome::Failed => pending.failed(),
            history::Outcome::Unknown => pending.unknown(),
        }
        result
    }

    /// `GET /v1/tasks/{task}` (linearizable), recorded.
    async fn read(&self, id: u64, task: &str, timeout: Duration, client: &str) -> Option<Seen> {
        let pending = self.history.begin(&format!("{client}@manager{id}"), Call::Read { task: task.to_string() });
        let sent = self.on(id, reqwest::Method::GET, format!("/v1/tasks/{task}")).timeout(timeout).send().await;
        let seen = match sent {
            Ok(a) if a.status == 404 => Some(Seen::Absent),
            Ok(a) if a.status == 200 => a.json::<Value>().ok().map(|t| seen_of_task(&t)),
            _ => None,
        };
        match seen {
            Some(s) => pending.saw(s),
            None => pending.unknown(),
        }
        seen
    }

    /// `GET /v1/tasks` (linearizable, or `stale`), recorded when
    /// linearizable; this run's tasks only.
    async fn list(&self, id: u64, timeout: Duration, client: &str) -> anyhow::Result<BTreeMap<String, Seen>> {
        let pending = self.history.begin(&format!("{client}@manager{id}"), Call::List);
        let answer = async {
            let tasks: Vec<Value> =
                self.on(id, reqwest::Method::GET, "/v1/tasks").timeout(timeout).json_answer().await?;
            Ok::<_, anyhow::Error>(tasks)
        }
        .await;
        match answer {
            Ok(tasks) => {
                let listed: BTreeMap<String, Seen> = tasks
                    .iter()
                    .filter(|t| t["spec"]["labels"]["drill"] == self.run.as_str())
                    .filter_map(|t| Some((t["id"].as_str()?.to_string(), seen_of_task(t))))
                    .collect();
                pending.listed(listed.clone());
                Ok(listed)
            }
            Err(e) => {
                pending.unknown();
                Err(e)
            }
        }
    }

    /// `DELETE /v1/tasks/{task}`, recorded.
    async fn stop(&self, id: u64, task: &str, client: &str) {
        let pending = self.history.begin(&format!("{client}@manager{id}"), Call::Stop { task: task.to_string() });
        let sent = self
            .on(id, reqwest::Method::DELETE, format!("/v1/tasks/{task}"))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match sent {
            Ok(a) if a.status == 404 => pending.saw(Seen::Absent),
            answer => match write_outcome(&answer) {
                history::Outcome::Ok => pending.saw(Seen::Stopped),
                history::Outcome::Failed => pending.failed(),
                history::Outcome::Unknown => pending.unknown(),
            },
        }
    }

    /// All tasks as one manager holds them (`?stale=true`), for placement
    /// watching.
    async fn tasks_stale(&self, id: u64) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .on(id, reqwest::Method::GET, "/v1/tasks?stale=true")
            .timeout(Duration::from_secs(30))
            .json_answer()
            .await?)
    }
}

/// One submission of the load.
#[derive(Debug, Clone)]
struct Sent {
    status: Option<u16>,
    task: Option<String>,
}

/// Steady operations, round-robin over the managers, until stopped: mostly
/// submissions, a read of an earlier submission every fourth tick, a list
/// every hundredth.
struct Load {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<Sent>>,
}

fn load_spec(run: &str) -> Value {
    json!({"name": "drill-load", "image": "goat-echo:latest", "cpu": 1024, "labels": {"drill": run}})
}

impl Load {
    fn start(deployment: Arc<Deployment>, rate: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 1000.0));
            let ids: Vec<u64> = deployment.managers.keys().copied().collect();
            let spec = load_spec(&deployment.run);
            let sent_ids: Arc<Mutex<Vec<String>>> = Arc::default();
            let mut requests = Vec::new();
            let mut tick = tokio::time::interval(period);
            let mut i = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = ids[i % ids.len()];
                i += 1;
                let deployment = deployment.clone();
                if i % 100 == 50 {
                    tokio::spawn(async move {
                        let _ = deployment.list(id, Duration::from_secs(15), "load").await;
                    });
                    continue;
                }
                if i % 4 == 3 {
                    let target = {
                        let s = sent_ids.lock();
                        (!s.is_empty()).then(|| s[rand::random::<usize>() % s.len()].clone())
                    };
                    if let Some(task) = target {
                        tokio::spawn(async move {
                            deployment.read(id, &task, Duration::from_secs(15), "load").await;
                        });
                        continue;
                    }
                }
                let spec = spec.clone();
                let sent_ids = sent_ids.clone();
                requests.push(tokio::spawn(async move {
                    let (status, body) = deployment.submit(id, &spec, Duration::from_secs(15), "load").await;
                    let task = body.as_ref().and_then(|b| b["id"].as_str()).map(str::to_string);
                    if let Some(task) = &task {
                        sent_ids.lock().push(task.clone());
                    }
                    Sent { status, task }
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

    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
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
/// (the probe's task ids are acknowledged writes too), watching from `from`
/// for up to `limit`.
async fn measure_failover(
    deployment: &Deployment,
    survivors: &[u64],
    victim: Option<u64>,
    from: Instant,
    limit: Duration,
) -> (Option<Instant>, Option<Instant>, Vec<String>) {
    let leaderless = async {
        loop {
            for id in survivors {
                if let Some(health) = deployment.health(*id, Duration::from_millis(200)).await {
                    let leader = health.leader;
                    if leader.is_some() && leader != victim {
                        return Some(Instant::now());
                    }
                }
            }
            if from.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let first_write = async {
        let spec = load_spec(&deployment.run);
        let mut i = 0usize;
        loop {
            let id = survivors[i % survivors.len()];
            i += 1;
            if let (Some(201), Some(body)) = deployment.submit(id, &spec, Duration::from_millis(200), "probe").await {
                return (Some(Instant::now()), body["id"].as_str().map(str::to_string));
            }
            if from.elapsed() > limit {
                return (None, None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (leaderless, (first_write, probe)) = tokio::join!(leaderless, first_write);
    (leaderless, first_write, probe.into_iter().collect())
}

/// The tasks a worker drill watches: echo tasks with a health check.
async fn place_echo_tasks(deployment: &Deployment, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let first = *deployment.managers.keys().next().context("no managers")?;
    for i in 0..n {
        let spec = json!({
            "name": format!("drill-echo-{i}"), "image": "goat-echo:latest", "cpu": 0.01, "memory": 16 << 20,
            "ports": [{"container": 7777}], "strategy": "spread", "labels": {"drill": deployment.run},
            "health_check": {"path": "/health", "port": 7777, "interval": "1s"}
        });
        match deployment.submit(first, &spec, Duration::from_secs(15), "echo").await {
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
            let Ok(tasks) = deployment.tasks_stale(*id).await else { continue };
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

/// Waits until every task has exactly one running copy (or time is up);
/// returns the most copies of one task seen at the end.
async fn wait_one_copy_each(deployment: &Deployment, ids: &[String], timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = deployment.driver.copies(ids).await?;
        let max = counts.values().copied().max().unwrap_or(0);
        if counts.values().all(|c| *c == 1) || Instant::now() > deadline {
            return Ok(max);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a leader partition must leave alone: the nodes' `down` events,
/// each echo task's generation and its running containers.
#[derive(Debug, Clone, Default, PartialEq)]
struct Untouched {
    down_events: BTreeSet<(String, u64)>,
    generations: BTreeMap<String, u64>,
    containers: BTreeMap<String, BTreeSet<String>>,
}

impl Untouched {
    async fn take(deployment: &Deployment, echo: &[String]) -> anyhow::Result<Untouched> {
        let mut out = Untouched::default();
        let first = *deployment.managers.keys().next().context("no managers")?;
        let nodes: Vec<Value> = deployment.on(first, reqwest::Method::GET, "/v1/nodes").json_answer().await?;
        for node in &nodes {
            let name = node["name"].as_str().unwrap_or_default();
            for event in node["events"].as_array().into_iter().flatten().filter(|e| e["status"] == "down") {
                out.down_events.insert((name.to_string(), event["index"].as_u64().unwrap_or_default()));
            }
        }
        for task in deployment.tasks_stale(first).await? {
            if let Some(id) = task["id"].as_str().filter(|id| echo.iter().any(|e| e == id)) {
                out.generations.insert(id.to_string(), task["generation"].as_u64().unwrap_or_default());
            }
        }
        for id in echo {
            let running =
                driver::docker(&["ps", "-q", "--no-trunc", "--filter", &format!("label=goat.task={id}")]).await?;
            out.containers.insert(id.clone(), running.lines().filter(|l| !l.is_empty()).map(str::to_string).collect());
        }
        Ok(out)
    }

    /// (nodes marked down, generations changed, tasks whose containers
    /// changed) from `self` (before) to `after`.
    fn changes(&self, after: &Untouched) -> (usize, usize, usize) {
        let down = after.down_events.difference(&self.down_events).count();
        let generations = self.generations.iter().filter(|(id, g)| after.generations.get(*id) != Some(g)).count();
        let containers = self.containers.iter().filter(|(id, c)| after.containers.get(*id) != Some(c)).count();
        (down, generations, containers)
    }
}

/// Stops the tasks (recorded), through every manager in turn.
async fn stop_tasks(deployment: &Deployment, ids: &[String]) {
    let managers: Vec<u64> = deployment.managers.keys().copied().collect();
    if managers.is_empty() {
        return;
    }
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, task)| deployment.stop(managers[i % managers.len()], task, "cleanup"))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2])
}

/// kill-leader, kill-follower, partition-leader, pause-leader: one member
/// fails, the others carry on; restored after `--hold`.
async fn manager_round(
    deployment: &Arc<Deployment>,
    args: &DrillArgs,
    probes: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let leader = deployment.wait_leader(&ids, Duration::from_secs(30)).await?;
    let victim = match args.scenario {
        Scenario::KillFollower => *ids.iter().find(|id| **id != leader).context("no follower")?,
        _ => leader,
    };
    let member = Member::Manager(victim);
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    let mut round = Round { victim: deployment.driver.label(&member), ..Round::default() };
    let driver = &deployment.driver;
    let limit = Duration::from_secs(30);

    let mut cut = None;
    let called = Instant::now();
    let lost_leader = (victim == leader).then_some(victim);
    let (t0, leader_at, write_at, probe) = match args.scenario {
        Scenario::PartitionLeader | Scenario::PauseLeader => {
            if args.scenario == Scenario::PauseLeader {
                driver.pause(&member).await?;
            } else {
                cut = Some(driver.cut(&member, false).await?);
            }
            // The cut happens somewhere inside the call: count from its
            // start (an upper bound on the times below).
            round.failure_call_ms = ms(called.elapsed());
            let (leader_at, write_at, probe) =
                measure_failover(deployment, &survivors, lost_leader, called, limit).await;
            (called, leader_at, write_at, probe)
        }
        _ => {
            // `docker kill` returns well after the process died (the engine
            // tears down networks and port mappings first: 0.3-3 s on a busy
            // machine). So watch while it runs: once the victim stops
            // answering, probe the survivors; count from the moment the
            // engine recorded the death (`State.FinishedAt`).
            let kill = async {
                let result = driver.kill(&member).await;
                (result, called.elapsed())
            };
            let watch = async {
                let silent = wait_silent(deployment, victim, called).await;
                let from = silent.unwrap_or_else(Instant::now);
                (silent, measure_failover(deployment, &survivors, lost_leader, from, limit).await)
            };
            let ((killed, kill_took), (silent, (leader_at, write_at, probe))) = tokio::join!(kill, watch);
            killed?;
            round.failure_call_ms = ms(kill_took);
            let died = match driver.died_at(&member).await {
                Some(at) => at,
                None => silent.unwrap_or(called),
            };
            (died, leader_at, write_at, probe)
        }
    };
    // A follower's loss leaves the leader in place: no leaderless time.
    round.leaderless_ms = leader_at.filter(|_| lost_leader.is_some()).map(|t| ms(t.saturating_duration_since(t0)));
    round.first_write_ms = write_at.map(|t| ms(t.saturating_duration_since(t0)));
    probes.extend(probe);

    match args.scenario {
        Scenario::PartitionLeader => {
            // The cut-off leader's own clients: it must not acknowledge.
            // However long the failover took to measure, its clients are
            // tried for two seconds at least.
            let hold_until =
                (t0 + args.hold.as_duration().max(Duration::from_secs(6))).max(Instant::now() + Duration::from_secs(2));
            let spec = load_spec(&deployment.run);
            // What was committed before the cut may still be applied just
            // after it: measure from half a second in.
            tokio::time::sleep((t0 + ISOLATION_GRACE).saturating_duration_since(Instant::now())).await;
            let start_index = deployment.health(victim, Duration::from_secs(1)).await.and_then(|h| h.last_applied);
            let mut highest = start_index;
            while Instant::now() < hold_until {
                let (status, body) = deployment.submit(victim, &spec, Duration::from_secs(8), "isolated").await;
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
                    highest = highest.max(health.last_applied);
                }
            }
            round.isolated_applied_delta = match (start_index, highest) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                (None, Some(b)) => Some(b),
                _ => None,
            };
            if let Some(cut) = cut {
                driver.heal(cut).await?;
            }
        }
        Scenario::PauseLeader => {
            let left = (t0 + args.hold.as_duration()).saturating_duration_since(Instant::now());
            tokio::time::sleep(left).await;
            let restoring = Instant::now();
            driver.resume(&member).await?;
            round.restore_call_ms = ms(restoring.elapsed());
        }
        _ => {
            let left = (t0 + args.hold.as_duration()).saturating_duration_since(Instant::now());
            tokio::time::sleep(left).await;
            let restoring = Instant::now();
            driver.start(&member).await?;
            round.restore_call_ms = ms(restoring.elapsed());
        }
    }
    Ok(round)
}

/// Counts one thing a client saw.
fn saw(round: &mut Round, what: String) {
    *round.client_saw.entry(what).or_default() += 1;
}

fn answer_text(status: Option<u16>) -> String {
    status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into())
}

/// asymmetric-partition: the leader's peers cannot open connections to it,
/// it still reaches them. Writes through the leader and through the
/// others are tried for `--hold` (at least 3 s), then the cut is healed.
async fn asymmetric_round(
    deployment: &Arc<Deployment>,
    args: &DrillArgs,
    probes: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let leader = deployment.wait_leader(&ids, Duration::from_secs(30)).await?;
    let member = Member::Manager(leader);
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let mut round = Round { victim: deployment.driver.label(&member), ..Round::default() };
    let called = Instant::now();
    let cut = deployment.driver.cut(&member, true).await?;
    round.failure_call_ms = ms(called.elapsed());
    let hold_until = called + args.hold.as_duration().max(Duration::from_secs(3));
    let spec = load_spec(&deployment.run);
    let mut i = 0usize;
    let mut new_leader = None;
    while Instant::now() < hold_until {
        let (target, role) =
            if i.is_multiple_of(2) { (leader, "leader") } else { (others[i / 2 % others.len()], "follower") };
        i += 1;
        let (status, body) = deployment.submit(target, &spec, Duration::from_secs(1), "one-way").await;
        if status == Some(201) {
            round.first_write_ms.get_or_insert(ms(called.elapsed()));
            probes.extend(body.as_ref().and_then(|b| b["id"].as_str()).map(str::to_string));
        }
        saw(&mut round, format!("write via {role}: {}", answer_text(status)));
        for id in &others {
            let known = deployment.health(*id, Duration::from_millis(300)).await.and_then(|h| h.leader);
            if known.is_some() && known != Some(leader) && new_leader.is_none() {
                new_leader = Some(Instant::now());
            }
        }
    }
    round.leaderless_ms = new_leader.map(|t| ms(t.saturating_duration_since(called)));
    let healing = Instant::now();
    deployment.driver.heal(cut).await?;
    round.restore_call_ms = ms(healing.elapsed());
    Ok(round)
}

/// kill-two-managers: the leader and a follower die; the survivor's clients
/// see writes refused (no quorum) and stale reads answered; one member is
/// started (quorum back: how long until a write is accepted), then the
/// other.
async fn quorum_round(
    deployment: &Arc<Deployment>,
    args: &DrillArgs,
    probes: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    if ids.len() < 3 {
        bail!("kill-two-managers needs three managers");
    }
    let leader = deployment.wait_leader(&ids, Duration::from_secs(30)).await?;
    let follower = *ids.iter().find(|id| **id != leader).context("no follower")?;
    let survivor = *ids.iter().find(|id| **id != leader && **id != follower).context("no survivor")?;
    let driver = &deployment.driver;
    let victims = [Member::Manager(leader), Member::Manager(follower)];
    let mut round =
        Round { victim: victims.iter().map(|m| driver.label(m)).collect::<Vec<_>>().join("+"), ..Round::default() };
    let called = Instant::now();
    let (a, b) = tokio::join!(driver.kill(&victims[0]), driver.kill(&victims[1]));
    a?;
    b?;
    round.failure_call_ms = ms(called.elapsed());
    let t0 = Instant::now();
    // What a client of the survivor sees meanwhile.
    let hold_until = t0 + args.hold.as_duration().max(Duration::from_secs(6));
    let spec = load_spec(&deployment.run);
    while Instant::now() < hold_until {
        // Long enough for the survivor's own answer (a 503 once it gives up
        // waiting for a leader, `--leader-wait`, 5 s by default).
        let (status, body) = deployment.submit(survivor, &spec, Duration::from_secs(10), "no-quorum").await;
        if status == Some(201) {
            probes.extend(body.as_ref().and_then(|b| b["id"].as_str()).map(str::to_string));
        }
        saw(&mut round, format!("write: {}", answer_text(status)));
        let stale = deployment
            .on(survivor, reqwest::Method::GET, "/v1/tasks?stale=true&state=completed")
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        saw(&mut round, format!("stale read: {}", answer_text(stale.ok().map(|a| a.status.as_u16()))));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One back: a quorum again.
    let restoring = Instant::now();
    driver.start(&victims[1]).await?;
    round.restore_call_ms = ms(restoring.elapsed());
    let pair = [survivor, follower];
    // A survivor may still name the dead leader: wait for another one.
    let (leader_at, write_at, probe) =
        measure_failover(deployment, &pair, Some(leader), restoring, Duration::from_secs(60)).await;
    probes.extend(probe);
    round.leaderless_ms = leader_at.map(|t| ms(t.saturating_duration_since(t0)));
    round.first_write_ms = write_at.map(|t| ms(t.saturating_duration_since(restoring)));
    round.unavailable_ms = write_at.map(|t| ms(t.saturating_duration_since(t0)));
    driver.start(&victims[0]).await?;
    Ok(round)
}

/// rolling-restart: each manager in turn, followers first: a clean stop,
/// a start, and back in the group (it answers, one leader agreed by all)
/// before the next. One round per manager.
async fn rolling_round(deployment: &Arc<Deployment>, probes: &mut Vec<String>) -> anyhow::Result<Vec<Round>> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let leader = deployment.wait_leader(&ids, Duration::from_secs(30)).await?;
    let mut order: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    order.push(leader);
    let mut rounds = Vec::new();
    for victim in order {
        let member = Member::Manager(victim);
        let current = deployment.wait_leader(&ids, Duration::from_secs(60)).await?;
        let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
        let mut round = Round { victim: deployment.driver.label(&member), ..Round::default() };
        let called = Instant::now();
        let lost_leader = (victim == current).then_some(victim);
        let stop = deployment.driver.stop(&member);
        let watch = measure_failover(deployment, &survivors, lost_leader, called, Duration::from_secs(30));
        let (stopped, (leader_at, write_at, probe)) = tokio::join!(stop, watch);
        stopped?;
        round.failure_call_ms = ms(called.elapsed());
        round.leaderless_ms =
            leader_at.filter(|_| lost_leader.is_some()).map(|t| ms(t.saturating_duration_since(called)));
        round.first_write_ms = write_at.map(|t| ms(t.saturating_duration_since(called)));
        probes.extend(probe);
        let restoring = Instant::now();
        deployment.driver.start(&member).await?;
        round.restore_call_ms = ms(restoring.elapsed());
        // Back: it answers and agrees with the others on the leader.
        deployment.wait_leader(&ids, Duration::from_secs(60)).await?;
        round.unavailable_ms = Some(ms(called.elapsed()));
        rounds.push(round);
    }
    Ok(rounds)
}

async fn worker_round(deployment: &Arc<Deployment>, args: &DrillArgs, echo: &[String]) -> anyhow::Result<Round> {
    let placed = wait_running(deployment, echo, None, Duration::from_secs(60)).await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let (node, count) =
        per_node.iter().max_by_key(|(_, c)| **c).map(|(n, c)| (n.to_string(), *c)).context("no tasks")?;
    let driver = &deployment.driver;
    let member = driver.worker(&node)?;
    let mut round = Round { victim: driver.label(&member), tasks_to_move: count, ..Round::default() };

    let called = Instant::now();
    let cut = match args.scenario {
        Scenario::PartitionWorker => Some(driver.cut(&member, false).await?),
        _ => {
            driver.kill(&member).await?;
            if args.remove_containers {
                let removed = driver.remove_task_containers(&node).await?;
                eprintln!("{}: killed, {removed} of its containers removed", round.victim);
            }
            None
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
    match cut {
        Some(cut) => driver.heal(cut).await?,
        None => driver.start(&member).await?,
    }
    moved?;
    Ok(round)
}

/// Runs the drill's rounds and checks the promises afterwards (the history
/// goes to a fresh recorder).
pub async fn drill(args: &DrillArgs) -> anyhow::Result<Report> {
    drill_with(args, &Recorder::new()).await
}

async fn drill_with(args: &DrillArgs, recorder: &Recorder) -> anyhow::Result<Report> {
    let deployment = Arc::new(Deployment::discover(args, recorder.clone()).await?);
    let mut created = None;
    let probe = match &args.probe_service {
        Some(name) => match probed_service(&deployment, args, name, &mut created).await {
            Ok(()) => Some(probe::Probe::start(deployment.client.clone(), name, args.probe_rate)),
            Err(e) => {
                remove_service(&deployment, created.as_deref()).await;
                return Err(e);
            }
        },
        None => None,
    };
    let result = rounds(&deployment, args, probe).await;
    // Whatever happened: no rule, pause or stopped member left behind.
    deployment.driver.cleanup().await;
    remove_service(&deployment, created.as_deref()).await;
    result
}

/// The probe's service: an existing one, or one created now (`created`
/// names it, to remove it afterwards); waits until its current version has
/// every copy healthy.
async fn probed_service(
    deployment: &Deployment,
    args: &DrillArgs,
    name: &str,
    created: &mut Option<String>,
) -> anyhow::Result<()> {
    let client = &deployment.client;
    let path = format!("/v1/services/{name}");
    match client.get(&path).json_answer::<Value>().await {
        Ok(_) => eprintln!("probe: service {name} exists: probing it as it is"),
        Err(e) if e.is_not_found() => {
            let spec = json!({
                "name": name,
                "replicas": args.probe_replicas,
                "template": {
                    "image": args.probe_image, "cpu": 0.01, "memory": 32 << 20,
                    "ports": [{"container": 7777}], "labels": {"drill": deployment.run},
                    "health_check": {"path": "/health", "port": 7777, "interval": "1s"}
                }
            });
            client
                .post("/v1/services")
                .json(&spec)
                .json_answer::<Value>()
                .await
                .with_context(|| format!("creating the probe's service {name}"))?;
            *created = Some(name.to_string());
            eprintln!("probe: created service {name} ({} copies of {})", args.probe_replicas, args.probe_image);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading service {name}"))),
    }
    let deadline = Instant::now() + args.settle.as_duration();
    loop {
        let service: Value = client.get(&path).json_answer().await?;
        let current = &service["current"];
        let healthy = service["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| &v["version"] == current)
            .and_then(|v| v["healthy"].as_u64())
            .unwrap_or(0);
        let replicas = service["replicas"].as_u64().unwrap_or(0);
        if replicas > 0 && healthy >= replicas {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "service {name}: {healthy} of {replicas} copies healthy after {:?}{}",
                args.settle.as_duration(),
                service["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `DELETE /v1/services/{name}` of the service the probe created.
async fn remove_service(deployment: &Deployment, name: Option<&str>) {
    let Some(name) = name else { return };
    let path = format!("/v1/services/{name}");
    if let Err(e) = deployment.client.delete(path).timeout(Duration::from_secs(30)).send().await {
        eprintln!("goat drill: removing the probe's service {name}: {e}");
    }
}

async fn rounds(deployment: &Arc<Deployment>, args: &DrillArgs, probe: Option<probe::Probe>) -> anyhow::Result<Report> {
    let ids: Vec<u64> = deployment.managers.keys().copied().collect();
    let worker_drill = matches!(args.scenario, Scenario::KillWorker | Scenario::PartitionWorker);
    // A leader partition must not touch the workers' tasks: watch a few.
    let watch_tasks = worker_drill || args.scenario == Scenario::PartitionLeader;
    let echo = if watch_tasks { place_echo_tasks(deployment, args.tasks).await? } else { Vec::new() };

    let mut report =
        Report { scenario: scenario_name(args.scenario), driver: driver_name(args.driver), ..Report::default() };
    let mut acknowledged = Vec::new();
    let mut max_copies = None;
    for round_no in 0..args.repeat.max(1) {
        let before = match args.scenario {
            Scenario::PartitionLeader => Some(Untouched::take(deployment, &echo).await?),
            _ => None,
        };
        let load = Load::start(deployment.clone(), args.rate);
        let mut probes = Vec::new();
        let rounds = match args.scenario {
            Scenario::KillWorker | Scenario::PartitionWorker => {
                worker_round(deployment, args, &echo).await.map(|r| vec![r])
            }
            Scenario::AsymmetricPartition => asymmetric_round(deployment, args, &mut probes).await.map(|r| vec![r]),
            Scenario::KillTwoManagers => quorum_round(deployment, args, &mut probes).await.map(|r| vec![r]),
            Scenario::RollingRestart => rolling_round(deployment, &mut probes).await,
            _ => manager_round(deployment, args, &mut probes).await.map(|r| vec![r]),
        };
        let converging = Instant::now();
        // Convergence: one leader all agree on, every manager at one state.
        let leader = deployment.wait_leader(&ids, args.settle.as_duration()).await;
        let converged_after = converging.elapsed();
        let outcomes = load.finish().await;
        let mut rounds = rounds?;
        let leader = leader?;
        if let Some(before) = &before {
            // Whatever the old leader decided while cut off would be
            // committed by now and acted on by the workers (placed again,
            // new containers) within a few heartbeats: look after those.
            deployment.verify(leader, args.settle.as_duration()).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = Untouched::take(deployment, &echo).await?;
            let (down, generations, containers) = before.changes(&after);
            for round in &mut rounds {
                round.nodes_marked_down = Some(down);
                round.generations_changed = Some(generations);
                round.containers_restarted = Some(containers);
            }
        }
        if watch_tasks {
            let copies = wait_one_copy_each(deployment, &echo, args.settle.as_duration()).await?;
            max_copies = Some(max_copies.unwrap_or(0).max(copies));
        }
        for round in &rounds {
            eprintln!(
                "round {}: {} leaderless {:?} ms, first write {:?} ms, moved {:?} ms; failure call {} ms, restore call {} ms, agreed leader {:?} after that",
                round_no + 1,
                round.victim,
                round.leaderless_ms,
                round.first_write_ms,
                round.moved_ms,
                round.failure_call_ms,
                round.restore_call_ms,
                converged_after
            );
        }
        report.submitted += outcomes.len();
        for outcome in &outcomes {
            match (outcome.status, &outcome.task) {
                (Some(201), Some(task)) => acknowledged.push(task.clone()),
                (Some(status), _) => *report.refused.entry(status.to_string()).or_default() += 1,
                (None, _) => *report.refused.entry("no answer".into()).or_default() += 1,
            }
        }
        acknowledged.extend(probes);
        report.rounds.extend(rounds);
    }
    report.acknowledged = acknowledged.len();
    report.max_copies = max_copies;
    // The application's figures run until every round converged.
    if let Some(probe) = probe {
        report.app = Some(probe.finish().await);
    }

    let verdict = deployment.verify(ids[0], args.settle.as_duration()).await?;
    report.consistent = verdict["consistent"].as_bool().unwrap_or(false);
    report.converged = verdict["converged"].as_bool().unwrap_or(false);
    let first = &verdict["managers"][0]["state"];
    report.applied_index = first["applied_index"].as_u64();
    report.digest = first["digest"].as_str().map(str::to_string);
    report.leader = first["leader"].as_u64();

    // Every acknowledged task, on every manager: a linearizable list
    // through each (recorded: the history check sees them too).
    let wanted: BTreeSet<&str> = acknowledged.iter().map(String::as_str).collect();
    let mut lost = BTreeSet::new();
    for id in &ids {
        let held = deployment.list(*id, Duration::from_secs(60), "final").await?;
        lost.extend(wanted.iter().filter(|t| !held.contains_key(**t)).map(|s| s.to_string()));
    }
    report.acknowledged_lost = lost.len();

    let firsts: Vec<f64> = report.rounds.iter().filter_map(|r| r.first_write_ms).collect();
    let gaps: Vec<f64> = report.rounds.iter().filter_map(|r| r.leaderless_ms).collect();
    report.first_write_median_ms = median(&firsts);
    report.first_write_max_ms = firsts.iter().copied().reduce(f64::max);
    report.leaderless_median_ms = median(&gaps);
    report.leaderless_max_ms = gaps.iter().copied().reduce(f64::max);

    // Leave the deployment as it was: stop what the drill submitted (every
    // create it sent, answered or not), then read the result once more.
    let mut sent: Vec<String> = deployment
        .history
        .operations()
        .iter()
        .filter_map(|op| match &op.call {
            Call::Create { task } if op.outcome != history::Outcome::Failed => Some(task.clone()),
            _ => None,
        })
        .collect();
    sent.sort();
    sent.dedup();
    stop_tasks(deployment, &sent).await;
    let _ = deployment.list(ids[0], Duration::from_secs(60), "final").await;

    let check = history::check(&deployment.history.operations());
    eprintln!("{}", check.summary());
    report.history = Some(check);
    Ok(report)
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "-".into())
}

/// The report for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "goat drill {} ({}): {} round(s)", r.scenario, r.driver, r.rounds.len());
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
        if round.unavailable_ms.is_some() {
            let _ = write!(out, ", writes unavailable {}", opt(round.unavailable_ms));
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
        if let (Some(down), Some(moved), Some(restarted)) =
            (round.nodes_marked_down, round.generations_changed, round.containers_restarted)
        {
            let _ = write!(out, "; afterwards {down} node(s) marked down, {moved} task(s) placed again, {restarted} container(s) replaced");
        }
        let _ = writeln!(out, " [failure call {:.0} ms]", round.failure_call_ms);
        if !round.client_saw.is_empty() {
            let seen: Vec<String> = round.client_saw.iter().map(|(k, v)| format!("{v}× {k}")).collect();
            let _ = writeln!(out, "      clients saw: {}", seen.join(", "));
        }
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
    if let Some(app) = &r.app {
        let _ = writeln!(
            out,
            "application {}: {} requests, {} failed after one retry ({} retried), longest gap without an answer {:.0} ms; endpoints changed {} time(s), at least {} listed",
            app.service,
            app.requests,
            app.failed,
            app.retried,
            app.longest_gap_ms,
            app.endpoint_changes,
            app.min_endpoints.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
        );
        for failure in &app.failures {
            let _ = writeln!(out, "      failed: {failure}");
        }
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
    if let Some(h) = &r.history {
        let _ = writeln!(out, "{}", h.summary());
    }
    for c in &r.assertions {
        let _ = writeln!(out, "assert {}: {} ({})", c.assertion, if c.passed { "ok" } else { "FAILED" }, c.actual);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!text.contains("history:"), "no history, no line: {text}");
        assert!(text.contains("first write   310 ms"), "{text}");
        assert!(text.contains("consistent, not converged"), "{text}");
        assert!(text.contains("10 acknowledged, 0 lost"), "{text}");
    }
}
