//! More databases than one: the tldw per-user layout backed up live, globs found afresh, directory includes, restores of all or one, check-time errors, kill -9.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use caretaker::backup::archive;
use common::backup::{Schema, integrity, keys};
use common::bins::describe;
use common::multidb::{caretaker, count, jobs_file, tldw_layout};
use common::sim::Sim;
use sha2::{Digest, Sha256};

fn archives(dir: &Path) -> Vec<PathBuf> {
    caretaker::backup::list(&dir.join("backups"), "nightly")
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn run_job(config: &Path, job: &str) -> std::process::Output {
    caretaker(&["run-job", job, "--config", config.to_str().unwrap()])
}

/// Restores every database of `archive` under `to`, which must succeed.
fn restore_whole(archive: &Path, to: &Path) {
    let out = caretaker(&[
        "restore",
        archive.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn fifty_live_user_databases_are_each_a_consistent_snapshot_and_restore_whole_or_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    // 25 users with two databases each: 50 per-user databases, and users.db.
    let live = [1, 2, 3, 4, 5];
    let made = tldw_layout(&root, 25, &live);
    let media = |u: u32| root.join(format!("Databases/user_databases/{u}/Media_DB_v2.db"));
    // Writers on 5 of them: three with a rollback journal (Apantli's habits), two in WAL.
    let sims: Vec<(u32, Schema, Sim)> = live
        .iter()
        .map(|&u| {
            let schema = if u <= 3 {
                Schema::Apantli
            } else {
                Schema::Bobamixer
            };
            (
                u,
                schema,
                Sim::start(&media(u), schema.name(), 25.0, 0.0, dir.path()),
            )
        })
        .collect();
    let config = jobs_file(
        dir.path(),
        &root,
        "databases: [gateway, users, media, notes]",
    );
    let before: Vec<BTreeSet<String>> = sims
        .iter()
        .map(|(u, schema, _)| keys(&media(*u), *schema))
        .collect();
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("52 databases"), "{stdout}");
    let mut committed = Vec::new();
    for (u, _, sim) in sims {
        let (report, keys) = sim.stop();
        assert_eq!(
            report.failed, 0,
            "user {u}: the writer lost rows: {report:?}"
        );
        committed.push(keys);
    }

    let archive_path = archives(dir.path()).pop().unwrap();
    let manifest = archive::read(&archive_path, &mut std::io::sink())
        .unwrap()
        .manifest;
    assert_eq!(manifest.database, "databases/gateway/requests.db");
    assert_eq!(manifest.databases.len(), 51);
    let matched: Vec<(&str, u64)> = manifest
        .matched
        .iter()
        .map(|m| (m.name.as_str(), m.files))
        .collect();
    assert_eq!(matched, [("users", 1), ("media", 25), ("notes", 25)]);

    let restored = dir.path().join("restored");
    restore_whole(&archive_path, &restored);
    let under = |db: &Path| {
        let rel = db.strip_prefix(root.join("Databases")).unwrap();
        let rel = rel.strip_prefix("user_databases").unwrap_or(rel);
        let name = match db.file_name().unwrap().to_str().unwrap() {
            "users.db" => "users",
            "Media_DB_v2.db" => "media",
            _ => "notes",
        };
        restored.join("databases").join(name).join(rel)
    };
    for db in &made {
        let copy = under(db);
        assert_eq!(integrity(&copy), "ok", "{}", copy.display());
        assert_eq!(
            count(&copy, "notes"),
            count(db, "notes"),
            "{}",
            copy.display()
        );
    }
    for (i, &u) in live.iter().enumerate() {
        let schema = if u <= 3 {
            Schema::Apantli
        } else {
            Schema::Bobamixer
        };
        let copy = under(&media(u));
        assert_eq!(integrity(&copy), "ok", "{}", copy.display());
        let got = keys(&copy, schema);
        assert!(
            before[i].is_subset(&got),
            "user {u}: {} rows committed before the backup are missing",
            before[i].difference(&got).count()
        );
        assert!(
            got.is_subset(&committed[i]),
            "user {u}: the copy holds rows the writer never committed"
        );
    }
    assert_eq!(
        integrity(&restored.join("databases/gateway/requests.db")),
        "ok"
    );

    // One database by its label, put in place alone.
    let one = dir.path().join("one.db");
    let out = caretaker(&[
        "restore",
        archive_path.to_str().unwrap(),
        "--database",
        "notes:7/ChaChaNotes.db",
        "--to",
        one.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(count(&one, "notes"), 7);
    // A name that stands for many is refused, naming what is accepted.
    let out = caretaker(&[
        "restore",
        archive_path.to_str().unwrap(),
        "--database",
        "media",
        "--to",
        dir.path().join("two.db").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("25 databases named `media`") && err.contains("media:1/Media_DB_v2.db"),
        "{err}"
    );

    // The verify job test-restores every database of the archive.
    let out = run_job(&config, "check");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn a_glob_is_found_afresh_each_run_and_the_gateway_may_stay_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 3, &[]);
    let config = jobs_file(dir.path(), &root, "databases: [users, media]");
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let first = archives(dir.path()).pop().unwrap();
    let m = archive::peek_manifest(&first).unwrap();
    // No gateway: the first database is users.db.
    assert_eq!(m.database, "databases/users/users.db");
    assert_eq!(m.table, "notes");
    assert_eq!(m.row_count, Some(30));
    assert_eq!(m.databases.len(), 3);

    // A user leaves, two arrive: the next run sees it.
    fs::remove_dir_all(root.join("Databases/user_databases/2")).unwrap();
    for u in [4, 5] {
        common::multidb::create_user_db(
            &root.join(format!("Databases/user_databases/{u}/Media_DB_v2.db")),
            2,
            "wal",
        );
    }
    common::backup::wait_for_next_second(&first);
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let latest = archives(dir.path()).pop().unwrap();
    let m = archive::peek_manifest(&latest).unwrap();
    let entries: Vec<&str> = m.databases.iter().map(|d| d.entry.as_str()).collect();
    assert_eq!(
        entries,
        [
            "databases/media/1/Media_DB_v2.db",
            "databases/media/3/Media_DB_v2.db",
            "databases/media/4/Media_DB_v2.db",
            "databases/media/5/Media_DB_v2.db"
        ]
    );
    assert_eq!(m.matched[1].files, 4);

    // The dry run says what a run would take now.
    let out = caretaker(&[
        "run-job",
        "nightly",
        "--dry-run",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("snapshot database media (") && plan.contains("4 files now"),
        "{plan}"
    );

    // A directory restore never lands in a directory that holds something.
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = caretaker(&[
        "restore",
        latest.to_str().unwrap(),
        "--to",
        busy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        describe(&out)
    );
    assert_eq!(common::files::names(&busy), ["keep.txt"]);
}

#[test]
fn a_directory_include_snapshots_its_live_database_which_a_raw_copy_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 1, &[]);
    let data = dir.path().join("data");
    fs::create_dir_all(data.join("projects/p1")).unwrap();
    fs::write(data.join("config.yaml"), "port: 8080\n").unwrap();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(data.join("projects/p1/blob.bin"), &blob).unwrap();
    // A live database in WAL mode whose committed rows are still in its WAL: the writer keeps
    // its connection open and never checkpoints.
    let live = data.join("app.db");
    let writer = rusqlite::Connection::open(&live).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT);",
        )
        .unwrap();
    for _ in 0..20 {
        writer
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
                 INSERT INTO items (body) SELECT hex(randomblob(100)) FROM n;",
            )
            .unwrap();
    }
    // The guide's recipe: copy the file.
    let raw = dir.path().join("raw-copy.db");
    fs::copy(&live, &raw).unwrap();
    let raw_rows = rusqlite::Connection::open(&raw)
        .and_then(|c| c.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0)))
        .ok();
    assert_ne!(
        raw_rows,
        Some(1000),
        "the raw copy should lack the rows still in the WAL"
    );

    let config = jobs_file(
        dir.path(),
        &root,
        &format!("databases: [users]\ninclude: [{}/]", data.display()),
    );
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let archive_path = archives(dir.path()).pop().unwrap();
    let m = archive::peek_manifest(&archive_path).unwrap();
    assert!(
        m.files.iter().all(|f| !f.entry.contains("app.db")),
        "the database or its -wal/-shm was copied raw: {:?}",
        m.files
    );
    let restored = dir.path().join("restored");
    restore_whole(&archive_path, &restored);
    let inside = |p: &Path| restored.join("files").join(p.strip_prefix("/").unwrap());
    let copy = inside(&live);
    assert_eq!(integrity(&copy), "ok");
    assert_eq!(count(&copy, "items"), 1000);
    assert!(!PathBuf::from(format!("{}-wal", copy.display())).exists());
    for f in ["config.yaml", "projects/p1/blob.bin"] {
        let sha = |p: &Path| hex::encode(Sha256::digest(fs::read(p).unwrap()));
        assert_eq!(sha(&inside(&data.join(f))), sha(&data.join(f)), "{f}");
    }
    drop(writer);
}

#[test]
fn check_names_an_undeclared_database_and_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 1, &[]);
    let good = jobs_file(dir.path(), &root, "databases: [gateway, media]");
    let out = caretaker(&["check", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("database media: ") && stdout.contains("1 file now"),
        "{stdout}"
    );
    let config = jobs_file(dir.path(), &root, "databases: [gateway, media, nope]");
    let out = caretaker(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jobs.yaml:")
            && err.contains("jobs.nightly.backup.databases")
            && err.contains("`nope`")
            && err.contains("accepted: gateway, media, notes, users"),
        "{err}"
    );
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("  users:", "  gateway:");
    fs::write(&config, text).unwrap();
    let out = caretaker(&["check", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("databases.gateway") && err.contains("cannot be declared again"),
        "{err}"
    );
}

#[test]
fn without_a_gateway_the_declared_databases_are_backed_up_checked_and_maintained() {
    let sandbox = common::sandbox::Sandbox::new();
    let dir = &sandbox.dir;
    let root = dir.path().join("tldw");
    tldw_layout(&root, 3, &[2]);
    let live = root.join("Databases/user_databases/2/Media_DB_v2.db");
    let sim = Sim::start(&live, Schema::Apantli.name(), 25.0, 0.0, dir.path());
    let to = dir.path().join("backups");
    let config = common::multidb::jobs_file_without_gateway(
        dir.path(),
        &root,
        &format!(
            "  nightly:\n    on_signal: USR1\n    backup: {{to: {to}, keep: {{last: 5}}, databases: [users, media]}}\n  \
             check:\n    on_signal: USR1\n    verify: {{backups_of: nightly, which: latest}}\n  \
             checkup:\n    on_signal: USR1\n    integrity: {{check: full, databases: [users, media, notes]}}\n  \
             upkeep:\n    on_signal: USR1\n    maintenance: {{databases: [media]}}\n  \
             sizes:\n    on_signal: USR1\n    health: {{database_max_size: 1GB, disk_free_min: 1%, databases: [users, media]}}\n",
            to = to.display()
        ),
    );
    let out = caretaker(&["check", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));

    let before = keys(&live, Schema::Apantli);
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    for job in ["check", "checkup", "upkeep", "sizes"] {
        let out = run_job(&config, job);
        assert!(out.status.success(), "{job}: {}", describe(&out));
    }
    let out = run_job(&config, "checkup");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("7 databases"),
        "{}",
        describe(&out)
    );
    let (report, committed) = sim.stop();
    assert_eq!(report.failed, 0, "the writer lost rows: {report:?}");

    let archive_path = archives(dir.path()).pop().unwrap();
    let manifest = archive::peek_manifest(&archive_path).unwrap();
    // The first database stands where the gateway's would; the others follow.
    assert_eq!(manifest.database, "databases/users/users.db");
    let entries: Vec<&str> = manifest
        .databases
        .iter()
        .map(|d| d.entry.as_str())
        .collect();
    assert_eq!(
        entries,
        [
            "databases/media/1/Media_DB_v2.db",
            "databases/media/2/Media_DB_v2.db",
            "databases/media/3/Media_DB_v2.db"
        ]
    );
    let restored = dir.path().join("restored");
    restore_whole(&archive_path, &restored);
    let copy = restored.join("databases/media/2/Media_DB_v2.db");
    assert_eq!(integrity(&copy), "ok");
    let got = keys(&copy, Schema::Apantli);
    assert!(
        before.is_subset(&got) && got.is_subset(&committed),
        "the live database's copy misses rows committed before it or holds rows never committed"
    );

    // `status` reads the jobs file and the state with no gateway to look at.
    let status = caretaker(&["status", "--config", config.to_str().unwrap()]);
    assert!(status.status.success(), "{}", describe(&status));

    // The daemon starts and runs all five on a signal, with no gateway to look at. Its backup
    // must not fall in the second of the run-job's archive (the job refuses a name taken).
    assert_eq!(config, sandbox.jobs_file());
    common::backup::wait_for_next_second(&archive_path);
    let daemon = sandbox.start_daemon();
    daemon.signal("USR1");
    common::wait::until(
        "five jobs run by the daemon",
        std::time::Duration::from_secs(120),
        || daemon.count_log("job succeeded") + daemon.count_log("job failed") >= 5,
    );
    assert_eq!(
        daemon.count_log("job succeeded"),
        5,
        "{}",
        daemon.log_text()
    );
}

#[test]
fn without_a_gateway_check_names_each_job_that_needs_one_and_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 1, &[]);
    let to = dir.path().join("backups");
    let config = common::multidb::jobs_file_without_gateway(
        dir.path(),
        &root,
        &format!(
            "  nightly:\n    schedule: \"@daily\"\n    backup: {{to: {to}, keep: {{last: 5}}}}\n  \
             checkup:\n    schedule: \"@daily\"\n    integrity: {{databases: [gateway, users]}}\n  \
             rates:\n    schedule: \"@daily\"\n    health: {{error_rate_max: {{share: 50%, over: 1h}}, databases: [users]}}\n  \
             old:\n    schedule: \"@daily\"\n    archive: {{older_than: 90d, to: {to}/archive}}\n  \
             fine:\n    schedule: \"@daily\"\n    maintenance: {{databases: [users, media]}}\n",
            to = to.display()
        ),
    );
    let out = caretaker(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "jobs.nightly.backup.databases",
        "jobs.checkup.integrity.databases",
        "jobs.rates.health.error_rate_max",
        "jobs.old.archive",
    ] {
        assert!(err.contains(key), "{key} is not named:\n{err}");
    }
    assert!(
        err.contains("jobs.yaml:")
            && err.contains("no `gateway:`")
            && err.contains("accepted: declare `gateway:` or list only `databases:` names (declared: media, notes, users)"),
        "{err}"
    );
    assert!(!err.contains("jobs.fine"), "{err}");
    assert_eq!(err.matches("no `gateway:`").count(), 4, "{err}");
    // Nothing ran: the refusal came before any job.
    assert!(!to.exists());
}

/// kill -9 runs: 20 in the normal suite, `CARETAKER_FAULT_RUNS` in the slow fault suite.
fn fault_runs() -> usize {
    std::env::var("CARETAKER_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn kill_9_at_random_points_never_publishes_an_archive_lacking_a_listed_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 10, &[]);
    let config = jobs_file(
        dir.path(),
        &root,
        "databases: [gateway, users, media, notes]",
    );
    let started = Instant::now();
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let full_run = started.elapsed();
    for run in 0..fault_runs() {
        let mut child = common::bins::caretaker()
            .args(["run-job", "nightly", "--config", config.to_str().unwrap()])
            .env_remove("CARETAKER_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = full_run.mul_f64(rand::random::<f64>() * 1.1);
        std::thread::sleep(at);
        let _ = child.kill();
        child.wait().unwrap();
        for archive_path in archives(dir.path()) {
            let read = archive::read(&archive_path, &mut std::io::sink());
            let m = read.unwrap_or_else(|e| {
                panic!(
                    "run {run}, killed after {at:?}: {} does not verify: {e:#}",
                    archive_path.display()
                )
            });
            // users.db, 10 media and 10 notes databases beside the gateway's.
            assert_eq!(m.manifest.databases.len(), 21, "run {run}");
        }
    }
    // A run after the kills sweeps what they left and succeeds.
    if let Some(last) = archives(dir.path()).pop() {
        common::backup::wait_for_next_second(&last);
    }
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let to = dir.path().join("backups");
    let stale: Vec<String> = common::files::names(&to)
        .into_iter()
        .filter(|n| n.contains(".caretaker-tmp"))
        .collect();
    assert!(
        stale.is_empty(),
        "temporary files left beside the archives: {stale:?}"
    );
    // Nor any copy held in memory (`/dev/shm/caretaker-<hash of the backup directory>-...`).
    let prefix = format!(
        "caretaker-{}-",
        hex::encode(&Sha256::digest(to.as_os_str().as_encoded_bytes())[..8])
    );
    if let Ok(entries) = fs::read_dir("/dev/shm") {
        let left: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "memory copies left: {left:?}");
    }
}

/// Damages a database in place: garbage over its second page, where its first table lives.
fn damage(db: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(4096 + 8)).unwrap();
    f.write_all(&[0xA5; 2000]).unwrap();
}

#[test]
fn integrity_maintenance_and_health_look_after_every_listed_database_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 3, &[]);
    let config = common::multidb::jobs_file_with(
        dir.path(),
        &root,
        "databases: [gateway]",
        "  checkup:\n    on_signal: USR1\n    integrity: {check: quick, databases: [gateway, users, notes]}\n  \
         upkeep:\n    on_signal: USR1\n    maintenance: {databases: [users, media]}\n  \
         sizes:\n    on_signal: USR1\n    health: {database_max_size: 4KB, databases: [media]}\n",
    );
    let alerts = dir.path().join("state/alerts.jsonl");

    let out = run_job(&config, "checkup");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("5 databases"),
        "{}",
        describe(&out)
    );

    let notes2 = root.join("Databases/user_databases/2/ChaChaNotes.db");
    damage(&notes2);
    let out = run_job(&config, "checkup");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = describe(&out);
    assert!(
        text.contains("1 of 5 databases failed") && text.contains("notes:2/ChaChaNotes.db"),
        "{text}"
    );
    let raised = common::health::alerts_for(&alerts, "integrity:checkup:notes:2/ChaChaNotes.db");
    assert_eq!(
        raised.len(),
        1,
        "{:?}",
        common::health::alert_lines(&alerts)
    );
    assert!(
        raised[0]
            .0
            .ends_with("database notes:2/ChaChaNotes.db fails its integrity check")
            && !raised[0].1,
        "{raised:?}"
    );
    assert!(
        common::health::alerts_for(&alerts, "integrity:checkup")
            .iter()
            .all(|(_, r)| *r)
    );

    // A backup holding the damaged database fails, naming it, and publishes nothing.
    let backup = common::multidb::jobs_file_with(
        dir.path(),
        &root,
        "databases: [gateway, users, notes]",
        "",
    );
    let out = run_job(&backup, "nightly");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = describe(&out);
    assert!(
        text.contains("database `notes`")
            && text.contains("2/ChaChaNotes.db")
            && text.contains("no archive was written"),
        "{text}"
    );
    assert!(archives(dir.path()).is_empty());
    let config = common::multidb::jobs_file_with(
        dir.path(),
        &root,
        "databases: [gateway]",
        "  checkup:\n    on_signal: USR1\n    integrity: {check: quick, databases: [gateway, users, notes]}\n  \
         upkeep:\n    on_signal: USR1\n    maintenance: {databases: [users, media]}\n  \
         sizes:\n    on_signal: USR1\n    health: {database_max_size: 4KB, databases: [media]}\n",
    );

    let out = run_job(&config, "upkeep");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 databases"),
        "{}",
        describe(&out)
    );

    // Each media database is over 4 KB; the gateway's sizes are not watched by this job.
    let out = run_job(&config, "sizes");
    assert!(out.status.success(), "{}", describe(&out));
    for u in 1..=3 {
        let key = format!("health:sizes:database_size:media:{u}/Media_DB_v2.db");
        let got = common::health::alerts_for(&alerts, &key);
        assert_eq!(
            got.len(),
            1,
            "{key}: {:?}",
            common::health::alert_lines(&alerts)
        );
        assert!(
            got[0]
                .0
                .contains(&format!(": database media:{u}/Media_DB_v2.db larger than")),
            "{got:?}"
        );
    }
    assert!(common::health::alerts_for(&alerts, "health:sizes:database_size").is_empty());
}

#[test]
fn a_disk_that_fills_halfway_through_publishes_nothing_and_keeps_the_old_archives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tldw");
    tldw_layout(&root, 20, &[]);
    // Each media database (WAL) about 1 MB of incompressible rows.
    for u in 1..=20 {
        let db = root.join(format!("Databases/user_databases/{u}/Media_DB_v2.db"));
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO notes (body) SELECT randomblob(1000) FROM n;",
        )
        .unwrap();
    }
    let small = common::files::SmallFilesystem::mount(&dir.path().join("small"), "64m");
    let config = jobs_file(dir.path(), &root, "databases: [media]");
    let to = small.dir.join("backups");
    let text = fs::read_to_string(&config).unwrap().replace(
        &format!("to: {}", dir.path().join("backups").display()),
        &format!("to: {}", to.display()),
    );
    fs::write(&config, text).unwrap();
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let old = caretaker::backup::list(&to, "nightly")
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let old_sha = hex::encode(Sha256::digest(fs::read(&old).unwrap()));

    let filler = small.dir.join("filler");
    let mut failed = None;
    // The filler must strike while the run writes; a run that finished first is tried again.
    for _ in 0..5 {
        common::backup::wait_for_next_second(&old);
        let _ = fs::remove_file(&filler);
        let child = common::bins::caretaker()
            .args(["run-job", "nightly", "--config", config.to_str().unwrap()])
            .env_remove("CARETAKER_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Halfway: once the run has written its first snapshot beside the archives.
        let writing = common::wait::poll(std::time::Duration::from_secs(30), || {
            fs::read_dir(&to)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".snapshot"))
                .then_some(())
        });
        if writing.is_some() {
            use std::io::Write;
            let mut f = fs::File::create(&filler).unwrap();
            let block = vec![0u8; 1 << 20];
            while f.write_all(&block).is_ok() {}
        }
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failed = Some(out);
            break;
        }
        for (_, p) in caretaker::backup::list(&to, "nightly").unwrap() {
            if p != old {
                fs::remove_file(p).unwrap();
            }
        }
    }
    let out = failed.expect("the disk never filled during a run");
    let text = describe(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("No space left") || text.contains("full"),
        "the failure should say the disk is full: {text}"
    );
    assert_eq!(
        common::files::names(&to),
        [old.file_name().unwrap().to_str().unwrap()],
        "only the old archive may remain: {text}"
    );
    assert_eq!(
        hex::encode(Sha256::digest(fs::read(&old).unwrap())),
        old_sha
    );
    // With room again the next run succeeds.
    fs::remove_file(&filler).unwrap();
    let out = run_job(&config, "nightly");
    assert!(out.status.success(), "{}", describe(&out));
}
