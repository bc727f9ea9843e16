//! The CLI's HTTP client: talks to any manager of a list, moving on to the
//! next one when a manager does not answer (connection refused, timeout) or
//! answers 503 (no leader yet, shutting down). A 4xx is the cluster's answer
//! and is returned as is: asking another manager would give the same.
//!
//! Submitting a task is not idempotent by itself (each submission gets a
//! new id): after a timeout or a 503 it may have been applied. `goat run`
//! therefore sends an `Idempotency-Key` (the API derives the task id from
//! it), which makes every retry name the same task; a submission without
//! one is only retried elsewhere when it was never sent (connection refused
//! or connect timeout).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use super::error::error_text;
use super::error::CliError;

pub struct Client {
    /// Base URLs (`http://HOST:PORT`), in the order given.
    bases: Vec<String>,
    /// The one that answered last: tried first next time.
    preferred: AtomicUsize,
    http: reqwest::Client,
    token: Option<String>,
}

/// `HOST:PORT` or a URL → a base URL without trailing slash.
pub(crate) fn base_url(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// `addrs`: managers as `HOST:PORT` (or URLs); `timeout`: per request.
    pub fn new(addrs: &[String], token: Option<String>, timeout: Duration) -> Result<Client, CliError> {
        let bases: Vec<String> = addrs.iter().filter(|a| !a.trim().is_empty()).map(|a| base_url(a)).collect();
        if bases.is_empty() {
            return Err(CliError::usage("no manager address: use --addr or GOAT_ADDR (HOST:PORT[,HOST:PORT...])"));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(timeout)
            .build()
            .map_err(|e| CliError::other(format!("building the HTTP client: {e}")))?;
        Ok(Client { bases, preferred: AtomicUsize::new(0), http, token: token.filter(|t| !t.is_empty()) })
    }

    /// Sends one request, trying each manager in turn. Returns the status
    /// and body of the first manager that answered (anything but 503).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), CliError> {
        self.send_keyed(method, path, body, None).await
    }

    /// [`Client::send`] with an `Idempotency-Key`: a submission that carries
    /// one names the same task however often it is sent, so it is retried
    /// on the next manager like any other request.
    pub async fn send_keyed(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>), CliError> {
        let n = self.bases.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        let idempotent = idempotency_key.is_some() || !(method == Method::POST && path == "/v1/tasks");
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}{path}", self.bases[i]);
            let mut request = self.http.request(method.clone(), &url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = &body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(bytes) if status != StatusCode::SERVICE_UNAVAILABLE || !idempotent => {
                            self.preferred.store(i, Ordering::Relaxed);
                            return Ok((status, bytes.to_vec()));
                        }
                        Ok(bytes) => failures.push(format!("{}: {}", self.bases[i], error_text(status, &bytes))),
                        Err(e) => failures.push(format!("{}: {}", self.bases[i], short(&e))),
                    }
                }
                Err(e) if !idempotent && !e.is_connect() => {
                    return Err(CliError::other(format!(
                        "{}: {}; the task may have been submitted: check `goat status`",
                        self.bases[i],
                        short(&e)
                    )));
                }
                Err(e) => {
                    tracing::debug!(url, error = %e, "manager did not answer; trying the next one");
                    failures.push(format!("{}: {}", self.bases[i], short(&e)));
                }
            }
        }
        Err(CliError::unreachable(format!("no manager answered ({})", failures.join("; "))))
    }

    /// Sends a request and parses a 2xx JSON answer; anything else is an
    /// error carrying the API's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let (status, bytes) = self.send(method, path, body).await?;
        parse_answer(status, &bytes)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(Method::POST, path, Some(body.to_string().into_bytes())).await
    }

    /// Submits a task under a fresh `Idempotency-Key`: retried on the next
    /// manager after a timeout or a `503` without ever creating it twice.
    pub async fn submit(&self, spec: &Value) -> Result<Value, CliError> {
        let key = uuid::Uuid::new_v4().to_string();
        let body = Some(spec.to_string().into_bytes());
        let (status, bytes) = self.send_keyed(Method::POST, "/v1/tasks", body, Some(&key)).await?;
        parse_answer(status, &bytes)
    }

    /// A request whose answer may be empty (204).
    pub async fn send_ok(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value, CliError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(CliError::from_status(status, &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::other(format!("unexpected answer from the manager ({e})")))
    }
}

/// A 2xx answer parsed as JSON; anything else is an error carrying the
/// API's message.
fn parse_answer<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, CliError> {
    if !status.is_success() {
        return Err(CliError::from_status(status, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| CliError::other(format!("unexpected answer from the manager ({e})")))
}

/// reqwest's error chain in one line.
fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        // The innermost cause is the useful part ("Connection refused").
        return text.rsplit(": ").next().unwrap_or("connection failed").to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(base_url("127.0.0.1:7101"), "http://127.0.0.1:7101");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
        assert!(Client::new(&[" ".into()], None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let body = br#"{"error":"no task 1","code":"not_found","field":null}"#;
        assert_eq!(error_text(StatusCode::NOT_FOUND, body), "no task 1 (HTTP 404)");
        assert_eq!(error_text(StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
    }
}
