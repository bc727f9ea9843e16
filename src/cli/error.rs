//! How an operator command fails: a message for people, an exit code for
//! scripts.

use reqwest::StatusCode;

/// Exit codes of every operator command (documented in docs/operations.md).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The cluster refused the request, or something else went wrong.
    pub const ERROR: i32 = 1;
    /// The command line is wrong (clap's own code), or a file it names
    /// cannot be read or parsed.
    pub const USAGE: i32 = 2;
    /// The task, node or member does not exist (or no task id starts so).
    pub const NOT_FOUND: i32 = 3;
    /// No manager of `--addr` answered.
    pub const UNREACHABLE: i32 = 4;
    /// `goat run --wait`: the task ended `failed`.
    pub const TASK_FAILED: i32 = 5;
    /// `goat plan node-loss`: some task would find no place.
    pub const NO_ROOM: i32 = 6;
}

/// An operator command's failure: one line for people, one code for scripts.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into() }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(exit::USAGE, message)
    }
    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(exit::ERROR, message)
    }
    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError::new(exit::NOT_FOUND, message)
    }
    pub fn unreachable(message: impl Into<String>) -> CliError {
        CliError::new(exit::UNREACHABLE, message)
    }
    /// A non-2xx answer of the API.
    pub fn from_status(status: StatusCode, body: &[u8]) -> CliError {
        let code = if status == StatusCode::NOT_FOUND { exit::NOT_FOUND } else { exit::ERROR };
        CliError::new(code, error_text(status, body))
    }
}

pub use crate::client::error_text;

impl From<crate::client::Error> for CliError {
    fn from(e: crate::client::Error) -> CliError {
        use crate::client::Error;
        match &e {
            Error::Usage(m) => CliError::usage(m.clone()),
            Error::Api(f) if f.status == StatusCode::NOT_FOUND => CliError::not_found(e.to_string()),
            Error::MaybeApplied(m) => CliError::other(m.clone()),
            Error::NotSent(m) | Error::NoAnswer(m) => CliError::unreachable(m.clone()),
            Error::Api(_) | Error::Decode(_) => CliError::other(e.to_string()),
        }
    }
}
