//! A cluster of real `goat manager` processes on loopback, each with its
//! own data directory, killed with SIGKILL and restarted from it.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::client::{Client, HealthView};
use crate::launch::{self, ManagerLaunch};
use goat_storage::model::Task;
use serde::Serialize;

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

/// The `goat` binary under test ([`launch::goat_binary`]: the one cargo
/// builds beside the test binaries' `deps/`, or `GOAT_BIN`).
pub fn goat_bin() -> PathBuf {
    launch::goat_binary().expect("the goat binary")
}

/// A free port on loopback (bound, then released for the child to take).
pub fn free_port() -> u16 {
    launch::free_port().expect("a free port")
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
    /// The typed client of every manager (index `i` is manager `i + 1`),
    /// with the cluster token.
    pub api: Client,
    tls: Option<goat_raft::tls::Tls>,
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
        let peers = launch::peers_flag(&managers.iter().map(|m| m.addr.clone()).collect::<Vec<_>>());
        let tls = (scheme == "https").then(|| {
            goat_raft::tls::TlsArgs {
                tls_cert: Some(dir.path().join("tls/client.crt")),
                tls_key: Some(dir.path().join("tls/client.key")),
                tls_ca: Some(dir.path().join("tls/ca.crt")),
            }
            .load()
            .expect("the cluster's client certificate")
        });
        let tls = tls.flatten();
        let api = client_of(&managers, tls.as_ref());
        let mut cluster = Cluster {
            api,
            tls,
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

    /// Adds manager `id` (not started) to the cluster and to [`Cluster::api`].
    pub fn add_manager(&mut self, id: u64, addr: String, dir: PathBuf) {
        self.managers.push(ManagerProc { id, addr, dir, child: None });
        self.api = client_of(&self.managers, self.tls.as_ref());
    }

    /// Manager `id`'s index in [`Cluster::api`] (for `.on(index)`).
    pub fn index(&self, id: u64) -> usize {
        self.managers.iter().position(|m| m.id == id).expect("known manager id")
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
        let argv = ManagerLaunch {
            id,
            listen: m.addr.clone(),
            peers,
            token: TOKEN.to_string(),
            data_dir: m.dir.clone(),
            extra,
        }
        .argv();
        let command = launch::command(&goat_bin(), &argv, &m.dir.join("manager.log"), "info,openraft=warn");
        m.child = Some(command.expect("the manager's log").spawn().expect("spawn goat manager"));
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
        self.api.health_of(self.index(id), Duration::from_secs(5)).await.ok()?.leader
    }

    /// Waits until every running manager agrees on one live leader
    /// ([`Client::wait_leader`]).
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let alive: Vec<usize> = self.alive_ids().iter().map(|id| self.index(*id)).collect();
        self.api.wait_leader(&alive, Duration::from_secs(5), timeout).await.expect("an agreed leader")
    }

    pub fn follower(&self, leader: u64) -> u64 {
        self.alive_ids().into_iter().find(|id| *id != leader).expect("a live follower")
    }

    /// Submits a task through manager `id`; returns the stored task.
    pub async fn submit(&self, id: u64, spec: &impl Serialize) -> Task {
        let answer = self.api.post("/v1/tasks").json(spec).on(self.index(id)).send().await.expect("POST /v1/tasks");
        assert_eq!(answer.status, 201, "submit through {id}: {}", answer.text());
        answer.json().expect("a task")
    }

    /// All tasks as manager `id` has them (`stale`: local state, no leader).
    pub async fn tasks(&self, id: u64, stale: bool) -> Vec<Task> {
        let path = format!("/v1/tasks?stale={stale}");
        self.api.get(path).on(self.index(id)).json_answer().await.expect("GET /v1/tasks")
    }

    pub async fn health(&self, id: u64) -> HealthView {
        self.api.health_of(self.index(id), Duration::from_secs(15)).await.expect("health")
    }

    /// Waits until manager `id` holds at least `n` tasks in its local state.
    pub async fn wait_task_count(&self, id: u64, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let request = self.api.get("/v1/tasks?stale=true").on(self.index(id));
            let count = request.json_answer::<Vec<Task>>().await.map(|t| t.len()).unwrap_or(0);
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
        self.note_term_changes();
        for m in &mut self.managers {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Raft term changes, counted for a whole test run (issue 13: "zero
/// unexpected term changes in a full CI run"). Before the managers are
/// killed, each running one's `goat_raft_term_changes_total` (terms it saw
/// start after its first, see `goat::metrics::follow`) is printed with the
/// test's name, and appended to the file `GOAT_TEST_TERM_LOG` names, if set:
/// one line per cluster, `<test> <changes of manager 1> <of 2> ...` (`-` for
/// one not running or not answering). A test that kills or replaces its
/// leader expects some; any other non-zero line is an unplanned election.
impl Cluster {
    fn note_term_changes(&self) {
        if self.scheme != "http" {
            return; // A TLS cluster: not worth a TLS client here.
        }
        let changes: Vec<String> = self
            .managers
            .iter()
            .map(|m| match m.child.is_some().then(|| term_changes(&m.addr)).flatten() {
                Some(n) => n.to_string(),
                None => "-".into(),
            })
            .collect();
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test} {}", changes.join(" "));
        eprintln!("raft term changes (per manager): {line}");
        if let Some(path) = std::env::var_os("GOAT_TEST_TERM_LOG") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

/// A manager's `goat_raft_term_changes_total`, over plain HTTP/1.0 (a drop
/// can be outside any runtime, so no async client).
fn term_changes(addr: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /v1/metrics HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("goat_raft_term_changes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The cluster's directory (data of each manager, TLS files).
impl Cluster {
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

/// The typed client of `managers`, with the cluster token.
fn client_of(managers: &[ManagerProc], tls: Option<&goat_raft::tls::Tls>) -> Client {
    Client::builder(&managers.iter().map(|m| m.addr.clone()).collect::<Vec<_>>())
        .token(Some(TOKEN))
        .tls(tls)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}
