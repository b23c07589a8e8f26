//! Carrying out a rotation plan on the file system: moves, new files, the notification, compression.
//!
//! Each file is handled on its own: an error on one is reported and the others go on.
//! Every file this module produces is written under a temporary name in the same
//! directory, synced and renamed into place, and a copy is only deleted once its
//! compressed replacement is durable, so an interruption at any point leaves either the
//! old or the new state, never a partial file under a final name.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use rustix::fs::{Gid, Mode, Uid};

use super::config::{Method, Notify};
use super::plan::{Action, FileState, Plan, Step};
use super::survey::TEMP_SUFFIX;
use crate::fsx::{PendingFile, sync_parent};
use crate::pgzip::{self, ParallelGzWriter};

/// gzip's own default level, the one logrotate gets from `gzip` without options.
const GZIP_LEVEL: u32 = 6;

/// Compression threads: two beat single-threaded gzip by about twice on a loaded two-core
/// host while leaving the gateway a core between them and the writer thread.
const GZIP_THREADS: usize = 2;

/// What one run did.
#[derive(Debug)]
pub struct Outcome {
    pub files: Vec<FileOutcome>,
    /// The notification's result, when one was due.
    pub notify: Option<Result<(), String>>,
    /// Set when the notify signal stopped the writer (it died instead of reopening its log):
    /// what happened. `notify` holds the same as an error.
    pub writer_stopped: Option<String>,
    /// State entries to merge into the saved map: files rotated successfully and files
    /// seen for the first time. A failed rotation leaves its entry unchanged.
    pub state: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub action: Action,
    /// Whether the live file's content was moved aside.
    pub rotated: bool,
    /// Rotated copies deleted (beyond `rotate`, older than `max_age`, or `rotate: 0`).
    pub deleted: u32,
    /// Copies compressed to `.gz`.
    pub compressed: u32,
    /// What went wrong, each with the path and what to do; empty on success.
    pub errors: Vec<String>,
}

impl Outcome {
    /// No file failed and no notification failed (skips that are warnings count as failures).
    pub fn is_success(&self) -> bool {
        self.files.iter().all(|f| f.errors.is_empty()) && !matches!(self.notify, Some(Err(_)))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            let what = match (&file.action, file.rotated) {
                (Action::Rotate(_), true) => "rotated".to_owned(),
                (Action::Rotate(_), false) => "not rotated".to_owned(),
                (Action::Record, _) => "first seen, recorded".to_owned(),
                (Action::Skip(reason), _) => format!("skipped, {reason}"),
            };
            writeln!(f, "{}: {what}", file.path.display())?;
            for error in &file.errors {
                writeln!(f, "  error: {error}")?;
            }
        }
        match &self.notify {
            Some(Ok(())) => writeln!(f, "notified the writer")?,
            Some(Err(e)) => writeln!(f, "notify failed: {e}")?,
            None => {}
        }
        Ok(())
    }
}

/// Carries out `plan`: per-file moves, then one notification, then compression.
pub fn execute(plan: &Plan) -> Outcome {
    let mut files = Vec::with_capacity(plan.files.len());
    let mut state = BTreeMap::new();
    for file in &plan.files {
        let mut outcome = FileOutcome {
            path: file.path.clone(),
            action: file.action.clone(),
            rotated: false,
            deleted: 0,
            compressed: 0,
            errors: Vec::new(),
        };
        match &file.action {
            Action::Record => {
                state.insert(
                    file.path.clone(),
                    FileState {
                        last_rotated: plan.now,
                    },
                );
            }
            Action::Skip(reason) if reason.is_problem() => {
                outcome
                    .errors
                    .push(format!("{}: {reason}", file.path.display()));
            }
            Action::Skip(_) => {}
            Action::Rotate(_) => match file.steps.iter().try_for_each(run_step) {
                Ok(()) => {
                    outcome.rotated = true;
                    outcome.deleted += count_deletions(&file.steps);
                    state.insert(
                        file.path.clone(),
                        FileState {
                            last_rotated: plan.now,
                        },
                    );
                }
                Err(e) => outcome.errors.push(format!("{e:#}")),
            },
        }
        files.push(outcome);
    }

    let mut writer_stopped = None;
    let notify = match &plan.notify {
        Some(notify) if files.iter().any(|f| f.rotated) => Some(send_notify(notify).map_err(|e| {
            writer_stopped = e.downcast_ref::<WriterStopped>().map(|w| w.0.clone());
            format!("{e:#}")
        })),
        _ => None,
    };
    let notified = !matches!(notify, Some(Err(_)));

    for (file, outcome) in plan.files.iter().zip(&mut files) {
        if !outcome.rotated {
            continue;
        }
        // Until the writer has reopened its file it may still append to the newest copy:
        // compressing that copy now would lose those lines.
        let newest = file.steps.iter().find_map(|step| match step {
            Step::Move { to, .. } => Some(to),
            _ => None,
        });
        for step in &file.after_notify {
            let touches_newest = match step {
                Step::Compress { from, .. } | Step::Delete { path: from, .. } => {
                    Some(from) == newest
                }
                _ => false,
            };
            if !notified && touches_newest && plan.notify.is_some() {
                outcome.errors.push(format!(
                    "left `{step}` undone because the writer could not be notified; \
                     it will be done on the next rotation"
                ));
                continue;
            }
            match run_step(step) {
                Ok(()) => match step {
                    Step::Compress { .. } => outcome.compressed += 1,
                    Step::Delete { .. } => outcome.deleted += 1,
                    _ => {}
                },
                Err(e) => outcome.errors.push(format!("{e:#}")),
            }
        }
    }
    Outcome {
        files,
        notify,
        writer_stopped,
        state,
    }
}

fn count_deletions(steps: &[Step]) -> u32 {
    let deletions = steps
        .iter()
        .filter(|step| matches!(step, Step::Delete { .. }))
        .count();
    u32::try_from(deletions).unwrap_or(u32::MAX)
}

fn run_step(step: &Step) -> Result<()> {
    match step {
        Step::Delete { path, .. } => remove(path),
        Step::Rename { from, to } => rename_no_clobber(from, to),
        Step::Move {
            from,
            to,
            method: Method::Create,
        } => move_and_create(from, to),
        Step::Move {
            from,
            to,
            method: Method::Copytruncate,
        } => copy_and_truncate(from, to),
        Step::Truncate { path } => truncate(path),
        Step::Compress { from, to } => compress(from, to),
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        // Already gone (removed by hand, or by an interrupted earlier run): the goal is met.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting {}", path.display())),
    }
}

/// Refuses to overwrite `to`: an existing file there is an earlier copy that nothing in
/// the plan accounted for, and clobbering it would silently destroy log data.
fn ensure_absent(to: &Path) -> Result<()> {
    match fs::symlink_metadata(to) {
        Ok(_) => bail!(
            "{} already exists; move it away by hand, then run the job again",
            to.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", to.display())),
    }
}

fn rename_no_clobber(from: &Path, to: &Path) -> Result<()> {
    ensure_absent(to)?;
    fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    sync_parent(to)
}

/// Gives `file` the permission bits and owner of `like`.
///
/// `chown` to another user needs privileges; when it fails the file keeps the mode, which
/// is the part that protects the content, and the error says how to fix ownership.
fn copy_mode_and_owner(file: &File, path: &Path, like: &fs::Metadata) -> Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(like.mode() & 0o7777)).with_context(|| {
        format!(
            "setting mode {:o} on {}",
            like.mode() & 0o7777,
            path.display()
        )
    })?;
    let here = file
        .metadata()
        .with_context(|| format!("examining {}", path.display()))?;
    if here.uid() != like.uid() || here.gid() != like.gid() {
        rustix::fs::fchown(
            file,
            Some(Uid::from_raw(like.uid())),
            Some(Gid::from_raw(like.gid())),
        )
        .with_context(|| {
            format!(
                "giving {} the owner {}:{} of the rotated file (run caretaker as that user or as root)",
                path.display(),
                like.uid(),
                like.gid()
            )
        })?;
    }
    Ok(())
}

/// `method: create`: rename the log aside, then create a new empty log in its place.
fn move_and_create(from: &Path, to: &Path) -> Result<()> {
    let meta =
        fs::symlink_metadata(from).with_context(|| format!("examining {}", from.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is no longer a regular file; not rotated",
            from.display()
        );
    }
    if to.as_os_str().to_string_lossy().ends_with(TEMP_SUFFIX) {
        // `rotate: 0` moves the log to a hidden name and deletes it after the notification;
        // a leftover there is content from an interrupted run that was meant to be discarded.
        remove(to)?;
    }
    ensure_absent(to)?;
    fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(from)
        .with_context(|| {
            format!(
                "creating the new empty {} after moving the old one to {}; the writer keeps \
                 writing to {} until it reopens",
                from.display(),
                to.display(),
                to.display()
            )
        })?;
    copy_mode_and_owner(&created, from, &meta)?;
    created
        .sync_all()
        .with_context(|| format!("syncing {}", from.display()))?;
    sync_parent(from)
}

/// A new file `to` under its temporary name `.NAME.caretaker-tmp` beside it (fsx's durable
/// write: removed unless committed, committed only where nothing is yet). A leftover from an
/// interrupted run is replaced only if `leftover_is_redundant`, i.e. its content is still
/// in its source.
fn pending(to: &Path, leftover_is_redundant: bool) -> Result<PendingFile> {
    let leftover = PendingFile::fixed_temp(to);
    if leftover_is_redundant {
        remove(&leftover)?;
    } else if fs::symlink_metadata(&leftover).is_ok() {
        bail!(
            "{} is left over from an interrupted copytruncate and may hold the only copy of \
             some log lines: move it out of the log directory by hand, then run the job again",
            leftover.display()
        );
    }
    PendingFile::create_fixed(to)
}

/// Fills a new file beside `to` through `fill`, makes it durable with the source's mode,
/// owner and modification time, and renames it to `to`.
fn write_durably(
    source: &fs::Metadata,
    to: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let mut temp = pending(to, true)?;
    let path = temp.temp_path().to_path_buf();
    fill(temp.file()).with_context(|| format!("writing {}", path.display()))?;
    copy_mode_and_owner(temp.file(), &path, source)?;
    let mtime = source
        .modified()
        .context("reading the modification time of the source")?;
    temp.file()
        .set_modified(mtime)
        .with_context(|| format!("setting the modification time of {}", path.display()))?;
    temp.commit_new()?;
    Ok(())
}

/// `method: copytruncate`: copy the log, then truncate it in place. Lines the writer
/// appends between the end of the copy and the truncation are lost.
///
/// To keep that window short, the bulk of the file is copied and synced first; then only
/// what was appended meanwhile is copied, and the file is truncated at once.
fn copy_and_truncate(from: &Path, to: &Path) -> Result<()> {
    ensure_absent(to)?;
    let mut source = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(from)
        .with_context(|| format!("opening {}", from.display()))?;
    let meta = source
        .metadata()
        .with_context(|| format!("examining {}", from.display()))?;
    let mut temp = pending(to, false)?;
    let kept = temp.temp_path().to_path_buf();
    copy_mode_and_owner(temp.file(), &kept, &meta)?;
    // A second handle on the same open file, so that the buffered copy does not borrow `temp`.
    let file = temp
        .file()
        .try_clone()
        .with_context(|| format!("opening {} again", kept.display()))?;
    let mut writer = BufWriter::new(file);
    io::copy(&mut source, &mut writer)
        .and_then(|_| writer.flush())
        .and_then(|()| writer.get_ref().sync_data())
        .with_context(|| format!("copying {} to {}", from.display(), kept.display()))?;
    io::copy(&mut source, &mut writer)
        .and_then(|_| writer.flush())
        .with_context(|| format!("copying {} to {}", from.display(), kept.display()))?;
    source
        .set_len(0)
        .with_context(|| format!("truncating {} after copying it", from.display()))?;
    // From here on the copy holds the only instance of the log's content: on failure it is
    // kept under its temporary name rather than removed.
    temp.keep();
    let finish = || -> Result<()> {
        writer.into_inner().map_err(|e| e.into_error())?;
        let mtime = meta.modified()?;
        temp.file().set_modified(mtime)?;
        temp.commit_new()?;
        Ok(())
    };
    finish().with_context(|| {
        format!(
            "finishing the copy of {}; its content is in {}, rename that to {} by hand",
            from.display(),
            kept.display(),
            to.display()
        )
    })
}

fn truncate(path: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .and_then(|f| f.set_len(0))
        .with_context(|| format!("truncating {}", path.display()))
}

/// gzip `from` into `to`, keeping its mode, owner and modification time; `from` is removed
/// only once `to` is durable.
///
/// The output is one standard gzip member, deflated on [`GZIP_THREADS`] threads.
fn compress(from: &Path, to: &Path) -> Result<()> {
    ensure_absent(to)?;
    let mut source = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let meta = source
        .metadata()
        .with_context(|| format!("examining {}", from.display()))?;
    write_durably(&meta, to, |file| {
        let mut encoder = ParallelGzWriter::new(BufWriter::new(file), GZIP_LEVEL, GZIP_THREADS)?;
        // Reads of a whole compression block: one read per block handed to a worker.
        let mut buffer = vec![0; pgzip::BLOCK_SIZE];
        loop {
            match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => encoder.write_all(&buffer[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut writer = encoder.finish()?;
        writer.flush()?;
        writer.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
    .with_context(|| format!("compressing {} to {}", from.display(), to.display()))?;
    remove(from)
}

/// The notify signal stopped the writer instead of making it reopen its log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WriterStopped(String);

/// How long a writer that still has the signal pending may take to act on it; the kernel's
/// default action (a process without a handler dies) takes effect on delivery, milliseconds.
const GRACE_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a writer that has taken the signal is still watched: a handler may exit on it.
const GRACE_MIN: std::time::Duration = std::time::Duration::from_millis(200);
/// Where `/proc` cannot say whether the signal is still pending, the whole watch.
const GRACE_BLIND: std::time::Duration = std::time::Duration::from_millis(500);

/// Watches the signalled process for a short bounded grace; `Err(after)` when it is gone
/// (exited, a zombie, or its pid now names another process).
fn survives(
    pid: rustix::process::Pid,
    before: Option<ProcessId>,
    signal: super::config::NotifySignal,
) -> std::result::Result<(), std::time::Duration> {
    let sent = std::time::Instant::now();
    loop {
        let now = ProcessId::read(pid);
        let gone = match (&before, &now) {
            (Some(b), Some(n)) => n.zombie || n.start_time != b.start_time,
            (Some(_), None) => true,
            // No /proc (or not for this process): whether the pid answers at all.
            (None, _) => rustix::process::test_kill_process(pid).is_err(),
        };
        let waited = sent.elapsed();
        if gone {
            return Err(waited);
        }
        let taken = match (&before, &now) {
            (Some(_), Some(n)) => !n.pending.contains(signal.to_rustix().as_raw()),
            _ => false,
        };
        let settled = if before.is_some() {
            (taken && waited >= GRACE_MIN) || waited >= GRACE_MAX
        } else {
            waited >= GRACE_BLIND
        };
        if settled {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What `/proc/PID` says about a process: when it started (a reused pid starts later), whether
/// it is a zombie, and the signals pending for it.
struct ProcessId {
    start_time: u64,
    zombie: bool,
    pending: Pending,
}

/// Pending signal numbers, from the `SigPnd` and `ShdPnd` masks.
struct Pending(u64);

impl Pending {
    fn contains(&self, signal: i32) -> bool {
        (1..=64).contains(&signal) && self.0 & (1 << (signal - 1)) != 0
    }
}

impl ProcessId {
    fn read(pid: rustix::process::Pid) -> Option<ProcessId> {
        let dir = Path::new("/proc").join(pid.as_raw_nonzero().to_string());
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let zombie = matches!(*fields.first()?, "Z" | "X" | "x");
        let start_time = fields.get(19)?.parse().ok()?;
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let mask = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        Some(ProcessId {
            start_time,
            zombie,
            pending: Pending(mask("SigPnd:") | mask("ShdPnd:")),
        })
    }
}

fn send_notify(notify: &Notify) -> Result<()> {
    match notify {
        Notify::Signal { pid_file, signal } => {
            let text = fs::read_to_string(pid_file)
                .with_context(|| format!("reading the writer's pid file {}", pid_file.display()))?;
            let pid = text
                .trim()
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .filter(|pid| pid.as_raw_nonzero().get() > 0)
                .with_context(|| {
                    format!(
                        "{} holds `{}`, not a process id",
                        pid_file.display(),
                        text.trim()
                    )
                })?;
            let before = ProcessId::read(pid);
            rustix::process::kill_process(pid, signal.to_rustix()).with_context(|| {
                format!(
                    "sending {signal} to process {} from {} (is the writer running?)",
                    pid.as_raw_nonzero(),
                    pid_file.display()
                )
            })?;
            if signal.asks_to_stop() {
                return Ok(());
            }
            survives(pid, before, *signal).map_err(|after| {
                WriterStopped(format!(
                    "{signal} stopped the writer: process {} from {} was gone {} after the signal, so it does not reopen its log on {signal}; \
                     start it again, and rotate its log another way (docs/jobs/logrotate.md: per gateway, what works)",
                    pid.as_raw_nonzero(),
                    pid_file.display(),
                    crate::units::duration(after)
                ))
                .into()
            })
        }
        Notify::Command(argv) => {
            let (program, args) = argv.split_first().context("notify command is empty")?;
            let output = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running notify command {argv:?}"))?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let stderr = stderr.trim();
                let tail = &stderr[stderr.floor_char_boundary(stderr.len().saturating_sub(500))..];
                bail!("notify command {argv:?} failed ({}): {tail}", output.status);
            }
            Ok(())
        }
    }
}
