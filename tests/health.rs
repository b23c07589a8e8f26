//! The `health` job against real conditions: a small filesystem filled past its threshold, a
//! WAL grown by the simulated BobaMixer gateway, a backup job that stopped succeeding, and an
//! error rate raised by the simulated Apantli gateway. Each raises its alert, then resolves
//! it, as seen in the `alerts.file` sink written by `caretaker run-job`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use caretaker::state::State;
use chrono::Utc;
use common::bins::describe;
use common::health::{alerts_for, caretaker, gateway_sim, run_job};
use rusqlite::Connection;
use tempfile::TempDir;

/// Writes a jobs file for a gateway at `db` with `jobs` (YAML lines indented under `jobs:`).
fn jobs_file(dir: &Path, db: &Path, schema: &str, jobs: &str) -> PathBuf {
    let config = dir.join("jobs.yaml");
    let text = format!(
        "gateway: {{database: {}, schema: {schema}}}\nstate_dir: {}\nalerts:\n  file: {}\njobs:\n{jobs}",
        db.display(),
        dir.join("state").display(),
        dir.join("alerts.jsonl").display(),
    );
    fs::write(&config, text).unwrap();
    config
}

/// Runs the health job and expects it to succeed.
fn check(config: &Path, job: &str) -> String {
    let output = run_job(config, job);
    assert!(
        output.status.success(),
        "run-job {job}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn raised(subject: &str) -> (String, bool) {
    (subject.to_string(), false)
}

fn resolved(subject: &str) -> (String, bool) {
    (subject.to_string(), true)
}

#[test]
fn a_filling_filesystem_alerts_then_resolves() {
    let dir = TempDir::new().unwrap();
    let small = common::files::SmallFilesystem::mount(&dir.path().join("small"), "4m");
    gateway_sim(&dir.path().join("requests.db"), "apantli", 50, "200ms", 0.0);
    let config = jobs_file(
        dir.path(),
        &dir.path().join("requests.db"),
        "apantli",
        &format!(
            "  nightly:\n    on_signal: USR1\n    backup: {{to: {}/backups, keep: {{last: 2}}}}\n  disk:\n    on_signal: USR2\n    health: {{disk_free_min: 50%}}\n",
            small.dir.display()
        ),
    );
    let key = format!("health:disk:disk_free:{}", small.dir.display());
    let alerts = dir.path().join("alerts.jsonl");
    let subject = format!(
        "[caretaker] critical disk: free space on {} below 50%",
        small.dir.display()
    );

    check(&config, "disk");
    assert_eq!(alerts_for(&alerts, &key), [], "an empty tmpfs is healthy");

    // 3 of 4 MB used: 25% free.
    fs::write(small.dir.join("filler"), vec![7u8; 3 << 20]).unwrap();
    let report = check(&config, "disk");
    assert!(
        report.contains(&format!("disk_free:{}", small.dir.display())),
        "{report}"
    );
    assert_eq!(alerts_for(&alerts, &key), [raised(&subject)]);
    let line = common::health::alert_lines(&alerts)
        .into_iter()
        .find(|l| l["key"] == key.as_str())
        .unwrap();
    let body = line["body"].as_str().unwrap();
    assert!(body.contains("backups of nightly"), "{body}");
    assert!(body.contains("free of 4 MiB (25%)"), "{body}");

    // Still full: the alert is not repeated within repeat_after.
    check(&config, "disk");
    assert_eq!(alerts_for(&alerts, &key), [raised(&subject)]);

    fs::remove_file(small.dir.join("filler")).unwrap();
    check(&config, "disk");
    let resolved_subject = format!(
        "[caretaker] info disk: resolved: free space on {} below 50%",
        small.dir.display()
    );
    assert_eq!(
        alerts_for(&alerts, &key),
        [raised(&subject), resolved(&resolved_subject)]
    );
}

#[test]
fn a_wal_grown_by_the_gateway_alerts_then_resolves() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("usage.db");
    let wal = dir.path().join("usage.db-wal");
    gateway_sim(&db, "bobamixer", 50, "200ms", 0.0);
    let config = jobs_file(
        dir.path(),
        &db,
        "bobamixer",
        "  wal:\n    on_signal: USR1\n    health: {wal_max_size: 1MB}\n",
    );
    let key = "health:wal:wal_size";
    let alerts = dir.path().join("alerts.jsonl");

    // A reader that keeps its snapshot open stops checkpoints from reusing the WAL, as a
    // forgotten `sqlite3` shell on the server would.
    let reader = Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM usage_records", [], |r| r.get(0))
        .unwrap();
    gateway_sim(&db, "bobamixer", 400, "2s", 0.0);
    let grown = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        grown > 1_000_000,
        "the simulator grew the WAL to only {grown} bytes; the test needs more than 1 MB"
    );

    let report = check(&config, "wal");
    assert!(report.contains(&format!("wal_bytes={grown}")), "{report}");
    assert_eq!(
        alerts_for(&alerts, key),
        [raised(
            "[caretaker] warning wal: gateway WAL larger than 1 MB"
        )]
    );

    // The reader goes away; the gateway's next write, closing the last connection, checkpoints
    // the WAL and removes it.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    gateway_sim(&db, "bobamixer", 20, "200ms", 0.0);
    let shrunk = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(shrunk < 1_000_000, "the WAL is still {shrunk} bytes");

    check(&config, "wal");
    assert_eq!(
        alerts_for(&alerts, key),
        [
            raised("[caretaker] warning wal: gateway WAL larger than 1 MB"),
            resolved("[caretaker] info wal: resolved: gateway WAL larger than 1 MB"),
        ]
    );
}

#[test]
fn a_backup_job_that_stopped_succeeding_alerts_then_resolves() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    // A backup directory below a regular file cannot be created, even by root.
    fs::write(dir.path().join("blocker"), b"not a directory").unwrap();
    let config = jobs_file(
        dir.path(),
        &db,
        "apantli",
        &format!(
            "  nightly:\n    on_signal: USR1\n    backup: {{to: {}/blocker/backups, keep: {{last: 2}}}}\n  backup-age:\n    on_signal: USR2\n    health: {{backup_max_age: {{job: nightly, age: 2h}}}}\n",
            dir.path().display()
        ),
    );
    let key = "health:backup-age:backup_age";
    let alerts = dir.path().join("alerts.jsonl");
    let subject = "[caretaker] critical backup-age: no successful nightly backup within 2h";

    // The backup last succeeded three hours ago (recorded as the runner records it) ...
    let record_success = |at: chrono::DateTime<Utc>| {
        let state = State::open(&dir.path().join("state")).unwrap();
        let id = state.run_started("nightly", "schedule", at).unwrap();
        state
            .run_finished(
                id,
                at + chrono::Duration::seconds(4),
                "ok",
                "backed up",
                None,
                &[],
            )
            .unwrap();
    };
    record_success(Utc::now() - chrono::Duration::hours(3));
    // ... and fails now.
    let backup = run_job(&config, "nightly");
    assert_eq!(backup.status.code(), Some(1), "{}", describe(&backup));

    let report = check(&config, "backup-age");
    assert!(report.contains("1 holds: backup_age"), "{report}");
    assert_eq!(alerts_for(&alerts, key), [raised(subject)]);
    let line = common::health::alert_lines(&alerts)
        .into_iter()
        .find(|l| l["key"] == key)
        .unwrap();
    let body = line["body"].as_str().unwrap();
    assert!(body.contains("(3h ago)"), "{body}");
    assert!(body.contains("caretaker run-job nightly"), "{body}");

    // The operator fixes it and the next backup succeeds.
    record_success(Utc::now());
    check(&config, "backup-age");
    assert_eq!(
        alerts_for(&alerts, key),
        [
            raised(subject),
            resolved(
                "[caretaker] info backup-age: resolved: no successful nightly backup within 2h"
            )
        ]
    );
}

fn error_share(db: &Path) -> f64 {
    let conn = Connection::open(db).unwrap();
    let (total, failed): (f64, f64) = conn
        .query_row("SELECT count(*), count(error) FROM requests", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    failed / total
}

#[test]
fn an_error_rate_raised_by_the_gateway_alerts_then_resolves() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    let config = jobs_file(
        dir.path(),
        &db,
        "apantli",
        "  errors:\n    on_signal: USR1\n    health: {error_rate_max: {share: 10%, over: 1h}}\n",
    );
    let key = "health:errors:error_rate";
    let alerts = dir.path().join("alerts.jsonl");
    let subject = "[caretaker] warning errors: gateway error rate above 10% over 1h";

    gateway_sim(&db, "apantli", 100, "1s", 0.5);
    let share = error_share(&db);
    assert!(share > 0.2, "the simulator wrote only {share} failed rows");
    let report = check(&config, "errors");
    assert!(report.contains("1 holds: error_rate"), "{report}");
    assert_eq!(alerts_for(&alerts, key), [raised(subject)]);

    // The provider recovers: successful requests bring the share below 10%.
    while error_share(&db) >= 0.08 {
        gateway_sim(&db, "apantli", 100, "2s", 0.0);
    }
    check(&config, "errors");
    assert_eq!(
        alerts_for(&alerts, key),
        [
            raised(subject),
            resolved("[caretaker] info errors: resolved: gateway error rate above 10% over 1h")
        ]
    );
}

#[test]
fn rows_outside_the_window_do_not_count() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    gateway_sim(&db, "apantli", 100, "500ms", 1.0);
    // Move every failed row two hours into the past, in each of Apantli's three spellings.
    let conn = Connection::open(&db).unwrap();
    let old = (Utc::now() - chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    conn.execute(
        "UPDATE requests SET timestamp = ?1 || CASE id % 3 WHEN 0 THEN '.123456Z' WHEN 1 THEN '.5+00:00' ELSE '' END",
        [&old],
    )
    .unwrap();
    drop(conn);
    gateway_sim(&db, "apantli", 100, "300ms", 0.0);
    let config = jobs_file(
        dir.path(),
        &db,
        "apantli",
        "  errors:\n    on_signal: USR1\n    health: {error_rate_max: {share: 1%, over: 1h}}\n",
    );
    let report = check(&config, "errors");
    assert!(report.contains("none holds"), "{report}");
    assert!(report.contains("failed_requests_in_window=0"), "{report}");
}

#[test]
fn an_error_rate_without_an_error_column_is_refused_at_check() {
    let dir = TempDir::new().unwrap();
    let config = jobs_file(
        dir.path(),
        &dir.path().join("usage.db"),
        "bobamixer",
        "  errors:\n    on_signal: USR1\n    health: {error_rate_max: {share: 5%, over: 1h}}\n",
    );
    let output = caretaker(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("jobs.errors.health.error_rate_max"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`bobamixer` schema has no error column"),
        "{stderr}"
    );
    assert!(stderr.contains("columns.error"), "{stderr}");
}

#[test]
fn a_fact_that_cannot_be_measured_fails_the_run_but_the_others_still_alert() {
    let dir = TempDir::new().unwrap();
    let config = jobs_file(
        dir.path(),
        &dir.path().join("missing.db"),
        "apantli",
        "  both:\n    on_signal: USR1\n    health: {database_max_size: 1KB, backup_max_age: {job: nightly, age: 1h}}\n  nightly:\n    on_signal: USR2\n    backup: {to: backups, keep: {last: 1}}\n",
    );
    let output = run_job(&config, "both");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database_max_size: cannot read the size of"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.db"), "{stderr}");
    let alerts = dir.path().join("alerts.jsonl");
    assert_eq!(
        alerts_for(&alerts, "health:both:backup_age"),
        [raised(
            "[caretaker] critical both: no successful nightly backup within 1h"
        )]
    );
    assert_eq!(alerts_for(&alerts, "health:both:database_size"), []);
    assert_eq!(alerts_for(&alerts, "job-failed:both").len(), 1);
}

#[test]
fn dry_run_shows_the_verdicts_and_queues_nothing() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    let config = jobs_file(
        dir.path(),
        &db,
        "apantli",
        "  size:\n    on_signal: USR1\n    health: {database_max_size: 1KB}\n",
    );
    let output = caretaker(&[
        "run-job",
        "size",
        "--config",
        config.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("would raise health:size:database_size: gateway database larger than 1 KB"),
        "{stdout}"
    );
    assert!(!dir.path().join("alerts.jsonl").exists());
}

#[test]
fn a_gateway_write_lock_makes_the_error_rate_wait_then_give_up_without_alerting() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    gateway_sim(&db, "apantli", 50, "200ms", 1.0);
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli, busy_timeout: 1s}}\nstate_dir: {}\nalerts:\n  file: {}\njobs:\n  errors:\n    on_signal: USR1\n    health: {{error_rate_max: {{share: 5%, over: 1h}}}}\n",
            db.display(),
            dir.path().join("state").display(),
            dir.path().join("alerts.jsonl").display(),
        ),
    )
    .unwrap();
    // A writer in the middle of a long transaction: our reads must wait, retry, then give up.
    let writer = Connection::open(&db).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let output = run_job(&config, "errors");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("kept it locked through 4 waits of gateway.busy_timeout"),
        "{stderr}"
    );
    let alerts = dir.path().join("alerts.jsonl");
    assert_eq!(
        alerts_for(&alerts, "health:errors:error_rate"),
        [],
        "nothing measured, nothing raised"
    );
    writer.execute_batch("COMMIT").unwrap();

    check(&config, "errors");
    assert_eq!(
        alerts_for(&alerts, "health:errors:error_rate"),
        [raised(
            "[caretaker] warning errors: gateway error rate above 5% over 1h"
        )]
    );
}
