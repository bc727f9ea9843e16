//! Three managers and a worker started in-process (`goat::manager::run`,
//! `goat_worker::run`), on real TCP listeners on loopback, real sled files in
//! temporary directories and the real Docker engine, running the seed's echo
//! scenario: the echo task runs healthy and answers its body back.
//!
//! Deadlines bound convergence; they do not measure speed.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goat::client::Client;
use goat::manager::ManagerConfig;
use goat_storage::model::{Health, Task, TaskState};
use goat_storage::Millis;
use goat_worker::WorkerConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "in-process-token";
const CONVERGE: Duration = Duration::from_secs(90);

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn remove_containers_of(node: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=goat.node={node}")])
        .output()
        .expect("docker ps");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).status();
    }
}

async fn wait_task(api: &Client, id: &str, what: &str, done: impl Fn(&Task) -> bool) -> Task {
    match api.wait_task(id, CONVERGE, done).await {
        Ok(task) => task,
        Err((last, e)) => panic!("task {id} not {what} within {CONVERGE:?}: {e}; last seen {last:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_and_a_worker_in_process_run_the_echo_task() {
    if !image_present("goat-echo:latest") {
        common::worker::ensure_images();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();

    // Bind first, so that every manager knows every address.
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0"));
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let mut managers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut config = ManagerConfig::new(id, dir.path().join(format!("m{id}")), TOKEN);
        config.peers = peers.clone();
        config.raft_heartbeat = Millis(100);
        config.election_timeout = Millis(600);
        let stop = stop.clone();
        managers.push(tokio::spawn(async move {
            goat::manager::run(config, listener, async move { stop.cancelled().await }).await
        }));
    }

    let node = format!("w-inproc-{}", std::process::id());
    let mut worker_config = WorkerConfig::new(node.clone(), addrs.clone(), dir.path().join("worker"), TOKEN);
    worker_config.heartbeat_interval = Millis(300);
    let worker_stop = stop.clone();
    let worker =
        tokio::spawn(
            async move { goat_worker::run(worker_config, async move { worker_stop.cancelled().await }).await },
        );

    let api = Client::builder(&addrs).token(Some(TOKEN)).timeout(Duration::from_secs(10)).build().expect("client");
    let spec = json!({
        "name": "echo-in-process",
        "image": "goat-echo:latest",
        "cpu": 0.1,
        "memory": 64 << 20,
        "ports": [{"container": 7777}],
        "health_check": {"path": "/health", "port": 7777, "interval": "300ms", "timeout": "500ms",
                         "failure_threshold": 3, "start_period": "2s"}
    });
    // Submitted as soon as the cluster has a leader (the manager retries
    // its proposal while the election is under way; no answer or a 503
    // before that is retried here, under the one Idempotency-Key).
    let deadline = Instant::now() + CONVERGE;
    let key = uuid::Uuid::new_v4().to_string();
    let submitted = loop {
        match api.submit_keyed(&spec, &key).await {
            Ok(task) => break task,
            Err(e) => assert!(Instant::now() < deadline, "no manager accepted the task within {CONVERGE:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let id = submitted.id.to_string();

    let running =
        wait_task(&api, &id, "running and healthy", |t| t.state == TaskState::Running && t.health == Health::Healthy)
            .await;
    assert_eq!(running.node.as_deref(), Some(node.as_str()));
    let port = *running.host_ports.get(&7777).expect("a host port for 7777");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    let body = r#"{"Msg":"Hello, world!"}"#;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let answer = http.post(format!("http://127.0.0.1:{port}/")).body(body).send().await;
        if let Ok(answer) = answer {
            if answer.status() == 200 && answer.text().await.ok().as_deref() == Some(body) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no echo on port {port} within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stop the task, then everything, and leave no container behind.
    api.stop(&id).await.expect("DELETE the task");
    wait_task(&api, &id, "completed", |t| t.state == TaskState::Completed).await;
    stop.cancel();
    worker.await.expect("worker task").expect("worker ran");
    for manager in managers {
        manager.await.expect("manager task").expect("manager ran");
    }
    remove_containers_of(&node);
}
