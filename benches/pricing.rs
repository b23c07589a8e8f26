//! Re-pricing 1M Apantli rows while the simulated gateway writes: caretaker's pricing job
//! against a `recalculate_costs.py`-style script (read every row, compute, UPDATE one by one in
//! one transaction), each on its own copy of the same file, measured in the same run.
//!
//! `cargo bench --bench pricing` (see benches/pricing.sh). Environment: `CARETAKER_BENCH_ROWS`
//! (default 1000000), `CARETAKER_BENCH_DIR` (default the temp dir; its filesystem's fsync cost
//! weighs on both sides: /dev/shm measures the work, a disk directory the disk),
//! `CARETAKER_BENCH_RATE` (gateway writes per second, default 100). Each side starts with
//! every successful row's cost NULL. Prints wall time, rows/s, the longest write lock, the
//! gateway's failed writes and longest stall, caretaker's time per phase, and the ratios; then
//! caretaker alone on the everyday case, 5 % of the rows logged at cost 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use caretaker::demo::sample::{self, SampleOptions};
use caretaker::demo::sim::SimReport;

mod common;

use common::{Sim, copies_for_both_sides, env_or, figure, jobs_file, run_job_beside_gateway};

/// The seed recipe: what operators run today (a script in the style of LiteLLM-based
/// gateways' `recalculate_costs.py`), with the same price rules as caretaker.
const REFERENCE: &str = r#"
import json, sqlite3, sys, time
db, prices_path = sys.argv[1], sys.argv[2]
table = {k: v for k, v in json.load(open(prices_path)).items() if isinstance(v, dict)}
def lookup(model):
    name = model
    while True:
        entry = table.get(name)
        if entry is not None and "input_cost_per_token" in entry:
            return entry
        if "/" not in name:
            return None
        name = name.split("/", 1)[1]
def rate(e, key, long):
    if long and (key + "_above_200k_tokens") in e:
        return e[key + "_above_200k_tokens"]
    return e.get(key)
start = time.monotonic()
conn = sqlite3.connect(db, timeout=5)
rows = conn.execute("SELECT id, model, prompt_tokens, completion_tokens, request_data, response_data "
                    "FROM requests WHERE (cost IS NULL OR cost = 0) AND error IS NULL").fetchall()
updates = []
for id_, model, prompt, completion, request, response in rows:
    try:
        model = json.loads(request).get("model") or model
    except Exception:
        pass
    e = lookup(model)
    if e is None:
        continue
    usage = {}
    try:
        usage = json.loads(response).get("usage") or {}
    except Exception:
        pass
    details = usage.get("prompt_tokens_details") or {}
    read = max(details.get("cached_tokens") or 0, usage.get("cache_read_input_tokens") or 0)
    write = usage.get("cache_creation_input_tokens") or 0
    prompt, completion = prompt or 0, completion or 0
    long = prompt > 200000
    inp = rate(e, "input_cost_per_token", long)
    out = rate(e, "output_cost_per_token", long)
    uncached = prompt - read - write if prompt >= read + write else prompt
    cost = (uncached * inp + read * (rate(e, "cache_read_input_token_cost", long) or inp)
            + write * (rate(e, "cache_creation_input_token_cost", long) or inp) + completion * out)
    updates.append((cost, id_))
locked = time.monotonic()
cur = conn.cursor()
cur.execute("BEGIN IMMEDIATE")
for cost, id_ in updates:
    cur.execute("UPDATE requests SET cost = ? WHERE id = ?", (cost, id_))
conn.commit()
done = time.monotonic()
print(json.dumps({"rows": len(updates), "seconds": done - start, "lock_seconds": done - locked}))
"#;

struct Outcome {
    rows: f64,
    seconds: f64,
    longest_lock_ms: f64,
    sim: SimReport,
    stdout: String,
}

/// Runs the real binary's pricing job on `db` while gateway-sim writes.
fn caretaker(db: &Path, dir: &Path, prices: &Path, rate: f64, tag: &str) -> Outcome {
    let config = dir.join("jobs.yaml");
    jobs_file(
        &config,
        db,
        dir,
        "reprice",
        &format!("pricing: {{prices: {}}}", prices.display()),
    );
    let (stdout, seconds, sim) = run_job_beside_gateway("reprice", &config, db, dir, rate, tag);
    Outcome {
        rows: figure(&stdout, "rows_repriced").unwrap_or(f64::NAN),
        seconds,
        longest_lock_ms: figure(&stdout, "longest_write_lock_ms").unwrap_or(f64::NAN),
        sim,
        stdout,
    }
}

fn reference(db: &Path, dir: &Path, prices: &Path, rate: f64) -> Option<Outcome> {
    let sim = Sim::start(db, dir, rate, "reference");
    let start = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(REFERENCE)
        .arg(db)
        .arg(prices)
        .output();
    let seconds = start.elapsed().as_secs_f64();
    let sim = sim.stop();
    match out {
        Ok(out) if out.status.success() => {
            let result: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("the reference prints JSON");
            Some(Outcome {
                rows: result["rows"].as_f64().unwrap_or(f64::NAN),
                seconds,
                longest_lock_ms: result["lock_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3,
                sim,
                stdout: String::new(),
            })
        }
        Ok(out) => {
            println!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Err(e) => {
            println!("reference not run (python3: {e})");
            None
        }
    }
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 1_000_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let base = std::env::var_os("CARETAKER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("creating the bench directory");
    let prices =
        common::bins::repo_file("tests/fixtures/litellm/model_prices_and_context_window.json");
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average: {} on {} CPUs",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let pristine = dir.path().join("pristine.db");
    let t = Instant::now();
    sample::create_apantli(
        &pristine,
        &SampleOptions {
            rows,
            zero_cost_share: 0.0,
            ..SampleOptions::default()
        },
    )
    .expect("creating the sample database");
    let nulls = {
        let conn = rusqlite::Connection::open(&pristine).expect("opening the sample");
        conn.execute("UPDATE requests SET cost = NULL WHERE error IS NULL", [])
            .expect("resetting costs")
    };
    let size = std::fs::metadata(&pristine).map_or(0, |m| m.len());
    println!(
        "sample: {rows} Apantli rows ({nulls} with cost NULL), {:.0} MB, built in {:.1} s, in {}",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        base.display()
    );
    let (ours_db, theirs_db) = copies_for_both_sides(&pristine, dir.path(), "reference");
    let ours_dir = ours_db.parent().expect("a run directory").to_path_buf();
    let theirs_dir = theirs_db.parent().expect("a run directory").to_path_buf();

    let ours = caretaker(&ours_db, &ours_dir, &prices, rate, "caretaker");
    println!("caretaker: {}", ours.stdout.trim());
    let theirs = reference(&theirs_db, &theirs_dir, &prices, rate);
    std::fs::remove_file(&theirs_db).expect("removing the reference's copy");

    let row = |name: &str, o: &Outcome| {
        format!(
            "| {name} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {} of {} |",
            o.rows,
            o.seconds,
            o.rows / o.seconds,
            o.longest_lock_ms,
            o.sim.latency_ms.max,
            o.sim.failed,
            o.sim.attempted
        )
    };
    println!(
        "\n| re-pricing {rows} Apantli rows, gateway at {rate}/s | rows re-priced | seconds | rows/s | longest write lock ms | longest gateway stall ms | failed gateway writes |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("caretaker pricing", &ours));
    if let Some(theirs) = &theirs {
        println!("{}", row("recalculate_costs.py style", theirs));
    }
    let f = |name: &str| figure(&ours.stdout, name).unwrap_or(f64::NAN);
    println!(
        "\ncaretaker phases: write lock {:.2} s in {} batches ({:.1} % of the run; UPDATE statements {:.2} s, the rest commits), pauses {:.2} s, reads {:.2} s (longest {:.1} ms), parsing {:.2} s on its own thread (waited for {:.2} s)",
        f("write_lock_total_ms") / 1e3,
        f("write_batches"),
        f("write_lock_share") * 100.0,
        f("update_seconds"),
        f("pause_seconds"),
        f("read_seconds"),
        f("longest_read_ms"),
        f("parse_seconds"),
        f("parse_wait_seconds"),
    );
    if let Some(theirs) = &theirs {
        println!(
            "ratio: caretaker {:.2}x the reference's rows/s; longest lock {:.0}x shorter",
            (ours.rows / ours.seconds) / (theirs.rows / theirs.seconds),
            theirs.longest_lock_ms / ours.longest_lock_ms
        );
    }
    if rows >= 1_000_000 {
        println!(
            "goal: 1M rows <= 10 s: {}",
            if ours.seconds <= 10.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    // The everyday case: the table is priced, and 5 % of the rows, spread over it, were
    // logged at 0 while their price was unknown.
    rusqlite::Connection::open(&ours_db)
        .expect("opening the bench database")
        .execute(
            "UPDATE requests SET cost = 0 WHERE error IS NULL AND id % 20 = 0",
            [],
        )
        .expect("zeroing 5 % of the costs");
    let everyday = caretaker(&ours_db, &ours_dir, &prices, rate, "everyday");
    println!(
        "\n{}",
        row("caretaker pricing, 5 % of the rows at cost 0", &everyday)
    );
    println!(
        "everyday phases: write lock {:.2} s in {} batches, longest read {:.1} ms",
        figure(&everyday.stdout, "write_lock_total_ms").unwrap_or(f64::NAN) / 1e3,
        figure(&everyday.stdout, "write_batches").unwrap_or(f64::NAN),
        figure(&everyday.stdout, "longest_read_ms").unwrap_or(f64::NAN),
    );
}
