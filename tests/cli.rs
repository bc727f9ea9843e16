//! The operator CLI end to end: the real `goat` binary's subcommands against
//! real managers (and, for `run --wait`, a real worker on the real Docker
//! engine), their `--json` parsed back, their exit codes, the client's
//! failover past a dead first address, backup and restore into a wiped
//! cluster, and `goat dev` from start to Ctrl-C.
//!
//! Every test uses free ports. The image `goat-echo:latest` must exist
//! (tests/run.sh builds it first).

mod common;

use goat::cli::commands::{Members, SavedSnapshot};
use goat::client::{HealthView, NodeView};
use goat::manager::snapshot::Restored;
use goat_storage::model::{Health, Node, NodeStatus, ReschedulePolicy, RestartPolicy, Task, TaskState};
use goat_storage::Millis;
use serde::de::DeserializeOwned;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::worker::{unique, wait_echo, WorkerProc, DOCKER_SOCKET};
use common::{free_port, goat_bin, spec, Cluster, TOKEN};
// `Value` only to print what a restore must bring back (`essentials`).
use serde_json::{json, Value};

/// Exit codes, as documented in docs/operations.md.
const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const UNREACHABLE: i32 = 4;
const TASK_FAILED: i32 = 5;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    /// `--json` output as the model type it prints.
    fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not the expected JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `goat ARGS` with GOAT_ADDR = `addr` and GOAT_TOKEN = `token`
/// (the cluster token when `None`; `Some("")` sends none).
async fn goat(addr: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(goat_bin());
    command.args(args).env("GOAT_ADDR", addr).env("GOAT_TOKEN", token.unwrap_or(TOKEN)).env("RUST_LOG", "warn");
    let out = command.output().await.expect("run goat");
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!output.stderr.contains("panicked"), "goat {args:?} panicked: {}", output.stderr);
    output
}

/// `goat ARGS` must succeed.
async fn ok(addr: &str, args: &[&str]) -> Output {
    let out = goat(addr, args, None).await;
    assert_eq!(out.code, 0, "goat {args:?}: {}\n{}", out.stdout, out.stderr);
    out
}

/// A dead address first (port 1: nothing listens there), then every
/// manager of the cluster.
fn addr_list(cluster: &Cluster) -> String {
    let dead = "127.0.0.1:1".to_string();
    std::iter::once(dead).chain(cluster.managers.iter().map(|m| m.addr.clone())).collect::<Vec<_>>().join(",")
}

fn require_echo_image() {
    let found = Command::new("docker").args(["image", "inspect", "goat-echo:latest"]).stdout(Stdio::null()).status();
    assert!(found.is_ok_and(|s| s.success()), "goat-echo:latest is missing: run deploy/build-images.sh");
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every task and cluster command against three managers and one worker,
/// always through a GOAT_ADDR whose first address is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_real_cluster() {
    require_echo_image();
    let mut cluster = Cluster::start(3, &[]).await;
    let node = unique("w-cli");
    let _worker = WorkerProc::for_cluster(&node, &cluster, DOCKER_SOCKET);
    let addr = addr_list(&cluster);

    // run --wait: until running and healthy, then the task as JSON.
    let name = unique("cli-echo");
    let out = ok(
        &addr,
        &["run", "--name", &name, "--image", "goat-echo:latest", "--cpu", "0.05", "--memory", "16M", "--port", "7777"]
            .into_iter()
            .chain(["--health-path", "/health", "--env", "A=b", "--wait", "--json"])
            .collect::<Vec<_>>(),
    )
    .await;
    let task: Task = out.json();
    assert_eq!(task.state, TaskState::Running, "{task:#?}");
    assert_eq!(task.health, Health::Healthy);
    assert_eq!(task.node.as_deref(), Some(node.as_str()));
    assert_eq!(task.spec.env.get("A").map(String::as_str), Some("b"));
    let id = task.id.to_string();
    let short = &id[..8];

    // status: the list, the table, one task by prefix with its history.
    let list: Vec<Task> = ok(&addr, &["status", "--json"]).await.json();
    assert!(list.iter().any(|t| t.id.to_string() == id));
    let table = ok(&addr, &["status"]).await.stdout;
    assert!(table.starts_with("ID") && table.contains("RESTARTS"), "{table}");
    let row = table.lines().find(|l| l.starts_with(short)).unwrap_or_else(|| panic!("no row for {short}: {table}"));
    assert!(row.contains("running") && row.contains(&name) && row.contains("->7777"), "{row}");
    assert_eq!(ok(&addr, &["status", short, "--json"]).await.json::<Task>().id.to_string(), id);
    let details = ok(&addr, &["status", short]).await.stdout;
    assert!(details.contains("Events:") && details.contains("submitted"), "{details}");
    assert_eq!(goat(&addr, &["status", "ffffffff"], None).await.code, NOT_FOUND);

    // run -f: a task that cannot start ends failed; --wait says so.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("task.json");
    let mut broken = spec(&unique("cli-missing"));
    broken.image = "goat-no-such-image:none".into();
    broken.restart_policy = RestartPolicy { max_attempts: 1, initial_delay: Millis(100), ..RestartPolicy::default() };
    broken.reschedule_policy = ReschedulePolicy { attempts: 0, ..ReschedulePolicy::default() };
    std::fs::write(&file, serde_json::to_string(&broken).expect("a spec")).expect("write spec");
    let failed = goat(&addr, &["run", "-f", file.to_str().expect("path"), "--wait"], None).await;
    assert_eq!(failed.code, TASK_FAILED, "{}\n{}", failed.stdout, failed.stderr);
    assert_eq!(
        failed.stderr.trim().lines().last().map(|l| l.starts_with("goat: task ")),
        Some(true),
        "{}",
        failed.stderr
    );

    // Bad input: usage errors, and the API's refusal in one line.
    assert_eq!(goat(&addr, &["run"], None).await.code, USAGE);
    assert_eq!(goat(&addr, &["run", "--image", "x", "--port", "nope"], None).await.code, USAGE);
    let refused = goat(&addr, &["run", "--name", "bad name!", "--image", "x"], None).await;
    assert_eq!(refused.code, 1);
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("name"), "{}", refused.stderr);

    // nodes, node drain.
    let nodes: Vec<NodeView> = ok(&addr, &["nodes", "--json"]).await.json();
    let mine = nodes.iter().find(|n| n.node.name == node).expect("node");
    assert_eq!(mine.tasks, 1, "{mine:#?}");
    assert!(ok(&addr, &["nodes"]).await.stdout.contains(&node));

    // stop by prefix: the task completes.
    ok(&addr, &["stop", short]).await;
    let path = ["status", &id, "--json"];
    wait_until("completed", Duration::from_secs(60), async || {
        goat(&addr, &path, None).await.json::<Task>().state == TaskState::Completed
    })
    .await;
    assert_eq!(goat(&addr, &["stop", "0000000"], None).await.code, NOT_FOUND);

    ok(&addr, &["node", "drain", &node]).await;
    let nodes: Vec<NodeView> = ok(&addr, &["nodes", "--json"]).await.json();
    assert!(nodes.iter().any(|n| n.node.name == node && n.node.status == NodeStatus::Draining));
    assert_eq!(goat(&addr, &["node", "drain", "no-such-node"], None).await.code, NOT_FOUND);
    let undrained: Node = ok(&addr, &["node", "undrain", &node, "--json"]).await.json();
    assert_eq!((undrained.status, undrained.drain), (NodeStatus::Ready, false));
    assert_eq!(goat(&addr, &["node", "undrain", "no-such-node"], None).await.code, NOT_FOUND);

    // members: three, one leader, each with its applied index.
    let members: Members = ok(&addr, &["members", "--json"]).await.json();
    let list = &members.members;
    assert_eq!(list.len(), 3, "{members:#?}");
    assert_eq!(list.iter().filter(|m| m.leader).count(), 1);
    assert_eq!(list.iter().find(|m| m.leader).map(|m| m.id), members.leader, "{members:#?}");
    assert!(list.iter().all(|m| m.last_applied.is_some() && m.role != "unreachable"), "{members:#?}");

    // members add / remove: a fourth manager started without --peers.
    let dir4 = cluster.managers[0].dir.with_file_name("m4");
    let addr4 = format!("127.0.0.1:{}", free_port());
    cluster.add_manager(4, addr4.clone(), dir4);
    cluster.spawn_without_peers(4);
    ok(&addr, &["members", "add", "4", &addr4]).await;
    let list = ok(&addr, &["members", "--json"]).await.json::<Members>().members;
    assert!(list.iter().any(|m| m.id == 4 && m.voter), "{list:#?}");
    ok(&addr, &["members", "remove", "4"]).await;
    let list = ok(&addr, &["members", "--json"]).await.json::<Members>().members;
    assert_eq!(list.len(), 3, "{list:#?}");
    cluster.kill(4);

    // No manager at all: exit code 4, one line.
    let dead = "127.0.0.1:1,127.0.0.1:2";
    let out = goat(dead, &["status"], None).await;
    assert_eq!(out.code, UNREACHABLE);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// `goat snapshot save`, wipe every manager's data, start them again
/// (a new cluster), `goat snapshot restore`: every task is back, on every
/// manager, and the cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_every_task_into_a_wiped_cluster() {
    let mut cluster = Cluster::start(3, &["--node-down-after", "5s"]).await;
    // A node (heartbeats sent by the test) for the tasks to be placed on.
    let beat_url = format!("{}/v1/nodes/saved-node/heartbeat", cluster.url(1));
    let beat = json!({"capacity": {"cpu": 4.0, "memory": 8u64 << 30, "disk": 0}, "engine": {"healthy": true}});
    let http = common::client_with_token(TOKEN, Duration::from_secs(1));
    let heartbeats = tokio::spawn(async move {
        loop {
            let _ = http.post(&beat_url).bearer_auth(TOKEN).json(&beat).send().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(cluster.submit(1 + i % 3, &spec(&format!("saved-{i}"))).await.id.to_string());
    }
    let addr = addr_list(&cluster);
    ok(&addr, &["stop", &ids[3]]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks: Vec<Task> = goat(&addr, &["status", "--json"], None).await.json();
        // (The stopped task completes at once, or stays placed if it was
        // placed before the stop: its fake node never reports.)
        if tasks.iter().all(|t| t.state == TaskState::Completed || t.node.as_deref() == Some("saved-node")) {
            break;
        }
        assert!(Instant::now() < deadline, "tasks not placed within 30s: {tasks:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before: Vec<Task> = ok(&addr, &["status", "--json"]).await.json();

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.json");
    let file = file.to_str().expect("path");
    let saved: SavedSnapshot = ok(&addr, &["snapshot", "save", file, "--json"]).await.json();
    assert_eq!(saved.tasks, 4, "{saved:#?}");

    heartbeats.abort();

    // Wipe: kill every manager, delete its data, start it again empty.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for m in &cluster.managers {
        std::fs::remove_dir_all(&m.dir).expect("wipe the data dir");
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_leader(Duration::from_secs(30)).await;
    let fresh: Vec<Task> = ok(&addr, &["status", "--json"]).await.json();
    assert!(fresh.is_empty(), "a fresh cluster: {fresh:#?}");
    // The leader has led longer than --node-down-after when the restore
    // comes: the restored node still gets a full deadline.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // A token is required; a wrong file is a usage error.
    let no_token = goat(&addr, &["snapshot", "restore", file], Some("")).await;
    assert_eq!(no_token.code, 1, "{}", no_token.stderr);
    assert!(no_token.stderr.contains("401"), "{}", no_token.stderr);
    let wrong = goat(&addr, &["snapshot", "restore", file], Some("wrong-token")).await;
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    let not_backup = dir.path().join("not.json");
    std::fs::write(&not_backup, "{\"tasks\": []}").expect("write");
    let bad = goat(&addr, &["snapshot", "restore", not_backup.to_str().expect("path")], Some(TOKEN)).await;
    assert_eq!(bad.code, USAGE, "{}", bad.stderr);

    let restored = goat(&addr, &["snapshot", "restore", file, "--json"], Some(TOKEN)).await;
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(restored.json::<Restored>().tasks, 4);
    let after: Vec<Task> = ok(&addr, &["status", "--json"]).await.json();
    assert_eq!(essentials(&after), essentials(&before), "every task is back as it was");
    // The leader checks deadlines every 500 ms: past a few checks, the node
    // is still within the deadline the restore gave it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes: Vec<NodeView> = ok(&addr, &["nodes", "--json"]).await.json();
    assert_eq!(nodes[0].node.status, NodeStatus::Ready, "restored, not yet overdue: {nodes:#?}");
    let placed = after.iter().filter(|t| t.node.as_deref() == Some("saved-node")).count();
    assert!(placed >= 3, "{after:#?}");
    assert_eq!(nodes[0].tasks, placed, "{nodes:#?}");
    for id in 1..=3 {
        cluster.wait_task_count(id, 4, Duration::from_secs(10)).await;
    }
    // The restored cluster takes new work and knows the old tasks.
    cluster.submit(2, &spec("after-restore")).await;
    assert_eq!(ok(&addr, &["status", &ids[0][..8], "--json"]).await.json::<Task>().spec.name, "saved-0");
}

/// What a restore must bring back of each task (the leader may refresh a
/// pending task's reason meanwhile), as JSON so that a difference prints
/// readably.
fn essentials(tasks: &[Task]) -> Vec<Value> {
    let mut list: Vec<(String, Value)> = tasks
        .iter()
        .map(|t| (t.id.to_string(), json!([t.id, t.spec, t.state, t.desired, t.events, t.created_at])))
        .collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list.into_iter().map(|(_, t)| t).collect()
}

/// Three consecutive free ports on loopback.
fn free_port_range() -> u16 {
    loop {
        let base = free_port();
        if base < u16::MAX - 2 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// `goat dev`: three managers, a worker and the echo task come up; the
/// echo answers; Ctrl-C (SIGINT) stops everything and leaves no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goat_dev_runs_the_echo_and_stops_on_ctrl_c() {
    require_echo_image();
    let base = free_port_range();
    let echo = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(goat_bin())
        .args(["dev", "--port-base", &base.to_string(), "--echo-port", &echo.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("GOAT_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start goat dev");
    let mut stdout = child.stdout.take().expect("stdout");

    // Wait for the banner.
    let mut banner = String::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !banner.contains("Press Ctrl-C") {
            let n = stdout.read(&mut buf).await.expect("read stdout");
            assert!(n > 0, "goat dev exited early: {banner}");
            banner.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("goat dev up within 2 minutes");
    let curl = format!("curl -X POST localhost:{echo}/ -d '{{\"Msg\":\"Hello, world!\"}}'");
    assert!(banner.contains(&curl), "{banner}");
    let addrs = format!("127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}", base + 1, base + 2);
    assert!(banner.contains(&format!("export GOAT_ADDR={addrs}")), "{banner}");

    wait_echo(echo, r#"{"Msg":"Hello, world!"}"#, Duration::from_secs(30)).await;
    // The printed line itself, as a user pastes it.
    let pasted = Command::new("bash").args(["-c", &curl]).stderr(Stdio::null()).output().expect("run curl");
    assert_eq!(String::from_utf8_lossy(&pasted.stdout), r#"{"Msg":"Hello, world!"}"#);
    // The printed token works; without it the cluster answers 401.
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export GOAT_TOKEN="))
        .unwrap_or_else(|| panic!("no GOAT_TOKEN in the banner: {banner}"))
        .to_string();
    let tasks = goat(&addrs, &["status", "--json"], Some(&token)).await;
    assert_eq!(tasks.code, 0, "{}", tasks.stderr);
    let tasks: Vec<Task> = tasks.json();
    assert_eq!(tasks[0].state, TaskState::Running, "{tasks:#?}");
    let anonymous = goat(&addrs, &["status"], Some("")).await;
    assert!(anonymous.code != 0 && anonymous.stderr.contains("401"), "{}", anonymous.stderr);

    // Ctrl-C.
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("stops").expect("wait");
    assert!(status.success(), "goat dev exited {status}");
    let worker = format!("dev-{base}");
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=goat.node={worker}")])
        .output()
        .expect("docker ps");
    assert!(left.stdout.is_empty(), "containers left: {}", String::from_utf8_lossy(&left.stdout));
    for port in base..base + 3 {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "a manager still listens on {port}");
    }
}

/// `goat manager --config FILE`: the file's settings apply, an environment
/// variable overrides the file, a flag overrides both, and an unknown key is
/// an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_settings_from_a_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (file_port, env_port) = (free_port(), free_port());
    let config = dir.path().join("manager.toml");
    let text = format!(
        "id = 5\nlisten = \"127.0.0.1:{file_port}\"\ndata_dir = {:?}\npeers = [\"7=127.0.0.1:{env_port}\"]\n\
         token = \"{TOKEN}\"\nleader_wait = \"2s\"\n",
        dir.path().join("data").to_str().expect("path")
    );
    std::fs::write(&config, text).expect("write config");
    let mut manager = tokio::process::Command::new(goat_bin())
        .args(["manager", "--config", config.to_str().expect("path"), "--id", "7"])
        .env("GOAT_LISTEN", format!("127.0.0.1:{env_port}"))
        .env_remove("GOAT_TOKEN")
        .env_remove("GOAT_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start goat manager");
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{env_port}/v1/health");
    let mut health: Option<HealthView> = None;
    wait_until("the manager answers on the env's port", Duration::from_secs(20), async || {
        match http.get(&url).send().await {
            Ok(r) => {
                health = r.json().await.ok();
                health.as_ref().is_some_and(|h| h.leader.is_some())
            }
            Err(_) => false,
        }
    })
    .await;
    let health = health.expect("a health answer");
    assert_eq!(health.id, 7, "the flag wins over the file: {health:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err(), "the env wins over the file");
    let _ = manager.kill().await;

    std::fs::write(&config, "id = 1\ndata_dri = \"/tmp/x\"\n").expect("write config");
    let out = Command::new(goat_bin())
        .args(["manager", "--config", config.to_str().expect("path")])
        .output()
        .expect("run goat manager");
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `data_dri`"));
}
