//! State verification: do all managers hold the same state?
//!
//! Each manager fingerprints its applied state (`goat_storage::digest`) at
//! its applied index, under the state lock so the two go together.
//! `GET /v1/cluster/verify`, on any manager, gathers every member's
//! fingerprint (its own directly, its peers' through the token-protected
//! `GET /internal/state-digest`) and judges them: managers at the same
//! applied index must have the same digest (`consistent`); when every member
//! answers at one index with one digest, the cluster has `converged`.
//! `?wait=5s` retries until converged or the time is up (a cluster under load
//! rarely has every member at the same index at the same instant).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_storage::Millis;
use serde::{Deserialize, Serialize};

use super::cluster::Manager;
use super::error::ApiError;

/// One manager's fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateDigest {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied_index: Option<u64>,
    pub digest: String,
    /// Tasks and nodes in the fingerprinted state.
    pub tasks: usize,
    pub nodes: usize,
}

/// One member, as the answering manager saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberDigest {
    pub id: u64,
    pub addr: String,
    /// Its fingerprint, if it answered.
    pub state: Option<StateDigest>,
    /// Why the member did not answer.
    pub error: Option<String>,
}

/// What `GET /v1/cluster/verify` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verdict {
    /// The manager that answered.
    pub id: u64,
    /// No two members at the same applied index have different digests.
    pub consistent: bool,
    /// Every member answered, all at one applied index with one digest.
    pub converged: bool,
    pub managers: Vec<MemberDigest>,
}

/// Judges the members' fingerprints: (consistent, converged). Pure.
pub fn judge(members: &[MemberDigest]) -> (bool, bool) {
    let mut by_index: BTreeMap<Option<u64>, &str> = BTreeMap::new();
    let mut consistent = true;
    for state in members.iter().filter_map(|m| m.state.as_ref()) {
        match by_index.get(&state.applied_index) {
            Some(digest) if *digest != state.digest => consistent = false,
            Some(_) => {}
            None => {
                by_index.insert(state.applied_index, &state.digest);
            }
        }
    }
    let all_answered = !members.is_empty() && members.iter().all(|m| m.state.is_some());
    (consistent, consistent && all_answered && by_index.len() == 1)
}

/// This manager's fingerprint, taken under the state lock.
pub fn local_digest(m: &Manager) -> StateDigest {
    let metrics = m.raft().metrics().borrow().clone();
    let applied = m.state().read();
    StateDigest {
        id: m.id(),
        role: super::extract::role_name(metrics.state).to_string(),
        term: metrics.current_term,
        leader: metrics.current_leader,
        applied_index: applied.last_applied.map(|l| l.index),
        digest: goat_storage::digest::state_digest(&applied.state),
        tasks: applied.state.tasks.len(),
        nodes: applied.state.nodes.len(),
    }
}

/// `GET /internal/state-digest`: this manager's fingerprint, for a peer.
pub async fn internal_state_digest(State(m): State<Arc<Manager>>) -> Response {
    // Hashing a large state takes a while: keep it off the async workers.
    let manager = m.clone();
    match tokio::task::spawn_blocking(move || local_digest(&manager)).await {
        Ok(digest) => Json(digest).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyOptions {
    /// Retry until converged, for at most this long (a wait over 60 s is
    /// cut to 60 s).
    #[serde(default)]
    pub wait: Option<Millis>,
}

async fn peer_digest(m: &Manager, addr: &str) -> Result<StateDigest, String> {
    let response =
        m.internal_get(addr, "state-digest").timeout(Duration::from_secs(2)).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

async fn gather(m: &Arc<Manager>) -> Vec<MemberDigest> {
    let members: Vec<(u64, String)> = {
        let metrics = m.raft().metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.addr.clone())).collect()
    };
    let asks = members.into_iter().map(|(id, addr)| {
        let m = m.clone();
        async move {
            let answer = if id == m.id() {
                let manager = m.clone();
                tokio::task::spawn_blocking(move || local_digest(&manager)).await.map_err(|e| e.to_string())
            } else {
                peer_digest(&m, &addr).await
            };
            match answer {
                Ok(state) => MemberDigest { id, addr, state: Some(state), error: None },
                Err(error) => MemberDigest { id, addr, state: None, error: Some(error) },
            }
        }
    });
    futures::future::join_all(asks).await
}

/// `GET /v1/cluster/verify[?wait=5s]`.
#[utoipa::path(
    get,
    path = "/v1/cluster/verify",
    tag = "cluster",
    summary = "Check that every manager holds the same state",
    params(VerifyOptions),
    responses((status = 200, description = "Each manager's digest.", body = Verdict)),
)]
pub async fn verify(
    State(m): State<Arc<Manager>>,
    query: Result<Query<VerifyOptions>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Verdict>, ApiError> {
    let options = super::extract::query_of(query)?;
    let wait = options.wait.map(Millis::as_duration).unwrap_or_default().min(Duration::from_secs(60));
    let deadline = Instant::now() + wait;
    loop {
        let managers = gather(&m).await;
        let (consistent, converged) = judge(&managers);
        if converged || !consistent || Instant::now() >= deadline {
            return Ok(Json(Verdict { id: m.id(), consistent, converged, managers }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, index: Option<u64>, digest: &str) -> MemberDigest {
        MemberDigest {
            id,
            addr: format!("m{id}:7101"),
            state: Some(StateDigest {
                id,
                role: "follower".into(),
                term: 1,
                leader: Some(1),
                applied_index: index,
                digest: digest.into(),
                tasks: 0,
                nodes: 0,
            }),
            error: None,
        }
    }

    fn silent(id: u64) -> MemberDigest {
        MemberDigest { id, addr: format!("m{id}:7101"), state: None, error: Some("refused".into()) }
    }

    #[test]
    fn same_index_same_digest_is_converged() {
        let all = [member(1, Some(7), "a"), member(2, Some(7), "a"), member(3, Some(7), "a")];
        assert_eq!(judge(&all), (true, true));
    }

    #[test]
    fn different_indexes_are_consistent_but_not_converged() {
        let all = [member(1, Some(7), "a"), member(2, Some(8), "b"), member(3, Some(7), "a")];
        assert_eq!(judge(&all), (true, false));
    }

    #[test]
    fn different_digests_at_one_index_are_inconsistent() {
        let all = [member(1, Some(7), "a"), member(2, Some(7), "b"), member(3, Some(8), "c")];
        assert_eq!(judge(&all), (false, false));
    }

    #[test]
    fn a_silent_member_prevents_convergence_only() {
        let all = [member(1, Some(7), "a"), member(2, Some(7), "a"), silent(3)];
        assert_eq!(judge(&all), (true, false));
        assert_eq!(judge(&[]), (true, false));
    }
}
