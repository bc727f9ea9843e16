//! The key-value engine under every Goat store, behind a small trait so that
//! sled (stable but unmaintained) can be swapped for another engine without
//! touching the Raft log or the state machine.
//!
//! An engine holds a few named trees. Writes to one tree in one `write` call
//! are atomic. Nothing is durable until `flush` returns: that is the one
//! place where the engine waits for the disk, and callers decide when to pay
//! for it (the Raft log does, before acknowledging entries; the state machine
//! does not need to, because the log can replay it).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

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

/// Makes a sled database's writes durable, which sled 0.34 alone does not.
///
/// `sled::Db::flush` writes its buffers with `pwrite` and then calls
/// `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` on the ranges written:
/// that starts and waits for writeback of those pages, but it flushes neither
/// the drive's volatile cache nor the file's metadata (its size, when a new
/// segment extended the file), so after a power cut the data can be gone.
/// sled also writes values too big for a log segment (over ~128 KiB: large
/// batch entries, snapshots) to `blobs/<lsn>` files that it never syncs, and
/// renames its own page-table snapshots (`snap.<lsn>`) without syncing the
/// directory.
///
/// `sync` runs after sled's flush: one `fdatasync` of the `db` file through a
/// descriptor kept open (any descriptor of an inode flushes it), and, only
/// when they changed since the last sync, an `fsync` of each new blob file
/// and of `blobs/`, and of the data directory when sled's snapshot files
/// changed. In steady state that is one `fdatasync` per flush.
pub struct SledSync {
    dir: PathBuf,
    db_file: File,
    seen: Mutex<Seen>,
}

/// What `SledSync` has already made durable.
#[derive(Default)]
struct Seen {
    blobs: BTreeSet<std::ffi::OsString>,
    snapshots: BTreeSet<std::ffi::OsString>,
}

fn io_engine_err(what: &str, path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Engine(format!("{what} {}: {e}", path.display()))
}

impl SledSync {
    /// Call right after `sled::Config::open` on `dir`: syncs the files sled
    /// created (`db`, `conf`, `blobs/`) and the directory entries naming them.
    pub fn open(dir: &Path) -> Result<SledSync> {
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|e| io_engine_err("opening", &db_path, e))?;
        let sync = SledSync { dir: dir.to_path_buf(), db_file, seen: Mutex::default() };
        for name in ["conf", "db"] {
            let path = dir.join(name);
            if path.exists() {
                sync_path(&path)?;
            }
        }
        sync_path(&dir.join("blobs"))?;
        sync_path(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The data directory itself may be new.
            sync_path(parent)?;
        }
        // Blobs and snapshots present at open were either synced before or
        // are what the disk kept: count them as seen.
        let mut seen = sync.seen.lock();
        seen.blobs = list(&dir.join("blobs"), |_| true)?;
        seen.snapshots = list(dir, is_snapshot)?;
        drop(seen);
        Ok(sync)
    }

    /// Flushes `db` (sled's flush, then the syncs above). Blocks until the
    /// disk has every write made before the call.
    pub fn flush(&self, db: &sled::Db) -> Result<()> {
        db.flush().map_err(engine_err)?;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        // One sync at a time: the bookkeeping of blobs and snapshots must see
        // the directory as the sync it guards left it.
        let mut seen = self.seen.lock();
        let blob_dir = self.dir.join("blobs");
        let blobs = list(&blob_dir, |_| true)?;
        let new_blobs: Vec<_> = blobs.difference(&seen.blobs).cloned().collect();
        for name in &new_blobs {
            match File::open(blob_dir.join(name)) {
                Ok(f) => f.sync_all().map_err(|e| io_engine_err("syncing blob", &blob_dir.join(name), e))?,
                // Collected by sled between the listing and the open.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_engine_err("opening blob", &blob_dir.join(name), e)),
            }
        }
        self.db_file.sync_data().map_err(|e| io_engine_err("fdatasync", &self.dir.join("db"), e))?;
        if !new_blobs.is_empty() {
            sync_path(&blob_dir)?;
        }
        seen.blobs = blobs;
        let snapshots = list(&self.dir, is_snapshot)?;
        if snapshots != seen.snapshots {
            sync_path(&self.dir)?;
            seen.snapshots = snapshots;
        }
        Ok(())
    }
}

fn is_snapshot(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
}

/// The names in `dir` that `keep` accepts (empty if `dir` does not exist).
fn list(dir: &Path, keep: impl Fn(&std::ffi::OsStr) -> bool) -> Result<BTreeSet<std::ffi::OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(io_engine_err("listing", dir, e)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let name = entry.map_err(|e| io_engine_err("listing", dir, e))?.file_name();
        if keep(&name) {
            names.insert(name);
        }
    }
    Ok(names)
}

/// `fsync` of a file or directory by path (a missing one is skipped).
fn sync_path(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_all().map_err(|e| io_engine_err("fsync", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_engine_err("opening", path, e)),
    }
}

/// The sled engine: one `sled::Db` per data directory, one sled tree per
/// [`Tree`]. All trees share sled's log, so one flush covers them all, and
/// [`SledSync`] makes that flush durable.
pub struct SledEngine {
    db: sled::Db,
    sync: SledSync,
    log: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
}

fn engine_err(e: sled::Error) -> EngineError {
    EngineError::Engine(e.to_string())
}

impl SledEngine {
    pub fn open(dir: &Path) -> Result<SledEngine> {
        let config = sled::Config::new()
            .path(dir)
            // Goat flushes explicitly where durability is owed; the
            // background flusher only bounds how much the others can lose.
            .flush_every_ms(Some(1_000))
            .cache_capacity(256 << 20);
        let db = open_sled(&config).map_err(engine_err)?;
        let sync = SledSync::open(dir)?;
        let open = |t: Tree| db.open_tree(t.name()).map_err(engine_err);
        Ok(SledEngine { log: open(Tree::Log)?, meta: open(Tree::Meta)?, state: open(Tree::State)?, sync, db })
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
        self.sync.flush(&self.db)
    }
}

/// Opens sled's database of `config`, waiting (at most 3 s) while another
/// handle on the same directory in this process is still closing: sled
/// releases its file lock only when its background flusher thread lets go
/// of the last reference, a moment after the `Db` is dropped, so a store
/// closed and reopened at once (a manager restarted in-process, a test)
/// would otherwise fail with `WouldBlock`. Another process holding the
/// lock still fails, after the wait.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
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

    /// Values over sled's segment threshold go to `blobs/` files that sled
    /// never syncs: the flush finds and syncs them, and they read back.
    #[test]
    fn large_values_go_to_blobs_that_the_flush_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 1 << 20];
        {
            let e = SledEngine::open(dir.path()).unwrap();
            e.write(Tree::State, vec![(b"s/data".to_vec(), Some(big.clone()))]).unwrap();
            e.flush().unwrap();
            let synced = e.sync.seen.lock().blobs.len();
            assert!(synced >= 1, "the 1 MiB value was not a blob: sled changed its layout");
            assert_eq!(synced, std::fs::read_dir(dir.path().join("blobs")).unwrap().count());
        }
        let e = SledEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(Tree::State, b"s/data").unwrap(), Some(big));
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
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let n = 500u64;
        let start = std::time::Instant::now();
        for i in 0..n {
            e.write(Tree::Log, vec![(i.to_be_bytes().to_vec(), Some(vec![0u8; 300]))]).unwrap();
            e.flush().unwrap();
        }
        let per = start.elapsed() / n as u32;
        // What the flush cost before it was made durable: sled's own flush
        // (pwrite + sync_file_range), no fdatasync.
        let start = std::time::Instant::now();
        for i in n..2 * n {
            e.write(Tree::Log, vec![(i.to_be_bytes().to_vec(), Some(vec![0u8; 300]))]).unwrap();
            e.db.flush().unwrap();
        }
        let sled_only = start.elapsed() / n as u32;
        let f = std::fs::File::create(dir.path().join("raw")).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..n {
            use std::io::Write;
            (&f).write_all(&[0u8; 300]).unwrap();
            f.sync_data().unwrap();
        }
        println!(
            "durable write+flush (sled flush + fdatasync): {per:?}; sled's flush alone (not durable): {sled_only:?}; \
             raw write+fdatasync: {:?}",
            start.elapsed() / n as u32
        );
    }
}
