//! The clusters a benchmark runs against, as local processes on loopback:
//! three `goat manager`s (this very binary), or three etcd members. Both
//! expose the same small interface, so every measurement runs the same code
//! against both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use goat_storage::model::{Node, NodeStatus};
use serde_json::{json, Value};

use super::load::RequestMaker;
use crate::launch::{ManagerLaunch, WorkerLaunch};

/// A three-member cluster under test.
pub trait BenchCluster: RequestMaker {
    fn name(&self) -> &'static str;
    fn members(&self) -> usize;
    fn client_url(&self, member: usize) -> String;
    /// Waits until the cluster has a leader, and names its member.
    fn wait_leader(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> impl std::future::Future<Output = anyhow::Result<usize>> + Send;
    fn kill(&mut self, member: usize);
    fn start(&mut self, member: usize) -> anyhow::Result<()>;
    /// The request that counts as "a write was accepted", sent to `member`.
    fn write_to(&self, http: &reqwest::Client, member: usize, i: usize) -> reqwest::RequestBuilder;
    fn set_load_member(&mut self, member: usize);
}

/// SIGKILLs a member's process, if it runs, and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `goat` binary the benchmarks start: `GOAT_BIN`, or the `goat` beside
/// this executable (`target/release/goat-bench` → `target/release/goat`).
pub use crate::launch::goat_binary;

fn free_port() -> anyhow::Result<u16> {
    Ok(crate::launch::free_port()?)
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name))?)
}

/// A task spec of about `size` bytes of JSON.
pub fn task_body(size: usize, i: usize) -> Value {
    let mut spec = json!({"name": format!("bench-{i}"), "image": "goat-echo:latest", "cpu": 0.01, "memory": 8 << 20});
    let current = spec.to_string().len() + r#","labels":{"pad":""}"#.len();
    spec["labels"] = json!({"pad": "x".repeat(size.saturating_sub(current))});
    spec
}

pub struct GoatCluster {
    dir: PathBuf,
    addrs: Vec<String>,
    peers: String,
    children: Vec<Option<Child>>,
    size: usize,
    target: usize,
    /// Extra `goat manager` flags for every member.
    extra: Vec<String>,
    /// The typed client of the members (index = member), for their health.
    api: crate::client::Client,
}

impl GoatCluster {
    pub fn start(dir: &Path, size: usize) -> anyhow::Result<GoatCluster> {
        GoatCluster::start_with(dir, size, &[])
    }

    /// Starts three managers with `extra` flags each.
    pub fn start_with(dir: &Path, size: usize, extra: &[&str]) -> anyhow::Result<GoatCluster> {
        let addrs: Vec<String> =
            (0..3).map(|_| free_port().map(|p| format!("127.0.0.1:{p}"))).collect::<Result<_, _>>()?;
        let peers = crate::launch::peers_flag(&addrs);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let api = crate::client::Client::builder(&addrs).token(Some(BENCH_TOKEN)).build()?;
        let mut cluster = GoatCluster {
            api,
            dir: dir.join("goat"),
            addrs,
            peers,
            children: vec![None, None, None],
            size,
            target: 0,
            extra,
        };
        for member in 0..3 {
            cluster.start(member)?;
        }
        Ok(cluster)
    }
}

impl GoatCluster {
    /// The managers' process ids (None for a member that is down).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children.iter().map(|c| c.as_ref().map(|c| c.id())).collect()
    }

    /// The managers' client addresses, HOST:PORT.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The cluster's shared token.
    pub fn token(&self) -> &'static str {
        BENCH_TOKEN
    }

    /// Sends SIGTERM to `member` (a leader hands over, then exits).
    pub fn terminate(&self, member: usize) {
        if let Some(child) = &self.children[member] {
            // SAFETY: kill(2) on a child of this process that is not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Whether `member` has exited (then reaped, and marked down).
    pub fn reap(&mut self, member: usize) -> bool {
        match self.children[member].as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                self.children[member] = None;
                true
            }
            _ => false,
        }
    }

    /// The payload size of a write.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Starts worker `name` for this cluster (on this machine's engine, its
    /// data and log in `dir`) and waits until it is a ready node: the
    /// worker, and its node as the API shows it.
    pub async fn start_worker(&self, name: &str, dir: &Path) -> anyhow::Result<(GoatWorker, Node)> {
        let worker = GoatWorker::start(name, self.addrs(), self.token(), dir, &[])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.api.nodes().await.unwrap_or_default();
            if let Some(view) = nodes.into_iter().find(|n| n.node.name == name && n.node.status == NodeStatus::Ready) {
                return Ok((worker, view.node));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "worker {name} not a ready node within 30 s (see its log in {})",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The cluster token of the managers a benchmark starts (loopback only).
pub const BENCH_TOKEN: &str = "bench";

/// A `goat worker` process (this very binary) heartbeating to `managers`,
/// on the real Docker engine. Killed on drop; its containers are the
/// caller's to remove (they carry `goat.node=<name>`).
pub struct GoatWorker {
    child: Option<Child>,
}

impl GoatWorker {
    pub fn start(
        name: &str,
        managers: &[String],
        token: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<GoatWorker> {
        let argv = WorkerLaunch {
            name: name.to_string(),
            managers: managers.to_vec(),
            token: token.to_string(),
            data_dir: dir.join(name),
            docker_socket: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
        .argv();
        let child = crate::launch::command(&goat_binary()?, &argv, &dir.join(format!("{name}.log")), "info")?
            .spawn()
            .context("starting goat worker")?;
        Ok(GoatWorker { child: Some(child) })
    }
}

impl Drop for GoatWorker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RequestMaker for GoatCluster {
    fn request(&self, http: &reqwest::Client, client: usize, i: usize) -> reqwest::RequestBuilder {
        self.write_to(http, self.target, client * 1_000_000 + i)
    }
}

impl BenchCluster for GoatCluster {
    fn name(&self) -> &'static str {
        "goat"
    }
    fn members(&self) -> usize {
        3
    }
    fn client_url(&self, member: usize) -> String {
        format!("http://{}", self.addrs[member])
    }
    /// The leader the running members agree on
    /// ([`crate::client::Client::wait_leader`], the one wait of Goat's
    /// tools and tests). Failovers are not timed by it: they are measured
    /// to the first accepted write.
    async fn wait_leader(&self, _http: &reqwest::Client, timeout: Duration) -> anyhow::Result<usize> {
        let running: Vec<usize> = (0..3).filter(|m| self.children[*m].is_some()).collect();
        let id = self.api.wait_leader(&running, Duration::from_millis(300), timeout).await?;
        // Member `m` is manager `m + 1` (`start` above).
        usize::try_from(id).ok().and_then(|id| id.checked_sub(1)).with_context(|| format!("a leader id {id}"))
    }
    fn kill(&mut self, member: usize) {
        kill_child(&mut self.children[member]);
    }
    fn start(&mut self, member: usize) -> anyhow::Result<()> {
        let argv = ManagerLaunch {
            id: member as u64 + 1,
            listen: self.addrs[member].clone(),
            peers: Some(self.peers.clone()),
            token: BENCH_TOKEN.to_string(),
            data_dir: self.dir.join(format!("m{}", member + 1)),
            extra: self.extra.clone(),
        }
        .argv();
        let log = self.dir.join(format!("m{}.log", member + 1));
        // GOAT_BENCH_MANAGER_LOG tunes the managers' logs (e.g. to keep
        // "Raft timer woke late" warnings with `--keep`).
        let rust_log = std::env::var("GOAT_BENCH_MANAGER_LOG").unwrap_or_else(|_| "warn".into());
        let child = crate::launch::command(&goat_binary()?, &argv, &log, &rust_log)?
            .spawn()
            .context("starting goat manager")?;
        self.children[member] = Some(child);
        Ok(())
    }
    fn write_to(&self, http: &reqwest::Client, member: usize, i: usize) -> reqwest::RequestBuilder {
        http.post(format!("{}/v1/tasks", self.client_url(member))).json(&task_body(self.size, i))
    }
    fn set_load_member(&mut self, member: usize) {
        self.target = member;
    }
}

impl Drop for GoatCluster {
    fn drop(&mut self) {
        for member in 0..3 {
            self.kill(member);
        }
    }
}

pub struct EtcdCluster {
    binary: PathBuf,
    dir: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    value: String,
    target: usize,
}

impl EtcdCluster {
    /// Starts three etcd members with their default timing (heartbeat
    /// 100 ms, election 1 s), each on its own data directory.
    pub fn start(binary: &Path, dir: &Path, size: usize) -> anyhow::Result<EtcdCluster> {
        if !binary.exists() {
            bail!("{} not found: install Debian's etcd-server (deploy/install-deps.sh does)", binary.display());
        }
        let client_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let peer_ports = (0..3).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        // The same payload size as a Goat task: key + value ≈ `size`.
        let value = base64::engine::general_purpose::STANDARD.encode("x".repeat(size.saturating_sub(24)));
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            dir: dir.join("etcd"),
            client_ports,
            peer_ports,
            children: vec![None, None, None],
            value,
            target: 0,
        };
        for member in 0..3 {
            cluster.start(member)?;
        }
        Ok(cluster)
    }
}

impl RequestMaker for EtcdCluster {
    fn request(&self, http: &reqwest::Client, client: usize, i: usize) -> reqwest::RequestBuilder {
        self.write_to(http, self.target, client * 1_000_000 + i)
    }
}

impl BenchCluster for EtcdCluster {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn members(&self) -> usize {
        3
    }
    fn client_url(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[member])
    }
    async fn wait_leader(&self, http: &reqwest::Client, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader(http).await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("etcd: no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    fn kill(&mut self, member: usize) {
        kill_child(&mut self.children[member]);
    }
    fn start(&mut self, member: usize) -> anyhow::Result<()> {
        let name = format!("e{}", member + 1);
        let peer = |m: usize| format!("http://127.0.0.1:{}", self.peer_ports[m]);
        let initial = (0..3).map(|m| format!("e{}={}", m + 1, peer(m))).collect::<Vec<_>>().join(",");
        let client = self.client_url(member);
        let log = log_file(&self.dir, &format!("{name}.log"))?;
        let child = Command::new(&self.binary)
            .args(["--name", &name, "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(member), "--initial-advertise-peer-urls", &peer(member)])
            .args(["--initial-cluster", &initial, "--initial-cluster-token", "goat-bench"])
            .args(["--initial-cluster-state", "new", "--log-level", "warn"])
            .arg("--data-dir")
            .arg(self.dir.join(&name))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.children[member] = Some(child);
        Ok(())
    }
    fn write_to(&self, http: &reqwest::Client, member: usize, i: usize) -> reqwest::RequestBuilder {
        let key = base64::engine::general_purpose::STANDARD.encode(format!("bench/{i:012}"));
        http.post(format!("{}/v3/kv/put", self.client_url(member))).json(&json!({"key": key, "value": self.value}))
    }
    fn set_load_member(&mut self, member: usize) {
        self.target = member;
    }
}

impl EtcdCluster {
    /// The member that calls itself leader, if one does.
    async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        for member in 0..3 {
            if self.children[member].is_none() {
                continue;
            }
            let url = format!("{}/v3/maintenance/status", self.client_url(member));
            let Ok(response) = http.post(url).body("{}").timeout(Duration::from_millis(300)).send().await else {
                continue;
            };
            let Ok(status) = response.json::<Value>().await else { continue };
            if status["leader"].is_string() && status["leader"] == status["header"]["member_id"] {
                return Some(member);
            }
        }
        None
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..3 {
            self.kill(member);
        }
    }
}
