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
//!   drops a row). Under the lock the main file *is* the database, so it is copied as a file:
//!   on Linux, when memory allows, read into a buffer (the shortest stall) and written after
//!   the lock is released to a file in `/dev/shm`, so that the snapshot never touches the disk
//!   the gateway fsyncs to (writing a 1 GB scratch file there stalled Apantli's commits 0.7-3.7 s;
//!   `cargo bench --bench snapshot`);
//!   otherwise copied in the kernel into the scratch file `dest`.
//!
//! The connection is [`Gateway::connect`]'s: it never changes the journal mode and never
//! checkpoints when it closes. The copy goes to a file of ours; compressing it holds no lock.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Set when `path` is a file in memory (`/dev/shm`): it is removed when the last clone of
    /// this snapshot is dropped.
    memory: Option<Arc<MemoryFile>>,
}

impl Snapshot {
    pub fn is_wal(&self) -> bool {
        self.journal_mode.eq_ignore_ascii_case("wal")
    }

    /// Whether the copy is held in memory rather than in the scratch file.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
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

    let reading = |what: &str| {
        format!(
            "{what} on the gateway database {} (is it a SQLite database, and may caretaker read it?)",
            source.display()
        )
    };
    let wal = crate::writelock::journal_mode(&src)
        .with_context(|| reading("reading the journal mode"))?
        == "wal";
    // Prepared before the lock: the memory file's pages are allocated now, not during the copy.
    let (memory, mut staged) = match if wal { None } else { memory_file(&raw, dest) } {
        Some((file, staged)) => (Some(file), staged),
        None => (None, Vec::new()),
    };
    let target = memory
        .as_ref()
        .map_or_else(|| dest.to_path_buf(), |m| m.0.clone());
    // Created here so it is private from its first byte: it holds the payloads' API keys.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(memory.is_some())
        .create_new(memory.is_none())
        .mode(0o600)
        .open(&target)
        .with_context(|| format!("creating the snapshot file {}", target.display()))?;
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
        let copying = || format!("copying {} to {}", source.display(), target.display());
        if journal_mode.eq_ignore_ascii_case("wal") {
            // The gateway switched to WAL since we looked: nothing is staged to write out.
            staged.clear();
            copy_all_pages(&src, &target).with_context(copying)?;
        } else {
            copy_file(&raw, &mut staged, &mut out).with_context(copying)?;
        }
        Ok(journal_mode)
    });
    // Ending the read transaction releases the gateway; nothing was written, so COMMIT and
    // ROLLBACK are the same here, and ROLLBACK cannot fail for lack of a lock.
    let released = src.execute_batch("ROLLBACK");
    let held = locked.elapsed();
    // With a rollback journal the shared lock held the gateway's commits off all along: it
    // counts among the run's locks, with its bound per GiB copied (src/writelock.rs).
    let copied_wal = copied
        .as_ref()
        .map_or(wal, |mode| mode.eq_ignore_ascii_case("wal"));
    if !copied_wal {
        crate::writelock::record(held, raw.metadata().map_or(0, |m| m.len()));
    }
    drop(src);
    // Only now, with the connection closed, may our descriptor close (see above).
    drop(raw);
    let journal_mode = copied?;
    released.with_context(|| reading("ending the read transaction"))?;
    out.write_all_at(&staged, 0)
        .with_context(|| format!("writing the snapshot file {}", target.display()))?;
    drop(staged);
    drop(out);
    let memory = memory.map(Arc::new);
    tracing::debug!(
        wait_ms = (locked - began).as_millis() as u64,
        held_ms = held.as_millis() as u64,
        "snapshot copied"
    );

    let dst = crate::sqlite::open(
        &target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the snapshot {}", target.display()))?;
    let stats = |what: &str| format!("reading {what} of the snapshot {}", target.display());
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
        .with_context(|| format!("closing the snapshot {}", target.display()))?;
    let is_wal = journal_mode.eq_ignore_ascii_case("wal");
    Ok(Snapshot {
        path: target,
        memory,
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
    let mut dst = crate::sqlite::open(
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

/// Where memory files go: a tmpfs on every Linux system.
const MEMORY_DIR: &str = "/dev/shm";

/// A snapshot file in [`MEMORY_DIR`], removed when dropped (a run killed before that leaves it
/// to the next snapshot for the same destination, which sweeps it first).
#[derive(Debug)]
pub struct MemoryFile(PathBuf);

impl Drop for MemoryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A memory file with room for the database `raw`, its pages allocated, and a buffer of that
/// size with its pages touched, in which the copy is staged under the lock (reading a cached
/// file into memory is the fastest copy there is: 190-220 ms for 1.08 GB on our test machine,
/// against 420-450 ms into a file in `/dev/shm` and 290-2,500 ms file to file on the disk;
/// `cargo bench --bench snapshot`).
/// `None` where there is none: no `/dev/shm`, not enough room in it, or half the available
/// memory does not hold both; the copy then goes to the scratch file `dest`.
#[cfg(target_os = "linux")]
fn memory_file(raw: &File, dest: &Path) -> Option<(MemoryFile, Vec<u8>)> {
    let dir = Path::new(MEMORY_DIR);
    // One prefix per destination directory, so that stale files of a killed run are found.
    let digest =
        <sha2::Sha256 as sha2::Digest>::digest(dest.parent()?.as_os_str().as_encoded_bytes());
    let prefix = format!("caretaker-{}-", hex::encode(&digest[..8]));
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let len = raw.metadata().ok()?.len();
    // A few MB of room for pages the gateway adds before we lock.
    let room = len + (4 << 20);
    let available = sysinfo::System::new().ok().map(|mut system| {
        system.refresh_memory();
        system.available_memory()
    })?;
    if room.saturating_mul(2) > available / 2 || room > super::free_bytes(dir).ok()? {
        return None;
    }
    let file = MemoryFile(dir.join(format!("{prefix}{}", dest.file_name()?.to_string_lossy())));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file.0)
        .ok()?;
    // KEEP_SIZE: the pages are allocated, the file stays empty until the copy writes it.
    rustix::fs::fallocate(&out, rustix::fs::FallocateFlags::KEEP_SIZE, 0, room).ok()?;
    let mut staged = vec![0u8; usize::try_from(room).ok()?];
    // `vec![0; n]` maps zero pages lazily; writing one byte a page faults them in now.
    for page in staged.chunks_mut(4096) {
        page[0] = 1;
    }
    Some((file, staged))
}

#[cfg(not(target_os = "linux"))]
fn memory_file(_raw: &File, _dest: &Path) -> Option<(MemoryFile, Vec<u8>)> {
    None
}

/// Rollback journal: while our SHARED lock is held no writer can commit, so the main file is
/// the whole, consistent database. Its first part is read into `staged` (truncated to what was
/// read; the caller writes it at the start of `out` once the lock is released) and the rest,
/// all of it when nothing is staged, is copied in the kernel to the same offset of `out`.
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
            postgres: None,
        }
    }

    #[test]
    fn copies_a_wal_database_without_its_checkpoint_and_keeps_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("usage.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(crate::demo::sample::BOBAMIXER_SCHEMA)
            .unwrap();
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
    fn a_rollback_journal_copy_is_held_in_memory_and_removed_with_the_snapshot() {
        if !Path::new(MEMORY_DIR).is_dir() {
            return; // not Linux: the copy goes to the scratch file, as the other tests show
        }
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("requests.db");
        crate::demo::sample::create_apantli(
            &db,
            &crate::demo::sample::SampleOptions {
                rows: 50,
                ..Default::default()
            },
        )
        .unwrap();
        let dest = dir.path().join("copy.db");
        let first = take(&gateway(&db, Preset::Apantli), &dest).unwrap();
        assert!(first.in_memory(), "{:?}", first.path);
        assert!(first.path.starts_with(MEMORY_DIR), "{:?}", first.path);
        assert!(!dest.exists(), "nothing is written beside the archives");
        // A run killed while holding its copy leaves it; the next snapshot for the same
        // destination sweeps it.
        let stale = first.path.clone();
        std::mem::forget(first);
        assert!(stale.exists());
        let second = take(
            &gateway(&db, Preset::Apantli),
            &dir.path().join("copy-2.db"),
        )
        .unwrap();
        assert_ne!(stale, second.path);
        assert!(!stale.exists(), "the stale memory file was not swept");
        let path = second.path.clone();
        assert_eq!(second.rows, Some(50));
        drop(second);
        assert!(!path.exists(), "the memory file outlived its snapshot");
        let _ = std::fs::remove_file(stale);
    }

    #[test]
    fn reports_the_writer_stall_in_rollback_mode_and_names_a_bad_source() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("requests.db");
        crate::demo::sample::create_apantli(
            &db,
            &crate::demo::sample::SampleOptions {
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
