//! `caretaker restore`: put an archive's database back in place, checked first, never losing what it replaces.
//!
//! Order matters for crash safety. The database is extracted beside PATH under a temporary
//! name and checked (SHA-256 against the manifest, then `integrity_check`) before PATH is
//! touched. What is replaced is hard-linked to `PATH.before-restore-<time>` (with its `-wal`
//! or `-journal`, which may hold committed data), stale `-wal`, `-shm` and `-journal` files
//! are removed *before* the new file is renamed over PATH (SQLite would otherwise replay an
//! old WAL into the restored database), and the rename is the last step. A crash at any point
//! leaves PATH old or new, and the safety copy complete.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::archive::{self, CheckLevel, Manifest};
use crate::fsx::{self, PendingFile};

/// Why a restore did not happen. The first two are usage errors (exit 2), the last a failed
/// check or I/O error (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{} already exists; add --force to replace it (a safety copy of it is kept)", .0.display())]
    Exists(PathBuf),
    #[error("the archive {} does not exist or is not a file", .0.display())]
    NoArchive(PathBuf),
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
}

/// Files SQLite keeps beside a database; a leftover one belongs to the old database.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

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

    let manifest = archive::peek_manifest(archive)?;
    super::ensure_free(
        &dir,
        manifest.size,
        &format!("the restored database ({})", manifest.database),
    )?;

    let mut pending = PendingFile::create(to)?;
    let temp = pending.temp_path().to_path_buf();
    let contents = {
        let mut out = io::BufWriter::with_capacity(1 << 20, &mut pending);
        let contents = archive::read(archive, &mut out)?;
        out.flush()
            .with_context(|| format!("writing {}", temp.display()))?;
        contents
    };
    // The bytes match the manifest's SHA-256; now make sure SQLite agrees they are a database.
    let checked = archive::check_database(&temp, CheckLevel::Integrity);
    // The check's connection may have left these beside the temporary file.
    remove_companions(&temp).map_err(RestoreError::Failed)?;
    checked.with_context(|| {
        format!(
            "the database in {} is corrupt; nothing was restored",
            archive.display()
        )
    })?;

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

    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let mut safety_copies = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let old = super::sqlite_companion(to, suffix);
        if old.is_file() {
            let copy = super::sqlite_companion(to, &format!(".before-restore-{stamp}{suffix}"));
            if copy.exists() {
                return Err(anyhow::anyhow!(
                    "the safety copy {} already exists; move it away and run the restore again",
                    copy.display()
                )
                .into());
            }
            fs::hard_link(&old, &copy)
                .or_else(|_| fs::copy(&old, &copy).map(|_| ()))
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
    Ok(Restored {
        manifest: contents.manifest,
        path,
        safety_copies,
        removed,
    })
}

impl Restored {
    /// What was done, for the operator: one line per fact.
    pub fn describe(&self, archive: &Path) -> String {
        let m = &self.manifest;
        let mut lines = vec![format!(
            "restored {} from {} (snapshot of {} taken {}, {} rows, SHA-256 and integrity_check ok) to {}",
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
        lines.join("\n")
    }
}

fn remove_companions(db: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for suffix in COMPANIONS {
        let path = super::sqlite_companion(db, suffix);
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
