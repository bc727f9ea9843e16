//! Reconciliation against the in-memory fake engine: each test drives
//! observe → reconcile → act rounds with a controlled clock and checks the
//! engine, the records and the reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use goat_storage::model::{
    Assignment, DesiredStatus, Health, HealthCheck, ObservedState, RestartCondition, RestartPolicy, TaskId, TaskReport,
    TaskSpec,
};
use goat_storage::worker_state::{TaskRecord, WorkerStore};
use goat_storage::Millis;

use crate::reconcile::{self, Action, Input, Plan};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{
    Container, ContainerConfig, ContainerRuntime, RuntimeError, LABEL_GENERATION, LABEL_NODE, LABEL_TASK,
};

const NODE: &str = "n1";

fn spec(name: &str, condition: RestartCondition, max_attempts: u32) -> TaskSpec {
    let mut spec: TaskSpec =
        serde_json::from_value(serde_json::json!({"name": name, "image": "goat-echo:latest"})).unwrap();
    spec.restart_policy = RestartPolicy {
        condition,
        max_attempts,
        initial_delay: Millis(100),
        max_delay: Millis(1_000),
        reset_after: Millis(10_000),
    };
    spec
}

fn assign(spec: TaskSpec, generation: u64) -> Assignment {
    Assignment { task_id: TaskId::new_v4(), generation, desired: DesiredStatus::Run, spec }
}

/// A worker in miniature: the fake engine, the records, the assignments
/// and a clock, with rounds that act like the agent's.
struct Harness {
    engine: Arc<FakeRuntime>,
    records: BTreeMap<TaskId, TaskRecord>,
    assignments: Option<Vec<Assignment>>,
    health: BTreeMap<String, Health>,
    now: u64,
}

impl Harness {
    fn new(assignments: Option<Vec<Assignment>>) -> Harness {
        let engine = Arc::new(FakeRuntime::default());
        engine.with(|s| s.now = 1_000_000);
        Harness { engine, records: BTreeMap::new(), assignments, health: BTreeMap::new(), now: 1_000_000 }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        self.engine.with(|s| s.now = now);
    }

    fn observe(&self) -> Vec<Container> {
        futures::executor::block_on(self.engine.list(NODE, &Default::default())).unwrap()
    }

    /// Reconciles only (no acting).
    fn plan(&mut self) -> Plan {
        let containers = self.observe();
        let input = Input {
            node: NODE,
            now: self.now,
            assignments: self.assignments.as_deref(),
            containers: &containers,
            health: &self.health,
        };
        reconcile::reconcile(&input, &mut self.records, &mut || 0.5)
    }

    /// One full round: reconcile, then perform the actions on the fake.
    fn round(&mut self) -> Plan {
        let plan = self.plan();
        for action in &plan.actions {
            let result = futures::executor::block_on(async {
                match action {
                    Action::Create { task_id, config } => {
                        (Some(*task_id), self.engine.create_and_start(config).await.map(|_| ()))
                    }
                    Action::Start { task_id, container_id } => (Some(*task_id), self.engine.start(container_id).await),
                    Action::Stop { container_id, .. } => (None, self.engine.stop(container_id, Duration::ZERO).await),
                    Action::Remove { container_id, .. } => {
                        (None, self.engine.remove(container_id, Duration::ZERO).await)
                    }
                }
            });
            if let (Some(task_id), Err(error)) = result {
                let assignment = self.assignment(task_id).clone();
                let record = self.records.get_mut(&task_id).unwrap();
                reconcile::start_failed(record, &assignment, &error, self.now, &mut || 0.5);
            }
        }
        plan
    }

    /// Rounds until one asks for nothing; panics if it does not settle.
    fn settle(&mut self) -> Plan {
        for _ in 0..10 {
            let plan = self.round();
            if plan.actions.is_empty() {
                return plan;
            }
        }
        panic!("reconciliation does not converge");
    }

    fn assignment(&self, id: TaskId) -> &Assignment {
        self.assignments.as_ref().unwrap().iter().find(|a| a.task_id == id).unwrap()
    }

    fn report(plan: &Plan, id: TaskId) -> TaskReport {
        plan.reports.iter().find(|r| r.task_id == id).cloned().expect("a report for the task")
    }

    fn containers_of(&self, id: TaskId) -> Vec<Container> {
        self.observe().into_iter().filter(|c| c.task_id == id).collect()
    }

    /// A converged state stays put: another round changes no record, asks
    /// for nothing, and reports the same.
    fn assert_idempotent(&mut self) {
        let records = self.records.clone();
        let first = self.plan();
        let second = self.plan();
        assert!(second.actions.is_empty(), "idle round acted: {:?}", second.actions);
        assert_eq!(records, self.records, "idle round changed records");
        assert_eq!(first.reports, second.reports);
    }
}

/// Puts a foreign container on the fake engine, as if left by an older run.
fn plant(engine: &FakeRuntime, task_id: TaskId, generation: u64, running: bool) -> String {
    let spec = spec("old", RestartCondition::OnFailure, 0);
    let config = ContainerConfig::for_task(NODE, task_id, generation, &spec);
    let id = futures::executor::block_on(engine.create_and_start(&config)).unwrap();
    if !running {
        engine.exit(&id, 0);
    }
    id
}

#[test]
fn without_assignments_nothing_is_touched() {
    let mut h = Harness::new(None);
    let stray = plant(&h.engine, TaskId::new_v4(), 1, true);
    let plan = h.round();
    assert!(plan.actions.is_empty());
    assert!(plan.reports.is_empty());
    assert_eq!(h.engine.running_ids(), vec![stray]);
}

#[test]
fn a_new_assignment_is_started_once() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let plan = h.round();
    assert!(matches!(&plan.actions[..], [Action::Create { task_id, .. }] if *task_id == id));
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Starting);

    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Running);
    assert_eq!(report.restarts, 0);
    assert!(report.container_id.is_some());
    let containers = h.containers_of(id);
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].generation, 1);
    h.assert_idempotent();
}

#[test]
fn labels_and_name_identify_the_placement() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 7);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let (config, _) = h.engine.with(|s| s.containers[0].clone());
    assert_eq!(config.labels[LABEL_TASK], id.to_string());
    assert_eq!(config.labels[LABEL_NODE], NODE);
    assert_eq!(config.labels[LABEL_GENERATION], "7");
    assert!(config.name.starts_with("goat-web-") && config.name.ends_with("-g7"), "{}", config.name);
}

#[test]
fn unassigned_and_stale_generation_containers_are_removed() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 2);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let stranger = plant(&h.engine, TaskId::new_v4(), 1, true);
    let old_generation = plant(&h.engine, id, 1, true);
    let plan = h.round();
    let removed: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { container_id, .. } => Some(container_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(removed.contains(&stranger.as_str()) && removed.contains(&old_generation.as_str()));
    h.settle();
    let left = h.observe();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].task_id, left[0].generation), (id, 2));
    h.assert_idempotent();
}

#[test]
fn an_empty_assignment_list_removes_everything() {
    let mut h = Harness::new(Some(vec![]));
    plant(&h.engine, TaskId::new_v4(), 1, true);
    plant(&h.engine, TaskId::new_v4(), 3, false);
    h.settle();
    assert!(h.observe().is_empty());
}

#[test]
fn a_crash_is_restarted_after_the_backoff_and_counted_once() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.advance(1_000);
    h.engine.exit(&cid, 1);

    let plan = h.round();
    assert!(plan.actions.is_empty(), "restart waits for the delay: {:?}", plan.actions);
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Restarting);
    assert_eq!(report.restarts, 1);
    assert_eq!(report.exit_code, Some(1));
    assert_eq!(report.reason.as_deref(), Some("exit code 1"));
    assert_eq!(plan.wake_at, Some(h.now + 100));
    // Seeing the same exit again counts nothing.
    h.assert_idempotent();
    assert_eq!(h.records[&id].restarts, 1);

    h.advance(100);
    let plan = h.round();
    assert!(matches!(&plan.actions[..], [Action::Start { container_id, .. }] if *container_id == cid));
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Running);
    assert_eq!(report.restarts, 1);
    assert_eq!(h.engine.running_ids(), vec![cid]);
}

#[test]
fn delays_grow_until_attempts_run_out_then_the_task_fails() {
    let a = assign(spec("bad", RestartCondition::OnFailure, 3), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let mut delays = Vec::new();
    for _ in 0..3 {
        let cid = h.containers_of(id)[0].id.clone();
        h.advance(10);
        h.engine.exit(&cid, 1);
        let plan = h.round();
        delays.push(plan.wake_at.unwrap() - h.now);
        h.advance(plan.wake_at.unwrap() - h.now);
        h.settle();
    }
    assert_eq!(delays, vec![100, 200, 400]);
    let cid = h.containers_of(id)[0].id.clone();
    h.advance(10);
    h.engine.exit(&cid, 1);
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Failed);
    assert_eq!(report.restarts, 3);
    let reason = report.reason.unwrap();
    assert!(reason.contains("exit code 1"), "{reason}");
    // It stays failed and is not started again.
    h.advance(100_000);
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Failed);
    assert!(h.engine.running_ids().is_empty());
    h.assert_idempotent();
}

#[test]
fn exit_zero_completes_under_on_failure_and_never() {
    for condition in [RestartCondition::OnFailure, RestartCondition::Never] {
        let a = assign(spec("job", condition, 5), 1);
        let id = a.task_id;
        let mut h = Harness::new(Some(vec![a]));
        h.settle();
        let cid = h.containers_of(id)[0].id.clone();
        h.engine.exit(&cid, 0);
        let plan = h.settle();
        let report = Harness::report(&plan, id);
        assert_eq!(report.state, ObservedState::Completed, "{condition:?}");
        assert_eq!(report.restarts, 0);
        h.assert_idempotent();
    }
}

#[test]
fn never_fails_on_a_crash() {
    let a = assign(spec("job", RestartCondition::Never, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.engine.exit(&cid, 2);
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Failed);
    assert_eq!(report.reason.as_deref(), Some("exit code 2"));
    assert_eq!(report.exit_code, Some(2));
}

#[test]
fn always_restarts_a_clean_exit() {
    let a = assign(spec("svc", RestartCondition::Always, 0), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.engine.exit(&cid, 0);
    h.round();
    h.advance(1_000);
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Running);
    assert_eq!(report.restarts, 1);
}

#[test]
fn oom_kill_is_reported_as_such() {
    let a = assign(spec("hog", RestartCondition::Never, 0), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.engine.exit(&cid, 137);
    h.engine.with(|s| s.containers[0].1.oom_killed = true);
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Failed);
    assert_eq!(report.reason.as_deref(), Some("OOM killed (memory limit reached)"));
}

#[test]
fn an_oom_kill_during_start_is_named_in_the_reason() {
    let a = assign(spec("tiny", RestartCondition::OnFailure, 5), 1);
    let mut record = TaskRecord::new(1);
    let error = RuntimeError::Engine(
        "500: OCI runtime create failed: container_linux.go:380: starting container process caused: \
         process_linux.go:722: container init caused: container init was OOM-killed (memory limit too low?)"
            .into(),
    );
    reconcile::start_failed(&mut record, &a, &error, 1_000, &mut || 0.5);
    assert_eq!(record.restarts, 1);
    let reason = record.last_reason.unwrap_or_default();
    assert!(reason.starts_with("OOM killed while starting"), "{reason}");
}

#[test]
fn a_missing_image_fails_at_once() {
    let a = assign(spec("ghost", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.engine.with(|s| s.missing_images.push("goat-echo:latest".into()));
    let plan = h.settle();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Failed);
    assert_eq!(report.reason.as_deref(), Some("image not found: goat-echo:latest"));
    h.assert_idempotent();
}

#[test]
fn stop_requested_removes_the_container_and_completes() {
    let a = assign(spec("web", RestartCondition::Always, 0), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    h.assignments.as_mut().unwrap()[0].desired = DesiredStatus::Stop;
    let plan = h.round();
    assert!(matches!(&plan.actions[..], [Action::Remove { .. }]));
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Completed);
    assert!(h.observe().is_empty());
    h.assert_idempotent();
}

#[test]
fn a_stop_before_start_never_starts() {
    let mut a = assign(spec("web", RestartCondition::Always, 0), 1);
    a.desired = DesiredStatus::Stop;
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Completed);
    assert!(h.observe().is_empty());
}

#[test]
fn an_unhealthy_container_is_stopped_and_restarted_as_a_failure() {
    let mut s = spec("web", RestartCondition::OnFailure, 5);
    s.health_check = Some(HealthCheck {
        path: Some("/health".into()),
        port: 7777,
        interval: Millis(100),
        timeout: Millis(100),
        failure_threshold: 3,
        start_period: Millis(0),
    });
    let a = assign(s, 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).health, Health::Starting);
    let cid = h.containers_of(id)[0].id.clone();
    h.health.insert(cid.clone(), Health::Healthy);
    assert_eq!(Harness::report(&h.settle(), id).health, Health::Healthy);

    h.health.insert(cid.clone(), Health::Unhealthy);
    let plan = h.round();
    assert!(matches!(&plan.actions[..], [Action::Stop { reason, .. }] if reason == "health check failed"));
    assert_eq!(Harness::report(&plan, id).health, Health::Unhealthy);
    // The fake's stop exits with 143; it counts as a health failure.
    h.health.remove(&cid);
    let plan = h.round();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Restarting);
    assert_eq!(report.reason.as_deref(), Some("health check failed"));
    assert_eq!(report.restarts, 1);
    h.advance(1_000);
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Running);
}

#[test]
fn a_health_kill_counts_as_failure_even_with_exit_zero() {
    let mut s = spec("web", RestartCondition::OnFailure, 5);
    s.health_check = Some(HealthCheck {
        path: None,
        port: 80,
        interval: Millis(100),
        timeout: Millis(100),
        failure_threshold: 1,
        start_period: Millis(0),
    });
    let a = assign(s, 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.health.insert(cid.clone(), Health::Unhealthy);
    h.plan();
    // The app handled SIGTERM and exited 0: still a failed run.
    h.engine.exit(&cid, 0);
    h.health.remove(&cid);
    let plan = h.round();
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Restarting);
    assert_eq!(report.reason.as_deref(), Some("health check failed"));
}

#[test]
fn a_stable_run_resets_the_attempts() {
    let a = assign(spec("web", RestartCondition::OnFailure, 2), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    for _ in 0..5 {
        // Each run lasts longer than reset_after (10s): never gives up.
        h.advance(20_000);
        let cid = h.containers_of(id)[0].id.clone();
        h.engine.exit(&cid, 1);
        h.round();
        assert_eq!(h.records[&id].attempts, 1);
        h.advance(1_000);
        h.settle();
    }
    assert_eq!(h.records[&id].restarts, 5);
    assert_eq!(Harness::report(&h.settle(), id).state, ObservedState::Running);
}

#[test]
fn a_running_container_is_adopted_without_restart() {
    // A worker restarted with its records: what runs is left alone.
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 4);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let cid = plant(&h.engine, id, 4, true);
    let mut record = TaskRecord::new(4);
    record.restarts = 2;
    h.records.insert(id, record);
    let plan = h.round();
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    let report = Harness::report(&plan, id);
    assert_eq!(report.state, ObservedState::Running);
    assert_eq!(report.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(report.restarts, 2);
}

#[test]
fn a_new_generation_starts_a_fresh_record() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.engine.exit(&cid, 1);
    h.round();
    assert_eq!(h.records[&id].restarts, 1);
    h.assignments.as_mut().unwrap()[0].generation = 2;
    h.settle();
    assert_eq!(h.records[&id], TaskRecord { generation: 2, ..TaskRecord::default() });
    let containers = h.containers_of(id);
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].generation, 2);
}

#[test]
fn duplicates_keep_the_running_one() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let exited = plant(&h.engine, id, 1, false);
    // Rename the planted one so the fake accepts a second container.
    h.engine.with(|s| s.containers[0].0.name = "other".into());
    let running = plant(&h.engine, id, 1, true);
    let plan = h.round();
    assert!(plan.actions.contains(&Action::Remove { container_id: exited, reason: "duplicate container".into() }));
    h.settle();
    assert_eq!(h.engine.running_ids(), vec![running]);
}

#[test]
fn a_created_but_unstarted_container_is_started() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    let cid = plant(&h.engine, id, 1, true);
    h.engine.with(|s| {
        let c = &mut s.containers[0].1;
        c.running = false;
        c.started_at = None;
    });
    let plan = h.round();
    assert!(matches!(&plan.actions[..], [Action::Start { container_id, .. }] if *container_id == cid));
    assert_eq!(Harness::report(&h.settle(), id).restarts, 0);
}

#[test]
fn a_container_lost_while_waiting_is_recreated_after_the_delay() {
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let mut h = Harness::new(Some(vec![a]));
    h.settle();
    let cid = h.containers_of(id)[0].id.clone();
    h.engine.exit(&cid, 1);
    h.round();
    // The engine loses it (engine restart, someone removed it).
    futures::executor::block_on(h.engine.remove(&cid, Duration::ZERO)).unwrap();
    assert!(h.round().actions.is_empty());
    h.advance(500);
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, id).state, ObservedState::Running);
    assert_eq!(h.containers_of(id).len(), 1);
}

#[test]
fn several_tasks_are_handled_independently() {
    let a = assign(spec("a", RestartCondition::OnFailure, 5), 1);
    let b = assign(spec("b", RestartCondition::Never, 5), 1);
    let (ida, idb) = (a.task_id, b.task_id);
    let mut h = Harness::new(Some(vec![a, b]));
    h.settle();
    let cb = h.containers_of(idb)[0].id.clone();
    h.engine.exit(&cb, 9);
    let plan = h.settle();
    assert_eq!(Harness::report(&plan, ida).state, ObservedState::Running);
    assert_eq!(Harness::report(&plan, idb).state, ObservedState::Failed);
    // Dropping b from the assignments removes its container and record.
    h.assignments.as_mut().unwrap().retain(|x| x.task_id == ida);
    h.settle();
    assert!(h.containers_of(idb).is_empty());
    assert!(!h.records.contains_key(&idb));
    h.assert_idempotent();
}

#[tokio::test]
async fn the_supervisor_survives_an_engine_outage_and_persists_records() {
    use crate::agent::{Round, Status, Supervisor};
    use goat_storage::model::EngineStatus;
    use parking_lot::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let store = WorkerStore::open(dir.path()).unwrap();
    let a = assign(spec("web", RestartCondition::OnFailure, 5), 1);
    let id = a.task_id;
    let engine = Arc::new(FakeRuntime::default());
    engine.with(|s| s.down = true);
    let (_tx, rx) = tokio::sync::watch::channel(Some(vec![a]));
    let (_exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(Status::new(EngineStatus::default())));
    let mut sup = Supervisor::new(NODE.into(), engine.clone(), store.clone(), rx, status.clone(), exit_rx).unwrap();

    assert!(matches!(sup.round().await, Round::EngineDown { .. }));
    {
        let s = status.lock();
        assert!(!s.engine.healthy);
        assert!(s.engine.error.as_deref().unwrap_or("").contains("down"));
    }
    engine.with(|s| s.down = false);
    sup.round().await;
    sup.finish_actions().await;
    sup.round().await;
    {
        let s = status.lock();
        assert!(s.engine.healthy);
        assert_eq!(s.reports[0].state, ObservedState::Running);
    }
    let cid = engine.running_ids()[0].clone();
    engine.exit(&cid, 1);
    sup.round().await;
    assert_eq!(store.task(id).unwrap().unwrap().restarts, 1);
}

/// Many tasks at once: one round starts them all (concurrently), a round
/// during the actions repeats none of them, and the next round reports
/// them running.
#[tokio::test]
async fn the_supervisor_starts_a_burst_concurrently_without_repeating_actions() {
    use crate::agent::{Status, Supervisor};
    use goat_storage::model::EngineStatus;
    use parking_lot::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let store = WorkerStore::open(dir.path()).unwrap();
    let mut web = spec("web", RestartCondition::OnFailure, 5);
    web.ports = vec![goat_storage::model::PortMapping { container: 7777, host: None }];
    let list: Vec<Assignment> = (0..40).map(|_| assign(web.clone(), 1)).collect();
    let engine = Arc::new(FakeRuntime::default());
    let (_tx, rx) = tokio::sync::watch::channel(Some(list.clone()));
    let (_exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(Status::new(EngineStatus::default())));
    let mut sup = Supervisor::new(NODE.into(), engine.clone(), store.clone(), rx, status.clone(), exit_rx).unwrap();
    sup.round().await;
    // A second round while the creates may still be in flight asks for nothing new.
    sup.round().await;
    sup.finish_actions().await;
    sup.round().await;
    sup.finish_actions().await;
    let creates = engine.with(|s| s.calls.iter().filter(|c| c.starts_with("create")).count());
    assert_eq!(creates, 40, "each task created exactly once");
    assert_eq!(engine.running_ids().len(), 40);
    let s = status.lock();
    assert!(s.reports.iter().all(|r| r.state == ObservedState::Running), "{:?}", s.reports);
    // Each got its own host port, chosen by the worker and remembered.
    let ports: std::collections::BTreeSet<u16> = s.reports.iter().map(|r| r.host_ports[&7777]).collect();
    assert_eq!(ports.len(), 40);
    for r in &s.reports {
        assert_eq!(store.task(r.task_id).unwrap().unwrap().host_ports[&7777], r.host_ports[&7777]);
    }
}
