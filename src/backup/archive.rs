//! The archive file: a tar (optionally gzip) of `manifest.json`, the database and `files/`, written durably and read back strictly.
//!
//! `manifest.json` is the first entry, so a reader knows the database's name, size and
//! SHA-256 before the database itself streams past. Reading checks everything the format can
//! check: gzip CRC and length (by reading to the very end), tar headers, the SHA-256 and size
//! of the database and of every included file, and that nothing is missing or extra.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsx::PendingFile;
use crate::pgzip::ParallelGzWriter;
use crate::readahead::ReadAhead;

/// The archive format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first entry of every archive.
pub const MANIFEST_ENTRY: &str = "manifest.json";

/// Where included files go inside the archive: `files/<absolute path without the leading />`.
pub const FILES_DIR: &str = "files";

const IO_BUFFER: usize = 1 << 20;

/// What an archive holds, as written to `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub job: String,
    /// When the snapshot was taken (UTC).
    pub created_at: DateTime<Utc>,
    /// The gateway database the snapshot was taken from.
    pub source: PathBuf,
    /// The database's entry name in the archive (the source's file name).
    pub database: String,
    pub size: u64,
    pub sha256: String,
    pub sqlite_version: String,
    pub page_size: u64,
    pub page_count: u64,
    pub journal_mode: String,
    pub table: String,
    /// Rows of `table` in the snapshot; `None` when the table did not exist.
    pub row_count: Option<u64>,
    pub files: Vec<IncludedFile>,
    /// `caretaker <version>`.
    pub tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncludedFile {
    pub source: PathBuf,
    pub entry: String,
    pub size: u64,
    pub sha256: String,
}

/// How to compress an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip `level` (0-9) on `threads` worker threads; the output is one standard gzip member.
    Gzip {
        level: u32,
        threads: usize,
    },
    None,
}

/// An included file read into memory: config files are small, and one read gives a hash
/// that matches the bytes archived even if the file changes meanwhile.
pub struct Include {
    pub meta: IncludedFile,
    pub bytes: Vec<u8>,
}

/// Reads `source` for inclusion under `files/`.
pub fn read_include(source: &Path) -> anyhow::Result<Include> {
    let bytes = std::fs::read(source).with_context(|| {
        format!(
            "reading included file {} (fix or remove it in the job's `include`)",
            source.display()
        )
    })?;
    let entry = include_entry(source)?;
    Ok(Include {
        meta: IncludedFile {
            source: source.to_path_buf(),
            entry,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        },
        bytes,
    })
}

fn include_entry(source: &Path) -> anyhow::Result<String> {
    let mut entry = PathBuf::from(FILES_DIR);
    for part in source.components() {
        match part {
            Component::Normal(p) => entry.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!(
                    "included file {} must be a plain absolute path without `..`",
                    source.display()
                )
            }
        }
    }
    entry.to_str().map(str::to_string).with_context(|| {
        format!(
            "included file {} has a name that is not UTF-8",
            source.display()
        )
    })
}

/// SHA-256 and length of a file, read in large blocks.
pub fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file =
        File::open(path).with_context(|| format!("opening {} to hash it", path.display()))?;
    let mut hashing = HashingWriter::new(io::sink());
    let size = io::copy(&mut file, &mut hashing)
        .with_context(|| format!("reading {} to hash it", path.display()))?;
    Ok((hashing.finish().0, size))
}

/// Writes the archive for `dest` into a temporary file beside it and returns it unpublished,
/// with its size: the caller reads it back and verifies it, then commits it (fsync, rename,
/// fsync the directory). Dropped instead, it is removed; after a crash it is swept.
pub fn write(
    dest: &Path,
    manifest: &Manifest,
    database: &Path,
    includes: &[Include],
    compression: Compression,
) -> anyhow::Result<(PendingFile, u64)> {
    let mut pending = PendingFile::create(dest)?;
    let temp = pending.temp_path().to_path_buf();
    let writing = || format!("writing the archive {}", temp.display());
    match compression {
        Compression::Gzip { level, threads } => {
            let gz = ParallelGzWriter::new(&mut pending, level, threads).with_context(writing)?;
            let gz = write_entries(gz, manifest, database, includes).with_context(writing)?;
            gz.finish().with_context(writing)?;
        }
        Compression::None => {
            let out = BufWriter::with_capacity(IO_BUFFER, &mut pending);
            let mut out = write_entries(out, manifest, database, includes).with_context(writing)?;
            out.flush().with_context(writing)?;
        }
    }
    let size = pending.file().metadata().with_context(writing)?.len();
    Ok((pending, size))
}

fn write_entries<W: Write>(
    out: W,
    manifest: &Manifest,
    database: &Path,
    includes: &[Include],
) -> anyhow::Result<W> {
    let mut tar = tar::Builder::new(out);
    let mtime = u64::try_from(manifest.created_at.timestamp()).unwrap_or(0);
    let append = |tar: &mut tar::Builder<W>, name: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        tar.append_data(&mut header, name, data)
            .with_context(|| format!("adding {name}"))
    };
    let json = serde_json::to_vec_pretty(manifest).context("serializing the manifest")?;
    append(
        &mut tar,
        MANIFEST_ENTRY,
        json.len() as u64,
        &mut json.as_slice(),
    )?;
    let file = File::open(database)
        .with_context(|| format!("opening the snapshot {}", database.display()))?;
    // The size must be the manifest's: a snapshot that changed after hashing would not verify.
    let mut limited = BufReader::with_capacity(IO_BUFFER, file).take(manifest.size);
    append(&mut tar, &manifest.database, manifest.size, &mut limited)?;
    for include in includes {
        append(
            &mut tar,
            &include.meta.entry,
            include.meta.size,
            &mut include.bytes.as_slice(),
        )?;
    }
    tar.into_inner().context("finishing the tar stream")
}

/// What reading an archive found. Only returned when every check passed.
#[derive(Debug, Clone)]
pub struct Contents {
    pub manifest: Manifest,
    pub compressed: bool,
}

/// Reads the whole archive at `path`, checking every checksum and size, and streams the
/// database into `database_out` (use `io::sink()` to only check). Fails on any mismatch,
/// truncation or entry that does not belong.
pub fn read(path: &Path, database_out: &mut dyn Write) -> anyhow::Result<Contents> {
    read_inner(path, database_out)
        .with_context(|| format!("reading the backup archive {}", path.display()))
}

/// Reads only the manifest (the first entry), to learn sizes before the full check.
pub fn peek_manifest(path: &Path) -> anyhow::Result<Manifest> {
    (|| {
        let (mut archive, _) = open_tar(path)?;
        let mut entries = archive.entries().context("reading the tar stream")?;
        first_manifest(&mut entries)
    })()
    .with_context(|| format!("reading the backup archive {}", path.display()))
}

/// The tar stream of an archive, gzip or not (told apart by the gzip magic bytes).
fn open_tar(path: &Path) -> anyhow::Result<(tar::Archive<Box<dyn Read>>, bool)> {
    let mut file = BufReader::with_capacity(IO_BUFFER, File::open(path).context("opening it")?);
    let compressed = {
        let head = io::BufRead::fill_buf(&mut file).context("reading its first bytes")?;
        ensure!(!head.is_empty(), "the file is empty");
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if compressed {
        Box::new(
            ReadAhead::new(flate2::bufread::GzDecoder::new(file))
                .context("starting a thread to decompress it")?,
        )
    } else {
        Box::new(file)
    };
    Ok((tar::Archive::new(reader), compressed))
}

fn first_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> anyhow::Result<Manifest> {
    let mut first = entries
        .next()
        .context("the archive has no entries")?
        .context("reading the first tar entry")?;
    let name = entry_name(&first)?;
    ensure!(
        name == MANIFEST_ENTRY,
        "the first entry is `{name}`, not {MANIFEST_ENTRY}: not a caretaker backup archive"
    );
    let mut json = Vec::new();
    first
        .read_to_end(&mut json)
        .context("reading manifest.json")?;
    let manifest: Manifest = serde_json::from_slice(&json).context("parsing manifest.json")?;
    ensure!(
        manifest.format == FORMAT_VERSION,
        "the archive has format {} but this caretaker reads format {FORMAT_VERSION}",
        manifest.format
    );
    Ok(manifest)
}

fn read_inner(path: &Path, database_out: &mut dyn Write) -> anyhow::Result<Contents> {
    let (mut archive, compressed) = open_tar(path)?;
    let mut entries = archive.entries().context("reading the tar stream")?;
    let manifest = first_manifest(&mut entries)?;

    let mut seen_database = false;
    let mut seen_files = vec![false; manifest.files.len()];
    for entry in entries {
        let mut entry = entry.context("reading a tar entry")?;
        let name = entry_name(&entry)?;
        let (expected_sha, expected_size, out): (&str, u64, &mut dyn Write) =
            if name == manifest.database && !seen_database {
                seen_database = true;
                (&manifest.sha256, manifest.size, &mut *database_out)
            } else if let Some(i) = manifest
                .files
                .iter()
                .position(|f| f.entry == name)
                .filter(|&i| !seen_files[i])
            {
                seen_files[i] = true;
                (
                    &manifest.files[i].sha256,
                    manifest.files[i].size,
                    &mut io::sink(),
                )
            } else {
                bail!("unexpected entry `{name}` that the manifest does not list");
            };
        let mut hashing = HashingWriter::new(out);
        let size =
            io::copy(&mut entry, &mut hashing).with_context(|| format!("reading `{name}`"))?;
        let (sha, _) = hashing.finish();
        ensure!(
            size == expected_size,
            "`{name}` has {size} bytes but the manifest says {expected_size}"
        );
        ensure!(
            sha == expected_sha,
            "the SHA-256 of `{name}` is {sha} but the manifest says {expected_sha}: the archive is corrupt"
        );
    }
    ensure!(
        seen_database,
        "the database `{}` is missing from the archive",
        manifest.database
    );
    if let Some(i) = seen_files.iter().position(|seen| !seen) {
        bail!(
            "included file `{}` is missing from the archive",
            manifest.files[i].entry
        );
    }
    // tar stops at its end marker; the gzip trailer (CRC-32 and length) is only checked once
    // the decoder reaches the end of the stream.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .context("reading the end of the archive")?;
    Ok(Contents {
        manifest,
        compressed,
    })
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> anyhow::Result<String> {
    let path = entry.path().context("reading a tar entry's name")?;
    path.to_str()
        .map(str::to_string)
        .context("a tar entry's name is not UTF-8")
}

/// Passes bytes through while computing their SHA-256.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The hex digest and the inner writer.
    pub fn finish(self) -> (String, W) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How thoroughly to check a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLevel {
    /// `PRAGMA quick_check`.
    Quick,
    /// `PRAGMA integrity_check`.
    Integrity,
    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check`.
    Full,
}

/// What the checks found besides corruption (which is an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Rows whose foreign key points at no parent (`Full` only). Not an error: gateways that
    /// never enable foreign keys (BobaMixer) have them in the live database too, and the copy
    /// is faithful; they are reported so the operator can see them.
    pub foreign_key_violations: u64,
    /// Up to 20 of them, as `table row N -> parent`.
    pub examples: Vec<String>,
}

/// Runs SQLite's own consistency checks on a database file of ours (a snapshot or an
/// extracted copy, never the gateway's). Corruption is an error.
pub fn check_database(path: &Path, level: CheckLevel) -> anyhow::Result<CheckReport> {
    use rusqlite::OpenFlags;
    let checking = || format!("checking the database copy {}", path.display());
    // Read-write so a copy in WAL mode opens without a -shm file from its writer.
    let conn = crate::sqlite::open(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(checking)?;
    let pragma = match level {
        CheckLevel::Quick => "PRAGMA quick_check(20)",
        CheckLevel::Integrity | CheckLevel::Full => "PRAGMA integrity_check(20)",
    };
    let problems: Vec<String> = conn
        .prepare(pragma)
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .with_context(checking)?;
    if problems != ["ok"] {
        bail!(
            "{pragma} found problems in {}: {}",
            path.display(),
            problems.join("; ")
        );
    }
    let mut report = CheckReport::default();
    if level == CheckLevel::Full {
        let mut stmt = conn
            .prepare("PRAGMA foreign_key_check")
            .with_context(checking)?;
        let mut rows = stmt.query([]).with_context(checking)?;
        while let Some(row) = rows.next().with_context(checking)? {
            report.foreign_key_violations += 1;
            if report.examples.len() < 20 {
                let table: String = row.get(0).with_context(checking)?;
                let rowid: Option<i64> = row.get(1).with_context(checking)?;
                let parent: String = row.get(2).with_context(checking)?;
                let rowid = rowid.map_or("without rowid".to_string(), |r| format!("row {r}"));
                report.examples.push(format!("{table} {rowid} -> {parent}"));
            }
        }
    }
    conn.close().map_err(|(_, e)| e).with_context(checking)?;
    Ok(report)
}

/// Worker threads for compression: every core; the snapshot is already taken, so this only
/// competes with the gateway for CPU, which the kernel shares fairly.
pub fn compression_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
