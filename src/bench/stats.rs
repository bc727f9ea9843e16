//! Small figures shared by the benchmarks.

use std::time::Duration;

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The median of `values` (the upper one of an even count; zero if empty).
pub fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The 1-minute load average (`/proc/loadavg`) as written there, "?" if
/// unknown: every report states the load it was measured under.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
