//! The leader's service loop: turns each service into tasks (see
//! `crate::control::service`). Every round reads the applied state, decides
//! per service, and commits the decisions as one fenced batch; the next
//! round sees them applied. Nothing is kept between rounds: a new leader
//! carries on from the replicated state (copies' `healthy_since`, the
//! deployment's state), so an update interrupted by a leader change
//! finishes under the next leader without duplicating or losing a copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use goat_raft::{Command, CommandResult};
use tokio_util::sync::CancellationToken;

use super::cluster::{Leadership, Manager};
use crate::clock::now_ms;
use crate::control::lease::RoundGate;
use crate::control::service::reconcile;

/// How often services are reconciled (and kicked sooner by changes).
const ROUND: Duration = Duration::from_millis(500);

pub async fn service_loop(manager: Arc<Manager>, term: u64, cancel: CancellationToken) {
    let mut gate = RoundGate::new(Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
        let confirmed = match manager.leadership() {
            Leadership::Confirmed { term: t } if t == term => true,
            Leadership::Unconfirmed { term: t, .. } if t == term => false,
            _ => return,
        };
        if gate.round(Instant::now(), confirmed).is_none() {
            continue;
        }
        let now = now_ms();
        let commands: Vec<Command> = {
            let applied = manager.state.read();
            let state = &applied.state;
            state
                .services
                .values()
                .flat_map(|service| {
                    let tasks: Vec<_> = state.service_tasks(&service.name).collect();
                    let plan = reconcile(service, &tasks, now);
                    if !plan.is_empty() {
                        let span = tracing::info_span!("service", service = %service.name);
                        let _enter = span.enter();
                        if let Some((to, reason)) = &plan.deployment {
                            tracing::info!(state = %to, %reason, "deployment moves on");
                        }
                        if plan.start > 0 || !plan.stop.is_empty() {
                            tracing::info!(
                                start = plan.start,
                                stop = plan.stop.len(),
                                version = service.current,
                                "reconciling"
                            );
                        }
                    }
                    plan.commands(service, std::iter::repeat_with(uuid::Uuid::new_v4), now)
                })
                .collect()
        };
        if commands.is_empty() {
            continue;
        }
        match manager.propose_as_leader(term, Command::Batch(commands), &cancel).await {
            Ok(CommandResult::Refused(reason)) => tracing::warn!(%reason, "service decisions refused"),
            Ok(CommandResult::Batch(results)) => {
                for refusal in results.iter().filter_map(|r| r.refusal()) {
                    tracing::debug!(%refusal, "a service decision was refused (the state moved on)");
                }
                manager.placement_kick.notify_one();
            }
            Ok(_) => manager.placement_kick.notify_one(),
            Err(e) => tracing::warn!(error = ?e, "could not commit service decisions"),
        }
    }
}
