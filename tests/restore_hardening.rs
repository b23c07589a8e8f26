//! Hostile archives and busy targets: restore, the verify job and the backup's read-back accept only a real, matching database.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use caretaker::backup::archive::{self, Manifest};
use common::backup::{Rig, Schema};
use common::bins::describe;
use common::files::names;
use common::wait;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(60);

/// What a good archive holds, to build bad ones from.
struct Parts {
    manifest: Manifest,
    database: Vec<u8>,
    include: Vec<u8>,
}

fn parts(archive: &Path) -> Parts {
    let mut database = Vec::new();
    let manifest = archive::read(archive, &mut database).unwrap().manifest;
    let mut include = None;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(archive).unwrap(),
    ));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().starts_with("files") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            include = Some(bytes);
        }
    }
    Parts {
        manifest,
        database,
        include: include.unwrap(),
    }
}

/// One tar member: a name, its type and its data.
struct Member {
    name: String,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<&'static str>,
}

fn file(name: &str, data: Vec<u8>) -> Member {
    Member {
        name: name.into(),
        kind: tar::EntryType::Regular,
        data,
        link: None,
    }
}

fn special(name: &str, kind: tar::EntryType, link: Option<&'static str>) -> Member {
    Member {
        name: name.into(),
        kind,
        data: Vec::new(),
        link,
    }
}

fn tar_of(members: Vec<Member>) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(m.kind);
        h.set_size(m.data.len() as u64);
        h.set_mode(0o600);
        if let Some(link) = m.link {
            h.set_link_name(link).unwrap();
        }
        if matches!(m.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        tar.append_data(&mut h, &m.name, m.data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn json(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec_pretty(m).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A manifest describing `database` exactly (size, SHA-256, pages), as a forger would write it.
fn describing(p: &Parts, database: &[u8]) -> Manifest {
    let mut m = p.manifest.clone();
    m.size = database.len() as u64;
    m.sha256 = sha(database);
    m.page_count = m.size / m.page_size;
    m
}

/// A whole archive: the manifest, the database member, the included file.
fn archive_of(p: &Parts, m: &Manifest, database: Member) -> Vec<u8> {
    let entry = p.manifest.files[0].entry.clone();
    gzip(&tar_of(vec![
        file("manifest.json", json(m)),
        database,
        file(&entry, p.include.clone()),
    ]))
}

/// Every hostile archive, with a word its error must contain.
fn hostile(p: &Parts) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let db = &p.manifest.database;
    let empty = describing(p, b"");
    let mut cases = Vec::new();
    // The database as a link, a FIFO or a device, with the manifest claiming an empty file
    // (which it is, to tar) or the real one.
    let kinds = [
        (
            "symlink",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
            "symbolic link",
        ),
        (
            "hardlink",
            tar::EntryType::Link,
            Some("manifest.json"),
            "hard link",
        ),
        ("fifo", tar::EntryType::Fifo, None, "FIFO"),
        (
            "char device",
            tar::EntryType::Char,
            None,
            "character device",
        ),
        ("block device", tar::EntryType::Block, None, "block device"),
    ];
    for (what, kind, link, word) in kinds {
        cases.push((
            what,
            archive_of(p, &empty, special(db, kind, link)),
            "empty",
        ));
        cases.push((
            what,
            archive_of(p, &p.manifest, special(db, kind, link)),
            word,
        ));
    }
    cases.push((
        "empty file",
        archive_of(p, &empty, file(db, Vec::new())),
        "empty",
    ));
    // Bytes that match their manifest but are no SQLite database.
    let junk = vec![7u8; p.database.len()];
    cases.push((
        "not sqlite",
        archive_of(p, &describing(p, &junk), file(db, junk.clone())),
        "not an SQLite database",
    ));
    // The real database under a manifest whose row count is wrong.
    let mut rows = p.manifest.clone();
    rows.row_count = rows.row_count.map(|r| r + 1);
    cases.push((
        "row count",
        archive_of(p, &rows, file(db, p.database.clone())),
        "rows",
    ));
    // One zero page more than the database has, described consistently.
    let mut padded = p.database.clone();
    padded.extend(vec![0u8; p.manifest.page_size as usize]);
    cases.push((
        "page count",
        archive_of(p, &describing(p, &padded), file(db, padded.clone())),
        "pages",
    ));
    // A manifest padded to 8 MiB of whitespace: valid JSON, far beyond any real one.
    let mut big = json(&p.manifest);
    big.extend(vec![b' '; 8 << 20]);
    cases.push((
        "huge manifest",
        gzip(&tar_of(vec![
            file("manifest.json", big),
            file(db, p.database.clone()),
            file(&p.manifest.files[0].entry, p.include.clone()),
        ])),
        "manifest.json declares",
    ));
    // A GNU long name that claims 64 MiB.
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_size(64 << 20);
    long.set_path("././@LongLink").unwrap();
    long.set_cksum();
    let mut raw = long.as_bytes().to_vec();
    raw.extend(vec![b'a'; 64 << 20]);
    cases.push(("huge long name", gzip(&raw), "long-name entry declares"));
    // A pax header before the database (never written by caretaker).
    let good = archive_of(p, &p.manifest, file(db, p.database.clone()));
    let mut pax = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(json(&p.manifest).len() as u64);
    h.set_mode(0o600);
    pax.append_data(&mut h, "manifest.json", json(&p.manifest).as_slice())
        .unwrap();
    pax.append_pax_extensions([("comment", &b"hello"[..])])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(p.database.len() as u64);
    h.set_mode(0o600);
    pax.append_data(&mut h, db, p.database.as_slice()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(p.include.len() as u64);
    h.set_mode(0o600);
    pax.append_data(&mut h, &p.manifest.files[0].entry, p.include.as_slice())
        .unwrap();
    cases.push((
        "pax header",
        gzip(&pax.into_inner().unwrap()),
        "pax extended header",
    ));
    // Trailing data after the gzip stream, and a second gzip member.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"appended garbage");
    cases.push((
        "trailing garbage",
        trailing,
        "after the end of the gzip stream",
    ));
    let mut twice = good.clone();
    twice.extend_from_slice(&good);
    cases.push((
        "two gzip members",
        twice,
        "after the end of the gzip stream",
    ));
    cases
}

#[test]
fn hostile_archives_are_refused_by_restore_verify_and_the_backups_read_back() {
    let rig = Rig::new(Schema::Bobamixer, 300, "keep: {last: 50}");
    let good = rig.backed_up();
    let p = parts(&good);
    // The forged archives are built right: the same construction of the good one restores.
    let rebuilt = rig.dir.path().join("rebuilt.tar.gz");
    fs::write(
        &rebuilt,
        archive_of(
            &p,
            &p.manifest,
            file(&p.manifest.database, p.database.clone()),
        ),
    )
    .unwrap();
    let out = rig.restore(&rebuilt, &rig.dir.path().join("rebuilt.db"), false);
    assert!(out.status.success(), "{}", describe(&out));

    let cases = hostile(&p);
    let bad_dir = rig.dir.path().join("bad");
    fs::create_dir(&bad_dir).unwrap();
    for (i, (what, bytes, word)) in cases.iter().enumerate() {
        let bad = bad_dir.join(format!("{i:02}-{}.tar.gz", what.replace(' ', "-")));
        fs::write(&bad, bytes).unwrap();
        // The backup job's own read-back (verify: quick|full).
        let err = archive::read(&bad, &mut std::io::sink())
            .err()
            .map(|e| format!("{e:#}"));
        let Some(err) = err else {
            // Only what SQLite alone can see passes the streamed read; restore catches it.
            assert!(
                ["not sqlite", "row count"].contains(what),
                "{what}: the read-back accepted it"
            );
            rig.assert_refused(&bad, what, &[word]);
            continue;
        };
        assert!(err.contains(word), "{what}: `{word}` not in: {err}");
        rig.assert_refused(&bad, what, &[word]);
    }

    // The verify job finds each one among good archives, names it, and alerts.
    for (i, (_, bytes, _)) in cases.iter().enumerate() {
        let name = format!("nightly-2020010{}T0000{:02}Z.tar.gz", 1 + i / 60, i % 60);
        fs::write(rig.to.join(name), bytes).unwrap();
    }
    let out = rig.run_job("check");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} of {} archives failed",
            cases.len(),
            cases.len() + 1
        )),
        "{stderr}"
    );
    for (_, _, word) in &cases {
        assert!(stderr.contains(word), "`{word}` not in: {stderr}");
    }
    assert!(
        names(&rig.to).iter().all(|n| !n.contains("caretaker-tmp")),
        "{:?}",
        names(&rig.to)
    );
    println!("hostile archives tried: {}", cases.len());
}

/// A second process using `db` through one SQLite connection: it runs `before`, says it is
/// ready, waits for a line on its stdin, runs `after` and exits.
struct Gateway(Child);

impl Gateway {
    fn start(db: &Path, before: &[&str], after: &[&str]) -> Gateway {
        let script = format!(
            "import sqlite3, sys\nc = sqlite3.connect({:?}, isolation_level=None)\nfor s in {before:?}: c.execute(s).fetchall()\nprint('ready', flush=True)\nsys.stdin.readline()\nfor s in {after:?}: c.execute(s).fetchall()\nprint('done', flush=True)\n",
            db.to_str().unwrap()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Gateway(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Lets it go on; what it runs next must succeed.
    fn finish(mut self) {
        writeln!(self.0.stdin.as_mut().unwrap()).unwrap();
        let out = self.0.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    }
}

/// Deletes 5 rows of `table`.
fn delete_5(table: &str) -> String {
    format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} LIMIT 5)")
}

#[test]
fn restore_refuses_a_target_in_use_and_names_the_process() {
    let rig = Rig::new(Schema::Apantli, 300, "");
    let archive = rig.backed_up();
    let target = rig.dir.path().join("live.db");
    common::backup::create_db(&target, Schema::Apantli, 40);
    let count = |db: &Path, schema| common::backup::keys(db, schema).len();
    let refused_naming = |target: &Path, pid: u32| {
        let out = rig.restore(&archive, target, true);
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("pid {pid} (python")), "{stderr}");
        assert!(stderr.contains("Stop the gateway first"), "{stderr}");
        stderr.into_owned()
    };

    // A writer in the middle of a transaction: a lock held, its journal beside the file.
    let delete = delete_5("requests");
    let writer = Gateway::start(&target, &["BEGIN IMMEDIATE", &delete], &["COMMIT"]);
    let journal = PathBuf::from(format!("{}-journal", target.display()));
    assert!(journal.exists());
    let before = fs::read(&target).unwrap();
    let stderr = refused_naming(&target, writer.pid());
    assert!(stderr.contains("holds a lock on"), "{stderr}");
    assert_eq!(
        fs::read(&target).unwrap(),
        before,
        "the target is untouched"
    );
    assert!(journal.exists(), "the writer's journal is untouched");
    writer.finish();
    assert_eq!(count(&target, Schema::Apantli), 35, "the writer committed");

    // A process that only has it open (an idle gateway) is found too.
    let idle = Gateway::start(&target, &["SELECT count(*) FROM requests"], &[&delete]);
    let stderr = refused_naming(&target, idle.pid());
    assert!(stderr.contains("has it open"), "{stderr}");
    idle.finish();
    assert_eq!(count(&target, Schema::Apantli), 30);

    // A gateway in WAL mode keeping its connection: its lock on the -shm names it.
    let wal_target = rig.dir.path().join("usage.db");
    common::backup::create_db(&wal_target, Schema::Bobamixer, 40);
    let delete = delete_5("usage_records");
    let wal = Gateway::start(
        &wal_target,
        &["PRAGMA journal_mode=WAL", &delete],
        &[&delete],
    );
    let stderr = refused_naming(&wal_target, wal.pid());
    assert!(stderr.contains("usage.db-shm"), "{stderr}");
    wal.finish();
    assert_eq!(count(&wal_target, Schema::Bobamixer), 30);

    // A hot journal or a WAL with transactions that no process owns: what a crash left.
    for (suffix, content) in [
        ("-journal", &b"\xd9\xd5\x05\xf9 hot"[..]),
        ("-wal", b"frames"),
    ] {
        let companion = format!("{}{suffix}", target.display());
        fs::write(&companion, content).unwrap();
        let out = rig.restore(&archive, &target, true);
        assert_eq!(out.status.code(), Some(3), "{suffix}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&companion), "{stderr}");
        assert!(stderr.contains("what a crash left"), "{stderr}");
        fs::remove_file(&companion).unwrap();
    }

    // Once nothing uses it, the restore goes ahead.
    let out = rig.restore(&archive, &target, true);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(count(&target, Schema::Apantli), 300);
}

#[test]
fn a_restore_killed_midway_leaves_a_temp_file_that_the_next_restore_removes() {
    let rig = Rig::new(Schema::Bobamixer, 20_000, "verify: quick");
    let archive = rig.backed_up();
    let dir = rig.dir.path().join("target");
    fs::create_dir(&dir).unwrap();
    let target = dir.join("gateway.db");
    let temps = || -> Vec<PathBuf> {
        fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("caretaker-tmp"))
            .collect()
    };
    // Killed once the temporary file has data; should the restore win the race, try again.
    let mut left = Vec::new();
    for _ in 0..5 {
        let mut child = rig
            .caretaker(&[
                "restore",
                archive.to_str().unwrap(),
                "--to",
                target.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait::until("the restore's temporary file", LONG, || {
            temps()
                .iter()
                .any(|t| fs::metadata(t).is_ok_and(|m| m.len() > 0))
                || child.try_wait().unwrap().is_some()
        });
        let _ = child.kill();
        child.wait().unwrap();
        left = temps();
        if !left.is_empty() {
            break;
        }
        let _ = fs::remove_file(&target);
    }
    assert!(!left.is_empty(), "no restore was caught midway");
    assert!(!target.exists());
    // A live restore's temporary file (this process's pid) is never touched.
    let live = dir.join(format!(
        ".gateway.db.caretaker-tmp-{}-0000abcd",
        std::process::id()
    ));
    fs::write(&live, b"in progress").unwrap();

    let out = rig.restore(&archive, &target, false);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for t in &left {
        assert!(!t.exists(), "{} is left", t.display());
        assert!(stdout.contains(t.to_str().unwrap()), "{stdout}");
    }
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert_eq!(temps(), vec![live]);
    assert_eq!(
        common::backup::keys(&target, Schema::Bobamixer).len(),
        20_000
    );
}
