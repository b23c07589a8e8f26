//! Sample gateway databases and the gateway simulator, checked against real SQLite files and
//! real `gateway-sim` processes.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caretaker::demo::sample::{self, SampleOptions};
use caretaker::demo::sim::{self, RowKey, SimOptions, SimReport, Style};
use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use rusqlite::Connection;
use rusqlite::types::Value;

fn fixture_schema(name: &str) -> String {
    let path = common::bins::repo_file("tests/fixtures/schemas").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 1, 3, 30, 0).unwrap()
}

fn options(rows: u64) -> SampleOptions {
    SampleOptions {
        rows,
        days: 30,
        now: fixed_now(),
        seed: 7,
        payload_bytes: 1024,
        error_share: 0.05,
        zero_cost_share: 0.05,
    }
}

/// The schema objects of a database, comparable across files.
fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn reference_schema(fixture: &str) -> Vec<(String, String, Option<String>)> {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(&fixture_schema(fixture)).unwrap();
    schema_of(&conn)
}

fn all_rows(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
        .unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |r| (0..columns).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Parses any of Apantli's three timestamp spellings.
fn parse_apantli_time(text: &str) -> DateTime<Utc> {
    let naive = text.trim_end_matches('Z').trim_end_matches("+00:00");
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
        .and_utc()
}

#[test]
fn apantli_sample_has_the_schema_and_journal_of_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.db");
    sample::create_apantli(&path, &options(100)).unwrap();
    let conn = Connection::open(&path).unwrap();
    assert_eq!(schema_of(&conn), reference_schema("apantli.sql"));
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "requests.db")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn apantli_sample_rows_look_like_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.db");
    let opts = options(4000);
    let summary = sample::create_apantli(&path, &opts).unwrap();
    let conn = Connection::open(&path).unwrap();

    assert_eq!(summary.rows, 4000);
    assert_eq!(count(&conn, "SELECT count(*) FROM requests"), 4000);

    // Three spellings, in the order the gateway's versions wrote them.
    let zulu = "timestamp LIKE '%Z'";
    let offset = "timestamp LIKE '%+00:00'";
    let naive = "timestamp NOT LIKE '%Z' AND timestamp NOT LIKE '%+00:00'";
    for spelling in [zulu, offset, naive] {
        assert!(
            count(
                &conn,
                &format!("SELECT count(*) FROM requests WHERE {spelling}")
            ) > 0,
            "{spelling}"
        );
    }
    let newest_naive = count(
        &conn,
        &format!("SELECT max(id) FROM requests WHERE {naive}"),
    );
    let oldest_offset = count(
        &conn,
        &format!("SELECT min(id) FROM requests WHERE {offset}"),
    );
    let newest_offset = count(
        &conn,
        &format!("SELECT max(id) FROM requests WHERE {offset}"),
    );
    let oldest_zulu = count(&conn, &format!("SELECT min(id) FROM requests WHERE {zulu}"));
    assert!(newest_naive < oldest_offset && newest_offset < oldest_zulu);
    // Microseconds are dropped when zero, as Python's isoformat does.
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE length(timestamp) = 20 AND timestamp LIKE '%Z'"
        ) > 0
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE length(timestamp) = 27 AND timestamp LIKE '%Z'"
        ) > 0
    );

    // Times lie in the window, and ids grow with time.
    let times: Vec<DateTime<Utc>> = conn
        .prepare("SELECT timestamp FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|t| parse_apantli_time(&t.unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "ids do not follow time"
    );
    let start = opts.now - TimeDelta::days(30);
    assert!(times[0] >= start && *times.last().unwrap() <= opts.now);
    assert!(
        times[0] < start + TimeDelta::days(1),
        "rows do not reach back to the start"
    );
    assert_eq!(summary.first, Some(times[0]));
    assert_eq!(summary.last, times.last().copied());

    // Error rows: cost 0, no response, an exception name first.
    assert!(
        summary.error_rows > 50 && summary.error_rows < 400,
        "{summary:?}"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE error IS NOT NULL"
        ) as u64,
        summary.error_rows
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE error IS NOT NULL \
                      AND (cost <> 0 OR response_data IS NOT NULL OR error NOT GLOB '[A-Z]*: *')"
        ),
        0
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE error LIKE 'RateLimitError: %'"
        ) > 0
    );
    // Unknown prices: successful rows with cost 0.0.
    assert!(summary.zero_cost_rows > 50, "{summary:?}");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE error IS NULL AND cost = 0"
        ) as u64,
        summary.zero_cost_rows
    );
    let total: f64 = conn
        .query_row("SELECT sum(cost) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert!(
        (total - summary.total_cost_usd).abs() < 1e-9,
        "{total} vs {summary:?}"
    );

    // The client alias in `model`, the provider's name in the request JSON.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE json_extract(request_data, '$.model') NOT LIKE provider || '/%'"
        ),
        0
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE model = 'sonnet' \
                          AND json_extract(request_data, '$.model') = 'anthropic/claude-sonnet-4-5'"
        ) > 0
    );
    for model in [
        "openai/gpt-4o",
        "openai/gpt-4.1-mini",
        "gemini/gemini-2.5-pro",
    ] {
        let sql = format!(
            "SELECT count(*) FROM requests WHERE json_extract(request_data, '$.model') = '{model}'"
        );
        assert!(count(&conn, &sql) > 0, "{model}");
    }

    // Secrets in plain text, in Python's JSON spelling, padded to the payload size.
    assert!(
        count(
            &conn,
            r#"SELECT count(*) FROM requests WHERE request_data LIKE '%"api_key": "sk-%'"#
        ) > 1000
    );
    let (min_len, max_len): (i64, i64) = conn
        .query_row(
            "SELECT min(length(request_data)), max(length(request_data)) FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        min_len >= 1000 && max_len <= 1030,
        "request_data {min_len}..{max_len} bytes"
    );

    // Usage JSON with the cache token counts in all three places.
    for field in [
        "$.usage.prompt_tokens_details.cached_tokens",
        "$.usage.cache_read_input_tokens",
        "$.usage.cache_creation_input_tokens",
    ] {
        let sql = format!(
            "SELECT count(*) FROM requests WHERE json_extract(response_data, '{field}') > 0"
        );
        assert!(count(&conn, &sql) > 0, "{field}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE error IS NULL \
                      AND json_extract(response_data, '$.usage.total_tokens') <> total_tokens"
        ),
        0
    );
}

#[test]
fn bobamixer_sample_has_the_schema_and_rows_of_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let opts = options(3000);
    let summary = sample::create_bobamixer(&path, &opts).unwrap();
    let conn = Connection::open(&path).unwrap();

    assert_eq!(schema_of(&conn), reference_schema("bobamixer.sql"));
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(count(&conn, "PRAGMA user_version"), 3);

    assert_eq!(count(&conn, "SELECT count(*) FROM usage_records"), 3000);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM sessions") as u64,
        summary.sessions
    );
    assert!(
        summary.sessions > 50 && summary.sessions < 3000,
        "{summary:?}"
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM budgets"), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE session_id NOT IN (SELECT id FROM sessions)"
        ),
        0
    );
    let start = (opts.now - TimeDelta::days(30)).timestamp();
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT count(*) FROM usage_records WHERE ts < {start} OR ts > {}",
                opts.now.timestamp()
            )
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE input_cost <> round(input_cost, 6) \
                      OR output_cost <> round(output_cost, 6)"
        ),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE input_cost = 0 AND output_cost = 0"
        ) as u64,
        summary.zero_cost_rows
    );
    assert!(summary.zero_cost_rows > 50);
    // Text ids in every shape BobaMixer has written.
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE id GLOB 'rec_[0-9]*'"
        ) > 1000
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE length(id) = 36 AND id LIKE '%-4%'"
        ) > 100
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM usage_records WHERE length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'"
        ) > 100
    );
    let levels = count(
        &conn,
        "SELECT count(DISTINCT estimate_level) FROM usage_records",
    );
    assert_eq!(levels, 3);
    let total: f64 = conn
        .query_row(
            "SELECT sum(input_cost + output_cost) FROM usage_records",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (total - summary.total_cost_usd).abs() < 1e-6,
        "{total} vs {summary:?}"
    );
    assert_eq!(summary.error_rows, 0);
}

#[test]
fn samples_are_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, seed: u64, bobamixer: bool| {
        let path = dir.path().join(name);
        let opts = SampleOptions {
            seed,
            ..options(500)
        };
        if bobamixer {
            sample::create_bobamixer(&path, &opts).unwrap();
        } else {
            sample::create_apantli(&path, &opts).unwrap();
        }
        Connection::open(path).unwrap()
    };
    let (a1, a2, a3) = (
        make("a1.db", 1, false),
        make("a2.db", 1, false),
        make("a3.db", 2, false),
    );
    assert_eq!(all_rows(&a1, "requests"), all_rows(&a2, "requests"));
    assert_ne!(all_rows(&a1, "requests"), all_rows(&a3, "requests"));

    let (b1, b2, b3) = (
        make("b1.db", 1, true),
        make("b2.db", 1, true),
        make("b3.db", 2, true),
    );
    for table in ["sessions", "usage_records", "budgets"] {
        assert_eq!(all_rows(&b1, table), all_rows(&b2, table), "{table}");
    }
    assert_ne!(
        all_rows(&b1, "usage_records"),
        all_rows(&b3, "usage_records")
    );
}

#[test]
fn sample_refuses_bad_options_and_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("requests.db");
    fs::write(&existing, b"keep me").unwrap();
    let err = sample::create_apantli(&existing, &options(10)).unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert_eq!(fs::read(&existing).unwrap(), b"keep me");

    let fresh = dir.path().join("fresh.db");
    let cases: [(SampleOptions, &str); 4] = [
        (
            SampleOptions {
                error_share: 1.5,
                ..options(10)
            },
            "error_share",
        ),
        (
            SampleOptions {
                zero_cost_share: -0.1,
                ..options(10)
            },
            "zero_cost_share",
        ),
        (
            SampleOptions {
                days: 0,
                ..options(10)
            },
            "days",
        ),
        (
            SampleOptions {
                payload_bytes: 1 << 30,
                ..options(10)
            },
            "payload_bytes",
        ),
    ];
    for (opts, named) in cases {
        let err = sample::create_bobamixer(&fresh, &opts).unwrap_err();
        assert!(format!("{err:#}").contains(named), "{named}: {err:#}");
        assert!(!fresh.exists(), "{named}: a file was left behind");
    }
    // No rows over no days is an empty database with the schema.
    let empty = sample::create_apantli(
        &fresh,
        &SampleOptions {
            rows: 0,
            days: 0,
            ..options(0)
        },
    )
    .unwrap();
    assert_eq!((empty.rows, empty.first), (0, None));
}

// ---------------------------------------------------------------------------------------------
// The simulator
// ---------------------------------------------------------------------------------------------

const WAIT_LIMIT: Duration = Duration::from_secs(60);

fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    common::wait::until(what, WAIT_LIMIT, condition);
}

/// A running `gateway-sim` that is killed if the test fails before it exits.
struct SimProcess {
    child: Child,
    report: PathBuf,
    committed: PathBuf,
    ready: PathBuf,
}

impl SimProcess {
    fn start(dir: &Path, db: &Path, style: &str, extra: &[&str]) -> Self {
        let (report, committed, ready) = (
            dir.join("report.json"),
            dir.join("committed.txt"),
            dir.join("ready"),
        );
        let child = common::bins::gateway_sim()
            .arg("--db")
            .arg(db)
            .args(["--style", style])
            .arg("--report")
            .arg(&report)
            .arg("--committed")
            .arg(&committed)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gateway-sim");
        Self {
            child,
            report,
            committed,
            ready,
        }
    }

    fn wait_ready(&mut self) {
        let ready = self.ready.clone();
        let child = &mut self.child;
        wait_until("the simulator's first committed write", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("gateway-sim exited early with {status}");
            }
            ready.exists()
        });
    }

    fn terminate(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Waits for the process to exit 0, and reads the report from the file and from stdout.
    fn finish(mut self) -> (SimReport, Vec<String>) {
        let child = &mut self.child;
        wait_until("gateway-sim to exit", || {
            child.try_wait().unwrap().is_some()
        });
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        assert!(
            output.status.success(),
            "gateway-sim failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: SimReport =
            serde_json::from_str(&fs::read_to_string(&self.report).unwrap()).unwrap();
        let printed: SimReport = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report, printed);
        let committed = fs::read_to_string(&self.committed)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (report, committed)
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_consistent(report: &SimReport, committed: &[String]) {
    assert_eq!(
        report.attempted,
        report.committed + report.failed,
        "{report:?}"
    );
    assert_eq!(report.committed as usize, committed.len());
    assert_eq!(report.errors.values().sum::<u64>(), report.failed);
}

/// Every key the simulator says it committed is in the database, and nothing else is.
fn assert_no_row_lost(conn: &Connection, table: &str, committed: &[String]) {
    let stored: BTreeSet<String> = conn
        .prepare(&format!("SELECT CAST(id AS TEXT) FROM {table}"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let claimed: BTreeSet<String> = committed.iter().cloned().collect();
    assert_eq!(claimed.len(), committed.len(), "a key was reported twice");
    assert_eq!(stored, claimed);
}

#[test]
fn simulator_writes_apantli_rows_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    let sim = SimProcess::start(
        dir.path(),
        &db,
        "apantli",
        &["--rate", "20", "--duration", "1s", "--failed-share", "0.2"],
    );
    let (report, committed) = sim.finish();
    assert_consistent(&report, &committed);
    assert_eq!(report.failed, 0, "{report:?}");
    // Writes due at 0, 50, ..., 950 ms: a fixed schedule gives exactly 20.
    assert_eq!(report.attempted, 20, "{report:?}");
    let conn = Connection::open(&db).unwrap();
    assert_no_row_lost(&conn, "requests", &committed);
    let ids: Vec<i64> = committed.iter().map(|k| k.parse().unwrap()).collect();
    assert_eq!(report.first_id, ids.iter().min().copied().map(RowKey::Id));
    assert_eq!(
        report.last_committed_id,
        ids.iter().max().copied().map(RowKey::Id)
    );
    // Current spelling, recent, and about a fifth error rows.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM requests WHERE timestamp NOT LIKE '%Z'"
        ),
        0
    );
    let newest = conn
        .query_row("SELECT max(timestamp) FROM requests", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap();
    assert!(Utc::now() - parse_apantli_time(&newest) < TimeDelta::minutes(5));
    let errors = count(
        &conn,
        "SELECT count(*) FROM requests WHERE error IS NOT NULL AND cost = 0 AND response_data IS NULL",
    );
    assert!(
        errors > 0 && errors < 15,
        "{errors} error rows of {}",
        report.committed
    );
}

#[test]
fn simulator_writes_bobamixer_rows_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let sim = SimProcess::start(
        dir.path(),
        &db,
        "bobamixer",
        &["--rate", "50", "--duration", "1s"],
    );
    let (report, committed) = sim.finish();
    assert_consistent(&report, &committed);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.attempted, 50, "{report:?}");
    let conn = Connection::open(&db).unwrap();
    assert_no_row_lost(&conn, "usage_records", &committed);
    assert_eq!(report.first_id, Some(RowKey::Text(committed[0].clone())));
    assert!(committed.iter().all(|k| k.starts_with("rec_")));
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(count(&conn, "PRAGMA user_version"), 3);
    assert!(count(&conn, "SELECT count(*) FROM sessions") >= 1);
}

/// Holds the write lock on `db` for `hold`, from a connection that waits for its turn.
fn hold_write_lock(db: &Path, hold: Duration) -> Duration {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let taken = Instant::now();
    std::thread::sleep(hold);
    conn.execute_batch("COMMIT").unwrap();
    taken.elapsed()
}

#[test]
fn bobamixer_writes_fail_at_once_while_a_write_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    sample::create_bobamixer(&db, &options(200)).unwrap();
    let mut sim = SimProcess::start(dir.path(), &db, "bobamixer", &["--rate", "100"]);
    sim.wait_ready();
    let held = hold_write_lock(&db, Duration::from_millis(300));
    sim.terminate();
    let (report, committed) = sim.finish();

    assert_consistent(&report, &committed);
    // About 30 writes fell into the lock; each was lost without waiting.
    assert!(report.failed >= 10, "{report:?}");
    assert!(
        report.errors.contains_key("database is locked"),
        "{report:?}"
    );
    assert!(
        report.latency_ms.max < held.as_secs_f64() * 1000.0,
        "a write waited for the lock: {report:?}"
    );
    let conn = Connection::open(&db).unwrap();
    let new_rows = count(&conn, "SELECT count(*) FROM usage_records") - 200;
    assert_eq!(new_rows as u64, report.committed);
    let claimed: Vec<String> = committed.iter().map(|k| format!("'{k}'")).collect();
    let sql = format!(
        "SELECT count(*) FROM usage_records WHERE id IN ({})",
        claimed.join(",")
    );
    assert_eq!(count(&conn, &sql) as u64, report.committed);
}

#[test]
fn apantli_writes_wait_out_a_short_lock_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    sample::create_apantli(&db, &options(200)).unwrap();
    // Well below what rollback-journal commits sustain on a slow disk (about 40/s), so that only
    // our lock makes writes wait.
    let mut sim = SimProcess::start(dir.path(), &db, "apantli", &["--rate", "10"]);
    sim.wait_ready();
    hold_write_lock(&db, Duration::from_millis(400));
    sim.terminate();
    let (report, committed) = sim.finish();

    assert_consistent(&report, &committed);
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        report.latency_ms.max >= 300.0,
        "no write stalled behind the lock: {report:?}"
    );
    assert!(report.latency_ms.max < 5000.0, "{report:?}");
    let conn = Connection::open(&db).unwrap();
    assert_eq!(
        count(&conn, "SELECT count(*) FROM requests WHERE id > 200") as u64,
        report.committed
    );
    assert_eq!(report.first_id, Some(RowKey::Id(201)));
}

#[test]
fn simulator_runs_in_process_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    let ready = dir.path().join("ready");
    let committed_file = dir.path().join("committed.txt");
    let opts = SimOptions {
        failed_share: 0.5,
        ready_file: Some(ready.clone()),
        committed_file: Some(committed_file.clone()),
        ..SimOptions::new(&db, Style::Apantli, 20.0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || sim::run(&opts, stop))
    };
    wait_until("the first committed write", || {
        ready.exists() || runner.is_finished()
    });
    let conn = Connection::open(&db).unwrap();
    wait_until("an error row and a success row", || {
        conn.query_row(
            "SELECT count(DISTINCT error IS NULL) FROM requests",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 2
    });
    stop.store(true, Ordering::Relaxed);
    let report = runner.join().unwrap().unwrap();

    let committed: Vec<String> = fs::read_to_string(&committed_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_consistent(&report, &committed);
    assert_eq!(report.failed, 0);
    assert_no_row_lost(&conn, "requests", &committed);
    assert_eq!(
        report.committed_ids_file.as_deref(),
        Some(committed_file.as_path())
    );
}

#[test]
fn simulator_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let cases: [(&[&str], &str); 4] = [
        (&["--style", "litellm", "--rate", "10"], "--postgres"),
        (
            &["--style", "apantli", "--rate", "10", "--duration", "30"],
            "ms, s, m, h",
        ),
        (
            &["--style", "apantli", "--rate", "0", "--duration", "1s"],
            "rate",
        ),
        (
            &[
                "--style",
                "apantli",
                "--rate",
                "10",
                "--duration",
                "1s",
                "--failed-share",
                "2",
            ],
            "failed share",
        ),
    ];
    for (args, named) in cases {
        let output = common::bins::gateway_sim()
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    assert!(!db.exists(), "a rejected run created the database");
}

/// CPU time of the calling thread, from Linux's scheduler statistics (first field, in ns).
fn thread_cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

/// Benchmark-sized samples; run with `cargo test --release --test sim -- --ignored --nocapture`.
/// The bound is on CPU time: on a shared machine wall time measures the neighbours.
#[test]
#[ignore = "benchmark size: run in release"]
fn a_million_rows_take_well_under_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        rows: 1_000_000,
        ..options(0)
    };
    for (name, create) in [
        (
            "requests.db",
            sample::create_apantli as fn(&Path, &SampleOptions) -> _,
        ),
        ("usage.db", sample::create_bobamixer),
    ] {
        let path = dir.path().join(name);
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        let summary = create(&path, &opts).unwrap();
        let (wall, cpu) = (wall.elapsed(), thread_cpu_time() - cpu);
        let size = fs::metadata(&path).unwrap().len();
        println!(
            "{name}: {} rows in {wall:.1?} wall, {cpu:.1?} CPU, {} MB",
            summary.rows,
            size / 1_000_000
        );
        assert_eq!(summary.rows, 1_000_000);
        assert!(cpu < Duration::from_secs(40), "{name} took {cpu:?} of CPU");
    }
}
