//! Backups under faults: kill -9 mid-run, a full disk, an unreadable source, corrupted archives.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::backup::{Rig, Schema, integrity};
use common::bins::describe;
use common::files::{SmallFilesystem, names};
use sha2::{Digest, Sha256};

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// kill -9 runs: 20 in the normal suite, `CARETAKER_FAULT_RUNS` in the slow fault suite.
fn fault_runs() -> usize {
    std::env::var("CARETAKER_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn kill_9_at_random_points_never_leaves_a_listed_partial_archive() {
    let rig = Rig::new(Schema::Apantli, 150, "keep: {last: 1000}\nverify: quick");
    let sim = rig.start_sim(10.0);
    let started = Instant::now();
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let full_run = started.elapsed();
    let old = rig.archives().pop().unwrap();
    let old_sha = sha(&old);

    let runs = fault_runs();
    for run in 0..runs {
        let mut child = rig
            .run_job_command("nightly")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A random point of a whole run, including its very start and its retention step.
        let at = full_run.mul_f64(rand::random::<f64>() * 1.1);
        std::thread::sleep(at);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(sha(&old), old_sha, "run {run}: the old archive changed");
        for archive in rig.archives() {
            let checked = caretaker::backup::archive::read(&archive, &mut std::io::sink());
            assert!(
                checked.is_ok(),
                "run {run}, killed after {at:?}: {} is listed but does not verify: {:#}",
                archive.display(),
                checked.unwrap_err()
            );
        }
    }
    // The next run sweeps what the killed ones left and succeeds (retried until it gets a new
    // second: a killed run may already have published this second's archive).
    let mut out = rig.run_job("nightly");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("already exists")
        && Instant::now() < deadline
    {
        out = rig.run_job("nightly");
    }
    assert!(out.status.success(), "{}", describe(&out));
    let left = names(&rig.to);
    assert!(
        left.iter().all(|n| !n.contains("caretaker-tmp")),
        "temporary files survived the next run: {left:?}"
    );
    assert!(
        left.iter()
            .all(|n| caretaker::backup::ArchiveName::parse("nightly", n).is_some()),
        "{left:?}"
    );

    let (report, _) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(integrity(&rig.db), "ok");
}

#[test]
fn a_full_disk_is_refused_up_front_and_old_backups_stay() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    common::backup::create_db(&db, Schema::Apantli, 300);
    let small = SmallFilesystem::mount(&dir.path().join("small"), "3m");
    let to = small.dir.join("backups");
    let mut rig = Rig::with_paths(dir, Schema::Apantli, db.clone(), to.clone(), "");
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    let old = rig.archives().pop().unwrap();
    let old_sha = sha(&old);

    common::backup::wait_for_next_second(&old);
    // Grow the gateway past what the small filesystem can hold twice over.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE filler (b BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO filler SELECT randomblob(1024) FROM n;").unwrap();
    drop(conn);
    let out = rig.run_job("nightly");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not enough free space") && stderr.contains(to.to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(names(&to), [old.file_name().unwrap().to_str().unwrap()]);
    assert_eq!(sha(&old), old_sha);
    // The failure is alerted (on_job_failure is on by default).
    let alerts = fs::read_to_string(rig.alerts_file()).unwrap_or_default();
    assert!(alerts.contains("not enough free space"), "{alerts}");

    // Restoring onto the small filesystem is refused the same way, before anything is written.
    let target = small.dir.join("restored.db");
    let big = rig.dir.path().join("big.tar.gz");
    rig.to = rig.dir.path().join("big-backups");
    rig.write_config("");
    let out = rig.run_job("nightly");
    assert!(out.status.success(), "{}", describe(&out));
    fs::rename(rig.archives().pop().unwrap(), &big).unwrap();
    fs::write(small.dir.join("fill"), vec![0u8; 1 << 20]).unwrap();
    let out = rig.restore(&big, &target, false);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not enough free space"),
        "{}",
        describe(&out)
    );
    assert!(!target.exists());
}

#[test]
fn an_unreadable_source_fails_clearly_and_writes_nothing() {
    for (what, setup) in [
        ("missing", None),
        ("not a database", Some(vec![0x42u8; 10_000])),
    ] {
        let rig = Rig::new(Schema::Apantli, 10, "");
        fs::remove_file(&rig.db).unwrap();
        if let Some(bytes) = setup {
            fs::write(&rig.db, bytes).unwrap();
        }
        let out = rig.run_job("nightly");
        assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(rig.db.to_str().unwrap()),
            "{what}: the error must name the database: {stderr}"
        );
        if what == "not a database" {
            assert!(stderr.contains("not a database"), "{stderr}");
        } else {
            assert!(
                !rig.db.exists(),
                "a missing gateway database must not be created"
            );
        }
        assert!(names(&rig.to).is_empty(), "{what}: {:?}", names(&rig.to));
    }
}

#[test]
fn corrupted_archives_are_refused_by_restore_and_verify() {
    let rig = Rig::new(Schema::Bobamixer, 300, "keep: {last: 10}");
    let good = rig.backed_up();
    let bytes = fs::read(&good).unwrap();

    let flipped = {
        let mut b = bytes.clone();
        let i = b.len() / 2;
        b[i] ^= 0x55;
        b
    };
    let truncated = bytes[..bytes.len() - 100].to_vec();
    let cases = [("flipped byte", flipped), ("truncated gzip", truncated)];
    for (what, content) in &cases {
        let bad = rig
            .dir
            .path()
            .join(format!("{}.tar.gz", what.replace(' ', "-")));
        fs::write(&bad, content).unwrap();
        rig.assert_refused(&bad, what, &[]);
    }

    // An uncompressed archive has no CRC: the SHA-256 of the database catches the flip.
    let mut rig = rig;
    rig.write_config("keep: {last: 10}\ncompression: none");
    let plain = rig.dir.path().join("plain.tar");
    {
        let mut out = Vec::new();
        let m = caretaker::backup::archive::read(&good, &mut out)
            .unwrap()
            .manifest;
        let mut tar = tar::Builder::new(Vec::new());
        let json = serde_json::to_vec(&m).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, "manifest.json", json.as_slice())
            .unwrap();
        out[5000] ^= 1;
        let mut h = tar::Header::new_gnu();
        h.set_size(out.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, &m.database, out.as_slice())
            .unwrap();
        let env = fs::read(&rig.include).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(env.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, &m.files[0].entry, env.as_slice())
            .unwrap();
        fs::File::create(&plain)
            .unwrap()
            .write_all(&tar.into_inner().unwrap())
            .unwrap();
    }
    let out = rig.restore(&plain, &rig.dir.path().join("restored.db"), false);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        describe(&out)
    );

    // The verify job finds a corrupted archive among good ones, fails and alerts.
    let victim = rig.to.join("nightly-20200101T000000Z.tar.gz");
    fs::write(&victim, &cases[0].1).unwrap();
    let out = rig.run_job("check");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nightly-20200101T000000Z.tar.gz"),
        "{}",
        describe(&out)
    );
    let alerts = fs::read_to_string(rig.alerts_file()).unwrap();
    assert!(alerts.contains("backup-corrupt:check"), "{alerts}");
    assert!(
        names(&rig.to).iter().all(|n| !n.contains("caretaker-tmp")),
        "{:?}",
        names(&rig.to)
    );
    // The good archive still restores.
    let out = rig.restore(&good, &rig.dir.path().join("ok.db"), false);
    assert!(out.status.success(), "{}", describe(&out));
}
