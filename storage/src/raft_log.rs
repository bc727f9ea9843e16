//! The Raft log and vote on top of an [`Engine`], as opaque bytes: this layer
//! knows indexes and durability, the `raft` crate knows what the bytes mean.
//!
//! Durability contract (openraft's): the vote is on disk before `save_vote`
//! returns; appended entries are readable at once and acknowledged only once
//! they are on disk. Appends are made durable by a single flusher thread that
//! batches them: every caller waiting when a flush starts is covered by it
//! (group commit), and acknowledgements go out in append order.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread;

use crate::engine::{Engine, EngineError, Result, Tree};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Called once the entries it was queued after are durable (or failed to be).
pub type FlushCallback = Box<dyn FnOnce(std::result::Result<(), std::io::Error>) + Send>;

/// The raw Raft log of one manager. Cheap to clone; clones share the engine
/// and the flusher.
#[derive(Clone)]
pub struct RaftLog {
    engine: Arc<dyn Engine>,
    /// `None`: flush inline (see [`RaftLog::new_inline`]).
    flusher: Option<mpsc::Sender<FlushCallback>>,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| EngineError::Corrupt { tree: Tree::Log, message: format!("log key of {} bytes", key.len()) })?;
    Ok(u64::from_be_bytes(bytes))
}

impl RaftLog {
    pub fn new(engine: Arc<dyn Engine>) -> RaftLog {
        let (tx, rx) = mpsc::channel::<FlushCallback>();
        // The flusher holds the engine weakly, so that dropping the log
        // closes the database at once (a restart in the same process works).
        let flush_engine = Arc::downgrade(&engine);
        thread::Builder::new()
            .name("goat-log-flush".into())
            .spawn(move || flusher(flush_engine, rx))
            .expect("spawning the log flusher thread");
        RaftLog { engine, flusher: Some(tx) }
    }

    /// A log without a flusher thread: `append` flushes and calls `done`
    /// before it returns (no group commit). For a deterministic simulation,
    /// where no thread may run outside its scheduler; same durability.
    pub fn new_inline(engine: Arc<dyn Engine>) -> RaftLog {
        RaftLog { engine, flusher: None }
    }

    /// Stores entries (index, bytes); they are readable when this returns and
    /// durable when `done` is called.
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>, done: FlushCallback) -> Result<()> {
        let ops = entries.into_iter().map(|(i, bytes)| (key(i).to_vec(), Some(bytes))).collect();
        self.engine.write(Tree::Log, ops)?;
        match &self.flusher {
            Some(flusher) => flusher.send(done).map_err(|_| EngineError::Engine("log flusher has stopped".into())),
            None => {
                done(self.engine.flush().map_err(|e| std::io::Error::other(e.to_string())));
                Ok(())
            }
        }
    }

    /// Entries with `from <= index < to`, in order, at most `limit`.
    pub fn range(&self, from: u64, to: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let to_key = to.map(key);
        self.engine
            .scan(Tree::Log, &key(from), to_key.as_ref().map(|k| &k[..]), limit)?
            .into_iter()
            .map(|(k, v)| Ok((index_of(&k)?, v)))
            .collect()
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.engine.last(Tree::Log)? {
            Some((k, v)) => Ok(Some((index_of(&k)?, v))),
            None => Ok(None),
        }
    }

    /// Deletes entries from `from` on, durably (a conflicting suffix must
    /// not come back after a crash).
    pub fn truncate(&self, from: u64) -> Result<()> {
        self.delete_range(from, None)?;
        self.engine.flush()
    }

    /// Records the purge point, then deletes entries up to `upto` inclusive.
    /// The purge point goes first: after a crash in between, the leftover
    /// entries lie below it and are never read.
    pub fn purge(&self, upto: u64, purged_log_id: Vec<u8>) -> Result<()> {
        self.mark_purged(purged_log_id)?;
        self.delete_purged(upto)
    }

    /// The first half of [`RaftLog::purge`]: records the purge point (a
    /// buffered write). From then on the entries up to it are never read,
    /// so the caller may leave their deletion ([`RaftLog::delete_purged`])
    /// to another thread: no append or truncation touches those indexes
    /// again, and a crash before it ends leaves only unread rows.
    pub fn mark_purged(&self, purged_log_id: Vec<u8>) -> Result<()> {
        self.engine.write(Tree::Meta, vec![(LAST_PURGED.to_vec(), Some(purged_log_id))])
    }

    /// The second half of [`RaftLog::purge`]: deletes the entries up to
    /// `upto` inclusive (thousands of rows: it takes a while).
    pub fn delete_purged(&self, upto: u64) -> Result<()> {
        self.delete_range(0, Some(upto + 1))
    }

    fn delete_range(&self, from: u64, to: Option<u64>) -> Result<()> {
        loop {
            let rows = self.range(from, to, 4096)?;
            if rows.is_empty() {
                return Ok(());
            }
            let ops = rows.into_iter().map(|(i, _)| (key(i).to_vec(), None)).collect();
            self.engine.write(Tree::Log, ops)?;
        }
    }

    /// Saves the vote and returns once it is durable.
    pub fn save_vote(&self, vote: Vec<u8>) -> Result<()> {
        self.engine.write(Tree::Meta, vec![(VOTE.to_vec(), Some(vote))])?;
        self.engine.flush()
    }

    pub fn vote(&self) -> Result<Option<Vec<u8>>> {
        self.engine.get(Tree::Meta, VOTE)
    }

    /// Saves the committed log id (durable with the next flush: losing it
    /// only means re-applying a little more on restart).
    pub fn save_committed(&self, committed: Vec<u8>) -> Result<()> {
        self.engine.write(Tree::Meta, vec![(COMMITTED.to_vec(), Some(committed))])
    }

    pub fn committed(&self) -> Result<Option<Vec<u8>>> {
        self.engine.get(Tree::Meta, COMMITTED)
    }

    pub fn last_purged(&self) -> Result<Option<Vec<u8>>> {
        self.engine.get(Tree::Meta, LAST_PURGED)
    }
}

/// The flusher thread: waits for a callback, takes every other one already
/// queued, flushes once, and acknowledges them all in order.
fn flusher(engine: Weak<dyn Engine>, rx: mpsc::Receiver<FlushCallback>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = match engine.upgrade() {
            Some(engine) => engine.flush(),
            None => Err(EngineError::Engine("the database is closed".into())),
        };
        for done in waiting {
            done(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SledEngine;
    use std::sync::mpsc::channel;

    fn open(dir: &std::path::Path) -> RaftLog {
        RaftLog::new(Arc::new(SledEngine::open(dir).unwrap()))
    }

    fn append_and_wait(log: &RaftLog, entries: Vec<(u64, Vec<u8>)>) {
        let (tx, rx) = channel();
        log.append(entries, Box::new(move |r| tx.send(r.is_ok()).unwrap())).unwrap();
        assert!(rx.recv().unwrap());
    }

    #[test]
    fn append_truncate_purge_leave_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append_and_wait(&log, (1..=10).map(|i| (i, vec![i as u8])).collect());
        log.truncate(8).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 7);
        log.purge(3, b"p3".to_vec()).unwrap();
        let indexes: Vec<u64> = log.range(0, None, 100).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(indexes, [4, 5, 6, 7]);
        assert_eq!(log.last_purged().unwrap(), Some(b"p3".to_vec()));
    }

    #[test]
    fn vote_and_entries_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            log.save_vote(b"term-3".to_vec()).unwrap();
            append_and_wait(&log, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
        }
        let log = open(dir.path());
        assert_eq!(log.vote().unwrap(), Some(b"term-3".to_vec()));
        assert_eq!(log.range(1, Some(3), 10).unwrap(), vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
    }

    #[test]
    fn an_inline_log_acknowledges_after_its_flush_before_append_returns() {
        let engine = crate::mem_engine::MemEngine::new();
        let log = RaftLog::new_inline(Arc::new(engine.clone()));
        let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = acked.clone();
        log.append(
            vec![(1, b"a".to_vec())],
            Box::new(move |r| flag.store(r.is_ok(), std::sync::atomic::Ordering::SeqCst)),
        )
        .unwrap();
        assert!(acked.load(std::sync::atomic::Ordering::SeqCst));
        engine.crash();
        assert_eq!(log.range(1, None, 10).unwrap(), vec![(1, b"a".to_vec())]);
    }

    #[test]
    fn acknowledgements_keep_append_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let (tx, rx) = channel();
        for i in 1..=50u64 {
            let tx = tx.clone();
            log.append(vec![(i, vec![0])], Box::new(move |_| tx.send(i).unwrap())).unwrap();
        }
        let order: Vec<u64> = rx.iter().take(50).collect();
        assert_eq!(order, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn an_inline_log_acknowledges_only_flushed_entries() {
        let engine = crate::mem_engine::MemEngine::new();
        let log = RaftLog::new_inline(Arc::new(engine.clone()));
        let (tx, rx) = channel();
        log.append(vec![(1, b"a".to_vec())], Box::new(move |r| tx.send(r.is_ok()).unwrap())).unwrap();
        assert!(rx.try_recv().unwrap(), "acknowledged before append returned");
        engine.crash();
        assert_eq!(log.range(1, None, 10).unwrap(), vec![(1, b"a".to_vec())]);
    }
}

#[cfg(test)]
mod append_cost {
    use super::*;
    use crate::engine::SledEngine;

    /// Not a test: prints what one append costs until it is acknowledged durable.
    /// `cargo test -p goat-storage --release -- --ignored append_cost --nocapture`
    #[test]
    #[ignore]
    fn print_append_cost() {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
        let log = RaftLog::new(Arc::new(SledEngine::open(dir.path()).unwrap()));
        let mut samples = Vec::new();
        for i in 1..=300u64 {
            let start = std::time::Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            log.append(vec![(i, vec![7u8; 400])], Box::new(move |r| tx.send(r.is_ok()).unwrap())).unwrap();
            assert!(rx.recv().unwrap());
            samples.push(start.elapsed());
        }
        samples.sort();
        println!("append until durable: p50 {:?} p99 {:?}", samples[150], samples[297]);
    }
}
