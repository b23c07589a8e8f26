//! Archive-then-purge of a large Apantli database while the simulated gateway writes, against
//! the seed recipe (`sqlite3 -json ... | gzip`, then one `DELETE`) measured in the same run.
//!
//! `cargo bench --bench archive` (see benches/archive.sh). Environment:
//! `CARETAKER_BENCH_ROWS` (default 1000000), `CARETAKER_BENCH_DIR` (default the temp dir; its
//! filesystem's fsync cost weighs on both sides), `CARETAKER_BENCH_RATE` (gateway writes per
//! second, default 100).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use caretaker::demo::sample::{self, SampleOptions};
use caretaker::demo::sim::SimReport;
use chrono::{TimeDelta, Utc};

mod common;

use common::{Sim, copies_for_both_sides, env_or, figure, jobs_file, run_job_beside_gateway};

fn count(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).expect("opening the database");
    conn.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
        .expect("counting rows") as u64
}

struct Outcome {
    seconds: f64,
    longest_lock_ms: f64,
    sim: SimReport,
}

fn caretaker(db: &Path, dir: &Path, rate: f64) -> Outcome {
    let config = dir.join("jobs.yaml");
    jobs_file(
        &config,
        db,
        dir,
        "arch",
        &format!(
            "archive: {{older_than: 1d, to: {}, batch: 2000}}",
            dir.join("archive").display()
        ),
    );
    let (stdout, seconds, sim) =
        run_job_beside_gateway("arch", &config, db, dir, rate, "caretaker");
    println!("caretaker: {stdout}");
    Outcome {
        seconds,
        longest_lock_ms: figure(&stdout, "longest_lock_ms").unwrap_or(f64::NAN),
        sim,
    }
}

/// The seed recipe. The CLI gets a busy timeout (5 s for the export, 60 s for the DELETE), or
/// it fails outright against a writing gateway: after the export's long read transaction,
/// hundreds of the gateway's writes are queued and a 5 s wait is not enough to get in.
fn recipe(db: &Path, dir: &Path, rate: f64, bound: &str) -> Outcome {
    let sim = Sim::start(db, dir, rate, "recipe");
    let start = Instant::now();
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sqlite3 -cmd '.timeout 5000' -json '{}' \"SELECT * FROM requests WHERE timestamp < '{bound}'\" | gzip > '{}'",
            db.display(),
            dir.join("a.json.gz").display()
        ))
        .status()
        .expect("running the export");
    assert!(export.success(), "the recipe's export failed");
    let delete_start = Instant::now();
    let delete = Command::new("sqlite3")
        .args(["-cmd", ".timeout 60000"])
        .arg(db)
        .arg(format!("DELETE FROM requests WHERE timestamp < '{bound}'"))
        .status()
        .expect("running the delete");
    let delete_ms = delete_start.elapsed().as_secs_f64() * 1000.0;
    let seconds = start.elapsed().as_secs_f64();
    let sim = sim.stop();
    assert!(delete.success(), "the recipe's DELETE failed");
    Outcome {
        seconds,
        longest_lock_ms: delete_ms,
        sim,
    }
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 1_000_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let base = std::env::var_os("CARETAKER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("creating the bench directory");
    let pristine = dir.path().join("pristine.db");
    let made = Instant::now();
    // All rows older than a day: the whole table is archived while new rows arrive.
    let opts = SampleOptions {
        rows,
        days: 30,
        now: Utc::now() - TimeDelta::days(2),
        payload_bytes: 1024,
        ..SampleOptions::default()
    };
    sample::create_apantli(&pristine, &opts).expect("creating the sample database");
    let bytes = std::fs::metadata(&pristine).map(|m| m.len()).unwrap_or(0);
    println!(
        "sample: {rows} Apantli rows, {:.0} MB, built in {:.0} s, in {}",
        bytes as f64 / 1e6,
        made.elapsed().as_secs_f64(),
        base.display()
    );
    let bound = (Utc::now() - TimeDelta::days(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();

    let (ours_db, theirs_db) = copies_for_both_sides(&pristine, dir.path(), "recipe");
    let ours_dir = ours_db.parent().expect("a run directory").to_path_buf();
    let theirs_dir = theirs_db.parent().expect("a run directory").to_path_buf();

    let ours = caretaker(&ours_db, &ours_dir, rate);
    let theirs = recipe(&theirs_db, &theirs_dir, rate, &bound);
    let left_ours = count(&ours_db) - ours.sim.committed;
    let left_theirs = count(&theirs_db) - theirs.sim.committed;
    assert_eq!(left_ours, 0, "caretaker left old rows");
    assert_eq!(left_theirs, 0, "the recipe left old rows");

    let row = |name: &str, o: &Outcome| {
        format!(
            "| {name} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} of {} |",
            o.seconds,
            rows as f64 / o.seconds,
            o.longest_lock_ms,
            o.sim.latency_ms.max,
            o.sim.latency_ms.p99,
            o.sim.failed,
            o.sim.attempted
        )
    };
    println!(
        "\n| archive-then-purge of {rows} rows, gateway at {rate}/s | seconds | rows/s | longest write lock ms | longest gateway stall ms | p99 gateway write ms | failed gateway writes |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("caretaker archive", &ours));
    println!("{}", row("sqlite3 -json | gzip; DELETE", &theirs));
    println!(
        "\nrows/s ratio caretaker / recipe: {:.2}x",
        theirs.seconds / ours.seconds
    );
}
