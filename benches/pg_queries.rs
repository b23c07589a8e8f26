//! The budget and health jobs' statements on a large LiteLLM spend-log table: their server time
//! and their plans, as the server logs them.
//!
//! Run with `cargo bench --bench pg_queries` (needs PostgreSQL's server binaries, as the tests
//! do). `CARETAKER_BENCH_ROWS` (default 10,000,000) rows spread evenly over the last 100 days are
//! filled by the server itself (`INSERT … SELECT … FROM generate_series`, small payloads: these
//! statements read the time, cost, model and status columns only), then `VACUUM ANALYZE`. Each
//! job runs `CARETAKER_BENCH_ROUNDS` (default 3) times with `log_min_duration_statement = 0` and
//! `auto_explain` (`log_analyze`, no per-node timing) logging every statement; the bench prints
//! each of our statements' server time and plan, and fails on a sequential scan of the table.

mod common;

// The test tree's throwaway cluster, with the two helpers it names as `super::`.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
use common::bins;
#[allow(dead_code)]
#[path = "../tests/common/wait.rs"]
mod wait;

use std::time::Instant;

use common::env_or;

const CHUNK: u64 = 1_000_000;

/// Rows `$FROM..=$TO` of `$ROWS`, evenly spread over the 100 days before now, 3 % of them errors.
const FILL: &str = r#"
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
    completion_tokens, "startTime", "endTime", model, custom_llm_provider, metadata, status)
SELECT 'r-' || g, 'acompletion', 'key-' || (g % 50), 0.0001 * (g % 97), 100, 60, 40,
    now() AT TIME ZONE 'UTC' - interval '100 days' * (1 - g::float8 / $ROWS),
    now() AT TIME ZONE 'UTC' - interval '100 days' * (1 - g::float8 / $ROWS) + interval '2 seconds',
    (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'llama-3.1-70b'])[1 + g % 4], 'openai',
    '{"user": "u"}', CASE WHEN g % 33 = 0 THEN 'failure' ELSE 'success' END
FROM generate_series($FROM, $TO) g
"#;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 10_000_000);
    let rounds: u32 = env_or("CARETAKER_BENCH_ROUNDS", 3);
    let cluster = pg::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let db = cluster.litellm_db();
    let mut client = cluster.client(&db);
    let loading = Instant::now();
    let mut from = 1;
    while from <= rows {
        let to = (from + CHUNK - 1).min(rows);
        client
            .batch_execute(
                &FILL
                    .replace("$ROWS", &rows.to_string())
                    .replace("$FROM", &from.to_string())
                    .replace("$TO", &to.to_string()),
            )
            .unwrap();
        println!(
            "  {to} rows after {:.0} s (load {})",
            loading.elapsed().as_secs_f64(),
            load_average()
        );
        from = to + 1;
    }
    let filled = loading.elapsed().as_secs_f64();
    client.batch_execute("VACUUM ANALYZE").unwrap();
    let size: i64 = client
        .query_one(
            "SELECT pg_total_relation_size('\"LiteLLM_SpendLogs\"')",
            &[],
        )
        .unwrap()
        .get(0);
    println!(
        "{rows} rows filled in {filled:.0} s, VACUUM ANALYZE {:.0} s; the table with indexes {:.0} MB",
        loading.elapsed().as_secs_f64() - filled,
        size as f64 / 1e6
    );
    // Every statement with its server time, and its plan as it ran (row counts, no timing per
    // node, which would slow the statement it measures).
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain';
             ALTER DATABASE {db} SET auto_explain.log_min_duration = 0;
             ALTER DATABASE {db} SET auto_explain.log_analyze = on;
             ALTER DATABASE {db} SET auto_explain.log_timing = off;
             ALTER DATABASE {db} SET auto_explain.log_buffers = on;
             ALTER DATABASE {db} SET log_min_duration_statement = 0"
        ))
        .unwrap();
    let jobs = [
        (
            "budget",
            "budget: {limits: [{name: daily, period: day, usd: 100000, warn_at: [100%]}, {name: weekly, period: week, usd: 100000, warn_at: [100%]}, {name: monthly, period: month, usd: 100000, warn_at: [100%]}]}",
        ),
        ("health", "health: {error_rate_max: {share: 50%, over: 1h}}"),
    ];
    for round in 1..=rounds {
        for (name, job) in jobs {
            let jobs_file = dir.path().join("jobs.yaml");
            std::fs::write(
                &jobs_file,
                format!(
                    "gateway:\n  url: {}\n  schema: litellm\nstate_dir: {}\nalerts:\n  file: {}\njobs:\n  {name}:\n    on_signal: USR1\n    {job}\n",
                    cluster.url(&db),
                    dir.path().join("state").display(),
                    dir.path().join("alerts.jsonl").display()
                ),
            )
            .unwrap();
            let before = cluster.log().len();
            let load = load_average();
            let (out, seconds) = common::run_job(name, &jobs_file);
            assert!(out.status.success(), "{}", bins::describe(&out));
            let log = cluster.log();
            let new = &log[before.min(log.len())..];
            println!(
                "\n=== round {round}, {name}: run-job {seconds:.2} s wall, load {load}\n{}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            // The server's log entries of our statements on the spend logs: durations and plans.
            for entry in new
                .split("\n20")
                .filter(|e| e.contains("LiteLLM_SpendLogs"))
            {
                println!("20{}", entry.trim_end());
                assert!(
                    !(entry.contains("Seq Scan on \"LiteLLM_SpendLogs\"")
                        || entry.contains("Seq Scan on LiteLLM_SpendLogs")),
                    "a sequential scan of the spend logs:\n{entry}"
                );
            }
        }
    }
}
