//! The API's errors: every failure a client can see, as an HTTP status and a
//! JSON body `{"error": "...", "code": "...", "field": "..."}` (`field` only
//! when one field of the request is at fault).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use goat_storage::fsm::Refusal;
use goat_storage::validate::FieldError;
use serde::{Deserialize, Serialize};

use crate::control::{Error, ErrorKind};

/// The body of every error answer (clients and tests read it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person (the field first when one is at fault).
    pub error: String,
    pub code: ErrorCode,
    /// The request's field at fault, as a JSON path (`ports[1].container`),
    /// a query parameter or a header name; absent when not one field's fault.
    #[serde(default)]
    pub field: Option<String>,
    /// With `body_too_large`: the route's limit, in bytes (that answer is
    /// written by `goat_raft::limits::too_large`, before the route runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// Declares the error answers several routes document alike, for their
/// `#[utoipa::path(responses(...))]`: each type is one response with the
/// shared body ([`ErrorBody`], referenced), its status and description
/// written once here. (The answers every route shares, 400/401/403/503,
/// are added by `openapi::complete`.)
macro_rules! error_answers {
    ($($name:ident: $status:literal, $description:literal;)*) => {$(
        #[derive(utoipa::IntoResponses)]
        #[response(status = $status, description = $description)]
        pub struct $name(pub ErrorBody);
    )*};
}

error_answers! {
    NoSuchService: 404, "No such service.";
    NoSuchNode: 404, "No such node.";
    NoSuchTask: 404, "No such task.";
    BodyOverLimit: 413, "The body is over the limit.";
    NotLeader: 421, "Relayed to a manager that does not lead.";
    ServiceConflict: 409, "The change conflicts with the service state.";
    MembershipRefused: 409, "Raft refused the membership change.";
    TaskRuleAcross: 422, "Valid by the schema, but a rule across fields is broken (code `invalid`, `field` names \
        the one at fault): a container or host port listed twice; `secret_env` and `env` naming the same \
        variable; `cpu_hard_limit` without a `cpu` above 0; `restart_policy.max_delay` below `initial_delay`, \
        or below 1s with `max_attempts` 0; `reschedule_policy.max_delay` below `delay`; more than 64 KiB of \
        text in all (name, image, cmd, env, secret_env, labels, health_check.path).";
    ServiceRuleAcross: 422, "Valid by the schema, but a rule across fields is broken (code `invalid`, `field` \
        names the one at fault): `update.canary` above `replicas`; `update.healthy_deadline` not longer than \
        `update.min_healthy_time`; or one of a task's (`POST /v1/tasks`) in `template`.";
}

/// Every `code` an error answer may carry: the enum is the only way to
/// build an [`ApiError`], so the OpenAPI document lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not valid JSON, not an object, or empty.
    BadJson,
    /// 400: the body could not be read.
    BadBody,
    /// 413: the body is over the route's limit.
    BodyTooLarge,
    /// 400: a field of the body or a path parameter is wrong (`field` names it).
    InvalidField,
    /// 400: a header is wrong (`field` names it).
    InvalidHeader,
    /// 400: the query string is wrong (an unknown or malformed parameter).
    InvalidQuery,
    /// 401: no token, or an unknown one.
    Unauthorized,
    /// 403: the token's role is too small for the route.
    Forbidden,
    /// 404: no such route, task, node, service, member or token.
    NotFound,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 422: the request is valid by the schema but refused: by a rule
    /// across fields that JSON Schema cannot state (`field` names the one
    /// at fault: `update.canary` above `replicas`, a host port listed
    /// twice, `restart_policy.max_delay` below `initial_delay`), or by the
    /// state machine.
    Invalid,
    /// 421: a worker's call reached a manager that does not lead.
    NotLeader,
    /// 421: a forwarded request reached the leader itself.
    NotForwarded,
    /// 503: a leadership hand-over ended with the old leader elected again (retry).
    LeadsAgain,
    /// 503: no leader, or this manager is shutting down (see `Retry-After`).
    Unavailable,
    /// 503: this manager is at its limit of streams or polls (see `Retry-After`).
    Busy,
    /// 500: a bug; the message says what.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BadJson,
        ErrorCode::BadBody,
        ErrorCode::BodyTooLarge,
        ErrorCode::InvalidField,
        ErrorCode::InvalidHeader,
        ErrorCode::InvalidQuery,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Invalid,
        ErrorCode::NotLeader,
        ErrorCode::NotForwarded,
        ErrorCode::LeadsAgain,
        ErrorCode::Unavailable,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidHeader => "invalid_header",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::NotForwarded => "not_forwarded",
            ErrorCode::LeadsAgain => "leads_again",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// For 503s: when the client may try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody { error: message.into(), code, field: None, limit: None },
            retry_after: None,
        }
    }

    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        let error = if field.is_empty() { message } else { format!("{field}: {message}") };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody { error, code, field: Some(field).filter(|f| !f.is_empty()), limit: None },
            retry_after: None,
        }
    }

    /// The same error with another status (a field error that is not a 400).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, what)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message)
        }
    }

    /// 503: this manager is at a configured limit (streams, polls).
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(5)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy, message)
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong cluster token")
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, message.to_string())
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
            ErrorKind::Invalid => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Invalid, e.reason),
            ErrorKind::NotLeader => ApiError::new(StatusCode::MISDIRECTED_REQUEST, ErrorCode::NotLeader, e.reason),
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

/// A rule of one field (which the OpenAPI schema states): 400
/// `invalid_field`; a rule across fields (which a schema cannot state):
/// 422 `invalid`. Both name the field.
impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        if e.across {
            ApiError::field(ErrorCode::Invalid, e.field, e.message).with_status(StatusCode::UNPROCESSABLE_ENTITY)
        } else {
            ApiError::field(ErrorCode::InvalidField, e.field, e.message)
        }
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
            assert_eq!((e.status, e.body.code.as_str(), e.body.error.as_str()), (status, code, "why"), "{kind:?}");
        }
        assert!(ApiError::from(Error::unavailable("x")).retry_after.is_some());
    }
}
