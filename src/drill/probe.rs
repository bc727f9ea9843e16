//! The application probe (`goat drill --probe-service NAME`): what the
//! users of a service see while the drill breaks the cluster.
//!
//! It behaves like a client behind a client-side load balancer: one task
//! follows `GET /v1/services/{name}/endpoints?wait=` (a long poll, `stale`
//! so that a follower still answers while there is no leader: a load
//! balancer keeps serving its last list rather than nothing), another sends
//! `POST /` with `{"Msg":"..."}` to the listed copies in turn and checks
//! that the body comes back verbatim (the echo image does that). A request
//! whose first attempt fails (refused, timed out, an error status, a wrong
//! body) is tried once more on another copy, preferring one on another
//! node (a machine that lost one copy likely lost them all); it counts as
//! failed only if that retry fails too.
//!
//! Reported ([`Figures`]): requests, failed after the retry, retried (what
//! a client without a retry would have seen fail), and the longest gap
//! without a successful answer, from the start of the probe to its end
//! (so a probe that never got an answer reports its whole length). The
//! accounting ([`Accounting`]) is pure: it is fed times, not clocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::manager::services::Endpoints;
use parking_lot::Mutex;
use serde::Serialize;

use crate::client::Client;

/// One attempt's timeout: an echo answers in a millisecond; a copy that
/// does not answer within this is as good as gone for a client.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The long poll's wait on `/endpoints`.
const POLL_WAIT: &str = "5s";

/// What the probe measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Figures {
    /// The service probed.
    pub service: String,
    /// Requests sent (each counted once, retried or not).
    pub requests: u64,
    /// Requests whose first attempt and retry both failed.
    pub failed: u64,
    /// Requests whose first attempt failed (the retry may have saved them).
    pub retried: u64,
    /// The longest time without a successful answer (ms).
    pub longest_gap_ms: f64,
    /// How often the list of endpoints changed, and the fewest listed.
    pub endpoint_changes: u64,
    pub min_endpoints: Option<usize>,
    /// The first few failures (`ADDRESS: error`), for people.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// How many failures [`Figures::failures`] keeps.
const KEEP_FAILURES: usize = 5;

/// Counts requests and the gaps between successful answers. Times are
/// offsets from the probe's start, passed in: no clock is read here.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    figures: Figures,
    /// When the last successful answer came (the start counts as one: the
    /// probe starts once the service is healthy).
    last_ok: Duration,
}

impl Accounting {
    pub fn new(service: &str) -> Accounting {
        Accounting { figures: Figures { service: service.to_string(), ..Figures::default() }, last_ok: Duration::ZERO }
    }

    /// One request finished at `at`: `first_failed` if its first attempt
    /// failed, `error` if the retry failed too.
    pub fn request(&mut self, at: Duration, first_failed: bool, error: Option<String>) {
        let f = &mut self.figures;
        f.requests += 1;
        f.retried += u64::from(first_failed);
        match error {
            Some(e) => {
                f.failed += 1;
                if f.failures.len() < KEEP_FAILURES {
                    f.failures.push(e);
                }
            }
            None => self.answered(at),
        }
    }

    fn answered(&mut self, at: Duration) {
        // Answers may be recorded slightly out of order: only a later one
        // closes a gap.
        if at > self.last_ok {
            let gap = at - self.last_ok;
            self.figures.longest_gap_ms = self.figures.longest_gap_ms.max(ms(gap));
            self.last_ok = at;
        }
    }

    /// The list of endpoints changed to `count` copies.
    pub fn endpoints(&mut self, count: usize, changed: bool) {
        let f = &mut self.figures;
        f.endpoint_changes += u64::from(changed);
        f.min_endpoints = Some(f.min_endpoints.map_or(count, |m| m.min(count)));
    }

    /// The figures at `end`: the time since the last answer is a gap too.
    pub fn finish(&self, end: Duration) -> Figures {
        let mut figures = self.figures.clone();
        let tail = end.saturating_sub(self.last_ok);
        figures.longest_gap_ms = figures.longest_gap_ms.max(ms(tail));
        figures
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// One copy as the probe reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node it runs on.
    pub node: String,
    /// `ADDRESS:PORT`.
    pub addr: String,
}

/// Which copies request `n` tries: the `n`th (round-robin), then one on
/// another node if there is one (several nodes may share an address, as
/// the compose deployment's workers do), else the next copy (None: only
/// one).
pub fn targets(endpoints: &[Target], n: usize) -> Option<(usize, Option<usize>)> {
    if endpoints.is_empty() {
        return None;
    }
    let first = n % endpoints.len();
    let other = (1..endpoints.len())
        .map(|k| (first + k) % endpoints.len())
        .find(|i| endpoints[*i].node != endpoints[first].node)
        .or_else(|| (endpoints.len() > 1).then_some((first + 1) % endpoints.len()));
    Some((first, other))
}

/// Every copy an `/endpoints` answer lists, `ADDRESS:PORT` with its node
/// (copies with no published port are left out: a client cannot reach
/// them).
pub fn addresses(answer: &Endpoints) -> Vec<Target> {
    answer
        .endpoints
        .iter()
        .filter(|e| e.port > 0 && !e.address.is_empty())
        .map(|e| {
            let (address, port) = (&e.address, e.port);
            let addr = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
            Target { node: e.node.clone(), addr }
        })
        .collect()
}

/// A running probe.
pub struct Probe {
    stop: Arc<AtomicBool>,
    started: Instant,
    accounting: Arc<Mutex<Accounting>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    /// Starts following `service`'s endpoints through `client` and
    /// sending `rate` requests per second to them.
    pub fn start(client: Client, service: &str, rate: f64) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let accounting = Arc::new(Mutex::new(Accounting::new(service)));
        // None until the first answer of `/endpoints`.
        let list: Arc<Mutex<Option<Vec<Target>>>> = Arc::default();
        let follower =
            tokio::spawn(follow(client, service.to_string(), list.clone(), accounting.clone(), stop.clone()));
        let sender = tokio::spawn(send(list, accounting.clone(), stop.clone(), started, rate));
        Probe { stop, started, accounting, handles: vec![follower, sender] }
    }

    /// Stops the probe; its figures.
    pub async fn finish(mut self) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        let end = self.started.elapsed();
        for h in std::mem::take(&mut self.handles) {
            h.abort();
            let _ = h.await;
        }
        self.accounting.lock().finish(end)
    }
}

impl Drop for Probe {
    /// A drill that fails midway drops its probe: stop sending.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

/// Follows `/endpoints` with a long poll; keeps the last list on errors.
async fn follow(
    client: Client,
    service: String,
    list: Arc<Mutex<Option<Vec<Target>>>>,
    accounting: Arc<Mutex<Accounting>>,
    stop: Arc<AtomicBool>,
) {
    let mut version = String::new();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let path = if version.is_empty() {
            format!("/v1/services/{service}/endpoints?stale=true")
        } else {
            format!("/v1/services/{service}/endpoints?stale=true&wait={POLL_WAIT}&after={version}")
        };
        match client.get(path).timeout(Duration::from_secs(8)).json_answer::<Endpoints>().await {
            Ok(answer) => {
                let changed = answer.version != version;
                version = answer.version.clone();
                let addrs = addresses(&answer);
                tracing::debug!(service, endpoints = ?addrs, changed, "probe: endpoints");
                accounting.lock().endpoints(addrs.len(), changed && !first);
                first = false;
                *list.lock() = Some(addrs);
            }
            Err(e) => {
                tracing::debug!(service, error = %e, "probe: /endpoints did not answer; keeping the last list");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Sends echo requests at `rate`, each retried once on another copy.
async fn send(
    list: Arc<Mutex<Option<Vec<Target>>>>,
    accounting: Arc<Mutex<Accounting>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    rate: f64,
) {
    let Ok(http) = reqwest::Client::builder().no_proxy().timeout(ATTEMPT_TIMEOUT).build() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.clamp(1.0, 1000.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Some(endpoints) = list.lock().clone() else { continue };
        let at = || started.elapsed();
        let Some((first, other)) = targets(&endpoints, n) else {
            // Nothing listed: a failed request (a client has nowhere to go).
            accounting.lock().request(at(), true, Some("no endpoint listed".into()));
            continue;
        };
        let body = format!("{{\"Msg\":\"goat drill probe {n}\"}}");
        n += 1;
        let first_error = echo(&http, &endpoints[first].addr, &body).await.err();
        let error = match (&first_error, other) {
            (None, _) => None,
            (Some(e), None) => Some(e.clone()),
            (Some(_), Some(i)) => echo(&http, &endpoints[i].addr, &body).await.err(),
        };
        accounting.lock().request(at(), first_error.is_some(), error);
    }
}

/// One attempt: `POST /` must answer 2xx with the body it was sent.
async fn echo(http: &reqwest::Client, target: &str, body: &str) -> Result<(), String> {
    let answer = http
        .post(format!("http://{target}/"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{target}: {}", if e.is_timeout() { "timed out".to_string() } else { e.to_string() }))?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| format!("{target}: reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("{target}: {status}"));
    }
    if text != body {
        return Err(format!("{target}: answered {text:?}, not the body sent"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::services::Endpoint;

    fn s(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_longest_gap_runs_between_successful_answers() {
        let mut a = Accounting::new("web");
        a.request(s(100), false, None);
        a.request(s(200), false, None);
        // A copy went away: retried and saved, then failed twice.
        a.request(s(300), true, None);
        a.request(s(1300), true, Some("10.0.0.1:80: timed out".into()));
        a.request(s(2300), true, Some("10.0.0.1:80: timed out".into()));
        a.request(s(2400), false, None);
        a.request(s(2500), false, None);
        let f = a.finish(s(2600));
        assert_eq!((f.requests, f.failed, f.retried), (7, 2, 3));
        assert_eq!(f.longest_gap_ms, 2100.0, "from the answer at 300 ms to the one at 2400 ms");
        assert_eq!(f.failures.len(), 2);
        assert_eq!(f.service, "web");
    }

    #[test]
    fn the_start_and_the_end_bound_a_gap_too() {
        let mut a = Accounting::new("web");
        a.request(s(900), false, None);
        assert_eq!(a.finish(s(1000)).longest_gap_ms, 900.0, "nothing answered before 900 ms");
        let f = a.finish(s(5000));
        assert_eq!(f.longest_gap_ms, 4100.0, "nothing answered after 900 ms");
        // No answer at all: the whole probe is one gap.
        let silent = Accounting::new("web");
        assert_eq!(silent.finish(s(3000)).longest_gap_ms, 3000.0);
        assert_eq!(silent.finish(s(3000)).requests, 0);
    }

    #[test]
    fn an_answer_recorded_late_does_not_open_a_gap() {
        let mut a = Accounting::new("web");
        a.request(s(100), false, None);
        a.request(s(400), false, None);
        a.request(s(350), false, None);
        let f = a.finish(s(450));
        assert_eq!(f.longest_gap_ms, 300.0);
        assert_eq!(f.failed, 0);
    }

    #[test]
    fn failures_kept_are_bounded() {
        let mut a = Accounting::new("web");
        for i in 0..20 {
            a.request(s(i), true, Some(format!("e{i}")));
        }
        let f = a.finish(s(20));
        assert_eq!((f.requests, f.failed, f.retried), (20, 20, 20));
        assert_eq!(f.failures, vec!["e0", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn endpoint_changes_and_the_fewest_listed() {
        let mut a = Accounting::new("web");
        a.endpoints(3, false);
        a.endpoints(2, true);
        a.endpoints(3, true);
        let f = a.finish(s(0));
        assert_eq!((f.endpoint_changes, f.min_endpoints), (2, Some(2)));
    }

    fn t(node: &str, addr: &str) -> Target {
        Target { node: node.into(), addr: addr.into() }
    }

    #[test]
    fn the_retry_prefers_another_node() {
        let list = vec![t("w1", "10.0.0.1:3001"), t("w1", "10.0.0.1:3002"), t("w2", "10.0.0.1:3003")];
        assert_eq!(targets(&list, 0), Some((0, Some(2))));
        assert_eq!(targets(&list, 1), Some((1, Some(2))));
        assert_eq!(targets(&list, 2), Some((2, Some(0))));
        assert_eq!(targets(&list, 5), Some((2, Some(0))));
        // All on one node: the next copy.
        let one = vec![t("w1", "h:1"), t("w1", "h:2")];
        assert_eq!(targets(&one, 1), Some((1, Some(0))));
        assert_eq!(targets(&one[..1], 7), Some((0, None)));
        assert_eq!(targets(&[], 0), None);
    }

    #[test]
    fn addresses_of_an_endpoints_answer() {
        let endpoint = |node: &str, address: &str, port: u16| Endpoint {
            task: uuid::Uuid::new_v4(),
            node: node.into(),
            address: address.into(),
            port,
            version: 1,
            generation: 1,
        };
        let mut answer = Endpoints {
            service: "web".into(),
            version: "ab".into(),
            endpoints: vec![
                endpoint("w1", "172.20.0.1", 32768),
                endpoint("w2", "::1", 32769),
                endpoint("w3", "w3", 0),
                endpoint("w4", "", 32770),
            ],
        };
        assert_eq!(addresses(&answer), vec![t("w1", "172.20.0.1:32768"), t("w2", "[::1]:32769")]);
        answer.endpoints.clear();
        assert!(addresses(&answer).is_empty());
    }
}
