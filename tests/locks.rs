//! Our locks on the gateway's database, through the real binary: each run's lock figures in its
//! summary and in the metrics file, a warning for a lock longer than the job's documented bound,
//! and the one rule for a gateway that keeps its lock (wait with backoff within the job's
//! `timeout`, then fail with an alert), against a second process holding the lock.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use caretaker::demo::sample::{self, SampleOptions};
use chrono::{DurationRound, TimeDelta, Utc};
use common::bins::caretaker;
use common::dbcare::rows;
use common::health::alert_lines;
use common::wait::{self, DEADLINE};
use rusqlite::Connection;

/// A sample Apantli database (rollback journal) whose successful rows have no cost, half of
/// them older than the archive job's 15 days.
fn gateway(dir: &Path) -> PathBuf {
    let db = dir.join("requests.db");
    let opts = SampleOptions {
        rows: 1500,
        days: 30,
        now: Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap(),
        seed: 11,
        ..SampleOptions::default()
    };
    sample::create_apantli(&db, &opts).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE requests SET cost = NULL WHERE error IS NULL")
        .unwrap();
    db
}

/// A jobs file with an archive job `arch`, a pricing job `reprice` and an integrity job
/// `check`, each with `timeout` when given, and a metrics file.
fn jobs_file(dir: &Path, db: &Path, timeout: Option<&str>) -> PathBuf {
    let timeout = timeout.map_or(String::new(), |t| format!("    timeout: {t}\n"));
    let path = dir.join("jobs.yaml");
    let text = format!(
        "gateway:\n  database: {db}\n  schema: apantli\n  busy_timeout: 1s\nstate_dir: {state}\nmetrics_file: {metrics}\nalerts:\n  file: {alerts}\njobs:\n\
         \x20 arch:\n    on_signal: USR1\n{timeout}    archive: {{older_than: 15d, to: {to}, batch: 300}}\n\
         \x20 reprice:\n    on_signal: USR2\n{timeout}    pricing: {{prices: {prices}}}\n\
         \x20 check:\n    on_signal: USR2\n{timeout}    integrity: {{check: quick}}\n",
        db = db.display(),
        state = dir.join("state").display(),
        metrics = dir.join("caretaker.prom").display(),
        alerts = dir.join("alerts.jsonl").display(),
        to = dir.join("archive").display(),
        prices = common::pricejob::litellm_path().display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A second process holding a lock on the gateway database as a gateway transaction would:
/// python3's sqlite3 runs `begin` (and a read, so a deferred transaction holds its shared
/// lock), says so, and commits when told.
struct Holder {
    child: Child,
    stdin: ChildStdin,
}

impl Holder {
    fn start(db: &Path, begin: &str) -> Holder {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute(sys.argv[2])\n\
                      c.execute('SELECT count(*) FROM requests').fetchall()\n\
                      print('held', flush=True)\n\
                      sys.stdin.readline()\n\
                      c.execute('COMMIT')\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .arg(begin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held", "the lock holder did not start");
        Holder { child, stdin }
    }

    fn release(mut self) {
        self.stdin.write_all(b"\n").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

/// `run-job NAME` started as a process logging at info level into files of `dir`.
struct Run {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Run {
    fn start(config: &Path, job: &str, dir: &Path) -> Run {
        let stdout = dir.join(format!("{job}.out"));
        let stderr = dir.join(format!("{job}.err"));
        let child = caretaker()
            .args(["run-job", job, "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Run {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the job has met the gateway's lock past its busy timeout at least once.
    fn wait_for_busy(&self) {
        wait::until("the job to meet the gateway's lock", DEADLINE, || {
            self.stderr()
                .contains("the gateway kept its lock past our busy timeout")
        });
    }

    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = self.child.wait().unwrap();
        let stdout = std::fs::read_to_string(&self.stdout).unwrap();
        (status, stdout, self.stderr())
    }
}

fn null_costs(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM requests WHERE cost IS NULL AND error IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn metrics(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("caretaker.prom")).unwrap()
}

/// Alerts of the alerts file with `key`: (severity, resolved).
fn alerts(dir: &Path, key: &str) -> Vec<(String, bool)> {
    alert_lines(&dir.join("alerts.jsonl"))
        .into_iter()
        .filter(|a| a["key"] == key)
        .map(|a| {
            (
                a["severity"].as_str().unwrap_or_default().to_string(),
                a["resolved"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_run_reports_its_gateway_locks_in_the_summary_and_the_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = gateway(dir.path());
    let config = jobs_file(dir.path(), &db, None);
    for (job, kind) in [
        ("arch", "archive"),
        ("reprice", "pricing"),
        ("check", "integrity"),
    ] {
        let (status, stdout, stderr) = Run::start(&config, job, dir.path()).finish();
        assert!(status.success(), "{job}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("; gateway locks: ") && stdout.contains(" ms, max "),
            "{job}: {stdout}"
        );
        let text = metrics(dir.path());
        for q in ["0.5", "0.99", "1"] {
            let line = format!(
                "caretaker_job_lock_seconds{{job=\"{job}\",kind=\"{kind}\",quantile=\"{q}\"}} "
            );
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
        let line = format!("caretaker_job_locks_over_bound{{job=\"{job}\",kind=\"{kind}\"}} ");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    let text = metrics(dir.path());
    assert!(
        text.contains("# TYPE caretaker_job_lock_seconds summary"),
        "{text}"
    );
}

#[test]
fn archive_and_pricing_wait_for_a_gateway_lock_held_past_busy_timeout_and_succeed() {
    for job in ["arch", "reprice"] {
        let dir = tempfile::tempdir().unwrap();
        let db = gateway(dir.path());
        let (_, before) = rows(&db, "requests");
        let config = jobs_file(dir.path(), &db, Some("10m"));
        let holder = Holder::start(&db, "BEGIN EXCLUSIVE");
        let run = Run::start(&config, job, dir.path());
        run.wait_for_busy();
        holder.release();
        let (status, stdout, stderr) = run.finish();
        assert!(status.success(), "{job}: {stdout}\n{stderr}");
        let (_, after) = rows(&db, "requests");
        if job == "arch" {
            assert!(after.len() < before.len(), "{stdout}");
        } else {
            assert_eq!(null_costs(&db), 0, "{stdout}");
        }
        assert!(alerts(dir.path(), &format!("job-failed:{job}")).is_empty());
    }
}

#[test]
fn archive_and_pricing_fail_with_an_alert_when_the_lock_outlasts_their_timeout() {
    for job in ["arch", "reprice"] {
        let dir = tempfile::tempdir().unwrap();
        let db = gateway(dir.path());
        let (_, before) = rows(&db, "requests");
        let config = jobs_file(dir.path(), &db, Some("3s"));
        let holder = Holder::start(&db, "BEGIN EXCLUSIVE");
        let (status, stdout, stderr) = Run::start(&config, job, dir.path()).finish();
        holder.release();
        assert!(!status.success(), "{job}: {stdout}\n{stderr}");
        let both = format!("{stdout}\n{stderr}");
        assert!(
            both.contains("another connection kept it locked through")
                && both.contains("gave up because the job's `timeout` ran out"),
            "{job}: {both}"
        );
        assert_eq!(
            alerts(dir.path(), &format!("job-failed:{job}")),
            vec![("critical".to_string(), false)],
            "{job}"
        );
        let (_, after) = rows(&db, "requests");
        assert_eq!(after, before, "{job}: the database changed");
    }
}

#[test]
fn a_commit_kept_waiting_by_a_gateway_reader_is_a_lock_over_the_bound_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let db = gateway(dir.path());
    let config = jobs_file(dir.path(), &db, None);
    // A gateway read transaction: our deletes go ahead, but their commit waits for it with
    // the gateway's writers held off, through our whole busy timeout (1 s).
    let holder = Holder::start(&db, "BEGIN");
    let run = Run::start(&config, "arch", dir.path());
    run.wait_for_busy();
    holder.release();
    let (status, stdout, stderr) = run.finish();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("locks longer than the docs promise for archive jobs"),
        "{stdout}"
    );
    assert_eq!(
        alerts(dir.path(), "lock-over-bound:arch"),
        vec![("warning".to_string(), false)]
    );
    let text = metrics(dir.path());
    let line = "caretaker_job_locks_over_bound{job=\"arch\",kind=\"archive\"} ";
    let over = text
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or_else(|| panic!("{line} missing in\n{text}"));
    assert_ne!(over, "0", "{text}");
    // A run with every lock within the bound resolves the warning.
    let (status, stdout, stderr) = Run::start(&config, "arch", dir.path()).finish();
    assert!(status.success(), "{stdout}\n{stderr}");
    let resolved: Vec<bool> = alerts(dir.path(), "lock-over-bound:arch")
        .into_iter()
        .map(|(_, resolved)| resolved)
        .collect();
    assert_eq!(resolved, [false, true]);
}
