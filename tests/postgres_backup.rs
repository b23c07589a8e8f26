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
            "gateway:\n  url: {url}\n  schema: litellm\nstate_dir: state\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 2}}, {backup}}}\n"
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
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\nfor a; do case $a in --file) next=1;; *) if [ -n \"$next\" ]; then printf 'PGDMP garbage' > \"$a\"; next=; fi;; esac; done\n",
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
