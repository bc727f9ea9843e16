//! The restart policy: what happens after a task's container stops running.
//!
//! Pure functions over the task's `RestartPolicy` and its attempt counter.
//! The worker applies them next to the container, so a crash is repaired
//! even while no manager is reachable. Randomness (the jitter) is passed in,
//! so every decision is reproducible in tests.

use std::time::Duration;

use goat_storage::model::{RestartCondition, RestartPolicy};

/// How a container's run ended, as far as the restart policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exited with status 0.
    Success,
    /// Failed: non-zero exit, OOM kill, failed health check, or it could not
    /// start at all. `reason` is what the task reports ("exit code 1").
    Failure { reason: String },
}

/// What to do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`.
    Restart { delay: Duration },
    /// The task is done (exit 0 under a policy that does not restart).
    Complete,
    /// Give up and report the task failed.
    Fail { reason: String },
}

/// Decides what follows an exit. `attempts` counts the restarts already made
/// since the container last ran stably; `jitter` is a number in `[0, 1)`.
pub fn decide(policy: &RestartPolicy, exit: &Exit, attempts: u32, jitter: f64) -> Decision {
    let restart = match (policy.condition, exit) {
        (RestartCondition::Always, _) => true,
        (RestartCondition::OnFailure, Exit::Failure { .. }) => true,
        (RestartCondition::OnFailure | RestartCondition::Never, Exit::Success) => false,
        (RestartCondition::Never, Exit::Failure { .. }) => false,
    };
    if !restart {
        return match exit {
            Exit::Success => Decision::Complete,
            Exit::Failure { reason } => Decision::Fail { reason: reason.clone() },
        };
    }
    if policy.max_attempts != 0 && attempts >= policy.max_attempts {
        let last = match exit {
            Exit::Success => "exit code 0".to_string(),
            Exit::Failure { reason } => reason.clone(),
        };
        return Decision::Fail { reason: format!("{last} (gave up after {attempts} restarts)") };
    }
    Decision::Restart { delay: backoff(policy, attempts, jitter) }
}

/// The delay before restart number `attempts + 1`: `initial_delay` doubled
/// per previous attempt, capped at `max_delay`, then spread by up to ±20%
/// jitter (still capped) so that many failing tasks do not restart in step.
///
/// `initial_delay` is at least `MIN_RESTART_DELAY` here whatever the spec
/// says (specs accepted before that rule may still ask for 0): with no delay
/// a crash loop would commit a Raft entry per restart as fast as Docker goes.
pub fn backoff(policy: &RestartPolicy, attempts: u32, jitter: f64) -> Duration {
    let initial = policy.initial_delay.max(goat_storage::validate::MIN_RESTART_DELAY).0 as f64;
    let max = (policy.max_delay.0 as f64).max(initial);
    let base = (initial * 2f64.powi(attempts.min(62) as i32)).min(max);
    let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    Duration::from_millis((base * spread).min(max).round() as u64)
}

/// Whether a run that lasted `ran_for` was stable, so the attempt counter
/// starts over.
pub fn is_stable(policy: &RestartPolicy, ran_for: Duration) -> bool {
    ran_for >= policy.reset_after.as_duration()
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::Millis;

    fn policy(condition: RestartCondition, max_attempts: u32) -> RestartPolicy {
        RestartPolicy {
            condition,
            max_attempts,
            initial_delay: Millis(100),
            max_delay: Millis(1_000),
            reset_after: Millis(10_000),
        }
    }

    fn fail(reason: &str) -> Exit {
        Exit::Failure { reason: reason.into() }
    }

    #[test]
    fn never_restarts_nothing() {
        let p = policy(RestartCondition::Never, 5);
        assert_eq!(decide(&p, &Exit::Success, 0, 0.5), Decision::Complete);
        assert_eq!(decide(&p, &fail("exit code 3"), 0, 0.5), Decision::Fail { reason: "exit code 3".into() });
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let p = policy(RestartCondition::OnFailure, 5);
        assert_eq!(decide(&p, &Exit::Success, 0, 0.5), Decision::Complete);
        assert!(matches!(decide(&p, &fail("OOM killed"), 0, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn always_restarts_clean_exits_too() {
        let p = policy(RestartCondition::Always, 0);
        assert!(matches!(decide(&p, &Exit::Success, 100, 0.5), Decision::Restart { .. }));
        assert!(matches!(decide(&p, &fail("exit code 1"), 1000, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn gives_up_after_max_attempts_with_the_last_reason() {
        let p = policy(RestartCondition::OnFailure, 3);
        for attempts in 0..3 {
            assert!(matches!(decide(&p, &fail("exit code 1"), attempts, 0.5), Decision::Restart { .. }));
        }
        match decide(&p, &fail("exit code 1"), 3, 0.5) {
            Decision::Fail { reason } => {
                assert!(reason.starts_with("exit code 1"), "{reason}");
                assert!(reason.contains("3 restarts"), "{reason}");
            }
            other => panic!("expected fail, got {other:?}"),
        }
        let always = policy(RestartCondition::Always, 2);
        assert!(matches!(decide(&always, &Exit::Success, 2, 0.5), Decision::Fail { .. }));
    }

    #[test]
    fn zero_max_attempts_is_unlimited() {
        let p = policy(RestartCondition::OnFailure, 0);
        assert!(matches!(decide(&p, &fail("x"), u32::MAX, 0.0), Decision::Restart { .. }));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy(RestartCondition::OnFailure, 0);
        // Jitter 0.5 is the midpoint: exactly the base delay.
        let delays: Vec<u64> = (0..6).map(|a| backoff(&p, a, 0.5).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff(&p, 1_000, 0.5), Duration::from_millis(1_000));
        assert_eq!(backoff(&p, u32::MAX, 0.5), Duration::from_millis(1_000));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy(RestartCondition::OnFailure, 0);
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(160));
        assert_eq!(backoff(&p, 1, 0.999_999), Duration::from_millis(240));
        // Never above the cap, even with jitter.
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_millis(1_000));
        // Out-of-range jitter is clamped.
        assert_eq!(backoff(&p, 0, -3.0), Duration::from_millis(80));
    }

    #[test]
    fn max_delay_below_initial_uses_initial() {
        let mut p = policy(RestartCondition::OnFailure, 0);
        p.max_delay = Millis(10);
        assert_eq!(backoff(&p, 5, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn a_zero_initial_delay_still_waits() {
        let mut p = policy(RestartCondition::OnFailure, 0);
        p.initial_delay = Millis(0);
        p.max_delay = Millis(0);
        assert_eq!(backoff(&p, 0, 0.5), Duration::from_millis(100));
        p.max_delay = Millis(5_000);
        assert_eq!(backoff(&p, 3, 0.5), Duration::from_millis(800));
    }

    #[test]
    fn stability() {
        let p = policy(RestartCondition::OnFailure, 0);
        assert!(!is_stable(&p, Duration::from_millis(9_999)));
        assert!(is_stable(&p, Duration::from_millis(10_000)));
    }
}
