//! The archive job on a PostgreSQL gateway (LiteLLM's spend logs) against a real server while
//! the LiteLLM simulator writes: every row archived once or still there, exactly as it was
//! (JSONB included) but for its redacted secrets; the tables pruned with it; strip_payloads;
//! kill -9 and a server restart mid-run; a lock held on the rows being purged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;

use common::bins;
use common::pg::Cluster;
use common::pgjobs::{self, Canon};
use common::sim::Sim;

const SPEND: &str = "LiteLLM_SpendLogs";
const ERRORS: &str = "LiteLLM_ErrorLogs";
const TOOLS: &str = "LiteLLM_SpendLogToolIndex";

fn spawn_job(jobs: &Path) -> Child {
    pgjobs::spawn_job(jobs)
}

fn redact_keys() -> Vec<String> {
    vec!["api_key".to_string()]
}

/// Checks that every row of `before` (the old rows) was archived exactly as it was, redacted,
/// and is gone from the table, and that the archive holds nothing else.
fn assert_archived_exactly(
    cluster: &Cluster,
    db: &str,
    dir: &Path,
    table: &str,
    prefix: &str,
    before: &BTreeMap<String, Canon>,
) {
    let types = pgjobs::column_types(cluster, db, table);
    let files = pgjobs::archive_files(&dir.join("archive"), prefix);
    let archived = pgjobs::archived_rows(&files, &types, "request_id");
    let now = pgjobs::table_rows(cluster, db, table, "request_id");
    let archived_ids: BTreeSet<&String> = archived.keys().collect();
    let before_ids: BTreeSet<&String> = before.keys().collect();
    assert_eq!(archived_ids, before_ids, "{table}: archived rows");
    for id in before.keys() {
        assert!(
            !now.contains_key(id),
            "{table}: {id} archived and still there"
        );
        assert_eq!(
            archived[id],
            pgjobs::redacted(&before[id], &types, &redact_keys()),
            "{table}: {id} differs from the original"
        );
    }
    pgjobs::assert_no_secrets(&files);
}

/// The rows of `table` whose key starts with `old-`.
fn old_rows(cluster: &Cluster, db: &str, table: &str) -> BTreeMap<String, Canon> {
    let mut rows = pgjobs::table_rows(cluster, db, table, "request_id");
    rows.retain(|k, _| k.starts_with("old-"));
    rows
}

/// A cluster with a LiteLLM database holding `rows` old rows (their keys in `original`), and a
/// jobs file for the archive job `old` of body `job`.
struct Setup {
    cluster: Cluster,
    db: String,
    dir: tempfile::TempDir,
    jobs: PathBuf,
    original: BTreeSet<String>,
}

fn setup(rows: u32, job: &str) -> Setup {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    pgjobs::seed_old(&cluster, &db, rows);
    let original = old_rows(&cluster, &db, SPEND).into_keys().collect();
    let dir = tempfile::tempdir().unwrap();
    let jobs = pgjobs::jobs_file(dir.path(), &cluster.url(&db), job);
    Setup {
        cluster,
        db,
        dir,
        jobs,
        original,
    }
}

#[test]
fn archive_during_writes_keeps_every_row_once_redacted_and_prunes_the_tables_with_it() {
    let Setup {
        cluster,
        db,
        dir,
        jobs,
        ..
    } = setup(600, "archive: {older_than: 30d, to: archive, batch: 70}");
    pgjobs::seed_young(&cluster, &db);
    let spend_before = old_rows(&cluster, &db, SPEND);
    let errors_before = old_rows(&cluster, &db, ERRORS);
    assert_eq!(spend_before.len(), 600);
    assert!(!errors_before.is_empty());
    // A dry run reads through a read-only session and says what it would do.
    let out = bins::caretaker()
        .args(["run-job", "old", "--dry-run", "--config"])
        .arg(&jobs)
        .output()
        .unwrap();
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("would archive 600 rows"), "{text}");
    assert_eq!(old_rows(&cluster, &db, SPEND).len(), 600);
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.1, dir.path());
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let text = bins::describe(&out);
    common::wait::until(
        "rows written after the archive",
        common::wait::DEADLINE,
        || {
            cluster.scalar(
                &db,
                "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'req-%'",
            ) >= Some(150)
        },
    );
    let (report, committed) = sim.stop();
    assert_eq!(
        report.failed, 0,
        "the archive cost the gateway rows: {report:?}"
    );

    assert_archived_exactly(&cluster, &db, dir.path(), SPEND, "old-", &spend_before);
    assert_archived_exactly(
        &cluster,
        &db,
        dir.path(),
        ERRORS,
        "old-litellmerrorlogs-",
        &errors_before,
    );
    // The simulator's rows and the young request are all there, its tool-index and error rows too.
    let ids = cluster.request_ids(&db);
    let young: BTreeSet<String> = ids
        .iter()
        .filter(|i| !i.starts_with("req-"))
        .cloned()
        .collect();
    assert_eq!(young, BTreeSet::from(["young-1".to_string()]));
    assert_eq!(ids.len(), committed.len() + 1);
    assert!(committed.iter().all(|c| ids.contains(c)));
    let tools: Vec<String> = cluster
        .client(&db)
        .query(&format!("SELECT request_id FROM \"{TOOLS}\""), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tools,
        vec!["young-1".to_string()],
        "tool-index rows of purged requests remain"
    );
    assert_eq!(
        cluster.scalar(
            &db,
            "SELECT count(*) FROM \"LiteLLM_ErrorLogs\" WHERE request_id = 'young-1'"
        ),
        Some(1)
    );
    // A plain VACUUM (ANALYZE) followed the purge.
    assert_eq!(
        cluster.scalar(
            &db,
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'LiteLLM_SpendLogs' AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
        ),
        Some(1),
        "{text}"
    );
    assert!(text.contains("vacuumed"), "{text}");
    // A second run finds nothing and writes nothing.
    let files = pgjobs::archive_files(&dir.path().join("archive"), "old-").len();
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    assert_eq!(
        pgjobs::archive_files(&dir.path().join("archive"), "old-").len(),
        files
    );
}

#[test]
fn strip_payloads_keeps_the_rows_and_empties_not_null_payloads_to_an_empty_object() {
    let Setup {
        cluster,
        db,
        dir,
        jobs,
        ..
    } = setup(
        200,
        "archive: {older_than: 30d, to: archive, batch: 50, then: strip_payloads}",
    );
    // One payload column made NOT NULL: it is stripped to '{}', the others to NULL.
    cluster
        .client(&db)
        .batch_execute("ALTER TABLE \"LiteLLM_SpendLogs\" ALTER COLUMN response SET NOT NULL")
        .unwrap();
    let before = old_rows(&cluster, &db, SPEND);
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.1, dir.path());
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let (report, _) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    let types = pgjobs::column_types(&cluster, &db, SPEND);
    let files = pgjobs::archive_files(&dir.path().join("archive"), "old-");
    let archived = pgjobs::archived_rows(&files, &types, "request_id");
    let after = old_rows(&cluster, &db, SPEND);
    assert_eq!(after.len(), before.len(), "strip keeps every row");
    assert_eq!(archived.len(), before.len());
    for (id, row) in &before {
        assert_eq!(
            archived[id],
            pgjobs::redacted(row, &types, &redact_keys()),
            "{id}"
        );
        let stripped = &after[id];
        for (column, value) in row {
            let want = match column.as_str() {
                "messages" | "proxy_server_request" => serde_json::Value::Null,
                "response" => serde_json::json!({}),
                _ => value.clone(),
            };
            assert_eq!(stripped[column], want, "{id}.{column}");
        }
    }
    pgjobs::assert_no_secrets(&files);
    // Stripped rows are not archived again.
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    assert_eq!(
        pgjobs::archive_files(&dir.path().join("archive"), "old-").len(),
        files.len()
    );
}

/// The keys archived in every file, failing on a key in two files.
fn archived_ids(dir: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for file in pgjobs::archive_files(&dir.join("archive"), "old-") {
        for line in pgjobs::gunzip(&file).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["request_id"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "{id} archived twice");
        }
    }
    ids
}

fn kill9(child: &mut Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::KILL,
    );
    let _ = child.wait();
}

#[test]
fn kill_9_during_archive_twenty_times_then_a_run_leaves_every_row_once() {
    let Setup {
        cluster,
        db,
        dir,
        jobs,
        original,
    } = setup(1500, "archive: {older_than: 30d, to: archive, batch: 30}");
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.0, dir.path());
    let archive = dir.path().join("archive");
    let mut killed = 0;
    for round in 0..20 {
        let files = pgjobs::archive_files(&archive, "").len();
        let mut child = spawn_job(&jobs);
        // Killed at a different moment each round: after one new file (its rows being purged),
        // after two, or right at its start.
        match round % 3 {
            0 => common::wait::until("a new archive file", common::wait::DEADLINE, || {
                pgjobs::archive_files(&archive, "").len() > files
                    || child.try_wait().unwrap().is_some()
            }),
            1 => common::wait::until("two new archive files", common::wait::DEADLINE, || {
                pgjobs::archive_files(&archive, "").len() > files + 1
                    || child.try_wait().unwrap().is_some()
            }),
            _ => {}
        }
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        kill9(&mut child);
    }
    assert!(
        killed >= 15,
        "only {killed} runs were still going when killed"
    );
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let (report, committed) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    let archived = archived_ids(dir.path());
    let remaining: BTreeSet<String> = cluster
        .request_ids(&db)
        .into_iter()
        .filter(|i| i.starts_with("old-"))
        .collect();
    assert!(remaining.is_empty(), "old rows left: {remaining:?}");
    assert_eq!(archived, original, "archived + remaining = original");
    assert!(
        committed
            .iter()
            .all(|c| cluster.request_ids(&db).contains(c))
    );
}

#[test]
fn a_server_restart_mid_archive_fails_cleanly_with_an_alert_and_the_next_run_finishes() {
    let Setup {
        cluster,
        db,
        dir,
        jobs,
        original,
    } = setup(600, "archive: {older_than: 30d, to: archive, batch: 20}");
    let archive = dir.path().join("archive");
    // A session holding a few rows halfway keeps the run busy there (it retries its batch), so
    // that the restart lands in the middle of the run, with files written and rows left.
    let mut blocker = cluster.client(&db);
    let mut tx = blocker.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM \"LiteLLM_SpendLogs\" WHERE request_id BETWEEN 'old-000300' AND 'old-000305' FOR UPDATE",
        &[],
    )
    .unwrap();
    let timeouts = || {
        cluster
            .log()
            .matches("canceling statement due to lock timeout")
            .count()
    };
    let mut child = spawn_job(&jobs);
    common::wait::until(
        "the run to wait on the held rows",
        common::wait::DEADLINE,
        || timeouts() >= 1 || child.try_wait().unwrap().is_some(),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the restart"
    );
    assert!(!pgjobs::archive_files(&archive, "old-").is_empty());
    cluster.restart_fast();
    drop(tx);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    // The run fails cleanly (its session is gone) and says so in an alert.
    assert!(!status.success(), "{stderr}");
    let alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
    assert!(
        alerts.contains("\"job\":\"old\""),
        "no alert for the failed run: {alerts}\n{stderr}"
    );
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let archived = archived_ids(dir.path());
    assert_eq!(archived, original);
    assert!(
        cluster
            .request_ids(&db)
            .iter()
            .all(|i| !i.starts_with("old-"))
    );
}

#[test]
fn a_lock_held_on_the_rows_makes_the_batch_wait_and_retry_without_an_error_storm() {
    let Setup {
        cluster,
        db,
        dir,
        jobs,
        original,
    } = setup(
        300,
        "archive: {older_than: 30d, to: archive, batch: 50}
    timeout: 2m",
    );
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.0, dir.path());
    // Another session holds row locks on some of the old rows, as a long transaction would.
    let run = pgjobs::run_through_held_lock(&cluster, &db, &jobs, "old-000100", "old-000120");
    assert!(run.success, "{}", run.output);
    let (report, _) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    // Backoff, not a storm: a handful of tries while the lock was held.
    let timeouts = pgjobs::lock_timeouts(&cluster);
    assert!(timeouts <= 12, "{timeouts} lock timeouts\n{}", run.output);
    assert!(
        run.output.contains("trying again after a pause"),
        "{}",
        run.output
    );
    assert_eq!(archived_ids(dir.path()), original);
    assert!(
        cluster
            .request_ids(&db)
            .iter()
            .all(|i| !i.starts_with("old-"))
    );
    let alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
    assert!(alerts.is_empty(), "{alerts}");
}
