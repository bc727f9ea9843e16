//! Service reconciliation: what the leader does so that a service's copies
//! match its spec, as a pure function of the service, its tasks and the
//! time. The leader's service loop (`crate::manager::service_loop`) reads
//! the state, calls [`reconcile`], and commits [`Plan::commands`].
//!
//! - Without a deployment in progress: start copies of the current version
//!   up to `replicas`; stop the surplus, pending or unhealthy first, then
//!   the newest.
//! - During a deployment: stop-first replacement, `max_parallel` at a time:
//!   a copy of the new version is "in flight" until it has been healthy for
//!   `min_healthy_time`; a new copy starts (and an old one stops) only while
//!   fewer than `max_parallel` are in flight, so at least `replicas -
//!   max_parallel` copies stay healthy. Canaries start beside the old
//!   copies. When the deployment's next state is due
//!   ([`super::deployment::next`]), that transition is the round's only
//!   decision.
//!
//! Losing a node needs nothing here: its copies are requeued by the
//! liveness loop and placed again by the scheduler, which keeps to the
//! service's spread.

use goat_raft::Command;
use goat_storage::model::*;
use goat_storage::Millis;

use super::deployment::{self, Progress};
use super::reschedule::next_attempt_at;

/// What one round decides for one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Copies of the current version to start.
    pub start: u32,
    /// Copies to stop, with why.
    pub stop: Vec<(TaskId, &'static str)>,
    /// The deployment's transition, if one is due.
    pub deployment: Option<(DeploymentState, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.start == 0 && self.stop.is_empty() && self.deployment.is_none()
    }

    /// The commands of this plan; `ids` gives the new copies' ids.
    pub fn commands(&self, service: &Service, ids: impl Iterator<Item = TaskId>, at: Timestamp) -> Vec<Command> {
        let mut commands = Vec::new();
        if let (Some((state, reason)), Some(d)) = (&self.deployment, &service.deployment) {
            commands.push(Command::SetDeployment {
                service: service.name.clone(),
                to: d.to,
                state: *state,
                reason: Some(reason.clone()),
                at,
            });
        }
        for (task_id, _) in &self.stop {
            commands.push(Command::StopTask { task_id: *task_id, at });
        }
        if self.start > 0 {
            commands.push(Command::StartServiceTasks {
                service: service.name.clone(),
                version: service.current,
                task_ids: ids.take(self.start as usize).collect(),
                at,
            });
        }
        commands
    }
}

/// Whether `task` still counts as a copy: wanted, not finished, and not a
/// failure its reschedule policy gives up on.
pub fn is_live(task: &Task, now: Timestamp) -> bool {
    task.desired == DesiredStatus::Run
        && match task.state {
            TaskState::Completed => false,
            TaskState::Failed => next_attempt_at(task, now).is_some(),
            _ => true,
        }
}

/// Healthy for at least `min` at `now`.
pub fn proven(task: &Task, min: Millis, now: Timestamp) -> bool {
    task.is_healthy() && task.healthy_since.is_some_and(|since| since.saturating_add(min.0) <= now)
}

fn version_of(task: &Task) -> u64 {
    task.service.as_ref().map_or(0, |s| s.version)
}

/// Which copies to stop first when there are too many: pending, then not
/// healthy, then the newest.
fn stop_order(tasks: &mut [&Task]) {
    tasks.sort_by_key(|t| (t.state != TaskState::Pending, t.is_healthy(), std::cmp::Reverse((t.created_at, t.id))));
}

/// One round for `service`, whose tasks (every one in the store) are `tasks`.
pub fn reconcile(service: &Service, tasks: &[&Task], now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let target = service.current;
    let replicas = service.replicas;
    let policy = service.update;
    // Failures the reschedule policy gives up on are stopped, so they are
    // collected and no longer count.
    for t in tasks {
        if t.desired == DesiredStatus::Run && t.state == TaskState::Failed && !is_live(t, now) {
            plan.stop.push((t.id, "failed and not rescheduled again"));
        }
    }
    let live: Vec<&Task> = tasks.iter().copied().filter(|t| is_live(t, now)).collect();
    let (mut new, mut old): (Vec<&Task>, Vec<&Task>) = live.iter().partition(|t| version_of(t) == target);
    let Some(d) = service.active_deployment() else {
        // Steady state: the right number of copies, whatever their version.
        let mut all = live;
        if (all.len() as u32) < replicas {
            plan.start = replicas - all.len() as u32;
        } else {
            stop_order(&mut all);
            let surplus = all.len() - replicas as usize;
            plan.stop.extend(all.iter().take(surplus).map(|t| (t.id, "scaled down")));
        }
        return plan;
    };
    let proven_new = new.iter().filter(|t| proven(t, policy.min_healthy_time, now)).count() as u32;
    let failure = tasks
        .iter()
        .filter(|t| version_of(t) == target && t.created_at >= d.started_at && t.desired == DesiredStatus::Run)
        .find_map(|t| {
            if t.state == TaskState::Failed {
                Some(format!(
                    "copy {} of version {target} failed: {}",
                    t.id,
                    t.reason.as_deref().unwrap_or("no reason")
                ))
            } else if !proven(t, policy.min_healthy_time, now)
                && now > t.created_at.saturating_add(policy.healthy_deadline.0)
            {
                Some(format!(
                    "copy {} of version {target} was not healthy for {} within {}",
                    t.id, policy.min_healthy_time, policy.healthy_deadline
                ))
            } else {
                None
            }
        });
    let progress =
        Progress { replicas, new_live: new.len() as u32, new_healthy: proven_new, old_live: old.len() as u32, failure };
    if let Some(transition) = deployment::next(d, &policy, &progress) {
        plan.deployment = Some(transition);
        return plan;
    }
    if d.state == DeploymentState::Paused {
        return plan;
    }
    let n_new = new.len() as u32;
    let in_flight = n_new - proven_new;
    let canaries = policy.canaries(replicas);
    if !d.promoted && canaries > 0 {
        // Canaries beside the old copies.
        if n_new < canaries {
            plan.start = canaries - n_new;
        }
        stop_order(&mut old);
        let surplus = old.len().saturating_sub(replicas as usize);
        plan.stop.extend(old.iter().take(surplus).map(|t| (t.id, "scaled down")));
        return plan;
    }
    let mut start = 0;
    if n_new < replicas && in_flight < policy.max_parallel {
        start = (policy.max_parallel - in_flight).min(replicas - n_new);
    }
    plan.start = start;
    if n_new > replicas {
        stop_order(&mut new);
        let surplus = (n_new - replicas) as usize;
        plan.stop.extend(new.iter().take(surplus).map(|t| (t.id, "scaled down")));
    }
    // Stop-first: an old copy stops for each new one that starts, so the
    // copies together never exceed `replicas` (the spread has room).
    let keep_old = replicas.saturating_sub(n_new + start) as usize;
    stop_order(&mut old);
    let surplus = old.len().saturating_sub(keep_old);
    plan.stop.extend(old.iter().take(surplus).map(|t| (t.id, "replaced by a new version")));
    plan
}

/// Counts of one version's copies, for the service's status.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct VersionCounts {
    pub version: u64,
    /// Copies wanted of this version (`replicas` for the current one).
    pub desired: u32,
    pub live: u32,
    pub placed: u32,
    pub running: u32,
    pub healthy: u32,
}

/// Per-version counts of `service`'s live copies, current version first.
pub fn counts(service: &Service, tasks: &[&Task], now: Timestamp) -> Vec<VersionCounts> {
    let mut out: Vec<VersionCounts> =
        vec![VersionCounts { version: service.current, desired: service.replicas, ..VersionCounts::default() }];
    for t in tasks.iter().filter(|t| is_live(t, now)) {
        let v = version_of(t);
        let i = match out.iter().position(|c| c.version == v) {
            Some(i) => i,
            None => {
                out.push(VersionCounts { version: v, ..VersionCounts::default() });
                out.len() - 1
            }
        };
        let c = &mut out[i];
        c.live += 1;
        c.placed += u32::from(t.node.is_some());
        c.running += u32::from(t.state == TaskState::Running);
        c.healthy += u32::from(t.is_healthy());
    }
    out
}

/// Why the service is not placed in full, if it is not:
/// `2 of 3 placed: no other node satisfies max_per_node 1`.
pub fn placement_reason(service: &Service, tasks: &[&Task], now: Timestamp) -> Option<String> {
    let live: Vec<&&Task> = tasks.iter().filter(|t| is_live(t, now)).collect();
    let placed = live.iter().filter(|t| t.node.is_some()).count();
    if placed >= service.replicas as usize {
        return None;
    }
    let why = live
        .iter()
        .filter(|t| t.state == TaskState::Pending)
        .find_map(|t| t.reason.clone())
        .unwrap_or_else(|| "waiting for placement".into());
    Some(format!("{placed} of {} placed: {why}", service.replicas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn template() -> TaskSpec {
        serde_json::from_str(r#"{"name": "", "image": "goat-echo:latest"}"#).unwrap()
    }

    fn service(replicas: u32, current: u64, deployment: Option<Deployment>) -> Service {
        let versions = (1..=current.max(1))
            .map(|v| {
                let mut t = template();
                t.env.insert("ECHO_VERSION".into(), v.to_string());
                ServiceVersion { version: v, template: t, created_at: 0 }
            })
            .collect();
        Service {
            name: "web".into(),
            replicas,
            spread: Spread::default(),
            update: UpdatePolicy {
                max_parallel: 1,
                min_healthy_time: Millis(1_000),
                healthy_deadline: Millis(10_000),
                auto_revert: true,
                canary: 0,
            },
            versions,
            current,
            deployment,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn task(n: u128, version: u64, state: TaskState, healthy_since: Option<Timestamp>, created_at: Timestamp) -> Task {
        Task {
            id: Uuid::from_u128(n),
            spec: template(),
            state,
            desired: DesiredStatus::Run,
            node: (state != TaskState::Pending).then(|| format!("w{n}")),
            generation: 1,
            restarts: 0,
            reason: None,
            health: if healthy_since.is_some() { Health::Healthy } else { Health::Unknown },
            container_id: None,
            host_ports: BTreeMap::new(),
            created_at,
            updated_at: created_at,
            events: Vec::new(),
            reschedules: Vec::new(),
            failed_on: None,
            service: Some(ServiceRef { name: "web".into(), version }),
            healthy_since,
        }
    }

    fn healthy(n: u128, version: u64) -> Task {
        task(n, version, TaskState::Running, Some(0), 0)
    }

    fn deploying(state: DeploymentState) -> Option<Deployment> {
        Some(Deployment { from: 1, to: 2, state, promoted: true, reason: None, started_at: 100, updated_at: 100 })
    }

    /// A deployment of a service with canaries, not promoted yet.
    fn awaiting_canaries() -> Option<Deployment> {
        deploying(DeploymentState::Running).map(|d| Deployment { promoted: false, ..d })
    }

    #[test]
    fn a_new_service_starts_its_replicas_and_a_full_one_does_nothing() {
        let s = service(3, 1, None);
        assert_eq!(reconcile(&s, &[], 10).start, 3);
        let tasks = [healthy(1, 1), healthy(2, 1), healthy(3, 1)];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert!(reconcile(&s, &refs, 10).is_empty());
    }

    #[test]
    fn scaling_down_stops_pending_then_unhealthy_then_newest() {
        let s = service(2, 1, None);
        let tasks = [
            healthy(1, 1),
            task(2, 1, TaskState::Running, Some(0), 50),
            task(3, 1, TaskState::Pending, None, 1),
            task(4, 1, TaskState::Scheduled, None, 1),
            healthy(5, 1),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let plan = reconcile(&s, &refs, 10);
        let stopped: Vec<u128> = plan.stop.iter().map(|(id, _)| id.as_u128()).collect();
        assert_eq!(stopped, vec![3, 4, 2]);
        assert_eq!(plan.start, 0);
    }

    #[test]
    fn a_lost_copy_is_replaced_and_stopped_ones_do_not_count() {
        let s = service(3, 1, None);
        let mut gone = healthy(3, 1);
        gone.state = TaskState::Completed;
        let tasks = [healthy(1, 1), healthy(2, 1), gone];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(reconcile(&s, &refs, 10).start, 1);
    }

    #[test]
    fn a_failure_past_its_reschedules_is_stopped_and_replaced() {
        let s = service(1, 1, None);
        let mut t = task(1, 1, TaskState::Failed, None, 0);
        t.spec.reschedule_policy.attempts = 0;
        let plan = reconcile(&s, &[&t], 10);
        assert_eq!(plan.stop.len(), 1);
        assert_eq!(plan.start, 1);
    }

    #[test]
    fn a_rolling_update_replaces_max_parallel_at_a_time_stop_first() {
        let s = service(3, 2, deploying(DeploymentState::Running));
        let old = [healthy(1, 1), healthy(2, 1), healthy(3, 1)];
        let refs: Vec<&Task> = old.iter().collect();
        let plan = reconcile(&s, &refs, 200);
        assert_eq!((plan.start, plan.stop.len()), (1, 1));
        // One new copy in flight: nothing more until it is proven.
        let in_flight = task(4, 2, TaskState::Running, Some(150), 150);
        let tasks = [healthy(1, 1), healthy(2, 1), in_flight];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert!(reconcile(&s, &refs, 200).is_empty());
        // Proven (healthy 1 s): the next one.
        let plan = reconcile(&s, &refs, 1_200);
        assert_eq!((plan.start, plan.stop.len()), (1, 1));
        // Every copy new and proven: succeeded.
        let tasks = [healthy(4, 2), healthy(5, 2), healthy(6, 2)];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(reconcile(&s, &refs, 2_000).deployment.map(|d| d.0), Some(DeploymentState::Succeeded));
    }

    #[test]
    fn healthy_copies_never_drop_below_replicas_minus_max_parallel() {
        // Simulate rounds where every started copy becomes healthy at once
        // or never: count healthy copies after each round's stops.
        for max_parallel in 1..=3u32 {
            let mut s = service(6, 2, deploying(DeploymentState::Running));
            s.update.max_parallel = max_parallel;
            let mut tasks: Vec<Task> = (1..=6).map(|n| healthy(n, 1)).collect();
            let mut next_id = 100;
            for round in 0..40u64 {
                let now = 200 + round * 600;
                let refs: Vec<&Task> = tasks.iter().collect();
                let plan = reconcile(&s, &refs, now);
                if plan.deployment.is_some() {
                    break;
                }
                for (id, _) in &plan.stop {
                    if let Some(t) = tasks.iter_mut().find(|t| t.id == *id) {
                        t.state = TaskState::Completed;
                    }
                }
                let healthy_now = tasks.iter().filter(|t| is_live(t, now) && t.is_healthy()).count() as u32;
                assert!(healthy_now + max_parallel >= 6, "{healthy_now} healthy with max_parallel {max_parallel}");
                for _ in 0..plan.start {
                    next_id += 1;
                    tasks.push(task(next_id, 2, TaskState::Running, Some(now), now));
                }
            }
            let refs: Vec<&Task> = tasks.iter().collect();
            let live_new = refs.iter().filter(|t| is_live(t, 100_000) && version_of(t) == 2).count();
            assert_eq!(live_new, 6);
        }
    }

    #[test]
    fn a_copy_not_healthy_by_the_deadline_reverts_and_the_revert_restores_the_old_version() {
        let s = service(3, 2, deploying(DeploymentState::Running));
        let stuck = task(4, 2, TaskState::Scheduled, None, 150);
        let tasks = [healthy(1, 1), healthy(2, 1), stuck];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert!(reconcile(&s, &refs, 5_000).is_empty(), "within its deadline");
        let plan = reconcile(&s, &refs, 10_200);
        assert_eq!(plan.deployment.map(|d| d.0), Some(DeploymentState::Reverting));
        // Reverting: version 1 is current again; the stuck copy is replaced.
        let mut reverting = service(3, 1, deploying(DeploymentState::Reverting));
        reverting.current = 1;
        let plan = reconcile(&reverting, &refs, 10_300);
        assert_eq!((plan.start, plan.stop.len()), (1, 1));
        let tasks = [healthy(1, 1), healthy(2, 1), healthy(3, 1)];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(reconcile(&reverting, &refs, 20_000).deployment.map(|d| d.0), Some(DeploymentState::Reverted));
    }

    #[test]
    fn canaries_start_beside_the_old_copies_and_wait() {
        let d = awaiting_canaries();
        let mut s = service(3, 2, d);
        s.update.canary = 1;
        let old = [healthy(1, 1), healthy(2, 1), healthy(3, 1)];
        let refs: Vec<&Task> = old.iter().collect();
        let plan = reconcile(&s, &refs, 200);
        assert_eq!((plan.start, plan.stop.len()), (1, 0));
        let tasks = [healthy(1, 1), healthy(2, 1), healthy(3, 1), task(4, 2, TaskState::Running, Some(200), 200)];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(reconcile(&s, &refs, 1_300).deployment.map(|d| d.0), Some(DeploymentState::Paused));
        // Promoted: the old copies are replaced, the canary counts.
        if let Some(d) = s.deployment.as_mut() {
            d.promoted = true;
        }
        let plan = reconcile(&s, &refs, 1_300);
        assert_eq!((plan.start, plan.stop.len()), (1, 2));
    }

    /// A service scaled below its `canary` (scale does not change the
    /// update policy): every copy is a canary, and the deployment pauses
    /// once they are healthy instead of waiting for canaries it never
    /// starts.
    #[test]
    fn a_service_scaled_below_its_canaries_has_every_copy_a_canary() {
        let d = awaiting_canaries();
        let mut s = service(1, 2, d);
        s.update.canary = 3;
        let old = [healthy(1, 1)];
        let refs: Vec<&Task> = old.iter().collect();
        assert_eq!(reconcile(&s, &refs, 200).start, 1, "one canary, not three");
        let tasks = [healthy(1, 1), task(2, 2, TaskState::Running, Some(200), 200)];
        let refs: Vec<&Task> = tasks.iter().collect();
        let plan = reconcile(&s, &refs, 1_300);
        assert_eq!((plan.start, plan.deployment.map(|d| d.0)), (0, Some(DeploymentState::Paused)));
        s.replicas = 0;
        let plan = reconcile(&s, &refs, 1_300);
        assert_eq!((plan.start, plan.deployment.map(|d| d.0)), (0, None), "no copies: no canary started");
    }

    #[test]
    fn placement_says_why_a_service_is_short() {
        let s = service(3, 1, None);
        let mut waiting = task(3, 1, TaskState::Pending, None, 0);
        waiting.reason = Some("no other node satisfies max_per_node 1".into());
        let tasks = [healthy(1, 1), healthy(2, 1), waiting];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(
            placement_reason(&s, &refs, 10).as_deref(),
            Some("2 of 3 placed: no other node satisfies max_per_node 1")
        );
        let c = counts(&s, &refs, 10);
        assert_eq!((c[0].live, c[0].placed, c[0].healthy), (3, 2, 2));
    }

    #[test]
    fn plans_become_commands() {
        let s = service(2, 1, None);
        let plan = reconcile(&s, &[], 10);
        let commands = plan.commands(&s, (1..).map(Uuid::from_u128), 10);
        assert!(
            matches!(&commands[..], [Command::StartServiceTasks { task_ids, version: 1, .. }] if task_ids.len() == 2)
        );
    }
}
