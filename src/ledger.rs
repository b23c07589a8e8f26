//! What caretaker itself took out of the gateway database: rows the archive purged, space a
//! VACUUM gave back.
//!
//! The backup's shrink guard holds an archive whose rows or bytes fell sharply against the last
//! good one, since an emptied or replaced database must not push good backups out. But the
//! archive job's first big purge, or a VACUUM after it, shrinks the database on purpose: the
//! guard subtracts what this ledger says we removed since its baseline, so our own work never
//! holds a backup (and an accident still does). Each entry is one insert into the state
//! database, so jobs that record at the same time never lose each other's entries.

use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::state::{State, millis};

/// How long entries are kept: far longer than any baseline a shrink guard compares with.
const KEEP_DAYS: i64 = 400;

/// What caretaker removed from the gateway database since a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Rows deleted from the gateway's request table.
    pub rows: u64,
    /// Whether a VACUUM of ours gave space back (the file's size then says nothing).
    pub vacuumed: bool,
}

/// Records `rows` deleted from the gateway's request table at `at`.
pub fn purged(state: &State, at: DateTime<Utc>, rows: u64) -> anyhow::Result<()> {
    record(state, at, rows, false)
}

/// Records that a VACUUM (full or incremental) gave pages back at `at`.
pub fn vacuumed(state: &State, at: DateTime<Utc>) -> anyhow::Result<()> {
    record(state, at, 0, true)
}

fn record(state: &State, at: DateTime<Utc>, rows: u64, vacuum: bool) -> anyhow::Result<()> {
    let conn = state.conn();
    conn.execute(
        "INSERT INTO removals (at, rows, vacuum) VALUES (?1, ?2, ?3)",
        params![millis(at), rows as i64, vacuum],
    )?;
    conn.execute(
        "DELETE FROM removals WHERE at < ?1",
        params![millis(at - chrono::Duration::days(KEEP_DAYS))],
    )?;
    Ok(())
}

/// What caretaker removed after `since`.
pub fn since(state: &State, since: DateTime<Utc>) -> anyhow::Result<Removed> {
    let (rows, vacuumed): (i64, bool) = state.conn().query_row(
        "SELECT coalesce(sum(rows), 0), coalesce(max(vacuum), 0) FROM removals WHERE at > ?1",
        params![millis(since)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Removed {
        rows: rows.max(0) as u64,
        vacuumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn what_was_removed_after_a_moment_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let t = |h| Utc.with_ymd_and_hms(2026, 3, 29, h, 0, 0).unwrap();
        assert_eq!(since(&state, t(0)).unwrap(), Removed::default());
        purged(&state, t(1), 500).unwrap();
        purged(&state, t(3), 200).unwrap();
        vacuumed(&state, t(4)).unwrap();
        let cases = [
            (t(0), 700, true),
            (t(1), 200, true),
            (t(3), 0, true),
            (t(4), 0, false),
        ];
        for (after, rows, vacuumed) in cases {
            assert_eq!(
                since(&state, after).unwrap(),
                Removed { rows, vacuumed },
                "after {after}"
            );
        }
        // Old entries go once they can no longer matter.
        purged(&state, t(5) + chrono::Duration::days(KEEP_DAYS + 1), 1).unwrap();
        assert_eq!(since(&state, t(0)).unwrap().rows, 1);
    }
}
