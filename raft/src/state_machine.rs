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

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

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

/// The applied state, shared between the state machine and the API readers.
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<Applied>>);

impl SharedState {
    /// A read view; hold it briefly (the state machine waits for it).
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic inside apply: the state may be half
        // changed, and serving it would be worse than stopping.
        self.0.read().expect("state lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.0.write().expect("state lock poisoned")
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
}

impl StateMachine {
    /// Loads the persisted state (empty for a new store).
    pub fn open(store: StateStore) -> Result<StateMachine, StorageError> {
        let (state, position) = store.load().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (last_applied, membership): AppliedPosition = match position {
            Some(bytes) => decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => (None, StoredMembership::default()),
        };
        let shared = SharedState(Arc::new(RwLock::new(Applied { state, last_applied, membership })));
        Ok(StateMachine { store, shared, snapshots_built: 0 })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }
}

/// Builds snapshots from a consistent copy of the shared state.
pub struct SnapshotBuilder {
    store: StateStore,
    shared: SharedState,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Serialize under the read lock: one consistent view, no deep clone.
        let (data, last_log_id, last_membership) = {
            let applied = self.shared.read();
            (encode(&applied.state), applied.last_applied, applied.membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let stored = StoredSnapshot { meta: encode(&meta), data };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.save_snapshot(&stored).map(|_| stored))
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
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
        // The write lock covers the pure apply only; encoding and writing
        // what changed happen under a read lock, so heartbeats and the
        // leader's loops keep reading meanwhile (nothing else writes).
        let mut results = Vec::new();
        let (dirty, position) = {
            let mut applied = self.shared.write();
            for entry in entries {
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
        self.store.save_changes(&applied.state, dirty, encode(&position)).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder { store: self.store.clone(), shared: self.shared.clone(), seq: self.snapshots_built }
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
        let state: ClusterState = decode(&data).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        let position: AppliedPosition = (meta.last_log_id, meta.last_membership.clone());
        let stored = StoredSnapshot { meta: encode(meta), data };
        let store = self.store.clone();
        let state = tokio::task::spawn_blocking(move || {
            store.replace(&state, encode(&position))?;
            store.save_snapshot(&stored)?;
            Ok::<_, goat_storage::engine::EngineError>(state)
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let mut applied = self.shared.write();
        applied.state = state;
        applied.state.take_dirty();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(stored) = self.store.snapshot().map_err(|e| snapshot_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, BasicNode> =
            decode(&stored.meta).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
