//! Integrity checks of a large Apantli database under writes: caretaker (on a copy, and live) against `sqlite3 DB "PRAGMA quick_check"` / `integrity_check`.
//!
//! Run with `cargo bench --bench integrity`. Each measurement runs while gateway-sim writes
//! Apantli-style rows (rollback journal, new connection per write, 5 s busy timeout): its
//! report gives the longest write stall and the rows lost, which is what a check on a
//! rollback-journal database costs the gateway.
//!
//! Environment: `CARETAKER_BENCH_ROWS` (default 500,000 rows of ~2 KB, about 1 GB),
//! `CARETAKER_BENCH_DIR` (default: a temporary directory; set it to keep the sample database
//! between runs), `CARETAKER_BENCH_RATE` (writes/s, default 10).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use caretaker::demo::sim::SimReport;

mod common;

use common::{Sim, apantli_sample, bench_dir, env_or, figure, jobs_file, run_job};

struct Row {
    name: String,
    seconds: f64,
    read_txn_ms: Option<f64>,
    sim: SimReport,
    ok: bool,
}

fn caretaker(db: &Path, dir: &Path, check: &str, copy: &str, rate: f64) -> Row {
    let config = dir.join(format!("integrity-{check}-{copy}.yaml"));
    jobs_file(
        &config,
        db,
        dir,
        "bench",
        &format!("integrity: {{check: {check}, copy: {copy}}}"),
    );
    let sim = Sim::start(db, dir, rate, &format!("{check}-{copy}"));
    let (out, seconds) = run_job("bench", &config);
    let sim = sim.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        println!(
            "caretaker {check}/{copy} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Row {
        name: format!("caretaker `integrity: {{check: {check}, copy: {copy}}}`"),
        seconds,
        read_txn_ms: figure(&stdout, "read_txn_ms"),
        sim,
        ok: out.status.success(),
    }
}

fn sqlite3(db: &Path, dir: &Path, pragma: &str, rate: f64) -> Row {
    let sim = Sim::start(db, dir, rate, pragma);
    let start = Instant::now();
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(format!("PRAGMA {pragma}"))
        .output()
        .expect("running sqlite3 (install the sqlite3 command-line shell)");
    let seconds = start.elapsed().as_secs_f64();
    let sim = sim.stop();
    Row {
        name: format!("`sqlite3 DB \"PRAGMA {pragma}\"`"),
        seconds,
        read_txn_ms: Some(seconds * 1000.0),
        sim,
        ok: out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
    }
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 500_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 10.0);
    let temp = tempfile::tempdir().expect("creating a temporary directory");
    let dir = bench_dir(&temp);
    let db = apantli_sample(&dir, rows);
    let size = fs::metadata(&db).expect("sample database").len();
    println!(
        "database: {rows} rows, {:.0} MB, rollback journal; gateway-sim apantli at {rate} writes/s",
        size as f64 / 1e6
    );

    let results = [
        caretaker(&db, &dir, "quick", "always", rate),
        sqlite3(&db, &dir, "quick_check", rate),
        caretaker(&db, &dir, "quick", "never", rate),
        caretaker(&db, &dir, "full", "always", rate),
        sqlite3(&db, &dir, "integrity_check", rate),
        caretaker(&db, &dir, "full", "never", rate),
    ];
    println!(
        "\n| check | passed | wall s | gateway blocked by our read transaction ms | longest gateway stall ms | failed gateway writes |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {:.1} | {} | {:.0} | {} of {} |",
            r.name,
            if r.ok { "yes" } else { "no" },
            r.seconds,
            r.read_txn_ms.map_or("-".into(), |ms| format!("{ms:.0}")),
            r.sim.latency_ms.max,
            r.sim.failed,
            r.sim.attempted
        );
    }
}
