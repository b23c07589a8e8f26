//! `metrics_file` after real job runs, read back by the Prometheus text-format parser of the
//! `prometheus-client` Python package.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use caretaker::metrics::BudgetSpend;
use caretaker::state::State;
use chrono::{TimeZone, Utc};
use common::bins::describe;
use common::health::run_job;
use serde_json::Value;
use tempfile::TempDir;

/// Parses `path` with `prometheus_client.parser.text_string_to_metric_families`; returns
/// `[{name, type, samples: [{name, labels, value}]}]`. The parser raises on malformed text.
fn parse(path: &Path) -> Vec<Value> {
    common::health::require_python("prometheus_client");
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = text_string_to_metric_families(open(sys.argv[1]).read())
print(json.dumps([
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in families
]))
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the file: {}",
        describe(&output)
    );
    serde_json::from_slice(&output.stdout).expect("the parse script prints JSON")
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
}

#[test]
fn the_metrics_file_parses_and_shows_runs_figures_sizes_and_budgets() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    common::health::gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    fs::write(dir.path().join("blocker"), b"").unwrap();
    let textfile_dir = dir.path().join("textfile");
    fs::create_dir(&textfile_dir).unwrap();
    let metrics = textfile_dir.join("caretaker.prom");
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\nmetrics_file: {}\njobs:\n  health:\n    on_signal: USR1\n    health: {{database_max_size: 5GB, wal_max_size: 1GB}}\n  nightly:\n    on_signal: USR2\n    backup: {{to: {}/blocker/b, keep: {{last: 1}}}}\n  spend:\n    on_signal: USR2\n    budget: {{limits: [{{name: daily, period: day, usd: 50, warn_at: [100%]}}]}}\n",
            db.display(),
            dir.path().join("state").display(),
            metrics.display(),
            dir.path().display(),
        ),
    )
    .unwrap();
    // What a budget job keeps for the metrics file.
    {
        let state = State::open(&dir.path().join("state")).unwrap();
        let spend = vec![BudgetSpend {
            limit: "daily".into(),
            period: "day".into(),
            period_start: Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap(),
            spend_usd: 12.5,
            limit_usd: 50.0,
        }];
        state.put("budget:spend", "spend", &spend).unwrap();
    }

    let output = run_job(&config, "health");
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        fs::metadata(&metrics).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let output = run_job(&config, "nightly");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));

    let families = parse(&metrics);
    let health = [("job", "health"), ("kind", "health")];
    let db_bytes = fs::metadata(&db).unwrap().len() as f64;
    assert_eq!(
        sample(&families, "caretaker_gateway_database_bytes", &[]),
        Some(db_bytes)
    );
    assert_eq!(
        sample(&families, "caretaker_gateway_wal_bytes", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_figure",
            &[("job", "health"), ("name", "database_bytes")]
        ),
        Some(db_bytes)
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_last_result",
            &[("job", "health"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_last_result",
            &[("job", "nightly"), ("result", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_last_result",
            &[("job", "nightly"), ("result", "ok")]
        ),
        Some(0.0)
    );
    let now = Utc::now().timestamp() as f64;
    let last_run = sample(
        &families,
        "caretaker_job_last_run_timestamp_seconds",
        &health,
    )
    .unwrap();
    assert!(
        (now - 300.0..=now + 1.0).contains(&last_run),
        "{last_run} vs now {now}"
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_last_success_timestamp_seconds",
            &health
        ),
        Some(last_run)
    );
    assert!(
        sample(
            &families,
            "caretaker_job_last_run_duration_seconds",
            &health
        )
        .unwrap()
            >= 0.0
    );
    assert_eq!(
        sample(
            &families,
            "caretaker_job_last_success_timestamp_seconds",
            &[("job", "nightly")]
        ),
        None
    );
    let budget = [("job", "spend"), ("limit", "daily"), ("period", "day")];
    assert_eq!(
        sample(&families, "caretaker_budget_spend_usd", &budget),
        Some(12.5)
    );
    assert_eq!(
        sample(&families, "caretaker_budget_limit_usd", &budget),
        Some(50.0)
    );
    // The failed backup raised job-failed:nightly; with no sink configured nothing waits.
    assert_eq!(sample(&families, "caretaker_alerts_active", &[]), Some(1.0));
    assert_eq!(
        sample(&families, "caretaker_alerts_undelivered", &[]),
        Some(0.0)
    );
    // Every family is a gauge but the runs' gateway locks, a summary of their quantiles.
    for family in &families {
        let kind = if family["name"] == "caretaker_job_lock_seconds" {
            "summary"
        } else {
            "gauge"
        };
        assert_eq!(family["type"], kind, "{family}");
    }

    // Only the file itself is in the textfile directory: no temporary file left behind.
    let names: Vec<String> = fs::read_dir(&textfile_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["caretaker.prom"]);
}

#[test]
fn a_dry_run_leaves_the_metrics_file_alone() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("requests.db");
    common::health::gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    let metrics = dir.path().join("caretaker.prom");
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\nmetrics_file: {}\njobs:\n  health:\n    on_signal: USR1\n    health: {{database_max_size: 5GB}}\n",
            db.display(),
            dir.path().join("state").display(),
            metrics.display(),
        ),
    )
    .unwrap();
    let output = common::health::caretaker(&[
        "run-job",
        "health",
        "--config",
        config.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(!metrics.exists());
}
