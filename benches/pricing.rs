//! Re-pricing 1M Apantli rows: caretaker's pricing job against a `recalculate_costs.py`-style
//! script (read every row, compute, UPDATE one by one in one transaction), on the same file.
//!
//! Run with `cargo bench --bench pricing`; `PRICING_BENCH_ROWS` changes the row count. Each
//! side starts from the same state: every successful row's cost set to NULL. Prints wall
//! time, rows per second, the longest write lock each held on the gateway, and the ratios;
//! then caretaker alone on the everyday case, 5 % of the rows logged at cost 0.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker::config;
use caretaker::jobs::{Context, Stop};
use caretaker::sample::{self, SampleOptions};
use caretaker::state::State;
use chrono::Utc;

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

fn reset(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).expect("opening the bench database");
    conn.execute("UPDATE requests SET cost = NULL WHERE error IS NULL", [])
        .expect("resetting costs") as u64
}

fn main() {
    let rows: u64 = std::env::var("PRICING_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("requests.db");
    let prices = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/litellm/model_prices_and_context_window.json");
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
    let t = Instant::now();
    sample::create_apantli(
        &db,
        &SampleOptions {
            rows,
            zero_cost_share: 0.0,
            ..SampleOptions::default()
        },
    )
    .expect("creating the sample database");
    let size = std::fs::metadata(&db).map_or(0, |m| m.len());
    println!(
        "sample: {rows} Apantli rows, {:.0} MB, built in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let nulls = reset(&db);
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\njobs:\n  reprice:\n    on_signal: USR2\n    pricing: {{prices: {}}}\n",
            db.display(),
            dir.path().join("state").display(),
            prices.display()
        ),
    )
    .expect("writing the jobs file");
    let (config, _) = config::load(&jobs).expect("a valid bench jobs file");
    let state = State::open(&config.state_dir).expect("opening the state");
    let job = config.job("reprice").expect("the job");
    let mut ctx = Context {
        job: &job.name,
        config: &config,
        state: &state,
        now: Utc::now(),
        dry_run: false,
        stop: Stop::default(),
        alerts: Vec::new(),
    };
    let t = Instant::now();
    let report = job.kind.run(&mut ctx).expect("the pricing job");
    let ours = t.elapsed();
    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let repriced = figure("rows_repriced");
    println!(
        "caretaker pricing: {repriced} of {nulls} NULL rows in {:.2} s ({:.0} rows/s); longest write lock {:.1} ms over {} batches (lock share {:.1} %); longest read {:.1} ms",
        ours.as_secs_f64(),
        repriced / ours.as_secs_f64(),
        figure("longest_write_lock_ms"),
        figure("write_batches"),
        figure("write_lock_share") * 100.0,
        figure("longest_read_ms"),
    );
    if rows >= 1_000_000 {
        println!(
            "goal: 1M rows <= 10 s: {}",
            if ours <= Duration::from_secs(10) {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    reset(&db);
    let t = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(REFERENCE)
        .arg(&db)
        .arg(&prices)
        .output();
    let theirs = t.elapsed();
    match out {
        Ok(out) if out.status.success() => {
            let result: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("the reference prints JSON");
            let lock_ms = result["lock_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3;
            println!(
                "reference (python3 recalculate_costs.py style): {} rows in {:.2} s; write lock held {:.0} ms (one transaction)",
                result["rows"],
                theirs.as_secs_f64(),
                lock_ms
            );
            println!(
                "ratio: caretaker {:.2}x the reference's speed; longest lock {:.0}x shorter",
                theirs.as_secs_f64() / ours.as_secs_f64(),
                lock_ms / figure("longest_write_lock_ms")
            );
        }
        Ok(out) => println!("reference failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("reference not run (python3: {e})"),
    }

    // The everyday case: the table is priced, and 5 % of the rows, spread over it, were
    // logged at 0 while their price was unknown.
    let conn = rusqlite::Connection::open(&db).expect("opening the bench database");
    conn.execute(
        "UPDATE requests SET cost = 0 WHERE error IS NULL AND id % 20 = 0",
        [],
    )
    .expect("zeroing 5 % of the costs");
    drop(conn);
    let t = Instant::now();
    let report = job.kind.run(&mut ctx).expect("the pricing job");
    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    println!(
        "caretaker pricing, 5 % of the rows at cost 0: {} rows in {:.2} s; longest write lock {:.1} ms over {} batches; longest read {:.1} ms",
        figure("rows_repriced"),
        t.elapsed().as_secs_f64(),
        figure("longest_write_lock_ms"),
        figure("write_batches"),
        figure("longest_read_ms"),
    );
}
