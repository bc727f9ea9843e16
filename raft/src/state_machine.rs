//! openraft's state machine over Goat's pure [`ClusterState`].
//!
//! Applying a batch of committed entries runs each command through
//! `ClusterState::apply` (deterministic, no I/O), then writes the tasks and
//! nodes that changed, with the new applied position, to the `StateStore` in
//! one atomic write. That write is not flushed: the log is the durable record
//! and anything lost in a crash is applied again from it on restart. (This
//! runs on openraft's state-machine task, not in the Raft core, so sled's
//! short buffered writes never delay elections or replication.)
//!
//! The in-memory state, its applied log id and the membership sit behind one
//! lock ([`SharedState`]): the API reads from it, and a snapshot is a
//! consistent copy of all three taken under that lock.
//!
//! After each applied batch the events it produced (read back from the
//! task and node histories, see `goat_storage::events`) go out on a
//! broadcast [`Feed`], which `GET /v1/events` and the metrics follow. The
//! applied log index also goes out on a watch channel after every batch
//! (events or not: a stop request changes a task without an event), which
//! the workers' long polls on their assignments wait on.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use goat_storage::events::{events_of, first_index, ClusterEvent};
use goat_storage::fsm::{ClusterState, CommandResult};
use goat_storage::state_store::{StateStore, StoredSnapshot};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError,
    StoredMembership,
};

use crate::codec::{decode, encode};
use crate::{LogId, Membership, NodeId, StorageError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// What the state machine has applied: the state, and where it stands.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

/// What the state machine tells followers of its events.
#[derive(Debug, Clone)]
pub enum Feed {
    /// The events the entries just applied produced, in index order.
    Events(Arc<Vec<ClusterEvent>>),
    /// A snapshot replaced the state: read the histories again.
    Reset,
}

/// Batches the feed holds for a slow follower before it lags (and has to
/// read the histories again).
const FEED_CAPACITY: usize = 1024;

/// The applied state, shared between the state machine and the API readers.
#[derive(Clone)]
pub struct SharedState {
    /// std's lock, not parking_lot's like the workspace's others: its
    /// poisoning is wanted here. A panic inside apply leaves the state half
    /// changed, and every later reader then stops ([`SharedState::read`])
    /// rather than serve it.
    applied: Arc<RwLock<Applied>>,
    feed: tokio::sync::broadcast::Sender<Feed>,
    /// The last applied log index, bumped after every applied batch and
    /// installed snapshot.
    applied_index: tokio::sync::watch::Sender<u64>,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState::new(Applied::default())
    }
}

impl SharedState {
    fn new(applied: Applied) -> SharedState {
        let index = applied.last_applied.map_or(0, |l| l.index);
        SharedState {
            applied: Arc::new(RwLock::new(applied)),
            feed: tokio::sync::broadcast::channel(FEED_CAPACITY).0,
            applied_index: tokio::sync::watch::channel(index).0,
        }
    }

    /// Changes after every applied batch (and installed snapshot), once the
    /// state readable through [`SharedState::read`] includes it.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    fn announce_applied(&self, index: Option<LogId>) {
        self.applied_index.send_replace(index.map_or(0, |l| l.index));
    }

    /// Follows the events of every batch applied from now on. Subscribe
    /// before reading the histories, so that nothing falls in between.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Feed> {
        self.feed.subscribe()
    }

    /// A read view; hold it briefly (the state machine waits for it).
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic inside apply: the state may be half
        // changed, and serving it would be worse than stopping.
        self.applied.read().expect("state lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().expect("state lock poisoned")
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn snapshot_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

/// The persisted form of the applied position.
type AppliedPosition = (Option<LogId>, Membership);

pub struct StateMachine {
    store: StateStore,
    shared: SharedState,
    /// Snapshots built so far, to give each a distinct id.
    snapshots_built: u64,
    /// Write snapshots on the caller's task, not the blocking pool.
    inline: bool,
}

impl StateMachine {
    /// Loads the persisted state (empty for a new store).
    pub fn open(store: StateStore) -> Result<StateMachine, StorageError> {
        let (state, position) = store.load().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (mut last_applied, mut membership): AppliedPosition = match position {
            Some(bytes) => decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => (None, StoredMembership::default()),
        };
        let mut state = state;
        // The persisted state can be older than the latest snapshot (its
        // writes are not flushed on their own, or it was written by a version
        // that saved the two separately), and the log may already be purged
        // up to that snapshot: openraft would then re-apply entries that are
        // gone and refuse to start. Start from the snapshot instead.
        if let Some(stored) = store.snapshot().map_err(|e| snapshot_err(ErrorVerb::Read, e))? {
            let meta: SnapshotMeta<NodeId, BasicNode> =
                decode(&stored.meta).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
            if meta.last_log_id > last_applied {
                tracing::info!(
                    snapshot = %meta.snapshot_id,
                    applied = ?last_applied.map(|l| l.index),
                    "the persisted state is behind the latest snapshot: starting from the snapshot"
                );
                state = decode(&stored.data).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
                last_applied = meta.last_log_id;
                membership = meta.last_membership.clone();
                store
                    .replace(&state, encode(&(last_applied, membership.clone())))
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            }
        }
        let shared = SharedState::new(Applied { state, last_applied, membership });
        Ok(StateMachine { store, shared, snapshots_built: 0, inline: false })
    }

    /// Writes snapshots on the state machine's task instead of tokio's
    /// blocking pool: for the deterministic simulation (see
    /// `LogStore::with_inline_io`).
    pub fn with_inline_io(mut self) -> StateMachine {
        self.inline = true;
        self
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }
}

/// Saves a snapshot of the state as it was when the builder was made.
///
/// The state is encoded in [`RaftStateMachine::get_snapshot_builder`], which
/// openraft awaits on the state-machine worker before it applies anything
/// else, and on the blocking pool: under a read lock that no writer waits
/// for (the worker is the only writer, and it is waiting for the encode), so
/// API readers carry on, and no thread of the Raft runtime is held. Encoding
/// here, in `build_snapshot`, which openraft spawns beside the worker, held
/// the read lock on a runtime thread while `apply` blocked the other one
/// waiting for the write lock: with 100,000 tasks both threads of the Raft
/// runtime stopped for seconds, on every manager at once (they all snapshot
/// at the same log index), and followers started elections.
pub struct SnapshotBuilder {
    store: StateStore,
    encoded: Option<Encoded>,
    seq: u64,
    inline: bool,
}

/// The state, encoded, and where it stands.
struct Encoded {
    data: Vec<u8>,
    last_log_id: Option<LogId>,
    last_membership: Membership,
}

/// Runs `f`, which blocks (takes the state's lock, writes sled), without
/// holding a worker thread of the Raft runtime: through `block_in_place`,
/// which hands the thread's other tasks (the Raft core, replication, Goat's
/// timer) to another thread meanwhile. At once when `inline` (the
/// simulation's single thread) or outside a multi-threaded runtime (tests).
fn blocking_section<T>(inline: bool, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if inline || !multi_thread {
        return f();
    }
    tokio::task::block_in_place(f)
}

/// Runs `f` on the blocking pool, or at once when `inline`.
async fn off_task<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> Result<T, goat_storage::engine::EngineError> + Send + 'static,
) -> Result<T, StorageError> {
    if inline {
        return f().map_err(|e| snapshot_err(ErrorVerb::Write, e));
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let Some(Encoded { data, last_log_id, last_membership }) = self.encoded.take() else {
            return Err(snapshot_err(ErrorVerb::Read, std::io::Error::other("snapshot builder used twice")));
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let stored = StoredSnapshot { meta: encode(&meta), data };
        let store = self.store.clone();
        let stored = off_task(self.inline, move || store.save_snapshot(&stored).map(|_| stored)).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

/// What applying a batch gives back: each entry's result, the new applied
/// position, the events it produced.
type AppliedBatch = (Vec<CommandResult>, Option<LogId>, Vec<ClusterEvent>);

impl StateMachine {
    /// Applies `entries` and persists what changed: the blocking part of
    /// [`RaftStateMachine::apply`].
    fn apply_now(&mut self, entries: Vec<Entry>) -> Result<AppliedBatch, StorageError> {
        // The write lock covers the pure apply only; encoding and writing
        // what changed happen under a read lock, so heartbeats and the
        // leader's loops keep reading meanwhile (nothing else writes).
        let mut results = Vec::new();
        let mut first_event = None;
        let (dirty, position) = {
            let mut applied = self.shared.write();
            for entry in entries {
                first_event.get_or_insert(first_index(entry.log_id.index));
                // The entry's log id names the leader that appended it: a
                // leader-loop decision (`Command::Fenced`) is applied only if
                // that is the leadership it was taken in.
                let leader = entry.log_id.leader_id;
                applied.state.begin_entry_by(entry.log_id.index, leader.term, leader.node_id);
                applied.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Done,
                    EntryPayload::Normal(command) => applied.state.apply(&command),
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Done
                    }
                };
                results.push(result);
            }
            let position: AppliedPosition = (applied.last_applied, applied.membership.clone());
            (applied.state.take_dirty(), position)
        };
        let applied = self.shared.read();
        let events = first_event.map(|from| events_of(&applied.state, &dirty, from)).unwrap_or_default();
        self.store.save_changes(&applied.state, dirty, encode(&position)).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        drop(applied);
        Ok((results, position.0, events))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Waiting for the write lock (a reader may hold it: a placement
        // round's look, a long API read) and sled's writes must not hold a
        // thread of the Raft runtime (see `blocking_section`).
        let (results, position, events) = blocking_section(self.inline, || self.apply_now(entries))?;
        self.shared.announce_applied(position);
        if !events.is_empty() {
            // No follower is not an error.
            let _ = self.shared.feed.send(Feed::Events(Arc::new(events)));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        // See `SnapshotBuilder`: encode now, off the runtime's threads, while
        // nothing is applied.
        let shared = self.shared.clone();
        let encode_state = move || {
            let applied = shared.read();
            Encoded {
                data: encode(&applied.state),
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            }
        };
        let encoded = if self.inline {
            Some(encode_state())
        } else {
            // A failed encode (a panic) leaves the builder empty and its
            // build an error; openraft tries again later.
            tokio::task::spawn_blocking(encode_state).await.ok()
        };
        SnapshotBuilder { store: self.store.clone(), encoded, seq: self.snapshots_built, inline: self.inline }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: ClusterState =
            blocking_section(self.inline, || decode(&data)).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        let position: AppliedPosition = (meta.last_log_id, meta.last_membership.clone());
        let stored = StoredSnapshot { meta: encode(meta), data };
        let store = self.store.clone();
        let state = off_task(self.inline, move || {
            store.install(&state, encode(&position), &stored)?;
            Ok(state)
        })
        .await?;
        // The old state is dropped outside the lock (freeing 100,000 tasks
        // takes a while), and the wait for the lock off the runtime's
        // threads (see `blocking_section`).
        blocking_section(self.inline, || {
            let old = {
                let mut applied = self.shared.write();
                let old = std::mem::replace(&mut applied.state, state);
                applied.state.take_dirty();
                applied.last_applied = meta.last_log_id;
                applied.membership = meta.last_membership.clone();
                old
            };
            drop(old);
        });
        self.shared.announce_applied(meta.last_log_id);
        let _ = self.shared.feed.send(Feed::Reset);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // A read of the whole snapshot (megabytes): on the blocking pool.
        let store = self.store.clone();
        let Some(stored) = off_task(self.inline, move || store.snapshot()).await? else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, BasicNode> =
            decode(&stored.meta).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::mem_engine::MemEngine;
    use openraft::CommittedLeaderId;

    fn submit(n: u64) -> Entry {
        let spec =
            serde_json::from_value(serde_json::json!({"name": format!("t{n}"), "image": "goat-echo:latest"})).unwrap();
        let command = goat_storage::fsm::Command::SubmitTask { task_id: uuid::Uuid::from_u64_pair(0, n), spec, at: n };
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), n), payload: EntryPayload::Normal(command) }
    }

    /// Point 4(b): a store whose persisted state is behind its snapshot (and
    /// so behind a log purged up to the snapshot) opens at the snapshot.
    #[tokio::test]
    async fn a_state_behind_its_snapshot_starts_from_the_snapshot() {
        let engine = MemEngine::new();
        let store = StateStore::new(Arc::new(engine.clone()));
        let mut sm = StateMachine::open(store.clone()).unwrap();
        sm.apply((1..=10).map(submit)).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let at_snapshot = sm.shared().read().state.clone();
        drop(sm);
        // Put the persisted state back to index 5 (as an older version, or a
        // lost unsynced write, could leave it).
        let mut older = StateMachine::open(StateStore::new(Arc::new(MemEngine::new()))).unwrap();
        older.apply((1..=5).map(submit)).await.unwrap();
        let older = older.shared().read().clone();
        store.replace(&older.state, encode(&(older.last_applied, older.membership.clone()))).unwrap();

        let mut sm = StateMachine::open(store.clone()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(10));
        assert_eq!(sm.shared().read().state.tasks, at_snapshot.tasks);
        // And the persisted copy was brought forward too.
        let (loaded, _) = store.load().unwrap();
        assert_eq!(loaded.tasks, at_snapshot.tasks);
        // It carries on applying from there.
        sm.apply([submit(11)]).await.unwrap();
        assert_eq!(sm.shared().read().state.tasks.len(), 11);
    }

    /// The snapshot holds the state as it was when the builder was made,
    /// whatever is applied before it is built (openraft spawns the build
    /// beside the worker, which carries on applying).
    #[tokio::test]
    async fn a_snapshot_is_the_state_when_its_builder_was_made() {
        let mut sm = StateMachine::open(StateStore::new(Arc::new(MemEngine::new()))).unwrap();
        sm.apply((1..=10).map(submit)).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        sm.apply((11..=12).map(submit)).await.unwrap();
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(10));
        let state: ClusterState = decode(snapshot.snapshot.get_ref()).unwrap();
        assert_eq!(state.tasks.len(), 10);
        assert_eq!(sm.shared().read().state.tasks.len(), 12);
    }
}
