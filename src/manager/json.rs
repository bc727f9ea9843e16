//! Reading JSON request bodies strictly: a body over the limit, malformed
//! JSON, a wrong type or an unknown field is a 4xx whose JSON names the
//! field (`restart_policy.max_attempts`), never a panic or a silent default.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// The largest request body the public API accepts, unless a route says
/// otherwise: a task spec at its size cap
/// ([`goat_storage::validate::MAX_SPEC_BYTES`]) with room for JSON escapes.
pub const MAX_BODY_BYTES: usize = 4 * goat_storage::validate::MAX_SPEC_BYTES;

/// Parses `body` as `T`, or explains precisely what is wrong with it.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The route's body limit answers with its own limit named.
            ApiError::new(status, ErrorCode::BodyTooLarge, "request body is over this route's limit")
        } else {
            ApiError::new(status, ErrorCode::BadBody, rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field(ErrorCode::BadJson, "", "request body is empty: expected a JSON object"));
    }
    // serde would accept a struct written as an array; the API takes objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::field(ErrorCode::BadJson, "", "request body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let error = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            deserializer.end().map_err(|e| {
                ApiError::field(ErrorCode::BadJson, "", format!("trailing data after the JSON value: {e}"))
            })?;
            return Ok(value);
        }
        Err(e) => e,
    };
    // JSON has one kind of number: `3.0` is the integer 3, as JSON Schema
    // reads it, but serde refuses it for an integer field. Read the body
    // again with such numbers made integers, if it has any.
    if let Ok(mut tree) = serde_json::from_slice::<serde_json::Value>(&body) {
        if integral_floats_to_integers(&mut tree) {
            if let Ok(value) = serde_path_to_error::deserialize(tree) {
                return Ok(value);
            }
        }
    }
    Err(field_error(error))
}

/// A body serde refused, as a 400 naming the field at fault: its path,
/// and for a missing field the field itself (serde names it only in its
/// message, "missing field `name`", the path being the object that lacks
/// it). Malformed JSON is `bad_json`, a wrong field `invalid_field`.
pub fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let mut field = if path == "." { String::new() } else { path };
    let inner = error.into_inner();
    let code = if inner.is_syntax() || inner.is_eof() { ErrorCode::BadJson } else { ErrorCode::InvalidField };
    // serde's message carries "at line L column C"; keep it, it helps.
    let message = inner.to_string();
    if let Some(missing) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        field = if field.is_empty() { missing.to_string() } else { format!("{field}.{missing}") };
    }
    ApiError::field(code, field, message)
}

/// Rewrites every number of `value` written with a fraction or an
/// exponent but holding a whole value that fits a `u64` or an `i64`
/// (`3.0`, `1e3`) as that integer; whether it rewrote any.
pub fn integral_floats_to_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^64 and -2^63 as f64, both excluded: an integer written out
            // of range (-2^63 - 1) reads as the nearest f64, the bound.
            let integer = if f.fract() != 0.0 {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(Value::from(f as u64))
            } else if -9_223_372_036_854_775_808.0 < f && f < 0.0 {
                Some(Value::from(f as i64))
            } else {
                None
            };
            integer.map(|integer| *value = integer).is_some()
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        Value::Object(map) => map.values_mut().fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::model::TaskSpec;

    fn parse_spec(text: &str) -> Result<TaskSpec, ApiError> {
        parse(Ok(Bytes::from(text.to_string())))
    }

    #[test]
    fn names_the_field_at_fault() {
        let e = parse_spec(r#"{"name":"a","image":"b","cpu":"lots"}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("cpu"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_spec(r#"{"name":"a","image":"b","ports":[{"container":70000}]}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("ports[0].container"));
        let e = parse_spec(r#"{"name":"a","image":"b","ports":[{"container":-1}]}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("ports[0].container"));
        let e = parse_spec(r#"{"name":"a","image":"b","memory":-5}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("memory"));
    }

    #[test]
    fn whole_numbers_with_a_fraction_are_integers() {
        let spec = parse_spec(r#"{"name":"a","image":"b","memory":6291456.0,"disk":1e3,"cpu":1.0}"#).unwrap();
        assert_eq!((spec.memory, spec.disk, spec.cpu), (6_291_456, 1_000, 1.0));
        let e = parse_spec(r#"{"name":"a","image":"b","disk":1.5}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("disk"));
        let e = parse_spec(r#"{"name":"a","image":"b","disk":-1.0}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("disk"));
        // Out of an i64's range, though it reads as the f64 -2^63.
        let report = r#"{"task_id":"00000000-0000-0000-0000-000000000001","generation":0,"state":"failed","#;
        let parse_report = |exit: &str| {
            parse::<goat_storage::model::TaskReport>(Ok(Bytes::from(format!("{report}\"exit_code\":{exit}}}"))))
        };
        assert!(parse_report("-9223372036854775809").is_err());
        assert_eq!(parse_report("-9223372036854775808").unwrap().exit_code, Some(i64::MIN));
        assert_eq!(parse_report("-1.0").unwrap().exit_code, Some(-1));
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let e = parse_spec(r#"{"name":"a","image":"b","imgae":"c"}"#).unwrap_err();
        assert!(e.body.error.contains("imgae"), "{:?}", e.body);
        assert_eq!(e.body.code, "invalid_field");
        let e = parse_spec(r#"{"name":"a","#).unwrap_err();
        assert_eq!(e.body.code, "bad_json");
        let e = parse_spec("").unwrap_err();
        assert_eq!(e.body.code, "bad_json");
        let e = parse_spec(r#"["a", "b"]"#).unwrap_err();
        assert_eq!(e.body.code, "bad_json");
        let e = parse_spec(r#"{"name":"a","image":"b"} {}"#).unwrap_err();
        assert_eq!(e.body.code, "bad_json");
        let e = parse_spec(r#"{"image":"b"}"#).unwrap_err();
        assert!(e.body.error.contains("name"), "{:?}", e.body);
    }
}
