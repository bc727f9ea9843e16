//! The worker's failure modes end to end: its own crash, its engine going
//! away, and the loss of the leader manager. Real managers, real worker
//! processes, the real Docker engine.
//!
//! Deadlines are generous: they bound convergence, they do not measure speed.

mod common;

use goat_storage::model::{Health, PortMapping, RestartCondition, RestartPolicy, Task, TaskSpec, TaskState};
use goat_storage::Millis;
use std::time::Duration;

use common::worker::{
    docker_inspect, ensure_images, host_port, unique, wait_echo, wait_node, wait_task, EngineProxy, WorkerProc,
    DOCKER_SOCKET,
};
use common::Cluster;

const CONVERGE: Duration = Duration::from_secs(60);
const BODY: &str = r#"{"Msg":"Hello, world!"}"#;

/// An echo task with an engine-chosen host port.
/// The echo app under a fresh name, checked every 500 ms (3 failures in
/// a row make it unhealthy) and restarted on failure, 200 ms to 2 s apart.
fn echo_spec() -> TaskSpec {
    let mut spec = common::echo_spec(&unique("echo"));
    if let Some(check) = spec.health_check.as_mut() {
        check.timeout = Millis(500);
        check.failure_threshold = 3;
    }
    spec.restart_policy = RestartPolicy {
        condition: RestartCondition::OnFailure,
        max_attempts: 0,
        initial_delay: Millis(200),
        max_delay: Millis(2_000),
        reset_after: Millis(60_000),
    };
    spec
}

async fn start_echo(cluster: &Cluster) -> (String, Task) {
    let task = cluster.submit(1, &echo_spec()).await;
    let id = task.id.to_string();
    let running =
        wait_task(cluster, &id, "running", CONVERGE, |t| t.state == TaskState::Running && t.health == Health::Healthy)
            .await;
    (id, running)
}

/// SIGKILL the worker: the container keeps answering. Start the worker
/// again: it adopts the same container (same id, same start time), no
/// restart, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_worker_adopts_its_containers() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let node = unique("w-adopt");
    let mut worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let (id, running) = start_echo(&cluster).await;
    let port = host_port(&running, 7777).expect("published port");
    let container = running.container_id.clone().expect("container id").to_string();
    let started = docker_inspect(&container, "{{.State.StartedAt}}").expect("inspect");
    wait_echo(port, BODY, CONVERGE).await;

    worker.kill();
    wait_echo(port, BODY, CONVERGE).await;

    worker.spawn();
    // Let the restarted worker run several rounds and heartbeats.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let task = wait_task(&cluster, &id, "still running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert!(worker.alive(), "worker exited:\n{}", worker.log());
    assert_eq!(task.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(task.restarts, 0, "{task:#?}");
    assert_eq!(worker.containers(), vec![container.clone()], "no duplicate, no orphan");
    assert_eq!(docker_inspect(&container, "{{.State.StartedAt}}").as_deref(), Some(started.as_str()));
    wait_echo(port, BODY, CONVERGE).await;
}

/// The engine goes away under the worker: the worker stays up and reports
/// it; when the engine is back, it re-adopts what survived and recreates
/// what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_rides_out_an_engine_outage() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let mut proxy = EngineProxy::start();
    let node = unique("w-engine");
    let mut worker = WorkerProc::for_cluster(&node, &cluster, &proxy.socket());
    let (a, running_a) = start_echo(&cluster).await;
    let (b, running_b) = start_echo(&cluster).await;
    let container_a = running_a.container_id.clone().expect("container id").to_string();
    let container_b = running_b.container_id.clone().expect("container id").to_string();

    proxy.cut();
    let down = wait_node(&cluster, &node, "reporting its engine down", CONVERGE, |n| !n.node.engine_healthy).await;
    assert!(down.node.engine_error.as_deref().is_some_and(|e| !e.is_empty()), "{down:#?}");
    // Meanwhile one container is lost (removed behind Goat's back).
    let status = std::process::Command::new("docker").args(["rm", "-f", &container_b]).status().expect("docker rm");
    assert!(status.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(worker.alive(), "worker exited while its engine was down:\n{}", worker.log());

    proxy.resume();
    wait_node(&cluster, &node, "reporting its engine back", CONVERGE, |n| n.node.engine_healthy).await;
    let task_a = wait_task(&cluster, &a, "running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(task_a.container_id.as_deref(), Some(container_a.as_str()), "survivor re-adopted");
    let task_b = wait_task(&cluster, &b, "running again", CONVERGE, |t| {
        t.state == TaskState::Running && t.container_id.as_deref().is_some_and(|c| c != container_b)
    })
    .await;
    let port_b = host_port(&task_b, 7777).expect("published port");
    assert_eq!(Some(port_b), host_port(&running_b, 7777), "the recreated container keeps its host port");
    wait_echo(port_b, BODY, CONVERGE).await;
    let port_a = host_port(&task_a, 7777).expect("published port");
    wait_echo(port_a, BODY, CONVERGE).await;
}

/// Killing the leader manager does not disturb the worker: its container
/// keeps running and it keeps reporting (to the new leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_carries_on_when_the_leader_dies() {
    ensure_images();
    let mut cluster = Cluster::start(3, &[]).await;
    let node = unique("w-leader");
    let mut worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let (id, running) = start_echo(&cluster).await;
    let port = host_port(&running, 7777).expect("published port");
    let container = running.container_id.clone().expect("container id").to_string();

    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.kill(leader);
    wait_echo(port, BODY, CONVERGE).await;
    cluster.wait_leader(CONVERGE).await;

    // A crash now is repaired and reported through the new leader.
    let _ = common::worker::client().post(format!("http://127.0.0.1:{port}/crash")).send().await;
    let task = wait_task(&cluster, &id, "restarted under the new leader", CONVERGE, |t| {
        t.state == TaskState::Running && u64::from(t.restarts) >= 1
    })
    .await;
    assert_eq!(task.container_id.as_deref(), Some(container.as_str()));
    assert!(worker.alive(), "worker exited:\n{}", worker.log());
    // The worker chose the host port and keeps it: a client holding the old
    // address is served again.
    assert_eq!(host_port(&task, 7777), Some(port), "{task:#?}");
    wait_echo(port, BODY, CONVERGE).await;
}

/// With every manager down, the worker still repairs its tasks: a crash is
/// restarted locally, and a restarted worker recreates a lost container from
/// the assignments it remembers. When the managers are back, the counts are
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_repairs_tasks_while_no_manager_is_reachable() {
    ensure_images();
    let mut cluster = Cluster::start(3, &[]).await;
    let node = unique("w-alone");
    let mut worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let port = common::free_port();
    let mut spec = echo_spec();
    spec.ports = vec![PortMapping { container: 7777, host: Some(port) }];
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();
    let running =
        wait_task(&cluster, &id, "running", CONVERGE, |t| t.state == TaskState::Running && t.health == Health::Healthy)
            .await;
    let container = running.container_id.clone().expect("container id").to_string();
    wait_echo(port, BODY, CONVERGE).await;

    for id in cluster.alive_ids() {
        cluster.kill(id);
    }
    // A crash with no manager anywhere: restarted in place by the worker.
    let started = docker_inspect(&container, "{{.State.StartedAt}}").expect("inspect");
    let _ = common::worker::client().post(format!("http://127.0.0.1:{port}/crash")).send().await;
    let deadline = std::time::Instant::now() + CONVERGE;
    while docker_inspect(&container, "{{.State.StartedAt}}").as_deref() == Some(started.as_str()) {
        assert!(std::time::Instant::now() < deadline, "not restarted without managers:\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_echo(port, BODY, CONVERGE).await;

    // The worker dies and its container is lost; the restarted worker
    // recreates it from the assignments it stored, still without managers.
    worker.kill();
    let status = std::process::Command::new("docker").args(["rm", "-f", &container]).status().expect("docker rm");
    assert!(status.success());
    worker.spawn();
    wait_echo(port, BODY, CONVERGE).await;
    let containers = worker.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_ne!(containers[0], container);

    // Managers back: the task is reported with the restart counted.
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_leader(CONVERGE).await;
    let task = wait_task(&cluster, &id, "reported again", CONVERGE, |t| {
        t.state == TaskState::Running && t.restarts >= 1 && t.container_id.as_deref() == Some(containers[0].as_str())
    })
    .await;
    assert_eq!(task.node.as_deref(), Some(node.as_str()));
}
