//! `goat bench raft --planned`: planned failovers under write load.
//!
//! - Hand-overs: SIGTERM of the leader (it hands leadership to the most
//!   up-to-date follower before exiting) while 16 clients write through a
//!   follower; the figure is the longest any write waited across the
//!   hand-over (target: 100 ms) and the writes that failed (target: 0).
//! - Rolling restart: each manager in turn (the leader last) is SIGTERMed,
//!   restarted and caught up, while clients write through the managers that
//!   are up (a client with several endpoints stops sending to one it was
//!   told is going away); the figure is the writes that failed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;

use super::procs::{task_body, BenchCluster, GoatCluster};
use super::stats::ms;

/// What one window of load saw.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub ok: usize,
    pub failed: usize,
    pub max_latency: Duration,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
}

/// Planned-failover figures.
#[derive(Debug, Default)]
pub struct PlannedResult {
    /// The same load for as long, without a hand-over: the peer.
    pub baseline: Vec<Window>,
    pub handovers: Vec<Window>,
    pub rolling: Window,
}

/// Which members the load may use (false: going away).
type Up = Arc<Vec<AtomicBool>>;

/// What the load needs of the cluster: its URLs and payload size (so that
/// the cluster itself stays free to be restarted meanwhile).
struct Endpoints {
    urls: Vec<String>,
    size: usize,
}

impl Endpoints {
    fn of(cluster: &GoatCluster) -> Endpoints {
        Endpoints { urls: (0..cluster.members()).map(|m| cluster.client_url(m)).collect(), size: cluster.size() }
    }
}

/// Writes with `concurrency` clients through the members marked up, until
/// `stop`.
async fn load(to: &Endpoints, http: &reqwest::Client, up: &Up, concurrency: usize, stop: &AtomicBool) -> Window {
    let next = AtomicUsize::new(0);
    let clients = (0..concurrency).map(|client| {
        let next = &next;
        async move {
            let mut w = Window::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let members: Vec<usize> = (0..up.len()).filter(|m| up[*m].load(Ordering::Relaxed)).collect();
                let member = members[next.fetch_add(1, Ordering::Relaxed) % members.len()];
                let sent = Instant::now();
                let body = task_body(to.size, 700_000_000 + client * 1_000_000 + i);
                let answer = http.post(format!("{}/v1/tasks", to.urls[member])).json(&body).send().await;
                i += 1;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        w.ok += 1;
                    }
                    other => {
                        w.failed += 1;
                        if w.errors.len() < 3 {
                            w.errors.push(match other {
                                Ok(r) => format!("manager {}: {}", member + 1, r.status()),
                                Err(e) => format!("manager {}: {e}", member + 1),
                            });
                        }
                    }
                }
                w.max_latency = w.max_latency.max(sent.elapsed());
            }
            w
        }
    });
    join_all(clients).await.into_iter().fold(Window::default(), |mut all, w| {
        all.ok += w.ok;
        all.failed += w.failed;
        all.max_latency = all.max_latency.max(w.max_latency);
        let room = 3usize.saturating_sub(all.errors.len());
        all.errors.extend(w.errors.into_iter().take(room));
        all
    })
}

fn all_up(n: usize) -> Up {
    Arc::new((0..n).map(|_| AtomicBool::new(true)).collect())
}

/// SIGTERMs `member`, waits (without blocking) for it to exit, restarts it
/// and waits until it is back. The load goes elsewhere meanwhile.
async fn restart(cluster: &mut GoatCluster, http: &reqwest::Client, up: &Up, member: usize) -> anyhow::Result<()> {
    up[member].store(false, Ordering::Relaxed);
    // Let the writes already sent to it come back before it goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.terminate(member);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.reap(member) {
        anyhow::ensure!(Instant::now() < deadline, "manager {} did not exit on SIGTERM", member + 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.start(member)?;
    // Back: it answers, and agrees with the others on a leader.
    cluster
        .wait_leader(http, Duration::from_secs(30))
        .await
        .with_context(|| format!("manager {} did not come back", member + 1))?;
    // Caught up enough to serve: give it a moment more before the load
    // uses it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    up[member].store(true, Ordering::Relaxed);
    Ok(())
}

/// Runs `handovers` SIGTERM hand-overs, then one rolling restart.
pub async fn measure(
    cluster: &mut GoatCluster,
    http: &reqwest::Client,
    handovers: usize,
    concurrency: usize,
) -> anyhow::Result<PlannedResult> {
    let to = Endpoints::of(cluster);
    let mut result = PlannedResult::default();
    for n in 0..handovers {
        let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
        let up = all_up(cluster.members());
        up[leader].store(false, Ordering::Relaxed);
        // The peer: the same load through the same members, as long as a
        // hand-over window lasts (about 3 s), with no hand-over.
        let stop = AtomicBool::new(false);
        let (baseline, ()) = tokio::join!(load(&to, http, &up, concurrency, &stop), async {
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            stop.store(true, Ordering::Relaxed);
        });
        eprintln!("goat: no hand-over {}: longest write {:?}, {} ok", n + 1, baseline.max_latency, baseline.ok);
        result.baseline.push(baseline);
        let stop = AtomicBool::new(false);
        let (window, restarted) = tokio::join!(load(&to, http, &up, concurrency, &stop), async {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            let restarted = restart(cluster, http, &up, leader).await;
            up[leader].store(false, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            restarted
        });
        restarted?;
        eprintln!(
            "goat: hand-over {}: longest write {:?}, {} ok, {} failed {:?}",
            n + 1,
            window.max_latency,
            window.ok,
            window.failed,
            window.errors
        );
        result.handovers.push(window);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Rolling restart: followers first, the leader last.
    let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
    let mut order: Vec<usize> = (0..cluster.members()).filter(|m| *m != leader).collect();
    order.push(leader);
    let up = all_up(cluster.members());
    let stop = AtomicBool::new(false);
    let (window, restarted) = tokio::join!(load(&to, http, &up, concurrency, &stop), async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let mut outcome = Ok(());
        for member in order {
            outcome = restart(cluster, http, &up, member).await;
            if outcome.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.store(true, Ordering::Relaxed);
        outcome
    });
    restarted?;
    eprintln!(
        "goat: rolling restart: longest write {:?}, {} ok, {} failed {:?}",
        window.max_latency, window.ok, window.failed, window.errors
    );
    result.rolling = window;
    Ok(result)
}

/// The report's section.
pub fn report(out: &mut String, r: &PlannedResult, concurrency: usize) {
    let _ = writeln!(
        out,
        "\n### Planned failover: SIGTERM of the leader under load ({concurrency} writers through the others)\n"
    );
    let _ = writeln!(
        out,
        "| hand-over | longest write | writes ok | writes failed | peer: longest write, same load, no hand-over |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    for (i, w) in r.handovers.iter().enumerate() {
        let peer = r.baseline.get(i).map(|b| ms(b.max_latency)).unwrap_or_default();
        let _ = writeln!(out, "| {} | {} | {} | {} | {} |", i + 1, ms(w.max_latency), w.ok, w.failed, peer);
    }
    let worst = r.handovers.iter().map(|w| w.max_latency).max().unwrap_or_default();
    let peer = r.baseline.iter().map(|w| w.max_latency).max().unwrap_or_default();
    let _ = writeln!(
        out,
        "\nLongest write across all hand-overs: {} (target ≤ 100 ms); without hand-over, same load: {}.",
        ms(worst),
        ms(peer)
    );
    let _ = writeln!(
        out,
        "Rolling restart of all three managers: {} writes ok, {} failed (target 0), longest {}.",
        r.rolling.ok,
        r.rolling.failed,
        ms(r.rolling.max_latency)
    );
}
