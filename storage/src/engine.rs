//! The key-value engine under every Goat store, behind a small trait so that
//! sled (stable but unmaintained) can be swapped for another engine without
//! touching the Raft log or the state machine.
//!
//! An engine holds a few named trees. Writes to one tree in one `write` call
//! are atomic. Nothing is durable until `flush` returns: that is the one
//! place where the engine waits for the disk, and callers decide when to pay
//! for it (the Raft log does, before acknowledging entries; the state machine
//! does not need to, because the log can replay it).

use std::path::Path;

/// The trees of a manager's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Raft log entries, keyed by big-endian index.
    Log,
    /// The vote, the committed log id and the purge point.
    Meta,
    /// The state machine's persisted copy and its latest snapshot.
    State,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Log => "log",
            Tree::Meta => "meta",
            Tree::State => "state",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record in tree {tree:?}: {message}")]
    Corrupt { tree: Tree, message: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// One change in a write batch: `Some(value)` puts, `None` deletes.
pub type Op = (Vec<u8>, Option<Vec<u8>>);

/// A key-value engine with named trees, atomic per-tree batches and an
/// explicit durability point.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Applies all `ops` to `tree` atomically (not yet durable).
    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<()>;
    /// Key-ordered entries with `from <= key < to` (`to: None` = to the end),
    /// at most `limit` of them.
    fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The entry with the greatest key.
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Makes every write made so far durable. Blocks until the disk has it.
    fn flush(&self) -> Result<()>;
}

/// The sled engine: one `sled::Db` per data directory, one sled tree per
/// [`Tree`]. All trees share sled's log, so one flush covers them all.
pub struct SledEngine {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
}

fn engine_err(e: sled::Error) -> EngineError {
    EngineError::Engine(e.to_string())
}

impl SledEngine {
    pub fn open(dir: &Path) -> Result<SledEngine> {
        let db = sled::Config::new()
            .path(dir)
            // Goat flushes explicitly where durability is owed; the
            // background flusher only bounds how much the others can lose.
            .flush_every_ms(Some(1_000))
            .cache_capacity(256 << 20)
            .open()
            .map_err(engine_err)?;
        let open = |t: Tree| db.open_tree(t.name()).map_err(engine_err);
        Ok(SledEngine { log: open(Tree::Log)?, meta: open(Tree::Meta)?, state: open(Tree::State)?, db })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Log => &self.log,
            Tree::Meta => &self.meta,
            Tree::State => &self.state,
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(tree).get(key).map_err(engine_err)?.map(|v| v.to_vec()))
    }

    fn write(&self, tree: Tree, ops: Vec<Op>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in ops {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree(tree).apply_batch(batch).map_err(engine_err)
    }

    fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.tree(tree);
        let iter = match to {
            Some(to) => tree.range(from.to_vec()..to.to_vec()),
            None => tree.range(from.to_vec()..),
        };
        iter.take(limit).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine_err)).collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.tree(tree).last().map_err(engine_err)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(engine_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_scans_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open(dir.path()).unwrap();
            let ops = (0u64..10).map(|i| (i.to_be_bytes().to_vec(), Some(vec![i as u8]))).collect();
            e.write(Tree::Log, ops).unwrap();
            e.write(Tree::Meta, vec![(b"vote".to_vec(), Some(b"v1".to_vec()))]).unwrap();
            e.write(Tree::Log, vec![(3u64.to_be_bytes().to_vec(), None)]).unwrap();
            e.flush().unwrap();
        }
        let e = SledEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(Tree::Meta, b"vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(e.get(Tree::Log, &3u64.to_be_bytes()).unwrap(), None);
        let rows = e.scan(Tree::Log, &2u64.to_be_bytes(), Some(&6u64.to_be_bytes()), 100).unwrap();
        let values: Vec<u8> = rows.iter().map(|(_, v)| v[0]).collect();
        assert_eq!(values, [2, 4, 5]);
        assert_eq!(e.scan(Tree::Log, &[], None, 2).unwrap().len(), 2);
        assert_eq!(e.last(Tree::Log).unwrap().unwrap().1, vec![9]);
        assert_eq!(e.last(Tree::State).unwrap(), None);
    }
}

#[cfg(test)]
mod flush_cost {
    use super::*;

    /// Not a test: prints what one small durable write costs on this disk.
    /// `cargo test -p goat-storage --release -- --ignored flush_cost --nocapture`
    #[test]
    #[ignore]
    fn print_flush_cost() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let n = 500u64;
        let start = std::time::Instant::now();
        for i in 0..n {
            e.write(Tree::Log, vec![(i.to_be_bytes().to_vec(), Some(vec![0u8; 300]))]).unwrap();
            e.flush().unwrap();
        }
        let per = start.elapsed() / n as u32;
        let f = std::fs::File::create(dir.path().join("raw")).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..n {
            use std::io::Write;
            (&f).write_all(&[0u8; 300]).unwrap();
            f.sync_data().unwrap();
        }
        println!("sled write+flush: {per:?}; raw write+fdatasync: {:?}", start.elapsed() / n as u32);
    }
}
