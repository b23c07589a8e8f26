//! The standby daemon: a session advisory lock on the gateway database decides which of two daemons runs the jobs that touch it.
//!
//! A daemon of a PostgreSQL gateway keeps one session of its own that tries
//! `pg_try_advisory_lock(key)`; holding it makes the daemon *active* (it runs every job),
//! otherwise it is *standby* (it runs only the jobs that touch nothing of the gateway's). The
//! server frees a session lock the moment the session ends, so when the active daemon dies
//! (even by kill -9: the kernel closes its socket) the standby's next try, at most a third of
//! `standby_takeover` later, takes it over. The role is written to `state_dir/standby.json`
//! for `caretaker status`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Server;

/// Where the role is recorded, in `state_dir`.
pub const STATUS_FILE: &str = "standby.json";

/// What `status` reads: this daemon's role and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// `active` or `standby`.
    pub role: String,
    pub since: DateTime<Utc>,
    pub pid: u32,
    /// The advisory lock's key (`pg_locks.objid` shows its low 32 bits).
    pub key: i64,
}

/// The advisory lock's key: derived from the gateway table it protects. Advisory locks live in
/// their database, so two daemons that reach the same database by different host names
/// (`db.internal`, its address) meet on the same lock, and daemons of other databases never do.
pub fn lock_key(table: &str) -> i64 {
    let digest = Sha256::digest(format!("caretaker standby\0{table}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// How often a standby tries the lock (and the active daemon checks its session).
pub fn poll_interval(takeover: Duration) -> Duration {
    (takeover / 3).max(Duration::from_millis(200))
}

/// The lock keeper; stops (and frees the lock) when dropped.
pub struct Standby {
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standby {
    /// Starts keeping the lock for `server`'s `table`, recording the role in `state_dir`.
    pub fn start(server: Server, table: &str, takeover: Duration, state_dir: &Path) -> Standby {
        let active = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let key = lock_key(table);
        let status = state_dir.join(STATUS_FILE);
        let thread = {
            let (active, stop) = (Arc::clone(&active), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("standby".into())
                .spawn(move || {
                    keep(
                        &server,
                        key,
                        poll_interval(takeover),
                        &active,
                        &stop,
                        &status,
                    )
                })
                .expect("starting the standby thread")
        };
        Standby {
            active,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether this daemon holds the lock and may run jobs that touch the gateway.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(status: &Path, active: bool, key: i64) {
    let role = Role {
        role: if active { "active" } else { "standby" }.into(),
        since: Utc::now(),
        pid: std::process::id(),
        key,
    };
    let json = serde_json::to_vec_pretty(&role).expect("a role serializes");
    if let Err(e) = crate::fsx::write_atomic(status, &json) {
        tracing::warn!("recording the standby role: {e:#}");
    }
}

fn keep(
    server: &Server,
    key: i64,
    interval: Duration,
    active: &AtomicBool,
    stop: &AtomicBool,
    status: &Path,
) {
    let mut session: Option<super::Session> = None;
    let mut recorded: Option<bool> = None;
    while !stop.load(Ordering::SeqCst) {
        let holds = if active.load(Ordering::SeqCst) {
            // Holding: the lock lives as long as the session; a lost session lost it.
            session
                .as_mut()
                .is_some_and(|s| s.simple_query("SELECT 1").is_ok())
        } else {
            if session.as_ref().is_none_or(|s| s.is_closed()) {
                session = super::connect(server)
                    .inspect_err(|e| tracing::warn!("standby: {e:#}"))
                    .ok();
            }
            session.as_mut().is_some_and(|s| {
                s.query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false)
            })
        };
        if !holds && active.load(Ordering::SeqCst) {
            session = None;
            tracing::error!(database = %server.describe, "standby: the session holding the gateway's advisory lock was lost; this daemon is standby until it takes the lock again");
        }
        active.store(holds, Ordering::SeqCst);
        if recorded != Some(holds) {
            if holds {
                tracing::info!(database = %server.describe, key, "standby: this daemon holds the gateway's advisory lock and runs its jobs");
            } else {
                tracing::info!(database = %server.describe, key, "standby: another daemon holds the gateway's advisory lock; this one runs only the jobs that touch nothing of the gateway's");
            }
            record(status, holds, key);
            recorded = Some(holds);
        }
        let mut waited = Duration::ZERO;
        while waited < interval && !stop.load(Ordering::SeqCst) {
            let step = Duration::from_millis(50).min(interval - waited);
            std::thread::sleep(step);
            waited += step;
        }
    }
}

/// What `status` says of the daemon of `state_dir`: its role, or that none runs.
pub fn describe(state_dir: &Path) -> Option<(Role, bool)> {
    let bytes = std::fs::read(state_dir.join(STATUS_FILE)).ok()?;
    let role: Role = serde_json::from_slice(&bytes).ok()?;
    let alive = rustix::process::Pid::from_raw(role.pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
    Some((role, alive))
}

/// What `run-job` of a job that touches the gateway may do next to the daemons.
pub enum RunJob {
    /// This host's daemon is the active one: its lock covers the run (the `state_dir` locks
    /// keep the two apart here).
    CoveredByOurDaemon,
    /// No daemon holds the lock: this session holds it for the run.
    Holding(Box<super::Session>),
    /// The server could not be reached to ask: the job's own connection fails the same way,
    /// and its failure is recorded and alerted as a run's.
    Unreachable,
}

/// Decides whether `run-job` may run a job that touches the gateway: only on the host whose
/// daemon is active, or when no daemon is; otherwise the error says where to run it.
pub fn for_run_job(server: &Server, table: &str, state_dir: &Path) -> anyhow::Result<RunJob> {
    if let Some((role, true)) = describe(state_dir)
        && role.role == "active"
    {
        return Ok(RunJob::CoveredByOurDaemon);
    }
    let key = lock_key(table);
    let Ok(mut session) = super::connect(server) else {
        return Ok(RunJob::Unreachable);
    };
    let got: bool = session
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
        .get(0);
    anyhow::ensure!(
        got,
        "another caretaker daemon holds the gateway's advisory lock (key {key}) and runs the jobs that touch the {}: run this job on its host (caretaker status there says `this daemon: active`)",
        server.describe
    );
    Ok(RunJob::Holding(Box::new(session)))
}
