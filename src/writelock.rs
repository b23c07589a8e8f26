//! Write transactions on the gateway's database that the gateway barely notices: started in a
//! gap between its commits, kept short, timed, and followed by room for the gateway.
//!
//! The two gateways wait differently. Apantli (rollback journal) retries a locked write with
//! SQLite's busy handler for up to 5 s, sleeping 1, 2, 5, 10, 15, 20, 25 ... ms between tries:
//! it tries again 1, 3, 8, 18, 33, 53 ms after it first met the lock. The writers that met one
//! of our locks wake close together and only one gets in at a time, so each must find two of
//! its tries free of our locks before it has waited 50 ms. Hence three rules, for reads as for
//! writes (a read's shared lock holds the gateway's commits off just the same):
//! - locks stop by [`HOLD_LIMIT`], 16 ms: a writer that meets one at its start still has its
//!   tries at 18 and 33 ms after it (the pricing job's batches, not cut short inside a
//!   transaction, aim at 30 ms, and their writers get in by their try at 53 ms);
//! - after each lock, room before our next one ([`room`]): until every writer that met it,
//!   whenever it arrived, has tried twice (28 ms after a lock of 8 to 17 ms);
//! - no lock while a gateway transaction is writing (its journal is there): even the shared
//!   lock `BEGIN IMMEDIATE` takes first makes a commit in progress sleep in its busy handler
//!   with its locks held, and every other gateway writer waits behind it.
//!
//! BobaMixer (WAL) has no busy timeout at all: an insert that meets our write lock fails at
//! once. There we wait until the gateway has just committed and then stayed quiet for a moment,
//! and start right then: a gateway that records after each completed LLM call rarely writes
//! again within milliseconds of its last write.
//!
//! Two rules hold for every job whatever its pacing, and live here so they are one rule:
//! - every lock that holds the gateway off is recorded for the run ([`record`]; the pacer's
//!   own locks are recorded by it), summed up as [`LockStats`] and judged against the bound
//!   the docs promise for the job's kind ([`bound`]);
//! - a gateway that keeps its lock past our busy timeout is waited for, with backoff, within
//!   the job's time budget, and only then is the run failed ([`patiently`]).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::stop::{Stop, Stopped};

/// How long the gateway must have been quiet after a commit before we start (WAL). BobaMixer
/// writes a new session and its first record as two `sqlite3` processes, a process start
/// apart, and a loaded machine can stretch that gap to tens of milliseconds.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the commit counter is read while waiting for a gap (WAL).
const POLL: Duration = Duration::from_millis(1);
/// With no gateway commit seen for this long, the gateway is idle: go.
const IDLE: Duration = Duration::from_millis(250);
/// A gateway that never pauses long enough still gets our transaction after this long.
const MAX_WAIT: Duration = Duration::from_millis(1000);
/// When a writer held off by our lock tries again, counted from its first try: SQLite's busy
/// handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries.
const TRIES_MS: [u64; 8] = [0, 1, 3, 8, 18, 33, 53, 78];
/// How late a sleeping writer's try may land: each sleep overshoots, by 2 ms in all at its
/// try at 33 ms when the machine is busy (measured).
const SLACK: Duration = Duration::from_millis(3);
/// The longest a lock should be held: a writer that meets it at its start still has its tries
/// at 18 and 33 ms after the release, two chances before it has waited 50 ms. Reads and the
/// archive job's deletes stop by it.
pub const HOLD_LIMIT: Duration = Duration::from_millis(16);
/// How long we wait for a gateway transaction in progress to commit before taking a lock
/// anyway (and waiting on it with our busy timeout).
const COMMIT_WAIT: Duration = Duration::from_millis(100);
/// How often the journal is looked at while the gateway writes.
const JOURNAL_POLL: Duration = Duration::from_micros(200);
/// How often the room still owed is worked out again while we wait: a gateway transaction
/// seen meanwhile may lengthen it.
const RECHECK: Duration = Duration::from_millis(1);
/// A gateway that never leaves the room its own transactions owe each other still gets our
/// lock after this long.
const GATEWAY_ROOM_WAIT: Duration = Duration::from_millis(250);

/// The journal mode of a database, read without changing it.
pub fn journal_mode(conn: &Connection) -> anyhow::Result<String> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .context("reading the journal mode of the gateway database")?;
    Ok(mode.to_ascii_lowercase())
}

/// Paces and times our write transactions on one connection to the gateway's database.
#[derive(Debug)]
pub struct Pacer {
    wal: bool,
    longest: Duration,
    total: Duration,
    count: u64,
    last_hold: Duration,
    /// When our last lock was released (rollback journal: the room after it starts here).
    released: Option<Instant>,
    /// Rollback journal: the gateway's transactions, seen through their journal file.
    journal: Option<JournalWatch>,
    /// WAL: the gateway's commit counter when we last looked, when it last changed, and
    /// whether it changed since our last transaction.
    version: Option<i64>,
    changed: Instant,
    fresh_commit: bool,
}

impl Pacer {
    /// Reading the journal mode needs a shared lock, so it waits for a busy gateway like our
    /// transactions do ([`patiently`]).
    pub fn new(conn: &Connection) -> anyhow::Result<Pacer> {
        let mode = patiently("reading the journal mode", || journal_mode(conn))?;
        // Only a journal deleted at each commit tells, by being there, that a transaction is
        // writing; `truncate` and `persist` leave theirs in place.
        let journal = (mode == "delete")
            .then(|| conn.path().filter(|p| !p.is_empty()))
            .flatten()
            .map(|p| {
                JournalWatch::new(crate::sqlite::companion(
                    Path::new(p),
                    crate::sqlite::JOURNAL,
                ))
            });
        Ok(Pacer {
            wal: mode == "wal",
            journal,
            longest: Duration::ZERO,
            total: Duration::ZERO,
            count: 0,
            last_hold: Duration::ZERO,
            released: None,
            version: None,
            changed: Instant::now(),
            fresh_commit: false,
        })
    }

    pub fn is_wal(&self) -> bool {
        self.wal
    }

    /// The longest time one of our transactions held the write lock.
    pub fn longest(&self) -> Duration {
        self.longest
    }

    pub fn transactions(&self) -> u64 {
        self.count
    }

    pub fn total(&self) -> Duration {
        self.total
    }

    /// Runs `work` in a write transaction (`BEGIN IMMEDIATE`) started at a good moment, and
    /// returns its result with how long the write lock was held. Waiting for the lock (our busy
    /// timeout) is not counted: the gateway is not blocked while we wait. A gateway that keeps
    /// its lock past our busy timeout is waited for ([`patiently`]); `work` then runs again in
    /// a new transaction, the first one having been rolled back.
    pub fn write<T>(
        &mut self,
        conn: &mut Connection,
        mut work: impl FnMut(&rusqlite::Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        patiently("writing", || {
            self.wait_for_gap(conn)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .context("taking the write lock on the gateway database (BEGIN IMMEDIATE)")?;
            let began = Instant::now();
            let result = match work(&tx) {
                Ok(value) => tx
                    .commit()
                    .context("committing a write transaction on the gateway database")
                    .map(|()| value),
                Err(e) => {
                    drop(tx);
                    Err(e)
                }
            };
            // A transaction that failed (a commit that waited out our busy timeout for the
            // gateway's readers) held the gateway's writers off all the same: it counts.
            let held = self.held(began);
            result.map(|value| (value, held))
        })
    }

    /// Runs `work`, a read transaction (a shared lock that holds off the gateway's commits with
    /// a rollback journal), after the room owed to the gateway since our last lock, and returns
    /// its result with how long it took. It must stop by [`HOLD_LIMIT`]; the room after it is
    /// owed like after a write. With WAL a read never blocks the gateway and is only timed.
    ///
    /// Only the rollback journal's reads are recorded for the run ([`record`]): a WAL reader
    /// holds no gateway writer off. A read that meets a gateway lock held past our busy timeout
    /// is tried again ([`patiently`]).
    pub fn read<T>(
        &mut self,
        conn: &Connection,
        mut work: impl FnMut(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        patiently("reading", || {
            if !self.wal {
                self.leave_room();
            }
            let began = Instant::now();
            let value = work(conn)?;
            let now = Instant::now();
            if !self.wal {
                // The shared lock held the gateway's commits off as a write lock would have.
                self.last_hold = now - began;
                self.released = Some(now);
                record(now - began, 0);
            }
            Ok((value, now - began))
        })
    }

    /// Books a write lock held since `began`, just released.
    fn held(&mut self, began: Instant) -> Duration {
        let now = Instant::now();
        let held = now - began;
        self.longest = self.longest.max(held);
        self.total += held;
        self.count += 1;
        self.last_hold = held;
        self.released = Some(now);
        record(held, 0);
        held
    }

    /// Rollback journal: sleeps until the room after our last lock has passed (work done
    /// meanwhile counts as room), and the room after the gateway's last transaction too: a
    /// gateway writer's lock holds its other writers off as ours does, and when they waited on
    /// each other (a commit that met another writer's shared lock sleeps with its own locks
    /// held) their next tries are late. Never while a gateway transaction is writing: a lock
    /// of ours, even the shared one `BEGIN IMMEDIATE` takes first, would make its commit sleep
    /// in the busy handler, and every other gateway writer with it.
    fn leave_room(&self) {
        let start = Instant::now();
        loop {
            let now = Instant::now();
            let mut due = self
                .released
                .map(|released| released + room(self.last_hold));
            if let Some(watch) = &self.journal {
                let waited = now - start;
                if watch.writing() && waited < COMMIT_WAIT {
                    sleep(JOURNAL_POLL);
                    continue;
                }
                if waited < GATEWAY_ROOM_WAIT {
                    due = due.max(watch.room_due(now));
                }
            }
            match due {
                Some(due) if due > now => sleep((due - now).min(RECHECK)),
                _ => return,
            }
        }
    }

    /// Times a statement that takes the write lock by itself (ANALYZE, VACUUM) after waiting
    /// for a gap, counting it like a transaction, and trying it again while the gateway keeps
    /// its lock past our busy timeout ([`patiently`]).
    pub fn statement<T>(
        &mut self,
        conn: &Connection,
        mut work: impl FnMut(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        patiently("running a statement", || {
            self.wait_for_gap(conn)?;
            let began = Instant::now();
            let result = work(conn);
            let held = self.held(began);
            result.map(|value| (value, held))
        })
    }

    /// Blocks until a good moment for a write transaction.
    ///
    /// Rollback journal: the room left after our previous transaction (see
    /// [`Pacer::leave_room`]). WAL: once the gateway has committed since our last transaction and then
    /// stayed quiet for [`SETTLE`], or has been quiet for [`IDLE`], or after [`MAX_WAIT`].
    fn wait_for_gap(&mut self, conn: &Connection) -> anyhow::Result<()> {
        if !self.wal {
            self.leave_room();
            return Ok(());
        }
        let start = Instant::now();
        let mut first = true;
        loop {
            let version = data_version(conn)?;
            if self.version != Some(version) {
                // Only a change seen between two of our polls is known to be recent; one that
                // happened while we worked may be old, and the gateway's next write near.
                self.fresh_commit = !first;
                self.version = Some(version);
                self.changed = Instant::now();
            }
            first = false;
            let quiet = self.changed.elapsed();
            if (self.fresh_commit && quiet >= SETTLE)
                || quiet >= IDLE
                || start.elapsed() >= MAX_WAIT
            {
                self.fresh_commit = false;
                return Ok(());
            }
            sleep(POLL);
        }
    }
}

/// The room owed to the gateway after a lock held for `held` (rollback journal): long enough
/// for every writer that met the lock, whenever it arrived, to try twice after the release
/// (once may not do: writers that waited on the same lock wake close together and one gets in
/// first). A writer whose try `k` failed just as we released tries again at `k+1` and `k+2`.
fn room(held: Duration) -> Duration {
    let worst = TRIES_MS
        .windows(3)
        .filter(|t| Duration::from_millis(t[0]) <= held)
        .map(|t| t[2] - t[0])
        .max()
        .unwrap_or(TRIES_MS[2]);
    Duration::from_millis(worst) + SLACK
}

/// The gateway's transactions on a rollback-journal database, seen through the journal file
/// each one creates and deletes: watched (Linux) with inotify on its directory for creations
/// and deletions only, which takes no lock, opens no file descriptor on the database (closing
/// one would drop every lock our process holds on it), and costs nothing per page written.
#[derive(Debug)]
struct JournalWatch {
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    /// `None` where the directory cannot be watched: the journal is then only looked at.
    _watch: Option<inotify_watch::Watch>,
}

/// The journal's last comings and goings.
#[derive(Debug, Default)]
struct Seen {
    /// Since when the journal is there, if it is.
    since: Option<Instant>,
    /// When the last transaction ended, and how long its journal was there.
    ended: Option<(Instant, Duration)>,
}

impl Seen {
    fn created(&mut self, at: Instant) {
        self.since.get_or_insert(at);
    }

    fn deleted(&mut self, at: Instant) {
        let held = self.since.take().map_or(Duration::ZERO, |since| at - since);
        self.ended = Some((at, held));
    }
}

impl JournalWatch {
    fn new(path: PathBuf) -> JournalWatch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watch = inotify_watch::Watch::start(&path, Arc::clone(&seen))
            .inspect_err(|e| {
                tracing::debug!(
                    "not watching {}: {e:#}; pacing on our own locks only",
                    path.display()
                )
            })
            .ok();
        JournalWatch {
            path,
            seen,
            _watch: watch,
        }
    }

    /// Whether a transaction is writing now.
    fn writing(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// When the room owed after the gateway's last transaction ends, called once the journal
    /// is seen gone; a deletion not yet reported counts as now (one never reported, its event
    /// lost, is soon ignored).
    fn room_due(&self, now: Instant) -> Option<Instant> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match (seen.since, seen.ended) {
            (Some(since), _) if now - since < GATEWAY_ROOM_WAIT => Some(now + room(now - since)),
            (_, Some((ended, held))) => Some(ended + room(held)),
            (_, None) => None,
        }
    }
}

#[cfg(target_os = "linux")]
mod inotify_watch {
    use std::ffi::CString;
    use std::mem::MaybeUninit;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use anyhow::Context;
    use rustix::fd::OwnedFd;
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

    use super::Seen;

    /// A thread reading the directory's inotify events until the watch is removed.
    #[derive(Debug)]
    pub struct Watch {
        fd: Arc<OwnedFd>,
        wd: i32,
    }

    impl Watch {
        pub fn start(path: &Path, seen: Arc<Mutex<Seen>>) -> anyhow::Result<Watch> {
            let dir = path.parent().context("the journal path has no directory")?;
            let name = path
                .file_name()
                .context("the journal path has no file name")?;
            let name = CString::new(name.as_bytes()).context("the journal name holds a NUL")?;
            let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC)?);
            let wd = inotify::add_watch(
                &*fd,
                dir,
                WatchFlags::CREATE | WatchFlags::DELETE | WatchFlags::ONLYDIR,
            )?;
            let reader_fd = Arc::clone(&fd);
            std::thread::Builder::new()
                .name("journal-watch".into())
                .spawn(move || {
                    let mut buf = [MaybeUninit::uninit(); 4096];
                    let mut events = inotify::Reader::new(&*reader_fd, &mut buf);
                    loop {
                        let event = match events.next() {
                            Ok(event) => event,
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(_) => return,
                        };
                        // Sent when the watch is removed (or the directory goes): the end.
                        if event.events().contains(ReadFlags::IGNORED) {
                            return;
                        }
                        if event.file_name() != Some(name.as_c_str()) {
                            continue;
                        }
                        let now = Instant::now();
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if event.events().contains(ReadFlags::CREATE) {
                            seen.created(now);
                        } else if event.events().contains(ReadFlags::DELETE) {
                            seen.deleted(now);
                        }
                    }
                })?;
            Ok(Watch { fd, wd })
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            // The reader thread gets IN_IGNORED and ends, closing its copy of the descriptor.
            let _ = inotify::remove_watch(&*self.fd, self.wd);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod inotify_watch {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::Seen;

    /// No watch outside Linux: the journal is only looked at before each lock.
    #[derive(Debug)]
    pub struct Watch;

    impl Watch {
        pub fn start(_path: &Path, _seen: Arc<Mutex<Seen>>) -> anyhow::Result<Watch> {
            anyhow::bail!("watching the journal needs Linux's inotify")
        }
    }
}

/// A lock we held on the gateway's database that held its writers off: how long, how many
/// bytes were copied under it (a snapshot's; 0 for a short transaction, whose bound is fixed),
/// and the operation it was taken for, when the kind named one apart ([`operation`]; "" for
/// the kind's ordinary batches and statements), so that it is judged against that
/// operation's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub held: Duration,
    pub bytes: u64,
    pub operation: &'static str,
}

thread_local! {
    /// The run going on in this thread: the locks it held, and its stop request (the job's
    /// time budget). Jobs take their gateway locks on the thread the runner runs them on.
    static RUN: RefCell<Option<Run>> = const { RefCell::new(None) };
}

struct Run {
    holds: Vec<Hold>,
    stop: Stop,
    /// The operation the locks taken now are for ([`operation`]).
    operation: &'static str,
}

/// Names the operation the locks taken on this thread are for until the guard is dropped (a
/// maintenance job's VACUUM), so that the runner judges them against the bound the kind
/// declares for it ([`crate::jobs::Contract::operation_bound`]), not its batches' bound.
pub fn operation(name: &'static str) -> Operation {
    let outer = RUN.with(|run| {
        run.borrow_mut()
            .as_mut()
            .map(|r| std::mem::replace(&mut r.operation, name))
    });
    Operation { outer }
}

/// See [`operation`].
pub struct Operation {
    outer: Option<&'static str>,
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(outer) = self.outer {
            RUN.with(|run| {
                if let Some(r) = run.borrow_mut().as_mut() {
                    r.operation = outer;
                }
            });
        }
    }
}

/// Runs `job` as a job run: the locks recorded meanwhile on this thread ([`record`]) are
/// returned with its result, and [`patiently`] waits within `stop`'s budget.
pub fn during_run<T>(stop: Stop, job: impl FnOnce() -> T) -> (T, Vec<Hold>) {
    let outer = RUN.with(|run| {
        run.borrow_mut().replace(Run {
            holds: Vec::new(),
            stop,
            operation: "",
        })
    });
    let value = job();
    let run = RUN.with(|run| std::mem::replace(&mut *run.borrow_mut(), outer));
    (value, run.map(|r| r.holds).unwrap_or_default())
}

/// Records a lock of the current run that held the gateway's writers off for `held`, with
/// `bytes` copied under it (0 unless the lock's bound grows with the database, as a
/// snapshot's does). The pacer records its own locks; this is the one call for a lock taken
/// outside it. Outside a run (benchmarks, unit tests) it does nothing.
pub fn record(held: Duration, bytes: u64) {
    RUN.with(|run| {
        if let Some(run) = run.borrow_mut().as_mut() {
            let operation = run.operation;
            run.holds.push(Hold {
                held,
                bytes,
                operation,
            });
        }
    });
}

/// How long a run without a `timeout` waits, in all, for a gateway that keeps its lock.
pub const PATIENCE_WITHOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// The first pause before trying again after meeting the gateway's lock; it doubles.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two tries, so a shutdown is never kept waiting long.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The pause after the `tries`-th try in a row that met the gateway's lock (1, 2, ...): on top
/// of the busy timeout each try already waited, doubling from [`BACKOFF_FIRST`] up to
/// [`BACKOFF_MAX`].
fn backoff(tries: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The one rule for a busy gateway: runs `attempt` again, after a growing pause, as long as it
/// fails because the gateway kept its lock past our busy timeout ([`is_busy`]) and the run's
/// time budget lasts (its `timeout`; [`PATIENCE_WITHOUT_TIMEOUT`] without one). Then the run
/// fails, and the runner alerts. The gateway's writes go first: we never push in.
pub fn patiently<T>(
    what: &str,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let stop = RUN
        .with(|run| run.borrow().as_ref().map(|r| r.stop.clone()))
        .unwrap_or_default();
    let began = Instant::now();
    let mut tries = 0u32;
    loop {
        let e = match attempt() {
            Err(e) if is_busy(&e) => e,
            other => return other,
        };
        tries += 1;
        let gave_up = match stop.check() {
            Err(Stopped::Timeout) => Some("the job's `timeout` ran out".to_string()),
            Err(Stopped::Shutdown) => Some("the daemon is shutting down".to_string()),
            Ok(()) if stop.deadline().is_none() && began.elapsed() >= PATIENCE_WITHOUT_TIMEOUT => {
                Some(format!(
                    "the job has no `timeout` and {} s passed",
                    PATIENCE_WITHOUT_TIMEOUT.as_secs()
                ))
            }
            Ok(()) => None,
        };
        if let Some(why) = gave_up {
            return Err(e.context(format!(
                "{what} on the gateway database: another connection kept it locked through {tries} waits of gateway.busy_timeout over {:.1} s; gave up because {why}. Look for a process holding a long transaction on it, or give the job a longer `timeout` (docs/design.md, \"A busy gateway\")",
                began.elapsed().as_secs_f64()
            )));
        }
        let pause = backoff(tries);
        tracing::info!(
            tries,
            pause_ms = pause.as_millis() as u64,
            "{what}: the gateway kept its lock past our busy timeout; trying again after a pause"
        );
        let pause = match stop.deadline() {
            Some(deadline) => pause.min(deadline.saturating_duration_since(Instant::now())),
            None => pause,
        };
        sleep(pause);
    }
}

/// A gateway backend's "the gateway kept its lock past our timeout", wrapping the engine's own
/// error: PostgreSQL's `lock_timeout` (SQLSTATE 55P03) is reported as this so that
/// [`patiently`] waits and tries again as it does for SQLite's busy errors, which are
/// recognised by their own code.
#[derive(Debug, thiserror::Error)]
#[error("the gateway kept a lock past our lock timeout")]
pub struct LockTimedOut(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Whether `e` says the gateway kept its lock past our busy timeout.
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<LockTimedOut>()
            || cause
                .downcast_ref::<rusqlite::Error>()
                .is_some_and(crate::sqlite::is_busy)
    })
}

/// A run's locks in a few figures: how many, their median, 99th percentile and longest, and
/// their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStats {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub total: Duration,
}

/// The figures of `holds` (nearest-rank percentiles: the smallest hold that at least that share
/// of the holds does not exceed).
pub fn lock_stats(holds: &[Duration]) -> LockStats {
    let mut sorted = holds.to_vec();
    sorted.sort_unstable();
    let rank = |share: f64| -> Duration {
        let n = sorted.len();
        let k = ((share * n as f64).ceil() as usize).clamp(1, n);
        sorted[k - 1]
    };
    if sorted.is_empty() {
        return LockStats::default();
    }
    LockStats {
        count: sorted.len() as u64,
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
        total: sorted.iter().sum(),
    }
}

impl std::fmt::Display for LockStats {
    /// `gateway locks: 120, p50 3.1 ms, p99 14.2 ms, max 15.3 ms`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::duration;
        write!(
            f,
            "gateway locks: {}, p50 {}, p99 {}, max {}",
            self.count,
            duration(self.p50),
            duration(self.p99),
            duration(self.max)
        )
    }
}

/// The longest lock the docs promise for a job kind, on a 2-core machine under load: a fixed
/// part and, for a lock that copies the database (a snapshot), a part per GiB copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub fixed: Duration,
    pub per_gib: Duration,
}

impl Bound {
    /// The bound for a lock under which `bytes` were copied.
    pub fn for_bytes(&self, bytes: u64) -> Duration {
        self.fixed + self.per_gib.mul_f64(bytes as f64 / (1u64 << 30) as f64)
    }
}

/// How much longer a lock that stops by [`HOLD_LIMIT`] idle may get on a loaded 2-core machine:
/// the thread holding it is scheduled out behind other work. Measured: the archive's locks held
/// 42-52 ms under the real Apantli's load at 30 requests/s (reads 28.6 ms), and up to 111.8 ms
/// (p99 79.1 ms) with the machine three times oversubscribed (docs/benchmarks.md, "Locks
/// under load").
pub const LOAD_FACTOR: u32 = 8;
/// The fixed part of a lock that reads the whole database: opening, the schema, the first pages.
const WHOLE_DATABASE: Duration = Duration::from_millis(100);

/// The bound the docs (docs/jobs/*.md, "Locks") promise for each job kind's locks under load,
/// or `None` for a kind that takes no lock on the gateway. One table: the docs quote it.
pub fn bound(kind: &str) -> Option<Bound> {
    let fixed = |d: Duration| Bound {
        fixed: d,
        per_gib: Duration::ZERO,
    };
    match kind {
        // Reads and deletes stop by HOLD_LIMIT idle.
        "archive" => Some(fixed(HOLD_LIMIT * LOAD_FACTOR)),
        // Reads stop by HOLD_LIMIT; batches are not cut short inside a transaction and are
        // never meant to exceed pricing's MAX_LOCK (50 ms) idle (57.5 ms under the real
        // Apantli's load, up to 99.9 ms with the machine three times oversubscribed): 4 times
        // that (pricing's tests hold the two together).
        "pricing" => Some(fixed(Duration::from_millis(200))),
        // ANALYZE with a bounded sample (45-54 ms idle), checkpoints with 50 ms busy timeouts.
        "maintenance" => Some(fixed(Duration::from_millis(250))),
        // The snapshot reads the file into memory under the lock: 0.2-0.3 s per GB idle,
        // 0.78 s/GB under the real Apantli's load, up to 1.05 s/GB in our loaded benchmarks.
        "backup" => Some(Bound {
            fixed: WHOLE_DATABASE,
            per_gib: Duration::from_millis(1_500),
        }),
        // On a copy, the snapshot's lock; live (`quick` on a rollback journal by default), the
        // whole check: 0.7 s per GB idle, up to 2.2 s/GB loaded. A `full` check live
        // (`copy: never`) takes up to 4.5 s/GB and is warned about.
        "integrity" => Some(Bound {
            fixed: WHOLE_DATABASE,
            per_gib: Duration::from_millis(3_000),
        }),
        _ => None,
    }
}

/// The locks of `holds` that exceeded the bound `bound` gives for their operation, as (held,
/// its bound); a lock whose operation has no bound is not judged.
pub fn over_bound(
    bound: impl Fn(&str) -> Option<Bound>,
    holds: &[Hold],
) -> Vec<(Duration, Duration)> {
    holds
        .iter()
        .filter_map(|h| Some((h.held, bound(h.operation)?.for_bytes(h.bytes))))
        .filter(|(held, limit)| held > limit)
        .collect()
}

/// SQLite's counter of commits by other connections.
fn data_version(conn: &Connection) -> anyhow::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .context("reading PRAGMA data_version of the gateway database")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_lock_timeout_is_busy_whatever_context_it_carries() {
        let pg = std::io::Error::other("canceling statement due to lock timeout");
        let e = anyhow::Error::new(LockTimedOut(Box::new(pg))).context("reading rows");
        assert!(is_busy(&e));
        assert!(format!("{e:#}").contains("lock timeout"), "{e:#}");
        assert!(!is_busy(&anyhow::anyhow!("no such column: x")));
    }

    #[test]
    fn a_write_is_timed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let mut pacer = Pacer::new(&conn).unwrap();
        assert!(!pacer.is_wal());
        let (n, held) = pacer
            .write(&mut conn, |tx| {
                Ok(tx.execute("INSERT INTO t VALUES (1)", [])?)
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(pacer.transactions(), 1);
        assert_eq!(pacer.longest(), held);
    }

    #[test]
    fn the_room_covers_the_busy_handlers_tries() {
        let ms = Duration::from_millis;
        // (lock held, room after it): the gaps between tries 0-2, 1-3, 2-4, 3-5, 4-6 of the
        // busy handler, plus the slack.
        for (held, expected) in [(0, 6), (2, 10), (5, 18), (16, 28), (18, 38), (40, 48)] {
            assert_eq!(room(ms(held)), ms(expected), "{held} ms");
        }
    }

    /// A rollback-journal database with a table, a pacer on it, and where the journal of a
    /// gateway transaction would be.
    fn paced_db() -> (tempfile::TempDir, Connection, Pacer, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let pacer = Pacer::new(&conn).unwrap();
        let journal = dir.path().join("t.db-journal");
        (dir, conn, pacer, journal)
    }

    #[test]
    fn no_lock_is_taken_while_a_gateway_transaction_writes() {
        let (_dir, conn, mut pacer, journal) = paced_db();
        // A gateway transaction in progress, committing 30 ms from now.
        std::fs::write(&journal, b"").unwrap();
        let commit = std::thread::spawn(move || {
            sleep(Duration::from_millis(30));
            let at = Instant::now();
            std::fs::remove_file(&journal).unwrap();
            at
        });
        let (read_at, _) = pacer.read(&conn, |_| Ok(Instant::now())).unwrap();
        assert!(read_at >= commit.join().unwrap());
    }

    #[test]
    fn a_gateway_transaction_is_owed_room_like_ours() {
        let (_dir, conn, mut pacer, journal) = paced_db();
        // A gateway transaction that wrote for 12 ms and has just committed.
        std::fs::write(&journal, b"").unwrap();
        sleep(Duration::from_millis(12));
        std::fs::remove_file(&journal).unwrap();
        let committed = Instant::now();
        let (read_at, _) = pacer.read(&conn, |_| Ok(Instant::now())).unwrap();
        // 28 ms are owed; even with the watcher's report a few ms late, more than the 18 ms
        // owed after a 3 ms lock.
        let waited = read_at - committed;
        assert!(waited >= Duration::from_millis(18), "{waited:?}");
    }

    #[test]
    fn a_lock_after_a_write_waits_for_the_room_owed_to_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let mut pacer = Pacer::new(&conn).unwrap();
        let (worked, held) = pacer
            .write(&mut conn, |tx| {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(Instant::now())
            })
            .unwrap();
        // The room is counted from the lock's release, after `worked`; a read waits for it,
        // and so does the next write.
        let (read_at, _) = pacer.read(&conn, |_| Ok(Instant::now())).unwrap();
        assert!(read_at - worked >= room(held));
        let (write_at, _) = pacer.write(&mut conn, |_| Ok(Instant::now())).unwrap();
        assert!(write_at - worked >= room(held));
        assert_eq!(pacer.transactions(), 2);
    }

    #[test]
    fn lock_stats_are_nearest_rank_percentiles() {
        let ms = Duration::from_millis;
        let ms_list = |v: &[u64]| v.iter().map(|&m| ms(m)).collect::<Vec<_>>();
        // (holds in ms, [count, p50, p99, max, total])
        let hundred: Vec<u64> = (1..=100).rev().collect();
        let table: [(&[u64], [u64; 5]); 6] = [
            (&[], [0, 0, 0, 0, 0]),
            (&[7], [1, 7, 7, 7, 7]),
            (&[9, 1], [2, 1, 9, 9, 10]),
            (&[4, 1, 3, 2], [4, 2, 4, 4, 10]),
            (&[5, 1, 3], [3, 3, 5, 5, 9]),
            (&hundred, [100, 50, 99, 100, 5050]),
        ];
        for (holds, [count, p50, p99, max, total]) in table {
            assert_eq!(
                lock_stats(&ms_list(holds)),
                LockStats {
                    count,
                    p50: ms(p50),
                    p99: ms(p99),
                    max: ms(max),
                    total: ms(total),
                },
                "{holds:?}"
            );
        }
        // One long lock among 200 short ones is past the 99th percentile, and is the max.
        let mut many = vec![ms(3); 200];
        many.push(ms(80));
        let stats = lock_stats(&many);
        assert_eq!((stats.p99, stats.max), (ms(3), ms(80)));
        assert_eq!(
            stats.to_string(),
            "gateway locks: 201, p50 3 ms, p99 3 ms, max 80 ms"
        );
    }

    #[test]
    fn each_kind_has_its_bound_and_longer_locks_are_found() {
        let ms = Duration::from_millis;
        assert_eq!(
            bound("archive").unwrap().for_bytes(0),
            HOLD_LIMIT * LOAD_FACTOR
        );
        assert_eq!(bound("logrotate"), None);
        assert_eq!(bound("verify"), None);
        let snapshot = bound("backup").unwrap();
        assert!(bound("integrity").unwrap().per_gib > snapshot.per_gib);
        // A snapshot's bound grows with what it copies: 1 GiB more, `per_gib` more.
        assert_eq!(
            snapshot.for_bytes(1 << 30) - snapshot.for_bytes(0),
            snapshot.per_gib
        );
        let archive = bound("archive").unwrap();
        let limit = HOLD_LIMIT * LOAD_FACTOR;
        let holds = [
            Hold {
                held: ms(10),
                bytes: 0,
                operation: "",
            },
            Hold {
                held: limit,
                bytes: 0,
                operation: "",
            },
            Hold {
                held: limit + ms(1),
                bytes: 0,
                operation: "",
            },
        ];
        assert_eq!(
            over_bound(|_| Some(archive), &holds),
            vec![(limit + ms(1), limit)]
        );
        // (held, bytes copied): within the snapshot's bound or not.
        let half_gib = 1 << 29;
        let within = snapshot.for_bytes(half_gib);
        let holds = [
            Hold {
                held: within,
                bytes: half_gib,
                operation: "",
            },
            Hold {
                held: within + ms(1),
                bytes: half_gib,
                operation: "",
            },
        ];
        assert_eq!(
            over_bound(|_| Some(snapshot), &holds),
            vec![(within + ms(1), within)]
        );
    }

    #[test]
    fn the_pause_between_tries_doubles_up_to_its_cap() {
        let ms = Duration::from_millis;
        for (tries, pause) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ] {
            assert_eq!(backoff(tries), ms(pause), "{tries}");
        }
    }

    #[test]
    fn a_run_collects_the_locks_recorded_on_its_thread() {
        let (_dir, conn, mut pacer, _) = paced_db();
        record(Duration::from_millis(5), 0); // outside a run: dropped
        let ((), holds) = during_run(Stop::default(), || {
            pacer.read(&conn, |_| Ok(())).unwrap();
            record(Duration::from_millis(40), 1 << 20);
            let _vacuum = operation("vacuum");
            pacer.statement(&conn, |_| Ok(())).unwrap();
        });
        assert_eq!(holds.len(), 3, "{holds:?}");
        assert_eq!(
            holds[1],
            Hold {
                held: Duration::from_millis(40),
                bytes: 1 << 20,
                operation: "",
            }
        );
        // The locks taken while an operation is named are that operation's.
        assert_eq!(
            holds.iter().map(|h| h.operation).collect::<Vec<_>>(),
            ["", "", "vacuum"]
        );
        let ((), after) = during_run(Stop::default(), || {});
        assert!(after.is_empty());
    }

    /// A database with a table, a connection of ours with a short busy timeout, and a second
    /// connection holding an exclusive lock on it until told to commit.
    fn locked_db() -> (
        tempfile::TempDir,
        Connection,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        conn.busy_timeout(Duration::from_millis(20)).unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let _ = released.recv();
            holder.execute_batch("COMMIT").unwrap();
        });
        (dir, conn, release, handle)
    }

    const INSERT: &str = "BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT";

    #[test]
    fn a_busy_gateway_is_waited_for_within_the_budget() {
        let (_dir, conn, release, holder) = locked_db();
        let mut tries = 0;
        let stop = Stop::new(Arc::default(), Some(Duration::from_secs(60)));
        let (result, _) = during_run(stop, || {
            patiently("writing", || {
                tries += 1;
                let result = conn.execute_batch(INSERT);
                if result.is_err() {
                    // The gateway lets go once we have met its lock.
                    let _ = conn.execute_batch("ROLLBACK");
                    let _ = release.send(());
                }
                Ok(result?)
            })
        });
        holder.join().unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(tries >= 2, "{tries}");
    }

    #[test]
    fn a_busy_gateway_fails_the_run_when_the_budget_runs_out() {
        let (_dir, conn, release, holder) = locked_db();
        let stop = Stop::new(Arc::default(), Some(Duration::from_millis(300)));
        let (result, _) = during_run(stop, || {
            patiently("writing", || Ok(conn.execute_batch(INSERT)?))
        });
        release.send(()).unwrap();
        holder.join().unwrap();
        let e = format!("{:#}", result.unwrap_err());
        assert!(
            e.contains("another connection kept it locked through"),
            "{e}"
        );
        assert!(
            e.contains("gave up because the job's `timeout` ran out"),
            "{e}"
        );
        // Any other error is not waited for.
        let mut tries = 0;
        let other = patiently("reading", || {
            tries += 1;
            Ok(conn.execute_batch("SELECT * FROM missing")?)
        });
        assert!(other.is_err());
        assert_eq!(tries, 1);
    }

    #[test]
    fn another_connections_commit_ends_the_wait_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .unwrap();
        let mut pacer = Pacer::new(&conn).unwrap();
        assert!(pacer.is_wal());
        let writer = std::thread::spawn(move || {
            let other = Connection::open(&path).unwrap();
            other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        });
        pacer
            .write(&mut conn, |tx| {
                Ok(tx.execute("INSERT INTO t VALUES (2)", [])?)
            })
            .unwrap();
        writer.join().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
