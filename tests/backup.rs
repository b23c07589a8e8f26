//! Hot backups of real gateway databases while a simulated gateway writes, then restores and test restores.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use caretaker::backup::archive::{self, Manifest};
use common::backup::{Rig, Schema, figure, integrity, keys};
use common::bins::describe;

/// Writes per second. Apantli commits in rollback-journal mode with several fsyncs each, which
/// caps a debug build on a small test machine at a few dozen commits/s even without us (the
/// simulator alone loses rows at 100/s there), so its rate stays well below that cap; the
/// benchmark runs the 100/s case on a release build.
fn rate(schema: Schema) -> f64 {
    match schema {
        Schema::Apantli => 10.0,
        Schema::Bobamixer => 100.0,
    }
}

fn manifest_of(archive_path: &Path) -> Manifest {
    archive::read(archive_path, &mut std::io::sink())
        .unwrap_or_else(|e| panic!("{e:#}"))
        .manifest
}

/// Backs up while the gateway writes, restores, and checks that nothing was lost on either side.
fn hot_backup_loses_nothing(schema: Schema) {
    let rig = Rig::new(schema, 1500, "");
    let preexisting = keys(&rig.db, schema);
    let sim = rig.start_sim(rate(schema));
    // Every row committed by now must be in the snapshot, which begins after this read.
    let committed_before = keys(&rig.db, schema);
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let (report, committed) = sim.stop();
    assert_eq!(
        report.failed,
        0,
        "the gateway lost rows during the backup: {report:?}\n{}",
        describe(&out)
    );
    assert!(report.committed > 0);
    let lock_ms = figure(&out, "lock_ms");
    let read_txn_ms = figure(&out, "read_txn_ms");
    match schema {
        Schema::Bobamixer => assert_eq!(lock_ms, 0.0, "WAL writers are never blocked"),
        Schema::Apantli => {
            assert_eq!(lock_ms, read_txn_ms);
            assert!(
                lock_ms < 2000.0,
                "the writer stall of {lock_ms} ms is too close to Apantli's 5 s"
            );
        }
    }

    let archives = rig.archives();
    assert_eq!(archives.len(), 1);
    let archive = &archives[0];
    let name = archive.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("nightly-") && name.ends_with("Z.tar.gz"),
        "{name}"
    );
    assert_eq!(
        fs::metadata(archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&rig.to).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let m = manifest_of(archive);
    assert_eq!(m.job, "nightly");
    assert_eq!(m.source, rig.db);
    assert_eq!(m.table, schema.table());
    assert_eq!(
        m.journal_mode,
        if schema == Schema::Apantli {
            "delete"
        } else {
            "wal"
        }
    );
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].source, rig.include);
    assert!(m.files[0].entry.starts_with("files/") && m.files[0].entry.ends_with("gateway.env"));
    assert!(m.page_size > 0 && m.page_count > 0 && m.size == m.page_size * m.page_count);
    assert!(m.tool.starts_with("caretaker "));

    let restored = rig.dir.path().join("restored").join("gateway.db");
    let out = rig.restore(archive, &restored, false);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(integrity(&restored), "ok");
    let got = keys(&restored, schema);
    assert_eq!(m.row_count, Some(got.len() as u64));
    let missing: Vec<_> = committed_before.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "rows committed before the backup began are missing: {missing:?}"
    );
    let phantom: Vec<_> = got
        .iter()
        .filter(|k| !preexisting.contains(*k) && !committed.contains(*k))
        .take(5)
        .collect();
    assert!(
        phantom.is_empty(),
        "the restored database has rows nobody committed: {phantom:?}"
    );
    assert!(
        got.len() > preexisting.len(),
        "the snapshot should hold some of the simulator's rows"
    );

    let out = rig.run_job("check");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(figure(&out, "archives_verified"), 1.0);
}

#[test]
fn rollback_journal_gateway_with_5s_busy_timeout_loses_no_row() {
    hot_backup_loses_nothing(Schema::Apantli);
}

#[test]
fn wal_gateway_without_busy_timeout_loses_no_row() {
    hot_backup_loses_nothing(Schema::Bobamixer);
}

#[test]
fn retention_prunes_only_this_jobs_archives_after_a_good_backup() {
    let rig = Rig::new(
        Schema::Apantli,
        200,
        "keep: {last: 2}\ncompression: none\nverify: quick",
    );
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let first = rig.archives().pop().unwrap();
    assert!(first.to_str().unwrap().ends_with(".tar"));
    // Older archives of this job, one of another job with a similar name, and unrelated files.
    let old = [
        "nightly-20200101T000000Z.tar",
        "nightly-20210101T000000Z.tar.gz",
        "nightly-20220101T000000Z.tar",
    ];
    for name in old {
        fs::copy(&first, rig.to.join(name)).unwrap();
    }
    let strangers = [
        "nightly-2-20200101T000000Z.tar.gz",
        "nightly-20200101T000000Z.tar.gz.corrupt",
        "notes.txt",
    ];
    for name in strangers {
        fs::write(rig.to.join(name), b"not ours").unwrap();
    }

    let dry = rig
        .caretaker(&[
            "run-job",
            "nightly",
            "--config",
            rig.config.to_str().unwrap(),
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", describe(&dry));
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains("snapshot ") && plan.contains("(this run)"),
        "{plan}"
    );
    assert!(
        plan.contains("delete nightly-20200101T000000Z.tar"),
        "{plan}"
    );
    assert!(
        plan.contains("keep ") && plan.contains("last snapshot"),
        "{plan}"
    );
    assert_eq!(rig.archives().len(), 4, "a dry run changes nothing");

    common::backup::wait_for_next_second(&first);
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let left: Vec<String> = rig
        .archives()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], first.file_name().unwrap().to_string_lossy());
    assert_eq!(figure(&out, "deleted"), 3.0);
    for name in strangers {
        assert_eq!(
            fs::read(rig.to.join(name)).unwrap(),
            b"not ours",
            "{name} must be left alone"
        );
    }
}

#[test]
fn restore_refuses_to_overwrite_without_force_and_keeps_a_safety_copy() {
    let rig = Rig::new(Schema::Bobamixer, 300, "");
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let archive = rig.archives().pop().unwrap();

    let target = rig.dir.path().join("live.db");
    common::backup::create_db(&target, Schema::Apantli, 20);
    let before = fs::read(&target).unwrap();
    let out = rig.restore(&archive, &target, false);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read(&target).unwrap(), before);

    // What a cleanly stopped gateway can leave: an empty WAL, a -shm, a journal whose header
    // is zeroed (journal_mode=PERSIST). A hot journal or a WAL with frames is refused (see
    // tests/restore_hardening.rs).
    for (suffix, content) in [
        ("-wal", &b""[..]),
        ("-shm", b"stale shm"),
        ("-journal", b"\0\0\0\0\0\0\0\0 stale journal"),
    ] {
        fs::write(format!("{}{suffix}", target.display()), content).unwrap();
    }
    // The target's directory is not ours: its mode stays as it is.
    fs::set_permissions(rig.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = rig.restore(&archive, &target, true);
    assert!(out.status.success(), "{}", describe(&out));
    let mode = fs::metadata(rig.dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    for suffix in ["-wal", "-shm", "-journal"] {
        assert!(
            !Path::new(&format!("{}{suffix}", target.display())).exists(),
            "stale {suffix} must be gone"
        );
    }
    assert_eq!(keys(&target, Schema::Bobamixer).len(), 300);
    assert_eq!(integrity(&target), "ok");
    let safety: Vec<_> = fs::read_dir(rig.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("live.db.before-restore-"))
        .collect();
    assert_eq!(
        safety.len(),
        3,
        "the old database, its WAL and its journal are kept: {safety:?}"
    );
    let copy = safety.iter().find(|n| n.ends_with('Z')).unwrap();
    assert_eq!(fs::read(rig.dir.path().join(copy)).unwrap(), before);
    // No temporary file is left beside the target.
    assert!(fs::read_dir(rig.dir.path()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("caretaker-tmp")
    }));

    let out = rig.restore(&rig.dir.path().join("nope.tar.gz"), &target, true);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
