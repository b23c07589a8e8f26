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
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
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
    /// The other databases of a backup that looks after more than one (`databases: [...]`) and
    /// the SQLite databases found in included directories, one entry each. Empty, and absent
    /// from the file, in an archive of the gateway's database alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<ArchivedDatabase>,
    /// What each declared database's path or glob matched at this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<Matched>,
    /// Set when the database entry is a `pg_dump --format=custom` of a PostgreSQL gateway; the
    /// SQLite fields are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgDump>,
}

/// One more database in an archive (the first database is described by the manifest's own
/// fields, as in an archive of one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedDatabase {
    /// The name of the jobs file (`users`, `media`), or `files` for one found in an included
    /// directory.
    pub name: String,
    pub source: PathBuf,
    /// Its entry: `databases/<name>/<path relative to the glob's fixed part>`, or
    /// `files/<absolute path>` for one found in an included directory.
    pub entry: String,
    pub size: u64,
    pub sha256: String,
    pub page_size: u64,
    pub page_count: u64,
    pub journal_mode: String,
    /// Its largest table, whose rows are counted.
    pub table: Option<String>,
    pub row_count: Option<u64>,
}

/// What a declared database's path or glob matched when the backup ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matched {
    pub name: String,
    pub pattern: PathBuf,
    /// The files archived.
    pub files: u64,
    /// Files listed that were gone (or no longer databases) when their snapshot was due.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vanished: Vec<PathBuf>,
}

impl Manifest {
    /// Every database's entry name, the first one's first.
    pub fn database_entries(&self) -> Vec<&str> {
        std::iter::once(self.database.as_str())
            .chain(self.databases.iter().map(|d| d.entry.as_str()))
            .collect()
    }

    /// The manifest as an archive of `entry` alone would have it: its fields describe that
    /// database, so that one check ([`extract`]) serves every database of an archive.
    pub fn for_entry(&self, entry: &str) -> Option<Manifest> {
        if entry == self.database {
            return Some(Manifest {
                databases: Vec::new(),
                ..self.clone()
            });
        }
        let d = self.databases.iter().find(|d| d.entry == entry)?;
        Some(Manifest {
            source: d.source.clone(),
            database: d.entry.clone(),
            size: d.size,
            sha256: d.sha256.clone(),
            page_size: d.page_size,
            page_count: d.page_count,
            journal_mode: d.journal_mode.clone(),
            table: d.table.clone().unwrap_or_default(),
            row_count: d.row_count,
            databases: Vec::new(),
            ..self.clone()
        })
    }

    /// The name a database of this archive goes by: the jobs file's name (`gateway` for the
    /// first database of an archive of one) and its path below it.
    pub fn label(&self, entry: &str) -> String {
        match entry
            .strip_prefix(crate::databases::ENTRY_DIR)
            .and_then(|e| e.strip_prefix('/'))
            .and_then(|e| e.split_once('/'))
        {
            Some((name, rest)) => format!("{name}:{rest}"),
            None if entry == self.database => format!("{}:{entry}", crate::databases::GATEWAY),
            None => entry.to_string(),
        }
    }
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

/// The entry of an included file: `files/<absolute path without the leading />`.
pub fn include_entry(source: &Path) -> anyhow::Result<String> {
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
    write_all(dest, manifest, database, &[], includes, compression)
}

/// [`write`] with more databases: `others[i]` is the file of `manifest.databases[i]`.
pub fn write_all(
    dest: &Path,
    manifest: &Manifest,
    database: &Path,
    others: &[&Path],
    includes: &[Include],
    compression: Compression,
) -> anyhow::Result<(PendingFile, u64)> {
    ensure!(
        others.len() == manifest.databases.len(),
        "the manifest lists {} more databases but {} files were given",
        manifest.databases.len(),
        others.len()
    );
    let mut pending = PendingFile::create(dest)?;
    let temp = pending.temp_path().to_path_buf();
    let writing = || format!("writing the archive {}", temp.display());
    match compression {
        Compression::Gzip { level, threads } => {
            let gz = ParallelGzWriter::new(&mut pending, level, threads).with_context(writing)?;
            let gz =
                write_entries(gz, manifest, database, others, includes).with_context(writing)?;
            gz.finish().with_context(writing)?;
        }
        Compression::None => {
            let out = BufWriter::with_capacity(IO_BUFFER, &mut pending);
            let mut out =
                write_entries(out, manifest, database, others, includes).with_context(writing)?;
            out.flush().with_context(writing)?;
        }
    }
    let size = pending.file().metadata().with_context(writing)?.len();
    Ok((pending, size))
}

/// The time every entry of an archive carries: the backup's.
fn mtime_of(manifest: &Manifest) -> u64 {
    u64::try_from(manifest.created_at.timestamp()).unwrap_or(0)
}

/// The header every entry of an archive has: a regular file, mode 0600, the backup's time.
fn entry_header(mtime: u64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    mtime: u64,
    name: &str,
    size: u64,
    data: &mut dyn Read,
) -> anyhow::Result<()> {
    tar.append_data(&mut entry_header(mtime, size), name, data)
        .with_context(|| format!("adding {name}"))
}

/// The first entry of every archive.
fn append_manifest<W: Write>(tar: &mut tar::Builder<W>, manifest: &Manifest) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).context("serializing the manifest")?;
    append_entry(
        tar,
        mtime_of(manifest),
        MANIFEST_ENTRY,
        json.len() as u64,
        &mut json.as_slice(),
    )
}

fn write_entries<W: Write>(
    out: W,
    manifest: &Manifest,
    database: &Path,
    others: &[&Path],
    includes: &[Include],
) -> anyhow::Result<W> {
    let mut tar = tar::Builder::new(out);
    let mtime = mtime_of(manifest);
    let append = |tar: &mut tar::Builder<W>, name: &str, size: u64, data: &mut dyn Read| {
        append_entry(tar, mtime, name, size, data)
    };
    append_manifest(&mut tar, manifest)?;
    let file = File::open(database)
        .with_context(|| format!("opening the snapshot {}", database.display()))?;
    // The size must be the manifest's: a snapshot that changed after hashing would not verify.
    let mut limited = BufReader::with_capacity(IO_BUFFER, file).take(manifest.size);
    append(&mut tar, &manifest.database, manifest.size, &mut limited)?;
    for (d, path) in manifest.databases.iter().zip(others) {
        let file =
            File::open(path).with_context(|| format!("opening the snapshot {}", path.display()))?;
        let mut limited = BufReader::with_capacity(IO_BUFFER, file).take(d.size);
        append(&mut tar, &d.entry, d.size, &mut limited)?;
    }
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

/// The rest of an archive whose one database entry is written while it is produced (a
/// `pg_dump` running): the entry's bytes, then the includes and the end of the tar stream, are
/// compressed into a temporary file as they arrive, so compression overlaps the dump instead of
/// following it. The manifest, which must come first and carries the entry's size and SHA-256,
/// is only known at the end: [`StreamedBody::finish`] then writes the archive as the manifest's
/// entry and the database entry's header, compressed on their own and ending in a sync flush,
/// followed by the body's deflate stream and one trailer whose CRC-32 combines both. The result
/// is the same single gzip member [`write`] produces (byte for byte up to deflate's choices),
/// and read back like any other archive.
pub struct StreamedBody {
    /// The body's temporary file, removed on drop: it never becomes an archive itself.
    file: PendingFile,
    out: BodyOut,
    level: Option<u32>,
    /// Bytes written into the body so far: the database entry's until [`StreamedBody::finish`].
    size: u64,
}

enum BodyOut {
    Gzip(ParallelGzWriter<BufWriter<File>>),
    Plain(BufWriter<File>),
}

impl StreamedBody {
    /// A body for the archive `dest` (its temporary file goes beside it, named as an archive's
    /// temporary file so that a killed run's is swept as one).
    pub fn create(dest: &Path, compression: Compression) -> anyhow::Result<StreamedBody> {
        let mut file = PendingFile::create(dest)?;
        let temp = file.temp_path().display().to_string();
        let handle = file
            .file()
            .try_clone()
            .with_context(|| format!("opening {temp} again to write it"))?;
        let out = BufWriter::with_capacity(IO_BUFFER, handle);
        let (out, level) = match compression {
            Compression::Gzip { level, threads } => (
                BodyOut::Gzip(
                    ParallelGzWriter::new(out, level, threads)
                        .with_context(|| format!("starting to compress into {temp}"))?,
                ),
                Some(level),
            ),
            Compression::None => (BodyOut::Plain(out), None),
        };
        Ok(StreamedBody {
            file,
            out,
            level,
            size: 0,
        })
    }

    /// Ends the body (the entry's padding, the includes, the end of the tar stream) and writes
    /// the archive `dest` in front of it: a pending file for the caller to verify and commit,
    /// and its size. `manifest.size` must be the bytes written into the body.
    pub fn finish(
        mut self,
        dest: &Path,
        manifest: &Manifest,
        includes: &[Include],
    ) -> anyhow::Result<(PendingFile, u64)> {
        ensure!(
            manifest.size == self.size,
            "the manifest gives {} bytes for {} but {} were written",
            manifest.size,
            manifest.database,
            self.size
        );
        ensure!(
            manifest.databases.is_empty(),
            "a streamed archive holds one database"
        );
        let temp = self.file.temp_path().to_path_buf();
        let writing = || format!("writing the archive body {}", temp.display());
        let padding = (512 - self.size % 512) % 512;
        self.write_all(&vec![0; padding as usize])
            .with_context(writing)?;
        let mtime = mtime_of(manifest);
        let mut tar = tar::Builder::new(&mut self);
        for include in includes {
            append_entry(
                &mut tar,
                mtime,
                &include.meta.entry,
                include.meta.size,
                &mut include.bytes.as_slice(),
            )
            .with_context(writing)?;
        }
        tar.into_inner()
            .context("finishing the tar stream")
            .with_context(writing)?;
        let body_input = self.size;
        match self.out {
            BodyOut::Gzip(gz) => gz.finish().and_then(|mut w| w.flush()),
            BodyOut::Plain(mut w) => w.flush(),
        }
        .with_context(writing)?;

        // The manifest and the database entry's header.
        let mut head = tar::Builder::new(Vec::new());
        append_manifest(&mut head, manifest)?;
        let mut prefix = std::mem::take(head.get_mut());
        // Dropping the builder ends its tar stream in the buffer just emptied, which is discarded.
        drop(head);
        let mut header = entry_header(mtime, manifest.size);
        header
            .set_path(&manifest.database)
            .with_context(|| format!("naming the entry {}", manifest.database))?;
        header.set_cksum();
        prefix.extend_from_slice(header.as_bytes());

        let mut pending = PendingFile::create(dest)?;
        let archive_temp = pending.temp_path().display().to_string();
        let assembling = || {
            format!(
                "writing the archive {archive_temp} from its body {}",
                temp.display()
            )
        };
        let mut body = File::open(&temp).with_context(assembling)?;
        let body_len = body.metadata().with_context(assembling)?.len();
        let out = pending.file();
        match self.level {
            None => {
                out.write_all(&prefix).with_context(assembling)?;
                let copied = io::copy(&mut body, out).with_context(assembling)?;
                ensure!(
                    copied == body_len,
                    "{}: the body changed size",
                    assembling()
                );
            }
            Some(level) => {
                // The body: a 10-byte gzip header, its deflate stream, CRC-32 and size.
                ensure!(
                    body_len >= 18,
                    "{}: the body is not a gzip stream",
                    assembling()
                );
                let mut gzip_header = [0u8; 10];
                body.read_exact(&mut gzip_header).with_context(assembling)?;
                body.seek(io::SeekFrom::Start(body_len - 8))
                    .with_context(assembling)?;
                let mut trailer = [0u8; 8];
                body.read_exact(&mut trailer).with_context(assembling)?;
                let body_crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
                let body_isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
                let deflated = deflate_sync_flushed(&prefix, level).with_context(assembling)?;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&prefix);
                crc.combine(&crc32fast::Hasher::new_with_initial_len(
                    body_crc, body_input,
                ));
                ensure!(
                    body_input as u32 == body_isize,
                    "{}: the body's trailer gives {body_isize} bytes, not the {body_input} written",
                    assembling()
                );
                out.write_all(&gzip_header).with_context(assembling)?;
                out.write_all(&deflated).with_context(assembling)?;
                body.seek(io::SeekFrom::Start(10))
                    .with_context(assembling)?;
                let stream = body_len - 18;
                let copied =
                    io::copy(&mut (&mut body).take(stream), out).with_context(assembling)?;
                ensure!(copied == stream, "{}: the body changed size", assembling());
                let total = (prefix.len() as u64).wrapping_add(body_input) as u32;
                out.write_all(&crc.finalize().to_le_bytes())
                    .with_context(assembling)?;
                out.write_all(&total.to_le_bytes())
                    .with_context(assembling)?;
            }
        }
        let size = out.metadata().with_context(assembling)?.len();
        Ok((pending, size))
    }
}

impl Write for StreamedBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.out {
            BodyOut::Gzip(gz) => gz.write(buf)?,
            BodyOut::Plain(w) => w.write(buf)?,
        };
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            BodyOut::Gzip(gz) => gz.flush(),
            BodyOut::Plain(w) => w.flush(),
        }
    }
}

/// `data` as raw deflate blocks that end byte-aligned and not final (a sync flush), so that
/// another deflate stream can follow them.
fn deflate_sync_flushed(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut deflate = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    loop {
        let consumed = deflate.total_in() as usize;
        deflate
            .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .map_err(io::Error::other)?;
        // Done once all input is in and the flush left room unused in the output.
        if deflate.total_in() as usize == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

/// Reads the whole archive at `path`, checking every checksum and size, and streams the
/// database into `database_out` (use `io::sink()` to only check). Fails on any mismatch,
/// truncation or entry that does not belong.
pub fn read(path: &Path, database_out: &mut dyn Write) -> anyhow::Result<Contents> {
    read_inner(path, None, database_out, &mut |_| Ok(None))
        .with_context(|| format!("reading the backup archive {}", path.display()))
}

/// Where [`read_each`] writes an entry other than the chosen database: `None` to only check it.
pub type EntrySink<'a> = dyn FnMut(&str) -> anyhow::Result<Option<Box<dyn Write>>> + 'a;

/// [`read`], streaming the database entry `chosen` (the first database when `None`) into
/// `chosen_out` and every other entry into what `others` gives for its name.
pub fn read_each(
    path: &Path,
    chosen: Option<&str>,
    chosen_out: &mut dyn Write,
    others: &mut EntrySink<'_>,
) -> anyhow::Result<Contents> {
    read_inner(path, chosen, chosen_out, others)
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

/// Checks the first bytes of a `pg_dump --format=custom` entry.
fn check_pgdump_header(head: &[u8], database: &str) -> anyhow::Result<()> {
    ensure!(
        head.starts_with(PGDUMP_MAGIC),
        "`{database}` is not a pg_dump custom-format file: it does not start with PGDMP"
    );
    Ok(())
}

/// Checks the first bytes of a database entry: the SQLite header, its page size and (when
/// the header's count is current) its page count against the manifest's.
fn check_header_of(
    head: &[u8],
    database: &str,
    expected_page_size: u64,
    expected_page_count: u64,
) -> anyhow::Result<()> {
    ensure!(
        head.len() == SQLITE_HEADER && head.starts_with(SQLITE_MAGIC),
        "`{}` is not an SQLite database: it does not start with the SQLite header",
        database
    );
    let page_size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    ensure!(
        page_size == expected_page_size,
        "`{}` has pages of {page_size} bytes but the manifest says {}",
        database,
        expected_page_size
    );
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    // The in-header page count is current only when its version-valid-for number equals the
    // change counter (SQLite's file format, section 1.3.7).
    let pages = u64::from(word(28));
    if pages != 0 && word(92) == word(24) {
        ensure!(
            pages == expected_page_count,
            "`{}` has {pages} pages by its header but the manifest says {}",
            database,
            expected_page_count
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

fn read_inner(
    path: &Path,
    chosen: Option<&str>,
    database_out: &mut dyn Write,
    others: &mut EntrySink<'_>,
) -> anyhow::Result<Contents> {
    let (mut archive, compressed) = open_tar(path)?;
    let mut entries = archive
        .entries()
        .context("reading the tar stream")?
        .raw(true);
    let manifest = first_manifest(&mut entries)?;
    let chosen = chosen.unwrap_or(&manifest.database).to_string();
    ensure!(
        manifest.database_entries().contains(&chosen.as_str()),
        "the archive holds no database `{chosen}`; it holds {}",
        manifest.database_entries().join(", ")
    );

    let mut seen_database = false;
    let mut seen_files = vec![false; manifest.files.len()];
    let mut seen_others = vec![false; manifest.databases.len()];
    while let Some((name, mut entry)) = next_file(&mut entries)? {
        let is_database = name == manifest.database && !seen_database;
        // (expected page size and count) for a database entry, checked against its header.
        let mut header: Option<(u64, u64)> = None;
        let (expected_sha, expected_size): (&str, u64) = if is_database {
            seen_database = true;
            header = Some((manifest.page_size, manifest.page_count));
            (&manifest.sha256, manifest.size)
        } else if let Some(i) = manifest
            .databases
            .iter()
            .position(|d| d.entry == name)
            .filter(|&i| !seen_others[i])
        {
            seen_others[i] = true;
            let d = &manifest.databases[i];
            header = Some((d.page_size, d.page_count));
            (&d.sha256, d.size)
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
        let mut sink: Box<dyn Write> = Box::new(io::sink());
        let out: &mut dyn Write = if name == chosen {
            &mut *database_out
        } else {
            if let Some(w) = others(&name)? {
                sink = w;
            }
            &mut *sink
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
        if let Some((page_size, page_count)) = header {
            if is_database && manifest.postgres.is_some() {
                check_pgdump_header(&kept.head, &name)?;
            } else {
                check_header_of(&kept.head, &name, page_size, page_count)?;
            }
        }
        drop(kept);
        sink.flush().with_context(|| format!("writing `{name}`"))?;
    }
    if let Some(i) = seen_others.iter().position(|seen| !seen) {
        bail!(
            "the database `{}` that the manifest lists is missing from the archive",
            manifest.databases[i].entry
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
    extract_entry(archive, None, file, file_path, level)
}

/// [`extract`] for the database `entry` of the archive (its first when `None`); the manifest
/// returned describes that database ([`Manifest::for_entry`]).
pub fn extract_entry(
    archive: &Path,
    entry: Option<&str>,
    file: &mut File,
    file_path: &Path,
    level: CheckLevel,
) -> anyhow::Result<Extracted> {
    let contents = {
        let mut out = BufWriter::with_capacity(IO_BUFFER, &mut *file);
        let mut contents = read_each(archive, entry, &mut out, &mut |_| Ok(None))?;
        let chosen = entry.unwrap_or(&contents.manifest.database).to_string();
        contents.manifest = contents
            .manifest
            .for_entry(&chosen)
            .context("the archive's manifest does not describe the database read")?;
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
pub fn check_copy(
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
            databases: Vec::new(),
            matched: Vec::new(),
            postgres: None,
        }
    }

    /// A small SQLite file at `path` and its manifest fields: (size, sha256, page size, pages).
    fn tiny_db(path: &Path, rows: u32) -> (u64, String, u64, u64) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO t SELECT i FROM n;"
        ))
        .unwrap();
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        drop(conn);
        let (sha, size) = hash_file(path).unwrap();
        (size, sha, page_size as u64, pages as u64)
    }

    /// A dump-like entry: the custom format's magic, then bytes that compress a little.
    fn dump_bytes(len: usize) -> Vec<u8> {
        let mut data = b"PGDMP".to_vec();
        let mut x: u32 = 7;
        while data.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if x.is_multiple_of(3) {
                data.extend_from_slice(b"spend ");
            } else {
                data.extend_from_slice(&x.to_le_bytes()[..3]);
            }
        }
        data.truncate(len);
        data
    }

    #[test]
    fn a_streamed_archive_reads_back_as_the_archive_written_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        // Over three compression blocks, and an entry whose size is not a multiple of 512.
        let data = dump_bytes(3 * crate::pgzip::BLOCK_SIZE + 1234);
        let file = dir.path().join("g.pgdump");
        std::fs::write(&file, &data).unwrap();
        let (sha256, size) = hash_file(&file).unwrap();
        let mut m = manifest(size, 0, 0);
        m.database = "database.pgdump".into();
        m.sha256 = sha256;
        m.postgres = Some(PgDump {
            server_version: "15".into(),
            dump_tool: "pg_dump (PostgreSQL) 15".into(),
            tables: Vec::new(),
        });
        let include = Include {
            meta: IncludedFile {
                source: "/etc/gateway.yaml".into(),
                entry: "files/gateway.yaml".into(),
                size: 5,
                sha256: hex::encode(Sha256::digest(b"a: 1\n")),
            },
            bytes: b"a: 1\n".to_vec(),
        };
        m.files.push(include.meta.clone());
        for compression in [
            Compression::Gzip {
                level: 6,
                threads: 2,
            },
            Compression::None,
        ] {
            let dest = dir.path().join("streamed.tar.gz");
            let mut body = StreamedBody::create(&dest, compression).unwrap();
            for piece in data.chunks(65_536 - 7) {
                body.write_all(piece).unwrap();
            }
            let (pending, _) = body
                .finish(&dest, &m, std::slice::from_ref(&include))
                .unwrap();
            // Only the archive's temporary file is left: the body's was removed.
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                2,
                "{compression:?}"
            );
            let mut out = Vec::new();
            let contents = read(pending.temp_path(), &mut out).unwrap();
            assert_eq!(contents.manifest, m);
            assert_eq!(contents.compressed, compression != Compression::None);
            assert!(out == data, "{compression:?}: the entry read back differs");

            // The same tar stream as the archive written in one pass from the file.
            let one_pass = dir.path().join("one-pass.tar.gz");
            let (written, _) = write(
                &one_pass,
                &m,
                &file,
                std::slice::from_ref(&include),
                compression,
            )
            .unwrap();
            let tar_of = |path: &Path| {
                let bytes = std::fs::read(path).unwrap();
                if compression == Compression::None {
                    return bytes;
                }
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(bytes.as_slice())
                    .read_to_end(&mut tar)
                    .unwrap();
                tar
            };
            assert!(
                tar_of(pending.temp_path()) == tar_of(written.temp_path()),
                "{compression:?}"
            );
        }
    }

    #[test]
    fn a_streamed_archive_refuses_a_manifest_that_gives_another_size() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("streamed.tar.gz");
        let mut body = StreamedBody::create(
            &dest,
            Compression::Gzip {
                level: 6,
                threads: 2,
            },
        )
        .unwrap();
        body.write_all(b"PGDMP and more").unwrap();
        let mut m = manifest(15, 0, 0);
        m.database = "database.pgdump".into();
        let Err(err) = body.finish(&dest, &m, &[]) else {
            panic!("a manifest of another size was accepted")
        };
        let err = format!("{err:#}");
        assert!(
            err.contains("15 bytes") && err.contains("14 were written"),
            "{err}"
        );
        // Nothing is left that could pass for an archive.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn every_database_an_archive_lists_is_checked_and_one_missing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("g.db");
        let other = dir.path().join("u.db");
        let (size, sha, page_size, pages) = tiny_db(&first, 3);
        let (osize, osha, opage_size, opages) = tiny_db(&other, 5);
        let mut m = manifest(size, page_size, pages);
        m.database = "databases/gateway/g.db".into();
        m.sha256 = sha;
        m.databases.push(ArchivedDatabase {
            name: "users".into(),
            source: other.clone(),
            entry: "databases/users/u.db".into(),
            size: osize,
            sha256: osha,
            page_size: opage_size,
            page_count: opages,
            journal_mode: "delete".into(),
            table: Some("t".into()),
            row_count: Some(5),
        });
        let dest = dir.path().join("a.tar");
        let (pending, _) = write_all(&dest, &m, &first, &[&other], &[], Compression::None).unwrap();
        let contents = read(pending.temp_path(), &mut io::sink()).unwrap();
        assert_eq!(contents.manifest, m);
        let path = pending.commit().unwrap();
        // Each database extracts and checks on its own.
        let out = dir.path().join("one.db");
        let mut file = File::create(&out).unwrap();
        let got = extract_entry(
            &path,
            Some("databases/users/u.db"),
            &mut file,
            &out,
            CheckLevel::Integrity,
        )
        .unwrap();
        assert_eq!(got.rows, Some(5));
        assert_eq!(got.manifest.database, "databases/users/u.db");
        assert_eq!(m.label("databases/users/u.db"), "users:u.db");

        // A manifest that lists a database the archive lacks is refused.
        let mut lying = m.clone();
        let mut extra = lying.databases[0].clone();
        extra.entry = "databases/users/gone.db".into();
        lying.databases.push(extra);
        let bad = dir.path().join("bad.tar");
        let out = BufWriter::new(File::create(&bad).unwrap());
        write_entries(out, &lying, &first, &[&other], &[])
            .unwrap()
            .flush()
            .unwrap();
        let err = format!("{:#}", read(&bad, &mut io::sink()).unwrap_err());
        assert!(
            err.contains("databases/users/gone.db") && err.contains("missing"),
            "{err}"
        );
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
            let got = check_header_of(&head, &m.database, m.page_size, m.page_count)
                .err()
                .map(|e| e.to_string());
            match (error, got) {
                (None, None) => {}
                (Some(want), Some(got)) if got.contains(want) => {}
                (want, got) => panic!("want {want:?}, got {got:?}"),
            }
        }
    }
}
