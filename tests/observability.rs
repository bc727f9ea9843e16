//! Observability against a real cluster: three `goat manager` processes,
//! `GET /v1/metrics` in the Prometheus text format, the OpenAPI document,
//! and `GET /v1/events` followed while a real task (real worker, real
//! Docker engine, `goat-echo:latest`) starts and stops, resumed from an
//! index on other managers and through `goat events`.
//!
//! Deadlines bound convergence; they do not measure speed.

mod common;

use goat::client::{Events, StreamItem};
use goat_storage::events::ClusterEvent;
use goat_storage::model::{NodeStatus, TaskState};
use std::process::Command;
use std::time::Duration;

use common::worker::{unique, wait_task, WorkerProc, DOCKER_SOCKET};
use common::{answer, free_port, goat_bin, spec, Cluster, ErrorCode};
// `Value` only to compare the served OpenAPI document with the committed
// file as JSON, byte for byte in meaning.
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);

/// The value of the sample `line_prefix VALUE` in a metrics exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_raft_api_and_task_series_and_the_api_is_described() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(CONVERGE).await;
    let follower = cluster.follower(leader);
    // No worker: the task stays pending.
    let task = cluster.submit(follower, &spec("metrics")).await;
    let id = task.id.to_string();
    let got = cluster.http.get(format!("{}/v1/tasks/{id}", cluster.url(follower))).send().await.expect("GET task");
    assert_eq!(got.status(), 200);
    let missing = format!("{}/v1/tasks/{}", cluster.url(follower), uuid::Uuid::nil());
    assert_eq!(cluster.http.get(missing).send().await.expect("GET missing").status(), 404);

    for id in [leader, follower] {
        let response = cluster.http.get(format!("{}/v1/metrics", cluster.url(id))).send().await.expect("metrics");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_string();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let text = response.text().await.expect("metrics text");
        // Raft.
        assert!(sample(&text, "goat_raft_term").is_some_and(|t| t >= 1.0), "{text}");
        assert_eq!(sample(&text, "goat_raft_leader"), Some(if id == leader { 1.0 } else { 0.0 }));
        assert!(sample(&text, "goat_raft_leader_changes_total").is_some_and(|n| n >= 1.0), "{text}");
        assert!(sample(&text, "goat_raft_applied_index").is_some_and(|i| i >= 1.0), "{text}");
        assert!(sample(&text, "goat_raft_commit_index").is_some_and(|i| i >= 1.0), "{text}");
        assert!(sample(&text, "goat_raft_append_duration_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
        // Tasks and the scheduler, from the applied state (the same on every manager).
        assert_eq!(sample(&text, "goat_tasks{state=\"pending\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "goat_scheduler_pending_tasks"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "goat_nodes{status=\"ready\"}"), Some(0.0), "{text}");
        assert!(text.contains("# TYPE goat_api_request_duration_seconds histogram"), "{text}");
    }
    // API series are per manager, labelled by the matched route.
    let text = cluster.http.get(format!("{}/v1/metrics", cluster.url(follower))).send().await.unwrap();
    let text = text.text().await.expect("metrics text");
    let series = "goat_api_requests_total{route=\"/v1/tasks/{id}\",method=\"GET\",status=";
    assert_eq!(sample(&text, &format!("{series}\"200\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("{series}\"404\"}}")), Some(1.0), "{text}");
    assert!(sample(&text, "goat_api_requests_total{route=\"/v1/tasks\",method=\"POST\",status=\"201\"}").is_some());
    assert!(!text.contains(id.as_str()), "raw paths must not become labels");

    // The OpenAPI document is served and lists this route.
    let doc: Value = cluster
        .http
        .get(format!("{}/v1/openapi.json", cluster.url(follower)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("openapi JSON");
    let typed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).expect("an OpenAPI document");
    assert!(typed.paths.paths.get("/v1/events").is_some_and(|p| p.get.is_some()), "{doc}");
    // It is the committed one (the generated document; see docs/api.md).
    let committed: Value = serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json");
    assert!(doc == committed, "the served document differs from docs/openapi.json");

    // A bad resume point is a 400 naming it.
    let bad = cluster.http.get(format!("{}/v1/events?index=soon", cluster.url(follower))).send().await.unwrap();
    assert_eq!(answer::<Value>(bad).await.refusal(), (400, ErrorCode::InvalidQuery, Some("index")));
    let bad = cluster
        .http
        .get(format!("{}/v1/events", cluster.url(follower)))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer::<Value>(bad).await.refusal(), (400, ErrorCode::InvalidHeader, Some("Last-Event-ID")));
}

/// `GET /v1/events` of one manager, through the client's event stream.
struct Sse(Events);

impl Sse {
    /// From manager `id`, after `index` (`?index=`) or `last_event_id`
    /// (the `Last-Event-ID` header), or new events only.
    fn open(cluster: &Cluster, id: u64, index: Option<u64>, last_event_id: Option<u64>) -> Sse {
        let events = cluster.api.events(index.or(last_event_id)).on(cluster.index(id));
        Sse(if last_event_id.is_some() { events.by_last_event_id() } else { events })
    }

    async fn next(&mut self) -> StreamItem {
        let item = tokio::time::timeout(CONVERGE, self.0.next()).await;
        item.expect("an event within the deadline").expect("the stream stays open")
    }

    /// Reads until the event task `id` enters `state`; returns the indexes
    /// and states of that task's events on the way.
    async fn until_task(&mut self, id: &str, state: TaskState, seen: &mut Vec<(u64, TaskState)>) {
        loop {
            if let StreamItem::Event { event: ClusterEvent::Task { index, task, state: s, .. }, .. } = self.next().await
            {
                if task.to_string() == id {
                    seen.push((index, s));
                    if s == state {
                        return;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_follow_a_task_start_and_stop_and_resume_from_an_index_on_any_manager() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(CONVERGE).await;
    let follower = cluster.follower(leader);
    let other = cluster.alive_ids().into_iter().find(|id| *id != leader && *id != follower).expect("third");

    // Follow on a follower, new events only.
    let mut stream = Sse::open(&cluster, follower, None, None);
    let StreamItem::Open { index: start, .. } = stream.next().await else {
        panic!("the stream opens with its resume point")
    };

    let node = unique("w-events");
    let _worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    loop {
        if let StreamItem::Event { event: ClusterEvent::Node { index, node: name, status, reason, .. }, .. } =
            stream.next().await
        {
            if name == node {
                assert_eq!(status, NodeStatus::Ready);
                assert_eq!(reason.as_deref(), Some("registered"));
                assert!(index > start);
                break;
            }
        }
    }

    let spec = json!({"name": unique("events"), "image": "goat-echo:latest", "cpu": 0.05, "memory": 32 << 20});
    let task = cluster.submit(leader, &spec).await;
    let id = task.id.to_string();
    let mut seen = Vec::new();
    stream.until_task(&id, TaskState::Running, &mut seen).await;
    let stop = cluster.api.delete(format!("/v1/tasks/{id}")).on(cluster.index(follower)).send().await.unwrap();
    assert_eq!(stop.status, 202);
    stream.until_task(&id, TaskState::Completed, &mut seen).await;
    let states: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["pending", "scheduled", "running", "completed"], "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "indexes increase: {seen:?}");
    wait_task(&cluster, &id, "completed", CONVERGE, |t| t.state == TaskState::Completed).await;

    // Resume after the `scheduled` event on the leader (Last-Event-ID) and on
    // the third manager (?index=): the same events with the same indexes.
    let after_scheduled = seen[1].0;
    for (manager, query, header) in [(leader, None, Some(after_scheduled)), (other, Some(after_scheduled), None)] {
        let mut resumed = Sse::open(&cluster, manager, query, header);
        let StreamItem::Open { index: open, .. } = resumed.next().await else { panic!("opens first") };
        assert_eq!(open, after_scheduled);
        let mut again = Vec::new();
        resumed.until_task(&id, TaskState::Completed, &mut again).await;
        assert_eq!(again, seen[2..], "resumed on manager {manager}");
    }

    // `goat events` replays everything retained, surviving a dead first address.
    let dead = format!("127.0.0.1:{}", free_port());
    let addrs = format!("{dead},{}", cluster.managers[0].addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(goat_bin())
            .args(["events", "--index", "0", "--json", "--limit", "3"])
            .env("GOAT_ADDR", addrs)
            .env("GOAT_TOKEN", common::TOKEN)
            .output()
    });
    let output = tokio::time::timeout(CONVERGE, output).await.expect("goat events exits").unwrap().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<ClusterEvent> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.windows(2).all(|w| w[0].index() < w[1].index()), "{lines:?}");
}
