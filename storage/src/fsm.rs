//! The replicated state machine: the cluster's tasks and nodes, and the
//! commands that change them.
//!
//! Every manager applies the same committed commands in the same order, so
//! `apply` must be deterministic: no I/O, no clock, no randomness. Whatever
//! varies (ids, times) is decided by the manager that builds the command and
//! carried inside it. The leader decides, the state machine records: a
//! command that is no longer valid when it is applied (a task already
//! stopped, a report from a stale placement) is refused with a reason and
//! changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::*;

/// How many history events a task keeps (the oldest are dropped).
pub const MAX_EVENTS: usize = 64;
/// How many reschedule times a task keeps.
pub const MAX_RESCHEDULES_KEPT: usize = 16;
/// How many status changes a node keeps in its history.
pub const MAX_NODE_EVENTS: usize = 16;

/// A change to the cluster state, as carried by one Raft log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Store a new task, `pending`.
    SubmitTask { task_id: TaskId, spec: TaskSpec, at: Timestamp },
    /// The user wants the task stopped. A task not placed anywhere completes
    /// at once; a placed one completes when its node reports it stopped.
    StopTask { task_id: TaskId, at: Timestamp },
    /// Place a pending task on a node, with the next generation.
    PlaceTask { task_id: TaskId, node: String, at: Timestamp },
    /// Take a task back from its node (node lost, drained): `pending` again.
    /// `generation` must match, so a late decision cannot undo a newer one.
    RequeueTask { task_id: TaskId, generation: u64, reason: String, at: Timestamp },
    /// Place a failed task again (its reschedule policy allows it): it
    /// becomes `pending`, remembering the node it failed on.
    RescheduleTask { task_id: TaskId, generation: u64, at: Timestamp },
    /// Record why a pending task is still waiting (the scheduler's verdict).
    SetPendingReason { task_id: TaskId, reason: Option<String>, at: Timestamp },
    /// A worker's observation of one of its tasks.
    ReportTask { node: String, report: TaskReport, at: Timestamp },
    /// Register a node, or update its capacity and engine health.
    UpsertNode { name: String, capacity: Resources, engine: EngineStatus, at: Timestamp },
    /// Change a node's status (ready, down, draining).
    SetNodeStatus { name: String, status: NodeStatus, at: Timestamp },
    /// Several commands in one log entry, applied in order.
    Batch(Vec<Command>),
}

/// The result of applying a command, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied; nothing to return (membership entries and blanks too).
    Done,
    /// Applied; the task as it now is.
    Task(Box<Task>),
    /// Not applied, with the reason; nothing changed.
    Refused(String),
    /// One result per command of a batch.
    Batch(Vec<CommandResult>),
}

impl CommandResult {
    pub fn is_refused(&self) -> bool {
        matches!(self, CommandResult::Refused(_))
    }
}

/// The cluster's tasks and nodes: the state every manager converges on.
///
/// Besides the replicated data it keeps two derived indexes (never
/// serialized, rebuilt on load) so that the leader's loops and the
/// heartbeat path cost what they touch, not the size of the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct ClusterState {
    pub tasks: BTreeMap<TaskId, Task>,
    pub nodes: BTreeMap<String, Node>,
    /// Keys changed since the last `take_dirty`, so the store can persist
    /// only what changed. Not part of the replicated state.
    #[serde(skip)]
    dirty: Dirty,
    #[serde(skip)]
    index: Index,
    /// The index the next history event gets (see `crate::events`); set
    /// from the Raft log index by `begin_entry`.
    #[serde(skip)]
    next_event: u64,
}

/// The serialized form of `ClusterState`: its data without the indexes.
#[derive(Deserialize)]
struct StoredState {
    tasks: BTreeMap<TaskId, Task>,
    nodes: BTreeMap<String, Node>,
}

impl From<StoredState> for ClusterState {
    fn from(stored: StoredState) -> ClusterState {
        ClusterState::from_parts(stored.tasks, stored.nodes)
    }
}

/// Derived lookups, maintained by `apply`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Index {
    /// Tasks waiting for a node, oldest first.
    pending: BTreeSet<(Timestamp, TaskId)>,
    /// Non-terminal tasks placed on each node.
    by_node: BTreeMap<String, BTreeSet<TaskId>>,
    /// Failed tasks that still want to run.
    failed: BTreeSet<TaskId>,
}

/// Where one task appears in the index.
#[derive(Debug, Clone, PartialEq)]
struct IndexKey {
    pending: Option<(Timestamp, TaskId)>,
    node: Option<String>,
    failed: bool,
}

impl IndexKey {
    fn of(task: &Task) -> IndexKey {
        let waiting = task.state == TaskState::Pending && task.desired == DesiredStatus::Run;
        IndexKey {
            pending: waiting.then_some((task.created_at, task.id)),
            node: if task.state.is_terminal() { None } else { task.node.clone() },
            failed: task.state == TaskState::Failed && task.desired == DesiredStatus::Run,
        }
    }
}

impl Index {
    fn remove(&mut self, id: TaskId, key: &IndexKey) {
        if key.failed {
            self.failed.remove(&id);
        }
        if let Some(p) = key.pending {
            self.pending.remove(&p);
        }
        if let Some(node) = &key.node {
            if let Some(set) = self.by_node.get_mut(node) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
    }

    fn add(&mut self, id: TaskId, key: IndexKey) {
        if key.failed {
            self.failed.insert(id);
        }
        if let Some(p) = key.pending {
            self.pending.insert(p);
        }
        if let Some(node) = key.node {
            self.by_node.entry(node).or_default().insert(id);
        }
    }
}

/// Keys touched by `apply` since they were last taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dirty {
    pub tasks: BTreeSet<TaskId>,
    pub nodes: BTreeSet<String>,
}

impl Command {
    /// The task a (non-batch) command changes, if any.
    fn task_id(&self) -> Option<TaskId> {
        match self {
            Command::SubmitTask { task_id, .. }
            | Command::StopTask { task_id, .. }
            | Command::PlaceTask { task_id, .. }
            | Command::RequeueTask { task_id, .. }
            | Command::RescheduleTask { task_id, .. }
            | Command::SetPendingReason { task_id, .. } => Some(*task_id),
            Command::ReportTask { report, .. } => Some(report.task_id),
            Command::UpsertNode { .. } | Command::SetNodeStatus { .. } | Command::Batch(_) => None,
        }
    }
}

impl ClusterState {
    /// A state from its data, with its indexes built.
    pub fn from_parts(tasks: BTreeMap<TaskId, Task>, nodes: BTreeMap<String, Node>) -> ClusterState {
        let mut index = Index::default();
        for (id, task) in &tasks {
            index.add(*id, IndexKey::of(task));
        }
        // What applying every event so far in order would have left: the
        // newest event of each history is always retained.
        let newest_task = tasks.values().filter_map(|t| t.events.last()).map(|e| e.index + 1);
        let newest_node = nodes.values().filter_map(|n| n.events.last()).map(|e| e.index + 1);
        let next_event = newest_task.chain(newest_node).max().unwrap_or(0);
        ClusterState { tasks, nodes, dirty: Dirty::default(), index, next_event }
    }

    /// Numbers the events of the next command(s) from the Raft log index of
    /// the entry that carries them, so they are the same on every manager.
    /// (An entry with more than 2^20 events would run into the next entry's
    /// range; the next entry then starts after it, so indexes still only
    /// grow.)
    pub fn begin_entry(&mut self, log_index: u64) {
        self.next_event = self.next_event.max(crate::events::first_index(log_index));
    }

    /// Applies one command. Deterministic: the same state and command give
    /// the same result and the same new state on every manager.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let touched = command.task_id();
        let before = touched.and_then(|id| self.tasks.get(&id).map(IndexKey::of));
        let result = self.apply_one(command);
        if let Some(id) = touched {
            let after = self.tasks.get(&id).map(IndexKey::of);
            if before != after {
                if let Some(key) = &before {
                    self.index.remove(id, key);
                }
                if let Some(key) = after {
                    self.index.add(id, key);
                }
            }
        }
        result
    }

    /// Pending tasks that want to run, oldest first.
    pub fn pending_tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.index.pending.iter().filter_map(|(_, id)| self.tasks.get(id))
    }

    fn apply_one(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::SubmitTask { task_id, spec, at } => self.submit(*task_id, spec, *at),
            Command::StopTask { task_id, at } => self.stop(*task_id, *at),
            Command::PlaceTask { task_id, node, at } => self.place(*task_id, node, *at),
            Command::RequeueTask { task_id, generation, reason, at } => {
                self.requeue(*task_id, *generation, reason, *at)
            }
            Command::RescheduleTask { task_id, generation, at } => self.reschedule(*task_id, *generation, *at),
            Command::SetPendingReason { task_id, reason, at } => self.set_pending_reason(*task_id, reason, *at),
            Command::ReportTask { node, report, at } => self.report(node, report, *at),
            Command::UpsertNode { name, capacity, engine, at } => self.upsert_node(name, *capacity, engine, *at),
            Command::SetNodeStatus { name, status, at } => self.set_node_status(name, *status, *at),
            Command::Batch(commands) => CommandResult::Batch(commands.iter().map(|c| self.apply(c)).collect()),
        }
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Resources reserved on `node` by the tasks placed there.
    pub fn allocated(&self, node: &str) -> Resources {
        let mut used = Resources::default();
        for task in self.tasks_on(node) {
            used.cpu += task.spec.cpu;
            used.memory += task.spec.memory;
            used.disk += task.spec.disk;
        }
        used
    }

    /// Non-terminal tasks placed on `node`.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| !t.state.is_terminal() && t.node.as_deref() == Some(node))
    }

    fn submit(&mut self, task_id: TaskId, spec: &TaskSpec, at: Timestamp) -> CommandResult {
        // A retried submission (same id, same spec) is answered with the
        // stored task: forwarding may resend a command whose answer was lost.
        if let Some(existing) = self.tasks.get(&task_id) {
            if existing.spec == *spec {
                return CommandResult::Task(Box::new(existing.clone()));
            }
            return CommandResult::Refused(format!("task {task_id} already exists"));
        }
        let task = Task {
            id: task_id,
            spec: spec.clone(),
            state: TaskState::Pending,
            desired: DesiredStatus::Run,
            node: None,
            generation: 0,
            restarts: 0,
            reason: None,
            health: Health::Unknown,
            container_id: None,
            host_ports: BTreeMap::new(),
            created_at: at,
            updated_at: at,
            reschedules: Vec::new(),
            failed_on: None,
            events: vec![TaskEvent {
                index: take_index(&mut self.next_event),
                at,
                state: TaskState::Pending,
                node: None,
                reason: Some("submitted".into()),
            }],
        };
        self.tasks.insert(task_id, task.clone());
        self.dirty.tasks.insert(task_id);
        CommandResult::Task(Box::new(task))
    }

    fn stop(&mut self, task_id: TaskId, at: Timestamp) -> CommandResult {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        self.dirty.tasks.insert(task_id);
        task.desired = DesiredStatus::Stop;
        task.updated_at = at;
        // Nothing runs anywhere for a task that is not placed: it is done.
        // (A failed task stays failed: that is what happened to it; with
        // desired `stop` it is never rescheduled.)
        if task.state == TaskState::Pending {
            transition(task, &mut self.next_event, TaskState::Completed, Some("stopped by user".into()), at);
            task.node = None;
        }
        CommandResult::Task(Box::new(task.clone()))
    }

    fn place(&mut self, task_id: TaskId, node: &str, at: Timestamp) -> CommandResult {
        if !self.nodes.contains_key(node) {
            return CommandResult::Refused(format!("no node {node}"));
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        if task.state != TaskState::Pending || task.desired != DesiredStatus::Run {
            return CommandResult::Refused(format!("task {task_id} is {} and cannot be placed", task.state));
        }
        self.dirty.tasks.insert(task_id);
        task.generation += 1;
        task.node = Some(node.to_string());
        task.container_id = None;
        task.host_ports.clear();
        task.health = Health::Unknown;
        task.restarts = 0;
        transition(task, &mut self.next_event, TaskState::Scheduled, None, at);
        CommandResult::Task(Box::new(task.clone()))
    }

    fn requeue(&mut self, task_id: TaskId, generation: u64, reason: &str, at: Timestamp) -> CommandResult {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        if task.generation != generation {
            return CommandResult::Refused(format!(
                "task {task_id} is at generation {}, not {generation}",
                task.generation
            ));
        }
        if !task.state.can_become(TaskState::Pending) || task.state == TaskState::Pending {
            return CommandResult::Refused(format!("task {task_id} is {} and cannot be requeued", task.state));
        }
        self.dirty.tasks.insert(task_id);
        if task.desired == DesiredStatus::Stop {
            // Nobody wants it running: taking it back means it is done.
            transition(task, &mut self.next_event, TaskState::Completed, Some(reason.to_string()), at);
        } else {
            transition(task, &mut self.next_event, TaskState::Pending, Some(reason.to_string()), at);
        }
        task.node = None;
        task.container_id = None;
        task.host_ports.clear();
        task.health = Health::Unknown;
        CommandResult::Task(Box::new(task.clone()))
    }

    fn reschedule(&mut self, task_id: TaskId, generation: u64, at: Timestamp) -> CommandResult {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        if task.state != TaskState::Failed || task.generation != generation || task.desired != DesiredStatus::Run {
            return CommandResult::Refused(format!("task {task_id} is not a failed task at generation {generation}"));
        }
        self.dirty.tasks.insert(task_id);
        let node = task.node.take();
        let reason = format!("rescheduled after failing on {}", node.as_deref().unwrap_or("its node"));
        task.failed_on = node;
        task.reschedules.push(at);
        if task.reschedules.len() > MAX_RESCHEDULES_KEPT {
            task.reschedules.remove(0);
        }
        task.container_id = None;
        task.host_ports.clear();
        task.health = Health::Unknown;
        transition(task, &mut self.next_event, TaskState::Pending, Some(reason), at);
        CommandResult::Task(Box::new(task.clone()))
    }

    /// Failed tasks that still want to run, for the rescheduler.
    pub fn failed_tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.index.failed.iter().filter_map(|id| self.tasks.get(id))
    }

    fn set_pending_reason(&mut self, task_id: TaskId, reason: &Option<String>, at: Timestamp) -> CommandResult {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        if task.state != TaskState::Pending {
            return CommandResult::Refused(format!("task {task_id} is {}, not pending", task.state));
        }
        self.dirty.tasks.insert(task_id);
        task.reason = reason.clone();
        task.updated_at = at;
        CommandResult::Done
    }

    fn report(&mut self, node: &str, report: &TaskReport, at: Timestamp) -> CommandResult {
        let task_id = report.task_id;
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return CommandResult::Refused(format!("no task {task_id}"));
        };
        if task.node.as_deref() != Some(node) || task.generation != report.generation {
            return CommandResult::Refused(format!(
                "stale report for task {task_id} from {node} (generation {})",
                report.generation
            ));
        }
        let to = report.state.task_state();
        if !task.state.can_become(to) {
            return CommandResult::Refused(format!("task {task_id} cannot go from {} to {to}", task.state));
        }
        self.dirty.tasks.insert(task_id);
        task.restarts = report.restarts;
        task.health = report.health;
        if report.container_id.is_some() {
            task.container_id = report.container_id.clone();
        }
        task.host_ports = report.host_ports.clone();
        if task.state != to {
            transition(task, &mut self.next_event, to, report.reason.clone(), at);
        } else {
            task.reason = report.reason.clone();
            task.updated_at = at;
        }
        if to.is_terminal() {
            // A finished task holds nothing on its node any more.
            task.host_ports.clear();
        }
        CommandResult::Task(Box::new(task.clone()))
    }

    fn upsert_node(&mut self, name: &str, capacity: Resources, engine: &EngineStatus, at: Timestamp) -> CommandResult {
        self.dirty.nodes.insert(name.to_string());
        let registering = !self.nodes.contains_key(name);
        let node = self.nodes.entry(name.to_string()).or_insert_with(|| Node {
            name: name.to_string(),
            status: NodeStatus::Ready,
            capacity,
            engine_healthy: engine.healthy,
            engine_error: None,
            registered_at: at,
            updated_at: at,
            events: Vec::new(),
        });
        if registering {
            node_event(node, &mut self.next_event, "registered", at);
        }
        node.capacity = capacity;
        node.engine_healthy = engine.healthy;
        node.engine_error = engine.error.clone();
        node.updated_at = at;
        // A node that reports again is back, unless an operator drains it.
        if node.status == NodeStatus::Down {
            node.status = NodeStatus::Ready;
            node_event(node, &mut self.next_event, "heartbeats resumed", at);
        }
        CommandResult::Done
    }

    fn set_node_status(&mut self, name: &str, status: NodeStatus, at: Timestamp) -> CommandResult {
        let Some(node) = self.nodes.get_mut(name) else {
            return CommandResult::Refused(format!("no node {name}"));
        };
        self.dirty.nodes.insert(name.to_string());
        node.updated_at = at;
        if node.status != status {
            node.status = status;
            let reason = match status {
                NodeStatus::Ready => "ready",
                NodeStatus::Down => "missed its heartbeat deadline",
                NodeStatus::Draining => "draining on request",
            };
            node_event(node, &mut self.next_event, reason, at);
        }
        CommandResult::Done
    }
}

/// The next event index.
fn take_index(next_event: &mut u64) -> u64 {
    let index = *next_event;
    *next_event += 1;
    index
}

/// Records a change of a node's status in its bounded history.
fn node_event(node: &mut Node, next_event: &mut u64, reason: &str, at: Timestamp) {
    node.events.push(NodeEvent { index: take_index(next_event), at, status: node.status, reason: Some(reason.into()) });
    if node.events.len() > MAX_NODE_EVENTS {
        let excess = node.events.len() - MAX_NODE_EVENTS;
        node.events.drain(..excess);
    }
}

/// Moves a task to a new state and records the event. Callers have checked
/// `can_become`.
fn transition(task: &mut Task, next_event: &mut u64, to: TaskState, reason: Option<String>, at: Timestamp) {
    debug_assert!(task.state.can_become(to), "{} -> {to}", task.state);
    task.state = to;
    task.reason = reason.clone();
    task.updated_at = at;
    task.events.push(TaskEvent { index: take_index(next_event), at, state: to, node: task.node.clone(), reason });
    if task.events.len() > MAX_EVENTS {
        let excess = task.events.len() - MAX_EVENTS;
        task.events.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const ALL: [TaskState; 5] =
        [TaskState::Pending, TaskState::Scheduled, TaskState::Running, TaskState::Completed, TaskState::Failed];

    fn spec() -> TaskSpec {
        serde_json::from_str(r#"{"name": "echo", "image": "goat-echo:latest", "cpu": 0.5, "memory": 67108864}"#)
            .unwrap()
    }

    fn engine() -> EngineStatus {
        EngineStatus { healthy: true, error: None }
    }

    fn capacity() -> Resources {
        Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 34 }
    }

    /// A state with node `w1` and one submitted task.
    fn state_with_task() -> (ClusterState, TaskId) {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: capacity(), engine: engine(), at: 1 });
        s.apply(&Command::UpsertNode { name: "w2".into(), capacity: capacity(), engine: engine(), at: 1 });
        let id = Uuid::from_u128(7);
        s.apply(&Command::SubmitTask { task_id: id, spec: spec(), at: 2 });
        (s, id)
    }

    fn report(id: TaskId, generation: u64, state: ObservedState) -> TaskReport {
        TaskReport {
            task_id: id,
            generation,
            state,
            container_id: Some("c1".into()),
            exit_code: None,
            host_ports: BTreeMap::from([(7777, 32768)]),
            health: Health::Healthy,
            restarts: 0,
            reason: None,
        }
    }

    #[test]
    fn transition_table_is_exactly_as_documented() {
        use TaskState::*;
        let allowed = [
            (Pending, Scheduled),
            (Pending, Completed),
            (Pending, Failed),
            (Scheduled, Running),
            (Scheduled, Pending),
            (Scheduled, Completed),
            (Scheduled, Failed),
            (Running, Scheduled),
            (Running, Pending),
            (Running, Completed),
            (Running, Failed),
            (Failed, Pending),
        ];
        for from in ALL {
            for to in ALL {
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
            }
        }
        assert!(Completed.is_terminal() && Failed.is_terminal());
        assert!(!Pending.is_terminal() && !Scheduled.is_terminal() && !Running.is_terminal());
    }

    #[test]
    fn submit_stores_a_pending_task_once() {
        let (mut s, id) = state_with_task();
        let task = &s.tasks[&id];
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(task.created_at, 2);
        assert_eq!(task.events.len(), 1);
        let again = s.apply(&Command::SubmitTask { task_id: id, spec: spec(), at: 3 });
        assert!(matches!(again, CommandResult::Task(t) if t.created_at == 2), "a retry is idempotent");
        let mut other = spec();
        other.name = "other".into();
        assert!(s.apply(&Command::SubmitTask { task_id: id, spec: other, at: 3 }).is_refused());
        assert_eq!(s.tasks[&id].created_at, 2);
    }

    #[test]
    fn full_lifecycle_pending_scheduled_running_completed() {
        let (mut s, id) = state_with_task();
        let placed = s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert!(!placed.is_refused());
        assert_eq!(s.tasks[&id].state, TaskState::Scheduled);
        assert_eq!(s.tasks[&id].generation, 1);
        assert_eq!(s.allocated("w1").memory, 64 << 20);

        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 4 });
        let task = &s.tasks[&id];
        assert_eq!(task.state, TaskState::Running);
        assert_eq!(task.host_ports[&7777], 32768);
        assert_eq!(task.container_id.as_deref(), Some("c1"));

        s.apply(&Command::StopTask { task_id: id, at: 5 });
        assert_eq!(s.tasks[&id].state, TaskState::Running, "stays running until the node confirms");
        assert_eq!(s.tasks[&id].desired, DesiredStatus::Stop);
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Completed), at: 6 });
        let task = &s.tasks[&id];
        assert_eq!(task.state, TaskState::Completed);
        assert!(task.host_ports.is_empty());
        assert_eq!(s.allocated("w1"), Resources::default());
        let states: Vec<_> = task.events.iter().map(|e| e.state).collect();
        assert_eq!(states, [TaskState::Pending, TaskState::Scheduled, TaskState::Running, TaskState::Completed]);
    }

    #[test]
    fn completed_is_terminal() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::StopTask { task_id: id, at: 3 });
        assert_eq!(s.tasks[&id].state, TaskState::Completed);
        assert!(s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 4 }).is_refused());
        assert!(s.apply(&Command::RequeueTask { task_id: id, generation: 0, reason: "x".into(), at: 4 }).is_refused());
        assert_eq!(s.tasks[&id].state, TaskState::Completed);
    }

    #[test]
    fn placement_is_refused_for_unknown_nodes_and_placed_tasks() {
        let (mut s, id) = state_with_task();
        assert!(s.apply(&Command::PlaceTask { task_id: id, node: "nope".into(), at: 3 }).is_refused());
        assert!(s.apply(&Command::PlaceTask { task_id: Uuid::nil(), node: "w1".into(), at: 3 }).is_refused());
        assert!(!s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 }).is_refused());
        assert!(s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 3 }).is_refused());
        assert_eq!(s.tasks[&id].node.as_deref(), Some("w1"));
    }

    #[test]
    fn stale_reports_are_refused() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        // Wrong node.
        let r =
            s.apply(&Command::ReportTask { node: "w2".into(), report: report(id, 1, ObservedState::Running), at: 4 });
        assert!(r.is_refused());
        // Requeue then re-place on w2: generation 2. The old copy's report is stale.
        s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "node w1 down".into(), at: 5 });
        assert_eq!(s.tasks[&id].state, TaskState::Pending);
        s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 6 });
        assert_eq!(s.tasks[&id].generation, 2);
        let r =
            s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 7 });
        assert!(r.is_refused());
        assert_eq!(s.tasks[&id].state, TaskState::Scheduled);
    }

    #[test]
    fn requeue_needs_the_current_generation() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert!(s.apply(&Command::RequeueTask { task_id: id, generation: 0, reason: "x".into(), at: 4 }).is_refused());
        assert!(!s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "x".into(), at: 4 }).is_refused());
        // Already pending: a second requeue is refused.
        assert!(s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "x".into(), at: 4 }).is_refused());
    }

    #[test]
    fn restarting_goes_back_to_scheduled_and_counts() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 4 });
        let mut r = report(id, 1, ObservedState::Restarting);
        r.restarts = 1;
        r.reason = Some("exited with code 1; restarting in 200ms".into());
        s.apply(&Command::ReportTask { node: "w1".into(), report: r, at: 5 });
        let task = &s.tasks[&id];
        assert_eq!(task.state, TaskState::Scheduled);
        assert_eq!(task.restarts, 1);
        assert!(task.reason.as_deref().unwrap().contains("code 1"));
    }

    #[test]
    fn failure_is_recorded_with_reason_and_can_be_rescheduled() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        let mut r = report(id, 1, ObservedState::Failed);
        r.reason = Some("image not found".into());
        s.apply(&Command::ReportTask { node: "w1".into(), report: r, at: 4 });
        assert_eq!(s.tasks[&id].state, TaskState::Failed);
        assert_eq!(s.tasks[&id].reason.as_deref(), Some("image not found"));
        assert_eq!(s.allocated("w1"), Resources::default());
        // Failed -> pending: rescheduled elsewhere.
        let r = s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "reschedule".into(), at: 5 });
        assert!(!r.is_refused());
        assert_eq!(s.tasks[&id].state, TaskState::Pending);
    }

    #[test]
    fn refused_transitions_change_nothing() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Completed), at: 4 });
        let before = s.tasks[&id].clone();
        let r =
            s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 5 });
        assert!(r.is_refused());
        assert_eq!(s.tasks[&id], before);
    }

    #[test]
    fn stopping_a_pending_task_completes_it() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::StopTask { task_id: id, at: 3 });
        assert_eq!(s.tasks[&id].state, TaskState::Completed);
        assert!(s.apply(&Command::StopTask { task_id: Uuid::nil(), at: 3 }).is_refused());
    }

    #[test]
    fn stopping_a_failed_task_keeps_it_failed_and_out_of_rescheduling() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Failed), at: 4 });
        assert_eq!(s.failed_tasks().count(), 1);
        assert!(!s.apply(&Command::StopTask { task_id: id, at: 5 }).is_refused());
        assert_eq!(s.tasks[&id].state, TaskState::Failed);
        assert_eq!(s.tasks[&id].desired, DesiredStatus::Stop);
        assert_eq!(s.failed_tasks().count(), 0);
    }

    #[test]
    fn requeue_of_a_stopped_task_completes_it() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::StopTask { task_id: id, at: 4 });
        s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "node w1 down".into(), at: 5 });
        assert_eq!(s.tasks[&id].state, TaskState::Completed);
    }

    #[test]
    fn pending_reason_only_on_pending_tasks() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::SetPendingReason { task_id: id, reason: Some("no node has 64 GiB".into()), at: 3 });
        assert_eq!(s.tasks[&id].reason.as_deref(), Some("no node has 64 GiB"));
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert!(s.apply(&Command::SetPendingReason { task_id: id, reason: None, at: 4 }).is_refused());
    }

    #[test]
    fn nodes_come_back_from_down_but_not_from_draining() {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: capacity(), engine: engine(), at: 1 });
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Down, at: 2 });
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: capacity(), engine: engine(), at: 3 });
        assert_eq!(s.nodes["w1"].status, NodeStatus::Ready);
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Draining, at: 4 });
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: capacity(), engine: engine(), at: 5 });
        assert_eq!(s.nodes["w1"].status, NodeStatus::Draining);
        assert!(s.apply(&Command::SetNodeStatus { name: "nope".into(), status: NodeStatus::Down, at: 6 }).is_refused());
    }

    #[test]
    fn batches_apply_in_order_and_history_is_bounded() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        let mut flips = Vec::new();
        for i in 0..100u64 {
            let state = if i % 2 == 0 { ObservedState::Running } else { ObservedState::Restarting };
            flips.push(Command::ReportTask { node: "w1".into(), report: report(id, 1, state), at: 10 + i });
        }
        let CommandResult::Batch(results) = s.apply(&Command::Batch(flips)) else { panic!() };
        assert_eq!(results.len(), 100);
        assert_eq!(s.tasks[&id].events.len(), MAX_EVENTS);
        assert_eq!(s.tasks[&id].events.last().unwrap().at, 109);
    }

    #[test]
    fn apply_is_deterministic_and_tracks_dirty_keys() {
        let (a, id) = state_with_task();
        let (b, _) = state_with_task();
        assert_eq!(a, b);
        let mut a = a;
        let dirty = a.take_dirty();
        assert!(dirty.tasks.contains(&id));
        assert!(dirty.nodes.contains("w1"));
        assert_eq!(a.take_dirty(), Dirty::default());
    }

    #[test]
    fn indexes_follow_every_change_and_are_rebuilt_on_load() {
        let (mut s, id) = state_with_task();
        assert_eq!(s.pending_tasks().map(|t| t.id).collect::<Vec<_>>(), [id]);
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert_eq!(s.pending_tasks().count(), 0);
        assert_eq!(s.tasks_on("w1").count(), 1);
        s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "w1 down".into(), at: 4 });
        assert_eq!(s.tasks_on("w1").count(), 0);
        assert_eq!(s.pending_tasks().count(), 1);
        s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 5 });
        let rebuilt = ClusterState::from_parts(s.tasks.clone(), s.nodes.clone());
        assert_eq!(rebuilt.index, s.index);
        s.apply(&Command::StopTask { task_id: id, at: 6 });
        s.apply(&Command::ReportTask { node: "w2".into(), report: report(id, 2, ObservedState::Completed), at: 7 });
        assert_eq!(s.tasks_on("w2").count(), 0);
        assert!(s.index.by_node.is_empty() && s.index.pending.is_empty());
    }

    #[test]
    fn only_failed_tasks_that_want_to_run_are_rescheduled() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert!(s.apply(&Command::RescheduleTask { task_id: id, generation: 1, at: 4 }).is_refused());
        let mut r = report(id, 1, ObservedState::Failed);
        r.reason = Some("exit code 1 (gave up after 5 restarts)".into());
        s.apply(&Command::ReportTask { node: "w1".into(), report: r, at: 5 });
        assert_eq!(s.failed_tasks().count(), 1);
        assert!(s.apply(&Command::RescheduleTask { task_id: id, generation: 0, at: 6 }).is_refused());
        assert!(!s.apply(&Command::RescheduleTask { task_id: id, generation: 1, at: 6 }).is_refused());
        let task = &s.tasks[&id];
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(task.failed_on.as_deref(), Some("w1"));
        assert_eq!(task.reschedules, [6]);
        assert_eq!(s.failed_tasks().count(), 0);
        assert_eq!(s.pending_tasks().count(), 1);
    }

    #[test]
    fn commands_roundtrip_through_bincode() {
        let cfg = bincode::config::standard();
        let (s, id) = state_with_task();
        let command = Command::Batch(vec![
            Command::SubmitTask { task_id: id, spec: s.tasks[&id].spec.clone(), at: 9 },
            Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 10 },
        ]);
        let bytes = bincode::serde::encode_to_vec(&command, cfg).unwrap();
        let (back, _): (Command, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, command);
        let bytes = bincode::serde::encode_to_vec(&s, cfg).unwrap();
        let (back, _): (ClusterState, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back.tasks, s.tasks);
        assert_eq!(back.index, s.index, "indexes are rebuilt on decode");
    }
}
