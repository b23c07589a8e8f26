//! gateway-sim: command line for the stand-in gateway in `caretaker::demo::sim`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use caretaker::demo::pgsim::{self, PgSimOptions};
use caretaker::demo::sim::{self, SimOptions, Style};
use clap::Parser;

/// Writes rows into a gateway database the way Apantli, BobaMixer or LiteLLM's proxy does, and
/// reports how many writes failed (rows the real gateway would have lost) and how long writes
/// stalled.
#[derive(Debug, Parser)]
#[command(name = "gateway-sim", version)]
struct Args {
    /// Gateway database (SQLite); its tables are created when missing.
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    db: Option<PathBuf>,
    /// LiteLLM's PostgreSQL database (`postgres://USER@/DB?host=/SOCKET/DIR`, no TLS): write
    /// spend logs as the proxy does; its tables are created when missing.
    #[arg(long)]
    postgres: Option<String>,
    /// Whose write habits to imitate (with --postgres: litellm, the default there).
    #[arg(long, value_enum, required_unless_present = "postgres")]
    style: Option<Style>,
    /// With --postgres: connections in the proxy's pool.
    #[arg(long, default_value_t = 3)]
    pool: usize,
    /// With --postgres: how often the proxy writes its queue (e.g. 1s, 500ms).
    #[arg(long, value_parser = sim::parse_duration, default_value = "1s")]
    batch_interval: Duration,
    /// Writes per second.
    #[arg(long)]
    rate: f64,
    /// How long to write (e.g. 30s, 500ms); without it, until SIGTERM or SIGINT.
    #[arg(long, value_parser = sim::parse_duration)]
    duration: Option<Duration>,
    /// Share of written rows that are error rows (Apantli only).
    #[arg(long, default_value_t = 0.0)]
    failed_share: f64,
    /// Approximate size of Apantli's request_data per row, in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Seed for row contents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON report here (atomically).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Create this file once the first write has committed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write the key of every committed row here, one per line.
    #[arg(long)]
    committed: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the SIGTERM/SIGINT handler")?;
    }
    let style = match (&args.postgres, args.style) {
        (Some(_), None | Some(Style::Litellm)) => Style::Litellm,
        (Some(_), Some(other)) => {
            anyhow::bail!("--postgres writes LiteLLM's spend logs; --style {other:?} writes SQLite")
        }
        (None, Some(style)) => style,
        (None, None) => anyhow::bail!("give --style with --db"),
    };
    let opts = SimOptions {
        duration: args.duration,
        failed_share: args.failed_share,
        payload_bytes: args.payload_bytes,
        seed: args.seed,
        ready_file: args.ready_file,
        committed_file: args.committed,
        ..SimOptions::new(args.db.unwrap_or_default(), style, args.rate)
    };
    let report = match &args.postgres {
        Some(url) => {
            let pg = PgSimOptions {
                pool: args.pool,
                batch_interval: args.batch_interval,
                ..PgSimOptions::new(url.clone())
            };
            pgsim::run(&opts, &pg, stop)?
        }
        None => sim::run(&opts, stop)?,
    };
    let json = serde_json::to_string(&report).context("serializing the report")?;
    println!("{json}");
    if let Some(path) = &args.report {
        caretaker::fsx::write_atomic(path, format!("{json}\n").as_bytes())?;
    }
    Ok(())
}
