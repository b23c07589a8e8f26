//! `caretaker restore`: put an archive's database back in place, checked first, never losing what it replaces.
//!
//! Order matters for crash safety. The database is extracted beside PATH under a temporary
//! name and checked ([`archive::extract`]: SHA-256, SQLite header, page count, size and row
//! count against the manifest, then `integrity_check`) before PATH is touched; a temporary
//! file left by a killed restore is removed first. A PATH that a process is using (a lock
//! held on it, a hot journal or a WAL beside it, a process with it open) is refused: replacing
//! it would remove that process's journal and leave it writing into the replaced file; the
//! last such check holds a lock of SQLite's kind on PATH until the rename. What is replaced is
//! hard-linked to `PATH.before-restore-<time>` (with its `-wal` or `-journal`, which may hold
//! committed data), stale `-wal`, `-shm` and `-journal` files are removed *before* the new
//! file is renamed over PATH (SQLite would otherwise replay an old WAL into the restored
//! database), and the rename is the last step. A crash at any point leaves PATH old or new,
//! and the safety copy complete.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::archive::{self, CheckLevel, Manifest};
use crate::fsx::{self, PendingFile};
use crate::sqlite;

/// Why a restore did not happen. The first two are usage errors (exit 2), `InUse` a target
/// that must be freed first (exit 3), the last a failed check or I/O error (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{} already exists; add --force to replace it (a safety copy of it is kept)", .0.display())]
    Exists(PathBuf),
    #[error("the archive {} does not exist or is not a file", .0.display())]
    NoArchive(PathBuf),
    #[error("{0}")]
    InUse(String),
    /// A PostgreSQL target database that already has tables, without `--force`.
    #[error("{0}")]
    NotEmpty(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    pub path: PathBuf,
    /// `PATH.before-restore-<time>` and its `-wal`/`-journal`, when PATH existed.
    pub safety_copies: Vec<PathBuf>,
    /// Stale `-wal`, `-shm` and `-journal` files removed beside PATH.
    pub removed: Vec<PathBuf>,
    /// Temporary files of restores that were killed, removed beside PATH.
    pub swept: Vec<PathBuf>,
}

/// Verifies `archive` and restores its database to `to`; `now` names the safety copy.
pub fn restore(
    archive: &Path,
    to: &Path,
    force: bool,
    now: DateTime<Utc>,
) -> Result<Restored, RestoreError> {
    if !archive.is_file() {
        return Err(RestoreError::NoArchive(archive.to_path_buf()));
    }
    let existing = match fs::symlink_metadata(to) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("looking at the restore target {}", to.display()))
                .into());
        }
    };
    if let Some(meta) = &existing {
        if !meta.is_file() {
            return Err(anyhow::anyhow!(
                "the restore target {} exists and is not a regular file; give the path of the database file",
                to.display()
            )
            .into());
        }
        if !force {
            return Err(RestoreError::Exists(to.to_path_buf()));
        }
        refuse_in_use(to, false)?;
    }
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A missing directory is created private; an existing one (the gateway's own, or /tmp for
    // an inspection) is left exactly as it is.
    if !dir.exists() {
        fsx::private_dir(&dir)?;
    }

    // A killed restore left a database-sized file here; it would also eat the space checked next.
    let swept = fsx::sweep_dead_temps(to)?;
    let manifest = archive::peek_manifest(archive)?;
    if manifest.postgres.is_some() {
        return Err(anyhow::anyhow!(
            "{} holds a PostgreSQL dump, not a SQLite database: restore it with --to postgres://USER@HOST/DATABASE",
            archive.display()
        )
        .into());
    }
    super::ensure_free(
        &dir,
        manifest.size,
        &format!("the restored database ({})", manifest.database),
    )?;

    let mut pending = PendingFile::create(to)?;
    let temp = pending.temp_path().to_path_buf();
    let extracted = archive::extract(archive, pending.file(), &temp, CheckLevel::Integrity);
    // The check's connection may have left these beside the temporary file.
    remove_companions(&temp).map_err(RestoreError::Failed)?;
    let extracted =
        extracted.with_context(|| format!("nothing was restored from {}", archive.display()))?;

    if let Some(meta) = &existing {
        // Hand the file back to whoever owned the one it replaces (the gateway's user).
        let file = pending.file();
        file.set_permissions(fs::Permissions::from_mode(
            meta.permissions().mode() & 0o7777,
        ))
        .with_context(|| format!("setting the mode of {}", temp.display()))?;
        if let Err(e) = std::os::unix::fs::fchown(&*file, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!(path = %to.display(), error = %e, "could not give the restored database the owner of the one it replaces");
        }
    }

    // On disk before the lock below, which is then held for milliseconds, not for this flush.
    pending
        .file()
        .sync_all()
        .with_context(|| format!("flushing {} to disk", temp.display()))?;
    // Again, now under a lock that keeps every SQLite connection out until the new file is in
    // place: a gateway started during the extraction must not lose its journal either, and none
    // can start a transaction (and a journal) between this check and the rename.
    let locked = match existing {
        Some(_) => TargetLock::take(to)?,
        None => None,
    };
    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let mut safety_copies = Vec::new();
    for suffix in ["", sqlite::WAL, sqlite::JOURNAL] {
        let old = sqlite::companion(to, suffix);
        if old.is_file() {
            let copy = sqlite::companion(to, &format!(".before-restore-{stamp}{suffix}"));
            if copy.exists() {
                return Err(anyhow::anyhow!(
                    "the safety copy {} already exists; move it away and run the restore again",
                    copy.display()
                )
                .into());
            }
            fs::hard_link(&old, &copy)
                .or_else(|_| match (&locked, suffix) {
                    // Through the locked descriptor: closing any other descriptor of the file
                    // would drop this process's lock on it (POSIX).
                    (Some(lock), "") => lock.copy_to(&copy),
                    _ => fs::copy(&old, &copy).map(|_| ()),
                })
                .with_context(|| {
                    format!(
                        "keeping a safety copy of {} as {}",
                        old.display(),
                        copy.display()
                    )
                })?;
            safety_copies.push(copy);
        }
    }
    let removed = remove_companions(to)?;
    fsx::sync_dir(&dir).with_context(|| format!("flushing directory {}", dir.display()))?;
    let path = pending.commit()?;
    drop(locked);
    Ok(Restored {
        manifest: extracted.manifest,
        path,
        safety_copies,
        removed,
        swept,
    })
}

impl Restored {
    /// What was done, for the operator: one line per fact.
    pub fn describe(&self, archive: &Path) -> String {
        let m = &self.manifest;
        let mut lines = vec![format!(
            "restored {} from {} (snapshot of {} taken {}, {} rows, SHA-256, page and row counts and integrity_check ok) to {}",
            m.database,
            archive.display(),
            m.source.display(),
            m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            m.row_count.map_or("no".to_string(), |r| r.to_string()),
            self.path.display()
        )];
        for copy in &self.safety_copies {
            lines.push(format!(
                "safety copy of what it replaced: {}",
                copy.display()
            ));
        }
        for path in &self.removed {
            lines.push(format!("removed stale {}", path.display()));
        }
        for path in &self.swept {
            lines.push(format!(
                "removed {}, left by a restore that was interrupted",
                path.display()
            ));
        }
        lines.join("\n")
    }
}

/// SQLite's lock bytes in a database file (`PENDING_BYTE` and the 511 after it: RESERVED
/// and the SHARED range) and in a `-shm` file (the WAL locks and the "dead man switch" byte
/// every connection holds while it has the WAL open).
const DB_LOCKS: (u64, u64) = (0x4000_0000, 512);
const SHM_LOCKS: (u64, u64) = (120, 9);

/// A POSIX write lock over the whole database file being replaced, the kind SQLite takes: no
/// SQLite connection can read or begin a transaction (and create a journal) while it is held.
/// Held for the safety copy, the removal of the stale files and the rename: milliseconds.
struct TargetLock(fs::File);

impl TargetLock {
    /// Takes the lock and checks the rest under it; `None` when the file cannot be opened for
    /// writing (a lock needs that), in which case the checks ran without it.
    fn take(to: &Path) -> Result<Option<TargetLock>, RestoreError> {
        use rustix::fs::{FlockOperation, fcntl_lock};
        let file = match fs::OpenOptions::new().read(true).write(true).open(to) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                refuse_in_use(to, false)?;
                return Ok(None);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("opening {} to lock it", to.display()))
                    .into());
            }
        };
        match fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {
                drop(file);
                refuse_in_use(to, false)?;
                return Err(RestoreError::InUse(format!(
                    "{} is in use: a process holds a lock on it. Stop the gateway first, then restore again; nothing was changed",
                    to.display()
                )));
            }
            Err(e) => {
                return Err(anyhow::Error::new(io::Error::from(e))
                    .context(format!("locking {}", to.display()))
                    .into());
            }
        }
        refuse_in_use(to, true)?;
        Ok(Some(TargetLock(file)))
    }

    /// Copies the locked file to `copy` (a new file), durably.
    fn copy_to(&self, copy: &Path) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut source = &self.0;
        source.seek(SeekFrom::Start(0))?;
        let mut out = fs::File::create_new(copy)?;
        io::copy(&mut source, &mut out)?;
        out.sync_all()
    }
}

/// Fails with [`RestoreError::InUse`] when a process uses the database at `to`: it holds a
/// lock on it or its `-shm`, has one of its files open (found on Linux by scanning
/// `/proc/*/fd`), or left a hot journal or a WAL that holds transactions. With `locked`, this
/// process holds a lock on `to`: no other can hold one then, and `to` is not opened, as
/// closing any descriptor of it would drop that lock (POSIX).
fn refuse_in_use(to: &Path, locked: bool) -> Result<(), RestoreError> {
    let mut reasons = Vec::new();
    let mut pids = Vec::new();
    let tests = [("", DB_LOCKS), (sqlite::SHM, SHM_LOCKS)];
    for (suffix, range) in &tests[usize::from(locked)..] {
        let path = sqlite::companion(to, suffix);
        if let Some(pid) = lock_holder(&path, *range)
            .with_context(|| format!("testing for locks on {}", path.display()))?
        {
            reasons.push(format!(
                "{} holds a lock on {}",
                process_name(pid),
                path.display()
            ));
            pids.push(pid);
        }
    }
    for pid in openers(to) {
        if !pids.contains(&pid) {
            reasons.push(format!("{} has it open", process_name(pid)));
            pids.push(pid);
        }
    }
    let journal = sqlite::companion(to, sqlite::JOURNAL);
    if first_byte(&journal).is_some_and(|b| b != 0) {
        reasons.push(format!(
            "{} is a hot journal (a transaction in progress or interrupted)",
            journal.display()
        ));
    }
    let wal = sqlite::companion(to, sqlite::WAL);
    if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        reasons.push(format!(
            "{} holds transactions not yet in the database",
            wal.display()
        ));
    }
    if reasons.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "{} is in use: {}. Stop the gateway first (and anything else using the database), then restore again; nothing was changed",
        to.display(),
        reasons.join("; ")
    );
    if pids.is_empty() {
        message.push_str(&format!(
            ". If nothing runs on it, these files are what a crash left: open the database once with `sqlite3 {} 'PRAGMA quick_check'` so SQLite recovers them, or move the database and its files away",
            to.display()
        ));
    }
    Err(RestoreError::InUse(message))
}

/// The pid of a process holding a POSIX lock in `range` of `path` (SQLite's locks), if any.
/// Only tests: no lock is taken, and no lock of this process exists to be lost on close.
fn lock_holder(path: &Path, (start, length): (u64, u64)) -> anyhow::Result<Option<i32>> {
    use rustix::process::{Flock, FlockOffsetType, FlockType, fcntl_getlk};
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let probe = Flock {
        start,
        length,
        pid: None,
        typ: FlockType::WriteLock,
        offset_type: FlockOffsetType::Set,
    };
    Ok(fcntl_getlk(&file, &probe)?.map(|held| held.pid.map_or(-1, |p| p.as_raw_nonzero().get())))
}

/// Processes other than this one with the database or its `-wal`, `-shm` or `-journal` open,
/// found by scanning `/proc/*/fd` (Linux; elsewhere, and for other users' processes when not
/// root, nothing is found and the lock tests stand alone).
fn openers(to: &Path) -> Vec<i32> {
    let files: Vec<(u64, u64)> = sqlite::WITH_COMPANIONS
        .iter()
        .filter_map(|s| fs::metadata(sqlite::companion(to, s)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| files.contains(&(m.dev(), m.ino()))));
        if open {
            found.push(pid);
        }
    }
    found
}

/// `pid 1234 (apantli)`, or just the pid when its name cannot be read.
fn process_name(pid: i32) -> String {
    if pid <= 0 {
        return "another process".into();
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) => format!("pid {pid} ({})", name.trim()),
        Err(_) => format!("pid {pid}"),
    }
}

/// The first byte of `path`, `None` when it is missing or empty. SQLite's own rule: a journal
/// whose first byte is zero is not hot.
fn first_byte(path: &Path) -> Option<u8> {
    let mut byte = [0];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut byte))
        .ok()?;
    (n == 1).then_some(byte[0])
}

fn remove_companions(db: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for suffix in sqlite::COMPANIONS {
        let path = sqlite::companion(db, suffix);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing the stale {}", path.display()));
            }
        }
    }
    Ok(removed)
}
