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
//! is sent and what the log is purged behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Engine, EngineError, Op, Result, Tree};
use crate::fsm::{ClusterState, Dirty};
use crate::model::{ApiToken, Node, Task};

const TASK_PREFIX: u8 = b't';
const NODE_PREFIX: u8 = b'n';
const TOKEN_PREFIX: u8 = b'k';
const APPLIED: &[u8] = b"a/applied";
const SNAPSHOT_META: &[u8] = b"s/meta";
const SNAPSHOT_DATA: &[u8] = b"s/data";

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
            let task: Task = decode(Tree::State, &bytes)?;
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
        ops.push((APPLIED.to_vec(), Some(applied)));
        self.engine.write(Tree::State, ops)
    }

    /// Replaces the whole persisted state (after installing a snapshot), in
    /// one atomic write.
    pub fn replace(&self, state: &ClusterState, applied: Vec<u8>) -> Result<()> {
        let mut ops: Vec<Op> = Vec::new();
        for prefix in [TASK_PREFIX, NODE_PREFIX, TOKEN_PREFIX] {
            for (key, _) in self.engine.scan(Tree::State, &[prefix], Some(&[prefix + 1]), usize::MAX)? {
                ops.push((key, None));
            }
        }
        ops.extend(state.tasks.iter().map(|(id, t)| (task_key(id), Some(encode(t)))));
        ops.extend(state.nodes.iter().map(|(name, n)| (node_key(name), Some(encode(n)))));
        ops.extend(state.tokens.iter().map(|(id, t)| (token_key(id), Some(encode(t)))));
        ops.push((APPLIED.to_vec(), Some(applied)));
        self.engine.write(Tree::State, ops)
    }

    /// Saves a snapshot durably, replacing the previous one.
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<()> {
        self.engine.write(
            Tree::State,
            vec![
                (SNAPSHOT_META.to_vec(), Some(snapshot.meta.clone())),
                (SNAPSHOT_DATA.to_vec(), Some(snapshot.data.clone())),
            ],
        )?;
        self.engine.flush()
    }

    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>> {
        match (self.engine.get(Tree::State, SNAPSHOT_META)?, self.engine.get(Tree::State, SNAPSHOT_DATA)?) {
            (Some(meta), Some(data)) => Ok(Some(StoredSnapshot { meta, data })),
            _ => Ok(None),
        }
    }
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
}
