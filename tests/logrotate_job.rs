//! The `logrotate` job through the real binary: `run-job` and the daemon, with a busy writer.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use caretaker::jobs::logrotate::FileState;
use chrono::Utc;
use common::bins::describe;
use common::files::names;
use common::logwriter::{LogWriter, count_lines};
use common::sandbox::Sandbox;
use common::wait::poll;

const LONG: Duration = Duration::from_secs(30);
const ROTATIONS: usize = 10;

/// Lines lost and lines found more than once, checking that nothing else was found.
fn loss(dir: &Path, written: u64) -> (u64, u64) {
    let counts = count_lines(dir);
    let lost = (0..written).filter(|n| !counts.contains_key(n)).count() as u64;
    let duplicated = counts.values().map(|&c| u64::from(c - 1)).sum();
    assert_eq!(
        counts.len() as u64 + lost,
        written,
        "a line number beyond those written was found"
    );
    (lost, duplicated)
}

/// A `logs` job over `logs/app.log` with `method` and extra keys (YAML flow mapping items).
fn write_logs_job(sb: &Sandbox, extra: &str) {
    fs::create_dir_all(sb.path("logs")).expect("logs dir");
    sb.write_jobs(&format!(
        "  logs:\n    on_signal: USR1\n    logrotate: {{files: [logs/app.log], max_size: 1B, rotate: 20, compress: true, delay_compress: true, {extra}}}\n"
    ));
}

fn run_job(sb: &Sandbox, args: &[&str]) -> Output {
    let mut all = vec!["run-job", "logs"];
    all.extend_from_slice(args);
    sb.caretaker(&all)
}

fn saved_state(sb: &Sandbox) -> BTreeMap<PathBuf, FileState> {
    sb.state()
        .get("logrotate", "logs")
        .expect("state readable")
        .unwrap_or_default()
}

/// Runs `caretaker run-job logs` ten times while the writer writes, each run once the writer
/// writes to the live log; returns how many lines it wrote.
fn rotate_with_run_job(sb: &Sandbox, writer: LogWriter) -> u64 {
    for round in 0..ROTATIONS {
        writer.wait_writing(4096);
        let output = run_job(sb, &[]);
        let shown = describe(&output);
        assert!(output.status.success(), "round {round}: {shown}");
        assert!(shown.contains("files_rotated=1"), "round {round}: {shown}");
        if round > 0 {
            // delay_compress: each run compresses the previous run's copy.
            assert!(
                shown.contains("files_compressed=1"),
                "round {round}: {shown}"
            );
        }
    }
    writer.wait_writing(4096);
    writer.stop()
}

#[test]
fn run_job_with_create_and_notify_loses_no_line() {
    let sb = Sandbox::new();
    write_logs_job(
        &sb,
        "method: create, notify: {pid_file: logs/writer.pid, signal: HUP}",
    );
    let logs = sb.path("logs");
    let writer = LogWriter::spawn(&logs.join("app.log"), &logs.join("writer.pid"), &[]);
    let written = rotate_with_run_job(&sb, writer);

    let copies: Vec<String> = names(&logs)
        .into_iter()
        .filter(|n| n.starts_with("app.log."))
        .collect();
    assert_eq!(copies.len(), ROTATIONS, "{copies:?}");
    assert_eq!(
        copies.iter().filter(|n| n.ends_with(".gz")).count(),
        ROTATIONS - 1,
        "all copies but the newest are compressed: {copies:?}"
    );
    let (lost, duplicated) = loss(&logs, written);
    println!(
        "run-job, create + notify: {written} lines written in {ROTATIONS} rotations, {lost} lost, {duplicated} duplicated"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(saved_state(&sb).contains_key(&logs.join("app.log")));
}

#[test]
fn run_job_with_copytruncate_measures_the_lines_it_loses() {
    let sb = Sandbox::new();
    write_logs_job(&sb, "method: copytruncate");
    let logs = sb.path("logs");
    let writer = LogWriter::spawn(&logs.join("app.log"), &logs.join("writer.pid"), &[]);
    let written = rotate_with_run_job(&sb, writer);
    let (lost, duplicated) = loss(&logs, written);
    println!(
        "run-job, copytruncate: {written} lines written in {ROTATIONS} rotations, {lost} lost ({:.1} per rotation), {duplicated} duplicated",
        lost as f64 / ROTATIONS as f64
    );
    assert!(written > 0);
}

#[test]
fn the_daemon_rotates_on_usr1_without_losing_a_line() {
    let sb = Sandbox::new();
    write_logs_job(
        &sb,
        "method: create, notify: {pid_file: logs/writer.pid, signal: HUP}",
    );
    let logs = sb.path("logs");
    let writer = LogWriter::spawn(&logs.join("app.log"), &logs.join("writer.pid"), &[]);
    let daemon = sb.start_daemon();
    let state = sb.state();
    for round in 0..ROTATIONS {
        writer.wait_writing(4096);
        daemon.signal("USR1");
        let finished = poll(LONG, || {
            let runs = state.runs_of("logs", 100).expect("runs");
            (runs.iter().filter(|r| r.ended_at.is_some()).count() == round + 1).then_some(runs)
        });
        let runs = finished
            .unwrap_or_else(|| panic!("round {round}: no run finished:\n{}", daemon.log_text()));
        assert!(
            runs.iter().all(|r| r.result == "ok"),
            "round {round}: {runs:?}\n{}",
            daemon.log_text()
        );
    }
    writer.wait_writing(4096);
    let written = writer.stop();
    let (lost, duplicated) = loss(&logs, written);
    println!(
        "daemon on USR1, create + notify: {written} lines written in {ROTATIONS} rotations, {lost} lost, {duplicated} duplicated"
    );
    assert_eq!((lost, duplicated), (0, 0));
    let copies = names(&logs)
        .into_iter()
        .filter(|n| n.starts_with("app.log."))
        .count();
    assert_eq!(copies, ROTATIONS);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let sb = Sandbox::new();
    write_logs_job(&sb, "method: create");
    let logs = sb.path("logs");
    fs::write(logs.join("app.log"), "0\n1\n").expect("write log");
    fs::write(logs.join("app.log.1"), "old\n").expect("write copy");
    let before = names(&logs);

    let output = run_job(&sb, &["--dry-run"]);
    let shown = describe(&output);
    assert!(output.status.success(), "{shown}");
    let app = logs.join("app.log");
    for expected in [
        format!("{}: rotate (size 4 B is over max_size 1 B)", app.display()),
        format!(
            "rename {} -> {}",
            logs.join("app.log.1").display(),
            logs.join("app.log.2").display()
        ),
        format!("compress {0}.2 -> {0}.2.gz", app.display()),
        "would rotate 1 of 1 log file(s)".to_string(),
    ] {
        assert!(shown.contains(&expected), "missing `{expected}` in {shown}");
    }
    assert_eq!(names(&logs), before);
    assert_eq!(fs::read_to_string(&app).expect("log"), "0\n1\n");
    assert!(saved_state(&sb).is_empty(), "a dry run saved state");
}

#[test]
fn a_corrupted_state_is_replaced_with_a_warning() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.path("logs")).expect("logs dir");
    sb.write_jobs(
        "  logs:\n    on_signal: USR1\n    logrotate: {files: [logs/app.log], period: daily}\n",
    );
    let app = sb.path("logs/app.log");
    fs::write(&app, "line\n").expect("write log");
    sb.state()
        .put("logrotate", "logs", &"{\"truncated\": ")
        .expect("plant a corrupted state");

    let output = run_job(&sb, &[]);
    let shown = describe(&output);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("recorded 1 first seen"), "{shown}");
    assert!(shown.contains("corrupted"), "{shown}");
    let saved = saved_state(&sb);
    let recorded = saved.get(&app).expect("the log is recorded").last_rotated;
    assert!((Utc::now() - recorded).num_seconds().abs() < 60);
    assert_eq!(names(&sb.path("logs")), ["app.log"]);
}

#[test]
fn one_failing_file_fails_the_run_after_the_others_are_rotated_and_saved() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.path("logs")).expect("logs dir");
    sb.write_jobs(
        "  logs:\n    on_signal: USR1\n    logrotate: {files: [logs/*.log, logs/missing.log], max_size: 1B}\n",
    );
    let logs = sb.path("logs");
    fs::write(logs.join("a.log"), "a\n").expect("write a");
    fs::write(logs.join("b.log"), "b\n").expect("write b");
    // A second name for b.log: rotating one name would split them.
    fs::hard_link(logs.join("b.log"), sb.path("b-link")).expect("hard link");
    fs::write(logs.join("c.log"), "c\n").expect("write c");

    let output = run_job(&sb, &[]);
    let shown = describe(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    for expected in [
        "rotated 2 of 3 log file(s)",
        "2 error(s)",
        "b.log: has 2 hard links",
        "missing.log: no log file matches",
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in {shown}");
    }
    assert_eq!(
        names(&logs),
        ["a.log", "a.log.1", "b.log", "c.log", "c.log.1"]
    );
    let saved = saved_state(&sb);
    let keys: Vec<&PathBuf> = saved.keys().collect();
    assert_eq!(keys, [&logs.join("a.log"), &logs.join("c.log")]);
    // The failure reaches the operator as an alert.
    let alerted = poll(LONG, || {
        sb.alerts().contains("job-failed:logs").then_some(())
    });
    assert!(alerted.is_some(), "no alert: {}", sb.alerts());
}

#[test]
fn a_log_keeps_its_state_however_the_jobs_file_is_named() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.path("logs")).expect("logs dir");
    sb.write_jobs(
        "  logs:\n    on_signal: USR1\n    logrotate: {files: [logs/app.log], period: daily}\n",
    );
    let app = sb.path("logs/app.log");
    fs::write(&app, "line\n").expect("write log");
    let by_full_path = run_job(&sb, &[]);
    assert!(
        describe(&by_full_path).contains("recorded 1 first seen"),
        "{}",
        describe(&by_full_path)
    );

    let by_relative_name = Command::new(common::bins::caretaker_bin())
        .args(["run-job", "logs", "--config", "jobs.yaml"])
        .current_dir(sb.dir.path())
        .env_remove("CARETAKER_CONFIG")
        .output()
        .expect("run caretaker");
    let shown = describe(&by_relative_name);
    assert!(by_relative_name.status.success(), "{shown}");
    assert!(shown.contains("recorded 0 first seen"), "{shown}");
    let saved = saved_state(&sb);
    assert_eq!(saved.keys().collect::<Vec<_>>(), [&app]);
}

#[test]
fn a_notify_signal_that_kills_the_writer_fails_the_run_with_a_critical_alert() {
    let sb = Sandbox::new();
    write_logs_job(
        &sb,
        "method: create, notify: {pid_file: logs/writer.pid, signal: HUP}",
    );
    let logs = sb.path("logs");
    // A writer without a SIGHUP handler, as Apantli under uvicorn: HUP kills it.
    let mut writer = LogWriter::spawn(
        &logs.join("app.log"),
        &logs.join("writer.pid"),
        &["--dies-on-hup"],
    );
    writer.wait_writing(4096);

    let output = run_job(&sb, &[]);
    let shown = describe(&output);
    assert_eq!(output.status.code(), Some(1), "the run must fail: {shown}");
    assert!(
        shown.contains("HUP stopped the writer: process"),
        "the failure says the signal stopped the writer: {shown}"
    );
    let died = writer.child.wait().expect("the writer is our child");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&died),
        Some(1),
        "the writer died of SIGHUP: {died:?}"
    );
    // run-job delivers what the run raised before it exits: one JSON line per message.
    let alert = sb
        .alerts()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an alert line is JSON"))
        .find(|a| a["key"] == "writer-stopped:logs")
        .unwrap_or_else(|| panic!("no writer-stopped alert: {}", sb.alerts()));
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["body"]
            .as_str()
            .is_some_and(|b| b.contains("HUP stopped the writer")),
        "{alert}"
    );

    let active = caretaker::alerts::active(&sb.state()).expect("alerts readable");
    assert!(
        active.iter().any(|k| k == "writer-stopped:logs"),
        "{active:?}"
    );

    // What the docs advise for such a writer: copytruncate, no notify. Its next run resolves it.
    write_logs_job(&sb, "method: copytruncate");
    fs::write(logs.join("app.log"), "0\n").expect("write log");
    let output = run_job(&sb, &[]);
    assert!(output.status.success(), "{}", describe(&output));
    let active = caretaker::alerts::active(&sb.state()).expect("alerts readable");
    assert!(
        !active.iter().any(|k| k == "writer-stopped:logs"),
        "{active:?}"
    );
}
