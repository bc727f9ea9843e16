//! An HTTP answer read as what the API documents: the route's type on a
//! 2xx, the error body ([`ErrorBody`]) otherwise. For the tests that send
//! raw requests (malformed bodies, missing tokens) and still read typed
//! answers; it panics when an answer is neither, since every error the API
//! sends is that JSON body.

use serde::de::DeserializeOwned;

pub use crate::manager::error::{ErrorBody, ErrorCode};

/// A status and its body: the route's type, or the error body.
#[derive(Debug)]
pub struct Answer<T> {
    pub status: u16,
    pub body: Result<T, ErrorBody>,
}

impl<T: std::fmt::Debug> Answer<T> {
    /// The error body; panics on a success.
    pub fn error(&self) -> &ErrorBody {
        match &self.body {
            Err(error) => error,
            Ok(value) => panic!("expected an error, got {}: {value:?}", self.status),
        }
    }

    /// The success; panics on an error.
    pub fn ok(self) -> T {
        match self.body {
            Ok(value) => value,
            Err(error) => panic!("expected a success, got {}: {error:?}", self.status),
        }
    }

    /// `(status, code, field)` of an error, to compare in one assertion.
    pub fn refusal(&self) -> (u16, ErrorCode, Option<&str>) {
        let error = self.error();
        (self.status, error.code, error.field.as_deref())
    }
}

/// Reads `response` as an [`Answer`].
pub async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Answer<T> {
    let status = response.status();
    let text = response.text().await.unwrap_or_else(|e| panic!("reading a {status} answer: {e}"));
    let body = if status.is_success() {
        Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("a {status} answer not of its type ({e}): {text}")))
    } else {
        Err(serde_json::from_str(&text).unwrap_or_else(|e| panic!("a {status} answer not an error body ({e}): {text}")))
    };
    Answer { status: status.as_u16(), body }
}
