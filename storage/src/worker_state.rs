//! A worker's local state on disk: what it must remember across its own
//! crashes so that it can carry on before it reaches a manager.
//!
//! Two things are kept, in a sled database inside the worker's data dir:
//!
//! - the last assignment list a manager sent (`HeartbeatReply.assignments`),
//!   so a restarted worker keeps running its tasks while no manager answers;
//! - one [`TaskRecord`] per task: the restart bookkeeping of the current
//!   placement (attempts, restarts, backoff deadline, final outcome), so a
//!   restarted worker keeps counting instead of granting fresh attempts.
//!
//! Values are JSON: the records are tiny and written rarely (on a decision,
//! not on every loop), and JSON stays readable when debugging a node. The
//! store does no networking and knows nothing of Docker.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, SledSync};
use crate::model::{Assignment, ObservedState, TaskId};

const ASSIGNMENTS_KEY: &[u8] = b"assignments";
const TASKS_TREE: &str = "tasks";

#[derive(Debug, thiserror::Error)]
pub enum WorkerStateError {
    #[error("worker state database: {0}")]
    Db(#[from] sled::Error),
    #[error("worker state record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("worker state sync: {0}")]
    Sync(#[from] EngineError),
}

pub type Result<T> = std::result::Result<T, WorkerStateError>;

/// How a task's placement ended on this worker, once it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `Completed` or `Failed`.
    pub state: ObservedState,
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
}

/// The restart bookkeeping of one task's current placement (generation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The placement this record belongs to; a new generation starts afresh.
    pub generation: u64,
    /// Restarts performed for this placement (reported to the leader).
    pub restarts: u32,
    /// Consecutive failed runs since the container last ran stably; drives
    /// the backoff delay and `max_attempts`.
    pub attempts: u32,
    /// The exit already accounted for (`<container id>@<finished at>`), so
    /// that seeing the same exited container twice counts it once.
    pub last_exit: Option<String>,
    /// Exit code of the last exit, for reports.
    pub last_exit_code: Option<i64>,
    /// Why the last run ended (for reports while restarting).
    pub last_reason: Option<String>,
    /// Earliest time (Unix ms) the container may be started again.
    pub next_start_at: Option<u64>,
    /// The container this worker stopped because its health check failed:
    /// its exit is a failure whatever its exit code.
    pub health_killed: Option<String>,
    /// Set once the placement has ended; it is then never started again.
    pub outcome: Option<Outcome>,
    /// Host ports the worker chose for this placement's ports without a
    /// fixed `host` (container port → host port): requested again whenever
    /// the container is recreated, so clients keep their address.
    #[serde(default)]
    pub host_ports: BTreeMap<u16, u16>,
}

impl TaskRecord {
    pub fn new(generation: u64) -> TaskRecord {
        TaskRecord { generation, ..TaskRecord::default() }
    }
}

/// The worker's local store. Cheap to clone: clones share the database.
///
/// Every write returns only once it is durable (sled's flush, then an
/// `fdatasync` through [`SledSync`]): the worker acts on these records
/// (starts a container, reports an outcome, counts an attempt) right after
/// writing them, so a power cut must not take them back.
#[derive(Clone)]
pub struct WorkerStore {
    db: sled::Db,
    sync: std::sync::Arc<SledSync>,
    tasks: sled::Tree,
}

impl WorkerStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<WorkerStore> {
        let path = dir.join("worker-state");
        let db = crate::engine::open_sled(&sled::Config::new().path(&path))?;
        let sync = std::sync::Arc::new(SledSync::open(&path)?);
        let tasks = db.open_tree(TASKS_TREE)?;
        Ok(WorkerStore { db, sync, tasks })
    }

    fn flush(&self) -> Result<()> {
        Ok(self.sync.flush(&self.db)?)
    }

    /// The last assignment list received from a manager; `None` if this
    /// worker never heard from one.
    pub fn assignments(&self) -> Result<Option<Vec<Assignment>>> {
        match self.db.get(ASSIGNMENTS_KEY)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn set_assignments(&self, assignments: &[Assignment]) -> Result<()> {
        self.db.insert(ASSIGNMENTS_KEY, serde_json::to_vec(assignments)?)?;
        self.flush()?;
        Ok(())
    }

    pub fn task(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        match self.tasks.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every task record.
    pub fn tasks(&self) -> Result<BTreeMap<TaskId, TaskRecord>> {
        let mut out = BTreeMap::new();
        for entry in self.tasks.iter() {
            let (key, value) = entry?;
            // A key that is not a UUID cannot come from this module; skip it.
            let Ok(id) = TaskId::from_slice(&key) else { continue };
            out.insert(id, serde_json::from_slice(&value)?);
        }
        Ok(out)
    }

    pub fn put_task(&self, id: TaskId, record: &TaskRecord) -> Result<()> {
        self.tasks.insert(id.as_bytes(), serde_json::to_vec(record)?)?;
        self.flush()?;
        Ok(())
    }

    pub fn remove_task(&self, id: TaskId) -> Result<()> {
        self.tasks.remove(id.as_bytes())?;
        self.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredStatus, TaskSpec};

    fn spec(name: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({"name": name, "image": "goat-echo:latest"})).unwrap()
    }

    #[test]
    fn assignments_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignment { task_id: TaskId::new_v4(), generation: 3, desired: DesiredStatus::Run, spec: spec("web") };
        {
            let store = WorkerStore::open(dir.path()).unwrap();
            assert_eq!(store.assignments().unwrap(), None);
            store.set_assignments(std::slice::from_ref(&a)).unwrap();
        }
        let store = WorkerStore::open(dir.path()).unwrap();
        assert_eq!(store.assignments().unwrap(), Some(vec![a]));
        store.set_assignments(&[]).unwrap();
        assert_eq!(store.assignments().unwrap(), Some(vec![]));
    }

    #[test]
    fn task_records_put_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerStore::open(dir.path()).unwrap();
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        let mut rec = TaskRecord::new(2);
        rec.attempts = 3;
        rec.restarts = 4;
        rec.next_start_at = Some(1234);
        rec.outcome =
            Some(Outcome { state: ObservedState::Failed, reason: Some("exit code 1".into()), exit_code: Some(1) });
        store.put_task(a, &rec).unwrap();
        store.put_task(b, &TaskRecord::new(1)).unwrap();
        assert_eq!(store.task(a).unwrap(), Some(rec.clone()));
        assert_eq!(store.tasks().unwrap().len(), 2);
        store.remove_task(b).unwrap();
        assert_eq!(store.task(b).unwrap(), None);
        drop(store);
        let store = WorkerStore::open(dir.path()).unwrap();
        let all = store.tasks().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all.get(&a), Some(&rec));
    }
}
