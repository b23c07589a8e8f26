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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior};

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
    pub fn new(conn: &Connection) -> anyhow::Result<Pacer> {
        let mode = journal_mode(conn)?;
        // Only a journal deleted at each commit tells, by being there, that a transaction is
        // writing; `truncate` and `persist` leave theirs in place.
        let journal = (mode == "delete")
            .then(|| conn.path().filter(|p| !p.is_empty()))
            .flatten()
            .map(|p| JournalWatch::new(crate::backup::sqlite_companion(Path::new(p), "-journal")));
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
    /// timeout) is not counted: the gateway is not blocked while we wait.
    pub fn write<T>(
        &mut self,
        conn: &mut Connection,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        self.wait_for_gap(conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("taking the write lock on the gateway database (BEGIN IMMEDIATE)")?;
        let began = Instant::now();
        let value = work(&tx)?;
        tx.commit()
            .context("committing a write transaction on the gateway database")?;
        Ok((value, self.held(began)))
    }

    /// Runs `work`, a read transaction (a shared lock that holds off the gateway's commits with
    /// a rollback journal), after the room owed to the gateway since our last lock, and returns
    /// its result with how long it took. It must stop by [`HOLD_LIMIT`]; the room after it is
    /// owed like after a write. With WAL a read never blocks the gateway and is only timed.
    pub fn read<T>(
        &mut self,
        conn: &Connection,
        work: impl FnOnce(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
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
        }
        Ok((value, now - began))
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
    /// for a gap, counting it like a transaction.
    pub fn statement<T>(
        &mut self,
        conn: &Connection,
        work: impl FnOnce(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        self.wait_for_gap(conn)?;
        let began = Instant::now();
        let value = work(conn)?;
        Ok((value, self.held(began)))
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

/// SQLite's counter of commits by other connections.
fn data_version(conn: &Connection) -> anyhow::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .context("reading PRAGMA data_version of the gateway database")
}

#[cfg(test)]
mod tests {
    use super::*;

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
