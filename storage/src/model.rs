//! The task model: what a user asks for (`TaskSpec`), what the cluster knows
//! about it (`Task`), the workers tasks run on (`Node`), and the messages a
//! worker and the leader exchange (`Heartbeat`, `Assignment`).
//!
//! Everything here is plain data. It is serialized two ways: as JSON on the
//! public API (unknown fields rejected, so a typo is an error), and with
//! bincode inside Raft entries and snapshots. Bincode is not self-describing,
//! so these types avoid `skip_serializing_if`, `flatten` and untagged enums.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::duration::Millis;

/// Milliseconds since the Unix epoch. Stamped by the manager that builds a
/// command, never read from a clock inside the state machine.
pub type Timestamp = u64;

/// The id of a task: a UUID v4 assigned by the manager that accepts it.
pub type TaskId = Uuid;

/// What a user submits: the desired shape of one containerized task.
/// (Its `Debug` redacts `secret_env`, so a log line never holds a secret.)
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Docker-style name: 1–63 characters of `[a-zA-Z0-9_.-]`, starting with
    /// a letter or digit.
    #[schema(min_length = 1, max_length = 63, pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    pub name: String,
    /// A local image reference, e.g. `goat-echo:latest`: not empty, no
    /// spaces, at most 255 characters.
    /// (Docker's references are ASCII: other characters are refused.)
    #[schema(min_length = 1, max_length = 255, pattern = r"^[!-~]+$")]
    pub image: String,
    /// Command and arguments; empty means the image's default. No NUL.
    #[serde(default)]
    #[schema(schema_with = field_schemas::cmd)]
    pub cmd: Vec<String>,
    /// Environment variables: names not empty, without `=`; no NUL anywhere.
    #[serde(default)]
    #[schema(schema_with = field_schemas::env)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: given to the
    /// container like `env`, but never shown by a read, an event or a log
    /// (the API answers [`SECRET_PLACEHOLDER`] for each value). Only the
    /// worker that runs the task, and a backup, hold them in clear.
    #[serde(default)]
    #[schema(schema_with = field_schemas::secret_env)]
    pub secret_env: BTreeMap<String, String>,
    /// CPU reserved, in cores (0.5 = half a core). A scheduling reservation,
    /// enforced on the node as a relative weight (CPU shares) unless
    /// `cpu_hard_limit` is set.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1024)]
    pub cpu: f64,
    /// Also cap the container at `cpu` cores (a CFS quota, Docker's
    /// `NanoCpus`), like Nomad's `cpu_hard_limit`. Off by default: a hard
    /// quota throttles even the container's start. Needs `cpu` above 0.
    #[serde(default)]
    pub cpu_hard_limit: bool,
    /// Memory reserved and enforced as the container's limit, in bytes:
    /// 0 (no limit), or 6 MiB to 16 TiB.
    #[serde(default)]
    #[schema(schema_with = memory_schema)]
    pub memory: u64,
    /// Disk reserved on the node, in bytes (the image included).
    #[serde(default)]
    #[schema(maximum = 1_125_899_906_842_624_u64)]
    pub disk: u64,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub reschedule_policy: ReschedulePolicy,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    #[schema(schema_with = field_schemas::labels)]
    pub labels: BTreeMap<String, String>,
    /// How to rank the nodes the task fits on; absent = the cluster's
    /// default (`goat manager --scheduler`).
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// How long to wait for the task's node to come back when it goes
    /// `down` (Nomad's `max_client_disconnect`). Meanwhile the task is
    /// `unknown` and is not moved: if the node returns in time the task
    /// carries on where it is, same container, no restart. Absent: the
    /// task is moved to another node as soon as its node is down.
    #[serde(default)]
    pub disconnect_window: Option<Millis>,
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.redacted()) {
            Ok(json) => write!(f, "TaskSpec{json}"),
            Err(_) => write!(f, "TaskSpec {{ name: {:?}, .. }}", self.name),
        }
    }
}

/// What the API shows instead of a secret value.
pub const SECRET_PLACEHOLDER: &str = "<secret>";

impl TaskSpec {
    /// This spec with every `secret_env` value replaced by
    /// [`SECRET_PLACEHOLDER`]: what reads show.
    pub fn redacted(&self) -> TaskSpec {
        let mut spec = self.clone();
        for value in spec.secret_env.values_mut() {
            *value = SECRET_PLACEHOLDER.to_string();
        }
        spec
    }
}

impl Task {
    /// This task with its secret values redacted (see [`TaskSpec::redacted`]).
    pub fn redacted(&self) -> Task {
        let mut task = self.clone();
        if !task.spec.secret_env.is_empty() {
            task.spec = task.spec.redacted();
        }
        task
    }
}

/// What an API token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read: `GET` routes, events, metrics (not backups, not tokens).
    Read,
    /// `read`, plus submitting and stopping tasks.
    Submit,
    /// Everything: nodes, drains, members, backups, restore, tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

/// An API token as the cluster keeps it: its secret only as a SHA-256
/// hash (hex), so the replicated state, snapshots and backups never hold
/// a usable secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiToken {
    /// A short random id (hex), shown by listings and used to revoke.
    pub id: String,
    /// A label chosen by the operator.
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
}

/// How the scheduler ranks the nodes a task fits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The fullest node that fits: keeps whole nodes free for big tasks.
    #[default]
    BinPack,
    /// The emptiest node: spreads load and the blast radius of a lost node.
    Spread,
    /// Enhanced PVM: the node where the task raises the cluster's cost the
    /// least, with a cost exponential in each resource's load.
    Epvm,
}

/// One published port. `host: None` lets the worker's engine pick a free
/// host port; the chosen port is reported back in the task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    #[schema(minimum = 1, maximum = 65535)]
    pub container: u16,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub host: Option<u16>,
}

/// When a worker restarts a task's container after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never restart: an exit ends the task (`completed` on 0, else `failed`).
    Never,
    /// Restart on a non-zero exit, an OOM kill or a failed health check.
    #[default]
    OnFailure,
    /// Restart on any exit.
    Always,
}

/// A task's restart policy, applied by the worker next to the container so
/// that a crash is repaired even while no manager is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Restarts allowed before the task is reported `failed`; 0 = unlimited.
    pub max_attempts: u32,
    /// Delay before the first restart; doubles each time (with jitter).
    /// At least 100ms.
    #[schema(schema_with = field_schemas::initial_delay)]
    pub initial_delay: Millis,
    /// Upper bound of the delay: not less than `initial_delay`, and at
    /// least 1s when `max_attempts` is 0.
    pub max_delay: Millis,
    /// A container that has run this long counts as stable: the attempt
    /// counter and the delay start over.
    pub reset_after: Millis,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: 5,
            initial_delay: Millis(200),
            max_delay: Millis(30_000),
            reset_after: Millis(60_000),
        }
    }
}

/// What the leader does with a task that failed on its node (restarts ran
/// out, image missing): place it again, preferably on another node, at most
/// `attempts` times within `interval`, waiting `delay` (doubling up to
/// `max_delay`) after each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReschedulePolicy {
    /// Reschedules allowed within `interval`; 0 = a failed task stays failed.
    pub attempts: u32,
    pub interval: Millis,
    pub delay: Millis,
    /// Not less than `delay`.
    pub max_delay: Millis,
}

impl Default for ReschedulePolicy {
    fn default() -> Self {
        ReschedulePolicy { attempts: 3, interval: Millis(3_600_000), delay: Millis(5_000), max_delay: Millis(60_000) }
    }
}

/// A health check run by the worker next to the task: an HTTP GET of `path`
/// on the container's `port` (2xx/3xx = healthy), or a TCP connect when
/// `path` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An absolute URL path (`/health`), no spaces.
    #[serde(default)]
    #[schema(pattern = r"^/[^\s\x00-\x1f\x7f-\x9f]*$")]
    pub path: Option<String>,
    /// Container port to probe.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Between probes: at least 100ms.
    #[serde(default = "HealthCheck::default_interval")]
    #[schema(schema_with = field_schemas::health_interval)]
    pub interval: Millis,
    /// A probe's timeout: more than 0.
    #[serde(default = "HealthCheck::default_timeout")]
    #[schema(schema_with = field_schemas::health_timeout)]
    pub timeout: Millis,
    /// Consecutive failures that make the task unhealthy.
    #[serde(default = "HealthCheck::default_failure_threshold")]
    #[schema(minimum = 1)]
    pub failure_threshold: u32,
    /// Grace period after start during which failures do not count.
    #[serde(default)]
    pub start_period: Millis,
}

impl HealthCheck {
    fn default_interval() -> Millis {
        Millis(1_000)
    }
    fn default_timeout() -> Millis {
        Millis(1_000)
    }
    fn default_failure_threshold() -> u32 {
        3
    }
}

/// The lifecycle of a task. See [`TaskState::can_become`] for the allowed
/// transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for a node (`reason` says why, if it waits long).
    Pending,
    /// Placed on a node; its container is not (or not yet again) running.
    Scheduled,
    /// Its container runs on `node`.
    Running,
    /// Stopped on request, or exited 0 under a policy that does not restart.
    Completed,
    /// Gave up: restarts ran out, or it could not start (`reason` says why).
    Failed,
    /// Its node is `down` and the task waits, within its
    /// `disconnect_window`, for the node to come back: it may well still run
    /// there. Back in time, the node's report makes it `running` again (same
    /// container); past the window it is moved (`pending`). Declared last:
    /// bincode stores a variant by its position.
    Unknown,
}

impl TaskState {
    /// Every state, in declaration order (for listings such as metrics).
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Unknown,
    ];

    /// The table of allowed transitions. Staying in the same state is always
    /// allowed (it is an update of other fields, not a transition).
    ///
    /// | from      | to                                                      |
    /// |-----------|---------------------------------------------------------|
    /// | pending   | scheduled, completed (stopped), failed                  |
    /// | scheduled | running, pending (node lost), unknown (node down, window), completed, failed |
    /// | running   | scheduled (restarting), pending (node lost), unknown (node down, window), completed, failed |
    /// | unknown   | scheduled, running (node back in time), pending (window over, drain), completed, failed |
    /// | failed    | pending (rescheduled elsewhere)                          |
    /// | completed | — (terminal)                                            |
    pub fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        if self == to {
            return true;
        }
        matches!(
            (self, to),
            (Pending, Scheduled | Completed | Failed)
                | (Scheduled, Running | Pending | Unknown | Completed | Failed)
                | (Running, Scheduled | Pending | Unknown | Completed | Failed)
                | (Unknown, Scheduled | Running | Pending | Completed | Failed)
                | (Failed, Pending)
        )
    }

    /// Completed and failed tasks hold no resources on any node.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user wants for a task: keep it running, or stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredStatus {
    #[default]
    Run,
    Stop,
}

/// The health of a task as its worker's checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No health check, or not yet decided.
    #[default]
    Unknown,
    /// Within its start period.
    Starting,
    Healthy,
    Unhealthy,
}

/// One entry of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEvent {
    /// Its place in the cluster's event stream, the same on every manager
    /// (see [`crate::events`]).
    pub index: u64,
    #[schema(value_type = u64)]
    pub at: Timestamp,
    pub state: TaskState,
    pub node: Option<String>,
    pub reason: Option<String>,
}

/// A task as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    #[schema(schema_with = TaskSpec::stored_schema)]
    pub spec: TaskSpec,
    pub state: TaskState,
    pub desired: DesiredStatus,
    /// The node the task is placed on, if any.
    pub node: Option<String>,
    /// Placement generation: bumped at each placement, carried by the
    /// container's labels, so a copy from an older placement is recognised
    /// as stale and stopped (fencing).
    pub generation: u64,
    /// Restarts of the container on its node, as counted by the worker.
    pub restarts: u32,
    /// Why the task is pending or failed, or what it is waiting for.
    pub reason: Option<String>,
    pub health: Health,
    pub container_id: Option<String>,
    /// Published ports as bound on the node: container port → host port.
    #[schema(schema_with = field_schemas::host_ports)]
    pub host_ports: BTreeMap<u16, u16>,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
    pub events: Vec<TaskEvent>,
    /// When the leader rescheduled the task after failures (newest last).
    #[schema(value_type = Vec<u64>)]
    pub reschedules: Vec<Timestamp>,
    /// The node the task last failed on: placement avoids it if it can.
    pub failed_on: Option<String>,
    /// The service (and version) this task is a copy of, if any.
    pub service: Option<ServiceRef>,
    /// Since when its worker has reported it healthy without a break (the
    /// `at` of that report): what `min_healthy_time` is measured from.
    #[schema(value_type = Option<u64>)]
    pub healthy_since: Option<Timestamp>,
}

impl Task {
    /// Forgets what the task's last placement left: its container, its host
    /// ports, its health. (Its node, generation and restarts are each
    /// caller's business.)
    pub fn forget_placement(&mut self) {
        self.container_id = None;
        self.host_ports.clear();
        self.health = Health::Unknown;
        self.healthy_since = None;
    }

    /// Whether the task counts as a healthy copy: running, and healthy by
    /// its check (or running without a check).
    pub fn is_healthy(&self) -> bool {
        self.state == TaskState::Running
            && match self.health {
                Health::Healthy => true,
                Health::Unknown => self.spec.health_check.is_none(),
                Health::Starting | Health::Unhealthy => false,
            }
    }
}

/// Resources in the units of `TaskSpec`: cores and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu: f64,
    pub memory: u64,
    pub disk: u64,
}

impl Resources {
    /// What a task reserves.
    pub fn of(spec: &TaskSpec) -> Resources {
        Resources { cpu: spec.cpu, memory: spec.memory, disk: spec.disk }
    }
}

/// A node's standing in the cluster: `down` if it missed its heartbeat
/// deadline; otherwise `draining` if an operator drained it, else `ready`.
/// Whether it is drained is kept apart (`Node::drain`), so a drained node
/// that goes down and comes back is still drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeating; takes tasks if its engine is healthy.
    Ready,
    /// Missed its heartbeat deadline.
    Down,
    /// Heartbeating, drained: keeps nothing, takes nothing new.
    Draining,
}

impl NodeStatus {
    /// The name the API uses (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Draining => "draining",
        }
    }
}

/// A worker as the cluster stores it. Its liveness deadline lives in the
/// leader's memory, not here: only changes of status go through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub name: String,
    pub status: NodeStatus,
    pub capacity: Resources,
    /// Whether the node's Docker engine answered at its last report.
    pub engine_healthy: bool,
    pub engine_error: Option<String>,
    #[schema(value_type = u64)]
    pub registered_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
    /// An operator drained the node (`PUT /v1/nodes/{name}/drain`): it takes
    /// no task, whether it is up, down or back.
    pub drain: bool,
    /// The address clients reach the node's published ports at, as its
    /// worker reports it (`goat worker --advertise`).
    pub address: Option<String>,
    /// The last changes of its status (registered, down, ready, draining).
    pub events: Vec<NodeEvent>,
}

/// One entry of a node's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeEvent {
    /// Its place in the cluster's event stream (see [`crate::events`]).
    pub index: u64,
    #[schema(value_type = u64)]
    pub at: Timestamp,
    pub status: NodeStatus,
    pub reason: Option<String>,
}

/// A task's state as a worker observes it on its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    /// The worker is creating or starting its container.
    Starting,
    Running,
    /// Exited and waiting out its restart delay.
    Restarting,
    /// Exited 0 under a policy that does not restart it, or stopped on request.
    Completed,
    /// Gave up (attempts exhausted, image missing, ...).
    Failed,
}

impl ObservedState {
    /// The task state a worker's observation stands for.
    pub fn task_state(self) -> TaskState {
        match self {
            ObservedState::Starting | ObservedState::Restarting => TaskState::Scheduled,
            ObservedState::Running => TaskState::Running,
            ObservedState::Completed => TaskState::Completed,
            ObservedState::Failed => TaskState::Failed,
        }
    }
}

/// One task's status in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    pub task_id: Uuid,
    pub generation: u64,
    pub state: ObservedState,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    #[schema(schema_with = field_schemas::host_ports)]
    pub host_ports: BTreeMap<u16, u16>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub reason: Option<String>,
}

impl TaskReport {
    /// `task_id` at `generation` runs in `container_id`, and nothing more
    /// is known (no ports, health not decided, no restarts): what the
    /// benchmarks' and the simulation's stand-in workers report.
    pub fn running(task_id: TaskId, generation: u64, container_id: impl Into<String>) -> TaskReport {
        TaskReport {
            task_id,
            generation,
            state: ObservedState::Running,
            container_id: Some(container_id.into()),
            exit_code: None,
            host_ports: BTreeMap::new(),
            health: Health::Unknown,
            restarts: 0,
            reason: None,
        }
    }
}

/// The health of a worker's Docker engine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineStatus {
    pub healthy: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// What a worker sends every second or so to
/// `POST /v1/nodes/{name}/heartbeat` (the first one registers the node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub capacity: Resources,
    #[serde(default)]
    pub usage: Resources,
    pub engine: EngineStatus,
    /// Reports on the node's tasks: all of them, or (from a worker that
    /// sends deltas) only those that changed since its last accepted
    /// heartbeat. The leader commits only differences from the stored
    /// state and infers nothing from a task's absence, so both mean the
    /// same to it.
    #[serde(default)]
    pub tasks: Vec<TaskReport>,
    /// The version of the assignment list the worker holds (see
    /// [`HeartbeatReply::version`]). When it is still current, the leader
    /// answers with no list (`unchanged`), which keeps an unchanged
    /// heartbeat's answer small whatever the node holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The address clients reach this node's published ports at.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// One task a node should hold, as the leader answers a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub task_id: Uuid,
    pub generation: u64,
    pub desired: DesiredStatus,
    #[schema(schema_with = TaskSpec::stored_schema)]
    pub spec: TaskSpec,
}

/// The leader's answer to a heartbeat (and to a long poll on the node's
/// assignments): the complete list of tasks the node should hold. A
/// container of a task not listed here (or listed with a different
/// generation) is stale and must be stopped and removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub assignments: Vec<Assignment>,
    /// How long until the worker should send its next heartbeat.
    pub heartbeat_interval: Millis,
    /// The applied Raft log index the list was computed at. Answers can
    /// arrive out of order (a heartbeat and a long poll in flight together):
    /// the worker never replaces a list with one computed at a lower index.
    /// 0 from a manager that does not number its answers.
    #[serde(default)]
    pub index: u64,
    /// A fingerprint of the list (its tasks, generations and desired
    /// statuses), which the worker's long poll names as the list it holds.
    /// Empty from a manager that does not compute it.
    #[serde(default)]
    pub version: String,
    /// The list is left out: the version the heartbeat named as held is
    /// the current one (`assignments` is then empty and means nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

#[cfg(test)]
mod schema_tests {
    use serde_json::Value;
    use utoipa::openapi::{ComponentsBuilder, RefOr};
    use utoipa::ToSchema;

    use super::*;

    /// The components of the OpenAPI document as JSON, generated from the
    /// types (`utoipa::ToSchema`).
    fn components() -> Value {
        let mut schemas: Vec<(String, RefOr<utoipa::openapi::schema::Schema>)> = Vec::new();
        TaskSpec::schemas(&mut schemas);
        schemas.push((TaskSpec::name().into_owned(), <TaskSpec as utoipa::PartialSchema>::schema()));
        let components = ComponentsBuilder::new().schemas_from_iter(schemas).build();
        serde_json::to_value(components).expect("serializable")
    }

    /// The rules `validate::validate_spec` enforces are stated in the
    /// schema, so that a schema-driven fuzzer does not send "valid"
    /// requests the API refuses (empty image, port 0, bad durations).
    #[test]
    fn the_spec_schema_states_the_validation_rules() {
        let c = components();
        let spec = &c["schemas"]["TaskSpec"]["properties"];
        assert_eq!(spec["image"]["minLength"], 1, "{spec:#}");
        assert_eq!(spec["image"]["maxLength"], 255);
        assert_eq!(spec["name"]["maxLength"], 63);
        assert!(spec["name"]["pattern"].is_string());
        let port = &c["schemas"]["PortMapping"]["properties"]["container"];
        assert_eq!((port["minimum"].as_f64(), port["maximum"].as_f64()), (Some(1.0), Some(65535.0)), "{port:#}");
        let check = &c["schemas"]["HealthCheck"]["properties"]["port"];
        assert_eq!(check["minimum"].as_f64(), Some(1.0), "{check:#}");
        let required: Vec<&str> =
            c["schemas"]["TaskSpec"]["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(required, ["name", "image"]);
        // Durations: a string of the parser's pattern, or milliseconds.
        let delay = &c["schemas"]["RestartPolicy"]["properties"]["initial_delay"];
        let least = crate::duration::duration_pattern(crate::validate::MIN_RESTART_DELAY);
        assert_eq!(delay["oneOf"][0]["pattern"].as_str(), Some(&*least), "{delay:#}");
        assert_eq!(delay["oneOf"][1]["minimum"].as_f64(), Some(100.0), "{delay:#}");
        let millis = &c["schemas"]["Millis"]["oneOf"];
        assert_eq!(millis[0]["pattern"].as_str(), Some(&*crate::duration::duration_pattern(Millis(0))), "{millis:#}");
        assert_eq!(millis[1]["maximum"].as_f64(), Some(crate::duration::Millis::MAX.0 as f64));
    }
}

/// Which service (and which of its versions) a task is a copy of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRef {
    pub name: String,
    pub version: u64,
}

/// How a service's copies spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Spread {
    /// At most this many live copies on one node. Absent: as evenly as the
    /// nodes that can take copies allow, `ceil(replicas / nodes)` (so 1 when
    /// there are at least as many nodes as replicas).
    #[schema(minimum = 1)]
    pub max_per_node: Option<u32>,
}

/// How a new version replaces the copies of the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatePolicy {
    /// Copies replaced at a time (at least 1): never fewer than
    /// `replicas - max_parallel` healthy copies during an update.
    #[schema(minimum = 1)]
    pub max_parallel: u32,
    /// A new copy counts once it has been healthy this long.
    pub min_healthy_time: Millis,
    /// A new copy not healthy for `min_healthy_time` this long after it was
    /// created fails the deployment. Longer than `min_healthy_time`.
    pub healthy_deadline: Millis,
    /// A failed deployment brings the previous version back.
    pub auto_revert: bool,
    /// Start this many copies of a new version beside the old ones, then
    /// wait for `POST /v1/services/{name}/promote`. At most `replicas`.
    #[schema(maximum = 10_000)]
    pub canary: u32,
}

impl UpdatePolicy {
    /// The canaries a deployment of `replicas` copies starts: `canary`, at
    /// most `replicas`. A spec cannot ask for more (`validate_service`),
    /// but a service scaled below its `canary` can have fewer copies: then
    /// every copy is a canary (and with 0 copies there is no canary phase).
    pub fn canaries(&self, replicas: u32) -> u32 {
        self.canary.min(replicas)
    }
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_parallel: 1,
            min_healthy_time: Millis(5_000),
            healthy_deadline: Millis(60_000),
            auto_revert: false,
            canary: 0,
        }
    }
}

/// What a user applies: the desired shape of a replicated service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique; the same rules as a task name.
    #[schema(min_length = 1, max_length = 63, pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    pub name: String,
    /// Copies wanted, 0 to [`MAX_REPLICAS`].
    #[serde(default = "ServiceSpec::default_replicas")]
    #[schema(maximum = 10_000)]
    pub replicas: u32,
    /// Each copy's task spec, without `name`.
    #[schema(schema_with = TaskSpec::template_schema)]
    pub template: TaskSpec,
    #[serde(default)]
    pub spread: Spread,
    #[serde(default)]
    pub update: UpdatePolicy,
}

/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// The schemas of the spec's fields whose rules `#[schema(...)]` cannot
/// state (map keys, array items), as `validate::validate_spec` checks them.
mod field_schemas {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;

    fn text_without_nul() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[^\x00]*$"))
    }

    fn variables(description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[^=\x00]+$"))))
            .additional_properties(Some(text_without_nul()))
            .description(Some(description))
            .into()
    }

    /// A duration of at least `min`, with its default and description.
    fn duration(min: crate::Millis, default: crate::Millis, description: &str) -> RefOr<Schema> {
        let mut schema = crate::Millis::schema_at_least(min);
        schema.description = Some(description.to_string());
        schema.default = Some(serde_json::Value::String(default.to_string()));
        RefOr::T(Schema::OneOf(schema))
    }

    pub fn initial_delay() -> RefOr<Schema> {
        duration(
            crate::validate::MIN_RESTART_DELAY,
            crate::model::RestartPolicy::default().initial_delay,
            "Delay before the first restart; doubles each time (with jitter). At least 100ms.",
        )
    }

    pub fn health_interval() -> RefOr<Schema> {
        duration(crate::validate::MIN_HEALTH_INTERVAL, crate::Millis(1_000), "Between probes: at least 100ms.")
    }

    pub fn health_timeout() -> RefOr<Schema> {
        duration(crate::Millis(1), crate::Millis(1_000), "A probe's timeout: more than 0 (at least 1ms).")
    }

    pub fn cmd() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(text_without_nul())
            .description(Some("Command and arguments; empty means the image's default. No NUL."))
            .into()
    }

    pub fn env() -> RefOr<Schema> {
        variables("Environment variables: names not empty, without `=`; no NUL anywhere.")
    }

    pub fn secret_env() -> RefOr<Schema> {
        variables(
            "Environment variables whose values are secret: given to the container like `env`, but never shown \
             by a read, an event or a log (the API answers `<secret>` for each value). Same rules as `env`; a \
             name may not be in both.",
        )
    }

    fn label_keys() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255))
    }

    /// The labels a request may set.
    pub fn labels() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                // Not starting with `goat.` (reserved), without lookahead.
                label_keys().pattern(Some(r"^(?:[^g]|g(?:[^o]|$)|go(?:[^a]|$)|goa(?:[^t]|$)|goat(?:[^.]|$))")),
            ))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some("Labels: keys of 1 to 255 characters, not starting with `goat.` (reserved)."))
            .into()
    }

    /// The labels of a stored task: the user's, and Goat's own on a
    /// service's copies (`goat.service`, `goat.service.version`).
    pub fn stored_labels() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(label_keys()))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(
                "Labels: the submitted ones, and on a service's copies Goat's own (`goat.service`, \
                 `goat.service.version`).",
            ))
            .into()
    }

    /// Container port → host port. JSON object keys are strings: here the
    /// decimal port, 0 to 65535, as serde reads a `u16` key.
    pub fn host_ports() -> RefOr<Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        let port = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::UInt16)))
                .minimum(Some(0))
                .maximum(Some(u16::MAX))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(
                r"^(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
            ))))
            .additional_properties(Some(port()))
            .description(Some("Published ports as bound on the node: container port → host port."))
            .into()
    }
}

/// `TaskSpec::memory` in the OpenAPI document: 0, or 6 MiB to 16 TiB (the
/// rules of `validate::validate_spec`).
fn memory_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).enum_values(Some([0])).description(Some("no limit")))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
                .minimum(Some(crate::validate::MIN_MEMORY as f64))
                .maximum(Some(crate::validate::MAX_MEMORY as f64))
                .description(Some("bytes")),
        )
        .description(Some(
            "Memory reserved and enforced as the container's limit, in bytes: 0 (no limit), or 6 MiB to 16 TiB.",
        ))
        .into()
}

impl TaskSpec {
    /// The schema of a service's `template`: a task spec without `name`
    /// (the service names its copies; a `name` there is refused).
    pub fn template_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let mut schema = <TaskSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.properties.shift_remove("name");
            object.required.retain(|r| r != "name");
        }
        schema
    }

    /// The schema of a stored task's `spec` (what reads show): as
    /// submitted, but a service's copy also carries Goat's own labels,
    /// which a request may not set.
    pub fn stored_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let mut schema = <TaskSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.properties.insert("labels".into(), field_schemas::stored_labels());
        }
        schema
    }

    /// The schema of a stored service version's `template` (what reads
    /// show): a template whose `name` is always empty (each copy is named
    /// by the service).
    pub fn stored_template_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        use utoipa::openapi::RefOr;
        let mut schema = TaskSpec::template_schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            let empty = ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0))
                .description(Some("Always empty: the service names its copies."));
            object.properties.shift_insert(0, "name".into(), empty.into());
            object.required.insert(0, "name".into());
        }
        schema
    }
}

impl ServiceSpec {
    fn default_replicas() -> u32 {
        1
    }
}

/// One version of a service: its copies' task spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceVersion {
    pub version: u64,
    #[schema(schema_with = TaskSpec::stored_template_schema)]
    pub template: TaskSpec,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
}

/// A deployment's state. See [`DeploymentState::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Replacing old copies with new ones, `max_parallel` at a time.
    Running,
    /// Its canaries are healthy: waiting for a promote (or a rollback).
    Paused,
    /// It failed with `auto_revert`: the previous version comes back.
    Reverting,
    /// Every copy runs the new version, healthy.
    Succeeded,
    /// A new copy was not healthy in time (and no revert, or the revert
    /// failed too).
    Failed,
    /// The revert is over: every copy runs the previous version.
    Reverted,
    /// A newer version (or a rollback) replaced it before it ended.
    Superseded,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 7] = [
        DeploymentState::Running,
        DeploymentState::Paused,
        DeploymentState::Reverting,
        DeploymentState::Succeeded,
        DeploymentState::Failed,
        DeploymentState::Reverted,
        DeploymentState::Superseded,
    ];

    /// The table of allowed transitions (staying is not a transition).
    ///
    /// | from      | to                                               |
    /// |-----------|--------------------------------------------------|
    /// | running   | paused (canaries healthy), succeeded, failed, reverting, superseded |
    /// | paused    | running (promote), failed, reverting, superseded |
    /// | reverting | reverted, failed, superseded                     |
    /// | succeeded, failed, reverted, superseded | — (terminal)       |
    pub fn can_become(self, to: DeploymentState) -> bool {
        use DeploymentState::*;
        matches!(
            (self, to),
            (Running, Paused | Succeeded | Failed | Reverting | Superseded)
                | (Paused, Running | Failed | Reverting | Superseded)
                | (Reverting, Reverted | Failed | Superseded)
        )
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded
                | DeploymentState::Failed
                | DeploymentState::Reverted
                | DeploymentState::Superseded
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Running => "running",
            DeploymentState::Paused => "paused",
            DeploymentState::Reverting => "reverting",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Reverted => "reverted",
            DeploymentState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roll-out of one version over the copies of others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    /// The version being replaced (what a revert brings back).
    pub from: u64,
    /// The version being rolled out.
    pub to: u64,
    pub state: DeploymentState,
    /// Canaries were promoted (or there were none to wait for).
    pub promoted: bool,
    pub reason: Option<String>,
    #[schema(value_type = u64)]
    pub started_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
}

/// How many versions a service keeps (the oldest are dropped).
pub const MAX_VERSIONS_KEPT: usize = 10;

/// A service as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    pub name: String,
    pub replicas: u32,
    pub spread: Spread,
    pub update: UpdatePolicy,
    /// Its versions, oldest first (at most [`MAX_VERSIONS_KEPT`]).
    pub versions: Vec<ServiceVersion>,
    /// The version its copies converge to.
    pub current: u64,
    /// The latest deployment, ended or not.
    pub deployment: Option<Deployment>,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
}

impl Service {
    pub fn version(&self, version: u64) -> Option<&ServiceVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The deployment in progress, if any.
    pub fn active_deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref().filter(|d| !d.state.is_terminal())
    }

    /// This service with its templates' secret values redacted.
    pub fn redacted(&self) -> Service {
        let mut service = self.clone();
        for v in &mut service.versions {
            v.template = v.template.redacted();
        }
        service
    }

    /// The task spec of a copy of `version`: the template, named after the
    /// service, with `GOAT_SERVICE` in its environment and the service in
    /// its labels.
    pub fn copy_spec(&self, version: &ServiceVersion) -> TaskSpec {
        let mut spec = version.template.clone();
        spec.name = self.name.clone();
        spec.env.insert("GOAT_SERVICE".into(), self.name.clone());
        spec.labels.insert("goat.service".into(), self.name.clone());
        spec.labels.insert("goat.service.version".into(), version.version.to_string());
        spec
    }
}
