//! A consistent copy of the live gateway database, taken under one short read transaction.
//!
//! SQLite's online backup restarts whenever another connection commits between two steps, so
//! a stepped copy of a database taking 100 writes/s never finishes. We open a read transaction
//! first (with our busy timeout, so we wait politely for a writer that holds the lock instead
//! of failing) and copy everything inside it, in one go:
//!
//! - WAL: the read transaction pins a snapshot; writers keep appending to the WAL and are
//!   never blocked. All pages are copied in one online-backup step, which reads the pinned
//!   snapshot (main file plus WAL). The copy is the database as of `BEGIN`.
//! - Rollback journal: the read transaction is a SHARED lock. Writers can prepare their
//!   change but cannot commit until we release it, so they stall for the copy's duration;
//!   that duration is measured and reported as `writer_block` (Apantli waits 5 s before it
//!   drops a row). Under the lock the main file *is* the database, so it is read into memory
//!   (up to a quarter of the memory available; the rest is copied in the kernel) and written
//!   out after the lock is released: reading a cached file is about three times faster than
//!   writing a new one, and the stall is the read.
//!
//! The connection is [`Gateway::connect`]'s: it never changes the journal mode and never
//! checkpoints when it closes. The copy goes to a file of ours; compressing it holds no lock.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::gateway::Gateway;

/// A finished snapshot and what it cost the gateway.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub path: PathBuf,
    /// The gateway's journal mode as SQLite reports it (`wal`, `delete`, `truncate`, ...).
    pub journal_mode: String,
    pub page_size: u64,
    pub page_count: u64,
    /// Rows of the gateway's request table in the copy; `None` when the table does not exist yet.
    pub rows: Option<u64>,
    /// Time the read transaction was held on the gateway database.
    pub held: Duration,
    /// Time the gateway's writers could not commit because of us: `held` in rollback-journal
    /// mode, zero in WAL mode.
    pub writer_block: Duration,
}

impl Snapshot {
    pub fn is_wal(&self) -> bool {
        self.journal_mode.eq_ignore_ascii_case("wal")
    }
}

/// Copies the gateway database to `dest` (which must not exist) as of one instant.
pub fn take(gateway: &Gateway, dest: &Path) -> anyhow::Result<Snapshot> {
    let source = &gateway.database;
    // Read-write when the file allows it (SQLite falls back to read-only otherwise): a reader
    // must be able to roll back a hot journal left by a crashed gateway before it can read.
    let src = gateway.connect(false)?;
    // Our own descriptor of the gateway file, for the rollback-journal copy. POSIX drops every
    // lock a process holds on a file when it closes *any* descriptor of that file, so this one
    // is opened after the connection and closed only after the connection is gone (below).
    let raw = File::open(source).with_context(|| {
        format!(
            "opening the gateway database {} for reading",
            source.display()
        )
    })?;
    // Created here so it is private from its first byte: it holds the payloads' API keys.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating the snapshot file {}", dest.display()))?;

    let reading = |what: &str| {
        format!(
            "{what} on the gateway database {} (is it a SQLite database, and may caretaker read it?)",
            source.display()
        )
    };
    // Memory for the rollback-journal copy, touched before the lock so that faulting its pages
    // in is not part of the stall.
    let wal = crate::writelock::journal_mode(&src)
        .with_context(|| reading("reading the journal mode"))?
        == "wal";
    let mut staged = if wal {
        Vec::new()
    } else {
        stage_buffer(&raw, source)?
    };
    src.execute_batch("BEGIN")
        .with_context(|| reading("starting a read transaction"))?;
    // The first read takes the lock (waiting up to our busy timeout) and pins what we copy.
    let began = Instant::now();
    let pinned = (|| -> anyhow::Result<String> {
        src.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .with_context(|| reading("reading the schema"))?;
        src.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .with_context(|| reading("reading the journal mode"))
    })();
    let locked = Instant::now();
    let copied = pinned.and_then(|journal_mode| {
        let copying = || format!("copying {} to {}", source.display(), dest.display());
        if journal_mode.eq_ignore_ascii_case("wal") {
            copy_all_pages(&src, dest).with_context(copying)?;
        } else {
            copy_file(&raw, &mut staged, &mut out).with_context(copying)?;
        }
        Ok(journal_mode)
    });
    // Ending the read transaction releases the gateway; nothing was written, so COMMIT and
    // ROLLBACK are the same here, and ROLLBACK cannot fail for lack of a lock.
    let released = src.execute_batch("ROLLBACK");
    let held = locked.elapsed();
    drop(src);
    // Only now, with the connection closed, may our descriptor close (see above).
    drop(raw);
    let journal_mode = copied?;
    released.with_context(|| reading("ending the read transaction"))?;
    out.write_all_at(&staged, 0)
        .with_context(|| format!("writing the snapshot file {}", dest.display()))?;
    drop(staged);
    drop(out);
    tracing::debug!(
        wait_ms = (locked - began).as_millis() as u64,
        held_ms = held.as_millis() as u64,
        "snapshot copied"
    );

    let dst = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the snapshot {}", dest.display()))?;
    let stats = |what: &str| format!("reading {what} of the snapshot {}", dest.display());
    let count = |sql: &str, what: &str| -> anyhow::Result<u64> {
        let n: i64 = dst
            .query_row(sql, [], |r| r.get(0))
            .with_context(|| stats(what))?;
        Ok(n.max(0) as u64)
    };
    let page_size = count("PRAGMA page_size", "the page size")?;
    let page_count = count("PRAGMA page_count", "the page count")?;
    let has_table: Option<i64> = dst
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&gateway.table],
            |r| r.get(0),
        )
        .optional()
        .with_context(|| stats("the schema"))?;
    let rows = match has_table {
        Some(_) => Some(count(
            &format!("SELECT count(*) FROM \"{}\"", gateway.table),
            &format!("the rows of table {}", gateway.table),
        )?),
        None => None,
    };
    dst.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("closing the snapshot {}", dest.display()))?;
    let is_wal = journal_mode.eq_ignore_ascii_case("wal");
    Ok(Snapshot {
        path: dest.to_path_buf(),
        journal_mode,
        page_size,
        page_count,
        rows,
        held,
        writer_block: if is_wal { Duration::ZERO } else { held },
    })
}

/// WAL: one online-backup step of every page from the pinned read transaction; there is no
/// second step for a commit to restart. (The main file alone would miss the WAL's pages.)
fn copy_all_pages(src: &Connection, dest: &Path) -> anyhow::Result<()> {
    let mut dst = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the snapshot file {}", dest.display()))?;
    // The copy is scratch until its archive is verified: no journal, no fsync per page.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .with_context(|| format!("preparing the snapshot file {}", dest.display()))?;
    {
        let backup = Backup::new(src, &mut dst).context("starting the SQLite online backup")?;
        match backup.step(-1).context("copying the pages")? {
            StepResult::Done => {}
            StepResult::Busy | StepResult::Locked => bail!(
                "the gateway database was locked while copying; the run will be retried at the next schedule"
            ),
            StepResult::More | _ => bail!("SQLite's backup did not copy every page in one step"),
        }
    }
    dst.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("closing the snapshot file {}", dest.display()))
}

/// How much of a rollback-journal database is staged in memory: all of it when a quarter of
/// the available memory holds it, otherwise that quarter (the rest is copied file to file).
fn stage_len(file_len: u64, available_memory: u64) -> usize {
    usize::try_from(file_len.min(available_memory / 4)).unwrap_or(usize::MAX)
}

/// The staging buffer for the rollback-journal copy, sized from the file as it is now (the
/// copy itself reads the length again under the lock), with every page touched.
fn stage_buffer(raw: &File, source: &Path) -> anyhow::Result<Vec<u8>> {
    let len = raw
        .metadata()
        .with_context(|| format!("reading the size of {}", source.display()))?
        .len();
    // Without a memory figure nothing is staged: the whole file is copied file to file.
    let available = sysinfo::System::new().map_or(0, |mut system| {
        system.refresh_memory();
        system.available_memory()
    });
    // A few MB of slack for pages the gateway adds before we lock.
    let len = stage_len(len + (4 << 20), available);
    let mut buf = vec![0u8; len];
    // `vec![0; n]` maps zero pages lazily; writing one byte a page faults them in now.
    for page in buf.chunks_mut(4096) {
        page[0] = 1;
    }
    Ok(buf)
}

/// Rollback journal: while our SHARED lock is held no writer can commit, so the main file is
/// the whole, consistent database. Its first part is read into `staged` (truncated to what was
/// read; the caller writes it out once the lock is released) and any rest beyond it is copied
/// in the kernel (`copy_file_range`) to the same offset of `out`.
fn copy_file(raw: &File, staged: &mut Vec<u8>, out: &mut File) -> anyhow::Result<()> {
    let mut reader = raw;
    reader.seek(SeekFrom::Start(0))?;
    let room = staged.len();
    let mut filled = 0;
    while filled < room {
        match reader.read(&mut staged[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    staged.truncate(filled);
    if filled == room {
        out.seek(SeekFrom::Start(filled as u64))?;
        std::io::copy(&mut reader, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Preset;

    fn gateway(db: &Path, preset: Preset) -> Gateway {
        let (table, columns) = preset.table_and_columns().unwrap();
        Gateway {
            database: db.to_path_buf(),
            preset,
            table,
            columns,
            busy_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_quarter_of_the_available_memory_is_staged_at_most() {
        assert_eq!(stage_len(100, 1000), 100);
        assert_eq!(stage_len(300, 1000), 250);
        assert_eq!(stage_len(300, 0), 0);
    }

    #[test]
    fn a_file_larger_than_the_stage_is_staged_in_part_and_copied_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &data).unwrap();
        for room in [0, 4096, 99_999, 100_000, 200_000] {
            let dest = dir.path().join(format!("dest-{room}"));
            let mut out = File::create(&dest).unwrap();
            let mut staged = vec![0u8; room];
            copy_file(&File::open(&source).unwrap(), &mut staged, &mut out).unwrap();
            out.write_all_at(&staged, 0).unwrap();
            drop(out);
            assert_eq!(std::fs::read(&dest).unwrap(), data, "room {room}");
        }
    }

    #[test]
    fn copies_a_wal_database_without_its_checkpoint_and_keeps_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("usage.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(crate::sample::BOBAMIXER_SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO sessions (id, started_at) VALUES ('s', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO usage_records (id, session_id, ts, tool) SELECT 'rec_' || i, 's', i, hex(randomblob(64)) FROM n;",
        )
        .unwrap();
        drop(conn);
        // A writer that keeps its connection open leaves committed rows only in the WAL.
        let writer = Connection::open(&db).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; DELETE FROM usage_records WHERE rowid % 3 = 0;",
            )
            .unwrap();
        let expected: i64 = writer
            .query_row("SELECT count(*) FROM usage_records", [], |r| r.get(0))
            .unwrap();
        let wal_before = std::fs::metadata(dir.path().join("usage.db-wal"))
            .unwrap()
            .len();
        assert!(wal_before > 0);

        let snap = take(
            &gateway(&db, Preset::Bobamixer),
            &dir.path().join("copy.db"),
        )
        .unwrap();
        assert_eq!(snap.journal_mode, "wal");
        assert_eq!(snap.rows, Some(expected as u64));
        assert_eq!(snap.writer_block, Duration::ZERO);
        // Our connection closed without checkpointing the gateway's WAL.
        assert_eq!(
            std::fs::metadata(dir.path().join("usage.db-wal"))
                .unwrap()
                .len(),
            wal_before
        );
        let copy = Connection::open(&snap.path).unwrap();
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let ok: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn reports_the_writer_stall_in_rollback_mode_and_names_a_bad_source() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("requests.db");
        crate::sample::create_apantli(
            &db,
            &crate::sample::SampleOptions {
                rows: 200,
                ..Default::default()
            },
        )
        .unwrap();
        let snap = take(&gateway(&db, Preset::Apantli), &dir.path().join("copy.db")).unwrap();
        assert_eq!(snap.journal_mode, "delete");
        assert_eq!(snap.rows, Some(200));
        assert_eq!(snap.writer_block, snap.held);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snap.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the snapshot holds API keys");

        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        let message = format!(
            "{:#}",
            take(&gateway(&junk, Preset::Apantli), &dir.path().join("c2.db")).unwrap_err()
        );
        assert!(
            message.contains("junk.db") && message.contains("not a database"),
            "{message}"
        );
        let missing = dir.path().join("missing.db");
        let message = format!(
            "{:#}",
            take(
                &gateway(&missing, Preset::Apantli),
                &dir.path().join("c3.db")
            )
            .unwrap_err()
        );
        assert!(message.contains("missing.db"), "{message}");
        assert!(
            !missing.exists(),
            "a missing gateway database must not be created"
        );
    }
}
