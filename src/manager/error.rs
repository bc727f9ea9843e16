//! The API's errors: every failure a client can see, as an HTTP status and a
//! JSON body `{"error": "...", "code": "...", "field": "..."}` (`field` only
//! when one field of the request is at fault).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_storage::fsm::Refusal;
use goat_storage::validate::FieldError;
use serde::Serialize;

use crate::control::{Error, ErrorKind};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// For 503s: when the client may try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, body: ErrorBody { error: message.into(), code, field: None }, retry_after: None }
    }

    pub fn field(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        let error = if field.is_empty() { message } else { format!("{field}: {message}") };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody { error, code, field: Some(field).filter(|f| !f.is_empty()) },
            retry_after: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 503: this manager is at a configured limit (streams, polls).
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(5)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong cluster token")
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message.to_string())
    }
}

/// The core's errors, by kind: `NotFound` 404, `Conflict` and `Stale` 409,
/// `Invalid` 422, `NotLeader` 421, `Unavailable` 503 (with `Retry-After`),
/// `Internal` 500.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e.kind {
            ErrorKind::NotFound => ApiError::not_found(e.reason),
            ErrorKind::Conflict | ErrorKind::Stale => ApiError::conflict(e.reason),
            ErrorKind::Invalid => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.reason),
            ErrorKind::NotLeader => ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", e.reason),
            ErrorKind::Unavailable => ApiError::unavailable(e.reason),
            ErrorKind::Internal => ApiError::internal(e.reason),
        }
    }
}

/// The state machine's refusals, through the core's error (their kind kept).
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        Error::from(r).into()
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::field("invalid_field", e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_the_core_has_its_status_and_code() {
        let cases = [
            (ErrorKind::NotFound, StatusCode::NOT_FOUND, "not_found"),
            (ErrorKind::Conflict, StatusCode::CONFLICT, "conflict"),
            (ErrorKind::Stale, StatusCode::CONFLICT, "conflict"),
            (ErrorKind::Invalid, StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            (ErrorKind::NotLeader, StatusCode::MISDIRECTED_REQUEST, "not_leader"),
            (ErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (ErrorKind::Internal, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ];
        for (kind, status, code) in cases {
            let e = ApiError::from(Error::new(kind, "why"));
            assert_eq!((e.status, e.body.code, e.body.error.as_str()), (status, code, "why"), "{kind:?}");
        }
        assert!(ApiError::from(Error::unavailable("x")).retry_after.is_some());
    }
}
