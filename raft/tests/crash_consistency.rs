//! Crash consistency of the real log store and state machine
//! (`LogStore` over `RaftLog`, `StateMachine` over `StateStore`) on
//! `MemEngine`, whose crash drops every write not yet flushed.
//!
//! A seeded random run drives the stores the way openraft does (votes,
//! appends with and without waiting for their acknowledgement, truncation of
//! an uncommitted suffix, commits, applies, snapshots, purges). Before every
//! step the engine is forked and the copy crashed, keeping none, some or all
//! of its unsynced batches (a disk writes a prefix of them), and the stores
//! are reopened on it. The checker then demands that everything acknowledged
//! survived — the vote `save_vote` returned, every entry whose append
//! callback fired, every truncation `truncate` returned — and that the store
//! reopens consistently: a log without holes between the purge point and the
//! last entry, a committed position the log can re-apply, a state machine
//! equal to replaying the committed entries up to its applied position, and a
//! snapshot covering the purge point.
//!
//! The same run over an engine whose flush does nothing (a store that
//! acknowledges before syncing) must be caught.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc, Arc};

use goat_raft::log_store::LogStore;
use goat_raft::state_machine::StateMachine;
use goat_raft::{Command, LogId, NodeId, TypeConfig};
use goat_storage::engine::{Engine, Op, Result as EngineResult, Tree};
use goat_storage::fsm::ClusterState;
use goat_storage::mem_engine::MemEngine;
use goat_storage::raft_log::RaftLog;
use goat_storage::state_store::StateStore;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder, Vote};
use parking_lot::Mutex;

type Entry = openraft::Entry<TypeConfig>;

/// An engine that acknowledges without syncing: the bug the test must catch.
struct NoSync(MemEngine);

impl Engine for NoSync {
    fn get(&self, tree: Tree, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        self.0.get(tree, key)
    }
    fn write(&self, tree: Tree, ops: Vec<Op>) -> EngineResult<()> {
        self.0.write(tree, ops)
    }
    fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> EngineResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan(tree, from, to, limit)
    }
    fn last(&self, tree: Tree) -> EngineResult<Option<(Vec<u8>, Vec<u8>)>> {
        self.0.last(tree)
    }
    fn flush(&self) -> EngineResult<()> {
        Ok(())
    }
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let spec = serde_json::from_value(serde_json::json!({"name": format!("t{index}"), "image": "goat-echo:latest"}))
        .expect("spec");
    let task_id = uuid::Uuid::from_u64_pair(term, index);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::SubmitTask { task_id, spec, at: index }),
    }
}

/// What the stores have acknowledged so far, and what may legitimately be
/// found after a crash.
#[derive(Clone, Default)]
struct Acked {
    vote: Option<Vote<NodeId>>,
    /// Entries whose append callback fired, minus truncated ones.
    entries: BTreeMap<u64, LogId>,
    /// Every log id written at an index since the last acknowledged
    /// truncation that covered it: nothing else may appear there.
    written: BTreeMap<u64, BTreeSet<LogId>>,
    /// Committed entries (never truncated), for replaying the state.
    committed: BTreeMap<u64, Entry>,
}

/// The state that applying the committed entries up to `upto` gives, from a
/// fresh state machine.
async fn replay(acked: &Acked, upto: u64) -> ClusterState {
    let mut sm = StateMachine::open(StateStore::new(Arc::new(MemEngine::new()))).expect("fresh sm");
    let entries: Vec<Entry> = acked.committed.range(..=upto).map(|(_, e)| e.clone()).collect();
    sm.apply(entries).await.expect("replay");
    let shared = sm.shared();
    let applied = shared.read();
    applied.state.clone()
}

fn same_data(a: &ClusterState, b: &ClusterState) -> bool {
    a.tasks == b.tasks && a.nodes == b.nodes
}

/// Reopens stores on `disk` (a crashed copy) and checks them against what
/// was acknowledged. Returns what is wrong.
async fn check(disk: MemEngine, acked: &Acked) -> Vec<String> {
    let mut wrong = Vec::new();
    let engine: Arc<dyn Engine> = Arc::new(disk);
    let mut log = LogStore::new(RaftLog::new(engine.clone()));
    let mut sm = match StateMachine::open(StateStore::new(engine)) {
        Ok(sm) => sm,
        Err(e) => return vec![format!("the state machine does not open: {e}")],
    };

    let vote = log.read_vote().await.expect("read vote");
    if vote < acked.vote {
        wrong.push(format!("vote went back: acknowledged {:?}, found {vote:?}", acked.vote));
    }

    let state = log.get_log_state().await.expect("log state");
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let last = state.last_log_id.map_or(0, |l| l.index);
    let entries = log.try_get_log_entries(purged + 1..=last).await.expect("read log");
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    if indexes != (purged + 1..=last).collect::<Vec<_>>() {
        wrong.push(format!("hole in the log between purge point {purged} and last {last}: {indexes:?}"));
    }
    let found: BTreeMap<u64, LogId> = entries.iter().map(|e| (e.log_id.index, e.log_id)).collect();
    for (index, id) in acked.entries.range(purged + 1..) {
        if found.get(index) != Some(id) {
            wrong.push(format!("acknowledged entry {id} lost (found {:?})", found.get(index)));
        }
    }
    for (index, id) in &found {
        if !acked.written.get(index).is_some_and(|ids| ids.contains(id)) {
            wrong.push(format!("entry {id} reappeared after its truncation was acknowledged"));
        }
    }

    let (applied, _) = sm.applied_state().await.expect("applied");
    let applied_index = applied.map_or(0, |l| l.index);
    if applied_index < purged {
        wrong.push(format!("applied {applied_index} is behind the purge point {purged}: openraft cannot start"));
    }
    if applied.is_some() && acked.committed.get(&applied_index).map(|e| e.log_id) != applied {
        wrong.push(format!("applied position {applied:?} is not a committed entry"));
    }
    let expected = replay(acked, applied_index).await;
    if !same_data(&sm.shared().read().state, &expected) {
        wrong.push(format!("state machine at {applied_index} differs from replaying the committed log"));
    }
    let committed = log.read_committed().await.expect("committed").map_or(0, |l| l.index);
    if committed > applied_index && (applied_index + 1..=committed).any(|i| !found.contains_key(&i)) {
        wrong.push(format!("committed {committed} cannot be re-applied from {applied_index}: entries missing"));
    }
    match sm.get_current_snapshot().await.expect("snapshot") {
        Some(snapshot) => {
            let at = snapshot.meta.last_log_id.map_or(0, |l| l.index);
            if at < purged {
                wrong.push(format!("snapshot at {at} does not cover the purge point {purged}"));
            }
            let data: ClusterState =
                goat_raft::codec::decode(snapshot.snapshot.get_ref()).expect("snapshot data decodes");
            if !same_data(&data, &replay(acked, at).await) {
                wrong.push(format!("snapshot at {at} differs from replaying the committed log"));
            }
        }
        None if purged > 0 => wrong.push(format!("log purged to {purged} with no snapshot")),
        None => {}
    }
    wrong
}

/// Drives the stores through `steps` random operations on `engine`, forks
/// `disk` before every step and checks each crash. Returns every violation.
/// How many of each operation a run made, so a test can tell it covered them.
#[derive(Debug, Default)]
struct Stats {
    crashes: usize,
    votes: usize,
    appends: usize,
    truncations: usize,
    applies: usize,
    snapshots: usize,
    purges: usize,
}

async fn run(seed: u64, steps: usize, engine: Arc<dyn Engine>, disk: MemEngine, inline: bool) -> (Vec<String>, Stats) {
    let mut stats = Stats::default();
    let mut rng = Rng(seed);
    let raw = if inline { RaftLog::new_inline(engine.clone()) } else { RaftLog::new(engine.clone()) };
    let mut log = LogStore::new(raw);
    let mut sm = StateMachine::open(StateStore::new(engine)).expect("open sm");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let mut in_flight = 0usize;
    let (mut term, mut next, mut committed, mut applied, mut snapshot_at, mut purged) = (1u64, 1u64, 0u64, 0, 0, 0);
    let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
    let mut violations = Vec::new();

    for step in 0..steps {
        // Crash here: none, a random prefix, or all of the unsynced batches.
        let facts = acked.lock().clone();
        let unsynced = disk.unsynced_batches();
        for kept in [0, rng.below(unsynced as u64 + 1) as usize, unsynced] {
            let copy = disk.fork();
            copy.crash_keeping(kept);
            stats.crashes += 1;
            for w in check(copy, &facts).await {
                violations.push(format!("seed {seed} step {step} kept {kept}/{unsynced}: {w}"));
            }
        }
        if !violations.is_empty() {
            return (violations, stats);
        }

        let wait_all = |in_flight: &mut usize| {
            while *in_flight > 0 {
                ack_rx.recv().expect("ack");
                *in_flight -= 1;
            }
        };
        match rng.below(10) {
            0 => {
                term += 1;
                let vote = Vote::new(term, 1);
                log.save_vote(&vote).await.expect("save vote");
                acked.lock().vote = Some(vote);
                stats.votes += 1;
            }
            1..=4 => {
                let n = 1 + rng.below(3);
                let batch: Vec<Entry> = (next..next + n).map(|i| entry(term, i)).collect();
                {
                    let mut a = acked.lock();
                    for e in &batch {
                        a.written.entry(e.log_id.index).or_default().insert(e.log_id);
                        terms.insert(e.log_id.index, term);
                    }
                }
                let ids: Vec<LogId> = batch.iter().map(|e| e.log_id).collect();
                let (acked, tx) = (acked.clone(), ack_tx.clone());
                log.append_then(batch, move |r| {
                    if r.is_ok() {
                        let mut a = acked.lock();
                        for id in ids {
                            a.entries.insert(id.index, id);
                        }
                    }
                    let _ = tx.send(());
                })
                .await
                .expect("append");
                in_flight += 1;
                stats.appends += 1;
                next += n;
                if rng.below(2) == 0 {
                    wait_all(&mut in_flight);
                }
            }
            5 if next - 1 > committed => {
                // A new leader overwrites the uncommitted suffix.
                wait_all(&mut in_flight);
                let at = committed + 1 + rng.below(next - 1 - committed);
                log.truncate(log_id(terms[&at], at)).await.expect("truncate");
                let mut a = acked.lock();
                a.entries.retain(|i, _| *i < at);
                a.written.retain(|i, _| *i < at);
                drop(a);
                terms.retain(|i, _| *i < at);
                next = at;
                term += 1;
                stats.truncations += 1;
            }
            6 => {
                wait_all(&mut in_flight);
                let last_acked = acked.lock().entries.keys().next_back().copied().unwrap_or(0);
                if last_acked > committed {
                    committed += 1 + rng.below(last_acked - committed);
                    let entries = log.try_get_log_entries(1.max(purged + 1)..=committed).await.expect("read");
                    {
                        let mut a = acked.lock();
                        for e in entries {
                            a.committed.insert(e.log_id.index, e);
                        }
                    }
                    log.save_committed(Some(log_id(terms[&committed], committed))).await.expect("committed");
                }
            }
            7 if committed > applied => {
                let upto = applied + 1 + rng.below(committed - applied);
                let entries = log.try_get_log_entries(applied + 1..=upto).await.expect("read");
                sm.apply(entries).await.expect("apply");
                applied = upto;
                stats.applies += 1;
            }
            8 if applied > snapshot_at => {
                let mut builder = sm.get_snapshot_builder().await;
                builder.build_snapshot().await.expect("snapshot");
                snapshot_at = applied;
                stats.snapshots += 1;
            }
            9 if snapshot_at > purged => {
                wait_all(&mut in_flight);
                let upto = purged + 1 + rng.below(snapshot_at - purged);
                log.purge(log_id(terms[&upto], upto)).await.expect("purge");
                purged = upto;
                stats.purges += 1;
            }
            _ => {}
        }
    }
    (violations, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_a_crash_at_any_point() {
    for seed in 1..=6u64 {
        let disk = MemEngine::new();
        let (violations, stats) = run(seed * 7919, 150, Arc::new(disk.clone()), disk, false).await;
        assert!(violations.is_empty(), "{}", violations.join("\n"));
        eprintln!("seed {seed}: {stats:?}");
        assert!(stats.crashes >= 450 && stats.votes > 0 && stats.appends > 0, "{stats:?}");
        assert!(stats.truncations > 0 && stats.applies > 0 && stats.snapshots > 0 && stats.purges > 0, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_a_store_that_acknowledges_before_syncing() {
    let disk = MemEngine::new();
    let (violations, _) = run(7919, 150, Arc::new(NoSync(disk.clone())), disk, false).await;
    assert!(!violations.is_empty(), "a store that never syncs passed the crash check");
    let first = &violations[0];
    eprintln!("caught: {first}");
    assert!(first.contains("lost") || first.contains("went back"), "unexpected first violation: {first}");
}

/// The flusher-less log the simulation uses (`RaftLog::new_inline`) keeps the
/// same promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inline_log_survives_a_crash_at_any_point_too() {
    for seed in [3u64, 11] {
        let disk = MemEngine::new();
        let (violations, _) = run(seed * 104_729, 120, Arc::new(disk.clone()), disk, true).await;
        assert!(violations.is_empty(), "{}", violations.join("\n"));
    }
}
