//! The public API's OpenAPI 3 document, `docs/openapi.json`, served at
//! `GET /v1/openapi.json`. A test below keeps it true: every route of
//! `api::PUBLIC_ROUTES` is documented, every documented operation exists,
//! and every operation lists its path parameters and its error responses.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded at build time.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::manager::api::PUBLIC_ROUTES;

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is valid JSON")
    }

    /// `(method, path)` of every operation the document describes.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    ops.insert((method.to_string(), path.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let routes: BTreeSet<(String, String)> =
            PUBLIC_ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        let documented = documented(&doc);
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(missing.is_empty(), "routes missing from docs/openapi.json: {missing:?}");
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(extra.is_empty(), "docs/openapi.json documents routes the API does not have: {extra:?}");
    }

    /// Resolves a `{"$ref": "#/components/..."}` against the document.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => v,
        }
    }

    #[test]
    fn operations_declare_their_path_parameters_and_errors() {
        let doc = document();
        for (method, path) in documented(&doc) {
            let op = &doc["paths"][&path][&method];
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_string)
                .collect();
            assert_eq!(declared, in_path, "{method} {path}: path parameters");
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success response");
            assert!(
                responses.keys().any(|s| s.starts_with('4') || s.starts_with('5') || s == "default"),
                "{method} {path}: no error response"
            );
            for response in responses.values() {
                let response = resolve(&doc, response);
                assert!(response["description"].is_string(), "{method} {path}: a response without description");
            }
        }
    }

    /// Every field the API serializes for a task, a spec and a node is in
    /// the document's schema, and every task state in its enum: the model
    /// cannot grow a field the document does not describe.
    #[test]
    fn schemas_name_every_field_of_the_model() {
        use goat_storage::fsm::{ClusterState, Command};
        use goat_storage::model::{EngineStatus, Resources, TaskState};

        let doc = document();
        let properties = |schema: &str| -> BTreeSet<String> {
            doc["components"]["schemas"][schema]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("schema {schema} has properties"))
                .keys()
                .cloned()
                .collect()
        };
        let keys =
            |value: &Value| -> BTreeSet<String> { value.as_object().expect("an object").keys().cloned().collect() };
        let mut state = ClusterState::default();
        let spec = serde_json::json!({"name": "echo", "image": "goat-echo:latest"});
        let task_id = uuid::Uuid::from_u128(1);
        state.apply(&Command::SubmitTask { task_id, spec: serde_json::from_value(spec).expect("a spec"), at: 1 });
        state.apply(&Command::UpsertNode {
            name: "w1".into(),
            capacity: Resources { cpu: 1.0, memory: 1 << 30, disk: 0 },
            engine: EngineStatus { healthy: true, error: None },
            at: 1,
        });
        let task = serde_json::to_value(&state.tasks[&task_id]).expect("task JSON");
        let node = serde_json::to_value(&state.nodes["w1"]).expect("node JSON");
        for (schema, value) in [("Task", &task), ("TaskSpec", &task["spec"]), ("Node", &node)] {
            let missing: Vec<_> = keys(value).difference(&properties(schema)).cloned().collect();
            assert!(missing.is_empty(), "schema {schema} lacks {missing:?}");
        }
        let states: BTreeSet<String> = doc["components"]["schemas"]["TaskState"]["enum"]
            .as_array()
            .expect("TaskState enum")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        for state in TaskState::ALL {
            assert!(states.contains(state.as_str()), "TaskState enum lacks {}", state.as_str());
        }
    }
}
