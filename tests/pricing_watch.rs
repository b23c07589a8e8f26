//! The running daemon re-prices when the price file of a `watch: true` pricing job changes,
//! and refuses an invalid file with a failed, alerted run that changes nothing.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::files::write_replace;
use common::health::status;
use common::pricejob::*;
use common::wait;
use rusqlite::{Connection, params};

/// Costs of the gpt-4o rows, and of the row of a model no table here prices.
fn costs(db: &Path) -> (Vec<Option<f64>>, Option<f64>) {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT cost FROM requests WHERE model = 'gpt-4o' ORDER BY id")
        .unwrap();
    let gpt: Vec<Option<f64>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let other = conn
        .query_row(
            "SELECT cost FROM requests WHERE model = 'mystery'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (gpt, other)
}

/// Replaces the price file the way deployment tools do: a new file renamed over the old.
fn last_run(config: &Path) -> Option<serde_json::Value> {
    let s = status(config);
    let job = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "reprice")
        .cloned()?;
    Some(job["last_run"].clone()).filter(|r| !r.is_null())
}

fn prices(input: f64, output: f64) -> String {
    format!("models:\n  gpt-4o: {{input_per_million: {input}, output_per_million: {output}}}\n")
}

#[test]
fn changing_the_price_file_reprices_in_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("requests.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(caretaker::demo::sample::APANTLI_SCHEMA)
        .unwrap();
    for model in ["gpt-4o", "gpt-4o", "mystery"] {
        conn.execute(
            "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, total_tokens, cost, request_data, response_data) \
             VALUES ('2026-11-20T10:00:00Z', ?1, 'openai', 1000, 100, 1100, NULL, ?2, '{\"usage\": {\"prompt_tokens\": 1000}}')",
            params![model, format!("{{\"model\": \"openai/{model}\"}}")],
        )
        .unwrap();
    }
    drop(conn);
    let price_file = dir.path().join("prices.yaml");
    std::fs::write(
        &price_file,
        "models:\n  other: {input_per_million: 1, output_per_million: 1}\n",
    )
    .unwrap();
    let jobs = format!(
        "  reprice:\n    on_signal: USR2\n    pricing: {{prices: {}, watch: true, recompute: all}}\n",
        price_file.display()
    );
    let config = write_config(dir.path(), &db, "apantli", "", &jobs);
    let log = dir.path().join("daemon.log");
    let mut daemon = common::bins::caretaker()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The watchers are in place once the daemon says it is running.
    wait::until("the daemon to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("caretaker is running")
    });
    assert_eq!(
        costs(&db),
        (vec![None, None], None),
        "nothing runs before the file changes"
    );

    write_replace(&price_file, &prices(2.5, 10.0));
    let first = 1000.0 * 2.5e-6 + 100.0 * 1e-5;
    wait::until(
        "the costs of the new price file",
        Duration::from_secs(30),
        || {
            costs(&db)
                .0
                .iter()
                .all(|c| c.is_some_and(|c| close(c, first)))
        },
    );
    wait::until("the run in status", Duration::from_secs(30), || {
        last_run(&config).is_some_and(|r| r["result"] == "ok")
    });
    let run = last_run(&config).unwrap();
    assert_eq!(run["trigger"], "file change");
    assert_eq!(costs(&db).1, None, "a model without a price keeps its cost");
    let first_id = run["id"].as_i64().unwrap();

    // An invalid file: the run fails, is alerted, and changes nothing.
    write_replace(
        &price_file,
        "models:\n  gpt-4o: {input_per_million: cheap, output_per_million: 10}\n",
    );
    wait::until("the failed run", Duration::from_secs(30), || {
        last_run(&config)
            .is_some_and(|r| r["id"].as_i64() > Some(first_id) && r["result"] == "failed")
    });
    let failed = last_run(&config).unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("prices.yaml"),
        "{failed}"
    );
    assert!(
        status(&config)["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "job-failed:reprice"),
        "the failure is alerted"
    );
    assert!(
        costs(&db)
            .0
            .iter()
            .all(|c| c.is_some_and(|c| close(c, first))),
        "nothing changed"
    );

    // Fixed again: the new prices apply.
    write_replace(&price_file, &prices(5.0, 20.0));
    wait::until(
        "the costs of the fixed price file",
        Duration::from_secs(30),
        || {
            costs(&db)
                .0
                .iter()
                .all(|c| c.is_some_and(|c| close(c, 2.0 * first)))
        },
    );

    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(daemon.wait().unwrap().success());
}
