//! Waiting on a condition: polled at a short interval, so a test takes as long as the behaviour
//! it waits for, never a guessed sleep.

use std::time::{Duration, Instant};

/// How long an awaited condition may take before the test fails, where a test names no limit;
/// generous for a loaded 2-core CI machine, never reached when things work.
pub const DEADLINE: Duration = Duration::from_secs(60);

const INTERVAL: Duration = Duration::from_millis(10);

/// Polls `check` until it gives a value or `limit` passes (then `None`).
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Waits until `done` holds, failing the test with `what` after `limit`.
pub fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let held = poll(limit, || done().then_some(()));
    assert!(
        held.is_some(),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `check` until it gives a value, failing with `what` and `context()` after
/// [`DEADLINE`].
pub fn value<T>(what: &str, check: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    poll(DEADLINE, check).unwrap_or_else(|| {
        panic!(
            "timed out after {DEADLINE:?} waiting for {what}\n{}",
            context()
        )
    })
}
