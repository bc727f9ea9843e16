//! Services on the real engine: three managers, three `goat worker`
//! processes sharing this machine's Docker engine (each its own node), and
//! echo copies reached through `/v1/services/{name}/endpoints` as a client
//! would. A lost worker is no outage for a client that follows the
//! endpoints and retries once elsewhere; a rolling update keeps
//! `replicas - max_parallel` copies healthy; a broken version is reverted.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixtures::echo_image;
use common::worker::{ensure_images, unique, wait_node, wait_service, WorkerProc, DOCKER_SOCKET};
use common::Cluster;
use goat::manager::services::{Endpoints, ServiceView};
use goat_storage::model::DeploymentState;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
// `Value` for request bodies only: a service's `template` is a task spec
// without a name, which `ServiceSpec` (name required) cannot hold as JSON.
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(90);
/// `--node-down-after` of the managers.
const NODE_DOWN_AFTER: Duration = Duration::from_secs(3);

fn service_spec(name: &str, replicas: u32, env: Value, update: Value) -> Value {
    json!({
        "name": name,
        "replicas": replicas,
        "template": {
            "image": echo_image(),
            "cpu": 0.05,
            "memory": 48 << 20,
            "env": env,
            "ports": [{"container": 7777}],
            "health_check": {"path": "/health", "port": 7777, "interval": "300ms", "start_period": "2s"},
            "restart_policy": {"max_attempts": 2, "initial_delay": "200ms"}
        },
        "update": update
    })
}

async fn start(workers: usize) -> (Cluster, Vec<WorkerProc>) {
    ensure_images();
    let cluster = Cluster::start(3, &["--node-down-after", "3s"]).await;
    let workers: Vec<WorkerProc> =
        (0..workers).map(|i| WorkerProc::for_cluster(&unique(&format!("sw{i}")), &cluster, DOCKER_SOCKET)).collect();
    for w in &workers {
        wait_node(&cluster, &w.name, "ready", CONVERGE, |n| {
            n.node.status == goat_storage::model::NodeStatus::Ready && n.node.address.is_some()
        })
        .await;
    }
    (cluster, workers)
}

/// `POST /v1/services` on the first live manager that answers 2xx.
async fn apply(cluster: &Cluster, spec: &Value) -> ServiceView {
    for _ in 0..50 {
        for id in cluster.alive_ids() {
            let Ok(resp) = cluster.http.post(format!("{}/v1/services", cluster.url(id))).json(spec).send().await else {
                continue;
            };
            if resp.status().is_success() {
                return resp.json().await.expect("service JSON");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no manager accepted the service");
}

async fn get<T: DeserializeOwned>(cluster: &Cluster, path: &str) -> Option<T> {
    for id in cluster.alive_ids() {
        let Ok(resp) = cluster.http.get(format!("{}{path}", cluster.url(id))).send().await else { continue };
        if resp.status().is_success() {
            return resp.json().await.ok();
        }
    }
    None
}

fn healthy_of(service: &ServiceView, version: u64) -> u64 {
    service.versions.iter().find(|v| v.version == version).map_or(0, |v| u64::from(v.healthy))
}

fn healthy_total(service: &ServiceView) -> u64 {
    service.versions.iter().map(|v| u64::from(v.healthy)).sum()
}

fn deployment_state(service: &ServiceView) -> Option<DeploymentState> {
    service.deployment.as_ref().map(|d| d.state)
}

/// Nodes of the endpoints listed.
fn endpoint_nodes(endpoints: Option<&Endpoints>) -> Vec<String> {
    let mut nodes: Vec<String> = endpoints.into_iter().flat_map(|e| &e.endpoints).map(|e| e.node.clone()).collect();
    nodes.sort();
    nodes
}

/// Removes every container a worker made (its node's label).
fn remove_containers_of(node: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=goat.node={node}")])
        .output()
        .expect("docker ps");
    for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}

/// A client of the service: follows `/endpoints` with a long poll, sends
/// `POST /` round-robin, and on a failure retries once on another endpoint.
struct Follower {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Follower {
    fn start(cluster: &Cluster, name: &str) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let list: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let urls: Vec<String> = cluster.alive_ids().iter().map(|id| cluster.url(*id)).collect();
        let http = cluster.http.clone();
        let watcher = {
            let (stop, list, name) = (stop.clone(), list.clone(), name.to_string());
            tokio::spawn(async move {
                let mut version = String::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("{}/v1/services/{name}/endpoints?wait=5s&after={version}", urls[i % urls.len()]);
                    let url = if version.is_empty() {
                        format!("{}/v1/services/{name}/endpoints", urls[i % urls.len()])
                    } else {
                        url
                    };
                    match http.get(&url).timeout(Duration::from_secs(8)).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let Ok(body) = resp.json::<Endpoints>().await else { continue };
                            version = body.version;
                            let addrs = body.endpoints.iter().map(|e| format!("{}:{}", e.address, e.port)).collect();
                            *list.lock() = addrs;
                        }
                        _ => {
                            i += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        };
        let sender = {
            let (stop, list, requests, failures) = (stop.clone(), list.clone(), requests.clone(), failures.clone());
            tokio::spawn(async move {
                let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build().unwrap();
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let endpoints = list.lock().clone();
                    if endpoints.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let mut last_error = String::new();
                    let mut ok = false;
                    for attempt in 0..2 {
                        let target = &endpoints[(n + attempt) % endpoints.len()];
                        match plain.post(format!("http://{target}/")).body("{\"n\":1}").send().await {
                            Ok(resp) if resp.status().is_success() => {
                                ok = true;
                                break;
                            }
                            Ok(resp) => last_error = format!("{target}: {}", resp.status()),
                            Err(e) => last_error = format!("{target}: {e}"),
                        }
                    }
                    n += 1;
                    requests.fetch_add(1, Ordering::SeqCst);
                    if !ok {
                        failures.lock().push(last_error);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Follower { stop, requests, failures, handles: vec![watcher, sender] }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.await;
        }
        let failures = self.failures.lock().clone();
        (self.requests.load(Ordering::SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_worker_is_no_outage_for_a_client_following_the_endpoints() {
    let (cluster, mut workers) = start(3).await;
    let name = unique("web");
    let update = json!({"min_healthy_time": "1s", "healthy_deadline": "30s"});
    apply(&cluster, &service_spec(&name, 3, json!({}), update)).await;
    // Spread one per worker (the default with as many nodes as replicas).
    wait_service(&cluster, &name, "3 healthy", CONVERGE, |s| healthy_of(s, 1) == 3).await;
    let endpoints: Endpoints = get(&cluster, &format!("/v1/services/{name}/endpoints")).await.expect("endpoints");
    let mut nodes = endpoint_nodes(Some(&endpoints));
    let mut expected: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
    expected.sort();
    assert_eq!(nodes, expected, "one copy per worker: {endpoints:#?}");

    let follower = Follower::start(&cluster, &name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut victim = workers.remove(0);
    let lost = victim.name.clone();
    victim.kill();
    remove_containers_of(&lost);
    let killed_at = Instant::now();
    // Back to 3 healthy copies, none on the lost node.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let e: Option<Endpoints> = get(&cluster, &format!("/v1/services/{name}/endpoints")).await;
        nodes = endpoint_nodes(e.as_ref());
        if nodes.len() == 3 && !nodes.contains(&lost) {
            break;
        }
        assert!(Instant::now() < deadline, "not back to 3 healthy endpoints: {e:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (requests, failures) = follower.finish().await;
    eprintln!(
        "recovered in {recovered:?} (node-down-after {NODE_DOWN_AFTER:?}); {requests} requests, {} failed",
        failures.len()
    );
    assert!(requests > 50, "the client sent requests ({requests})");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    // "Within the liveness deadline plus a few seconds" (generous on a
    // loaded machine: a bound, not a measurement).
    assert!(recovered < NODE_DOWN_AFTER + Duration::from_secs(20), "recovered in {recovered:?}");
    // The spread still holds: at most ceil(3 / 2) = 2 per surviving node.
    for n in &nodes {
        assert!(nodes.iter().filter(|m| *m == n).count() <= 2, "{nodes:?}");
    }
    drop(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_keeps_enough_copies_healthy_and_a_broken_version_is_reverted() {
    let (cluster, _workers) = start(3).await;
    let name = unique("roll");
    let (replicas, max_parallel) = (6u64, 2u64);
    let update =
        json!({"max_parallel": max_parallel, "min_healthy_time": "1s", "healthy_deadline": "20s", "auto_revert": true});
    let v1 = service_spec(&name, replicas as u32, json!({"ECHO_VERSION": "1"}), update.clone());
    apply(&cluster, &v1).await;
    wait_service(&cluster, &name, "6 healthy", CONVERGE, |s| healthy_of(s, 1) == replicas).await;
    // The same spec again is a no-op: no new version.
    let again = apply(&cluster, &v1).await;
    assert_eq!(again.current, 1);
    assert!(again.deployment.is_none(), "{again:#?}");

    // Version 2: rolled out max_parallel at a time.
    let v2 = service_spec(&name, replicas as u32, json!({"ECHO_VERSION": "2"}), update.clone());
    let applied = apply(&cluster, &v2).await;
    assert_eq!(applied.current, 2);
    let deadline = Instant::now() + CONVERGE;
    let mut polls = 0;
    loop {
        let Some(s) = get::<ServiceView>(&cluster, &format!("/v1/services/{name}")).await else { continue };
        polls += 1;
        let healthy = healthy_total(&s);
        assert!(healthy + max_parallel >= replicas, "only {healthy} healthy during the update: {s:#?}");
        if deployment_state(&s) == Some(DeploymentState::Succeeded) {
            assert_eq!(healthy_of(&s, 2), replicas);
            break;
        }
        assert_eq!(deployment_state(&s), Some(DeploymentState::Running), "{s:#?}");
        assert!(Instant::now() < deadline, "update not done: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(polls > 3, "the update was observed ({polls} polls)");

    // Version 3 never starts: the deployment fails and version 2 comes back.
    let v3 = service_spec(&name, replicas as u32, json!({"ECHO_VERSION": "3", "ECHO_FAIL_STARTUP": "1"}), update);
    assert_eq!(apply(&cluster, &v3).await.current, 3);
    let deadline = Instant::now() + CONVERGE;
    let mut seen_reverting = false;
    loop {
        let Some(s) = get::<ServiceView>(&cluster, &format!("/v1/services/{name}")).await else { continue };
        let healthy = healthy_total(&s);
        assert!(healthy_of(&s, 2) > 0, "every copy of version 2 stopped: {s:#?}");
        assert!(healthy + max_parallel >= replicas, "only {healthy} healthy: {s:#?}");
        seen_reverting |= deployment_state(&s) == Some(DeploymentState::Reverting);
        if deployment_state(&s) == Some(DeploymentState::Reverted) {
            assert_eq!(s.current, 2);
            if healthy_of(&s, 2) == replicas {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not reverted: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("reverting observed: {seen_reverting}");
    let e: Endpoints = get(&cluster, &format!("/v1/services/{name}/endpoints")).await.expect("endpoints");
    let versions: Vec<u64> = e.endpoints.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![2; replicas as usize], "{e:#?}");
}

/// Running containers of task `id` on this machine's engine (every worker
/// of the test shares it).
fn running_containers(task: &str) -> usize {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=goat.task={task}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_in_the_middle_of_an_update_leaves_it_to_the_next_one() {
    use goat_storage::model::DesiredStatus;
    let (mut cluster, _workers) = start(3).await;
    let name = unique("lead");
    let replicas = 6u64;
    // One copy at a time, each healthy for 2 s before it counts: the update
    // lasts long enough to lose its leader in the middle.
    let update = json!({"max_parallel": 1, "min_healthy_time": "2s", "healthy_deadline": "40s"});
    apply(&cluster, &service_spec(&name, replicas as u32, json!({"ECHO_VERSION": "1"}), update.clone())).await;
    wait_service(&cluster, &name, "6 healthy", CONVERGE, |s| healthy_of(s, 1) == replicas).await;

    assert_eq!(apply(&cluster, &service_spec(&name, 6, json!({"ECHO_VERSION": "2"}), update)).await.current, 2);
    let during = wait_service(&cluster, &name, "under way", CONVERGE, |s| {
        assert_ne!(
            deployment_state(s),
            Some(DeploymentState::Succeeded),
            "the update ended before the leader could be killed: {s:#?}"
        );
        deployment_state(s) == Some(DeploymentState::Running) && healthy_of(s, 2) >= 1
    })
    .await;
    let leader = cluster.wait_leader(CONVERGE).await;
    cluster.kill(leader);
    eprintln!("killed leader manager{leader} with {} of 6 copies of version 2 healthy", healthy_of(&during, 2));

    // The next leader finishes it: every copy on version 2.
    let done = Instant::now() + CONVERGE;
    loop {
        let Some(s) = get::<ServiceView>(&cluster, &format!("/v1/services/{name}")).await else {
            assert!(Instant::now() < done, "no manager answered for the service");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if deployment_state(&s) == Some(DeploymentState::Succeeded) && healthy_of(&s, 2) == replicas {
            assert_eq!(s.current, 2, "{s:#?}");
            break;
        }
        assert_ne!(
            deployment_state(&s),
            Some(DeploymentState::Failed),
            "the update failed after the leader was lost: {s:#?}"
        );
        assert!(Instant::now() < done, "the update did not finish under the next leader: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No copy duplicated or lost: six live tasks, all of version 2, each
    // with one running container; the replaced copies' containers gone.
    let survivor = cluster.alive_ids()[0];
    let deadline = Instant::now() + CONVERGE;
    loop {
        let tasks: Vec<_> = cluster
            .tasks(survivor, false)
            .await
            .into_iter()
            .filter(|t| t.service.as_ref().is_some_and(|s| s.name == name))
            .collect();
        let live: Vec<_> = tasks.iter().filter(|t| t.desired == DesiredStatus::Run).collect();
        let versions: Vec<u64> = live.iter().filter_map(|t| t.service.as_ref().map(|s| s.version)).collect();
        assert_eq!(live.len() as u64, replicas, "live copies after the update: {versions:?}");
        assert!(versions.iter().all(|v| *v == 2), "a copy of version 1 is still wanted: {versions:?}");
        let per_live: Vec<usize> = live.iter().map(|t| running_containers(&t.id.to_string())).collect();
        let stale: usize = tasks
            .iter()
            .filter(|t| t.desired != DesiredStatus::Run)
            .map(|t| running_containers(&t.id.to_string()))
            .sum();
        assert!(per_live.iter().all(|n| *n <= 1), "a copy runs twice: {per_live:?}");
        if per_live.iter().all(|n| *n == 1) && stale == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers: {per_live:?} per live copy, {stale} of replaced copies still running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
