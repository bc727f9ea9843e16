//! Health checks: probing a task's container from its worker.
//!
//! A check is an HTTP GET of `path` (2xx/3xx = healthy) or, without a path,
//! a TCP connect, every `interval`, each bounded by `timeout`. Failures
//! during `start_period` do not count (unless the container was already
//! healthy); `failure_threshold` consecutive failures make it unhealthy,
//! which reconciliation turns into a restart under the restart policy.
//!
//! Where to probe: the container's own address on its Docker network when
//! the worker can reach it, else the published host port on 127.0.0.1 (a
//! worker running inside a container on another network cannot reach the
//! bridge address). The prober tries both and sticks to what worked.
//!
//! [`Tracker`] is the pure counting logic; [`Monitor`] runs one probing task
//! per running container and publishes verdicts in a shared map.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use goat_storage::model::{Health, HealthCheck};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::runtime::Container;

/// Counts probe results into a health verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    pub failures: u32,
    pub health: Health,
}

impl Tracker {
    /// Records one probe result, `since_start` after the container started.
    pub fn record(&mut self, check: &HealthCheck, ok: bool, since_start: Duration) -> Health {
        if ok {
            self.failures = 0;
            self.health = Health::Healthy;
        } else if since_start < check.start_period.as_duration() && self.health != Health::Healthy {
            // Still starting up: failures are expected and not counted.
            self.health = Health::Starting;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= check.failure_threshold.max(1) {
                self.health = Health::Unhealthy;
            } else if self.health == Health::Unknown {
                self.health = Health::Starting;
            }
        }
        self.health
    }
}

/// The addresses to probe a container at, best first: its network address
/// on the container port, then the published host port on loopback.
pub fn targets(container: &Container, check: &HealthCheck) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if let Some(ip) = container.ip {
        out.push(SocketAddr::new(ip, check.port));
    }
    if let Some(host_port) = container.host_ports.get(&check.port) {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *host_port));
    }
    out
}

/// One probe at one address.
async fn probe(client: &reqwest::Client, check: &HealthCheck, addr: SocketAddr) -> bool {
    let timeout = check.timeout.as_duration().max(Duration::from_millis(10));
    match &check.path {
        Some(path) => {
            let path = if path.starts_with('/') { path.clone() } else { format!("/{path}") };
            let url = format!("http://{addr}{path}");
            match client.get(&url).timeout(timeout).send().await {
                Ok(resp) => resp.status().is_success() || resp.status().is_redirection(),
                Err(_) => false,
            }
        }
        None => matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_))),
    }
}

/// What the monitor should be checking: one entry per running container.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub container_id: String,
    pub task_id: goat_storage::model::TaskId,
    pub check: HealthCheck,
    /// Unix ms when the container started.
    pub started_at: u64,
    pub targets: Vec<SocketAddr>,
}

/// Verdicts by container id, each tagged with the start time of the run it
/// judges: a late write from an aborted probe of an earlier run of the same
/// container can then never pass for a verdict on the current run.
type Verdicts = Arc<Mutex<BTreeMap<String, (u64, Health)>>>;

/// Runs the probes and keeps the verdicts by container id.
pub struct Monitor {
    verdicts: Verdicts,
    /// Woken when a container turns unhealthy, so reconciliation acts at once.
    changed: Arc<Notify>,
    probes: BTreeMap<String, (Wanted, JoinHandle<()>)>,
    client: reqwest::Client,
}

impl Monitor {
    pub fn new(changed: Arc<Notify>) -> Monitor {
        // Probes go straight to the container, never through a proxy.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Monitor { verdicts: Arc::default(), changed, probes: BTreeMap::new(), client }
    }

    /// The verdicts on the runs being probed now.
    pub fn verdicts(&self) -> BTreeMap<String, Health> {
        let verdicts = self.verdicts.lock();
        verdicts
            .iter()
            .filter(|(id, (started_at, _))| self.probes.get(*id).is_some_and(|(w, _)| w.started_at == *started_at))
            .map(|(id, (_, health))| (id.clone(), *health))
            .collect()
    }

    /// Starts probing new containers and stops probing gone ones.
    pub fn sync(&mut self, wanted: Vec<Wanted>) {
        let wanted: BTreeMap<String, Wanted> = wanted.into_iter().map(|w| (w.container_id.clone(), w)).collect();
        // A container restarted in place keeps its id but gets a new start
        // time: that is a new probe with a fresh tracker.
        let stale: Vec<String> = self
            .probes
            .iter()
            .filter(|(id, (w, _))| {
                wanted.get(*id).is_none_or(|n| n.started_at != w.started_at || n.targets != w.targets)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, handle)) = self.probes.remove(&id) {
                handle.abort();
            }
            self.verdicts.lock().remove(&id);
        }
        for (id, w) in wanted {
            if self.probes.contains_key(&id) {
                continue;
            }
            let span = tracing::info_span!("health", task = %w.task_id, container = %short(&w.container_id));
            let probe = run_probe(w.clone(), self.client.clone(), self.verdicts.clone(), self.changed.clone());
            let handle = tokio::spawn(probe.instrument(span));
            self.probes.insert(id, (w, handle));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for (_, handle) in self.probes.values() {
            handle.abort();
        }
    }
}

/// Until a run is first healthy, extra probes go out this often between the
/// regular ones: only their successes count, so a task is seen healthy (and
/// reported running) soon after it listens, while failures are still counted
/// at the check's own `interval` only.
const START_PROBE: Duration = Duration::from_millis(100);

async fn run_probe(wanted: Wanted, client: reqwest::Client, verdicts: Verdicts, changed: Arc<Notify>) {
    let mut tracker = Tracker::default();
    let mut preferred = 0usize;
    let interval = wanted.check.interval.as_duration().max(Duration::from_millis(50));
    // Probes every target, the one that worked last first.
    let probe_all = |start: usize| {
        let client = client.clone();
        let wanted = wanted.clone();
        async move {
            for i in 0..wanted.targets.len() {
                let idx = (start + i) % wanted.targets.len();
                if probe(&client, &wanted.check, wanted.targets[idx]).await {
                    return Some(idx);
                }
            }
            None
        }
    };
    let mut ok = probe_all(preferred).await;
    let mut was_healthy = false;
    loop {
        if let Some(idx) = ok {
            preferred = idx;
        }
        let since_start = Duration::from_millis(crate::agent::unix_ms().saturating_sub(wanted.started_at));
        let before = tracker.health;
        let health = tracker.record(&wanted.check, ok.is_some(), since_start);
        verdicts.lock().insert(wanted.container_id.clone(), (wanted.started_at, health));
        if health != before {
            tracing::info!(?health, failures = tracker.failures, "health changed");
            changed.notify_one();
        }
        was_healthy |= health == Health::Healthy;
        let next = tokio::time::Instant::now() + interval;
        ok = None;
        if !was_healthy {
            // Starting up: look more often, but count only a success early.
            while tokio::time::Instant::now() + START_PROBE < next {
                tokio::time::sleep(START_PROBE).await;
                if let Some(idx) = probe_all(preferred).await {
                    ok = Some(idx);
                    break;
                }
            }
            if ok.is_some() {
                continue;
            }
        }
        tokio::time::sleep_until(next).await;
        ok = probe_all(preferred).await;
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::Millis;

    fn check(threshold: u32, start_period: u64) -> HealthCheck {
        HealthCheck {
            path: Some("/health".into()),
            port: 7777,
            interval: Millis(100),
            timeout: Millis(100),
            failure_threshold: threshold,
            start_period: Millis(start_period),
        }
    }

    const LATE: Duration = Duration::from_secs(100);

    #[test]
    fn healthy_on_success_and_failures_reset() {
        let c = check(3, 0);
        let mut t = Tracker::default();
        assert_eq!(t.record(&c, true, LATE), Health::Healthy);
        assert_eq!(t.record(&c, false, LATE), Health::Healthy);
        assert_eq!(t.record(&c, false, LATE), Health::Healthy);
        assert_eq!(t.record(&c, true, LATE), Health::Healthy);
        assert_eq!(t.failures, 0);
    }

    #[test]
    fn unhealthy_after_threshold_consecutive_failures() {
        let c = check(3, 0);
        let mut t = Tracker::default();
        assert_eq!(t.record(&c, true, LATE), Health::Healthy);
        assert_eq!(t.record(&c, false, LATE), Health::Healthy);
        assert_eq!(t.record(&c, false, LATE), Health::Healthy);
        assert_eq!(t.record(&c, false, LATE), Health::Unhealthy);
        // It recovers if a probe succeeds again.
        assert_eq!(t.record(&c, true, LATE), Health::Healthy);
    }

    #[test]
    fn start_period_failures_do_not_count() {
        let c = check(2, 5_000);
        let mut t = Tracker::default();
        for _ in 0..10 {
            assert_eq!(t.record(&c, false, Duration::from_secs(1)), Health::Starting);
        }
        assert_eq!(t.failures, 0);
        assert_eq!(t.record(&c, false, Duration::from_secs(6)), Health::Starting);
        assert_eq!(t.record(&c, false, Duration::from_secs(7)), Health::Unhealthy);
    }

    #[test]
    fn failures_count_in_start_period_once_healthy() {
        let c = check(2, 5_000);
        let mut t = Tracker::default();
        assert_eq!(t.record(&c, true, Duration::from_secs(1)), Health::Healthy);
        assert_eq!(t.record(&c, false, Duration::from_secs(2)), Health::Healthy);
        assert_eq!(t.record(&c, false, Duration::from_secs(3)), Health::Unhealthy);
    }

    #[test]
    fn zero_threshold_means_one() {
        let c = check(0, 0);
        let mut t = Tracker::default();
        assert_eq!(t.record(&c, false, LATE), Health::Unhealthy);
    }

    #[test]
    fn targets_prefer_container_ip_then_host_port() {
        let c = Container {
            id: "x".into(),
            task_id: goat_storage::model::TaskId::new_v4(),
            generation: 1,
            running: true,
            exit_code: None,
            oom_killed: false,
            error: None,
            started_at: Some(0),
            finished_at: String::new(),
            finished_at_ms: None,
            host_ports: BTreeMap::from([(7777, 17777)]),
            ip: Some("172.17.0.2".parse().unwrap()),
        };
        let t = targets(&c, &check(1, 0));
        assert_eq!(t, vec!["172.17.0.2:7777".parse().unwrap(), "127.0.0.1:17777".parse().unwrap()]);
        let unpublished = HealthCheck { port: 9000, ..check(1, 0) };
        assert_eq!(targets(&c, &unpublished), vec!["172.17.0.2:9000".parse().unwrap()]);
    }

    #[tokio::test]
    async fn monitor_reports_only_on_the_current_run() {
        // Nothing listens on port 1: every TCP probe fails.
        let check = HealthCheck { path: None, port: 1, ..check(1, 0) };
        let wanted = |started_at| Wanted {
            container_id: "c1".into(),
            task_id: goat_storage::model::TaskId::new_v4(),
            check: check.clone(),
            started_at,
            targets: vec!["127.0.0.1:1".parse().unwrap()],
        };
        let changed = Arc::new(Notify::new());
        let mut monitor = Monitor::new(changed.clone());
        monitor.sync(vec![wanted(1)]);
        tokio::time::timeout(Duration::from_secs(5), changed.notified()).await.unwrap();
        assert_eq!(monitor.verdicts().get("c1"), Some(&Health::Unhealthy));
        // The same container started again: the old verdict does not count.
        monitor.sync(vec![wanted(2)]);
        assert_eq!(monitor.verdicts().get("c1"), None);
        // Gone: nothing is probed or reported.
        monitor.sync(vec![]);
        assert!(monitor.verdicts().is_empty());
        assert!(monitor.probes.is_empty());
    }

    #[tokio::test]
    async fn monitor_falls_back_to_the_next_address() {
        // The container address is unreachable (port 1); the host port works.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let working = listener.local_addr().unwrap();
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let check = HealthCheck { path: None, port: 7777, ..check(1, 0) };
        let changed = Arc::new(Notify::new());
        let mut monitor = Monitor::new(changed.clone());
        monitor.sync(vec![Wanted {
            container_id: "c1".into(),
            task_id: goat_storage::model::TaskId::new_v4(),
            check,
            started_at: 1,
            targets: vec!["127.0.0.1:1".parse().unwrap(), working],
        }]);
        tokio::time::timeout(Duration::from_secs(5), changed.notified()).await.unwrap();
        assert_eq!(monitor.verdicts().get("c1"), Some(&Health::Healthy));
    }

    #[tokio::test]
    async fn a_starting_container_is_seen_healthy_before_the_next_interval() {
        // Nothing listens at first; the port opens 300 ms in. With a 10 s
        // interval, only the start-up probes can see it that soon.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let check = HealthCheck { path: None, port, interval: Millis(10_000), ..check(3, 0) };
        let changed = Arc::new(Notify::new());
        let mut monitor = Monitor::new(changed.clone());
        monitor.sync(vec![Wanted {
            container_id: "c1".into(),
            task_id: goat_storage::model::TaskId::new_v4(),
            check,
            started_at: crate::agent::unix_ms(),
            targets: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        }]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One failed probe so far: starting, not unhealthy (threshold 3).
        assert_eq!(monitor.verdicts().get("c1"), Some(&Health::Starting));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move { while listener.accept().await.is_ok() {} });
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while monitor.verdicts().get("c1") != Some(&Health::Healthy) {
            assert!(std::time::Instant::now() < deadline, "not seen healthy between the regular probes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn probes_http_and_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /health ") { "200 OK" } else { "500 Oops" };
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        assert!(probe(&client, &check(1, 0), addr).await);
        let bad = HealthCheck { path: Some("/nope".into()), ..check(1, 0) };
        assert!(!probe(&client, &bad, addr).await);
        let tcp = HealthCheck { path: None, ..check(1, 0) };
        assert!(probe(&client, &tcp, addr).await);
        // Nothing listens on port 1.
        assert!(!probe(&client, &tcp, "127.0.0.1:1".parse().unwrap()).await);
    }
}
