//! The upload queue: files waiting for their copy on a remote, kept in the state database like the alert outbox.
//!
//! A job that publishes a file with `copy_to` queues one row per remote, in the same process
//! and before its run ends; [`process`] then uploads what is due, from `run-job` right after
//! the run and from the daemon's upload loop (both in the upload service, `uploads`). A row
//! stays until its upload is complete and checked, so a crash, a restart or an unreachable remote loses none: the next pass retries
//! it, with backoff after failures. Rows are unique by (remote, key), so queueing a file twice
//! uploads it once. One process uploads to a remote at a time (a lock per remote in
//! `state_dir`, released by the kernel when its holder dies). A row that keeps failing raises
//! one alert per remote, resolved by the first pass that leaves none failing. While a row
//! waits, its local file is not deleted by backup retention, `keep_local` or logrotate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::client::Client;
use super::{Remote, Remotes};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::state::{State, from_millis, millis};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    remote TEXT NOT NULL,
    job TEXT NOT NULL,
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    -- When the upload completed and was checked; NULL while it waits.
    done_at INTEGER,
    -- 1: `path` is a link made for the upload only (logrotate's), removed once uploaded.
    spool INTEGER NOT NULL DEFAULT 0,
    UNIQUE (remote, key)
);
CREATE INDEX IF NOT EXISTS uploads_path ON uploads(path);
";

/// Failed attempts of one row after which its remote's alert is raised.
pub const ALERT_AFTER: u32 = 3;

/// The key-value namespace of each remote's figures for `status`.
const STATS_NS: &str = "remote";

fn conn(state: &State) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
    let conn = state.conn();
    conn.execute_batch(SCHEMA)
        .context("creating the upload queue in the state database")?;
    Ok(conn)
}

/// `path` as the queue keeps it: absolute, so that a row queued by `run-job` in one directory
/// names the same file for the daemon and for the jobs that ask whether it waits.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `path` is among the [`waiting`] files.
pub fn waits(waiting: &BTreeSet<PathBuf>, path: &Path) -> bool {
    waiting.contains(&absolute(path))
}

/// The wait before the attempt after `failures` failed ones: 10 s, doubling, at most 1 h.
pub fn backoff(failures: u32) -> Duration {
    let secs = 10u64.saturating_mul(1u64 << failures.saturating_sub(1).min(12));
    Duration::from_secs(secs.min(3600))
}

/// Queues `path` for upload to `remote` under `key`; a row already waiting for the same key
/// stays as it is. Returns whether a row was added.
pub fn enqueue(
    state: &State,
    remote: &str,
    job: &str,
    path: &Path,
    key: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    enqueue_as(state, remote, job, path, key, now, false)
}

/// [`enqueue`]; with `spool`, `path` is a link made for this upload and removed after it.
pub fn enqueue_as(
    state: &State,
    remote: &str,
    job: &str,
    path: &Path,
    key: &str,
    now: DateTime<Utc>,
    spool: bool,
) -> anyhow::Result<bool> {
    let added = conn(state)?
        .execute(
            "INSERT OR IGNORE INTO uploads (remote, job, path, key, queued_at, next_attempt_at, spool)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![remote, job, absolute(path).to_string_lossy(), key, millis(now), spool],
        )
        .with_context(|| format!("queueing {} for remote `{remote}`", path.display()))?;
    Ok(added > 0)
}

/// Queues `path` for each of `remotes` (a job's `copy_to`), under `<prefix><job>/<file name>`.
pub fn enqueue_copies(
    state: &State,
    remotes: &Remotes,
    copy_to: &[String],
    job: &str,
    path: &Path,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    for name in copy_to {
        let remote = remotes
            .get(name)
            .with_context(|| format!("remote `{name}` is not in the jobs file"))?;
        enqueue(state, name, job, path, &remote.key(job, &file_name), now)?;
    }
    Ok(())
}

/// The local files that still wait for an upload: nothing may delete them.
pub fn waiting(state: &State) -> anyhow::Result<BTreeSet<PathBuf>> {
    let conn = conn(state)?;
    let mut stmt = conn.prepare("SELECT DISTINCT path FROM uploads WHERE done_at IS NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

/// Whether `path` has a completed upload to every one of `remotes` (and none waiting).
pub fn uploaded_everywhere(state: &State, path: &Path, remotes: &[String]) -> anyhow::Result<bool> {
    let conn = conn(state)?;
    let mut stmt =
        conn.prepare("SELECT remote, done_at IS NOT NULL FROM uploads WHERE path = ?1")?;
    let rows: Vec<(String, bool)> = stmt
        .query_map(params![absolute(path).to_string_lossy()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(!remotes.is_empty()
        && rows.iter().all(|(_, done)| *done)
        && remotes
            .iter()
            .all(|want| rows.iter().any(|(r, _)| r == want)))
}

/// Whether `path` has a row (waiting or done) for `remote`.
pub fn known(state: &State, path: &Path, remote: &str) -> anyhow::Result<bool> {
    let n: i64 = conn(state)?.query_row(
        "SELECT COUNT(*) FROM uploads WHERE path = ?1 AND remote = ?2",
        params![absolute(path).to_string_lossy(), remote],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Forgets the completed rows of local files that are gone (deleted by retention,
/// `keep_local`, or spooled and uploaded), so the table does not grow for ever.
fn forget_gone(state: &State) -> anyhow::Result<()> {
    let conn = conn(state)?;
    let done: Vec<(i64, String)> = {
        let mut stmt = conn.prepare("SELECT id, path FROM uploads WHERE done_at IS NOT NULL")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (id, path) in done {
        if !Path::new(&path).exists() {
            conn.execute("DELETE FROM uploads WHERE id = ?1", params![id])?;
        }
    }
    Ok(())
}

/// One row of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub remote: String,
    pub job: String,
    pub path: PathBuf,
    pub key: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub spool: bool,
}

fn rows(
    conn: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> anyhow::Result<Vec<(i64, Waiting)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id, remote, job, path, key, attempts, next_attempt_at, last_error, spool FROM uploads {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get(0)?,
            Waiting {
                remote: r.get(1)?,
                job: r.get(2)?,
                path: PathBuf::from(r.get::<_, String>(3)?),
                key: r.get(4)?,
                attempts: r.get(5)?,
                next_attempt_at: from_millis(r.get(6)?),
                last_error: r.get(7)?,
                spool: r.get(8)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every waiting row, for `status`.
pub fn pending(state: &State) -> anyhow::Result<Vec<Waiting>> {
    Ok(rows(&*conn(state)?, "WHERE done_at IS NULL", &[])?
        .into_iter()
        .map(|(_, w)| w)
        .collect())
}

/// When the next row is due, if any waits.
pub fn next_due(state: &State) -> anyhow::Result<Option<DateTime<Utc>>> {
    let next: Option<i64> = conn(state)?.query_row(
        "SELECT MIN(next_attempt_at) FROM uploads WHERE done_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(next.map(from_millis))
}

/// Makes every row due now: a restart is usually the operator's answer to a broken remote.
pub fn retry_now(state: &State, now: DateTime<Utc>) -> anyhow::Result<usize> {
    Ok(conn(state)?.execute(
        "UPDATE uploads SET next_attempt_at = ?1 WHERE done_at IS NULL AND next_attempt_at > ?1",
        params![millis(now)],
    )?)
}

/// A remote's figures for `status`, kept after each pass that reached it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub last_upload_at: Option<DateTime<Utc>>,
    pub last_upload: Option<String>,
    /// Bytes and objects under the remote's prefix at the last listing.
    pub bytes_stored: Option<u64>,
    pub objects: Option<u64>,
    pub listed_at: Option<DateTime<Utc>>,
}

pub fn stats(state: &State, remote: &str) -> anyhow::Result<Stats> {
    Ok(state.get(STATS_NS, remote)?.unwrap_or_default())
}

/// What one pass over the queue did.
#[derive(Debug, Default)]
pub struct Pass {
    /// `s3://bucket/key` of each upload that completed.
    pub uploaded: Vec<String>,
    /// What failed, each naming the remote, bucket and key.
    pub failed: Vec<String>,
    /// Remote objects deleted by remote retention.
    pub pruned: Vec<String>,
    pub events: Vec<AlertEvent>,
}

/// Remote retention after a pass, given by the upload service (`uploads`): for a
/// job the pass uploaded for, `None` when its remote copies are not pruned, else the
/// `s3://` URLs it deleted.
pub type Prune<'a> = dyn Fn(&Client, &str) -> Option<anyhow::Result<Vec<String>>> + 'a;

/// Uploads every due row of every remote, then prunes the remote copies of the jobs it
/// uploaded for, and records each remote's figures. Rows of a remote another process is
/// uploading to are left to it.
pub fn process(
    state: &State,
    state_dir: &Path,
    remotes: &Remotes,
    prune: &Prune<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    for remote in remotes.values() {
        let Some(_lock) = crate::locks::try_job(state_dir, &format!("remote.{}", remote.name))?
        else {
            continue;
        };
        let due = rows(
            &*conn(state)?,
            "WHERE remote = ?1 AND done_at IS NULL AND next_attempt_at <= ?2",
            &[&remote.name, &millis(now)],
        )?;
        if due.is_empty() {
            continue;
        }
        process_remote(state, remote, due, prune, &mut pass)?;
    }
    forget_gone(state)?;
    Ok(pass)
}

fn process_remote(
    state: &State,
    remote: &Remote,
    due: Vec<(i64, Waiting)>,
    prune: &Prune<'_>,
    pass: &mut Pass,
) -> anyhow::Result<()> {
    let client = Client::new(remote);
    let mut stats = stats(state, &remote.name)?;
    let mut jobs = BTreeSet::new();
    for (id, row) in due {
        let attempts = row.attempts + 1;
        let outcome = match &client {
            Ok(client) if row.path.is_file() => client.upload(&row.path, &row.key),
            Ok(_) => Err(anyhow::anyhow!(
                "the local file {} is gone; it cannot be uploaded to {}",
                row.path.display(),
                remote.at(&row.key)
            )),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        let conn = conn(state)?;
        match outcome {
            Ok(up) => {
                let done = Utc::now();
                conn.execute(
                    "UPDATE uploads SET done_at = ?2, attempts = ?3, last_error = NULL WHERE id = ?1",
                    params![id, millis(done), attempts],
                )?;
                let others: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM uploads WHERE path = ?1 AND done_at IS NULL",
                    params![row.path.to_string_lossy()],
                    |r| r.get(0),
                )?;
                if row.spool && others == 0 {
                    // The link was made for the upload only; the last remote's removes it.
                    let _ = std::fs::remove_file(&row.path);
                }
                tracing::info!(remote = %remote.name, key = %row.key, bytes = up.bytes, parts = up.parts, sha256 = %up.sha256, sending_ms = up.sending.as_millis() as u64, reading_back_ms = up.reading_back.as_millis() as u64, "uploaded and checked");
                stats.last_upload_at = Some(done);
                stats.last_upload = Some(remote.url_of(&row.key));
                pass.uploaded.push(remote.url_of(&row.key));
                jobs.insert(row.job.clone());
            }
            Err(e) if !row.path.exists() => {
                // Nothing can bring it back: the row would fail for ever.
                conn.execute("DELETE FROM uploads WHERE id = ?1", params![id])?;
                tracing::error!(remote = %remote.name, key = %row.key, "{e:#}");
                pass.failed.push(format!("{e:#}"));
            }
            Err(e) => {
                let message = format!("{e:#}");
                let next =
                    Utc::now() + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
                conn.execute(
                    "UPDATE uploads SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 WHERE id = ?1",
                    params![id, attempts, millis(next), message],
                )?;
                tracing::warn!(remote = %remote.name, key = %row.key, attempt = attempts, retry_at = %next, error = %message, "upload failed; it stays queued");
                pass.failed.push(format!(
                    "{message}; the copy stays queued and is retried from {}",
                    next.format("%Y-%m-%d %H:%M:%S UTC")
                ));
            }
        }
    }
    if let Ok(client) = &client {
        for job in &jobs {
            let Some(pruned) = prune(client, job) else {
                continue;
            };
            match pruned {
                Ok(deleted) => pass.pruned.extend(deleted),
                Err(e) => {
                    tracing::warn!(remote = %remote.name, job = %job, "remote retention: {e:#}");
                    pass.failed
                        .push(format!("remote retention of `{job}`: {e:#}"));
                }
            }
        }
        if !jobs.is_empty() {
            match client.list(&remote.prefix) {
                Ok(objects) => {
                    stats.bytes_stored = Some(objects.iter().map(|o| o.size).sum());
                    stats.objects = Some(objects.len() as u64);
                    stats.listed_at = Some(Utc::now());
                }
                Err(e) => tracing::warn!(remote = %remote.name, "listing for status: {e:#}"),
            }
        }
    }
    state.put(STATS_NS, &remote.name, &stats)?;
    pass.events.push(alert(state, remote)?);
    Ok(())
}

/// The remote's alert: raised while a row has failed [`ALERT_AFTER`] times, else resolved.
fn alert(state: &State, remote: &Remote) -> anyhow::Result<AlertEvent> {
    let failing = rows(
        &*conn(state)?,
        "WHERE remote = ?1 AND done_at IS NULL AND attempts >= ?2",
        &[&remote.name, &ALERT_AFTER],
    )?;
    let key = format!("remote-upload:{}", remote.name);
    let what = format!("uploads to remote `{}` keep failing", remote.name);
    let Some((_, first)) = failing.first() else {
        return Ok(AlertEvent::Resolve {
            key,
            job: None,
            what,
        });
    };
    Ok(AlertEvent::Raise(Alert {
        key,
        severity: Severity::Warning,
        job: Some(first.job.clone()),
        what,
        body: format!(
            "{} files wait for their copy on remote `{}` (s3://{}/{}) after {ALERT_AFTER} or more failed attempts; the last error:\n\n{}\n\nThe local files stay until their upload succeeds (retention, keep_local and logrotate wait). Run `caretaker check --remotes` to test the remote, and `caretaker status` for the queue.",
            failing.len(),
            remote.name,
            remote.bucket,
            remote.prefix,
            first.last_error.as_deref().unwrap_or("none recorded")
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_an_hour() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff(0).as_secs(), 10);
        assert_eq!(backoff(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn a_file_is_queued_once_per_key_and_waits_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let now = Utc::now();
        let file = dir.path().join("b-20260101T000000Z.tar.gz");
        assert!(enqueue(&state, "offsite", "b", &file, "p/b/x", now).unwrap());
        assert!(!enqueue(&state, "offsite", "b", &file, "p/b/x", now).unwrap());
        assert!(enqueue(&state, "other", "b", &file, "p/b/x", now).unwrap());
        assert_eq!(pending(&state).unwrap().len(), 2);
        assert!(waiting(&state).unwrap().contains(&file));
        assert_eq!(next_due(&state).unwrap().map(millis), Some(millis(now)));
    }
}
