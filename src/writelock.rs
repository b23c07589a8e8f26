//! Write transactions on the gateway's database that the gateway barely notices: started in a
//! gap between its commits, kept short, timed, and followed by room for the gateway.
//!
//! The two gateways wait differently. Apantli (rollback journal) retries a locked write with
//! SQLite's busy handler for up to 5 s, sleeping 1, 2, 5, 10, 15, 20, 25, 25, 25, 50 ms between
//! tries: it tries again 1, 3, 8, 18, 33, 53 ms after it first met the lock. A writer that meets
//! our write lock at its start must find the database free by its try at 33 ms, or it waits
//! 53 ms. So our locks are short (the archive aims at 15 ms), and after each write we leave the
//! gateway room before our next lock of any kind ([`room`]): longer than the busy handler's
//! sleep at that point, and reaching 36 ms past the lock's start, so that a writer that loses
//! its try at 18 ms to another gateway writer (several wake at once) still gets in at 33 ms.
//! Reads count as locks here: a writer whose try lands in a read right after our write takes
//! the PENDING lock and sleeps again, 15 ms or more, before it can commit.
//!
//! BobaMixer (WAL) has no busy timeout at all: an insert that meets our write lock fails at
//! once. There we wait until the gateway has just committed and then stayed quiet for a moment,
//! and start right then: a gateway that records after each completed LLM call rarely writes
//! again within milliseconds of its last write.

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
/// The least room left to the gateway after each of our write transactions before our next lock
/// (rollback journal): longer than the busy handler's sleeps up to its try at 33 ms (15 ms at
/// most).
const MIN_PAUSE: Duration = Duration::from_millis(15);
/// How far past the start of our write lock the room after it reaches at least: past a waiting
/// writer's try at 33 ms, with 3 ms for sleeps that overshoot.
const COVER: Duration = Duration::from_millis(36);

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
    /// When our last write lock was released (rollback journal: the room after it starts here).
    released: Option<Instant>,
    /// WAL: the gateway's commit counter when we last looked, when it last changed, and
    /// whether it changed since our last transaction.
    version: Option<i64>,
    changed: Instant,
    fresh_commit: bool,
}

impl Pacer {
    pub fn new(conn: &Connection) -> anyhow::Result<Pacer> {
        Ok(Pacer {
            wal: journal_mode(conn)? == "wal",
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
    /// a rollback journal), after the room owed to the gateway since our last write, and returns
    /// its result with how long it took. It must be short; no room is owed after it: a writer
    /// that arrives during our read takes the PENDING lock, and our next lock waits for its
    /// commit. With WAL a read never blocks the gateway and is only timed.
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
        Ok((value, began.elapsed()))
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

    /// Rollback journal: sleeps until the room after our last write lock has passed. Work done
    /// meanwhile counts as room.
    fn leave_room(&self) {
        if let Some(released) = self.released {
            let due = released + room(self.last_hold);
            let now = Instant::now();
            if due > now {
                sleep(due - now);
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

/// The room owed to the gateway after a write lock held for `held` (rollback journal): at least
/// [`MIN_PAUSE`], at least `held` (the busy handler's sleep in progress when the lock ends is
/// never longer than the time the writer has waited), and reaching [`COVER`] past the lock's
/// start.
fn room(held: Duration) -> Duration {
    held.max(MIN_PAUSE).max(COVER.saturating_sub(held))
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
        // (lock held, room after it)
        for (held, expected) in [(1, 35), (15, 21), (18, 18), (20, 20), (60, 60)] {
            assert_eq!(room(ms(held)), ms(expected), "{held} ms");
        }
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
