//! One function per operator subcommand. Each prints a table (or, with
//! `--json`, the API's JSON) on stdout and returns a [`CliError`] on failure.

use std::time::{Duration, Instant};

use goat_storage::backup::Backup;
use goat_storage::model::{Health, Task, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use super::args::{parse_env, parse_port};
use super::args::{
    ClientArgs, MembersAction, MembersArgs, NodeAction, NodeArgs, NodesArgs, PlanAction, PlanArgs, RunArgs,
    SnapshotAction, SnapshotArgs, StatusArgs, StopArgs, TokenAction, TokenArgs,
};
use super::error::{exit, CliError};
use super::table::{age, bytes, render};
use crate::client::Client;
use crate::clock::now_ms;
use crate::manager::auth::{CreatedToken, TokenView};
use crate::manager::members::AddedMember;
use crate::manager::snapshot::Restored;
use crate::manager::transfer::TransferView;

pub(crate) fn client(args: &ClientArgs) -> Result<Client, CliError> {
    client_with(args, args.timeout.as_duration())
}

/// The client of `--addr`, `--token` and the TLS flags, with a timeout per request.
pub fn client_with(args: &ClientArgs, timeout: Duration) -> Result<Client, CliError> {
    let tls = args.tls()?;
    Ok(Client::builder(&args.addr).token(args.token.clone()).tls(tls.as_ref()).timeout(timeout).build()?)
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

fn short_id(task: &Task) -> String {
    task.id.simple().to_string()[..8].to_string()
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
    let tasks = client.tasks(None).await?;
    let matches: Vec<String> =
        tasks.iter().map(|t| t.id.to_string()).filter(|t| t.replace('-', "").starts_with(&wanted)).collect();
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
    let task = client.submit(&spec).await?;
    if !args.wait {
        if args.client.json {
            return print_json(&task);
        }
        println!("{}", task.id);
        return Ok(());
    }
    if !args.client.json {
        eprintln!("submitted task {} ({}); waiting for it to run", task.id, task.spec.name);
    }
    let id = task.id;
    let deadline = Instant::now() + args.wait_timeout.as_duration();
    let mut last_line = String::new();
    loop {
        let task = client.task(id).await?;
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
                print_json(&task)?;
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
        let mut tasks = client.tasks(None).await?;
        if args.client.json {
            return print_json(&tasks);
        }
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
    let t = client.task(&id).await?;
    if args.client.json {
        return print_json(&t);
    }
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
    let task = client.stop(&id).await?;
    if args.client.json {
        return print_json(&task);
    }
    let state = task.state;
    println!("stopping task {id} (now {state})");
    Ok(())
}

/// `goat nodes`.
pub async fn nodes(args: NodesArgs) -> Result<(), CliError> {
    let client = client(&args.client)?;
    let nodes = client.nodes().await?;
    if args.client.json {
        return print_json(&nodes);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|v| {
            let n = &v.node;
            let engine = if n.engine_healthy { "ok" } else { "down" };
            vec![
                n.name.clone(),
                serde_json::to_value(n.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                engine.to_string(),
                format!("{}/{}", v.allocated.cpu, n.capacity.cpu),
                format!("{}/{}", bytes(v.allocated.memory), bytes(n.capacity.memory)),
                v.tasks.to_string(),
                age(now.saturating_sub(n.registered_at)),
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
            let node = client.drain(name).await?;
            if args.client.json {
                return print_json(&node);
            }
            println!("node {name} is draining: it takes no new tasks and its tasks are moved");
        }
        NodeAction::Undrain { name } => {
            let node = client.undrain(name).await?;
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
            let answer: AddedMember =
                client.post("/v1/cluster/members").json(&json!({"id": id, "addr": addr})).json_answer().await?;
            if args.client.json {
                return print_json(&answer);
            }
            println!("manager {id} ({addr}) added as a voter");
            Ok(())
        }
        Some(MembersAction::Remove { id }) => {
            client.delete(format!("/v1/cluster/members/{id}")).send().await?.ok()?;
            if args.client.json {
                return print_json(&json!({"removed": id}));
            }
            println!("manager {id} removed");
            Ok(())
        }
        Some(MembersAction::TransferLeader { to }) => {
            let body = match to {
                Some(to) => json!({"to": to}),
                None => json!({}),
            };
            let answer: TransferView = client.post("/v1/cluster/leader").json(&body).send().await?.json()?;
            if args.client.json {
                return print_json(&answer);
            }
            println!(
                "manager {} leads (was {}, term {}, {} ms)",
                answer.leader, answer.from, answer.term, answer.took_ms
            );
            Ok(())
        }
        None => list_members(&client, &args.client).await,
    }
}

/// What `goat members --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Members {
    /// The leader, as the answering manager sees it.
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}

/// One member, as it describes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// Its own role (`leader`, `follower`, `learner`, ...), or
    /// `unreachable` when it did not answer.
    pub role: String,
    pub leader: bool,
    pub voter: bool,
    /// Its own last applied index (the answering manager's view of it
    /// when unreachable).
    pub last_applied: Option<u64>,
}

/// What `goat snapshot save FILE --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSnapshot {
    pub file: std::path::PathBuf,
    pub tasks: usize,
    pub nodes: usize,
    pub last_applied: Option<u64>,
}

/// Lists the members, each as it describes itself (its own role and
/// applied index), falling back on the answering manager's view.
async fn list_members(client: &Client, args: &ClientArgs) -> Result<(), CliError> {
    let view = client.cluster().await?;
    let leader = view.leader;
    // Each member's own view, through a client of just the members' addresses.
    let addrs: Vec<&str> = view.members.iter().map(|m| m.addr.as_str()).collect();
    let probe = client_with(
        &ClientArgs { addr: addrs.iter().map(|a| a.to_string()).collect(), ..args.clone() },
        Duration::from_secs(1),
    )?;
    let healths = futures::future::join_all((0..addrs.len()).map(|i| probe.health_of(i, Duration::from_secs(1)))).await;
    let members: Vec<MemberStatus> = view
        .members
        .iter()
        .zip(healths)
        .map(|(m, health)| {
            let health = health.ok();
            MemberStatus {
                id: m.id,
                addr: m.addr.clone(),
                role: health.as_ref().map_or("unreachable", |h| h.role.as_str()).to_string(),
                leader: Some(m.id) == leader,
                voter: m.voter,
                last_applied: health.as_ref().map_or(m.last_applied, |h| h.last_applied),
            }
        })
        .collect();
    if args.json {
        return print_json(&Members { leader, term: view.term, members });
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                m.role.clone(),
                if m.leader { "*".into() } else { String::new() },
                m.last_applied.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
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
            let body = client.get("/v1/snapshot").send().await?.ok()?.body;
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
            if args.client.json {
                return print_json(&SavedSnapshot {
                    file: file.clone(),
                    tasks: backup.tasks.len(),
                    nodes: backup.nodes.len(),
                    last_applied: backup.last_applied,
                });
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
            let client = client_with(&args.client, timeout)?;
            let answer: Option<Restored> =
                client.post("/v1/snapshot/restore").body(body).send().await?.json_or_empty()?;
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
    let plan = client.headroom(node.as_deref()).await?;
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
            let created: CreatedToken =
                client.post("/v1/tokens").json(&json!({"role": role, "name": name})).json_answer().await?;
            if args.client.json {
                return print_json(&created);
            }
            println!(
                "created token {} ({} role{}). Its secret, shown this once:\n\n  {}\n\nUse it with: export GOAT_TOKEN=<secret>",
                created.token.id,
                created.token.role.as_str(),
                if name.is_empty() { String::new() } else { format!(", {name}") },
                created.secret,
            );
            Ok(())
        }
        TokenAction::List => {
            let tokens: Vec<TokenView> = client.get("/v1/tokens").json_answer().await?;
            if args.client.json {
                return print_json(&tokens);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.role.as_str().to_string(),
                        t.name.clone(),
                        age(now.saturating_sub(t.created_at)),
                    ]
                })
                .collect();
            println!("{}", render(&["ID", "ROLE", "NAME", "CREATED"], &rows));
            Ok(())
        }
        TokenAction::Revoke { id } => {
            client.delete(format!("/v1/tokens/{id}")).send().await?.ok()?;
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
