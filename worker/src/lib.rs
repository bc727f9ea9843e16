//! The Goat worker: runs the tasks the leader places on this node, in Docker
//! containers, and reports on them.
//!
//! Layering, from the engine up:
//!
//! - [`runtime`]: the container engine behind a small trait (Docker via
//!   bollard; an in-memory fake in tests).
//! - [`restart`]: the restart policy, pure.
//! - [`health`]: health checks: pure counting plus the probing tasks.
//! - [`reconcile`]: the pure decision logic: assignments + observed
//!   containers + local records → engine actions and task reports.
//! - [`agent`]: the loops that observe, act and heartbeat: the
//!   [`agent::supervisor`] (containers), the [`agent::link`] to the managers
//!   (heartbeats, the assignments' long poll) and the host's
//!   [`agent::capacity`].
//!
//! The local on-disk state (restart records, last assignments) lives in
//! `goat_storage::worker_state`.

pub mod agent;
pub mod delta;
pub mod health;
pub mod reconcile;
pub mod restart;
pub mod runtime;

#[cfg(test)]
mod reconcile_tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use goat_storage::model::EngineStatus;
use goat_storage::worker_state::WorkerStore;
use goat_storage::Millis;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::agent::{HeartbeatConfig, Status, Supervisor};
use crate::runtime::{ContainerRuntime, DockerRuntime};

/// `goat worker` options.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// This node's name, unique in the cluster.
    #[arg(long, env = "GOAT_NODE_NAME")]
    pub name: String,
    /// Managers to heartbeat to, HOST:PORT,HOST:PORT,... (any of them will do).
    #[arg(long, env = "GOAT_MANAGERS", value_delimiter = ',', required = true)]
    pub managers: Vec<String>,
    /// Directory of the worker's local state.
    #[arg(long, env = "GOAT_DATA_DIR", default_value = "goat-worker-data")]
    pub data_dir: PathBuf,
    /// The cluster token (heartbeats and assignment polls need it).
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(flatten)]
    pub tls: goat_raft::tls::TlsArgs,
    /// Offer at most this many cores (default: all).
    #[arg(long, env = "GOAT_CPUS")]
    pub cpus: Option<f64>,
    /// Offer at most this much memory, in bytes or with a K/M/G suffix.
    #[arg(long, env = "GOAT_MEMORY", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Offer at most this much disk, in bytes or with a K/M/G suffix.
    #[arg(long, env = "GOAT_DISK", value_parser = parse_bytes)]
    pub disk: Option<u64>,
    /// The Docker engine's unix socket.
    #[arg(long, env = "GOAT_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
    /// The Docker network to start task containers on (default: the
    /// engine's default bridge). A worker that runs in a container needs its
    /// tasks on its own network to reach them for health checks.
    #[arg(long, env = "GOAT_TASK_NETWORK")]
    pub task_network: Option<String>,
    /// Heartbeat period until a manager says otherwise ("1s", "500ms").
    #[arg(long, env = "GOAT_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = Millis::parse)]
    pub heartbeat_interval: Millis,
    /// Self-fencing (off by default): stop and remove this node's containers
    /// once no manager has accepted a heartbeat for this long ("30s", "2m"),
    /// because the leader will have placed the tasks elsewhere by then. They
    /// run again when a manager answers and still assigns them here.
    #[arg(long, value_parser = Millis::parse)]
    pub stop_tasks_after_manager_loss: Option<Millis>,
    /// The address (host or IP) clients reach this node's published ports
    /// at, listed by `GET /v1/services/{name}/endpoints` (default: the local
    /// address this worker reaches its first manager from).
    #[arg(long, env = "GOAT_ADVERTISE")]
    pub advertise: Option<String>,
}

/// "512M", "2G", "1024" → bytes (binary multiples).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid size {text:?}: expected e.g. 512M, 2G, 1048576"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("invalid size unit in {text:?}: use K, M, G or T")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("size {text:?} is too large"))
}

/// A worker's settings, as [`run`] takes them (tests and the simulation
/// build one directly; the command line builds [`WorkerArgs`]). The fields
/// mean what the flags of the same names do.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    pub managers: Vec<String>,
    pub data_dir: PathBuf,
    pub token: String,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: goat_raft::tls::TlsArgs,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub disk: Option<u64>,
    pub docker_socket: String,
    pub task_network: Option<String>,
    pub heartbeat_interval: Millis,
    pub stop_tasks_after_manager_loss: Option<Millis>,
    pub advertise: Option<String>,
}

impl WorkerConfig {
    /// The defaults of `goat worker` for node `name` of `managers`.
    pub fn new(name: impl Into<String>, managers: Vec<String>, data_dir: PathBuf, token: impl Into<String>) -> Self {
        WorkerConfig {
            name: name.into(),
            managers,
            data_dir,
            token: token.into(),
            tls: goat_raft::tls::TlsArgs::default(),
            cpus: None,
            memory: None,
            disk: None,
            docker_socket: "/var/run/docker.sock".into(),
            task_network: None,
            heartbeat_interval: Millis(1_000),
            stop_tasks_after_manager_loss: None,
            advertise: None,
        }
    }
}

impl From<WorkerArgs> for WorkerConfig {
    fn from(a: WorkerArgs) -> WorkerConfig {
        WorkerConfig {
            name: a.name,
            managers: a.managers,
            data_dir: a.data_dir,
            token: a.token,
            tls: a.tls,
            cpus: a.cpus,
            memory: a.memory,
            disk: a.disk,
            docker_socket: a.docker_socket,
            task_network: a.task_network,
            heartbeat_interval: a.heartbeat_interval,
            stop_tasks_after_manager_loss: a.stop_tasks_after_manager_loss,
            advertise: a.advertise,
        }
    }
}

/// Runs the worker until `shutdown` completes (the binary passes
/// `shutdown_signal()`: SIGINT or SIGTERM). The containers keep running
/// when the worker stops; a restarted worker adopts them.
pub async fn run(args: WorkerConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(!args.name.is_empty(), "--name must not be empty");
    anyhow::ensure!(!args.managers.is_empty(), "--managers must list at least one manager");
    let span = tracing::info_span!("worker", node = %args.name);
    async move {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
        let store = WorkerStore::open(&args.data_dir)
            .with_context(|| format!("opening the worker state in {}", args.data_dir.display()))?;
        let capacity = agent::limit_capacity(agent::detect_capacity(&args.data_dir), args.cpus, args.memory, args.disk);
        tracing::info!(?capacity, managers = ?args.managers, socket = %args.docker_socket, "worker starting");

        // Until a manager answers, run what we were last told to run.
        let remembered = store.assignments().context("reading the remembered assignments")?;
        if let Some(list) = &remembered {
            tracing::info!(tasks = list.len(), "resuming the remembered assignments");
        }
        let (assign_tx, assign_rx) = watch::channel(remembered);
        // The first heartbeat already tells whether the engine answers.
        let runtime = Arc::new(DockerRuntime::new(&args.docker_socket).with_task_network(args.task_network.clone()));
        let engine = match runtime.ping().await {
            Ok(()) => EngineStatus { healthy: true, error: None },
            Err(error) => {
                tracing::warn!(%error, "container engine not reachable yet; will keep trying");
                EngineStatus { healthy: false, error: Some(error.to_string()) }
            }
        };
        let status = Arc::new(Mutex::new(Status::new(engine)));
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let supervisor =
            Supervisor::new(args.name.clone(), runtime.clone(), store.clone(), assign_rx, status.clone(), exit_rx)?
                .with_manager_loss_limit(args.stop_tasks_after_manager_loss.map(Millis::as_duration));
        let config = HeartbeatConfig {
            node: args.name.clone(),
            managers: args.managers.clone(),
            token: args.token.clone(),
            capacity,
            interval: args.heartbeat_interval.as_duration().max(Duration::from_millis(100)),
            tls: args.tls.load()?,
            // An empty --advertise (compose passes GOAT_ADVERTISE="" when it
            // has none to give) means the default.
            advertise: args
                .advertise
                .clone()
                .filter(|a| !a.trim().is_empty())
                .or_else(|| local_address_towards(&args.managers[0])),
        };
        let save = move |list: &[goat_storage::model::Assignment]| {
            if let Err(e) = store.set_assignments(list) {
                tracing::error!(error = %e, "could not persist the assignments");
            }
        };
        let watcher = tokio::spawn(agent::watch_exits(runtime.clone(), args.name.clone(), exit_tx).in_current_span());
        let heartbeat = tokio::spawn(agent::heartbeat_loop(config, status, save, assign_tx).in_current_span());
        let supervise = tokio::spawn(supervisor.run().in_current_span());

        shutdown.await;
        tracing::info!("worker stopping; containers keep running");
        watcher.abort();
        heartbeat.abort();
        supervise.abort();
        Ok(())
    }
    .instrument(span)
    .await
}

/// The local IP this host reaches `manager` (`HOST:PORT`, perhaps with a
/// scheme) from: what clients on the same network can reach it at. No
/// packet is sent (a UDP "connect" only picks the route).
fn local_address_towards(manager: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let hostport = manager.split("://").last().unwrap_or(manager).trim_end_matches('/');
    let target = hostport.to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Resolves on SIGINT or SIGTERM. Every long-running `goat` subcommand
/// (manager, worker, echo, dev) stops on it, so it lives in the lowest crate
/// that runs processes and the binary re-exports it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1k"), Ok(1024));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5X").is_err());
    }
}
