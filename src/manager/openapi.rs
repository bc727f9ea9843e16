//! The public API's OpenAPI document, generated from the code:
//!
//! - the schemas from the types the API reads and writes
//!   (`utoipa::ToSchema` on the model, the views and [`ErrorBody`]), with
//!   the validation rules stated (name pattern and length, a non-empty
//!   image, ports 1–65535, durations, page sizes);
//! - the operations from the handlers (`#[utoipa::path]` on each), listed
//!   by the one route table (`api.rs`, which calls [`complete`]);
//! - what every route shares, added here from the code that decides it:
//!   the Bearer scheme and the role each route needs ([`auth::required`]),
//!   401/403, and the 400/503 answers of routes that read input or wait on
//!   the leader.
//!
//! `docs/openapi.json` is the document, committed: a test fails when it
//! differs from the generated one, and `GOAT_BLESS=1 cargo test -p goat
//! --lib openapi` rewrites it. Managers serve it at `GET /v1/openapi.json`.

use axum::http::Method;
use goat_storage::model::Role;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::Ref;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::auth::{self, Access};
use super::error::ErrorBody;

/// The name of the security scheme in the document.
const BEARER: &str = "bearer";

const DESCRIPTION: &str = "The public API of a Goat manager. Every manager serves all of it: writes go \
through the Raft leader (followers forward them), reads are linearizable unless `?stale=true`. Every route \
but `GET /v1/health` needs `Authorization: Bearer <token>`: an API token of a large enough role (`read` < \
`submit` < `admin`), or the cluster token (401 without, 403 with too small a role). Errors are JSON \
`{error, code, field}`; `field` names the request's field at fault. Generated from the code (see \
docs/api.md).";

/// An error answer with the shared body.
fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
        .into()
}

/// What a route needs, in words.
fn needs(access: Access) -> String {
    match access {
        Access::Public => "No token needed.".into(),
        Access::Role(role) => {
            format!("Needs a token with the `{}` role or a larger one, or the cluster token.", role.as_str())
        }
        Access::Cluster => "Needs the cluster token (workers and managers); API tokens get 403.".into(),
    }
}

/// Completes the operations the handlers describe into the document.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("Goat")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(DESCRIPTION))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API token's secret (`goat_…`) or the cluster token."))
                .build(),
        ),
    );
    // The error body and its codes, whether or not an operation names them.
    let mut schemas = Vec::new();
    ErrorBody::schemas(&mut schemas);
    schemas.push((ErrorBody::name().into_owned(), ErrorBody::schema()));
    components.schemas.extend(schemas);

    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(op) = operation {
                complete_operation(&method, path, op);
            }
        }
    }
    doc
}

fn complete_operation(method: &Method, path: &str, op: &mut Operation) {
    let access = auth::required(method, path);
    let needs = needs(access);
    op.description = Some(match op.description.take() {
        Some(text) if !text.is_empty() => format!("{text}\n\n{needs}"),
        _ => needs,
    });
    let responses = &mut op.responses.responses;
    if access == Access::Public {
        op.security = Some(Vec::new());
    } else {
        op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        responses.entry("401".into()).or_insert_with(|| error("No token, or an unknown one (`unauthorized`)."));
        if access > Access::Role(Role::Read) {
            responses.entry("403".into()).or_insert_with(|| error("The token's role is too small (`forbidden`)."));
        }
    }
    let takes_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some();
    if takes_input {
        responses.entry("400".into()).or_insert_with(|| {
            error(
                "Bad input (`invalid_field`, `invalid_query`, `invalid_header`, `bad_json`, `bad_body`): \
                 `field` names the body field, parameter or header at fault.",
            )
        });
    }
    if takes_input || *method != Method::GET {
        responses.entry("503".into()).or_insert_with(|| {
            error("No leader just now, or this manager is shutting down (`unavailable`): retry after `Retry-After`.")
        });
    }
}

/// The document as committed: pretty JSON and a final newline.
pub fn render(doc: &OpenApi) -> String {
    // Serializing a tree of maps and strings cannot fail.
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use crate::manager::api::{openapi, PUBLIC_ROUTES};

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    /// Where the document is committed.
    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
    }

    fn document() -> Value {
        serde_json::from_str(&super::render(&openapi())).expect("the generated document is JSON")
    }

    /// `docs/openapi.json` is the generated document. With `GOAT_BLESS=1`
    /// the test writes it instead of comparing.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let generated = super::render(&openapi());
        let path = committed_path();
        if std::env::var_os("GOAT_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &generated).expect("write docs/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(committed.lines().count().min(generated.lines().count()));
            panic!(
                "docs/openapi.json is not the document the code generates (first difference at line {}); \
                 regenerate it with `GOAT_BLESS=1 cargo test -p goat --lib openapi` and commit it",
                line + 1
            );
        }
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

    /// The route table and the handlers' `#[utoipa::path]` agree: a
    /// handler listed under one path cannot describe another.
    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let routes: BTreeSet<(String, String)> =
            PUBLIC_ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        let documented = documented(&doc);
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(missing.is_empty(), "routes whose handler describes no operation at their path: {missing:?}");
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(extra.is_empty(), "operations at a path the route table does not have: {extra:?}");
    }

    /// Resolves a `{"$ref": "#/components/..."}` against the document.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => v,
        }
    }

    /// Every `$ref` in the document points at something.
    fn check_refs(doc: &Value, v: &Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, v);
                }
                map.values().for_each(|v| check_refs(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
            _ => {}
        }
    }

    #[test]
    fn operations_declare_their_parameters_errors_and_security() {
        let doc = document();
        check_refs(&doc, &doc);
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
            for response in responses.values() {
                let response = resolve(&doc, response);
                assert!(response["description"].is_string(), "{method} {path}: a response without description");
            }
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path}: no security"));
            if (method.as_str(), path.as_str()) == ("get", "/v1/health") {
                assert!(security.is_empty(), "GET /v1/health needs no token");
            } else {
                assert_eq!(security.len(), 1, "{method} {path}: security {security:?}");
                assert!(security[0].get("bearer").is_some(), "{method} {path}: Bearer");
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
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
