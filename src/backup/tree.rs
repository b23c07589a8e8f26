//! Included paths: a file or a whole directory, walked into what is copied, what is snapshotted (SQLite databases, by their header) and what is left out, with why.
//!
//! A walk never leaves the tree: a symbolic link is followed only to a regular file inside the
//! included directory (archived under the link's name); one to a directory or out of the tree
//! is left out and reported, as are sockets, FIFOs and devices. A file that starts with the
//! SQLite header is a live database to snapshot, never to copy raw (a copy taken while it is
//! written is not a database one can trust); the `-wal`, `-shm` and `-journal` beside it are
//! not archived, since the snapshot already holds what they held.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::archive::{self, Include};
use crate::databases::{Found, is_sqlite_file};

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

/// What the included paths hold.
#[derive(Default)]
pub struct Walked {
    /// Ordinary files, read.
    pub files: Vec<Include>,
    /// SQLite databases, to snapshot.
    pub databases: Vec<Target>,
    /// What was left out, and why.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Walks every included path (a file or a directory) in order.
pub fn walk(includes: &[PathBuf]) -> anyhow::Result<Walked> {
    let mut walked = Walked::default();
    for path in includes {
        let meta = fs::metadata(path).with_context(|| {
            format!(
                "reading included path {} (fix or remove it in the job's `include`)",
                path.display()
            )
        })?;
        if meta.is_dir() {
            let root = fs::canonicalize(path)
                .with_context(|| format!("resolving included directory {}", path.display()))?;
            walk_dir(path, &root, &mut walked)?;
        } else {
            add_file(path, &mut walked)?;
        }
    }
    walked.files.sort_by(|a, b| a.meta.entry.cmp(&b.meta.entry));
    walked.files.dedup_by(|a, b| a.meta.entry == b.meta.entry);
    Ok(walked)
}

fn add_file(path: &Path, walked: &mut Walked) -> anyhow::Result<()> {
    if is_sqlite_file(path) {
        walked.databases.push(Target {
            name: FILES.to_string(),
            entry: archive::include_entry(path)?,
            source: path.to_path_buf(),
        });
    } else {
        walked.files.push(archive::read_include(path)?);
    }
    Ok(())
}

/// Whether `name` in `dir` is a companion (`-wal`, `-shm`, `-journal`) of a SQLite database.
fn companion_of_database(dir: &Path, name: &str) -> bool {
    crate::sqlite::COMPANIONS.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| !base.is_empty() && is_sqlite_file(&dir.join(base)))
    })
}

/// A regular file (or a link to one) found in an included directory: added, unless it is a
/// journal beside a database, whose snapshot already holds what it held.
fn add_unless_companion(
    dir: &Path,
    name: &str,
    path: PathBuf,
    walked: &mut Walked,
) -> anyhow::Result<()> {
    if companion_of_database(dir, name) {
        walked
            .skipped
            .push((path, "a SQLite journal file: its database is snapshotted"));
        Ok(())
    } else {
        add_file(&path, walked)
    }
}

fn walk_dir(dir: &Path, root: &Path, walked: &mut Walked) -> anyhow::Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .with_context(|| format!("listing included directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing included directory {}", dir.display()))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .with_context(|| format!("reading the type of {}", path.display()))?;
        if kind.is_dir() {
            walk_dir(&path, root, walked)?;
        } else if kind.is_file() {
            add_unless_companion(dir, &name, path, walked)?;
        } else if kind.is_symlink() {
            match fs::canonicalize(&path) {
                Ok(target) if !target.starts_with(root) => walked
                    .skipped
                    .push((path, "a symbolic link out of the included directory")),
                Ok(target) if target.is_file() => add_unless_companion(dir, &name, path, walked)?,
                Ok(_) => walked
                    .skipped
                    .push((path, "a symbolic link to a directory, not followed")),
                Err(_) => walked.skipped.push((path, "a dangling symbolic link")),
            }
        } else {
            use std::os::unix::fs::FileTypeExt;
            let why = if kind.is_socket() {
                "a socket"
            } else if kind.is_fifo() {
                "a FIFO"
            } else {
                "a device"
            };
            walked.skipped.push((path, why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_copies_files_snapshots_databases_and_leaves_out_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a.txt"), b"hello").unwrap();
        fs::write(root.join("sub/b.yaml"), b"k: v").unwrap();
        let db = root.join("sub/app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        assert!(root.join("sub/app.db-wal").exists());
        fs::write(dir.path().join("outside.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("out-link")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("in-link")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();

        let walked = walk(std::slice::from_ref(&root)).unwrap();
        let files: Vec<&str> = walked.files.iter().map(|f| f.meta.entry.as_str()).collect();
        let base = archive::include_entry(&root).unwrap();
        assert_eq!(
            files,
            [
                format!("{base}/a.txt"),
                format!("{base}/in-link"),
                format!("{base}/sub/b.yaml")
            ]
        );
        assert_eq!(walked.databases.len(), 1);
        assert_eq!(walked.databases[0].source, db);
        let skipped: Vec<(String, &str)> = walked
            .skipped
            .iter()
            .map(|(p, why)| (p.file_name().unwrap().to_string_lossy().into_owned(), *why))
            .collect();
        for (name, why) in [
            ("fifo", "a FIFO"),
            ("sock", "a socket"),
            ("out-link", "a symbolic link out of the included directory"),
            ("loop", "a symbolic link to a directory, not followed"),
            (
                "app.db-wal",
                "a SQLite journal file: its database is snapshotted",
            ),
        ] {
            assert!(
                skipped.contains(&(name.to_string(), why)),
                "{name}: {skipped:?}"
            );
        }
        drop(conn);
    }
}
