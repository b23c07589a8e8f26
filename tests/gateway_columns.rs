//! A jobs file that names a table or column the gateway database does not have: every job that
//! reads the request table refuses at the start of its run (and of its dry run), naming the key,
//! the column and the columns that do exist, and changes nothing.

mod common;

use std::path::Path;

use caretaker::demo::sample::{self, SampleOptions};
use chrono::{DurationRound, TimeDelta, Utc};
use common::bins::describe;
use common::dbcare::*;

fn apantli(db: &Path, rows: u64) {
    let options = SampleOptions {
        rows,
        days: 30,
        now: Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap(),
        seed: 11,
        ..SampleOptions::default()
    };
    sample::create_apantli(db, &options).unwrap();
}

/// The Apantli columns, as `schema: custom` spells them, with `error` set to `error_column`.
fn custom_apantli(error_column: &str) -> String {
    format!(
        "custom\n  table: requests\n  columns:\n    time: timestamp\n    time_format: iso8601\n    model: model\n    \
         provider: provider\n    input_tokens: prompt_tokens\n    output_tokens: completion_tokens\n    cost: cost\n    \
         error: {error_column}\n    payload: [request_data, response_data]"
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn archive_of_failed_rows_with_a_misspelt_error_column_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli(&db, 1000);
    let (_, before) = rows(&db, "requests");
    let to = dir.path().join("archive");
    let jobs = format!(
        "  arch:\n    on_signal: USR1\n    archive:\n      older_than: 15d\n      rows: failed\n      to: {}\n",
        to.display()
    );
    let config = jobs_file(dir.path(), &db, &custom_apantli("eror"), &jobs);
    for extra in [&["--dry-run"][..], &[]] {
        let out = run_job(&config, "arch", extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", describe(&out));
        let err = stderr(&out);
        for expected in [
            "gateway.columns.error",
            "`eror`",
            "its columns are: id, timestamp, model, provider",
            "error",
            "nothing was read or changed",
        ] {
            assert!(err.contains(expected), "{extra:?}: {expected}: {err}");
        }
    }
    let (_, after) = rows(&db, "requests");
    assert_eq!(after, before, "no row may change");
    assert!(archive_files(&to).is_empty());

    // The same job with the right name archives only the failed rows, as before.
    let config = jobs_file(dir.path(), &db, &custom_apantli("error"), &jobs);
    let out = run_job(&config, "arch", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let (_, after) = rows(&db, "requests");
    assert!(
        after.len() < before.len() && after.len() > before.len() / 2,
        "{} of {}",
        after.len(),
        before.len()
    );
}

#[test]
fn a_custom_table_that_does_not_exist_is_named_with_the_tables_that_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    apantli(&db, 50);
    let to = dir.path().join("archive");
    let schema = custom_apantli("error").replace("table: requests", "table: request");
    let jobs = format!(
        "  arch:\n    on_signal: USR1\n    archive:\n      older_than: 15d\n      to: {}\n",
        to.display()
    );
    let config = jobs_file(dir.path(), &db, &schema, &jobs);
    let out = run_job(&config, "arch", &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("gateway.table")
            && err.contains("no table `request`")
            && err.contains("its tables are: requests"),
        "{err}"
    );
}

/// An Apantli-like table whose `drop` column is missing.
fn apantli_without(db: &Path, drop: &str) {
    let schema = include_str!("fixtures/schemas/apantli.sql");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(schema).unwrap();
    // Fill it, then rebuild the table without the column (and the indexes that use it).
    let now = Utc::now();
    for i in 0..200_i64 {
        let t = (now - chrono::Duration::hours(i))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        conn.execute(
            "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, cost, error)
             VALUES (?1, 'gpt-4.1-mini', 'openai', 100, 50, 0.5, CASE WHEN ?2 % 10 = 0 THEN 'RateLimitError' END)",
            rusqlite::params![t, i],
        )
        .unwrap();
    }
    conn.execute_batch(
        "DROP INDEX idx_date_provider; DROP INDEX idx_cost; DROP INDEX idx_timestamp;",
    )
    .unwrap();
    conn.execute_batch(&format!("ALTER TABLE requests DROP COLUMN {drop}"))
        .unwrap();
}

/// Runs `job` of `jobs` on an Apantli database in `dir` without the column `without`: the
/// run must fail; returns its standard error.
fn refusal(dir: &Path, without: &str, jobs: &str, job: &str, extra: &[&str]) -> String {
    let db = dir.join("requests.db");
    if !db.exists() {
        apantli_without(&db, without);
    }
    let config = jobs_file(dir, &db, "apantli", jobs);
    let out = run_job(&config, job, extra);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{job} {extra:?}: {}",
        describe(&out)
    );
    stderr(&out)
}

/// A job that reads a column, run on a preset database without it.
struct Missing {
    job: &'static str,
    /// The column the table lacks.
    without: &'static str,
    /// The `jobs:` block; `{prices}` stands for a prices file the case writes.
    jobs: &'static str,
    /// The extra arguments of each run.
    runs: &'static [&'static [&'static str]],
    /// What the refusal must say.
    says: &'static [&'static str],
}

/// Each job kind that reads a column fails on a preset database without it: budget instead of
/// reporting nothing spent, health instead of counting every row as recent, pricing before it
/// reads a row.
#[test]
fn jobs_on_a_preset_database_without_their_column_fail_instead_of_guessing() {
    let cases = [
        Missing {
            job: "spend",
            without: "cost",
            jobs: "  spend:\n    on_signal: USR1\n    budget:\n      limits:\n        - {name: daily, period: day, usd: 1, warn_at: [100%]}\n",
            runs: &[&["--dry-run"], &[]],
            says: &[
                "gateway.schema",
                "no column `cost`",
                "its columns are: id, timestamp",
            ],
        },
        Missing {
            job: "health",
            without: "timestamp",
            jobs: "  health:\n    on_signal: USR1\n    health:\n      error_rate_max: {share: 50%, over: 1h}\n",
            runs: &[&[]],
            says: &["error_rate_max", "gateway.schema", "no column `timestamp`"],
        },
        Missing {
            job: "price",
            without: "cost",
            jobs: "  price:\n    on_signal: USR1\n    pricing:\n      prices: {prices}\n",
            runs: &[&["--dry-run"]],
            says: &["gateway.schema", "no column `cost`"],
        },
    ];
    for Missing {
        job,
        without,
        jobs,
        runs,
        says,
    } in cases
    {
        let dir = tempfile::tempdir().unwrap();
        let prices = dir.path().join("prices.yaml");
        if jobs.contains("{prices}") {
            std::fs::write(
                &prices,
                "models:\n  gpt-4.1-mini: {input_per_million: 0.4, output_per_million: 1.6}\n",
            )
            .unwrap();
        }
        let jobs = jobs.replace("{prices}", &prices.display().to_string());
        for extra in runs {
            let err = refusal(dir.path(), without, &jobs, job, extra);
            for said in says {
                assert!(err.contains(said), "{job} {extra:?}: `{said}` not in {err}");
            }
        }
    }
}
