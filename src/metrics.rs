//! Prometheus metrics for `GET /v1/metrics`, in the text exposition format
//! (version 0.0.4).
//!
//! Two kinds of figures:
//! - recorded as things happen, into this process's [`Metrics`]: API
//!   requests (by matched route, method and status), Raft appends and
//!   commits (from the log store), leader changes, placements (from the
//!   state machine's event feed, so every manager counts the same);
//! - read at scrape time from the Raft metrics and the applied state: term,
//!   indexes, tasks by state, nodes by status, pending tasks, restarts.
//!
//! Hand-written (counters, gauges, fixed-bucket histograms): the set is
//! small, and it keeps the exact exposition format under our control.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use goat_raft::log_store::LogObserver;
use goat_raft::state_machine::{Feed, SharedState};
use goat_raft::timing::Activity;
use goat_raft::Raft;
use goat_storage::events::ClusterEvent;
use goat_storage::model::{NodeStatus, TaskState};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds, in seconds.
const API_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const APPEND_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const PLACEMENT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A histogram with fixed buckets; observations in microseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: 0.into() }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = self.bounds.iter().position(|b| seconds <= *b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What one route answered: how often, how fast.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RouteKey {
    route: String,
    method: String,
    status: u16,
}

/// The figures this process records as things happen.
pub struct Metrics {
    requests: Mutex<BTreeMap<RouteKey, Arc<Histogram>>>,
    append: Histogram,
    appended_entries: AtomicU64,
    /// Commit index + 1 (0: nothing committed yet).
    committed: AtomicU64,
    leader_changes: AtomicU64,
    term_changes: AtomicU64,
    placements: AtomicU64,
    placement_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            append: Histogram::new(APPEND_BUCKETS),
            appended_entries: 0.into(),
            committed: 0.into(),
            leader_changes: 0.into(),
            term_changes: 0.into(),
            placements: 0.into(),
            placement_latency: Histogram::new(PLACEMENT_BUCKETS),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let key = RouteKey { route: route.to_string(), method: method.to_string(), status };
        let histogram = {
            let mut requests = self.requests.lock();
            requests.entry(key).or_insert_with(|| Arc::new(Histogram::new(API_BUCKETS))).clone()
        };
        histogram.observe(took);
    }

    /// Counts what the state machine's events say: placements (a task
    /// going from pending to scheduled) and how long the task waited.
    /// `pending_since` remembers when each task became pending.
    fn observe_event(&self, event: &ClusterEvent, pending_since: &mut HashMap<uuid::Uuid, u64>) {
        let ClusterEvent::Task { task, at, from, state, .. } = event else { return };
        match state {
            TaskState::Pending => {
                pending_since.insert(*task, *at);
            }
            TaskState::Scheduled if *from == Some(TaskState::Pending) => {
                self.placements.fetch_add(1, Ordering::Relaxed);
                if let Some(since) = pending_since.remove(task) {
                    self.placement_latency.observe(Duration::from_millis(at.saturating_sub(since)));
                }
            }
            _ => {
                pending_since.remove(task);
            }
        }
    }
}

/// Forwards the log store's reports to the global metrics.
struct GlobalLogObserver;

impl LogObserver for GlobalLogObserver {
    fn appended(&self, entries: usize, took: Duration) {
        global().append.observe(took);
        global().appended_entries.fetch_add(entries as u64, Ordering::Relaxed);
    }

    fn committed(&self, index: u64) {
        global().committed.fetch_max(index + 1, Ordering::Relaxed);
    }
}

/// The observer to give the Raft log store.
pub fn log_observer() -> Arc<dyn LogObserver> {
    Arc::new(GlobalLogObserver)
}

/// The `method` label: one of the methods the API knows, else `other`, so
/// that a client cannot add series by inventing methods.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The `route` label: the pattern a request matched (`/v1/tasks/{id}`,
/// never the raw path), else `other`.
pub fn route_label(matched: Option<&MatchedPath>) -> String {
    matched.map_or_else(|| "other".to_string(), |p| p.as_str().to_string())
}

/// Middleware: counts every request by the route it matched, its method
/// and status. Labels come from fixed sets (the route table, the known
/// methods, `other`): the number of series is bounded whatever clients send.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    global().request(&route, method, response.status().as_u16(), started.elapsed());
    response
}

/// Follows this manager's Raft role and applied events, for the counters
/// that come from them. Runs for the manager's life.
pub async fn follow(raft: Raft, state: SharedState) {
    let mut feed = state.subscribe();
    let mut raft_metrics = raft.metrics();
    let mut leader = None;
    let mut term = raft_metrics.borrow().current_term;
    let mut pending_since = HashMap::new();
    loop {
        tokio::select! {
            changed = raft_metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let (now, now_term) = {
                    let m = raft_metrics.borrow_and_update();
                    (m.current_leader, m.current_term)
                };
                // The bootstrap's election (from term 0) is not counted.
                if now_term > term {
                    let counted = if term == 0 { now_term - 1 } else { now_term - term };
                    global().term_changes.fetch_add(counted, Ordering::Relaxed);
                    term = now_term;
                }
                if now.is_some() && now != leader {
                    global().leader_changes.fetch_add(1, Ordering::Relaxed);
                    leader = now;
                }
            }
            received = feed.recv() => match received {
                Ok(Feed::Events(events)) => {
                    for event in events.iter() {
                        global().observe_event(event, &mut pending_since);
                    }
                }
                // Missed events: latencies of tasks pending meanwhile are lost.
                Ok(Feed::Reset) | Err(RecvError::Lagged(_)) => pending_since.clear(),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Writes samples in the exposition format.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{key}=\"{escaped}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A one-sample family.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// What the scrape reads from Raft and the applied state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub term: u64,
    pub leader: bool,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub tasks: BTreeMap<TaskState, u64>,
    pub nodes: BTreeMap<&'static str, u64>,
    pub pending: u64,
    pub restarts: u64,
    /// From the Raft timers (`goat_raft::timing::Activity`).
    pub elections_started: u64,
    pub prevotes_refused: u64,
    pub transfers: u64,
    pub timer_lateness_ms: u64,
}

impl Snapshot {
    fn read(raft: &Raft, state: &SharedState, timers: &Activity) -> Snapshot {
        let raft = raft.metrics().borrow().clone();
        let applied = state.read();
        let mut snapshot = Snapshot {
            term: raft.current_term,
            leader: raft.state == ServerState::Leader,
            last_log_index: raft.last_log_index,
            applied_index: applied.last_applied.map(|l| l.index),
            pending: applied.state.pending_tasks().count() as u64,
            elections_started: timers.elections_started.load(Ordering::Relaxed),
            prevotes_refused: timers.prevotes_refused.load(Ordering::Relaxed),
            transfers: timers.transfers.load(Ordering::Relaxed),
            timer_lateness_ms: timers.max_timer_lateness_ms.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        for task in applied.state.tasks.values() {
            *snapshot.tasks.entry(task.state).or_default() += 1;
            snapshot.restarts += u64::from(task.restarts);
        }
        for node in applied.state.nodes.values() {
            *snapshot.nodes.entry(node_status(node.status)).or_default() += 1;
        }
        snapshot
    }
}

fn node_status(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
        NodeStatus::Draining => "draining",
    }
}

/// The whole exposition for the manager of `raft` and `state`.
pub fn render(raft: &Raft, state: &SharedState, timers: &Activity) -> String {
    render_with(global(), &Snapshot::read(raft, state, timers))
}

/// The exposition of `metrics` and `s`.
pub fn render_with(metrics: &Metrics, s: &Snapshot) -> String {
    let mut out = Exposition(String::new());
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;

    out.single("goat_raft_term", "gauge", "The current Raft term.", s.term as f64);
    out.single("goat_raft_leader", "gauge", "1 if this manager leads, else 0.", if s.leader { 1.0 } else { 0.0 });
    out.single(
        "goat_raft_leader_changes_total",
        "counter",
        "Times this manager saw a new leader.",
        counter(&metrics.leader_changes),
    );
    out.single(
        "goat_raft_term_changes_total",
        "counter",
        "Times the Raft term rose while this manager ran (the bootstrap not counted): elections anywhere, planned or not.",
        counter(&metrics.term_changes),
    );
    out.single(
        "goat_raft_elections_started_total",
        "counter",
        "Elections this manager stood in (after a granted pre-vote, or handed over to).",
        s.elections_started as f64,
    );
    out.single(
        "goat_raft_transfers_total",
        "counter",
        "Leaderships this manager handed over on purpose (planned failovers).",
        s.transfers as f64,
    );
    out.single(
        "goat_raft_prevotes_refused_total",
        "counter",
        "Pre-votes this manager asked for that no majority granted.",
        s.prevotes_refused as f64,
    );
    out.single(
        "goat_raft_timer_max_lateness_ms",
        "gauge",
        "The longest the Raft timer woke late past one heartbeat (the runtime was busy), in ms.",
        s.timer_lateness_ms as f64,
    );
    let index = |i: Option<u64>| i.map_or(-1.0, |i| i as f64);
    out.single(
        "goat_raft_last_log_index",
        "gauge",
        "The last index in this manager's log (-1: none).",
        index(s.last_log_index),
    );
    let committed = metrics.committed.load(Ordering::Relaxed).checked_sub(1);
    out.single("goat_raft_commit_index", "gauge", "The last index known committed (-1: none yet).", index(committed));
    out.single(
        "goat_raft_applied_index",
        "gauge",
        "The last index applied to the state machine (-1: none).",
        index(s.applied_index),
    );
    out.single(
        "goat_raft_appended_entries_total",
        "counter",
        "Entries appended to this manager's log.",
        counter(&metrics.appended_entries),
    );
    out.family("goat_raft_append_duration_seconds", "histogram", "Time for an append to the log to become durable.");
    out.histogram("goat_raft_append_duration_seconds", &[], &metrics.append);

    let requests = metrics.requests.lock().clone();
    out.family("goat_api_requests_total", "counter", "HTTP requests answered, by matched route, method and status.");
    for (key, h) in &requests {
        let status = key.status.to_string();
        let labels = [("route", key.route.as_str()), ("method", key.method.as_str()), ("status", status.as_str())];
        out.sample("goat_api_requests_total", &labels, h.count() as f64);
    }
    out.family(
        "goat_api_request_duration_seconds",
        "histogram",
        "Time to answer (to the response head), by route, method and status.",
    );
    for (key, h) in &requests {
        let status = key.status.to_string();
        let labels = [("route", key.route.as_str()), ("method", key.method.as_str()), ("status", status.as_str())];
        out.histogram("goat_api_request_duration_seconds", &labels, h);
    }

    out.single(
        "goat_scheduler_placements_total",
        "counter",
        "Tasks placed on a node (pending to scheduled), as applied here.",
        counter(&metrics.placements),
    );
    out.single("goat_scheduler_pending_tasks", "gauge", "Tasks waiting for a node.", s.pending as f64);
    out.family(
        "goat_scheduler_placement_latency_seconds",
        "histogram",
        "Time a task spent pending before it was placed (its events' timestamps).",
    );
    out.histogram("goat_scheduler_placement_latency_seconds", &[], &metrics.placement_latency);

    out.family("goat_tasks", "gauge", "Tasks by state.");
    for state in TaskState::ALL {
        out.sample("goat_tasks", &[("state", state.as_str())], s.tasks.get(&state).copied().unwrap_or(0) as f64);
    }
    out.single(
        "goat_task_restarts",
        "gauge",
        "Container restarts of every task's current placement, summed (as workers count them).",
        s.restarts as f64,
    );
    out.family("goat_nodes", "gauge", "Worker nodes by status.");
    for status in [NodeStatus::Ready, NodeStatus::Down, NodeStatus::Draining] {
        let name = node_status(status);
        out.sample("goat_nodes", &[("status", name)], s.nodes.get(name).copied().unwrap_or(0) as f64);
    }
    out.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_come_from_fixed_sets() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for invented in ["FOO", "BREW", "x1"] {
            assert_eq!(method_label(&Method::from_bytes(invented.as_bytes()).unwrap()), "other");
        }
        assert_eq!(route_label(None), "other");
    }

    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        let mut out = Exposition(String::new());
        out.histogram("x_seconds", &[("route", "/v1/tasks/{id}")], &h);
        let text = out.0;
        assert!(text.contains("x_seconds_bucket{route=\"/v1/tasks/{id}\",le=\"0.01\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{route=\"/v1/tasks/{id}\",le=\"0.1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{route=\"/v1/tasks/{id}\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum{route=\"/v1/tasks/{id}\"} 2.055\n"), "{text}");
        assert!(text.contains("x_seconds_count{route=\"/v1/tasks/{id}\"} 3\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition(String::new());
        out.sample("m", &[("a", "q\"b\\n\nx")], 1.0);
        assert_eq!(out.0, "m{a=\"q\\\"b\\\\n\\nx\"} 1\n");
    }

    #[test]
    fn the_exposition_has_every_family_once_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.request("/v1/tasks/{id}", "GET", 404, Duration::from_millis(3));
        metrics.request("/v1/tasks/{id}", "GET", 404, Duration::from_millis(4));
        let mut pending = HashMap::new();
        let id = uuid::Uuid::nil();
        let event = |index, at, from, state| ClusterEvent::Task {
            index,
            at,
            task: id,
            name: "t".into(),
            from,
            state,
            node: None,
            reason: None,
        };
        metrics.observe_event(&event(1, 1_000, None, TaskState::Pending), &mut pending);
        metrics.observe_event(&event(2, 1_250, Some(TaskState::Pending), TaskState::Scheduled), &mut pending);
        // A restart (running -> scheduled) is not a placement.
        metrics.observe_event(&event(3, 1_300, Some(TaskState::Running), TaskState::Scheduled), &mut pending);
        let snapshot = Snapshot {
            term: 3,
            leader: true,
            applied_index: Some(12),
            tasks: BTreeMap::from([(TaskState::Running, 2)]),
            nodes: BTreeMap::from([("ready", 1)]),
            ..Snapshot::default()
        };
        let text = render_with(&metrics, &snapshot);
        for line in [
            "goat_raft_term 3",
            "goat_raft_leader 1",
            "goat_raft_applied_index 12",
            "goat_raft_last_log_index -1",
            "goat_raft_commit_index -1",
            "goat_api_requests_total{route=\"/v1/tasks/{id}\",method=\"GET\",status=\"404\"} 2",
            "goat_scheduler_placements_total 1",
            "goat_scheduler_placement_latency_seconds_bucket{le=\"0.25\"} 1",
            "goat_scheduler_placement_latency_seconds_bucket{le=\"0.1\"} 0",
            "goat_tasks{state=\"running\"} 2",
            "goat_tasks{state=\"failed\"} 0",
            "goat_nodes{status=\"ready\"} 1",
            "goat_nodes{status=\"down\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample belongs to a family declared once, before it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.iter().any(|d| d == f)))
                    .unwrap_or(name);
                assert!(declared.iter().any(|d| d == family), "{name} has no # TYPE before it");
            }
        }
    }
}
