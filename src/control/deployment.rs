//! The deployment state machine: when a roll-out of a service version moves
//! on, as a pure function of what its copies show. The table of allowed
//! transitions is [`DeploymentState::can_become`] (in the model, so the
//! state machine checks it on apply); this module decides which one is due.
//!
//! | state     | event                                              | next       |
//! |-----------|----------------------------------------------------|------------|
//! | running   | a new copy failed / missed `healthy_deadline`, `auto_revert` | reverting |
//! | running   | the same, no `auto_revert`                         | failed     |
//! | running   | `canary` new copies healthy, not promoted          | paused     |
//! | running   | `replicas` new copies healthy, no old copy left    | succeeded  |
//! | paused    | promote (a command, not decided here)              | running    |
//! | paused    | a canary failed, `auto_revert` / not               | reverting / failed |
//! | reverting | every copy back on the old version, healthy        | reverted   |
//! | reverting | a copy of the old version failed again             | failed     |
//! | any live  | a new version or a rollback (a command)            | superseded |

use goat_storage::model::{Deployment, DeploymentState, UpdatePolicy};

/// What the copies of a service show, counted by `super::service`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub replicas: u32,
    /// Live copies of the version being rolled out (for a revert: the old one).
    pub new_live: u32,
    /// Of those, healthy for `min_healthy_time`.
    pub new_healthy: u32,
    /// Live copies of any other version.
    pub old_live: u32,
    /// Why a copy made since the deployment started failed, if one did.
    pub failure: Option<String>,
}

/// The transition due for `deployment` under `policy`, if any, with its reason.
pub fn next(deployment: &Deployment, policy: &UpdatePolicy, progress: &Progress) -> Option<(DeploymentState, String)> {
    use DeploymentState::*;
    let canaries = policy.canaries(progress.replicas);
    let due = match deployment.state {
        Running | Paused => {
            if let Some(failure) = &progress.failure {
                if policy.auto_revert && deployment.from != 0 {
                    Some((Reverting, format!("{failure}: reverting to version {}", deployment.from)))
                } else {
                    Some((Failed, failure.clone()))
                }
            } else if deployment.state == Running
                && !deployment.promoted
                && canaries > 0
                && progress.new_healthy >= canaries
            {
                Some((Paused, format!("{} canaries healthy: waiting for promote", progress.new_healthy)))
            } else if deployment.state == Running
                && deployment.promoted
                && progress.new_healthy >= progress.replicas
                && progress.old_live == 0
            {
                Some((Succeeded, format!("{} copies of version {} healthy", progress.new_healthy, deployment.to)))
            } else {
                None
            }
        }
        Reverting => {
            if let Some(failure) = &progress.failure {
                Some((Failed, format!("revert failed: {failure}")))
            } else if progress.new_healthy >= progress.replicas && progress.old_live == 0 {
                Some((Reverted, format!("back to version {}", deployment.from)))
            } else {
                None
            }
        }
        Succeeded | Failed | Reverted | Superseded => None,
    };
    // Only what the table allows is ever proposed.
    due.filter(|(to, _)| deployment.state.can_become(*to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState::*;

    fn deployment(state: DeploymentState, promoted: bool) -> Deployment {
        Deployment { from: 1, to: 2, state, promoted, reason: None, started_at: 0, updated_at: 0 }
    }

    fn policy(auto_revert: bool, canary: u32) -> UpdatePolicy {
        UpdatePolicy { auto_revert, canary, ..UpdatePolicy::default() }
    }

    fn progress(new_healthy: u32, old_live: u32, failure: Option<&str>) -> Progress {
        Progress { replicas: 3, new_live: new_healthy, new_healthy, old_live, failure: failure.map(str::to_string) }
    }

    #[test]
    fn the_transition_table_allows_exactly_what_the_docs_say() {
        let allowed = [
            (Running, Paused),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Reverting),
            (Running, Superseded),
            (Paused, Running),
            (Paused, Failed),
            (Paused, Reverting),
            (Paused, Superseded),
            (Reverting, Reverted),
            (Reverting, Failed),
            (Reverting, Superseded),
        ];
        for from in DeploymentState::ALL {
            for to in DeploymentState::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
            // Terminal states go nowhere.
            if from.is_terminal() {
                assert!(DeploymentState::ALL.iter().all(|to| !from.can_become(*to)), "{from}");
            }
        }
    }

    #[test]
    fn running_succeeds_once_every_copy_is_new_and_healthy() {
        let d = deployment(Running, true);
        assert_eq!(next(&d, &policy(false, 0), &progress(2, 1, None)), None, "an old copy is left");
        assert_eq!(next(&d, &policy(false, 0), &progress(3, 0, None)).map(|t| t.0), Some(Succeeded));
    }

    #[test]
    fn a_failure_reverts_with_auto_revert_and_fails_without() {
        let d = deployment(Running, true);
        let failed = progress(1, 2, Some("copy x failed"));
        assert_eq!(next(&d, &policy(true, 0), &failed).map(|t| t.0), Some(Reverting));
        assert_eq!(next(&d, &policy(false, 0), &failed).map(|t| t.0), Some(Failed));
        // The first version has nothing to revert to.
        let first = Deployment { from: 0, ..d };
        assert_eq!(next(&first, &policy(true, 0), &failed).map(|t| t.0), Some(Failed));
    }

    #[test]
    fn canaries_pause_until_promoted() {
        let d = deployment(Running, false);
        assert_eq!(next(&d, &policy(false, 1), &progress(0, 3, None)), None);
        assert_eq!(next(&d, &policy(false, 1), &progress(1, 3, None)).map(|t| t.0), Some(Paused));
        // Paused waits: only a promote (a command) moves it on...
        let paused = deployment(Paused, false);
        assert_eq!(next(&paused, &policy(false, 1), &progress(3, 0, None)), None);
        // ...or a failure.
        assert_eq!(next(&paused, &policy(true, 1), &progress(1, 3, Some("x"))).map(|t| t.0), Some(Reverting));
        assert_eq!(next(&paused, &policy(false, 1), &progress(1, 3, Some("x"))).map(|t| t.0), Some(Failed));
        // Promoted, it rolls on like any deployment.
        let promoted = deployment(Running, true);
        assert_eq!(next(&promoted, &policy(false, 1), &progress(1, 2, None)), None);
    }

    #[test]
    fn a_revert_ends_reverted_or_failed() {
        let d = deployment(Reverting, true);
        assert_eq!(next(&d, &policy(true, 0), &progress(2, 1, None)), None);
        assert_eq!(next(&d, &policy(true, 0), &progress(3, 0, None)).map(|t| t.0), Some(Reverted));
        assert_eq!(next(&d, &policy(true, 0), &progress(1, 1, Some("x"))).map(|t| t.0), Some(Failed));
    }

    #[test]
    fn terminal_deployments_never_move() {
        for state in [Succeeded, Failed, Reverted, Superseded] {
            for failure in [None, Some("x")] {
                assert_eq!(next(&deployment(state, true), &policy(true, 1), &progress(3, 0, failure)), None);
            }
        }
    }
}
