//! One function per operator subcommand. Each prints a table (or, with
//! `--json`, the API's JSON) on stdout and returns a [`CliError`] on failure.

use std::time::{Duration, Instant};

use goat_storage::backup::Backup;
use goat_storage::model::{Health, Task, TaskState};
use reqwest::Method;
use serde_json::{json, Value};

pub use super::args::{parse_env, parse_port};
use super::args::{
    ClientArgs, MembersAction, MembersArgs, NodeAction, NodeArgs, NodesArgs, PlanAction, PlanArgs, RunArgs,
    SnapshotAction, SnapshotArgs, StatusArgs, StopArgs, TokenAction, TokenArgs,
};
use super::client::Client;
use super::error::{exit, CliError};
use super::table::{age, bytes, render};
use crate::clock::now_ms;

pub(crate) fn client(args: &ClientArgs) -> Result<Client, CliError> {
    Client::new(&args.addr, args.token.clone(), args.timeout.as_duration(), args.tls()?.as_ref())
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The task spec `goat run` submits, from its file or its flags.
pub fn spec_of(args: &RunArgs) -> Result<Value, CliError> {
    if let Some(path) = &args.file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| CliError::usage(format!("reading the task spec from stdin: {e}")))?
        } else {
            std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?
        };
        return serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("{} is not valid JSON: {e}", path.display())));
    }
    let image = args.image.clone().unwrap_or_default();
    let name = args.name.clone().unwrap_or_else(|| {
        let last = image.rsplit('/').next().unwrap_or(&image);
        last.split([':', '@']).next().unwrap_or(last).to_string()
    });
    let mut spec = json!({"name": name, "image": image});
    if let Some(cpu) = args.cpu {
        spec["cpu"] = json!(cpu);
    }
    if let Some(memory) = args.memory {
        spec["memory"] = json!(memory);
    }
    if !args.ports.is_empty() {
        spec["ports"] = args.ports.iter().map(|(c, h)| json!({"container": c, "host": h})).collect();
    }
    if !args.env.is_empty() {
        spec["env"] = args.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
    }
    if !args.cmd.is_empty() {
        spec["cmd"] = json!(args.cmd);
    }
    if args.health_path.is_some() || args.health_port.is_some() {
        let port = args
            .health_port
            .or(args.ports.first().map(|p| p.0))
            .ok_or_else(|| CliError::usage("--health-path needs a port to probe: give --health-port or a --port"))?;
        spec["health_check"] = json!({"path": args.health_path, "port": port});
    }
    Ok(spec)
}

fn parse_task(value: &Value) -> Result<Task, CliError> {
    serde_json::from_value(value.clone()).map_err(|e| CliError::other(format!("unexpected task from the manager: {e}")))
}

fn short_id(task: &Task) -> String {
    task.id.simple().to_string()[..8].to_string()
}

/// Every task, read a page at a time (`GET /v1/tasks?limit=&after=`): the
/// next page starts after the last id of a full one.
pub async fn all_tasks(client: &Client) -> Result<Vec<Value>, CliError> {
    const PAGE: usize = 1_000;
    let mut tasks = Vec::new();
    let mut after = String::new();
    loop {
        let page: Vec<Value> = client.get(&format!("/v1/tasks?limit={PAGE}{after}")).await?;
        let full = page.len() == PAGE;
        let last = page.last().and_then(|t| t["id"].as_str()).map(str::to_string);
        tasks.extend(page);
        match last {
            Some(id) if full => after = format!("&after={id}"),
            _ => return Ok(tasks),
        }
    }
}

/// A task id from a full id or a unique prefix (dashes optional).
pub async fn resolve_task(client: &Client, id: &str) -> Result<String, CliError> {
    if let Ok(uuid) = uuid::Uuid::parse_str(id) {
        return Ok(uuid.to_string());
    }
    let wanted = id.trim().to_ascii_lowercase().replace('-', "");
    if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CliError::not_found(format!("{id:?} is not a task id or a prefix of one")));
    }
    let tasks = all_tasks(client).await?;
    let matches: Vec<String> = tasks
        .iter()
        .filter_map(|t| t["id"].as_str())
        .filter(|t| t.replace('-', "").starts_with(&wanted))
        .map(str::to_string)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::not_found(format!("no task id starts with {id:?}"))),
        many => Err(CliError::other(format!("{id:?} matches {} tasks: give more of the id", many.len()))),
    }
}

/// `goat run`.
pub async fn run(args: RunArgs) -> Result<(), CliError> {
    let spec = spec_of(&args)?;
    let client = client(&args.client)?;
    let created = client.submit(&spec).await?;
    let task = parse_task(&created)?;
    if !args.wait {
        if args.client.json {
            return print_json(&created);
        }
        println!("{}", task.id);
        return Ok(());
    }
    if !args.client.json {
        eprintln!("submitted task {} ({}); waiting for it to run", task.id, task.spec.name);
    }
    let path = format!("/v1/tasks/{}", task.id);
    let deadline = Instant::now() + args.wait_timeout.as_duration();
    let mut last_line = String::new();
    loop {
        let value: Value = client.get(&path).await?;
        let task = parse_task(&value)?;
        let line = progress_line(&task);
        if line != last_line && !args.client.json {
            eprintln!("  {line}");
            last_line = line;
        }
        let healthy = task.spec.health_check.is_none() || task.health == Health::Healthy;
        let done = match task.state {
            TaskState::Running if healthy => Some(Ok(())),
            TaskState::Failed => Some(Err(CliError::new(
                exit::TASK_FAILED,
                format!("task {} failed: {}", task.id, task.reason.as_deref().unwrap_or("no reason given")),
            ))),
            TaskState::Completed => Some(Ok(())),
            _ => None,
        };
        if let Some(outcome) = done {
            if args.client.json {
                print_json(&value)?;
            } else if outcome.is_ok() {
                println!("{}", task.id);
            }
            return outcome;
        }
        if Instant::now() >= deadline {
            return Err(CliError::other(format!(
                "task {} is still {} after {}",
                task.id, task.state, args.wait_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn progress_line(task: &Task) -> String {
    let mut line = task.state.to_string();
    if let Some(node) = &task.node {
        line.push_str(&format!(" on {node}"));
    }
    if task.spec.health_check.is_some() && task.state == TaskState::Running {
        line.push_str(&format!(", health {}", health_name(task.health)));
    }
    if let Some(reason) = &task.reason {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

fn health_name(health: Health) -> &'static str {
    match health {
        Health::Unknown => "unknown",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

fn ports_of(task: &Task) -> String {
    task.spec
        .ports
        .iter()
        .map(|p| match task.host_ports.get(&p.container).copied().or(p.host) {
            Some(host) => format!("{host}->{}", p.container),
            None => p.container.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `goat status [ID]`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    let Some(id) = &args.id else {
        let tasks = all_tasks(&client).await?;
        if args.client.json {
            return print_json(&tasks);
        }
        let mut tasks: Vec<Task> = tasks.iter().map(parse_task).collect::<Result<_, _>>()?;
        tasks.sort_by_key(|t| (t.created_at, t.id));
        let now = now_ms();
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                vec![
                    short_id(t),
                    t.spec.name.clone(),
                    t.state.to_string(),
                    t.node.clone().unwrap_or_else(|| "-".into()),
                    t.spec.image.clone(),
                    ports_of(t),
                    t.restarts.to_string(),
                    age(now.saturating_sub(t.created_at)),
                ]
            })
            .collect();
        println!("{}", render(&["ID", "NAME", "STATE", "NODE", "IMAGE", "PORTS", "RESTARTS", "AGE"], &rows));
        return Ok(());
    };
    let id = resolve_task(&client, id).await?;
    let value: Value = client.get(&format!("/v1/tasks/{id}")).await?;
    if args.client.json {
        return print_json(&value);
    }
    let t = parse_task(&value)?;
    let now = now_ms();
    let desired = serde_json::to_value(t.desired).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let details = [
        ("ID", t.id.to_string()),
        ("Name", t.spec.name.clone()),
        ("State", t.state.to_string()),
        ("Desired", desired),
        ("Health", health_name(t.health).to_string()),
        ("Node", t.node.clone().unwrap_or_else(|| "-".into())),
        ("Image", t.spec.image.clone()),
        ("Ports", ports_of(&t)),
        ("Resources", format!("cpu {}, memory {}", t.spec.cpu, bytes(t.spec.memory))),
        ("Restarts", t.restarts.to_string()),
        ("Generation", t.generation.to_string()),
        ("Reason", t.reason.clone().unwrap_or_else(|| "-".into())),
        ("Created", format!("{} ago", age(now.saturating_sub(t.created_at)))),
        ("Updated", format!("{} ago", age(now.saturating_sub(t.updated_at)))),
    ];
    for (key, value) in details {
        println!("{key:<11} {value}");
    }
    println!("\nEvents:");
    let rows: Vec<Vec<String>> = t
        .events
        .iter()
        .map(|e| {
            vec![
                format!("{} ago", age(now.saturating_sub(e.at))),
                e.state.to_string(),
                e.node.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!("{}", render(&["WHEN", "STATE", "NODE", "REASON"], &rows));
    Ok(())
}

/// `goat stop ID`.
pub async fn stop(args: StopArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    let id = resolve_task(&client, &args.id).await?;
    let task = client.send_ok(Method::DELETE, &format!("/v1/tasks/{id}"), None).await?;
    if args.client.json {
        return print_json(&task);
    }
    let state = task["state"].as_str().unwrap_or("stopping");
    println!("stopping task {id} (now {state})");
    Ok(())
}

/// `goat nodes`.
pub async fn nodes(args: NodesArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    let nodes: Vec<Value> = client.get("/v1/nodes").await?;
    if args.client.json {
        return print_json(&nodes);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let engine =
                if n["engine_healthy"].as_bool() == Some(true) { "ok".to_string() } else { "down".to_string() };
            vec![
                n["name"].as_str().unwrap_or("?").to_string(),
                n["status"].as_str().unwrap_or("?").to_string(),
                engine,
                format!(
                    "{}/{}",
                    n["allocated"]["cpu"].as_f64().unwrap_or(0.0),
                    n["capacity"]["cpu"].as_f64().unwrap_or(0.0)
                ),
                format!(
                    "{}/{}",
                    bytes(n["allocated"]["memory"].as_u64().unwrap_or(0)),
                    bytes(n["capacity"]["memory"].as_u64().unwrap_or(0))
                ),
                n["tasks"].as_u64().unwrap_or(0).to_string(),
                age(now.saturating_sub(n["registered_at"].as_u64().unwrap_or(now))),
            ]
        })
        .collect();
    println!("{}", render(&["NAME", "STATUS", "ENGINE", "CPU", "MEMORY", "TASKS", "AGE"], &rows));
    Ok(())
}

/// `goat node drain NAME`, `goat node undrain NAME`.
pub async fn node(args: NodeArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    match &args.action {
        NodeAction::Drain { name } => {
            let node = client.send_ok(Method::PUT, &format!("/v1/nodes/{name}/drain"), None).await?;
            if args.client.json {
                return print_json(&node);
            }
            println!("node {name} is draining: it takes no new tasks and its tasks are moved");
        }
        NodeAction::Undrain { name } => {
            let node = client.send_ok(Method::DELETE, &format!("/v1/nodes/{name}/drain"), None).await?;
            if args.client.json {
                return print_json(&node);
            }
            println!("node {name} takes tasks again");
        }
    }
    Ok(())
}

/// `goat members`, `goat members add ID ADDR`, `goat members remove ID`.
pub async fn members(args: MembersArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    match &args.action {
        Some(MembersAction::Add { id, addr }) => {
            let answer = client.post_json("/v1/cluster/members", &json!({"id": id, "addr": addr})).await?;
            if args.client.json {
                return print_json(&answer);
            }
            println!("manager {id} ({addr}) added as a voter");
            Ok(())
        }
        Some(MembersAction::Remove { id }) => {
            client.send_ok(Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await?;
            if args.client.json {
                return print_json(&json!({"removed": id}));
            }
            println!("manager {id} removed");
            Ok(())
        }
        None => list_members(&client, &args.client).await,
    }
}

/// Lists the members, each as it describes itself (its own role and
/// applied index), falling back on the answering manager's view.
async fn list_members(client: &Client, args: &ClientArgs) -> Result<(), CliError> {
    let view: Value = client.get("/v1/cluster").await?;
    let leader = view["leader"].as_u64();
    let members = view["members"].as_array().cloned().unwrap_or_default();
    let tls = args.tls()?;
    let scheme = goat_raft::tls::scheme(tls.as_ref());
    let probe = goat_raft::tls::client_builder(tls.as_ref())
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| CliError::other(e.to_string()))?;
    let healths = futures::future::join_all(members.iter().map(|m| {
        let url = format!("{scheme}://{}/v1/health", m["addr"].as_str().unwrap_or_default());
        let probe = probe.clone();
        async move {
            let response = probe.get(url).send().await.ok()?;
            response.json::<Value>().await.ok()
        }
    }))
    .await;
    let list: Vec<Value> = members
        .iter()
        .zip(healths)
        .map(|(m, health)| {
            let id = m["id"].as_u64();
            let reachable = health.is_some();
            let role = health.as_ref().and_then(|h| h["role"].as_str()).or(m["role"].as_str()).unwrap_or("?");
            let last_applied = health.as_ref().map(|h| h["last_applied"].clone()).unwrap_or(m["last_applied"].clone());
            json!({
                "id": id,
                "addr": m["addr"],
                "role": if reachable { role } else { "unreachable" },
                "leader": id.is_some() && id == leader,
                "voter": m["voter"],
                "last_applied": last_applied,
            })
        })
        .collect();
    if args.json {
        return print_json(&json!({"leader": leader, "term": view["term"], "members": list}));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m["id"].to_string(),
                m["addr"].as_str().unwrap_or("?").to_string(),
                m["role"].as_str().unwrap_or("?").to_string(),
                if m["leader"] == true { "*".into() } else { String::new() },
                m["last_applied"].as_u64().map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!("{}", render(&["ID", "ADDRESS", "ROLE", "LEADER", "LAST APPLIED"], &rows));
    Ok(())
}

/// `goat snapshot save FILE` and `goat snapshot restore FILE`.
pub async fn snapshot(args: SnapshotArgs) -> Result<(), CliError> {
    match &args.action {
        SnapshotAction::Save { file } => {
            let client = client(&args.client)?;
            let (status, body) = client.send(Method::GET, "/v1/snapshot", None).await?;
            if !status.is_success() {
                return Err(CliError::from_status(status, &body));
            }
            let backup: Backup = serde_json::from_slice(&body)
                .map_err(|e| CliError::other(format!("the manager sent an unreadable backup: {e}")))?;
            if file.as_os_str() == "-" {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            // Write then rename: a crash never leaves half a backup under FILE.
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &body)
                .and_then(|_| std::fs::rename(&tmp, file))
                .map_err(|e| CliError::other(format!("writing {}: {e}", file.display())))?;
            let summary = json!({"file": file, "tasks": backup.tasks.len(), "nodes": backup.nodes.len(), "last_applied": backup.last_applied});
            if args.client.json {
                return print_json(&summary);
            }
            println!(
                "saved {} tasks and {} nodes (log index {}) to {}",
                backup.tasks.len(),
                backup.nodes.len(),
                backup.last_applied.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                file.display()
            );
            Ok(())
        }
        SnapshotAction::Restore { file } => {
            let body = std::fs::read(file).map_err(|e| CliError::usage(format!("reading {}: {e}", file.display())))?;
            let backup: Backup = serde_json::from_slice(&body)
                .map_err(|e| CliError::usage(format!("{} is not a Goat backup: {e}", file.display())))?;
            backup.check().map_err(|e| CliError::usage(format!("{}: {}: {}", file.display(), e.field, e.message)))?;
            let timeout = args.client.timeout.as_duration().max(Duration::from_secs(60));
            let tls = args.client.tls()?;
            let client = Client::new(&args.client.addr, args.client.token.clone(), timeout, tls.as_ref())?;
            let answer = client.send_ok(Method::POST, "/v1/snapshot/restore", Some(body)).await?;
            if args.client.json {
                return print_json(&answer);
            }
            println!("restored {} tasks and {} nodes from {}", backup.tasks.len(), backup.nodes.len(), file.display());
            Ok(())
        }
    }
}

/// `goat plan node-loss [NODE]`.
pub async fn plan(args: PlanArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    let PlanAction::NodeLoss { node } = &args.action;
    let path = match node {
        Some(name) => format!("/v1/cluster/headroom?node={}", encode_query(name)),
        None => "/v1/cluster/headroom".to_string(),
    };
    let plan: crate::headroom::NodeLoss = client.get(&path).await?;
    if args.client.json {
        print_json(&plan)?;
    } else {
        println!("{}", render_plan(&plan));
    }
    if plan.fits {
        Ok(())
    } else {
        Err(CliError::new(
            exit::NO_ROOM,
            format!("{} of {} tasks of {} would find no place", plan.tasks - plan.placed, plan.tasks, plan.node),
        ))
    }
}

/// Percent-encodes a query value (node names are simple, but be safe).
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The plan for people: a headline, then one row per task.
pub fn render_plan(plan: &crate::headroom::NodeLoss) -> String {
    let which = if plan.busiest { " (the busiest node)" } else { "" };
    let mut out = format!(
        "if {}{which} died now: {} of its {} tasks would find a place on the {} other ready node{}{}",
        plan.node,
        plan.placed,
        plan.tasks,
        plan.nodes_left,
        if plan.nodes_left == 1 { "" } else { "s" },
        if plan.fits { "" } else { "; NOT all" }
    );
    if !plan.moves.is_empty() {
        let rows: Vec<Vec<String>> = plan
            .moves
            .iter()
            .map(|m| {
                vec![
                    m.task.to_string(),
                    m.name.clone(),
                    m.to.clone().unwrap_or_else(|| "-".into()),
                    m.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render(&["TASK", "NAME", "WOULD GO TO", "WHY NOT"], &rows));
    }
    out
}

/// `goat token create|list|revoke`.
pub async fn token(args: TokenArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    match &args.action {
        TokenAction::Create { role, name } => {
            if !["read", "submit", "admin"].contains(&role.as_str()) {
                return Err(CliError::usage(format!("--role {role:?}: use read, submit or admin")));
            }
            let created = client.post_json("/v1/tokens", &json!({"role": role, "name": name})).await?;
            if args.client.json {
                return print_json(&created);
            }
            println!(
                "created token {} ({} role{}). Its secret, shown this once:\n\n  {}\n\nUse it with: export GOAT_TOKEN=<secret>",
                created["id"].as_str().unwrap_or("?"),
                created["role"].as_str().unwrap_or("?"),
                if name.is_empty() { String::new() } else { format!(", {name}") },
                created["secret"].as_str().unwrap_or("?"),
            );
            Ok(())
        }
        TokenAction::List => {
            let tokens: Vec<Value> = client.get("/v1/tokens").await?;
            if args.client.json {
                return print_json(&tokens);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t["id"].as_str().unwrap_or("").to_string(),
                        t["role"].as_str().unwrap_or("").to_string(),
                        t["name"].as_str().unwrap_or("").to_string(),
                        age(now.saturating_sub(t["created_at"].as_u64().unwrap_or(now))),
                    ]
                })
                .collect();
            println!("{}", render(&["ID", "ROLE", "NAME", "CREATED"], &rows));
            Ok(())
        }
        TokenAction::Revoke { id } => {
            client.send_ok(Method::DELETE, &format!("/v1/tokens/{id}"), None).await?;
            if args.client.json {
                return print_json(&json!({"revoked": id}));
            }
            println!("revoked token {id}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_env_flags_parse() {
        assert_eq!(parse_port("7777"), Ok((7777, None)));
        assert_eq!(parse_port("7777:8080"), Ok((7777, Some(8080))));
        assert!(parse_port("x").is_err() && parse_port("1:").is_err() && parse_port("0").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err() && parse_env("novalue").is_err());
    }
}
