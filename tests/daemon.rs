//! The real daemon binary: signals, reloads, graceful stop, single instance, catch-up.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::sandbox::Sandbox;
use common::wait::poll;

const LONG: Duration = Duration::from_secs(30);

/// Jobs whose schedules never come due during a test, bound to signals.
const SIGNAL_JOBS: &str = "  a-usr1:\n    schedule: \"0 0 1 1 *\"\n    on_signal: USR1\n    integrity: {}\n  b-usr2:\n    on_signal: USR2\n    integrity: {}\n  c-both:\n    on_signal: [USR1, USR2]\n    integrity: {}\n";

fn runs(sb: &Sandbox, job: &str) -> Vec<caretaker::state::RunRecord> {
    sb.state().runs_of(job, 100).expect("runs")
}

fn finished_runs(sb: &Sandbox, job: &str) -> usize {
    runs(sb, job)
        .iter()
        .filter(|r| r.ended_at.is_some())
        .count()
}

#[test]
fn usr1_runs_exactly_the_jobs_bound_to_it() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let daemon = sb.start_daemon();
    daemon.signal("USR1");
    let done = poll(LONG, || {
        (finished_runs(&sb, "a-usr1") == 1 && finished_runs(&sb, "c-both") == 1).then_some(())
    });
    assert!(
        done.is_some(),
        "bound jobs did not run:\n{}",
        daemon.log_text()
    );
    daemon.wait_log("signal received", LONG);
    assert!(
        runs(&sb, "b-usr2").is_empty(),
        "a job bound to USR2 ran on USR1"
    );
    assert_eq!(runs(&sb, "a-usr1")[0].trigger, "signal USR1");
}

#[test]
fn an_invalid_file_on_sighup_is_refused_and_the_old_configuration_keeps_running() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let daemon = sb.start_daemon();
    // Break the file, then ask for a reload.
    common::files::write_replace(
        &sb.jobs_file(),
        "gateway: {database: requests.db, schema: nope}\njobs: {}\n",
    );
    daemon.signal("HUP");
    daemon.wait_log(
        "the new jobs file is invalid; the old configuration keeps running",
        LONG,
    );
    let alerted = poll(LONG, || {
        sb.alerts().contains("config-invalid").then_some(())
    });
    assert!(
        alerted.is_some(),
        "no alert for the invalid file: {}",
        sb.alerts()
    );
    // The old jobs are still bound.
    daemon.signal("USR2");
    let ran = poll(LONG, || (finished_runs(&sb, "b-usr2") == 1).then_some(()));
    assert!(
        ran.is_some(),
        "the old configuration stopped working:\n{}",
        daemon.log_text()
    );
    assert!(daemon.child.id() > 0);
}

#[test]
fn editing_the_file_reloads_it() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let daemon = sb.start_daemon();
    sb.write_jobs("  d-new:\n    on_signal: USR2\n    integrity: {}\n");
    daemon.wait_log("configuration reloaded", LONG);
    daemon.signal("USR2");
    let ran = poll(LONG, || (finished_runs(&sb, "d-new") == 1).then_some(()));
    assert!(
        ran.is_some(),
        "the edited file was not used:\n{}",
        daemon.log_text()
    );
    assert!(
        runs(&sb, "b-usr2").is_empty(),
        "a job removed by the edit still ran"
    );
}

#[test]
fn sigterm_during_a_running_job_exits_0_within_the_timeout() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let mut daemon = sb.start_daemon();
    // Another process works on the gateway: our job waits for the gateway lock, as it would
    // behind `run-job`. Stopping must not wait for that other work.
    let lock = sb.hold_gateway_lock();
    daemon.signal("USR1");
    daemon.wait_log("waiting for the gateway lock", LONG);
    let asked = std::time::Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("daemon did not exit");
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    // shutdown_timeout is 5 s in the sandbox; the job stopped at its safe point well before.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    assert!(daemon.log_text().contains("caretaker stopped"));
    drop(lock);
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_3() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let daemon = sb.start_daemon();
    let out = sb.caretaker(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", daemon.pid())),
        "{stderr}"
    );
}

#[test]
fn a_run_missed_while_down_runs_once_at_start_only_with_catch_up() {
    let sb = Sandbox::new();
    sb.write_jobs(
        "  nightly:\n    schedule: \"0 3 * * *\"\n    catch_up: true\n    integrity: {}\n  nightly-no-catch-up:\n    schedule: \"0 3 * * *\"\n    integrity: {}\n",
    );
    // The daemon last handled these jobs two days ago: two nightly runs were missed.
    let state = sb.state();
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    state.set_last_due("nightly", two_days_ago).unwrap();
    state
        .set_last_due("nightly-no-catch-up", two_days_ago)
        .unwrap();
    drop(state);
    let daemon = sb.start_daemon();
    let ran = poll(LONG, || (finished_runs(&sb, "nightly") == 1).then_some(()));
    assert!(
        ran.is_some(),
        "the missed run did not happen:\n{}",
        daemon.log_text()
    );
    daemon.wait_log(
        "a run was missed while the daemon was down (catch_up is off)",
        LONG,
    );
    assert_eq!(runs(&sb, "nightly")[0].trigger, "catch-up");
    assert!(runs(&sb, "nightly-no-catch-up").is_empty());
    // Once, not once per missed night.
    assert_eq!(runs(&sb, "nightly").len(), 1);
    drop(daemon);
    // A restart right after does not catch up again.
    let daemon = sb.start_daemon();
    daemon.wait_log("caretaker is running", LONG);
    assert_eq!(daemon.count_log("catching up"), 0, "{}", daemon.log_text());
}

#[test]
fn repeated_signals_while_a_job_runs_coalesce_into_one_more_run() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let daemon = sb.start_daemon();
    let lock = sb.hold_gateway_lock();
    daemon.signal("USR2");
    daemon.wait_log("waiting for the gateway lock", LONG);
    for _ in 0..3 {
        daemon.signal("USR2");
    }
    daemon.wait_log("already running; it runs once more when it ends", LONG);
    drop(lock);
    let ran = poll(LONG, || (finished_runs(&sb, "b-usr2") == 2).then_some(()));
    assert!(ran.is_some(), "{}", daemon.log_text());
    // Nothing else is queued: the count stays at 2 once the daemon is idle again.
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded", LONG);
    assert_eq!(finished_runs(&sb, "b-usr2"), 2);
}

#[test]
fn run_job_records_the_run_and_fails_for_an_unknown_job() {
    let sb = Sandbox::new();
    sb.write_jobs(SIGNAL_JOBS);
    let out = sb.caretaker(&["run-job", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job `nope`"));
    let _ = sb.caretaker(&["run-job", "a-usr1"]);
    assert_eq!(finished_runs(&sb, "a-usr1"), 1);
    assert_eq!(runs(&sb, "a-usr1")[0].trigger, "manual");
    let status = sb.caretaker(&["status", "--json"]);
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let job = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "a-usr1")
        .unwrap();
    assert!(job["last_run"]["started_at"].is_string());
    assert!(job["next_run"].is_string());
}

#[test]
fn a_job_that_cannot_start_within_its_timeout_fails_and_alerts() {
    let sb = Sandbox::new();
    sb.write_jobs("  slow:\n    on_signal: USR1\n    timeout: 1s\n    integrity: {}\n");
    let lock = sb.hold_gateway_lock();
    let out = sb.caretaker(&["run-job", "slow"]);
    drop(lock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ran past its timeout"), "{stderr}");
    assert!(sb.alerts().contains("job-failed:slow"), "{}", sb.alerts());
    let run = &runs(&sb, "slow")[0];
    assert_eq!(run.result, "failed");
    assert!(run.error.as_deref().unwrap_or("").contains("timeout"));
}

#[test]
fn status_shows_the_run_of_a_killed_daemon_as_interrupted() {
    let sb = Sandbox::new();
    let header = sb.header().replace("busy_timeout: 1s", "busy_timeout: 60s");
    common::files::write_replace(
        &sb.jobs_file(),
        &format!("{header}jobs:\n  slow:\n    on_signal: USR1\n    integrity: {{}}\n"),
    );
    // A second process's exclusive lock would do the same; the job waits on it inside its run.
    let blocker = rusqlite::Connection::open(sb.path("requests.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut daemon = sb.start_daemon();
    daemon.signal("USR1");
    let started = poll(LONG, || {
        runs(&sb, "slow")
            .iter()
            .any(|r| r.result == "running")
            .then_some(())
    });
    assert!(started.is_some(), "no run started:\n{}", daemon.log_text());
    let result = |json: &serde_json::Value| json["jobs"][0]["last_run"]["result"].clone();
    let status_json = || {
        let out = sb.caretaker(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(result(&status_json()), "running", "the live run is running");

    daemon.signal("KILL");
    assert!(daemon.wait_exit(LONG).is_some(), "the daemon did not die");
    // Killed, the daemon left its state database's -wal and -shm behind: like every file it
    // created in state_dir, they are private.
    let mut seen = Vec::new();
    let mut dirs = vec![sb.path("state")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} is {mode:o}", path.display());
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for name in ["state.db", "state.db-wal", "state.db-shm", "caretaker.lock"] {
        assert!(seen.iter().any(|s| s == name), "{name} not in {seen:?}");
    }
    let json = status_json();
    assert_eq!(result(&json), "interrupted", "{json:#}");
    let error = json["jobs"][0]["last_run"]["error"].as_str().unwrap();
    assert!(error.contains("ended during the run"), "{error}");
    let out = sb.caretaker(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with("slow")).unwrap();
    assert!(line.contains("interrupted"), "{table}");
    // What status shows is what the next daemon records.
    drop(blocker);
    let _daemon = sb.start_daemon();
    assert_eq!(runs(&sb, "slow")[0].result, "interrupted");
}

/// A `run-job` killed mid-run leaves its record `running`; the metrics file, written after the
/// next run, says `interrupted` as `status` does, since no process holds that job's lock.
#[test]
fn the_metrics_file_shows_a_killed_run_job_as_interrupted() {
    let sb = Sandbox::new();
    let header = sb.header().replace("busy_timeout: 1s", "busy_timeout: 60s");
    common::files::write_replace(
        &sb.jobs_file(),
        &format!(
            "{header}metrics_file: metrics.prom\njobs:\n  slow:\n    on_signal: USR1\n    integrity: {{}}\n  quick:\n    on_signal: USR2\n    integrity: {{}}\n"
        ),
    );
    let blocker = rusqlite::Connection::open(sb.path("requests.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut slow = common::bins::caretaker()
        .args(["run-job", "slow", "--config"])
        .arg(sb.jobs_file())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = poll(LONG, || {
        runs(&sb, "slow")
            .iter()
            .any(|r| r.result == "running")
            .then_some(())
    });
    assert!(started.is_some(), "the slow run never started");
    slow.kill().unwrap();
    slow.wait().unwrap();
    drop(blocker);
    let out = sb.caretaker(&["run-job", "quick"]);
    assert!(out.status.success(), "{out:?}");
    let metrics = std::fs::read_to_string(sb.path("metrics.prom")).unwrap();
    let result = |r: &str| {
        format!("caretaker_job_last_result{{job=\"slow\",kind=\"integrity\",result=\"{r}\"}} ")
    };
    let line = |r: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&result(r)))
            .unwrap_or_else(|| panic!("no {r} line in:\n{metrics}"))
            .to_string()
    };
    assert!(line("interrupted").ends_with(" 1"), "{metrics}");
    assert!(line("running").ends_with(" 0"), "{metrics}");
}

#[test]
fn the_vacuum_warning_is_logged_once_at_start_not_at_each_reload() {
    let sb = Sandbox::new();
    let jobs = "  care:\n    schedule: \"0 3 * * SUN\"\n    maintenance: {vacuum: always}\n";
    sb.write_jobs(jobs);
    let daemon = sb.start_daemon();
    daemon.wait_log("caretaker is running", LONG);
    let warning = "VACUUM holds an exclusive lock";
    assert_eq!(daemon.count_log(warning), 1, "{}", daemon.log_text());
    daemon.signal("HUP");
    daemon.wait_log("configuration reloaded", LONG);
    assert_eq!(daemon.count_log(warning), 1, "{}", daemon.log_text());
}
