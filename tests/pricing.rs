//! The pricing job on real sample databases of both gateways, priced from LiteLLM's real table.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use caretaker::demo::sample::{self, SampleOptions};
use caretaker::state::State;
use chrono::{TimeZone, Utc};
use common::pricejob::*;
use rusqlite::{Connection, params};

const PRICING_JOB: &str = "  reprice:\n    on_signal: USR2\n    pricing: {prices: PRICES}\n";

fn pricing_jobs(prices: &Path, extra: &str) -> String {
    let mut jobs = PRICING_JOB.replace("PRICES", &prices.display().to_string());
    if !extra.is_empty() {
        jobs = jobs.replace("pricing: {", &format!("pricing: {{{extra}, "));
    }
    jobs
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 1, 12, 0, 0).unwrap()
}

/// Runs the real binary with `args` and `--config config`, logging at info; asserts that it
/// succeeded and returns its stdout and stderr.
fn caretaker(config: &Path, args: &[&str]) -> (String, String) {
    let out = common::bins::caretaker()
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
    (stdout, stderr)
}

/// (id, cost) of every Apantli row.
fn apantli_costs(db: &Path) -> BTreeMap<i64, Option<f64>> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, cost FROM requests").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A sample Apantli database where a third of the successful rows have cost NULL and a third
/// cost 0, plus rows of a model LiteLLM does not know and one gemini row above its 200k tier.
fn apantli_with_missing_costs(db: &Path, rows: u64) {
    let opts = SampleOptions {
        rows,
        error_share: 0.05,
        zero_cost_share: 0.05,
        ..SampleOptions::default()
    };
    sample::create_apantli(db, &opts).unwrap();
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "UPDATE requests SET cost = NULL WHERE error IS NULL AND id % 3 = 0;
         UPDATE requests SET cost = 0 WHERE error IS NULL AND id % 3 = 1;",
    )
    .unwrap();
    let insert = "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, \
                  total_tokens, cost, duration_ms, request_data, response_data, error) \
                  VALUES ('2025-11-01T10:00:00Z', ?1, ?2, ?3, ?4, ?3 + ?4, ?5, 900, ?6, ?7, NULL)";
    for (i, cost) in [None, None, None, None, Some(0.0), Some(0.0), Some(0.0)]
        .into_iter()
        .enumerate()
    {
        conn.execute(
            insert,
            params![
                "mystery",
                "acme",
                100 + i as i64,
                50,
                cost,
                r#"{"model": "acme/mystery-1", "api_key": "sk-x"}"#,
                r#"{"usage": {"prompt_tokens": 100, "completion_tokens": 50}}"#
            ],
        )
        .unwrap();
    }
    conn.execute(
        insert,
        params![
            "gemini-2.5-pro",
            "gemini",
            250_000,
            2_000,
            Option::<f64>::None,
            r#"{"model": "gemini/gemini-2.5-pro"}"#,
            r#"{"usage": {"prompt_tokens": 250000, "completion_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 100000}}}"#
        ],
    )
    .unwrap();
}

#[test]
fn apantli_null_and_zero_costs_are_repriced_from_litellm_and_unknown_models_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli_with_missing_costs(&db, 3_000);
    let before = apantli_costs(&db);
    let config = load(&write_config(
        dir.path(),
        &db,
        "apantli",
        "",
        &pricing_jobs(&litellm_path(), ""),
    ));
    let state = State::open(&config.state_dir).unwrap();

    let (report, _) = run_at(&config, &state, "reprice", now(), false).unwrap();

    let table = litellm();
    let conn = Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, cost, prompt_tokens, completion_tokens, request_data, response_data, error, model FROM requests")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let (mut repriced, mut checked_cache, mut checked_tier) = (0, 0, 0);
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let cost: Option<f64> = r.get(1).unwrap();
        let old = before[&id];
        let error: Option<String> = r.get(6).unwrap();
        let model: String = r.get(7).unwrap();
        if error.is_some() {
            assert_eq!(cost, Some(0.0), "row {id}: an error row keeps cost 0");
            continue;
        }
        if model == "mystery" {
            assert_eq!(
                cost, old,
                "row {id}: an unknown model keeps its cost (NULL stays NULL, 0 stays 0)"
            );
            continue;
        }
        if !matches!(old, None | Some(0.0)) {
            assert_eq!(
                cost, old,
                "row {id}: a row with a cost is not touched with recompute: missing"
            );
            continue;
        }
        let request: serde_json::Value =
            serde_json::from_str(&r.get::<_, String>(4).unwrap()).unwrap();
        let (read, write) = apantli_cache_tokens(&r.get::<_, String>(5).unwrap());
        let prompt = r.get::<_, i64>(2).unwrap() as u64;
        let (input, output) = litellm_cost(
            &table,
            request["model"].as_str().unwrap(),
            prompt,
            r.get::<_, i64>(3).unwrap() as u64,
            read,
            write,
        )
        .unwrap_or_else(|| panic!("row {id}: sample models are all in LiteLLM's table"));
        let cost = cost.unwrap_or_else(|| panic!("row {id} still has no cost"));
        assert!(
            close(cost, input + output),
            "row {id}: {cost} != {}",
            input + output
        );
        repriced += 1;
        checked_cache += u32::from(read + write > 0);
        checked_tier += u32::from(prompt > 200_000);
    }
    assert!(repriced > 1_500, "{repriced} rows re-priced");
    assert!(
        checked_cache > 100,
        "rows with cache tokens: {checked_cache}"
    );
    assert_eq!(checked_tier, 1);
    // gemini-2.5-pro above 200k: 150k uncached at 2.5e-6, 100k cached at 2.5e-7, 2k out at 1.5e-5.
    let tier_cost: f64 = conn
        .query_row(
            "SELECT cost FROM requests WHERE prompt_tokens = 250000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        close(
            tier_cost,
            150_000.0 * 2.5e-6 + 100_000.0 * 2.5e-7 + 2_000.0 * 1.5e-5
        ),
        "{tier_cost}"
    );

    assert_eq!(figure(&report, "rows_repriced"), repriced as f64);
    assert_eq!(figure(&report, "rows_unpriced"), 7.0);
    assert_eq!(
        figure(&report, "unpriced_rows{model=\"acme/mystery-1\"}"),
        7.0
    );
    assert!(
        report.summary.contains("acme/mystery-1 (7 rows)"),
        "{}",
        report.summary
    );
    let lock = figure(&report, "longest_write_lock_ms");
    assert!(lock > 0.0 && lock < 1_000.0, "longest write lock {lock} ms");

    // Nothing is left to do: a second run changes nothing.
    let (again, _) = run_at(&config, &state, "reprice", now(), false).unwrap();
    assert_eq!(figure(&again, "rows_repriced"), 0.0);
    assert_eq!(figure(&again, "rows_unpriced"), 7.0);
}

#[test]
fn bobamixer_costs_are_repriced_split_and_rounded_like_bobamixer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    sample::create_bobamixer(
        &db,
        &SampleOptions {
            rows: 2_000,
            ..SampleOptions::default()
        },
    )
    .unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "UPDATE usage_records SET input_cost = NULL, output_cost = NULL WHERE rowid % 3 = 0;
         UPDATE usage_records SET input_cost = 0, output_cost = 0 WHERE rowid % 3 = 1;",
    )
    .unwrap();
    let unknown: i64 = conn
        .query_row(
            "SELECT count(*) FROM usage_records WHERE model IN ('qwen2.5-coder:32b', 'deepseek-coder-v2')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(unknown > 0, "the sample has models LiteLLM does not price");
    let config = load(&write_config(
        dir.path(),
        &db,
        "bobamixer",
        "",
        &pricing_jobs(&litellm_path(), ""),
    ));
    let state = State::open(&config.state_dir).unwrap();

    let (report, _) = run_at(&config, &state, "reprice", now(), false).unwrap();

    let table = litellm();
    let round6 = |v: f64| (v * 1e6).round() / 1e6;
    let mut stmt = conn
        .prepare("SELECT rowid, model, input_tokens, output_tokens, input_cost, output_cost FROM usage_records")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut unknown_seen = 0;
    while let Some(r) = rows.next().unwrap() {
        let rowid: i64 = r.get(0).unwrap();
        let model: String = r.get(1).unwrap();
        let (input, output): (Option<f64>, Option<f64>) = (r.get(4).unwrap(), r.get(5).unwrap());
        match litellm_cost(
            &table,
            &model,
            r.get::<_, i64>(2).unwrap() as u64,
            r.get::<_, i64>(3).unwrap() as u64,
            0,
            0,
        ) {
            Some((want_in, want_out)) => {
                // Rounded to 6 decimals like BobaMixer; a product that lands on a half
                // micro-dollar may round either way depending on the float steps.
                for (what, got, want) in [
                    ("input_cost", input, want_in),
                    ("output_cost", output, want_out),
                ] {
                    let got = got.unwrap_or_else(|| panic!("row {rowid} {model}: {what} is NULL"));
                    assert_eq!(
                        got,
                        round6(got),
                        "row {rowid} {model}: {what} {got} has more than 6 decimals"
                    );
                    assert!(
                        (got - want).abs() <= 0.5e-6 + 1e-12,
                        "row {rowid} {model}: {what} {got}, by hand {want}"
                    );
                }
            }
            None => {
                unknown_seen += 1;
                let kept = match rowid % 3 {
                    0 => (None, None),
                    _ => (Some(0.0), Some(0.0)),
                };
                assert_eq!((input, output), kept, "row {rowid} {model} keeps its cost");
            }
        }
    }
    assert_eq!(unknown_seen, unknown);
    let unpriced_missing = figure(&report, "rows_unpriced");
    assert!(unpriced_missing > 0.0 && unpriced_missing <= unknown as f64);
    assert!(
        report.summary.contains("qwen2.5-coder:32b ("),
        "{}",
        report.summary
    );
}

#[test]
fn dry_run_lists_the_changes_and_their_total_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli_with_missing_costs(&db, 500);
    let before = apantli_costs(&db);
    let config = write_config(
        dir.path(),
        &db,
        "apantli",
        "",
        &pricing_jobs(&litellm_path(), ""),
    );
    let (stdout, _) = caretaker(&config, &["run-job", "reprice", "--dry-run"]);
    assert_eq!(apantli_costs(&db), before, "a dry run changes nothing");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("row ") && l.contains(" -> $")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("model gpt-4o") || l.starts_with("model openai/gpt-4o")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("total: ")), "{stdout}");
    assert!(stdout.contains("would re-price"), "{stdout}");
    assert!(stdout.contains("acme/mystery-1 (7 rows)"), "{stdout}");
}

#[test]
fn an_invalid_price_file_fails_the_run_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli_with_missing_costs(&db, 200);
    let before = apantli_costs(&db);
    let prices = dir.path().join("prices.yaml");
    std::fs::write(
        &prices,
        "models:\n  gpt-4o: {input_per_million: cheap, output_per_million: 10}\n",
    )
    .unwrap();
    let config = load(&write_config(
        dir.path(),
        &db,
        "apantli",
        "",
        &pricing_jobs(&prices, ""),
    ));
    let state = State::open(&config.state_dir).unwrap();
    let error = format!(
        "{:#}",
        run_at(&config, &state, "reprice", now(), false).unwrap_err()
    );
    assert!(
        error.contains("prices.yaml") && error.contains("nothing was changed"),
        "{error}"
    );
    assert_eq!(apantli_costs(&db), before);
}

#[test]
fn since_and_recompute_all_select_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    // 30 days of rows ending at now(); every successful row priced at half LiteLLM's price.
    sample::create_apantli(
        &db,
        &SampleOptions {
            rows: 600,
            error_share: 0.0,
            zero_cost_share: 0.0,
            ..SampleOptions::default()
        },
    )
    .unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("UPDATE requests SET cost = cost / 2")
        .unwrap();
    let before = apantli_costs(&db);
    let config = load(&write_config(
        dir.path(),
        &db,
        "apantli",
        "",
        &pricing_jobs(&litellm_path(), "recompute: all, since: 7d"),
    ));
    let state = State::open(&config.state_dir).unwrap();
    run_at(&config, &state, "reprice", now(), false).unwrap();
    let after = apantli_costs(&db);
    let bound = (now() - chrono::Duration::days(7))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let mut stmt = conn
        .prepare("SELECT id, timestamp >= ?1 FROM requests")
        .unwrap();
    let recent: Vec<(i64, bool)> = stmt
        .query_map([&bound], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (mut changed, mut kept) = (0, 0);
    for (id, is_recent) in recent {
        if is_recent {
            assert_ne!(
                after[&id], before[&id],
                "row {id} is within `since` and mispriced"
            );
            changed += 1;
        } else {
            assert_eq!(after[&id], before[&id], "row {id} is older than `since`");
            kept += 1;
        }
    }
    assert!(changed > 50 && kept > 300, "changed {changed}, kept {kept}");
}

/// Runs the real binary's pricing job while the simulated gateway writes; returns the sim's
/// report, the job's output and the keys the sim committed.
fn reprice_under_load(
    db: &Path,
    dir: &Path,
    schema: &str,
    style: &str,
    rate: &str,
) -> (serde_json::Value, String, BTreeSet<String>) {
    let config = write_config(dir, db, schema, "", &pricing_jobs(&litellm_path(), ""));
    let sim = common::sim::Sim::start(db, style, rate.parse().unwrap(), 0.0, dir);
    let out = common::bins::caretaker()
        .args(["run-job", "reprice", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (report, committed) = sim.stop();
    let sim = serde_json::to_value(report).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sim, stdout, committed)
}

#[test]
fn the_apantli_gateway_writing_meanwhile_loses_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    sample::create_apantli(
        &db,
        &SampleOptions {
            rows: 20_000,
            ..SampleOptions::default()
        },
    )
    .unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE requests SET cost = NULL WHERE error IS NULL")
        .unwrap();
    let (sim, out, committed) = reprice_under_load(&db, dir.path(), "apantli", "apantli", "10");
    println!("{out}\nsim: {sim}");
    assert_eq!(sim["failed"], 0, "the gateway lost rows: {sim}");
    assert!(sim["committed"].as_u64().unwrap() > 0);
    // Every committed row is in the database.
    let conn = Connection::open(&db).unwrap();
    for id in &committed {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "committed row {id} is missing");
    }
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests WHERE cost IS NULL AND error IS NULL AND id <= 20000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "every sample row was re-priced");
}

#[test]
fn the_bobamixer_gateway_meets_our_write_lock_less_than_one_percent_of_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    sample::create_bobamixer(
        &db,
        &SampleOptions {
            rows: 5_000,
            ..SampleOptions::default()
        },
    )
    .unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE usage_records SET input_cost = NULL, output_cost = NULL")
        .unwrap();
    let (sim, out, _) = reprice_under_load(&db, dir.path(), "bobamixer", "bobamixer", "20");
    println!("{out}\nsim: {sim}");
    // BobaMixer's inserts never wait for a lock, so no writer of the database can promise
    // that none meets it; the job holds it less than 1 % of its run, so an insert is lost
    // with at most that chance while the job runs (none, most runs).
    let share: f64 = out
        .split("write_lock_share=")
        .nth(1)
        .and_then(|rest| rest.split([' ', ')']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no write_lock_share in {out}"));
    assert!(
        share < 0.01,
        "the job held the write lock {:.2} % of its run",
        share * 100.0
    );
    let (failed, attempted) = (
        sim["failed"].as_u64().unwrap(),
        sim["attempted"].as_u64().unwrap(),
    );
    // The simulator runs only while the job does (about 2 s at 20 inserts/s), so the count
    // of lost inserts is a small binomial sample: with a 1 % chance each, 4 or more lost in
    // ~50 happens about once in a thousand runs, while a job that held the lock a fifth of
    // the time would lose about 10.
    assert!(attempted >= 20, "the simulator barely ran: {sim}");
    assert!(
        failed <= 3 + attempted / 50,
        "the gateway lost more rows than the lock share explains: {sim}"
    );
}

/// Apantli rows as the real gateway logs a client's alias: the `model` column holds the
/// client's name (`claude-haiku-3.5`), `request_data` the provider's
/// (`anthropic/claude-3-5-haiku-20241022`, a model LiteLLM's table no longer lists). Cost NULL.
fn add_haiku_rows(db: &Path, n: i64) {
    let conn = Connection::open(db).unwrap();
    for i in 0..n {
        conn.execute(
            "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, \
             total_tokens, cost, duration_ms, request_data, response_data, error) \
             VALUES ('2025-11-01T10:00:00Z', 'claude-haiku-3.5', 'anthropic', ?1, ?2, ?1 + ?2, NULL, 700, ?3, ?4, NULL)",
            params![
                1_000 + i,
                200 + i,
                r#"{"model": "anthropic/claude-3-5-haiku-20241022", "messages": []}"#,
                format!(
                    r#"{{"usage": {{"prompt_tokens": {}, "completion_tokens": {}}}}}"#,
                    1_000 + i,
                    200 + i
                )
            ],
        )
        .unwrap();
    }
}

/// (cost, prompt tokens, completion tokens) of the haiku rows.
fn haiku_costs(db: &Path) -> Vec<(Option<f64>, u64, u64)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT cost, prompt_tokens, completion_tokens FROM requests WHERE model = 'claude-haiku-3.5' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The target the docs use for Claude 3.5 Haiku: its Bedrock entry, at the same rates.
const HAIKU_TARGET: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

fn assert_haiku_priced(db: &Path) {
    let table = litellm();
    let rows = haiku_costs(db);
    assert_eq!(rows.len(), 12);
    for (cost, prompt, completion) in rows {
        let (input, output) = litellm_cost(&table, HAIKU_TARGET, prompt, completion, 0, 0)
            .expect("the target is in LiteLLM's table");
        let cost = cost.unwrap_or_else(|| panic!("a haiku row ({prompt} tokens) is unpriced"));
        assert!(close(cost, input + output), "{cost} != {}", input + output);
    }
}

/// A sample Apantli database in `dir` with 12 haiku rows, and a jobs file whose pricing job
/// has `aliases` (a YAML flow mapping item); returns the database and the jobs file.
fn haiku_gateway(dir: &Path, aliases: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("requests.db");
    apantli_with_missing_costs(&db, 300);
    add_haiku_rows(&db, 12);
    let config = write_config(
        dir,
        &db,
        "apantli",
        "",
        &pricing_jobs(&litellm_path(), aliases),
    );
    (db, config)
}

/// Re-prices a sample Apantli database with haiku rows under `aliases: {key: HAIKU_TARGET}`,
/// checks that every haiku row got the target's price, and returns the run's summary.
fn reprice_haiku_with_alias(key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = haiku_gateway(dir.path(), &format!("aliases: {{{key}: {HAIKU_TARGET}}}"));
    let config = load(&config);
    let state = State::open(&config.state_dir).unwrap();
    let (report, _) = run_at(&config, &state, "reprice", now(), false).unwrap();
    assert_haiku_priced(&db);
    assert!(
        !report.summary.contains("matched none"),
        "{key}: {}",
        report.summary
    );
    report.summary
}

#[test]
fn an_alias_keyed_by_the_clients_model_name_reprices_apantli_rows() {
    // The `model` column's name, as the real Apantli writes it.
    let summary = reprice_haiku_with_alias("claude-haiku-3.5");
    assert!(
        !summary.contains("anthropic/claude-3-5-haiku-20241022 ("),
        "the haiku rows are not unpriced any more: {summary}"
    );
}

#[test]
fn an_alias_keyed_by_the_payloads_model_name_reprices_apantli_rows() {
    // Keyed by request_data's model, with and without its provider prefix.
    reprice_haiku_with_alias("anthropic/claude-3-5-haiku-20241022");
    reprice_haiku_with_alias("claude-3-5-haiku-20241022");
}

#[test]
fn an_alias_that_matches_no_row_or_names_no_price_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = haiku_gateway(
        dir.path(),
        "aliases: {claude-haiku-3.5: claude-3-5-haiku-20241022, no-such-client-model: gpt-4o}",
    );
    // Through the binary, in a dry run and a real run: what a person reads.
    for dry_run in [true, false] {
        let mut args = vec!["run-job", "reprice"];
        if dry_run {
            args.push("--dry-run");
        }
        let (stdout, _) = caretaker(&config, &args);
        assert!(
            stdout.contains("1 of 2 aliases matched none of the ")
                && stdout.contains("rows looked at: no-such-client-model ("),
            "dry run {dry_run}: {stdout}"
        );
        assert!(
            stdout.contains("1 aliases name a model without a per-token price in ")
                && stdout.contains(": claude-haiku-3.5 -> claude-3-5-haiku-20241022"),
            "dry run {dry_run}: {stdout}"
        );
        if dry_run {
            assert!(
                stdout
                    .lines()
                    .any(|l| l
                        .starts_with("alias no-such-client-model -> gpt-4o: matched none of the ")),
                "{stdout}"
            );
            assert!(
                stdout
                    .lines()
                    .any(|l| l
                        == "alias claude-haiku-3.5 -> claude-3-5-haiku-20241022: matched 12 rows"),
                "{stdout}"
            );
        }
    }
    // The retired target priced nothing: the rows keep their cost.
    assert!(haiku_costs(&db).iter().all(|(cost, _, _)| cost.is_none()));
}

/// Every `aliases:` example the operator may copy (jobs.example.yaml, README.md, docs/**.md
/// and the demo's jobs file), as (file, line, alias, target). Flow mappings on the line
/// (`aliases: {a: b, c: d}`) and block mappings below it are both read.
fn documented_aliases() -> Vec<(String, usize, String, String)> {
    let root = common::bins::repo_file("");
    let mut files = vec![
        root.join("jobs.example.yaml"),
        root.join("README.md"),
        root.join("src/demo/mod.rs"),
    ];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    let pair = |text: &str| -> Option<(String, String)> {
        let (k, v) = text.split_once(": ")?;
        let clean = |s: &str| s.trim().trim_matches(['"', '\'']).to_string();
        Some((clean(k), clean(v.split(" #").next().unwrap_or(v))))
    };
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // Only YAML: `aliases:` followed by a mapping, not prose or Rust that names the key.
            let Some(at) = line.find("aliases:") else {
                continue;
            };
            let rest = line[at + "aliases:".len()..].trim();
            if let Some(flow) = rest.strip_prefix('{') {
                let body = flow.split('}').next().unwrap();
                for item in body.split(',').filter(|s| !s.trim().is_empty()) {
                    let (k, v) = pair(item)
                        .unwrap_or_else(|| panic!("{name}:{}: cannot read `{item}`", i + 1));
                    found.push((name.clone(), i + 1, k, v));
                }
            } else if rest.is_empty() || rest.starts_with('#') {
                let indent = line.len() - line.trim_start().len();
                for (j, below) in lines.iter().enumerate().skip(i + 1) {
                    let deeper = below.len() - below.trim_start().len() > indent;
                    if below.trim().is_empty() || !deeper {
                        break;
                    }
                    if let Some((k, v)) = pair(below.trim_start().trim_start_matches("#: ")) {
                        found.push((name.clone(), j + 1, k, v));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_documented_alias_names_a_priced_model_of_the_shipped_table() {
    let table = caretaker::jobs::pricing::prices::PriceTable::load(&litellm_path()).unwrap();
    let examples = documented_aliases();
    let files: std::collections::BTreeSet<&str> =
        examples.iter().map(|(f, ..)| f.as_str()).collect();
    for must in ["jobs.example.yaml", "docs/jobs/pricing.md"] {
        assert!(
            files.contains(must),
            "no aliases example found in {must}: {examples:?}"
        );
    }
    let broken: Vec<String> = examples
        .iter()
        .filter(|(.., target)| !table.prices_alias_target(target))
        .map(|(file, line, alias, target)| format!("{file}:{line}: {alias} -> {target}"))
        .collect();
    assert!(
        broken.is_empty(),
        "aliases whose target has no per-token price in {}:\n{}",
        litellm_path().display(),
        broken.join("\n")
    );
}

/// Every `name=value` figure printed after a summary, parsed.
fn printed_figures(line: &str) -> Vec<(String, String)> {
    let start = line.rfind(" (").expect("figures after the summary") + 2;
    line[start..line.len() - 1]
        .split(' ')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn what_a_person_reads_has_no_negative_zero_no_float_noise_and_no_glued_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = haiku_gateway(dir.path(), "");
    let metrics = dir.path().join("metrics.prom");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("metrics_file: {}\n{text}", metrics.display()),
    )
    .unwrap();
    let run = |args: &[&str]| caretaker(&config, args);

    // The dry run: the plan's lines each on their own, the prefix on the summary line.
    let (dry, _) = run(&["run-job", "reprice", "--dry-run"]);
    let first = dry.lines().next().unwrap();
    assert!(
        first.starts_with("model ") && !first.contains("dry run"),
        "the first line is the plan's own: {dry}"
    );
    let summary = dry
        .lines()
        .find(|l| l.starts_with("reprice: dry run: "))
        .unwrap_or_else(|| panic!("no prefixed summary line: {dry}"));
    assert!(
        summary.starts_with("reprice: dry run: would re-price "),
        "{summary}"
    );
    assert_eq!(dry.lines().last(), Some(summary), "{dry}");

    // A run that re-prices rows, then one that has nothing left to re-price.
    let (done, stderr) = run(&["run-job", "reprice"]);
    // The metrics keep the figure whole; the printed line rounds it.
    let printed: f64 = printed_figures(done.trim())
        .into_iter()
        .find(|(k, _)| k == "usd_after")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no usd_after in {done}"));
    let whole: f64 = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .find(|l| l.contains("name=\"usd_after\"") && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no usd_after in {}", metrics.display()));
    assert!(
        whole != printed && (whole - printed).abs() <= 5e-4 * whole,
        "metrics {whole}, printed {printed}"
    );
    let (nothing, _) = run(&["run-job", "reprice"]);
    for (what, line) in [("first run", done.trim()), ("second run", nothing.trim())] {
        assert!(
            !line.contains("$-") && !line.contains("-$0.00"),
            "{what}: {line}"
        );
        for (name, value) in printed_figures(line) {
            assert!(value != "-0", "{what}: {name}=-0 in {line}");
            let digits = value.trim_start_matches('-').replace('.', "");
            let significant = digits.trim_start_matches('0').len();
            assert!(
                significant <= 4 || !value.contains('.'),
                "{what}: {name}={value} is not rounded for a person: {line}"
            );
        }
    }
    assert!(
        nothing.contains("re-priced 0 rows from ")
            && nothing.contains(": $0.00 -> $0.00 (+$0.00); "),
        "{nothing}"
    );
    assert!(nothing.contains(" usd_before=0 usd_after=0 "), "{nothing}");
    // The run's log line: its duration rounded too.
    let seconds = stderr
        .split("seconds=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no seconds= in the log: {stderr}"));
    assert!(
        seconds
            .trim_start_matches("0.")
            .trim_start_matches('0')
            .len()
            <= 4,
        "seconds={seconds} is not rounded for a person"
    );
}
