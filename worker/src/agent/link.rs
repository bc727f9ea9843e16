//! The link to the managers: heartbeats, the long poll on the node's
//! assignments, and the order in which their lists are taken.

use std::sync::Arc;
use std::time::Duration;

use goat_storage::model::{Assignment, Heartbeat, HeartbeatReply, Resources};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{unix_ms, Status};

/// Timeout of one heartbeat request.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry period while the managers refuse our token.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(5);
/// The least time between two heartbeats sent early because a report
/// changed: prompt reporting without flooding the leader.
const MIN_HEARTBEAT_GAP: Duration = Duration::from_millis(150);

/// Where to send heartbeats and how.
pub struct HeartbeatConfig {
    pub node: String,
    pub managers: Vec<String>,
    pub token: String,
    pub capacity: Resources,
    pub interval: Duration,
    /// With TLS: `https`, this worker's certificate, the cluster's CA.
    pub tls: Option<goat_raft::tls::Tls>,
    /// The address clients reach this node's published ports at.
    pub advertise: Option<String>,
}

/// How one heartbeat attempt went.
enum Sent {
    Accepted(HeartbeatReply),
    /// Try the next manager.
    Unreachable(String),
    /// Our token is refused: retry slowly.
    Unauthorized(String),
}

/// Which assignment lists the worker takes, by the applied log index each
/// was computed at.
///
/// A heartbeat's answer and a long poll's answer can be in flight together
/// and arrive in either order, so a list computed at a lower index than the
/// one held is older news and is ignored: replacing a newer list with it
/// could remove a task placed in between. Every manager applies the same
/// log, so an index orders lists across managers too. After a leader change
/// the new leader's applied index may briefly trail the old one's: its
/// answers are ignored until it catches up, which is safe (they are older)
/// and short (heartbeats keep flowing meanwhile).
///
/// Two escapes: an answer numbered 0 (a manager that does not number its
/// answers) is taken as before; and a worker that has been shown only lower
/// indexes for [`REGRESSION_AFTER`] and [`REGRESSION_ANSWERS`] answers in a
/// row takes them: its managers' log must have started over (a cluster
/// rebuilt from scratch while the worker ran), and a worker that ignored it
/// forever would never get new work.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssignmentOrder {
    /// The index of the list held (0: none numbered yet).
    held: u64,
    /// Since when (unix ms) and how many answers in a row were older.
    behind: Option<(u64, u32)>,
}

/// How long only older answers must come before they are taken anyway.
pub const REGRESSION_AFTER: Duration = Duration::from_secs(60);
/// How many older answers in a row must come before they are taken anyway.
pub const REGRESSION_ANSWERS: u32 = 30;

impl AssignmentOrder {
    /// Whether to take a list computed at `index`, received at `now` (unix
    /// ms); a list taken becomes the one held.
    pub fn accept(&mut self, index: u64, now: u64) -> bool {
        if index == 0 {
            return true;
        }
        if index >= self.held {
            self.held = index;
            self.behind = None;
            return true;
        }
        let (since, answers) = self.behind.get_or_insert((now, 0));
        *answers += 1;
        if now.saturating_sub(*since) >= REGRESSION_AFTER.as_millis() as u64 && *answers >= REGRESSION_ANSWERS {
            tracing::warn!(held = self.held, index, "the managers' log index went back for good; taking their lists");
            self.held = index;
            self.behind = None;
            return true;
        }
        false
    }

    /// The index of the list held.
    pub fn held(&self) -> u64 {
        self.held
    }
}

/// The assignment list the worker holds, where it goes (the supervisor's
/// watch channel and the worker's store), and its order.
struct Held<S> {
    order: AssignmentOrder,
    version: String,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
    store: S,
}

impl<S: Fn(&[Assignment])> Held<S> {
    /// Takes `reply`'s list unless it is older than the one held; passes it
    /// on if it differs. Returns whether it was taken.
    fn take(&mut self, reply: HeartbeatReply, from: &str) -> bool {
        if reply.unchanged && reply.version != self.version {
            // It confirms a list this worker no longer holds (a long poll
            // replaced it meanwhile): it says nothing of the one held.
            return false;
        }
        if !self.order.accept(reply.index, unix_ms()) {
            tracing::debug!(manager = from, index = reply.index, held = self.order.held(), "ignoring an older list");
            return false;
        }
        if reply.unchanged {
            // The list held (named in the heartbeat) is still current.
            return true;
        }
        self.version = reply.version;
        let fresh = Some(reply.assignments);
        if *self.assignments.borrow() != fresh {
            if let Some(list) = &fresh {
                tracing::info!(tasks = list.len(), index = reply.index, manager = from, "new assignments");
                (self.store)(list);
            }
            let _ = self.assignments.send(fresh);
        }
        true
    }
}

/// Where the long poll goes: the manager that last answered a heartbeat,
/// and the version of the list the worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PollTarget {
    manager: String,
    version: String,
}

/// How long one long poll asks the manager to wait.
const POLL_WAIT: Duration = Duration::from_secs(10);
/// Added to [`POLL_WAIT`] for the request's own timeout.
const POLL_MARGIN: Duration = Duration::from_secs(5);
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Sends heartbeats forever; passes each assignment list on (and stores
/// it). Alongside, a long poll on the node's assignments brings new lists
/// as soon as the leader commits them (see [`long_poll_loop`]); it only
/// ever speeds things up, the heartbeats work without it.
pub async fn heartbeat_loop(
    config: HeartbeatConfig,
    status: Arc<Mutex<Status>>,
    store_assignments: impl Fn(&[Assignment]) + Send,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
) {
    let (target_tx, target_rx) = watch::channel(None);
    let (polled_tx, polled_rx) = mpsc::channel(4);
    let held =
        Held { order: AssignmentOrder::default(), version: String::new(), assignments, store: store_assignments };
    let poll = long_poll_loop(config.node.clone(), config.token.clone(), config.tls.clone(), target_rx, polled_tx);
    tokio::select! {
        _ = heartbeats(config, status, held, target_tx, polled_rx) => {}
        _ = poll => {}
    }
}

async fn heartbeats(
    config: HeartbeatConfig,
    status: Arc<Mutex<Status>>,
    mut held: Held<impl Fn(&[Assignment])>,
    target: watch::Sender<Option<PollTarget>>,
    mut polled: mpsc::Receiver<(String, HeartbeatReply)>,
) {
    let client = match goat_raft::tls::client_builder(config.tls.as_ref()).timeout(HEARTBEAT_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; no heartbeats will be sent");
            return;
        }
    };
    let mut current = 0usize;
    let mut interval = config.interval;
    let mut connected = false;
    let mut delta = crate::delta::ReportDelta::default();
    // When a heartbeat was last accepted: after a gap of several intervals
    // (this process was frozen, or its heartbeats stalled) the managers may
    // have marked the node down and its tasks `unknown`, so the next
    // heartbeat reports everything again, not only what changed.
    let mut last_accepted: Option<tokio::time::Instant> = None;
    let changed = status.lock().changed.clone();
    // Points the long poll at `manager` with the list held (not before a
    // manager sends versions).
    let aim = |held: &Held<_>, manager: &str| {
        let next = (!held.version.is_empty())
            .then(|| PollTarget { manager: manager.to_string(), version: held.version.clone() });
        target.send_if_modified(|t| {
            let differs = *t != next;
            *t = next;
            differs
        });
    };
    loop {
        let sent_at = tokio::time::Instant::now();
        if last_accepted.is_some_and(|at| sent_at.duration_since(at) > interval * 3) {
            delta.reset();
        }
        // Only the reports that changed since the last accepted heartbeat
        // (see `crate::delta`), and the version of the list held, so that
        // an unchanged node's heartbeat and its answer stay small.
        let (heartbeat, all, more) = {
            let status = status.lock();
            let selection = delta.select(&status.reports);
            let heartbeat = Heartbeat {
                capacity: config.capacity,
                usage: status.usage,
                engine: status.engine.clone(),
                tasks: selection.reports,
                held: (!held.version.is_empty()).then(|| held.version.clone()),
                advertise: config.advertise.clone(),
            };
            (heartbeat, status.reports.clone(), selection.more)
        };
        // Try each manager once, starting with the one that answered last.
        // A manager that does not answer, or answers 503 (a leader that
        // cannot confirm it still leads, a follower without a leader), is
        // passed over at once.
        let mut accepted = None;
        let mut unauthorized = false;
        let mut passed_over = None;
        for i in 0..config.managers.len() {
            let idx = (current + i) % config.managers.len();
            let manager = &config.managers[idx];
            match send(&client, manager, &config, &heartbeat).await {
                Sent::Accepted(reply) => {
                    if connected && idx != current {
                        let (previous, why) = passed_over.take().unwrap_or_default();
                        tracing::info!(%manager, previous, why, "heartbeats go to another manager");
                    }
                    current = idx;
                    accepted = Some(reply);
                    break;
                }
                Sent::Unreachable(why) => {
                    tracing::debug!(manager, why, "manager unreachable, trying the next");
                    passed_over.get_or_insert((manager.clone(), why));
                }
                Sent::Unauthorized(why) => {
                    tracing::error!(manager, why, "manager refused this worker's token; check --token / GOAT_TOKEN");
                    unauthorized = true;
                    break;
                }
            }
        }
        let was_accepted = accepted.is_some();
        match accepted {
            Some(reply) => {
                status.lock().last_manager_contact = Some(unix_ms());
                let manager = &config.managers[current];
                if !connected {
                    tracing::info!(%manager, "heartbeat accepted");
                    connected = true;
                }
                interval =
                    reply.heartbeat_interval.as_duration().clamp(Duration::from_millis(100), Duration::from_secs(10));
                delta.accepted(&heartbeat.tasks, &all);
                last_accepted = Some(tokio::time::Instant::now());
                held.take(reply, manager);
                aim(&held, manager);
            }
            None if unauthorized => {
                delta.reset();
                connected = false;
                target.send_replace(None);
                tokio::time::sleep(UNAUTHORIZED_RETRY).await;
                continue;
            }
            None => {
                delta.reset();
                if connected {
                    tracing::warn!("no manager reachable; carrying on with the last assignments");
                    connected = false;
                }
                current = (current + 1) % config.managers.len().max(1);
            }
        }
        // The next one at the period, or sooner when a report changed or
        // more reports wait; meanwhile, take what the long poll brings.
        let next =
            if more && was_accepted { sent_at + MIN_HEARTBEAT_GAP } else { tokio::time::Instant::now() + interval };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = changed.notified() => {
                    tokio::time::sleep_until(sent_at + MIN_HEARTBEAT_GAP).await;
                    break;
                }
                Some((manager, reply)) = polled.recv() => {
                    if held.take(reply, &manager) && connected {
                        aim(&held, &config.managers[current]);
                    }
                }
            }
        }
    }
}

/// The long poll: asks the manager the heartbeats reach for the node's
/// assignments once they differ from the list held, and hands each answer
/// to the heartbeat loop (which applies the index order). On any error it
/// backs off; the heartbeats carry on meanwhile.
async fn long_poll_loop(
    node: String,
    token: String,
    tls: Option<goat_raft::tls::Tls>,
    mut target: watch::Receiver<Option<PollTarget>>,
    polled: mpsc::Sender<(String, HeartbeatReply)>,
) {
    let scheme = goat_raft::tls::scheme(tls.as_ref());
    let client = match goat_raft::tls::client_builder(tls.as_ref()).timeout(POLL_WAIT + POLL_MARGIN).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the HTTP client; no long polls, heartbeats only");
            return std::future::pending().await;
        }
    };
    let mut backoff = POLL_BACKOFF_MIN;
    // The version the manager polled last answered, with that manager: the
    // next poll names it, so that an answer the heartbeat loop ignored
    // (older) is not sent again at once.
    let mut answered: Option<PollTarget> = None;
    loop {
        let Some(aim) = target.borrow_and_update().clone() else {
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        let after = match &answered {
            Some(last) if last.manager == aim.manager => last.version.clone(),
            _ => aim.version.clone(),
        };
        let url = format!(
            "{scheme}://{}/v1/nodes/{node}/assignments?after={after}&wait={}ms",
            aim.manager,
            POLL_WAIT.as_millis()
        );
        let outcome = match client.get(&url).bearer_auth(&token).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::NOT_MODIFIED => Ok(None),
            Ok(response) if response.status().is_success() => {
                response.json::<HeartbeatReply>().await.map(Some).map_err(|e| format!("bad answer: {e}"))
            }
            Ok(response) => Err(response.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Some(reply)) if reply.version != after && !reply.version.is_empty() => {
                backoff = POLL_BACKOFF_MIN;
                answered = Some(PollTarget { manager: aim.manager.clone(), version: reply.version.clone() });
                if polled.send((aim.manager, reply)).await.is_err() {
                    return;
                }
            }
            Ok(None) => backoff = POLL_BACKOFF_MIN,
            // An unchanged list answered at once: a manager that does not
            // wait. Poll no faster than the backoff.
            Ok(Some(_)) => tokio::time::sleep(POLL_BACKOFF_MIN).await,
            Err(why) => {
                tracing::debug!(manager = %aim.manager, why, retry_in = ?backoff, "long poll failed; heartbeats carry on");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Another manager answers the heartbeats: try it now.
                    Ok(_) = target.wait_for(|t| t.as_ref().is_some_and(|t| t.manager != aim.manager)) => {}
                }
                backoff = (backoff * 2).min(POLL_BACKOFF_MAX);
            }
        }
    }
}

async fn send(client: &reqwest::Client, manager: &str, config: &HeartbeatConfig, heartbeat: &Heartbeat) -> Sent {
    let scheme = goat_raft::tls::scheme(config.tls.as_ref());
    let url = format!("{scheme}://{manager}/v1/nodes/{}/heartbeat", config.node);
    let response = match client.post(&url).bearer_auth(&config.token).json(heartbeat).send().await {
        Ok(response) => response,
        Err(e) => return Sent::Unreachable(e.to_string()),
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Sent::Unauthorized(status.to_string());
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Sent::Unreachable(format!("{status}: {}", body.chars().take(200).collect::<String>()));
    }
    match response.json::<HeartbeatReply>().await {
        Ok(reply) => Sent::Accepted(reply),
        Err(e) => Sent::Unreachable(format!("bad reply: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goat_storage::model::{DesiredStatus, EngineStatus};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-trick HTTP server: answers every request with `status` and
    /// `body`, and keeps the raw requests it got.
    async fn fake_manager(status: &'static str, body: String) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                // Read until the headers and the announced body are in.
                while let Ok(m) = s.read(&mut buf[n..]).await {
                    if m == 0 {
                        break;
                    }
                    n += m;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                log.lock().push(String::from_utf8_lossy(&buf[..n]).to_string());
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn status() -> Arc<Mutex<Status>> {
        Arc::new(Mutex::new(Status::new(EngineStatus { healthy: true, error: None })))
    }

    #[tokio::test]
    async fn heartbeat_moves_past_dead_and_failing_managers() {
        // Nothing listens on the first; the second answers 503; the third works.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (failing, failing_seen) = fake_manager("503 Service Unavailable", "{}".into()).await;
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "100ms"}).to_string();
        let (good, good_seen) = fake_manager("200 OK", reply).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![dead, failing, good],
            token: "secret".into(),
            capacity: Resources { cpu: 2.0, memory: 1 << 30, disk: 1 << 30 },
            interval: Duration::from_millis(100),
            tls: None,
            advertise: None,
        };
        let (tx, mut rx) = watch::channel(None);
        let stored = Arc::new(Mutex::new(None));
        let keep = stored.clone();
        let task = tokio::spawn(heartbeat_loop(config, status(), move |a| *keep.lock() = Some(a.len()), tx));
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| a.is_some())).await.unwrap().unwrap();
        task.abort();
        assert_eq!(*stored.lock(), Some(0));
        assert!(!failing_seen.lock().is_empty());
        let request = good_seen.lock()[0].clone();
        assert!(request.starts_with("POST /v1/nodes/n1/heartbeat "), "{request}");
        assert!(request.to_ascii_lowercase().contains("authorization: bearer secret"), "{request}");
        let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
        let hb: Heartbeat = serde_json::from_str(body).unwrap();
        assert_eq!(hb.capacity.cpu, 2.0);
        assert!(hb.engine.healthy);
    }

    #[tokio::test]
    async fn a_refused_token_is_not_accepted_and_retried_slowly() {
        let (refusing, seen) = fake_manager("401 Unauthorized", "{}".into()).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![refusing],
            token: "wrong".into(),
            capacity: Resources::default(),
            interval: Duration::from_millis(50),
            tls: None,
            advertise: None,
        };
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status(), |_| {}, tx));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        task.abort();
        assert!(rx.borrow().is_none(), "a refused node has no assignments");
        // One try, then it waits UNAUTHORIZED_RETRY instead of hammering.
        assert_eq!(seen.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_changed_report_sends_a_heartbeat_before_the_period() {
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "10s"}).to_string();
        let (manager, seen) = fake_manager("200 OK", reply).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![manager],
            token: "t".into(),
            capacity: Resources::default(),
            interval: Duration::from_secs(10),
            tls: None,
            advertise: None,
        };
        let status = status();
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status.clone(), |_| {}, tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // The fake manager records the request when it arrives; the loop
        // notes the contact only once it has read the answer. Wait for the
        // second, not the first: asserting right after the first raced.
        while status.lock().last_manager_contact.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no first heartbeat accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen.lock().len(), 1, "a 10 s period: one heartbeat so far");
        status.lock().changed.notify_one();
        while seen.lock().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the change did not send a heartbeat early");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }

    #[test]
    fn lists_are_taken_in_index_order_only() {
        let mut order = AssignmentOrder::default();
        assert!(order.accept(5, 1_000));
        assert!(order.accept(5, 1_001), "the same index: the same state, taken");
        assert!(order.accept(9, 1_002));
        // A heartbeat answer computed before the long poll's arrives after it.
        assert!(!order.accept(7, 1_003));
        assert_eq!(order.held(), 9);
        // A new leader still catching up: ignored until it passes the index.
        assert!(!order.accept(8, 1_004));
        assert!(order.accept(10, 1_005));
        // A manager that does not number its answers: taken, as before.
        assert!(order.accept(0, 1_006));
        assert_eq!(order.held(), 10);
    }

    #[test]
    fn a_log_that_started_over_is_followed_after_a_long_run_of_older_lists() {
        let mut order = AssignmentOrder::default();
        assert!(order.accept(1_000, 0));
        let limit = REGRESSION_AFTER.as_millis() as u64;
        // Many answers, but not for long enough: ignored.
        for i in 0..100 {
            assert!(!order.accept(3, 1 + i));
        }
        // Long enough but one answer in between was current: counting restarts.
        assert!(order.accept(1_000, 200));
        let mut now = 300;
        for _ in 0..REGRESSION_ANSWERS - 1 {
            assert!(!order.accept(4, now));
            now += 3_000;
        }
        assert!(now - 300 >= limit);
        assert!(order.accept(4, now), "older for a minute and 30 answers in a row: the log started over");
        assert_eq!(order.held(), 4);
        assert!(order.accept(5, now + 1));
    }

    fn reply(index: u64, version: &str, tasks: u128) -> HeartbeatReply {
        let assignments = (0..tasks)
            .map(|i| Assignment {
                task_id: uuid::Uuid::from_u128(i + 1),
                generation: 1,
                desired: DesiredStatus::Run,
                spec: serde_json::from_str(r#"{"name":"t","image":"i"}"#).unwrap(),
            })
            .collect();
        HeartbeatReply {
            assignments,
            heartbeat_interval: goat_storage::Millis(1_000),
            index,
            version: version.into(),
            unchanged: false,
        }
    }

    #[test]
    fn an_older_list_never_replaces_a_newer_one() {
        let (tx, rx) = watch::channel(None);
        let stored = Arc::new(Mutex::new(Vec::new()));
        let keep = stored.clone();
        let store = move |a: &[Assignment]| keep.lock().push(a.len());
        let mut held = Held { order: AssignmentOrder::default(), version: String::new(), assignments: tx, store };
        // The long poll brings two tasks at index 12...
        assert!(held.take(reply(12, "b2", 2), "m1"));
        // ...then a heartbeat answer computed at index 10 (one task) lands.
        assert!(!held.take(reply(10, "b1", 1), "m1"));
        assert_eq!(rx.borrow().as_ref().map(Vec::len), Some(2));
        assert_eq!(held.version, "b2");
        // The same list again changes nothing and stores nothing.
        assert!(held.take(reply(13, "b2", 2), "m2"));
        assert_eq!(*stored.lock(), [2]);
    }

    #[tokio::test]
    async fn the_long_poll_names_the_list_held_to_the_manager_that_answered() {
        let reply = serde_json::json!({"assignments": [], "heartbeat_interval": "10s", "index": 5, "version": "00aa"});
        let (manager, seen) = fake_manager("200 OK", reply.to_string()).await;
        let config = HeartbeatConfig {
            node: "n1".into(),
            managers: vec![manager],
            token: "t".into(),
            capacity: Resources::default(),
            interval: Duration::from_secs(10),
            tls: None,
            advertise: None,
        };
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(config, status(), |_| {}, tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let poll = loop {
            let found = seen.lock().iter().find(|r| r.starts_with("GET ")).cloned();
            if let Some(request) = found {
                break request;
            }
            assert!(tokio::time::Instant::now() < deadline, "no long poll");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        task.abort();
        assert!(poll.starts_with("GET /v1/nodes/n1/assignments?after=00aa&wait=10000ms "), "{poll}");
        assert!(poll.to_ascii_lowercase().contains("authorization: bearer t"), "{poll}");
    }
}
