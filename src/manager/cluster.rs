//! The write and read paths that make any manager as good as the leader.
//!
//! **Writes.** Every change is a `Command`. The manager that receives a
//! request builds the command (id, timestamp included) and proposes it: the
//! leader appends it to the Raft log; a follower forwards the encoded command
//! to the leader's `/internal/propose`. Commands are idempotent under retry
//! (a resubmitted task with the same id returns the stored task), so while a
//! leader election is under way the proposer simply retries, for a bounded
//! time, against whoever leads next. Past that, 503 with `Retry-After`.
//!
//! **Reads.** Linearizable by default: the leader confirms it still leads
//! (openraft's read index) and waits until its state machine has applied up
//! to it; a follower asks the leader for that read index, then waits until
//! its own state machine has caught up, and answers from local state.
//! `?stale=true` skips all that and answers from local state at once.
//!
//! **Batching.** openraft 0.9 makes every client write durable on its own
//! before it takes the next one, so one log entry per request would cap the
//! cluster at one fsync per write. The leader's [`Batcher`] instead gathers
//! the proposals that arrive while earlier ones are in flight into one
//! `Command::Batch` entry (group commit above Raft) and hands each caller its
//! own result back. Under no load a batch is one command and costs nothing.
//! A batch is bounded by count and by bytes ([`MAX_ENTRY_BYTES`]), so that
//! one AppendEntries of full batches still replicates within a heartbeat
//! interval: a burst of large specs becomes more, smaller entries, not one
//! entry too large to replicate before the followers' election timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use goat_raft::state_machine::SharedState;
use goat_raft::{bearer, codec, Command, CommandResult, NodeId, Raft, TOKEN_HEADER};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::config::ManagerConfig;
use crate::control::Error;

/// Proposals waiting for the batcher: each with its encoded size and where
/// its result goes.
type Proposal = (Command, usize, oneshot::Sender<Result<CommandResult, ProposeError>>);

pub use goat_raft::limits::{MAX_BATCH, MAX_ENTRY_BYTES};
/// Batched entries in flight in Raft at once.
const MAX_IN_FLIGHT: usize = 4;

/// Whether a proposal of `size` bytes joins a batch that holds `count`
/// commands of `bytes` bytes: up to [`MAX_BATCH`] commands and
/// [`MAX_ENTRY_BYTES`] bytes. A batch always takes its first command,
/// however large (a spec is capped well below that, a restore goes alone).
pub fn joins_batch(count: usize, bytes: usize, size: usize) -> bool {
    count == 0 || (count < MAX_BATCH && bytes.saturating_add(size) <= MAX_ENTRY_BYTES)
}

/// Gathers concurrent proposals into batched log entries.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Proposal>,
    /// While true, proposals wait in the batcher instead of entering the
    /// log (a leadership hand-over is under way).
    held: tokio::sync::watch::Sender<bool>,
}

impl Batcher {
    pub fn start(raft: Raft) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let (held, held_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(batch_loop(raft, rx, held_rx));
        Batcher { tx, held }
    }

    /// Holds proposals back (true) or lets them through again (false).
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Proposes `command` in the next batch and waits for its own result.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let size = goat_raft::limits::encoded_len(&command);
        self.tx.send((command, size, tx)).map_err(|_| ProposeError::Failed("the batcher has stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Failed("the batcher dropped the proposal".into()))?
    }
}

async fn batch_loop(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A proposal that did not fit in the previous batch starts the next.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match rx.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        // Held during a hand-over: the proposals go out (and are refused
        // as not led here, then retried at the new leader) once it ends.
        if held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        // Wait for a slot before draining: proposals pile up meanwhile and
        // go out together.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.1;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(proposal) if joins_batch(batch.len(), bytes, proposal.1) => {
                    bytes += proposal.1;
                    batch.push(proposal);
                }
                Ok(proposal) => {
                    carried = Some(proposal);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|(c, _, r)| (c, r)).unzip();
            let results = if commands.len() == 1 {
                let command = commands.into_iter().next().expect("one command");
                vec![client_write(&raft, command).await]
            } else {
                let n = commands.len();
                match client_write(&raft, Command::Batch(commands)).await {
                    Ok(CommandResult::Batch(results)) if results.len() == n => results.into_iter().map(Ok).collect(),
                    Ok(other) => vec![Err(ProposeError::Failed(format!("unexpected batch result {other:?}"))); n],
                    Err(e) => vec![Err(e); n],
                }
            };
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

async fn client_write(raft: &Raft, command: Command) -> Result<CommandResult, ProposeError> {
    match raft.client_write(command).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NotLeader),
        Err(e) => Err(ProposeError::Failed(e.to_string())),
    }
}

/// One manager's handle on its Raft node and state, shared by the HTTP
/// handlers and the leader loops.
pub struct Manager {
    pub(super) id: NodeId,
    pub(super) raft: Raft,
    pub(super) batcher: Batcher,
    pub(super) state: SharedState,
    http: reqwest::Client,
    /// `Bearer <token>`, as internal requests carry it.
    bearer: String,
    /// Every `Bearer <token>` accepted as the cluster token: `--token`,
    /// and `--previous-token` during a rotation.
    cluster_bearers: Vec<String>,
    /// `https` with TLS, else `http`: the scheme of internal URLs.
    scheme: &'static str,
    pub(super) leader_wait: Duration,
    pub(super) node_down_after: Duration,
    /// How tasks without a strategy of their own are placed.
    pub(super) default_strategy: goat_storage::model::Strategy,
    /// When each node last sent a heartbeat to this manager. Meaningful on
    /// the leader only; rebuilt from heartbeats after a failover. (tokio's
    /// clock: the same as std's in production, virtual in the simulation.)
    pub(super) last_seen: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Wakes the placement loop (a task was submitted, a node reported).
    pub(super) placement_kick: Notify,
    /// Cancelled when the manager shuts down: requests that wait (event
    /// streams, assignment polls) end at once, so the graceful shutdown
    /// does not wait for them.
    closing: tokio_util::sync::CancellationToken,
    /// Permits for open event streams (`--max-streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Permits for waiting assignment polls (`--max-polls`).
    polls: Arc<Semaphore>,
    max_polls: usize,
    /// How long finished tasks are kept (`--task-retention`).
    pub task_retention: Duration,
    /// Whether a quorum acknowledged this manager's leadership lately
    /// enough for it to act on its own view (judge liveness, answer
    /// workers): `--election-timeout`'s lease (`control::lease`).
    pub(super) lease: LeaderLease,
    /// The Raft timers' view (see `goat_raft::timing`).
    activity: Arc<goat_raft::timing::Activity>,
    pub timing: goat_raft::timing::Timing,
    /// One hand-over at a time.
    pub transfer: tokio::sync::Mutex<()>,
    /// The term this manager leads in and since when (as its metrics first
    /// said so): openraft's vote lease runs from then.
    pub led_since: Mutex<Option<(u64, Instant)>>,
}

/// What this manager can say of its own leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// It does not lead (as far as it knows).
    Follower,
    /// It leads in `term` and a quorum acknowledged that within the lease.
    Confirmed { term: u64 },
    /// It believes it leads in `term`, but no quorum acknowledged it within
    /// the lease (`ack_age`: how long ago one did, if ever): it may have
    /// been deposed without hearing of it. It must not decide anything from
    /// its own view, nor answer workers from it.
    Unconfirmed { term: u64, ack_age: Option<Duration> },
}

/// Why a proposal failed, as `/internal/propose` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProposeError {
    /// This manager does not lead (any more): try the current leader.
    NotLeader,
    Failed(String),
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Error {
        match e {
            ProposeError::NotLeader => Error::not_leader("this manager does not lead"),
            ProposeError::Failed(reason) => Error::unavailable(reason),
        }
    }
}

impl Manager {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: SharedState,
        args: &ManagerConfig,
        tls: Option<&goat_raft::tls::Tls>,
    ) -> anyhow::Result<Manager> {
        let http = goat_raft::tls::client_builder(tls)
            .connect_timeout(Duration::from_millis(300))
            .tcp_nodelay(true)
            .build()?;
        let cluster_bearers = std::iter::once(&args.token)
            .chain(&args.previous_token)
            .filter(|t| !t.is_empty())
            .map(|t| bearer(t))
            .collect();
        Ok(Manager {
            id,
            batcher: Batcher::start(raft.clone()),
            raft,
            state,
            http,
            bearer: bearer(&args.token),
            cluster_bearers,
            scheme: goat_raft::tls::scheme(tls),
            leader_wait: args.leader_wait.as_duration(),
            node_down_after: args.node_down_after.as_duration(),
            default_strategy: args.scheduler,
            last_seen: Mutex::new(HashMap::new()),
            placement_kick: Notify::new(),
            closing: tokio_util::sync::CancellationToken::new(),
            streams: Arc::new(Semaphore::new(args.max_streams)),
            max_streams: args.max_streams,
            polls: Arc::new(Semaphore::new(args.max_polls)),
            max_polls: args.max_polls,
            task_retention: args.task_retention.as_duration(),
            lease: LeaderLease::new(id, crate::control::lease::leader_lease(args.election_timeout.as_duration())),
            activity: Arc::default(),
            timing: args.timing(),
            transfer: tokio::sync::Mutex::new(()),
            led_since: Mutex::new(None),
        })
    }

    /// What the Raft timing driver and the leader transfer share.
    pub fn activity(&self) -> &Arc<goat_raft::timing::Activity> {
        &self.activity
    }

    /// Holds (`true`) or releases the batcher's proposals while leadership
    /// is handed over (see `Batcher::hold`).
    pub fn hold_proposals(&self, hold: bool) {
        self.batcher.hold(hold);
    }

    /// This manager's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft node (membership changes, metrics).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The applied state, shared with the state machine.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// How long a write or a read waits through an election.
    pub fn leader_wait(&self) -> Duration {
        self.leader_wait
    }

    /// How long a node may stay silent before it is judged down.
    pub fn node_down_after(&self) -> Duration {
        self.node_down_after
    }

    /// How tasks without a strategy of their own are placed.
    pub fn default_strategy(&self) -> goat_storage::model::Strategy {
        self.default_strategy
    }

    /// How long finished tasks are kept (`--task-retention`).
    pub fn task_retention(&self) -> Duration {
        self.task_retention
    }

    /// Whether `presented` (`Bearer <token>`) is the cluster token (or the
    /// previous one during a rotation), compared in constant time.
    pub fn is_cluster_bearer(&self, presented: &str) -> bool {
        let eq = goat_raft::service::constant_time_eq;
        self.cluster_bearers.iter().any(|b| eq(presented.as_bytes(), b.as_bytes()))
    }

    /// A GET to another manager's `/internal/{route}`, with the token.
    pub fn internal_get(&self, addr: &str, route: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}://{addr}/internal/{route}", self.scheme)).header(TOKEN_HEADER, &self.bearer)
    }

    /// Notes a heartbeat from `node`, now (the leader's liveness view).
    pub fn note_seen(&self, node: &str) {
        self.last_seen.lock().insert(node.to_string(), tokio::time::Instant::now());
    }

    /// Notes `nodes` as heard from now (after a restore).
    pub fn note_seen_all<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        let now = tokio::time::Instant::now();
        let mut seen = self.last_seen.lock();
        for node in nodes {
            seen.insert(node.to_string(), now);
        }
    }

    /// Forgets `node` (removed from the cluster).
    pub fn forget_seen(&self, node: &str) {
        self.last_seen.lock().remove(node);
    }

    /// Forgets every heartbeat (a new leadership counts only its own).
    pub fn clear_seen(&self) {
        self.last_seen.lock().clear();
    }

    /// When each node was last heard from, as of now.
    pub fn seen(&self) -> HashMap<String, tokio::time::Instant> {
        self.last_seen.lock().clone()
    }

    /// Wakes the placement loop (a task was submitted, a node reported).
    pub fn kick_placement(&self) {
        self.placement_kick.notify_one();
    }

    /// Completes at the next [`Manager::kick_placement`].
    pub fn placement_kicked(&self) -> tokio::sync::futures::Notified<'_> {
        self.placement_kick.notified()
    }

    /// Cancelled when the manager shuts down.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        &self.closing
    }

    /// A permit for one more event stream, or `Err(max)` at `--max-streams`.
    pub fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, usize> {
        self.streams.clone().try_acquire_owned().map_err(|_| self.max_streams)
    }

    /// A permit for one more waiting assignment poll, or `Err(max)` at
    /// `--max-polls`.
    pub fn poll_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, usize> {
        self.polls.clone().try_acquire_owned().map_err(|_| self.max_polls)
    }

    /// Takes in openraft's metrics (called on each change): the term this
    /// manager leads in and when a quorum last acknowledged it.
    pub fn note_metrics(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) {
        self.lease.note(metrics);
        let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id);
        let mut since = self.led_since.lock();
        match (*since, leading) {
            (Some((term, _)), true) if term == metrics.current_term => {}
            (_, true) => *since = Some((metrics.current_term, Instant::now())),
            (_, false) => *since = None,
        }
    }

    /// Whether this manager leads, and whether a quorum confirmed it lately.
    pub fn leadership(&self) -> Leadership {
        self.lease.leadership(&self.raft)
    }

    /// Whether this manager leads in `term` (believed, not confirmed).
    pub fn leads_in(&self, term: u64) -> bool {
        leads_in(&self.raft, self.id, term)
    }

    /// Commits a decision of the leader loops of `term`: here only (never
    /// forwarded), only while this manager still leads in `term`, and
    /// fenced (`Command::Fenced`); see [`propose_as_leader`].
    pub async fn propose_as_leader(
        &self,
        term: u64,
        command: Command,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<CommandResult, ProposeError> {
        propose_as_leader(self, term, command, cancel).await
    }

    /// The leader this manager knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id)
    }

    /// Commits `command` through whoever leads, waiting (bounded) through
    /// an election. Returns the state machine's result.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, Error> {
        propose_through_leader(self, command).await
    }

    /// Appends `command` to the Raft log on this manager, if it leads.
    pub async fn propose_locally(&self, command: Command) -> Result<CommandResult, ProposeError> {
        self.batcher.propose(command).await
    }

    /// Forwards `command` to `leader`'s `/internal/propose`.
    pub(crate) async fn propose_remotely(
        &self,
        leader: NodeId,
        addr: &str,
        command: &Command,
    ) -> Result<CommandResult, ProposeError> {
        let body = self.internal_call(addr, "propose", codec::encode(command)).await.map_err(|e| {
            tracing::debug!(leader, error = %e, "forwarding a write failed");
            ProposeError::Failed(format!("leader {leader} at {addr}: {e}"))
        })?;
        let answer: Result<CommandResult, ProposeError> =
            codec::decode(&body).map_err(|e| ProposeError::Failed(format!("undecodable answer from leader: {e}")))?;
        answer
    }

    /// Waits until this manager's state reflects every write committed
    /// before the call (a linearizable read point).
    pub async fn linearize(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.leader_wait;
        let mut last_error = String::from("no leader elected yet");
        loop {
            let read_index = match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) => {
                            last_error = e.to_string();
                            None
                        }
                        Err(_) => {
                            last_error = "no quorum confirmed this leader".into();
                            None
                        }
                    }
                }
                Some((_, addr)) => match self.internal_call(&addr, "read-index", Vec::new()).await {
                    Ok(body) => match codec::decode::<Option<u64>>(&body) {
                        Ok(index) => Some(index),
                        Err(e) => {
                            last_error = e.to_string();
                            None
                        }
                    },
                    Err(e) => {
                        last_error = e;
                        None
                    }
                },
                None => None,
            };
            if let Some(index) = read_index {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                return match self.raft.wait(Some(left)).applied_index_at_least(index, "linearizable read").await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Error::unavailable(format!("this manager is not caught up: {e}"))),
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::unavailable(format!("no leader to confirm a linearizable read: {last_error}")));
            }
            self.wait_for_leader_change(Duration::from_millis(50)).await;
        }
    }

    /// The leader's side of a follower's read: confirm leadership, return
    /// the index the follower must have applied.
    pub async fn read_index(&self) -> Result<Option<u64>, ProposeError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index)),
            Err(RaftError::APIError(_)) => Err(ProposeError::NotLeader),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// POSTs to another manager's `/internal/{route}` with the token.
    pub async fn internal_call(&self, addr: &str, route: &str, body: Vec<u8>) -> Result<Bytes, String> {
        let response = self
            .http
            .post(format!("{}://{addr}/internal/{route}", self.scheme))
            .header(TOKEN_HEADER, &self.bearer)
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(bytes)
    }

    /// Sends an HTTP request on to the leader as it came (for requests only
    /// the leader can serve, such as heartbeats), waiting through elections.
    /// `None`: this manager leads now, so the request was not forwarded.
    pub async fn forward_to_leader(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Option<(StatusCode, Bytes)>, Error> {
        let deadline = Instant::now() + self.leader_wait;
        loop {
            if let Some((leader, addr)) = self.leader().filter(|(leader, _)| *leader != self.id) {
                let sent = self
                    .http
                    .request(method.clone(), format!("{}://{addr}{path_and_query}", self.scheme))
                    .header(TOKEN_HEADER, &self.bearer)
                    .header("content-type", "application/json")
                    .header("x-goat-forwarded-by", self.id.to_string())
                    .timeout(Duration::from_secs(10))
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() != StatusCode::MISDIRECTED_REQUEST => {
                        let status = StatusCode::from_u16(response.status().as_u16())
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let bytes = response.bytes().await.map_err(|e| Error::unavailable(e.to_string()))?;
                        return Ok(Some((status, bytes)));
                    }
                    Ok(_) => tracing::debug!(leader, "leader moved on while forwarding"),
                    Err(e) => tracing::debug!(leader, error = %e, "forwarding to the leader failed"),
                }
            } else if self.is_leader() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(Error::unavailable("no leader reachable"));
            }
            self.wait_for_leader_change(Duration::from_millis(50)).await;
        }
    }

    /// Sleeps until the Raft metrics change or `at_most` passes.
    pub async fn wait_for_leader_change(&self, at_most: Duration) {
        wait_for_leader_change(&self.raft, at_most).await
    }
}

// ---- the host of the leader loops -------------------------------------------

/// What the leader loops (and the heartbeat handler's core,
/// `super::nodes::answer_heartbeat`) need of the manager they run on.
/// Implemented by [`Manager`] and by the simulation's manager; the methods
/// with a body are the production behaviour, which the simulation keeps
/// too (its "legacy" host overrides `leadership` and `propose_as_leader` to
/// show what the code did before the fence and the lease).
pub trait LeaderHost: Send + Sync + 'static {
    fn id(&self) -> NodeId;
    fn raft(&self) -> &Raft;
    fn state(&self) -> &SharedState;
    fn lease(&self) -> &LeaderLease;
    fn batcher(&self) -> &Batcher;
    /// When each node last sent a heartbeat to this manager.
    fn last_seen(&self) -> &Mutex<HashMap<String, tokio::time::Instant>>;
    fn placement_kick(&self) -> &Notify;
    /// Takes in openraft's metrics (on each change): the lease's view.
    fn note_metrics(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) {
        self.lease().note(metrics);
    }
    fn node_down_after(&self) -> Duration;
    fn leader_wait(&self) -> Duration;
    fn default_strategy(&self) -> goat_storage::model::Strategy;
    /// This manager's wall clock, in ms since the epoch (what stamps commands).
    fn now_ms(&self) -> u64;

    /// Sends `command` to `leader` (at `addr`) to append: its
    /// `/internal/propose`.
    fn propose_remotely(
        &self,
        leader: NodeId,
        addr: &str,
        command: &Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, ProposeError>> + Send;

    /// Commits `command` through whoever leads (forwarding when this manager
    /// does not), waiting through an election: `Manager::propose`.
    fn propose(&self, command: Command) -> impl std::future::Future<Output = Result<CommandResult, Error>> + Send {
        propose_through_leader(self, command)
    }

    /// Starts the loops that run beside placement, liveness and rescheduling
    /// (collection, on the real manager).
    fn start_other_loops(self: &Arc<Self>, _term: u64, _cancel: &tokio_util::sync::CancellationToken) {}

    /// Whether CPU-heavy work (ranking a placement chunk) runs inline
    /// instead of on tokio's blocking pool (the simulation: one thread).
    fn inline_cpu(&self) -> bool {
        false
    }

    /// Whether this manager leads, and whether a quorum confirmed it lately.
    fn leadership(&self) -> Leadership {
        self.lease().leadership(self.raft())
    }

    /// Appends `command` here, through the batcher, if this manager leads.
    fn propose_locally(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, ProposeError>> + Send {
        self.batcher().propose(command)
    }

    /// Commits a decision of the leader loops of `term`: here only (never
    /// forwarded: another leader must decide for itself), only while this
    /// manager still leads in `term`, and fenced — the state machine
    /// applies it only if the entry was appended in this very leadership
    /// (`Command::Fenced`). Given up when `cancel` fires (the loops stop)
    /// or after `--leader-wait`.
    fn propose_as_leader(
        &self,
        term: u64,
        command: Command,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = Result<CommandResult, ProposeError>> + Send {
        propose_as_leader(self, term, command, cancel)
    }
}

/// [`LeaderHost::propose_as_leader`]'s production behaviour (a function, so
/// that a host that overrides the method can still call it).
pub async fn propose_as_leader<H: LeaderHost + ?Sized>(
    host: &H,
    term: u64,
    command: Command,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<CommandResult, ProposeError> {
    if !leads_in(host.raft(), host.id(), term) {
        return Err(ProposeError::NotLeader);
    }
    let fenced = Command::Fenced { term, leader: host.id(), command: Box::new(command) };
    tokio::select! {
        _ = cancel.cancelled() => Err(ProposeError::Failed("dropped: this manager stopped leading".into())),
        result = tokio::time::timeout(host.leader_wait(), host.propose_locally(fenced)) => match result {
            Ok(result) => result,
            Err(_) => Err(ProposeError::Failed("not committed: this leader may have lost its quorum".into())),
        },
    }
}

/// Commits `command` through whoever leads, waiting (bounded by
/// `--leader-wait`) through an election. Returns the state machine's result.
pub async fn propose_through_leader<H: LeaderHost + ?Sized>(
    host: &H,
    command: Command,
) -> Result<CommandResult, Error> {
    let deadline = tokio::time::Instant::now() + host.leader_wait();
    let mut last_error = String::from("no leader elected yet");
    loop {
        let leader = {
            let metrics = host.raft().metrics();
            let m = metrics.borrow();
            m.current_leader.and_then(|id| Some((id, m.membership_config.membership().get_node(&id)?.addr.clone())))
        };
        let attempt = match leader {
            Some((leader, _)) if leader == host.id() => {
                // A leader cut off from its followers does not know it
                // yet: its write would wait for a quorum forever. Bound
                // it; the outcome is then unknown (503), never a 201.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, host.propose_locally(command.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(ProposeError::Failed("not committed: this leader may have lost its quorum".into())),
                }
            }
            Some((leader, addr)) => host.propose_remotely(leader, &addr, &command).await,
            None => Err(ProposeError::NotLeader),
        };
        match attempt {
            Ok(result) => return Ok(result),
            Err(ProposeError::NotLeader) => {}
            Err(ProposeError::Failed(e)) => last_error = e,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "no leader accepted the write within {:?}: {last_error}",
                host.leader_wait()
            )));
        }
        wait_for_leader_change(host.raft(), Duration::from_millis(50)).await;
    }
}

/// Sleeps until `raft`'s metrics change or `at_most` passes.
pub async fn wait_for_leader_change(raft: &Raft, at_most: Duration) {
    let mut metrics = raft.metrics();
    // A cloned receiver starts at the version openraft's own receiver
    // last saw, so without this `changed()` returns at once and the
    // retry loops spin instead of waiting (found by the simulation).
    metrics.borrow_and_update();
    // Raft shut down (its metrics sender is gone): `changed()` fails at
    // once, so sleep instead, or every retry loop spins hot until its
    // deadline — and under the simulation's paused clock, which only
    // moves while every task waits, that deadline never came (found by
    // the simulation, seeds 69, 81, 176, 192, 199).
    if let Ok(Err(_)) = tokio::time::timeout(at_most, metrics.changed()).await {
        tokio::time::sleep(at_most).await;
    }
}

/// Whether `id` leads in `term` by `raft`'s metrics (believed, not confirmed).
pub fn leads_in(raft: &Raft, id: NodeId, term: u64) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(id) && m.current_term == term
}

/// A leader's lease on its own view (`crate::control::lease`): the term
/// this manager leads in and when a quorum last acknowledged it, from
/// openraft's `millis_since_quorum_ack`, dated when the metrics arrived (so
/// a stalled Raft core ages it too).
pub struct LeaderLease {
    id: NodeId,
    lease: Duration,
    noted: Mutex<Option<(u64, Option<tokio::time::Instant>)>>,
}

impl LeaderLease {
    pub fn new(id: NodeId, lease: Duration) -> LeaderLease {
        LeaderLease { id, lease, noted: Mutex::new(None) }
    }

    /// How recent a quorum's acknowledgement must be.
    pub fn duration(&self) -> Duration {
        self.lease
    }

    /// Takes in openraft's metrics (called on each change).
    pub fn note(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) {
        let leading = metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id);
        let acked = metrics
            .millis_since_quorum_ack
            .and_then(|ms| tokio::time::Instant::now().checked_sub(Duration::from_millis(ms)));
        let noted = leading.then_some((metrics.current_term, acked));
        *self.noted.lock() = noted;
    }

    /// Whether this manager leads by `raft`, and whether a quorum confirmed
    /// it within the lease.
    pub fn leadership(&self, raft: &Raft) -> Leadership {
        let (term, leading) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.state == ServerState::Leader && m.current_leader == Some(self.id))
        };
        if !leading {
            return Leadership::Follower;
        }
        let acked = match *self.noted.lock() {
            Some((noted_term, acked)) if noted_term == term => acked,
            _ => None,
        };
        let ack_age = acked.map(|at| at.elapsed());
        if crate::control::lease::lease_holds(ack_age, self.lease) {
            Leadership::Confirmed { term }
        } else {
            Leadership::Unconfirmed { term, ack_age }
        }
    }
}

/// Bootstraps a new cluster, once. A manager started without `--peers`
/// never does (it waits to be added); a single-manager cluster lists itself.
/// Only the lowest id of `--peers` does it,
/// only if its own store is empty, and only if no peer already belongs to an
/// initialized cluster (a manager whose data was wiped rejoins instead).
pub async fn bootstrap(manager: Arc<Manager>, peers: BTreeMap<NodeId, BasicNode>) {
    let initialized = manager.raft.is_initialized().await.unwrap_or(true);
    if initialized {
        tracing::info!("store holds a cluster already: not bootstrapping");
        return;
    }
    if peers.is_empty() {
        tracing::info!("no --peers: waiting to be added to a cluster (POST /v1/cluster/members)");
        return;
    }
    let members = peers;
    if members.keys().next() != Some(&manager.id) {
        tracing::info!("waiting to be contacted by the cluster's leader");
        return;
    }
    for (id, node) in members.iter().filter(|(id, _)| **id != manager.id) {
        let url = format!("{}://{}/internal/status", manager.scheme, node.addr);
        let answer = manager
            .http
            .get(url)
            .header(TOKEN_HEADER, &manager.bearer)
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        if let Ok(response) = answer {
            if let Ok(status) = response.json::<InternalStatus>().await {
                if status.initialized {
                    tracing::info!(
                        peer = id,
                        "a peer already belongs to a cluster: joining it instead of bootstrapping"
                    );
                    return;
                }
            }
        }
    }
    match manager.raft.initialize(members).await {
        Ok(()) => tracing::info!("bootstrapped a new cluster"),
        Err(e) => tracing::warn!(error = %e, "bootstrap skipped"),
    }
}

/// What `/internal/status` tells a peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct InternalStatus {
    pub id: NodeId,
    pub initialized: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        assert!(joins_batch(0, 0, usize::MAX), "a batch takes its first command, however large");
        assert!(joins_batch(1, 100, 100));
        assert!(!joins_batch(MAX_BATCH, 0, 1), "count");
        assert!(joins_batch(1, MAX_ENTRY_BYTES - 10, 10));
        assert!(!joins_batch(1, MAX_ENTRY_BYTES - 10, 11), "bytes");
        // 900 KB commands go one per entry; 60 KB ones four at a time.
        assert!(!joins_batch(1, 900_000, 900_000));
        let per_entry = (1..).take_while(|n| joins_batch(*n, n * 60_000, 60_000)).count() + 1;
        assert_eq!(per_entry, MAX_ENTRY_BYTES / 60_000);
    }
}
