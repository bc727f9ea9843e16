//! The failover suite: a real compose deployment (deploy/up.sh: three
//! managers and two workers in containers, on a private network), real
//! SIGKILLs and network cuts, a steady load of submissions, and every
//! acknowledged task accounted for afterwards.
//!
//! Each test starts its own deployment under a project name unique to the
//! run, on free host ports, and removes it (containers, task containers,
//! networks, volumes) when it ends, even on failure. The tests take turns
//! (one deployment at a time on this machine). The images are built by
//! tests/run.sh first (deploy/build-images.sh). Figures are printed, not
//! asserted: the promises asserted are 0 acknowledged tasks lost, at most one
//! running copy per task, managers agreeing on their state, and a
//! linearizable history: every client operation a case makes (its own load,
//! or `goat drill`'s) is recorded and checked by `goat::history` at the end,
//! which prints `history: N operations checked, linearizable`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::compose::{docker, Deployment};
use common::fixtures::from_json;
use common::{answer, free_port, ErrorCode};
use goat::client::NodeView;
use goat::history::{self, Call, Recorder, Seen};
use goat_storage::model::{Health, NodeStatus, Task, TaskState};
use serde_json::json;

/// One deployment at a time: each is five containers on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Steady submissions (one every 50 ms, round-robin over `targets`, each
/// with an `Idempotency-Key`, a read of an earlier one every fourth) until
/// stopped, recorded in `recorder`; returns the acknowledged task ids and
/// the other answers.
struct Load {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    fn start(deployment: &Deployment, targets: Vec<u64>, recorder: &Recorder) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let http = deployment.http.clone();
        let urls: Vec<(u64, String)> = targets.iter().map(|id| (*id, deployment.url(*id))).collect();
        let recorder = recorder.clone();
        let handle = tokio::spawn(async move {
            let mut requests = Vec::new();
            let mut sent: Vec<String> = Vec::new();
            let mut i = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                let (id, base) = urls[i % urls.len()].clone();
                i += 1;
                let http = http.clone();
                let recorder = recorder.clone();
                if i.is_multiple_of(4) && !sent.is_empty() {
                    let task = sent[rand::random::<usize>() % sent.len()].clone();
                    tokio::spawn(async move {
                        let pending = recorder.begin(&format!("load@manager{id}"), Call::Read { task: task.clone() });
                        match http.get(format!("{base}/v1/tasks/{task}")).send().await {
                            Ok(r) if r.status() == 404 => pending.saw(Seen::Absent),
                            Ok(r) if r.status() == 200 => match r.json::<Task>().await {
                                Ok(t) => pending.saw(history::seen_of(&t)),
                                Err(_) => pending.unknown(),
                            },
                            _ => pending.unknown(),
                        }
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let key = uuid::Uuid::new_v4().to_string();
                let task = goat::manager::api::task_id_for_key(&key).to_string();
                sent.push(task.clone());
                requests.push(tokio::spawn(async move {
                    let spec = json!({"name": "load", "image": "goat-echo:latest", "cpu": 1024});
                    let pending = recorder.begin(&format!("load@manager{id}"), Call::Create { task });
                    let answer =
                        http.post(format!("{base}/v1/tasks")).header("Idempotency-Key", &key).json(&spec).send().await;
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            pending.ok();
                            Ok(r.json::<Task>().await.ok().map(|t| t.id.to_string()))
                        }
                        Ok(r) => {
                            if r.status().is_client_error() {
                                pending.failed();
                            } else {
                                pending.unknown();
                            }
                            Err(r.status().to_string())
                        }
                        Err(e) => {
                            if e.is_connect() {
                                pending.failed();
                            } else {
                                pending.unknown();
                            }
                            Err(e.to_string())
                        }
                    }
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for request in requests {
                match request.await {
                    Ok(Ok(Some(id))) => acked.push(id),
                    Ok(Ok(None)) => failed.push("201 without an id".into()),
                    Ok(Err(e)) => failed.push(e),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (acked, failed)
        });
        Load { stop, handle }
    }

    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("load task")
    }
}

async fn lock() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// A count of a drill report, `-` when it was not measured.
fn count(n: Option<usize>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

/// A figure of a drill report, NaN when it was not measured.
fn f(figure: Option<f64>) -> f64 {
    figure.unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_twenty_times_loses_no_acknowledged_task() {
    let _turn = lock().await;
    let deployment = Deployment::start("kill");
    let junit = tempfile::NamedTempFile::new().expect("junit file");
    let junit_path = junit.path().to_string_lossy().to_string();
    let gate = ["--assert", "lost=0,linearizable,converged", "--junit", &junit_path];
    let report =
        deployment.drill("kill-leader", &[&["--repeat", "20", "--hold", "500ms", "--rate", "20"], &gate[..]].concat());
    let junit = std::fs::read_to_string(junit.path()).expect("the drill wrote its JUnit report");
    println!("{}", junit.lines().take(8).collect::<Vec<_>>().join("\n"));
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert_eq!(report.assertions.len(), 3, "{report:?}");
    let firsts: Vec<f64> = report.rounds.iter().map(|r| f(r.first_write_ms)).collect();
    let calls: Vec<f64> = report.rounds.iter().map(|r| r.failure_call_ms).collect();
    println!(
        "FIGURES kill-leader x{}: first accepted write median {:.0} ms, max {:.0} ms; without a leader median {:.0} ms, max {:.0} ms; {} acknowledged, {} lost; all: {firsts:?}; docker kill took {calls:?}",
        firsts.len(),
        f(report.first_write_median_ms),
        f(report.first_write_max_ms),
        f(report.leaderless_median_ms),
        f(report.leaderless_max_ms),
        report.acknowledged,
        report.acknowledged_lost,
    );
    assert_eq!(firsts.len(), 20);
    assert!(firsts.iter().all(|f| f.is_finite()), "a round without an accepted write: {report:?}");
    assert!(report.acknowledged > 100, "the load did not run: {report:?}");
    assert_eq!(report.acknowledged_lost, 0, "{report:?}");
    assert!(report.consistent, "{report:?}");
    assert!(report.converged, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_acknowledges_nothing_and_rejoins_the_same_state() {
    let _turn = lock().await;
    let deployment = Deployment::start("part");
    let report = deployment.drill("partition-leader", &["--hold", "6s"]);
    let round = report.rounds.first().expect("a round");
    println!(
        "FIGURES partition-leader: new leader after {:.0} ms, first accepted write {:.0} ms; cut-off leader: {} created, {} errors, applied +{}; {} acknowledged, {} lost",
        f(round.leaderless_ms),
        f(round.first_write_ms),
        round.isolated_created,
        round.isolated_errors,
        round.isolated_applied_delta.map_or("-".to_string(), |d| d.to_string()),
        report.acknowledged,
        report.acknowledged_lost
    );
    assert_eq!(round.isolated_created, 0, "the cut-off leader acknowledged a write: {report:?}");
    assert!(round.isolated_errors > 0, "its clients got no answer: {report:?}");
    assert_eq!(round.isolated_applied_delta, Some(0), "the cut-off leader applied something: {report:?}");
    assert!(f(round.first_write_ms).is_finite(), "the majority accepted no write: {report:?}");
    assert_eq!(report.acknowledged_lost, 0, "{report:?}");
    // After reconnecting: one leader, one state everywhere.
    deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    deployment.verify(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_volume_is_wiped_rejoins_and_catches_up() {
    let _turn = lock().await;
    let deployment = Deployment::start("wipe");
    let leader = deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
    let recorder = Recorder::new();
    let load = Load::start(&deployment, others.clone(), &recorder);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let service = format!("manager{follower}");
    let container = deployment.container(&service).await;
    docker(&["rm", "-f", &container]);
    docker(&["volume", "rm", &format!("{}_{service}", deployment.project)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    deployment.compose(&["up", "-d", "--no-deps", &service]);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, failed) = load.finish().await;
    assert!(failed.is_empty(), "writes failed with one follower gone: {failed:?}");
    let verdict = deployment.verify(leader).await;
    println!(
        "FIGURES wiped follower manager{follower}: caught up {:.1} s after its restart, {} acknowledged tasks on every manager (index {:?})",
        started.elapsed().as_secs_f64(),
        acked.len(),
        verdict.managers[0].state.as_ref().and_then(|s| s.applied_index)
    );
    deployment.assert_all_present(&acked, &[1, 2, 3]).await;
    deployment.check_history(&recorder, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_s_tasks_move_and_run_once_when_it_returns() {
    let _turn = lock().await;
    let deployment = Deployment::start("work");
    // The echo task through manager 3 answers on its host port, healthy:
    // the containerized worker reaches its task for health checks.
    let port = free_port();
    let spec = from_json(json!({"name": "echo", "image": "goat-echo:latest", "cpu": 0.05, "memory": 32 << 20,
        "ports": [{"container": 7777, "host": port}],
        "health_check": {"path": "/health", "port": 7777, "interval": "500ms"}}));
    let created = deployment.api.post("/v1/tasks").json(&spec).on(deployment.index(3)).json_answer::<Task>().await;
    let id = created.expect("submit echo").id.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = deployment.api.get(format!("/v1/tasks/{id}")).on(deployment.index(1));
        let task: Task = request.json_answer().await.expect("GET task");
        if task.state == TaskState::Running && task.health == Health::Healthy {
            break;
        }
        assert!(Instant::now() < deadline, "echo task not running healthy: {task:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = r#"{"Msg":"Hello, world!"}"#;
    let echoed =
        deployment.http.post(format!("http://127.0.0.1:{port}/")).body(body).send().await.expect("echo answers");
    assert_eq!(echoed.text().await.expect("echo body"), body);
    let _ = deployment.api.delete(format!("/v1/tasks/{id}")).on(deployment.index(1)).send().await;

    for scenario in ["kill-worker", "partition-worker"] {
        let report = deployment.drill(scenario, &["--tasks", "4", "--hold", "1s", "--settle", "60s"]);
        let round = report.rounds.first().expect("a round");
        println!(
            "FIGURES {scenario}: {} of {} tasks moved off {} in {:.1} s (node down after 3 s); at most {} running copy per task after it returned; {} acknowledged, {} lost",
            round.tasks_moved,
            round.tasks_to_move,
            round.victim,
            f(round.moved_ms) / 1000.0,
            count(report.max_copies),
            report.acknowledged,
            report.acknowledged_lost
        );
        assert!(round.tasks_to_move > 0, "{report:?}");
        assert_eq!(round.tasks_moved, round.tasks_to_move, "{report:?}");
        assert_eq!(report.max_copies, Some(1), "{report:?}");
        assert_eq!(report.acknowledged_lost, 0, "{report:?}");
        assert!(report.consistent, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_get_503_and_stale_reads_answer_until_a_manager_returns() {
    let _turn = lock().await;
    let deployment = Deployment::start("quorum");
    let leader = deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    let down: Vec<u64> = (1..=3).filter(|id| *id != survivor).collect();
    let recorder = Recorder::new();
    let load = Load::start(&deployment, vec![survivor], &recorder);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked, _) = load.finish().await;
    assert!(!acked.is_empty());

    for id in &down {
        docker(&["stop", "-t", "1", &deployment.container(&format!("manager{id}")).await]);
    }
    let sent = Instant::now();
    let response = deployment
        .http
        .post(format!("{}/v1/tasks", deployment.url(survivor)))
        .json(&json!({"name": "no-quorum", "image": "goat-echo:latest"}))
        .send()
        .await
        .expect("an answer");
    let retry_after = response.headers().get("retry-after").cloned();
    let refused = answer::<Task>(response).await;
    let body = refused.error();
    println!(
        "FIGURES no quorum: write answered {} after {:.1} s: {body:?}",
        refused.status,
        sent.elapsed().as_secs_f64()
    );
    assert_eq!((refused.status, body.code), (503, ErrorCode::Unavailable), "{body:?}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    let stale = deployment.http.get(format!("{}/v1/tasks?stale=true", deployment.url(survivor))).send().await;
    assert_eq!(stale.expect("stale read").status(), 200);
    deployment.assert_all_present(&acked, &[survivor]).await;

    // One manager back: a quorum again, nothing lost, writes accepted.
    let back = down[0];
    docker(&["start", &deployment.container(&format!("manager{back}")).await]);
    let started = Instant::now();
    deployment.leader(&[survivor, back], Duration::from_secs(30)).await;
    let load = Load::start(&deployment, vec![survivor, back], &recorder);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (more, failed) = load.finish().await;
    println!(
        "FIGURES quorum back: leader {:.1} s after a manager's start; {} more writes, {} failed",
        started.elapsed().as_secs_f64(),
        more.len(),
        failed.len()
    );
    assert!(!more.is_empty(), "no write accepted once a quorum was back: {failed:?}");
    let all: Vec<String> = acked.iter().chain(&more).cloned().collect();
    deployment.assert_all_present(&all, &[survivor, back]).await;
    docker(&["start", &deployment.container(&format!("manager{}", down[1])).await]);
    deployment.verify(survivor).await;
    deployment.assert_all_present(&all, &[1, 2, 3]).await;
    deployment.check_history(&recorder, &[1, 2, 3]).await;
}

/// Issue 15, point 2: a leader cut off from the other managers for longer
/// than `--node-down-after` judges every node down from its frozen view.
/// None of that may be committed when it returns: both workers heard the
/// majority all along. Several cut lengths, one deployment; `goat drill
/// partition-leader --hold` reports what the cut did to the nodes and the
/// echo tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_longer_than_the_node_deadline_decides_nothing() {
    let _turn = lock().await;
    let deployment = Deployment::start_with("long", "5s");
    let mut broken = Vec::new();
    for hold in ["12s", "20s", "25s"] {
        let report = deployment.drill("partition-leader", &["--hold", hold, "--tasks", "4", "--rate", "5"]);
        let round = report.rounds.first().expect("a round");
        println!(
            "FIGURES partition-leader --hold {hold} (node down after 5 s): {} node(s) marked down, {} task(s) placed again, {} container(s) replaced, at most {} copy per task; new leader after {:.0} ms; {} acknowledged, {} lost",
            count(round.nodes_marked_down),
            count(round.generations_changed),
            count(round.containers_restarted),
            count(report.max_copies),
            f(round.leaderless_ms),
            report.acknowledged,
            report.acknowledged_lost,
        );
        // Each must be measured, and zero.
        let disturbed = [
            ("nodes_marked_down", round.nodes_marked_down),
            ("generations_changed", round.generations_changed),
            ("containers_restarted", round.containers_restarted),
        ];
        for (key, n) in disturbed {
            if n != Some(0) {
                broken.push(format!("--hold {hold}: {key} = {}", count(n)));
            }
        }
        if report.max_copies != Some(1) || report.acknowledged_lost != 0 || !report.consistent {
            broken.push(format!("--hold {hold}: {report:?}"));
        }
    }
    assert!(broken.is_empty(), "the cut-off leader's decisions were committed: {broken:?}");
}

/// The running containers of each task (full ids).
fn task_containers(ids: &[String]) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    ids.iter()
        .map(|id| {
            let out = docker(&["ps", "-q", "--no-trunc", "--filter", &format!("label=goat.task={id}")]);
            (id.clone(), out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
        })
        .collect()
}

/// A container's log lines since `since` (unix seconds), colours removed.
fn logs_since(container: &str, since: f64) -> Vec<String> {
    let out = Command::new("docker")
        .args(["logs", "--since", &format!("{since:.3}"), container])
        .output()
        .expect("docker logs");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.lines().map(str::to_string).collect()
}

/// The `manager=` field of a worker's log line.
fn manager_field(line: &str) -> Option<&str> {
    line.split_whitespace().find_map(|w| w.strip_prefix("manager="))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Packet filters inside one container's network namespace (the host's
/// iptables through nsenter; the images are FROM scratch).
struct Filters {
    pid: String,
    rules: Vec<Vec<String>>,
}

impl Filters {
    fn cut(container: &str, peers: &[String]) -> Filters {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
        let mut filters = Filters { pid, rules: Vec::new() };
        for ip in peers {
            for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                let rule: Vec<String> = [chain, dir, ip, "-j", "DROP"].iter().map(|s| s.to_string()).collect();
                filters.iptables("-I", &rule);
                filters.rules.push(rule);
            }
        }
        filters
    }

    fn iptables(&self, op: &str, rule: &[String]) {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid, "-n", "iptables", op])
            .args(rule)
            .output()
            .expect("nsenter iptables");
        assert!(out.status.success(), "iptables {op} {rule:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn heal(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            self.iptables("-D", &rule);
        }
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            let _ = Command::new("nsenter").args(["-t", &self.pid, "-n", "iptables", "-D"]).args(&rule).output();
        }
    }
}

/// Every `down` event of every node, as manager 2 holds them: `node@index`.
async fn down_events_on(deployment: &Deployment) -> BTreeSet<String> {
    let nodes: Vec<NodeView> =
        deployment.api.get("/v1/nodes").on(deployment.index(2)).json_answer().await.expect("GET nodes");
    let mut out = BTreeSet::new();
    for view in &nodes {
        for event in view.node.events.iter().filter(|e| e.status == NodeStatus::Down) {
            out.insert(format!("{}@{}", view.node.name, event.index));
        }
    }
    out
}

/// Every address of a container, on every network.
fn addresses(container: &str) -> Vec<String> {
    let out = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container]);
    out.split_whitespace().map(str::to_string).collect()
}

/// Issue 15, point 2: the old leader cut off from the other managers (and
/// from worker2) by packet filters, but still reached by worker1, which
/// heartbeats to it. It cannot confirm it leads, so it must send worker1 on
/// (503) — worker1 then reaches the new leader within a few seconds, is never
/// marked down, its tasks stay where they are and run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reachable_from_one_worker_only_hands_it_to_the_new_leader() {
    let _turn = lock().await;
    let deployment = Deployment::start_with("asym", "5s");
    // Worker1 heartbeats to cluster-manager1 first: make manager1 the leader
    // (the lowest id bootstraps, so it usually is), then restart worker1 so
    // that it talks to manager1 itself rather than through a follower.
    let mut leader = deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    for _ in 0..8 {
        if leader == 1 {
            break;
        }
        let container = deployment.container(&format!("manager{leader}")).await;
        docker(&["restart", "-t", "1", &container]);
        leader = deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    }
    assert_eq!(leader, 1, "manager1 did not become the leader");
    let w1 = deployment.container("worker1").await;
    let w2 = deployment.container("worker2").await;
    let restarted = unix_now() - 1.0;
    docker(&["restart", "-t", "1", &w1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = logs_since(&w1, restarted);
        let last = lines
            .iter()
            .rev()
            .filter(|l| l.contains("heartbeat accepted") || l.contains("heartbeats go to another manager"))
            .find_map(|l| manager_field(l))
            .map(str::to_string);
        if last.as_deref() == Some("cluster-manager1:7101") {
            break;
        }
        assert!(Instant::now() < deadline, "worker1 does not heartbeat to manager1: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Four echo tasks, spread over both workers.
    let mut ids = Vec::new();
    for i in 0..4 {
        let spec = from_json(json!({"name": format!("asym-{i}"), "image": "goat-echo:latest", "cpu": 0.01,
            "memory": 16 << 20, "ports": [{"container": 7777}], "strategy": "spread",
            "health_check": {"path": "/health", "port": 7777, "interval": "1s"}}));
        let created = deployment.api.post("/v1/tasks").json(&spec).on(deployment.index(1)).json_answer::<Task>().await;
        ids.push(created.expect("submit").id.to_string());
    }
    let placed = |tasks: &[Task]| -> std::collections::BTreeMap<String, (String, u64)> {
        tasks
            .iter()
            .filter(|t| ids.contains(&t.id.to_string()) && t.state == TaskState::Running && t.health == Health::Healthy)
            .map(|t| (t.id.to_string(), (t.node.clone().unwrap_or_default(), t.generation)))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let tasks: Vec<Task> = deployment.tasks(1).await;
        let now = placed(&tasks);
        if now.len() == ids.len() {
            break now;
        }
        assert!(Instant::now() < deadline, "echo tasks not all running healthy: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let worker1 = format!("{}-worker1", deployment.project);
    assert!(before.values().any(|(node, _)| *node == worker1), "no task on worker1: {before:?}");
    let containers = task_containers(&ids);
    assert!(containers.values().all(|c| c.len() == 1), "{containers:?}");

    // The cut: manager1 drops everything from and to managers 2 and 3 and
    // worker2; worker1 still reaches it.
    let mut peers = Vec::new();
    for service in ["manager2", "manager3", "worker2"] {
        peers.extend(addresses(&deployment.container(service).await));
    }
    let _ = &w2;
    // Down events so far (the setup may have restarted a manager).
    let down_before = down_events_on(&deployment).await;
    let cut_at = unix_now();
    let t0 = Instant::now();
    let mut filters = Filters::cut(&deployment.container("manager1").await, &peers);
    let hold = Duration::from_secs(20);
    let (mut failed_over, mut marked_down, mut max_copies) = (None, BTreeSet::new(), 0usize);
    while t0.elapsed() < hold {
        if failed_over.is_none() {
            let moved = logs_since(&w1, cut_at).iter().any(|l| {
                l.contains("heartbeats go to another manager")
                    && manager_field(l).is_some_and(|m| m != "cluster-manager1:7101")
            });
            if moved {
                failed_over = Some(t0.elapsed());
            }
        }
        let request = deployment.api.get("/v1/nodes?stale=true").on(deployment.index(2));
        if let Ok(nodes) = request.json_answer::<Vec<NodeView>>().await {
            for view in nodes.iter().filter(|v| v.node.status == NodeStatus::Down) {
                marked_down.insert(view.node.name.clone());
            }
        }
        max_copies = max_copies.max(task_containers(&ids).values().map(BTreeSet::len).max().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    filters.heal();

    deployment.leader(&[1, 2, 3], Duration::from_secs(30)).await;
    deployment.verify(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tasks: Vec<Task> = deployment.tasks(2).await;
    let after = placed(&tasks);
    let containers_after = task_containers(&ids);
    let replaced = containers.iter().filter(|(id, c)| containers_after.get(*id) != Some(c)).count();
    let down_events: Vec<String> = down_events_on(&deployment).await.difference(&down_before).cloned().collect();
    println!(
        "FIGURES asymmetric leader cut (20 s, node down after 5 s): worker1 moved to another manager after {:?}; nodes seen down {marked_down:?}, down events {down_events:?}; at most {max_copies} running copies of a task during the cut; {replaced} container(s) replaced; tasks before {before:?}, after {after:?}",
        failed_over.map(|d| d.as_secs_f64()),
    );
    assert!(failed_over.is_some(), "worker1 kept heartbeating to the cut-off leader");
    assert!(
        marked_down.is_empty() && down_events.is_empty(),
        "a worker was marked down: {marked_down:?} {down_events:?}"
    );
    assert_eq!(after, before, "tasks moved or were placed again");
    assert_eq!(replaced, 0, "containers were replaced");
    assert!(max_copies <= 1, "{max_copies} copies of a task ran during the cut");
    assert!(containers_after.values().all(|c| c.len() == 1), "{containers_after:?}");
}
