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
use goat_storage::Millis;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayItems, KnownFormat, Ref, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, RefOr};
use utoipa::Number;
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

/// The error answers many routes share, as `components.responses`:
/// `(status, name, description)`.
const SHARED: [(&str, &str, &str); 4] = [
    (
        "400",
        "BadRequest",
        "Bad input (`invalid_field`, `invalid_query`, `invalid_header`, `bad_json`, `bad_body`): `field` names \
         the body field, parameter or header at fault.",
    ),
    ("401", "Unauthorized", "No token, or an unknown one (`unauthorized`); with `WWW-Authenticate: Bearer`."),
    ("403", "Forbidden", "The token's role is too small for the route (`forbidden`)."),
    (
        "503",
        "Unavailable",
        "No leader just now, or this manager is shutting down (`unavailable`): retry after `Retry-After`.",
    ),
];

/// A reference to the shared answer of `status`.
fn shared(status: &str) -> RefOr<utoipa::openapi::Response> {
    let name = SHARED.iter().find(|(s, _, _)| *s == status).map_or("", |(_, name, _)| *name);
    RefOr::Ref(Ref::new(format!("#/components/responses/{name}")))
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
    doc.info =
        InfoBuilder::new().title("Goat").version(env!("CARGO_PKG_VERSION")).description(Some(DESCRIPTION)).build();
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
    for (_, name, description) in SHARED {
        components.responses.insert(name.into(), error(description));
    }

    bound_inputs(&mut doc);
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

/// The range of each sized integer format: a format names a range, but
/// only `minimum`/`maximum` state it in a way every JSON Schema validator
/// (and a fuzzer) reads. Without them a `u32` field reads as any integer
/// ≥ 0, and 2^40 would be valid by the document but refused by serde. The
/// formats utoipa names by Rust type (`u32` → `uint32`) are written with
/// their usual names (utoipa spells them `u-int32`).
fn integer_range(format: &KnownFormat) -> Option<(&'static str, Number, Number)> {
    use Number::{Int, UInt};
    Some(match format {
        KnownFormat::Int8 => ("int8", Int(i8::MIN.into()), Int(i8::MAX.into())),
        KnownFormat::Int16 => ("int16", Int(i16::MIN.into()), Int(i16::MAX.into())),
        KnownFormat::Int32 => ("int32", Int(i32::MIN as isize), Int(i32::MAX as isize)),
        KnownFormat::Int64 => ("int64", Int(i64::MIN as isize), Int(i64::MAX as isize)),
        KnownFormat::UInt8 => ("uint8", UInt(0), UInt(u8::MAX.into())),
        KnownFormat::UInt16 => ("uint16", UInt(0), UInt(u16::MAX.into())),
        KnownFormat::UInt32 => ("uint32", UInt(0), UInt(u32::MAX as usize)),
        KnownFormat::UInt64 => ("uint64", UInt(0), UInt(u64::MAX as usize)),
        _ => return None,
    })
}

/// Gives `schema` and every schema inside it the range of its integer
/// format, where the code did not state a narrower one.
fn bound_integers(schema: &mut RefOr<Schema>) {
    if let RefOr::T(schema) = schema {
        bound_integers_in(schema);
    }
}

fn bound_integers_in(schema: &mut Schema) {
    match schema {
        Schema::Object(object) => {
            let integer = match &object.schema_type {
                SchemaType::Type(t) => *t == Type::Integer,
                SchemaType::Array(ts) => ts.contains(&Type::Integer),
                SchemaType::AnyValue => false,
            };
            if integer && object.format.is_none() && object.enum_values.is_none() {
                // utoipa writes every sized integer with a format: one
                // without is a `usize` (with `minimum: 0`) or an `isize`,
                // 64 bits here.
                let unsigned = matches!(object.minimum, Some(Number::UInt(_)))
                    || matches!(object.minimum, Some(Number::Int(min)) if min >= 0)
                    || matches!(object.minimum, Some(Number::Float(min)) if min >= 0.0);
                let format = if unsigned { KnownFormat::UInt64 } else { KnownFormat::Int64 };
                object.format = Some(SchemaFormat::KnownFormat(format));
            }
            if let Some(SchemaFormat::KnownFormat(format)) = &object.format {
                if let Some((name, min, max)) = integer_range(format) {
                    object.format = Some(SchemaFormat::Custom(name.into()));
                    object.minimum.get_or_insert(min);
                    object.maximum.get_or_insert(max);
                }
            }
            object.properties.values_mut().for_each(bound_integers);
            if let Some(AdditionalProperties::RefOr(values)) = object.additional_properties.as_deref_mut() {
                bound_integers(values);
            }
            if let Some(names) = object.property_names.as_deref_mut() {
                bound_integers_in(names);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                bound_integers(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(bound_integers),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(bound_integers),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// Bounds the integers of every schema of `doc` ([`bound_integers`]), and
/// writes a duration in a query string as text: there `?wait=250` is text
/// anyway, and [`Millis`]'s JSON-number branch would let `?wait=1e-9`
/// through, which [`Millis::parse`] refuses.
fn bound_inputs(doc: &mut OpenApi) {
    let millis = RefOr::Ref(Ref::from_schema_name(Millis::name()));
    if let Some(components) = doc.components.as_mut() {
        components.schemas.values_mut().for_each(bound_integers);
    }
    for item in doc.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in operations.into_iter().flatten() {
            for parameter in op.parameters.iter_mut().flatten() {
                if let Some(schema) = parameter.schema.as_mut() {
                    if parameter.parameter_in == ParameterIn::Query && *schema == millis {
                        *schema = Millis::query_schema();
                    }
                    bound_integers(schema);
                }
            }
            for content in op.request_body.iter_mut().flat_map(|body| body.content.values_mut()) {
                content.schema.iter_mut().for_each(bound_integers);
            }
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    for content in response.content.values_mut() {
                        content.schema.iter_mut().for_each(bound_integers);
                    }
                }
            }
        }
    }
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
        responses.entry("401".into()).or_insert_with(|| shared("401"));
        if access > Access::Role(Role::Read) {
            responses.entry("403".into()).or_insert_with(|| shared("403"));
        }
    }
    let takes_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some();
    if takes_input {
        responses.entry("400".into()).or_insert_with(|| shared("400"));
    }
    if takes_input || *method != Method::GET {
        responses.entry("503".into()).or_insert_with(|| shared("503"));
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

/// The schemas do not lie: requests valid by the document are accepted by
/// the real parsing and validation (`json::parse`, `validate_spec`,
/// `validate_service`, the handlers' checks), and requests invalid by it
/// are refused with a 4xx naming the field. The schema side is a small
/// JSON Schema checker (the keywords the document uses) over the generated
/// document, so a rule changed on one side only fails here.
#[cfg(test)]
mod schema_check {
    use axum::body::Bytes;
    use goat_storage::model::{ServiceSpec, TaskSpec};
    use goat_storage::validate::{validate_service, validate_spec};
    use serde_json::{json, Value};

    use crate::manager::api::openapi;
    use crate::manager::error::{ApiError, ErrorCode};
    use crate::manager::json::parse;

    fn document() -> Value {
        serde_json::to_value(openapi()).expect("the document is JSON")
    }

    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => schema,
        }
    }

    fn type_matches(name: &str, value: &Value) -> bool {
        match name {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_u64() || value.is_i64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
            "array" => value.is_array(),
            "object" => value.is_object(),
            other => panic!("unknown type {other}"),
        }
    }

    /// Whether `value` is valid by `schema`; `Err` says where it is not.
    fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = resolve(doc, schema);
        let fail = |why: String| Err(format!("{at}: {why}"));
        if let Some(branches) = schema["oneOf"].as_array() {
            let passing = branches.iter().filter(|b| check(doc, b, value, at).is_ok()).count();
            if passing != 1 {
                return fail(format!("{passing} branches of oneOf match"));
            }
        }
        for branch in schema["allOf"].as_array().into_iter().flatten() {
            check(doc, branch, value, at)?;
        }
        match &schema["type"] {
            Value::String(t) if !type_matches(t, value) => return fail(format!("not a {t}")),
            Value::Array(ts) if !ts.iter().any(|t| type_matches(t.as_str().unwrap_or(""), value)) => {
                return fail(format!("none of {ts:?}"))
            }
            _ => {}
        }
        if let Some(options) = schema["enum"].as_array() {
            if !options.contains(value) {
                return fail(format!("not one of {options:?}"));
            }
        }
        if let Some(text) = value.as_str() {
            let chars = text.chars().count() as u64;
            if schema["minLength"].as_u64().is_some_and(|min| chars < min) {
                return fail("too short".into());
            }
            if schema["maxLength"].as_u64().is_some_and(|max| chars > max) {
                return fail("too long".into());
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                let regex = regex_automata::meta::Regex::new(pattern).expect("a valid pattern");
                if !regex.is_match(text) {
                    return fail(format!("does not match {pattern}"));
                }
            }
            if schema["format"] == "uuid"
                && uuid::Uuid::try_parse(text).map(|u| u.hyphenated().to_string().len()) != Ok(text.len())
            {
                return fail("not a uuid".into());
            }
        }
        if let Some(number) = value.as_f64() {
            if schema["minimum"].as_f64().is_some_and(|min| number < min) {
                return fail(format!("below {}", schema["minimum"]));
            }
            if schema["maximum"].as_f64().is_some_and(|max| number > max) {
                return fail(format!("above {}", schema["maximum"]));
            }
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                if schema.get("items").is_some() {
                    check(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(object) = value.as_object() {
            for required in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(required.as_str().unwrap_or("")) {
                    return fail(format!("lacks {required}"));
                }
            }
            for (key, item) in object {
                let field = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                if let Some(names) = schema.get("propertyNames") {
                    check(doc, names, &json!(key), &field)?;
                }
                match schema["properties"].get(key) {
                    Some(property) => check(doc, property, item, &field)?,
                    None => match &schema["additionalProperties"] {
                        Value::Bool(false) => return fail(format!("unknown field {key}")),
                        extra @ Value::Object(_) => check(doc, extra, item, &field)?,
                        _ => {}
                    },
                }
            }
        }
        Ok(())
    }

    fn schema(doc: &Value, name: &str) -> Value {
        doc["components"]["schemas"][name].clone()
    }

    fn refused_field(result: Result<(), ApiError>) -> Option<(u16, String)> {
        result.err().map(|e| (e.status.as_u16(), e.body.field.unwrap_or_default()))
    }

    /// A task spec through the API's path: parse, then validate.
    fn api_task(spec: &Value) -> Result<(), ApiError> {
        let spec: TaskSpec = parse(Ok(Bytes::from(spec.to_string())))?;
        Ok(validate_spec(&spec)?)
    }

    fn api_service(spec: &Value) -> Result<(), ApiError> {
        let spec: ServiceSpec = crate::manager::services::parse_spec(Ok(Bytes::from(spec.to_string())))?;
        Ok(validate_service(&spec)?)
    }

    /// Each case is valid by the schema exactly when the API accepts it;
    /// a refusal is a 4xx naming `field`.
    fn agree(
        doc: &Value,
        schema: &Value,
        cases: &[(Value, Option<&str>)],
        api: impl Fn(&Value) -> Result<(), ApiError>,
    ) {
        for (value, field) in cases {
            let by_schema = check(doc, schema, value, "");
            let by_api = refused_field(api(value));
            match (field, &by_schema, &by_api) {
                (None, Ok(()), None) => {}
                (Some(field), Err(_), Some((status, named))) => {
                    assert!((400..500).contains(status), "{value}: status {status}");
                    assert_eq!(named, field, "{value}: the API names another field ({by_schema:?})");
                }
                _ => panic!("{value}: expected {field:?}; the schema says {by_schema:?}, the API {by_api:?}"),
            }
        }
    }

    /// Each case is valid by the schema and refused by a rule across
    /// fields, which JSON Schema cannot state: a 422 `invalid` naming
    /// `field` (a schema-driven fuzzer accepts a 422 for valid data).
    fn refused_across(
        doc: &Value,
        schema: &Value,
        cases: &[(Value, &str)],
        api: impl Fn(&Value) -> Result<(), ApiError>,
    ) {
        for (value, field) in cases {
            assert_eq!(check(doc, schema, value, ""), Ok(()), "{value}: valid by the schema");
            let refused = api(value).expect_err("refused");
            assert_eq!(
                (refused.status.as_u16(), refused.body.code, refused.body.field.as_deref()),
                (422, ErrorCode::Invalid, Some(*field)),
                "{value}"
            );
        }
    }

    #[test]
    fn task_specs_valid_by_schema_are_accepted_and_invalid_ones_refused() {
        let doc = document();
        let base = json!({"name": "echo", "image": "goat-echo:latest"});
        let with = |patch: Value| {
            let mut spec = base.clone();
            for (k, v) in patch.as_object().expect("an object") {
                spec[k] = v.clone();
            }
            spec
        };
        let cases = [
            (base.clone(), None),
            (
                with(json!({
                    "name": "a".repeat(63), "cpu": 0.5, "memory": 6 << 20, "disk": 1 << 30,
                    "cmd": ["serve", "--port", "8080"], "env": {"A": "1"}, "labels": {"team": "x"},
                    "ports": [{"container": 8080, "host": 9090}, {"container": 65535}],
                    "restart_policy": {"condition": "always", "initial_delay": "200ms", "max_delay": "30s"},
                    "reschedule_policy": {"attempts": 2, "delay": 5000, "max_delay": "1.5m"},
                    "health_check": {"port": 8080, "path": "/health", "interval": "1s", "timeout": ".5s"},
                    "strategy": "spread", "disconnect_window": "1h",
                })),
                None,
            ),
            (with(json!({"memory": 0})), None),
            // JSON has one kind of number: `4096.0` is an integer.
            (with(json!({"memory": 6291456.0, "disk": 4096.0})), None),
            (with(json!({"disk": 4096.5})), Some("disk")),
            // A `u32` is 0 to 2^32 - 1, by the document too.
            (with(json!({"reschedule_policy": {"attempts": 4294967295u64}})), None),
            (with(json!({"reschedule_policy": {"attempts": 4294967296u64}})), Some("reschedule_policy.attempts")),
            (with(json!({"image": ""})), Some("image")),
            (json!({"name": "echo"}), Some("image")),
            (with(json!({"health_check": {"path": "/"}})), Some("health_check.port")),
            (with(json!({"image": "  "})), Some("image")),
            (with(json!({"image": "a b"})), Some("image")),
            (with(json!({"image": "é"})), Some("image")),
            (with(json!({"image": "i".repeat(256)})), Some("image")),
            (with(json!({"name": ""})), Some("name")),
            (with(json!({"name": "-a"})), Some("name")),
            (with(json!({"name": "a/b"})), Some("name")),
            (with(json!({"name": "a".repeat(64)})), Some("name")),
            (with(json!({"ports": [{"container": 0}]})), Some("ports[0].container")),
            (with(json!({"ports": [{"container": 70000}]})), Some("ports[0].container")),
            (with(json!({"ports": [{"container": 80, "host": 0}]})), Some("ports[0].host")),
            (with(json!({"health_check": {"port": 0}})), Some("health_check.port")),
            (with(json!({"health_check": {"port": 80, "path": "health"}})), Some("health_check.path")),
            (with(json!({"health_check": {"port": 80, "path": "/a\u{80}"}})), Some("health_check.path")),
            (
                with(json!({"health_check": {"port": 80, "failure_threshold": 0}})),
                Some("health_check.failure_threshold"),
            ),
            (with(json!({"restart_policy": {"initial_delay": "2 s"}})), Some("restart_policy.initial_delay")),
            (with(json!({"restart_policy": {"initial_delay": "1x"}})), Some("restart_policy.initial_delay")),
            (with(json!({"restart_policy": {"initial_delay": "-1s"}})), Some("restart_policy.initial_delay")),
            (with(json!({"restart_policy": {"initial_delay": ""}})), Some("restart_policy.initial_delay")),
            // Durations with a least value state it, in both forms.
            (with(json!({"restart_policy": {"initial_delay": "99ms"}})), Some("restart_policy.initial_delay")),
            (with(json!({"restart_policy": {"initial_delay": 99}})), Some("restart_policy.initial_delay")),
            (with(json!({"restart_policy": {"initial_delay": "0.0995s", "max_delay": "1s"}})), None),
            (with(json!({"restart_policy": {"initial_delay": 100}})), None),
            (with(json!({"health_check": {"port": 80, "interval": "0.09s"}})), Some("health_check.interval")),
            (with(json!({"health_check": {"port": 80, "interval": ".1s"}})), None),
            (with(json!({"health_check": {"port": 80, "timeout": "0.4ms"}})), Some("health_check.timeout")),
            (with(json!({"health_check": {"port": 80, "timeout": 0}})), Some("health_check.timeout")),
            (with(json!({"health_check": {"port": 80, "timeout": "0.5ms"}})), None),
            // Whole milliseconds as a number; a fraction is a string.
            (with(json!({"reschedule_policy": {"delay": 1.5}})), Some("reschedule_policy.delay")),
            (with(json!({"reschedule_policy": {"delay": "1.5ms"}})), None),
            (with(json!({"reschedule_policy": {"delay": "1.0000000001s"}})), Some("reschedule_policy.delay")),
            (with(json!({"memory": 1})), Some("memory")),
            (with(json!({"cpu": -1})), Some("cpu")),
            (with(json!({"cpu": 2000})), Some("cpu")),
            (with(json!({"strategy": "random"})), Some("strategy")),
            (with(json!({"cmd": ["a\u{0}b"]})), Some("cmd[0]")),
            (with(json!({"env": {"A=B": "1"}})), Some("env.A=B")),
            (with(json!({"env": {"": "1"}})), Some("env.")),
            (with(json!({"env": {"A": "x\u{0}"}})), Some("env.A")),
            (with(json!({"secret_env": {"A\u{0}": "x"}})), Some("secret_env.A\u{0}")),
            (with(json!({"labels": {"goat.service": "x"}})), Some("labels.goat.service")),
            (with(json!({"labels": {"": "x"}})), Some("labels.")),
            (with(json!({"labels": {"k".repeat(256): "x"}})), Some(&*format!("labels.{}", "k".repeat(256)))),
            (with(json!({"labels": {"goat": "x", "go": "y", "goats.x": "z", "é": "w"}})), None),
        ];
        agree(&doc, &schema(&doc, "TaskSpec"), &cases, api_task);
        let across = [
            (with(json!({"restart_policy": {"max_attempts": 0, "max_delay": "500ms"}})), "restart_policy.max_delay"),
            (with(json!({"restart_policy": {"initial_delay": "2s", "max_delay": "1s"}})), "restart_policy.max_delay"),
            (with(json!({"reschedule_policy": {"delay": "2m", "max_delay": "1m"}})), "reschedule_policy.max_delay"),
            (with(json!({"ports": [{"container": 80}, {"container": 80}]})), "ports[1].container"),
            (with(json!({"ports": [{"container": 80, "host": 1}, {"container": 81, "host": 1}]})), "ports[1].host"),
            (with(json!({"cpu_hard_limit": true})), "cpu_hard_limit"),
            (with(json!({"env": {"K": "1"}, "secret_env": {"K": "2"}})), "secret_env.K"),
            (with(json!({"env": {"A": "x".repeat(40_000), "B": "y".repeat(40_000)}})), "env"),
        ];
        refused_across(&doc, &schema(&doc, "TaskSpec"), &across, api_task);
    }

    #[test]
    fn service_specs_valid_by_schema_are_accepted_and_invalid_ones_refused() {
        let doc = document();
        let cases = [
            (json!({"name": "web", "template": {"image": "goat-echo:latest"}}), None),
            (
                json!({"name": "web", "replicas": 3, "template": {"image": "x", "ports": [{"container": 80}]},
                       "spread": {"max_per_node": 1}, "update": {"max_parallel": 2, "canary": 1}}),
                None,
            ),
            (json!({"name": "web", "template": {"name": "web", "image": "x"}}), Some("template.name")),
            (json!({"name": "web", "template": {"image": ""}}), Some("template.image")),
            (json!({"name": "web", "replicas": 10001, "template": {"image": "x"}}), Some("replicas")),
            (
                json!({"name": "web", "template": {"image": "x"}, "spread": {"max_per_node": 0}}),
                Some("spread.max_per_node"),
            ),
            (
                json!({"name": "web", "template": {"image": "x"}, "update": {"max_parallel": 0}}),
                Some("update.max_parallel"),
            ),
            (json!({"name": "", "template": {"image": "x"}}), Some("name")),
            // A missing field is named.
            (json!({"name": "web"}), Some("template")),
            (json!({"name": "web", "template": {}}), Some("template.image")),
            (
                json!({"name": "web", "template": {"image": "x"}, "update": {"max_parallel": 4294967296u64}}),
                Some("update.max_parallel"),
            ),
        ];
        agree(&doc, &schema(&doc, "ServiceSpec"), &cases, api_service);
        let across = [
            (
                json!({"name": "web", "replicas": 2, "template": {"image": "x"}, "update": {"canary": 3}}),
                "update.canary",
            ),
            (
                json!({"name": "web", "template": {"image": "x"},
                       "update": {"min_healthy_time": "1m", "healthy_deadline": "30s"}}),
                "update.healthy_deadline",
            ),
            (
                json!({"name": "web", "template": {"image": "x", "ports": [{"container": 8}, {"container": 8}]}}),
                "template.ports[1].container",
            ),
        ];
        refused_across(&doc, &schema(&doc, "ServiceSpec"), &across, api_service);
    }

    /// The parameter `name` of `method path`'s operation.
    fn parameter(doc: &Value, method: &str, path: &str, name: &str) -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    }

    #[test]
    fn parameters_state_what_the_handlers_accept() {
        let doc = document();
        // `{id}` of a task: a UUID, in full.
        let id = parameter(&doc, "get", "/v1/tasks/{id}", "id");
        let uuid = "0b5a2c4e-8d1f-4f6a-9c3b-2e7d5a1f0c9e";
        for (text, ok) in [(uuid, true), ("0b5a2c4e", false), ("abc", false), ("", false)] {
            let by_schema = check(&doc, &id, &json!(text), "id").is_ok();
            let by_api = crate::manager::tasks::parse_task_id(text).is_ok();
            assert_eq!((by_schema, by_api), (ok, ok), "task id {text:?}");
        }
        // `after` of the long polls: an earlier answer's version, never empty.
        for (method, path) in [("get", "/v1/nodes/{name}/assignments"), ("get", "/v1/services/{name}/endpoints")] {
            let after = parameter(&doc, method, path, "after");
            for (text, ok) in [("00ff", true), ("", false), ("xyz", false), (&*"a".repeat(65), false)] {
                let by_schema = check(&doc, &after, &json!(text), "after").is_ok();
                let by_api = refused_field(crate::manager::extract::check_version(Some(text)));
                assert_eq!(by_schema, ok, "{path} after={text:?} by the schema");
                match by_api {
                    None => assert!(ok, "{path} after={text:?} accepted"),
                    Some((status, field)) => assert!(!ok && status == 400 && field == "after", "{path} after={text:?}"),
                }
            }
        }
        // `limit` of the task pages.
        let limit = parameter(&doc, "get", "/v1/tasks", "limit");
        assert_eq!(
            (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
            (Some(1), Some(crate::manager::tasks::MAX_PAGE as u64))
        );
        // A duration in a query string is text, as `Millis::parse` reads it.
        for (method, path, name) in [
            ("get", "/v1/cluster/verify", "wait"),
            ("post", "/v1/gc", "older_than"),
            ("get", "/v1/nodes/{name}/assignments", "wait"),
            ("get", "/v1/services/{name}/endpoints", "wait"),
        ] {
            let wait = parameter(&doc, method, path, name);
            for (text, ok) in [("2s", true), ("250", true), (".5m", true), ("1e-9", false), ("", false), ("-1", false)]
            {
                let by_schema = check(&doc, &wait, &json!(text), name).is_ok();
                let by_api = goat_storage::Millis::parse(text).is_ok();
                assert_eq!((by_schema, by_api), (ok, ok), "{path} {name}={text:?}");
            }
        }
        // Durations: the pattern is the parser's, and numbers are milliseconds.
        let millis = schema(&doc, "Millis");
        let at_most = [
            "8760h",
            "8760.00h",
            "0008759.999h",
            "525600m",
            "525599.5m",
            "31536000s",
            "31536000000",
            "31536000000ms",
            "9999999999",
            "\t2s\r\n",
        ];
        for text in ["500ms", "2s", "1.5s", ".5s", "1.", "3m", "1h", " 2s ", "250"].into_iter().chain(at_most) {
            assert!(check(&doc, &millis, &json!(text), "d").is_ok(), "{text:?} by the schema");
            assert!(serde_json::from_value::<goat_storage::Millis>(json!(text)).is_ok(), "{text:?} by the parser");
        }
        let over = ["8761h", "8760.5h", "525601m", "31536001s", "31536000001", "31536000000.1ms", "1385728909203299h"];
        for text in ["", "2 s", "1x", "-1s", "1e3", ".", "s", "1h30m", "\u{a0}2s", "2s\u{b}"].into_iter().chain(over) {
            assert!(check(&doc, &millis, &json!(text), "d").is_err(), "{text:?} by the schema");
            assert!(serde_json::from_value::<goat_storage::Millis>(json!(text)).is_err(), "{text:?} by the parser");
        }
    }

    /// Every integer the document describes has a range (its Rust type's,
    /// or a narrower one), so that no integer valid by the document is
    /// refused by serde as out of range.
    #[test]
    fn every_integer_has_a_range() {
        fn walk(v: &Value, at: &str, unbounded: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    let integer = map.get("type").is_some_and(|t| {
                        t == "integer" || t.as_array().is_some_and(|ts| ts.iter().any(|t| t == "integer"))
                    });
                    let bounded =
                        map.contains_key("enum") || (map.contains_key("minimum") && map.contains_key("maximum"));
                    if integer && !bounded {
                        unbounded.push(at.to_string());
                    }
                    for (key, v) in map {
                        walk(v, &format!("{at}/{key}"), unbounded);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(v, &format!("{at}/{i}"), unbounded);
                    }
                }
                _ => {}
            }
        }
        let mut unbounded = Vec::new();
        walk(&document(), "", &mut unbounded);
        assert!(unbounded.is_empty(), "integers without a range: {unbounded:?}");
    }

    /// The error body's `code` enum is every code the API can answer with.
    #[test]
    fn the_error_code_enum_lists_every_code() {
        // A new code must be added to `ErrorCode::ALL` (this match does not
        // compile without it in the list below).
        fn listed(code: ErrorCode) -> bool {
            match code {
                ErrorCode::BadJson
                | ErrorCode::BadBody
                | ErrorCode::BodyTooLarge
                | ErrorCode::InvalidField
                | ErrorCode::InvalidHeader
                | ErrorCode::InvalidQuery
                | ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::Conflict
                | ErrorCode::Invalid
                | ErrorCode::NotLeader
                | ErrorCode::NotForwarded
                | ErrorCode::LeadsAgain
                | ErrorCode::Unavailable
                | ErrorCode::Busy
                | ErrorCode::Internal => ErrorCode::ALL.contains(&code),
            }
        }
        let doc = document();
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for code in ErrorCode::ALL {
            assert!(listed(code));
            assert_eq!(serde_json::to_value(code).expect("a code"), code.as_str());
            assert!(codes.contains(&code.as_str()), "the ErrorCode enum lacks {}", code.as_str());
        }
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        // The raft crate's body-limit answer and the workers' 401 use codes
        // of the enum too.
        assert!(codes.contains(&"body_too_large") && codes.contains(&"unauthorized"));
    }
}
