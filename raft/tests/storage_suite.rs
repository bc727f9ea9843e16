//! openraft's own storage test suite, run against Goat's sled-backed log
//! store and state machine on real files, and on `MemEngine` (the engine the
//! crash tests and the simulation use, so that it is held to the same
//! contract).

use std::sync::Arc;

use goat_raft::log_store::LogStore;
use goat_raft::state_machine::StateMachine;
use goat_raft::{StorageError, TypeConfig};
use goat_storage::engine::SledEngine;
use goat_storage::mem_engine::MemEngine;
use goat_storage::raft_log::RaftLog;
use goat_storage::state_store::StateStore;
use openraft::testing::{StoreBuilder, Suite};

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Arc::new(SledEngine::open(dir.path()).expect("open sled"));
        let log = LogStore::new(RaftLog::new(engine.clone()));
        let sm = StateMachine::open(StateStore::new(engine))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() {
    if let Err(e) = Suite::test_all(SledStoreBuilder) {
        panic!("openraft storage suite failed on the sled store: {e}");
    }
}

struct MemStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemStoreBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let engine = Arc::new(MemEngine::new());
        let log = LogStore::new(RaftLog::new(engine.clone()));
        let sm = StateMachine::open(StateStore::new(engine))?;
        Ok(((), log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_mem_engine() {
    if let Err(e) = Suite::test_all(MemStoreBuilder) {
        panic!("openraft storage suite failed on the in-memory store: {e}");
    }
}
