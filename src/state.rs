//! `state_dir/state.db`: run history, schedule bookkeeping, job progress, the alert outbox.
//!
//! This is caretaker's own SQLite file, never the gateway's. The daemon and `run-job` share
//! it, so it runs in WAL mode with a generous busy timeout.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    result TEXT NOT NULL DEFAULT 'running',
    summary TEXT,
    error TEXT,
    figures TEXT
);
CREATE INDEX IF NOT EXISTS runs_job ON runs(job, id);
CREATE TABLE IF NOT EXISTS schedule (
    job TEXT PRIMARY KEY,
    last_due INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE TABLE IF NOT EXISTS removals (
    at INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    vacuum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_state (
    key TEXT PRIMARY KEY,
    active INTEGER NOT NULL,
    last_sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    resolved INTEGER NOT NULL,
    severity TEXT NOT NULL,
    job TEXT,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    outbox_id INTEGER NOT NULL REFERENCES outbox(id),
    sink TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at INTEGER,
    gave_up INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (outbox_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up = 0;
";

pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Why a run is `interrupted`.
const INTERRUPTED: &str = "the process running it ended during the run (killed or crashed); the job left no partial output that looks valid and runs again at its next time";

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// One finished or running job run, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub result: String,
    pub summary: Option<String>,
    pub error: Option<String>,
}

impl RunRecord {
    /// The run as it stands, given whether a process holds its job's lock: one still
    /// `running` with no process behind it was interrupted (the daemon or `run-job` running it
    /// was killed); the daemon records it so at its next start, `status` shows it so now.
    pub fn settled(mut self, job_running: bool) -> RunRecord {
        if self.result == "running" && !job_running {
            self.result = "interrupted".into();
            self.error = Some(INTERRUPTED.into());
        }
        self
    }

    pub fn duration(&self) -> Option<Duration> {
        self.ended_at
            .and_then(|e| (e - self.started_at).to_std().ok())
    }
}

/// Makes `db` (and a `-wal` or `-shm` an older version left world-readable) mode 0600 before
/// SQLite opens it. SQLite creates a database's `-wal` and `-shm` with the mode of the
/// database file, so a database that is private before its first open has private companions
/// from their first byte, whoever opens it later (an operator's `sqlite3` too). A umask would
/// only cover this process, and all of its threads and files at once (the metrics file is
/// meant to be world-readable), so it is not used.
fn private_database(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = std::fs::Permissions::from_mode(0o600);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(db)
        .with_context(|| {
            format!(
                "opening the state database {} (check state_dir and its permissions)",
                db.display()
            )
        })?;
    file.set_permissions(private.clone())
        .with_context(|| format!("making {} private (mode 0600)", db.display()))?;
    for suffix in [crate::sqlite::WAL, crate::sqlite::SHM] {
        let companion = crate::sqlite::companion(db, suffix);
        match std::fs::set_permissions(&companion, private.clone()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| {
                    format!("making {} private (mode 0600)", companion.display())
                });
            }
            _ => {}
        }
    }
    Ok(())
}

impl State {
    pub fn open(state_dir: &Path) -> anyhow::Result<State> {
        crate::fsx::private_dir(state_dir)?;
        let path = state_dir.join("state.db");
        private_database(&path)?;
        let conn = crate::sqlite::open_or_create(&path).with_context(|| {
            format!(
                "opening the state database {} (check state_dir and its permissions)",
                path.display()
            )
        })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("setting WAL mode on {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the tables of {}", path.display()))?;
        Ok(State {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for modules that keep their own tables' logic (alerts).
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic),
        // so a poisoned lock is safe to take over.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn run_started(&self, job: &str, trigger: &str, at: DateTime<Utc>) -> anyhow::Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (job, trigger, started_at) VALUES (?1, ?2, ?3)",
            params![job, trigger, millis(at)],
        )
        .context("recording the start of a run in the state database")?;
        Ok(conn.last_insert_rowid())
    }

    pub fn run_finished(
        &self,
        id: i64,
        at: DateTime<Utc>,
        result: &str,
        summary: &str,
        error: Option<&str>,
        figures: &[(String, f64)],
    ) -> anyhow::Result<()> {
        let figures = serde_json::to_string(figures)?;
        self.conn()
            .execute(
                "UPDATE runs SET ended_at = ?2, result = ?3, summary = ?4, error = ?5, figures = ?6 WHERE id = ?1",
                params![id, millis(at), result, summary, error, figures],
            )
            .context("recording the end of a run in the state database")?;
        Ok(())
    }

    /// Runs left `running` by a process that died: they did not finish. A run whose job lock
    /// is held (a `run-job` beside a daemon that starts) is still going and is left alone.
    pub fn close_interrupted_runs(&self, at: DateTime<Utc>) -> anyhow::Result<usize> {
        let running: Vec<(i64, String)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT id, job FROM runs WHERE result = 'running'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let state_dir = self.path.parent().unwrap_or(Path::new("."));
        let mut closed = 0;
        for (id, job) in running {
            if crate::locks::job_running(state_dir, &job)? {
                continue;
            }
            closed += self.conn().execute(
                "UPDATE runs SET ended_at = ?2, result = 'interrupted', error = ?3 WHERE id = ?1 AND result = 'running'",
                params![id, millis(at), INTERRUPTED],
            )?;
        }
        Ok(closed)
    }

    /// The last run of `job` as it stands: see [`RunRecord::settled`].
    pub fn last_run_settled(&self, job: &str) -> anyhow::Result<Option<RunRecord>> {
        let Some(run) = self.last_run(job)? else {
            return Ok(None);
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let running = run.result == "running" && crate::locks::job_running(dir, job)?;
        Ok(Some(run.settled(running)))
    }

    pub fn last_run(&self, job: &str) -> anyhow::Result<Option<RunRecord>> {
        self.runs_where("job = ?1 ORDER BY id DESC LIMIT 1", params![job])
            .map(|mut v| v.pop())
    }

    pub fn last_success(&self, job: &str) -> anyhow::Result<Option<RunRecord>> {
        self.runs_where(
            "job = ?1 AND result = 'ok' ORDER BY id DESC LIMIT 1",
            params![job],
        )
        .map(|mut v| v.pop())
    }

    pub fn runs_of(&self, job: &str, limit: usize) -> anyhow::Result<Vec<RunRecord>> {
        self.runs_where(
            "job = ?1 ORDER BY id DESC LIMIT ?2",
            params![job, limit as i64],
        )
    }

    fn runs_where(
        &self,
        clause: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> anyhow::Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, job, trigger, started_at, ended_at, result, summary, error FROM runs WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params, |r| {
            Ok(RunRecord {
                id: r.get(0)?,
                job: r.get(1)?,
                trigger: r.get(2)?,
                started_at: from_millis(r.get(3)?),
                ended_at: r.get::<_, Option<i64>>(4)?.map(from_millis),
                result: r.get(5)?,
                summary: r.get(6)?,
                error: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last scheduled time a job was run or deliberately passed over.
    pub fn last_due(&self, job: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_due FROM schedule WHERE job = ?1",
                params![job],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(from_millis))
    }

    pub fn set_last_due(&self, job: &str, due: DateTime<Utc>) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO schedule (job, last_due) VALUES (?1, ?2)
             ON CONFLICT(job) DO UPDATE SET last_due = MAX(last_due, excluded.last_due)",
            params![job, millis(due)],
        )?;
        Ok(())
    }

    /// Small JSON documents a job keeps between runs (progress, per-file state, sent budget
    /// thresholds), namespaced by job.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        ns: &str,
        key: &str,
    ) -> anyhow::Result<Option<T>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT value FROM kv WHERE ns = ?1 AND key = ?2",
                params![ns, key],
                |r| r.get(0),
            )
            .optional()?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t).map(Some).with_context(|| {
                format!("reading state `{ns}/{key}` from {}", self.path.display())
            }),
        }
    }

    pub fn put<T: Serialize>(&self, ns: &str, key: &str, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string(value)?;
        self.conn().execute(
            "INSERT INTO kv (ns, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value",
            params![ns, key, text],
        )?;
        Ok(())
    }

    pub fn remove(&self, ns: &str, key: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "DELETE FROM kv WHERE ns = ?1 AND key = ?2",
            params![ns, key],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_recorded_and_interrupted_ones_closed() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        let id = state.run_started("b", "schedule", t0).unwrap();
        state
            .run_finished(
                id,
                t0 + chrono::Duration::seconds(3),
                "ok",
                "done",
                None,
                &[("bytes".into(), 5.0)],
            )
            .unwrap();
        state.run_started("b", "signal", t0).unwrap();
        // Still going in another process: its job lock is held.
        let held = crate::locks::try_job(dir.path(), "b").unwrap().unwrap();
        assert_eq!(
            state.last_run_settled("b").unwrap().unwrap().result,
            "running"
        );
        assert_eq!(state.close_interrupted_runs(t0).unwrap(), 0);
        drop(held);
        assert_eq!(
            state.last_run_settled("b").unwrap().unwrap().result,
            "interrupted"
        );
        assert_eq!(state.last_run("b").unwrap().unwrap().result, "running");
        assert_eq!(state.close_interrupted_runs(t0).unwrap(), 1);
        assert_eq!(state.last_run("b").unwrap().unwrap().result, "interrupted");
        let ok = state.last_success("b").unwrap().unwrap();
        assert_eq!(ok.duration(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_state_database_and_its_wal_and_shm_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .permissions()
                .mode()
                & 0o777
        };
        let state = State::open(dir.path()).unwrap();
        state.put("k", "v", &1).unwrap();
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            assert_eq!(mode(name), 0o600, "{name}");
        }
        drop(state);
        // Companions an older version left world-readable are made private at the next open.
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let path = dir.path().join(name);
            if !path.exists() {
                std::fs::write(&path, b"").unwrap();
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let state = State::open(dir.path()).unwrap();
        state.put("k", "v", &2).unwrap();
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            assert_eq!(mode(name), 0o600, "{name}");
        }
    }

    #[test]
    fn last_due_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        state.set_last_due("j", t).unwrap();
        state
            .set_last_due("j", t - chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(state.last_due("j").unwrap(), Some(t));
    }

    #[test]
    fn kv_round_trips_json() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        state.put("archive", "progress", &vec![1, 2, 3]).unwrap();
        assert_eq!(
            state.get::<Vec<i32>>("archive", "progress").unwrap(),
            Some(vec![1, 2, 3])
        );
        state.remove("archive", "progress").unwrap();
        assert_eq!(state.get::<Vec<i32>>("archive", "progress").unwrap(), None);
    }
}
