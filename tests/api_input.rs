//! Bad input to the API: every malformed request gets a 4xx with a JSON body
//! naming the problem, nothing is stored, nothing already stored is lost, and
//! internal routes refuse requests without the cluster token.

mod common;

use common::{answer, spec, Answer, Cluster, ErrorCode};
use goat_storage::model::{Task, TaskSpec};
// `json!` where the raw JSON is the point: malformed bodies.
use serde_json::{json, Value};

/// `POST /v1/tasks` with a raw body: a task, or the error body.
async fn post_raw(cluster: &Cluster, body: impl Into<reqwest::Body>) -> Answer<Task> {
    let response = cluster
        .http
        .post(format!("{}/v1/tasks", cluster.url(1)))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    answer(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_with_the_field_named() {
    let cluster = Cluster::start(1, &[]).await;
    let kept = cluster.submit(1, &spec("kept")).await;

    let cases: Vec<(Value, &str)> = vec![
        (json!({"image": "x"}), "name"),
        (json!({"name": "a", "image": "x", "health_check": {"path": "/"}}), "health_check.port"),
        (json!({"name": "", "image": "x"}), "name"),
        (json!({"name": "bad name", "image": "x"}), "name"),
        (json!({"name": "a", "image": ""}), "image"),
        (json!({"name": "a", "image": "x", "cpu": -1}), "cpu"),
        (json!({"name": "a", "image": "x", "cpu": "two"}), "cpu"),
        (json!({"name": "a", "image": "x", "cpu": 1e9}), "cpu"),
        (json!({"name": "a", "image": "x", "memory": -1}), "memory"),
        (json!({"name": "a", "image": "x", "memory": 1e30}), "memory"),
        (json!({"name": "a", "image": "x", "memory": 1u64 << 60}), "memory"),
        (json!({"name": "a", "image": "x", "ports": [{"container": 0}]}), "ports[0].container"),
        (json!({"name": "a", "image": "x", "ports": [{"container": 65536}]}), "ports[0].container"),
        (json!({"name": "a", "image": "x", "ports": [{"container": 80, "host": 70000}]}), "ports[0].host"),
        (json!({"name": "a", "image": "x", "imgae": "typo"}), "imgae"),
        (json!({"name": "a", "image": "x", "restart_policy": {"condition": "sometimes"}}), "restart_policy.condition"),
        (json!({"name": "a", "image": "x", "health_check": {"port": 80, "interval": "soon"}}), "health_check.interval"),
        // Durations are capped whatever their form (a bare u64::MAX used to wrap).
        (json!({"name": "a", "image": "x", "restart_policy": {"max_delay": u64::MAX}}), "restart_policy.max_delay"),
        (json!({"name": "a", "image": "x", "restart_policy": {"max_delay": 1e30}}), "restart_policy.max_delay"),
        (json!({"name": "a", "image": "x", "restart_policy": {"initial_delay": 0}}), "restart_policy.initial_delay"),
        (
            json!({"name": "a", "image": "x", "restart_policy": {"initial_delay": "99ms"}}),
            "restart_policy.initial_delay",
        ),
        (json!({"name": "a", "image": "x", "health_check": {"port": 80, "interval": 99}}), "health_check.interval"),
        (json!({"name": "a", "image": "x", "health_check": {"port": 80, "timeout": "0.4ms"}}), "health_check.timeout"),
        (json!({"name": "a", "image": "x", "restart_policy": {"max_delay": 1.5}}), "restart_policy.max_delay"),
        (json!(["not", "an", "object"]), ""),
    ];
    for (body, field) in cases {
        let refused = post_raw(&cluster, body.to_string()).await;
        let error = refused.error();
        assert!(!error.error.is_empty(), "{body} -> {error:?}");
        let field = Some(field).filter(|f| !f.is_empty());
        let code = if field.is_some() { ErrorCode::InvalidField } else { ErrorCode::BadJson };
        assert_eq!(refused.refusal(), (400, code, field), "{body} -> {error:?}");
    }

    // Each field valid alone, the combination refused: a rule across
    // fields, which the OpenAPI schema cannot state, is a 422 `invalid`
    // naming the field at fault.
    let across: Vec<(Value, &str)> = vec![
        (
            json!({"name": "a", "image": "x", "restart_policy": {"max_attempts": 0, "max_delay": "200ms"}}),
            "restart_policy.max_delay",
        ),
        (
            json!({"name": "a", "image": "x", "restart_policy": {"initial_delay": "2s", "max_delay": "1s"}}),
            "restart_policy.max_delay",
        ),
        (json!({"name": "a", "image": "x", "ports": [{"container": 80}, {"container": 80}]}), "ports[1].container"),
        (
            json!({"name": "a", "image": "x", "ports": [{"container": 80, "host": 8080}, {"container": 81, "host": 8080}]}),
            "ports[1].host",
        ),
        (json!({"name": "a", "image": "x", "cpu_hard_limit": true}), "cpu_hard_limit"),
        (json!({"name": "a", "image": "x", "env": {"K": "a"}, "secret_env": {"K": "b"}}), "secret_env.K"),
    ];
    for (body, field) in across {
        let refused = post_raw(&cluster, body.to_string()).await;
        assert_eq!(refused.refusal(), (422, ErrorCode::Invalid, Some(field)), "{body} -> {:?}", refused.error());
    }

    for raw in ["", "{", "{\"name\": \"a\",}", "null", "\u{0}"] {
        let refused = post_raw(&cluster, raw.to_string()).await;
        assert_eq!(refused.status, 400, "{raw:?} -> {:?}", refused.error());
    }

    // Over 1 MiB: 413, with a JSON body naming the limit.
    let huge = json!({"name": "a", "image": "x", "env": {"BIG": "x".repeat(2 << 20)}}).to_string();
    let refused = post_raw(&cluster, huge).await;
    assert_eq!(refused.refusal(), (413, ErrorCode::BodyTooLarge, None));
    assert!(refused.error().limit.is_some(), "{:?}", refused.error());

    // Bad ids on the task routes.
    let response = cluster.http.get(format!("{}/v1/tasks/not-a-uuid", cluster.url(1))).send().await.expect("GET");
    assert_eq!(response.status(), 400);
    let missing = format!("{}/v1/tasks/{}", cluster.url(1), uuid::Uuid::new_v4());
    assert_eq!(cluster.http.get(&missing).send().await.expect("GET").status(), 404);
    assert_eq!(cluster.http.delete(&missing).send().await.expect("DELETE").status(), 404);
    let response = cluster.http.get(format!("{}/v1/tasks?stale=maybe", cluster.url(1))).send().await.expect("GET");
    assert_eq!(response.status(), 400);
    let response = cluster.http.get(format!("{}/v1/nope", cluster.url(1))).send().await.expect("GET");
    assert_eq!(response.status(), 404);

    // Nothing was stored, nothing was lost.
    let tasks = cluster.tasks(1, false).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, kept.id);
    assert_eq!(cluster.health(1).await.status, "ok", "the manager is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_cluster_token() {
    let cluster = Cluster::start(1, &[]).await;
    let before = cluster.health(1).await;
    for route in ["/raft/vote", "/raft/append", "/raft/snapshot", "/internal/propose", "/internal/read-index"] {
        for token in [None, Some("Bearer wrong")] {
            let mut request = cluster.anon.post(format!("{}{route}", cluster.url(1))).body(vec![1, 2, 3]);
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let status = request.send().await.expect("POST").status();
            assert_eq!(status, 401, "{route} with {token:?}");
        }
    }
    let heartbeat = json!({"capacity": {"cpu": 1.0, "memory": 1, "disk": 1}, "engine": {"healthy": true}});
    let status = cluster
        .anon
        .post(format!("{}/v1/nodes/w1/heartbeat", cluster.url(1)))
        .json(&heartbeat)
        .send()
        .await
        .expect("POST")
        .status();
    assert_eq!(status, 401);
    let after = cluster.health(1).await;
    assert_eq!(before.term, after.term, "no request reached Raft");
    let nodes: Vec<goat::client::NodeView> =
        cluster.http.get(format!("{}/v1/nodes", cluster.url(1))).send().await.expect("GET").json().await.expect("json");
    assert!(nodes.is_empty(), "no node registered without the token");
}

/// A submission with an `Idempotency-Key` names one task however often it is
/// sent (through the leader or a follower): `201` the first time, `200` with
/// the same task after; the same key with another spec is a `409`; a bad key
/// is a `400` naming the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_with_an_idempotency_key_creates_one_task() {
    let cluster = Cluster::start(3, &[]).await;
    // A task, or an error body.
    let submit = |manager: u64, key: &'static str, body: TaskSpec| {
        let request = cluster
            .http
            .post(format!("{}/v1/tasks", cluster.url(manager)))
            .header("idempotency-key", key)
            .json(&body)
            .send();
        async move { answer::<Task>(request.await.expect("POST")).await }
    };
    let first = submit(1, "run-42", spec("once")).await;
    assert_eq!(first.status, 201, "{first:?}");
    let created = first.ok();
    for manager in [1, 2, 3] {
        let again = submit(manager, "run-42", spec("once")).await;
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.ok().id, created.id);
    }
    let tasks = cluster.tasks(2, false).await;
    assert_eq!(tasks.iter().filter(|t| t.spec.name == "once").count(), 1);

    let conflict = submit(2, "run-42", spec("other")).await;
    assert_eq!(conflict.refusal().0, 409, "{conflict:?}");
    let bad_key = submit(1, "bad key", spec("x")).await;
    assert_eq!(bad_key.refusal(), (400, ErrorCode::InvalidHeader, Some("Idempotency-Key")));
    let other = submit(3, "run-43", spec("once")).await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_ne!(other.ok().id, created.id);
}
