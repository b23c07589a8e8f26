//! What one backup run copies: the gateway's database and the others it looks after (declared ones, and SQLite files in included directories), listed when the run starts and snapshotted one at a time the way the gateway's is.
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
pub use super::tree::{FILES, Target};
use super::{ArchiveName, Scratch, ScratchDb};
use crate::databases::{self, Declared, Found};

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

/// Free space under which a failed snapshot is put down to a full filesystem: less than one
/// SQLite page and its journal's header.
const FULL_BELOW: u64 = 64 * 1024;

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
        let result = crate::gateway::sqlite::connect_file(&target.source, false, busy_timeout)
            .with_context(|| format!("opening the database {}", target.source.display()))
            .and_then(|conn| {
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
                // A full disk often reaches us as SQLite's I/O error on the copy's journal or
                // shared memory, not as ENOSPC: say what the operator must fix.
                let full = super::free_bytes(to).is_ok_and(|free| free < FULL_BELOW);
                return Err(e).with_context(|| {
                    format!(
                        "taking the snapshot of database `{}` ({}){}; no archive was written",
                        target.name,
                        target.source.display(),
                        if full {
                            format!(
                                ": the filesystem of {} is full; free space there",
                                to.display()
                            )
                        } else {
                            String::new()
                        }
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

/// What a backup run will copy, found when it starts: each declared database's matches (globs
/// expanded now), the databases and ordinary files in the included paths, and what was left out.
pub struct Listing {
    pub listed: Vec<(Declared, Vec<Found>)>,
    /// The databases to snapshot besides the gateway's, in order.
    pub targets: Vec<Target>,
    pub walked: super::tree::Walked,
}

impl Listing {
    pub fn new(declared: &[Declared], include: &[PathBuf]) -> anyhow::Result<Listing> {
        let listed = list(declared)?;
        let mut walked = super::tree::walk(include)?;
        let mut targets: Vec<Target> = listed
            .iter()
            .flat_map(|(_, found)| found.iter().cloned().map(Target::from))
            .collect();
        targets.append(&mut walked.databases);
        Ok(Listing {
            listed,
            targets,
            walked,
        })
    }

    /// What the run needs free beside the archives: each snapshot is at most its database plus
    /// its WAL, the archive at most all of them again (incompressible data) plus the included
    /// files and tar headers. `gateway` is the gateway's database when the run copies it.
    pub fn bytes_needed(&self, gateway: Option<&Path>) -> u64 {
        let databases: u64 = gateway.map_or(0, super::database_bytes)
            + self
                .targets
                .iter()
                .map(|t| super::database_bytes(&t.source))
                .sum::<u64>();
        let files: u64 = self.walked.files.iter().map(|i| i.meta.size).sum();
        2 * databases + files + (1 << 20)
    }
}

/// The first database of an archive, which the manifest's own fields describe.
pub struct Primary {
    pub source: PathBuf,
    /// Its entry in the archive.
    pub entry: String,
    /// The table whose rows are counted.
    pub table: String,
}

/// What a backup run copied, before anything is checked or written.
pub struct Copies {
    pub primary: Primary,
    pub snap: Snapshot,
    /// The first database's scratch file (removed when dropped).
    pub scratch: ScratchDb,
    pub others: Vec<Taken>,
    pub includes: Vec<super::archive::Include>,
    pub matched: Vec<Matched>,
    pub vanished: Vec<Target>,
    /// What the included directories held that was left out, and why.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Takes every snapshot of a backup run, one at a time: the gateway's first when given, then
/// the listing's. With the gateway's beside others its entry is `databases/gateway/<file>`;
/// alone it keeps the layout of an archive of one. Without it the first database listed takes
/// its place in the manifest's own fields; a run that finds no database at all fails.
pub fn take_copies(
    listing: Listing,
    gateway: Option<&crate::gateway::Gateway>,
    to: &Path,
    name: &ArchiveName,
    busy_timeout: Duration,
    between: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Copies> {
    // What a killed run left in memory goes first: every copy this run takes is held until its
    // archive is written, so none may be swept later in the run.
    snapshot::sweep_memory(to);
    let gateway_snap = match gateway {
        Some(g) => {
            let scratch = ScratchDb(name.scratch_path(to, Scratch::Snapshot));
            let snap = snapshot::take(g, &scratch.0)?;
            Some((g, snap, scratch))
        }
        None => None,
    };
    let Outcome {
        taken: mut others,
        vanished,
    } = take_all(&listing.targets, to, name, busy_timeout, between)?;
    let matched = matched(&listing.listed, &others, &vanished);
    let (snap, scratch, primary) = match gateway_snap {
        Some((g, snap, scratch)) => {
            let file = g.database.file_name().map_or_else(
                || "gateway.db".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let entry = if others.is_empty() {
                file
            } else {
                format!("{}/{}/{file}", databases::ENTRY_DIR, databases::GATEWAY)
            };
            let primary = Primary {
                source: g.database.clone(),
                entry,
                table: g.table.clone(),
            };
            (snap, scratch, primary)
        }
        None => {
            anyhow::ensure!(
                !others.is_empty(),
                "nothing to back up: the job's databases matched no file{}; no archive was written and none was deleted",
                if vanished.is_empty() {
                    String::new()
                } else {
                    format!(" ({} vanished while it ran)", vanished.len())
                }
            );
            let first = others.remove(0);
            let primary = Primary {
                source: first.target.source.clone(),
                entry: first.target.entry.clone(),
                table: first.snap.table.clone().unwrap_or_default(),
            };
            (first.snap, first.scratch, primary)
        }
    };
    Ok(Copies {
        primary,
        snap,
        scratch,
        others,
        includes: listing.walked.files,
        matched,
        vanished,
        skipped: listing.walked.skipped,
    })
}

impl Copies {
    /// The databases copied.
    pub fn count(&self) -> usize {
        1 + self.others.len()
    }

    /// What the run's summary adds: the databases gone before their snapshot and what the
    /// included directories held that was left out.
    pub fn remarks(&self) -> String {
        let mut out = String::new();
        if !self.vanished.is_empty() {
            let gone: Vec<String> = self
                .vanished
                .iter()
                .map(|t| format!("{} ({})", t.name, t.source.display()))
                .collect();
            out.push_str(&format!(
                "; gone before their snapshot, left out: {}",
                gone.join(", ")
            ));
        }
        if !self.skipped.is_empty() {
            let left: Vec<String> = self
                .skipped
                .iter()
                .map(|(p, why)| format!("{} ({why})", p.display()))
                .collect();
            out.push_str(&format!(
                "; left out of included directories: {}",
                left.join(", ")
            ));
        }
        out
    }
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
