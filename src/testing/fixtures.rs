//! The task specs the tests, the benchmarks' checks and the examples
//! submit, typed: a test changes a field (`spec.ports.push(...)`) rather
//! than a JSON key. They are written as the API's JSON and read with the
//! model's own `Deserialize`, so the defaults a fixture leaves out are the
//! ones a client that sends that JSON gets.

use goat_storage::model::TaskSpec;
use serde_json::json;

/// The image of the echo app, `goat-echo:latest` unless `GOAT_ECHO_IMAGE`
/// names another tag (a branch's own build).
pub fn echo_image() -> String {
    std::env::var("GOAT_ECHO_IMAGE").unwrap_or_else(|_| "goat-echo:latest".into())
}

/// A small valid task spec that is never started on a worker in the
/// tests that use it (no worker, or a placement checked only).
pub fn spec(name: &str) -> TaskSpec {
    from_json(json!({"name": name, "image": "goat-echo:latest", "cpu": 0.01, "memory": 8 << 20}))
}

/// The echo app `name`: container port 7777 published on a free host
/// port, a health check of `/health` every 500 ms after a 2 s start.
pub fn echo_spec(name: &str) -> TaskSpec {
    from_json(json!({
        "name": name,
        "image": echo_image(),
        "cpu": 0.1,
        "memory": 64 << 20,
        "ports": [{"container": 7777}],
        "health_check": {"path": "/health", "port": 7777, "interval": "500ms", "start_period": "2s"}
    }))
}

/// A spec from the API's JSON; panics (a broken fixture) if it is not one.
pub fn from_json(value: serde_json::Value) -> TaskSpec {
    serde_json::from_value(value).expect("a fixture that is a valid task spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test submits is what the fixture says: the spec's JSON reads
    /// back as the same spec (durations, defaults and all).
    #[test]
    fn fixtures_round_trip_through_the_api_json() {
        for spec in [spec("a"), echo_spec("b")] {
            let json = serde_json::to_value(&spec).expect("serializes");
            assert_eq!(from_json(json), spec);
        }
    }
}
