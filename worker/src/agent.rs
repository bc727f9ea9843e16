//! The agent: the worker's loops.
//!
//! - The **supervisor** owns the containers. Each round it lists this node's
//!   containers, reconciles them against the assignments and the local
//!   restart records, persists what changed, publishes the task reports and
//!   starts the engine actions: concurrently (at most [`MAX_IN_FLIGHT`]),
//!   never two on the same task or container. It wakes on a container exit
//!   (engine event stream), a new assignment list, a health verdict, a
//!   restart delay falling due, an action completing, or a periodic tick
//!   (the safety net for missed events). It never needs a manager: restarts
//!   happen locally.
//! - The **heartbeat** loop sends the latest reports to a manager about once
//!   a second, and soon after any report changes, and passes the assignment
//!   list of the answer to the supervisor. An unreachable manager only means
//!   trying the next one. Alongside, a **long poll** on the node's
//!   assignments brings each new list as soon as the leader commits it;
//!   every list carries the applied log index it was computed at and an
//!   older one never replaces a newer one ([`AssignmentOrder`]).
//! - The **exit watcher** follows the engine's event stream, resubscribing
//!   with backoff when it breaks.
//!
//! The supervisor and the heartbeat share a [`Status`] (engine health and
//! reports) behind a mutex; assignments flow the other way in a watch
//! channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use goat_storage::model::{
    Assignment, DesiredStatus, EngineStatus, Heartbeat, HeartbeatReply, ObservedState, Resources, TaskId, TaskReport,
};
use goat_storage::worker_state::{TaskRecord, WorkerStore};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::health::{self, Monitor};
use crate::reconcile::{self, Action, Input};
use crate::runtime::{free_host_port, Container, ContainerConfig, ContainerRuntime, InFlight, RuntimeError};

/// Grace period given to a container between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The safety-net period of the supervisor when nothing wakes it.
const TICK: Duration = Duration::from_secs(2);
const MAX_ENGINE_BACKOFF: Duration = Duration::from_secs(8);
/// Timeout of one heartbeat request.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry period while the managers refuse our token.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(5);
/// The least time between two heartbeats sent early because a report
/// changed: prompt reporting without flooding the leader.
const MIN_HEARTBEAT_GAP: Duration = Duration::from_millis(150);

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the supervisor last saw, for the heartbeat to send.
#[derive(Debug, Clone)]
pub struct Status {
    pub engine: EngineStatus,
    pub reports: Vec<TaskReport>,
    pub usage: Resources,
    /// Unix ms of the last heartbeat a manager accepted (set by the
    /// heartbeat loop), for the optional self-fencing.
    pub last_manager_contact: Option<u64>,
    /// Notified when the engine status or a report changes, so that the
    /// heartbeat goes out at once (rate-limited) instead of at its period.
    pub changed: Arc<Notify>,
}

impl Status {
    pub fn new(engine: EngineStatus) -> Status {
        Status {
            engine,
            reports: Vec::new(),
            usage: Resources::default(),
            last_manager_contact: None,
            changed: Arc::new(Notify::new()),
        }
    }
}

/// Whether a worker that has been cut off from every manager should stop
/// its tasks itself (`--stop-tasks-after-manager-loss`): only when the
/// operator set a `limit`, and no manager has accepted a heartbeat for that
/// long (counted from the worker's start if none ever did). Off by default:
/// a partitioned worker keeps its tasks running, which is what keeps a
/// service up when the managers, not the workers, fail.
pub fn manager_loss_fence(limit: Option<Duration>, last_contact: Option<u64>, started_at: u64, now: u64) -> bool {
    let Some(limit) = limit else { return false };
    let since = now.saturating_sub(last_contact.unwrap_or(started_at).max(started_at));
    Duration::from_millis(since) >= limit
}

/// Engine actions in flight at once. Creating and starting containers is
/// mostly the engine's (and the kernel's) work; running them concurrently
/// overlaps their round trips, and the cap keeps a burst of hundreds from
/// swamping the engine.
pub const MAX_IN_FLIGHT: usize = 16;
/// After an action completes, the next round waits at least this long after
/// the previous one, so that completions arriving together share a round.
const ROUND_GAP: Duration = Duration::from_millis(100);

/// The supervisor: owns the containers of this node.
pub struct Supervisor<R: ContainerRuntime> {
    node: String,
    runtime: Arc<R>,
    store: WorkerStore,
    records: BTreeMap<TaskId, TaskRecord>,
    assignments: watch::Receiver<Option<Vec<Assignment>>>,
    status: Arc<Mutex<Status>>,
    health: Monitor,
    health_changed: Arc<Notify>,
    exits: mpsc::UnboundedReceiver<String>,
    engine_backoff: Duration,
    /// Engine actions running now, each holding the keys (task, container)
    /// it works on: no second action is started on a busy key, so a round
    /// that runs while an action is in flight never repeats or contradicts
    /// it.
    actions: JoinSet<Done>,
    in_flight: HashMap<tokio::task::Id, Vec<Busy>>,
    busy: BTreeSet<Busy>,
    permits: Arc<Semaphore>,
    /// `--stop-tasks-after-manager-loss`.
    manager_loss_limit: Option<Duration>,
    started_at: u64,
    fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Busy {
    Task(TaskId),
    Container(String),
}

/// A finished engine action, back in the supervisor.
struct Done {
    task_id: Option<TaskId>,
    result: Result<(), RuntimeError>,
    /// A create or start whose failure counts against the task.
    starting: bool,
}

/// The outcome of one supervisor round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Reconciled; look again after this long at the latest.
    Done { next: Duration },
    /// The engine did not answer; retry after this long.
    EngineDown { retry: Duration },
}

impl<R: ContainerRuntime> Supervisor<R> {
    pub fn new(
        node: String,
        runtime: Arc<R>,
        store: WorkerStore,
        assignments: watch::Receiver<Option<Vec<Assignment>>>,
        status: Arc<Mutex<Status>>,
        exits: mpsc::UnboundedReceiver<String>,
    ) -> anyhow::Result<Supervisor<R>> {
        let records = store.tasks().context("reading the worker's task records")?;
        let health_changed = Arc::new(Notify::new());
        Ok(Supervisor {
            node,
            runtime,
            store,
            records,
            assignments,
            status,
            health: Monitor::new(health_changed.clone()),
            health_changed,
            exits,
            engine_backoff: Duration::from_millis(500),
            actions: JoinSet::new(),
            in_flight: HashMap::new(),
            busy: BTreeSet::new(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            manager_loss_limit: None,
            started_at: unix_ms(),
            fenced: false,
        })
    }

    /// Stop this node's tasks once no manager has answered for `limit`.
    pub fn with_manager_loss_limit(mut self, limit: Option<Duration>) -> Supervisor<R> {
        self.manager_loss_limit = limit;
        self
    }

    /// Runs rounds forever.
    pub async fn run(mut self) {
        loop {
            let round_started = tokio::time::Instant::now();
            let wait = match self.round().await {
                Round::Done { next } => next,
                Round::EngineDown { retry } => retry,
            };
            let mut deadline = round_started + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    Some(_) = self.exits.recv() => {
                        // Several exits often come together: take them all.
                        while self.exits.try_recv().is_ok() {}
                        break;
                    }
                    Ok(()) = self.assignments.changed() => break,
                    _ = self.health_changed.notified() => break,
                    Some(joined) = self.actions.join_next_with_id(), if !self.actions.is_empty() => {
                        self.complete(joined);
                        // Look again soon to report it, together with the
                        // completions that follow closely.
                        deadline = deadline.min((round_started + ROUND_GAP).max(tokio::time::Instant::now()));
                    }
                }
            }
        }
    }

    /// Waits for every action in flight and takes in their results (tests).
    pub async fn finish_actions(&mut self) {
        while let Some(joined) = self.actions.join_next_with_id().await {
            self.complete(joined);
        }
    }

    /// One observe → reconcile → act round. The actions are started, not
    /// awaited: each one's completion wakes the supervisor for another round.
    pub async fn round(&mut self) -> Round {
        let mut in_flight = InFlight::default();
        for key in &self.busy {
            match key {
                Busy::Task(id) => in_flight.tasks.insert(*id),
                Busy::Container(id) => in_flight.containers.insert(id.clone()),
            };
        }
        let containers = match self.runtime.list(&self.node, &in_flight).await {
            Ok(containers) => containers,
            Err(error) => {
                let retry = self.engine_backoff;
                self.engine_backoff = (self.engine_backoff * 2).min(MAX_ENGINE_BACKOFF);
                tracing::warn!(%error, retry_in = ?retry, "container engine unavailable");
                let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                let down = EngineStatus { healthy: false, error: Some(error.to_string()) };
                if status.engine != down {
                    status.engine = down;
                    status.changed.notify_one();
                }
                return Round::EngineDown { retry };
            }
        };
        if self.engine_backoff > Duration::from_millis(500) {
            tracing::info!("container engine is back");
        }
        self.engine_backoff = Duration::from_millis(500);

        let now = unix_ms();
        let last_contact = self.status.lock().unwrap_or_else(|e| e.into_inner()).last_manager_contact;
        let fenced = manager_loss_fence(self.manager_loss_limit, last_contact, self.started_at, now);
        if fenced != self.fenced {
            self.fenced = fenced;
            if fenced {
                tracing::warn!(limit = ?self.manager_loss_limit, "no manager reachable for too long: stopping this node's tasks");
            } else {
                tracing::info!("a manager answers again: running the assigned tasks again");
            }
        }
        if fenced {
            return self.fence(&containers);
        }

        let assignments = self.assignments.borrow().clone();
        let verdicts = self.health.verdicts();
        let before = self.records.clone();
        let mut jitter = rand::random::<f64>;
        let input = Input {
            node: &self.node,
            now,
            assignments: assignments.as_deref(),
            containers: &containers,
            health: &verdicts,
        };
        let plan = reconcile::reconcile(&input, &mut self.records, &mut jitter);

        // Ports the engine should publish on: chosen now, recorded with the
        // placement, so that its restarts and recreations keep them.
        let mut actions = Vec::with_capacity(plan.actions.len());
        for action in plan.actions {
            actions.push(match action {
                Action::Create { task_id, config } => {
                    Action::Create { task_id, config: Box::new(self.bind_ports(task_id, *config, &containers)) }
                }
                other => other,
            });
        }

        // Persist decisions before acting on them: a worker that crashes
        // right after a restart must not count it again or forget it.
        self.persist(&before);
        self.publish(&plan.reports, assignments.as_deref());
        self.sync_health(&containers, assignments.as_deref());

        for action in actions {
            self.spawn(action);
        }

        let mut next = TICK;
        if let Some(at) = plan.wake_at {
            next = next.min(Duration::from_millis(at.saturating_sub(unix_ms())));
        }
        Round::Done { next }
    }

    /// Self-fencing: remove every container of this node, keep the records
    /// and the assignments for when a manager answers again.
    fn fence(&mut self, containers: &[Container]) -> Round {
        let reports: Vec<TaskReport> = {
            let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status
                .reports
                .iter()
                .map(|r| TaskReport {
                    state: match r.state {
                        ObservedState::Completed | ObservedState::Failed => r.state,
                        _ => ObservedState::Restarting,
                    },
                    container_id: None,
                    host_ports: BTreeMap::new(),
                    health: goat_storage::model::Health::Unknown,
                    reason: Some("stopped by its worker: no manager reachable".into()),
                    ..r.clone()
                })
                .collect()
        };
        let assignments = self.assignments.borrow().clone();
        self.publish(&reports, assignments.as_deref());
        self.sync_health(&[], None);
        for c in containers {
            let reason = "no manager reachable (--stop-tasks-after-manager-loss)".to_string();
            self.spawn(Action::Remove { container_id: c.id.clone(), reason });
        }
        Round::Done { next: TICK }
    }

    /// Gives the container a host port for each port the task left to the
    /// node, reusing the ones its placement already had.
    fn bind_ports(
        &mut self,
        task_id: TaskId,
        mut config: ContainerConfig,
        containers: &[Container],
    ) -> ContainerConfig {
        let unbound: Vec<u16> = config.unbound_ports().collect();
        if unbound.is_empty() {
            return config;
        }
        let mut reserved: BTreeSet<u16> = self.records.values().flat_map(|r| r.host_ports.values().copied()).collect();
        reserved.extend(containers.iter().flat_map(|c| c.host_ports.values().copied()));
        let Some(record) = self.records.get_mut(&task_id) else { return config };
        for port in unbound {
            match free_host_port(&reserved) {
                Some(host) => {
                    reserved.insert(host);
                    record.host_ports.insert(port, host);
                }
                // The engine picks one then (it changes at each restart).
                None => tracing::warn!(task = %task_id, port, "no free host port found; leaving it to the engine"),
            }
        }
        config.pin_ports(&record.host_ports);
        config
    }

    /// Starts an engine action unless one is already busy with its task or
    /// container; at most [`MAX_IN_FLIGHT`] run at once, the others queue.
    fn spawn(&mut self, action: Action) {
        let (task_id, container_id) = match &action {
            Action::Create { task_id, .. } => (Some(*task_id), None),
            Action::Start { task_id, container_id } | Action::Stop { task_id, container_id, .. } => {
                (Some(*task_id), Some(container_id.clone()))
            }
            Action::Remove { container_id, .. } => (None, Some(container_id.clone())),
        };
        let keys: Vec<Busy> = task_id.map(Busy::Task).into_iter().chain(container_id.map(Busy::Container)).collect();
        if keys.iter().any(|k| self.busy.contains(k)) {
            return;
        }
        // Creates and starts count against the task when they fail.
        let starting = matches!(action, Action::Create { .. } | Action::Start { .. });
        let runtime = self.runtime.clone();
        let permits = self.permits.clone();
        let span = match &action {
            Action::Create { task_id, config } => {
                tracing::info_span!("task", task = %task_id, container = %config.name)
            }
            Action::Start { task_id, container_id } | Action::Stop { task_id, container_id, .. } => {
                tracing::info_span!("task", task = %task_id, container = %short(container_id))
            }
            Action::Remove { container_id, .. } => tracing::info_span!("container", container = %short(container_id)),
        };
        let handle = self.actions.spawn(
            async move {
                let _permit = permits.acquire_owned().await;
                let result = execute(runtime.as_ref(), action).await;
                Done { task_id, result, starting }
            }
            .instrument(span),
        );
        self.busy.extend(keys.iter().cloned());
        self.in_flight.insert(handle.id(), keys);
    }

    /// Takes in a finished action: frees its keys and, for a create or start
    /// that failed, applies the restart policy to the task.
    fn complete(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (id, done) = match joined {
            Ok((id, done)) => (id, Some(done)),
            Err(e) => {
                tracing::error!(error = %e, "an engine action panicked or was cancelled");
                (e.id(), None)
            }
        };
        for key in self.in_flight.remove(&id).unwrap_or_default() {
            self.busy.remove(&key);
        }
        let Some(Done { task_id: Some(task_id), result: Err(error), starting: true }) = done else { return };
        let assignment =
            self.assignments.borrow().as_ref().and_then(|l| l.iter().find(|a| a.task_id == task_id).cloned());
        let (Some(assignment), Some(record)) = (assignment, self.records.get_mut(&task_id)) else { return };
        if error.is_port_conflict() {
            // Its container is gone (see `execute`): a new one gets new ports.
            record.host_ports.clear();
        }
        reconcile::start_failed(record, &assignment, &error, unix_ms(), &mut rand::random::<f64>);
        if let Err(e) = self.store.put_task(task_id, record) {
            tracing::error!(task = %task_id, error = %e, "could not persist the task record");
        }
    }

    fn persist(&self, before: &BTreeMap<TaskId, TaskRecord>) {
        for (id, record) in &self.records {
            if before.get(id) != Some(record) {
                if let Err(e) = self.store.put_task(*id, record) {
                    tracing::error!(task = %id, error = %e, "could not persist the task record");
                }
            }
        }
        for id in before.keys().filter(|id| !self.records.contains_key(id)) {
            if let Err(e) = self.store.remove_task(*id) {
                tracing::error!(task = %id, error = %e, "could not remove the task record");
            }
        }
    }

    fn publish(&self, reports: &[TaskReport], assignments: Option<&[Assignment]>) {
        let mut usage = Resources::default();
        for report in reports.iter().filter(|r| !matches!(r.state, ObservedState::Completed | ObservedState::Failed)) {
            if let Some(a) = assignments.unwrap_or_default().iter().find(|a| a.task_id == report.task_id) {
                usage.cpu += a.spec.cpu;
                usage.memory += a.spec.memory;
                usage.disk += a.spec.disk;
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            let old = status.reports.iter().find(|r| r.task_id == report.task_id);
            if old.map(|o| (o.state, o.restarts, &o.reason)) != Some((report.state, report.restarts, &report.reason)) {
                // While restarting, say when: the growing backoff is visible in the log.
                let retry_in_ms = self
                    .records
                    .get(&report.task_id)
                    .and_then(|r| r.next_start_at)
                    .filter(|_| report.state == ObservedState::Restarting)
                    .map(|at| at.saturating_sub(unix_ms()));
                tracing::info!(task = %report.task_id, state = ?report.state, restarts = report.restarts,
                    reason = report.reason.as_deref().unwrap_or(""), ?retry_in_ms, "task state");
            }
        }
        let engine = EngineStatus { healthy: true, error: None };
        if status.reports != reports || status.engine != engine {
            status.changed.notify_one();
        }
        status.engine = engine;
        status.reports = reports.to_vec();
        status.usage = usage;
    }

    /// Probes every running container whose task has a health check.
    fn sync_health(&mut self, containers: &[Container], assignments: Option<&[Assignment]>) {
        let mut wanted = Vec::new();
        for a in assignments.unwrap_or_default() {
            let Some(check) = &a.spec.health_check else { continue };
            if a.desired != DesiredStatus::Run || self.records.get(&a.task_id).is_some_and(|r| r.outcome.is_some()) {
                continue;
            }
            for c in containers.iter().filter(|c| c.running && c.task_id == a.task_id && c.generation == a.generation) {
                wanted.push(health::Wanted {
                    container_id: c.id.clone(),
                    task_id: a.task_id,
                    check: check.clone(),
                    started_at: c.started_at.unwrap_or_else(unix_ms),
                    targets: health::targets(c, check),
                });
            }
        }
        self.health.sync(wanted);
    }
}

/// Performs one engine action (inside the action's span).
async fn execute<R: ContainerRuntime>(runtime: &R, action: Action) -> Result<(), RuntimeError> {
    match action {
        Action::Create { config, .. } => match runtime.create_and_start(&config).await {
            Ok(id) => {
                tracing::info!(container_id = %short(&id), ports = ?config.ports, "container started");
                Ok(())
            }
            Err(error) => {
                // (A container that was created but could not start has been
                // removed by the runtime: the next one gets new ports.)
                tracing::warn!(%error, "could not start the container");
                Err(error)
            }
        },
        Action::Start { container_id, .. } => match runtime.start(&container_id).await {
            Ok(()) => {
                tracing::info!("container restarted");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "could not restart the container");
                if error.is_port_conflict() {
                    let _ = runtime.remove(&container_id, Duration::ZERO).await;
                }
                Err(error)
            }
        },
        Action::Stop { container_id, reason, .. } => {
            tracing::info!(%reason, "stopping container");
            let result = runtime.stop(&container_id, STOP_GRACE).await;
            if let Err(error) = &result {
                tracing::warn!(%error, "could not stop the container");
            }
            result
        }
        Action::Remove { container_id, reason } => {
            tracing::info!(%reason, "removing container");
            let result = runtime.remove(&container_id, STOP_GRACE).await;
            if let Err(error) = &result {
                tracing::warn!(%error, "could not remove the container");
            }
            result
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Follows the engine's exit events forever, resubscribing with backoff.
pub async fn watch_exits<R: ContainerRuntime>(runtime: Arc<R>, node: String, exits: mpsc::UnboundedSender<String>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        match runtime.watch_exits(&node, exits.clone()).await {
            Ok(()) if exits.is_closed() => return,
            Ok(()) => tracing::debug!("engine event stream ended"),
            Err(error) => tracing::debug!(%error, "engine event stream failed"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_ENGINE_BACKOFF);
        // Whatever exited while the stream was down is caught by the
        // supervisor's periodic round; nudge it anyway.
        let _ = exits.send(String::new());
    }
}

/// Where to send heartbeats and how.
pub struct HeartbeatConfig {
    pub node: String,
    pub managers: Vec<String>,
    pub token: String,
    pub capacity: Resources,
    pub interval: Duration,
    /// With TLS: `https`, this worker's certificate, the cluster's CA.
    pub tls: Option<goat_raft::tls::Tls>,
    /// The address clients reach this node's published ports at.
    pub advertise: Option<String>,
}

/// How one heartbeat attempt went.
enum Sent {
    Accepted(HeartbeatReply),
    /// Try the next manager.
    Unreachable(String),
    /// Our token is refused: retry slowly.
    Unauthorized(String),
}

/// Which assignment lists the worker takes, by the applied log index each
/// was computed at.
///
/// A heartbeat's answer and a long poll's answer can be in flight together
/// and arrive in either order, so a list computed at a lower index than the
/// one held is older news and is ignored: replacing a newer list with it
/// could remove a task placed in between. Every manager applies the same
/// log, so an index orders lists across managers too. After a leader change
/// the new leader's applied index may briefly trail the old one's: its
/// answers are ignored until it catches up, which is safe (they are older)
/// and short (heartbeats keep flowing meanwhile).
///
/// Two escapes: an answer numbered 0 (a manager that does not number its
/// answers) is taken as before; and a worker that has been shown only lower
/// indexes for [`REGRESSION_AFTER`] and [`REGRESSION_ANSWERS`] answers in a
/// row takes them: its managers' log must have started over (a cluster
/// rebuilt from scratch while the worker ran), and a worker that ignored it
/// forever would never get new work.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssignmentOrder {
    /// The index of the list held (0: none numbered yet).
    held: u64,
    /// Since when (unix ms) and how many answers in a row were older.
    behind: Option<(u64, u32)>,
}

/// How long only older answers must come before they are taken anyway.
pub const REGRESSION_AFTER: Duration = Duration::from_secs(60);
/// How many older answers in a row must come before they are taken anyway.
pub const REGRESSION_ANSWERS: u32 = 30;

impl AssignmentOrder {
    /// Whether to take a list computed at `index`, received at `now` (unix
    /// ms); a list taken becomes the one held.
    pub fn accept(&mut self, index: u64, now: u64) -> bool {
        if index == 0 {
            return true;
        }
        if index >= self.held {
            self.held = index;
            self.behind = None;
            return true;
        }
        let (since, answers) = self.behind.get_or_insert((now, 0));
        *answers += 1;
        if now.saturating_sub(*since) >= REGRESSION_AFTER.as_millis() as u64 && *answers >= REGRESSION_ANSWERS {
            tracing::warn!(held = self.held, index, "the managers' log index went back for good; taking their lists");
            self.held = index;
            self.behind = None;
            return true;
        }
        false
    }

    /// The index of the list held.
    pub fn held(&self) -> u64 {
        self.held
    }
}

/// The assignment list the worker holds, where it goes (the supervisor's
/// watch channel and the worker's store), and its order.
struct Held<S> {
    order: AssignmentOrder,
    version: String,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
    store: S,
}

impl<S: Fn(&[Assignment])> Held<S> {
    /// Takes `reply`'s list unless it is older than the one held; passes it
    /// on if it differs. Returns whether it was taken.
    fn take(&mut self, reply: HeartbeatReply, from: &str) -> bool {
        if !self.order.accept(reply.index, unix_ms()) {
            tracing::debug!(manager = from, index = reply.index, held = self.order.held(), "ignoring an older list");
            return false;
        }
        self.version = reply.version;
        let fresh = Some(reply.assignments);
        if *self.assignments.borrow() != fresh {
            if let Some(list) = &fresh {
                tracing::info!(tasks = list.len(), index = reply.index, manager = from, "new assignments");
                (self.store)(list);
            }
            let _ = self.assignments.send(fresh);
        }
        true
    }
}

/// Where the long poll goes: the manager that last answered a heartbeat,
/// and the version of the list the worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PollTarget {
    manager: String,
    version: String,
}

/// How long one long poll asks the manager to wait.
const POLL_WAIT: Duration = Duration::from_secs(10);
/// Added to [`POLL_WAIT`] for the request's own timeout.
const POLL_MARGIN: Duration = Duration::from_secs(5);
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Sends heartbeats forever; passes each assignment list on (and stores
/// it). Alongside, a long poll on the node's assignments brings new lists
/// as soon as the leader commits them (see [`long_poll_loop`]); it only
/// ever speeds things up, the heartbeats work without it.
pub async fn heartbeat_loop(
    config: HeartbeatConfig,
    status: Arc<Mutex<Status>>,
    store_assignments: impl Fn(&[Assignment]) + Send,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
) {
    let (target_tx, target_rx) = watch::channel(None);
    let (polled_tx, polled_rx) = mpsc::channel(4);
    let held =
        Held { order: AssignmentOrder::default(), version: String::new(), assignments, store: store_assignments };
    let poll = long_poll_loop(config.node.clone(), config.token.clone(), config.tls.clone(), target_rx, polled_tx);
    tokio::select! {
        _ = heartbeats(config, status, held, target_tx, polled_rx) => {}
        _ = poll => {}
    }
}

async fn heartbeats(
    config: HeartbeatConfig,
    status: Arc<Mutex<Status>>,
    mut held: Held<impl Fn(&[Assignment])>,
    target: watch::Sender<Option<PollTarget>>,
    mut polled: mpsc::Receiver<(String, HeartbeatReply)>,
) {
    let client = match goat_raft::tls::client_builder(config.tls.as_ref()).timeout(HEARTBEAT_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; no heartbeats will be sent");
            return;
        }
    };
    let mut current = 0usize;
    let mut interval = config.interval;
    let mut connected = false;
    let changed = status.lock().unwrap_or_else(|e| e.into_inner()).changed.clone();
    // Points the long poll at `manager` with the list held (not before a
    // manager sends versions).
    let aim = |held: &Held<_>, manager: &str| {
        let next = (!held.version.is_empty())
            .then(|| PollTarget { manager: manager.to_string(), version: held.version.clone() });
        target.send_if_modified(|t| {
            let differs = *t != next;
            *t = next;
            differs
        });
    };
    loop {
        let sent_at = tokio::time::Instant::now();
        let heartbeat = {
            let status = status.lock().unwrap_or_else(|e| e.into_inner());
            Heartbeat {
                capacity: config.capacity,
                usage: status.usage,
                engine: status.engine.clone(),
                tasks: status.reports.clone(),
                advertise: config.advertise.clone(),
            }
        };
        // Try each manager once, starting with the one that answered last.
        // A manager that does not answer, or answers 503 (a leader that
        // cannot confirm it still leads, a follower without a leader), is
        // passed over at once.
        let mut accepted = None;
        let mut unauthorized = false;
        let mut passed_over = None;
        for i in 0..config.managers.len() {
            let idx = (current + i) % config.managers.len();
            let manager = &config.managers[idx];
            match send(&client, manager, &config, &heartbeat).await {
                Sent::Accepted(reply) => {
                    if connected && idx != current {
                        let (previous, why) = passed_over.take().unwrap_or_default();
                        tracing::info!(%manager, previous, why, "heartbeats go to another manager");
                    }
                    current = idx;
                    accepted = Some(reply);
                    break;
                }
                Sent::Unreachable(why) => {
                    tracing::debug!(manager, why, "manager unreachable, trying the next");
                    passed_over.get_or_insert((manager.clone(), why));
                }
                Sent::Unauthorized(why) => {
                    tracing::error!(manager, why, "manager refused this worker's token; check --token / GOAT_TOKEN");
                    unauthorized = true;
                    break;
                }
            }
        }
        match accepted {
            Some(reply) => {
                status.lock().unwrap_or_else(|e| e.into_inner()).last_manager_contact = Some(unix_ms());
                let manager = &config.managers[current];
                if !connected {
                    tracing::info!(%manager, "heartbeat accepted");
                    connected = true;
                }
                interval =
                    reply.heartbeat_interval.as_duration().clamp(Duration::from_millis(100), Duration::from_secs(10));
                held.take(reply, manager);
                aim(&held, manager);
            }
            None if unauthorized => {
                connected = false;
                target.send_replace(None);
                tokio::time::sleep(UNAUTHORIZED_RETRY).await;
                continue;
            }
            None => {
                if connected {
                    tracing::warn!("no manager reachable; carrying on with the last assignments");
                    connected = false;
                }
                current = (current + 1) % config.managers.len().max(1);
            }
        }
        // The next one at the period, or sooner when a report changed;
        // meanwhile, take what the long poll brings.
        let next = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = changed.notified() => {
                    tokio::time::sleep_until(sent_at + MIN_HEARTBEAT_GAP).await;
                    break;
                }
                Some((manager, reply)) = polled.recv() => {
                    if held.take(reply, &manager) && connected {
                        aim(&held, &config.managers[current]);
                    }
                }
            }
        }
    }
}

/// The long poll: asks the manager the heartbeats reach for the node's
/// assignments once they differ from the list held, and hands each answer
/// to the heartbeat loop (which applies the index order). On any error it
/// backs off; the heartbeats carry on meanwhile.
async fn long_poll_loop(
    node: String,
    token: String,
    tls: Option<goat_raft::tls::Tls>,
    mut target: watch::Receiver<Option<PollTarget>>,
    polled: mpsc::Sender<(String, HeartbeatReply)>,
) {
    let scheme = goat_raft::tls::scheme(tls.as_ref());
    let client = match goat_raft::tls::client_builder(tls.as_ref()).timeout(POLL_WAIT + POLL_MARGIN).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the HTTP client; no long polls, heartbeats only");
            return std::future::pending().await;
        }
    };
    let mut backoff = POLL_BACKOFF_MIN;
    // The version the manager polled last answered, with that manager: the
    // next poll names it, so that an answer the heartbeat loop ignored
    // (older) is not sent again at once.
    let mut answered: Option<PollTarget> = None;
    loop {
        let Some(aim) = target.borrow_and_update().clone() else {
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        let after = match &answered {
            Some(last) if last.manager == aim.manager => last.version.clone(),
            _ => aim.version.clone(),
        };
        let url = format!(
            "{scheme}://{}/v1/nodes/{node}/assignments?after={after}&wait={}ms",
            aim.manager,
            POLL_WAIT.as_millis()
        );
        let outcome = match client.get(&url).bearer_auth(&token).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::NOT_MODIFIED => Ok(None),
            Ok(response) if response.status().is_success() => {
                response.json::<HeartbeatReply>().await.map(Some).map_err(|e| format!("bad answer: {e}"))
            }
            Ok(response) => Err(response.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Some(reply)) if reply.version != after && !reply.version.is_empty() => {
                backoff = POLL_BACKOFF_MIN;
                answered = Some(PollTarget { manager: aim.manager.clone(), version: reply.version.clone() });
                if polled.send((aim.manager, reply)).await.is_err() {
                    return;
                }
            }
            Ok(None) => backoff = POLL_BACKOFF_MIN,
            // An unchanged list answered at once: a manager that does not
            // wait. Poll no faster than the backoff.
            Ok(Some(_)) => tokio::time::sleep(POLL_BACKOFF_MIN).await,
            Err(why) => {
                tracing::debug!(manager = %aim.manager, why, retry_in = ?backoff, "long poll failed; heartbeats carry on");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Another manager answers the heartbeats: try it now.
                    Ok(_) = target.wait_for(|t| t.as_ref().is_some_and(|t| t.manager != aim.manager)) => {}
                }
                backoff = (backoff * 2).min(POLL_BACKOFF_MAX);
            }
        }
    }
}

async fn send(client: &reqwest::Client, manager: &str, config: &HeartbeatConfig, heartbeat: &Heartbeat) -> Sent {
    let scheme = goat_raft::tls::scheme(config.tls.as_ref());
    let url = format!("{scheme}://{manager}/v1/nodes/{}/heartbeat", config.node);
    let response = match client.post(&url).bearer_auth(&config.token).json(heartbeat).send().await {
        Ok(response) => response,
        Err(e) => return Sent::Unreachable(e.to_string()),
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Sent::Unauthorized(status.to_string());
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Sent::Unreachable(format!("{status}: {}", body.chars().take(200).collect::<String>()));
    }
    match response.json::<HeartbeatReply>().await {
        Ok(reply) => Sent::Accepted(reply),
        Err(e) => Sent::Unreachable(format!("bad reply: {e}")),
    }
}

/// The machine's capacity: cores, memory, and free disk under `data_dir`.
pub fn detect_capacity(data_dir: &Path) -> Resources {
    let cpu = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_meminfo(&text)).unwrap_or(0);
    let disk = free_disk(data_dir).unwrap_or(0);
    Resources { cpu, memory, disk }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes available to unprivileged users on the filesystem of `path`.
fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Lowers a detected capacity by the operator's limits.
pub fn limit_capacity(detected: Resources, cpus: Option<f64>, memory: Option<u64>, disk: Option<u64>) -> Resources {
    Resources {
        cpu: cpus.map_or(detected.cpu, |c| c.min(detected.cpu)),
        memory: memory.map_or(detected.memory, |m| m.min(detected.memory)),
        disk: disk.map_or(detected.disk, |d| d.min(detected.disk)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-trick HTTP server: answers every request with `status` and
    /// `body`, and keeps the raw requests it got.
    async fn fake_manager(status: &'static str, body: String) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                // Read until the headers and the announced body are in.
                while let Ok(m) = s.read(&mut buf[n..]).await {
                    if m == 0 {
                        break;
                    }
                    n += m;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).to_string());
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn status() -> Arc<Mutex<Status>> {
        Arc::new(Mutex::new(Status::new(EngineStatus { healthy: true, error: None })))
    }

    #[tokio::test]
    async fn heartbeat_moves_past_dead_and_failing_managers() {
        // Nothing listens on the first; the second answers 503; the third works.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (failing, failing_seen) = fake_manager("503 Service Unavailable", "{}".into()).await;
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "100ms"}).to_string();
        let (good, good_seen) = fake_manager("200 OK", reply).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![dead, failing, good],
            token: "secret".into(),
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            interval: Duration::from_millis(100),
            tls: None,
            advertise: None,
        };
        let (tx, mut rx) = watch::channel(None);
        let stored = Arc::new(Mutex::new(None));
        let keep = stored.clone();
        let task = tokio::spawn(heartbeat_loop(config, status(), move |a| *keep.lock().unwrap() = Some(a.len()), tx));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| a.is_some())).await.unwrap().unwrap();
        task.abort();
        assert_eq!(*stored.lock().unwrap(), Some(0));
        assert!(!failing_seen.lock().unwrap().is_empty());
        let request = good_seen.lock().unwrap()[0].clone();
        assert!(request.starts_with("POST /v1/nodes/n1/heartbeat "), "{request}");
        assert!(request.to_ascii_lowercase().contains("authorization: bearer secret"), "{request}");
        let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
        let hb: Heartbeat = serde_json::from_str(body).unwrap();
        assert_eq!(hb.capacity.cpu, 2.0);
        assert!(hb.engine.healthy);
    }

    #[tokio::test]
    async fn a_refused_token_is_not_accepted_and_retried_slowly() {
        let (refusing, seen) = fake_manager("401 Unauthorized", "{}".into()).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![refusing],
            token: "wrong".into(),
            capacity: Resources::default(),
            interval: Duration::from_millis(50),
            tls: None,
            advertise: None,
        };
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status(), |_| {}, tx));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        task.abort();
        assert!(rx.borrow().is_none(), "a refused node has no assignments");
        // One try, then it waits UNAUTHORIZED_RETRY instead of hammering.
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn self_fencing_is_off_by_default_and_counts_from_the_last_contact() {
        let limit = Some(Duration::from_secs(30));
        // Off unless asked for, however long the managers are gone.
        assert!(!manager_loss_fence(None, None, 0, u64::MAX));
        assert!(!manager_loss_fence(None, Some(1), 0, 10_000_000));
        // Counted from the last accepted heartbeat.
        assert!(!manager_loss_fence(limit, Some(100_000), 0, 129_999));
        assert!(manager_loss_fence(limit, Some(100_000), 0, 130_000));
        // Never reached a manager: counted from the worker's start.
        assert!(!manager_loss_fence(limit, None, 50_000, 79_999));
        assert!(manager_loss_fence(limit, None, 50_000, 80_000));
        // A contact from before this worker started counts as its start.
        assert!(!manager_loss_fence(limit, Some(10), 50_000, 60_000));
        // A clock that went backwards never fences.
        assert!(!manager_loss_fence(limit, Some(200_000), 0, 100_000));
    }

    #[tokio::test]
    async fn a_changed_report_sends_a_heartbeat_before_the_period() {
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "10s"}).to_string();
        let (manager, seen) = fake_manager("200 OK", reply).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![manager],
            token: "t".into(),
            capacity: Resources::default(),
            interval: Duration::from_secs(10),
            tls: None,
            advertise: None,
        };
        let status = status();
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status.clone(), |_| {}, tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no first heartbeat");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(status.lock().unwrap().last_manager_contact.is_some());
        status.lock().unwrap().changed.notify_one();
        while seen.lock().unwrap().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the change did not send a heartbeat early");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }

    #[test]
    fn lists_are_taken_in_index_order_only() {
        let mut order = AssignmentOrder::default();
        assert!(order.accept(5, 1_000));
        assert!(order.accept(5, 1_001), "the same index: the same state, taken");
        assert!(order.accept(9, 1_002));
        // A heartbeat answer computed before the long poll's arrives after it.
        assert!(!order.accept(7, 1_003));
        assert_eq!(order.held(), 9);
        // A new leader still catching up: ignored until it passes the index.
        assert!(!order.accept(8, 1_004));
        assert!(order.accept(10, 1_005));
        // A manager that does not number its answers: taken, as before.
        assert!(order.accept(0, 1_006));
        assert_eq!(order.held(), 10);
    }

    #[test]
    fn a_log_that_started_over_is_followed_after_a_long_run_of_older_lists() {
        let mut order = AssignmentOrder::default();
        assert!(order.accept(1_000, 0));
        let limit = REGRESSION_AFTER.as_millis() as u64;
        // Many answers, but not for long enough: ignored.
        for i in 0..100 {
            assert!(!order.accept(3, 1 + i));
        }
        // Long enough but one answer in between was current: counting restarts.
        assert!(order.accept(1_000, 200));
        let mut now = 300;
        for _ in 0..REGRESSION_ANSWERS - 1 {
            assert!(!order.accept(4, now));
            now += 3_000;
        }
        assert!(now - 300 >= limit);
        assert!(order.accept(4, now), "older for a minute and 30 answers in a row: the log started over");
        assert_eq!(order.held(), 4);
        assert!(order.accept(5, now + 1));
    }

    fn reply(index: u64, version: &str, tasks: u128) -> HeartbeatReply {
        let assignments = (0..tasks)
            .map(|i| Assignment {
                task_id: uuid::Uuid::from_u128(i + 1),
                generation: 1,
                desired: DesiredStatus::Run,
                spec: serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap(),
            })
            .collect();
        HeartbeatReply { assignments, heartbeat_interval: goat_storage::Millis(1_000), index, version: version.into() }
    }

    #[test]
    fn an_older_list_never_replaces_a_newer_one() {
        let (tx, rx) = watch::channel(None);
        let stored = Arc::new(Mutex::new(Vec::new()));
        let keep = stored.clone();
        let store = move |a: &[Assignment]| keep.lock().unwrap().push(a.len());
        let mut held = Held { order: AssignmentOrder::default(), version: String::new(), assignments: tx, store };
        // The long poll brings two tasks at index 12...
        assert!(held.take(reply(12, "b2", 2), "m1"));
        // ...then a heartbeat answer computed at index 10 (one task) lands.
        assert!(!held.take(reply(10, "b1", 1), "m1"));
        assert_eq!(rx.borrow().as_ref().map(Vec::len), Some(2));
        assert_eq!(held.version, "b2");
        // The same list again changes nothing and stores nothing.
        assert!(held.take(reply(13, "b2", 2), "m2"));
        assert_eq!(*stored.lock().unwrap(), [2]);
    }

    #[tokio::test]
    async fn the_long_poll_names_the_list_held_to_the_manager_that_answered() {
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "10s", "index": 5, "version": "00aa"});
        let (manager, seen) = fake_manager("200 OK", reply.to_string()).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![manager],
            token: "t".into(),
            capacity: Resources::default(),
            interval: Duration::from_secs(10),
            tls: None,
            advertise: None,
        };
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status(), |_| {}, tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let poll = loop {
            let found = seen.lock().unwrap().iter().find(|r| r.starts_with("GET ")).cloned();
            if let Some(request) = found {
                break request;
            }
            assert!(tokio::time::Instant::now() < deadline, "no long poll");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        task.abort();
        assert!(poll.starts_with("GET /v1/nodes/n1/assignments?after=00aa&wait=10000ms "), "{poll}");
        assert!(poll.to_ascii_lowercase().contains("authorization: bearer t"), "{poll}");
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16303872 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(16_303_872 * 1024));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn capacity_is_detected_and_lowered() {
        let dir = tempfile::tempdir().unwrap();
        let detected = detect_capacity(dir.path());
        assert!(detected.cpu >= 1.0);
        assert!(detected.memory > 0);
        assert!(detected.disk > 0);
        let limited = limit_capacity(detected, Some(0.5), Some(1024), None);
        assert_eq!(limited.cpu, 0.5);
        assert_eq!(limited.memory, 1024);
        assert_eq!(limited.disk, detected.disk);
        // Limits never raise the capacity.
        let raised = limit_capacity(detected, Some(10_000.0), None, None);
        assert_eq!(raised.cpu, detected.cpu);
    }
}
