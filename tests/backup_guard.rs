//! A gateway database that was emptied, replaced or mostly deleted: a backup of a database whose
//! table is gone fails and publishes nothing; one whose rows or bytes fell sharply against the
//! newest good archive is written but held (a critical alert, retention paused, never counted),
//! so the good archives before it survive every later run.

mod common;

use std::fs;
use std::path::PathBuf;

use common::backup::{Rig, Schema, figure};
use common::bins::describe;

/// A rig with `keep: {last: 2}` and two good archives, returned oldest first.
fn two_good_backups(extra: &str) -> (Rig, Vec<PathBuf>) {
    let rig = Rig::new(
        Schema::Apantli,
        2000,
        &format!("keep: {{last: 2}}\nverify: quick\n{extra}"),
    );
    for _ in 0..2 {
        if let Some(last) = rig.archives().last() {
            common::backup::wait_for_next_second(last);
        }
        let out = rig.run_job("nightly");
        assert!(out.status.success(), "{}", describe(&out));
    }
    let good = rig.archives();
    assert_eq!(good.len(), 2);
    (rig, good)
}

fn run_after_last(rig: &Rig) -> std::process::Output {
    common::backup::wait_for_next_second(rig.archives().last().unwrap());
    rig.run_job("nightly")
}

fn dry_run(rig: &Rig) -> std::process::Output {
    rig.caretaker(&[
        "run-job",
        "nightly",
        "--dry-run",
        "--config",
        rig.config.to_str().unwrap(),
    ])
    .output()
    .unwrap()
}

fn alerts(rig: &Rig) -> String {
    fs::read_to_string(rig.alerts_file()).unwrap_or_default()
}

/// Two more runs fail, naming the missing table, and leave exactly the two good archives.
fn assert_backups_of_a_missing_table_fail(rig: &Rig, good: &[PathBuf]) {
    for _ in 0..2 {
        let out = run_after_last(rig);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("has no table `requests`")
                && err.contains("no archive was written and none was deleted"),
            "{err}"
        );
        assert_eq!(rig.archives(), good, "the good archives must stay");
    }
    let leftovers: Vec<_> = fs::read_dir(&rig.to)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        alerts(rig).contains("job-failed:nightly"),
        "{}",
        alerts(rig)
    );
}

#[test]
fn a_gateway_file_truncated_to_zero_bytes_fails_and_keeps_the_good_archives() {
    let (rig, good) = two_good_backups("");
    fs::File::create(&rig.db).unwrap();
    assert_eq!(fs::metadata(&rig.db).unwrap().len(), 0);
    let dry = dry_run(&rig);
    assert_eq!(dry.status.code(), Some(1), "{}", describe(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stderr).contains("has no table `requests`"),
        "{}",
        describe(&dry)
    );
    assert_backups_of_a_missing_table_fail(&rig, &good);
}

#[test]
fn a_dropped_gateway_table_fails_and_keeps_the_good_archives() {
    let (rig, good) = two_good_backups("");
    rusqlite::Connection::open(&rig.db)
        .unwrap()
        .execute_batch("DROP TABLE requests")
        .unwrap();
    assert_backups_of_a_missing_table_fail(&rig, &good);
}

#[test]
fn ninety_percent_of_rows_deleted_is_written_but_held_and_prunes_nothing() {
    let (rig, good) = two_good_backups("");
    rusqlite::Connection::open(&rig.db)
        .unwrap()
        .execute_batch("DELETE FROM requests WHERE id % 10 != 0")
        .unwrap();
    // The gateway keeps writing while the guard holds the runs.
    let sim = rig.start_sim(10.0);
    let mut held = Vec::new();
    for run in 0..2 {
        let out = run_after_last(&rig);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(figure(&out, "held"), 1.0, "{}", describe(&out));
        assert_eq!(figure(&out, "deleted"), 0.0, "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("HELD, retention paused: its rows fell from 2000 to")
                && stdout.contains(&good[1].file_name().unwrap().to_string_lossy().into_owned()),
            "run {run}: {stdout}"
        );
        let archives = rig.archives();
        held.push(archives.last().unwrap().clone());
        assert_eq!(archives[..2], good[..], "run {run}: the good archives stay");
        assert_eq!(archives.len(), 3 + run, "run {run}: {archives:?}");
    }
    sim.stop();
    let alerts = alerts(&rig);
    assert!(
        alerts.contains("backup-shrunk:nightly") && alerts.contains("critical"),
        "{alerts}"
    );
    // The dry run says what the guard compares with.
    let dry = dry_run(&rig);
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains("shrink guard: under 50% of the 2000 rows")
            && plan.contains(&*good[1].file_name().unwrap().to_string_lossy()),
        "{plan}"
    );

    // Restoring the rows: the next run passes, and the held archives take no keep slot, so it
    // is the oldest good archive that goes, not the newer one.
    let restored = rig.dir.path().join("restored.db");
    let out = rig.restore(&good[1], &restored, false);
    assert!(out.status.success(), "{}", describe(&out));
    fs::rename(&restored, &rig.db).unwrap();
    let out = run_after_last(&rig);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(figure(&out, "held"), 0.0, "{}", describe(&out));
    let archives = rig.archives();
    assert!(!archives.contains(&good[0]), "{archives:?}");
    assert!(archives.contains(&good[1]), "{archives:?}");
    assert!(held.iter().all(|h| archives.contains(h)), "{archives:?}");
    assert!(
        fs::read_to_string(rig.alerts_file())
            .unwrap()
            .contains("resolved"),
        "the shrink alert is resolved"
    );
}

#[test]
fn with_the_guard_off_a_shrunken_database_is_pruned_as_any_other() {
    let (rig, good) = two_good_backups("shrink_guard: off");
    rusqlite::Connection::open(&rig.db)
        .unwrap()
        .execute_batch("DELETE FROM requests WHERE id % 10 != 0")
        .unwrap();
    let out = run_after_last(&rig);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(figure(&out, "held"), 0.0, "{}", describe(&out));
    assert_eq!(figure(&out, "deleted"), 1.0, "{}", describe(&out));
    let archives = rig.archives();
    assert_eq!(archives.len(), 2);
    assert_eq!(archives[0], good[1]);
    assert!(!alerts(&rig).contains("backup-shrunk"), "{}", alerts(&rig));
}

#[test]
fn a_bad_shrink_guard_is_a_check_error_at_its_line() {
    for (value, ok) in [
        ("50%", true),
        ("off", true),
        ("12.5%", true),
        ("half", false),
        ("150%", false),
        ("true", false),
    ] {
        let rig = Rig::new(Schema::Apantli, 10, &format!("shrink_guard: {value}"));
        let out = rig
            .caretaker(&["check", "--config", rig.config.to_str().unwrap()])
            .output()
            .unwrap();
        let line = fs::read_to_string(&rig.config)
            .unwrap()
            .lines()
            .position(|l| l.contains("shrink_guard"))
            .unwrap()
            + 1;
        if ok {
            assert!(out.status.success(), "{value}: {}", describe(&out));
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{value}: {}", describe(&out));
            assert!(
                err.contains(&format!(":{line}:"))
                    && err.contains("shrink_guard")
                    && err.contains("or `off`"),
                "{value}: {err}"
            );
        }
    }
}

/// The archive job's purge and a VACUUM of ours shrink the database on purpose: the guard
/// allows for what the state database's ledger says we removed, and holds nothing.
#[test]
fn our_own_archive_purge_and_vacuum_hold_no_backup() {
    let (rig, _) = two_good_backups("");
    let mut yaml = fs::read_to_string(&rig.config).unwrap();
    yaml.push_str(&format!(
        "  purge:\n    on_signal: USR1\n    archive: {{older_than: 1d, to: {}}}\n  care:\n    on_signal: USR2\n    maintenance: {{vacuum: always}}\n",
        rig.dir.path().join("archive").display()
    ));
    fs::write(&rig.config, yaml).unwrap();
    let rows = || -> i64 {
        rusqlite::Connection::open(&rig.db)
            .unwrap()
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .unwrap()
    };

    let out = rig.run_job("purge");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        rows() * 2 < 2000,
        "the purge must leave under half of the rows for this test to mean anything: {}",
        rows()
    );
    let out = run_after_last(&rig);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(figure(&out, "held"), 0.0, "{}", describe(&out));

    let before = fs::metadata(&rig.db).unwrap().len();
    let out = rig.run_job("care");
    assert!(out.status.success(), "{}", describe(&out));
    let after = fs::metadata(&rig.db).unwrap().len();
    assert!(
        after * 2 < before,
        "the VACUUM left {after} of {before} bytes"
    );
    let out = run_after_last(&rig);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(figure(&out, "held"), 0.0, "{}", describe(&out));
    assert!(!alerts(&rig).contains("backup-shrunk"), "{}", alerts(&rig));
}
