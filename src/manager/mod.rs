//! The manager: one member of the Raft group, serving the public API.
//!
//! A manager opens its sled database, starts its Raft node over it, joins or
//! bootstraps the cluster, runs the leader's control loops while (and only
//! while) it leads, and answers HTTP on one port: the public API under
//! `/v1`, Raft RPCs under `/raft`, and manager-to-manager calls under
//! `/internal`.
//!
//! - [`cluster`]: the write and read paths (propose, forward, read index).
//! - [`api`]: the public HTTP API.
//! - [`auth`]: tokens and roles, checked on every route.
//! - [`nodes`]: worker heartbeats, node liveness, assignments.
//! - [`assignments`]: the workers' long poll on their assignments.
//! - [`leader`]: the loops that run on the leader only.
//! - [`snapshot`]: backup and restore of the cluster state.
//! - [`events`]: the event stream (`GET /v1/events`, server-sent events).
//! - [`openapi`]: the API's OpenAPI document.
//! - [`verify`]: state fingerprints, to prove the managers agree.

pub mod api;
pub mod assignments;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod events;
pub mod json;
pub mod leader;
pub mod nodes;
pub mod openapi;
pub mod snapshot;
pub mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use goat_raft::log_store::LogStore;
use goat_raft::network::Network;
use goat_raft::state_machine::StateMachine;
use goat_raft::{raft_config, NodeId, Raft};
use goat_storage::engine::SledEngine;
use goat_storage::model::Strategy;
use goat_storage::raft_log::RaftLog;
use goat_storage::state_store::StateStore;
use goat_storage::Millis;
use openraft::BasicNode;

pub use cluster::Manager;

/// `goat manager`: run one manager.
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerArgs {
    /// This manager's id in the Raft group (a positive integer).
    #[arg(long, env = "GOAT_ID")]
    pub id: NodeId,
    /// Address to listen on for the API and Raft.
    #[arg(long, env = "GOAT_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,
    /// Address other managers and workers use to reach this one (default:
    /// --listen).
    #[arg(long, env = "GOAT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the manager keeps its data.
    #[arg(long, env = "GOAT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The initial members: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (a
    /// single-manager cluster lists only itself). The lowest id bootstraps a
    /// new cluster; others wait to be contacted. Omit it to start a manager
    /// that will be added with `POST /v1/cluster/members`.
    #[arg(long, env = "GOAT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The cluster token: the bootstrap secret, with every right. Members
    /// and workers send it on every internal request.
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A previous cluster token, still accepted (never sent) while the
    /// cluster's processes are restarted one by one with a new --token.
    #[arg(long, env = "GOAT_PREVIOUS_TOKEN", hide_env_values = true)]
    pub previous_token: Option<String>,
    #[command(flatten)]
    pub tls: goat_raft::tls::TlsArgs,
    /// Take a snapshot (and purge the log behind it) every this many entries.
    #[arg(long, env = "GOAT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// How long a forwarded write or a read waits for a leader before 503.
    #[arg(long, env = "GOAT_LEADER_WAIT", default_value = "5s", value_parser = Millis::parse)]
    pub leader_wait: Millis,
    /// How to rank nodes for tasks that do not choose: bin-pack, spread or epvm.
    #[arg(long, env = "GOAT_SCHEDULER", default_value = "bin-pack", value_parser = parse_strategy)]
    pub scheduler: Strategy,
    /// A node that has not sent a heartbeat for this long is marked down.
    #[arg(long, env = "GOAT_NODE_DOWN_AFTER", default_value = "10s", value_parser = Millis::parse)]
    pub node_down_after: Millis,
    /// Raft heartbeat interval; also the time limit of one log replication
    /// round trip (follower's fsync included), so it must stay above that
    /// under load. Must be below --election-timeout.
    #[arg(long, env = "GOAT_RAFT_HEARTBEAT", default_value_t = Millis(goat_raft::HEARTBEAT_INTERVAL_MS), value_parser = Millis::parse)]
    pub raft_heartbeat: Millis,
    /// Shortest election timeout (randomized up to 1.5 times it).
    #[arg(long, env = "GOAT_ELECTION_TIMEOUT", default_value_t = Millis(goat_raft::ELECTION_TIMEOUT_MS), value_parser = Millis::parse)]
    pub election_timeout: Millis,
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests
/// finish: plain HTTP, or with `tls` HTTPS that requires a client
/// certificate signed by the cluster's CA (see `goat_raft::tls`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<goat_raft::tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP");
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.server);
    axum_server::from_tcp_rustls(listener.into_std().context("the listening socket")?, config)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .context("serving HTTPS")
}

/// Parses `--scheduler` with the same names as a task's `strategy`.
fn parse_strategy(name: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("unknown strategy {name:?}: use bin-pack, spread or epvm"))
}

/// Parses `--peers` entries `ID=HOST:PORT`.
pub fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<NodeId, BasicNode>> {
    let mut members = BTreeMap::new();
    for peer in peers.iter().filter(|p| !p.trim().is_empty()) {
        let (id, addr) = peer.split_once('=').with_context(|| format!("--peers entry {peer:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id.trim().parse().with_context(|| format!("--peers entry {peer:?}: id is not a number"))?;
        if id == 0 {
            bail!("--peers entry {peer:?}: ids start at 1");
        }
        if members.insert(id, BasicNode { addr: addr.trim().to_string() }).is_some() {
            bail!("--peers lists id {id} twice");
        }
    }
    Ok(members)
}

/// Runs a manager until SIGINT or SIGTERM.
pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    if args.token.trim().is_empty() {
        bail!("a cluster token is required: --token or GOAT_TOKEN");
    }
    let peers = parse_peers(&args.peers)?;
    let advertise = args.advertise.clone().unwrap_or_else(|| args.listen.to_string());
    if let Some(me) = peers.get(&args.id) {
        if me.addr != advertise {
            tracing::warn!(peers_addr = %me.addr, %advertise, "--peers gives this manager another address than it advertises");
        }
    }

    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let engine = Arc::new(
        SledEngine::open(&args.data_dir.join("raft"))
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let log_store = LogStore::new(RaftLog::new(engine.clone())).with_observer(crate::metrics::log_observer());
    let state_machine = StateMachine::open(StateStore::new(engine)).context("loading the state machine")?;
    let shared = state_machine.shared();

    let config = raft_config("goat", args.snapshot_every, args.raft_heartbeat.0, args.election_timeout.0);
    let config = Arc::new(config.validate().context("raft timing (--raft-heartbeat, --election-timeout)")?);
    let tls = args.tls.load()?;
    let network = Network::new(&args.token, tls.as_ref()).context("building the Raft client")?;
    let raft = Raft::new(args.id, config, network, log_store, state_machine).await.context("starting raft")?;

    let manager = Arc::new(Manager::new(args.id, raft.clone(), shared, &args, tls.as_ref())?);
    tokio::spawn(cluster::bootstrap(manager.clone(), peers));
    tokio::spawn(leader::supervise(manager.clone()));
    tokio::spawn(crate::metrics::follow(raft.clone(), manager.state.clone()));

    let cluster_tokens: Vec<String> = std::iter::once(args.token.clone()).chain(args.previous_token.clone()).collect();
    let app = api::router(manager.clone(), goat_raft::service::router(raft.clone(), &cluster_tokens));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(id = args.id, listen = %args.listen, tls = tls.is_some(), "manager started");
    let closing = manager.closing.clone();
    let shutdown = async move {
        crate::shutdown_signal().await;
        // Open event streams would hold the graceful shutdown forever, and
        // waiting long polls for up to their wait.
        closing.cancel();
    };
    serve(listener, app, tls, shutdown).await?;

    tracing::info!(id = args.id, "shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), raft.shutdown()).await;
    Ok(())
}
