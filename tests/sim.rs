//! The deterministic simulation of Goat's control plane (docs/simulation.md).
//!
//! Each seed runs in a child process of this test binary (the first and
//! only tokio runtime there, so every source of randomness is a function of
//! the seed, see [`getrandom`]), on a current-thread runtime with paused
//! time. The parent runs seeds two at a time and prints the figures.
//!
//! - `GOAT_SIM_SEEDS=N` (default 1,000; 100,000 for a long run): how many
//!   seeds `simulate_many_seeds` runs, from `GOAT_SIM_FIRST_SEED` (default 1).
//! - `GOAT_SIM_WATCHDOG=S` (default 180): a child that has not ended after S
//!   seconds of real time reports "stuck" with its trace tail.
//! - `GOAT_SIM_SEED=S`: run only seed S (both modes' verdicts printed, with
//!   the trace tail on failure).
//! - `GOAT_SIM_JOBS=J` (default 2): child processes at once.

#[path = "sim/disk.rs"]
mod disk;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/world.rs"]
mod world;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use world::{Mode, Options, Report, World};

// ---- randomness under the seed -----------------------------------------------

thread_local! {
    static ENTROPY: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The OS random source, replaced for this test binary: a splitmix64 stream
/// per thread, started from the seed in `GOAT_SIM_RUN` (or 0). std's
/// `RandomState` (HashMap keys) and tokio's runtime seed (which hashes one
/// `RandomState`) read it, so a child process that runs one seed makes the
/// same choices every time. (openraft's election timeout comes from
/// `rand::thread_rng`, which reads the kernel through a raw syscall; the
/// sim gives each Raft a one-value timeout range drawn from its seed
/// instead.)
///
/// # Safety
///
/// As getrandom(2): `buf` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, _flags: u32) -> isize {
    ENTROPY.with(|state| {
        let mut s = state.get().unwrap_or_else(|| {
            std::env::var("GOAT_SIM_RUN")
                .ok()
                .and_then(|v| v.split(':').next().and_then(|s| s.parse().ok()))
                .unwrap_or(0u64)
                ^ 0x5eed_5eed_5eed_5eed
        });
        for i in 0..len {
            s = s.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            // SAFETY: the caller gives `len` writable bytes at `buf`.
            unsafe { *buf.add(i) = (z ^ (z >> 31)) as u8 };
        }
        state.set(Some(s));
    });
    len as isize
}

// ---- one run ----------------------------------------------------------------------

/// What a child is asked to run: `seed:mode[:broken]`.
fn run_spec(seed: u64, mode: Mode, broken: bool) -> String {
    format!("{seed}:{}{}", mode.name(), if broken { ":broken" } else { "" })
}

fn parse_spec(spec: &str) -> Options {
    let mut parts = spec.split(':');
    let seed = parts.next().and_then(|s| s.parse().ok()).expect("GOAT_SIM_RUN seed");
    let mode = match parts.next() {
        Some("legacy") => Mode::Legacy,
        _ => Mode::Fixed,
    };
    let mut opts = Options::new(seed, mode);
    opts.broken_flush = parts.next() == Some("broken");
    opts
}

/// Runs one seed here, in this process. A run that takes more than
/// `GOAT_SIM_WATCHDOG` seconds of real time (a livelock at one virtual
/// instant) or ten minutes of virtual time is reported with its trace.
fn run_here(opts: Options) -> Report {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("sim runtime");
    // Inside the runtime: the world's clock starts at `Instant::now()`,
    // which outside a runtime is the real clock, not the paused one, and
    // the gap between the two (a preemption under load) shifted every
    // virtual timestamp: the same seed then replayed differently.
    let world = runtime.block_on(async { World::new(opts.clone()) });
    let watched = world.clone();
    let watchdog: u64 = std::env::var("GOAT_SIM_WATCHDOG").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(watchdog));
        let (at, tail) = watched.tail();
        let o = &watched.opts;
        let mut r =
            Report { seed: o.seed, mode: o.mode.name().into(), broken_flush: o.broken_flush, ..Default::default() };
        r.violations.push(format!("stuck: no end after {watchdog} s of real time (virtual time {at} ms)"));
        r.tail = tail;
        println!("\nGOATSIM {}", serde_json::to_string(&r).expect("report json"));
        std::process::exit(1);
    });
    runtime.block_on(async {
        let limit = std::time::Duration::from_secs(600);
        match tokio::time::timeout(limit, world.clone().run()).await {
            Ok(report) => report,
            Err(_) => {
                let (at, tail) = world.tail();
                let mut r = Report {
                    seed: opts.seed,
                    mode: opts.mode.name().into(),
                    broken_flush: opts.broken_flush,
                    ..Default::default()
                };
                r.violations.push(format!("stuck: no end after {at} ms of virtual time"));
                r.tail = tail;
                r
            }
        }
    })
}

/// Not a test on its own: the child process's entry point.
#[test]
fn sim_child() {
    let Ok(spec) = std::env::var("GOAT_SIM_RUN") else { return };
    let report = run_here(parse_spec(&spec));
    println!("\nGOATSIM {}", serde_json::to_string(&report).expect("report json"));
}

/// Runs each spec in its own child process, `jobs` at a time (progress on
/// stderr every 500 runs).
fn run_children(specs: &[String], jobs: usize) -> Vec<Report> {
    let exe = std::env::current_exe().expect("test binary path");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: parking_lot::Mutex<Vec<Option<Report>>> = parking_lot::Mutex::new(vec![None; specs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(spec) = specs.get(i) else { return };
                let report = run_child(&exe, spec);
                let mut results = results.lock();
                results[i] = Some(report);
                let done = results.iter().filter(|r| r.is_some()).count();
                if done % 500 == 0 && specs.len() > 500 {
                    eprintln!("simulation: {done}/{} runs done", specs.len());
                }
            });
        }
    });
    results.into_inner().into_iter().map(|r| r.expect("every run reported")).collect()
}

fn run_child(exe: &std::path::Path, spec: &str) -> Report {
    let out = Command::new(exe)
        .args(["sim_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env("GOAT_SIM_RUN", spec)
        .output()
        .expect("running a sim child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.find("GOATSIM ").map(|i| &l[i + 8..])) {
        Some(json) => serde_json::from_str(json).expect("sim report"),
        None => {
            let opts = parse_spec(spec);
            let mut r = Report {
                seed: opts.seed,
                mode: opts.mode.name().into(),
                broken_flush: opts.broken_flush,
                ..Default::default()
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr.chars().rev().take(3_000).collect::<Vec<_>>().into_iter().rev().collect();
            r.violations.push(format!("the run crashed ({}): {tail}", out.status));
            r
        }
    }
}

fn jobs() -> usize {
    std::env::var("GOAT_SIM_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(2)
}

fn print_failure(r: &Report) {
    eprintln!("seed {} ({}{}) FAILED:", r.seed, r.mode, if r.broken_flush { ", broken flush" } else { "" });
    for v in &r.violations {
        eprintln!("  {v}");
    }
    for line in r.tail.iter().rev().take(60).rev() {
        eprintln!("    | {line}");
    }
    eprintln!(
        "  replay: GOAT_SIM_SEED={}{}{} cargo test --test sim simulate_many_seeds -- --nocapture",
        r.seed,
        if r.mode == "legacy" { " GOAT_SIM_MODE=legacy" } else { "" },
        if r.broken_flush { " GOAT_SIM_BROKEN_FLUSH=1" } else { "" },
    );
}

// ---- the tests ----------------------------------------------------------------------

/// ≥ 1,000 seeds (`GOAT_SIM_SEEDS`), each with its own fault schedule, every
/// invariant checked; prints the figures.
#[test]
fn simulate_many_seeds() {
    let mode = match std::env::var("GOAT_SIM_MODE").as_deref() {
        Ok("legacy") => Mode::Legacy,
        _ => Mode::Fixed,
    };
    let broken = std::env::var("GOAT_SIM_BROKEN_FLUSH").is_ok_and(|v| v == "1");
    let seeds: Vec<u64> = match std::env::var("GOAT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("GOAT_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("GOAT_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000);
            let first: u64 = std::env::var("GOAT_SIM_FIRST_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
            (first..first + n).collect()
        }
    };
    let started = Instant::now();
    let specs: Vec<String> = seeds.iter().map(|s| run_spec(*s, mode, broken)).collect();
    let reports = run_children(&specs, jobs());
    let wall = started.elapsed();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sim_ms, mut messages, mut lost, mut dups, mut acked, mut downs, mut shared) = (0, 0, 0, 0, 0, 0, 0);
    for r in &reports {
        for (k, v) in &r.faults {
            *faults.entry(k.clone()).or_default() += v;
        }
        sim_ms += r.sim_ms;
        messages += r.messages;
        lost += r.lost;
        dups += r.duplicated;
        acked += r.acked;
        downs += r.nodes_marked_down;
        shared += r.shared_terms;
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.violations.is_empty()).collect();
    println!(
        "simulation ({} mode{}): {} seeds, {:.0} simulated s, {} faults injected {:?}, {} messages ({} lost, {} duplicated), {} acknowledged writes, {} nodes marked down, {} terms with two leaders, wall {:.1} s ({:.0}x real time), {} failed",
        mode.name(),
        if broken { ", broken flush" } else { "" },
        reports.len(),
        sim_ms as f64 / 1000.0,
        faults.values().sum::<u64>(),
        faults,
        messages,
        lost,
        dups,
        acked,
        downs,
        shared,
        wall.as_secs_f64(),
        sim_ms as f64 / 1000.0 / wall.as_secs_f64(),
        failed.len()
    );
    if seeds.len() == 1 {
        let r = &reports[0];
        println!("seed {} trace {} ({} events)", r.seed, r.trace_hash, r.trace_events);
    }
    for r in failed.iter().take(5) {
        print_failure(r);
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {:?}",
        failed.len(),
        reports.len(),
        failed.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
}

/// Replay is exact: the same seed, run twice in two processes, gives the
/// same trace (every message leg, fault, proposal, applied digest).
#[test]
fn a_seed_replays_exactly() {
    for seed in [7, 1234] {
        let spec = run_spec(seed, Mode::Fixed, false);
        let reports = run_children(&[spec.clone(), spec], 2);
        println!(
            "seed {seed}: traces {} and {} ({} events)",
            reports[0].trace_hash, reports[1].trace_hash, reports[0].trace_events
        );
        assert!(reports[0].trace_events > 1_000, "the run did something");
        assert_eq!(reports[0].trace_hash, reports[1].trace_hash, "seed {seed} replayed differently");
        assert_eq!(reports[0].violations, reports[1].violations);
    }
}

/// The seeds below were found by sweeping (`GOAT_SIM_MODE=legacy` and
/// `GOAT_SIM_BROKEN_FLUSH=1` runs of `simulate_many_seeds`). A change to the
/// simulator that draws its random choices differently moves every
/// schedule: then sweep again and put the new seeds here.
const LEGACY_DEPOSED_LEADER_SEED: u64 = 34;
const BROKEN_FLUSH_SEED: u64 = 1;

/// The deposed-leader defect of the trustworthy-core issue (part 1, point
/// 2): the real leader loops on the "legacy" host (unfenced proposals
/// forwarded to whoever leads, no quorum lease) show it; on the production
/// host the same schedule passes. Seed 34: the leader (manager 3) is cut off from
/// everyone for longer than the node deadline; its liveness loop judges both
/// workers down from its frozen view; at the heal its pending proposal is
/// forwarded to the new leader and committed: both nodes marked down, their
/// tasks requeued, although both workers heard the majority all along.
#[test]
fn legacy_deposed_leader_is_caught() {
    let seed = LEGACY_DEPOSED_LEADER_SEED;
    let reports = run_children(&[run_spec(seed, Mode::Legacy, false), run_spec(seed, Mode::Fixed, false)], 2);
    let (legacy, fixed) = (&reports[0], &reports[1]);
    println!(
        "seed {seed} legacy: {:?}; {} nodes marked down, {} tasks requeued",
        legacy.violations, legacy.nodes_marked_down, legacy.requeued_tasks
    );
    println!(
        "seed {seed} fixed: {:?}; {} nodes marked down, {} tasks requeued",
        fixed.violations, fixed.nodes_marked_down, fixed.requeued_tasks
    );
    assert!(
        legacy.violations.iter().any(|v| v.contains("marked down") && v.contains("majority")),
        "legacy mode should mark a node down that the majority hears: {:?}",
        legacy.violations
    );
    assert!(
        legacy.violations.iter().any(|v| v.contains("deposed leader decided")),
        "legacy mode should commit a deposed leader's decision: {:?}",
        legacy.violations
    );
    assert!(legacy.requeued_tasks > 0, "the legacy run requeues tasks");
    assert!(fixed.violations.is_empty(), "fixed mode passes seed {seed}: {:?}", fixed.violations);
    assert_eq!((fixed.nodes_marked_down, fixed.requeued_tasks), (0, 0));
}

/// Acknowledged before durable: on an engine whose flush does nothing, a
/// killed manager comes back without entries it had acknowledged, and the
/// simulator reports the lost write. The same seed passes on the real
/// in-memory engine (which keeps what was flushed).
#[test]
fn lost_unsynced_write_is_caught() {
    let seed = BROKEN_FLUSH_SEED;
    let reports = run_children(&[run_spec(seed, Mode::Fixed, true), run_spec(seed, Mode::Fixed, false)], 2);
    let (broken, real) = (&reports[0], &reports[1]);
    println!("seed {seed} with a flush that does nothing: {:?}", broken.violations);
    assert!(
        broken.violations.iter().any(|v| v.contains("lost") && v.contains("acknowledged")),
        "the broken engine should lose an acknowledged write: {:?}",
        broken.violations
    );
    assert!(real.violations.is_empty(), "the real engine passes seed {seed}: {:?}", real.violations);
}
