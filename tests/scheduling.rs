//! Placement through the leader's control loops, with real managers and
//! workers: a task that fits nowhere waits with a reason and is placed once
//! room appears; a leader killed during a burst of submissions neither loses
//! nor double-places a task, and the new leader marks no healthy node down.

mod common;

use goat::headroom::NodeLoss;
use goat_storage::model::{NodeStatus, PortMapping, Task, TaskSpec, TaskState};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::worker::{ensure_images, unique, wait_node, wait_task, WorkerProc, DOCKER_SOCKET};
use common::{goat_bin, Cluster, TOKEN};
use futures::stream::{self, StreamExt};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);

/// A worker that reports less memory than the machine has.
/// A worker offering only `memory` to tasks (`goat worker --memory`).
fn small_worker(cluster: &Cluster, name: &str, memory: &str) -> WorkerProc {
    WorkerProc::for_cluster_with(name, cluster, DOCKER_SOCKET, &["--memory", memory])
}

fn sleeper(name: &str, memory: u64) -> TaskSpec {
    let mut spec = common::spec(name);
    spec.memory = memory;
    spec.ports = vec![PortMapping { container: 7777, host: None }];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_too_big_for_every_node_waits_with_a_reason_until_room_appears() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let small = small_worker(&cluster, &unique("small"), "256MiB");
    wait_node(&cluster, &small.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;

    let task = cluster.submit(1, &sleeper(&unique("big"), 1 << 30)).await;
    let id = task.id.to_string();
    let pending = wait_task(&cluster, &id, "pending with a reason", CONVERGE, |t| {
        t.state == TaskState::Pending && t.reason.as_deref().is_some_and(|r| r.contains("memory"))
    })
    .await;
    let reason = pending.reason.as_deref().unwrap_or_default().to_string();
    assert!(reason.contains("1.0 GiB"), "{reason}");

    // A node with room joins: the task is placed there.
    let big = small_worker(&cluster, &unique("big"), "2GiB");
    let placed = wait_task(&cluster, &id, "running", CONVERGE, |t| t.state == TaskState::Running).await;
    assert_eq!(placed.node.as_deref(), Some(big.name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_during_a_burst_loses_and_duplicates_nothing() {
    ensure_images();
    let mut cluster = Cluster::start(3, &[]).await;
    let worker = WorkerProc::for_cluster(&unique("burst"), &cluster, DOCKER_SOCKET);
    wait_node(&cluster, &worker.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = cluster.alive_ids().into_iter().filter(|id| *id != leader).collect();

    // 20 submissions through the followers; the leader dies in the middle.
    let prefix = unique("burst");
    let submit = |i: usize| {
        let cluster = &cluster;
        let through = followers[i % followers.len()];
        let spec = sleeper(&format!("{prefix}-{i}"), 64 << 20);
        async move {
            let response =
                cluster.http.post(format!("{}/v1/tasks", cluster.url(through))).json(&spec).send().await.ok()?;
            if response.status() != 201 {
                return None;
            }
            let task: Task = response.json().await.ok()?;
            Some(task.id.to_string())
        }
    };
    let first: Vec<Option<String>> = stream::iter(0..10).map(submit).buffer_unordered(8).collect().await;
    let mut acknowledged: BTreeSet<String> = first.into_iter().flatten().collect();
    // Kill the leader while the next half is in flight.
    let second = stream::iter(10..20).map(submit).buffer_unordered(8).collect::<Vec<Option<String>>>();
    let kill = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let (second, ()) = tokio::join!(second, kill);
    cluster.kill(leader);
    acknowledged.extend(second.into_iter().flatten());
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);

    // Every acknowledged task exists and ends up running exactly once.
    for id in &acknowledged {
        let task = wait_task(&cluster, id, "running", 2 * CONVERGE, |t| t.state == TaskState::Running).await;
        assert_eq!(task.generation, 1, "placed once: {task:#?}");
    }
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=goat.node={}", worker.name)])
        .output()
        .expect("docker ps");
    let running = String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count();
    let all = cluster.tasks(new_leader, false).await;
    let ours = all.iter().filter(|t| t.spec.name.starts_with(&prefix)).count();
    assert!(acknowledged.len() >= 10, "the first half was acknowledged before the kill");
    assert_eq!(running, ours, "one container per stored task, no duplicates");

    // The new leader did not mark the healthy worker down.
    let node = wait_node(&cluster, &worker.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    assert_eq!(node.node.status, NodeStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_fails_on_its_node_is_rescheduled_elsewhere_until_its_policy_runs_out() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let a = small_worker(&cluster, &unique("ra"), "4GiB");
    let b = small_worker(&cluster, &unique("rb"), "4GiB");
    wait_node(&cluster, &a.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    wait_node(&cluster, &b.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;

    // Fails at startup everywhere: one restart, then one reschedule.
    let spec = json!({
        "name": unique("flaky"), "image": "goat-echo:latest", "cpu": 0.01, "memory": 64 << 20,
        "env": {"ECHO_FAIL_STARTUP": "1"},
        "restart_policy": {"max_attempts": 1, "initial_delay": "100ms", "max_delay": "100ms"},
        "reschedule_policy": {"attempts": 1, "delay": "500ms", "max_delay": "1s", "interval": "1h"}
    });
    let task = cluster.submit(1, &spec).await;
    let id = task.id.to_string();
    let rescheduled = wait_task(&cluster, &id, "failed after a reschedule", CONVERGE, |t| {
        t.state == TaskState::Failed && t.reschedules.len() == 1
    })
    .await;
    let first_node = rescheduled.failed_on.clone().expect("failed_on");
    assert_ne!(rescheduled.node.as_deref(), Some(first_node.as_str()), "the second try avoided the node it failed on");
    assert_eq!(rescheduled.generation, 2);
    // The policy is spent: it stays failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = wait_task(&cluster, &id, "still failed", CONVERGE, |t| t.state == TaskState::Failed).await;
    assert_eq!(after.generation, 2);
    let states: Vec<&str> = after.events.iter().map(|e| e.state.as_str()).collect();
    assert!(states.windows(2).any(|w| w == ["failed", "pending"]), "{states:?}");
}

/// `goat plan node-loss` on a real cluster: a node with a task too big for
/// every other node names that task and the scheduler's reason, and exits 6;
/// the plan for the small node fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_node_loss_names_the_task_that_would_find_no_place_and_why() {
    ensure_images();
    let cluster = Cluster::start(3, &[]).await;
    let small = small_worker(&cluster, &unique("small"), "256MiB");
    let big = small_worker(&cluster, &unique("big"), "2GiB");
    for worker in [&small, &big] {
        wait_node(&cluster, &worker.name, "ready", CONVERGE, |n| n.node.status == NodeStatus::Ready).await;
    }
    let hog = cluster.submit(1, &sleeper(&unique("hog"), 1 << 30)).await;
    let hog_id = hog.id.to_string();
    let placed = wait_task(&cluster, &hog_id, "placed", CONVERGE, |t| t.node.is_some()).await;
    assert_eq!(placed.node.as_deref(), Some(big.name.as_str()), "only the big node fits 1 GiB");

    let addrs: Vec<String> = cluster.managers.iter().map(|m| m.addr.clone()).collect();
    let plan = |args: &[&str]| {
        Command::new(goat_bin())
            .args(["plan", "node-loss"])
            .args(args)
            .args(["--addr", &addrs.join(","), "--token", TOKEN])
            .output()
            .expect("run goat plan")
    };
    let out = plan(&[&big.name]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("goat plan node-loss {}:\n{text}{}", big.name, String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(6), "exit 6: a task would find no place");
    assert!(text.contains(&hog_id), "names the task: {text}");
    assert!(text.contains("memory"), "gives the scheduler's reason: {text}");

    // Without a node: the busiest (the big node, the only one with a task).
    let out = plan(&["--json"]);
    let json: NodeLoss = serde_json::from_slice(&out.stdout).expect("a node-loss plan");
    assert_eq!(json.node, big.name);
    assert!(json.busiest);
    assert!(!json.fits);
    // The small node runs nothing: losing it strands nothing.
    let out = plan(&[&small.name]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // An unknown node is a 404.
    assert_eq!(plan(&["no-such-node"]).status.code(), Some(3));
    let _ = cluster.http.delete(format!("{}/v1/tasks/{hog_id}", cluster.url(1))).send().await;
}
