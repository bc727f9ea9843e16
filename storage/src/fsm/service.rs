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
        self.index.by_service.get(name).into_iter().flatten().filter_map(|id| self.tasks.get(id))
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

    /// Re-indexes task `id` after a change made outside `apply`'s own
    /// bookkeeping (commands that touch several tasks).
    fn reindex(&mut self, id: TaskId, before: Option<IndexKey>) {
        let after = self.tasks.get(&id).map(IndexKey::of);
        if before != after {
            if let Some(key) = &before {
                self.index.remove(id, key);
            }
            if let Some(key) = after {
                self.index.add(id, key);
            }
        }
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
            let before = self.tasks.get(&id).map(IndexKey::of);
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
