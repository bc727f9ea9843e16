//! A leader that loses its quorum decides nothing from its frozen view
//! (issue 15, point 2), with real manager processes on loopback: both
//! followers are frozen (SIGSTOP) for several node deadlines, so the
//! leader hears neither them nor the heartbeats they relay. It must not
//! answer workers from that view (503: try another manager), and once the
//! followers resume no node may be marked down — the nodes reported all
//! along, to managers that could not pass it on. No Docker: the workers are
//! heartbeats sent by the test. (The compose suite, tests/failover.rs, cuts
//! real networks.)

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use goat::client::NodeView;
use goat_storage::model::NodeStatus;
use serde_json::{json, Value};

fn beat() -> Value {
    json!({"capacity": {"cpu": 2.0, "memory": 1u64 << 30, "disk": 1u64 << 30},
           "engine": {"healthy": true, "error": null}, "tasks": []})
}

fn signal(cluster: &Cluster, id: u64, sig: &str) {
    let pid = cluster.managers.iter().find(|m| m.id == id).and_then(|m| m.child.as_ref()).expect("running").id();
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Heartbeats for `nodes` every 300 ms through `via` (followers only: these
/// workers reach the leader through a relay), until stopped.
fn heartbeats(cluster: &Cluster, nodes: &[&str], via: &[u64], stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().expect("client");
    let urls: Vec<String> = via.iter().map(|id| cluster.url(*id)).collect();
    let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for node in &nodes {
                for url in &urls {
                    let sent = http
                        .post(format!("{url}/v1/nodes/{node}/heartbeat"))
                        .bearer_auth(common::TOKEN)
                        .json(&beat())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// `down` events of `nodes`, as manager `id` holds them.
async fn down_events(cluster: &Cluster, id: u64, nodes: &[&str]) -> Vec<String> {
    let request = cluster.api.get("/v1/nodes?stale=true").on(cluster.index(id));
    let all: Vec<NodeView> = request.json_answer().await.expect("nodes");
    all.iter()
        .filter(|n| nodes.contains(&n.node.name.as_str()))
        .flat_map(|n| {
            let name = &n.node.name;
            n.node.events.iter().filter(|e| e.status == NodeStatus::Down).map(move |e| format!("{name}: {e:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_quorum_marks_no_node_down_and_sends_workers_on() {
    let cluster = Cluster::start(3, &["--node-down-after", "2s"]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let nodes = ["fence-n1", "fence-n2"];
    let stop = Arc::new(AtomicBool::new(false));
    let beating = heartbeats(&cluster, &nodes, &followers, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = cluster.api.get("/v1/nodes").on(cluster.index(leader));
        let all: Vec<NodeView> = request.json_answer().await.expect("nodes");
        if nodes.iter().all(|name| all.iter().any(|n| n.node.name == *name && n.node.status == NodeStatus::Ready)) {
            break;
        }
        assert!(Instant::now() < deadline, "nodes not registered: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both followers freeze for 8 s: four node deadlines.
    for id in &followers {
        signal(&cluster, *id, "-STOP");
    }
    let frozen = Instant::now();
    // A worker that reaches the leader itself is sent on once the leader's
    // lease (about a second) has run out.
    let mut answers = Vec::new();
    let mut sent_on = None;
    while frozen.elapsed() < Duration::from_secs(8) {
        let response = cluster
            .http
            .post(format!("{}/v1/nodes/fence-direct/heartbeat", cluster.url(leader)))
            .bearer_auth(common::TOKEN)
            .json(&beat())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let status = response.as_ref().map(|r| r.status().as_u16()).ok();
        if status == Some(503) && sent_on.is_none() {
            sent_on = Some(frozen.elapsed());
        }
        answers.push(status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for id in &followers {
        signal(&cluster, *id, "-CONT");
    }
    let resumed = Instant::now();
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await;
    // Give a decision taken during the freeze time to commit and apply.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = beating.await;
    let mut down = Vec::new();
    for id in 1..=3 {
        down.extend(down_events(&cluster, id, &nodes).await);
    }
    println!(
        "FIGURES leader {leader} without its quorum for 8 s (node down after 2 s): sent workers on (503) after {:?}; answers {answers:?}; leader {new_leader} {:.1} s after the followers resumed; down events {down:?}",
        sent_on.map(|d| d.as_secs_f64()),
        resumed.elapsed().as_secs_f64() - 3.0,
    );
    assert!(sent_on.is_some(), "the leader kept answering workers from its frozen view: {answers:?}");
    let after: Vec<_> = answers.iter().skip_while(|a| **a != Some(503)).collect();
    assert!(after.iter().all(|a| **a != Some(200)), "answered a worker again while cut off: {answers:?}");
    assert!(down.is_empty(), "nodes were marked down by a leader that could not hear them: {down:?}");
}
