//! `goat dev`: a whole Goat on this machine, in the foreground.
//!
//! Starts three managers (127.0.0.1:PORT_BASE..+2) and one worker as child
//! processes of this binary, each with its data and log under one directory,
//! builds the echo image if it is missing, submits the echo task published
//! on `--echo-port`, prints what to paste, and on Ctrl-C (or SIGTERM) stops
//! the echo task, then the worker and the managers, and removes any
//! container the worker left.
//!
//! The children run in their own process group, so the terminal's Ctrl-C
//! reaches only `goat dev`, which then stops them in order.
//!
//! `DATA_DIR/deployment.json` names every process (pid, command line, log)
//! for `goat drill --driver procs --dev-dir DATA_DIR`, which kills, pauses
//! and restarts them. So a child that exits after the cluster came up does
//! not end `goat dev` (a cluster outlives one member; the line says so), and
//! on exit `goat dev` also stops the processes a drill started again (the
//! file's pids that are not its own children).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use goat_storage::model::TaskState;
use serde_json::json;

pub use super::args::DevArgs;
use super::commands;
use super::error::CliError;
use crate::client::Client;
use crate::drill::{Proc as DrillProc, ProcsFile};
use crate::launch::{self, ManagerLaunch, WorkerLaunch};

const ECHO_IMAGE: &str = "goat-echo:latest";

/// One child process and where its log goes.
struct Proc {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
    argv: Vec<String>,
}

/// Starts `goat ARGS...` in its own process group, stderr to `log`.
fn spawn(name: &str, args: &[String], log: &Path, log_json: bool) -> Result<Proc, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::other(format!("locating the goat binary: {e}")))?;
    let file = std::fs::File::create(log).map_err(|e| CliError::other(format!("creating {}: {e}", log.display())))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(args)
        .env_remove("GOAT_CONFIG")
        .env_remove("GOAT_ADVERTISE")
        .env("GOAT_LOG_FORMAT", if log_json { "json" } else { "text" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .kill_on_drop(true);
    // If `goat dev` itself dies without cleaning up, its children go too.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| CliError::other(format!("starting {name}: {e}")))?;
    Ok(Proc { name: name.to_string(), child, log: log.to_path_buf(), argv: args.to_vec() })
}

/// The last lines of a log, to explain a child's early exit.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// An error if a child has exited.
fn check_alive(procs: &mut [Proc]) -> Result<(), CliError> {
    for p in procs.iter_mut() {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(CliError::other(format!(
                "{} exited ({status}); its log {}:\n{}",
                p.name,
                p.log.display(),
                tail(&p.log)
            )));
        }
    }
    Ok(())
}

/// Builds the echo image with deploy/build-images.sh if Docker lacks it.
async fn ensure_echo_image() -> Result<(), CliError> {
    let inspect = tokio::process::Command::new("docker")
        .args(["image", "inspect", ECHO_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| CliError::other(format!("running docker: {e} (is Docker installed?)")))?;
    if inspect.success() {
        return Ok(());
    }
    let candidates =
        [PathBuf::from("deploy/build-images.sh"), Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/build-images.sh")];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        return Err(CliError::other(format!(
            "the image {ECHO_IMAGE} is missing: build it with deploy/build-images.sh from Goat's repository"
        )));
    };
    eprintln!("==> {ECHO_IMAGE} is missing: building it with {}", script.display());
    let built = tokio::process::Command::new("bash")
        .arg(script)
        .status()
        .await
        .map_err(|e| CliError::other(format!("running {}: {e}", script.display())))?;
    if !built.success() {
        return Err(CliError::other(format!("{} failed ({built})", script.display())));
    }
    Ok(())
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `goat dev`.
pub async fn run(args: DevArgs, log_json: bool) -> Result<(), CliError> {
    if args.port_base > u16::MAX - 2 {
        return Err(CliError::usage("--port-base must leave room for three ports"));
    }
    let ports = [args.port_base, args.port_base + 1, args.port_base + 2];
    for port in ports.iter().chain([&args.echo_port]) {
        if std::net::TcpListener::bind(("0.0.0.0", *port)).is_err() {
            return Err(CliError::usage(format!(
                "port {port} is already in use (another goat dev?): choose others with --port-base and --echo-port"
            )));
        }
    }
    ensure_echo_image().await?;
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("goat-dev.")
                .tempdir()
                .map_err(|e| CliError::other(format!("creating a temporary directory: {e}")))?,
        ),
    };
    let dir =
        args.data_dir.clone().unwrap_or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
    std::fs::create_dir_all(&dir).map_err(|e| CliError::other(format!("creating {}: {e}", dir.display())))?;
    let token = args.token.clone().filter(|t| !t.is_empty()).unwrap_or_else(random_token);
    let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", args.port_base + i)).collect();
    let peers = launch::peers_flag(&addrs);
    let worker = args.worker_name.clone().unwrap_or_else(|| format!("dev-{}", args.port_base));

    let mut procs = Vec::new();
    let mut task_id: Option<String> = None;
    let outcome = async {
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let argv = ManagerLaunch {
                id,
                listen: addr.clone(),
                peers: Some(peers.clone()),
                token: token.clone(),
                data_dir: dir.join(format!("manager{id}")),
                extra: Vec::new(),
            }
            .argv();
            procs.push(spawn(&format!("manager {id}"), &argv, &dir.join(format!("manager{id}.log")), log_json)?);
        }
        let argv = WorkerLaunch {
            name: worker.clone(),
            managers: addrs.clone(),
            token: token.clone(),
            data_dir: dir.join("worker"),
            docker_socket: None,
            extra: Vec::new(),
        }
        .argv();
        procs.push(spawn("the worker", &argv, &dir.join("worker.log"), log_json)?);
        write_deployment_file(&dir, &token, &addrs, &worker, &procs)?;
        tokio::select! {
            result = bring_up(&mut procs, &addrs, &token, args.echo_port, &mut task_id) => result?,
            _ = crate::shutdown_signal() => return Ok(()),
        }
        print_banner(&addrs, &worker, &dir, &token, args.echo_port, task_id.as_deref().unwrap_or("?"), temp.is_some());
        tokio::select! {
            _ = crate::shutdown_signal() => Ok(()),
            e = watch_children(&mut procs, &dir) => Err(e),
        }
    }
    .await;

    eprintln!("\n==> stopping");
    let client = Client::builder(&addrs).token(Some(token.clone())).timeout(Duration::from_secs(5)).build()?;
    if let Some(id) = &task_id {
        stop_task(&client, id).await;
    }
    // The worker first (it must not restart anything), then the managers.
    for p in procs.iter_mut().rev() {
        terminate(p).await;
    }
    terminate_adopted(&dir, &procs).await;
    remove_containers(&worker).await;
    match &temp {
        Some(_) => eprintln!("==> stopped; removed {}", dir.display()),
        None => eprintln!("==> stopped; data and logs kept in {}", dir.display()),
    }
    drop(temp);
    outcome
}

/// Waits for a leader, submits the echo task and waits until it runs.
async fn bring_up(
    procs: &mut [Proc],
    addrs: &[String],
    token: &str,
    echo_port: u16,
    task_id: &mut Option<String>,
) -> Result<(), CliError> {
    let client = Client::builder(addrs).token(Some(token)).timeout(Duration::from_secs(10)).build()?;
    eprintln!("==> waiting for the managers to elect a leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_alive(procs)?;
        let all: Vec<usize> = (0..addrs.len()).collect();
        if client.agreed_leader(&all, Duration::from_secs(2)).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(CliError::other("no leader after 30s: see the managers' logs"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spec = json!({
        "name": "echo", "image": ECHO_IMAGE, "cpu": 0.1, "memory": 32 << 20,
        "ports": [{"container": 7777, "host": echo_port}],
        "health_check": {"path": "/health", "port": 7777, "interval": "1s"},
    });
    let created = client.submit(&spec).await?;
    let id = created.id.to_string();
    *task_id = Some(id.clone());
    eprintln!("==> submitted the echo task {id}; waiting for it to run");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        check_alive(procs)?;
        let task = client.task(&id).await?;
        let line = commands::progress_line(&task);
        if line != last {
            eprintln!("    {line}");
            last = line;
        }
        match task.state {
            TaskState::Running if task.health == goat_storage::model::Health::Healthy => return Ok(()),
            TaskState::Failed | TaskState::Completed => {
                return Err(CliError::other(format!("the echo task ended {}: see the worker's log", task.state)))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(CliError::other(format!("the echo task is still {} after 90s", task.state)));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn print_banner(addrs: &[String], worker: &str, dir: &Path, token: &str, echo_port: u16, task: &str, temp: bool) {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "goat".into());
    let kept = if temp { " (removed on exit)" } else { "" };
    println!(
        "\nGoat is running.\n\
         \x20 managers:  {}\n\
         \x20 worker:    {worker}\n\
         \x20 data/logs: {}{kept}\n\
         \x20 echo task: {task}, published on port {echo_port}\n\
         \nTry:\n\
         \x20 curl -X POST localhost:{echo_port}/ -d '{{\"Msg\":\"Hello, world!\"}}'\n\
         \x20 export GOAT_ADDR={}\n\
         \x20 export GOAT_TOKEN={token}\n\
         \x20 {exe} status\n\
         \x20 {exe} drill kill-leader --driver procs --dev-dir {}\n\
         \x20 curl -H \"Authorization: Bearer $GOAT_TOKEN\" {}/v1/cluster\n\
         \nThe cluster token has every right; narrower ones: {exe} token create --role read\n\
         \nPress Ctrl-C to stop.",
        addrs.join(" "),
        dir.display(),
        addrs.join(","),
        dir.display(),
        addrs.first().map(String::as_str).unwrap_or("127.0.0.1:7101"),
    );
}

/// Reports each child that exits on its own (a drill may have killed it,
/// and may start it again: see the module's comment); resolves with an
/// error once every child has exited and the deployment file names no live
/// process either.
async fn watch_children(procs: &mut [Proc], dir: &Path) -> CliError {
    let mut reported = vec![false; procs.len()];
    loop {
        for (i, p) in procs.iter_mut().enumerate() {
            if reported[i] {
                continue;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                reported[i] = true;
                eprintln!("==> {} exited ({status}); the others carry on (log: {})", p.name, p.log.display());
            }
        }
        let file_alive = ProcsFile::read(dir)
            .map(|f| f.managers.iter().chain(&f.workers).any(|p| pid_alive(p.pid)))
            .unwrap_or(false);
        if reported.iter().all(|r| *r) && !file_alive {
            return CliError::other("every process of the deployment exited: see their logs");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes `deployment.json` for `goat drill --driver procs`.
fn write_deployment_file(
    dir: &Path,
    token: &str,
    addrs: &[String],
    worker: &str,
    procs: &[Proc],
) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::other(format!("locating the goat binary: {e}")))?;
    let entry = |i: usize, id: u64, name: &str, addr: &str| DrillProc {
        name: name.to_string(),
        id,
        addr: addr.to_string(),
        pid: procs.get(i).and_then(|p| p.child.id()).unwrap_or(0),
        argv: procs.get(i).map(|p| p.argv.clone()).unwrap_or_default(),
        log: procs.get(i).map(|p| p.log.clone()).unwrap_or_default(),
    };
    let file = ProcsFile {
        exe,
        token: token.to_string(),
        managers: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| entry(i, i as u64 + 1, &format!("manager{}", i + 1), a))
            .collect(),
        workers: vec![entry(addrs.len(), 0, "worker", worker)],
    };
    file.write(dir).map_err(|e| CliError::other(format!("{e:#}")))
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops the processes a drill started again (named in the deployment
/// file, not children of ours): SIGTERM, then SIGKILL after 5 s. Workers
/// first, like our own.
async fn terminate_adopted(dir: &Path, procs: &[Proc]) {
    let Ok(file) = ProcsFile::read(dir) else { return };
    let own: Vec<u32> = procs.iter().filter_map(|p| p.child.id()).collect();
    for p in file.workers.iter().chain(&file.managers) {
        if p.pid == 0 || own.contains(&p.pid) || !pid_alive(p.pid) {
            continue;
        }
        let Ok(pid) = libc::pid_t::try_from(p.pid) else { continue };
        // SAFETY: signals a process this deployment started (its pid is in
        // our deployment file and alive).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pid_alive(p.pid) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if pid_alive(p.pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        eprintln!("    stopped {} (pid {}, started again by a drill)", p.name, p.pid);
    }
}

/// Stops the echo task and waits (bounded) until its container is gone.
async fn stop_task(client: &Client, id: &str) {
    if let Err(e) = client.stop(id).await {
        eprintln!("    could not stop the echo task: {e}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(task) = client.task(id).await {
            if task.state.is_terminal() {
                eprintln!("    echo task stopped");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("    the echo task did not stop within 15s; removing its container");
}

/// SIGTERM, then SIGKILL after 5 s.
async fn terminate(p: &mut Proc) {
    if let Some(pid) = p.child.id() {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await.is_err() {
        let _ = p.child.kill().await;
    }
}

/// Removes every container labelled with the worker's name (what is left
/// if the echo task could not be stopped).
async fn remove_containers(worker: &str) {
    let filter = format!("label=goat.node={worker}");
    let Ok(out) = tokio::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output().await else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
    if !ids.is_empty() {
        let _ = tokio::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}
