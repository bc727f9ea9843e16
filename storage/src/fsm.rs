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

mod service;

/// How many history events a task keeps (the oldest are dropped).
pub const MAX_EVENTS: usize = 64;
/// How many reschedule times a task keeps.
pub const MAX_RESCHEDULES_KEPT: usize = 16;
/// How many status changes a node keeps in its history.
pub const MAX_NODE_EVENTS: usize = 16;

/// A change to the cluster state, as carried by one Raft log entry.
// `SubmitTask` carries a whole spec; commands are short-lived (built,
// encoded, applied), so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
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
    /// Change a node's status: `down` (missed its deadline), `draining`
    /// (an operator drains it: sets its `drain` flag, which nothing but
    /// `ready` clears), `ready` (ends a drain).
    SetNodeStatus { name: String, status: NodeStatus, at: Timestamp },
    /// The task's node is down and the task has a disconnect window: it
    /// becomes `unknown` and stays put. `generation` must match.
    DisconnectTask { task_id: TaskId, generation: u64, at: Timestamp },
    /// The disconnect window of an `unknown` task is over and its node is
    /// still down: it becomes `pending`, to be placed elsewhere.
    ExpireDisconnect { task_id: TaskId, generation: u64, at: Timestamp },
    /// Several commands in one log entry, applied in order.
    Batch(Vec<Command>),
    /// Replace every task and node with a backup's (`goat snapshot
    /// restore`, see `crate::backup`). Refused if an id or name repeats.
    Restore { tasks: Vec<Task>, nodes: Vec<Node> },
    /// Remove finished tasks (see [`collectable`]): each listed task that
    /// is still collectable at `cutoff` is removed, the others are kept.
    /// The leader lists them (a bounded number per command) and carries
    /// the cutoff, so every manager removes the same tasks.
    CollectTasks { task_ids: Vec<TaskId>, cutoff: Timestamp },
    /// Remove a node that is `down` and holds no live task.
    RemoveNode { name: String, at: Timestamp },
    /// A decision of the leader's control loops, valid only in the
    /// leadership it was taken in: `command` is applied only if the Raft
    /// entry that carries it was appended by leader `leader` in `term` (see
    /// [`ClusterState::begin_entry_by`]); otherwise it is refused and nothing
    /// changes. A deposed leader's judgement, made from its frozen view, can
    /// thus never be committed by the next leader.
    Fenced { term: u64, leader: u64, command: Box<Command> },
    /// Keep a new API token (its hash). The id, the hash and the time are
    /// decided by the manager that builds the command. Refused if the id
    /// exists.
    CreateToken { token: ApiToken },
    /// Forget an API token: it stops working on every manager as this entry
    /// is applied. Refused if there is no such token.
    RevokeToken { id: String },
    /// Create a service, or apply a changed spec to it: a changed template
    /// makes a new version and starts its deployment; replicas, spread and
    /// update policy change in place; the same spec changes nothing.
    PutService { spec: ServiceSpec, at: Timestamp },
    /// Change a service's replica count.
    ScaleService { name: String, replicas: u32, at: Timestamp },
    /// Bring the previous version back (the one the deployment in progress
    /// replaces, else the version before the current one).
    RollbackService { name: String, at: Timestamp },
    /// Promote a deployment paused on its canaries.
    PromoteService { name: String, at: Timestamp },
    /// Remove a service and stop every copy.
    DeleteService { name: String, at: Timestamp },
    /// The leader starts copies of a service's current `version` (pending
    /// tasks with the ids given). Refused if the version is not current.
    StartServiceTasks { service: String, version: u64, task_ids: Vec<TaskId>, at: Timestamp },
    /// The leader moves the deployment of version `to` to `state`
    /// (checked against [`DeploymentState::can_become`]). `reverting`
    /// makes the deployment's `from` the current version again.
    SetDeployment { service: String, to: u64, state: DeploymentState, reason: Option<String>, at: Timestamp },
    /// A worker's advertised address changed.
    SetNodeAddress { name: String, address: Option<String>, at: Timestamp },
}

/// The result of applying a command, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied; nothing to return (membership entries and blanks too).
    Done,
    /// Applied; the task as it now is.
    Task(Box<Task>),
    /// Not applied, with its kind and reason; nothing changed.
    Refused(Refusal),
    /// One result per command of a batch.
    Batch(Vec<CommandResult>),
    /// Applied; how many tasks a `CollectTasks` removed.
    Collected(u64),
    /// Applied; the service as it now is.
    Service(Box<Service>),
}

impl CommandResult {
    pub fn is_refused(&self) -> bool {
        matches!(self, CommandResult::Refused(_))
    }

    /// Why the command was refused, if it was.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            CommandResult::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}

/// What kind of refusal: what the proposer should make of it (the HTTP edge
/// maps them to 404, 409, 409 and 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The task or node named does not exist.
    NotFound,
    /// The state does not allow it (a task in the wrong state, an id already
    /// taken by another spec).
    Conflict,
    /// It was decided on an older view: the task moved on (another
    /// generation), the report is from an old copy, the node changed.
    Stale,
    /// The command itself is wrong (a backup that repeats an id).
    Invalid,
}

/// A command the state machine refused: its kind and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal { kind, reason: reason.into() }
    }
    pub fn not_found(reason: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::NotFound, reason)
    }
    pub fn conflict(reason: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Conflict, reason)
    }
    pub fn stale(reason: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Stale, reason)
    }
    pub fn invalid(reason: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What applying one command gives: a result, or a refusal.
type Applied = Result<CommandResult, Refusal>;

/// The task `task_id`, or a `NotFound` refusal.
fn task_mut(tasks: &mut Tasks, task_id: TaskId) -> Result<&mut Task, Refusal> {
    tasks.get_mut(&task_id).map(|t| &mut **t).ok_or_else(|| Refusal::not_found(format!("no task {task_id}")))
}

/// The cluster's tasks and nodes: the state every manager converges on.
///
/// Besides the replicated data it keeps two derived indexes (never
/// serialized, rebuilt on load) so that the leader's loops and the
/// heartbeat path cost what they touch, not the size of the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct ClusterState {
    pub tasks: Tasks,
    pub nodes: BTreeMap<String, Node>,
    /// API tokens by id (hashes only). A restore leaves them as they are.
    pub tokens: BTreeMap<String, ApiToken>,
    /// Services by name. A restore leaves them as they are.
    pub services: BTreeMap<String, Service>,
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
    /// The leader (term, node id) whose Raft entry is being applied, set by
    /// `begin_entry_by`: what `Command::Fenced` is checked against.
    #[serde(skip)]
    entry_leader: Option<(u64, u64)>,
}

/// The tasks by id, each in a box of its own.
///
/// A `Task` is over 500 bytes, and a B-tree keeps its values inline in
/// nodes of 11 slots that are on average a third empty (half empty when
/// the keys come in order): boxed, the empty slots cost 8 bytes each
/// instead of a whole task (`cargo test -p goat-storage --release --test
/// memory -- --ignored --nocapture`, docs/benchmarks.md). A `Box` is
/// encoded as what it holds: the stored and replicated bytes are the same.
pub type Tasks = BTreeMap<TaskId, Box<Task>>;

/// The serialized form of `ClusterState`: its data without the indexes.
#[derive(Deserialize)]
struct StoredState {
    tasks: Tasks,
    nodes: BTreeMap<String, Node>,
    tokens: BTreeMap<String, ApiToken>,
    services: BTreeMap<String, Service>,
}

impl From<StoredState> for ClusterState {
    fn from(stored: StoredState) -> ClusterState {
        let mut state = ClusterState::from_parts(stored.tasks, stored.nodes);
        state.tokens = stored.tokens;
        state.services = stored.services;
        state
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
    /// Every task (until collected) of each service.
    by_service: BTreeMap<String, BTreeSet<TaskId>>,
}

/// Where one task appears in the index.
#[derive(Debug, Clone, PartialEq)]
struct IndexKey {
    pending: Option<(Timestamp, TaskId)>,
    node: Option<String>,
    failed: bool,
    service: Option<String>,
}

impl IndexKey {
    fn of(task: &Task) -> IndexKey {
        let waiting = task.state == TaskState::Pending && task.desired == DesiredStatus::Run;
        IndexKey {
            pending: waiting.then_some((task.created_at, task.id)),
            node: if task.state.is_terminal() { None } else { task.node.clone() },
            failed: task.state == TaskState::Failed && task.desired == DesiredStatus::Run,
            service: task.service.as_ref().map(|s| s.name.clone()),
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
        if let Some(service) = &key.service {
            if let Some(set) = self.by_service.get_mut(service) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_service.remove(service);
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
        if let Some(service) = key.service {
            self.by_service.entry(service).or_default().insert(id);
        }
    }
}

/// Keys touched by `apply` since they were last taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dirty {
    pub tasks: BTreeSet<TaskId>,
    pub nodes: BTreeSet<String>,
    pub tokens: BTreeSet<String>,
    pub services: BTreeSet<String>,
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
            | Command::SetPendingReason { task_id, .. }
            | Command::DisconnectTask { task_id, .. }
            | Command::ExpireDisconnect { task_id, .. } => Some(*task_id),
            Command::ReportTask { report, .. } => Some(report.task_id),
            Command::UpsertNode { .. }
            | Command::SetNodeStatus { .. }
            | Command::Batch(_)
            | Command::Restore { .. }
            | Command::CollectTasks { .. }
            | Command::RemoveNode { .. }
            | Command::Fenced { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::PutService { .. }
            | Command::ScaleService { .. }
            | Command::RollbackService { .. }
            | Command::PromoteService { .. }
            | Command::DeleteService { .. }
            | Command::StartServiceTasks { .. }
            | Command::SetDeployment { .. }
            | Command::SetNodeAddress { .. } => None,
        }
    }
}

impl ClusterState {
    /// A state from its data, with its indexes built.
    pub fn from_parts(tasks: Tasks, nodes: BTreeMap<String, Node>) -> ClusterState {
        let mut index = Index::default();
        for (id, task) in &tasks {
            index.add(*id, IndexKey::of(task));
        }
        // What applying every event so far in order would have left: the
        // newest event of each history is always retained.
        let newest_task = tasks.values().filter_map(|t| t.events.last()).map(|e| e.index + 1);
        let newest_node = nodes.values().filter_map(|n| n.events.last()).map(|e| e.index + 1);
        let next_event = newest_task.chain(newest_node).max().unwrap_or(0);
        ClusterState {
            tasks,
            nodes,
            tokens: BTreeMap::new(),
            services: BTreeMap::new(),
            dirty: Dirty::default(),
            index,
            next_event,
            entry_leader: None,
        }
    }

    /// Numbers the events of the next command(s) from the Raft log index of
    /// the entry that carries them, so they are the same on every manager.
    /// (An entry with more than 2^20 events would run into the next entry's
    /// range; the next entry then starts after it, so indexes still only
    /// grow.)
    pub fn begin_entry(&mut self, log_index: u64) {
        self.next_event = self.next_event.max(crate::events::first_index(log_index));
    }

    /// Like `begin_entry`, for an entry appended by leader `leader` in
    /// `term` (its Raft log id): `Command::Fenced` commands of the entry are
    /// applied only if they were decided in that leadership.
    pub fn begin_entry_by(&mut self, log_index: u64, term: u64, leader: u64) {
        self.begin_entry(log_index);
        self.entry_leader = Some((term, leader));
    }

    /// Applies one command. Deterministic: the same state and command give
    /// the same result and the same new state on every manager.
    /// Re-indexes task `id` after a change (`before`: its index key then):
    /// `apply`'s own bookkeeping and commands that touch several tasks.
    fn reindex(&mut self, id: TaskId, before: Option<IndexKey>) {
        let after = self.tasks.get(&id).map(|t| IndexKey::of(t));
        if before != after {
            if let Some(key) = &before {
                self.index.remove(id, key);
            }
            if let Some(key) = after {
                self.index.add(id, key);
            }
        }
    }

    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let touched = command.task_id();
        let before = touched.and_then(|id| self.tasks.get(&id).map(|t| IndexKey::of(t)));
        let result = self.apply_one(command);
        if let Some(id) = touched {
            self.reindex(id, before);
        }
        result
    }

    /// Pending tasks that want to run, oldest first.
    pub fn pending_tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.pending_tasks_after(None)
    }

    /// Pending tasks that come after `after` (a task's `(created_at, id)`)
    /// in that order: lets a reader walk a long backlog in short looks.
    pub fn pending_tasks_after(&self, after: Option<(Timestamp, TaskId)>) -> impl Iterator<Item = &Task> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = match after {
            Some(key) => Excluded(key),
            None => Unbounded,
        };
        self.index.pending.range((from, Unbounded)).filter_map(|(_, id)| self.tasks.get(id).map(|t| &**t))
    }

    fn apply_one(&mut self, command: &Command) -> CommandResult {
        self.apply_checked(command).unwrap_or_else(CommandResult::Refused)
    }

    fn apply_checked(&mut self, command: &Command) -> Applied {
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
            Command::DisconnectTask { task_id, generation, at } => self.disconnect(*task_id, *generation, *at),
            Command::ExpireDisconnect { task_id, generation, at } => self.expire_disconnect(*task_id, *generation, *at),
            Command::Batch(commands) => Ok(CommandResult::Batch(commands.iter().map(|c| self.apply(c)).collect())),
            Command::Restore { tasks, nodes } => self.restore(tasks, nodes),
            Command::CollectTasks { task_ids, cutoff } => self.collect(task_ids, *cutoff),
            Command::RemoveNode { name, at } => self.remove_node(name, *at),
            Command::Fenced { term, leader, command } => match self.entry_leader {
                Some(entry) if entry == (*term, *leader) => Ok(self.apply(command)),
                Some((entry_term, entry_leader)) => Err(Refusal::stale(format!(
                    "decided by manager {leader} as leader of term {term}, but appended by manager \
                     {entry_leader} in term {entry_term}: a deposed leader's decision is not applied"
                ))),
                None => Err(Refusal::stale(format!(
                    "decided by manager {leader} as leader of term {term}, applied outside a Raft entry"
                ))),
            },
            Command::CreateToken { token } => self.create_token(token),
            Command::RevokeToken { id } => self.revoke_token(id),
            Command::PutService { spec, at } => self.put_service(spec, *at),
            Command::ScaleService { name, replicas, at } => self.scale_service(name, *replicas, *at),
            Command::RollbackService { name, at } => self.rollback_service(name, *at),
            Command::PromoteService { name, at } => self.promote_service(name, *at),
            Command::DeleteService { name, at } => self.delete_service(name, *at),
            Command::StartServiceTasks { service, version, task_ids, at } => {
                self.start_service_tasks(service, *version, task_ids, *at)
            }
            Command::SetDeployment { service, to, state, reason, at } => {
                self.set_deployment(service, *to, *state, reason, *at)
            }
            Command::SetNodeAddress { name, address, at } => self.set_node_address(name, address, *at),
        }
    }

    /// Removes the listed tasks that are collectable at `cutoff`.
    fn collect(&mut self, task_ids: &[TaskId], cutoff: Timestamp) -> Result<CommandResult, Refusal> {
        let mut removed = 0;
        for id in task_ids {
            if !self.tasks.get(id).is_some_and(|t| collectable(t, cutoff)) {
                continue;
            }
            if let Some(task) = self.tasks.remove(id) {
                self.index.remove(*id, &IndexKey::of(&task));
                self.dirty.tasks.insert(*id);
                removed += 1;
            }
        }
        Ok(CommandResult::Collected(removed))
    }

    /// Why `name` cannot be removed now, if it cannot.
    pub fn node_removal_refused(&self, name: &str) -> Option<Refusal> {
        let Some(node) = self.nodes.get(name) else {
            return Some(Refusal::not_found(format!("no node {name}")));
        };
        if node.status != NodeStatus::Down {
            return Some(Refusal::conflict(format!(
                "node {name} is {:?}, not down: only a down node can be removed",
                node.status
            )));
        }
        let live = self.tasks_on(name).count();
        if live > 0 {
            return Some(Refusal::conflict(format!(
                "node {name} still holds {live} live task(s): stop or move them first"
            )));
        }
        None
    }

    fn remove_node(&mut self, name: &str, _at: Timestamp) -> Result<CommandResult, Refusal> {
        if let Some(refusal) = self.node_removal_refused(name) {
            return Err(refusal);
        }
        self.nodes.remove(name);
        self.dirty.nodes.insert(name.to_string());
        Ok(CommandResult::Done)
    }

    fn create_token(&mut self, token: &ApiToken) -> Applied {
        if self.tokens.contains_key(&token.id) {
            return Err(Refusal::conflict(format!("a token {} exists already", token.id)));
        }
        self.tokens.insert(token.id.clone(), token.clone());
        self.dirty.tokens.insert(token.id.clone());
        Ok(CommandResult::Done)
    }

    fn revoke_token(&mut self, id: &str) -> Applied {
        if self.tokens.remove(id).is_none() {
            return Err(Refusal::not_found(format!("no token {id}")));
        }
        self.dirty.tokens.insert(id.to_string());
        Ok(CommandResult::Done)
    }

    /// Replaces the whole state; every key before and after is dirty, so the
    /// store deletes what the backup does not hold.
    fn restore(&mut self, tasks: &[Task], nodes: &[Node]) -> Applied {
        let new_tasks: Tasks = tasks.iter().map(|t| (t.id, Box::new(t.clone()))).collect();
        let new_nodes: BTreeMap<String, Node> = nodes.iter().map(|n| (n.name.clone(), n.clone())).collect();
        if new_tasks.len() != tasks.len() || new_nodes.len() != nodes.len() {
            return Err(Refusal::invalid("the backup lists a task id or a node name twice"));
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.tasks.extend(self.tasks.keys().chain(new_tasks.keys()).copied());
        dirty.nodes.extend(self.nodes.keys().chain(new_nodes.keys()).cloned());
        let entry_leader = self.entry_leader;
        let tokens = std::mem::take(&mut self.tokens);
        let services = std::mem::take(&mut self.services);
        *self = ClusterState::from_parts(new_tasks, new_nodes);
        self.tokens = tokens;
        self.services = services;
        self.dirty = dirty;
        self.entry_leader = entry_leader;
        Ok(CommandResult::Done)
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

    /// Whether `spec` fits on `node` (of `capacity`) besides what is placed
    /// there: cpu, memory, disk and host ports, counted as the scheduler
    /// counts them. Deterministic: from the state only.
    pub fn room_for(&self, node: &str, capacity: Resources, spec: &TaskSpec) -> Result<(), String> {
        let used = self.allocated(node);
        let free_cpu = capacity.cpu - used.cpu;
        if spec.cpu > free_cpu + 1e-9 {
            return Err(format!(
                "{:.2} of {:.2} cpu cores free, {:.2} asked",
                free_cpu.max(0.0),
                capacity.cpu,
                spec.cpu
            ));
        }
        let free_memory = capacity.memory.saturating_sub(used.memory);
        if spec.memory > free_memory {
            return Err(format!("{free_memory} of {} bytes of memory free, {} asked", capacity.memory, spec.memory));
        }
        let free_disk = capacity.disk.saturating_sub(used.disk);
        if spec.disk > free_disk {
            return Err(format!("{free_disk} of {} bytes of disk free, {} asked", capacity.disk, spec.disk));
        }
        let taken: BTreeSet<u16> =
            self.tasks_on(node).flat_map(|t| t.spec.ports.iter().filter_map(|p| p.host)).collect();
        let clash: Vec<String> =
            spec.ports.iter().filter_map(|p| p.host).filter(|p| taken.contains(p)).map(|p| p.to_string()).collect();
        if !clash.is_empty() {
            return Err(format!("host port(s) {} taken", clash.join(", ")));
        }
        Ok(())
    }

    /// Non-terminal tasks placed on `node` (from the index: costs what the
    /// node holds, not the size of the store).
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.index.by_node.get(node).into_iter().flatten().filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    fn submit(&mut self, task_id: TaskId, spec: &TaskSpec, at: Timestamp) -> Applied {
        // A retried submission (same id, same spec) is answered with the
        // stored task: forwarding may resend a command whose answer was lost.
        if let Some(existing) = self.tasks.get(&task_id) {
            if existing.spec == *spec {
                return Ok(CommandResult::Task(existing.clone()));
            }
            return Err(Refusal::conflict(format!("task {task_id} already exists")));
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
            service: None,
            healthy_since: None,
            events: vec![TaskEvent {
                index: take_index(&mut self.next_event),
                at,
                state: TaskState::Pending,
                node: None,
                reason: Some("submitted".into()),
            }],
        };
        self.tasks.insert(task_id, Box::new(task.clone()));
        self.dirty.tasks.insert(task_id);
        Ok(CommandResult::Task(Box::new(task)))
    }

    fn stop(&mut self, task_id: TaskId, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
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
        // Its node is down: nothing can confirm the stop, and nothing needs
        // to. If the node comes back, the task is no longer among its
        // assignments and its worker removes the copy.
        if task.state == TaskState::Unknown {
            transition(
                task,
                &mut self.next_event,
                TaskState::Completed,
                Some("stopped by user while its node was down".into()),
                at,
            );
        }
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    fn place(&mut self, task_id: TaskId, node: &str, at: Timestamp) -> Applied {
        let Some(target) = self.nodes.get(node) else {
            return Err(Refusal::not_found(format!("no node {node}")));
        };
        // The leader chose on a view that may have aged while the command
        // was in flight: a node that went down or was drained meanwhile
        // takes nothing.
        if target.status == NodeStatus::Down {
            return Err(Refusal::stale(format!("node {node} is down and takes no task")));
        }
        if target.drain {
            return Err(Refusal::stale(format!("node {node} is drained and takes no task")));
        }
        let capacity = target.capacity;
        let task = self.tasks.get(&task_id).ok_or_else(|| Refusal::not_found(format!("no task {task_id}")))?;
        if task.state != TaskState::Pending || task.desired != DesiredStatus::Run {
            return Err(Refusal::conflict(format!("task {task_id} is {} and cannot be placed", task.state)));
        }
        // The same view may have aged in another way: what was placed there
        // meanwhile (another round, another leader) took the room.
        if let Err(reason) = self.room_for(node, capacity, &task.spec) {
            return Err(Refusal::stale(format!("node {node} has no room for task {task_id}: {reason}")));
        }
        if let Some(reason) = self.spread_refusal(node, task) {
            return Err(Refusal::stale(format!("task {task_id} cannot go on node {node}: {reason}")));
        }
        let task = task_mut(&mut self.tasks, task_id)?;
        self.dirty.tasks.insert(task_id);
        task.generation += 1;
        task.node = Some(node.to_string());
        task.forget_placement();
        task.restarts = 0;
        transition(task, &mut self.next_event, TaskState::Scheduled, None, at);
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    fn requeue(&mut self, task_id: TaskId, generation: u64, reason: &str, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.generation != generation {
            return Err(Refusal::stale(format!(
                "task {task_id} is at generation {}, not {generation}",
                task.generation
            )));
        }
        if !task.state.can_become(TaskState::Pending) || task.state == TaskState::Pending {
            return Err(Refusal::conflict(format!("task {task_id} is {} and cannot be requeued", task.state)));
        }
        self.dirty.tasks.insert(task_id);
        if task.desired == DesiredStatus::Stop {
            // Nobody wants it running: taking it back means it is done.
            transition(task, &mut self.next_event, TaskState::Completed, Some(reason.to_string()), at);
        } else {
            transition(task, &mut self.next_event, TaskState::Pending, Some(reason.to_string()), at);
        }
        task.node = None;
        task.forget_placement();
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    fn reschedule(&mut self, task_id: TaskId, generation: u64, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.state != TaskState::Failed || task.generation != generation || task.desired != DesiredStatus::Run {
            return Err(Refusal::stale(format!("task {task_id} is not a failed task at generation {generation}")));
        }
        self.dirty.tasks.insert(task_id);
        let node = task.node.take();
        let reason = format!("rescheduled after failing on {}", node.as_deref().unwrap_or("its node"));
        task.failed_on = node;
        task.reschedules.push(at);
        if task.reschedules.len() > MAX_RESCHEDULES_KEPT {
            task.reschedules.remove(0);
        }
        task.forget_placement();
        transition(task, &mut self.next_event, TaskState::Pending, Some(reason), at);
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    /// Failed tasks that still want to run, for the rescheduler.
    pub fn failed_tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.index.failed.iter().filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    fn set_pending_reason(&mut self, task_id: TaskId, reason: &Option<String>, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.state != TaskState::Pending {
            return Err(Refusal::conflict(format!("task {task_id} is {}, not pending", task.state)));
        }
        self.dirty.tasks.insert(task_id);
        task.reason = reason.clone();
        task.updated_at = at;
        Ok(CommandResult::Done)
    }

    fn report(&mut self, node: &str, report: &TaskReport, at: Timestamp) -> Applied {
        let task_id = report.task_id;
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.node.as_deref() != Some(node) || task.generation != report.generation {
            return Err(Refusal::stale(format!(
                "stale report for task {task_id} from {node} (generation {})",
                report.generation
            )));
        }
        let to = report.state.task_state();
        if !task.state.can_become(to) {
            return Err(Refusal::conflict(format!("task {task_id} cannot go from {} to {to}", task.state)));
        }
        self.dirty.tasks.insert(task_id);
        task.restarts = report.restarts;
        let healthy = report.state == ObservedState::Running
            && (report.health == Health::Healthy
                || (report.health == Health::Unknown && task.spec.health_check.is_none()));
        if !healthy {
            task.healthy_since = None;
        } else if task.healthy_since.is_none() {
            task.healthy_since = Some(at);
        }
        task.health = report.health;
        if report.container_id.is_some() {
            task.container_id = report.container_id.clone();
        }
        task.host_ports = report.host_ports.clone();
        if task.state == TaskState::Unknown {
            // Its node is back within the window and the task is where it
            // was: the event says so, the task keeps the worker's reason.
            transition(task, &mut self.next_event, to, Some(format!("node {node} is back")), at);
            task.reason = report.reason.clone();
        } else if task.state != to {
            transition(task, &mut self.next_event, to, report.reason.clone(), at);
        } else {
            task.reason = report.reason.clone();
            task.updated_at = at;
        }
        if to.is_terminal() {
            // A finished task holds nothing on its node any more.
            task.host_ports.clear();
        }
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    fn upsert_node(&mut self, name: &str, capacity: Resources, engine: &EngineStatus, at: Timestamp) -> Applied {
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
            drain: false,
            address: None,
        });
        if registering {
            node_event(node, &mut self.next_event, "registered", at);
        }
        node.capacity = capacity;
        node.engine_healthy = engine.healthy;
        node.engine_error = engine.error.clone();
        node.updated_at = at;
        // A node that reports again is back: ready, or still draining if an
        // operator drained it (before or while it was down).
        if node.status == NodeStatus::Down {
            node.status = if node.drain { NodeStatus::Draining } else { NodeStatus::Ready };
            node_event(node, &mut self.next_event, "heartbeats resumed", at);
            self.node_is_back(name, at);
        }
        Ok(CommandResult::Done)
    }

    /// A node that was down reports again. Its `unknown` tasks the worker
    /// did not report (reports come first in a heartbeat's batch) are
    /// `scheduled`: placed there, container state to be confirmed. So a task
    /// is `unknown` only while its node is down.
    fn node_is_back(&mut self, name: &str, at: Timestamp) {
        let unknown: Vec<TaskId> =
            self.tasks_on(name).filter(|t| t.state == TaskState::Unknown).map(|t| t.id).collect();
        for id in unknown {
            if let Some(task) = self.tasks.get_mut(&id) {
                self.dirty.tasks.insert(id);
                transition(task, &mut self.next_event, TaskState::Scheduled, Some(format!("node {name} is back")), at);
            }
        }
    }

    fn set_node_status(&mut self, name: &str, status: NodeStatus, at: Timestamp) -> Applied {
        let Some(node) = self.nodes.get_mut(name) else {
            return Err(Refusal::not_found(format!("no node {name}")));
        };
        self.dirty.nodes.insert(name.to_string());
        node.updated_at = at;
        let before = (node.status, node.drain);
        match status {
            NodeStatus::Down => node.status = NodeStatus::Down,
            NodeStatus::Draining => {
                node.drain = true;
                if node.status != NodeStatus::Down {
                    node.status = NodeStatus::Draining;
                }
            }
            NodeStatus::Ready => {
                node.drain = false;
                if node.status != NodeStatus::Down {
                    node.status = NodeStatus::Ready;
                }
            }
        }
        if (node.status, node.drain) != before {
            let reason = match status {
                NodeStatus::Ready => "ready",
                NodeStatus::Down => "missed its heartbeat deadline",
                NodeStatus::Draining => "draining on request",
            };
            node_event(node, &mut self.next_event, reason, at);
        }
        Ok(CommandResult::Done)
    }

    fn disconnect(&mut self, task_id: TaskId, generation: u64, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.generation != generation || !matches!(task.state, TaskState::Scheduled | TaskState::Running) {
            return Err(Refusal::stale(format!(
                "task {task_id} is {} at generation {}, not placed at generation {generation}",
                task.state, task.generation
            )));
        }
        let Some(window) = task.spec.disconnect_window else {
            return Err(Refusal::conflict(format!("task {task_id} has no disconnect window")));
        };
        let node = task.node.clone().unwrap_or_default();
        if self.nodes.get(&node).is_none_or(|n| n.status != NodeStatus::Down) {
            return Err(Refusal::stale(format!("node {node} of task {task_id} is not down")));
        }
        self.dirty.tasks.insert(task_id);
        let reason = format!("node {node} is down; waiting up to {window} for it to come back");
        transition(task, &mut self.next_event, TaskState::Unknown, Some(reason), at);
        Ok(CommandResult::Task(Box::new(task.clone())))
    }

    fn expire_disconnect(&mut self, task_id: TaskId, generation: u64, at: Timestamp) -> Applied {
        let task = task_mut(&mut self.tasks, task_id)?;
        if task.generation != generation || task.state != TaskState::Unknown {
            return Err(Refusal::stale(format!(
                "task {task_id} is {} at generation {}, not unknown at generation {generation}",
                task.state, task.generation
            )));
        }
        let node = task.node.clone().unwrap_or_default();
        if self.nodes.get(&node).is_some_and(|n| n.status != NodeStatus::Down) {
            return Err(Refusal::stale(format!("node {node} of task {task_id} is back")));
        }
        self.dirty.tasks.insert(task_id);
        let window = task.spec.disconnect_window.unwrap_or_default();
        let reason = format!("node {node} did not come back within {window}");
        transition(task, &mut self.next_event, TaskState::Pending, Some(reason), at);
        task.node = None;
        task.forget_placement();
        Ok(CommandResult::Task(Box::new(task.clone())))
    }
}

/// Whether `task` may be removed by a collection with this `cutoff`: it
/// finished (completed; or failed and nothing will run it again: stopped,
/// or a reschedule policy of 0 attempts) and has not changed since
/// `cutoff`. A failed task that still wants to run may be rescheduled
/// (its policy's window moves on) and is kept until it is stopped.
pub fn collectable(task: &Task, cutoff: Timestamp) -> bool {
    let finished = match task.state {
        TaskState::Completed => true,
        TaskState::Failed => task.desired == DesiredStatus::Stop || task.spec.reschedule_policy.attempts == 0,
        _ => false,
    };
    finished && task.updated_at <= cutoff
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

    const ALL: [TaskState; 6] = TaskState::ALL;

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
    fn collection_removes_only_finished_tasks_older_than_the_cutoff() {
        let (mut s, done) = state_with_task();
        s.apply(&Command::StopTask { task_id: done, at: 10 });
        assert_eq!(s.tasks[&done].state, TaskState::Completed);
        let running = Uuid::from_u128(8);
        s.apply(&Command::SubmitTask { task_id: running, spec: spec(), at: 3 });
        s.apply(&Command::PlaceTask { task_id: running, node: "w1".into(), at: 4 });
        let missing = Uuid::from_u128(99);
        s.take_dirty();
        let ids = vec![done, running, missing];
        // Too recent: kept.
        assert_eq!(s.apply(&Command::CollectTasks { task_ids: ids.clone(), cutoff: 9 }), CommandResult::Collected(0));
        assert!(s.tasks.contains_key(&done));
        let before = s.clone();
        assert_eq!(s.apply(&Command::CollectTasks { task_ids: ids, cutoff: 10 }), CommandResult::Collected(1));
        assert!(!s.tasks.contains_key(&done) && s.tasks.contains_key(&running));
        assert!(s.take_dirty().tasks.contains(&done), "the store deletes it");
        // The indexes are what loading the same tasks builds.
        assert_eq!(s, ClusterState::from_parts(s.tasks.clone(), s.nodes.clone()));
        // Deterministic: the same command on the same state, the same result.
        let mut again = before;
        again.apply(&Command::CollectTasks { task_ids: vec![done, running, missing], cutoff: 10 });
        assert_eq!(again.tasks, s.tasks);
    }

    #[test]
    fn failed_tasks_are_collected_once_nothing_will_run_them_again() {
        let (mut s, id) = state_with_task();
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Failed), at: 4 });
        assert_eq!(s.tasks[&id].state, TaskState::Failed);
        assert!(!collectable(&s.tasks[&id], 100), "it may be rescheduled");
        s.apply(&Command::StopTask { task_id: id, at: 5 });
        assert!(collectable(&s.tasks[&id], 100));
        assert_eq!(s.apply(&Command::CollectTasks { task_ids: vec![id], cutoff: 100 }), CommandResult::Collected(1));
        assert!(s.failed_tasks().next().is_none());
    }

    #[test]
    fn only_a_down_node_without_live_tasks_is_removed() {
        let (mut s, id) = state_with_task();
        let remove = |s: &mut ClusterState| s.apply(&Command::RemoveNode { name: "w1".into(), at: 9 });
        assert!(remove(&mut s).is_refused(), "ready");
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Down, at: 4 });
        assert!(matches!(remove(&mut s), CommandResult::Refused(r) if r.reason.contains("live task")));
        s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "node down".into(), at: 5 });
        s.take_dirty();
        assert_eq!(remove(&mut s), CommandResult::Done);
        assert!(!s.nodes.contains_key("w1"));
        assert!(s.take_dirty().nodes.contains("w1"));
        assert!(s.apply(&Command::RemoveNode { name: "w1".into(), at: 9 }).is_refused(), "gone");
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
            (Scheduled, Unknown),
            (Running, Unknown),
            (Unknown, Scheduled),
            (Unknown, Running),
            (Unknown, Pending),
            (Unknown, Completed),
            (Unknown, Failed),
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
        assert!(!Unknown.is_terminal(), "an unknown task still holds its place on its node");
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
    fn tokens_are_kept_revoked_and_survive_a_restore() {
        let token =
            ApiToken { id: "ab12".into(), name: "ci".into(), role: Role::Submit, hash: "00".into(), created_at: 1 };
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&Command::CreateToken { token: token.clone() }), CommandResult::Done);
        assert!(s.apply(&Command::CreateToken { token: token.clone() }).is_refused(), "ids are unique");
        assert!(s.take_dirty().tokens.contains("ab12"));
        assert_eq!(s.apply(&Command::Restore { tasks: vec![], nodes: vec![] }), CommandResult::Done);
        assert_eq!(s.tokens.get("ab12"), Some(&token), "a restore leaves tokens alone");
        let copy: ClusterState = bincode::serde::decode_from_slice(
            &bincode::serde::encode_to_vec(&s, bincode::config::standard()).unwrap(),
            bincode::config::standard(),
        )
        .unwrap()
        .0;
        assert_eq!(copy.tokens, s.tokens, "tokens are in snapshots");
        assert_eq!(s.apply(&Command::RevokeToken { id: "ab12".into() }), CommandResult::Done);
        assert!(s.apply(&Command::RevokeToken { id: "ab12".into() }).is_refused());
        assert!(s.tokens.is_empty());
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
        let later = Uuid::from_u128(8);
        s.apply(&Command::SubmitTask { task_id: later, spec: spec(), at: 2 });
        assert_eq!(s.pending_tasks().map(|t| t.id).collect::<Vec<_>>(), [id, later]);
        assert_eq!(s.pending_tasks_after(Some((2, id))).map(|t| t.id).collect::<Vec<_>>(), [later]);
        assert_eq!(s.pending_tasks_after(Some((2, later))).count(), 0);
        s.apply(&Command::StopTask { task_id: later, at: 2 });
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

    /// The state of `state_with_task` with the task running on w1 at
    /// generation 1, with a disconnect window of `window` ms if any.
    fn running_on_w1(window: Option<u64>) -> (ClusterState, TaskId) {
        let mut s = ClusterState::default();
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: capacity(), engine: engine(), at: 1 });
        s.apply(&Command::UpsertNode { name: "w2".into(), capacity: capacity(), engine: engine(), at: 1 });
        let id = Uuid::from_u128(7);
        let mut spec = spec();
        spec.disconnect_window = window.map(crate::Millis);
        s.apply(&Command::SubmitTask { task_id: id, spec, at: 2 });
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 4 });
        assert_eq!(s.tasks[&id].state, TaskState::Running);
        (s, id)
    }

    fn down(s: &mut ClusterState, node: &str, at: Timestamp) {
        assert!(!s.apply(&Command::SetNodeStatus { name: node.into(), status: NodeStatus::Down, at }).is_refused());
    }

    fn back(s: &mut ClusterState, node: &str, at: Timestamp) {
        s.apply(&Command::UpsertNode { name: node.into(), capacity: capacity(), engine: engine(), at });
    }

    /// Asserts that `command` is refused and leaves the state as it was.
    fn refused(s: &mut ClusterState, command: Command) -> String {
        let before = (s.tasks.clone(), s.nodes.clone(), s.index.clone());
        let CommandResult::Refused(why) = s.apply(&command) else { panic!("{command:?} was applied") };
        assert_eq!((s.tasks.clone(), s.nodes.clone(), s.index.clone()), before, "{command:?} changed the state");
        why.reason
    }

    fn kind_of(s: &mut ClusterState, command: Command) -> RefusalKind {
        s.apply(&command).refusal().unwrap_or_else(|| panic!("{command:?} was applied")).kind
    }

    #[test]
    fn refusals_say_their_kind() {
        let (mut s, id) = state_with_task();
        let nil = Uuid::nil();
        for command in [
            Command::StopTask { task_id: nil, at: 3 },
            Command::PlaceTask { task_id: nil, node: "w1".into(), at: 3 },
            Command::PlaceTask { task_id: id, node: "nope".into(), at: 3 },
            Command::RequeueTask { task_id: nil, generation: 0, reason: "x".into(), at: 3 },
            Command::RescheduleTask { task_id: nil, generation: 0, at: 3 },
            Command::SetPendingReason { task_id: nil, reason: None, at: 3 },
            Command::ReportTask { node: "w1".into(), report: report(nil, 1, ObservedState::Running), at: 3 },
            Command::SetNodeStatus { name: "nope".into(), status: NodeStatus::Down, at: 3 },
            Command::DisconnectTask { task_id: nil, generation: 1, at: 3 },
            Command::ExpireDisconnect { task_id: nil, generation: 1, at: 3 },
        ] {
            assert_eq!(kind_of(&mut s, command), RefusalKind::NotFound);
        }
        let mut other = spec();
        other.image = "another".into();
        assert_eq!(kind_of(&mut s, Command::SubmitTask { task_id: id, spec: other, at: 3 }), RefusalKind::Conflict);
        s.apply(&Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 });
        assert_eq!(
            kind_of(&mut s, Command::PlaceTask { task_id: id, node: "w2".into(), at: 4 }),
            RefusalKind::Conflict
        );
        let old = Command::RequeueTask { task_id: id, generation: 0, reason: "x".into(), at: 4 };
        assert_eq!(kind_of(&mut s, old), RefusalKind::Stale);
        let stale = Command::ReportTask { node: "w2".into(), report: report(id, 1, ObservedState::Running), at: 4 };
        assert_eq!(kind_of(&mut s, stale), RefusalKind::Stale);
        let task = (*s.tasks[&id]).clone();
        let twice = Command::Restore { tasks: vec![task.clone(), task], nodes: vec![] };
        assert_eq!(kind_of(&mut s, twice), RefusalKind::Invalid);
    }

    #[test]
    fn placement_is_refused_on_down_and_drained_nodes_and_for_stopped_tasks() {
        let (mut s, id) = state_with_task();
        down(&mut s, "w1", 3);
        assert!(refused(&mut s, Command::PlaceTask { task_id: id, node: "w1".into(), at: 4 }).contains("down"));
        s.apply(&Command::SetNodeStatus { name: "w2".into(), status: NodeStatus::Draining, at: 4 });
        assert!(refused(&mut s, Command::PlaceTask { task_id: id, node: "w2".into(), at: 5 }).contains("drained"));
        back(&mut s, "w1", 6);
        s.apply(&Command::StopTask { task_id: id, at: 7 });
        refused(&mut s, Command::PlaceTask { task_id: id, node: "w1".into(), at: 8 });
    }

    #[test]
    fn a_placement_resets_what_the_previous_copy_reported() {
        let (mut s, id) = running_on_w1(None);
        s.apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "node w1 is down".into(), at: 5 });
        let task = &s.tasks[&id];
        assert_eq!((task.node.as_deref(), task.container_id.as_deref()), (None, None));
        assert!(task.host_ports.is_empty());
        s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 6 });
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.generation, task.node.as_deref()), (TaskState::Scheduled, 2, Some("w2")));
        assert_eq!(task.health, Health::Unknown);
        let moves: Vec<_> = task.events.iter().map(|e| (e.state, e.node.clone())).collect();
        assert_eq!(
            moves[1..],
            [
                (TaskState::Scheduled, Some("w1".into())),
                (TaskState::Running, Some("w1".into())),
                (TaskState::Pending, Some("w1".into())),
                (TaskState::Scheduled, Some("w2".into())),
            ],
            "every move is an event, naming the node it left or went to"
        );
    }

    #[test]
    fn refusals_name_what_is_wrong_and_change_nothing() {
        let (mut s, id) = running_on_w1(Some(30_000));
        let nil = Uuid::nil();
        for command in [
            Command::StopTask { task_id: nil, at: 9 },
            Command::PlaceTask { task_id: nil, node: "w1".into(), at: 9 },
            Command::RequeueTask { task_id: nil, generation: 1, reason: "x".into(), at: 9 },
            Command::RescheduleTask { task_id: nil, generation: 1, at: 9 },
            Command::SetPendingReason { task_id: nil, reason: None, at: 9 },
            Command::ReportTask { node: "w1".into(), report: report(nil, 1, ObservedState::Running), at: 9 },
            Command::DisconnectTask { task_id: nil, generation: 1, at: 9 },
            Command::ExpireDisconnect { task_id: nil, generation: 1, at: 9 },
        ] {
            assert!(refused(&mut s, command).contains("no task"));
        }
        assert!(refused(&mut s, Command::SetNodeStatus { name: "w9".into(), status: NodeStatus::Down, at: 9 })
            .contains("no node w9"));
        assert!(refused(&mut s, Command::PlaceTask { task_id: id, node: "w9".into(), at: 9 }).contains("no node"));
        // Stale generations.
        down(&mut s, "w1", 10);
        for command in [
            Command::RequeueTask { task_id: id, generation: 0, reason: "x".into(), at: 11 },
            Command::RescheduleTask { task_id: id, generation: 0, at: 11 },
            Command::DisconnectTask { task_id: id, generation: 2, at: 11 },
            Command::ReportTask { node: "w1".into(), report: report(id, 2, ObservedState::Running), at: 11 },
        ] {
            refused(&mut s, command);
        }
        // Not the right state for it.
        refused(&mut s, Command::SetPendingReason { task_id: id, reason: Some("x".into()), at: 11 });
        refused(&mut s, Command::ExpireDisconnect { task_id: id, generation: 1, at: 11 });
        refused(&mut s, Command::RescheduleTask { task_id: id, generation: 1, at: 11 });
    }

    #[test]
    fn a_task_with_a_window_waits_unknown_on_its_down_node_and_carries_on_when_it_is_back() {
        let (mut s, id) = running_on_w1(Some(30_000));
        // Not while its node is up.
        assert!(refused(&mut s, Command::DisconnectTask { task_id: id, generation: 1, at: 5 }).contains("not down"));
        down(&mut s, "w1", 10);
        assert!(!s.apply(&Command::DisconnectTask { task_id: id, generation: 1, at: 10 }).is_refused());
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.node.as_deref(), task.generation), (TaskState::Unknown, Some("w1"), 1));
        assert!(task.reason.as_deref().unwrap().contains("30s"), "{:?}", task.reason);
        assert_eq!(task.container_id.as_deref(), Some("c1"), "nothing about the copy is forgotten");
        assert_eq!(s.tasks_on("w1").count(), 1, "it keeps its place");
        assert_eq!(s.pending_tasks().count(), 0);
        // Twice: refused, it already waits.
        refused(&mut s, Command::DisconnectTask { task_id: id, generation: 1, at: 11 });
        // Requeue (drain, or a no-window decision) is still possible.
        // The node is back and reports the same container: running again.
        s.apply(&Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 12 });
        back(&mut s, "w1", 12);
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.generation, task.container_id.as_deref()), (TaskState::Running, 1, Some("c1")));
        assert_eq!(task.reason, None);
        let last = task.events.last().unwrap();
        assert_eq!((last.state, last.reason.as_deref()), (TaskState::Running, Some("node w1 is back")));
        assert_eq!(s.nodes["w1"].status, NodeStatus::Ready);
        // Its window is no concern any more.
        refused(&mut s, Command::ExpireDisconnect { task_id: id, generation: 1, at: 100_000 });
    }

    #[test]
    fn a_node_back_makes_its_unreported_unknown_tasks_scheduled() {
        let (mut s, id) = running_on_w1(Some(30_000));
        down(&mut s, "w1", 10);
        s.apply(&Command::DisconnectTask { task_id: id, generation: 1, at: 10 });
        back(&mut s, "w1", 12);
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.reason.as_deref()), (TaskState::Scheduled, Some("node w1 is back")));
        assert!(s.tasks.values().all(|t| t.state != TaskState::Unknown), "unknown only while the node is down");
    }

    #[test]
    fn an_unknown_task_whose_window_ends_is_moved_unless_its_node_is_back() {
        let (mut s, id) = running_on_w1(Some(30_000));
        down(&mut s, "w1", 10);
        s.apply(&Command::DisconnectTask { task_id: id, generation: 1, at: 10 });
        refused(&mut s, Command::ExpireDisconnect { task_id: id, generation: 0, at: 40_010 });
        assert!(!s.apply(&Command::ExpireDisconnect { task_id: id, generation: 1, at: 40_010 }).is_refused());
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.node.as_deref(), task.generation), (TaskState::Pending, None, 1));
        assert!(task.reason.as_deref().unwrap().contains("did not come back within 30s"));
        assert_eq!(s.pending_tasks().count(), 1);
        assert_eq!(s.tasks_on("w1").count(), 0);
        // Placed elsewhere, the old copy's reports are stale.
        s.apply(&Command::PlaceTask { task_id: id, node: "w2".into(), at: 40_011 });
        back(&mut s, "w1", 40_012);
        refused(
            &mut s,
            Command::ReportTask { node: "w1".into(), report: report(id, 1, ObservedState::Running), at: 40_013 },
        );

        // The node came back just before the decision was applied: refused.
        let (mut s, id) = running_on_w1(Some(30_000));
        down(&mut s, "w1", 10);
        s.apply(&Command::DisconnectTask { task_id: id, generation: 1, at: 10 });
        let mut at_once = s.clone();
        // (without a report of the task)
        back(&mut s, "w1", 40_000);
        refused(&mut s, Command::ExpireDisconnect { task_id: id, generation: 1, at: 40_010 });
        // Drained while it waits: requeued like every task of the node.
        assert!(!at_once
            .apply(&Command::RequeueTask { task_id: id, generation: 1, reason: "node w1 is draining".into(), at: 11 })
            .is_refused());
        assert_eq!(at_once.tasks[&id].state, TaskState::Pending);
    }

    #[test]
    fn tasks_without_a_window_are_not_left_unknown() {
        let (mut s, id) = running_on_w1(None);
        down(&mut s, "w1", 10);
        assert!(refused(&mut s, Command::DisconnectTask { task_id: id, generation: 1, at: 10 })
            .contains("no disconnect window"));
    }

    #[test]
    fn stopping_an_unknown_task_completes_it_and_its_node_gets_no_assignment_back() {
        let (mut s, id) = running_on_w1(Some(30_000));
        down(&mut s, "w1", 10);
        s.apply(&Command::DisconnectTask { task_id: id, generation: 1, at: 10 });
        s.apply(&Command::StopTask { task_id: id, at: 11 });
        let task = &s.tasks[&id];
        assert_eq!((task.state, task.desired), (TaskState::Completed, DesiredStatus::Stop));
        assert_eq!(s.tasks_on("w1").count(), 0);
        back(&mut s, "w1", 12);
        assert_eq!(s.tasks[&id].state, TaskState::Completed);
        // A running task's stop waits for its node; stopping twice is harmless.
        let (mut s, id) = running_on_w1(None);
        s.apply(&Command::StopTask { task_id: id, at: 5 });
        s.apply(&Command::StopTask { task_id: id, at: 6 });
        assert_eq!((s.tasks[&id].state, s.tasks[&id].desired), (TaskState::Running, DesiredStatus::Stop));
    }

    #[test]
    fn a_drained_node_stays_drained_through_down_and_back_until_made_ready() {
        let mut s = ClusterState::default();
        back(&mut s, "w1", 1);
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Draining, at: 2 });
        assert_eq!((s.nodes["w1"].status, s.nodes["w1"].drain), (NodeStatus::Draining, true));
        down(&mut s, "w1", 3);
        assert_eq!((s.nodes["w1"].status, s.nodes["w1"].drain), (NodeStatus::Down, true));
        back(&mut s, "w1", 4);
        assert_eq!((s.nodes["w1"].status, s.nodes["w1"].drain), (NodeStatus::Draining, true), "the drain is kept");
        // Drained while down: it comes back draining.
        back(&mut s, "w2", 5);
        down(&mut s, "w2", 6);
        s.apply(&Command::SetNodeStatus { name: "w2".into(), status: NodeStatus::Draining, at: 7 });
        assert_eq!(s.nodes["w2"].status, NodeStatus::Down);
        back(&mut s, "w2", 8);
        assert_eq!(s.nodes["w2"].status, NodeStatus::Draining);
        // `ready` ends a drain; it does not bring a down node back.
        s.apply(&Command::SetNodeStatus { name: "w1".into(), status: NodeStatus::Ready, at: 9 });
        assert_eq!((s.nodes["w1"].status, s.nodes["w1"].drain), (NodeStatus::Ready, false));
        down(&mut s, "w2", 10);
        s.apply(&Command::SetNodeStatus { name: "w2".into(), status: NodeStatus::Ready, at: 11 });
        assert_eq!((s.nodes["w2"].status, s.nodes["w2"].drain), (NodeStatus::Down, false));
    }

    #[test]
    fn a_node_registers_once_and_updates_its_capacity_and_engine_health() {
        let mut s = ClusterState::default();
        back(&mut s, "w1", 1);
        let mut smaller = capacity();
        smaller.memory /= 2;
        let sick = EngineStatus { healthy: false, error: Some("connection refused".into()) };
        s.apply(&Command::UpsertNode { name: "w1".into(), capacity: smaller, engine: sick, at: 2 });
        let node = &s.nodes["w1"];
        assert_eq!((node.registered_at, node.updated_at, node.capacity), (1, 2, smaller));
        assert!(!node.engine_healthy);
        assert_eq!(node.engine_error.as_deref(), Some("connection refused"));
        assert_eq!(s.nodes.len(), 1);
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

    fn task_with(cpu: f64, memory: u64, disk: u64, host_port: Option<u16>) -> TaskSpec {
        let mut spec = spec();
        (spec.cpu, spec.memory, spec.disk) = (cpu, memory, disk);
        spec.ports = host_port.map(|p| PortMapping { container: 80, host: Some(p) }).into_iter().collect();
        spec
    }

    fn submit_and_place(s: &mut ClusterState, n: u128, spec: TaskSpec, node: &str) -> CommandResult {
        let id = Uuid::from_u128(n);
        s.apply(&Command::SubmitTask { task_id: id, spec, at: 1 });
        s.apply(&Command::PlaceTask { task_id: id, node: node.into(), at: 2 })
    }

    #[test]
    fn a_placement_that_no_longer_fits_its_node_is_refused() {
        let (mut s, _) = state_with_task();
        // w1: 2 cores, 1 GiB memory, 16 GiB disk.
        assert!(!submit_and_place(&mut s, 10, task_with(1.5, 1 << 29, 1 << 33, Some(8080)), "w1").is_refused());
        let cases = [
            (task_with(0.75, 0, 0, None), "cpu"),
            (task_with(0.0, (1 << 29) + 1, 0, None), "memory"),
            (task_with(0.0, 0, (1 << 33) + 1, None), "disk"),
            (task_with(0.0, 0, 0, Some(8080)), "host port(s) 8080"),
        ];
        for (i, (spec, what)) in cases.into_iter().enumerate() {
            let before = s.clone();
            let result = submit_and_place(&mut s, 20 + i as u128, spec, "w1");
            let CommandResult::Refused(reason) = &result else { panic!("{what}: placed: {result:?}") };
            assert!(reason.reason.contains("no room") && reason.reason.contains(what), "{what}: {reason}");
            let task = &s.tasks[&Uuid::from_u128(20 + i as u128)];
            assert_eq!((task.state, task.generation, task.node.as_deref()), (TaskState::Pending, 0, None));
            assert_eq!(s.allocated("w1"), before.allocated("w1"));
        }
        // What is left still fits, exactly; another node is not charged.
        assert!(!submit_and_place(&mut s, 30, task_with(0.5, 1 << 29, 1 << 33, Some(8081)), "w1").is_refused());
        assert!(!submit_and_place(&mut s, 31, task_with(2.0, 1 << 30, 0, Some(8080)), "w2").is_refused());
        // A finished task gives its room back.
        let done = Uuid::from_u128(10);
        let mut r = report(done, 1, ObservedState::Completed);
        r.host_ports.clear();
        assert!(!s.apply(&Command::ReportTask { node: "w1".into(), report: r, at: 3 }).is_refused());
        assert!(!submit_and_place(&mut s, 32, task_with(1.5, 1 << 29, 0, Some(8080)), "w1").is_refused());
    }

    #[test]
    fn a_fenced_decision_applies_only_in_the_leadership_that_took_it() {
        let (mut s, id) = state_with_task();
        let place = |term, leader| Command::Fenced {
            term,
            leader,
            command: Box::new(Command::Batch(vec![Command::PlaceTask { task_id: id, node: "w1".into(), at: 3 }])),
        };
        // Outside a Raft entry (no leader known): refused.
        assert!(s.apply(&place(4, 1)).is_refused());
        // Appended by another leader, or by the same manager in a later term.
        for (term, leader) in [(5, 2), (5, 1), (3, 1)] {
            s.begin_entry_by(10, term, leader);
            let CommandResult::Refused(reason) = s.apply(&place(4, 1)) else { panic!("applied in term {term}") };
            assert!(reason.reason.contains("deposed"), "{reason}");
            assert_eq!(s.tasks[&id].state, TaskState::Pending);
        }
        // In a batch with other commands: only the fenced part is refused.
        s.begin_entry_by(11, 5, 2);
        let batch = Command::Batch(vec![
            place(4, 1),
            Command::SetPendingReason { task_id: id, reason: Some("waiting".into()), at: 4 },
        ]);
        let CommandResult::Batch(results) = s.apply(&batch) else { panic!("a batch") };
        assert!(results[0].is_refused() && !results[1].is_refused(), "{results:?}");
        // Its own leadership: applied, with the inner command's result.
        s.begin_entry_by(12, 4, 1);
        let CommandResult::Batch(results) = s.apply(&place(4, 1)) else { panic!("the inner batch's result") };
        assert!(matches!(&results[..], [CommandResult::Task(t)] if t.state == TaskState::Scheduled));
        assert_eq!(s.tasks[&id].node.as_deref(), Some("w1"));
        // And it survives a round trip through the log's encoding.
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(place(4, 1), cfg).unwrap();
        let (back, _): (Command, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, place(4, 1));
    }
}
