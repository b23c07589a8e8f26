//! One job run: locks, the run itself, its record in the state database, its alerts, its log line.

use std::borrow::Cow;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::alerts::{self, Alert, AlertEvent, Severity};
use crate::checks::values::SignalName;
use crate::config::Config;
use crate::gateway::Preset;
use crate::jobs::{Context, Job, Report, Stop, Stopped};
use crate::locks;
use crate::redact;
use crate::state::State;
use crate::writelock::{self, Hold};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule(DateTime<Utc>),
    CatchUp(DateTime<Utc>),
    Signal(SignalName),
    /// A file the job watches changed (a pricing job's price table).
    FileChanged,
    Manual,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Schedule(_) => f.write_str("schedule"),
            Trigger::CatchUp(_) => f.write_str("catch-up"),
            Trigger::Signal(s) => write!(f, "signal {s}"),
            Trigger::FileChanged => f.write_str("file change"),
            Trigger::Manual => f.write_str("manual"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result {
    Ok,
    Failed(String),
    /// Not run: the job was already running (here or in another process).
    Skipped(String),
}

#[derive(Debug)]
pub struct Outcome {
    pub result: Result,
    pub report: Option<Report>,
    pub seconds: f64,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self.result, Result::Ok)
    }
}

/// Runs `job` now, in the calling thread.
pub fn run(
    config: &Config,
    state: &State,
    job: &Job,
    trigger: Trigger,
    dry_run: bool,
    shutdown: Arc<AtomicBool>,
) -> Outcome {
    // Every line logged during the run, the job's own included, names the job.
    let _span = tracing::info_span!("run", job = %job.name).entered();
    let started = Instant::now();
    let skipped = |why: String| {
        tracing::info!(job = %job.name, %trigger, "skipped: {why}");
        Outcome {
            result: Result::Skipped(why),
            report: None,
            seconds: 0.0,
        }
    };
    let _job_lock = match locks::try_job(&config.state_dir, &job.name) {
        Ok(Some(held)) => held,
        Ok(None) => return skipped("already running".into()),
        Err(e) => return failed(config, state, job, early(e, dry_run, trigger), started),
    };
    let stop = Stop::new(shutdown, job.timeout);
    let _gateway_lock = if job.kind.touches_gateway() {
        match locks::gateway(&config.state_dir, &job.name, &stop) {
            Ok(Ok(held)) => Some(held),
            // Shutting down while waiting is no fault; a timeout spent waiting is: the job did
            // not run when it should have, and the operator hears of it.
            Ok(Err(Stopped::Shutdown)) => {
                return skipped("the daemon is shutting down".into());
            }
            Ok(Err(stopped @ Stopped::Timeout)) => {
                let e = anyhow::anyhow!(
                    "waited for another job working on the gateway database and {stopped}; give the jobs schedules that do not overlap, or a longer timeout"
                );
                return failed(config, state, job, early(e, dry_run, trigger), started);
            }
            Err(e) => return failed(config, state, job, early(e, dry_run, trigger), started),
        }
    } else {
        None
    };
    let now = Utc::now();
    let run_id = if dry_run {
        None
    } else {
        match state.run_started(&job.name, &trigger.to_string(), now) {
            Ok(id) => Some(id),
            Err(e) => return failed(config, state, job, early(e, dry_run, trigger), started),
        }
    };
    // Time spent waiting for the locks is not the job's duration.
    let started = Instant::now();
    tracing::info!(job = %job.name, kind = job.kind.name(), %trigger, dry_run, "job started");
    let mut ctx = context(config, job, state, now, dry_run, stop);
    let (result, holds) = writelock::during_run(ctx.stop.clone(), || {
        catch_unwind(AssertUnwindSafe(|| job.kind.run(&mut ctx)))
    });
    let mut events = std::mem::take(&mut ctx.alerts);
    let preset = config.settings().preset;
    let locks = (!dry_run).then(|| gateway_locks(state, job, preset, &holds, &mut events));
    let result = match result {
        Ok(r) => r.map(redacted),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow::anyhow!(
                "the job panicked: {what} (this is a caretaker bug; please report it)"
            ))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let failure_key = format!("job-failed:{}", job.name);
    match result {
        Ok(mut report) => {
            if let Some(locks) = locks.filter(|l| !l.is_empty()) {
                report.summary.push_str("; ");
                report.summary.push_str(&locks);
            }
            // Rounded for the reader; the state and the metrics keep the whole figures.
            tracing::info!(job = %job.name, seconds = %crate::units::number(seconds), summary = %report.summary_line(), "job succeeded");
            if !dry_run {
                events.push(AlertEvent::Resolve {
                    key: failure_key,
                    job: Some(job.name.clone()),
                    what: format!("{} job fails", job.kind.name()),
                });
                finish(
                    config,
                    state,
                    run_id,
                    "ok",
                    &report.summary,
                    None,
                    &report.figures,
                    &events,
                );
            }
            Outcome {
                result: Result::Ok,
                report: Some(report),
                seconds,
            }
        }
        Err(e) => {
            let failure = Failure {
                run_id,
                trigger,
                message: format!("{e:#}"),
                events,
                dry_run,
            };
            failed(config, state, job, failure, started)
        }
    }
}

/// What a run of `job` gets from the jobs file: the gateway, the zone, `state_dir` and the
/// directories the jobs write, worked out here so that no kind reads the whole [`Config`].
pub fn context<'a>(
    config: &'a Config,
    job: &'a Job,
    state: &'a State,
    now: DateTime<Utc>,
    dry_run: bool,
    stop: Stop,
) -> Context<'a> {
    Context {
        job: &job.name,
        gateway: config.settings(),
        timezone: config.timezone,
        state_dir: &config.state_dir,
        remotes: &config.remotes,
        written: crate::jobs::written_dirs(&config.jobs),
        state,
        now,
        dry_run,
        stop,
        alerts: Vec::new(),
    }
}

/// The report with every API key in it redacted: its text quotes the gateway's values (a model
/// name), and from here it is logged, recorded, printed and turned into metrics labels.
fn redacted(mut report: Report) -> Report {
    let clean = |text: &mut String| {
        if let Cow::Owned(clean) = redact::api_keys(text) {
            *text = clean;
        }
    };
    clean(&mut report.summary);
    report.figures.iter_mut().for_each(|(name, _)| clean(name));
    report.plan.iter_mut().for_each(clean);
    report
}

/// The locks a run held on the gateway: kept for the metrics file, a warning for every one
/// longer than the docs promise for the job's kind (resolved by a run with none), and the
/// words for the summary ("" when it held none).
fn gateway_locks(
    state: &State,
    job: &Job,
    preset: Preset,
    holds: &[Hold],
    events: &mut Vec<AlertEvent>,
) -> String {
    // Kinds without a bound take no lock we pace.
    if writelock::bound(job.kind.name()).is_none() {
        return String::new();
    }
    let stats = writelock::lock_stats(&holds.iter().map(|h| h.held).collect::<Vec<_>>());
    let over = writelock::over_bound(|operation| job.kind.lock_bound(operation, preset), holds);
    let record = crate::metrics::RunLocks {
        stats,
        over_bound: over.len() as u64,
    };
    if let Err(e) = state.put(crate::metrics::LOCKS_NS, &job.name, &record) {
        tracing::warn!(error = %format!("{e:#}"), "could not keep the run's lock figures");
    }
    if holds.is_empty() {
        return String::new();
    }
    let key = format!("lock-over-bound:{}", job.name);
    let what = "a lock on the gateway database lasted longer than documented".to_string();
    let mut words = stats.to_string();
    let Some(&(longest, limit)) = over.iter().max_by_key(|(held, _)| *held) else {
        events.push(AlertEvent::Resolve {
            key,
            job: Some(job.name.clone()),
            what,
        });
        return words;
    };
    let said = format!(
        "{} of {} locks longer than the docs promise for {} jobs (the longest {}, its bound {})",
        over.len(),
        stats.count,
        job.kind.name(),
        crate::units::duration(longest),
        crate::units::duration(limit)
    );
    words.push_str(&format!("; {said}"));
    events.push(AlertEvent::Raise(Alert {
        key,
        severity: Severity::Warning,
        job: Some(job.name.clone()),
        what,
        body: format!(
            "The {} job `{}` held {said}; its {stats}. The gateway's writers wait for our locks, and a lock near the gateway's busy timeout (Apantli: 5 s) costs it requests. A loaded machine or a slow disk stretches locks: see docs/jobs/{}.md for the bound and what lengthens it.",
            job.kind.name(),
            job.name,
            job.kind.name(),
        ),
    }));
    words
}

fn push_failure(config: &Config, job: &Job, message: &str, events: &mut Vec<AlertEvent>) {
    if config.alerts.on_job_failure {
        events.push(AlertEvent::Raise(Alert {
            key: format!("job-failed:{}", job.name),
            severity: Severity::Critical,
            job: Some(job.name.clone()),
            what: format!("{} job fails", job.kind.name()),
            body: format!(
                "The {} job `{}` failed:\n\n{message}\n\nRun `caretaker run-job {} --dry-run` to see what it would do, and `caretaker status` for its history.",
                job.kind.name(),
                job.name,
                job.name
            ),
        }));
    }
}

/// A failure before the job itself started; it is still recorded as a run.
fn early(e: anyhow::Error, dry_run: bool, trigger: Trigger) -> Failure {
    Failure {
        run_id: None,
        trigger,
        message: format!("{e:#}"),
        events: Vec::new(),
        dry_run,
    }
}

/// A run that ended in an error, before or during the job itself.
struct Failure {
    run_id: Option<i64>,
    trigger: Trigger,
    message: String,
    /// Alerts the job raised before it failed.
    events: Vec<AlertEvent>,
    dry_run: bool,
}

fn failed(
    config: &Config,
    state: &State,
    job: &Job,
    failure: Failure,
    started: Instant,
) -> Outcome {
    let Failure {
        run_id,
        trigger,
        message,
        mut events,
        dry_run,
    } = failure;
    // Errors can quote what the gateway stored (a model name), API keys included.
    let message = redact::api_keys(&message).into_owned();
    let seconds = started.elapsed().as_secs_f64();
    tracing::error!(job = %job.name, seconds = %crate::units::number(seconds), error = %message, "job failed");
    let run_id = match run_id {
        None if !dry_run => state
            .run_started(&job.name, &trigger.to_string(), Utc::now())
            .ok(),
        other => other,
    };
    if !dry_run {
        push_failure(config, job, &message, &mut events);
    }
    finish(
        config,
        state,
        run_id,
        "failed",
        "",
        Some(&message),
        &[],
        &events,
    );
    Outcome {
        result: Result::Failed(message),
        report: None,
        seconds,
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    config: &Config,
    state: &State,
    run_id: Option<i64>,
    result: &str,
    summary: &str,
    error: Option<&str>,
    figures: &[(String, f64)],
    events: &[AlertEvent],
) {
    let now = Utc::now();
    if let Some(id) = run_id
        && let Err(e) = state.run_finished(id, now, result, summary, error, figures)
    {
        tracing::error!(error = %format!("{e:#}"), "could not record the run");
    }
    if let Err(e) = alerts::submit(state, &config.alerts, &sink_names(config), now, events) {
        tracing::error!(error = %format!("{e:#}"), "could not queue alerts");
    }
    // Only recorded runs change what the metrics file shows.
    if run_id.is_some()
        && let Some(path) = &config.metrics_file
        && let Err(e) = crate::metrics::write(
            &config
                .jobs
                .iter()
                .map(|j| crate::metrics::Named {
                    name: &j.name,
                    kind: j.kind.name(),
                })
                .collect::<Vec<_>>(),
            &config.settings().database,
            &config.databases,
            state,
            path,
        )
    {
        tracing::warn!(error = %format!("{e:#}"), "could not rewrite the metrics file");
    }
}

pub fn sink_names(config: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    if config.alerts.file.is_some() {
        names.push("file");
    }
    if config.alerts.email.is_some() {
        names.push("email");
    }
    names
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::jobs::maintenance::VACUUM;

    /// The over-bound alert a run's locks give: (raised, its words).
    fn judged(vacuum: &str, holds: &[(u64, &'static str)]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "gateway:\n  database: requests.db\n  schema: apantli\njobs:\n  care:\n    schedule: \"0 4 * * *\"\n    maintenance: {{{vacuum}}}\n"
        );
        let (config, _) = crate::config::parse(&dir.path().join("jobs.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        let state = State::open(dir.path()).unwrap();
        let holds: Vec<Hold> = holds
            .iter()
            .map(|&(ms, operation)| Hold {
                held: Duration::from_millis(ms),
                bytes: 0,
                operation,
            })
            .collect();
        let mut events = Vec::new();
        let words = gateway_locks(
            &state,
            &config.jobs[0],
            config.settings().preset,
            &holds,
            &mut events,
        );
        let raised = events.iter().any(|e| matches!(e, AlertEvent::Raise(_)));
        (raised, words)
    }

    /// A VACUUM is held to its own bound, not to the 250 ms of maintenance's statements: a
    /// consented one (`vacuum: always`) to none, the one `vacuum: auto` runs under to its
    /// `vacuum_max_lock`.
    #[test]
    fn a_vacuum_is_judged_against_its_own_bound() {
        // (the maintenance block, the run's locks as (ms, operation), raised, words said)
        type Case = (
            &'static str,
            &'static [(u64, &'static str)],
            bool,
            &'static str,
        );
        let cases: [Case; 6] = [
            ("vacuum: always", &[(3_000, VACUUM), (10, "")], false, ""),
            (
                "vacuum: always",
                &[(3_000, VACUUM), (300, "")],
                true,
                "its bound 250 ms",
            ),
            (
                "vacuum: auto, vacuum_max_lock: 2s",
                &[(1_900, VACUUM)],
                false,
                "",
            ),
            (
                "vacuum: auto, vacuum_max_lock: 2s",
                &[(2_100, VACUUM)],
                true,
                "its bound 2 s",
            ),
            // Apantli's 5 s busy timeout, a fifth of it.
            ("vacuum: auto", &[(900, VACUUM)], false, ""),
            ("vacuum: never", &[(300, "")], true, "1 of 1 locks longer"),
        ];
        for (vacuum, holds, raise, says) in cases {
            let (raised, words) = judged(vacuum, holds);
            assert_eq!(raised, raise, "{vacuum} {holds:?}: {words}");
            assert!(words.contains(says), "{vacuum} {holds:?}: {words}");
        }
    }
}
