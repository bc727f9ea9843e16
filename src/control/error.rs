//! The core's error: what went wrong, by kind, with a reason for people.
//!
//! The write and read paths (`Manager::propose`, `Manager::linearize`), the
//! leader's loops and the state machine's refusals speak it; the HTTP edge
//! turns it into a status and a JSON body (`manager::error::ApiError`, by
//! `From`), and nothing below the edge knows about HTTP.

use std::fmt;

use goat_storage::fsm::{Refusal, RefusalKind};

/// What kind of failure: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// What was named does not exist.
    NotFound,
    /// It exists, in a way that contradicts the request (another spec under
    /// the same id, a node that still has tasks).
    Conflict,
    /// The request was decided in a leadership that has ended, or against a
    /// state that has moved on: look again and retry.
    Stale,
    /// The request can never succeed as written.
    Invalid,
    /// This manager does not lead (any more): ask the leader.
    NotLeader,
    /// No leader, no quorum, a manager not caught up: try again later.
    Unavailable,
    /// A bug or a broken invariant.
    Internal,
}

impl ErrorKind {
    /// The kind's name, as logs and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Stale => "stale",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failure of the core: a kind and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub reason: String,
}

impl Error {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Error {
        Error { kind, reason: reason.into() }
    }
    pub fn not_found(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, reason)
    }
    pub fn conflict(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, reason)
    }
    pub fn stale(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::Stale, reason)
    }
    pub fn invalid(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, reason)
    }
    pub fn not_leader(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotLeader, reason)
    }
    pub fn unavailable(reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, reason)
    }
    pub fn internal(reason: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Internal, reason.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.kind.as_str())
    }
}

impl std::error::Error for Error {}

/// The state machine's refusals keep their kind.
impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        let kind = match r.kind {
            RefusalKind::NotFound => ErrorKind::NotFound,
            RefusalKind::Conflict => ErrorKind::Conflict,
            RefusalKind::Stale => ErrorKind::Stale,
            RefusalKind::Invalid => ErrorKind::Invalid,
        };
        Error::new(kind, r.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_kind() {
        let cases = [
            (Refusal::not_found("no task"), ErrorKind::NotFound),
            (Refusal::conflict("another spec"), ErrorKind::Conflict),
            (Refusal::stale("old term"), ErrorKind::Stale),
            (Refusal::invalid("bad"), ErrorKind::Invalid),
        ];
        for (refusal, kind) in cases {
            let reason = refusal.reason.clone();
            let e = Error::from(refusal);
            assert_eq!((e.kind, e.reason.as_str()), (kind, reason.as_str()));
        }
        assert_eq!(Error::unavailable("no leader").to_string(), "no leader (unavailable)");
    }
}
