//! The worker end to end with the echo app: three real managers, one real
//! `goat worker`, the real Docker engine and the `goat-echo:latest` image
//! (built by deploy/build-images.sh on first use).
//!
//! Deadlines are generous: they bound convergence, they do not measure speed.

mod common;

use goat_storage::model::{Health, Task, TaskState};
use std::time::Duration;

use common::worker::DOCKER_SOCKET;
use common::worker::{client, docker_inspect, ensure_images, host_port, unique, wait_echo, wait_task, WorkerProc};
use common::Cluster;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);

fn restarts(task: &Task) -> u64 {
    u64::from(task.restarts)
}

/// The issue's walk-through on the fixed port 7777: runs and echoes, is
/// restarted after a crash, is restarted after its health check fails, and
/// stops on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_runs_crashes_fails_health_and_stops() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let node = unique("w-echo");
    let worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);

    let spec = json!({
        "name": unique("echo"),
        "image": "goat-echo:latest",
        "cpu": 0.1,
        "memory": 64 << 20,
        "ports": [{"container": 7777, "host": 7777}],
        "health_check": {"path": "/health", "port": 7777, "interval": "300ms", "timeout": "500ms",
                         "failure_threshold": 3, "start_period": "2s"},
        "restart_policy": {"condition": "on-failure", "max_attempts": 5, "initial_delay": "200ms",
                           "max_delay": "2s", "reset_after": "1m"}
    });
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();

    let running = wait_task(&cluster, &id, "running and healthy", CONVERGE, |t| {
        t.state == TaskState::Running && t.health == Health::Healthy
    })
    .await;
    assert_eq!(host_port(&running, 7777), Some(7777), "{running:#?}");
    assert_eq!(running.node.as_deref(), Some(node.as_str()));
    let body = r#"{"Msg":"Hello, world!"}"#;
    wait_echo(7777, body, CONVERGE).await;

    // An app bug: the process exits 1. The worker restarts it.
    let _ = client().post("http://127.0.0.1:7777/crash").send().await;
    let after_crash = wait_task(&cluster, &id, "restarted after the crash", CONVERGE, |t| {
        restarts(t) >= 1 && t.state == TaskState::Running && t.health == Health::Healthy
    })
    .await;
    wait_echo(7777, body, CONVERGE).await;

    // A wedged app: alive but failing its health check. Restarted too.
    let before = restarts(&after_crash);
    let resp = client().post("http://127.0.0.1:7777/fail-health").send().await.expect("fail-health");
    assert_eq!(resp.status(), 200);
    let after_health = wait_task(&cluster, &id, "restarted after failing health", CONVERGE, |t| {
        restarts(t) > before && t.state == TaskState::Running && t.health == Health::Healthy
    })
    .await;
    wait_echo(7777, body, CONVERGE).await;
    let container = after_health.container_id.clone().expect("container id").to_string();
    assert_eq!(docker_inspect(&container, "{{.HostConfig.RestartPolicy.Name}}").as_deref(), Some("no"));

    // Stop on request: the container goes away and the task completes.
    let resp = cluster.http.delete(format!("{}/v1/tasks/{id}", cluster.url(1))).send().await.expect("DELETE");
    assert!(resp.status().is_success(), "DELETE answered {}", resp.status());
    wait_task(&cluster, &id, "completed", CONVERGE, |t| t.state == TaskState::Completed).await;
    let deadline = std::time::Instant::now() + CONVERGE;
    while !worker.containers().is_empty() {
        assert!(std::time::Instant::now() < deadline, "container still there after stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bad configuration: the app exits 1 at startup every time. The worker
/// retries with growing delays, then gives up and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn startup_failure_is_retried_then_fails_with_a_reason() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let node = unique("w-fail");
    let worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);

    let spec = json!({
        "name": unique("broken"),
        "image": "goat-echo:latest",
        "cpu": 0.1,
        "memory": 64 << 20,
        "env": {"ECHO_FAIL_STARTUP": "1"},
        "restart_policy": {"condition": "on-failure", "max_attempts": 3, "initial_delay": "100ms",
                           "max_delay": "1s", "reset_after": "1m"},
        // This test is about the worker giving up; the leader's rescheduling
        // is tested in tests/scheduling.rs.
        "reschedule_policy": {"attempts": 0}
    });
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();
    let failed = wait_task(&cluster, &id, "failed", CONVERGE, |t| t.state == TaskState::Failed).await;
    assert_eq!(restarts(&failed), 3, "{failed:#?}");
    let reason = failed.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("exit code 1"), "reason: {reason}");
    assert!(reason.contains("3 restarts"), "reason: {reason}");
    // The failed task is off the node: its container is cleaned up.
    let deadline = std::time::Instant::now() + CONVERGE;
    while !worker.containers().is_empty() {
        assert!(std::time::Instant::now() < deadline, "container of the failed task still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A task whose image no engine has fails with `image not found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_image_fails_with_a_reason() {
    let cluster = Cluster::start(3, &[]).await;
    let node = unique("w-img");
    let _worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let image = format!("{}:latest", unique("goat-nonexistent"));
    let spec = json!({"name": unique("ghost"), "image": image, "cpu": 0.1, "memory": 16 << 20,
                      "reschedule_policy": {"attempts": 0}});
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();
    let failed = wait_task(&cluster, &id, "failed", CONVERGE, |t| t.state == TaskState::Failed).await;
    assert_eq!(failed.reason.as_deref(), Some(format!("image not found: {image}").as_str()), "{failed:#?}");
}

/// A fixed host port another process holds: each start fails, counted once
/// per attempt under the restart policy, and the task fails saying why; no
/// never-started container is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_host_port_fails_with_a_reason() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let node = unique("w-port");
    let worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let holder = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a port");
    let port = holder.local_addr().expect("local addr").port();
    let spec = json!({
        "name": unique("clash"),
        "image": "goat-echo:latest",
        "memory": 16 << 20,
        "ports": [{"container": 7777, "host": port}],
        "restart_policy": {"condition": "on-failure", "max_attempts": 1, "initial_delay": "100ms",
                           "max_delay": "1s", "reset_after": "1m"},
        "reschedule_policy": {"attempts": 0}
    });
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();
    let failed = wait_task(&cluster, &id, "failed", CONVERGE, |t| t.state == TaskState::Failed).await;
    let reason = failed.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("could not start") && reason.contains(&port.to_string()), "reason: {reason}");
    assert_eq!(restarts(&failed), 1, "one failed start per attempt: {failed:#?}");
    assert!(worker.containers().is_empty(), "a container that never started was left behind");
    drop(holder);
}
