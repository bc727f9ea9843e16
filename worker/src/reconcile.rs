//! Reconciliation: the worker's decision logic, pure and free of I/O.
//!
//! Each round compares three things:
//!
//! - what the leader wants on this node: the complete assignment list of
//!   the last heartbeat reply (or `None` if no manager was ever heard from);
//! - what the engine shows: this node's containers, found by label;
//! - what the worker remembers: one [`TaskRecord`] per task (restart
//!   attempts, backoff deadline, outcome), persisted across worker crashes;
//!
//! and returns the engine actions that close the gap, plus the task reports
//! for the next heartbeat. The records are updated in place. The agent then
//! performs the actions, observes again, and reconciles again: a round over
//! an unchanged observation changes no record and asks for nothing new, so
//! the loop converges and is safe to run as often as it likes.
//!
//! Fencing: a container whose task is not assigned here, or whose
//! generation differs from the assignment's, belongs to an older placement
//! and is removed. A worker that never heard from a manager removes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use goat_storage::model::{Assignment, DesiredStatus, Health, ObservedState, TaskId, TaskReport};
use goat_storage::worker_state::{Outcome, TaskRecord};

use crate::restart::{self, Decision, Exit};
use crate::runtime::{Container, ContainerConfig, RuntimeError};

/// What one round looks at.
pub struct Input<'a> {
    pub node: &'a str,
    /// Unix ms.
    pub now: u64,
    /// The leader's assignment list; `None` until one is known.
    pub assignments: Option<&'a [Assignment]>,
    /// This node's containers, as just observed.
    pub containers: &'a [Container],
    /// Health of running containers by container id, from the health checks.
    pub health: &'a BTreeMap<String, Health>,
}

/// An engine operation decided by a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create and start the container of a placement.
    Create { task_id: TaskId, config: Box<ContainerConfig> },
    /// Start an existing, exited container again (a restart).
    Start { task_id: TaskId, container_id: String },
    /// Stop a running container but keep it (failed health check, or the
    /// task has ended): its exit is then handled like any other.
    Stop { task_id: TaskId, container_id: String, reason: String },
    /// Stop and remove a container: stale, duplicate, or stopped on request.
    Remove { container_id: String, reason: String },
}

/// The result of a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub reports: Vec<TaskReport>,
    /// The earliest time (Unix ms) a waiting restart becomes due.
    pub wake_at: Option<u64>,
}

/// One reconciliation round. `jitter` yields numbers in `[0, 1)` for the
/// restart backoff.
pub fn reconcile(input: &Input, records: &mut BTreeMap<TaskId, TaskRecord>, jitter: &mut dyn FnMut() -> f64) -> Plan {
    let mut plan = Plan::default();
    let Some(assignments) = input.assignments else {
        // Nobody told us what to run: touch nothing, report nothing.
        return plan;
    };

    let assigned: BTreeMap<TaskId, &Assignment> = assignments.iter().map(|a| (a.task_id, a)).collect();
    records.retain(|id, _| assigned.contains_key(id));

    // Fencing: containers of unassigned tasks or of other generations.
    for c in input.containers {
        let current = assigned.get(&c.task_id).is_some_and(|a| a.generation == c.generation);
        if !current {
            let reason = match assigned.get(&c.task_id) {
                Some(a) => format!("stale generation {} (assigned {})", c.generation, a.generation),
                None => "task not assigned to this node".to_string(),
            };
            plan.actions.push(Action::Remove { container_id: c.id.clone(), reason });
        }
    }

    for assignment in assignments {
        let record = records.entry(assignment.task_id).or_insert_with(|| TaskRecord::new(assignment.generation));
        if record.generation != assignment.generation {
            *record = TaskRecord::new(assignment.generation);
        }
        let mine: Vec<&Container> = input
            .containers
            .iter()
            .filter(|c| c.task_id == assignment.task_id && c.generation == assignment.generation)
            .collect();
        reconcile_task(input, assignment, &mine, record, jitter, &mut plan);
    }
    plan
}

fn reconcile_task(
    input: &Input,
    assignment: &Assignment,
    mine: &[&Container],
    record: &mut TaskRecord,
    jitter: &mut dyn FnMut() -> f64,
    plan: &mut Plan,
) {
    let task_id = assignment.task_id;
    let policy = &assignment.spec.restart_policy;

    // The container names are deterministic, so duplicates should not
    // exist; if they do, keep the running (then the newest) one.
    let mut sorted: Vec<&Container> = mine.to_vec();
    sorted.sort_by_key(|c| (!c.running, std::cmp::Reverse(c.started_at), c.id.clone()));
    let current = sorted.first().copied();
    for extra in sorted.iter().skip(1) {
        plan.actions.push(Action::Remove { container_id: extra.id.clone(), reason: "duplicate container".into() });
    }

    let mut report = TaskReport {
        task_id,
        generation: assignment.generation,
        state: ObservedState::Starting,
        container_id: current.map(|c| c.id.clone()),
        exit_code: record.last_exit_code,
        host_ports: current.map(|c| c.host_ports.clone()).unwrap_or_default(),
        health: Health::Unknown,
        restarts: record.restarts,
        reason: record.last_reason.clone(),
    };

    // Stopped on request: remove the container; done once it is gone.
    if assignment.desired == DesiredStatus::Stop {
        if record.outcome.is_none() {
            record.outcome = Some(Outcome {
                state: ObservedState::Completed,
                reason: Some("stopped on request".into()),
                exit_code: None,
            });
        }
        if let Some(c) = current {
            plan.actions.push(Action::Remove { container_id: c.id.clone(), reason: "stopped on request".into() });
            report.state = if c.running { ObservedState::Running } else { ObservedState::Restarting };
            plan.reports.push(report);
            return;
        }
    }

    // A finished placement never runs again; make sure nothing does.
    if let Some(outcome) = &record.outcome {
        if let Some(c) = current.filter(|c| c.running) {
            plan.actions.push(Action::Stop {
                task_id,
                container_id: c.id.clone(),
                reason: format!("task is {:?}", outcome.state).to_lowercase(),
            });
        }
        report.state = outcome.state;
        report.reason = outcome.reason.clone();
        report.exit_code = outcome.exit_code;
        report.host_ports.clear();
        plan.reports.push(report);
        return;
    }

    let Some(c) = current else {
        // No container: create one, unless a restart delay is running.
        match record.next_start_at {
            Some(at) if at > input.now => {
                report.state = ObservedState::Restarting;
                plan.wake_at = min_some(plan.wake_at, at);
            }
            _ => {
                let mut config =
                    ContainerConfig::for_task(input.node, task_id, assignment.generation, &assignment.spec);
                // A recreated container asks for the host ports its
                // placement had: clients keep their address.
                config.pin_ports(&record.host_ports);
                plan.actions.push(Action::Create { task_id, config: Box::new(config) });
                report.state = ObservedState::Starting;
            }
        }
        plan.reports.push(report);
        return;
    };

    if c.running {
        let health = match assignment.spec.health_check {
            Some(_) => input.health.get(&c.id).copied().unwrap_or(Health::Starting),
            None => Health::Unknown,
        };
        if health == Health::Unhealthy {
            // Stop it; its exit then counts as a failure, whatever its code.
            record.health_killed = Some(c.id.clone());
            plan.actions.push(Action::Stop {
                task_id,
                container_id: c.id.clone(),
                reason: "health check failed".into(),
            });
        }
        let ran_for = c.started_at.map(|s| input.now.saturating_sub(s)).unwrap_or(0);
        if record.attempts > 0 && restart::is_stable(policy, Duration::from_millis(ran_for)) {
            record.attempts = 0;
        }
        record.next_start_at = None;
        report.state = ObservedState::Running;
        report.health = health;
        plan.reports.push(report);
        return;
    }

    // Created but never started (the worker stopped in between): start it.
    if c.started_at.is_none() && c.error.is_none() && c.finished_at_ms.is_none() {
        plan.actions.push(Action::Start { task_id, container_id: c.id.clone() });
        report.state = ObservedState::Starting;
        plan.reports.push(report);
        return;
    }

    // Exited. Account for the exit once, then follow the decision.
    let key = c.exit_key();
    if record.last_exit.as_deref() != Some(key.as_str()) {
        let exit = classify_exit(c, record.health_killed.as_deref());
        record.last_exit = Some(key);
        record.last_exit_code = c.exit_code;
        record.health_killed = None;
        if let (Some(start), Some(end)) = (c.started_at, c.finished_at_ms) {
            if restart::is_stable(policy, Duration::from_millis(end.saturating_sub(start))) {
                record.attempts = 0;
            }
        }
        apply_decision(record, policy, &exit, c.exit_code, input.now, jitter);
        if let Some(outcome) = &record.outcome {
            report.state = outcome.state;
            report.reason = outcome.reason.clone();
            report.exit_code = outcome.exit_code;
            report.restarts = record.restarts;
            report.host_ports.clear();
            plan.reports.push(report);
            return;
        }
    }
    report.restarts = record.restarts;
    report.exit_code = record.last_exit_code;
    report.reason = record.last_reason.clone();
    report.host_ports.clear();
    report.state = ObservedState::Restarting;
    match record.next_start_at {
        Some(at) if at > input.now => plan.wake_at = min_some(plan.wake_at, at),
        _ => plan.actions.push(Action::Start { task_id, container_id: c.id.clone() }),
    }
    plan.reports.push(report);
}

/// Records the consequence of a failed `Create` or `Start`. A missing image
/// fails the placement at once (retrying cannot help, and the leader may
/// place it on a node that has the image); other errors are failures under
/// the restart policy. An unreachable engine says nothing about the task.
pub fn start_failed(
    record: &mut TaskRecord,
    assignment: &Assignment,
    error: &RuntimeError,
    now: u64,
    jitter: &mut dyn FnMut() -> f64,
) {
    match error {
        RuntimeError::Unavailable(_) => {}
        RuntimeError::ImageNotFound(image) => {
            record.outcome = Some(Outcome {
                state: ObservedState::Failed,
                reason: Some(format!("image not found: {image}")),
                exit_code: None,
            });
        }
        other => {
            let exit = Exit::Failure { reason: start_error_reason(&other.to_string()) };
            apply_decision(record, &assignment.spec.restart_policy, &exit, None, now, jitter);
        }
    }
}

fn apply_decision(
    record: &mut TaskRecord,
    policy: &goat_storage::model::RestartPolicy,
    exit: &Exit,
    exit_code: Option<i64>,
    now: u64,
    jitter: &mut dyn FnMut() -> f64,
) {
    let reason = match exit {
        Exit::Success => "exited with code 0".to_string(),
        Exit::Failure { reason } => reason.clone(),
    };
    match restart::decide(policy, exit, record.attempts, jitter()) {
        Decision::Restart { delay } => {
            record.attempts += 1;
            record.restarts += 1;
            record.next_start_at = Some(now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
            record.last_reason = Some(reason);
        }
        Decision::Complete => {
            record.outcome = Some(Outcome { state: ObservedState::Completed, reason: Some(reason), exit_code });
        }
        Decision::Fail { reason } => {
            record.outcome = Some(Outcome { state: ObservedState::Failed, reason: Some(reason), exit_code });
        }
    }
}

/// Why a container stopped, in the restart policy's terms.
fn classify_exit(c: &Container, health_killed: Option<&str>) -> Exit {
    if health_killed == Some(c.id.as_str()) {
        return Exit::Failure { reason: "health check failed".into() };
    }
    if c.oom_killed {
        return Exit::Failure { reason: "OOM killed (memory limit reached)".into() };
    }
    if let Some(error) = &c.error {
        return Exit::Failure { reason: start_error_reason(error) };
    }
    match c.exit_code {
        Some(0) => Exit::Success,
        Some(code) => Exit::Failure { reason: format!("exit code {code}") },
        None => Exit::Failure { reason: "exited (no exit code)".into() },
    }
}

/// Why a container could not start, as a task reason. The engine's own
/// words, with an OOM kill during start-up named as such (runc's "container
/// init was OOM-killed (memory limit too low?)").
fn start_error_reason(error: &str) -> String {
    if error.contains("OOM") {
        format!("OOM killed while starting (memory limit too low?): {error}")
    } else {
        format!("could not start: {error}")
    }
}

fn min_some(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}
