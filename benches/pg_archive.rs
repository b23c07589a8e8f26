//! Archive-then-purge of LiteLLM spend logs on PostgreSQL, caretaker's `archive` job against
//! LiteLLM's own retention cleanup, side by side in one run with the simulator writing.
//!
//! Run with `cargo bench --bench pg_archive` (needs PostgreSQL's server binaries, as the
//! tests do). `CARETAKER_BENCH_ROWS` (default 50000) rows of about 2 KB of JSONB each are loaded
//! twice, 100 days old; then, while `gateway-sim --postgres` writes at `CARETAKER_BENCH_RATE`
//! (default 100) rows/s, each side removes them: caretaker archives (gzip files, redacted,
//! durable) and deletes; the reference deletes what LiteLLM's cleanup deletes, 1000 rows per
//! `DELETE … WHERE request_id IN (SELECT … LIMIT 1000)` with a 0.1 s sleep between batches, and
//! archives nothing. Prints rows/s of each and their ratio, the simulator's p99 insert latency
//! and failures under each, and the table's size and dead tuples before and after.

mod common;

// The test tree's throwaway cluster, with the two helpers it names as `super::`.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
use common::bins;
#[allow(dead_code)]
#[path = "../tests/common/wait.rs"]
mod wait;

use std::time::{Duration, Instant};

use common::{Sim, env_or};

const LOAD: &str = r#"
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
    completion_tokens, "startTime", "endTime", model, custom_llm_provider, metadata, messages,
    response, proxy_server_request, status)
SELECT 'old-' || lpad(g::text, 9, '0'), 'acompletion', md5(g::text), 0.001, 100, 60, 40,
    now() AT TIME ZONE 'UTC' - interval '100 days' + g * interval '10 ms',
    now() AT TIME ZONE 'UTC' - interval '100 days' + g * interval '10 ms' + interval '1 second',
    'gpt-4o', 'openai',
    jsonb_build_object('trace', md5(g::text) || repeat(md5((g + 1)::text), 8)),
    jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat(md5((g + 2)::text), 12))),
    jsonb_build_object('choices', jsonb_build_array(jsonb_build_object('text', repeat(md5((g + 3)::text), 12)))),
    jsonb_build_object('headers', jsonb_build_object('authorization', 'Bearer sk-' || md5(g::text) || md5(g::text))),
    'success'
FROM generate_series(1, $ROWS) g
"#;

/// Size of the spend logs with TOAST and indexes, and its dead tuples as `pgstattuple` counts
/// them in the pages (the statistics views lag behind by up to a second per session).
fn size_and_dead(cluster: &pg::Cluster, db: &str) -> (i64, i64) {
    let mut c = cluster.client(db);
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .unwrap();
    let row = c
        .query_one(
            "SELECT pg_total_relation_size('\"LiteLLM_SpendLogs\"'), (SELECT dead_tuple_count FROM pgstattuple('\"LiteLLM_SpendLogs\"'))",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 50_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let cluster = pg::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let ours = cluster.litellm_db();
    let theirs = cluster.litellm_db();
    for db in [&ours, &theirs] {
        let mut client = cluster.client(db);
        client
            .batch_execute(&LOAD.replace("$ROWS", &rows.to_string()))
            .unwrap();
        // VACUUM runs alone: not inside the implicit transaction of a batch of statements.
        client.batch_execute("VACUUM ANALYZE").unwrap();
    }
    let (size0, _) = size_and_dead(&cluster, &ours);
    println!(
        "{rows} rows loaded per side, {:.1} MB with TOAST and indexes",
        size0 as f64 / 1e6
    );

    // caretaker: archive-then-purge, then its VACUUM (ANALYZE).
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "gateway:\n  url: {}\n  schema: litellm\nstate_dir: state\njobs:\n  old:\n    on_signal: USR1\n    archive: {{older_than: 30d, to: archive, batch: 2000}}\n",
            cluster.url(&ours)
        ),
    )
    .unwrap();
    let sim = Sim::start_postgres(&cluster.url(&ours), dir.path(), rate, "ours");
    let started = Instant::now();
    let out = bins::caretaker()
        .args(["run-job", "old", "--config"])
        .arg(&jobs)
        .output()
        .unwrap();
    let ours_s = started.elapsed().as_secs_f64();
    let ours_sim = sim.stop();
    assert!(out.status.success(), "{}", bins::describe(&out));
    println!(
        "caretaker's summary: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let (ours_size, ours_dead) = size_and_dead(&cluster, &ours);
    let left: i64 = cluster
        .scalar(
            &ours,
            "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'old-%'",
        )
        .unwrap();
    assert_eq!(left, 0);

    // LiteLLM's cleanup, as its proxy runs it (no VACUUM: it leaves that to autovacuum).
    let sim = Sim::start_postgres(&cluster.url(&theirs), dir.path(), rate, "theirs");
    let mut client = cluster.client(&theirs);
    let cutoff = chrono::Utc::now().naive_utc() - chrono::Duration::days(30);
    let started = Instant::now();
    loop {
        let n = client
            .execute(
                "DELETE FROM \"LiteLLM_SpendLogs\" WHERE request_id IN (SELECT request_id FROM \"LiteLLM_SpendLogs\" WHERE \"startTime\" < $1 LIMIT 1000)",
                &[&cutoff],
            )
            .unwrap();
        if n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let theirs_s = started.elapsed().as_secs_f64();
    let theirs_sim = sim.stop();
    let (theirs_size, theirs_dead) = size_and_dead(&cluster, &theirs);

    let rate_of = |s: f64| rows as f64 / s;
    println!(
        "caretaker archive+purge: {:.1} s, {:.0} rows/s; simulator p99 {:.1} ms, {} failed; after: {:.1} MB, {} dead tuples",
        ours_s,
        rate_of(ours_s),
        ours_sim.latency_ms.p99,
        ours_sim.failed,
        ours_size as f64 / 1e6,
        ours_dead
    );
    println!(
        "LiteLLM cleanup (delete only): {:.1} s, {:.0} rows/s; simulator p99 {:.1} ms, {} failed; after: {:.1} MB, {} dead tuples",
        theirs_s,
        rate_of(theirs_s),
        theirs_sim.latency_ms.p99,
        theirs_sim.failed,
        theirs_size as f64 / 1e6,
        theirs_dead
    );
    println!(
        "ratio (caretaker rows/s / LiteLLM rows/s): {:.2}x",
        theirs_s / ours_s
    );
}
