//! `goat-echo`: the echo API, Goat's first workload and its test subject.
//!
//! - `POST /` answers with the request body verbatim (`application/json`).
//! - `GET /health` answers 200 while healthy, 503 while a dependency is not
//!   reachable yet, 500 once `/fail-health` was called.
//! - `POST /crash` exits the process with status 1 (an app bug).
//! - `POST /fail-health` makes `/health` fail from then on (a wedged app).
//! - `ECHO_FAIL_STARTUP=1` exits with status 1 at startup (a bad config).
//! - `GET /version` answers `{"version": ECHO_VERSION, "task": GOAT_TASK_ID}`
//!   (empty strings when unset), and every answer to `POST /` carries the
//!   `x-echo-version` header: what a rolling update changes.
//! - `ECHO_DEPENDENCY=HOST:PORT` waits, in the background and with
//!   exponential backoff, for a TCP connect to HOST:PORT; `/health` says
//!   what it is waiting for meanwhile.
//!
//! SIGTERM (and SIGINT) stop it gracefully with status 0, so a stop by the
//! worker is a clean exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7777")]
    pub listen: SocketAddr,
}

/// What `/health` looks at.
#[derive(Default)]
struct Echo {
    /// Set by `POST /fail-health`; never cleared.
    failed: AtomicBool,
    /// The dependency to wait for, if any.
    dependency: Option<String>,
    dependency_ready: AtomicBool,
    dependency_attempts: AtomicU32,
}

pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    if std::env::var("ECHO_FAIL_STARTUP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        tracing::error!("ECHO_FAIL_STARTUP is set: failing at startup");
        eprintln!("echo: failing at startup because ECHO_FAIL_STARTUP=1");
        std::process::exit(1);
    }
    let dependency = std::env::var("ECHO_DEPENDENCY").ok().filter(|d| !d.is_empty());
    let state = Arc::new(Echo { dependency: dependency.clone(), ..Echo::default() });
    if let Some(dep) = dependency {
        tokio::spawn(wait_for_dependency(state.clone(), dep));
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "echo listening");
    axum::serve(listener, app(state)).with_graceful_shutdown(crate::shutdown_signal()).await?;
    tracing::info!("echo stopped");
    Ok(())
}

fn app(state: Arc<Echo>) -> Router {
    Router::new()
        .route("/", post(echo))
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/crash", post(crash))
        .route("/fail-health", post(fail_health))
        .with_state(state)
}

fn echo_version() -> String {
    std::env::var("ECHO_VERSION").unwrap_or_default()
}

async fn echo(body: Bytes) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/json".to_string()),
        (header::HeaderName::from_static("x-echo-version"), echo_version()),
    ];
    (headers, body).into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": echo_version(), "task": std::env::var("GOAT_TASK_ID").unwrap_or_default()}))
}

async fn health(State(state): State<Arc<Echo>>) -> Response {
    if state.failed.load(Ordering::SeqCst) {
        let body = json!({"status": "unhealthy", "message": "health failure requested via POST /fail-health"});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
    }
    if let Some(dep) = &state.dependency {
        if !state.dependency_ready.load(Ordering::SeqCst) {
            let attempts = state.dependency_attempts.load(Ordering::SeqCst);
            let body = json!({
                "status": "waiting",
                "dependency": dep,
                "attempts": attempts,
                "message": format!("waiting for dependency {dep} (ECHO_DEPENDENCY) to accept TCP connections"),
            });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn crash() -> Response {
    tracing::error!("crash requested via POST /crash: exiting with status 1");
    // Answer first, then die.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(1);
    });
    (StatusCode::ACCEPTED, Json(json!({"status": "crashing"}))).into_response()
}

async fn fail_health(State(state): State<Arc<Echo>>) -> Response {
    state.failed.store(true, Ordering::SeqCst);
    tracing::warn!("health failure requested: /health answers 500 from now on");
    Json(json!({"status": "health will fail"})).into_response()
}

/// Retries a TCP connect to `dep` with exponential backoff (100ms doubling
/// up to 5s) until it succeeds.
async fn wait_for_dependency(state: Arc<Echo>, dep: String) {
    let mut delay = Duration::from_millis(100);
    loop {
        state.dependency_attempts.fetch_add(1, Ordering::SeqCst);
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(dep.as_str())).await {
            Ok(Ok(_)) => {
                tracing::info!(dependency = %dep, "dependency reachable");
                state.dependency_ready.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Err(e)) => tracing::info!(dependency = %dep, error = %e, retry_in = ?delay, "dependency not reachable"),
            Err(_) => tracing::info!(dependency = %dep, retry_in = ?delay, "dependency connect timed out"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(state: Arc<Echo>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app(state)).await });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn echoes_the_body_verbatim() {
        let base = serve(Arc::default()).await;
        let body = r#"{"Msg":"Hello, world!"}"#;
        let resp = client().post(format!("{base}/")).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.text().await.unwrap(), body);
    }

    #[tokio::test]
    async fn health_fails_on_request_and_stays_failed() {
        let base = serve(Arc::default()).await;
        let c = client();
        assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
        assert_eq!(c.post(format!("{base}/fail-health")).send().await.unwrap().status(), 200);
        for _ in 0..3 {
            assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 500);
        }
    }

    #[tokio::test]
    async fn health_waits_for_the_dependency() {
        // Reserve a port, then free it: nothing listens there for now.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dep = probe.local_addr().unwrap().to_string();
        drop(probe);
        let state = Arc::new(Echo { dependency: Some(dep.clone()), ..Echo::default() });
        tokio::spawn(wait_for_dependency(state.clone(), dep.clone()));
        let base = serve(state).await;
        let resp = client().get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["dependency"], dep.as_str());
        assert!(body["message"].as_str().unwrap().contains("waiting"));

        let _listener = tokio::net::TcpListener::bind(&dep).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if client().get(format!("{base}/health")).send().await.unwrap().status() == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "dependency never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
