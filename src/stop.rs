//! The stop token: tells a running job to stop at its next safe point.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tells a running job to stop at its next safe point: the daemon is shutting down, or the
/// job's `timeout` has passed.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("stopped at a safe point because the daemon is shutting down")]
    Shutdown,
    #[error("stopped at a safe point because the job ran past its timeout")]
    Timeout,
}

impl Stop {
    pub fn new(flag: Arc<AtomicBool>, timeout: Option<Duration>) -> Self {
        Stop {
            flag,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// When the job's `timeout` runs out, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn check(&self) -> Result<(), Stopped> {
        if self.flag.load(Ordering::SeqCst) {
            return Err(Stopped::Shutdown);
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(Stopped::Timeout),
            _ => Ok(()),
        }
    }
}
