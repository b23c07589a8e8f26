//! Where the built binaries and the repository's test files are: the one place that asks Cargo.
//!
//! The benchmarks include this file too (`benches/common/mod.rs`), so it uses nothing else from
//! the test tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `caretaker` binary Cargo built for this test run.
pub const fn caretaker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_caretaker")
}

/// The `gateway-sim` binary Cargo built for this test run.
pub const fn gateway_sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gateway-sim")
}

/// A command running `caretaker`, with nothing set yet.
pub fn caretaker() -> Command {
    Command::new(caretaker_bin())
}

/// A command running `gateway-sim`, with nothing set yet.
pub fn gateway_sim() -> Command {
    Command::new(gateway_sim_bin())
}

/// `rel` (e.g. `tests/fixtures/…`, `docs/…`) in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A Python helper script of `tests/common/scripts/`.
pub fn script(name: &str) -> PathBuf {
    repo_file("tests/common/scripts").join(name)
}

/// What a finished run said: its exit code and both streams, for a failing assertion.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
