//! No anonymous access: tokens with roles on every route, and TLS between
//! members and clients. Real `goat manager` processes, real HTTP(S).

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::worker::WorkerProc;
use common::{anonymous, client_with_token, goat_bin, spec, Cluster, ErrorBody, ErrorCode, TOKEN};
use goat::client::{ClusterView, NodeView};
use goat::manager::auth::{CreatedToken, TokenView};
use goat_storage::model::Task;
use reqwest::Method;
// `Value` for what these tests are about: any route's status, with bodies
// of every shape (a raw listing is searched for secrets); answers and error
// bodies are read as their types (`typed`, `refusal`).
use serde_json::{json, Value};

/// An answer read as its model type.
fn typed<T: serde::de::DeserializeOwned>(answer: Value) -> T {
    serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("not the expected JSON ({e}): {answer}"))
}

/// An error answer's code and field.
fn refusal(answer: &Value) -> (ErrorCode, Option<String>) {
    let error: ErrorBody = typed(answer.clone());
    (error.code, error.field)
}

/// A request body from a typed value.
fn json_body(value: &impl serde::Serialize) -> Option<Value> {
    Some(serde_json::to_value(value).expect("serializes"))
}

/// Sends `method url` with `body` through `http`; returns status and JSON.
async fn call(http: &reqwest::Client, method: Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Creates an API token with `role` through the cluster token; its secret.
async fn token(cluster: &Cluster, role: &str) -> (String, String) {
    let url = format!("{}/v1/tokens", cluster.url(1));
    let (status, body) = call(&cluster.http, Method::POST, &url, Some(json!({"role": role, "name": role}))).await;
    assert_eq!(status, 201, "{body}");
    let created: CreatedToken = typed(body);
    (created.token.id, created.secret)
}

fn heartbeat() -> Value {
    json!({"capacity": {"cpu": 4.0, "memory": 8u64 << 30, "disk": 0}, "engine": {"healthy": true}})
}

/// Every route class: anonymous and wrong tokens get 401 (a JSON error, the
/// body unread), `read` reads but cannot write, `submit` runs tasks but
/// cannot drain, change members or make tokens, `admin` can; the internal
/// routes take the cluster token only. Secret values are redacted in reads
/// and handed in clear only to the worker's poll and to an admin's backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_class_needs_its_role() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = cluster.follower(leader);
    let base = cluster.url(follower);
    let url = |path: &str| format!("{base}{path}");

    // Anonymous, and with a token nobody issued.
    let anon = anonymous();
    let wrong = client_with_token("not-a-token", Duration::from_secs(10));
    let routes: &[(Method, &str)] = &[
        (Method::GET, "/v1/cluster"),
        (Method::GET, "/v1/tasks"),
        (Method::GET, "/v1/nodes"),
        (Method::GET, "/v1/stats"),
        (Method::GET, "/v1/metrics"),
        (Method::GET, "/v1/events"),
        (Method::GET, "/v1/openapi.json"),
        (Method::GET, "/v1/snapshot"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/v1/cluster/verify"),
        (Method::POST, "/v1/tasks"),
        (Method::POST, "/v1/cluster/members"),
        (Method::DELETE, "/v1/cluster/members/2"),
        (Method::PUT, "/v1/nodes/w1/drain"),
        (Method::POST, "/v1/nodes/w1/heartbeat"),
        (Method::GET, "/v1/nodes/w1/assignments"),
        (Method::POST, "/v1/snapshot/restore"),
        (Method::POST, "/v1/tokens"),
        (Method::POST, "/raft/append"),
        (Method::POST, "/internal/propose"),
        (Method::GET, "/internal/status"),
        (Method::GET, "/nowhere"),
    ];
    for (method, path) in routes {
        for (who, http) in [("anonymous", &anon), ("a wrong token", &wrong)] {
            // A body that would be a 400 if it were read.
            let (status, body) = call(http, method.clone(), &url(path), Some(json!({"nonsense": true}))).await;
            assert_eq!(status, 401, "{method} {path} as {who}: {body}");
            assert_eq!(refusal(&body).0, ErrorCode::Unauthorized, "{method} {path}: a JSON error: {body}");
        }
    }
    let (status, health) = call(&anon, Method::GET, &url("/v1/health"), None).await;
    assert_eq!(status, 200, "health needs no token: {health}");

    // One token per role, made through the cluster token (the bootstrap
    // secret); listed without secrets.
    let (read_id, read) = token(&cluster, "read").await;
    let (_, submit) = token(&cluster, "submit").await;
    let (_, admin) = token(&cluster, "admin").await;
    let (status, listed) = call(&cluster.http, Method::GET, &url("/v1/tokens"), None).await;
    assert_eq!(status, 200);
    assert_eq!(typed::<Vec<TokenView>>(listed.clone()).len(), 3, "{listed}");
    let text = listed.to_string();
    assert!(!text.contains(&read) && !text.contains("secret") && !text.contains("hash"), "{text}");
    let (status, _) = call(&cluster.http, Method::POST, &url("/v1/tokens"), Some(json!({"role": "root"}))).await;
    assert_eq!(status, 400, "an unknown role is a 400");

    // Tokens are replicated: the follower knows them at once or soon.
    let read = client_with_token(&read, Duration::from_secs(10));
    let submit = client_with_token(&submit, Duration::from_secs(10));
    let admin = client_with_token(&admin, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(&admin, Method::GET, &url("/v1/tasks"), None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the admin token never worked on the follower");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Register a node with the cluster token (a worker's route).
    let (status, body) = call(&cluster.http, Method::POST, &url("/v1/nodes/w1/heartbeat"), Some(heartbeat())).await;
    assert_eq!(status, 200, "{body}");

    // read: every GET but backups and tokens; no write.
    for path in ["/v1/tasks", "/v1/nodes", "/v1/cluster", "/v1/stats", "/v1/metrics", "/v1/openapi.json"] {
        assert_eq!(call(&read, Method::GET, &url(path), None).await.0, 200, "read GET {path}");
    }
    let forbidden: &[(Method, &str, Option<Value>)] = &[
        (Method::POST, "/v1/tasks", json_body(&spec("r"))),
        (Method::GET, "/v1/snapshot", None),
        (Method::GET, "/v1/tokens", None),
        (Method::PUT, "/v1/nodes/w1/drain", None),
        (Method::POST, "/v1/nodes/w1/heartbeat", Some(heartbeat())),
    ];
    for (method, path, body) in forbidden {
        let (status, answer) = call(&read, method.clone(), &url(path), body.clone()).await;
        assert_eq!(status, 403, "read {method} {path}: {answer}");
        assert_eq!(refusal(&answer).0, ErrorCode::Forbidden, "{answer}");
    }

    // submit: tasks, with a secret; nothing else.
    let mut secret_spec = spec("with-secret");
    secret_spec.env = [("PLAIN".to_string(), "visible".to_string())].into();
    secret_spec.secret_env = [("API_KEY".to_string(), "hunter2-very-secret".to_string())].into();
    let (status, task) = call(&submit, Method::POST, &url("/v1/tasks"), json_body(&secret_spec)).await;
    assert_eq!(status, 201, "{task}");
    let task: Task = typed(task);
    assert_eq!(task.spec.secret_env.get("API_KEY").map(String::as_str), Some("<secret>"), "{task:?}");
    assert_eq!(task.spec.env.get("PLAIN").map(String::as_str), Some("visible"));
    let task_id = task.id.to_string();
    let (status, both) = call(
        &submit,
        Method::POST,
        &url("/v1/tasks"),
        json_body(&{
            let mut s = spec("both");
            s.env = [("K".to_string(), "a".to_string())].into();
            s.secret_env = [("K".to_string(), "b".to_string())].into();
            s
        }),
    )
    .await;
    assert_eq!(
        (status, refusal(&both)),
        (422, (ErrorCode::Invalid, Some("secret_env.K".to_string()))),
        "a name is secret or not (a rule across env and secret_env): {both}"
    );
    let not_for_submit: &[(Method, &str, Option<Value>)] = &[
        (Method::PUT, "/v1/nodes/w1/drain", None),
        (Method::DELETE, "/v1/nodes/w1/drain", None),
        (Method::POST, "/v1/cluster/members", Some(json!({"id": 9, "addr": "127.0.0.1:1"}))),
        (Method::DELETE, "/v1/cluster/members/3", None),
        (Method::POST, "/v1/tokens", Some(json!({"role": "admin"}))),
        (Method::GET, "/v1/snapshot", None),
        (Method::POST, "/v1/snapshot/restore", Some(json!({}))),
    ];
    for (method, path, body) in not_for_submit {
        let (status, answer) = call(&submit, method.clone(), &url(path), body.clone()).await;
        assert_eq!(status, 403, "submit {method} {path}: {answer}");
    }
    let (status, members) = call(&read, Method::GET, &url("/v1/cluster"), None).await;
    assert_eq!(status, 200);
    let members: ClusterView = typed(members);
    assert_eq!(members.members.len(), 3, "no member changed: {members:?}");

    // Secrets never in reads: one task, the list, the event stream's history.
    for path in [format!("/v1/tasks/{task_id}"), "/v1/tasks".to_string()] {
        let (_, answer) = call(&read, Method::GET, &url(&path), None).await;
        let text = answer.to_string();
        assert!(!text.contains("hunter2") && text.contains("<secret>"), "{path}: {text}");
    }
    // The worker that runs it gets it in clear (cluster token only).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = call(&cluster.http, Method::GET, &url("/v1/nodes/w1/assignments?wait=0ms"), None).await;
        if status == 200 && answer.to_string().contains("hunter2-very-secret") {
            break;
        }
        assert!(Instant::now() < deadline, "the task was never assigned in clear to w1: {status} {answer}");
        let _ = call(&cluster.http, Method::POST, &url("/v1/nodes/w1/heartbeat"), Some(heartbeat())).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = call(&admin, Method::GET, &url("/v1/nodes/w1/assignments"), None).await;
    assert_eq!(status, 403, "admin is not a worker: assignments need the cluster token");

    // admin: everything else; a backup holds the secret.
    let (status, backup) = call(&admin, Method::GET, &url("/v1/snapshot"), None).await;
    assert_eq!(status, 200);
    assert!(backup.to_string().contains("hunter2-very-secret"), "a backup holds secrets in clear");
    let (status, node) = call(&admin, Method::PUT, &url("/v1/nodes/w1/drain"), None).await;
    assert_eq!(status, 200, "{node}");
    let (status, node) = call(&admin, Method::DELETE, &url("/v1/nodes/w1/drain"), None).await;
    assert_eq!(status, 200, "{node}");
    let (status, _) = call(&submit, Method::DELETE, &url(&format!("/v1/tasks/{task_id}")), None).await;
    assert_eq!(status, 202, "submit stops tasks");

    // Revoked: 401 on every manager once applied there.
    let (status, _) = call(&admin, Method::DELETE, &url(&format!("/v1/tokens/{read_id}")), None).await;
    assert_eq!(status, 204);
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while call(&read, Method::GET, &format!("{}/v1/tasks", cluster.url(id)), None).await.0 != 401 {
            assert!(Instant::now() < deadline, "the revoked token still works on manager {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, _) = call(&admin, Method::DELETE, &url(&format!("/v1/tokens/{read_id}")), None).await;
    assert_eq!(status, 404);
}

/// Records every TCP connection (and whatever bytes it brings) on a port.
struct Recorder {
    port: u16,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Recorder { port, connections, bytes }
    }
}

/// The attack of issue 10: an anonymous `POST /v1/cluster/members` naming
/// a foreign address as a voter. It is refused (401, and 403 for tokens
/// below admin), the membership does not change, and nothing — no Raft
/// request, no token — is ever sent to that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_member_add_changes_nothing_and_sends_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let foreign = Recorder::start();
    let add = json!({"id": 99, "addr": format!("127.0.0.1:{}", foreign.port), "voter": true});
    let (_, submit) = token(&cluster, "submit").await;
    let (_, read) = token(&cluster, "read").await;
    for id in [leader, cluster.follower(leader)] {
        let url = format!("{}/v1/cluster/members", cluster.url(id));
        let (status, body) = call(&anonymous(), Method::POST, &url, Some(add.clone())).await;
        assert_eq!(status, 401, "{body}");
        for secret in [&submit, &read] {
            let (status, body) =
                call(&client_with_token(secret, Duration::from_secs(5)), Method::POST, &url, Some(add.clone())).await;
            assert_eq!(status, 403, "{body}");
        }
        let (status, _) =
            call(&anonymous(), Method::DELETE, &format!("{}/v1/cluster/members/2", cluster.url(id)), None).await;
        assert_eq!(status, 401);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, view) = call(&cluster.http, Method::GET, &format!("{}/v1/cluster", cluster.url(leader)), None).await;
    let view: ClusterView = typed(view);
    let ids: Vec<u64> = view.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2, 3], "the membership is unchanged: {view:?}");
    assert_eq!(foreign.connections.load(Ordering::SeqCst), 0, "nothing connected to the foreign address");
    assert_eq!(foreign.bytes.load(Ordering::SeqCst), 0);
}

/// A listener with a self-signed certificate (not the cluster's CA): counts
/// TLS handshakes attempted, handshakes completed, and HTTP bytes received.
struct ForeignTls {
    port: u16,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

async fn foreign_tls() -> ForeignTls {
    use tokio::io::AsyncReadExt;
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (accepted, handshakes, bytes) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, h, b) = (accepted.clone(), handshakes.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    ForeignTls { port, accepted, handshakes, bytes }
}

/// The TLS deployment: `goat tls init` writes the CA and certificates; the
/// managers serve HTTPS only and require a client certificate signed by the
/// CA; a worker heartbeats over TLS; and a member added at an address whose
/// certificate the CA did not sign — even by an admin — never receives a
/// request: the leader tries, and gives up in the handshake, before any
/// byte of HTTP (and so the cluster token) is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_a_member_not_signed_by_the_ca_never_receives_a_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("tls");
    let init = Command::new(goat_bin())
        .args(["tls", "init"])
        .arg(&certs)
        .args(["--managers", "127.0.0.1", "--workers", "w-tls"])
        .output()
        .expect("goat tls init");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let file = |name: &str| certs.join(name).to_str().expect("path").to_string();
    let read = |name: &str| std::fs::read(certs.join(name)).expect("read a TLS file");

    let ca = reqwest::Certificate::from_pem(&read("ca.crt")).expect("CA");
    let identity = reqwest::Identity::from_pem(&[read("client.crt"), read("client.key")].concat()).expect("identity");
    let tls_client = |token: Option<&str>| {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .identity(identity.clone())
            .timeout(Duration::from_secs(10));
        if let Some(token) = token {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
            builder = builder.default_headers(headers);
        }
        builder.build().expect("TLS client")
    };
    let (ca_file, cert_file, key_file) = (file("ca.crt"), file("127.0.0.1.crt"), file("127.0.0.1.key"));
    let args = ["--tls-ca", &ca_file, "--tls-cert", &cert_file, "--tls-key", &key_file];
    let cluster = Cluster::start_in(dir, 3, &args, tls_client(Some(TOKEN)), tls_client(None), "https").await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let leader_addr = cluster.url(leader).trim_start_matches("https://").to_string();

    // HTTPS with the CA's client certificate works; plain HTTP does not,
    // nor TLS without a client certificate.
    let (status, _) = call(&cluster.http, Method::GET, &format!("{}/v1/cluster", cluster.url(leader)), None).await;
    assert_eq!(status, 200);
    let plain = common::client().get(format!("http://{leader_addr}/v1/health")).send().await;
    assert!(!plain.is_ok_and(|r| r.status().is_success()), "no plain HTTP");
    let no_cert = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.clone())
        .build()
        .expect("client");
    assert!(
        no_cert.get(format!("https://{leader_addr}/v1/health")).send().await.is_err(),
        "a client certificate is required"
    );

    // A worker over TLS (no Docker needed to heartbeat: its engine is
    // reported unhealthy).
    let (worker_cert, worker_key) = (file("w-tls.crt"), file("w-tls.key"));
    let tls = ["--tls-ca", &ca_file, "--tls-cert", &worker_cert, "--tls-key", &worker_key];
    let mut worker = WorkerProc::for_cluster_with("w-tls", &cluster, "/nonexistent/docker.sock", &tls);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, nodes) = call(&cluster.http, Method::GET, &format!("{}/v1/nodes", cluster.url(leader)), None).await;
        if serde_json::from_value::<Vec<NodeView>>(nodes.clone())
            .is_ok_and(|n| n.iter().any(|n| n.node.name == "w-tls"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the TLS worker never registered: {nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.kill();

    // An admin adds a member at a foreign address with a self-signed
    // certificate. The request may wait (the learner never catches up):
    // give it a few seconds, then look at what the foreign side saw.
    let foreign = foreign_tls().await;
    let add = json!({"id": 99, "addr": format!("127.0.0.1:{}", foreign.port)});
    let members = format!("{}/v1/cluster/members", cluster.url(leader));
    let _ = cluster.http.post(&members).json(&add).timeout(Duration::from_secs(5)).send().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(foreign.accepted.load(Ordering::SeqCst) > 0, "the leader did try to reach the new member");
    assert_eq!(foreign.handshakes.load(Ordering::SeqCst), 0, "no TLS session with a certificate the CA did not sign");
    assert_eq!(foreign.bytes.load(Ordering::SeqCst), 0, "no HTTP request (and no token) reached it");
    let (status, _) = call(&cluster.http, Method::GET, &format!("{}/v1/cluster", cluster.url(leader)), None).await;
    assert_eq!(status, 200, "the cluster still answers");
}
