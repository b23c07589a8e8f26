//! The archive file: a tar (optionally gzip) of `manifest.json`, the database and `files/`, written durably and read back strictly.
//!
//! `manifest.json` is the first entry, so a reader knows the database's name, size and
//! SHA-256 before the database itself streams past. Reading checks everything the format can
//! check: gzip CRC and length (by reading to the very end, and nothing after it), tar headers
//! (regular files only: no link, device, FIFO or extension entry is ever ours), the SHA-256
//! and size of the database and of every included file, the SQLite header of the database
//! against the manifest, and that nothing is missing or extra. Nothing an archive declares is
//! read into memory beyond a small bound ([`MANIFEST_LIMIT`], [`NAME_LIMIT`]). [`extract`]
//! adds what only SQLite can check on the extracted copy; every restore and test restore goes
//! through it.

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

/// The largest `manifest.json` read: a real one is a few KiB (one entry per included file);
/// the bound keeps an archive that declares gigabytes from taking that much memory.
pub const MANIFEST_LIMIT: u64 = 1 << 20;

/// The longest entry name read from a GNU long-name entry (Linux's `PATH_MAX`).
pub const NAME_LIMIT: u64 = 4096;

/// The SQLite header's length and its first bytes.
const SQLITE_HEADER: usize = 100;
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

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
    /// Set when the database entry is a `pg_dump --format=custom` of a PostgreSQL gateway; the
    /// SQLite fields are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgDump>,
}

/// What a PostgreSQL backup's manifest says of its dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDump {
    /// `server_version` of the server dumped, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// `pg_dump --version` of the tool that wrote the dump.
    pub dump_tool: String,
    /// Every table of the database, `schema.table`, with its rows.
    pub tables: Vec<PgTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTable {
    pub name: String,
    /// The planner's estimate (`pg_class.reltuples`); `None` before the first ANALYZE.
    pub rows_estimate: Option<u64>,
    /// Rows counted in the dump's own snapshot (with `verify: full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// The first bytes of a `pg_dump --format=custom` file.
const PGDUMP_MAGIC: &[u8] = b"PGDMP";

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

/// The largest included file: they are read whole into memory, and what `include` is for
/// (a gateway's config and `.env`) is a few KiB.
pub const INCLUDE_LIMIT: u64 = 64 << 20;

/// Reads `source` for inclusion under `files/`: a regular file of at most [`INCLUDE_LIMIT`].
pub fn read_include(source: &Path) -> anyhow::Result<Include> {
    let bytes = crate::fsx::read_regular(source, INCLUDE_LIMIT).with_context(|| {
        format!(
            "reading included file {} (accepted: a regular file of up to {}; fix or remove it in the job's `include`)",
            source.display(),
            crate::units::bytes(INCLUDE_LIMIT)
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
        let mut entries = archive
            .entries()
            .context("reading the tar stream")?
            .raw(true);
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
            ReadAhead::new(OneGzipMember(flate2::bufread::GzDecoder::new(file)))
                .context("starting a thread to decompress it")?,
        )
    } else {
        Box::new(file)
    };
    Ok((tar::Archive::new(reader), compressed))
}

/// A gzip stream that must be the whole file: we write one member and nothing after it, so
/// bytes past its end (a second member, appended garbage) mean the file is not what we wrote.
struct OneGzipMember<R: io::BufRead>(flate2::bufread::GzDecoder<R>);

impl<R: io::BufRead> Read for OneGzipMember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let rest = self.0.get_mut().fill_buf()?;
            if !rest.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "there is data after the end of the gzip stream",
                ));
            }
        }
        Ok(n)
    }
}

/// The next member of the archive, with its name. Only regular files belong in an archive of
/// ours (and the GNU long-name entries tar writes before names over 100 bytes, read up to
/// [`NAME_LIMIT`]); anything else is refused by name and type. `entries` must be raw, so the
/// tar crate reads no extension entry into memory by itself.
fn next_file<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
) -> anyhow::Result<Option<(String, tar::Entry<'a, R>)>> {
    let mut long_name: Option<String> = None;
    loop {
        let Some(entry) = entries.next() else {
            ensure!(
                long_name.is_none(),
                "the tar stream ends after a long-name entry, without the member it names"
            );
            return Ok(None);
        };
        let mut entry = entry.context("reading a tar header")?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            ensure!(
                long_name.is_none(),
                "two long-name entries in a row: not a tar stream caretaker writes"
            );
            let mut bytes = read_bounded(&mut entry, NAME_LIMIT, "a long-name entry")?;
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            long_name =
                Some(String::from_utf8(bytes).context("a tar entry's long name is not UTF-8")?);
            continue;
        }
        let name = match long_name {
            Some(name) => name,
            None => entry_name(&entry)?,
        };
        ensure!(
            kind.is_file(),
            "entry `{name}` is {}; only regular files are accepted in a caretaker backup archive",
            kind_name(kind)
        );
        return Ok(Some((name, entry)));
    }
}

/// The data of `entry` (`what`), refused when its header declares more than `limit` bytes.
fn read_bounded<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    limit: u64,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let size = entry.size();
    ensure!(
        size <= limit,
        "{what} declares {size} bytes; up to {limit} bytes are accepted"
    );
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what}"))?;
    Ok(bytes)
}

fn kind_name(kind: tar::EntryType) -> String {
    use tar::EntryType as T;
    match kind {
        T::Link => "a hard link".into(),
        T::Symlink => "a symbolic link".into(),
        T::Char => "a character device".into(),
        T::Block => "a block device".into(),
        T::Directory => "a directory".into(),
        T::Fifo => "a FIFO".into(),
        T::Continuous => "a contiguous file".into(),
        T::GNULongLink => "a GNU long link name".into(),
        T::GNUSparse => "a sparse file".into(),
        T::XGlobalHeader | T::XHeader => "a pax extended header".into(),
        other => format!("an entry of type `{}`", other.as_byte().escape_ascii()),
    }
}

fn first_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> anyhow::Result<Manifest> {
    let (name, mut first) = next_file(entries)?.context("the archive has no entries")?;
    ensure!(
        name == MANIFEST_ENTRY,
        "the first entry is `{name}`, not {MANIFEST_ENTRY}: not a caretaker backup archive"
    );
    let json = read_bounded(&mut first, MANIFEST_LIMIT, MANIFEST_ENTRY)
        .context("not a caretaker backup archive")?;
    let manifest: Manifest = serde_json::from_slice(&json).context("parsing manifest.json")?;
    ensure!(
        manifest.format == FORMAT_VERSION,
        "the archive has format {} but this caretaker reads format {FORMAT_VERSION}",
        manifest.format
    );
    check_manifest(&manifest)?;
    Ok(manifest)
}

/// What a manifest must say of the database for it to be one: at least one page, of a
/// power-of-two size from 512 bytes to 64 KiB, and all of its pages within the file. (A file
/// may be longer than its pages: SQLite ignores bytes past the page count in its header.)
fn check_manifest(m: &Manifest) -> anyhow::Result<()> {
    if m.postgres.is_some() {
        ensure!(
            m.size > 0,
            "the manifest describes an empty dump `{}`; a backup holds a dump of at least its header",
            m.database
        );
        return Ok(());
    }
    ensure!(
        m.size > 0 && m.page_count > 0,
        "the manifest describes an empty database `{}` ({} bytes, {} pages); a backup holds a database of at least one page",
        m.database,
        m.size,
        m.page_count
    );
    ensure!(
        m.page_size.is_power_of_two() && (512..=65536).contains(&m.page_size),
        "the manifest gives the database a page size of {}; SQLite's are powers of two from 512 to 65536",
        m.page_size
    );
    ensure!(
        m.page_size
            .checked_mul(m.page_count)
            .is_some_and(|pages| pages <= m.size),
        "the manifest gives the database {} bytes, fewer than its {} pages of {} bytes",
        m.size,
        m.page_count,
        m.page_size
    );
    Ok(())
}

/// Checks the first bytes of the database entry: the SQLite header, its page size and (when
/// the header's count is current) its page count against the manifest's.
fn check_sqlite_header(head: &[u8], m: &Manifest) -> anyhow::Result<()> {
    if m.postgres.is_some() {
        ensure!(
            head.starts_with(PGDUMP_MAGIC),
            "`{}` is not a pg_dump custom-format file: it does not start with PGDMP",
            m.database
        );
        return Ok(());
    }
    ensure!(
        head.len() == SQLITE_HEADER && head.starts_with(SQLITE_MAGIC),
        "`{}` is not an SQLite database: it does not start with the SQLite header",
        m.database
    );
    let page_size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    ensure!(
        page_size == m.page_size,
        "`{}` has pages of {page_size} bytes but the manifest says {}",
        m.database,
        m.page_size
    );
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    // The in-header page count is current only when its version-valid-for number equals the
    // change counter (SQLite's file format, section 1.3.7).
    let pages = u64::from(word(28));
    if pages != 0 && word(92) == word(24) {
        ensure!(
            pages == m.page_count,
            "`{}` has {pages} pages by its header but the manifest says {}",
            m.database,
            m.page_count
        );
    }
    Ok(())
}

/// Passes bytes through, keeping the first [`SQLITE_HEADER`] of them.
struct KeepHead<W: Write> {
    inner: W,
    head: Vec<u8>,
}

impl<W: Write> Write for KeepHead<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let want = (SQLITE_HEADER - self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..want]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Accepts only zeros: what may follow a tar stream's end marker (padding to a record).
struct OnlyZeros;

impl Write for OnlyZeros {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.iter().any(|&b| b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "there is data after the end of the tar stream",
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_inner(path: &Path, database_out: &mut dyn Write) -> anyhow::Result<Contents> {
    let (mut archive, compressed) = open_tar(path)?;
    let mut entries = archive
        .entries()
        .context("reading the tar stream")?
        .raw(true);
    let manifest = first_manifest(&mut entries)?;

    let mut seen_database = false;
    let mut seen_files = vec![false; manifest.files.len()];
    while let Some((name, mut entry)) = next_file(&mut entries)? {
        let is_database = name == manifest.database && !seen_database;
        let (expected_sha, expected_size): (&str, u64) = if is_database {
            seen_database = true;
            (&manifest.sha256, manifest.size)
        } else if let Some(i) = manifest
            .files
            .iter()
            .position(|f| f.entry == name)
            .filter(|&i| !seen_files[i])
        {
            seen_files[i] = true;
            (&manifest.files[i].sha256, manifest.files[i].size)
        } else {
            bail!("unexpected entry `{name}` that the manifest does not list");
        };
        // The header's size first: a short or long entry fails before any byte is copied.
        let declared = entry.size();
        ensure!(
            declared == expected_size,
            "`{name}` has {declared} bytes but the manifest says {expected_size}"
        );
        let mut sink = io::sink();
        let out: &mut dyn Write = if is_database {
            &mut *database_out
        } else {
            &mut sink
        };
        let mut hashing = HashingWriter::new(KeepHead {
            inner: out,
            head: Vec::with_capacity(SQLITE_HEADER),
        });
        let size =
            io::copy(&mut entry, &mut hashing).with_context(|| format!("reading `{name}`"))?;
        let (sha, kept) = hashing.finish();
        ensure!(
            size == expected_size,
            "`{name}` has {size} bytes but the manifest says {expected_size}"
        );
        ensure!(
            sha == expected_sha,
            "the SHA-256 of `{name}` is {sha} but the manifest says {expected_sha}: the archive is corrupt"
        );
        if is_database {
            check_sqlite_header(&kept.head, &manifest)?;
        }
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
    // the decoder reaches the end of the stream, and nothing may follow either.
    io::copy(&mut archive.into_inner(), &mut OnlyZeros)
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
    check_copy(path, level, None).map(|(report, _)| report)
}

/// What a verified extraction found.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub manifest: Manifest,
    pub compressed: bool,
    pub check: CheckReport,
    /// Rows of the manifest's table, counted in the copy (equal to the manifest's).
    pub rows: Option<u64>,
}

/// Reads `archive` as [`read`] does, writing its database into `file` (open at `file_path`,
/// empty, ours), then opens the copy as SQLite, checks it at `level` and against the
/// manifest: its size, page size, page count and the row count of its table. The one check
/// every restore and test restore goes through.
pub fn extract(
    archive: &Path,
    file: &mut File,
    file_path: &Path,
    level: CheckLevel,
) -> anyhow::Result<Extracted> {
    let contents = {
        let mut out = BufWriter::with_capacity(IO_BUFFER, &mut *file);
        let contents = read(archive, &mut out)?;
        out.flush()
            .with_context(|| format!("writing {}", file_path.display()))?;
        contents
    };
    let (check, rows) = check_copy(file_path, level, Some(&contents.manifest))
        .with_context(|| format!("the database in {} does not check out", archive.display()))?;
    Ok(Extracted {
        manifest: contents.manifest,
        compressed: contents.compressed,
        check,
        rows,
    })
}

/// [`check_database`], and with `expect` also the copy's size, page size, page count and the
/// row count of the manifest's table against the manifest (the rows counted are returned).
fn check_copy(
    path: &Path,
    level: CheckLevel,
    expect: Option<&Manifest>,
) -> anyhow::Result<(CheckReport, Option<u64>)> {
    use rusqlite::{OpenFlags, OptionalExtension};
    let checking = || format!("checking the database copy {}", path.display());
    if let Some(m) = expect {
        let size = std::fs::metadata(path).with_context(checking)?.len();
        ensure!(
            size == m.size,
            "the copy {} has {size} bytes but the manifest says {}",
            path.display(),
            m.size
        );
    }
    // Read-write so a copy in WAL mode opens without a -shm file from its writer.
    let conn = crate::sqlite::open(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(checking)?;
    let number = |sql: &str| -> anyhow::Result<u64> {
        let n: i64 = conn
            .query_row(sql, [], |r| r.get(0))
            .with_context(checking)?;
        Ok(n.max(0) as u64)
    };
    if let Some(m) = expect {
        // SQLite reads the header here: a file that is not a database fails now.
        let page_size = number("PRAGMA page_size")?;
        let page_count = number("PRAGMA page_count")?;
        ensure!(
            (page_size, page_count) == (m.page_size, m.page_count),
            "SQLite finds {page_count} pages of {page_size} bytes in {} but the manifest says {} of {}",
            path.display(),
            m.page_count,
            m.page_size
        );
    }
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
    let mut rows = None;
    if let Some(m) = expect {
        let has_table = conn
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [&m.table],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .with_context(checking)?
            .is_some();
        if has_table {
            rows = Some(number(&format!(
                "SELECT count(*) FROM \"{}\"",
                m.table.replace('"', "\"\"")
            ))?);
        }
        let show = |r: Option<u64>| r.map_or("no table".to_string(), |n| format!("{n} rows"));
        ensure!(
            rows == m.row_count,
            "table `{}` of {} has {} but the manifest says {}: the archive does not hold the database it describes",
            m.table,
            path.display(),
            show(rows),
            show(m.row_count)
        );
    }
    let mut report = CheckReport::default();
    if level == CheckLevel::Full {
        let mut stmt = conn
            .prepare("PRAGMA foreign_key_check")
            .with_context(checking)?;
        let mut found = stmt.query([]).with_context(checking)?;
        while let Some(row) = found.next().with_context(checking)? {
            report.foreign_key_violations += 1;
            if report.examples.len() < 20 {
                let table: String = row.get(0).with_context(checking)?;
                let rowid: Option<i64> = row.get(1).with_context(checking)?;
                let parent: String = row.get(2).with_context(checking)?;
                let rowid = rowid.map_or("without rowid".to_string(), |r| format!("row {r}"));
                report.examples.push(format!("{table} {rowid} -> {parent}"));
            }
        }
        drop(found);
        drop(stmt);
    }
    conn.close().map_err(|(_, e)| e).with_context(checking)?;
    Ok((report, rows))
}

/// Worker threads for compression: every core; the snapshot is already taken, so this only
/// competes with the gateway for CPU, which the kernel shares fairly.
pub fn compression_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size: u64, page_size: u64, page_count: u64) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            job: "b".into(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            source: "/g.db".into(),
            database: "g.db".into(),
            size,
            sha256: String::new(),
            sqlite_version: String::new(),
            page_size,
            page_count,
            journal_mode: "wal".into(),
            table: "t".into(),
            row_count: Some(1),
            files: Vec::new(),
            tool: String::new(),
            postgres: None,
        }
    }

    #[test]
    fn a_manifest_must_describe_at_least_one_page_within_the_file() {
        let cases = [
            (manifest(8192, 4096, 2), None),
            (manifest(8200, 4096, 2), None),
            (manifest(65536, 65536, 1), None),
            (manifest(0, 4096, 0), Some("empty")),
            (manifest(4096, 4096, 0), Some("empty")),
            (manifest(0, 4096, 1), Some("empty")),
            (manifest(4096, 4096, 2), Some("fewer than its 2 pages")),
            (manifest(4096, 1000, 4), Some("page size of 1000")),
            (manifest(256, 256, 1), Some("page size of 256")),
            (manifest(u64::MAX, 65536, u64::MAX), Some("fewer than")),
        ];
        for (m, error) in cases {
            let got = check_manifest(&m).err().map(|e| e.to_string());
            match (error, got) {
                (None, None) => {}
                (Some(want), Some(got)) if got.contains(want) => {}
                (want, got) => panic!("{m:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_sqlite_header_must_match_the_manifest() {
        let header = |page_size: u16, pages: u32, counter: u32, valid_for: u32| {
            let mut h = vec![0u8; SQLITE_HEADER];
            h[..16].copy_from_slice(SQLITE_MAGIC);
            h[16..18].copy_from_slice(&page_size.to_be_bytes());
            h[24..28].copy_from_slice(&counter.to_be_bytes());
            h[28..32].copy_from_slice(&pages.to_be_bytes());
            h[92..96].copy_from_slice(&valid_for.to_be_bytes());
            h
        };
        let m = manifest(8192, 4096, 2);
        let big = manifest(65536 * 3, 65536, 3);
        let cases = [
            (header(4096, 2, 7, 7), &m, None),
            // A stale in-header count (another version wrote last) is not held against it.
            (header(4096, 9, 7, 6), &m, None),
            (header(4096, 0, 7, 7), &m, None),
            (header(1, 3, 1, 1), &big, None),
            (header(4096, 3, 7, 7), &m, Some("3 pages by its header")),
            (header(1024, 2, 7, 7), &m, Some("pages of 1024 bytes")),
            (vec![7u8; SQLITE_HEADER], &m, Some("not an SQLite database")),
            (
                header(4096, 2, 7, 7)[..50].to_vec(),
                &m,
                Some("not an SQLite"),
            ),
        ];
        for (head, m, error) in cases {
            let got = check_sqlite_header(&head, m).err().map(|e| e.to_string());
            match (error, got) {
                (None, None) => {}
                (Some(want), Some(got)) if got.contains(want) => {}
                (want, got) => panic!("want {want:?}, got {got:?}"),
            }
        }
    }
}
