//! Services in the state machine: applying a spec (versions), scaling,
//! rollback, promotion, deletion, and the leader's decisions about a
//! service's copies and deployment. Deterministic like the rest of `fsm`:
//! whatever varies (task ids, times) is carried by the command.

use super::*;

/// A service named `name`, or a `NotFound` refusal.
fn service_mut<'a>(services: &'a mut BTreeMap<String, Service>, name: &str) -> Result<&'a mut Service, Refusal> {
    services.get_mut(name).ok_or_else(|| Refusal::not_found(format!("no service {name}")))
}

/// Ends the deployment in progress, if any, as `superseded`.
fn supersede(service: &mut Service, by: &str, at: Timestamp) {
    if let Some(d) = service.deployment.as_mut().filter(|d| !d.state.is_terminal()) {
        d.state = DeploymentState::Superseded;
        d.reason = Some(by.to_string());
        d.updated_at = at;
    }
}

impl ClusterState {
    /// Every task of service `name` still in the store (any state), by id.
    pub fn service_tasks<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.index.by_service.get(name).into_iter().flatten().filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    /// Why `task` may not go on `node` under its service's explicit
    /// `max_per_node`, if it may not. (The default spread depends on which
    /// nodes the leader believes alive: the scheduler applies it.)
    pub fn spread_refusal(&self, node: &str, task: &Task) -> Option<String> {
        let member = task.service.as_ref()?;
        let max = self.services.get(&member.name)?.spread.max_per_node?;
        let here = self
            .tasks_on(node)
            .filter(|t| t.id != task.id && t.service.as_ref().is_some_and(|s| s.name == member.name))
            .filter(|t| t.desired == DesiredStatus::Run)
            .count();
        (here as u64 >= u64::from(max)).then(|| format!("node {node} holds {here} copies, max_per_node {max}"))
    }

    pub(super) fn put_service(&mut self, spec: &ServiceSpec, at: Timestamp) -> Applied {
        let mut template = spec.template.clone();
        template.name.clear();
        let Some(service) = self.services.get_mut(&spec.name) else {
            let service = Service {
                name: spec.name.clone(),
                replicas: spec.replicas,
                spread: spec.spread,
                update: spec.update,
                versions: vec![ServiceVersion { version: 1, template, created_at: at }],
                current: 1,
                deployment: None,
                created_at: at,
                updated_at: at,
            };
            self.services.insert(spec.name.clone(), service.clone());
            self.dirty.services.insert(spec.name.clone());
            return Ok(CommandResult::Service(Box::new(service)));
        };
        let same_template = service.version(service.current).is_some_and(|v| v.template == template);
        if same_template
            && service.replicas == spec.replicas
            && service.spread == spec.spread
            && service.update == spec.update
        {
            // Declarative apply: the same spec again changes nothing.
            return Ok(CommandResult::Service(Box::new(service.clone())));
        }
        self.dirty.services.insert(spec.name.clone());
        service.replicas = spec.replicas;
        service.spread = spec.spread;
        service.update = spec.update;
        service.updated_at = at;
        if !same_template {
            let version = service.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            supersede(service, &format!("replaced by version {version}"), at);
            service.versions.push(ServiceVersion { version, template, created_at: at });
            if service.versions.len() > MAX_VERSIONS_KEPT {
                // Never drop the version being replaced (a revert's target).
                let keep = service.current;
                if let Some(i) = service.versions.iter().position(|v| v.version != keep) {
                    service.versions.remove(i);
                }
            }
            service.deployment = Some(Deployment {
                from: service.current,
                to: version,
                state: DeploymentState::Running,
                promoted: service.update.canary == 0,
                reason: None,
                started_at: at,
                updated_at: at,
            });
            service.current = version;
        }
        Ok(CommandResult::Service(Box::new(service.clone())))
    }

    pub(super) fn scale_service(&mut self, name: &str, replicas: u32, at: Timestamp) -> Applied {
        if replicas > MAX_REPLICAS {
            return Err(Refusal::invalid(format!("replicas must be at most {MAX_REPLICAS}")));
        }
        let service = service_mut(&mut self.services, name)?;
        if service.replicas != replicas {
            service.replicas = replicas;
            service.updated_at = at;
            self.dirty.services.insert(name.to_string());
        }
        Ok(CommandResult::Service(Box::new(service.clone())))
    }

    pub(super) fn rollback_service(&mut self, name: &str, at: Timestamp) -> Applied {
        let service = service_mut(&mut self.services, name)?;
        let target = match service.active_deployment() {
            Some(d) => d.from,
            None => service.versions.iter().map(|v| v.version).filter(|v| *v < service.current).max().unwrap_or(0),
        };
        if target == 0 || service.version(target).is_none() || target == service.current {
            return Err(Refusal::conflict(format!("service {name} has no earlier version to roll back to")));
        }
        supersede(service, &format!("rolled back to version {target}"), at);
        service.deployment = Some(Deployment {
            from: service.current,
            to: target,
            state: DeploymentState::Running,
            promoted: true,
            reason: Some("rollback requested".into()),
            started_at: at,
            updated_at: at,
        });
        service.current = target;
        service.updated_at = at;
        self.dirty.services.insert(name.to_string());
        Ok(CommandResult::Service(Box::new(service.clone())))
    }

    pub(super) fn promote_service(&mut self, name: &str, at: Timestamp) -> Applied {
        let service = service_mut(&mut self.services, name)?;
        let Some(d) = service.deployment.as_mut().filter(|d| !d.state.is_terminal()) else {
            return Err(Refusal::conflict(format!("service {name} has no deployment in progress")));
        };
        if d.promoted {
            return Err(Refusal::conflict(format!("the deployment of version {} is already promoted", d.to)));
        }
        d.promoted = true;
        d.updated_at = at;
        if d.state == DeploymentState::Paused {
            d.state = DeploymentState::Running;
            d.reason = Some("promoted".into());
        }
        service.updated_at = at;
        self.dirty.services.insert(name.to_string());
        Ok(CommandResult::Service(Box::new(service.clone())))
    }

    pub(super) fn delete_service(&mut self, name: &str, at: Timestamp) -> Applied {
        let Some(service) = self.services.remove(name) else {
            return Err(Refusal::not_found(format!("no service {name}")));
        };
        self.dirty.services.insert(name.to_string());
        let ids: Vec<TaskId> = self
            .service_tasks(name)
            .filter(|t| t.desired == DesiredStatus::Run && !t.state.is_terminal())
            .map(|t| t.id)
            .collect();
        for id in ids {
            let before = self.tasks.get(&id).map(|t| IndexKey::of(t));
            self.stop(id, at)?;
            self.reindex(id, before);
        }
        Ok(CommandResult::Service(Box::new(service)))
    }

    pub(super) fn start_service_tasks(
        &mut self,
        name: &str,
        version: u64,
        task_ids: &[TaskId],
        at: Timestamp,
    ) -> Applied {
        let service = self.services.get(name).ok_or_else(|| Refusal::not_found(format!("no service {name}")))?;
        if service.current != version {
            return Err(Refusal::stale(format!(
                "service {name} converges to version {}, not {version}",
                service.current
            )));
        }
        let spec = match service.version(version) {
            Some(v) => service.copy_spec(v),
            None => return Err(Refusal::stale(format!("service {name} has no version {version}"))),
        };
        if let Some(id) = task_ids.iter().find(|id| self.tasks.contains_key(id)) {
            return Err(Refusal::conflict(format!("task {id} already exists")));
        }
        for id in task_ids {
            self.submit(*id, &spec, at)?;
            if let Some(task) = self.tasks.get_mut(id) {
                task.service = Some(ServiceRef { name: name.to_string(), version });
            }
            self.reindex(*id, None);
        }
        Ok(CommandResult::Done)
    }

    pub(super) fn set_deployment(
        &mut self,
        name: &str,
        to: u64,
        state: DeploymentState,
        reason: &Option<String>,
        at: Timestamp,
    ) -> Applied {
        let service = service_mut(&mut self.services, name)?;
        let Some(d) = service.deployment.as_mut().filter(|d| d.to == to) else {
            return Err(Refusal::stale(format!("service {name} has no deployment of version {to}")));
        };
        if !d.state.can_become(state) {
            return Err(Refusal::conflict(format!("a deployment cannot go from {} to {state}", d.state)));
        }
        d.state = state;
        d.reason = reason.clone();
        d.updated_at = at;
        if state == DeploymentState::Reverting {
            service.current = d.from;
        }
        service.updated_at = at;
        self.dirty.services.insert(name.to_string());
        Ok(CommandResult::Service(Box::new(service.clone())))
    }

    pub(super) fn set_node_address(&mut self, name: &str, address: &Option<String>, at: Timestamp) -> Applied {
        let Some(node) = self.nodes.get_mut(name) else {
            return Err(Refusal::not_found(format!("no node {name}")));
        };
        node.address = address.clone();
        node.updated_at = at;
        self.dirty.nodes.insert(name.to_string());
        Ok(CommandResult::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn spec(replicas: u32, version_env: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web",
            "replicas": replicas,
            "template": {"name": "web", "image": "goat-echo:latest", "env": {"ECHO_VERSION": version_env}},
            "spread": {"max_per_node": 1}
        }))
        .unwrap()
    }

    fn put(s: &mut ClusterState, spec: ServiceSpec, at: Timestamp) -> Service {
        match s.apply(&Command::PutService { spec, at }) {
            CommandResult::Service(service) => *service,
            other => panic!("{other:?}"),
        }
    }

    fn with_nodes() -> ClusterState {
        let mut s = ClusterState::default();
        for n in ["w1", "w2"] {
            s.apply(&Command::UpsertNode {
                name: n.into(),
                capacity: Resources { cpu: 4.0, memory: 1 << 32, disk: 1 << 34 },
                engine: EngineStatus { healthy: true, error: None },
                at: 1,
            });
        }
        s
    }

    #[test]
    fn the_same_spec_is_a_no_op_and_a_changed_template_a_new_version() {
        let mut s = ClusterState::default();
        let first = put(&mut s, spec(3, "1"), 10);
        assert_eq!((first.current, first.versions.len(), first.deployment.is_none()), (1, 1, true));
        s.take_dirty();
        let again = put(&mut s, spec(3, "1"), 20);
        assert_eq!(again, first, "nothing changed, not even updated_at");
        assert!(s.take_dirty().services.is_empty());
        // Replicas alone: no new version.
        let scaled = put(&mut s, spec(5, "1"), 30);
        assert_eq!((scaled.current, scaled.replicas, scaled.versions.len()), (1, 5, 1));
        // A changed template: version 2 and its deployment.
        let v2 = put(&mut s, spec(5, "2"), 40);
        assert_eq!(v2.current, 2);
        let d = v2.deployment.unwrap();
        assert_eq!((d.from, d.to, d.state), (1, 2, DeploymentState::Running));
        // Another one supersedes it.
        let v3 = put(&mut s, spec(5, "3"), 50);
        assert_eq!(v3.deployment.as_ref().map(|d| (d.from, d.to)), Some((2, 3)));
    }

    #[test]
    fn copies_are_started_only_for_the_current_version_and_keep_to_the_spread() {
        let mut s = with_nodes();
        put(&mut s, spec(3, "1"), 10);
        let ids: Vec<TaskId> = (1..=3).map(Uuid::from_u128).collect();
        let stale = Command::StartServiceTasks { service: "web".into(), version: 2, task_ids: ids.clone(), at: 11 };
        assert_eq!(s.apply(&stale).refusal().map(|r| r.kind), Some(RefusalKind::Stale));
        let start = Command::StartServiceTasks { service: "web".into(), version: 1, task_ids: ids.clone(), at: 11 };
        assert_eq!(s.apply(&start), CommandResult::Done);
        assert_eq!(s.service_tasks("web").count(), 3);
        let task = &s.tasks[&ids[0]];
        assert_eq!(task.spec.env["GOAT_SERVICE"], "web");
        assert_eq!(task.service, Some(ServiceRef { name: "web".into(), version: 1 }));
        // Again with the same ids: refused, nothing doubled.
        assert!(s.apply(&start).is_refused());
        // max_per_node 1: a second copy on w1 is refused.
        assert!(!s.apply(&Command::PlaceTask { task_id: ids[0], node: "w1".into(), at: 12 }).is_refused());
        let second = s.apply(&Command::PlaceTask { task_id: ids[1], node: "w1".into(), at: 12 });
        assert_eq!(second.refusal().map(|r| r.kind), Some(RefusalKind::Stale));
        assert!(!s.apply(&Command::PlaceTask { task_id: ids[1], node: "w2".into(), at: 12 }).is_refused());
        // The index is what loading the same tasks builds.
        let mut loaded = ClusterState::from_parts(s.tasks.clone(), s.nodes.clone());
        loaded.services = s.services.clone();
        assert_eq!(loaded.service_tasks("web").count(), 3);
    }

    #[test]
    fn deployments_move_only_as_the_table_allows() {
        let mut s = ClusterState::default();
        put(&mut s, spec(3, "1"), 10);
        put(&mut s, spec(3, "2"), 20);
        let set = |state, to| Command::SetDeployment { service: "web".into(), to, state, reason: None, at: 30 };
        assert_eq!(s.apply(&set(DeploymentState::Reverting, 9)).refusal().map(|r| r.kind), Some(RefusalKind::Stale));
        assert_eq!(
            s.apply(&set(DeploymentState::Reverted, 2)).refusal().map(|r| r.kind),
            Some(RefusalKind::Conflict),
            "running cannot become reverted"
        );
        // Reverting makes the old version current again.
        assert!(!s.apply(&set(DeploymentState::Reverting, 2)).is_refused());
        assert_eq!(s.services["web"].current, 1);
        assert!(!s.apply(&set(DeploymentState::Reverted, 2)).is_refused());
        assert!(s.apply(&set(DeploymentState::Running, 2)).is_refused(), "terminal");
    }

    #[test]
    fn rollback_promote_scale_and_delete() {
        let mut s = with_nodes();
        put(&mut s, spec(2, "1"), 10);
        assert_eq!(
            s.apply(&Command::RollbackService { name: "web".into(), at: 11 }).refusal().map(|r| r.kind),
            Some(RefusalKind::Conflict),
            "no earlier version"
        );
        let mut canary = spec(2, "2");
        canary.update.canary = 1;
        let v2 = put(&mut s, canary, 20);
        assert!(!v2.deployment.as_ref().unwrap().promoted);
        let promoted = s.apply(&Command::PromoteService { name: "web".into(), at: 21 });
        assert!(matches!(promoted, CommandResult::Service(ref sv) if sv.deployment.as_ref().unwrap().promoted));
        assert!(s.apply(&Command::PromoteService { name: "web".into(), at: 22 }).is_refused(), "promoted already");
        let back = s.apply(&Command::RollbackService { name: "web".into(), at: 23 });
        assert!(matches!(back, CommandResult::Service(ref sv) if sv.current == 1));
        assert!(s.apply(&Command::ScaleService { name: "web".into(), replicas: 20_000, at: 24 }).is_refused());
        assert!(s.apply(&Command::ScaleService { name: "nope".into(), replicas: 1, at: 24 }).is_refused());
        let ids: Vec<TaskId> = (1..=2).map(Uuid::from_u128).collect();
        s.apply(&Command::StartServiceTasks { service: "web".into(), version: 1, task_ids: ids.clone(), at: 25 });
        s.apply(&Command::PlaceTask { task_id: ids[0], node: "w1".into(), at: 26 });
        assert!(!s.apply(&Command::DeleteService { name: "web".into(), at: 27 }).is_refused());
        assert!(!s.services.contains_key("web"));
        assert_eq!(s.tasks[&ids[1]].state, TaskState::Completed, "a pending copy completes at once");
        assert_eq!(s.tasks[&ids[0]].desired, DesiredStatus::Stop, "a placed copy stops on its node");
        assert!(s.pending_tasks().next().is_none(), "the index saw the stop");
    }

    #[test]
    fn services_survive_the_store() {
        use crate::state_store::StateStore;
        let engine: std::sync::Arc<dyn crate::engine::Engine> =
            std::sync::Arc::new(crate::mem_engine::MemEngine::new());
        let store = StateStore::new(engine);
        let mut s = ClusterState::default();
        put(&mut s, spec(3, "1"), 10);
        let dirty = s.take_dirty();
        store.save_changes(&s, dirty, b"a".to_vec()).unwrap();
        assert_eq!(store.load().unwrap().0.services, s.services);
        // And the snapshot form.
        let bytes = crate::state_store::encode(&s);
        let back: ClusterState = crate::state_store::decode(crate::engine::Tree::State, &bytes).unwrap();
        assert_eq!(back.services, s.services);
    }
}
