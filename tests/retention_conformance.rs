//! Conformance of `retention::decide` with restic's `forget` on restic's own policy test cases.

mod common;

use caretaker::jobs::backup::retention::{CalendarSpan, Policy, decide};
use chrono::{DateTime, Utc};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    backups: Vec<DateTime<Utc>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    case: u32,
    policy: CasePolicy,
    keep: Vec<DateTime<Utc>>,
    reasons: Vec<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CasePolicy {
    #[serde(default)]
    last: i32,
    #[serde(default)]
    hourly: i32,
    #[serde(default)]
    daily: i32,
    #[serde(default)]
    weekly: i32,
    #[serde(default)]
    monthly: i32,
    #[serde(default)]
    yearly: i32,
    within: Option<Span>,
    within_hourly: Option<Span>,
    within_daily: Option<Span>,
    within_weekly: Option<Span>,
    within_monthly: Option<Span>,
    within_yearly: Option<Span>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Span {
    #[serde(default)]
    years: u32,
    #[serde(default)]
    months: u32,
    #[serde(default)]
    days: u32,
    #[serde(default)]
    hours: u32,
}

impl From<Span> for CalendarSpan {
    fn from(s: Span) -> Self {
        CalendarSpan {
            years: s.years,
            months: s.months,
            days: s.days,
            hours: s.hours,
        }
    }
}

impl From<&CasePolicy> for Policy {
    fn from(p: &CasePolicy) -> Self {
        Policy {
            last: p.last,
            hourly: p.hourly,
            daily: p.daily,
            weekly: p.weekly,
            monthly: p.monthly,
            yearly: p.yearly,
            within: p.within.map(Into::into),
            within_hourly: p.within_hourly.map(Into::into),
            within_daily: p.within_daily.map(Into::into),
            within_weekly: p.within_weekly.map(Into::into),
            within_monthly: p.within_monthly.map(Into::into),
            within_yearly: p.within_yearly.map(Into::into),
        }
    }
}

fn load() -> Cases {
    let path = common::bins::repo_file("tests/fixtures/retention/restic-retention-cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

#[test]
fn all_restic_cases_keep_the_same_backups_for_the_same_reasons() {
    let cases = load();
    assert_eq!(cases.cases.len(), 36, "the fixture holds 36 cases");
    let backups: Vec<(DateTime<Utc>, usize)> = cases.backups.iter().copied().zip(0..).collect();

    let mut failures = Vec::new();
    for case in &cases.cases {
        assert_eq!(
            case.keep.len(),
            case.reasons.len(),
            "case {}: fixture lists",
            case.case
        );
        let policy = Policy::from(&case.policy);
        let decisions = decide(backups.clone(), &policy, chrono_tz::UTC);

        assert_eq!(
            decisions.len(),
            backups.len(),
            "case {}: one decision per backup",
            case.case
        );
        assert!(
            decisions.windows(2).all(|w| w[0].time >= w[1].time),
            "case {}: decisions are newest first",
            case.case
        );
        let kept: Vec<(DateTime<Utc>, Vec<String>)> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| (d.time, d.reasons.iter().map(ToString::to_string).collect()))
            .collect();
        let expected: Vec<(DateTime<Utc>, Vec<String>)> = case
            .keep
            .iter()
            .copied()
            .zip(case.reasons.iter().cloned())
            .collect();
        if kept != expected {
            failures.push(format!(
                "case {}: kept {} backups, expected {}\n  got:      {kept:?}\n  expected: {expected:?}",
                case.case,
                kept.len(),
                expected.len()
            ));
        }
        for d in decisions.iter().filter(|d| !d.keep) {
            assert!(
                d.reasons.is_empty(),
                "case {}: a removed backup has no reasons",
                case.case
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
