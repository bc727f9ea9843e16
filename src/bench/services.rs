//! `goat-bench services`: a replicated service on the real Docker engine,
//! Goat against Docker Swarm and against the engine driven directly, in
//! one run on one machine (one node each: three Goat managers and one
//! worker; a one-node swarm; the local engine).
//!
//! - **Create**: a service of `--replicas` echo copies, timed from the
//!   request until every copy runs (Goat: `healthy`, its health check every
//!   500 ms; Swarm: `docker service ps` shows them `Running`, no health
//!   check; raw: the same containers created and started through the
//!   Engine API with the worker's parallelism, each answering `GET
//!   /health`: the `goat-bench tasks` raw path).
//! - **Rolling update**: a service of `--update-replicas` copies moved to
//!   a second tag of the same image (`IMAGE` tagged `goat-echo:bench-v2`
//!   locally, no registry), `--max-parallel` copies at a time, timed from
//!   the request until every copy runs the new version (Goat: deployment
//!   `succeeded` with `min_healthy_time` 0, every copy of the new version
//!   healthy; Swarm: `docker service update --image ... --no-resolve-image
//!   --update-parallelism N --update-delay 0s` until `UpdateStatus` is
//!   `completed` and every running task has the new image; raw: stop and
//!   remove N containers, create and start their replacements, wait for
//!   their `/health`, next N: the engine's floor for a stop-first rolling
//!   update).
//!
//! Services, containers, the second tag and a swarm this run made are
//! removed on the way out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::query_parameters::{RemoveContainerOptions, StopContainerOptions};
use bollard::Docker;
use goat_storage::model::DeploymentState;
use goat_storage::Millis;
use goat_worker::agent::MAX_IN_FLIGHT;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::manager::services::ServiceView;

use super::tasks::{
    docker_cli, engine_and_api, goat_on_engine, labeled, ratio, raw_one, raw_start, remove_labeled, secs,
    swarm_running, swarm_running_tasks, wait_service_containers_gone, SwarmGuard, TasksBenchArgs, ECHO_PORT, MEMORY,
    RAW_LABEL,
};

#[derive(Debug, Clone, clap::Args)]
pub struct ServicesBenchArgs {
    /// Copies of the service created at once.
    #[arg(long, default_value_t = 50)]
    pub replicas: usize,
    /// Copies of the service updated to a new version.
    #[arg(long, default_value_t = 20)]
    pub update_replicas: usize,
    /// Copies replaced at a time during the update (Goat's
    /// `update.max_parallel`, Swarm's `--update-parallelism`).
    #[arg(long, default_value_t = 2)]
    pub max_parallel: usize,
    /// Cores reserved per copy (Goat: `cpu`; Swarm: `--reserve-cpu`; raw: CPU shares).
    #[arg(long, default_value_t = 0.01)]
    pub cpu: f64,
    /// The echo image (must exist locally: deploy/build-images.sh).
    #[arg(long, default_value = "goat-echo:latest")]
    pub image: String,
    /// Skip the raw engine baseline.
    #[arg(long)]
    pub no_raw: bool,
    /// Skip Docker Swarm.
    #[arg(long)]
    pub no_swarm: bool,
    /// Deadline of each step.
    #[arg(long, default_value = "180s", value_parser = Millis::parse)]
    pub timeout: Millis,
    /// Where the Goat processes keep their data and logs (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const NODE: &str = "bench-svc-worker";
const GOAT_SERVICE: &str = "bench-svc";
const GOAT_UPDATE_SERVICE: &str = "bench-svc-update";
const SWARM_SERVICE: &str = "goat-bench-svc";
const SWARM_UPDATE_SERVICE: &str = "goat-bench-svc-update";
/// The second tag of the echo image: the "new version" of the update.
const V2_TAG: &str = "goat-echo:bench-v2";
const POLL: Duration = Duration::from_millis(50);

/// What one system measured.
#[derive(Default)]
struct Figures {
    name: &'static str,
    /// Request → every copy running (healthy where the system checks).
    create: Option<Duration>,
    /// Update request → every copy on the new version.
    update: Option<Duration>,
    errors: Vec<String>,
}

impl Figures {
    fn new(name: &'static str) -> Figures {
        Figures { name, ..Figures::default() }
    }
}

pub async fn services_bench(args: ServicesBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.replicas > 0 && args.update_replicas > 0,
        "--replicas and --update-replicas must be at least 1"
    );
    anyhow::ensure!(args.max_parallel > 0, "--max-parallel must be at least 1");
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let (docker, http) = engine_and_api(&args.image).await?;
    docker_cli(&["tag", &args.image, V2_TAG]).await?;
    let load_before = super::stats::loadavg();

    let mut results = Vec::new();
    if !args.no_raw {
        let mut raw = Figures::new("raw engine");
        eprintln!("raw engine: {} containers", args.replicas);
        let tasks = tasks_args(&args, args.replicas);
        let mut no_crash = None;
        match raw_start(&docker, &http, &tasks, &mut no_crash, &mut raw.errors).await {
            Ok(start) => raw.create = start.all_running,
            Err(e) => raw.errors.push(format!("create: {e:#}")),
        }
        if let Err(e) = remove_labeled(&docker, RAW_LABEL, args.timeout.as_duration()).await {
            raw.errors.push(format!("cleanup: {e:#}"));
        }
        eprintln!("raw engine: rolling replacement of {} containers", args.update_replicas);
        match raw_update(&docker, &http, &args).await {
            Ok(took) => raw.update = Some(took),
            Err(e) => raw.errors.push(format!("update: {e:#}")),
        }
        if let Err(e) = remove_labeled(&docker, RAW_LABEL, args.timeout.as_duration()).await {
            raw.errors.push(format!("cleanup: {e:#}"));
        }
        results.push(raw);
    }

    let mut goat = Figures::new("goat");
    eprintln!("goat: three managers, one worker");
    if let Err(e) = goat_bench(&docker, &http, &args, &dir, &mut goat).await {
        goat.errors.push(format!("{e:#}"));
    }
    if let Err(e) = remove_labeled(&docker, &format!("goat.node={NODE}"), args.timeout.as_duration()).await {
        goat.errors.push(format!("cleanup: {e:#}"));
    }
    results.push(goat);

    if !args.no_swarm {
        let mut swarm = Figures::new("swarm");
        if let Err(e) = swarm_bench(&args, &mut swarm).await {
            swarm.errors.push(format!("{e:#}"));
        }
        results.push(swarm);
    }
    let _ = docker_cli(&["rmi", V2_TAG]).await;

    for r in &results {
        for e in &r.errors {
            eprintln!("{}: error: {e}", r.name);
        }
    }
    let report = report(&results, &args, &load_before, &super::stats::loadavg());
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The tasks bench's arguments for its raw path (no crashes).
fn tasks_args(args: &ServicesBenchArgs, n: usize) -> TasksBenchArgs {
    TasksBenchArgs {
        tasks: n,
        crashes: 0,
        cpu: args.cpu,
        cpu_hard_limit: false,
        image: args.image.clone(),
        no_raw: false,
        no_swarm: true,
        timeout: args.timeout,
        dir: None,
        out: None,
    }
}

// ---------------------------------------------------------------- raw engine

/// Starts `--update-replicas` raw containers (untimed), then replaces
/// them `--max-parallel` at a time (stop, remove, create, start, `/health`
/// answered) and times that.
async fn raw_update(docker: &Docker, http: &reqwest::Client, args: &ServicesBenchArgs) -> anyhow::Result<Duration> {
    let tasks = tasks_args(args, args.update_replicas);
    let deadline = Instant::now() + args.timeout.as_duration();
    let permits = tokio::sync::Semaphore::new(MAX_IN_FLIGHT);
    let ports = Mutex::new(BTreeSet::new());
    // The first version, untimed: the raw path of `goat-bench tasks`.
    let origin = Instant::now();
    let first = (0..args.update_replicas).map(|i| raw_one(docker, http, &tasks, i, origin, deadline, &permits, &ports));
    for r in futures::future::join_all(first).await {
        r?;
    }
    let started = Instant::now();
    let indexes: Vec<usize> = (0..args.update_replicas).collect();
    for batch in indexes.chunks(args.max_parallel) {
        let replace = batch.iter().map(|i| {
            let (tasks, permits, ports) = (&tasks, &permits, &ports);
            async move {
                let name = format!("goat-bench-raw-{i}");
                let _ = docker.stop_container(&name, Some(StopContainerOptions { t: Some(5), signal: None })).await;
                docker
                    .remove_container(&name, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                    .await
                    .with_context(|| format!("removing {name}"))?;
                raw_one(docker, http, tasks, *i, started, deadline, permits, ports).await
            }
        });
        for r in futures::future::join_all(replace).await {
            r?;
        }
    }
    let took = started.elapsed();
    eprintln!("raw engine: {} containers replaced after {took:?}", args.update_replicas);
    Ok(took)
}

// ---------------------------------------------------------------------- goat

/// The request body (a template has no `name`: the service names its
/// copies, so a `ServiceSpec`, whose template has one, is not the body).
fn goat_spec(args: &ServicesBenchArgs, name: &str, replicas: usize, image: &str) -> Value {
    json!({
        "name": name,
        "replicas": replicas,
        "template": {
            "image": image,
            "cpu": args.cpu,
            "memory": MEMORY,
            "ports": [{"container": ECHO_PORT}],
            "health_check": {"path": "/health", "port": ECHO_PORT, "interval": "500ms"},
        },
        "update": {"max_parallel": args.max_parallel, "min_healthy_time": "0s", "healthy_deadline": "60s"},
    })
}

async fn goat_bench(
    docker: &Docker,
    http: &reqwest::Client,
    args: &ServicesBenchArgs,
    dir: &Path,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let (_cluster, url, _worker, _) = goat_on_engine(docker, http, NODE, dir, args.timeout.as_duration()).await?;

    eprintln!("goat: a service of {} copies", args.replicas);
    let started = Instant::now();
    apply(http, &url, &goat_spec(args, GOAT_SERVICE, args.replicas, &args.image)).await?;
    wait_version_healthy(http, &url, GOAT_SERVICE, 1, args.replicas, started, args.timeout.as_duration()).await?;
    figures.create = Some(started.elapsed());
    eprintln!("goat: all {} healthy after {:?}", args.replicas, started.elapsed());
    delete(http, &url, GOAT_SERVICE, docker, args).await?;

    eprintln!("goat: a service of {} copies, then an update", args.update_replicas);
    let origin = Instant::now();
    apply(http, &url, &goat_spec(args, GOAT_UPDATE_SERVICE, args.update_replicas, &args.image)).await?;
    wait_version_healthy(http, &url, GOAT_UPDATE_SERVICE, 1, args.update_replicas, origin, args.timeout.as_duration())
        .await?;
    let started = Instant::now();
    let applied = apply(http, &url, &goat_spec(args, GOAT_UPDATE_SERVICE, args.update_replicas, V2_TAG)).await?;
    anyhow::ensure!(applied.current == 2, "the update made no version 2: {applied:?}");
    let deadline = started + args.timeout.as_duration();
    loop {
        let s = service(http, &url, GOAT_UPDATE_SERVICE).await?;
        let state = s.deployment.as_ref().map(|d| d.state);
        if state == Some(DeploymentState::Succeeded) && healthy_of(&s, 2) >= args.update_replicas as u64 {
            break;
        }
        if let Some(state @ (DeploymentState::Failed | DeploymentState::Reverting | DeploymentState::Reverted)) = state
        {
            bail!("the update {state:?}: {s:?}");
        }
        if Instant::now() > deadline {
            bail!("the update did not finish within {:?}: {s:?}", args.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
    figures.update = Some(started.elapsed());
    eprintln!("goat: {} copies updated after {:?}", args.update_replicas, started.elapsed());
    delete(http, &url, GOAT_UPDATE_SERVICE, docker, args).await
}

async fn apply(http: &reqwest::Client, url: &str, spec: &Value) -> anyhow::Result<ServiceView> {
    let response = http.post(format!("{url}/v1/services")).json(spec).send().await?;
    let status = response.status();
    let text = response.text().await.context("reading the service answer")?;
    anyhow::ensure!(status.is_success(), "POST /v1/services: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("the service answer is not a service: {text}"))
}

async fn service(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<ServiceView> {
    Ok(http.get(format!("{url}/v1/services/{name}")).send().await?.error_for_status()?.json().await?)
}

fn healthy_of(service: &ServiceView, version: u64) -> u64 {
    service.versions.iter().find(|v| v.version == version).map_or(0, |v| u64::from(v.healthy))
}

async fn wait_version_healthy(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    version: u64,
    want: usize,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut last = u64::MAX;
    loop {
        let s = service(http, url, name).await?;
        let healthy = healthy_of(&s, version);
        if healthy != last {
            last = healthy;
            eprintln!("goat: {:?}: {healthy} healthy", started.elapsed());
        }
        if healthy >= want as u64 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{name}: {healthy} of {want} healthy after {timeout:?}: {s:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes a service and waits until its containers are gone.
async fn delete(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    docker: &Docker,
    args: &ServicesBenchArgs,
) -> anyhow::Result<()> {
    let response = http.delete(format!("{url}/v1/services/{name}")).send().await?;
    anyhow::ensure!(response.status().is_success(), "DELETE /v1/services/{name}: {}", response.status());
    let deadline = Instant::now() + args.timeout.as_duration();
    loop {
        let left = labeled(docker, &format!("goat.node={NODE}")).await?.len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} containers of {name} still there after its deletion");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// --------------------------------------------------------------------- swarm

async fn swarm_bench(args: &ServicesBenchArgs, figures: &mut Figures) -> anyhow::Result<()> {
    let guard = SwarmGuard::join([SWARM_SERVICE, SWARM_UPDATE_SERVICE]).await?;
    let measured = swarm_measure(args, figures).await;
    let cleaned = guard.cleanup().await;
    measured.and(cleaned)
}

async fn swarm_create(args: &ServicesBenchArgs, name: &str, replicas: usize) -> anyhow::Result<()> {
    let (replicas, cpu, memory, parallel) =
        (replicas.to_string(), args.cpu.to_string(), format!("{}m", MEMORY >> 20), args.max_parallel.to_string());
    docker_cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--replicas",
        &replicas,
        "--no-resolve-image",
        "--reserve-cpu",
        &cpu,
        "--limit-memory",
        &memory,
        "--update-parallelism",
        &parallel,
        "--update-delay",
        "0s",
        &args.image,
    ])
    .await
    .map(|_| ())
}

async fn swarm_wait_running(name: &str, want: usize, started: Instant, timeout: Duration) -> anyhow::Result<()> {
    let mut last = usize::MAX;
    loop {
        let running = swarm_running(name).await?.len();
        if running != last {
            last = running;
            eprintln!("swarm: {:?}: {running} running", started.elapsed());
        }
        if running >= want {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("swarm: {running}/{want} replicas of {name} running after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn swarm_measure(args: &ServicesBenchArgs, figures: &mut Figures) -> anyhow::Result<()> {
    let _ = docker_cli(&["service", "rm", SWARM_SERVICE, SWARM_UPDATE_SERVICE]).await;
    let pre = Instant::now() + Duration::from_secs(60);
    wait_service_containers_gone(SWARM_SERVICE, pre).await?;
    wait_service_containers_gone(SWARM_UPDATE_SERVICE, pre).await?;
    let timeout = args.timeout.as_duration();

    eprintln!("swarm: a service of {} replicas", args.replicas);
    let started = Instant::now();
    swarm_create(args, SWARM_SERVICE, args.replicas).await?;
    swarm_wait_running(SWARM_SERVICE, args.replicas, started, timeout).await?;
    figures.create = Some(started.elapsed());
    eprintln!("swarm: all {} running after {:?}", args.replicas, started.elapsed());
    docker_cli(&["service", "rm", SWARM_SERVICE]).await?;
    wait_service_containers_gone(SWARM_SERVICE, Instant::now() + timeout).await?;

    eprintln!("swarm: a service of {} replicas, then an update", args.update_replicas);
    let origin = Instant::now();
    swarm_create(args, SWARM_UPDATE_SERVICE, args.update_replicas).await?;
    swarm_wait_running(SWARM_UPDATE_SERVICE, args.update_replicas, origin, timeout).await?;
    let started = Instant::now();
    docker_cli(&["service", "update", "--detach", "--image", V2_TAG, "--no-resolve-image", SWARM_UPDATE_SERVICE])
        .await?;
    loop {
        let state = docker_cli(&["service", "inspect", "--format", "{{.UpdateStatus.State}}", SWARM_UPDATE_SERVICE])
            .await
            .unwrap_or_default();
        let on_v2 = swarm_running_image(SWARM_UPDATE_SERVICE, V2_TAG).await?;
        if state.trim() == "completed" && on_v2 >= args.update_replicas {
            break;
        }
        if matches!(state.trim(), "paused" | "rollback_completed" | "rollback_paused") {
            bail!("swarm: the update is {}", state.trim());
        }
        if started.elapsed() > timeout {
            bail!("swarm: the update not completed after {timeout:?} ({}; {on_v2} on the new tag)", state.trim());
        }
        tokio::time::sleep(POLL).await;
    }
    figures.update = Some(started.elapsed());
    eprintln!("swarm: {} replicas updated after {:?}", args.update_replicas, started.elapsed());
    Ok(())
}

/// Running tasks of `service` whose image is `image`.
async fn swarm_running_image(service: &str, image: &str) -> anyhow::Result<usize> {
    Ok(swarm_running_tasks(service).await?.iter().filter(|(_, i)| i.starts_with(image)).count())
}

// -------------------------------------------------------------------- report

fn report(results: &[Figures], args: &ServicesBenchArgs, load_before: &str, load_after: &str) -> String {
    let mut out = String::new();
    let raw = results.iter().find(|r| r.name == "raw engine");
    let swarm = results.iter().find(|r| r.name == "swarm");
    let _ = writeln!(
        out,
        "### A service of {} echo copies, and a rolling update of {} copies ({} at a time), one node\n\n\
         load average before {load_before}, after {load_after}\n",
        args.replicas, args.update_replicas, args.max_parallel
    );
    let _ = writeln!(
        out,
        "| system | create {}: request → all running | vs raw | vs swarm | update {}: request → all on v2 | vs raw | vs swarm |",
        args.replicas, args.update_replicas
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let show = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "failed".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            show(r.create),
            ratio(r.create, raw.and_then(|x| x.create)),
            ratio(r.create, swarm.and_then(|x| x.create)),
            show(r.update),
            ratio(r.update, raw.and_then(|x| x.update)),
            ratio(r.update, swarm.and_then(|x| x.update)),
        );
    }
    let _ = writeln!(
        out,
        "\n\"Running\": raw = started and answering `GET /health`; goat = every copy `healthy` (health check every \
         500 ms; the update with `min_healthy_time` 0); swarm = `docker service ps` shows them `Running` (no health \
         check; the update: `UpdateStatus` `completed`, every running task on the new tag)."
    );
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

    fn args() -> ServicesBenchArgs {
        ServicesBenchArgs {
            replicas: 50,
            update_replicas: 20,
            max_parallel: 2,
            cpu: 0.01,
            image: "goat-echo:latest".into(),
            no_raw: false,
            no_swarm: false,
            timeout: Millis(180_000),
            dir: None,
            out: None,
        }
    }

    #[test]
    fn the_bench_service_is_a_valid_service_spec() {
        // Read as `POST /v1/services` reads it.
        let body = serde_json::to_vec(&goat_spec(&args(), GOAT_SERVICE, 50, V2_TAG)).expect("JSON");
        let spec = crate::manager::services::parse_spec(Ok(body.into())).expect("a service spec");
        assert_eq!(spec.replicas, 50);
        assert_eq!(spec.update.max_parallel, 2);
        assert_eq!(spec.update.min_healthy_time, Millis(0));
        assert_eq!(spec.template.image, V2_TAG);
        goat_storage::validate::validate_service(&spec).expect("valid");
    }

    #[test]
    fn the_report_has_ratios_against_raw_and_swarm() {
        let s = Duration::from_secs;
        let results = vec![
            Figures { name: "raw engine", create: Some(s(2)), update: Some(s(4)), errors: vec![] },
            Figures { name: "goat", create: Some(s(3)), update: Some(s(8)), errors: vec![] },
            Figures { name: "swarm", create: Some(s(6)), update: None, errors: vec!["paused".into()] },
        ];
        let text = report(&results, &args(), "1.0", "2.0");
        assert!(text.contains("| goat | 3.00 s | 1.50× | 0.50× | 8.00 s | 2.00× | — |"), "{text}");
        assert!(text.contains("| swarm | 6.00 s | 3.00× | 1.00× | failed |"), "{text}");
        assert!(text.contains("- swarm: paused"), "{text}");
    }
}
