//! Planned failover: the leader hands leadership to a follower on purpose
//! (`POST /v1/cluster/leader`, `goat members transfer-leader`, and SIGTERM
//! of the leader), without waiting for an election timeout.
//!
//! openraft 0.9 has no transfer call, so it is built from what it has:
//!
//! 1. the leader holds new proposals in its batcher (they wait, they do not
//!    fail), and waits until the target's matched index equals its own last
//!    log index — the target then holds every entry the leader has;
//! 2. it stops heartbeating and asks the target (`/internal/elect`, cluster
//!    token) to `trigger().elect()` at once, without the pre-vote;
//! 3. the target stands in the next term with a log as long as the
//!    leader's: the leader grants it (openraft's vote lease on a leader runs
//!    from its own election, which is why a leader younger than the lease
//!    waits it out first), and the target leads with the old leader's vote.
//! 4. the held proposals are released: openraft refuses them before
//!    appending anything (`ForwardToLeader`), and `Manager::propose` retries
//!    them at the new leader; commands are idempotent under retry.
//!
//! Why it is safe: the hand-over only decides *when* an election happens.
//! The election is an ordinary Raft election — openraft grants one vote per
//! term, only to a log at least as up to date as the voter's, and persists
//! the vote first — so at most one leader per term and no committed entry
//! can be lost, whatever the target, the timing or a crash in between. If
//! the target fails to win (it crashed, a vote is refused), the old leader
//! has seen the higher term and stepped down: the cluster is where a leader
//! crash would have left it, and the election timers elect a leader as
//! usual. Nothing is acknowledged that was not committed: a held proposal
//! is answered only once some leader committed it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_raft::{codec, NodeId};
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::cluster::Manager;
use super::error::{ApiError, ErrorCode};
use super::extract::forwarded;
use super::json::parse;
use crate::control::transfer::{choose_target, NoTarget};

/// The body of `POST /v1/cluster/leader`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The manager to hand over to (default: the most up-to-date follower).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub to: Option<NodeId>,
}

/// What `POST /v1/cluster/leader` answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferView {
    /// The manager that leads now.
    #[schema(value_type = u64)]
    pub leader: NodeId,
    /// Who led before.
    #[schema(value_type = u64)]
    pub from: NodeId,
    pub term: u64,
    /// How long the hand-over took, in ms (proposals were held that long).
    pub took_ms: u64,
}

/// What the leader sends the target on `/internal/elect`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ElectRequest {
    pub from: NodeId,
    pub term: u64,
}

/// `POST /v1/cluster/leader` (admin): hands leadership over.
#[utoipa::path(
    post,
    path = "/v1/cluster/leader",
    tag = "cluster",
    summary = "Hand leadership over (planned failover)",
    request_body(content = Option<TransferRequest>, description = "Optional; `to` names the manager to hand over to."),
    responses(
        (status = 200, description = "The new leader.", body = TransferView),
        (status = 409, description = "No manager to hand over to, or `to` is not a voter.", body = crate::manager::error::ErrorBody),
    ),
)]
pub async fn transfer(
    State(m): State<std::sync::Arc<Manager>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    let request: TransferRequest =
        if raw.iter().all(|b| b.is_ascii_whitespace()) { TransferRequest::default() } else { parse(body)? };
    if request.to == Some(0) {
        return Err(ApiError::field(ErrorCode::InvalidField, "to", "must be a positive integer"));
    }
    if !m.is_leader() {
        return forwarded(&m, reqwest::Method::POST, "/v1/cluster/leader", raw).await;
    }
    let started = Instant::now();
    let from = m.id();
    let leader = transfer_leadership(&m, request.to).await?;
    let term = m.raft().metrics().borrow().current_term;
    let took_ms = started.elapsed().as_millis() as u64;
    Ok((StatusCode::OK, Json(TransferView { leader, from, term, took_ms })).into_response())
}

/// The code of a hand-over after which this manager leads again: the
/// target lost its election (a vote refused under a lease, a race with a
/// timer) and this manager won the next one. Nothing was lost (it was an
/// ordinary election); the hand-over is tried again.
const REELECTED: ErrorCode = ErrorCode::LeadsAgain;

/// Hands this manager's leadership to `to` (or the most up-to-date
/// follower); returns the new leader. See the module's comment. Tried up to
/// three times while this manager wins the election back.
pub async fn transfer_leadership(m: &Manager, to: Option<NodeId>) -> Result<NodeId, ApiError> {
    let mut attempt = 1;
    loop {
        match transfer_once(m, to).await {
            Err(e) if e.body.code == REELECTED && attempt < 3 => {
                tracing::info!(attempt, error = %e.body.error, "leadership hand-over: trying again");
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

async fn transfer_once(m: &Manager, to: Option<NodeId>) -> Result<NodeId, ApiError> {
    let Ok(_one) = m.transfer.try_lock() else {
        return Err(ApiError::conflict("a leadership transfer is already under way"));
    };
    let metrics = m.raft().metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return Err(ApiError::conflict("this manager no longer leads"));
    }
    let term = metrics.current_term;
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let matched: BTreeMap<NodeId, Option<u64>> = metrics
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, log)| (*id, log.map(|l| l.index))).collect())
        .unwrap_or_default();
    let target = match choose_target(m.id(), &voters, &matched, to) {
        Ok(target) if target == m.id() => return Ok(m.id()),
        Ok(target) => target,
        // Valid by the document, refused as the membership stands: a 409,
        // as the operation documents, naming the field.
        Err(NoTarget::NotAVoter(id)) => {
            return Err(ApiError::field(
                ErrorCode::Conflict,
                "to",
                format!("manager {id} is not a voter of this cluster"),
            )
            .with_status(StatusCode::CONFLICT))
        }
        Err(NoTarget::Alone) => return Err(ApiError::conflict("no other voter to hand leadership to")),
    };
    let Some(addr) = membership.get_node(&target).map(|n| n.addr.clone()) else {
        return Err(ApiError::conflict(format!("no address for manager {target}")));
    };

    // openraft's leader refuses votes while its own vote lease runs (from
    // its election): a young leader waits it out, or the target's vote
    // would be refused.
    let since = (*m.led_since.lock()).filter(|(t, _)| *t == term).map(|(_, at)| at);
    let lease = m.timing.lease() + Duration::from_millis(10);
    // (Not yet noted, for a leadership just won: the whole lease.)
    let left = match since {
        Some(at) => lease.checked_sub(at.elapsed()),
        None => Some(lease),
    };
    if let Some(left) = left {
        tokio::time::sleep(left).await;
    }

    m.hold_proposals(true);
    let outcome = hand_over(m, term, target, &addr).await;
    m.activity().handing_over.store(false, Ordering::Release);
    m.hold_proposals(false);
    match &outcome {
        Ok(_) => {
            m.activity().transfers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(to = target, term, "handed leadership over");
        }
        Err(e) => tracing::warn!(to = target, term, error = %e.body.error, "leadership hand-over failed"),
    }
    outcome
}

async fn hand_over(m: &Manager, term: u64, target: NodeId, addr: &str) -> Result<NodeId, ApiError> {
    // 1. The target catches up with everything appended (nothing new comes
    //    in while proposals are held).
    let limit = m.timing.rpc_timeout + m.timing.election_timeout;
    let deadline = Instant::now() + limit;
    let mut metrics = m.raft().metrics();
    loop {
        let (caught_up, leading) = {
            let now = metrics.borrow_and_update();
            let matched = now.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map(|l| l.index);
            (matched.is_some() && matched == now.last_log_index, now.state == ServerState::Leader)
        };
        if !leading {
            return Err(ApiError::conflict("this manager stopped leading during the hand-over"));
        }
        if caught_up {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::unavailable(format!("manager {target} did not catch up within {limit:?}")));
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(20)), metrics.changed()).await;
    }

    // 2. No more heartbeats; the target stands now.
    m.activity().handing_over.store(true, Ordering::Release);
    let body = codec::encode(&ElectRequest { from: m.id(), term });
    m.internal_call(addr, "elect", body)
        .await
        .map_err(|e| ApiError::unavailable(format!("manager {target} did not stand: {e}")))?;

    // 3. Wait until this manager no longer leads in `term` (it granted the
    //    target's vote, or saw a higher term).
    let deadline = Instant::now() + m.timing.election_timeout * 2;
    loop {
        let (leader, current_term, state) = {
            let now = metrics.borrow_and_update();
            (now.current_leader, now.current_term, now.state)
        };
        if state != ServerState::Leader {
            // Deposed: the held proposals may go (openraft refuses them at
            // once and they are retried at the new leader).
            m.hold_proposals(false);
        }
        if current_term > term && state != ServerState::Leader {
            if let Some(leader) = leader.filter(|l| *l != m.id()) {
                return Ok(leader);
            }
        }
        if current_term > term && state == ServerState::Leader {
            return Err(reelected(target, current_term));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return match current_term > term {
                true if leader == Some(m.id()) => Err(reelected(target, current_term)),
                true => Ok(leader.unwrap_or(target)),
                false => Err(ApiError::unavailable(format!("manager {target} did not take over in time"))),
            };
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(20)), metrics.changed()).await;
    }
}

fn reelected(target: NodeId, term: u64) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        REELECTED,
        format!("manager {target} did not win its election: this manager leads again, in term {term}"),
    )
}

/// `/internal/elect`: the leader `from` of `term` asks this manager to
/// stand at once (it has caught up). Refused unless this manager follows
/// that very leader in that very term.
pub async fn internal_elect(State(m): State<std::sync::Arc<Manager>>, body: Bytes) -> Response {
    let request: ElectRequest = match codec::decode(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadBody, e.to_string()).into_response(),
    };
    let (leader, term, voter) = {
        let metrics = m.raft().metrics();
        let now = metrics.borrow();
        (now.current_leader, now.current_term, now.membership_config.membership().voter_ids().any(|v| v == m.id()))
    };
    if leader != Some(request.from) || term != request.term || !voter {
        let message = format!(
            "refusing to stand: I follow {leader:?} in term {term} (voter: {voter}), not {} in {}",
            request.from, request.term
        );
        return ApiError::conflict(message).into_response();
    }
    m.activity().elections_started.fetch_add(1, Ordering::Relaxed);
    match m.raft().trigger().elect().await {
        Ok(()) => {
            tracing::info!(from = request.from, term, "standing for election: the leader hands over");
            StatusCode::OK.into_response()
        }
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}
