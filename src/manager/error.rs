//! The API's errors: every failure a client can see, as an HTTP status and a
//! JSON body `{"error": "...", "code": "...", "field": "..."}` (`field` only
//! when one field of the request is at fault).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_storage::fsm::{Refusal, RefusalKind};
use goat_storage::validate::FieldError;
use serde::Serialize;

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

/// The state machine's refusals, by kind: `NotFound` 404, `Conflict` and
/// `Stale` 409, `Invalid` 422.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r.kind {
            RefusalKind::NotFound => ApiError::not_found(r.reason),
            RefusalKind::Conflict | RefusalKind::Stale => ApiError::conflict(r.reason),
            RefusalKind::Invalid => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", r.reason),
        }
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
