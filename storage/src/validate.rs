//! Validation of a submitted `TaskSpec`: every rule a well-typed spec must
//! still meet before the cluster stores it. Each error names its field, in
//! the JSON path form the API reports (`ports[1].container`).

use std::collections::BTreeSet;
use std::fmt;

use crate::model::TaskSpec;
use crate::Millis;

/// The largest resources a single task may ask for. Anything above is a typo
/// (a unit mistake), not a real request.
pub const MAX_CPU: f64 = 1024.0;
pub const MAX_MEMORY: u64 = 16 << 40; // 16 TiB
/// The least memory limit Docker takes (0 is no limit).
pub const MIN_MEMORY: u64 = 6 << 20; // 6 MiB
pub const MAX_DISK: u64 = 1 << 50; // 1 PiB
/// The most bytes of text one spec may carry in all: its name, image,
/// `cmd` arguments, `env` and `secret_env` names and values, `labels` keys and values and
/// health check path together. A spec is replicated to every manager and
/// sent to its worker on every answer; this keeps one log entry, one
/// AppendEntries and one heartbeat answer small (see `goat_raft::limits`).
pub const MAX_SPEC_BYTES: usize = 64 << 10;

/// A spec field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// The rule is across fields (or list items): each is valid alone, the
    /// combination is not (`update.canary` above `replicas`, a host port
    /// listed twice). The OpenAPI schema states every rule of one field;
    /// JSON Schema cannot state these, so the API answers them apart (422
    /// `invalid` rather than 400 `invalid_field`).
    pub across: bool,
}

impl FieldError {
    /// A rule of the field alone.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), across: false }
    }

    /// A rule across fields, `field` the one at fault.
    pub fn across(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), across: true }
    }

    /// The same error, its field under `parent` (`template.image`).
    pub fn under(self, parent: &str) -> Self {
        FieldError { field: format!("{parent}.{}", self.field), ..self }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Checks a Docker-style name: 1–63 chars of `[a-zA-Z0-9_.-]`, first one
/// alphanumeric. Shared by task and node names.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > 63 {
        return Err(FieldError::new(field, "must be 1 to 63 characters long"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(FieldError::new(field, "may contain only letters, digits, '_', '.' and '-'"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(FieldError::new(field, "must start with a letter or a digit"));
    }
    Ok(())
}

/// The bytes of text in each variable-size part of `spec`, largest
/// first, as `(field, bytes)`.
pub fn spec_sizes(spec: &TaskSpec) -> Vec<(&'static str, usize)> {
    let pairs = |map: &std::collections::BTreeMap<String, String>| map.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut sizes = vec![
        ("cmd", spec.cmd.iter().map(String::len).sum()),
        ("env", pairs(&spec.env)),
        ("secret_env", pairs(&spec.secret_env)),
        ("labels", pairs(&spec.labels)),
        ("name", spec.name.len()),
        ("image", spec.image.len()),
        ("health_check.path", spec.health_check.as_ref().and_then(|h| h.path.as_ref()).map_or(0, String::len)),
    ];
    sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sizes
}

/// Refuses a spec over [`MAX_SPEC_BYTES`], naming its largest part.
pub fn check_spec_size(spec: &TaskSpec) -> Result<(), FieldError> {
    let sizes = spec_sizes(spec);
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    if total <= MAX_SPEC_BYTES {
        return Ok(());
    }
    let (field, largest) = sizes[0];
    Err(FieldError::across(
        field,
        format!(
            "the spec carries {total} bytes of text ({field}: {largest}), over the limit of {MAX_SPEC_BYTES} bytes \
             for name, image, cmd, env, secret_env, labels and health_check.path together"
        ),
    ))
}

/// The shortest `restart_policy.initial_delay` accepted. Each restart a
/// worker performs reaches the leader and is committed as a Raft entry, so a
/// task crashing at once with no delay would commit entries as fast as
/// Docker can start it. (Workers also apply this floor to specs accepted
/// before the rule.)
pub const MIN_RESTART_DELAY: Millis = Millis(100);

/// The shortest `restart_policy.max_delay` accepted with unlimited attempts
/// (`max_attempts: 0`): the backoff then settles at one restart a second at
/// most, forever.
pub const MIN_UNLIMITED_MAX_DELAY: Millis = Millis(1_000);

/// The shortest `health_check.interval` accepted: each change of health a
/// worker sees reaches the leader.
pub const MIN_HEALTH_INTERVAL: Millis = Millis(100);

/// Returns the first rule the spec breaks, if any.
pub fn validate_spec(spec: &TaskSpec) -> Result<(), FieldError> {
    check_spec_size(spec)?;
    check_name("name", &spec.name)?;

    let image = spec.image.trim();
    if image.is_empty() {
        return Err(FieldError::new("image", "must not be empty"));
    }
    // Docker's references are ASCII: refusing the rest here says so at once
    // (and keeps the 255 limit in characters what it is in bytes).
    if spec.image.len() > 255 || !spec.image.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            "image",
            "must be an image reference: visible ASCII characters, no spaces, at most 255",
        ));
    }
    for (i, arg) in spec.cmd.iter().enumerate() {
        if arg.contains('\0') {
            return Err(FieldError::new(format!("cmd[{i}]"), "must not contain NUL"));
        }
    }
    for (field, vars) in [("env", &spec.env), ("secret_env", &spec.secret_env)] {
        for (key, value) in vars {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(FieldError::new(
                    format!("{field}.{key}"),
                    "variable names must be non-empty, without '=' or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(FieldError::new(format!("{field}.{key}"), "must not contain NUL"));
            }
        }
    }
    if let Some(key) = spec.secret_env.keys().find(|k| spec.env.contains_key(*k)) {
        return Err(FieldError::across(format!("secret_env.{key}"), "is also in env: a variable is secret or not"));
    }

    if !spec.cpu.is_finite() || spec.cpu < 0.0 {
        return Err(FieldError::new("cpu", "must be a non-negative number of cores"));
    }
    if spec.cpu > MAX_CPU {
        return Err(FieldError::new("cpu", format!("{} cores is more than the limit of {MAX_CPU}", spec.cpu)));
    }
    if spec.cpu_hard_limit && spec.cpu <= 0.0 {
        return Err(FieldError::across("cpu_hard_limit", "needs a cpu above 0 to cap the container at"));
    }
    if spec.memory > MAX_MEMORY {
        return Err(FieldError::new("memory", "is more than the limit of 16 TiB (memory is in bytes)"));
    }
    if spec.memory != 0 && spec.memory < MIN_MEMORY {
        return Err(FieldError::new("memory", "must be 0 (no limit) or at least 6 MiB (memory is in bytes)"));
    }
    if spec.disk > MAX_DISK {
        return Err(FieldError::new("disk", "is more than the limit of 1 PiB (disk is in bytes)"));
    }

    let mut container_ports = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        if port.container == 0 {
            return Err(FieldError::new(format!("ports[{i}].container"), "must be between 1 and 65535"));
        }
        if !container_ports.insert(port.container) {
            return Err(FieldError::across(
                format!("ports[{i}].container"),
                format!("port {} is listed twice", port.container),
            ));
        }
        if let Some(host) = port.host {
            if host == 0 {
                return Err(FieldError::new(
                    format!("ports[{i}].host"),
                    "must be between 1 and 65535 (omit it to have one assigned)",
                ));
            }
            if !host_ports.insert(host) {
                return Err(FieldError::across(
                    format!("ports[{i}].host"),
                    format!("host port {host} is listed twice"),
                ));
            }
        }
    }

    let policy = &spec.restart_policy;
    if policy.initial_delay < MIN_RESTART_DELAY {
        return Err(FieldError::new(
            "restart_policy.initial_delay",
            format!("must be at least {MIN_RESTART_DELAY}: every restart is reported and committed to the Raft log"),
        ));
    }
    if policy.max_attempts == 0 && policy.max_delay < MIN_UNLIMITED_MAX_DELAY {
        return Err(FieldError::across(
            "restart_policy.max_delay",
            format!(
                "must be at least {MIN_UNLIMITED_MAX_DELAY} when max_attempts is 0 (unlimited), so a crash loop \
                 settles to at most one restart a second"
            ),
        ));
    }
    if policy.max_delay < policy.initial_delay {
        return Err(FieldError::across("restart_policy.max_delay", "must not be less than initial_delay"));
    }

    let reschedule = &spec.reschedule_policy;
    if reschedule.max_delay < reschedule.delay {
        return Err(FieldError::across("reschedule_policy.max_delay", "must not be less than delay"));
    }

    if let Some(check) = &spec.health_check {
        if check.port == 0 {
            return Err(FieldError::new("health_check.port", "must be between 1 and 65535"));
        }
        if let Some(path) = &check.path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(FieldError::new("health_check.path", "must be an absolute URL path such as \"/health\""));
            }
        }
        if check.interval < MIN_HEALTH_INTERVAL {
            return Err(FieldError::new("health_check.interval", format!("must be at least {MIN_HEALTH_INTERVAL}")));
        }
        if check.timeout.0 == 0 {
            return Err(FieldError::new("health_check.timeout", "must be more than 0"));
        }
        if check.failure_threshold == 0 {
            return Err(FieldError::new("health_check.failure_threshold", "must be at least 1"));
        }
    }

    for key in spec.labels.keys() {
        if key.is_empty() || key.chars().count() > 255 {
            return Err(FieldError::new(format!("labels.{key}"), "label keys must be 1 to 255 characters"));
        }
        if key.starts_with("goat.") {
            return Err(FieldError::new(format!("labels.{key}"), "the goat. prefix is reserved"));
        }
    }
    Ok(())
}

/// Returns the first rule a service spec breaks, if any. Template fields
/// are named `template.FIELD`.
pub fn validate_service(spec: &crate::model::ServiceSpec) -> Result<(), FieldError> {
    // A copy is named `NAME` and its container `NAME.<id>.<generation>`.
    check_name("name", &spec.name)?;
    if spec.replicas > crate::model::MAX_REPLICAS {
        return Err(FieldError::new("replicas", format!("must be between 0 and {}", crate::model::MAX_REPLICAS)));
    }
    if !spec.template.name.is_empty() && spec.template.name != spec.name {
        return Err(FieldError::new("template.name", "must be absent: the service names its copies"));
    }
    let mut template = spec.template.clone();
    template.name = spec.name.clone();
    validate_spec(&template).map_err(|e| e.under("template"))?;
    if spec.spread.max_per_node == Some(0) {
        return Err(FieldError::new("spread.max_per_node", "must be at least 1"));
    }
    let update = &spec.update;
    if update.max_parallel == 0 {
        return Err(FieldError::new("update.max_parallel", "must be at least 1"));
    }
    if update.healthy_deadline.0 <= update.min_healthy_time.0 {
        return Err(FieldError::across("update.healthy_deadline", "must be longer than update.min_healthy_time"));
    }
    if update.canary > spec.replicas.max(1) {
        return Err(FieldError::across("update.canary", "must be at most replicas"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthCheck, PortMapping};

    fn spec() -> TaskSpec {
        serde_json::from_str(r#"{"name": "echo", "image": "goat-echo:latest"}"#).unwrap()
    }

    fn field_of(spec: &TaskSpec) -> String {
        validate_spec(spec).unwrap_err().field
    }

    /// Point 4(d): no restart loop without a delay, and an unlimited one
    /// backs off to at least a second.
    #[test]
    fn restart_delays_have_a_floor() {
        let mut s = spec();
        s.restart_policy.initial_delay = Millis(0);
        assert_eq!(field_of(&s), "restart_policy.initial_delay");
        s.restart_policy.initial_delay = MIN_RESTART_DELAY;
        assert_eq!(validate_spec(&s), Ok(()));
        s.restart_policy.max_attempts = 0;
        s.restart_policy.max_delay = Millis(500);
        assert_eq!(field_of(&s), "restart_policy.max_delay");
        s.restart_policy.max_delay = MIN_UNLIMITED_MAX_DELAY;
        assert_eq!(validate_spec(&s), Ok(()));
        s.restart_policy.max_attempts = 3;
        s.restart_policy.max_delay = Millis(100);
        assert_eq!(validate_spec(&s), Ok(()), "a bounded number of quick restarts is fine");
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        assert_eq!(validate_spec(&spec()), Ok(()));
    }

    #[test]
    fn names_follow_docker_rules() {
        for bad in ["", "-x", ".x", "a b", "é", &"x".repeat(64)] {
            let mut s = spec();
            s.name = bad.to_string();
            assert_eq!(field_of(&s), "name", "{bad:?}");
        }
        for good in ["a", "echo-1", "Echo_2.v3", &"x".repeat(63)] {
            let mut s = spec();
            s.name = good.to_string();
            assert_eq!(validate_spec(&s), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn image_must_be_present() {
        let mut s = spec();
        s.image = "  ".into();
        assert_eq!(field_of(&s), "image");
        s.image = "a b".into();
        assert_eq!(field_of(&s), "image");
    }

    #[test]
    fn resources_must_be_sane() {
        let mut s = spec();
        s.cpu = -1.0;
        assert_eq!(field_of(&s), "cpu");
        s.cpu = f64::NAN;
        assert_eq!(field_of(&s), "cpu");
        s.cpu = 5000.0;
        assert_eq!(field_of(&s), "cpu");
        s.cpu = 0.0;
        s.cpu_hard_limit = true;
        assert_eq!(field_of(&s), "cpu_hard_limit");
        s.cpu = 0.5;
        assert_eq!(validate_spec(&s), Ok(()));
        let mut s = spec();
        s.memory = u64::MAX;
        assert_eq!(field_of(&s), "memory");
        s.memory = 1000;
        assert_eq!(field_of(&s), "memory");
        let mut s = spec();
        s.disk = u64::MAX;
        assert_eq!(field_of(&s), "disk");
    }

    #[test]
    fn ports_are_checked() {
        let mut s = spec();
        s.ports = vec![PortMapping { container: 0, host: None }];
        assert_eq!(field_of(&s), "ports[0].container");
        s.ports =
            vec![PortMapping { container: 80, host: Some(8080) }, PortMapping { container: 81, host: Some(8080) }];
        assert_eq!(field_of(&s), "ports[1].host");
        s.ports = vec![PortMapping { container: 80, host: None }, PortMapping { container: 80, host: None }];
        assert_eq!(field_of(&s), "ports[1].container");
        s.ports = vec![PortMapping { container: 80, host: Some(0) }];
        assert_eq!(field_of(&s), "ports[0].host");
    }

    #[test]
    fn health_checks_are_checked() {
        let mut s = spec();
        let good = HealthCheck {
            path: Some("/health".into()),
            port: 7777,
            interval: Millis(1000),
            timeout: Millis(500),
            failure_threshold: 3,
            start_period: Millis(0),
        };
        s.health_check = Some(good.clone());
        assert_eq!(validate_spec(&s), Ok(()));
        s.health_check = Some(HealthCheck { path: Some("health".into()), ..good.clone() });
        assert_eq!(field_of(&s), "health_check.path");
        s.health_check = Some(HealthCheck { interval: Millis(1), ..good.clone() });
        assert_eq!(field_of(&s), "health_check.interval");
        s.health_check = Some(HealthCheck { failure_threshold: 0, ..good });
        assert_eq!(field_of(&s), "health_check.failure_threshold");
    }

    #[test]
    fn env_and_labels_are_checked() {
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert_eq!(field_of(&s), "env.A=B");
        let mut s = spec();
        s.labels.insert("goat.task".into(), "x".into());
        assert_eq!(field_of(&s), "labels.goat.task");
    }

    #[test]
    fn the_spec_size_is_capped_and_the_largest_part_named() {
        let mut s = spec();
        s.env.insert("BIG".into(), "x".repeat(MAX_SPEC_BYTES / 2));
        s.labels.insert("l".into(), "y".repeat(MAX_SPEC_BYTES / 4));
        assert_eq!(validate_spec(&s), Ok(()));
        s.cmd = vec!["z".repeat(MAX_SPEC_BYTES / 4)];
        let e = validate_spec(&s).unwrap_err();
        assert_eq!(e.field, "env");
        assert!(e.message.contains(&MAX_SPEC_BYTES.to_string()), "{e}");
        let mut s = spec();
        s.cmd = (0..1000).map(|_| "a".repeat(100)).collect();
        assert_eq!(validate_spec(&s).unwrap_err().field, "cmd");
    }

    #[test]
    fn unknown_json_fields_are_rejected() {
        let err = serde_json::from_str::<TaskSpec>(r#"{"name":"a","image":"b","imgae":"c"}"#).unwrap_err();
        assert!(err.to_string().contains("imgae"), "{err}");
        let err = serde_json::from_str::<TaskSpec>(r#"{"name":"a","image":"b","restart_policy":{"max_atempts":3}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");
    }
}
