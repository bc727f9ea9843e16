//! The search: per task id, Wing & Gong's backtracking over the calls that
//! may come next, memoized on (operations linearized, model state) as in
//! Lowe's and Porcupine's versions, over a linked list of call and return
//! events in real-time order.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::op::{Call, Operation, Outcome, Seen};

/// The checker's answer.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Operations in the history.
    pub operations: usize,
    /// Tasks whose operations were searched (those created in the history).
    pub tasks: usize,
    /// Per-task operations searched (a list counts once per task).
    pub searched: usize,
    /// Operations on tasks the history never created (not checked).
    pub foreign: usize,
    pub linearizable: bool,
    /// The first violation (by the time of the operation that could not be
    /// placed), if any.
    pub violation: Option<Violation>,
}

/// A task whose operations have no linearization.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Violation {
    pub task: String,
    /// The operation no order could place: its answer contradicts every
    /// state the task could be in by then.
    pub op: Operation,
    /// The state the deepest attempt had reached before it.
    pub state_before: Seen,
    /// The operations around it: those concurrent with it, and the last
    /// ones placed before it in the deepest attempt, by invoke time.
    pub window: Vec<Operation>,
}

impl Verdict {
    /// `history: N operations checked, linearizable` (or the violation).
    pub fn summary(&self) -> String {
        match &self.violation {
            None => format!(
                "history: {} operations checked, linearizable ({} tasks, {} per-task operations searched{})",
                self.operations,
                self.tasks,
                self.searched,
                if self.foreign > 0 { format!(", {} on foreign tasks skipped", self.foreign) } else { String::new() }
            ),
            Some(v) => {
                let mut text = format!(
                    "history: {} operations checked, NOT linearizable: task {}: {} cannot follow state {:?} (window of {} operations):",
                    self.operations,
                    v.task,
                    v.op.describe(),
                    v.state_before,
                    v.window.len()
                )
                .replace("Absent", "absent")
                .replace("Live", "live")
                .replace("Stopped", "stopped");
                for op in &v.window {
                    text.push_str("\n    ");
                    text.push_str(&op.describe());
                }
                text
            }
        }
    }
}

/// One task's view of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A create (ok or unknown): absent → live; an existing task stays as
    /// it is (a resend with the same key answers the stored task).
    Create,
    /// A read (or a list's view of this task) that saw this.
    Read(Seen),
    /// A stop that found the task.
    Stop,
    /// A stop answered 404.
    StopAbsent,
    /// A stop with an unknown outcome.
    StopMaybe,
}

fn step(state: Seen, s: Step) -> Option<Seen> {
    match (s, state) {
        (Step::Create, Seen::Absent) => Some(Seen::Live),
        (Step::Create, other) => Some(other),
        (Step::Read(seen), state) => (seen == state).then_some(state),
        (Step::Stop, Seen::Absent) => None,
        (Step::Stop, _) => Some(Seen::Stopped),
        (Step::StopAbsent, Seen::Absent) => Some(Seen::Absent),
        (Step::StopAbsent, _) => None,
        (Step::StopMaybe, Seen::Absent) => Some(Seen::Absent),
        (Step::StopMaybe, _) => Some(Seen::Stopped),
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyOp {
    /// Index into the history.
    op: usize,
    step: Step,
    invoke: u64,
    /// `u64::MAX` for an unknown outcome: it may take effect at any time.
    ret: u64,
}

/// The per-task view of one operation, if it has one.
fn key_step(op: &Operation, task: &str) -> Option<Step> {
    match (&op.call, op.outcome) {
        (_, Outcome::Failed) => None,
        (Call::Create { .. }, _) => Some(Step::Create),
        (Call::Read { .. }, Outcome::Ok) => op.seen.map(Step::Read),
        (Call::Read { .. }, _) => None,
        (Call::Stop { .. }, Outcome::Ok) => {
            Some(if op.seen == Some(Seen::Absent) { Step::StopAbsent } else { Step::Stop })
        }
        (Call::Stop { .. }, _) => Some(Step::StopMaybe),
        (Call::List, Outcome::Ok) => {
            op.listed.as_ref().map(|l| Step::Read(l.get(task).copied().unwrap_or(Seen::Absent)))
        }
        (Call::List, _) => None,
    }
}

/// Checks a whole history.
pub fn check(history: &[Operation]) -> Verdict {
    let mut per_task: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if let Call::Create { task } = &op.call {
            per_task.entry(task.as_str()).or_default().push(i);
        }
    }
    let mut foreign = 0;
    let mut lists = Vec::new();
    for (i, op) in history.iter().enumerate() {
        match &op.call {
            Call::Create { .. } => {}
            Call::List => lists.push(i),
            call => match call.task().and_then(|t| per_task.get_mut(t)) {
                Some(ops) => ops.push(i),
                None => foreign += 1,
            },
        }
    }
    let mut verdict = Verdict { operations: history.len(), tasks: per_task.len(), foreign, ..Verdict::default() };
    let mut first: Option<Violation> = None;
    for (task, indices) in &per_task {
        let mut ops: Vec<KeyOp> = Vec::new();
        for &i in indices.iter().chain(&lists) {
            let op = &history[i];
            let Some(step) = key_step(op, task) else { continue };
            let ret = match (op.outcome, op.complete_us) {
                (Outcome::Ok, Some(c)) => c.max(op.invoke_us),
                _ => u64::MAX,
            };
            ops.push(KeyOp { op: i, step, invoke: op.invoke_us, ret });
        }
        verdict.searched += ops.len();
        if let Err(failure) = search(&ops) {
            let violation = describe(history, task, &ops, failure);
            let earlier = first.as_ref().is_none_or(|f| violation.op.invoke_us < f.op.invoke_us);
            if earlier {
                first = Some(violation);
            }
        }
    }
    verdict.linearizable = first.is_none();
    verdict.violation = first;
    verdict
}

/// Where the deepest attempt got stuck.
struct Failure {
    /// The key op whose return came before any order could place it.
    stuck: usize,
    state: Seen,
    /// The key ops placed before it, in order.
    placed: Vec<usize>,
}

const NIL: usize = usize::MAX;

/// Wing & Gong with memoization. `Err` when no linearization exists.
fn search(ops: &[KeyOp]) -> Result<(), Failure> {
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    // Events: node 0 is the head; nodes 1..=2n are calls and returns in
    // time order (a call before a return at the same instant: concurrent).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (k, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, k));
        events.push((op.ret, true, k));
    }
    events.sort_by_key(|&(t, is_return, k)| (t, is_return, k));
    let size = events.len() + 1;
    let mut next = vec![NIL; size];
    let mut prev = vec![NIL; size];
    let mut node_op = vec![0usize; size];
    let mut is_call = vec![false; size];
    let mut return_of = vec![NIL; n];
    for (pos, &(_, is_return, k)) in events.iter().enumerate() {
        let node = pos + 1;
        node_op[node] = k;
        is_call[node] = !is_return;
        if is_return {
            return_of[k] = node;
        }
        prev[node] = node - 1;
        next[node - 1] = node;
    }
    let match_of = |node: usize| return_of[node_op[node]];

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Seen)> = HashSet::new();
    let mut stack: Vec<(usize, Seen)> = Vec::new();
    let mut state = Seen::Absent;
    let mut entry = next[0];
    let mut deepest: Option<Failure> = None;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        next[prev[call]] = next[call];
        if next[call] != NIL {
            prev[next[call]] = prev[call];
        }
        next[prev[ret]] = next[ret];
        if next[ret] != NIL {
            prev[next[ret]] = prev[ret];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        if next[ret] != NIL {
            prev[next[ret]] = ret;
        }
        next[prev[ret]] = ret;
        if next[call] != NIL {
            prev[next[call]] = call;
        }
        next[prev[call]] = call;
    };

    while next[0] != NIL {
        if entry == NIL {
            // Unreachable: every call's return follows it in the list.
            break;
        }
        let k = node_op[entry];
        if is_call[entry] {
            if let Some(new_state) = step(state, ops[k].step) {
                linearized[k / 64] |= 1 << (k % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    lift(&mut next, &mut prev, entry, match_of(entry));
                    entry = next[0];
                    continue;
                }
                linearized[k / 64] &= !(1 << (k % 64));
            }
            entry = next[entry];
        } else {
            // A return whose call is not placed yet: undo the last choice.
            if deepest.as_ref().is_none_or(|d| stack.len() >= d.placed.len()) {
                deepest =
                    Some(Failure { stuck: k, state, placed: stack.iter().map(|&(node, _)| node_op[node]).collect() });
            }
            let Some((call, previous)) = stack.pop() else {
                return Err(deepest.unwrap_or(Failure { stuck: k, state, placed: Vec::new() }));
            };
            state = previous;
            let placed = node_op[call];
            linearized[placed / 64] &= !(1 << (placed % 64));
            unlift(&mut next, &mut prev, call, match_of(call));
            entry = next[call];
        }
    }
    Ok(())
}

fn describe(history: &[Operation], task: &str, ops: &[KeyOp], failure: Failure) -> Violation {
    let stuck = ops[failure.stuck];
    let mut window: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(k, o)| *k != failure.stuck && o.invoke <= stuck.ret && o.ret >= stuck.invoke)
        .map(|(k, _)| k)
        .collect();
    window.extend(failure.placed.iter().rev().take(3));
    window.push(failure.stuck);
    window.sort_by_key(|&k| (ops[k].invoke, k));
    window.dedup();
    Violation {
        task: task.to_string(),
        op: history[stuck.op].clone(),
        state_before: failure.state,
        window: window.into_iter().map(|k| history[ops[k].op].clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(Vec<Operation>);

    impl H {
        fn new() -> H {
            H(Vec::new())
        }
        fn op(&mut self, call: Call, at: (u64, Option<u64>), outcome: Outcome, seen: Option<Seen>) -> &mut H {
            let id = self.0.len() as u64;
            self.0.push(Operation {
                id,
                client: "t".into(),
                call,
                invoke_us: at.0,
                complete_us: at.1,
                outcome,
                seen,
                listed: None,
            });
            self
        }
        fn create(&mut self, task: &str, from: u64, to: u64) -> &mut H {
            self.op(Call::Create { task: task.into() }, (from, Some(to)), Outcome::Ok, None)
        }
        fn read(&mut self, task: &str, from: u64, to: u64, seen: Seen) -> &mut H {
            self.op(Call::Read { task: task.into() }, (from, Some(to)), Outcome::Ok, Some(seen))
        }
        fn stop(&mut self, task: &str, from: u64, to: u64) -> &mut H {
            self.op(Call::Stop { task: task.into() }, (from, Some(to)), Outcome::Ok, Some(Seen::Stopped))
        }
        fn list(&mut self, from: u64, to: u64, tasks: &[(&str, Seen)]) -> &mut H {
            self.op(Call::List, (from, Some(to)), Outcome::Ok, None);
            let last = self.0.last_mut().expect("just pushed");
            last.listed = Some(tasks.iter().map(|(t, s)| (t.to_string(), *s)).collect());
            self
        }
        fn verdict(&self) -> Verdict {
            check(&self.0)
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        // Acknowledged at 10, then a list and a read after it do not see it.
        let mut h = H::new();
        h.create("a", 0, 10).create("b", 2, 12).list(20, 30, &[("b", Seen::Live)]);
        let verdict = h.verdict();
        assert!(!verdict.linearizable, "{}", verdict.summary());
        let v = verdict.violation.as_ref().expect("a violation");
        assert_eq!(v.task, "a");
        assert_eq!(v.op.call, Call::List);
        assert_eq!(v.state_before, Seen::Live);
        assert!(verdict.summary().contains("NOT linearizable"), "{}", verdict.summary());
        assert!(verdict.summary().contains("create a"), "the window shows the write: {}", verdict.summary());

        let mut h = H::new();
        h.create("a", 0, 10).read("a", 20, 30, Seen::Absent);
        assert!(!h.verdict().linearizable);
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // Stopped (acknowledged at 30), then a read from 40 still sees it live.
        let mut h = H::new();
        h.create("a", 0, 10).read("a", 12, 18, Seen::Live).stop("a", 20, 30).read("a", 40, 50, Seen::Live);
        let verdict = h.verdict();
        assert!(!verdict.linearizable, "{}", verdict.summary());
        let v = verdict.violation.expect("a violation");
        assert_eq!(v.op.id, 3);
        assert_eq!(v.state_before, Seen::Stopped);

        // A read that sees a task, then a later read that does not.
        let mut h = H::new();
        h.op(Call::Create { task: "a".into() }, (0, None), Outcome::Unknown, None);
        h.read("a", 10, 20, Seen::Live).read("a", 30, 40, Seen::Absent);
        assert!(!h.verdict().linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // A slow create: reads during it may see it or not, in that order.
        let mut h = H::new();
        h.create("a", 0, 100).read("a", 10, 20, Seen::Absent).read("a", 30, 40, Seen::Live);
        h.list(35, 45, &[("a", Seen::Live)]);
        // A stop concurrent with a read that still sees the task live.
        h.stop("a", 110, 200).read("a", 120, 130, Seen::Live).read("a", 205, 210, Seen::Stopped);
        // Ties are concurrent.
        h.create("b", 300, 310).read("b", 310, 320, Seen::Absent);
        let verdict = h.verdict();
        assert!(verdict.linearizable, "{}", verdict.summary());
        assert_eq!(verdict.operations, 9);
        assert_eq!(verdict.tasks, 2);
        assert!(verdict.summary().starts_with("history: 9 operations checked, linearizable"));

        // But not seen, then unseen, during one create.
        let mut h = H::new();
        h.create("a", 0, 100).read("a", 10, 20, Seen::Live).read("a", 30, 40, Seen::Absent);
        assert!(!h.verdict().linearizable);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A timed-out create: seen later, or never: both fine.
        let mut h = H::new();
        h.op(Call::Create { task: "a".into() }, (0, None), Outcome::Unknown, None);
        h.read("a", 500, 510, Seen::Live);
        h.op(Call::Create { task: "b".into() }, (0, None), Outcome::Unknown, None);
        h.create("c", 0, 10);
        h.read("b", 500, 510, Seen::Absent).list(600, 610, &[("a", Seen::Live), ("c", Seen::Live)]);
        // A timed-out stop that did happen, one that did not.
        h.op(Call::Stop { task: "a".into() }, (700, None), Outcome::Unknown, None);
        h.read("a", 800, 810, Seen::Stopped);
        h.op(Call::Stop { task: "c".into() }, (700, None), Outcome::Unknown, None);
        h.read("c", 800, 810, Seen::Live);
        // A read that timed out says nothing.
        h.op(Call::Read { task: "c".into() }, (900, None), Outcome::Unknown, None);
        let verdict = h.verdict();
        assert!(verdict.linearizable, "{}", verdict.summary());

        // A failed create definitely did not happen: nobody may see it.
        let mut h = H::new();
        h.op(Call::Create { task: "a".into() }, (0, Some(5)), Outcome::Failed, None);
        h.read("a", 10, 20, Seen::Live);
        assert!(!h.verdict().linearizable);
    }

    #[test]
    fn stops_of_missing_tasks_and_foreign_tasks() {
        let mut h = H::new();
        h.op(Call::Stop { task: "a".into() }, (0, Some(5)), Outcome::Ok, Some(Seen::Absent));
        h.create("a", 10, 20).stop("a", 30, 40).stop("a", 50, 60);
        h.read("zzz", 0, 1, Seen::Live);
        let verdict = h.verdict();
        assert!(verdict.linearizable, "{}", verdict.summary());
        assert_eq!(verdict.foreign, 1);

        let mut h = H::new();
        h.create("a", 0, 10);
        h.op(Call::Stop { task: "a".into() }, (20, Some(30)), Outcome::Ok, Some(Seen::Absent));
        assert!(!h.verdict().linearizable, "a 404 for a task acknowledged before");
    }

    #[test]
    fn histories_round_trip_as_json_lines() {
        let mut h = H::new();
        h.create("a", 0, 10).list(20, 30, &[("a", Seen::Live)]);
        h.op(Call::Stop { task: "a".into() }, (40, None), Outcome::Unknown, None);
        let text = super::super::op::to_json_lines(&h.0);
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().next().unwrap_or_default().contains(r#""op":"create""#), "{text}");
        assert_eq!(super::super::op::from_json_lines(&text).expect("parses"), h.0);
        assert!(super::super::op::from_json_lines("{\"op\":1}\n").unwrap_err().starts_with("line 1"));
    }

    #[test]
    fn long_concurrent_histories_stay_cheap() {
        // 200 tasks, each created, read by overlapping readers, and 30
        // overlapping lists over all of them.
        let mut h = H::new();
        for t in 0..200u64 {
            let task = format!("t{t}");
            h.create(&task, t * 10, t * 10 + 500);
            h.read(&task, t * 10 + 600, t * 10 + 700, Seen::Live);
        }
        for l in 0..30u64 {
            let at = 3000 + l * 20;
            let all: Vec<(String, Seen)> = (0..200).map(|t| (format!("t{t}"), Seen::Live)).collect();
            let refs: Vec<(&str, Seen)> = all.iter().map(|(t, s)| (t.as_str(), *s)).collect();
            h.list(at, at + 100, &refs);
        }
        let verdict = h.verdict();
        assert!(verdict.linearizable, "{}", verdict.summary());
        assert_eq!(verdict.searched, 200 * 2 + 200 * 30);
    }
}
