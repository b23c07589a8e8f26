//! The pricing job on a PostgreSQL gateway against a real server while the LiteLLM simulator
//! writes: a dry run changes nothing; a run re-prices the rows whose `spend` is 0 (or a custom
//! table's cost NULL) from LiteLLM's price table, leaves failed, unpriced and already priced
//! rows alone, and waits out a lock held on its rows with backoff, not an error storm. One
//! cluster for the whole file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::bins;
use common::pg::Cluster;
use common::pgjobs;
use common::pricejob::{self, close, litellm_cost};
use common::sim::Sim;

/// A spend-log row as the checks need it.
#[derive(Debug, Clone, PartialEq)]
struct Spend {
    model: String,
    prompt: i64,
    completion: i64,
    status: Option<String>,
    spend: f64,
}

fn spend_rows(cluster: &Cluster, db: &str) -> BTreeMap<String, Spend> {
    cluster
        .client(db)
        .query(
            "SELECT request_id, model, prompt_tokens::int8, completion_tokens::int8, status, spend FROM \"LiteLLM_SpendLogs\"",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                Spend {
                    model: r.get(1),
                    prompt: r.get(2),
                    completion: r.get(3),
                    status: r.get(4),
                    spend: r.get(5),
                },
            )
        })
        .collect()
}

/// What LiteLLM's table says `row` costs, or `None` for a model it has no price for.
fn priced(table: &serde_json::Value, row: &Spend) -> Option<f64> {
    litellm_cost(
        table,
        &row.model,
        row.prompt as u64,
        row.completion as u64,
        0,
        0,
    )
    .map(|(i, o)| i + o)
}

fn run_job(jobs: &Path, dry_run: bool) -> std::process::Output {
    let mut cmd = bins::caretaker();
    cmd.args(["run-job", "old", "--config"])
        .arg(jobs)
        .env_remove("CARETAKER_CONFIG");
    if dry_run {
        cmd.arg("--dry-run");
    }
    cmd.output().unwrap()
}

#[test]
fn pricing_on_postgresql_reprices_missing_spend_waits_out_a_held_lock_and_dry_runs_change_nothing()
{
    let cluster = Cluster::start();
    litellm_spend_logs(&cluster);
    custom_table_with_a_composite_key_and_null_costs(&cluster);
}

/// LiteLLM's preset, with the simulator writing at 100 rows/s throughout.
fn litellm_spend_logs(cluster: &Cluster) {
    let db = cluster.litellm_db();
    pgjobs::seed_old(cluster, &db, 3000);
    // 40 % of the rows lost their spend (failed ones among them, which keep 0), some under
    // other models, one with a provider prefix, one model the table does not know.
    cluster
        .client(&db)
        .batch_execute(
            "UPDATE \"LiteLLM_SpendLogs\" SET spend = 0 WHERE right(request_id, 1) IN ('0', '1', '2', '3');
             UPDATE \"LiteLLM_SpendLogs\" SET model = 'claude-sonnet-4-5' WHERE right(request_id, 1) = '1';
             UPDATE \"LiteLLM_SpendLogs\" SET model = 'openai/gpt-4.1-mini' WHERE right(request_id, 1) = '3';
             UPDATE \"LiteLLM_SpendLogs\" SET model = 'mystery-model-x' WHERE right(request_id, 2) = '12';",
        )
        .unwrap();
    let table = pricejob::litellm();
    let before = spend_rows(cluster, &db);
    let expected: BTreeMap<String, f64> = before
        .iter()
        .map(|(id, r)| {
            let reprice = r.spend == 0.0 && r.status.as_deref() == Some("success");
            let cost = if reprice { priced(&table, r) } else { None };
            (id.clone(), cost.unwrap_or(r.spend))
        })
        .collect();
    let changes = expected
        .iter()
        .filter(|(id, cost)| **cost != before[*id].spend)
        .count();
    assert!(changes > 700, "{changes} rows to re-price");

    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.2, dir.path());
    let jobs = pgjobs::jobs_file(
        dir.path(),
        &cluster.url(&db),
        &format!(
            "pricing: {{prices: {}}}\n    timeout: 2m",
            pricejob::litellm_path().display()
        ),
    );

    // A dry run says what it would do and changes nothing (its session is read-only too).
    let out = run_job(&jobs, true);
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("would re-price {changes} rows")),
        "{text}"
    );
    assert!(text.contains("mystery-model-x"), "{text}");
    let after_dry: BTreeMap<String, Spend> = spend_rows(cluster, &db)
        .into_iter()
        .filter(|(id, _)| id.starts_with("old-"))
        .collect();
    assert_eq!(after_dry, before, "the dry run changed rows");

    // Another session holds row locks on rows to re-price while the run starts.
    let run = pgjobs::run_through_held_lock(cluster, &db, &jobs, "old-000100", "old-000120");
    assert!(run.success, "{}", run.output);
    let (report, committed) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    // Backoff, not a storm: a handful of tries while the lock was held.
    let timeouts = pgjobs::lock_timeouts(cluster);
    assert!(timeouts <= 12, "{timeouts} lock timeouts\n{}", run.output);
    assert!(
        run.output.contains("trying again after a pause"),
        "{}",
        run.output
    );
    let alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
    assert!(alerts.is_empty(), "{alerts}");

    let now = spend_rows(cluster, &db);
    for (id, want) in &expected {
        let got = now[id].spend;
        assert!(
            close(got, *want),
            "{id} {:?}: spend {got}, expected {want} (was {})",
            now[id],
            before[id].spend
        );
    }
    // The simulator's rows: every committed one is there, priced as the proxy priced it
    // (the same rates), its failed ones at 0: untouched, or priced consistently.
    let mut simulated = 0;
    for id in &committed {
        let row = &now[id];
        simulated += 1;
        let want = match row.status.as_deref() {
            Some("success") => priced(&table, row).unwrap(),
            _ => 0.0,
        };
        assert!(close(row.spend, want), "{id} {row:?}: expected {want}");
    }
    assert!(simulated > 0);

    // A second run finds nothing left to price.
    let out = run_job(&jobs, false);
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("re-priced 0 rows"), "{text}");
}

/// A custom table: a nullable `numeric` cost, an error column, a primary key of two columns.
fn custom_table_with_a_composite_key_and_null_costs(cluster: &Cluster) {
    let db = cluster.empty_db();
    cluster
        .client(&db)
        .batch_execute(
            "CREATE SCHEMA gw;
             CREATE TABLE gw.usage (region text, id bigint, t timestamptz NOT NULL, m text,
                 i integer, o integer, c numeric, err text, PRIMARY KEY (region, id));
             INSERT INTO gw.usage
             SELECT CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g / 2,
                    now() - interval '1 day' + (g / 4) * interval '1 second',
                    'gpt-4o', 1000 + g, 100,
                    CASE WHEN g % 10 = 0 THEN 0.5 END,
                    CASE WHEN g % 10 = 5 THEN 'boom' END
               FROM generate_series(1, 60) g;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "gateway:\n  url: {}\n  schema: custom\n  table: gw.usage\n  columns: {{time: t, time_format: timestamp, model: m, input_tokens: i, output_tokens: o, cost: c, error: err}}\nstate_dir: state\njobs:\n  old:\n    on_signal: USR1\n    pricing: {{prices: {}}}\n",
            cluster.url(&db),
            pricejob::litellm_path().display()
        ),
    )
    .unwrap();
    let out = run_job(&jobs, false);
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("re-priced 48 rows"), "{text}");
    let table = pricejob::litellm();
    for r in cluster
        .client(&db)
        .query(
            "SELECT region, id, i::int8, o::int8, c::float8, err FROM gw.usage",
            &[],
        )
        .unwrap()
    {
        let (region, id, i, o): (String, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let (cost, err): (Option<f64>, Option<String>) = (r.get(4), r.get(5));
        let g = id * 2 + i64::from(region == "us");
        let want = match (g % 10, err) {
            (0, _) => Some(0.5),
            (5, Some(_)) => None,
            _ => litellm_cost(&table, "gpt-4o", i as u64, o as u64, 0, 0).map(|(a, b)| a + b),
        };
        match (cost, want) {
            (Some(c), Some(w)) => assert!(close(c, w), "{region} {id}: {c} != {w}"),
            (c, w) => assert_eq!(c, w, "{region} {id}"),
        }
    }
}
