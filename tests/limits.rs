//! Bounded resources, against real manager processes: oversized requests
//! are refused before they cost anything, large writes do not starve Raft,
//! streams and polls are capped, task lists are paged, finished tasks and
//! down nodes are collected.

mod common;

use goat_storage::model::{HeartbeatReply, NodeStatus, Task, TaskState};
use goat_storage::Millis;
use std::time::{Duration, Instant};

use common::{answer, spec, Answer, Cluster, ErrorBody, ErrorCode, TOKEN};
use goat::manager::gc::Collected;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test that asserts the term holds runs alone (a write lock), the
/// others side by side (read locks): it measures what large writes cost
/// Raft, not what a second cluster starving this 2-core machine does.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The leader's term as manager `id` reports it.
async fn term(cluster: &Cluster, id: u64) -> u64 {
    cluster.health(id).await.term
}

/// The manager process's resident set, in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB");
    kb * 1024
}

fn pid(cluster: &Cluster, id: u64) -> u32 {
    cluster.managers.iter().find(|m| m.id == id).and_then(|m| m.child.as_ref()).map(|c| c.id()).expect("running")
}

/// Sends the head of a request declaring a `length`-byte body, and none of
/// the body, then reads the answer: a server that waited for the body would
/// never answer (the guard below fails the test instead of hanging).
async fn declare_only(addr: &str, path: &str, length: u64, token: Option<&str>) -> (u16, ErrorBody) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write the head");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer without the body: the server waited for it");
    let text = String::from_utf8_lossy(&answer).to_string();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let body = body.trim();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{status} without an error body ({e}): {body}")))
}

/// 40 concurrent 250 MB bodies to `/raft/append` without a token: each is
/// refused without its body being read, and the manager's memory stays
/// flat. The same for a public route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_are_refused_unread_and_memory_stays_flat() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.managers[0].addr.clone();
    cluster.submit(1, &spec("before")).await;
    let before = rss_bytes(pid(&cluster, 1));
    let answers =
        futures::future::join_all((0..40).map(|_| declare_only(&addr, "/raft/append", 250_000_000, None))).await;
    for (status, body) in &answers {
        assert!(*status == 413 || *status == 401, "{status} {body:?}");
        if *status == 413 {
            assert_eq!(body.code, ErrorCode::BodyTooLarge, "{body:?}");
            assert!(body.limit.is_some_and(|l| l < 250_000_000), "{body:?}");
        }
    }
    // Without a token the authentication layer refuses first (401, body
    // unread); with one, the route's limit does (413, body unread).
    let (status, body) = declare_only(&addr, "/v1/tasks", 250_000_000, None).await;
    assert_eq!((status, body.code), (401, ErrorCode::Unauthorized), "{body:?}");
    let (status, body) = declare_only(&addr, "/v1/tasks", 250_000_000, Some(TOKEN)).await;
    assert_eq!((status, body.code), (413, ErrorCode::BodyTooLarge), "{body:?}");
    let limit = body.limit.expect("the limit");
    assert!(body.error.contains(&limit.to_string()), "names the limit: {body:?}");
    let after = rss_bytes(pid(&cluster, 1));
    eprintln!("manager VmRSS before {} KiB, after {} KiB", before / 1024, after / 1024);
    assert!(after < before + (100 << 20), "RSS grew from {before} to {after} bytes");
    // Still serving.
    cluster.submit(1, &spec("after")).await;
}

/// 100 concurrent submissions of 900 KB specs are refused with a 4xx that
/// names the size; 100 concurrent ones just under the spec cap are all
/// stored; the term does not move (no election was caused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_concurrent_submissions_neither_pass_nor_cost_an_election() {
    let _alone = EXCLUSIVE.write().await;
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    // The peer: the same cluster, idle, for as long as the writes take
    // on a calm machine. If its term moves with no load at all, the
    // machine starves every process (other builds, load average far above
    // its 2 cores) and the term says nothing about the writes.
    let idle_before = term(&cluster, leader).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let term_before = term(&cluster, leader).await;
    let calm = idle_before == term_before;
    // Bodies built as text once: serializing 90 MB of JSON per request
    // in a debug build would take the client longer than the server.
    let payload = |bytes: usize| "x".repeat(bytes);
    let (huge_payload, near_payload) = (payload(900_000), payload(60_000));
    // Sent as a careful client does: with an Idempotency-Key, and again
    // (to the next manager) after a 503's Retry-After. A loaded machine
    // may answer 503 (outcome unknown); what must never come is a 5xx
    // for good, a lost write or an election.
    let post = |i: usize, bytes: usize| {
        let value = if bytes > 100_000 { &huge_payload } else { &near_payload };
        let body = format!(r#"{{"name":"big-{i}","image":"goat-echo:latest","env":{{"PAYLOAD":"{value}"}}}}"#);
        let http = cluster.http.clone();
        let urls: Vec<String> = (0..3).map(|k| format!("{}/v1/tasks", cluster.url(1 + (i as u64 + k) % 3))).collect();
        async move {
            let mut last: Option<Answer<Task>> = None;
            for attempt in 0..10 {
                let request = http
                    .post(&urls[attempt % urls.len()])
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("big-{i}"))
                    .body(body.clone());
                let response = answer::<Task>(request.send().await.expect("POST")).await;
                let unavailable = response.status == 503;
                last = Some(response);
                if !unavailable {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            last.expect("an answer")
        }
    };
    let huge = futures::future::join_all((0..100).map(|i| post(i, 900_000))).await;
    for refused in &huge {
        assert!((400..500).contains(&refused.status), "{refused:?}");
        assert!(refused.error().error.contains("limit of"), "names the limit: {refused:?}");
    }
    let term_refused = term(&cluster, leader).await;
    eprintln!("100 oversized submissions refused; term {term_before} -> {term_refused}");
    // Just under the cap (64 KiB of text in all).
    let near = futures::future::join_all((0..100).map(|i| post(1000 + i, 60_000))).await;
    // 201, or 200 for a resend whose first attempt was stored after all.
    let refused: Vec<_> = near.iter().filter(|a| a.status != 201 && a.status != 200).collect();
    assert!(refused.is_empty(), "{} of 100 not stored: {refused:?}", refused.len());
    let term_after = term(&cluster, leader).await;
    eprintln!("term idle {idle_before} -> {term_before}, with the writes {term_before} -> {term_after}");
    if calm {
        assert_eq!(term_before, term_after, "the term climbed: large writes caused an election");
    } else {
        eprintln!("the term moved while the cluster was idle: this machine is starved, the term check is skipped");
    }
    let tasks = cluster.tasks(leader, false).await;
    assert_eq!(tasks.len(), 100);
}

/// `--max-streams` and `--max-polls`: past them, 503 with Retry-After;
/// a freed slot can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_polls_are_capped() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(1, &["--max-streams", "2", "--max-polls", "1"]).await;
    let url = cluster.url(1);
    let open = || cluster.http.get(format!("{url}/v1/events")).timeout(Duration::from_secs(600)).send();
    let first = open().await.expect("stream 1");
    let second = open().await.expect("stream 2");
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open().await.expect("stream 3");
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let body: ErrorBody = third.json().await.expect("an error body");
    assert_eq!(body.code, ErrorCode::Busy, "{body:?}");
    assert!(body.error.contains("--max-streams"), "{body:?}");
    drop(first);
    // The slot comes back once the manager sees the stream closed (at its
    // next keep-alive at the latest).
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        let response = open().await.expect("stream");
        if response.status() == 200 {
            break response;
        }
        assert!(Instant::now() < deadline, "the closed stream's slot never came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop((second, again));

    // A registered node, and its current list version to wait on.
    let heartbeat = json!({"capacity": {"cpu": 1.0, "memory": 1 << 30, "disk": 0}, "engine": {"healthy": true}});
    let reply: HeartbeatReply = cluster
        .http
        .post(format!("{url}/v1/nodes/w1/heartbeat"))
        .bearer_auth(TOKEN)
        .json(&heartbeat)
        .send()
        .await
        .expect("heartbeat")
        .json()
        .await
        .expect("JSON");
    let version = reply.version;
    assert!(!version.is_empty(), "a version");
    let poll = |wait: &str| {
        cluster.http.get(format!("{url}/v1/nodes/w1/assignments?after={version}&wait={wait}")).bearer_auth(TOKEN).send()
    };
    // One poll waits and holds the only slot; a second one is refused.
    // (Should the second reach the manager first, the roles swap: again.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = tokio::spawn(poll("10s"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = poll("100ms").await.expect("poll");
        let (status, retry_after) = (second.status().as_u16(), second.headers().contains_key("retry-after"));
        let first = waiting.await.expect("join").expect("poll").status().as_u16();
        if status == 503 {
            assert!(retry_after);
            assert_eq!(first, 304, "the waiting poll ran its wait");
            break;
        }
        assert!(Instant::now() < deadline, "a second poll was never refused ({first}, {status})");
    }
    assert_eq!(poll("100ms").await.expect("poll").status(), 304, "the slot is free again");
}

/// `GET /v1/tasks?limit=&after=` walks every task once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lists_are_paged() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(3, &[]).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(cluster.submit(1 + i % 3, &spec(&format!("p{i}"))).await.id.to_string());
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let response =
            cluster.http.get(format!("{}/v1/tasks?limit=10{after}", cluster.url(2))).send().await.expect("GET");
        assert_eq!(response.status(), 200);
        let next = response.headers().get("x-goat-next").map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Task> = response.json().await.expect("a page of tasks");
        assert!(page.len() <= 10);
        pages += 1;
        seen.extend(page.iter().map(|t| t.id.to_string()));
        match next {
            Some(next) => {
                assert_eq!(Some(next.as_str()), seen.last().map(String::as_str));
                after = format!("&after={next}");
            }
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, ids.clone()));
    // Without a limit: the default page, all 25 here, as before.
    assert_eq!(cluster.tasks(3, false).await.len(), 25);
    for bad in ["limit=0", "limit=100000", "after=nope"] {
        let response = cluster.http.get(format!("{}/v1/tasks?{bad}", cluster.url(1))).send().await.expect("GET");
        assert_eq!(response.status(), 400, "{bad}");
    }
    // The CLI lists them all.
    let out = std::process::Command::new(common::goat_bin())
        .args(["status", "--json", "--addr", &cluster.managers[0].addr, "--token", TOKEN])
        .output()
        .expect("goat status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Task> = serde_json::from_slice(&out.stdout).expect("the tasks");
    assert_eq!(listed.len(), 25);
}

async fn task_status(cluster: &Cluster, manager: u64, id: &str) -> u16 {
    let url = format!("{}/v1/tasks/{id}?stale=true", cluster.url(manager));
    cluster.http.get(url).send().await.expect("GET").status().as_u16()
}

/// Finished tasks are collected by the leader after `--task-retention`,
/// on every manager; a task still wanted is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_collected_after_the_retention() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(3, &["--task-retention", "2s"]).await;
    let kept = cluster.submit(1, &spec("kept")).await.id.to_string();
    let mut done = Vec::new();
    for i in 0..3 {
        let id = cluster.submit(2, &spec(&format!("done{i}"))).await.id.to_string();
        let response = cluster.http.delete(format!("{}/v1/tasks/{id}", cluster.url(1))).send().await.expect("stop");
        assert_eq!(response.status(), 202);
        done.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    'wait: loop {
        for manager in [1, 2, 3] {
            for id in &done {
                if task_status(&cluster, manager, id).await != 404 {
                    assert!(Instant::now() < deadline, "task {id} still on manager {manager}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'wait;
                }
            }
        }
        break;
    }
    for manager in [1, 2, 3] {
        assert_eq!(task_status(&cluster, manager, &kept).await, 200, "a pending task is kept");
    }
}

/// `POST /v1/gc` needs the token, collects now what is older than the
/// retention (or `older_than`), and nothing younger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_request() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(1, &[]).await;
    let id = cluster.submit(1, &spec("done")).await.id.to_string();
    cluster.http.delete(format!("{}/v1/tasks/{id}", cluster.url(1))).send().await.expect("stop");
    let gc = |query: &str, token: bool| {
        // `http` sends the cluster token, `anon` none.
        let client = if token { &cluster.http } else { &cluster.anon };
        let request = client.post(format!("{}/v1/gc{query}", cluster.url(1)));
        async move { answer::<Collected>(request.send().await.expect("POST /v1/gc")).await }
    };
    assert_eq!(gc("", false).await.refusal().0, 401);
    assert_eq!(gc("", true).await.ok().collected, 0, "younger than 24 h: kept");
    assert_eq!(task_status(&cluster, 1, &id).await, 200);
    assert_eq!(gc("?older_than=soon", true).await.refusal(), (400, ErrorCode::InvalidQuery, Some("older_than")));
    assert_eq!(gc("?older_than=0s", true).await.ok().collected, 1);
    assert_eq!(task_status(&cluster, 1, &id).await, 404);
}

async fn nodes(cluster: &Cluster) -> Vec<goat::client::NodeView> {
    cluster.api.nodes().await.expect("GET /v1/nodes")
}

/// `DELETE /v1/nodes/{name}`: 409 while the node is up or holds a live
/// task, 204 once it is down and empty, then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_nodes_can_be_removed() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(1, &["--node-down-after", "1s"]).await;
    let url = cluster.url(1);
    let heartbeat = json!({"capacity": {"cpu": 4.0, "memory": 4u64 << 30, "disk": 0}, "engine": {"healthy": true}});
    let beat = || cluster.http.post(format!("{url}/v1/nodes/w1/heartbeat")).bearer_auth(TOKEN).json(&heartbeat).send();
    assert_eq!(beat().await.expect("heartbeat").status(), 200);
    let mut task = spec("stays");
    task.disconnect_window = Some(Millis(3_600_000));
    let id = cluster.submit(1, &task).await.id.to_string();
    let remove = |token: bool| {
        let client = if token { &cluster.http } else { &cluster.anon };
        let request = client.delete(format!("{url}/v1/nodes/w1"));
        async move { request.send().await.expect("DELETE").status().as_u16() }
    };
    assert_eq!(remove(false).await, 401);
    assert_eq!(remove(true).await, 409, "a ready node");
    // Placed on w1; then w1 stops reporting and goes down; the task waits
    // `unknown` on it (its disconnect window).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = cluster.api.task(&id).await.expect("GET task");
        if t.state == TaskState::Unknown {
            break;
        }
        if t.state == TaskState::Pending {
            beat().await.expect("heartbeat");
        }
        assert!(Instant::now() < deadline, "task never became unknown: {t:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(nodes(&cluster).await.iter().any(|n| n.node.name == "w1" && n.node.status == NodeStatus::Down));
    assert_eq!(remove(true).await, 409, "a down node that holds a live task");
    let response = cluster.http.delete(format!("{url}/v1/tasks/{id}")).send().await.expect("stop");
    assert_eq!(response.status(), 202);
    assert_eq!(remove(true).await, 204);
    assert!(nodes(&cluster).await.iter().all(|n| n.node.name != "w1"));
    assert_eq!(remove(true).await, 404);
    // A worker that comes back under that name registers again.
    assert_eq!(beat().await.expect("heartbeat").status(), 200);
    assert!(nodes(&cluster).await.iter().any(|n| n.node.name == "w1" && n.node.status == NodeStatus::Ready));
}

/// Request metrics are labelled by known methods and matched routes only:
/// an invented method or path adds no series of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_come_from_fixed_sets() {
    let _shared = EXCLUSIVE.read().await;
    let cluster = Cluster::start(1, &[]).await;
    let url = cluster.url(1);
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).expect("a method");
        cluster.http.request(method, format!("{url}/v1/tasks")).send().await.expect("request");
        cluster.http.get(format!("{url}/v1/no/such/route/{i}")).send().await.expect("request");
    }
    let text = cluster.http.get(format!("{url}/v1/metrics")).send().await.unwrap().text().await.unwrap();
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("goat_api_requests_total{")).collect();
    assert!(series.iter().all(|l| !l.contains("BREW") && !l.contains("/v1/no/such")), "{series:#?}");
    assert!(series.iter().any(|l| l.contains("method=\"other\"")), "{series:#?}");
    assert!(series.iter().any(|l| l.contains("route=\"other\"")), "{series:#?}");
}
