//! Gating a CI job on a drill: `--assert` predicates over the report, and
//! a JUnit XML report (`--junit FILE`) with one testcase per scenario,
//! history check and assertion.

use std::fmt::Write;

#[cfg(test)]
use super::report::Round;
use super::report::{Checked, Report};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
            Op::Eq => actual == limit,
            Op::Ne => actual != limit,
        }
    }
}

/// One predicate: `leaderless<1s`, `lost=0`, `copies<=1`, `linearizable`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    /// As written (trimmed).
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    /// Milliseconds for times; 1/0 for flags.
    pub limit: f64,
}

/// What an assertion can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The longest time without a leader (ms; a round that kept its leader: 0).
    Leaderless,
    /// The longest time to the first accepted write (ms).
    FirstWrite,
    /// The longest time until a lost worker's tasks ran elsewhere (ms).
    Moved,
    /// The longest time a client's writes went unanswered (quorum loss,
    /// rolling restart) (ms).
    Unavailable,
    /// Acknowledged tasks missing afterwards.
    Lost,
    /// Running copies of one task after convergence (the most).
    Copies,
    /// Submissions not acknowledged.
    Refused,
    /// 1 if the history is linearizable.
    Linearizable,
    /// 1 if the managers agree (`GET /v1/cluster/verify`).
    Consistent,
    /// 1 if every manager is at one state.
    Converged,
    /// The application probe: requests that failed after their retry.
    AppFailed,
    /// The application probe: the longest time without a successful
    /// answer (ms).
    AppGap,
    /// The application probe: requests sent.
    AppRequests,
}

const METRICS: &[(&str, Metric, bool)] = &[
    ("leaderless", Metric::Leaderless, true),
    ("first_write", Metric::FirstWrite, true),
    ("moved", Metric::Moved, true),
    ("unavailable", Metric::Unavailable, true),
    ("lost", Metric::Lost, false),
    ("copies", Metric::Copies, false),
    ("refused", Metric::Refused, false),
    ("linearizable", Metric::Linearizable, false),
    ("consistent", Metric::Consistent, false),
    ("converged", Metric::Converged, false),
    ("app_failed", Metric::AppFailed, false),
    ("app_gap", Metric::AppGap, true),
    ("app_requests", Metric::AppRequests, false),
];

fn parse_one(text: &str) -> Result<Assertion, String> {
    let text = text.trim();
    let split = text.find(['<', '>', '=', '!']);
    let (name, rest) = match split {
        Some(i) => (text[..i].trim(), text[i..].trim()),
        // A bare flag: `linearizable` means `linearizable=true`.
        None if text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => (text, "=true"),
        None => return Err(format!("{text:?}: expected NAME<VALUE (or <=, >, >=, =, !=)")),
    };
    let names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
    let &(_, metric, is_time) = METRICS
        .iter()
        .find(|m| m.0 == name.replace('-', "_"))
        .ok_or_else(|| format!("{text:?}: unknown measure {name:?} (one of {})", names.join(", ")))?;
    let (op, value) =
        [("<=", Op::Le), (">=", Op::Ge), ("!=", Op::Ne), ("==", Op::Eq), ("<", Op::Lt), (">", Op::Gt), ("=", Op::Eq)]
            .iter()
            .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("{text:?}: expected NAME<VALUE, <=, >, >=, = or !="))?;
    let limit = match value {
        "true" => 1.0,
        "false" => 0.0,
        _ if is_time => {
            parse_ms(value).ok_or_else(|| format!("{text:?}: {value:?} is not a time (500ms, 1s, 1.5s, 2m)"))?
        }
        _ => value.parse::<f64>().map_err(|_| format!("{text:?}: {value:?} is not a number"))?,
    };
    Ok(Assertion { text: text.to_string(), metric, op, limit })
}

/// `500ms`, `1s`, `1.5s`, `2m`, or a bare number of milliseconds.
fn parse_ms(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (value, 1.0)
    };
    let n: f64 = number.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * scale)
}

/// Parses `--assert 'leaderless<1s,lost=0,copies<=1'`.
pub fn parse(text: &str) -> Result<Vec<Assertion>, String> {
    text.split(',').filter(|p| !p.trim().is_empty()).map(parse_one).collect()
}

/// `--assert`'s value: the assertions of one comma-separated list.
#[derive(Debug, Clone, PartialEq)]
pub struct Assertions(pub Vec<Assertion>);

/// [`parse`] for clap.
pub fn parse_arg(text: &str) -> Result<Assertions, String> {
    parse(text).map(Assertions)
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn measure(report: &Report, metric: Metric) -> Option<f64> {
    let rounds = &report.rounds;
    let max = |f: &dyn Fn(&super::report::Round) -> Option<f64>| rounds.iter().filter_map(f).reduce(f64::max);
    match metric {
        Metric::Leaderless => {
            // A round that measured a first write but no leaderless time
            // kept its leader.
            let kept = rounds.iter().any(|r| r.leaderless_ms.is_none() && r.first_write_ms.is_some());
            max(&|r| r.leaderless_ms).or(kept.then_some(0.0))
        }
        Metric::FirstWrite => max(&|r| r.first_write_ms),
        Metric::Moved => max(&|r| r.moved_ms),
        Metric::Unavailable => max(&|r| r.unavailable_ms),
        Metric::Lost => Some(report.acknowledged_lost as f64),
        Metric::Copies => report.max_copies.map(|c| c as f64),
        Metric::Refused => Some(report.refused.values().sum::<usize>() as f64),
        Metric::Linearizable => report.history.as_ref().map(|h| flag(h.linearizable)),
        Metric::Consistent => Some(flag(report.consistent)),
        Metric::Converged => Some(flag(report.converged)),
        Metric::AppFailed => report.app.as_ref().map(|a| a.failed as f64),
        Metric::AppGap => report.app.as_ref().map(|a| a.longest_gap_ms),
        Metric::AppRequests => report.app.as_ref().map(|a| a.requests as f64),
    }
}

fn shown(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Leaderless | Metric::FirstWrite | Metric::Moved | Metric::Unavailable | Metric::AppGap => {
            format!("{value:.0} ms")
        }
        Metric::Linearizable | Metric::Consistent | Metric::Converged => (value == 1.0).to_string(),
        _ => format!("{value}"),
    }
}

/// Checks every assertion; one not measured by this drill fails.
pub fn evaluate(report: &Report, assertions: &[Assertion]) -> Vec<Checked> {
    assertions
        .iter()
        .map(|a| {
            let name = METRICS.iter().find(|m| m.1 == a.metric).map_or("?", |m| m.0);
            match measure(report, a.metric) {
                Some(v) => Checked {
                    assertion: a.text.clone(),
                    passed: a.op.holds(v, a.limit),
                    actual: format!("{name} = {}", shown(a.metric, v)),
                },
                None if name.starts_with("app_") => Checked {
                    assertion: a.text.clone(),
                    passed: false,
                    actual: format!("{name}: not measured without --probe-service"),
                },
                None => Checked {
                    assertion: a.text.clone(),
                    passed: false,
                    actual: format!("{name}: not measured by {}", report.scenario),
                },
            }
        })
        .collect()
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c == '\n' || c == '\t' || !c.is_control() => out.push(c),
            _ => {}
        }
    }
    out
}

/// One JUnit testcase.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub seconds: f64,
    /// `None`: passed; `Some(message)`: failed.
    pub failure: Option<String>,
}

/// The testcases of one drill: the scenario itself (its built-in promises:
/// nothing lost, one copy, managers agree, or the error that ended it),
/// the history check, and each assertion.
pub fn cases(
    scenario: &str,
    seconds: f64,
    outcome: &Result<Report, String>,
    broken: Option<String>,
    checked: &[Checked],
) -> Vec<Case> {
    let mut cases = Vec::new();
    let failure = match outcome {
        Err(e) => Some(e.clone()),
        Ok(_) => broken,
    };
    cases.push(Case { name: scenario.to_string(), seconds, failure });
    if let Ok(report) = outcome {
        if let Some(h) = &report.history {
            cases.push(Case {
                name: format!("{scenario}: history linearizable"),
                seconds: 0.0,
                failure: (!h.linearizable).then(|| h.summary()),
            });
        }
    }
    for c in checked {
        cases.push(Case {
            name: format!("{scenario}: {}", c.assertion),
            seconds: 0.0,
            failure: (!c.passed).then(|| c.actual.clone()),
        });
    }
    cases
}

/// A JUnit XML document (the subset CI systems read: testsuites,
/// testsuite, testcase, failure, system-out).
pub fn junit(suite: &str, cases: &[Case], output: &str) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let total: f64 = cases.iter().map(|c| c.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">", cases.len());
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        xml(suite),
        cases.len()
    );
    for case in cases {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml(suite),
            xml(&case.name),
            case.seconds
        );
        match &case.failure {
            None => out.push_str("/>\n"),
            Some(message) => {
                let first = message.lines().next().unwrap_or_default();
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml(first),
                    xml(message)
                );
            }
        }
    }
    let _ = writeln!(out, "    <system-out>{}</system-out>", xml(output));
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_parse() {
        let a = parse("leaderless<1s, lost=0,copies<=1,first-write<=1500ms,linearizable").unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!((a[0].metric, a[0].op, a[0].limit), (Metric::Leaderless, Op::Lt, 1000.0));
        assert_eq!((a[1].metric, a[1].op, a[1].limit), (Metric::Lost, Op::Eq, 0.0));
        assert_eq!((a[2].metric, a[2].op, a[2].limit), (Metric::Copies, Op::Le, 1.0));
        assert_eq!((a[3].metric, a[3].limit), (Metric::FirstWrite, 1500.0));
        assert_eq!((a[4].metric, a[4].op, a[4].limit), (Metric::Linearizable, Op::Eq, 1.0));
        assert_eq!(parse("unavailable<2.5s").unwrap()[0].limit, 2500.0);
        assert!(parse("speed<1").unwrap_err().contains("unknown measure"));
        assert!(parse("lost~0").unwrap_err().contains("expected"));
        assert!(parse("leaderless<soon").unwrap_err().contains("not a time"));
        assert!(parse("lost<x").unwrap_err().contains("not a number"));
    }

    fn report() -> Report {
        Report {
            scenario: "kill-leader".into(),
            rounds: vec![
                Round { leaderless_ms: Some(400.0), first_write_ms: Some(450.0), ..Round::default() },
                Round { leaderless_ms: Some(1200.0), first_write_ms: Some(1300.0), ..Round::default() },
            ],
            acknowledged_lost: 0,
            consistent: true,
            converged: true,
            ..Report::default()
        }
    }

    #[test]
    fn assertions_are_checked_against_the_report() {
        let checked = evaluate(&report(), &parse("leaderless<1s,lost=0,copies<=1,consistent").unwrap());
        assert!(!checked[0].passed);
        assert_eq!(checked[0].actual, "leaderless = 1200 ms");
        assert!(checked[1].passed);
        assert!(!checked[2].passed, "copies are not measured by a manager drill");
        assert!(checked[2].actual.contains("not measured"), "{}", checked[2].actual);
        assert!(checked[3].passed);
        // A follower drill keeps its leader: leaderless is 0.
        let mut kept = report();
        kept.rounds = vec![Round { first_write_ms: Some(20.0), ..Round::default() }];
        assert!(evaluate(&kept, &parse("leaderless<1ms").unwrap())[0].passed);
    }

    #[test]
    fn junit_has_a_case_per_scenario_and_assertion() {
        let report = report();
        let checked = evaluate(&report, &parse("leaderless<1s,lost=0").unwrap());
        let cases = cases("kill-leader", 12.5, &Ok(report), None, &checked);
        let text = junit("goat drill", &cases, "round 1 <ok> & done");
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("<testsuite name=\"goat drill\" tests=\"3\" failures=\"1\""), "{text}");
        assert!(text.contains("<testcase classname=\"goat drill\" name=\"kill-leader\" time=\"12.500\"/>"), "{text}");
        assert!(text.contains("name=\"kill-leader: leaderless&lt;1s\""), "{text}");
        assert!(text.contains("<failure message=\"leaderless = 1200 ms\">"), "{text}");
        assert!(text.contains("name=\"kill-leader: lost=0\" time=\"0.000\"/>"), "{text}");
        assert!(text.contains("round 1 &lt;ok&gt; &amp; done"), "{text}");
        // A drill that failed outright is one failed case.
        let cases = cases_for_error();
        assert_eq!(cases.len(), 1);
        assert!(junit("goat drill", &cases, "").contains("failures=\"1\""));
    }

    #[test]
    fn application_figures_gate_too() {
        let mut r = report();
        let wanted = parse("app_failed=0,app_gap<2s,app_requests>100").unwrap();
        let unmeasured = evaluate(&r, &wanted);
        assert!(unmeasured.iter().all(|c| !c.passed), "no probe, nothing measured: {unmeasured:?}");
        assert!(unmeasured[0].actual.contains("--probe-service"), "{}", unmeasured[0].actual);
        r.app = Some(crate::drill::probe::Figures {
            requests: 500,
            failed: 0,
            retried: 4,
            longest_gap_ms: 2400.0,
            ..Default::default()
        });
        let checked = evaluate(&r, &wanted);
        assert!(checked[0].passed);
        assert!(!checked[1].passed);
        assert_eq!(checked[1].actual, "app_gap = 2400 ms");
        assert!(checked[2].passed);
    }

    fn cases_for_error() -> Vec<Case> {
        cases("pause-leader", 1.0, &Err("no leader".into()), None, &[])
    }
}
