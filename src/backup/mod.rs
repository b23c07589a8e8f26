//! Backup archives of the gateway database: their names, snapshots, contents, checks and restores.
//!
//! An archive is `<job>-<YYYYMMDDTHHMMSSZ>.tar.gz` (or `.tar`). Only a file whose whole name
//! parses as one of a job's archives is ever counted, listed or pruned as a backup of that job;
//! files being written carry [`fsx::TEMP_MARKER`] and a leading dot, so they never parse.

pub mod archive;
pub mod multi;
pub mod pg_dump;
pub mod restore;
pub mod restore_dir;
pub mod restore_pg;
pub mod snapshot;
pub mod tree;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::fsx;
use crate::sqlite;

/// The time format in archive names: UTC, to the second, sortable as text.
const NAME_TIME: &str = "%Y%m%dT%H%M%SZ";

/// Archive file extensions: gzip-compressed tar, or plain tar for `compression: none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Tar,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::TarGz => "tar.gz",
            Format::Tar => "tar",
        }
    }
}

/// The name of one archive of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName {
    pub job: String,
    /// When its snapshot was taken, to the second.
    pub time: DateTime<Utc>,
    pub format: Format,
}

impl ArchiveName {
    pub fn new(job: &str, time: DateTime<Utc>, format: Format) -> Self {
        ArchiveName {
            job: job.to_string(),
            time,
            format,
        }
    }

    /// Reads `file_name` as an archive of `job`; `None` for anything else, including other
    /// jobs whose names start with this one (`nightly` vs `nightly-2`) and temporary files.
    pub fn parse(job: &str, file_name: &str) -> Option<Self> {
        let rest = file_name.strip_prefix(job)?.strip_prefix('-')?;
        let (stamp, ext) = rest.split_at_checked(NAME_TIME_LEN)?;
        let format = match ext {
            ".tar.gz" => Format::TarGz,
            ".tar" => Format::Tar,
            _ => return None,
        };
        let time = NaiveDateTime::parse_from_str(stamp, NAME_TIME)
            .ok()?
            .and_utc();
        // Reject spellings chrono tolerates but we never write, so names round-trip exactly.
        (time.format(NAME_TIME).to_string() == stamp).then(|| ArchiveName::new(job, time, format))
    }

    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.{}",
            self.job,
            self.time.format(NAME_TIME),
            self.format.extension()
        )
    }

    /// The name of a scratch file belonging to this archive, swept by [`sweep_scratch`] when a
    /// run was killed: `.<archive>.<purpose><TEMP_MARKER>-<pid>-<random>`.
    pub fn scratch_path(&self, dir: &Path, purpose: Scratch) -> PathBuf {
        dir.join(format!(
            ".{}.{}{}-{}-{:08x}",
            self.file_name(),
            purpose.as_str(),
            fsx::TEMP_MARKER,
            std::process::id(),
            rand::random::<u32>()
        ))
    }
}

/// Length of `20261122T024817Z`.
const NAME_TIME_LEN: usize = 16;

impl fmt::Display for ArchiveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// What a scratch file next to the archives is for. Each user sweeps only its own kind, so a
/// `verify` job running beside a `backup` job of the same directory never loses its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// The backup job's snapshot of the gateway database.
    Snapshot,
    /// A `verify` job's extracted copy.
    Verify,
}

impl Scratch {
    fn as_str(self) -> &'static str {
        match self {
            Scratch::Snapshot => "snapshot",
            Scratch::Verify => "verify",
        }
    }
}

/// This job's archives in `dir`, oldest first. Other files are ignored.
pub fn list(dir: &Path, job: &str) -> anyhow::Result<Vec<(ArchiveName, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("listing the backup directory {}", dir.display()));
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("listing the backup directory {}", dir.display()))?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| ArchiveName::parse(job, n))
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            found.push((name, entry.path()));
        }
    }
    found.sort_by(|a, b| a.0.time.cmp(&b.0.time).then_with(|| a.1.cmp(&b.1)));
    Ok(found)
}

/// Removes what a killed run of `job` left in `dir`: the temporary archive being written and
/// scratch files of `purpose`. Returns the removed paths.
pub fn sweep_scratch(dir: &Path, job: &str, purpose: Scratch) -> anyhow::Result<Vec<PathBuf>> {
    fsx::sweep(dir, |name| owned_temp(job, purpose, name))
}

/// Whether `name` is a temporary file of `job` for `purpose`: a scratch file (also SQLite's
/// `-wal`, `-shm` and `-journal` beside it) or, for snapshots, a half-written archive.
fn owned_temp(job: &str, purpose: Scratch, name: &str) -> bool {
    let Some((stem, _)) = name
        .strip_prefix('.')
        .and_then(|n| n.split_once(fsx::TEMP_MARKER))
    else {
        return false;
    };
    if let Some(archive) = stem.strip_suffix(&format!(".{}", purpose.as_str())) {
        return ArchiveName::parse(job, archive).is_some();
    }
    // PendingFile names the archive itself `.<archive><TEMP_MARKER>-...`.
    purpose == Scratch::Snapshot && ArchiveName::parse(job, stem).is_some()
}

/// The bytes of a database as it stands: its file and its WAL, if any.
pub fn database_bytes(db: &Path) -> u64 {
    [db.to_path_buf(), sqlite::companion(db, sqlite::WAL)]
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// A scratch copy of a database, removed with the files SQLite put beside it however the run
/// ends; [`ScratchDb::remove`] also clears what a killed run left under the same name.
pub struct ScratchDb(pub PathBuf);

impl ScratchDb {
    pub fn remove(&self) -> anyhow::Result<()> {
        for suffix in sqlite::WITH_COMPANIONS {
            let path = sqlite::companion(&self.0, suffix);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing the scratch copy {}", path.display()));
                }
            }
        }
        Ok(())
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Bytes available to us on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let stat = rustix::fs::statvfs(dir).with_context(|| {
        format!(
            "reading the free space of the filesystem of {}",
            dir.display()
        )
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What to do when a directory has no room for what we would write there.
pub const MAKE_ROOM: &str =
    "free space there or choose another directory (caretaker never deletes backups to make room)";

/// Fails with a message an operator can act on when `dir` has less than `needed` bytes free.
pub fn ensure_free(dir: &Path, needed: u64, what: &str) -> anyhow::Result<()> {
    ensure_room(dir, needed, what, MAKE_ROOM)
}

/// [`ensure_free`], saying what to do (`instead`) when there is no room.
pub fn ensure_room(dir: &Path, needed: u64, what: &str, instead: &str) -> anyhow::Result<()> {
    let free = free_bytes(dir)?;
    if free < needed {
        anyhow::bail!(
            "not enough free space in {} for {what}: about {} needed, {} available; {instead}",
            dir.display(),
            crate::units::bytes(needed),
            crate::units::bytes(free)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 2, 48, 17).unwrap();
        let name = ArchiveName::new("nightly", t, Format::TarGz);
        assert_eq!(name.file_name(), "nightly-20261122T024817Z.tar.gz");
        assert_eq!(
            ArchiveName::parse("nightly", "nightly-20261122T024817Z.tar.gz"),
            Some(name)
        );
        assert_eq!(
            ArchiveName::parse("nightly", "nightly-20261122T024817Z.tar").map(|n| n.format),
            Some(Format::Tar)
        );
        let strangers = [
            "nightly-2-20261122T024817Z.tar.gz",
            "nightly-20261122T024817Z.tar.gz.corrupt",
            "nightly-20261122T024817.tar.gz",
            "nightly-20261322T024817Z.tar.gz",
            "nightly-20261122T024817Z.zip",
            ".nightly-20261122T024817Z.tar.gz.caretaker-tmp-1-2",
            "nightly20261122T024817Z.tar.gz",
            "other-20261122T024817Z.tar.gz",
            "nightly-+2026112T024817Z.tar.gz",
        ];
        for s in strangers {
            assert_eq!(ArchiveName::parse("nightly", s), None, "{s}");
        }
        assert!(ArchiveName::parse("nightly-2", "nightly-2-20261122T024817Z.tar.gz").is_some());
    }

    #[test]
    fn sweeps_only_its_own_temporaries() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let a = ArchiveName::new("a", t, Format::TarGz);
        let a2 = ArchiveName::new("a-2", t, Format::TarGz);
        let m = fsx::TEMP_MARKER;
        let cases = [
            (format!(".{a}{m}-1-2"), Scratch::Snapshot, true),
            (format!(".{a}.snapshot{m}-1-2"), Scratch::Snapshot, true),
            (format!(".{a}.snapshot{m}-1-2-wal"), Scratch::Snapshot, true),
            (format!(".{a}.verify{m}-1-2"), Scratch::Snapshot, false),
            (format!(".{a}.verify{m}-1-2"), Scratch::Verify, true),
            (format!(".{a}{m}-1-2"), Scratch::Verify, false),
            (format!(".{a2}.snapshot{m}-1-2"), Scratch::Snapshot, false),
            (a.file_name(), Scratch::Snapshot, false),
        ];
        for (name, purpose, owned) in cases {
            assert_eq!(owned_temp("a", purpose, &name), owned, "{name} {purpose:?}");
        }
    }

    #[test]
    fn a_killed_test_restore_s_scratch_directory_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let a = ArchiveName::new("a", t, Format::TarGz);
        let scratch = a.scratch_path(dir.path(), Scratch::Verify);
        fs::create_dir_all(scratch.join("databases/users")).unwrap();
        fs::write(scratch.join("databases/users/u.db"), b"x").unwrap();
        let swept = sweep_scratch(dir.path(), "a", Scratch::Verify).unwrap();
        assert_eq!(swept, std::slice::from_ref(&scratch));
        assert!(!scratch.exists());
    }

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(crate::units::bytes(12), "12 B");
        assert_eq!(crate::units::bytes(1536), "1.5 KiB");
        assert_eq!(crate::units::bytes(3 << 30), "3 GiB");
    }
}
