//! Survey of the file system: which logs the patterns match, and their rotated copies.
//!
//! Everything the pure planner needs is gathered here, so that `plan` never touches the disk.
//! Symbolic links are never followed; already-rotated copies (`x.log.1`, `x.log.2.gz`,
//! `x.log-20261122`) and compressed files are never taken for logs, however loose the glob.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};

use super::config::RotateSpec;

/// Suffix of the temporary files this module writes next to logs; never taken for a log.
pub(crate) const TEMP_SUFFIX: &str = crate::fsx::TEMP_MARKER;

/// What the planner knows about one matched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: DateTime<Utc>,
    /// The path itself is a symbolic link (never followed, never rotated).
    pub is_symlink: bool,
    /// A regular file (not a directory, socket, FIFO...).
    pub is_file: bool,
    /// Hard links to the inode; more than 1 means rotating would split the file's names.
    pub nlink: u64,
    /// Rotated copies of this file found beside it, in no particular order.
    pub copies: Vec<RotatedCopy>,
}

/// An earlier rotation's output: `name.N[.gz]` or `name-YYYYMMDD[.gz]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedCopy {
    pub path: PathBuf,
    pub suffix: CopySuffix,
    pub compressed: bool,
    pub mtime: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CopySuffix {
    Number(u32),
    Date(NaiveDate),
}

/// A pattern or path that could not be surveyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The pattern or path concerned.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Parses a copy's suffix after the log's own name: `.3`, `.3.gz`, `-20261122`, `-20261122.gz`.
pub(crate) fn parse_copy_suffix(rest: &str) -> Option<(CopySuffix, bool)> {
    let (rest, compressed) = match rest.strip_suffix(".gz") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(n) = rest.strip_prefix('.').filter(|n| all_digits(n)) {
        return n.parse().ok().map(|n| (CopySuffix::Number(n), compressed));
    }
    if let Some(d) = rest
        .strip_prefix('-')
        .filter(|d| d.len() == 8 && all_digits(d))
    {
        return NaiveDate::parse_from_str(d, "%Y%m%d")
            .ok()
            .map(|d| (CopySuffix::Date(d), compressed));
    }
    None
}

/// Whether a file name looks like a rotated copy or a by-product, never a live log.
fn is_rotated_name(name: &str) -> bool {
    if name.ends_with(".gz") || name.ends_with(TEMP_SUFFIX) {
        return true;
    }
    // `x.log.1` or `x.log-20261122`: find the last `.` or `-` and test what follows.
    name.char_indices()
        .filter(|&(i, c)| (c == '.' || c == '-') && i > 0)
        .any(|(i, _)| {
            let rest = &name[i..];
            // A number too large to be a copy this module made still marks someone's copy.
            let huge_number = rest.strip_prefix('.').is_some_and(|n| {
                let n = n.strip_suffix(".gz").unwrap_or(n);
                n.len() > 9 && n.bytes().all(|b| b.is_ascii_digit())
            });
            huge_number || parse_copy_suffix(rest).is_some()
        })
}

fn utc_mtime(meta: &fs::Metadata) -> DateTime<Utc> {
    DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
        .unwrap_or_default()
}

/// Expands the spec's patterns and gathers the facts the planner needs.
///
/// A pattern that matches nothing is an error unless `missing_ok`; a file that cannot be
/// examined is an error for that file only.
pub fn survey(spec: &RotateSpec) -> (Vec<FileFacts>, Vec<FileError>) {
    let mut errors = Vec::new();
    let mut paths = BTreeSet::new();
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        // Keeps `*` away from hidden files, including this module's own temporary files.
        require_literal_leading_dot: true,
    };
    for pattern in &spec.patterns {
        let matches = match glob::glob_with(pattern, options) {
            Ok(m) => m,
            Err(e) => {
                errors.push(FileError {
                    path: pattern.clone(),
                    message: format!("invalid glob pattern: {e}"),
                });
                continue;
            }
        };
        let mut matched = false;
        for entry in matches {
            match entry {
                Ok(path) => {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if !is_rotated_name(name) {
                        matched = true;
                        paths.insert(path);
                    }
                }
                Err(e) => errors.push(FileError {
                    path: e.path().display().to_string(),
                    message: format!("cannot read while expanding {pattern}: {}", e.error()),
                }),
            }
        }
        if !matched && !spec.missing_ok {
            errors.push(FileError {
                path: pattern.clone(),
                message: "no log file matches (set missing_ok: true if that is expected)".into(),
            });
        }
    }

    let mut facts = Vec::new();
    for path in paths {
        match examine(&path) {
            Ok(f) => facts.push(f),
            Err(e) => errors.push(FileError {
                path: path.display().to_string(),
                message: e,
            }),
        }
    }
    (facts, errors)
}

fn examine(path: &Path) -> Result<FileFacts, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot examine: {e}"))?;
    let copies = if meta.is_file() {
        find_copies(path)?
    } else {
        Vec::new()
    };
    Ok(FileFacts {
        path: path.to_owned(),
        size: meta.len(),
        mtime: utc_mtime(&meta),
        is_symlink: meta.file_type().is_symlink(),
        is_file: meta.is_file(),
        nlink: meta.nlink(),
        copies,
    })
}

/// Lists `path`'s rotated copies in its directory (regular files only).
fn find_copies(path: &Path) -> Result<Vec<RotatedCopy>, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let entries = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {} for rotated copies: {e}", dir.display()))?;
    let mut copies = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot list {} for rotated copies: {e}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(name)) else {
            continue;
        };
        let Some((suffix, compressed)) = parse_copy_suffix(rest) else {
            continue;
        };
        let copy_path = entry.path();
        let meta = fs::symlink_metadata(&copy_path)
            .map_err(|e| format!("cannot examine {}: {e}", copy_path.display()))?;
        if meta.is_file() {
            copies.push(RotatedCopy {
                path: copy_path,
                suffix,
                compressed,
                mtime: utc_mtime(&meta),
            });
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        let rotated = [
            "x.log.1",
            "x.log.12",
            "x.log.123456789012345",
            "x.log.2.gz",
            "x.log-20261122",
            "x.log-20261122.gz",
            "x.log.gz",
            ".x.log.1.gz.caretaker-tmp",
        ];
        for name in rotated {
            assert!(is_rotated_name(name), "{name}");
        }
        let live = [
            "x.log",
            "app-server.log",
            "x.log-2026",
            "x.log-20261332",
            "x.log.1a",
            "x",
            ".1",
        ];
        for name in live {
            assert!(!is_rotated_name(name), "{name}");
        }
    }
}
