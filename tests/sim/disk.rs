//! The simulated disks: the real `LogStore` over a `RaftLog` over the
//! in-memory engine, with a slow-disk delay in virtual time, and a broken
//! engine whose flush does nothing (to show the simulator catches it).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use goat_raft::log_store::LogStore;
use goat_raft::{LogId, NodeId, StorageError, TypeConfig};
use goat_storage::engine::{Engine, Op, Result, Tree};
use goat_storage::mem_engine::MemEngine;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};

use super::world::World;

type Entry = openraft::Entry<TypeConfig>;

/// An engine that acknowledges a flush without making anything durable:
/// the bug class "acknowledged before fsync".
pub struct NoSyncEngine(pub MemEngine);

impl Engine for NoSyncEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.get(tree, key)
    }
    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<()> {
        self.0.write(tree, ops)
    }
    fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan(tree, from, to, limit)
    }
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.0.last(tree)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// The real log store, each vote and append first waiting out the
/// manager's current disk delay (virtual time: a slow fsync).
#[derive(Clone)]
pub struct SimLog {
    pub inner: LogStore,
    pub world: Arc<World>,
    pub id: NodeId,
}

impl SimLog {
    async fn slow(&self) {
        let delay = self.world.disk_delay(self.id);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> std::result::Result<(), StorageError> {
        self.slow().await;
        self.inner.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<NodeId>>, StorageError> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::result::Result<(), StorageError> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        self.inner.read_committed().await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.slow().await;
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.inner.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.inner.purge(log_id).await
    }
}
