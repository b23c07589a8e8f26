//! `caretaker demo --postgres`: a throwaway local PostgreSQL cluster with LiteLLM's spend logs, a proxy writing to it, and the daemon on it.
//!
//! The cluster lives in the temp directory, `caretaker-demo-pg-<hash of DIR>` (its socket
//! there, no TCP port): a Unix socket's path must stay under about 100 bytes, and as root the
//! `postgres` user that runs the server must reach it, which a private demo directory would
//! not allow. It is stopped when the demo ends; a rerun starts it again with its data kept. Only the job kinds that run on
//! PostgreSQL today are in its jobs file (backup with a full verify, log rotation).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::Utc;
use sha2::Digest;

use super::pgcluster::LocalCluster;
use super::pgsim::{self, PgSimOptions};
use super::sim::{SimOptions, Style};

const DATABASE: &str = "litellm";

fn jobs_file(url: &str) -> String {
    format!(
        "\
# caretaker demo on PostgreSQL: LiteLLM's spend logs in a local cluster. Edit this file while
# the demo runs: caretaker reloads it when it changes (or on SIGHUP).
gateway:
  url: {url}
  schema: litellm
  lock_timeout: 200ms
  statement_timeout: 30s
state_dir: state
timezone: UTC
shutdown_timeout: 10s
metrics_file: metrics.prom
log: {{format: text, level: info}}
alerts:
  file: alerts.jsonl

jobs:
  backup:
    schedule: \"*/30 * * * * *\"
    on_signal: USR1
    backup:
      to: backups
      keep: {{last: 3, hourly: 24, daily: 7}}
      verify: full
"
    ) + super::LOGROTATE_JOB
}

/// Prepares the demo in `dir` (starting its cluster) and runs the daemon on it until it stops;
/// the cluster is stopped after.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    crate::fsx::private_dir(&dir)?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let bin = super::pgcluster::server_bin().context(
        "`caretaker demo --postgres` needs PostgreSQL's server programs (initdb, pg_ctl, postgres) under /usr/lib/postgresql/*/bin or in PATH: install them (Debian: apt-get install postgresql)",
    )?;
    let hash = hex::encode(&sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes())[..6]);
    let cluster = LocalCluster {
        bin,
        dir: std::env::temp_dir().join(format!("caretaker-demo-pg-{hash}")),
        port: super::pgcluster::PORT,
    };
    println!("caretaker demo on PostgreSQL in {}", dir.display());
    cluster.init().context("creating the demo's cluster")?;
    cluster.start("").context("starting the demo's cluster")?;
    let result = prepare_and_run(&dir, &cluster);
    if let Err(e) = cluster.stop("fast") {
        eprintln!("stopping the demo's cluster: {e:#}");
    }
    result
}

fn prepare_and_run(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<()> {
    let mut admin = postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls)
        .context("connecting to the demo's cluster")?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])?
        .is_some();
    let url = cluster.url(DATABASE);
    if exists {
        println!("  database:   {DATABASE} (kept from an earlier run)");
    } else {
        admin.batch_execute(&format!("CREATE DATABASE {DATABASE}"))?;
        let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
        pgsim::fill(&mut client, 20_000, 120, Utc::now(), 7, 0.05)?;
        println!(
            "  database:   {DATABASE}: LiteLLM's spend logs, 20000 requests over 120 days, 5% failed, provider keys in proxy_server_request"
        );
    }
    println!(
        "  cluster:    {} (socket there, stopped when the demo ends)",
        cluster.dir.display()
    );
    let jobs = dir.join("jobs.yaml");
    if !jobs.exists() {
        crate::fsx::write_atomic(&jobs, jobs_file(&url).as_bytes())?;
    }
    println!("  jobs file:  {}", jobs.display());
    println!("  psql:       psql '{url}'");
    println!();
    super::print_controls(dir, &jobs);
    println!();
    println!("Starting the daemon. Stop it with Ctrl-C.\n");
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let opts = SimOptions {
                failed_share: 0.05,
                ..SimOptions::new("", Style::Litellm, 2.0)
            };
            if let Err(e) = pgsim::run(&opts, &PgSimOptions::new(url), stop) {
                eprintln!("demo proxy writer stopped: {e:#}");
            }
        })
    };
    let log = super::log_writer(dir.join("logs/litellm.log"), stop.clone());
    let result = crate::daemon::run(&jobs).map_err(|e| anyhow::anyhow!("{e}"));
    stop.store(true, Ordering::SeqCst);
    let _ = proxy.join();
    let _ = log.join();
    result
}
