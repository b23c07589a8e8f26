//! Locks in `state_dir`: one daemon per state directory, one run per job, one job at a time on the gateway.
//!
//! They are `flock` locks on files, so they hold across processes (`run-job` beside the
//! daemon) and vanish when a process dies, even by kill -9.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::stop::{Stop, Stopped};

fn open(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        crate::fsx::private_dir(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

/// The daemon's hold on its state directory, with the pid file beside it.
pub struct Instance {
    _lock: File,
    pid_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another caretaker daemon (pid {pid}) already runs on state_dir {dir}; stop it first or give this one another state_dir"
    )]
    Held { pid: String, dir: PathBuf },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Instance {
    pub fn acquire(state_dir: &Path) -> Result<Instance, InstanceError> {
        let lock = open(&state_dir.join("caretaker.lock"))?;
        let pid_file = state_dir.join("caretaker.pid");
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&pid_file)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                return Err(InstanceError::Held {
                    pid,
                    dir: state_dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("locking {}", state_dir.display()))
                    .into());
            }
        }
        crate::fsx::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(Instance {
            _lock: lock,
            pid_file,
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// A held lock; released on drop.
pub struct Held(#[allow(dead_code)] File);

fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{name}.lock"))
}

/// How long a busy job lock is tried again before the job counts as running elsewhere:
/// [`job_running`] (`status`) tests the lock by taking it for a few microseconds, and a run
/// starting in that instant must not be skipped for it.
const PROBE_GRACE: Duration = Duration::from_millis(50);

fn job_lock(state_dir: &Path, job: &str) -> PathBuf {
    lock_path(state_dir, &format!("job-{job}"))
}

/// The per-job lock: `None` when the job is already running somewhere.
pub fn try_job(state_dir: &Path, job: &str) -> anyhow::Result<Option<Held>> {
    let file = open(&job_lock(state_dir, job))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(Held(file))),
            Err(TryLockError::WouldBlock) if started.elapsed() < PROBE_GRACE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e).context("taking the job lock"),
        }
    }
}

/// Whether a process (the daemon or `run-job`) is running `job` now: its job lock is held.
/// A run recorded as `running` whose lock nobody holds belongs to a process that was killed.
/// Creates nothing; takes the lock for an instant when it is free (see [`PROBE_GRACE`]).
pub fn job_running(state_dir: &Path, job: &str) -> anyhow::Result<bool> {
    let path = job_lock(state_dir, job);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening lock file {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("testing the lock {}", path.display()))
        }
    }
}

/// The gateway lock: waits for the job that holds it, but stops waiting when told to stop.
///
/// Once held, the lock file names `job`, so that a run waiting for it (and the daemon, about a
/// run still waiting) can say whose lock it waits for. The name is only a label: the `flock`
/// is the lock.
pub fn gateway(state_dir: &Path, job: &str, stop: &Stop) -> anyhow::Result<Result<Held, Stopped>> {
    let path = lock_path(state_dir, "gateway");
    let file = open(&path)?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                // Best effort: a label that could not be written only makes a message vaguer.
                let _ = file
                    .set_len(0)
                    .and_then(|()| file.write_all_at(job.as_bytes(), 0));
                return Ok(Ok(Held(file)));
            }
            Err(TryLockError::WouldBlock) => {
                if !told {
                    tracing::info!(
                        "waiting for the gateway lock held by {}: another job is working on the gateway database",
                        describe_holder(gateway_holder(state_dir))
                    );
                    told = true;
                }
                if let Err(stopped) = stop.check() {
                    return Ok(Err(stopped));
                }
                // flock has no timed wait; a short nap keeps the wait stoppable.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::Error(e)) => return Err(e).context("taking the gateway lock"),
        }
    }
}

/// The job named in the gateway lock file: the holder while the lock is held, else the last
/// one that held it.
pub fn gateway_holder(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(lock_path(state_dir, "gateway"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// `job `nightly``, or `another process` when the holder left no name.
pub fn describe_holder(holder: Option<String>) -> String {
    holder.map_or_else(
        || "another process".to_owned(),
        |job| format!("job `{job}`"),
    )
}
