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
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() { ErrorCode::BadJson } else { ErrorCode::InvalidField };
        // serde's message carries "at line L column C"; keep it, it helps.
        ApiError::field(code, field, inner.to_string())
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::field(ErrorCode::BadJson, "", format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
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
