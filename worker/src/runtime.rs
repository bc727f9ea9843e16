//! The container runtime: the only place the worker talks to Docker.
//!
//! [`ContainerRuntime`] is the small set of operations the worker needs
//! (create+start, start again, stop, remove, list its own containers, watch
//! exits, ping), expressed in Goat's terms: a [`Container`] is a task's
//! container as observed, found through its labels. [`DockerRuntime`] is the
//! implementation over the Docker Engine API (bollard). Everything above this
//! module (reconcile, agent) sees only the trait, so the decision logic is
//! tested against an in-memory fake.
//!
//! Every Goat container carries three labels: `goat.task` (task id),
//! `goat.node` (worker name) and `goat.generation` (placement generation).
//! Labels, not names, are the source of truth: they are what the worker
//! lists on start to adopt what it left running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use goat_storage::model::{PortMapping, TaskId, TaskSpec};
use tokio::sync::{mpsc, Mutex};

pub const LABEL_TASK: &str = "goat.task";
pub const LABEL_NODE: &str = "goat.node";
pub const LABEL_GENERATION: &str = "goat.generation";

/// Why a runtime operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached at all (socket missing, connection
    /// refused, timeout): nothing is known about the containers.
    #[error("container engine unreachable: {0}")]
    Unavailable(String),
    /// The image is neither present nor pullable.
    #[error("image not found: {0}")]
    ImageNotFound(String),
    /// The container does not exist (any more).
    #[error("no such container: {0}")]
    NotFound(String),
    /// The engine answered with an error.
    #[error("container engine error: {0}")]
    Engine(String),
}

impl RuntimeError {
    /// Errors that say nothing about the task, only about the engine.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RuntimeError::Unavailable(_))
    }

    /// The engine could not bind a requested host port (another process or
    /// container holds it).
    pub fn is_port_conflict(&self) -> bool {
        match self {
            RuntimeError::Engine(msg) => {
                msg.contains("port is already allocated") || msg.contains("address already in use")
            }
            _ => false,
        }
    }
}

/// What the worker asks the engine to run for one task placement.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    /// Memory limit in bytes; 0 = none.
    pub memory: u64,
    /// Hard CPU limit (CFS quota) in billionths of a core; 0 = none. Only
    /// when the task asks for `cpu_hard_limit`.
    pub nano_cpus: u64,
    /// Relative CPU weight (1024 = one core's worth); 0 = the engine's
    /// default. How a task's `cpu` reservation is enforced by default.
    pub cpu_shares: u64,
}

impl ContainerConfig {
    /// The container for placement `generation` of a task on `node`.
    pub fn for_task(node: &str, task_id: TaskId, generation: u64, spec: &TaskSpec) -> ContainerConfig {
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_TASK.into(), task_id.to_string());
        labels.insert(LABEL_NODE.into(), node.to_string());
        labels.insert(LABEL_GENERATION.into(), generation.to_string());
        let mut env: BTreeMap<String, String> =
            spec.env.iter().chain(&spec.secret_env).map(|(k, v)| (k.clone(), v.clone())).collect();
        // Who the copy is: its generation is a fencing token the
        // application can use. (`GOAT_SERVICE` comes with a service's spec.)
        env.insert("GOAT_TASK_ID".into(), task_id.to_string());
        env.insert("GOAT_GENERATION".into(), generation.to_string());
        env.insert("GOAT_NODE".into(), node.to_string());
        ContainerConfig {
            name: container_name(&spec.name, task_id, generation),
            image: spec.image.clone(),
            cmd: spec.cmd.clone(),
            env,
            labels,
            ports: spec.ports.clone(),
            memory: spec.memory,
            nano_cpus: if spec.cpu_hard_limit { (spec.cpu.max(0.0) * 1e9).round() as u64 } else { 0 },
            cpu_shares: cpu_shares(spec.cpu),
        }
    }

    /// Ports without a fixed host port that still need one.
    pub fn unbound_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().filter(|p| p.host.is_none()).map(|p| p.container)
    }

    /// Requests the given host ports (container port → host port) for the
    /// ports that have no fixed one.
    pub fn pin_ports(&mut self, pinned: &BTreeMap<u16, u16>) {
        for port in self.ports.iter_mut().filter(|p| p.host.is_none()) {
            port.host = pinned.get(&port.container).copied();
        }
    }
}

/// A `cpu` reservation as CPU shares: 1024 per core, at least 2 (the
/// kernel's minimum); 0 (no reservation) keeps the engine's default.
pub fn cpu_shares(cpu: f64) -> u64 {
    if cpu.is_nan() || cpu <= 0.0 {
        return 0;
    }
    ((cpu * 1024.0).round() as u64).max(2)
}

/// A free TCP port on this host, not in `reserved`: what the worker asks
/// the engine to publish a port on when the task leaves the choice to it.
/// Choosing it here (instead of letting the engine pick at each start) keeps
/// the port across restarts of the container. The kernel picks from its
/// ephemeral range; a port another process grabs before the container
/// starts shows up as a start failure ([`RuntimeError::is_port_conflict`])
/// and a new port is chosen.
pub fn free_host_port(reserved: &BTreeSet<u16>) -> Option<u16> {
    for _ in 0..64 {
        let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).ok()?;
        let port = listener.local_addr().ok()?.port();
        if !reserved.contains(&port) {
            return Some(port);
        }
    }
    None
}

/// The deterministic name of a placement's container: one name per
/// (task, generation), so the engine itself refuses a duplicate.
pub fn container_name(task_name: &str, task_id: TaskId, generation: u64) -> String {
    let id = task_id.simple().to_string();
    format!("goat-{task_name}-{}-g{generation}", &id[..8])
}

/// A task's container as observed on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub task_id: TaskId,
    pub generation: u64,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The engine's error when it could not start the container.
    pub error: Option<String>,
    /// Unix ms of the current (or last) start, if it ever started.
    pub started_at: Option<u64>,
    /// The engine's raw "finished at" stamp: with the id it names one exit.
    pub finished_at: String,
    pub finished_at_ms: Option<u64>,
    /// Container port → host port, as bound.
    pub host_ports: BTreeMap<u16, u16>,
    /// The container's address on its network, when it has one.
    pub ip: Option<IpAddr>,
}

impl Container {
    /// A key naming this container's last exit, stable across observations.
    pub fn exit_key(&self) -> String {
        format!("{}@{}", self.id, self.finished_at)
    }
}

/// The operations the worker needs from a container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Is the engine reachable and answering?
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// All of this node's Goat containers, running or not. Containers of
    /// `in_flight` (an action of the worker is changing them right now) may
    /// be shown as last seen, or left out if never seen: inspecting them
    /// would wait for the action.
    fn list(
        &self,
        node: &str,
        in_flight: &InFlight,
    ) -> impl Future<Output = Result<Vec<Container>, RuntimeError>> + Send;
    /// Creates and starts a container (ensuring the image first); its id.
    fn create_and_start(&self, config: &ContainerConfig) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Starts an existing, exited container again.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops a container (SIGTERM, then SIGKILL after `grace`), keeping it.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops and removes a container; removing a missing one is not an error.
    fn remove(&self, id: &str, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Sends the id of each of this node's containers that exits, until the
    /// engine's event stream ends or fails.
    fn watch_exits(
        &self,
        node: &str,
        exits: mpsc::UnboundedSender<String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// The tasks and containers the worker has an engine action running on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    pub tasks: BTreeSet<TaskId>,
    pub containers: BTreeSet<String>,
}

/// [`ContainerRuntime`] over the Docker Engine API on a unix socket.
///
/// The client is made lazily and dropped when the engine is unreachable, so
/// a worker started before its engine (or outliving an engine restart)
/// reconnects and renegotiates the API version by itself.
pub struct DockerRuntime {
    socket: String,
    client: Mutex<Option<Docker>>,
    /// The last inspection of each container, with the list state it was
    /// made in. A round lists the node's containers (one request) and
    /// inspects only those that are new, changed state, exited since (a
    /// `die` event), were acted on, or were last inspected `INSPECT_TTL` ago.
    inspected: parking_lot::Mutex<HashMap<String, Inspected>>,
    /// The Docker network task containers join (default: the engine's
    /// default bridge).
    task_network: Option<String>,
}

struct Inspected {
    /// The list's `State` ("running", "exited", "created", ...) at inspection.
    state: String,
    at: std::time::Instant,
    container: Option<Container>,
}

/// How long an inspection is trusted while the container's listed state
/// does not change: the safety net for a missed event.
const INSPECT_TTL: Duration = Duration::from_secs(20);
/// Inspections one list may run at once.
const INSPECT_PARALLEL: usize = 8;

/// How long one engine request may take before the engine counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

impl DockerRuntime {
    pub fn new(socket: &str) -> DockerRuntime {
        let socket = socket.strip_prefix("unix://").unwrap_or(socket).to_string();
        DockerRuntime { socket, client: Mutex::new(None), inspected: parking_lot::Mutex::default(), task_network: None }
    }

    /// Starts task containers on `network` instead of the default bridge
    /// (a worker that runs in a container on that network can then reach
    /// its tasks for health checks).
    pub fn with_task_network(mut self, network: Option<String>) -> DockerRuntime {
        self.task_network = network.filter(|n| !n.is_empty());
        self
    }

    /// Forgets what was inspected about `id`: it is about to change.
    fn invalidate(&self, id: &str) {
        self.inspected.lock().remove(id);
    }

    /// The connected client, connecting and negotiating the API version if
    /// needed. Bollard speaks a newer API than Docker 20.10 (1.41) by
    /// default; negotiation makes it use the engine's version.
    async fn client(&self) -> Result<Docker, RuntimeError> {
        let mut guard = self.client.lock().await;
        if let Some(docker) = guard.as_ref() {
            return Ok(docker.clone());
        }
        let docker = Docker::connect_with_unix(&self.socket, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", self.socket)))?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Unavailable(format!("{}: version negotiation timed out", self.socket)))?
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", self.socket)))?;
        *guard = Some(docker.clone());
        Ok(docker)
    }

    /// Classifies an error, forgetting the client if the engine is gone.
    async fn fail(&self, error: BollardError) -> RuntimeError {
        let error = classify(error);
        if error.is_unavailable() {
            *self.client.lock().await = None;
        }
        error
    }

    async fn inspect(&self, docker: &Docker, id: &str) -> Result<Option<Container>, RuntimeError> {
        match docker.inspect_container(id, None).await {
            Ok(info) => Ok(container_from_inspect(&info)),
            Err(e) => match self.fail(e).await {
                RuntimeError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Makes sure `image` is present: inspected locally first; pulled only
    /// when missing (which fails on a machine without a registry).
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) => match self.fail(e).await {
                RuntimeError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        tracing::info!(image, "image not present locally, trying to pull it");
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let pull = async {
            let mut stream = docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                item?;
            }
            Ok::<(), BollardError>(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match self.fail(e).await {
                RuntimeError::Unavailable(msg) => Err(RuntimeError::Unavailable(msg)),
                other => {
                    tracing::warn!(image, error = %other, "pull failed");
                    Err(RuntimeError::ImageNotFound(image.to_string()))
                }
            },
            Err(_) => Err(RuntimeError::ImageNotFound(image.to_string())),
        }
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                *self.client.lock().await = None;
                Err(RuntimeError::Unavailable("ping timed out".into()))
            }
        }
    }

    async fn list(&self, node: &str, in_flight: &InFlight) -> Result<Vec<Container>, RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={node}")])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let summaries = match docker.list_containers(Some(options)).await {
            Ok(s) => s,
            Err(e) => return Err(self.fail(e).await),
        };
        // The list lacks exit codes, OOM flags and start times: those come
        // from an inspection, made again only when something changed. A
        // container removed in between is simply skipped.
        // The engine holds a container's lock while starting or stopping
        // it, and an inspection waits for it: a container our own action is
        // busy with is shown as last inspected (or not at all if new), and
        // looked at again once the action is done.
        let mut busy = BTreeSet::new();
        let mut listed: Vec<(String, String)> = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let task: Option<TaskId> =
                summary.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).and_then(|t| t.parse().ok());
            if in_flight.containers.contains(&id) || task.is_some_and(|t| in_flight.tasks.contains(&t)) {
                busy.insert(id.clone());
            }
            listed.push((id, format!("{:?}", summary.state)));
        }
        let stale: Vec<(String, String)> = {
            let mut cache = self.inspected.lock();
            cache.retain(|id, _| listed.iter().any(|(l, _)| l == id));
            listed
                .iter()
                .filter(|(id, state)| {
                    !busy.contains(id)
                        && cache.get(id).is_none_or(|c| &c.state != state || c.at.elapsed() > INSPECT_TTL)
                })
                .cloned()
                .collect()
        };
        type Fresh = Result<(String, String, Option<Container>), RuntimeError>;
        let fresh: Vec<Fresh> = futures::stream::iter(stale.into_iter().map(|(id, state)| {
            let docker = docker.clone();
            async move { self.inspect(&docker, &id).await.map(|c| (id, state, c)) }
        }))
        .buffer_unordered(INSPECT_PARALLEL)
        .collect()
        .await;
        let mut cache = self.inspected.lock();
        for item in fresh {
            let (id, state, container) = item?;
            cache.insert(id, Inspected { state, at: std::time::Instant::now(), container });
        }
        Ok(listed.iter().filter_map(|(id, _)| cache.get(id).and_then(|c| c.container.clone())).collect())
    }

    async fn create_and_start(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        self.ensure_image(&docker, &config.image).await?;
        let options = CreateContainerOptions { name: Some(config.name.clone()), ..Default::default() };
        let created =
            match docker.create_container(Some(options), create_body(config, self.task_network.as_deref())).await {
                Ok(created) => created,
                Err(e) => return Err(self.fail(e).await),
            };
        self.invalidate(&created.id);
        if let Err(e) = docker.start_container(&created.id, None).await {
            // The caller counts the failed start under the restart policy;
            // left behind, the never-started container would be counted a
            // second time when observed with the engine's error. The next
            // attempt creates it afresh.
            let error = self.fail(e).await;
            if !error.is_unavailable() {
                let options = RemoveContainerOptions { force: true, v: true, link: false };
                let _ = docker.remove_container(&created.id, Some(options)).await;
            }
            return Err(error);
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        self.invalidate(id);
        match docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        self.invalidate(id);
        let options = StopContainerOptions { t: Some(grace.as_secs().max(1) as i32), signal: None };
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.fail(e).await {
                // 304: already stopped.
                RuntimeError::Engine(msg) if msg.starts_with("304") => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self.stop(id, grace).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let docker = self.client().await?;
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.fail(e).await {
                RuntimeError::NotFound(_) => Ok(()),
                // 409: removal already in progress.
                RuntimeError::Engine(msg) if msg.starts_with("409") => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn watch_exits(&self, node: &str, exits: mpsc::UnboundedSender<String>) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_NODE}={node}")]),
        ]);
        let options = EventsOptions { filters: Some(filters), ..Default::default() };
        let mut stream = docker.events(Some(options));
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => return Err(self.fail(e).await),
            };
            if let Some(id) = event.actor.and_then(|a| a.id) {
                self.invalidate(&id);
                if exits.send(id).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The engine's create request for a container config. Docker's own restart
/// policy is `no`: Goat decides restarts.
pub fn create_body(config: &ContainerConfig, network: Option<&str>) -> ContainerCreateBody {
    let mut bindings = HashMap::new();
    let mut exposed = Vec::new();
    for port in &config.ports {
        let key = format!("{}/tcp", port.container);
        exposed.push(key.clone());
        // An empty host port lets the engine pick a free one.
        let host_port = port.host.map(|p| p.to_string()).unwrap_or_default();
        bindings.insert(key, Some(vec![PortBinding { host_ip: None, host_port: Some(host_port) }]));
    }
    let host_config = HostConfig {
        port_bindings: Some(bindings),
        memory: (config.memory > 0).then(|| i64::try_from(config.memory).unwrap_or(i64::MAX)),
        nano_cpus: (config.nano_cpus > 0).then(|| i64::try_from(config.nano_cpus).unwrap_or(i64::MAX)),
        cpu_shares: (config.cpu_shares > 0).then(|| i64::try_from(config.cpu_shares).unwrap_or(i64::MAX)),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        network_mode: network.map(str::to_string),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(config.image.clone()),
        cmd: (!config.cmd.is_empty()).then(|| config.cmd.clone()),
        env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        exposed_ports: Some(exposed),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Reads a Goat container out of an inspect answer; `None` if it lacks the
/// labels (not one of ours) or an id.
fn container_from_inspect(info: &bollard::models::ContainerInspectResponse) -> Option<Container> {
    let id = info.id.clone()?;
    let labels = info.config.as_ref()?.labels.as_ref()?;
    let task_id = labels.get(LABEL_TASK)?.parse().ok()?;
    let generation = labels.get(LABEL_GENERATION)?.parse().ok()?;
    let state = info.state.clone().unwrap_or_default();
    let mut host_ports = BTreeMap::new();
    let mut ip = None;
    if let Some(net) = &info.network_settings {
        for (key, bindings) in net.ports.iter().flatten() {
            let Some(container_port) = key.split('/').next().and_then(|p| p.parse::<u16>().ok()) else { continue };
            let host = bindings.iter().flatten().find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()));
            if let Some(host) = host {
                host_ports.insert(container_port, host);
            }
        }
        ip = net
            .networks
            .iter()
            .flatten()
            .find_map(|(_, endpoint)| endpoint.ip_address.as_deref().filter(|s| !s.is_empty())?.parse().ok());
    }
    let finished_at = state.finished_at.clone().unwrap_or_default();
    Some(Container {
        id,
        task_id,
        generation,
        running: state.running.unwrap_or(false),
        exit_code: state.exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.filter(|e| !e.is_empty()),
        started_at: state.started_at.as_deref().and_then(parse_timestamp_ms),
        finished_at_ms: parse_timestamp_ms(&finished_at),
        finished_at,
        host_ports,
        ip,
    })
}

fn classify(error: BollardError) -> RuntimeError {
    match error {
        BollardError::DockerResponseServerError { status_code: 404, message } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError { status_code, message } => {
            RuntimeError::Engine(format!("{status_code}: {message}"))
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            RuntimeError::Engine(error.to_string())
        }
        other => RuntimeError::Unavailable(other.to_string()),
    }
}

/// The engine's RFC 3339 stamps in Unix milliseconds (`None` for "never").
pub use goat_storage::duration::parse_rfc3339_ms as parse_timestamp_ms;

#[cfg(test)]
pub mod fake {
    //! An in-memory engine for unit tests: containers are records that tests
    //! can make exit, and every call is logged.

    use parking_lot::Mutex as SyncMutex;

    use super::*;

    #[derive(Default)]
    pub struct FakeRuntime {
        pub state: SyncMutex<FakeState>,
    }

    #[derive(Default)]
    pub struct FakeState {
        pub containers: Vec<(ContainerConfig, Container)>,
        pub calls: Vec<String>,
        pub down: bool,
        pub missing_images: Vec<String>,
        pub next_id: u32,
        /// The fake's clock, Unix ms.
        pub now: u64,
    }

    impl FakeRuntime {
        pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
            let mut state = self.state.lock();
            f(&mut state)
        }

        /// Makes a container exit with `code`.
        pub fn exit(&self, id: &str, code: i64) {
            self.with(|s| {
                let now = s.now;
                for (_, c) in s.containers.iter_mut().filter(|(_, c)| c.id == id) {
                    c.running = false;
                    c.exit_code = Some(code);
                    c.finished_at = format!("t{now}");
                    c.finished_at_ms = Some(now);
                }
            });
        }

        pub fn running_ids(&self) -> Vec<String> {
            self.with(|s| s.containers.iter().filter(|(_, c)| c.running).map(|(_, c)| c.id.clone()).collect())
        }

        fn check(&self, call: String) -> Result<(), RuntimeError> {
            self.with(|s| {
                s.calls.push(call);
                if s.down {
                    Err(RuntimeError::Unavailable("fake engine is down".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    impl ContainerRuntime for FakeRuntime {
        async fn ping(&self) -> Result<(), RuntimeError> {
            self.check("ping".into())
        }

        async fn list(&self, node: &str, _in_flight: &InFlight) -> Result<Vec<Container>, RuntimeError> {
            self.check("list".into())?;
            Ok(self.with(|s| {
                s.containers
                    .iter()
                    .filter(|(cfg, _)| cfg.labels.get(LABEL_NODE).map(String::as_str) == Some(node))
                    .map(|(_, c)| c.clone())
                    .collect()
            }))
        }

        async fn create_and_start(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
            self.check(format!("create {}", config.name))?;
            self.with(|s| {
                if s.missing_images.contains(&config.image) {
                    return Err(RuntimeError::ImageNotFound(config.image.clone()));
                }
                if s.containers.iter().any(|(cfg, _)| cfg.name == config.name) {
                    return Err(RuntimeError::Engine(format!("409: name {} in use", config.name)));
                }
                s.next_id += 1;
                let id = format!("c{}", s.next_id);
                let container = Container {
                    id: id.clone(),
                    task_id: config.labels[LABEL_TASK].parse().expect("fake: task label"),
                    generation: config.labels[LABEL_GENERATION].parse().expect("fake: generation label"),
                    running: true,
                    exit_code: None,
                    oom_killed: false,
                    error: None,
                    started_at: Some(s.now),
                    finished_at: String::new(),
                    finished_at_ms: None,
                    host_ports: config.ports.iter().map(|p| (p.container, p.host.unwrap_or(40_000))).collect(),
                    ip: None,
                };
                s.containers.push((config.clone(), container));
                Ok(id)
            })
        }

        async fn start(&self, id: &str) -> Result<(), RuntimeError> {
            self.check(format!("start {id}"))?;
            self.with(|s| {
                let now = s.now;
                let (_, c) = s
                    .containers
                    .iter_mut()
                    .find(|(_, c)| c.id == id)
                    .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
                c.running = true;
                c.started_at = Some(now);
                Ok(())
            })
        }

        async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
            self.check(format!("stop {id}"))?;
            let exists = self.with(|s| s.containers.iter().any(|(_, c)| c.id == id));
            if !exists {
                return Err(RuntimeError::NotFound(id.to_string()));
            }
            let running = self.with(|s| s.containers.iter().any(|(_, c)| c.id == id && c.running));
            if running {
                self.exit(id, 143);
            }
            Ok(())
        }

        async fn remove(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
            self.check(format!("remove {id}"))?;
            self.with(|s| s.containers.retain(|(_, c)| c.id != id));
            Ok(())
        }

        async fn watch_exits(&self, _node: &str, _exits: mpsc::UnboundedSender<String>) -> Result<(), RuntimeError> {
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(parse_timestamp_ms("2024-05-01T12:34:56.123456789Z"), Some(1_714_566_896_123));
        assert_eq!(parse_timestamp_ms("2024-05-01T14:34:56.123+02:00"), Some(1_714_566_896_123));
        assert_eq!(parse_timestamp_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_ms(""), None);
        assert_eq!(parse_timestamp_ms("garbage"), None);
    }

    #[test]
    fn cpu_is_weighted_by_shares() {
        assert_eq!(cpu_shares(0.0), 0);
        assert_eq!(cpu_shares(f64::NAN), 0);
        assert_eq!(cpu_shares(0.001), 2);
        assert_eq!(cpu_shares(0.01), 10);
        assert_eq!(cpu_shares(2.0), 2048);
    }

    #[test]
    fn pinned_ports_fill_only_the_unfixed_ones() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "echo", "image": "i", "ports": [{"container": 7777, "host": 7777}, {"container": 80}, {"container": 81}]
        }))
        .unwrap();
        let mut cfg = ContainerConfig::for_task("n1", TaskId::new_v4(), 1, &spec);
        assert_eq!(cfg.unbound_ports().collect::<Vec<_>>(), vec![80, 81]);
        cfg.pin_ports(&BTreeMap::from([(80, 40_001), (7777, 1)]));
        assert_eq!(cfg.ports[0].host, Some(7777), "a fixed port is never replaced");
        assert_eq!(cfg.ports[1].host, Some(40_001));
        assert_eq!(cfg.unbound_ports().collect::<Vec<_>>(), vec![81]);
    }

    #[test]
    fn free_ports_avoid_the_reserved_ones() {
        let first = free_host_port(&Default::default()).unwrap();
        let reserved = BTreeSet::from([first]);
        for _ in 0..20 {
            assert_ne!(free_host_port(&reserved), Some(first));
        }
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let e = RuntimeError::Engine(
            "500: driver failed programming external connectivity: Bind for 0.0.0.0:7777 failed: port is already allocated".into(),
        );
        assert!(e.is_port_conflict());
        assert!(!RuntimeError::Engine("500: oops".into()).is_port_conflict());
        assert!(!RuntimeError::Unavailable("port is already allocated".into()).is_port_conflict());
    }

    #[test]
    fn container_names_are_deterministic() {
        let id: TaskId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(container_name("web", id, 3), "goat-web-01234567-g3");
    }

    #[test]
    fn config_carries_labels_and_limits() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "echo", "image": "goat-echo:latest", "cpu": 0.5, "memory": 1048576,
            "ports": [{"container": 7777, "host": 7777}, {"container": 80}],
            "labels": {"team": "a"}
        }))
        .unwrap();
        let id = TaskId::new_v4();
        let cfg = ContainerConfig::for_task("n1", id, 2, &spec);
        // A reservation, weighted: no hard quota unless asked for.
        assert_eq!(cfg.nano_cpus, 0);
        assert_eq!(cfg.cpu_shares, 512);
        let mut hard = spec.clone();
        hard.cpu_hard_limit = true;
        let hard = ContainerConfig::for_task("n1", id, 2, &hard);
        assert_eq!((hard.nano_cpus, hard.cpu_shares), (500_000_000, 512));
        assert_eq!(create_body(&hard, None).host_config.unwrap().nano_cpus, Some(500_000_000));
        assert_eq!(cfg.labels[LABEL_TASK], id.to_string());
        assert_eq!(cfg.labels[LABEL_NODE], "n1");
        assert_eq!(cfg.labels[LABEL_GENERATION], "2");
        assert_eq!(cfg.labels["team"], "a");
        let body = create_body(&cfg, None);
        let host = body.host_config.unwrap();
        let bindings = host.port_bindings.unwrap();
        assert_eq!(bindings["7777/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("7777"));
        assert_eq!(bindings["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some(""));
        assert_eq!(host.memory, Some(1_048_576));
        assert_eq!(host.cpu_shares, Some(512));
        assert_eq!(host.nano_cpus, None);
        assert_eq!(host.restart_policy.unwrap().name, Some(RestartPolicyNameEnum::NO));
        assert_eq!(host.network_mode, None, "the default bridge unless told otherwise");
        let on_net = create_body(&cfg, Some("goat_net")).host_config.unwrap();
        assert_eq!(on_net.network_mode.as_deref(), Some("goat_net"));
    }
}
