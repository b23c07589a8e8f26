//! The budget job on a real Apantli database and a real state directory, with the clock
//! passed in; through `caretaker run-job` into the alerts file; and its raise and "resolved"
//! mails through a real SMTP server (aiosmtpd), each exactly once.

mod common;

use std::path::Path;

use caretaker::alerts::{self, AlertEvent, Severity};
use caretaker::config::Config;
use caretaker::state::State;
use chrono::{DateTime, Utc};
use common::pricejob::*;
use rusqlite::{Connection, params};

fn utc(text: &str) -> DateTime<Utc> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
}

fn apantli_db(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(caretaker::demo::sample::APANTLI_SCHEMA)
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

/// A job's events in a comparable form: (kind, key, severity, subject words, body).
fn described(events: &[AlertEvent]) -> Vec<(&'static str, String, Severity, String, String)> {
    events
        .iter()
        .map(|e| match e {
            AlertEvent::Raise(a) | AlertEvent::Escalate(a) => (
                if matches!(e, AlertEvent::Raise(_)) {
                    "raise"
                } else {
                    "escalate"
                },
                a.key.clone(),
                a.severity,
                a.what.clone(),
                a.body.clone(),
            ),
            AlertEvent::ResolveWith {
                key, what, body, ..
            } => (
                "resolve",
                key.clone(),
                Severity::Info,
                what.clone(),
                body.clone(),
            ),
            AlertEvent::Resolve { key, .. } => {
                panic!("a budget alert resolves with its final spend, got a bare resolve of {key}")
            }
        })
        .collect()
}

/// The (kind, key) of each event.
fn kinds(events: &[AlertEvent]) -> Vec<(&'static str, String)> {
    described(events)
        .into_iter()
        .map(|(kind, key, ..)| (kind, key))
        .collect()
}

fn of(kind: &'static str, key: &str) -> (&'static str, String) {
    (kind, key.to_string())
}

#[test]
fn crossing_75_then_100_percent_raises_then_escalates_and_reruns_send_none() {
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
    let alerts = described(&events);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (kind, key, severity, _, body) = &alerts[0];
    assert_eq!(
        (*kind, key.as_str()),
        ("raise", "budget:spend:daily:2026-11-22")
    );
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
    assert_eq!(figure(&report, "alerts_sent"), 1.0);
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
        kinds(&again)
    );

    spend(&db, utc("2026-11-22T11:30:00Z"), "gpt-4o", 2.5, false);
    let later = utc("2026-11-22T12:00:00Z");
    let alerts = described(&run_at(&config, &state, "spend", later, false).unwrap().1);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    // The same condition, worse: an escalation of the day's key, not a second key.
    assert_eq!(
        (alerts[0].0, alerts[0].1.as_str(), alerts[0].2),
        (
            "escalate",
            "budget:spend:daily:2026-11-22",
            Severity::Critical
        )
    );
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
        kinds(&run_at(&fresh, &fresh_state, "spend", now, false).unwrap().1),
        [of("raise", "budget:spend:daily:2026-11-22")]
    );
}

#[test]
fn local_midnight_resolves_the_old_day_with_its_final_spend_across_a_dst_change() {
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
    assert_eq!(
        kinds(&events),
        [of("raise", "budget:spend:daily:2026-10-25")]
    );
    // Logged in the 25th's last minutes, after its last run: the final spend counts it.
    spend(&db, utc("2026-10-25T22:58:00Z"), "sonnet", 1.5, false);

    // Midnight in Berlin, 23:00 UTC: the 25th is resolved once with its final spend; the
    // 26th has spent nothing yet, then crosses on its own under its own key.
    let (report, events) =
        run_at(&config, &state, "spend", utc("2026-10-25T23:05:00Z"), false).unwrap();
    assert_eq!(figure(&report, "spent_usd{limit=\"daily\"}"), 0.0);
    assert_eq!(figure(&report, "alerts_resolved"), 1.0);
    let resolved = described(&events);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    let (kind, key, _, what, body) = &resolved[0];
    assert_eq!(
        (*kind, key.as_str()),
        ("resolve", "budget:spend:daily:2026-10-25")
    );
    assert_eq!(
        what,
        "budget daily 2026-10-25 ended at $9.50, 95 % of $10.00"
    );
    assert!(
        body.contains("ended at 2026-10-26 00:00 CET: $9.50 spent of $10.00"),
        "{body}"
    );
    assert!(
        run_at(&config, &state, "spend", utc("2026-10-25T23:06:00Z"), false)
            .unwrap()
            .1
            .is_empty(),
        "resolved once"
    );
    spend(&db, utc("2026-10-25T23:10:00Z"), "sonnet", 7.6, false);
    let (_, events) = run_at(&config, &state, "spend", utc("2026-10-25T23:15:00Z"), false).unwrap();
    assert_eq!(
        kinds(&events),
        [of("raise", "budget:spend:daily:2026-10-26")]
    );

    // New York springs forward on 2026-03-08; its midnight is 05:00 UTC that day.
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "America/New_York");
    let state = State::open(&config.state_dir).unwrap();
    spend(&db, utc("2026-03-08T04:30:00Z"), "gpt-4o", 8.0, false); // 23:30 EST on the 7th
    let (_, events) = run_at(&config, &state, "spend", utc("2026-03-08T04:50:00Z"), false).unwrap();
    assert_eq!(
        kinds(&events),
        [of("raise", "budget:spend:daily:2026-03-07")]
    );
    spend(&db, utc("2026-03-08T05:20:00Z"), "gpt-4o", 8.0, false); // 00:20 EST on the 8th
    let (report, events) =
        run_at(&config, &state, "spend", utc("2026-03-08T05:30:00Z"), false).unwrap();
    assert_eq!(figure(&report, "spent_usd{limit=\"daily\"}"), 8.0);
    assert_eq!(
        kinds(&events),
        [
            of("resolve", "budget:spend:daily:2026-03-07"),
            of("raise", "budget:spend:daily:2026-03-08")
        ]
    );
    assert!(described(&events)[0].3.contains("ended at $8.00"));
}

#[test]
fn a_restart_mid_period_and_across_midnight_sends_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    spend(&db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 8.0, false);
    let now = utc("2026-11-22T11:00:00Z");
    {
        let state = State::open(&config.state_dir).unwrap();
        assert_eq!(
            kinds(&run_at(&config, &state, "spend", now, false).unwrap().1),
            [of("raise", "budget:spend:daily:2026-11-22")]
        );
    }
    // The daemon restarts: a new State on the same state_dir.
    let state = State::open(&config.state_dir).unwrap();
    let hours = |h| now + chrono::Duration::hours(h);
    assert!(
        run_at(&config, &state, "spend", hours(1), false)
            .unwrap()
            .1
            .is_empty()
    );
    spend(&db, utc("2026-11-22T12:00:00Z"), "gpt-4o", 3.0, false);
    let state = State::open(&config.state_dir).unwrap();
    assert_eq!(
        kinds(&run_at(&config, &state, "spend", hours(2), false).unwrap().1),
        [of("escalate", "budget:spend:daily:2026-11-22")]
    );
    // Past midnight: one resolve, and after another restart, nothing more.
    let state = State::open(&config.state_dir).unwrap();
    assert_eq!(
        kinds(
            &run_at(&config, &state, "spend", hours(13), false)
                .unwrap()
                .1
        ),
        [of("resolve", "budget:spend:daily:2026-11-22")]
    );
    let state = State::open(&config.state_dir).unwrap();
    assert!(
        run_at(&config, &state, "spend", hours(14), false)
            .unwrap()
            .1
            .is_empty()
    );
}

#[test]
fn spend_back_under_by_repricing_archiving_or_a_raised_limit_resolves_once() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    let state = State::open(&config.state_dir).unwrap();
    let key = "budget:spend:daily:2026-11-22";
    spend(&db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 6.0, false);
    spend(&db, utc("2026-11-22T09:00:00Z"), "sonnet", 5.0, false);
    let at = |m: i64| utc("2026-11-22T10:00:00Z") + chrono::Duration::minutes(m);
    assert_eq!(
        kinds(&run_at(&config, &state, "spend", at(0), false).unwrap().1),
        [of("raise", key)]
    );
    // Re-priced: gpt-4o was logged at twice its price. $8.00 is still over 75 %: nothing.
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE requests SET cost = cost / 2 WHERE model = 'gpt-4o'",
            [],
        )
        .unwrap();
    assert!(
        run_at(&config, &state, "spend", at(10), false)
            .unwrap()
            .1
            .is_empty()
    );
    // Archived: the sonnet rows leave the gateway. $3.00 is under every threshold.
    Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM requests WHERE model = 'sonnet'", [])
        .unwrap();
    let events = run_at(&config, &state, "spend", at(20), false).unwrap().1;
    let resolved = described(&events);
    assert_eq!(kinds(&events), [of("resolve", key)]);
    assert_eq!(
        resolved[0].3,
        "budget daily back under 75 % of $10.00 (2026-11-22): $3.00"
    );
    assert!(
        resolved[0]
            .4
            .contains("Thresholds alerted in 2026-11-22: 75 %, 100 %."),
        "{}",
        resolved[0].4
    );
    assert!(
        run_at(&config, &state, "spend", at(30), false)
            .unwrap()
            .1
            .is_empty()
    );
    // Crossing again in the same day raises again; then the limit is raised in the jobs file.
    spend(&db, utc("2026-11-22T10:35:00Z"), "sonnet", 5.0, false);
    assert_eq!(
        kinds(&run_at(&config, &state, "spend", at(40), false).unwrap().1),
        [of("raise", key)]
    );
    let raised = load(&write_config(
        dir.path(),
        &db,
        "apantli",
        "timezone: Europe/Berlin",
        &JOBS.replace("usd: 10", "usd: 20"),
    ));
    let events = run_at(&raised, &state, "spend", at(50), false).unwrap().1;
    assert_eq!(kinds(&events), [of("resolve", key)]);
    assert_eq!(
        described(&events)[0].3,
        "budget daily back under 75 % of $20.00 (2026-11-22): $8.00"
    );
    assert!(
        run_at(&raised, &state, "spend", at(60), false)
            .unwrap()
            .1
            .is_empty()
    );
}

#[test]
fn an_upgrade_mid_period_re_sends_nothing_and_retires_the_old_keys() {
    // The state of the version before resolved budget alerts: thresholds sent per limit and
    // period, and one raised key per crossing.
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = setup(dir.path(), "Europe/Berlin");
    let state = State::open(&config.state_dir).unwrap();
    state
        .put("budget:spend", "daily@2026-11-22", &[75u32])
        .unwrap();
    state
        .put("budget:spend", "daily@2026-11-21", &[75u32, 100])
        .unwrap();
    let old = AlertEvent::Raise(caretaker::alerts::Alert {
        key: "budget:spend:daily:2026-11-21:100".into(),
        severity: Severity::Critical,
        job: Some("spend".into()),
        what: "budget daily at 120 % of $10.00 (2026-11-21)".into(),
        body: String::new(),
    });
    alerts::submit(
        &state,
        &config.alerts,
        &["file"],
        utc("2026-11-21T20:00:00Z"),
        &[old],
    )
    .unwrap();
    assert_eq!(alerts::active(&state).unwrap().len(), 1);

    spend(&db, utc("2026-11-22T08:00:00Z"), "gpt-4o", 8.0, false);
    let (_, events) = run_at(&config, &state, "spend", utc("2026-11-22T11:00:00Z"), false).unwrap();
    assert!(
        events.is_empty(),
        "75 % was sent before the upgrade: {:?}",
        kinds(&events)
    );
    assert!(
        alerts::active(&state).unwrap().is_empty(),
        "the old per-crossing keys are retired without a message"
    );
    let old: Option<Vec<u32>> = state.get("budget:spend", "daily@2026-11-21").unwrap();
    assert_eq!(old, None, "the old records are dropped");
    spend(&db, utc("2026-11-22T11:30:00Z"), "gpt-4o", 3.0, false);
    assert_eq!(
        kinds(
            &run_at(&config, &state, "spend", utc("2026-11-22T12:00:00Z"), false)
                .unwrap()
                .1
        ),
        [of("escalate", "budget:spend:daily:2026-11-22")]
    );
}

#[test]
fn a_provider_glob_on_a_gateway_without_providers_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    caretaker::demo::sample::create_bobamixer(
        &db,
        &caretaker::demo::sample::SampleOptions {
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
    let config = write_config(
        dir.path(),
        &db,
        "apantli",
        &format!("timezone: {}", zone_far_from_midnight()),
        JOBS,
    );
    let run = || {
        let out = common::health::run_job(&config, "spend");
        assert!(out.status.success(), "{}", common::bins::describe(&out));
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

/// A jobs file whose alerts go to the SMTP server on 127.0.0.1:`port` (plain SMTP) and to
/// `alerts.jsonl`, for the budget job of [`JOBS`] in `zone`.
fn smtp_config(dir: &Path, db: &Path, zone: &str, port: u16) -> std::path::PathBuf {
    let path = dir.join("jobs.yaml");
    std::fs::write(
        &path,
        format!(
            "gateway: {{database: {db}, schema: apantli, busy_timeout: 5s}}\nstate_dir: {state}\ntimezone: {zone}\n\
             alerts:\n  email:\n    smtp: {{host: 127.0.0.1, port: {port}, tls: none, timeout: 20s}}\n    from: \"caretaker <alerts@example.com>\"\n    to: [ops@example.com]\n  file: {file}\n\
             jobs:\n{JOBS}",
            db = db.display(),
            state = dir.join("state").display(),
            file = dir.join("alerts.jsonl").display(),
        ),
    )
    .unwrap();
    path
}

/// A body as sent, decoded when lettre chose quoted-printable (it does for lines longer
/// than 76 characters, as budget bodies have): soft line breaks joined, `=XX` bytes decoded.
fn decoded_body(raw: &str) -> String {
    let body = common::health::body(raw);
    let qp = common::health::header(raw, "Content-Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("quoted-printable"));
    if !qp {
        return body;
    }
    let joined = body.replace("=\n", "");
    let mut bytes = Vec::new();
    let mut rest = joined.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'=' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).expect("ASCII after =");
            bytes.push(u8::from_str_radix(hex, 16).expect("=XX in quoted-printable"));
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).expect("the body is UTF-8")
}

/// (subject, body) of every mail the server received, in arrival order.
fn mails(server: &common::health::SmtpServer) -> Vec<(String, String)> {
    server
        .received()
        .iter()
        .map(|(raw, _)| {
            (
                common::health::header(raw, "Subject").expect("every mail has a subject"),
                decoded_body(raw),
            )
        })
        .collect()
}

/// A zone whose local midnight is hours away by the real clock, for the tests that run the
/// binary: a day that rolls over mid-test would turn a "back under" into a "period ended".
fn zone_far_from_midnight() -> &'static str {
    use chrono::Timelike;
    if matches!(Utc::now().hour(), 0 | 23) {
        "Etc/GMT-12"
    } else {
        "UTC"
    }
}

#[tokio::test]
async fn local_midnight_sends_one_resolved_mail_through_a_real_smtp_server_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::health::SmtpServer::start(dir.path(), 0, &[]);
    let db = dir.path().join("requests.db");
    apantli_db(&db);
    let config = load(&smtp_config(dir.path(), &db, "Europe/Berlin", server.port));
    let sinks = alerts::Sink::from_settings(&config.alerts).unwrap();
    let names = caretaker::runner::sink_names(&config);
    // One scheduled run as the daemon does it, with the clock passed in: the job, then its
    // events into the outbox, then delivery.
    let run = |state: &State, now: DateTime<Utc>| {
        let (_, events) = run_at(&config, state, "spend", now, false).unwrap();
        alerts::submit(state, &config.alerts, &names, now, &events).unwrap();
        events
    };
    // 2026-10-25 is Berlin's 25-hour day: 00:10 CEST is 22:10 UTC the day before.
    spend(&db, utc("2026-10-24T22:10:00Z"), "gpt-4o", 4.0, false);
    spend(&db, utc("2026-10-25T22:00:00Z"), "gpt-4o", 4.0, false);
    let state = State::open(&config.state_dir).unwrap();
    assert_eq!(run(&state, utc("2026-10-25T22:30:00Z")).len(), 1);
    let done = alerts::deliver_due(&state, &sinks, utc("2026-10-25T22:30:00Z"))
        .await
        .unwrap();
    assert_eq!(done.sent, 2, "mail and file: {}", server.stderr());
    spend(&db, utc("2026-10-25T22:50:00Z"), "sonnet", 1.0, false);

    // Just after the local midnight (23:00 UTC): the 25th's alert ends, with its final spend.
    let midnight = utc("2026-10-25T23:02:00Z");
    assert_eq!(run(&state, midnight).len(), 1);
    alerts::deliver_due(&state, &sinks, midnight).await.unwrap();
    // The daemon restarts and runs again, in the same minute and later: nothing more.
    drop(state);
    let state = State::open(&config.state_dir).unwrap();
    assert!(run(&state, midnight).is_empty());
    assert!(run(&state, utc("2026-10-25T23:30:00Z")).is_empty());
    alerts::deliver_due(&state, &sinks, utc("2026-10-25T23:30:00Z"))
        .await
        .unwrap();
    assert!(alerts::pending(&state).unwrap().is_empty());
    assert!(alerts::active(&state).unwrap().is_empty());

    let got = mails(&server);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        got[0].0,
        "[caretaker] warning spend: budget daily at 80 % of $10.00 (2026-10-25)"
    );
    let resolved: Vec<_> = got
        .iter()
        .filter(|(s, _)| s.contains("resolved:"))
        .collect();
    assert_eq!(resolved.len(), 1, "exactly one resolved mail: {got:#?}");
    assert_eq!(
        resolved[0].0,
        "[caretaker] info spend: resolved: budget daily 2026-10-25 ended at $9.00, 90 % of $10.00"
    );
    for needle in [
        "Budget `daily` (day 2026-10-25) ended at 2026-10-26 00:00 CET: $9.00 spent of $10.00, 90.0 % of the limit",
        "Thresholds alerted in 2026-10-25: 75 %.",
    ] {
        assert!(
            resolved[0].1.contains(needle),
            "missing {needle:?} in:\n{}",
            resolved[0].1
        );
    }
}

#[test]
fn run_job_mails_the_crossing_and_exactly_one_resolved_message_when_the_spend_is_back_under() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::health::SmtpServer::start(dir.path(), 0, &[]);
    let db = dir.path().join("requests.db");
    apantli_db(&db);
    let zone = zone_far_from_midnight();
    // Now, by the real clock the binary reads too.
    spend(&db, Utc::now(), "gpt-4o", 9.0, false);
    let config = smtp_config(dir.path(), &db, zone, server.port);
    let run = || {
        let out = common::health::run_job(&config, "spend");
        assert!(out.status.success(), "{}", common::bins::describe(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let stdout = run();
    assert!(stdout.contains("1 alert sent, 0 resolved"), "{stdout}");
    let got = mails(&server);
    assert_eq!(got.len(), 1, "{got:#?}\n{}", server.stderr());
    assert!(
        got[0]
            .0
            .starts_with("[caretaker] warning spend: budget daily at 90 % of $10.00 ("),
        "{}",
        got[0].0
    );

    // The rows are re-priced: the gateway had logged three times the real price.
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE requests SET cost = cost / 3", [])
        .unwrap();
    let stdout = run();
    assert!(stdout.contains("0 alerts sent, 1 resolved"), "{stdout}");
    // A third run, a new process like a restarted daemon: nothing more.
    let stdout = run();
    assert!(stdout.contains("0 alerts sent, 0 resolved"), "{stdout}");

    let got = mails(&server);
    assert_eq!(got.len(), 2, "{got:#?}");
    let resolved: Vec<_> = got
        .iter()
        .filter(|(s, _)| s.contains("resolved:"))
        .collect();
    assert_eq!(resolved.len(), 1, "exactly one resolved mail: {got:#?}");
    let (subject, body) = resolved[0];
    assert!(
        subject.starts_with(
            "[caretaker] info spend: resolved: budget daily back under 75 % of $10.00 ("
        ) && subject.ends_with("): $3.00"),
        "{subject}"
    );
    assert!(
        body.contains("$3.00 spent of $10.00, 30.0 % of the limit, back under 75 %"),
        "{body}"
    );
    let status = common::health::status(&config);
    assert_eq!(status["pending_alerts"], serde_json::json!([]), "{status}");
    assert_eq!(status["active_alerts"], serde_json::json!([]), "{status}");
}
