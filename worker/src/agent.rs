//! The agent: the worker's loops.
//!
//! - The **supervisor** owns the containers. Each round it lists this node's
//!   containers, reconciles them against the assignments and the local
//!   restart records, persists what changed, performs the engine actions,
//!   and publishes the task reports. It wakes on a container exit (engine
//!   event stream), a new assignment list, a health verdict, a restart delay
//!   falling due, or a periodic tick (the safety net for missed events). It
//!   never needs a manager: restarts happen locally.
//! - The **heartbeat** loop sends the latest reports to a manager about once
//!   a second and passes the assignment list of the answer to the
//!   supervisor. An unreachable manager only means trying the next one.
//! - The **exit watcher** follows the engine's event stream, resubscribing
//!   with backoff when it breaks.
//!
//! The supervisor and the heartbeat share a [`Status`] (engine health and
//! reports) behind a mutex; assignments flow the other way in a watch
//! channel.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use goat_storage::model::{
    Assignment, DesiredStatus, EngineStatus, Heartbeat, HeartbeatReply, ObservedState, Resources, TaskId, TaskReport,
};
use goat_storage::worker_state::{TaskRecord, WorkerStore};
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

use crate::health::{self, Monitor};
use crate::reconcile::{self, Action, Input};
use crate::runtime::{Container, ContainerRuntime};

/// Grace period given to a container between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The safety-net period of the supervisor when nothing wakes it.
const TICK: Duration = Duration::from_secs(2);
/// How soon to look again after acting, to report the result quickly.
const AFTER_ACTION: Duration = Duration::from_millis(300);
const MAX_ENGINE_BACKOFF: Duration = Duration::from_secs(8);
/// Timeout of one heartbeat request.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry period while the managers refuse our token.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(5);

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the supervisor last saw, for the heartbeat to send.
#[derive(Debug, Clone)]
pub struct Status {
    pub engine: EngineStatus,
    pub reports: Vec<TaskReport>,
    pub usage: Resources,
}

/// The supervisor: owns the containers of this node.
pub struct Supervisor<R: ContainerRuntime> {
    node: String,
    runtime: Arc<R>,
    store: WorkerStore,
    records: BTreeMap<TaskId, TaskRecord>,
    assignments: watch::Receiver<Option<Vec<Assignment>>>,
    status: Arc<Mutex<Status>>,
    health: Monitor,
    health_changed: Arc<Notify>,
    exits: mpsc::UnboundedReceiver<String>,
    engine_backoff: Duration,
}

/// The outcome of one supervisor round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Reconciled; look again after this long at the latest.
    Done { next: Duration },
    /// The engine did not answer; retry after this long.
    EngineDown { retry: Duration },
}

impl<R: ContainerRuntime> Supervisor<R> {
    pub fn new(
        node: String,
        runtime: Arc<R>,
        store: WorkerStore,
        assignments: watch::Receiver<Option<Vec<Assignment>>>,
        status: Arc<Mutex<Status>>,
        exits: mpsc::UnboundedReceiver<String>,
    ) -> anyhow::Result<Supervisor<R>> {
        let records = store.tasks().context("reading the worker's task records")?;
        let health_changed = Arc::new(Notify::new());
        Ok(Supervisor {
            node,
            runtime,
            store,
            records,
            assignments,
            status,
            health: Monitor::new(health_changed.clone()),
            health_changed,
            exits,
            engine_backoff: Duration::from_millis(500),
        })
    }

    /// Runs rounds forever.
    pub async fn run(mut self) {
        loop {
            let wait = match self.round().await {
                Round::Done { next } => next,
                Round::EngineDown { retry } => retry,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(_) = self.exits.recv() => {
                    // Several exits often come together: take them all.
                    while self.exits.try_recv().is_ok() {}
                }
                Ok(()) = self.assignments.changed() => {}
                _ = self.health_changed.notified() => {}
            }
        }
    }

    /// One observe → reconcile → act round.
    pub async fn round(&mut self) -> Round {
        let containers = match self.runtime.list(&self.node).await {
            Ok(containers) => containers,
            Err(error) => {
                let retry = self.engine_backoff;
                self.engine_backoff = (self.engine_backoff * 2).min(MAX_ENGINE_BACKOFF);
                tracing::warn!(%error, retry_in = ?retry, "container engine unavailable");
                let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                status.engine = EngineStatus { healthy: false, error: Some(error.to_string()) };
                return Round::EngineDown { retry };
            }
        };
        if self.engine_backoff > Duration::from_millis(500) {
            tracing::info!("container engine is back");
        }
        self.engine_backoff = Duration::from_millis(500);

        let assignments = self.assignments.borrow().clone();
        let now = unix_ms();
        let verdicts = self.health.verdicts();
        let before = self.records.clone();
        let mut jitter = rand::random::<f64>;
        let input = Input {
            node: &self.node,
            now,
            assignments: assignments.as_deref(),
            containers: &containers,
            health: &verdicts,
        };
        let plan = reconcile::reconcile(&input, &mut self.records, &mut jitter);

        // Persist decisions before acting on them: a worker that crashes
        // right after a restart must not count it again or forget it.
        self.persist(&before);
        self.publish(&plan.reports, assignments.as_deref());
        self.sync_health(&containers, assignments.as_deref());

        let acted = !plan.actions.is_empty();
        for action in plan.actions {
            self.execute(action, assignments.as_deref().unwrap_or_default()).await;
        }

        let mut next = if acted { AFTER_ACTION } else { TICK };
        if let Some(at) = plan.wake_at {
            next = next.min(Duration::from_millis(at.saturating_sub(unix_ms())));
        }
        Round::Done { next }
    }

    async fn execute(&mut self, action: Action, assignments: &[Assignment]) {
        match action {
            Action::Create { task_id, config } => {
                let span = tracing::info_span!("task", task = %task_id, container = %config.name);
                let result = self.runtime.create_and_start(&config).instrument(span.clone()).await;
                let _enter = span.enter();
                match result {
                    Ok(id) => tracing::info!(container_id = %id, "container started"),
                    Err(error) => {
                        tracing::warn!(%error, "could not start the container");
                        self.start_failed(task_id, assignments, &error);
                    }
                }
            }
            Action::Start { task_id, container_id } => {
                let span = tracing::info_span!("task", task = %task_id, container = %container_id);
                let result = self.runtime.start(&container_id).instrument(span.clone()).await;
                let _enter = span.enter();
                match result {
                    Ok(()) => tracing::info!("container restarted"),
                    Err(error) => {
                        tracing::warn!(%error, "could not restart the container");
                        self.start_failed(task_id, assignments, &error);
                    }
                }
            }
            Action::Stop { task_id, container_id, reason } => {
                let span = tracing::info_span!("task", task = %task_id, container = %container_id);
                span.in_scope(|| tracing::info!(%reason, "stopping container"));
                if let Err(error) = self.runtime.stop(&container_id, STOP_GRACE).instrument(span.clone()).await {
                    span.in_scope(|| tracing::warn!(%error, "could not stop the container"));
                }
            }
            Action::Remove { container_id, reason } => {
                let span = tracing::info_span!("container", container = %container_id);
                span.in_scope(|| tracing::info!(%reason, "removing container"));
                if let Err(error) = self.runtime.remove(&container_id, STOP_GRACE).instrument(span.clone()).await {
                    span.in_scope(|| tracing::warn!(%error, "could not remove the container"));
                }
            }
        }
    }

    fn start_failed(&mut self, task_id: TaskId, assignments: &[Assignment], error: &crate::runtime::RuntimeError) {
        let Some(assignment) = assignments.iter().find(|a| a.task_id == task_id) else { return };
        let Some(record) = self.records.get_mut(&task_id) else { return };
        reconcile::start_failed(record, assignment, error, unix_ms(), &mut rand::random::<f64>);
        if let Err(e) = self.store.put_task(task_id, record) {
            tracing::error!(task = %task_id, error = %e, "could not persist the task record");
        }
    }

    fn persist(&self, before: &BTreeMap<TaskId, TaskRecord>) {
        for (id, record) in &self.records {
            if before.get(id) != Some(record) {
                if let Err(e) = self.store.put_task(*id, record) {
                    tracing::error!(task = %id, error = %e, "could not persist the task record");
                }
            }
        }
        for id in before.keys().filter(|id| !self.records.contains_key(id)) {
            if let Err(e) = self.store.remove_task(*id) {
                tracing::error!(task = %id, error = %e, "could not remove the task record");
            }
        }
    }

    fn publish(&self, reports: &[TaskReport], assignments: Option<&[Assignment]>) {
        let mut usage = Resources::default();
        for report in reports.iter().filter(|r| !matches!(r.state, ObservedState::Completed | ObservedState::Failed)) {
            if let Some(a) = assignments.unwrap_or_default().iter().find(|a| a.task_id == report.task_id) {
                usage.cpu += a.spec.cpu;
                usage.memory += a.spec.memory;
                usage.disk += a.spec.disk;
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            let old = status.reports.iter().find(|r| r.task_id == report.task_id);
            if old.map(|o| (o.state, o.restarts, &o.reason)) != Some((report.state, report.restarts, &report.reason)) {
                // While restarting, say when: the growing backoff is visible in the log.
                let retry_in_ms = self
                    .records
                    .get(&report.task_id)
                    .and_then(|r| r.next_start_at)
                    .filter(|_| report.state == ObservedState::Restarting)
                    .map(|at| at.saturating_sub(unix_ms()));
                tracing::info!(task = %report.task_id, state = ?report.state, restarts = report.restarts,
                    reason = report.reason.as_deref().unwrap_or(""), ?retry_in_ms, "task state");
            }
        }
        status.engine = EngineStatus { healthy: true, error: None };
        status.reports = reports.to_vec();
        status.usage = usage;
    }

    /// Probes every running container whose task has a health check.
    fn sync_health(&mut self, containers: &[Container], assignments: Option<&[Assignment]>) {
        let mut wanted = Vec::new();
        for a in assignments.unwrap_or_default() {
            let Some(check) = &a.spec.health_check else { continue };
            if a.desired != DesiredStatus::Run || self.records.get(&a.task_id).is_some_and(|r| r.outcome.is_some()) {
                continue;
            }
            for c in containers.iter().filter(|c| c.running && c.task_id == a.task_id && c.generation == a.generation) {
                wanted.push(health::Wanted {
                    container_id: c.id.clone(),
                    task_id: a.task_id,
                    check: check.clone(),
                    started_at: c.started_at.unwrap_or_else(unix_ms),
                    targets: health::targets(c, check),
                });
            }
        }
        self.health.sync(wanted);
    }
}

/// Follows the engine's exit events forever, resubscribing with backoff.
pub async fn watch_exits<R: ContainerRuntime>(runtime: Arc<R>, node: String, exits: mpsc::UnboundedSender<String>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        match runtime.watch_exits(&node, exits.clone()).await {
            Ok(()) if exits.is_closed() => return,
            Ok(()) => tracing::debug!("engine event stream ended"),
            Err(error) => tracing::debug!(%error, "engine event stream failed"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_ENGINE_BACKOFF);
        // Whatever exited while the stream was down is caught by the
        // supervisor's periodic round; nudge it anyway.
        let _ = exits.send(String::new());
    }
}

/// Where to send heartbeats and how.
pub struct HeartbeatConfig {
    pub node: String,
    pub managers: Vec<String>,
    pub token: String,
    pub capacity: Resources,
    pub interval: Duration,
}

/// How one heartbeat attempt went.
enum Sent {
    Accepted(HeartbeatReply),
    /// Try the next manager.
    Unreachable(String),
    /// Our token is refused: retry slowly.
    Unauthorized(String),
}

/// Sends heartbeats forever; passes each assignment list on (and stores it).
pub async fn heartbeat_loop(
    config: HeartbeatConfig,
    status: Arc<Mutex<Status>>,
    store_assignments: impl Fn(&[Assignment]) + Send,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
) {
    let client = match reqwest::Client::builder().no_proxy().timeout(HEARTBEAT_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; no heartbeats will be sent");
            return;
        }
    };
    let mut current = 0usize;
    let mut interval = config.interval;
    let mut connected = false;
    loop {
        let heartbeat = {
            let status = status.lock().unwrap_or_else(|e| e.into_inner());
            Heartbeat {
                capacity: config.capacity,
                usage: status.usage,
                engine: status.engine.clone(),
                tasks: status.reports.clone(),
            }
        };
        // Try each manager once, starting with the one that answered last.
        let mut accepted = None;
        let mut unauthorized = false;
        for i in 0..config.managers.len() {
            let idx = (current + i) % config.managers.len();
            let manager = &config.managers[idx];
            match send(&client, manager, &config, &heartbeat).await {
                Sent::Accepted(reply) => {
                    current = idx;
                    accepted = Some(reply);
                    break;
                }
                Sent::Unreachable(why) => tracing::debug!(manager, why, "manager unreachable, trying the next"),
                Sent::Unauthorized(why) => {
                    tracing::error!(manager, why, "manager refused this worker's token; check --token / GOAT_TOKEN");
                    unauthorized = true;
                    break;
                }
            }
        }
        match accepted {
            Some(reply) => {
                if !connected {
                    tracing::info!(manager = %config.managers[current], "heartbeat accepted");
                    connected = true;
                }
                interval =
                    reply.heartbeat_interval.as_duration().clamp(Duration::from_millis(100), Duration::from_secs(10));
                let fresh = Some(reply.assignments);
                if *assignments.borrow() != fresh {
                    if let Some(list) = &fresh {
                        tracing::info!(tasks = list.len(), "new assignments");
                        store_assignments(list);
                    }
                    let _ = assignments.send(fresh);
                }
            }
            None if unauthorized => {
                connected = false;
                tokio::time::sleep(UNAUTHORIZED_RETRY).await;
                continue;
            }
            None => {
                if connected {
                    tracing::warn!("no manager reachable; carrying on with the last assignments");
                    connected = false;
                }
                current = (current + 1) % config.managers.len().max(1);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn send(client: &reqwest::Client, manager: &str, config: &HeartbeatConfig, heartbeat: &Heartbeat) -> Sent {
    let url = format!("http://{manager}/v1/nodes/{}/heartbeat", config.node);
    let response = match client.post(&url).bearer_auth(&config.token).json(heartbeat).send().await {
        Ok(response) => response,
        Err(e) => return Sent::Unreachable(e.to_string()),
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Sent::Unauthorized(status.to_string());
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Sent::Unreachable(format!("{status}: {}", body.chars().take(200).collect::<String>()));
    }
    match response.json::<HeartbeatReply>().await {
        Ok(reply) => Sent::Accepted(reply),
        Err(e) => Sent::Unreachable(format!("bad reply: {e}")),
    }
}

/// The machine's capacity: cores, memory, and free disk under `data_dir`.
pub fn detect_capacity(data_dir: &Path) -> Resources {
    let cpu = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_meminfo(&text)).unwrap_or(0);
    let disk = free_disk(data_dir).unwrap_or(0);
    Resources { cpu, memory, disk }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes available to unprivileged users on the filesystem of `path`.
fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Lowers a detected capacity by the operator's limits.
pub fn limit_capacity(detected: Resources, cpus: Option<f64>, memory: Option<u64>, disk: Option<u64>) -> Resources {
    Resources {
        cpu: cpus.map_or(detected.cpu, |c| c.min(detected.cpu)),
        memory: memory.map_or(detected.memory, |m| m.min(detected.memory)),
        disk: disk.map_or(detected.disk, |d| d.min(detected.disk)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-trick HTTP server: answers every request with `status` and
    /// `body`, and keeps the raw requests it got.
    async fn fake_manager(status: &'static str, body: String) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                // Read until the headers and the announced body are in.
                while let Ok(m) = s.read(&mut buf[n..]).await {
                    if m == 0 {
                        break;
                    }
                    n += m;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).to_string());
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn status() -> Arc<Mutex<Status>> {
        Arc::new(Mutex::new(Status {
            engine: EngineStatus { healthy: true, error: None },
            reports: vec![],
            usage: Resources::default(),
        }))
    }

    #[tokio::test]
    async fn heartbeat_moves_past_dead_and_failing_managers() {
        // Nothing listens on the first; the second answers 503; the third works.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (failing, failing_seen) = fake_manager("503 Service Unavailable", "{}".into()).await;
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "100ms"}).to_string();
        let (good, good_seen) = fake_manager("200 OK", reply).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![dead, failing, good],
            token: "secret".into(),
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            interval: Duration::from_millis(100),
        };
        let (tx, mut rx) = watch::channel(None);
        let stored = Arc::new(Mutex::new(None));
        let keep = stored.clone();
        let task = tokio::spawn(heartbeat_loop(config, status(), move |a| *keep.lock().unwrap() = Some(a.len()), tx));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| a.is_some())).await.unwrap().unwrap();
        task.abort();
        assert_eq!(*stored.lock().unwrap(), Some(0));
        assert!(!failing_seen.lock().unwrap().is_empty());
        let request = good_seen.lock().unwrap()[0].clone();
        assert!(request.starts_with("POST /v1/nodes/n1/heartbeat "), "{request}");
        assert!(request.to_ascii_lowercase().contains("authorization: bearer secret"), "{request}");
        let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
        let hb: Heartbeat = serde_json::from_str(body).unwrap();
        assert_eq!(hb.capacity.cpu, 2.0);
        assert!(hb.engine.healthy);
    }

    #[tokio::test]
    async fn a_refused_token_is_not_accepted_and_retried_slowly() {
        let (refusing, seen) = fake_manager("401 Unauthorized", "{}".into()).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![refusing],
            token: "wrong".into(),
            capacity: Resources::default(),
            interval: Duration::from_millis(50),
        };
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status(), |_| {}, tx));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        task.abort();
        assert!(rx.borrow().is_none(), "a refused node has no assignments");
        // One try, then it waits UNAUTHORIZED_RETRY instead of hammering.
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16303872 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(16_303_872 * 1024));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn capacity_is_detected_and_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let detected = detect_capacity(dir.path());
        assert!(detected.cpu >= 1.0);
        assert!(detected.memory > 0);
        assert!(detected.disk > 0);
        let limited = limit_capacity(detected, Some(0.5), Some(1024), None);
        assert_eq!(limited.cpu, 0.5);
        assert_eq!(limited.memory, 1024);
        assert_eq!(limited.disk, detected.disk);
        // Limits never raise the capacity.
        let raised = limit_capacity(detected, Some(10_000.0), None, None);
        assert_eq!(raised.cpu, detected.cpu);
    }
}
