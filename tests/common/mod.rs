//! Test harness: real `goat manager` processes on loopback, each with its own
//! data directory, killed with SIGKILL and restarted from that directory.
#![allow(dead_code)]

pub mod worker;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TOKEN: &str = "test-token";

/// An HTTP client that sends `token` on every request and never goes
/// through a proxy.
pub fn client_with_token(token: &str, timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().no_proxy().default_headers(headers).timeout(timeout).build().expect("client")
}

/// An HTTP client with the cluster token.
pub fn client() -> reqwest::Client {
    client_with_token(TOKEN, Duration::from_secs(15))
}

/// An HTTP client without any token.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().expect("client")
}

/// The `goat` binary under test.
pub fn goat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_goat")
}

/// A free port on loopback (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub struct ManagerProc {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

/// A cluster of managers started by a test; every process is killed on drop.
pub struct Cluster {
    pub managers: Vec<ManagerProc>,
    pub peers: String,
    pub extra_args: Vec<String>,
    _dir: tempfile::TempDir,
    /// Sends the cluster token.
    pub http: reqwest::Client,
    /// Sends no token.
    pub anon: reqwest::Client,
    /// `http`, or `https` for a TLS cluster.
    pub scheme: &'static str,
}

impl Cluster {
    /// Starts `n` managers (ids 1..=n) and waits for a leader.
    pub async fn start(n: u64, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        Cluster::start_in(dir, n, extra_args, client(), anonymous(), "http").await
    }

    /// Starts `n` managers with `extra_args`, talking to them with `http`
    /// (token) and `anon` (no token) over `scheme`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        n: u64,
        extra_args: &[&str],
        http: reqwest::Client,
        anon: reqwest::Client,
        scheme: &'static str,
    ) -> Cluster {
        let managers: Vec<ManagerProc> = (1..=n)
            .map(|id| ManagerProc {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                dir: dir.path().join(format!("m{id}")),
                child: None,
            })
            .collect();
        let peers = managers.iter().map(|m| format!("{}={}", m.id, m.addr)).collect::<Vec<_>>().join(",");
        let mut cluster = Cluster {
            managers,
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
            http,
            anon,
            scheme,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster.wait_leader(Duration::from_secs(20)).await;
        cluster
    }

    fn proc_mut(&mut self, id: u64) -> &mut ManagerProc {
        self.managers.iter_mut().find(|m| m.id == id).expect("known manager id")
    }

    pub fn url(&self, id: u64) -> String {
        let m = self.managers.iter().find(|m| m.id == id).expect("known manager id");
        format!("{}://{}", self.scheme, m.addr)
    }

    /// Starts (or restarts) manager `id` from its data directory.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.spawn_with_peers(id, Some(peers));
    }

    /// Starts manager `id` without `--peers`: it waits to be added.
    pub fn spawn_without_peers(&mut self, id: u64) {
        self.spawn_with_peers(id, None);
    }

    fn spawn_with_peers(&mut self, id: u64, peers: Option<String>) {
        let extra = self.extra_args.clone();
        let m = self.proc_mut(id);
        std::fs::create_dir_all(&m.dir).expect("data dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(m.dir.join("manager.log")).expect("log");
        let mut command = Command::new(goat_bin());
        command.args(["manager", "--id", &id.to_string(), "--listen", &m.addr, "--token", TOKEN]);
        if let Some(peers) = &peers {
            command.args(["--peers", peers]);
        }
        let child = command
            .arg("--data-dir")
            .arg(&m.dir)
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn goat manager");
        m.child = Some(child);
    }

    /// SIGKILL manager `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.proc_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of manager `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.managers.iter().find(|m| m.id == id)?.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM manager `id` and wait for it to exit (a leader hands over
    /// first).
    pub fn terminate(&mut self, id: u64) {
        if let Some(mut child) = self.proc_mut(id).child.take() {
            // SAFETY: kill(2) on our own child's pid, which `wait` has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub fn alive_ids(&self) -> Vec<u64> {
        self.managers.iter().filter(|m| m.child.is_some()).map(|m| m.id).collect()
    }

    /// The leader as `id` sees it.
    pub async fn leader_seen_by(&self, id: u64) -> Option<u64> {
        let v: Value = self.http.get(format!("{}/v1/health", self.url(id))).send().await.ok()?.json().await.ok()?;
        v["leader"].as_u64()
    }

    /// Waits until every running manager agrees on one live leader.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let alive = self.alive_ids();
            let mut seen = Vec::new();
            for id in &alive {
                seen.push(self.leader_seen_by(*id).await);
            }
            if let Some(Some(leader)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*leader)) && alive.contains(leader) {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader within {timeout:?}: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn follower(&self, leader: u64) -> u64 {
        self.alive_ids().into_iter().find(|id| *id != leader).expect("a live follower")
    }

    /// Submits a task through manager `id`; returns the stored task.
    pub async fn submit(&self, id: u64, spec: &Value) -> Value {
        let response =
            self.http.post(format!("{}/v1/tasks", self.url(id))).json(spec).send().await.expect("POST /v1/tasks");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 201, "submit through {id}: {body}");
        body
    }

    /// All tasks as manager `id` has them (`stale`: local state, no leader).
    pub async fn tasks(&self, id: u64, stale: bool) -> Vec<Value> {
        let url = format!("{}/v1/tasks?stale={stale}", self.url(id));
        let response = self.http.get(url).send().await.expect("GET /v1/tasks");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON tasks")
    }

    pub async fn health(&self, id: u64) -> Value {
        self.http.get(format!("{}/v1/health", self.url(id))).send().await.expect("health").json().await.expect("json")
    }

    /// Waits until manager `id` holds at least `n` tasks in its local state.
    pub async fn wait_task_count(&self, id: u64, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let count = match self.http.get(format!("{}/v1/tasks?stale=true", self.url(id))).send().await {
                Ok(r) => r.json::<Vec<Value>>().await.map(|t| t.len()).unwrap_or(0),
                Err(_) => 0,
            };
            if count >= n {
                return;
            }
            assert!(Instant::now() < deadline, "manager {id} has {count} tasks, wanted {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.managers {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The cluster's directory (data of each manager, TLS files).
impl Cluster {
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

/// A small valid task spec.
pub fn spec(name: &str) -> Value {
    json!({"name": name, "image": "goat-echo:latest", "cpu": 0.01, "memory": 8 << 20})
}
