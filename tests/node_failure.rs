//! Losing a worker: the leader marks it down after its heartbeat deadline
//! and moves its tasks to another worker; when it comes back its stale
//! copies are stopped, so at most one copy of a task runs. A task with a
//! disconnect window waits for its node (`unknown`) and moves only once the
//! window is over. Draining moves tasks off a node on purpose. Real managers, real workers sharing the
//! machine's Docker engine (each with its own node name).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::worker::{ensure_images, host_port, unique, wait_echo, wait_node, wait_task, WorkerProc, DOCKER_SOCKET};
use common::Cluster;
use goat_storage::model::{Health, NodeStatus, Task, TaskSpec, TaskState};
use goat_storage::Millis;

const CONVERGE: Duration = Duration::from_secs(60);
const BODY: &str = r#"{"Msg":"Hello, world!"}"#;

/// Managers that mark a silent node down after 3 s.
async fn cluster() -> Cluster {
    Cluster::start(3, &["--node-down-after", "3s"]).await
}

/// The echo app under a fresh name (the harness's fixture).
fn echo_spec() -> TaskSpec {
    common::echo_spec(&unique("echo"))
}

/// Two workers, both ready, and the echo task running on one of them: the
/// workers, the task's id and the task as it first ran.
async fn two_workers_and_an_echo(cluster: &Cluster) -> (WorkerProc, WorkerProc, String, Task) {
    let a = WorkerProc::for_cluster(&unique("wa"), cluster, DOCKER_SOCKET);
    let b = WorkerProc::for_cluster(&unique("wb"), cluster, DOCKER_SOCKET);
    for w in [&a, &b] {
        wait_node(cluster, &w.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    }
    let id = cluster.submit(1, &echo_spec()).await.id.to_string();
    let first = wait_task(cluster, &id, "running", CONVERGE, |t| t.state == TaskState::Running).await;
    (a, b, id, first)
}

/// Running containers of task `id` on this engine, whatever node made them.
fn running_copies(id: &str) -> usize {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=goat.task={id}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

fn signal(worker: &WorkerProc, sig: &str) {
    let pid = worker.child.as_ref().expect("worker running").id();
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits until the task runs healthy on a node other than `not_on`.
async fn wait_moved(cluster: &Cluster, id: &str, not_on: &str) -> Task {
    wait_task(cluster, id, "running elsewhere", CONVERGE, |t| {
        t.state == TaskState::Running && t.health == Health::Healthy && t.node.as_deref() != Some(not_on)
    })
    .await
}

/// Waits until at most one copy of the task runs, and returns how many do.
async fn settle_copies(id: &str) -> usize {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let n = running_copies(id);
        if n <= 1 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_machine_s_tasks_run_elsewhere_and_are_not_duplicated_when_it_returns() {
    ensure_images();
    let cluster = cluster().await;
    let (mut a, mut b, id, first) = two_workers_and_an_echo(&cluster).await;
    let node = first.node.clone().expect("node");
    let (lost, other) = if node == a.name { (&mut a, &mut b) } else { (&mut b, &mut a) };

    // The machine dies: its worker and its containers are gone.
    lost.kill();
    for c in lost.containers() {
        let _ = Command::new("docker").args(["rm", "-f", &c]).output();
    }
    let moved = wait_moved(&cluster, &id, &lost.name).await;
    assert_eq!(moved.node.as_deref(), Some(other.name.as_str()));
    assert!(moved.generation > first.generation);
    wait_node(&cluster, &lost.name, "down", CONVERGE, |n| n.node.status == NodeStatus::Down).await;
    wait_echo(host_port(&moved, 7777).expect("port"), BODY, CONVERGE).await;

    // It comes back: after convergence nothing is duplicated. (Before it
    // hears from a manager, a restarted worker may restore what its local
    // store says it runs; the leader's answer then fences that copy.)
    lost.spawn();
    wait_node(&cluster, &lost.name, "ready again", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    assert_eq!(settle_copies(&id).await, 1, "at most one running copy after convergence");
    let task = wait_task(&cluster, &id, "still running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(task.node, moved.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_worker_s_stale_copies_are_stopped_when_it_returns() {
    ensure_images();
    let cluster = cluster().await;
    let (mut a, mut b, id, first) = two_workers_and_an_echo(&cluster).await;
    let node = first.node.clone().expect("node");
    let (cut, _other) = if node == a.name { (&mut a, &mut b) } else { (&mut b, &mut a) };

    // The managers stop hearing from it; its container keeps running.
    signal(cut, "-STOP");
    let moved = wait_moved(&cluster, &id, &cut.name).await;
    assert_eq!(running_copies(&id), 2, "the cut-off copy still runs during the partition");

    // Back: its copy is stale (older generation) and is stopped.
    signal(cut, "-CONT");
    assert_eq!(settle_copies(&id).await, 1, "at most one running copy after convergence");
    let task = wait_task(&cluster, &id, "still running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(task.node, moved.node);
    wait_echo(host_port(&task, 7777).expect("port"), BODY, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_with_a_disconnect_window_wait_for_their_node_and_move_only_once_it_is_over() {
    ensure_images();
    let cluster = cluster().await;
    let mut a = WorkerProc::for_cluster(&unique("wa"), &cluster, DOCKER_SOCKET);
    let mut b = WorkerProc::for_cluster(&unique("wb"), &cluster, DOCKER_SOCKET);
    wait_node(&cluster, &a.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    wait_node(&cluster, &b.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    // Two tasks on one node: one waits far longer than this test lasts for
    // its node to come back, the other only 2 s.
    let mut long = echo_spec();
    long.disconnect_window = Some(Millis(600_000));
    let long = cluster.submit(1, &long).await.id.to_string();
    let first = wait_task(&cluster, &long, "running", CONVERGE, |t| t.state == TaskState::Running).await;
    let node = first.node.clone().expect("node");
    let (cut, other) = if node == a.name { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let mut short = echo_spec();
    short.disconnect_window = Some(Millis(2_000));
    // Bin-packing puts it on the fuller node, the same one.
    let short = cluster.submit(1, &short).await.id.to_string();
    let short_first = wait_task(&cluster, &short, "running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(short_first.node.as_deref(), Some(cut.name.as_str()));

    // The managers stop hearing from the node: both tasks wait `unknown`
    // where they are, then the short window ends and that task moves.
    signal(cut, "-STOP");
    wait_node(&cluster, &cut.name, "down", CONVERGE, |n| n.node.status == NodeStatus::Down).await;
    let moved = wait_moved(&cluster, &short, &cut.name).await;
    assert_eq!(moved.node.as_deref(), Some(other.name.as_str()));
    assert_eq!(moved.generation, 2);
    let states: Vec<&str> = moved.events.iter().map(|e| e.state.as_str()).collect();
    assert!(states.windows(3).any(|w| w == ["running", "unknown", "pending"]), "{states:?}");
    let waiting = wait_task(&cluster, &long, "unknown", CONVERGE, |t| t.state == TaskState::Unknown).await;
    assert_eq!(waiting.node.as_deref(), Some(cut.name.as_str()), "not moved within its window");
    assert_eq!(waiting.generation, 1);

    // The node is back within the long window: that task carries on, same
    // container, no restart; the moved task's stale copy is stopped.
    signal(cut, "-CONT");
    let back = wait_task(&cluster, &long, "running again", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(back.node.as_deref(), Some(cut.name.as_str()));
    assert_eq!(back.generation, 1);
    assert_eq!(back.container_id, first.container_id, "the same container");
    assert_eq!(back.restarts, 0);
    let states: Vec<&str> = back.events.iter().map(|e| e.state.as_str()).collect();
    assert!(states.ends_with(&["running", "unknown", "running"]), "{states:?}");
    assert_eq!(running_copies(&long), 1);
    assert_eq!(settle_copies(&short).await, 1, "at most one running copy after convergence");
    let short_now = wait_task(&cluster, &short, "still running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(short_now.node, moved.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_moves_its_tasks() {
    ensure_images();
    let cluster = cluster().await;
    let (_a, _b, id, first) = two_workers_and_an_echo(&cluster).await;
    let node = first.node.clone().expect("node");

    let response = cluster.api.put(format!("/v1/nodes/{node}/drain")).on(1).send().await.expect("PUT drain");
    assert_eq!(response.status, 200);
    wait_node(&cluster, &node, "draining", CONVERGE, |n| n.node.status == NodeStatus::Draining).await;
    wait_moved(&cluster, &id, &node).await;
    assert_eq!(settle_copies(&id).await, 1);
    let response = cluster.api.put("/v1/nodes/no-such-node/drain").on(1).send().await.expect("PUT drain");
    assert_eq!(response.status, 404);

    // Ending the drain: the node takes tasks again (the moved task stays).
    let response = cluster.api.delete(format!("/v1/nodes/{node}/drain")).on(2).send().await.expect("DELETE drain");
    assert_eq!(response.status, 200);
    wait_node(&cluster, &node, "ready again", CONVERGE, |n| n.node.status == NodeStatus::Ready && !n.node.drain).await;
}
