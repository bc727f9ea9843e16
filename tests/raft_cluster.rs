//! The replicated task store end to end: three real `goat manager`
//! processes on loopback, real sled files, real Raft over HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{spec, Cluster};
use futures::stream::{self, StreamExt};
use goat::client::ClusterView;
use goat::manager::transfer::TransferView;
use goat_storage::model::Task;

fn ids(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.id.to_string()).collect()
}

/// Submits `n` tasks, `concurrency` at a time (concurrent writes are
/// batched into fewer log entries; sequential ones make one entry each).
async fn submit_many(cluster: &Cluster, through: u64, prefix: &str, n: usize, concurrency: usize) -> BTreeSet<String> {
    stream::iter(0..n)
        .map(|i| async move { cluster.submit(through, &spec(&format!("{prefix}-{i}"))).await })
        .buffer_unordered(concurrency)
        .map(|task| task.id.to_string())
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_survive_leader_kill_and_a_restarted_manager_catches_up() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster.follower(leader);

    // 200 tasks through a follower: it forwards every write to the leader.
    let acknowledged = submit_many(&cluster, follower, "t", 200, 16).await;
    assert_eq!(acknowledged.len(), 200);
    for id in 1..=3 {
        // Linearizable reads: each manager answers with every acknowledged task.
        let tasks = cluster.tasks(id, false).await;
        assert_eq!(ids(&tasks), acknowledged, "manager {id}");
    }

    // SIGKILL the leader: a new one is elected from the survivors.
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    for id in cluster.alive_ids() {
        assert_eq!(ids(&cluster.tasks(id, false).await), acknowledged, "manager {id} after failover");
    }

    // New writes succeed through either survivor.
    let mut all = acknowledged.clone();
    for id in cluster.alive_ids() {
        let task = cluster.submit(id, &spec(&format!("after-{id}"))).await;
        all.insert(task.id.to_string());
    }

    // The killed manager restarts from its data directory and catches up.
    cluster.spawn(leader);
    cluster.wait_task_count(leader, all.len(), Duration::from_secs(20)).await;
    assert_eq!(ids(&cluster.tasks(leader, true).await), all);
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)).await, new_leader, "a restart does not disturb the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_that_was_down_catches_up_by_snapshot() {
    // Snapshots every 50 entries; the log is purged behind them.
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let lagging = cluster.follower(leader);
    cluster.kill(lagging);

    // Well over one snapshot's worth of entries while it is down (one at a
    // time, so that each is its own log entry).
    let acknowledged = submit_many(&cluster, leader, "s", 300, 1).await;
    let health = cluster.health(leader).await;
    let purged = health.purged.expect("the leader purged its log");
    assert!(purged > 100, "leader purged up to {purged}");

    cluster.spawn(lagging);
    cluster.wait_task_count(lagging, 300, Duration::from_secs(30)).await;
    assert_eq!(ids(&cluster.tasks(lagging, true).await), acknowledged);
    let health = cluster.health(lagging).await;
    assert!(health.snapshot.is_some(), "the lagging manager installed a snapshot: {health:?}");

    // And it keeps up with what comes next.
    let more = cluster.submit(leader, &spec("after")).await;
    cluster.wait_task_count(lagging, 301, Duration::from_secs(10)).await;
    assert!(ids(&cluster.tasks(lagging, true).await).contains(&more.id.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_are_added_and_removed_at_run_time() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let before = submit_many(&cluster, leader, "m", 20, 4).await;

    // A fourth manager starts empty, with no --peers: it waits to be added.
    let new_addr = format!("127.0.0.1:{}", common::free_port());
    let new_dir = cluster.managers[0].dir.with_file_name("m4");
    cluster.add_manager(4, new_addr.clone(), new_dir);
    cluster.spawn_without_peers(4);
    let follower = cluster.follower(leader);
    let response = cluster
        .http
        .post(format!("{}/v1/cluster/members", cluster.url(follower)))
        .json(&serde_json::json!({"id": 4, "addr": new_addr}))
        .send()
        .await
        .expect("POST members");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let view = cluster.api.get("/v1/cluster").on(cluster.index(leader)).json_answer::<ClusterView>().await.unwrap();
    assert_eq!(view.members.len(), 4, "{view:?}");
    assert!(view.members.iter().any(|m| m.id == 4 && m.voter), "{view:?}");
    cluster.wait_task_count(4, 20, Duration::from_secs(10)).await;
    assert_eq!(ids(&cluster.tasks(4, false).await), before, "the new manager serves linearizable reads");

    // Remove it again: three voters remain and writes go on.
    let response =
        cluster.http.delete(format!("{}/v1/cluster/members/4", cluster.url(leader))).send().await.expect("DELETE");
    assert_eq!(response.status(), 204);
    let view = cluster.api.get("/v1/cluster").on(cluster.index(leader)).json_answer::<ClusterView>().await.unwrap();
    assert_eq!(view.members.len(), 3, "{view:?}");
    cluster.kill(4);
    cluster.submit(leader, &spec("after-removal")).await;

    // Bad requests are refused with the field named.
    let response = cluster
        .http
        .post(format!("{}/v1/cluster/members", cluster.url(leader)))
        .json(&serde_json::json!({"id": 0, "addr": "x:1"}))
        .send()
        .await
        .expect("POST members");
    assert_eq!(response.status(), 400);
    let response =
        cluster.http.delete(format!("{}/v1/cluster/members/77", cluster.url(leader))).send().await.expect("DELETE");
    assert_eq!(response.status(), 404);
}

/// Writes through `through`, `concurrency` at a time, until `stop`: every
/// answer's status, in order of completion.
async fn write_until(
    cluster: &Cluster,
    through: u64,
    concurrency: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Result<u16, String>> {
    let url = format!("{}/v1/tasks", cluster.url(through));
    let writers = (0..concurrency).map(|w| {
        let url = url.clone();
        async move {
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // As Goat's client does: a write whose answer was lost (a
                // transport error: its outcome is unknown) is sent again
                // under the same Idempotency-Key, so it is never applied
                // twice; a failed write is one that is refused or never
                // succeeds.
                let name = format!("load-{w}-{i}");
                let mut sent = Err(String::new());
                for _ in 0..3 {
                    let attempt =
                        cluster.http.post(&url).header("Idempotency-Key", &name).json(&spec(&name)).send().await;
                    sent = attempt.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"));
                    if sent.is_ok() {
                        break;
                    }
                }
                statuses.push(sent);
                i += 1;
            }
            statuses
        }
    });
    futures::future::join_all(writers).await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_is_handed_over_under_write_load_without_a_failed_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster.follower(leader);
    let target = (1..=3).find(|id| *id != leader && *id != follower).expect("a third manager");
    let stop = std::sync::atomic::AtomicBool::new(false);

    let (statuses, transferred) = tokio::join!(write_until(&cluster, follower, 8, &stop), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Asked of a follower: it forwards to the leader.
        let answer = cluster
            .http
            .post(format!("{}/v1/cluster/leader", cluster.url(follower)))
            .json(&serde_json::json!({"to": target}))
            .send()
            .await
            .expect("transfer request");
        let status = answer.status().as_u16();
        let body = answer.text().await.expect("transfer answer");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (status, body)
    });
    assert_eq!(transferred.0, 200, "{}", transferred.1);
    let view: TransferView = serde_json::from_str(&transferred.1).expect("a transfer view");
    assert_eq!(view.leader, target, "{view:?}");
    assert_eq!(view.from, leader);
    let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200 | 201))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(statuses.len() > 10, "the load ran ({} writes)", statuses.len());
    for id in 1..=3 {
        assert_eq!(cluster.leader_seen_by(id).await, Some(target), "manager {id} follows the target");
    }

    // A bad target is refused with the field named; no body at all picks
    // the most up-to-date follower.
    let refused = cluster
        .http
        .post(format!("{}/v1/cluster/leader", cluster.url(target)))
        .json(&serde_json::json!({"to": 9}))
        .send()
        .await
        .expect("transfer request");
    let refused = common::answer::<goat::manager::transfer::TransferView>(refused).await;
    assert_eq!(refused.refusal(), (409, common::ErrorCode::Conflict, Some("to")));

    // SIGTERM of the leader hands over before it exits: writes through a
    // survivor keep succeeding, and the survivors agree on a new leader.
    let survivor = leader;
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let terminated = target;
    let pid = cluster.pid(terminated).expect("the leader runs");
    let (statuses, ()) = tokio::join!(write_until(&cluster, survivor, 8, &stop), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // SAFETY: kill(2) on a child of this test that has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200 | 201))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed across SIGTERM: {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(5)]
    );
    cluster.terminate(terminated);
    let new_leader = cluster.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, terminated);
}
