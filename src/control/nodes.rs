//! Node decisions, as pure functions of the applied state: what a worker's
//! heartbeat changes, which tasks a lost or drained node gives back, what the
//! leader decides about nodes it has not heard from, and every task a node
//! should hold (its assignments).
//!
//! The HTTP side (heartbeats in, assignments out) is `crate::manager::nodes`.

use goat_raft::Command;
use goat_storage::fsm::ClusterState;
use goat_storage::model::*;
use goat_storage::Millis;

/// How often workers are asked to report.
pub const HEARTBEAT_INTERVAL: Millis = Millis(1_000);

/// The commands that bring the store in line with a node's heartbeat: the
/// node's registration or changed capacity/engine health, and every task
/// whose observed status differs from what is stored. Reports about tasks
/// this node no longer holds (stale generations) are left out: the reply
/// tells the worker to remove those copies.
///
/// A node that was down and reports again: the reports come first, so its
/// `unknown` tasks (waiting out their disconnect window) that still run go
/// straight back to `running`; then the node is registered back.
pub fn heartbeat_commands(state: &ClusterState, name: &str, hb: &Heartbeat, at: Timestamp) -> Vec<Command> {
    let mut commands = Vec::new();
    for report in &hb.tasks {
        let Some(task) = state.tasks.get(&report.task_id) else { continue };
        if task.node.as_deref() != Some(name) || task.generation != report.generation || task.state.is_terminal() {
            continue;
        }
        if report_differs(task, report) {
            commands.push(Command::ReportTask { node: name.to_string(), report: report.clone(), at });
        }
    }
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
    let address_changed = state.nodes.get(name).map_or(hb.advertise.is_some(), |n| n.address != hb.advertise);
    if address_changed && hb.advertise.is_some() {
        commands.push(Command::SetNodeAddress { name: name.to_string(), address: hb.advertise.clone(), at });
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

/// What the leader commits about nodes it has not heard from within their
/// deadline (`alive(name)` false), at `now`:
///
/// - a node not yet `down` is marked down;
/// - each of its placed tasks (`scheduled`, `running`) is requeued at once,
///   or, if the task has a disconnect window, becomes `unknown` and waits;
/// - each `unknown` task whose window is over is moved (`pending`).
///
/// Nodes heard from are left alone (their heartbeat brings them back), so
/// nothing is decided about a node before the leader gave it a full
/// deadline. The same function sweeps nodes already down, so a decision
/// lost in a leader change is taken again by the next leader.
pub fn liveness_commands(state: &ClusterState, now: Timestamp, alive: impl Fn(&str) -> bool) -> Vec<Command> {
    let mut commands = Vec::new();
    for node in state.nodes.values().filter(|n| !alive(&n.name)) {
        let name = &node.name;
        if node.status != NodeStatus::Down {
            commands.push(Command::SetNodeStatus { name: name.clone(), status: NodeStatus::Down, at: now });
        }
        for task in state.tasks_on(name) {
            match task.state {
                TaskState::Scheduled | TaskState::Running => match task.spec.disconnect_window {
                    Some(_) => commands.push(Command::DisconnectTask {
                        task_id: task.id,
                        generation: task.generation,
                        at: now,
                    }),
                    None => commands.push(Command::RequeueTask {
                        task_id: task.id,
                        generation: task.generation,
                        reason: format!("node {name} is down"),
                        at: now,
                    }),
                },
                TaskState::Unknown if window_ends_at(task).is_some_and(|end| end <= now) => {
                    commands.push(Command::ExpireDisconnect { task_id: task.id, generation: task.generation, at: now })
                }
                _ => {}
            }
        }
    }
    commands
}

/// When the disconnect window of an `unknown` task ends: its window after
/// the moment it became unknown (its latest event).
pub fn window_ends_at(task: &Task) -> Option<Timestamp> {
    if task.state != TaskState::Unknown {
        return None;
    }
    let since = task.events.iter().rev().find(|e| e.state == TaskState::Unknown)?.at;
    Some(since.saturating_add(task.spec.disconnect_window?.0))
}

/// Every task `name` should hold: those placed on it and not finished.
pub fn assignments(state: &ClusterState, name: &str) -> Vec<Assignment> {
    state
        .tasks_on(name)
        .map(|t| Assignment { task_id: t.id, generation: t.generation, desired: t.desired, spec: t.spec.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn hb(tasks: Vec<TaskReport>) -> Heartbeat {
        Heartbeat {
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            usage: Resources::default(),
            engine: EngineStatus { healthy: true, error: None },
            tasks,
            held: None,
            advertise: None,
        }
    }

    fn running(id: Uuid, generation: u64) -> TaskReport {
        TaskReport::running(id, generation, "c")
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

    /// w1 and w2 registered; task 1 (no window) and task 2 (a 30 s window)
    /// running on w1.
    fn two_tasks_on_w1() -> (ClusterState, Uuid, Uuid) {
        let (mut s, plain) = placed();
        for c in heartbeat_commands(&s, "w2", &hb(vec![]), 1) {
            s.apply(&c);
        }
        let waits = Uuid::from_u128(2);
        let spec = serde_json::from_str(r#"{"name":"u","image":"i","disconnect_window":"30s"}"#).unwrap();
        s.apply(&Command::SubmitTask { task_id: waits, spec, at: 1 });
        s.apply(&Command::PlaceTask { task_id: waits, node: "w1".into(), at: 2 });
        for c in heartbeat_commands(&s, "w1", &hb(vec![running(plain, 1), running(waits, 1)]), 3) {
            assert!(!s.apply(&c).is_refused());
        }
        (s, plain, waits)
    }

    fn apply_all(s: &mut ClusterState, commands: &[Command]) {
        for c in commands {
            assert!(!s.apply(c).is_refused(), "{c:?}");
        }
    }

    #[test]
    fn a_node_heard_from_is_left_alone() {
        let (s, _, _) = two_tasks_on_w1();
        assert!(liveness_commands(&s, 10_000, |_| true).is_empty());
    }

    #[test]
    fn a_silent_node_is_marked_down_its_tasks_moved_or_waiting_out_their_window() {
        let (mut s, plain, waits) = two_tasks_on_w1();
        let commands = liveness_commands(&s, 10_000, |n| n != "w1");
        assert!(matches!(&commands[0], Command::SetNodeStatus { name, status: NodeStatus::Down, .. } if name == "w1"));
        assert_eq!(commands.len(), 3);
        apply_all(&mut s, &commands);
        assert_eq!(s.nodes["w1"].status, NodeStatus::Down);
        assert_eq!(s.tasks[&plain].state, TaskState::Pending, "no window: moved at once");
        assert_eq!(s.tasks[&waits].state, TaskState::Unknown, "a window: waits where it is");
        assert_eq!(window_ends_at(&s.tasks[&waits]), Some(40_000));
        assert_eq!(window_ends_at(&s.tasks[&plain]), None);
        // Nothing more until the window ends.
        assert!(liveness_commands(&s, 39_999, |n| n != "w1").is_empty());
        let commands = liveness_commands(&s, 40_000, |n| n != "w1");
        assert!(matches!(commands[..], [Command::ExpireDisconnect { task_id, generation: 1, .. }] if task_id == waits));
        apply_all(&mut s, &commands);
        assert_eq!(s.tasks[&waits].state, TaskState::Pending);
        assert!(liveness_commands(&s, 50_000, |n| n != "w1").is_empty());
        // Every move is in the task's history.
        let states: Vec<TaskState> = s.tasks[&waits].events.iter().map(|e| e.state).collect();
        assert!(states.ends_with(&[TaskState::Running, TaskState::Unknown, TaskState::Pending]), "{states:?}");
    }

    #[test]
    fn a_node_back_within_the_window_keeps_its_tasks_running_where_they_are() {
        let (mut s, _, waits) = two_tasks_on_w1();
        let commands = liveness_commands(&s, 10_000, |n| n != "w1");
        apply_all(&mut s, &commands);
        // The same container reports in: the reports go before the node's
        // return, so the task goes straight back to running.
        let commands = heartbeat_commands(&s, "w1", &hb(vec![running(waits, 1)]), 20_000);
        assert!(matches!(commands[..], [Command::ReportTask { .. }, Command::UpsertNode { .. }]), "{commands:?}");
        apply_all(&mut s, &commands);
        let task = &s.tasks[&waits];
        assert_eq!((task.state, task.generation, task.node.as_deref()), (TaskState::Running, 1, Some("w1")));
        assert_eq!(s.nodes["w1"].status, NodeStatus::Ready);
        assert_eq!(assignments(&s, "w1").len(), 1, "still assigned: the worker keeps its container");
        // The window passes: nothing to do, the node is up.
        assert!(liveness_commands(&s, 100_000, |_| true).is_empty());
    }

    #[test]
    fn a_new_leader_sweeps_a_down_node_left_half_handled() {
        let (mut s, plain, waits) = two_tasks_on_w1();
        // An earlier leader marked w1 down but its moves were lost.
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Down, at: 10_000 });
        let commands = liveness_commands(&s, 11_000, |n| n != "w1");
        assert_eq!(commands.len(), 2, "{commands:?}");
        apply_all(&mut s, &commands);
        assert_eq!((s.tasks[&plain].state, s.tasks[&waits].state), (TaskState::Pending, TaskState::Unknown));
    }

    #[test]
    fn a_drained_node_that_went_down_comes_back_drained() {
        let (mut s, _, _) = two_tasks_on_w1();
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Draining, at: 5 });
        let commands = requeue_commands(&s, "w1", "node w1 is draining", 5);
        apply_all(&mut s, &commands);
        let commands = liveness_commands(&s, 10_000, |n| n != "w1");
        apply_all(&mut s, &commands);
        assert_eq!(s.nodes["w1"].status, NodeStatus::Down);
        let commands = heartbeat_commands(&s, "w1", &hb(vec![]), 20_000);
        apply_all(&mut s, &commands);
        assert_eq!(s.nodes["w1"].status, NodeStatus::Draining);
        assert!(s.nodes["w1"].drain);
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
