//! The manager: one member of the Raft group, serving the public API.
//!
//! A manager opens its sled database, starts its Raft node over it, joins or
//! bootstraps the cluster, runs the leader's control loops while (and only
//! while) it leads, and answers HTTP on one port: the public API under
//! `/v1`, Raft RPCs under `/raft`, and manager-to-manager calls under
//! `/internal`.
//!
//! - [`cluster`]: the write and read paths (propose, forward, read index).
//! - [`api`]: the public HTTP API (the route table).
//! - [`auth`]: tokens and roles, checked on every route.
//! - [`extract`]: what the handlers share (read options, relaying).
//! - [`config`]: a manager's settings.
//! - [`nodes`]: worker heartbeats, node liveness, assignments.
//! - [`assignments`]: the workers' long poll on their assignments.
//! - [`leader`]: the loops that run on the leader only.
//! - [`snapshot`]: backup and restore of the cluster state.
//! - [`events`]: the event stream (`GET /v1/events`, server-sent events).
//! - [`gc`]: collecting finished tasks after `--task-retention`, removing
//!   down nodes.
//! - [`openapi`]: the API's OpenAPI document.
//! - [`verify`]: state fingerprints, to prove the managers agree.
//! - [`headroom`]: would a node's tasks find a place if it died now.

pub mod api;
pub mod assignments;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod extract;
pub mod gc;
pub mod headroom;
pub mod json;
pub mod leader;
pub mod nodes;
pub mod openapi;
pub mod service_loop;
pub mod services;
pub mod snapshot;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use goat_raft::log_store::LogStore;
use goat_raft::network::Network;
use goat_raft::state_machine::StateMachine;
use goat_raft::{raft_config, Raft};
use goat_storage::engine::SledEngine;
use goat_storage::raft_log::RaftLog;
use goat_storage::state_store::StateStore;

pub use cluster::Manager;
pub use config::{parse_peers, ManagerArgs, ManagerConfig};

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

/// Runs a manager on `listener` until `shutdown` completes (the binary
/// passes `crate::shutdown_signal()`: SIGINT or SIGTERM).
pub async fn run(
    args: ManagerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = listener.local_addr().context("reading the listener's address")?;
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    if args.token.trim().is_empty() {
        bail!("a cluster token is required: --token or GOAT_TOKEN");
    }
    let peers = parse_peers(&args.peers)?;
    let advertise = args.advertise.clone().unwrap_or_else(|| listen.to_string());
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
    tracing::info!(id = args.id, %listen, tls = tls.is_some(), "manager started");
    let closing = manager.closing.clone();
    let shutdown = async move {
        shutdown.await;
        // Open event streams would hold the graceful shutdown forever, and
        // waiting long polls for up to their wait.
        closing.cancel();
    };
    serve(listener, app, tls, shutdown).await?;

    tracing::info!(id = args.id, "shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), raft.shutdown()).await;
    Ok(())
}
