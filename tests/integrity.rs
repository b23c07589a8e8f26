//! The integrity check on a copy: for a full check, rollback-journal databases are copied under
//! one short read transaction and the copy is checked, so the gateway's commits do not wait for
//! the check.

mod common;

use std::path::{Path, PathBuf};

use caretaker::demo::sample::{self, SampleOptions};
use common::bins::describe;
use common::dbcare::*;
use common::sim::Sim;

fn options(rows: u64) -> SampleOptions {
    SampleOptions {
        rows,
        seed: 11,
        ..SampleOptions::default()
    }
}

fn integrity_job(extra: &str) -> String {
    format!("  check:\n    on_signal: USR1\n    integrity: {{check: full{extra}}}\n")
}

fn quick_job() -> String {
    "  check:\n    on_signal: USR1\n    integrity: {check: quick}\n".to_string()
}

/// What `state_dir` holds besides caretaker's own state database.
fn scratch_left(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.contains("copy")
        })
        .collect()
}

#[test]
fn a_rollback_database_is_checked_on_a_copy_while_the_gateway_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    sample::create_apantli(&db, &options(5000)).unwrap();
    let sim = Sim::start(&db, "apantli", 50.0, 0.1, dir.path());
    let config = jobs_file(dir.path(), &db, "apantli", &integrity_job(""));
    let copied = run_job(&config, "check", &[]);
    let config = jobs_file(dir.path(), &db, "apantli", &integrity_job(", copy: never"));
    let live = run_job(&config, "check", &[]);
    // A quick check copies nothing by default: copying takes about as long as the check.
    let config = jobs_file(dir.path(), &db, "apantli", &quick_job());
    let quick = run_job(&config, "check", &[]);
    let (report, _) = sim.stop();

    assert!(copied.status.success(), "{}", describe(&copied));
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(
        stdout.contains("requests.db (a copy): PRAGMA integrity_check and PRAGMA foreign_key_check found no problem"),
        "{}",
        describe(&copied)
    );
    assert!(live.status.success(), "{}", describe(&live));
    let stdout = String::from_utf8_lossy(&live.stdout);
    assert!(
        stdout.contains("found no problem") && !stdout.contains("(a copy)"),
        "{}",
        describe(&live)
    );
    assert!(quick.status.success(), "{}", describe(&quick));
    let stdout = String::from_utf8_lossy(&quick.stdout);
    assert!(
        stdout.contains("requests.db: PRAGMA quick_check found no problem"),
        "{}",
        describe(&quick)
    );
    assert_eq!(report.failed, 0, "the gateway lost writes: {report:?}");
    assert!(report.committed > 0, "{report:?}");
    assert_eq!(scratch_left(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_wal_database_is_checked_live_unless_a_copy_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    sample::create_bobamixer(&db, &options(2000)).unwrap();
    let config = jobs_file(dir.path(), &db, "bobamixer", &integrity_job(""));
    let out = run_job(&config, "check", &["--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reads all"),
        "{}",
        describe(&out)
    );
    let out = run_job(&config, "check", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("(a copy)"),
        "{}",
        describe(&out)
    );

    let config = jobs_file(
        dir.path(),
        &db,
        "bobamixer",
        &integrity_job(", copy: always"),
    );
    let out = run_job(&config, "check", &["--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("then check the copy"),
        "{}",
        describe(&out)
    );
    let out = run_job(&config, "check", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("usage.db (a copy)"),
        "{}",
        describe(&out)
    );
    assert_eq!(scratch_left(dir.path()), Vec::<PathBuf>::new());
    // The WAL copy was opened and checked; the gateway's own WAL mode is untouched.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_copy_left_by_a_killed_run_is_removed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    sample::create_apantli(&db, &options(500)).unwrap();
    let config = jobs_file(dir.path(), &db, "apantli", &integrity_job(""));
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    for stale in ["integrity-check.copy.db", "integrity-check.copy.db-journal"] {
        std::fs::write(state.join(stale), b"half a copy").unwrap();
    }
    let out = run_job(&config, "check", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(scratch_left(dir.path()), Vec::<PathBuf>::new());
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn no_room_for_the_copy_fails_clearly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "this test needs a small filesystem: mounting a 2 MiB tmpfs failed (run as root, or in a container allowed to mount): {}",
        describe(&mount)
    );
    let _guard = Mounted(state.clone());
    let db = dir.path().join("requests.db");
    sample::create_apantli(&db, &options(2000)).unwrap();
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(
        size > 2 << 20,
        "sample of {size} bytes fits the 2 MiB state dir"
    );

    let config = jobs_file(dir.path(), &db, "apantli", &integrity_job(""));
    let out = run_job(&config, "check", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not enough free space in")
            && stderr.contains("for a copy of")
            && stderr.contains("copy: never"),
        "{stderr}"
    );
    assert_eq!(scratch_left(dir.path()), Vec::<PathBuf>::new());
}
