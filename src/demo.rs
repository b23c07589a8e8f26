//! `caretaker demo`: a sample gateway and a jobs file on fast schedules, with the daemon running on it.

use std::path::Path;

pub fn run(_dir: &Path) -> u8 {
    eprintln!("demo: not built yet");
    1
}
