//! Files on disk: durable, private writes (temp file, write, fsync, rename, fsync the
//! directory), and bounded reads of the files a jobs file names.
//!
//! Backups and archives hold API keys, so everything caretaker writes is mode 0600 in 0700
//! directories, and nothing is ever visible under its final name before it is complete.
//! What the jobs file names to be read (the file itself, included files, a price table) may
//! turn out to be a FIFO or a device: it is checked before a byte is read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The marker in the names of files still being written; swept at start-up.
pub const TEMP_MARKER: &str = ".caretaker-tmp";

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an existing one we own.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        // Not fatal: the directory may be shared on purpose and owned by someone else.
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Makes the renames, creations and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// [`sync_dir`] on the directory holding `path`: makes a rename to, or a removal of, `path`
/// durable.
pub fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let dir = parent_dir(path);
    sync_dir(dir).with_context(|| format!("syncing directory {}", dir.display()))
}

/// A file being written under a temporary name next to its final place.
pub struct PendingFile {
    file: Option<File>,
    temp: PathBuf,
    dest: PathBuf,
    /// Leave the temporary file in place if it is never committed ([`PendingFile::keep`]).
    kept: bool,
}

impl PendingFile {
    pub fn create(dest: &Path) -> anyhow::Result<PendingFile> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .with_context(|| format!("{} has no file name", dest.display()))?
            .to_string_lossy();
        let temp = dir.join(format!(
            "{}{}-{:08x}",
            temp_prefix(&name),
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::create_at(temp, dest)
    }

    /// Creates `temp` (mode 0600, never an existing file) to become `dest` on commit.
    fn create_at(temp: PathBuf, dest: &Path) -> anyhow::Result<PendingFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("creating temporary file {}", temp.display()))?;
        Ok(PendingFile {
            file: Some(file),
            temp,
            dest: dest.to_path_buf(),
            kept: false,
        })
    }

    /// The one temporary name of `dest` for [`PendingFile::create_fixed`]: `.NAME.caretaker-tmp`.
    pub fn fixed_temp(dest: &Path) -> PathBuf {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        parent_dir(dest).join(format!(".{name}{TEMP_MARKER}"))
    }

    /// Like [`PendingFile::create`], under the fixed name [`PendingFile::fixed_temp`] instead
    /// of one with the writer's pid: for a writer that is the only one of `dest` (a job under
    /// its lock) and must find what a killed run left, to remove it or to refuse to go on
    /// (log rotation). Fails if that file exists.
    pub fn create_fixed(dest: &Path) -> anyhow::Result<PendingFile> {
        Self::create_at(Self::fixed_temp(dest), dest)
    }

    /// Keeps the temporary file if this is never committed: from the moment it holds the
    /// only copy of something (a log that was truncated after copying), removing it would
    /// lose data, so a failure leaves it for a person to rename.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is open until commit")
    }

    /// fsync, rename into place, fsync the directory: after this returns the file is durable
    /// under its final name; before, a crash leaves only the temporary name.
    pub fn commit(self) -> anyhow::Result<PathBuf> {
        self.finish(false)
    }

    /// [`PendingFile::commit`], refusing to replace a file already at the final name: one
    /// there is something nothing accounted for (a log copy), and clobbering it would lose it.
    pub fn commit_new(self) -> anyhow::Result<PathBuf> {
        self.finish(true)
    }

    /// A failure on the way leaves the file open, so that dropping `self` removes the
    /// temporary file (unless [`PendingFile::keep`] said otherwise).
    fn finish(mut self, no_clobber: bool) -> anyhow::Result<PathBuf> {
        self.file()
            .sync_all()
            .with_context(|| format!("flushing {} to disk", self.temp.display()))?;
        if no_clobber {
            match fs::symlink_metadata(&self.dest) {
                Ok(_) => anyhow::bail!(
                    "{} already exists; move it away by hand, then run the job again",
                    self.dest.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("checking {}", self.dest.display()));
                }
            }
        }
        fs::rename(&self.temp, &self.dest).with_context(|| {
            format!(
                "renaming {} to {}",
                self.temp.display(),
                self.dest.display()
            )
        })?;
        self.file = None;
        let dir = parent_dir(&self.dest);
        sync_dir(dir).with_context(|| format!("flushing directory {}", dir.display()))?;
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.is_some() && !self.kept {
            // Abandoned before commit: remove the partial file now rather than at next start.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `dest` atomically and durably, mode 0600.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut pending = PendingFile::create(dest)?;
    pending
        .write_all(bytes)
        .with_context(|| format!("writing {}", pending.temp_path().display()))?;
    pending.commit()?;
    Ok(())
}

/// The directory holding `path`: `.` for a bare file name, whose `parent()` is the empty path.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// What the temporary files of a file named `name` start with; the writer's pid follows.
fn temp_prefix(name: &str) -> String {
    format!(".{name}{TEMP_MARKER}-")
}

/// The pid that wrote `file_name` if it is a temporary file of `dest_name` (or a `-wal`,
/// `-shm` or `-journal` SQLite put beside one): `.<dest_name><TEMP_MARKER>-<pid>-<8 hex>`.
fn temp_writer(dest_name: &str, file_name: &str) -> Option<i32> {
    let rest = file_name.strip_prefix(&temp_prefix(dest_name))?;
    let (pid, rest) = rest.split_once('-')?;
    let random = crate::sqlite::WITH_COMPANIONS
        .iter()
        .find_map(|suffix| rest.strip_suffix(suffix).filter(|r| r.len() == 8))?;
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.chars().all(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    (digits(pid, false) && digits(random, true))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Removes the temporary files of `dest` whose writer no longer runs (killed mid-write), for
/// writers that share a directory with files not ours (a restore beside the gateway's
/// database). A live writer's file, or one whose pid was reused, is left alone.
pub fn sweep_dead_temps(dest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy()) else {
        return Ok(Vec::new());
    };
    sweep(parent_dir(dest), |file_name| {
        temp_writer(&name, file_name)
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| {
                rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
            })
    })
}

/// Removes temporary files left in `dir` by a process that was killed mid-write.
pub fn sweep_temps(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    sweep(dir, |name| name.contains(TEMP_MARKER))
}

/// Removes the files of `dir` whose names `stale` picks (a directory with all it holds: a test
/// restore of several databases extracts into one); returns their paths.
pub fn sweep(dir: &Path, stale: impl Fn(&str) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if stale(&entry.file_name().to_string_lossy()) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path).with_context(|| {
                    format!("removing stale temporary directory {}", path.display())
                })?;
            } else {
                fs::remove_file(&path)
                    .with_context(|| format!("removing stale temporary file {}", path.display()))?;
            }
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Why [`read_regular`] refused a file: a caller words its own error from it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is larger than {}", crate::units::bytes(*.limit))]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the whole of a regular file of at most `limit` bytes. The file is opened without
/// blocking and looked at before a byte is read, so a FIFO named where a file belongs cannot
/// hang the daemon, and `/dev/zero` cannot fill its memory.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("report.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/report.json")), Path::new("a"));
    }

    #[test]
    fn a_committed_file_is_private_and_complete_and_no_temp_remains() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.json");
        write_atomic(&dest, b"{}").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_abandoned_file_never_appears_under_its_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let mut p = PendingFile::create(&dest).unwrap();
            p.write_all(b"partial").unwrap();
        }
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_commit_leaves_no_temporary_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A directory under the final name: the rename fails.
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let mut p = PendingFile::create(&dest).unwrap();
        p.write_all(b"x").unwrap();
        assert!(p.commit().is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only `out`");

        let mut p = PendingFile::create_fixed(&dest).unwrap();
        p.write_all(b"the only copy").unwrap();
        p.keep();
        assert!(p.commit().is_err());
        let kept = PendingFile::fixed_temp(&dest);
        assert_eq!(fs::read(&kept).unwrap(), b"the only copy");
        // The fixed name is taken until someone deals with what is there.
        assert!(PendingFile::create_fixed(&dest).is_err());
    }

    #[test]
    fn commit_new_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.log.1");
        fs::write(&dest, b"older copy").unwrap();
        let mut p = PendingFile::create_fixed(&dest).unwrap();
        assert_eq!(p.temp_path(), dir.path().join(".app.log.1.caretaker-tmp"));
        p.write_all(b"new").unwrap();
        let err = p.commit_new().unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"older copy");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        fs::remove_file(&dest).unwrap();
        let mut p = PendingFile::create_fixed(&dest).unwrap();
        p.write_all(b"new").unwrap();
        assert_eq!(p.commit_new().unwrap(), dest);
        assert_eq!(fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn temporaries_are_told_by_name_and_writer() {
        let cases = [
            (".db.caretaker-tmp-12-0123abcd", Some(12)),
            (".db.caretaker-tmp-12-0123abcd-wal", Some(12)),
            (".db.caretaker-tmp-12-0123abcd-journal", Some(12)),
            (".db.caretaker-tmp-12-0123abc", None),
            (".db.caretaker-tmp-12-0123abcd-x", None),
            (".db.caretaker-tmp--0123abcd", None),
            (".db2.caretaker-tmp-12-0123abcd", None),
            (".db.caretaker-tmp-1x-0123abcd", None),
            ("db.caretaker-tmp-12-0123abcd", None),
        ];
        for (name, pid) in cases {
            assert_eq!(temp_writer("db", name), pid, "{name}");
        }
    }

    #[test]
    fn only_dead_writers_temps_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("db");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.path().join(format!(".db{TEMP_MARKER}-{dead}-0000abcd"));
        let live = dir
            .path()
            .join(format!(".db{TEMP_MARKER}-{}-0000abcd", std::process::id()));
        for p in [&stale, &live] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(sweep_dead_temps(&dest).unwrap(), vec![stale]);
        assert!(live.exists());
    }

    #[test]
    fn stale_temps_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!(".x{TEMP_MARKER}-1-2"));
        fs::write(&stale, b"half").unwrap();
        fs::write(dir.path().join("keep.tar.gz"), b"ok").unwrap();
        assert_eq!(sweep_temps(dir.path()).unwrap(), vec![stale.clone()]);
        assert!(dir.path().join("keep.tar.gz").exists());
    }
}
