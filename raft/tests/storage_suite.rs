//! openraft's own storage test suite, run against Goat's sled-backed log
//! store and state machine on real files.

use std::sync::Arc;

use goat_raft::log_store::LogStore;
use goat_raft::state_machine::StateMachine;
use goat_raft::{StorageError, TypeConfig};
use goat_storage::engine::SledEngine;
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
