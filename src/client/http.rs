//! The client proper: managers, failover, retries, answers and errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use goat_storage::model::{Node, Task, TaskState};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::views::{ClusterView, HealthView, NodeView, Stats};

/// The header that makes a submission idempotent.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The response header of `GET /v1/tasks` that holds the next page's cursor.
pub const NEXT_HEADER: &str = "x-goat-next";
/// Tasks per page when [`Client::tasks`] walks the list.
const PAGE: usize = 1_000;

/// Why a request failed.
#[derive(Debug, Clone)]
pub enum Error {
    /// The client cannot be built (no address, bad TLS material).
    Usage(String),
    /// No manager received the request (every connection was refused or
    /// its connect timed out): nothing happened.
    NotSent(String),
    /// No manager gave an answer (a timeout, a broken connection, 503s):
    /// a write may or may not have happened.
    NoAnswer(String),
    /// A request that is not idempotent (a submission without an
    /// `Idempotency-Key`) was sent and got no answer: not retried, it may
    /// have been applied.
    MaybeApplied(String),
    /// A manager answered with a non-2xx status.
    Api(ApiFailure),
    /// A 2xx answer that is not what the API documents.
    Decode(String),
}

/// A non-2xx answer: the API's `{"error", "code", "field"}` body.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    pub code: Option<String>,
    pub field: Option<String>,
}

impl Error {
    /// The status of an API answer, if there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api(f) => Some(f.status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
    /// No manager answered at all (sent or not).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::NotSent(_) | Error::NoAnswer(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(m) | Error::NotSent(m) | Error::NoAnswer(m) | Error::MaybeApplied(m) | Error::Decode(m) => {
                f.write_str(m)
            }
            Error::Api(failure) => f.write_str(&failure.to_string()),
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "HTTP {}", self.status)
        } else {
            write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
        }
    }
}

impl std::error::Error for Error {}

impl ApiFailure {
    /// A non-2xx answer's body read as the API's error (or the raw text).
    pub fn of(status: StatusCode, body: &[u8]) -> ApiFailure {
        #[derive(serde::Deserialize)]
        struct Body {
            error: String,
            code: Option<String>,
            field: Option<String>,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => ApiFailure { status, message: b.error, code: b.code, field: b.field },
            Err(_) => ApiFailure {
                status,
                message: String::from_utf8_lossy(body).trim().to_string(),
                code: None,
                field: None,
            },
        }
    }
}

/// The API's error message of a non-2xx answer in one line.
pub fn error_text(status: StatusCode, body: &[u8]) -> String {
    ApiFailure::of(status, body).to_string()
}

/// `HOST:PORT` or a URL → a base URL without trailing slash; a bare
/// `HOST:PORT` gets `scheme`.
pub fn base_url(addr: &str, scheme: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    }
}

/// Default headers that send `token` as `Authorization: Bearer` (none for
/// an empty token), for load generators that build raw requests on
/// [`Client::http`]-like pools of their own.
pub fn bearer_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        value.set_sensitive(true);
        if !token.is_empty() {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    headers
}

/// How to build a [`Client`].
pub struct Builder {
    addrs: Vec<String>,
    token: Option<String>,
    tls: Option<goat_raft::tls::Tls>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
}

impl Builder {
    /// The token sent as `Authorization: Bearer` (none if empty).
    pub fn token(mut self, token: Option<impl Into<String>>) -> Builder {
        self.token = token.map(Into::into).filter(|t: &String| !t.is_empty());
        self
    }
    /// The CA to verify managers with and the client certificate to
    /// present; a bare `HOST:PORT` then means `https://HOST:PORT`.
    pub fn tls(mut self, tls: Option<&goat_raft::tls::Tls>) -> Builder {
        self.tls = tls.cloned();
        self
    }
    /// Timeout of each request (none by default; [`Request::timeout`]
    /// overrides it).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = Some(timeout);
        self
    }
    /// Timeout of each connection attempt (1 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder {
        self.connect_timeout = timeout;
        self
    }
    pub fn build(self) -> Result<Client, Error> {
        let scheme = goat_raft::tls::scheme(self.tls.as_ref());
        let bases: Vec<String> =
            self.addrs.iter().filter(|a| !a.trim().is_empty()).map(|a| base_url(a, scheme)).collect();
        if bases.is_empty() {
            return Err(Error::Usage("no manager address: use --addr or GOAT_ADDR (HOST:PORT[,HOST:PORT...])".into()));
        }
        let mut http = goat_raft::tls::client_builder(self.tls.as_ref()).connect_timeout(self.connect_timeout);
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(|e| Error::Usage(format!("building the HTTP client: {e}")))?;
        Ok(Client { inner: Arc::new(Inner { bases, preferred: AtomicUsize::new(0), http, token: self.token }) })
    }
}

/// Goat's API on a list of managers. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Base URLs (`http://HOST:PORT`), in the order given.
    bases: Vec<String>,
    /// The one that answered last: tried first next time.
    preferred: AtomicUsize,
    http: reqwest::Client,
    token: Option<String>,
}

/// A manager's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The index (in the client's list) of the manager that answered.
    pub manager: usize,
}

impl Answer {
    /// The answer, or the API's error if it is not 2xx.
    pub fn ok(self) -> Result<Answer, Error> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(Error::Api(ApiFailure::of(self.status, &self.body)))
        }
    }
    /// A 2xx answer's JSON body.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        let answer = self.ok()?;
        serde_json::from_slice(&answer.body)
            .map_err(|e| Error::Decode(format!("unexpected answer from the manager ({e})")))
    }
    /// A 2xx answer's JSON body, `None` if it is empty (204).
    pub fn json_or_empty<T: DeserializeOwned>(self) -> Result<Option<T>, Error> {
        let answer = self.ok()?;
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|e| Error::Decode(format!("unexpected answer from the manager ({e})")))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request, built with [`Client::request`].
#[must_use]
pub struct Request<'a> {
    client: &'a Client,
    method: Method,
    path: String,
    body: Option<(Vec<u8>, &'static str)>,
    key: Option<String>,
    timeout: Option<Duration>,
    on: Option<usize>,
    headers: Vec<(String, String)>,
    anonymous: bool,
}

impl<'a> Request<'a> {
    /// A JSON body.
    pub fn json(mut self, body: &impl Serialize) -> Request<'a> {
        self.body = Some((serde_json::to_vec(body).unwrap_or_default(), "application/json"));
        self
    }
    /// A raw body sent as `application/json`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request<'a> {
        self.body = Some((body.into(), "application/json"));
        self
    }
    /// A raw body with its content type.
    pub fn body_as(mut self, body: impl Into<Vec<u8>>, content_type: &'static str) -> Request<'a> {
        self.body = Some((body.into(), content_type));
        self
    }
    /// Sends an `Idempotency-Key`: a submission that carries one names the
    /// same task however often it is sent, so it is retried on the next
    /// manager like any other request.
    pub fn idempotency_key(mut self, key: &str) -> Request<'a> {
        self.key = Some(key.to_string());
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Request<'a> {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// This request's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Request<'a> {
        self.timeout = Some(timeout);
        self
    }
    /// Only to manager `index` of the list (no failover); its answer is
    /// returned whatever it is, 503 included.
    pub fn on(mut self, index: usize) -> Request<'a> {
        self.on = Some(index);
        self
    }
    /// Without the client's token.
    pub fn anonymous(mut self) -> Request<'a> {
        self.anonymous = true;
        self
    }

    fn idempotent(&self) -> bool {
        self.key.is_some() || !(self.method == Method::POST && self.path.starts_with("/v1/tasks"))
    }

    fn build(&self, base: &str) -> reqwest::RequestBuilder {
        let inner = &self.client.inner;
        let mut request = inner.http.request(self.method.clone(), format!("{base}{}", self.path));
        if let (Some(token), false) = (&inner.token, self.anonymous) {
            request = request.bearer_auth(token);
        }
        if let Some(key) = &self.key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        if let Some((body, content_type)) = &self.body {
            request = request.header(reqwest::header::CONTENT_TYPE, *content_type).body(body.clone());
        }
        request
    }

    /// The streaming response of one manager (for `GET /v1/events`).
    pub(crate) async fn send_streaming(self, index: usize) -> Result<reqwest::Response, reqwest::Error> {
        let base = &self.client.inner.bases[index % self.client.inner.bases.len()];
        self.build(base).send().await
    }

    /// Sends the request; see the module's doc for what is retried where.
    pub async fn send(self) -> Result<Answer, Error> {
        let inner = &self.client.inner;
        let n = inner.bases.len();
        if let Some(i) = self.on {
            let base = inner.bases.get(i).ok_or_else(|| Error::Usage(format!("no manager {i} in the list")))?;
            return match self.build(base).send().await {
                Ok(response) => {
                    answer(i, response).await.map_err(|e| Error::NoAnswer(format!("{base}: {}", short(&e))))
                }
                Err(e) if e.is_connect() => Err(Error::NotSent(format!("{base}: {}", short(&e)))),
                Err(e) => Err(Error::NoAnswer(format!("{base}: {}", short(&e)))),
            };
        }
        let idempotent = self.idempotent();
        let first = inner.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        let mut sent = false;
        for k in 0..n {
            let i = (first + k) % n;
            let base = &inner.bases[i];
            match self.build(base).send().await {
                Ok(response) => {
                    sent = true;
                    match answer(i, response).await {
                        Ok(a) if a.status != StatusCode::SERVICE_UNAVAILABLE || !idempotent => {
                            inner.preferred.store(i, Ordering::Relaxed);
                            return Ok(a);
                        }
                        Ok(a) => failures.push(format!("{base}: {}", error_text(a.status, &a.body))),
                        Err(e) => failures.push(format!("{base}: {}", short(&e))),
                    }
                }
                Err(e) if !idempotent && !e.is_connect() => {
                    return Err(Error::MaybeApplied(format!(
                        "{base}: {}; the task may have been submitted: check `goat status`",
                        short(&e)
                    )));
                }
                Err(e) => {
                    tracing::debug!(base, error = %e, "manager did not answer; trying the next one");
                    sent |= !e.is_connect();
                    failures.push(format!("{base}: {}", short(&e)));
                }
            }
        }
        let message = format!("no manager answered ({})", failures.join("; "));
        Err(if sent { Error::NoAnswer(message) } else { Error::NotSent(message) })
    }

    /// Sends and parses a 2xx JSON answer.
    pub async fn json_answer<T: DeserializeOwned>(self) -> Result<T, Error> {
        self.send().await?.json()
    }
}

async fn answer(manager: usize, response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok(Answer { status, headers, body, manager })
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

/// `%`-encodes a query value.
pub fn encode_query(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the managers `addrs` (`HOST:PORT` or URLs).
    pub fn builder<S: AsRef<str>>(addrs: &[S]) -> Builder {
        Builder {
            addrs: addrs.iter().map(|a| a.as_ref().to_string()).collect(),
            token: None,
            tls: None,
            timeout: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// The managers' base URLs, in the order given.
    pub fn bases(&self) -> &[String] {
        &self.inner.bases
    }

    /// The underlying HTTP client (connection pool, TLS), for load
    /// generators that build their own requests to non-API URLs.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The token, if any.
    pub fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// The index of the manager that answered last.
    pub fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed) % self.inner.bases.len()
    }

    pub fn request(&self, method: Method, path: impl Into<String>) -> Request<'_> {
        Request {
            client: self,
            method,
            path: path.into(),
            body: None,
            key: None,
            timeout: None,
            on: None,
            headers: Vec::new(),
            anonymous: false,
        }
    }
    pub fn get(&self, path: impl Into<String>) -> Request<'_> {
        self.request(Method::GET, path)
    }
    pub fn post(&self, path: impl Into<String>) -> Request<'_> {
        self.request(Method::POST, path)
    }
    pub fn put(&self, path: impl Into<String>) -> Request<'_> {
        self.request(Method::PUT, path)
    }
    pub fn delete(&self, path: impl Into<String>) -> Request<'_> {
        self.request(Method::DELETE, path)
    }

    /// `GET /v1/health` of the preferred manager (or the next).
    pub async fn health(&self) -> Result<HealthView, Error> {
        self.get("/v1/health").json_answer().await
    }
    /// `GET /v1/health` of manager `index` within `timeout`.
    pub async fn health_of(&self, index: usize, timeout: Duration) -> Result<HealthView, Error> {
        self.get("/v1/health").on(index).timeout(timeout).json_answer().await
    }
    /// The leader that every manager at `among` (indices) names, when each
    /// answers its health within `timeout`, they all name the same one and
    /// it is one of them; otherwise what each said (`None`: no answer or no
    /// leader), for the caller's message. The one definition of "the
    /// cluster has a leader" for the tests, `goat dev`, the drills and the
    /// benchmarks.
    pub async fn agreed_leader(&self, among: &[usize], timeout: Duration) -> Result<u64, Vec<Option<u64>>> {
        let mut ids = Vec::new();
        let mut seen = Vec::new();
        for index in among {
            let health = self.health_of(*index, timeout).await.ok();
            ids.extend(health.as_ref().map(|h| h.id));
            seen.push(health.and_then(|h| h.leader));
        }
        match seen.first() {
            Some(Some(leader)) if seen.iter().all(|s| *s == Some(*leader)) && ids.contains(leader) => Ok(*leader),
            _ => Err(seen),
        }
    }

    /// Polls [`Client::agreed_leader`] (each health asked within `ask`)
    /// every 50 ms until the managers at `among` agree, or `timeout` passes.
    pub async fn wait_leader(&self, among: &[usize], ask: Duration, timeout: Duration) -> Result<u64, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = match self.agreed_leader(among, ask).await {
                Ok(leader) => return Ok(leader),
                Err(seen) => seen,
            };
            if std::time::Instant::now() >= deadline {
                return Err(Error::NoAnswer(format!(
                    "the managers at {among:?} (indices of the client's addresses) agreed on no leader within \
                     {timeout:?}; they named {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterView, Error> {
        self.get("/v1/cluster").json_answer().await
    }
    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.get("/v1/stats").json_answer().await
    }

    /// `POST /v1/tasks` under a fresh `Idempotency-Key`: retried on the
    /// next manager after a timeout or a 503 without ever creating the
    /// task twice. `spec` is a [`goat_storage::model::TaskSpec`] or its JSON.
    pub async fn submit(&self, spec: &impl Serialize) -> Result<Task, Error> {
        let key = uuid::Uuid::new_v4().to_string();
        self.submit_keyed(spec, &key).await
    }
    /// `POST /v1/tasks` with this `Idempotency-Key`.
    pub async fn submit_keyed(&self, spec: &impl Serialize, key: &str) -> Result<Task, Error> {
        self.post("/v1/tasks").json(spec).idempotency_key(key).json_answer().await
    }
    /// `GET /v1/tasks/{id}`.
    pub async fn task(&self, id: impl std::fmt::Display) -> Result<Task, Error> {
        self.get(format!("/v1/tasks/{id}")).json_answer().await
    }
    /// `GET /v1/tasks/{id}`, `None` on 404.
    pub async fn find_task(&self, id: impl std::fmt::Display) -> Result<Option<Task>, Error> {
        match self.task(id).await {
            Ok(task) => Ok(Some(task)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// One page of `GET /v1/tasks`: up to `limit` tasks after `after`
    /// (in `state`), and the cursor of the next page.
    pub async fn task_page(
        &self,
        state: Option<TaskState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<String>), Error> {
        let mut path = format!("/v1/tasks?limit={limit}");
        if let Some(state) = state {
            path.push_str(&format!("&state={}", state.as_str()));
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode_query(after)));
        }
        let answer = self.get(path).send().await?.ok()?;
        let next = answer.header(NEXT_HEADER).map(str::to_string);
        Ok((answer.json()?, next))
    }
    /// Every task (`GET /v1/tasks`, page after page), in `state` if given.
    pub async fn tasks(&self, state: Option<TaskState>) -> Result<Vec<Task>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.task_page(state, after.as_deref(), PAGE).await?;
            all.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
    /// `DELETE /v1/tasks/{id}`: the task, now to stop.
    pub async fn stop(&self, id: impl std::fmt::Display) -> Result<Task, Error> {
        self.delete(format!("/v1/tasks/{id}")).json_answer().await
    }
    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        self.get("/v1/nodes").json_answer().await
    }
    /// `PUT /v1/nodes/{name}/drain`.
    pub async fn drain(&self, name: &str) -> Result<Option<Node>, Error> {
        self.put(format!("/v1/nodes/{}/drain", encode_query(name))).send().await?.json_or_empty()
    }
    /// `DELETE /v1/nodes/{name}/drain`.
    pub async fn undrain(&self, name: &str) -> Result<Option<Node>, Error> {
        self.delete(format!("/v1/nodes/{}/drain", encode_query(name))).send().await?.json_or_empty()
    }
    /// `GET /v1/cluster/verify?wait=...`.
    pub async fn verify(&self, wait: Duration) -> Result<crate::manager::verify::Verdict, Error> {
        self.get(format!("/v1/cluster/verify?wait={}ms", wait.as_millis())).json_answer().await
    }
    /// `GET /v1/cluster/headroom[?node=NODE]`.
    pub async fn headroom(&self, node: Option<&str>) -> Result<crate::headroom::NodeLoss, Error> {
        let path = match node {
            Some(name) => format!("/v1/cluster/headroom?node={}", encode_query(name)),
            None => "/v1/cluster/headroom".to_string(),
        };
        self.get(path).json_answer().await
    }
    /// Polls `GET /v1/tasks/{id}` until `done` holds or `timeout` passes;
    /// the last task seen either way (`Err` if none was ever read).
    pub async fn wait_task(
        &self,
        id: impl std::fmt::Display,
        timeout: Duration,
        done: impl Fn(&Task) -> bool,
    ) -> Result<Task, (Option<Task>, Error)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = id.to_string();
        let mut last = None;
        loop {
            match self.task(&id).await {
                Ok(task) if done(&task) => return Ok(task),
                Ok(task) => last = Some(task),
                Err(e) if tokio::time::Instant::now() > deadline => return Err((last, e)),
                Err(_) => {}
            }
            if tokio::time::Instant::now() > deadline {
                let e = Error::Decode(format!("task {id}: not there within {timeout:?}"));
                return Err((last, e));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(base_url("127.0.0.1:7101", "http"), "http://127.0.0.1:7101");
        assert_eq!(base_url(" http://h:1/ ", "https"), "http://h:1");
        assert_eq!(base_url("h:1", "https"), "https://h:1");
        assert!(Client::builder(&[" "]).build().is_err());
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let body = br#"{"error":"no task 1","code":"not_found","field":null}"#;
        assert_eq!(error_text(StatusCode::NOT_FOUND, body), "no task 1 (HTTP 404)");
        assert_eq!(error_text(StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
        let failure = ApiFailure::of(StatusCode::BAD_REQUEST, br#"{"error":"x","code":"invalid_field","field":"cpu"}"#);
        assert_eq!((failure.code.as_deref(), failure.field.as_deref()), (Some("invalid_field"), Some("cpu")));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("a b/c"), "a%20b%2Fc");
    }
}
