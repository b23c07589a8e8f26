//! Backup of a PostgreSQL gateway, caretaker's `backup` job against `pg_dump -Fc` alone, side by
//! side in one run with the simulator writing.
//!
//! Run with `cargo bench --bench pg_backup` (needs PostgreSQL's server binaries, as the tests
//! do). `CARETAKER_BENCH_ROWS` (default 600000, about 1 GB with TOAST and indexes) LiteLLM
//! spend-log rows are loaded once; then, while `gateway-sim --postgres` writes at
//! `CARETAKER_BENCH_RATE` (default 100) rows/s, each method runs in turn, twice, alternating
//! which goes first: `pg_dump -Fc -f FILE` (the operators' recipe: the dump compressed by
//! pg_dump at its default level, nothing verified), caretaker's job with `verify: quick` (the
//! default) and with `verify: none`, and `pg_dump --format=custom --compress=0` (the floor of
//! caretaker's dump phase). `CARETAKER_BENCH_BEFORE=BIN` adds another build of caretaker (an
//! older one, to compare a change in the same run) with `verify: quick`. Prints each one's wall
//! time, output size and the job's phases.

mod common;

// The test tree's throwaway cluster, with the two helpers it names as `super::`.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
use common::bins;
#[allow(dead_code)]
#[path = "../tests/common/wait.rs"]
mod wait;

use std::path::Path;
use std::time::Instant;

use common::{Sim, env_or, figure};

/// Rows with payloads that compress about as real ones do (JSON keys and prose repeat, ids and
/// hashes do not): about 1.4 KB of JSONB each.
const LOAD: &str = r#"
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
    completion_tokens, "startTime", "endTime", model, custom_llm_provider, metadata, messages,
    response, proxy_server_request, status)
SELECT 'old-' || lpad(g::text, 9, '0'), 'acompletion', md5(g::text), 0.001, 100, 60, 40,
    now() AT TIME ZONE 'UTC' - interval '10 days' + g * interval '100 ms',
    now() AT TIME ZONE 'UTC' - interval '10 days' + g * interval '100 ms' + interval '1 second',
    (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'llama-3.1-70b'])[1 + g % 4], 'openai',
    jsonb_build_object('trace', md5(g::text) || md5((g * 7)::text), 'user', 'user-' || (g % 997),
        'tags', jsonb_build_array('prod', 'team-' || (g % 13))),
    jsonb_build_array(
        jsonb_build_object('role', 'system', 'content', 'You are a helpful assistant. Answer briefly and cite the documents you were given.'),
        jsonb_build_object('role', 'user', 'content', 'Summarise ticket ' || g || ': the customer reports that ' ||
            md5((g + 2)::text) || ' fails after ' || (g % 60) || ' seconds with error ' || md5((g + 5)::text) ||
            '. Steps to reproduce: open the dashboard, select the project, export the report as CSV.')),
    jsonb_build_object('id', 'chatcmpl-' || md5((g + 3)::text), 'choices', jsonb_build_array(jsonb_build_object(
        'index', 0, 'finish_reason', 'stop', 'message', jsonb_build_object('role', 'assistant', 'content',
        'The ticket describes a timeout in the export of ' || md5((g + 4)::text) ||
        '. The likely cause is the report size; suggest paging the export or raising the limit. ' ||
        'Reference: ' || md5((g + 6)::text) || ' and ' || md5((g + 8)::text) || '.'))),
        'usage', jsonb_build_object('prompt_tokens', 60 + g % 50, 'completion_tokens', 40 + g % 30)),
    jsonb_build_object('headers', jsonb_build_object('authorization', 'Bearer sk-' || md5(g::text) || md5(g::text),
        'user-agent', 'OpenAI/Python 1.51.0', 'content-type', 'application/json')),
    'success'
FROM generate_series(1, $ROWS) g
"#;

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One measured run: name, wall seconds, output bytes, the job's summary (caretaker only), the
/// simulator's p99 and failures, and the load average when it started.
struct Run {
    name: String,
    seconds: f64,
    bytes: u64,
    summary: String,
    p99: f64,
    failed: u64,
    load: String,
}

fn pg_dump(cluster: &pg::Cluster, db: &str, out: &Path, args: &[&str]) -> f64 {
    let started = Instant::now();
    let status = std::process::Command::new(cluster.bin().join("pg_dump"))
        .args(args)
        .arg("-f")
        .arg(out)
        .arg(format!("--dbname={}", cluster.url(db)))
        .status()
        .expect("running pg_dump");
    assert!(status.success(), "pg_dump failed: {status}");
    started.elapsed().as_secs_f64()
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 600_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let rounds: u32 = env_or("CARETAKER_BENCH_ROUNDS", 2);
    let cluster = pg::Cluster::start();
    let temp = tempfile::tempdir().unwrap();
    let dir = common::bench_dir(&temp);
    let db = cluster.litellm_db();
    let loading = Instant::now();
    let mut client = cluster.client(&db);
    client
        .batch_execute(&LOAD.replace("$ROWS", &rows.to_string()))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .unwrap()
        .get(0);
    println!(
        "{rows} rows loaded in {:.1} s; database {:.1} MB; load average {}",
        loading.elapsed().as_secs_f64(),
        size as f64 / 1e6,
        load_average()
    );

    let backups = dir.join("backups");
    let mut runs: Vec<Run> = Vec::new();
    let mut measure = |name: &str, round: u32| {
        let load = load_average();
        // Each simulator starts its keys afresh (`req-<seed>-<n>`): the last one's rows go, or
        // every insert would fail on the primary key.
        cluster
            .client(&db)
            .batch_execute("DELETE FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'req-%'")
            .unwrap();
        let sim = Sim::start_postgres(&cluster.url(&db), &dir, rate, &format!("{name}-{round}"));
        let (seconds, bytes, summary) = match name {
            "pg_dump -Fc" | "pg_dump --compress=0" => {
                let out = dir.join(format!("dump-{round}.pgdump"));
                let args: &[&str] = if name == "pg_dump -Fc" {
                    &["-Fc"]
                } else {
                    &["--format=custom", "--compress=0"]
                };
                let s = pg_dump(&cluster, &db, &out, args);
                let bytes = size_of(&out);
                std::fs::remove_file(&out).unwrap();
                (s, bytes, String::new())
            }
            _ => {
                let verify = name.rsplit(' ').next().unwrap();
                let jobs = dir.join("jobs.yaml");
                std::fs::write(
                    &jobs,
                    format!(
                        "gateway:\n  url: {}\n  schema: litellm\nstate_dir: {}\njobs:\n  bk:\n    on_signal: USR1\n    backup: {{to: {}, keep: {{last: 1}}, verify: {verify}}}\n",
                        cluster.url(&db),
                        dir.join("state").display(),
                        backups.display()
                    ),
                )
                .unwrap();
                let (out, s) = if name.starts_with("before") {
                    let bin = std::env::var("CARETAKER_BENCH_BEFORE").unwrap();
                    let started = Instant::now();
                    let out = std::process::Command::new(bin)
                        .args(["run-job", "bk", "--config"])
                        .arg(&jobs)
                        .env("RUST_LOG", "warn")
                        .output()
                        .unwrap();
                    (out, started.elapsed().as_secs_f64())
                } else {
                    common::run_job("bk", &jobs)
                };
                assert!(out.status.success(), "{}", bins::describe(&out));
                let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let bytes = figure(&summary, "archive_bytes").unwrap_or(0.0) as u64;
                for e in std::fs::read_dir(&backups).unwrap() {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
                (s, bytes, summary)
            }
        };
        let sim = sim.stop();
        println!(
            "round {round} {name}: {seconds:.2} s, {:.1} MB, sim p99 {:.1} ms, {} failed, load {load}",
            bytes as f64 / 1e6,
            sim.latency_ms.p99,
            sim.failed
        );
        if !summary.is_empty() {
            println!("  {summary}");
        }
        runs.push(Run {
            name: name.to_string(),
            seconds,
            bytes,
            summary,
            p99: sim.latency_ms.p99,
            failed: sim.failed,
            load,
        });
    };
    let mut order = vec![
        "pg_dump -Fc",
        "caretaker verify: quick",
        "caretaker verify: none",
        "pg_dump --compress=0",
    ];
    if std::env::var_os("CARETAKER_BENCH_BEFORE").is_some() {
        order.insert(2, "before verify: quick");
    }
    for round in 1..=rounds {
        let mut these = order.to_vec();
        if round % 2 == 0 {
            these.reverse();
        }
        for name in these {
            measure(name, round);
        }
    }

    println!(
        "\n| method | round | wall s | output MB | dump s | compress s | verify s | sim p99 ms | failed inserts | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut round_of = std::collections::BTreeMap::<String, u32>::new();
    for r in &runs {
        let n = round_of.entry(r.name.clone()).or_default();
        *n += 1;
        let phase = |f: &str| {
            figure(&r.summary, f).map_or("-".to_string(), |ms| format!("{:.2}", ms / 1000.0))
        };
        println!(
            "| {} | {} | {:.2} | {:.1} | {} | {} | {} | {:.1} | {} | {} |",
            r.name,
            n,
            r.seconds,
            r.bytes as f64 / 1e6,
            phase("dump_ms"),
            phase("compress_ms"),
            phase("verify_ms"),
            r.p99,
            r.failed,
            r.load
        );
    }
    let best = |name: &str| {
        runs.iter()
            .filter(|r| r.name == name)
            .map(|r| r.seconds)
            .fold(f64::INFINITY, f64::min)
    };
    let reference = best("pg_dump -Fc");
    for name in [
        "caretaker verify: quick",
        "caretaker verify: none",
        "before verify: quick",
    ] {
        if !best(name).is_finite() {
            continue;
        }
        println!(
            "{name}: best {:.2} s against pg_dump -Fc best {reference:.2} s: {:.2}x",
            best(name),
            best(name) / reference
        );
    }
}
