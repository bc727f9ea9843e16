//! The seeded fault schedule: what goes wrong, when, for how long.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::world::World;

#[derive(Debug, Clone)]
pub enum Kind {
    /// Kill a manager (unsynced writes lost), restart it after `down`.
    Kill { target: Option<u64>, down: Duration },
    /// Cut a manager off both ways: from the other managers, and from the
    /// workers and the client too if `everyone`.
    Isolate { target: Option<u64>, everyone: bool },
    /// Cut the link from one manager to another in one direction only.
    OneWay { from: Option<u64>, to_offset: u64 },
    /// Every message takes up to this much longer.
    Delay { extra_ms: u64 },
    /// Every message is lost with this probability.
    Loss { p: f64 },
    /// Requests are delivered twice (the copy later) with this probability.
    Duplicate { p: f64 },
    /// A manager's votes and appends wait this long (a slow fsync).
    SlowDisk { target: Option<u64>, delay: Duration },
    /// A manager's wall clock jumps (and stays jumped).
    ClockJump { target: Option<u64>, by_ms: i64 },
    /// A worker stops heartbeating (SIGSTOP) and comes back.
    Freeze { worker: usize },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Kill { .. } => "kill",
            Kind::Isolate { everyone: true, .. } => "isolate",
            Kind::Isolate { everyone: false, .. } => "isolate-from-managers",
            Kind::OneWay { .. } => "one-way-partition",
            Kind::Delay { .. } => "delay",
            Kind::Loss { .. } => "loss",
            Kind::Duplicate { .. } => "duplicate",
            Kind::SlowDisk { .. } => "slow-disk",
            Kind::ClockJump { .. } => "clock-jump",
            Kind::Freeze { .. } => "freeze-worker",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub at: Duration,
    pub hold: Duration,
    pub kind: Kind,
}

/// One to six faults, each starting and ending within the fault phase.
/// Targets are often "whoever leads when it starts".
pub fn schedule(w: &World) -> Vec<Fault> {
    let phase = w.opts.fault_phase.as_millis() as u64;
    let (managers, workers) = (w.opts.managers, w.opts.workers);
    let count = w.random(|r| r.gen_range(1..=6));
    (0..count)
        .map(|_| {
            w.random(|r| {
                let target = |r: &mut rand::rngs::StdRng| {
                    if r.gen_bool(0.6) {
                        None
                    } else {
                        Some(r.gen_range(1..=managers))
                    }
                };
                let kind = match r.gen_range(0..100) {
                    0..=17 => Kind::Kill { target: target(r), down: Duration::from_millis(r.gen_range(200..8_000)) },
                    18..=37 => Kind::Isolate { target: target(r), everyone: r.gen_bool(0.6) },
                    38..=47 => Kind::OneWay { from: target(r), to_offset: r.gen_range(1..managers) },
                    48..=55 => Kind::Delay { extra_ms: r.gen_range(5..300) },
                    56..=62 => Kind::Loss { p: r.gen_range(0.02..0.3) },
                    63..=70 => Kind::Duplicate { p: r.gen_range(0.05..0.5) },
                    71..=80 => Kind::SlowDisk { target: target(r), delay: Duration::from_millis(r.gen_range(10..400)) },
                    81..=88 => Kind::ClockJump {
                        target: target(r),
                        by_ms: if r.gen_bool(0.5) { 1 } else { -1 } * r.gen_range(1_000..120_000),
                    },
                    _ => Kind::Freeze { worker: r.gen_range(0..workers) },
                };
                let hold = match kind {
                    Kind::Kill { down, .. } => down,
                    Kind::ClockJump { .. } => Duration::ZERO,
                    _ => Duration::from_millis(r.gen_range(300..14_000)),
                };
                let latest = phase.saturating_sub(hold.as_millis() as u64 + 500).max(1_500);
                let at = Duration::from_millis(r.gen_range(1_000..=latest));
                Fault { at, hold, kind }
            })
        })
        .collect()
}

/// Waits for the fault's time, applies it, holds it, ends it.
pub async fn inject(w: Arc<World>, fault: Fault) {
    tokio::time::sleep(fault.at).await;
    let id = w.fault_id();
    let name = fault.kind.name();
    match fault.kind {
        Kind::Kill { target, down } => {
            let Some(m) = w.resolve(target) else { return };
            w.note_fault(name, format!("manager {m} for {down:?}"));
            w.kill_manager(m).await;
            tokio::time::sleep(down).await;
            w.restart_manager(m).await;
        }
        Kind::Isolate { target, everyone } => {
            let Some(m) = w.resolve(target) else { return };
            w.note_fault(name, format!("manager {m} for {:?}", fault.hold));
            let mut others = w.manager_addrs();
            others.retain(|o| *o != m);
            if everyone {
                others.extend(w.worker_addrs());
                others.push(200);
            }
            let cuts = others.iter().flat_map(|o| [(m, *o), (*o, m)]).collect();
            w.set_cuts(id, Some(cuts));
            tokio::time::sleep(fault.hold).await;
            w.set_cuts(id, None);
            w.trace(format!("fault {name} on {m} ends"));
        }
        Kind::OneWay { from, to_offset } => {
            let Some(a) = w.resolve(from) else { return };
            let n = w.opts.managers;
            let b = (a - 1 + to_offset) % n + 1;
            w.note_fault(name, format!("{a} -> {b} for {:?}", fault.hold));
            w.set_cuts(id, Some(vec![(a, b)]));
            tokio::time::sleep(fault.hold).await;
            w.set_cuts(id, None);
        }
        Kind::Delay { extra_ms } => {
            w.note_fault(name, format!("+{extra_ms}ms for {:?}", fault.hold));
            w.set_delay(id, Some(extra_ms));
            tokio::time::sleep(fault.hold).await;
            w.set_delay(id, None);
        }
        Kind::Loss { p } => {
            w.note_fault(name, format!("{p:.2} for {:?}", fault.hold));
            w.set_loss(id, Some(p));
            tokio::time::sleep(fault.hold).await;
            w.set_loss(id, None);
        }
        Kind::Duplicate { p } => {
            w.note_fault(name, format!("{p:.2} for {:?}", fault.hold));
            w.set_dup(id, Some(p));
            tokio::time::sleep(fault.hold).await;
            w.set_dup(id, None);
        }
        Kind::SlowDisk { target, delay } => {
            let Some(m) = w.resolve(target) else { return };
            w.note_fault(name, format!("manager {m} {delay:?} for {:?}", fault.hold));
            w.set_disk_delay(m, delay);
            tokio::time::sleep(fault.hold).await;
            w.set_disk_delay(m, Duration::ZERO);
        }
        Kind::ClockJump { target, by_ms } => {
            let Some(m) = w.resolve(target) else { return };
            w.note_fault(name, format!("manager {m} by {by_ms}ms"));
            w.jump_clock(m, by_ms);
        }
        Kind::Freeze { worker } => {
            w.note_fault(name, format!("w{worker} for {:?}", fault.hold));
            w.set_frozen(worker, true);
            tokio::time::sleep(fault.hold).await;
            w.set_frozen(worker, false);
        }
    }
}
