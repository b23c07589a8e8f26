//! The commands of the `caretaker` binary and their exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::Utc;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::alerts::{self, Sink};
use crate::config::{self, Config};
use crate::daemon::{self, StartError};
use crate::runner::{self, Trigger};
use crate::state::State;

/// Exit codes of every command.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LOCKED: u8 = 3;
    /// Standard output was closed by its reader (`caretaker check | head -1`): what a shell
    /// reports for a program killed by SIGPIPE (128 + 13), as `set -o pipefail` scripts expect
    /// of coreutils. Nothing is printed.
    pub const BROKEN_PIPE: u8 = 141;
}

/// Writes a command's output to stdout at once. A reader that went away is a quiet exit with
/// [`exit::BROKEN_PIPE`]; any other failure (a full disk: `check > /dev/full`) is said on
/// stderr and is [`exit::FAILED`]. Never a panic, as `println!` would be.
fn emit(text: &str) -> Result<(), u8> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(exit::BROKEN_PIPE),
        Err(e) => {
            say(&format!("error: writing to standard output: {e}"));
            Err(exit::FAILED)
        }
    }
}

/// Writes one line to stderr. Where stderr itself cannot be written, there is nobody left to
/// tell: the failure is dropped rather than turned into a panic, as `eprintln!` would.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[derive(Debug, Parser)]
#[command(
    name = "caretaker",
    version,
    about = "Keeps an LLM gateway's SQLite data healthy: backups, integrity, maintenance, archiving, log rotation, pricing, budget and health alerts."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The jobs file [default: $CARETAKER_CONFIG, else /etc/caretaker/jobs.yaml]
    #[arg(long, value_name = "FILE", env = "CARETAKER_CONFIG", default_value = config::DEFAULT_PATH, hide_default_value = true, hide_env_values = true)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd and launchd supervise it)
    Run(ConfigArg),
    /// Validate the jobs file and list each job with its next 3 run times
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also contact each remote: list, put and delete a small probe object
        #[arg(long)]
        remotes: bool,
    },
    /// Run one job now in the foreground and print its report
    RunJob {
        /// The job's name in the jobs file
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print what the job would do, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Each job's last run, result, duration and next run; pending alerts
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Verify a backup archive, then restore its database to PATH (or every database and file under a directory, or a PostgreSQL database)
    Restore {
        /// The backup archive (.tar.gz or .tar), or its copy on a remote (s3://BUCKET/KEY)
        archive: PathBuf,
        /// The jobs file naming the remote, for an s3:// archive
        #[command(flatten)]
        config: ConfigArg,
        /// Where to put the database; for an archive of several databases (or an existing
        /// directory) a new or empty directory that receives all of them; for a PostgreSQL
        /// backup postgres://USER@HOST/DATABASE (password from PGPASSWORD or ~/.pgpass)
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
        /// Restore only this database of the archive to PATH: `gateway`, a name of the jobs
        /// file's `databases:`, or `name:path` for one match of a glob
        #[arg(long, value_name = "NAME")]
        database: Option<String>,
        /// Replace an existing file (a safety copy is kept); for PostgreSQL, restore into a
        /// database that has tables
        #[arg(long)]
        force: bool,
    },
    /// Create a sample gateway and jobs file on fast schedules, then run the daemon on it
    Demo {
        /// Where to create the demo [default: ./caretaker-demo]
        dir: Option<PathBuf>,
        /// LiteLLM's spend logs in a throwaway local PostgreSQL cluster (needs the server
        /// programs, e.g. Debian's postgresql package) instead of a SQLite gateway
        #[arg(long)]
        postgres: bool,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Run(c) => run(&c.config),
        Command::Check { config, remotes } => check(&config.config, remotes),
        Command::RunJob {
            name,
            config,
            dry_run,
        } => run_job(&config.config, &name, dry_run),
        Command::Status { config, json } => status(&config.config, json),
        Command::Restore {
            archive,
            config,
            to,
            database,
            force,
        } => match archive.to_str().filter(|a| a.starts_with("s3://")) {
            Some(url) => restore_remote(&config.config, url, &to, database.as_deref(), force),
            None => restore(&archive, &archive, &to, database.as_deref(), force),
        },
        Command::Demo { dir, postgres } => demo(
            &dir.unwrap_or_else(|| PathBuf::from("caretaker-demo")),
            postgres,
        ),
    };
    ExitCode::from(code)
}

fn demo(dir: &Path, postgres: bool) -> u8 {
    let ran = if postgres {
        crate::demo::pgdemo::run(dir)
    } else {
        crate::demo::run(dir)
    };
    match ran {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::FAILED
        }
    }
}

fn load(path: &Path) -> Result<Config, u8> {
    load_for(path, config::Purpose::Run)
}

fn load_for(path: &Path, purpose: config::Purpose) -> Result<Config, u8> {
    match config::load_for(path, purpose) {
        Ok((config, warnings)) => {
            for w in warnings {
                say(&format!("warning: {w}"));
            }
            Ok(config)
        }
        Err(errors) => {
            say(&errors.to_string());
            Err(exit::USAGE)
        }
    }
}

fn run(path: &Path) -> u8 {
    match daemon::run(path) {
        Ok(()) => exit::OK,
        Err(StartError::Config(errors)) => {
            say(&format!("{errors}"));
            exit::USAGE
        }
        Err(StartError::Locked(e)) => {
            say(&format!("error: {e}"));
            exit::LOCKED
        }
        Err(StartError::Other(e)) => {
            say(&format!("error: {e:#}"));
            exit::FAILED
        }
    }
}

fn check(path: &Path, remotes: bool) -> u8 {
    // Contacting the remotes needs the credentials themselves, as the daemon has them.
    let purpose = if remotes {
        config::Purpose::Run
    } else {
        config::Purpose::Check
    };
    let config = match load_for(path, purpose) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Said here and at the daemon's start, not at every `run-job` and `status`.
    for w in crate::jobs::advice(&config.jobs, config.settings().preset) {
        eprintln!("warning: {w}");
    }
    let now = Utc::now();
    let mut out = format!(
        "{}: valid; {} job{}, times in {}\n",
        path.display(),
        config.jobs.len(),
        if config.jobs.len() == 1 { "" } else { "s" },
        config.timezone
    );
    for line in config.databases.describe_now() {
        out.push_str(&format!("  {line}\n"));
    }
    for job in &config.jobs {
        let signals: Vec<String> = job.on_signal.iter().map(|s| format!("SIG{s}")).collect();
        let mut line = format!("  {} ({})", job.name, job.kind.name());
        if let Some(s) = &job.schedule {
            let next: Vec<String> = s
                .upcoming(now, config.timezone, 3)
                .iter()
                .map(|t| {
                    t.with_timezone(&config.timezone)
                        .format("%Y-%m-%d %H:%M:%S %Z")
                        .to_string()
                })
                .collect();
            line.push_str(&format!(
                "\n    schedule \"{}\": next {}",
                s.as_str(),
                next.join(", ")
            ));
        }
        if !signals.is_empty() {
            line.push_str(&format!("\n    on {}", signals.join(", ")));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let mut code = exit::OK;
    if remotes {
        let (lines, ok) = crate::remote::client::probe_all(&config.remotes);
        out.push_str(&lines);
        if !ok {
            code = exit::FAILED;
        }
    }
    match emit(&out) {
        Ok(()) => code,
        Err(code) => code,
    }
}

fn run_job(path: &Path, name: &str, dry_run: bool) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(&config.log);
    let Some(job) = config.job(name) else {
        let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        say(&format!(
            "error: no job `{name}` in {}; jobs: {}",
            path.display(),
            names.join(", ")
        ));
        return exit::USAGE;
    };
    let state = match State::open(&config.state_dir) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("error: {e:#}"));
            return exit::FAILED;
        }
    };
    // Next to two daemons of a PostgreSQL gateway, only where the active one runs (or none).
    let _standby = match &config.settings().postgres {
        Some(server) if job.kind.touches_gateway() && !dry_run => {
            match crate::gateway::postgres::standby::for_run_job(
                server,
                &config.settings().table,
                &config.state_dir,
            ) {
                Ok(held) => Some(held),
                Err(e) => {
                    say(&format!("error: {e:#}"));
                    return exit::LOCKED;
                }
            }
        }
        _ => None,
    };
    let outcome = runner::run(
        &config,
        &state,
        job,
        Trigger::Manual,
        dry_run,
        Arc::new(AtomicBool::new(false)),
    );
    // Copies the run queued go out now; what fails stays queued for the daemon.
    let mut upload_failed = false;
    let copies = job
        .kind
        .remotes_named()
        .iter()
        .any(|(key, _)| key.starts_with("copy_to"));
    if !dry_run && copies {
        match crate::uploads::process_config(&config, &state, Utc::now()) {
            Ok(pass) => {
                for url in &pass.uploaded {
                    say(&format!("{name}: copied to {url}"));
                }
                for url in &pass.pruned {
                    say(&format!("{name}: deleted {url} (remote retention)"));
                }
                for e in &pass.failed {
                    say(&format!("{name}: error: {e}"));
                }
                upload_failed = !pass.failed.is_empty();
            }
            Err(e) => {
                say(&format!(
                    "{name}: error: uploading the queued copies: {e:#}"
                ));
                upload_failed = true;
            }
        }
    }
    // Deliver what this run raised before exiting, as the daemon would.
    let delivered = Sink::from_settings(&config.alerts).and_then(|sinks| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(alerts::deliver_due(&state, &sinks, Utc::now()))
    });
    if let Err(e) = delivered {
        say(&format!(
            "warning: alerts stay queued for the daemon: {e:#}"
        ));
    }
    match outcome.result {
        runner::Result::Ok => {
            // The plan's lines first, each on its own; the prefix goes on the summary line.
            let report = outcome.report.unwrap_or_default();
            let prefix = if dry_run { "dry run: " } else { "" };
            let mut out = String::new();
            for line in &report.plan {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str(&format!("{name}: {prefix}{}\n", report.summary_line()));
            match emit(&out) {
                Ok(()) if upload_failed => exit::FAILED,
                Ok(()) => exit::OK,
                Err(code) => code,
            }
        }
        runner::Result::Failed(message) => {
            say(&format!("{name}: failed: {message}"));
            exit::FAILED
        }
        runner::Result::Skipped(why) => {
            say(&format!("{name}: not run: {why}"));
            exit::FAILED
        }
    }
}

#[derive(Serialize)]
struct JobStatus {
    name: String,
    kind: &'static str,
    last_run: Option<crate::state::RunRecord>,
    last_duration_s: Option<f64>,
    next_run: Option<chrono::DateTime<Utc>>,
}

#[derive(Serialize)]
struct PendingAlert {
    id: i64,
    subject: String,
    sink: String,
    attempts: u32,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct Status {
    jobs: Vec<JobStatus>,
    remotes: Vec<crate::remote::status::RemoteStatus>,
    active_alerts: Vec<String>,
    pending_alerts: Vec<PendingAlert>,
    /// A PostgreSQL gateway's daemon: `active` or `standby` (see docs/postgres.md), or
    /// `not running`.
    #[serde(skip_serializing_if = "Option::is_none")]
    standby: Option<String>,
}

fn status(path: &Path, json: bool) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state = match State::open(&config.state_dir) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("error: {e:#}"));
            return exit::FAILED;
        }
    };
    let now = Utc::now();
    let gather = || -> anyhow::Result<Status> {
        let mut jobs = Vec::new();
        for job in &config.jobs {
            let last = state.last_run_settled(&job.name)?;
            jobs.push(JobStatus {
                name: job.name.clone(),
                kind: job.kind.name(),
                last_duration_s: last
                    .as_ref()
                    .and_then(|r| r.duration())
                    .map(|d| d.as_secs_f64()),
                last_run: last,
                next_run: job
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(now, config.timezone)),
            });
        }
        let pending_alerts = alerts::pending(&state)?
            .into_iter()
            .map(|p| PendingAlert {
                id: p.message.id,
                subject: p.message.subject,
                sink: p.sink,
                attempts: p.attempts,
                last_error: p.last_error,
            })
            .collect();
        let standby = config.settings().postgres.as_ref().map(|_| {
            match crate::gateway::postgres::standby::describe(&config.state_dir) {
                Some((role, true)) => format!(
                    "{} since {} (pid {})",
                    role.role,
                    role.since
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    role.pid
                ),
                _ => "not running".to_string(),
            }
        });
        Ok(Status {
            jobs,
            remotes: crate::remote::status::status(&config.remotes, &state)?,
            active_alerts: alerts::active(&state)?,
            pending_alerts,
            standby,
        })
    };
    let status = match gather() {
        Ok(s) => s,
        Err(e) => {
            say(&format!("error: reading {}: {e:#}", state.path().display()));
            return exit::FAILED;
        }
    };
    if json {
        let text = serde_json::to_string_pretty(&status).expect("status serializes");
        return emit(&format!("{text}\n")).map_or_else(|code| code, |()| exit::OK);
    }
    let tz = config.timezone;
    let fmt =
        |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
    // The zone heads the table it applies to, on a line of its own: as a last line it ran
    // into whatever the terminal showed next.
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(out, "times in {tz}");
    if let Some(standby) = &status.standby {
        let _ = writeln!(out, "this daemon: {standby}");
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<20} {:<12} {:>9}  {:<20}",
        "JOB", "KIND", "LAST RUN", "RESULT", "DURATION", "NEXT RUN"
    );
    for j in &status.jobs {
        let (last, result) = match &j.last_run {
            Some(r) => (fmt(r.started_at), r.result.clone()),
            None => ("never".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<20} {:<12} {:>9}  {:<20}",
            j.name,
            j.kind,
            last,
            result,
            j.last_duration_s
                .and_then(|d| std::time::Duration::try_from_secs_f64(d).ok())
                .map_or("-".into(), crate::units::duration),
            j.next_run.map_or("on signal".into(), fmt)
        );
        if let Some(error) = j.last_run.as_ref().and_then(|r| r.error.as_ref()) {
            let _ = writeln!(out, "    last error: {error}");
        }
    }
    for r in &status.remotes {
        let _ = writeln!(out, "{}", r.line(fmt));
    }
    if !status.active_alerts.is_empty() {
        let _ = writeln!(out, "active alerts: {}", status.active_alerts.join(", "));
    }
    for p in &status.pending_alerts {
        let _ = writeln!(
            out,
            "pending alert #{} to {} ({} attempts): {}{}",
            p.id,
            p.sink,
            p.attempts,
            p.subject,
            p.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" — last error: {e}"))
        );
    }
    emit(&out).map_or_else(|code| code, |()| exit::OK)
}

/// `restore s3://…`: the archive is downloaded into `state_dir` (the remote's credentials
/// come from the jobs file), then restored as a local one; the download is removed after.
fn restore_remote(path: &Path, url: &str, to: &Path, database: Option<&str>, force: bool) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::uploads::fetch(&config, url) {
        Ok(download) => restore(download.temp_path(), Path::new(url), to, database, force),
        Err(e) => {
            say(&format!("error: {e:#}"));
            exit::FAILED
        }
    }
}

/// Restores `archive` (`shown` in messages) to `to`.
fn restore(archive: &Path, shown: &Path, to: &Path, database: Option<&str>, force: bool) -> u8 {
    use crate::backup::restore::{self, RestoreError};
    if database.is_none() && crate::backup::restore_dir::wants_dir(archive, to) {
        return match crate::backup::restore_dir::restore_dir(archive, to) {
            Ok(done) => {
                emit(&format!("{}\n", done.describe(shown))).map_or_else(|code| code, |()| exit::OK)
            }
            Err(e) => {
                say(&format!("error: {e:#}"));
                exit::FAILED
            }
        };
    }
    let done = match to.to_str() {
        Some(url) if crate::backup::restore_pg::is_url(url) => {
            crate::backup::restore_pg::restore(archive, url, force)
        }
        _ => restore::restore_database(archive, database, to, force, Utc::now())
            .map(|done| done.describe(shown)),
    };
    match done {
        Ok(done) => emit(&format!("{done}\n")).map_or_else(|code| code, |()| exit::OK),
        Err(
            e @ (RestoreError::Exists(_) | RestoreError::NoArchive(_) | RestoreError::NotEmpty(_)),
        ) => {
            say(&format!("error: {e}"));
            exit::USAGE
        }
        Err(e @ RestoreError::InUse(_)) => {
            say(&format!("error: {e}"));
            exit::LOCKED
        }
        Err(RestoreError::Failed(e)) => {
            say(&format!("error: {e:#}"));
            exit::FAILED
        }
    }
}
