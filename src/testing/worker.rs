//! Worker-side test harness: real `goat worker` processes against the real
//! Docker engine, a unix-socket proxy in front of the engine that a test can
//! cut, and polling helpers. Every container a worker made is removed when
//! its `WorkerProc` is dropped (found by the `goat.node` label).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::client::NodeView;
use crate::launch::{self, WorkerLaunch};
use crate::manager::services::ServiceView;
use goat_storage::model::Task;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::cluster::{goat_bin, Cluster, TOKEN};

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Builds `goat-echo:latest` (and `goat:latest`) once per test binary.
/// With `GOAT_REUSE_IMAGES=1`, images already on the engine are used as
/// they are (a developer rerunning one test on a shared engine).
pub fn ensure_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var("GOAT_REUSE_IMAGES").is_ok_and(|v| v == "1")
            && Command::new("docker")
                .args(["image", "inspect", "goat-echo:latest"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/build-images.sh");
        let status = Command::new("bash").arg(script).status().expect("run deploy/build-images.sh");
        assert!(status.success(), "deploy/build-images.sh failed");
    });
}

/// A name unique to this test run, usable as a node or task name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A `goat worker` process with its own data dir.
pub struct WorkerProc {
    pub name: String,
    pub dir: PathBuf,
    pub managers: Vec<String>,
    pub socket: String,
    /// Further `goat worker` flags (`--memory 2GiB`, TLS files).
    pub extra: Vec<String>,
    pub child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl WorkerProc {
    pub fn start(name: &str, managers: Vec<String>, socket: &str) -> WorkerProc {
        WorkerProc::start_with(name, managers, socket, &[])
    }

    /// A worker with further `goat worker` flags.
    pub fn start_with(name: &str, managers: Vec<String>, socket: &str, extra: &[&str]) -> WorkerProc {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut w = WorkerProc {
            name: name.to_string(),
            dir: tmp.path().join("worker"),
            managers,
            socket: socket.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            _tmp: tmp,
        };
        w.spawn();
        w
    }

    /// A worker heartbeating to every manager of `cluster`.
    pub fn for_cluster(name: &str, cluster: &Cluster, socket: &str) -> WorkerProc {
        WorkerProc::for_cluster_with(name, cluster, socket, &[])
    }

    /// A worker of `cluster` with further `goat worker` flags.
    pub fn for_cluster_with(name: &str, cluster: &Cluster, socket: &str, extra: &[&str]) -> WorkerProc {
        let managers = cluster.managers.iter().map(|m| m.addr.clone()).collect();
        WorkerProc::start_with(name, managers, socket, extra)
    }

    /// Starts (or restarts) the process on the same data dir.
    pub fn spawn(&mut self) {
        let argv = WorkerLaunch {
            name: self.name.clone(),
            managers: self.managers.clone(),
            token: TOKEN.to_string(),
            data_dir: self.dir.clone(),
            docker_socket: Some(self.socket.clone()),
            extra: self.extra.clone(),
        }
        .argv();
        let command = launch::command(&goat_bin(), &argv, &self.log_path(), "info,goat_worker=debug");
        self.child = Some(command.expect("the worker's log").spawn().expect("spawn goat worker"));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Ids of this worker's containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        docker_ids(&self.name)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
        let ids = docker_ids(&self.name);
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).status();
        }
    }
}

fn docker_ids(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("label=goat.node={node}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// `docker inspect -f <format> <id>`, trimmed; `None` if it does not exist.
pub fn docker_inspect(id: &str, format: &str) -> Option<String> {
    let out = Command::new("docker").args(["inspect", "-f", format, id]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A unix-socket proxy to the Docker engine that a test can cut and restore,
/// to simulate the engine going away under a running worker.
pub struct EngineProxy {
    pub path: PathBuf,
    accept: Option<JoinHandle<()>>,
    conns: std::sync::Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    _tmp: tempfile::TempDir,
}

impl EngineProxy {
    pub fn start() -> EngineProxy {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut proxy =
            EngineProxy { path: tmp.path().join("docker.sock"), accept: None, conns: Default::default(), _tmp: tmp };
        proxy.resume();
        proxy
    }

    pub fn socket(&self) -> String {
        self.path.to_string_lossy().to_string()
    }

    /// (Re)opens the socket and forwards every connection to the engine.
    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind proxy socket");
        let conns = self.conns.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let handle = tokio::spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect(DOCKER_SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                conns.lock().push(handle);
            }
        }));
    }

    /// Cuts the engine off: closes the socket and every open connection.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for conn in self.conns.lock().drain(..) {
            conn.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Asks the live managers in turn (the first that answers) until `get`
/// finds a value that satisfies `pred`; fails the test with the last value
/// seen after `timeout`.
async fn wait_for<T: std::fmt::Debug, F>(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    get: impl Fn(usize) -> F,
    pred: impl Fn(&T) -> bool,
) -> T
where
    F: std::future::Future<Output = Result<Option<T>, crate::client::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        for m in cluster.alive_ids() {
            let Ok(found) = get(cluster.index(m)).await else { continue };
            if let Some(value) = found {
                if pred(&value) {
                    return value;
                }
                last = Some(value);
            }
            break;
        }
        assert!(Instant::now() < deadline, "{what} not reached within {timeout:?}; last seen: {last:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `GET /v1/tasks/{id}` on any live manager until `pred` holds.
pub async fn wait_task(
    cluster: &Cluster,
    id: impl std::fmt::Display,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Task) -> bool,
) -> Task {
    let id = id.to_string();
    let what = format!("task {id} {what}");
    let path = format!("/v1/tasks/{id}");
    let get = |i: usize| {
        let request = cluster.api.get(path.clone()).on(i);
        async move { request.json_answer::<Task>().await.map(Some) }
    };
    wait_for(cluster, &what, timeout, get, pred).await
}

/// Polls `GET /v1/services/{name}` on any live manager until `pred` holds.
pub async fn wait_service(
    cluster: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ServiceView) -> bool,
) -> ServiceView {
    let what = format!("service {name} {what}");
    let path = format!("/v1/services/{name}");
    let get = |i: usize| {
        let request = cluster.api.get(path.clone()).on(i);
        async move { request.json_answer::<ServiceView>().await.map(Some) }
    };
    wait_for(cluster, &what, timeout, get, pred).await
}

/// Polls `GET /v1/nodes` until node `name` satisfies `pred`.
pub async fn wait_node(
    cluster: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&NodeView) -> bool,
) -> NodeView {
    let get = |i: usize| {
        let request = cluster.api.get("/v1/nodes").on(i);
        async move {
            let nodes: Vec<NodeView> = request.json_answer().await?;
            Ok(nodes.into_iter().find(|n| n.node.name == name))
        }
    };
    wait_for(cluster, &format!("node {name} {what}"), timeout, get, pred).await
}

/// The host port the task's container port is published on.
pub fn host_port(task: &Task, container_port: u16) -> Option<u16> {
    task.host_ports.get(&container_port).copied()
}

/// A plain HTTP client that never goes through a proxy and sends the
/// cluster token.
pub fn client() -> reqwest::Client {
    super::cluster::client_with_token(TOKEN, Duration::from_secs(5))
}

/// Waits until `POST http://127.0.0.1:{port}/` echoes `body`.
pub async fn wait_echo(port: u16, body: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let url = format!("http://127.0.0.1:{port}/");
        if let Ok(resp) = client().post(&url).body(body.to_string()).send().await {
            if resp.status() == 200 && resp.text().await.ok().as_deref() == Some(body) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no echo on port {port} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
