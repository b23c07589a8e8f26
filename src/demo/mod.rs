//! The demo kit: `caretaker demo` runs the daemon on a sample gateway with every job kind on fast schedules.
//!
//! The demo is the product in miniature: a realistic Apantli database (API keys in the
//! payloads, zero costs to re-price, rows old enough to archive), a gateway writing to it
//! while caretaker works, a growing log file, and every job kind on a schedule of seconds.
//!
//! Its parts, [`sample`] (realistic gateway databases) and [`sim`] (a stand-in gateway writing
//! like the real one, behind `gateway-sim`), also serve the tests and benchmarks. The daemon's
//! own path never uses this folder: it sits above the jobs and takes nothing from the command
//! line, which only calls [`run`] and turns its error into the exit code.

pub mod pgsim;
pub mod sample;
pub mod sim;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::Utc;

use sample::SampleOptions;
use sim::{SimOptions, Style};

const PRICES: &str = "\
# USD per million tokens, for the demo's models (caretaker also reads LiteLLM's JSON table).
models:
  gpt-4.1-mini: {input_per_million: 0.4, output_per_million: 1.6, cache_read_per_million: 0.1}
  gpt-4o: {input_per_million: 2.5, output_per_million: 10, cache_read_per_million: 1.25}
  claude-sonnet-4-5: {input_per_million: 3, output_per_million: 15, cache_read_per_million: 0.3, cache_write_per_million: 3.75}
  claude-haiku-4-5: {input_per_million: 1, output_per_million: 5, cache_read_per_million: 0.1, cache_write_per_million: 1.25}
  gemini-2.5-pro: {input_per_million: 1.25, output_per_million: 10, tiers: [{above_tokens: 200k, input_per_million: 2.5, output_per_million: 15}]}
";

fn jobs_file() -> String {
    "\
# caretaker demo: every job kind on a schedule of seconds. Edit this file while the demo runs:
# caretaker reloads it when it changes (or on SIGHUP) and keeps the old one if it is invalid.
gateway:
  database: gateway/requests.db
  schema: apantli
  busy_timeout: 2s
state_dir: state
timezone: UTC
shutdown_timeout: 10s
metrics_file: metrics.prom
log: {format: text, level: info}
alerts:
  file: alerts.jsonl
  repeat_after: 10m
  on_job_failure: true

jobs:
  backup:
    schedule: \"*/40 * * * * *\"
    on_signal: USR1
    backup:
      to: backups
      compression: gzip
      level: 6
      keep: {last: 3, hourly: 24, daily: 7, weekly: 4, monthly: 12}
      verify: quick
  verify-backups:
    schedule: \"30 */2 * * * *\"
    verify: {backups_of: backup, which: rotate}
  integrity:
    schedule: \"*/30 * * * * *\"
    integrity: {check: quick}
  maintenance:
    schedule: \"15 */3 * * * *\"
    maintenance: {checkpoint: passive, analyze: true, vacuum: auto, vacuum_threshold: 20%}
  archive:
    schedule: \"10 * * * * *\"
    on_signal: USR2
    archive:
      older_than: 90d
      to: archive
      format: jsonl
      then: delete
      rows: all
      redact: [api_key]
      batch: 2000
  logrotate:
    schedule: \"*/20 * * * * *\"
    logrotate:
      files: [logs/*.log]
      period: daily
      max_size: 64KB
      rotate: 5
      compress: true
      delay_compress: false
      method: create
      missing_ok: true
  pricing:
    schedule: \"45 * * * * *\"
    pricing:
      prices: prices.yaml
      recompute: missing
      aliases: {sonnet: claude-sonnet-4-5}
  budget:
    schedule: \"*/30 * * * * *\"
    budget:
      limits:
        - {name: daily, period: day, usd: 5, warn_at: [50%, 75%, 100%]}
        - {name: monthly, period: month, usd: 100, warn_at: [90%, 100%]}
  health:
    schedule: \"*/30 * * * * *\"
    health:
      disk_free_min: 5%
      database_max_size: 5GB
      backup_max_age: {job: backup, age: 10m}
      error_rate_max: {share: 20%, over: 1h}
"
    .to_string()
}

/// Prepares the demo in `dir` and runs the daemon on it until it stops; the error is what the
/// command line prints after `error: ` before it exits with a failure.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let jobs = prepare(dir).with_context(|| format!("preparing the demo in {}", dir.display()))?;
    println!("Starting the daemon. Stop it with Ctrl-C.\n");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_gateway(dir, stop.clone());
    // The daemon's error is said as the daemon words it, without its causes' chain.
    let result = crate::daemon::run(&jobs).map_err(|e| anyhow::anyhow!("{e}"));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    result
}

/// Creates what is missing in `dir` (a rerun keeps the existing database) and returns the
/// jobs file's path.
fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)?;
    crate::fsx::private_dir(&dir)?;
    let gateway = dir.join("gateway");
    std::fs::create_dir_all(&gateway)?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let db = gateway.join("requests.db");
    println!("caretaker demo in {}", dir.display());
    if db.exists() {
        println!(
            "  gateway database: {} (kept from an earlier run)",
            db.display()
        );
    } else {
        let summary = sample::create_apantli(
            &db,
            &SampleOptions {
                rows: 30_000,
                days: 120,
                now: Utc::now(),
                seed: 7,
                ..SampleOptions::default()
            },
        )
        .with_context(|| format!("creating the sample database {}", db.display()))?;
        println!(
            "  gateway database: {} — {} requests over 120 days, {} failed, {} with cost 0 to re-price, API keys in request_data",
            db.display(),
            summary.rows,
            summary.error_rows,
            summary.zero_cost_rows
        );
    }
    crate::fsx::write_atomic(&dir.join("prices.yaml"), PRICES.as_bytes())?;
    let jobs = dir.join("jobs.yaml");
    if !jobs.exists() {
        crate::fsx::write_atomic(&jobs, jobs_file().as_bytes())?;
    }
    println!("  jobs file:        {}", jobs.display());
    println!("  price table:      {}", dir.join("prices.yaml").display());
    println!(
        "  gateway log:      {} (grows; rotated past 64 KB)",
        dir.join("logs/apantli.log").display()
    );
    println!(
        "  alerts:           {} (one JSON line per alert)",
        dir.join("alerts.jsonl").display()
    );
    println!("  metrics:          {}", dir.join("metrics.prom").display());
    println!();
    println!("While it runs, from another terminal:");
    println!("  caretaker status --config {}", jobs.display());
    println!(
        "  kill -USR1 $(cat {})    # back up now",
        dir.join("state/caretaker.pid").display()
    );
    println!(
        "  kill -USR2 $(cat {})    # archive now",
        dir.join("state/caretaker.pid").display()
    );
    println!(
        "  caretaker run-job archive --dry-run --config {}",
        jobs.display()
    );
    println!();
    Ok(jobs)
}

/// A gateway at work: request rows at 2 per second, and log lines.
fn start_gateway(dir: &Path, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let db = dir.join("gateway/requests.db");
    let log = dir.join("logs/apantli.log");
    let rows_stop = stop.clone();
    let rows = std::thread::spawn(move || {
        let mut opts = SimOptions::new(db, Style::Apantli, 2.0);
        opts.failed_share = 0.05;
        if let Err(e) = sim::run(&opts, rows_stop) {
            eprintln!("demo gateway writer stopped: {e:#}");
        }
    });
    let lines = std::thread::spawn(move || {
        let mut n: u64 = 0;
        while !stop.load(Ordering::SeqCst) {
            // Reopened per line, as a writer that survives `method: create` rotation does.
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .and_then(|mut f| {
                    writeln!(
                        f,
                        "{} INFO request {n} model=gpt-4.1-mini status=200 duration_ms=812 path=/v1/chat/completions",
                        Utc::now().to_rfc3339()
                    )
                });
            if written.is_err() {
                break;
            }
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    vec![rows, lines]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_jobs_file_is_valid_and_uses_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = crate::config::parse(&dir.path().join("jobs.yaml"), &jobs_file())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut kinds: Vec<&str> = config.jobs.iter().map(|j| j.kind.name()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "archive",
                "backup",
                "budget",
                "health",
                "integrity",
                "logrotate",
                "maintenance",
                "pricing",
                "verify"
            ]
        );
    }

    #[test]
    fn the_demo_price_table_prices_the_sample_models() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.yaml");
        std::fs::write(&path, PRICES).unwrap();
        let table = crate::jobs::pricing::prices::PriceTable::load(&path).unwrap();
        let aliases = Default::default();
        for model in [
            "openai/gpt-4.1-mini",
            "openai/gpt-4o",
            "anthropic/claude-sonnet-4-5",
            "anthropic/claude-haiku-4-5",
            "gemini/gemini-2.5-pro",
        ] {
            assert!(
                table.lookup(model, &aliases).is_some(),
                "{model} has no price"
            );
        }
    }
}
