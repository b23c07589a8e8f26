//! Backups of a PostgreSQL gateway against a real server while the LiteLLM simulator writes:
//! `pg_dump` in our archive, verify quick and full, `caretaker restore --to postgres://…`, and
//! the pg_dump major-version rule against a second, newer server.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use caretaker::backup::archive;
use common::bins;
use common::pg::Cluster;
use common::sim::Sim;

/// Writes a jobs file for a backup job `nightly` of the database `url` into `dir`.
fn jobs_file(dir: &Path, url: &str, backup: &str) -> PathBuf {
    let path = dir.join("jobs.yaml");
    fs::write(
        &path,
        format!(
            "gateway:\n  url: {url}\n  schema: litellm\nstate_dir: state\nalerts: {{file: alerts.jsonl}}\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 2}}, {backup}}}\n"
        ),
    )
    .unwrap();
    path
}

fn caretaker(args: &[&str], jobs: &Path) -> Output {
    bins::caretaker()
        .args(args)
        .arg("--config")
        .arg(jobs)
        .env_remove("CARETAKER_CONFIG")
        .output()
        .unwrap()
}

fn archives(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir.join("backups"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Each row of `table` in `db` as the hash of its text form: equal sets, equal tables.
fn row_hashes(cluster: &Cluster, db: &str, table: &str) -> BTreeSet<String> {
    cluster
        .client(db)
        .query(&format!("SELECT md5(t::text) FROM {table} t"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Fills LiteLLM's daily aggregate with rows the simulator never touches.
fn fill_daily_spend(cluster: &Cluster, db: &str) {
    cluster
        .client(db)
        .batch_execute(
            "INSERT INTO \"LiteLLM_DailyUserSpend\" (id, user_id, date, api_key, model, spend, api_requests, updated_at) \
             SELECT 'd' || g, 'user-' || (g % 5), '2026-11-' || lpad((g % 28 + 1)::text, 2, '0'), 'key-' || g, 'gpt-4o', g * 0.01, g, now() \
             FROM generate_series(1, 300) g",
        )
        .unwrap();
}

#[test]
fn a_backup_during_writes_restores_equal_table_by_table() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    fill_daily_spend(&cluster, &db);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("litellm.yaml"), "model_list: []\n").unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.05, dir.path());
    common::wait::until("rows from the simulator", common::wait::DEADLINE, || {
        cluster.scalar(&db, "SELECT count(*) FROM \"LiteLLM_SpendLogs\"") >= Some(150)
    });
    let jobs = jobs_file(
        dir.path(),
        &cluster.url(&db),
        &format!(
            "verify: full, include: [{}]",
            dir.path().join("litellm.yaml").display()
        ),
    );
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    // The simulator keeps writing after the backup: the dump holds a moment, not the end.
    common::wait::until(
        "rows written after the backup",
        common::wait::DEADLINE,
        || cluster.scalar(&db, "SELECT count(*) FROM \"LiteLLM_SpendLogs\"") >= Some(300),
    );
    let (report, committed) = sim.stop();
    assert_eq!(
        report.failed, 0,
        "the backup cost the gateway rows: {report:?}"
    );
    assert_eq!(cluster.request_ids(&db), committed);

    let found = archives(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    let name = found[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("nightly-") && name.ends_with("Z.tar.gz"),
        "{name}"
    );
    let manifest = archive::peek_manifest(&found[0]).unwrap();
    let pg = manifest.postgres.clone().expect("a PostgreSQL manifest");
    assert_eq!(manifest.database, "database.pgdump");
    assert!(
        pg.server_version
            .starts_with(&format!("{}.", cluster.major)),
        "{pg:?}"
    );
    assert!(pg.dump_tool.starts_with("pg_dump (PostgreSQL)"), "{pg:?}");
    assert!(
        !manifest.source.to_string_lossy().contains("://"),
        "{manifest:?}"
    );
    assert_eq!(manifest.files.len(), 1);
    let spend_rows = pg
        .tables
        .iter()
        .find(|t| t.name == "public.LiteLLM_SpendLogs")
        .and_then(|t| t.rows)
        .expect("counted rows of the spend logs");
    assert!(spend_rows >= 150, "{pg:?}");
    assert_eq!(manifest.row_count, Some(spend_rows));

    // Restore into a fresh database with caretaker restore (pg_restore, one transaction).
    let fresh = cluster.empty_db();
    let restore = |force: bool| {
        let mut cmd = bins::caretaker();
        cmd.arg("restore")
            .arg(&found[0])
            .args(["--to", &cluster.url(&fresh)]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = restore(false);
    assert!(out.status.success(), "{}", bins::describe(&out));
    for t in &pg.tables {
        let table = format!("\"{}\"", t.name.trim_start_matches("public."));
        let restored = row_hashes(&cluster, &fresh, &table);
        assert_eq!(Some(restored.len() as u64), t.rows, "{}", t.name);
        let source = row_hashes(&cluster, &db, &table);
        if t.name.contains("SpendLogs") || t.name.contains("ErrorLogs") {
            // The simulator only inserts: the dump's rows are the source's rows of that moment.
            assert!(
                restored.is_subset(&source),
                "{}: restored rows differ from the source's",
                t.name
            );
        } else {
            assert_eq!(restored, source, "{}", t.name);
        }
    }
    // A database with tables needs --force.
    let out = restore(false);
    assert_eq!(out.status.code(), Some(2), "{}", bins::describe(&out));
    assert!(
        bins::describe(&out).contains("--force"),
        "{}",
        bins::describe(&out)
    );
    let out = restore(true);
    assert!(out.status.success(), "{}", bins::describe(&out));
    // A SQLite target is refused for a dump, naming what to give.
    let out = bins::caretaker()
        .arg("restore")
        .arg(&found[0])
        .arg("--to")
        .arg(dir.path().join("x.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        bins::describe(&out).contains("--to postgres://"),
        "{}",
        bins::describe(&out)
    );
    // The scratch database of the full verify is gone.
    assert_eq!(
        cluster.scalar(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'caretaker_verify%'"
        ),
        Some(0)
    );
}

#[test]
fn a_dump_that_does_not_read_back_is_never_published() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    // A pg_dump that writes what pg_dump would not: the quick verify must catch it.
    let fake = dir.path().join("bin");
    fs::create_dir(&fake).unwrap();
    let real = cluster.bin().join("pg_dump");
    let script = fake.join("pg_dump");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\nprintf 'PGDMP garbage'\n",
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(cluster.bin().join("pg_restore"), fake.join("pg_restore")).unwrap();
    let jobs = jobs_file(
        dir.path(),
        &cluster.url(&db),
        &format!("verify: quick, pg_dump: {}", script.display()),
    );
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert_eq!(out.status.code(), Some(1), "{}", bins::describe(&out));
    assert!(
        bins::describe(&out).contains("pg_restore"),
        "{}",
        bins::describe(&out)
    );
    assert_eq!(
        archives(dir.path()),
        Vec::<PathBuf>::new(),
        "nothing published, no temp left"
    );
}

#[test]
fn pg_dump_older_than_the_server_is_refused_naming_both_versions() {
    let Some(newer) = common::pg::embedded_bin_or_skip("pg_dump_older_than_the_server") else {
        return;
    };
    let debian_major = common::pg::major_of(&common::pg::server_bin());
    let cluster = Cluster::start_with(&newer);
    assert!(
        cluster.major > debian_major,
        "the wheel's server is not newer"
    );
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    // Without `pg_dump`, the newest installed is Debian's: older than this server.
    let jobs = jobs_file(dir.path(), &cluster.url(&db), "verify: quick");
    let out = caretaker(&["run-job", "nightly"], &jobs);
    let text = bins::describe(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for part in [
        format!("major {debian_major}"),
        format!("major {}", cluster.major),
        "backup.pg_dump".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing: {text}");
    }
    assert!(archives(dir.path()).is_empty());
    // Naming the server's own pg_dump works, verified by the pg_restore beside it.
    let jobs = jobs_file(
        dir.path(),
        &cluster.url(&db),
        &format!(
            "verify: full, pg_dump: {}",
            cluster.bin().join("pg_dump").display()
        ),
    );
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let found = archives(dir.path());
    let pg = archive::peek_manifest(&found[0]).unwrap().postgres.unwrap();
    assert!(
        pg.dump_tool.contains(&format!(" {}.", cluster.major)),
        "{pg:?}"
    );
}

#[test]
fn pg_dump_is_refused_for_a_sqlite_gateway_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    fs::write(
        &jobs,
        "gateway:\n  database: requests.db\n  schema: apantli\nstate_dir: state\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {to: backups, keep: {last: 2}, pg_dump: /usr/bin/pg_dump}\n",
    )
    .unwrap();
    let out = caretaker(&["check"], &jobs);
    let text = bins::describe(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("jobs.nightly.backup.pg_dump"), "{text}");
    assert!(
        text.contains("only read for a PostgreSQL gateway"),
        "{text}"
    );
}

#[test]
fn a_server_restart_during_the_dump_fails_the_run_cleanly_and_the_next_run_succeeds() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    fill_daily_spend(&cluster, &db);
    let dir = tempfile::tempdir().unwrap();
    // pg_dump that waits, once the run has exported its snapshot, until the test has restarted
    // the server.
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    let script = dir.path().join("pg_dump");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\ntouch {started}\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexec {real} \"$@\"\n",
            real = cluster.bin().join("pg_dump").display(),
            started = started.display(),
            go = go.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(
        cluster.bin().join("pg_restore"),
        dir.path().join("pg_restore"),
    )
    .unwrap();
    let jobs = jobs_file(
        dir.path(),
        &cluster.url(&db),
        &format!("verify: full, pg_dump: {}", script.display()),
    );
    let run = bins::caretaker()
        .args(["run-job", "nightly", "--config"])
        .arg(&jobs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait::until("pg_dump to start", common::wait::DEADLINE, || {
        started.exists()
    });
    cluster.restart_fast();
    fs::write(&go, "").unwrap();
    let out = run.wait_with_output().unwrap();
    let text = bins::describe(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("pg_dump"), "{text}");
    let left: Vec<_> = fs::read_dir(dir.path().join("backups"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the failed run left {left:?}");
    let alerts = fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
    assert!(
        alerts.contains("nightly"),
        "no alert of the failed run: {alerts}"
    );
    // The next run (the server is back) writes a good archive.
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    assert_eq!(archives(dir.path()).len(), 1);
}

#[test]
fn pg_dump_and_pg_restore_reach_a_tls_only_server_as_the_jobs_file_says() {
    let mut cluster = Cluster::start();
    let db = cluster.litellm_db();
    fill_daily_spend(&cluster, &db);
    let dir = tempfile::tempdir().unwrap();
    let certs = common::health::make_certs(dir.path());
    let port = cluster.with_tls(&certs.cert, &certs.key);
    // TCP connections must be TLS: a tool that did not get sslmode or the CA cannot connect.
    cluster.set_hba("local all all trust\nhostssl all all 127.0.0.0/8 trust\n");
    let url = format!("postgres://caretaker@localhost:{port}/{db}?sslmode=verify-full");
    let jobs = dir.path().join("jobs.yaml");
    fs::write(
        &jobs,
        format!(
            "gateway:\n  url: {url}\n  schema: litellm\n  ca_file: {}\nstate_dir: state\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 2}}, verify: full}}\n",
            certs.ca.display()
        ),
    )
    .unwrap();
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    // Without the CA, verify-full fails (ours and libpq's alike) and nothing is written.
    fs::write(
        &jobs,
        fs::read_to_string(&jobs)
            .unwrap()
            .replace(&format!("  ca_file: {}\n", certs.ca.display()), ""),
    )
    .unwrap();
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert_eq!(out.status.code(), Some(1), "{}", bins::describe(&out));
    assert_eq!(archives(dir.path()).len(), 1);
}

#[test]
fn the_verify_job_reads_a_dump_back_and_catches_a_corrupt_one() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    fill_daily_spend(&cluster, &db);
    let dir = tempfile::tempdir().unwrap();
    let jobs = jobs_file(dir.path(), &cluster.url(&db), "verify: quick");
    let text = fs::read_to_string(&jobs).unwrap()
        + "  check-backups:\n    on_signal: USR2\n    verify: {backups_of: nightly, which: all}\n";
    fs::write(&jobs, text).unwrap();
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let out = caretaker(&["run-job", "check-backups"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    assert!(
        bins::describe(&out).contains("test-restored"),
        "{}",
        bins::describe(&out)
    );
    // One byte changed inside the dump: the verify job fails and alerts.
    let archive = &archives(dir.path())[0];
    let mut bytes = fs::read(archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(archive, bytes).unwrap();
    let out = caretaker(&["run-job", "check-backups"], &jobs);
    assert_eq!(out.status.code(), Some(1), "{}", bins::describe(&out));
    let alerts = fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    assert!(alerts.contains("fail their test restore"), "{alerts}");
}

#[test]
fn a_dump_of_a_wiped_gateway_is_held_and_prunes_nothing() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let mut client = cluster.client(&db);
    caretaker::demo::pgsim::fill(&mut client, 2000, 30, chrono::Utc::now(), 3, 0.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jobs = jobs_file(dir.path(), &cluster.url(&db), "verify: quick");
    fs::write(
        &jobs,
        fs::read_to_string(&jobs)
            .unwrap()
            .replace("last: 2", "last: 1"),
    )
    .unwrap();
    let out = caretaker(&["run-job", "nightly"], &jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    // Archive names have seconds: the next run must not share the first one's.
    let done = chrono::Utc::now().timestamp();
    common::wait::until("the next second", common::wait::DEADLINE, || {
        chrono::Utc::now().timestamp() > done
    });
    // The gateway loses most of its rows (an upgrade gone wrong): the next dump is held.
    client
        .batch_execute("DELETE FROM \"LiteLLM_SpendLogs\" WHERE request_id > 'req-3-0000000200'")
        .unwrap();
    let out = caretaker(&["run-job", "nightly"], &jobs);
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("HELD, retention paused") && text.contains("rows fell from 2000 to 200"),
        "{text}"
    );
    assert_eq!(archives(dir.path()).len(), 2, "the good archive was pruned");
    let alerts = fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    assert!(alerts.contains("shrank sharply"), "{alerts}");
}
