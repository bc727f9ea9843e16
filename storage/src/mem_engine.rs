//! An in-memory [`Engine`] that behaves like a disk under power loss: for
//! tests and the simulation, never for production.
//!
//! Every `write` lands in a volatile layer that reads see at once, as a page
//! cache would. `flush` makes everything written so far durable. `crash`
//! throws the volatile layer away (all of it, or all but a prefix of the
//! batches, as a disk that wrote some of them in order would), so a store
//! reopened on the same engine sees exactly what a machine sees after a
//! power cut. A store that acknowledges something before its `flush` loses it
//! here, which is the point.
//!
//! The engine is a cheap handle (`Clone`): a test keeps one, drops the store
//! ("the process died"), calls [`MemEngine::crash`] ("the machine lost
//! power"), and opens a new store on the same handle ("it rebooted").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::engine::{Engine, EngineError, Op, Result, Tree};

type Trees = BTreeMap<TreeKey, BTreeMap<Vec<u8>, Vec<u8>>>;

/// `Tree` as a map key (the enum is small and `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TreeKey {
    Log,
    Meta,
    State,
}

impl From<Tree> for TreeKey {
    fn from(tree: Tree) -> TreeKey {
        match tree {
            Tree::Log => TreeKey::Log,
            Tree::Meta => TreeKey::Meta,
            Tree::State => TreeKey::State,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// What survives a crash.
    durable: Trees,
    /// Batches written since the last flush, in order.
    unsynced: Vec<(TreeKey, Vec<Op>)>,
    /// `durable` with `unsynced` applied: what reads see.
    current: Trees,
    flushes: u64,
    writes: u64,
    /// Each flush sleeps this long first (a slow disk).
    flush_delay: Duration,
    /// The next this many flushes fail (a disk error).
    failing_flushes: u32,
}

fn apply(trees: &mut Trees, tree: TreeKey, ops: &[Op]) {
    let t = trees.entry(tree).or_default();
    for (key, value) in ops {
        match value {
            Some(value) => {
                t.insert(key.clone(), value.clone());
            }
            None => {
                t.remove(key);
            }
        }
    }
}

/// An in-memory engine with a volatile layer that a crash discards.
#[derive(Clone, Default)]
pub struct MemEngine {
    inner: Arc<Mutex<Inner>>,
}

impl MemEngine {
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    /// Power loss: every write not yet flushed is gone.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Power loss after the disk wrote the first `kept` unsynced batches (in
    /// order) and none of the rest.
    pub fn crash_keeping(&self, kept: usize) {
        let mut inner = self.inner.lock();
        let unsynced = std::mem::take(&mut inner.unsynced);
        for (tree, ops) in unsynced.iter().take(kept) {
            apply(&mut inner.durable, *tree, ops);
        }
        inner.current = inner.durable.clone();
    }

    /// An independent deep copy of this engine as it is now (durable and
    /// volatile layers alike): crash the copy to see what a power cut at
    /// this instant would leave, and carry on with the original.
    pub fn fork(&self) -> MemEngine {
        let inner = self.inner.lock();
        let copy = Inner {
            durable: inner.durable.clone(),
            unsynced: inner.unsynced.clone(),
            current: inner.current.clone(),
            ..Inner::default()
        };
        MemEngine { inner: Arc::new(Mutex::new(copy)) }
    }

    /// Batches written since the last flush.
    pub fn unsynced_batches(&self) -> usize {
        self.inner.lock().unsynced.len()
    }

    /// Flushes so far.
    pub fn flushes(&self) -> u64 {
        self.inner.lock().flushes
    }

    /// Write batches so far.
    pub fn writes(&self) -> u64 {
        self.inner.lock().writes
    }

    /// Makes every later flush sleep `delay` first (blocking the caller, as a
    /// slow fsync does).
    pub fn set_flush_delay(&self, delay: Duration) {
        self.inner.lock().flush_delay = delay;
    }

    /// Makes the next `n` flushes fail, keeping their writes unsynced.
    pub fn fail_flushes(&self, n: u32) {
        self.inner.lock().failing_flushes = n;
    }
}

impl Engine for MemEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().current.get(&tree.into()).and_then(|t| t.get(key)).cloned())
    }

    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<()> {
        let mut inner = self.inner.lock();
        let tree = TreeKey::from(tree);
        apply(&mut inner.current, tree, &ops);
        inner.unsynced.push((tree, ops));
        inner.writes += 1;
        Ok(())
    }

    fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inner = self.inner.lock();
        let Some(t) = inner.current.get(&tree.into()) else { return Ok(Vec::new()) };
        let rows = t
            .range(from.to_vec()..)
            .take_while(|(k, _)| to.is_none_or(|to| k.as_slice() < to))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(rows)
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let inner = self.inner.lock();
        Ok(inner.current.get(&tree.into()).and_then(|t| t.last_key_value()).map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<()> {
        let delay = self.inner.lock().flush_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut inner = self.inner.lock();
        if inner.failing_flushes > 0 {
            inner.failing_flushes -= 1;
            return Err(EngineError::Engine("injected flush failure".into()));
        }
        let unsynced = std::mem::take(&mut inner.unsynced);
        for (tree, ops) in &unsynced {
            apply(&mut inner.durable, *tree, ops);
        }
        inner.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &[u8], v: &[u8]) -> Op {
        (k.to_vec(), Some(v.to_vec()))
    }

    #[test]
    fn reads_see_unsynced_writes_and_a_crash_drops_them() {
        let e = MemEngine::new();
        e.write(Tree::Meta, vec![put(b"vote", b"1")]).unwrap();
        e.flush().unwrap();
        e.write(Tree::Meta, vec![put(b"vote", b"2")]).unwrap();
        e.write(Tree::Log, vec![put(&[1], b"a")]).unwrap();
        assert_eq!(e.get(Tree::Meta, b"vote").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.unsynced_batches(), 2);
        e.crash();
        assert_eq!(e.get(Tree::Meta, b"vote").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.last(Tree::Log).unwrap(), None);
    }

    #[test]
    fn a_crash_can_keep_a_prefix_of_the_batches() {
        let e = MemEngine::new();
        for i in 0u8..5 {
            e.write(Tree::Log, vec![put(&[i], &[i])]).unwrap();
        }
        e.crash_keeping(2);
        let keys: Vec<Vec<u8>> = e.scan(Tree::Log, &[], None, 10).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![vec![0], vec![1]]);
    }

    #[test]
    fn scans_respect_bounds_and_deletes() {
        let e = MemEngine::new();
        e.write(Tree::Log, (0u8..10).map(|i| put(&[i], &[i])).collect()).unwrap();
        e.write(Tree::Log, vec![(vec![3], None)]).unwrap();
        let rows = e.scan(Tree::Log, &[2], Some(&[6]), 100).unwrap();
        assert_eq!(rows.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [2, 4, 5]);
        assert_eq!(e.scan(Tree::Log, &[], None, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_fork_is_independent() {
        let e = MemEngine::new();
        e.write(Tree::Meta, vec![put(b"vote", b"1")]).unwrap();
        let f = e.fork();
        f.crash();
        assert_eq!(f.get(Tree::Meta, b"vote").unwrap(), None);
        assert_eq!(e.get(Tree::Meta, b"vote").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.unsynced_batches(), 1);
    }

    #[test]
    fn a_failed_flush_keeps_writes_volatile() {
        let e = MemEngine::new();
        e.write(Tree::State, vec![put(b"k", b"v")]).unwrap();
        e.fail_flushes(1);
        assert!(e.flush().is_err());
        e.crash();
        assert_eq!(e.get(Tree::State, b"k").unwrap(), None);
    }
}
