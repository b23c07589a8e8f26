//! `caretaker restore ARCHIVE --to DIR`: every database and included file of an archive under a new directory, all checked before the directory appears; and how a database of an archive is named.
//!
//! The archive is extracted into a private temporary directory beside DIR, every entry
//! checked as it streams past (SHA-256 and size against the manifest, the SQLite header of each
//! database), then each database opened and checked by SQLite (`integrity_check`, its page and
//! row counts against the manifest), every file flushed to disk, and only then the temporary
//! directory renamed to DIR. A run killed on the way leaves no DIR, only a temporary directory
//! whose name says what it is. DIR holds the archive's entries under their own names:
//! `databases/<name>/...` and `files/<absolute path>` (and, for an archive of one database,
//! that database under its file name).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail, ensure};

use super::archive::{self, CheckLevel, Manifest};
use crate::fsx;

/// What a directory restore did.
#[derive(Debug, Clone)]
pub struct RestoredDir {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// The databases restored (their paths under `dir`).
    pub databases: Vec<PathBuf>,
    /// The included files restored.
    pub files: usize,
    /// The bytes of the databases restored.
    pub bytes: u64,
    /// Rows without their foreign-key parent, over all databases (with `CheckLevel::Full`).
    pub foreign_key_violations: u64,
}

impl RestoredDir {
    pub fn describe(&self, archive: &Path) -> String {
        let mut lines = vec![format!(
            "restored {} databases and {} included files from {} (snapshot taken {}; SHA-256, page and row counts and integrity_check ok) under {}",
            self.databases.len(),
            self.files,
            archive.display(),
            self.manifest.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.dir.display()
        )];
        for d in &self.databases {
            lines.push(format!("database {}", d.display()));
        }
        lines.join("\n")
    }
}

/// The entry of the database `name` names in the archive: its entry, its label
/// (`media:7/Media_DB_v2.db`), or a declared name (`users`, `gateway`) that stands for exactly
/// one database of the archive.
pub fn resolve(manifest: &Manifest, name: &str) -> anyhow::Result<String> {
    let entries = manifest.database_entries();
    if entries.contains(&name) {
        return Ok(name.to_string());
    }
    if let Some(e) = entries.iter().find(|e| manifest.label(e) == name) {
        return Ok(e.to_string());
    }
    let of_name: Vec<&&str> = entries
        .iter()
        .filter(|e| manifest.label(e).split_once(':').map(|(n, _)| n) == Some(name))
        .collect();
    match of_name.as_slice() {
        [one] => Ok(one.to_string()),
        _ => {
            let labels: Vec<String> = entries.iter().map(|e| manifest.label(e)).collect();
            bail!(
                "the archive holds {} databases named `{name}`; accepted: one of {}",
                of_name.len(),
                labels.join(", ")
            )
        }
    }
}

/// The path of `entry` under `dir`: only plain names, never `..` or an absolute path.
fn under(dir: &Path, entry: &str) -> anyhow::Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for part in Path::new(entry).components() {
        match part {
            Component::Normal(p) => path.push(p),
            _ => bail!(
                "entry `{entry}` is not a plain relative name; the archive is not one caretaker wrote"
            ),
        }
    }
    Ok(path)
}

fn create_private(path: &Path) -> io::Result<fs::File> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Whether `restore ARCHIVE --to TO` (without `--database`) restores a directory: the archive
/// holds more than one database, or TO is a directory.
pub fn wants_dir(archive: &Path, to: &Path) -> bool {
    to.is_dir() || archive::peek_manifest(archive).is_ok_and(|m| !m.databases.is_empty())
}

/// Restores everything `archive` holds under `dir`, which must not exist or be empty.
pub fn restore_dir(archive: &Path, dir: &Path) -> anyhow::Result<RestoredDir> {
    extract_dir(archive, dir, CheckLevel::Integrity)
}

/// [`restore_dir`] with each database checked at `level`.
pub fn extract_dir(archive: &Path, dir: &Path, level: CheckLevel) -> anyhow::Result<RestoredDir> {
    ensure!(
        archive.is_file(),
        "the archive {} does not exist or is not a file",
        archive.display()
    );
    if dir.exists() {
        let empty = fs::read_dir(dir)
            .with_context(|| format!("looking into {}", dir.display()))?
            .next()
            .is_none();
        ensure!(
            empty,
            "{} exists and is not empty; accepted: a new or empty directory (restore one database into place with --database NAME --to PATH)",
            dir.display()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fsx::private_dir(&parent)?;
    let manifest = archive::peek_manifest(archive)?;
    let total: u64 = manifest.size
        + manifest.databases.iter().map(|d| d.size).sum::<u64>()
        + manifest.files.iter().map(|f| f.size).sum::<u64>();
    super::ensure_free(
        &parent,
        total,
        &format!("the restore of {}", archive.display()),
    )?;

    let temp = parent.join(format!(
        ".{name}{}-{}-{:08x}",
        fsx::TEMP_MARKER,
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    let result = fill(archive, &temp, dir, level);
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            return Err(e.context(format!("nothing was restored from {}", archive.display())));
        }
    };
    // rename(2) replaces an empty directory; DIR appears whole or not at all.
    fs::rename(&temp, dir)
        .with_context(|| format!("renaming {} to {}", temp.display(), dir.display()))?;
    fsx::sync_dir(&parent).with_context(|| format!("flushing directory {}", parent.display()))?;
    Ok(restored)
}

/// Extracts `archive` into `temp` (an empty private directory of ours) and checks it all: the
/// entries against the manifest as they stream past, then each database with SQLite at
/// `level`; flushes everything. The paths reported are as they will be under `dir`.
fn fill(archive: &Path, temp: &Path, dir: &Path, level: CheckLevel) -> anyhow::Result<RestoredDir> {
    let manifest = archive::peek_manifest(archive)?;
    let primary = under(temp, &manifest.database)?;
    let mut first =
        create_private(&primary).with_context(|| format!("creating {}", primary.display()))?;
    let mut written = Vec::new();
    let contents = {
        let mut out = io::BufWriter::new(&mut first);
        let contents = archive::read_each(archive, None, &mut out, &mut |entry| {
            let path = under(temp, entry)?;
            let file =
                create_private(&path).with_context(|| format!("creating {}", path.display()))?;
            written.push(path);
            Ok(Some(Box::new(io::BufWriter::new(file)) as Box<dyn Write>))
        })?;
        out.flush().context("writing the first database")?;
        contents
    };
    drop(first);
    let m = &contents.manifest;
    let mut databases = Vec::new();
    let mut bytes = 0;
    let mut foreign_key_violations = 0;
    for entry in m.database_entries() {
        let path = under(temp, entry)?;
        let view = m.for_entry(entry).context("reading the manifest")?;
        let (report, _) = archive::check_copy(&path, level, Some(&view))
            .with_context(|| format!("the database `{entry}` does not check out"))?;
        bytes += view.size;
        foreign_key_violations += report.foreign_key_violations;
        databases.push(dir.join(path.strip_prefix(temp).unwrap_or(&path)));
    }
    // SQLite's check may leave journal files beside a copy: they are ours, not the archive's.
    for entry in m.database_entries() {
        let path = under(temp, entry)?;
        for suffix in crate::sqlite::COMPANIONS {
            let _ = fs::remove_file(crate::sqlite::companion(&path, suffix));
        }
    }
    written.push(primary);
    for path in &written {
        fs::File::open(path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("flushing {}", path.display()))?;
    }
    sync_tree(temp)?;
    Ok(RestoredDir {
        files: m.files.len(),
        manifest: contents.manifest,
        dir: dir.to_path_buf(),
        databases,
        bytes,
        foreign_key_violations,
    })
}

/// [`extract_dir`] straight into `dir`, a new scratch directory of the caller's that needs no
/// rename (a `verify` job's, swept with its other scratch files when a run is killed); removed
/// again when anything fails.
pub fn extract_into(archive: &Path, dir: &Path, level: CheckLevel) -> anyhow::Result<RestoredDir> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fill(archive, dir, dir, level).inspect_err(|_| {
        let _ = fs::remove_dir_all(dir);
    })
}

/// fsyncs every directory under `dir`, so the files' names are durable too.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    fsx::sync_dir(dir).with_context(|| format!("flushing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_under_the_directory() {
        let dir = Path::new("/restore");
        assert_eq!(
            under(dir, "databases/media/7/Media_DB_v2.db").unwrap(),
            Path::new("/restore/databases/media/7/Media_DB_v2.db")
        );
        for bad in ["../etc/passwd", "/etc/passwd", "databases/../../x"] {
            let err = under(dir, bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
