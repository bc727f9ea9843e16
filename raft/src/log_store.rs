//! openraft's log storage over Goat's durable [`RaftLog`].
//!
//! Entries and log ids are bincode-encoded here; durability, ordering and
//! group commit are the `RaftLog`'s job. No fsync runs on the Raft core:
//! an append's sled write (a copy into sled's buffers) and the commit-index
//! write run on its task, the flush on the `RaftLog`'s flusher thread, and
//! calls that flush or scan (votes, truncation, purge, reads the tail cache
//! cannot serve) on tokio's blocking pool.
//!
//! The newest entries are also kept decoded in memory ([`TailCache`]): the
//! leader's replication streams read what was just appended, and serving
//! that from memory saves a blocking-pool hop and a decode per round trip.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::time::{Duration, Instant};

use goat_storage::raft_log::RaftLog;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use parking_lot::Mutex;

use crate::codec::{decode, encode};
use crate::{LogId, NodeId, StorageError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// How many of the newest entries stay decoded in memory, at most.
const TAIL_CACHE_ENTRIES: usize = 4096;
/// How many bytes of them (counted encoded, as they are on disk), at most:
/// with batched entries of up to `MAX_ENTRY_BYTES` (128 KiB), 4,096 entries
/// alone could hold half a GiB. The newest entry always stays.
pub const TAIL_CACHE_BYTES: usize = 16 << 20;

/// The newest log entries, decoded, mirroring the log's tail: appends add to
/// it, truncation and purge remove from it, so whatever it holds is exactly
/// what the log holds at those indexes (a contiguous run of indexes).
#[derive(Default)]
struct TailCache {
    /// Each entry with its encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    /// The sum of the encoded sizes held.
    bytes: usize,
}

impl TailCache {
    fn insert(&mut self, entries: &[Entry], sizes: &[usize]) {
        for (e, size) in entries.iter().zip(sizes) {
            if let Some((_, old)) = self.entries.insert(e.log_id.index, (e.clone(), *size)) {
                self.bytes -= old;
            }
            self.bytes += size;
        }
        while self.entries.len() > 1 && (self.entries.len() > TAIL_CACHE_ENTRIES || self.bytes > TAIL_CACHE_BYTES) {
            if let Some((_, (_, size))) = self.entries.pop_first() {
                self.bytes -= size;
            }
        }
    }

    /// Keeps only the entries for which `keep(index)` holds.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let mut bytes = 0;
        self.entries.retain(|index, (_, size)| {
            let kept = keep(*index);
            if kept {
                bytes += *size;
            }
            kept
        });
        self.bytes = bytes;
    }

    /// Entries and bytes held (for the memory breakdown).
    fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    /// The entries `from..to`, if the cache holds every one of them.
    fn range(&self, from: u64, to: Option<u64>) -> Option<Vec<Entry>> {
        let first = *self.entries.keys().next()?;
        let last = *self.entries.keys().next_back()?;
        let to = to.unwrap_or(last + 1);
        if from < first || to > last + 1 || from >= to {
            return None;
        }
        Some(self.entries.range(from..to).map(|(_, (e, _))| e.clone()).collect())
    }
}

/// What the log store reports as it works, for metrics.
pub trait LogObserver: Send + Sync {
    /// `entries` were appended and are durable, `took` after the append.
    fn appended(&self, entries: usize, took: Duration);
    /// The commit index advanced to `index`.
    fn committed(&self, index: u64);
}

#[derive(Clone)]
pub struct LogStore {
    log: RaftLog,
    tail: Arc<Mutex<TailCache>>,
    observer: Option<Arc<dyn LogObserver>>,
    /// Run storage calls on the caller's task instead of the blocking pool.
    inline: bool,
}

impl LogStore {
    pub fn new(log: RaftLog) -> LogStore {
        LogStore { log, tail: Arc::default(), observer: None, inline: false }
    }

    /// Runs storage calls on the Raft task itself, not on tokio's blocking
    /// pool: for the deterministic simulation (an in-memory engine, one
    /// thread, a virtual clock), where a pool thread would make the order of
    /// events depend on the OS scheduler.
    pub fn with_inline_io(mut self) -> LogStore {
        self.inline = true;
        self
    }

    /// Runs a storage call on the blocking pool (or inline, see
    /// [`LogStore::with_inline_io`]).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        if self.inline {
            return f();
        }
        blocking(f).await
    }

    /// Reports appends and commits to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn LogObserver>) -> LogStore {
        self.observer = Some(observer);
        self
    }

    /// What `RaftLogStorage::append` does, with a plain completion callback
    /// instead of openraft's `LogFlushed` (which only openraft can build):
    /// the entries are readable when this returns, and `done` runs once
    /// they are durable (group commit: one sync covers every append waiting
    /// when it starts), in append order. Crash tests and the simulation call
    /// it directly.
    pub async fn append_then(
        &mut self,
        entries: Vec<Entry>,
        done: impl FnOnce(Result<(), std::io::Error>) + Send + 'static,
    ) -> Result<(), StorageError> {
        let rows: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.log_id.index, encode(e))).collect();
        let sizes: Vec<usize> = rows.iter().map(|(_, bytes)| bytes.len()).collect();
        self.tail.lock().insert(&entries, &sizes);
        let (observer, started, count) = (self.observer.clone(), Instant::now(), rows.len());
        let done = move |result: Result<(), std::io::Error>| {
            if let (Some(observer), Ok(())) = (&observer, &result) {
                observer.appended(count, started.elapsed());
            }
            done(result)
        };
        // On the caller's task, not the blocking pool: `RaftLog::append`
        // only hands the rows to the engine's buffers (sled: a copy into its
        // in-memory log buffer) and queues `done` for the flusher thread,
        // which alone waits for the disk. A hop through the blocking pool
        // cost two thread switches per append on the Raft core's path.
        self.log.append(rows, Box::new(done)).map_err(|e| logs_err(ErrorVerb::Write, e))
    }

    /// The decoded tail cache's entries and encoded bytes.
    pub fn tail_usage(&self) -> (usize, usize) {
        self.tail.lock().usage()
    }
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn logs_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

/// Runs a storage call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| logs_err(ErrorVerb::Write, e))?
}

fn decode_opt<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StorageError> {
    bytes.map(|b| decode(&b).map_err(|e| logs_err(ErrorVerb::Read, e))).transpose()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.tail.lock().range(from, to) {
            return Ok(entries);
        }
        let log = self.log.clone();
        self.blocking(move || {
            let rows = log.range(from, to, usize::MAX).map_err(|e| logs_err(ErrorVerb::Read, e))?;
            rows.into_iter().map(|(_, bytes)| decode(&bytes).map_err(|e| logs_err(ErrorVerb::Read, e))).collect()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = self.log.clone();
        self.blocking(move || {
            let last_purged_log_id: Option<LogId> =
                decode_opt(log.last_purged().map_err(|e| logs_err(ErrorVerb::Read, e))?)?;
            let last = log.last().map_err(|e| logs_err(ErrorVerb::Read, e))?;
            let last_log_id = match last {
                Some((_, bytes)) => Some(decode::<Entry>(&bytes).map_err(|e| logs_err(ErrorVerb::Read, e))?.log_id),
                None => last_purged_log_id,
            };
            // Rows at or below the purge point may be left over (their
            // deletion runs after the purge point is written, see `purge`):
            // the log then ends at the purge point.
            let last_log_id = last_log_id.max(last_purged_log_id);
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let (log, bytes) = (self.log.clone(), encode(vote));
        self.blocking(move || log.save_vote(bytes).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let log = self.log.clone();
        self.blocking(move || decode_opt(log.vote().map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))?)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let (Some(observer), Some(committed)) = (&self.observer, committed) {
            observer.committed(committed.index);
        }
        // A buffered write, never synced on its own (see
        // `RaftLog::save_committed`): done on the Raft core's task, which
        // awaits it before every apply, without a blocking-pool hop.
        self.log.save_committed(encode(&committed)).map_err(|e| logs_err(ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let log = self.log.clone();
        self.blocking(move || {
            let committed: Option<Option<LogId>> =
                decode_opt(log.committed().map_err(|e| logs_err(ErrorVerb::Read, e))?)?;
            Ok(committed.flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_then(entries.into_iter().collect(), move |result| callback.log_io_completed(result)).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail.lock().retain(|index| index < log_id.index);
        let log = self.log.clone();
        self.blocking(move || log.truncate(log_id.index).map_err(|e| logs_err(ErrorVerb::Delete, e))).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail.lock().retain(|index| index > log_id.index);
        if self.inline {
            return self.log.purge(log_id.index, encode(&log_id)).map_err(|e| logs_err(ErrorVerb::Delete, e));
        }
        // openraft's core awaits this before it does anything else: no
        // heartbeat, no append, no vote meanwhile. Deleting the ~10,000
        // entries a snapshot leaves behind (each read back from sled first,
        // up to 128 KiB apiece) took seconds under load, on every manager
        // at once since they all snapshot at the same index: followers then
        // started elections. So only the purge point is written here (a
        // buffered write, like `save_committed`); the rows go on the
        // blocking pool, unawaited (see `RaftLog::mark_purged`).
        self.log.mark_purged(encode(&log_id)).map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = log.delete_purged(log_id.index) {
                tracing::warn!(error = %e, upto = log_id.index, "deleting purged log entries failed (they are never read)");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::mem_engine::MemEngine;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    async fn append(store: &mut LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .append_then(indexes.map(entry).collect(), move |r| {
                let _ = tx.send(r);
            })
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    /// `purge` returns once the purge point is written; the rows go later.
    /// Rows left at or below the purge point (a crash before their deletion)
    /// never make the log look shorter than the purge point.
    #[tokio::test]
    async fn the_log_never_ends_below_its_purge_point() {
        let log = RaftLog::new(Arc::new(MemEngine::new()));
        let mut store = LogStore::new(log.clone());
        append(&mut store, 1..=10).await;
        store.purge(entry(4).log_id).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
        assert_eq!(store.try_get_log_entries(5..11).await.unwrap().len(), 6);

        // A purge point past every row (a snapshot installed, then purged),
        // with the rows not yet deleted.
        log.mark_purged(encode(&entry(12).log_id)).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(12));
    }
}
