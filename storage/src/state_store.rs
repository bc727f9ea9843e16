//! The state machine's persisted copy, and its latest snapshot.
//!
//! After each applied batch the tasks and nodes that changed are written to
//! the `State` tree in one atomic write together with the (opaque) applied
//! position, so a restarted manager loads its state instead of replaying the
//! whole log. These writes are not flushed on their own: they become durable
//! with the next log flush, and if a crash loses the last few, the log still
//! holds those entries and they are applied again.
//!
//! The latest snapshot (opaque metadata plus the bincode of the whole
//! `ClusterState`) lives in the same tree, so it is what a lagging follower
//! is sent and what the log is purged behind. Metadata and data are one
//! record (`s/snapshot`: the metadata's length, the metadata, the data), so
//! a reader never pairs one snapshot's metadata with another's data.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Engine, EngineError, Op, Result, Tree};
use crate::fsm::{ClusterState, Dirty};
use crate::model::{ApiToken, Node, Service, Task};

const TASK_PREFIX: u8 = b't';
const NODE_PREFIX: u8 = b'n';
const TOKEN_PREFIX: u8 = b'k';
const SERVICE_PREFIX: u8 = b'v';
const APPLIED: &[u8] = b"a/applied";
const SNAPSHOT: &[u8] = b"s/snapshot";
/// Where stores written before the single record kept the two halves; read
/// once if `s/snapshot` is absent, deleted by the next `save_snapshot`.
const LEGACY_SNAPSHOT_META: &[u8] = b"s/meta";
const LEGACY_SNAPSHOT_DATA: &[u8] = b"s/data";

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("bincode encoding into a Vec")
}

pub fn decode<T: serde::de::DeserializeOwned>(tree: Tree, bytes: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| EngineError::Corrupt { tree, message: e.to_string() })
}

fn task_key(task: &uuid::Uuid) -> Vec<u8> {
    let mut key = vec![TASK_PREFIX];
    key.extend_from_slice(task.as_bytes());
    key
}

fn token_key(id: &str) -> Vec<u8> {
    let mut key = vec![TOKEN_PREFIX];
    key.extend_from_slice(id.as_bytes());
    key
}

fn service_key(name: &str) -> Vec<u8> {
    let mut key = vec![SERVICE_PREFIX];
    key.extend_from_slice(name.as_bytes());
    key
}

fn node_key(name: &str) -> Vec<u8> {
    let mut key = vec![NODE_PREFIX];
    key.extend_from_slice(name.as_bytes());
    key
}

/// A saved snapshot: opaque metadata (the Raft layer's) and the state bytes.
pub struct StoredSnapshot {
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateStore {
    engine: Arc<dyn Engine>,
}

impl StateStore {
    pub fn new(engine: Arc<dyn Engine>) -> StateStore {
        StateStore { engine }
    }

    /// Loads the persisted state and its applied position (None when the
    /// store is new).
    pub fn load(&self) -> Result<(ClusterState, Option<Vec<u8>>)> {
        let mut tasks = BTreeMap::new();
        for (_, bytes) in self.engine.scan(Tree::State, &[TASK_PREFIX], Some(&[TASK_PREFIX + 1]), usize::MAX)? {
            let task: Box<Task> = decode(Tree::State, &bytes)?;
            tasks.insert(task.id, task);
        }
        let mut nodes = BTreeMap::new();
        for (_, bytes) in self.engine.scan(Tree::State, &[NODE_PREFIX], Some(&[NODE_PREFIX + 1]), usize::MAX)? {
            let node: Node = decode(Tree::State, &bytes)?;
            nodes.insert(node.name.clone(), node);
        }
        let mut state = ClusterState::from_parts(tasks, nodes);
        for (_, bytes) in self.engine.scan(Tree::State, &[TOKEN_PREFIX], Some(&[TOKEN_PREFIX + 1]), usize::MAX)? {
            let token: ApiToken = decode(Tree::State, &bytes)?;
            state.tokens.insert(token.id.clone(), token);
        }
        for (_, bytes) in self.engine.scan(Tree::State, &[SERVICE_PREFIX], Some(&[SERVICE_PREFIX + 1]), usize::MAX)? {
            let service: Service = decode(Tree::State, &bytes)?;
            state.services.insert(service.name.clone(), service);
        }
        Ok((state, self.engine.get(Tree::State, APPLIED)?))
    }

    /// Writes what changed since the last save, with the applied position,
    /// atomically.
    pub fn save_changes(&self, state: &ClusterState, dirty: Dirty, applied: Vec<u8>) -> Result<()> {
        let mut ops: Vec<Op> = Vec::with_capacity(dirty.tasks.len() + dirty.nodes.len() + 1);
        for id in &dirty.tasks {
            ops.push((task_key(id), state.tasks.get(id).map(encode)));
        }
        for name in &dirty.nodes {
            ops.push((node_key(name), state.nodes.get(name).map(encode)));
        }
        for id in &dirty.tokens {
            ops.push((token_key(id), state.tokens.get(id).map(encode)));
        }
        for name in &dirty.services {
            ops.push((service_key(name), state.services.get(name).map(encode)));
        }
        ops.push((APPLIED.to_vec(), Some(applied)));
        self.engine.write(Tree::State, ops)
    }

    /// Replaces the whole persisted state (after installing a snapshot), in
    /// one atomic write.
    pub fn replace(&self, state: &ClusterState, applied: Vec<u8>) -> Result<()> {
        let ops = self.replace_ops(state, applied)?;
        self.engine.write(Tree::State, ops)
    }

    fn replace_ops(&self, state: &ClusterState, applied: Vec<u8>) -> Result<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::new();
        for prefix in [TASK_PREFIX, NODE_PREFIX, TOKEN_PREFIX, SERVICE_PREFIX] {
            for (key, _) in self.engine.scan(Tree::State, &[prefix], Some(&[prefix + 1]), usize::MAX)? {
                ops.push((key, None));
            }
        }
        ops.extend(state.tasks.iter().map(|(id, t)| (task_key(id), Some(encode(t)))));
        ops.extend(state.nodes.iter().map(|(name, n)| (node_key(name), Some(encode(n)))));
        ops.extend(state.tokens.iter().map(|(id, t)| (token_key(id), Some(encode(t)))));
        ops.extend(state.services.iter().map(|(name, s)| (service_key(name), Some(encode(s)))));
        ops.push((APPLIED.to_vec(), Some(applied)));
        Ok(ops)
    }

    /// Saves a snapshot durably, replacing the previous one.
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<()> {
        self.engine.write(Tree::State, snapshot_ops(snapshot))?;
        self.engine.flush()
    }

    /// Installs a snapshot received from the leader: the persisted state is
    /// replaced by `state` and the snapshot saved, in one atomic write, then
    /// flushed.
    pub fn install(&self, state: &ClusterState, applied: Vec<u8>, snapshot: &StoredSnapshot) -> Result<()> {
        let mut ops = self.replace_ops(state, applied)?;
        ops.extend(snapshot_ops(snapshot));
        self.engine.write(Tree::State, ops)?;
        self.engine.flush()
    }

    /// The latest snapshot, read in one get.
    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>> {
        if let Some(record) = self.engine.get(Tree::State, SNAPSHOT)? {
            return decode_snapshot(&record).map(Some);
        }
        // A store from before the single record: one scan of the two
        // adjacent keys is one consistent read.
        let rows = self.engine.scan(Tree::State, LEGACY_SNAPSHOT_DATA, Some(b"s/n"), 2)?;
        let find = |key: &[u8]| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match (find(LEGACY_SNAPSHOT_META), find(LEGACY_SNAPSHOT_DATA)) {
            (Some(meta), Some(data)) => Ok(Some(StoredSnapshot { meta, data })),
            _ => Ok(None),
        }
    }
}

fn snapshot_ops(snapshot: &StoredSnapshot) -> Vec<Op> {
    let mut record = Vec::with_capacity(8 + snapshot.meta.len() + snapshot.data.len());
    record.extend_from_slice(&(snapshot.meta.len() as u64).to_be_bytes());
    record.extend_from_slice(&snapshot.meta);
    record.extend_from_slice(&snapshot.data);
    vec![
        (SNAPSHOT.to_vec(), Some(record)),
        (LEGACY_SNAPSHOT_META.to_vec(), None),
        (LEGACY_SNAPSHOT_DATA.to_vec(), None),
    ]
}

fn decode_snapshot(record: &[u8]) -> Result<StoredSnapshot> {
    let corrupt = |message: String| EngineError::Corrupt { tree: Tree::State, message };
    let (len, rest) = record.split_at_checked(8).ok_or_else(|| corrupt("snapshot record under 8 bytes".into()))?;
    let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
    let len = usize::try_from(len).ok().filter(|l| *l <= rest.len());
    let len =
        len.ok_or_else(|| corrupt(format!("snapshot metadata longer than its record ({} bytes)", record.len())))?;
    let (meta, data) = rest.split_at(len);
    Ok(StoredSnapshot { meta: meta.to_vec(), data: data.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SledEngine;
    use crate::fsm::Command;
    use crate::model::{EngineStatus, Resources};

    #[test]
    fn changes_and_replacements_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let store = StateStore::new(engine.clone());
        assert_eq!(store.load().unwrap().1, None);

        let mut state = ClusterState::default();
        let spec = serde_json::from_str(r#"{"name":"a","image":"b"}"#).unwrap();
        let ids: Vec<_> = (1..=3u128).map(uuid::Uuid::from_u128).collect();
        for id in &ids {
            state.apply(&Command::SubmitTask { task_id: *id, spec: Clone::clone(&spec), at: 1 });
        }
        let engine_ok = EngineStatus { healthy: true, error: None };
        state.apply(&Command::UpsertNode {
            name: "w1".into(),
            capacity: Resources::default(),
            engine: engine_ok,
            at: 1,
        });
        let token = crate::model::ApiToken {
            id: "ab12".into(),
            name: String::new(),
            role: crate::model::Role::Read,
            hash: "00".into(),
            created_at: 1,
        };
        state.apply(&Command::CreateToken { token });
        let dirty = state.take_dirty();
        store.save_changes(&state, dirty, b"applied-5".to_vec()).unwrap();

        let (loaded, applied) = store.load().unwrap();
        assert_eq!(applied, Some(b"applied-5".to_vec()));
        assert_eq!(loaded.tasks, state.tasks);
        assert_eq!(loaded.nodes, state.nodes);
        assert_eq!(loaded.tokens, state.tokens);

        let smaller =
            ClusterState::from_parts(BTreeMap::from([(ids[0], state.tasks[&ids[0]].clone())]), BTreeMap::new());
        store.replace(&smaller, b"applied-9".to_vec()).unwrap();
        let (loaded, applied) = store.load().unwrap();
        assert_eq!(applied, Some(b"applied-9".to_vec()));
        assert_eq!(loaded.tasks.len(), 1);
        assert!(loaded.nodes.is_empty());

        assert!(store.snapshot().unwrap().is_none());
        store.save_snapshot(&StoredSnapshot { meta: b"m".to_vec(), data: b"d".to_vec() }).unwrap();
        assert_eq!(store.snapshot().unwrap().unwrap().data, b"d".to_vec());
    }

    /// Point 4(a): metadata and data come from one record. A reader racing a
    /// writer that keeps replacing the snapshot always gets a matching pair.
    #[test]
    fn a_snapshot_read_never_pairs_one_snapshots_meta_with_anothers_data() {
        let engine: Arc<dyn Engine> = Arc::new(crate::mem_engine::MemEngine::new());
        let store = StateStore::new(engine);
        let snap = |i: u32| StoredSnapshot { meta: i.to_be_bytes().to_vec(), data: vec![i as u8; 64 + i as usize] };
        store.save_snapshot(&snap(0)).unwrap();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 1..2000 {
                    store.save_snapshot(&snap(i)).unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let got = store.snapshot().unwrap().unwrap();
            let i = u32::from_be_bytes(got.meta.as_slice().try_into().unwrap());
            assert_eq!(got.data, snap(i).data, "torn snapshot: meta of {i} with other data");
            reads += 1;
        }
        writer.join().unwrap();
        assert_eq!(store.snapshot().unwrap().unwrap().meta, 1999u32.to_be_bytes());
    }

    #[test]
    fn a_legacy_two_key_snapshot_is_read_and_replaced() {
        let engine: Arc<dyn Engine> = Arc::new(crate::mem_engine::MemEngine::new());
        engine
            .write(
                Tree::State,
                vec![
                    (LEGACY_SNAPSHOT_META.to_vec(), Some(b"m".to_vec())),
                    (LEGACY_SNAPSHOT_DATA.to_vec(), Some(b"d".to_vec())),
                ],
            )
            .unwrap();
        let store = StateStore::new(engine.clone());
        let got = store.snapshot().unwrap().unwrap();
        assert_eq!((got.meta, got.data), (b"m".to_vec(), b"d".to_vec()));
        store.save_snapshot(&StoredSnapshot { meta: b"m2".to_vec(), data: vec![] }).unwrap();
        assert_eq!(engine.get(Tree::State, LEGACY_SNAPSHOT_META).unwrap(), None);
        let got = store.snapshot().unwrap().unwrap();
        assert_eq!((got.meta, got.data), (b"m2".to_vec(), vec![]));
        assert!(decode_snapshot(&[0, 0, 0, 0, 0, 0, 0, 9, 1]).is_err());
    }
}
