//! Workers as the leader sees them: heartbeats in, assignments out.
//!
//! A worker's heartbeat lands on any manager; a follower relays it to the
//! leader, which (1) notes the time in memory — liveness deadlines are not
//! replicated, only a node's change of status is — (2) turns what changed in
//! the worker's report into commands, committed in one batch, and (3)
//! answers with the full list of tasks the node should hold.
//!
//! Deciding what to commit and what to assign are pure functions of the
//! applied state, unit-tested below.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::Command;
use goat_storage::fsm::ClusterState;
use goat_storage::model::*;
use goat_storage::validate::check_name;
use goat_storage::Millis;
use serde::Serialize;

use super::api::{consistent, forwarded, read_options, ReadOptions};
use super::cluster::Manager;
use super::error::ApiError;
use super::json::parse;
use crate::clock::now_ms;

/// How often workers are asked to report.
pub const HEARTBEAT_INTERVAL: Millis = Millis(1_000);

/// The commands that bring the store in line with a node's heartbeat: the
/// node's registration or changed capacity/engine health, and every task
/// whose observed status differs from what is stored. Reports about tasks
/// this node no longer holds (stale generations) are left out: the reply
/// tells the worker to remove those copies.
pub fn heartbeat_commands(state: &ClusterState, name: &str, hb: &Heartbeat, at: Timestamp) -> Vec<Command> {
    let mut commands = Vec::new();
    let node_changed = match state.nodes.get(name) {
        None => true,
        Some(node) => {
            node.capacity != hb.capacity
                || node.engine_healthy != hb.engine.healthy
                || node.engine_error != hb.engine.error
                || node.status == NodeStatus::Down
        }
    };
    if node_changed {
        commands.push(Command::UpsertNode {
            name: name.to_string(),
            capacity: hb.capacity,
            engine: hb.engine.clone(),
            at,
        });
    }
    for report in &hb.tasks {
        let Some(task) = state.tasks.get(&report.task_id) else { continue };
        if task.node.as_deref() != Some(name) || task.generation != report.generation || task.state.is_terminal() {
            continue;
        }
        if report_differs(task, report) {
            commands.push(Command::ReportTask { node: name.to_string(), report: report.clone(), at });
        }
    }
    commands
}

fn report_differs(task: &Task, report: &TaskReport) -> bool {
    task.state != report.state.task_state()
        || task.restarts != report.restarts
        || task.health != report.health
        || task.host_ports != report.host_ports
        || task.reason != report.reason
        || (report.container_id.is_some() && task.container_id != report.container_id)
}

/// Takes every task back from `node` (lost or drained) so that the
/// placement loop puts it elsewhere. Each command carries the task's current
/// generation: if the task moved meanwhile, the state machine refuses it.
/// When the node comes back, its copies are no longer in its assignments and
/// its worker stops them (fencing by generation).
pub fn requeue_commands(state: &ClusterState, node: &str, reason: &str, at: Timestamp) -> Vec<Command> {
    state
        .tasks_on(node)
        .map(|t| Command::RequeueTask { task_id: t.id, generation: t.generation, reason: reason.to_string(), at })
        .collect()
}

/// Every task `name` should hold: those placed on it and not finished.
pub fn assignments(state: &ClusterState, name: &str) -> Vec<Assignment> {
    state
        .tasks_on(name)
        .map(|t| Assignment { task_id: t.id, generation: t.generation, desired: t.desired, spec: t.spec.clone() })
        .collect()
}

/// `POST /v1/nodes/{name}/heartbeat`.
pub async fn heartbeat(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !m.token_ok(&headers) {
        return Err(ApiError::unauthorized());
    }
    check_name("name", &name)?;
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    let hb: Heartbeat = parse(body)?;
    if !m.is_leader() {
        if headers.contains_key("x-goat-forwarded-by") {
            return Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", "this manager does not lead"));
        }
        return forwarded(&m, reqwest::Method::POST, &format!("/v1/nodes/{name}/heartbeat"), raw).await;
    }
    let span = tracing::debug_span!("heartbeat", node = %name);
    let _enter = span.enter();
    if let Ok(mut seen) = m.last_seen.lock() {
        seen.insert(name.clone(), Instant::now());
    }
    let commands = heartbeat_commands(&m.state.read().state, &name, &hb, now_ms());
    if !commands.is_empty() {
        m.propose(Command::Batch(commands)).await?;
        m.placement_kick.notify_one();
    }
    let reply = HeartbeatReply {
        assignments: assignments(&m.state.read().state, &name),
        heartbeat_interval: HEARTBEAT_INTERVAL,
    };
    Ok(Json(reply).into_response())
}

/// `PUT /v1/nodes/{name}/drain`: the node takes no new tasks and its tasks
/// are moved to other nodes.
pub async fn drain(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    check_name("name", &name)?;
    if !m.state.read().state.nodes.contains_key(&name) {
        return Err(ApiError::not_found(format!("no node {name}")));
    }
    let at = now_ms();
    let mut commands = vec![Command::SetNodeStatus { name: name.clone(), status: NodeStatus::Draining, at }];
    commands.extend(requeue_commands(&m.state.read().state, &name, &format!("node {name} is draining"), at));
    m.propose(Command::Batch(commands)).await?;
    m.placement_kick.notify_one();
    tracing::info!(node = %name, "draining node");
    let node = m.state.read().state.nodes.get(&name).cloned();
    Ok((StatusCode::OK, Json(node)).into_response())
}

#[derive(Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    node: Node,
    allocated: Resources,
    tasks: usize,
}

/// `GET /v1/nodes`.
pub async fn list_nodes(
    State(m): State<Arc<Manager>>,
    query: Result<Query<ReadOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let options = read_options(query)?;
    consistent(&m, &options).await?;
    let applied = m.state.read();
    let state = &applied.state;
    Ok(Json(
        state
            .nodes
            .values()
            .map(|n| NodeView {
                node: n.clone(),
                allocated: state.allocated(&n.name),
                tasks: state.tasks_on(&n.name).count(),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn hb(tasks: Vec<TaskReport>) -> Heartbeat {
        Heartbeat {
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            usage: Resources::default(),
            engine: EngineStatus { healthy: true, error: None },
            tasks,
        }
    }

    fn running(id: Uuid, generation: u64) -> TaskReport {
        TaskReport {
            task_id: id,
            generation,
            state: ObservedState::Running,
            container_id: Some("c".into()),
            exit_code: None,
            host_ports: BTreeMap::new(),
            health: Health::Unknown,
            restarts: 0,
            reason: None,
        }
    }

    /// Node w1 registered, one task placed on it.
    fn placed() -> (ClusterState, Uuid) {
        let mut s = ClusterState::default();
        for c in heartbeat_commands(&s, "w1", &hb(vec![]), 1) {
            s.apply(&c);
        }
        let id = Uuid::from_u128(1);
        let spec = serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap();
        s.apply(&Command::SubmitTask { task_id: id, spec, at: 1 });
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 2 });
        (s, id)
    }

    #[test]
    fn first_heartbeat_registers_then_nothing_to_commit() {
        let s = ClusterState::default();
        assert!(matches!(heartbeat_commands(&s, "w1", &hb(vec![]), 1)[..], [Command::UpsertNode { .. }]));
        let (s, _) = placed();
        assert!(heartbeat_commands(&s, "w1", &hb(vec![]), 3).is_empty());
    }

    #[test]
    fn changes_are_reported_once() {
        let (mut s, id) = placed();
        let commands = heartbeat_commands(&s, "w1", &hb(vec![running(id, 1)]), 3);
        assert_eq!(commands.len(), 1);
        for c in &commands {
            s.apply(c);
        }
        assert_eq!(s.tasks[&id].state, TaskState::Running);
        assert!(heartbeat_commands(&s, "w1", &hb(vec![running(id, 1)]), 4).is_empty());
    }

    #[test]
    fn stale_and_foreign_reports_are_ignored() {
        let (s, id) = placed();
        assert!(heartbeat_commands(&s, "w1", &hb(vec![running(id, 0)]), 3).is_empty());
        assert_eq!(heartbeat_commands(&s, "w2", &hb(vec![running(id, 1)]), 3).len(), 1, "only w2's registration");
        assert!(heartbeat_commands(&s, "w1", &hb(vec![running(Uuid::nil(), 1)]), 3).is_empty());
    }

    #[test]
    fn engine_health_changes_are_committed() {
        let (s, _) = placed();
        let mut beat = hb(vec![]);
        beat.engine = EngineStatus { healthy: false, error: Some("connection refused".into()) };
        assert!(matches!(heartbeat_commands(&s, "w1", &beat, 3)[..], [Command::UpsertNode { .. }]));
    }

    #[test]
    fn requeue_moves_every_live_task_of_a_node_and_fences_old_copies() {
        let (mut s, id) = placed();
        let commands = requeue_commands(&s, "w1", "node w1 is down", 5);
        assert_eq!(commands.len(), 1);
        for c in &commands {
            assert!(!s.apply(c).is_refused());
        }
        assert_eq!(s.tasks[&id].state, TaskState::Pending);
        assert!(assignments(&s, "w1").is_empty(), "the old copy is no longer assigned");
        // Placed again elsewhere: a report from the old copy is stale.
        for c in heartbeat_commands(&s, "w2", &hb(vec![]), 6) {
            s.apply(&c);
        }
        s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 7 });
        assert!(heartbeat_commands(&s, "w1", &hb(vec![running(id, 1)]), 8)
            .iter()
            .all(|c| !matches!(c, Command::ReportTask { .. })));
        assert!(requeue_commands(&s, "w1", "again", 9).is_empty());
    }

    #[test]
    fn assignments_list_live_placements_only() {
        let (mut s, id) = placed();
        assert_eq!(assignments(&s, "w1").len(), 1);
        assert_eq!(assignments(&s, "w1")[0].generation, 1);
        assert!(assignments(&s, "w2").is_empty());
        s.apply(&Command::StopTask { task_id: id, at: 3 });
        assert_eq!(assignments(&s, "w1")[0].desired, DesiredStatus::Stop);
        let mut done = running(id, 1);
        done.state = ObservedState::Completed;
        s.apply(&Command::ReportTask { node: "w1".into(), report: done, at: 4 });
        assert!(assignments(&s, "w1").is_empty());
    }
}
