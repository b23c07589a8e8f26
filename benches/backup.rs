//! Hot backup of a 1 GB Apantli database under 100 writes/s: caretaker against `sqlite3 .backup` + `gzip -6` and `cp` + `gzip -6`.
//!
//! Run with `benches/backup.sh` (or `cargo bench --bench backup`). Each method runs while
//! gateway-sim writes Apantli-style rows (rollback journal, new connection per write, 5 s busy
//! timeout); the simulator's report gives the longest write stall and the rows it lost.
//!
//! Environment: `CARETAKER_BENCH_ROWS` (default 1,000,000 rows of ~1 KB, about 1 GB),
//! `CARETAKER_BENCH_DIR` (default: a temporary directory; set it to keep the sample database
//! between runs), `CARETAKER_BENCH_RATE` (writes/s, default 100), `CARETAKER_BENCH_TIMEOUT`
//! (seconds a reference recipe may take under writes before it counts as not finishing,
//! default 600).

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker::demo::sim::SimReport;

mod common;

use common::{Sim, apantli_sample, bench_dir, env_or, jobs_file, run_job};

struct Measured {
    name: String,
    seconds: Option<f64>,
    bytes: Option<u64>,
    sim: Option<SimReport>,
    note: String,
}

/// Runs `script`; its wall time, or why it has none (it failed, or ran past `timeout`).
fn run_shell(script: &str, timeout: Duration) -> Result<f64, String> {
    let start = Instant::now();
    // Its own process group, so a recipe that runs too long is stopped with its children.
    let mut child = std::os::unix::process::CommandExt::process_group(
        Command::new("sh").args(["-c", script]),
        0,
    )
    .spawn()
    .expect("running sh");
    loop {
        if let Some(status) = child.try_wait().expect("waiting for sh") {
            if !status.success() {
                return Err(format!("failed ({status})"));
            }
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            let group = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.wait();
            return Err(format!("did not finish within {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 1_000_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let timeout = Duration::from_secs(env_or("CARETAKER_BENCH_TIMEOUT", 600));
    let temp = tempfile::tempdir().expect("creating a temporary directory");
    let dir = bench_dir(&temp);
    let db = apantli_sample(&dir, rows);
    let size = fs::metadata(&db).expect("sample database").len();
    println!(
        "database: {} rows, {:.0} MB, rollback journal; gateway-sim apantli at {rate} writes/s; {} cores",
        rows,
        size as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let baseline = {
        let sim = Sim::start(&db, &dir, rate, "baseline");
        std::thread::sleep(Duration::from_secs(10));
        sim.stop()
    };
    println!(
        "gateway alone for 10 s: {} writes, {} failed, write latency max {:.0} ms, p99 {:.0} ms",
        baseline.attempted, baseline.failed, baseline.latency_ms.max, baseline.latency_ms.p99
    );
    if baseline.failed > 0 {
        println!(
            "warning: the simulated gateway loses writes on its own at this rate on this machine; lower CARETAKER_BENCH_RATE for meaningful stall figures"
        );
    }

    let mut results = Vec::new();

    // caretaker
    let out_dir = dir.join("caretaker-out");
    let _ = fs::remove_dir_all(&out_dir);
    let config = dir.join("jobs.yaml");
    jobs_file(
        &config,
        &db,
        &dir,
        "bench",
        &format!(
            "backup: {{to: {}, keep: {{last: 1}}, verify: quick}}",
            out_dir.display()
        ),
    );
    let sim = Sim::start(&db, &dir, rate, "caretaker");
    let (out, seconds) = run_job("bench", &config);
    let sim = sim.stop();
    let archive = caretaker::backup::list(&out_dir, "bench")
        .expect("listing caretaker's output")
        .pop()
        .map(|(_, path)| path);
    let failed =
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
    results.push(Measured {
        name:
            "caretaker run-job (snapshot, quick_check, parallel gzip level 7, read-back, publish)"
                .into(),
        seconds: failed.is_none().then_some(seconds),
        bytes: archive.and_then(|a| fs::metadata(a).ok()).map(|m| m.len()),
        sim: Some(sim),
        note: failed.unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).trim().to_string()),
    });

    // sqlite3 .backup + gzip -6, under writes
    let copy = dir.join("ref.db");
    let recipe = format!(
        "rm -f {c} {c}.gz && sqlite3 {db} \".backup {c}\" && gzip -6 {c}",
        c = copy.display(),
        db = db.display()
    );
    let sim = Sim::start(&db, &dir, rate, "sqlite3");
    let (seconds, note) = match run_shell(&recipe, timeout) {
        Ok(s) => (Some(s), String::new()),
        Err(why) => (None, why),
    };
    let sim = sim.stop();
    results.push(Measured {
        name: "sqlite3 .backup && gzip -6, under writes".into(),
        bytes: seconds.and_then(|_| {
            fs::metadata(format!("{}.gz", copy.display()))
                .ok()
                .map(|m| m.len())
        }),
        seconds,
        sim: Some(sim),
        note,
    });
    // The same recipe without writers, so a ratio exists even when it cannot finish under writes.
    let (seconds, note) = match run_shell(&recipe, timeout) {
        Ok(s) => (Some(s), String::new()),
        Err(why) => (None, why),
    };
    results.push(Measured {
        name: "sqlite3 .backup && gzip -6, gateway idle".into(),
        bytes: seconds.and_then(|_| {
            fs::metadata(format!("{}.gz", copy.display()))
                .ok()
                .map(|m| m.len())
        }),
        seconds,
        sim: None,
        note,
    });

    // cp + gzip -6: fast but not a consistent backup (no lock; a write mid-copy tears it).
    let recipe = format!(
        "rm -f {c} {c}.gz && cp {db} {c} && gzip -6 {c}",
        c = copy.display(),
        db = db.display()
    );
    let sim = Sim::start(&db, &dir, rate, "cp");
    let (seconds, note) = match run_shell(&recipe, timeout) {
        Ok(s) => (Some(s), String::new()),
        Err(why) => (None, why),
    };
    let sim = sim.stop();
    results.push(Measured {
        name: "cp && gzip -6, under writes (not consistent)".into(),
        bytes: seconds.and_then(|_| {
            fs::metadata(format!("{}.gz", copy.display()))
                .ok()
                .map(|m| m.len())
        }),
        seconds,
        sim: Some(sim),
        note,
    });
    let _ = fs::remove_file(format!("{}.gz", copy.display()));
    let _ = fs::remove_dir_all(&out_dir);

    println!();
    println!(
        "| method | wall s | archive MB | ratio to DB | longest write stall ms | failed writes |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.seconds.map_or("DNF".into(), |s| format!("{s:.1}")),
            r.bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
            r.bytes
                .map_or("-".into(), |b| format!("{:.3}", b as f64 / size as f64)),
            r.sim
                .as_ref()
                .map_or("-".into(), |s| format!("{:.0}", s.latency_ms.max)),
            r.sim.as_ref().map_or("-".into(), |s| s.failed.to_string()),
        );
    }
    let ours = &results[0];
    for reference in &results[1..] {
        if let (Some(a), Some(b)) = (ours.seconds, reference.seconds) {
            println!("caretaker / {}: wall time {:.2}x", reference.name, a / b);
        }
        if let (Some(a), Some(b)) = (ours.bytes, reference.bytes) {
            println!(
                "caretaker / {}: size {:.3}x",
                reference.name,
                a as f64 / b as f64
            );
        }
    }
    for r in &results {
        if !r.note.is_empty() {
            println!("{}: {}", r.name, r.note);
        }
    }
}
