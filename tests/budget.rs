//! The budget job on a real Apantli database and a real state directory, with the clock
//! passed in; and once through `caretaker run-job` into the alerts file.

#[path = "common/pricejob.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use caretaker::alerts::{self, AlertEvent, Severity};
use caretaker::config::Config;
use caretaker::state::State;
use chrono::{DateTime, Utc};
use common::*;
use rusqlite::{Connection, params};

fn utc(text: &str) -> DateTime<Utc> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
}

fn apantli_db(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(caretaker::sample::APANTLI_SCHEMA)
        .unwrap();
}

/// A request row at `at` (in Apantli's current `...Z` spelling) costing `usd`.
fn spend(db: &Path, at: DateTime<Utc>, model: &str, usd: f64, error: bool) {
    let conn = Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, total_tokens, cost, error) \
         VALUES (?1, ?2, 'openai', 10, 10, 20, ?3, ?4)",
        params![
            at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            model,
            usd,
            error.then_some("RateLimitError: slow down")
        ],
    )
    .unwrap();
}

const JOBS: &str = "  spend:
    on_signal: USR1
    budget:
      limits:
        - {name: daily, period: day, usd: 10, warn_at: [75%, 100%]}
";

fn setup(dir: &Path, zone: &str) -> (std::path::PathBuf, Config) {
    let db = dir.join("requests.db");
    apantli_db(&db);
    let config = load(&write_config(
        dir,
        &db,
        "apantli",
        &format!("timezone: {zone}"),
        JOBS,
    ));
    (db, config)
}

fn raised(events: &[AlertEvent]) -> Vec<(String, Severity, String)> {
    events
        .iter()
        .map(|e| match e {
            AlertEvent::Raise(a) => (a.key.clone(), a.severity, a.body.clone()),
            AlertEvent::Resolve { key, .. } => panic!("a budget job resolves nothing, got {key}"),
        })
        .collect()
}

#[test]
fn crossing_75_then_100_percent_sends_two_alerts_and_reruns_send_none() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    let state = State::open(&config.state_dir).unwrap();
    let now = utc("2026-11-22T11:00:00Z"); // noon in Berlin
    spend(&db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 5.0, false);
    spend(&db, utc("2026-11-22T09:00:00Z"), "sonnet", 3.0, false);
    // Not counted: yesterday in Berlin (though today in UTC it is not either), and a failed row.
    spend(&db, utc("2026-11-21T22:59:00Z"), "gpt-4o", 100.0, false);
    spend(&db, utc("2026-11-22T09:30:00Z"), "gpt-4o", 100.0, true);

    let (report, events) = run_at(&config, &state, "spend", now, false).unwrap();
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (key, severity, body) = &alerts[0];
    assert_eq!(key, "budget:spend:daily:2026-11-22:75");
    assert_eq!(*severity, Severity::Warning);
    assert!(
        body.contains("$8.00 spent of $10.00, 80.0 % of the limit"),
        "{body}"
    );
    // Noon in Berlin is half the day: $8 projects to $16.
    assert!(
        body.contains("Projected to the end of the period (2026-11-23 00:00 CET): $16.00"),
        "{body}"
    );
    assert!(
        body.find("gpt-4o") < body.find("sonnet"),
        "top models, most expensive first: {body}"
    );
    assert_eq!(figure(&report, "spent_usd{limit=\"daily\"}"), 8.0);
    // What the metrics file shows: the spend against the limit in the current local day.
    let shown: Vec<caretaker::metrics::BudgetSpend> =
        state.get("budget:spend", "spend").unwrap().unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (shown[0].limit.as_str(), shown[0].period.as_str()),
        ("daily", "day")
    );
    assert_eq!((shown[0].spend_usd, shown[0].limit_usd), (8.0, 10.0));
    assert_eq!(shown[0].period_start, utc("2026-11-21T23:00:00Z"));

    let (_, again) = run_at(&config, &state, "spend", now, false).unwrap();
    assert!(
        again.is_empty(),
        "a re-run sends nothing: {:?}",
        raised(&again)
    );

    spend(&db, utc("2026-11-22T11:30:00Z"), "gpt-4o", 2.5, false);
    let later = utc("2026-11-22T12:00:00Z");
    let alerts = raised(&run_at(&config, &state, "spend", later, false).unwrap().1);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "budget:spend:daily:2026-11-22:100");
    assert_eq!(alerts[0].1, Severity::Critical);
    assert!(
        run_at(&config, &state, "spend", later, false)
            .unwrap()
            .1
            .is_empty()
    );

    // A dry run reports what it would send and records nothing.
    let fresh_dir = tempfile::tempdir().unwrap();
    let (fresh_db, fresh) = setup(fresh_dir.path(), "Europe/Berlin");
    spend(&fresh_db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 9.0, false);
    let fresh_state = State::open(&fresh.state_dir).unwrap();
    let (dry, events) = run_at(&fresh, &fresh_state, "spend", now, true).unwrap();
    assert!(events.is_empty());
    assert_eq!(dry.plan.len(), 1, "{:?}", dry.plan);
    assert_eq!(
        raised(&run_at(&fresh, &fresh_state, "spend", now, false).unwrap().1).len(),
        1
    );
}

#[test]
fn a_new_local_day_starts_fresh_across_midnight_and_a_dst_change() {
    // Berlin falls back on 2026-10-25: that day runs from 22:00 UTC on the 24th to 23:00 UTC.
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    let state = State::open(&config.state_dir).unwrap();
    spend(&db, utc("2026-10-24T22:10:00Z"), "gpt-4o", 4.0, false); // 00:10 CEST on the 25th
    spend(&db, utc("2026-10-25T22:30:00Z"), "gpt-4o", 4.0, false); // 23:30 CET on the 25th
    let (report, events) =
        run_at(&config, &state, "spend", utc("2026-10-25T22:45:00Z"), false).unwrap();
    assert_eq!(
        figure(&report, "spent_usd{limit=\"daily\"}"),
        8.0,
        "both rows are on the local 25th"
    );
    assert_eq!(raised(&events)[0].0, "budget:spend:daily:2026-10-25:75");

    // Midnight in Berlin, 23:00 UTC: the 26th has spent nothing yet, then crosses on its own.
    let (report, events) =
        run_at(&config, &state, "spend", utc("2026-10-25T23:05:00Z"), false).unwrap();
    assert_eq!(figure(&report, "spent_usd{limit=\"daily\"}"), 0.0);
    assert!(events.is_empty());
    spend(&db, utc("2026-10-25T23:10:00Z"), "sonnet", 7.6, false);
    let (_, events) = run_at(&config, &state, "spend", utc("2026-10-25T23:15:00Z"), false).unwrap();
    assert_eq!(raised(&events)[0].0, "budget:spend:daily:2026-10-26:75");

    // New York springs forward on 2026-03-08; its midnight is 05:00 UTC that day.
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "America/New_York");
    let state = State::open(&config.state_dir).unwrap();
    spend(&db, utc("2026-03-08T04:30:00Z"), "gpt-4o", 8.0, false); // 23:30 EST on the 7th
    let (_, events) = run_at(&config, &state, "spend", utc("2026-03-08T04:50:00Z"), false).unwrap();
    assert_eq!(raised(&events)[0].0, "budget:spend:daily:2026-03-07:75");
    spend(&db, utc("2026-03-08T05:20:00Z"), "gpt-4o", 8.0, false); // 00:20 EST on the 8th
    let (report, events) =
        run_at(&config, &state, "spend", utc("2026-03-08T05:30:00Z"), false).unwrap();
    assert_eq!(figure(&report, "spent_usd{limit=\"daily\"}"), 8.0);
    assert_eq!(raised(&events)[0].0, "budget:spend:daily:2026-03-08:75");
}

#[test]
fn a_restart_mid_period_sends_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    spend(&db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 8.0, false);
    let now = utc("2026-11-22T11:00:00Z");
    {
        let state = State::open(&config.state_dir).unwrap();
        assert_eq!(
            raised(&run_at(&config, &state, "spend", now, false).unwrap().1).len(),
            1
        );
    }
    // The daemon restarts: a new State on the same state_dir.
    let state = State::open(&config.state_dir).unwrap();
    assert!(
        run_at(
            &config,
            &state,
            "spend",
            now + chrono::Duration::hours(1),
            false
        )
        .unwrap()
        .1
        .is_empty()
    );
    spend(&db, utc("2026-11-22T12:00:00Z"), "gpt-4o", 3.0, false);
    let state = State::open(&config.state_dir).unwrap();
    let alerts = raised(
        &run_at(
            &config,
            &state,
            "spend",
            now + chrono::Duration::hours(2),
            false,
        )
        .unwrap()
        .1,
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, "budget:spend:daily:2026-11-22:100");
}

#[test]
fn a_provider_glob_on_a_gateway_without_providers_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    caretaker::sample::create_bobamixer(
        &db,
        &caretaker::sample::SampleOptions {
            rows: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let jobs = "  spend:\n    on_signal: USR1\n    budget:\n      limits: [{name: openai, period: day, usd: 5, provider: openai}]\n";
    let config = load(&write_config(dir.path(), &db, "bobamixer", "", jobs));
    let state = State::open(&config.state_dir).unwrap();
    let error = format!(
        "{:#}",
        run_at(&config, &state, "spend", Utc::now(), false).unwrap_err()
    );
    assert!(
        error.contains("`openai` filters by provider") && error.contains("records no provider"),
        "{error}"
    );
}

#[test]
fn run_job_delivers_the_alert_to_the_alerts_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli_db(&db);
    // Now, by the real clock the binary reads too.
    spend(&db, Utc::now(), "gpt-4o", 9.0, false);
    let config = write_config(dir.path(), &db, "apantli", "timezone: UTC", JOBS);
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_caretaker"))
            .args(["run-job", "spend", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let stdout = run();
    assert!(stdout.contains("1 alert sent"), "{stdout}");
    let file = dir.path().join("alerts.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let subject = lines[0]["subject"].as_str().unwrap();
    assert!(
        subject.contains("spend") && subject.contains("budget daily at 90 % of $10.00"),
        "{subject}"
    );
    assert!(
        lines[0]["body"]
            .as_str()
            .unwrap()
            .contains("Top models this period")
    );
    run();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        1,
        "a second run sends nothing"
    );
    let state = State::open(&dir.path().join("state")).unwrap();
    assert!(alerts::pending(&state).unwrap().is_empty());
}

#[test]
fn bad_limits_are_refused_with_their_place_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli_db(&db);
    let jobs = "  spend:
    on_signal: USR1
    budget:
      limits:
        - {name: daily, period: day, usd: 10}
        - {name: daily, period: week, usd: 0}
        - {name: glob, period: day, usd: 5, model: \"gpt-[4\"}
";
    let path = write_config(dir.path(), &db, "apantli", "", jobs);
    let errors = caretaker::config::load(&path).unwrap_err().to_string();
    for needle in [
        "jobs.spend.budget.limits[1].name",
        "`daily` is used twice",
        "jobs.spend.budget.limits[1].usd",
        "is not a usable limit",
        "jobs.spend.budget.limits[2].model",
        "not a valid glob",
    ] {
        assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
    }
}
