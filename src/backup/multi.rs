//! Snapshots of the other databases a backup looks after (declared ones, and SQLite files in included directories), taken one at a time the way the gateway's is.
//!
//! Each is [`snapshot::take_from`]: one read transaction, the memory staging for a rollback
//! journal, the same lock accounting. They are taken one after the other, never two at once, so
//! that no two locks of ours ever stand together in front of one application. A file listed
//! that is gone when its turn comes is reported and left out; any other failure fails the run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::archive::{ArchivedDatabase, Matched};
use super::snapshot::{self, Snapshot, Sweep};
use super::{ArchiveName, Scratch, ScratchDb};
use crate::databases::{self, Declared, Found};

/// A database to snapshot: where it is, what it is called in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The jobs file's name, or [`FILES`] for one found in an included directory.
    pub name: String,
    pub source: PathBuf,
    pub entry: String,
}

/// The name databases found in included directories go by.
pub const FILES: &str = "files";

impl From<Found> for Target {
    fn from(f: Found) -> Self {
        Target {
            name: f.name.clone(),
            entry: f.entry(),
            source: f.path,
        }
    }
}

/// What the declared databases' paths and globs match now, each with its declaration.
pub fn list(declared: &[Declared]) -> anyhow::Result<Vec<(Declared, Vec<Found>)>> {
    declared
        .iter()
        .map(|d| Ok((d.clone(), d.expand()?)))
        .collect()
}

/// A snapshot taken, with its scratch file (removed when dropped).
pub struct Taken {
    pub target: Target,
    pub snap: Snapshot,
    pub scratch: ScratchDb,
}

impl Taken {
    /// Its manifest entry, given its SHA-256 and size.
    pub fn archived(&self, sha256: String, size: u64) -> ArchivedDatabase {
        ArchivedDatabase {
            name: self.target.name.clone(),
            source: self.target.source.clone(),
            entry: self.target.entry.clone(),
            size,
            sha256,
            page_size: self.snap.page_size,
            page_count: self.snap.page_count,
            journal_mode: self.snap.journal_mode.clone(),
            table: self.snap.table.clone(),
            row_count: self.snap.rows,
        }
    }
}

/// What [`take_all`] did.
pub struct Outcome {
    pub taken: Vec<Taken>,
    /// Targets that were gone when their snapshot was due.
    pub vanished: Vec<Target>,
}

/// Snapshots `targets` one at a time into scratch files beside the archive `name` in `to`.
/// `between` runs before each (the job's safe point). The caller sweeps the memory files a
/// killed run left ([`snapshot::sweep_memory`]) once, before its first snapshot: a sweep here
/// would remove the gateway's copy taken just before.
pub fn take_all(
    targets: &[Target],
    to: &Path,
    name: &ArchiveName,
    busy_timeout: Duration,
    between: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let mut taken = Vec::new();
    let mut vanished = Vec::new();
    for target in targets {
        between()?;
        if !target.source.is_file() {
            tracing::warn!(database = %target.source.display(), "a database listed for the backup is gone; it is left out");
            vanished.push(target.clone());
            continue;
        }
        let scratch = ScratchDb(name.scratch_path(to, Scratch::Snapshot));
        let result = databases::connect(&target.source, false, busy_timeout).and_then(|conn| {
            snapshot::take_from(&target.source, conn, None, &scratch.0, Sweep::Done)
        });
        match result {
            Ok(snap) => taken.push(Taken {
                target: target.clone(),
                snap,
                scratch,
            }),
            // Gone between the look above and the open: the same as gone before it.
            Err(_) if !target.source.exists() => vanished.push(target.clone()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "taking the snapshot of database `{}` ({}); no archive was written",
                        target.name,
                        target.source.display()
                    )
                });
            }
        }
    }
    Ok(Outcome { taken, vanished })
}

/// What each declaration matched, for the manifest: the files archived and those that vanished.
pub fn matched(
    listed: &[(Declared, Vec<Found>)],
    taken: &[Taken],
    vanished: &[Target],
) -> Vec<Matched> {
    listed
        .iter()
        .map(|(d, _)| Matched {
            name: d.name.clone(),
            pattern: d.pattern.clone(),
            files: taken.iter().filter(|t| t.target.name == d.name).count() as u64,
            vanished: vanished
                .iter()
                .filter(|t| t.name == d.name)
                .map(|t| t.source.clone())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn takes_each_database_and_reports_one_that_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let mut targets = Vec::new();
        for (i, mode) in ["wal", "delete"].iter().enumerate() {
            let path = dir.path().join(format!("u{i}.db"));
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = {mode}; CREATE TABLE a (x); CREATE TABLE b (y);
                 INSERT INTO b VALUES (1), (2), (3); INSERT INTO a VALUES (1);"
            ))
            .unwrap();
            targets.push(Target {
                name: "users".into(),
                entry: format!("databases/users/u{i}.db"),
                source: path,
            });
        }
        targets.push(Target {
            name: "users".into(),
            entry: "databases/users/gone.db".into(),
            source: dir.path().join("gone.db"),
        });
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let name = ArchiveName::new(
            "b",
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            super::super::Format::TarGz,
        );
        let outcome = take_all(
            &targets,
            &out,
            &name,
            Duration::from_secs(1),
            &mut || Ok(()),
        )
        .unwrap();
        assert_eq!(outcome.taken.len(), 2);
        assert_eq!(outcome.vanished, vec![targets[2].clone()]);
        for t in &outcome.taken {
            assert_eq!(t.snap.table.as_deref(), Some("b"));
            assert_eq!(t.snap.rows, Some(3));
            assert!(t.snap.path.is_file());
        }
        // Both copies are held at once: the second snapshot did not sweep the first's memory file.
        assert_eq!(outcome.taken[1].snap.journal_mode, "delete");
        assert!(
            !dir.path().join("gone.db").exists(),
            "a vanished database is not created"
        );
    }
}
