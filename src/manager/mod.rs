//! The manager: one member of the Raft group, serving the public API.
//!
//! A manager opens its sled database, starts its Raft node over it, joins or
//! bootstraps the cluster, runs the leader's control loops while (and only
//! while) it leads, and answers HTTP on one port: the public API under
//! `/v1`, Raft RPCs under `/raft`, and manager-to-manager calls under
//! `/internal`.
//!
//! - [`cluster`]: the write and read paths (propose, forward, read index).
//! - [`api`]: the route table (public and internal) and the router; it
//!   imports the handlers, no handler imports it.
//! - [`tasks`], [`members`], [`nodes`], [`assignments`], [`events`],
//!   [`snapshot`], [`gc`], [`auth`] (tokens), [`verify`], [`headroom`]:
//!   one file per resource.
//! - [`internal`]: the managers' internal routes.
//! - [`auth`]: tokens and roles, checked on every route.
//! - [`extract`]: what the handlers share (read options, relaying).
//! - [`config`]: a manager's settings.
//! - [`nodes`]: worker heartbeats, node liveness, assignments.
//! - [`assignments`]: the workers' long poll on their assignments.
//! - [`leader`]: the loops that run on the leader only.
//! - [`transfer`]: handing leadership over on purpose (API, SIGTERM).
//! - [`snapshot`]: backup and restore of the cluster state.
//! - [`events`]: the event stream (`GET /v1/events`, server-sent events).
//! - [`gc`]: collecting finished tasks after `--task-retention`, removing
//!   down nodes.
//! - [`openapi`]: the API's OpenAPI document, generated; [`params`]: the
//!   path and query parameters it states.
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
pub mod internal;
pub mod json;
pub mod leader;
pub mod members;
pub mod nodes;
pub mod openapi;
pub mod params;
pub mod service_loop;
pub mod services;
pub mod snapshot;
pub mod tasks;
pub mod transfer;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use goat_raft::log_store::LogStore;
use goat_raft::network::Network;
use goat_raft::state_machine::StateMachine;
use goat_raft::Raft;
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

/// The Raft runtime, let go in the background when dropped (dropping a
/// runtime from async code, as `run` is, would panic), on every path out.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the runtime lives until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
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

    let timing = args.timing();
    timing.validate().map_err(anyhow::Error::msg).context("raft timing")?;
    // Not through openraft's `validate`: see `Timing::config`.
    let config = Arc::new(timing.config("goat", args.snapshot_every));
    let tls = args.tls.load()?;
    let network = Network::new(&args.token, tls.as_ref()).context("building the Raft client")?;
    // Raft (openraft's core, replication, state-machine worker, and Goat's
    // timers) runs on a runtime of its own: a handler or leader loop that
    // keeps the main runtime's threads busy (a placement round over 100,000
    // tasks, a burst of heartbeats) must not delay the leader's heartbeats
    // past the followers' election timeout. Its threads compete with the
    // main ones for the CPU, never queue behind their tasks.
    let raft_runtime = RaftRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("goat-raft")
            .enable_all()
            .build()
            .context("starting the Raft runtime")?,
    ));
    let (id, raft_network) = (args.id, network.clone());
    let raft = raft_runtime
        .handle()
        .spawn(async move { Raft::new(id, config, raft_network, log_store, state_machine).await })
        .await
        .context("starting raft")?
        .context("starting raft")?;

    let manager = Arc::new(Manager::new(args.id, raft.clone(), shared, &args, tls.as_ref())?);
    tokio::spawn(cluster::bootstrap(manager.clone(), peers));
    tokio::spawn(leader::supervise(manager.clone()));
    tokio::spawn(crate::metrics::follow(raft.clone(), manager.state().clone()));
    raft_runtime.handle().spawn(goat_raft::timing::drive(
        raft.clone(),
        timing,
        manager.activity().clone(),
        network,
        args.id,
    ));

    let cluster_tokens: Vec<String> = std::iter::once(args.token.clone()).chain(args.previous_token.clone()).collect();
    let raft_routes = goat_raft::service::router(raft.clone(), &cluster_tokens, timing, manager.activity().clone());
    let app = api::router(manager.clone(), raft_routes);
    tracing::info!(id = args.id, %listen, tls = tls.is_some(), "manager started");
    let closing = manager.closing().clone();
    let handing_over = manager.clone();
    let shutdown = async move {
        shutdown.await;
        // A leader hands over before it goes, so that a restart costs no
        // election timeout (see `transfer`).
        if handing_over.is_leader() {
            match transfer::transfer_leadership(&handing_over, None).await {
                Ok(to) => tracing::info!(to, "handed leadership over before shutting down"),
                Err(e) => tracing::warn!(error = %e.body.error, "could not hand leadership over before shutting down"),
            }
        }
        // Open event streams would hold the graceful shutdown forever, and
        // waiting long polls for up to their wait.
        closing.cancel();
    };
    serve(listener, app, tls, shutdown).await?;

    tracing::info!(id = args.id, "shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), raft.shutdown()).await;
    drop(raft_runtime);
    Ok(())
}
