//! Job kinds: one enum, one `match`, one module per kind; and what every job run gets and gives.
//!
//! Adding a kind touches the `Kind` enum, `RawJob`, the `match`es below, one module and one doc
//! page. Each module owns its raw config block (serde, strict), its validated spec, a pure
//! `plan` and the `run` that executes it.

pub mod archive;
pub mod backup;
pub mod budget;
pub mod health;
pub mod integrity;
pub mod logrotate;
pub mod maintenance;
pub mod pricing;
pub mod verify;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::alerts::AlertEvent;
use crate::config::values::{self, OneOrMany, SignalName};
use crate::config::{Checks, Config};
use crate::schedule::Schedule;
use crate::state::State;

/// A validated job of the jobs file.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Option<Schedule>,
    pub on_signal: Vec<SignalName>,
    pub timeout: Option<Duration>,
    pub catch_up: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Backup(backup::Spec),
    Verify(verify::Spec),
    Integrity(integrity::Spec),
    Maintenance(maintenance::Spec),
    Archive(archive::Spec),
    Logrotate(logrotate::Spec),
    Pricing(pricing::Spec),
    Budget(budget::Spec),
    Health(health::Spec),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Backup(_) => "backup",
            Kind::Verify(_) => "verify",
            Kind::Integrity(_) => "integrity",
            Kind::Maintenance(_) => "maintenance",
            Kind::Archive(_) => "archive",
            Kind::Logrotate(_) => "logrotate",
            Kind::Pricing(_) => "pricing",
            Kind::Budget(_) => "budget",
            Kind::Health(_) => "health",
        }
    }

    /// Jobs that open the gateway's database run one at a time, across the daemon and
    /// `run-job`, so that their locks never add up in front of the gateway.
    pub fn touches_gateway(&self) -> bool {
        !matches!(self, Kind::Logrotate(_) | Kind::Verify(_))
    }

    /// Other jobs this one refers to by name: (the key below the job that names it, the name).
    /// Each must be a backup job; `check` says so at the key.
    pub fn depends_on(&self) -> Vec<(&'static str, &str)> {
        match self {
            Kind::Verify(s) => vec![("verify.backups_of", s.backups_of.as_str())],
            Kind::Health(s) => s
                .backup_max_age
                .iter()
                .map(|b| ("health.backup_max_age.job", b.job.as_str()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Problems that only show against the validated gateway (a condition its schema cannot
    /// answer): `(key path below the job's kind block, message)`, reported by `check`.
    pub fn gateway_problems(&self, gateway: &crate::gateway::Gateway) -> Vec<(String, String)> {
        match self {
            Kind::Health(s) => health::gateway_problems(s, gateway),
            Kind::Maintenance(s) => maintenance::gateway_problems(s, gateway),
            _ => Vec::new(),
        }
    }

    pub fn run(&self, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
        match self {
            Kind::Backup(spec) => backup::run(spec, ctx),
            Kind::Verify(spec) => verify::run(spec, ctx),
            Kind::Integrity(spec) => integrity::run(spec, ctx),
            Kind::Maintenance(spec) => maintenance::run(spec, ctx),
            Kind::Archive(spec) => archive::run(spec, ctx),
            Kind::Logrotate(spec) => logrotate::run(spec, ctx),
            Kind::Pricing(spec) => pricing::run(spec, ctx),
            Kind::Budget(spec) => budget::run(spec, ctx),
            Kind::Health(spec) => health::run(spec, ctx),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    schedule: Option<Schedule>,
    on_signal: Option<OneOrMany<SignalName>>,
    timeout: Option<values::Duration>,
    catch_up: Option<bool>,
    backup: Option<backup::Raw>,
    verify: Option<verify::Raw>,
    integrity: Option<integrity::Raw>,
    maintenance: Option<maintenance::Raw>,
    archive: Option<archive::Raw>,
    logrotate: Option<logrotate::Raw>,
    pricing: Option<pricing::Raw>,
    budget: Option<budget::Raw>,
    health: Option<health::Raw>,
}

/// The longest job `timeout`: a run that may take over a week is not bounded by one.
pub const MAX_TIMEOUT: (Duration, &str) = (Duration::from_secs(7 * 86_400), "7d");

const KINDS: &str =
    "backup, verify, integrity, maintenance, archive, logrotate, pricing, budget, health";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn validate(name: &str, raw: RawJob, checks: &mut Checks<'_>) -> Option<Job> {
    let path = format!("jobs.{name}");
    let mut ok = true;
    if !valid_name(name) {
        checks.error(
            &path,
            format!("`{name}` is not a valid job name; accepted: letters, digits, '-' and '_'"),
        );
        ok = false;
    }
    let on_signal = raw.on_signal.map(|s| s.0).unwrap_or_default();
    if raw.schedule.is_none() && on_signal.is_empty() {
        checks.error(
            &path,
            "the job has neither `schedule` nor `on_signal`, so it would never run; accepted: a cron `schedule`, an `on_signal` (USR1 | USR2 | [USR1, USR2]), or both",
        );
        ok = false;
    }
    let mut kinds: Vec<Kind> = Vec::new();
    let mut present = Vec::new();
    macro_rules! kind {
        ($field:ident, $module:ident, $variant:ident) => {
            if let Some(block) = raw.$field {
                present.push(stringify!($field));
                let block_path = format!("{path}.{}", stringify!($field));
                if let Some(spec) = $module::validate(block, &block_path, checks) {
                    kinds.push(Kind::$variant(spec));
                } else {
                    ok = false;
                }
            }
        };
    }
    kind!(backup, backup, Backup);
    kind!(verify, verify, Verify);
    kind!(integrity, integrity, Integrity);
    kind!(maintenance, maintenance, Maintenance);
    kind!(archive, archive, Archive);
    kind!(logrotate, logrotate, Logrotate);
    kind!(pricing, pricing, Pricing);
    kind!(budget, budget, Budget);
    kind!(health, health, Health);
    match present.len() {
        1 => {}
        0 => {
            checks.error(
                &path,
                format!("the job has no kind block; accepted: exactly one of {KINDS}"),
            );
            return None;
        }
        _ => {
            checks.error(
                &format!("{path}.{}", present[1]),
                format!(
                    "the job has several kind blocks ({}); accepted: exactly one of {KINDS}",
                    present.join(", ")
                ),
            );
            return None;
        }
    }
    let timeout = raw.timeout.map(|d| d.0);
    if let Some(t) = timeout {
        let (max, text) = MAX_TIMEOUT;
        ok &= checks.at_most(&format!("{path}.timeout"), t, max, text);
    }
    if !ok {
        return None;
    }
    Some(Job {
        name: name.to_string(),
        schedule: raw.schedule,
        on_signal,
        timeout,
        catch_up: raw.catch_up.unwrap_or(false),
        kind: kinds.pop()?,
    })
}

/// Tells a running job to stop at its next safe point: the daemon is shutting down, or the
/// job's `timeout` has passed.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("stopped at a safe point because the daemon is shutting down")]
    Shutdown,
    #[error("stopped at a safe point because the job ran past its timeout")]
    Timeout,
}

impl Stop {
    pub fn new(flag: Arc<AtomicBool>, timeout: Option<Duration>) -> Self {
        Stop {
            flag,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// When the job's `timeout` runs out, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn check(&self) -> Result<(), Stopped> {
        if self.flag.load(Ordering::SeqCst) {
            return Err(Stopped::Shutdown);
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(Stopped::Timeout),
            _ => Ok(()),
        }
    }
}

/// Everything a job run gets.
pub struct Context<'a> {
    pub job: &'a str,
    pub config: &'a Config,
    pub state: &'a State,
    pub now: DateTime<Utc>,
    pub dry_run: bool,
    pub stop: Stop,
    /// Alerts raised or resolved by this run; the runner puts them in the outbox.
    pub alerts: Vec<AlertEvent>,
}

impl Context<'_> {
    /// A safe point: returns an error when the job must stop here.
    pub fn checkpoint(&self) -> Result<(), Stopped> {
        self.stop.check()
    }
}

/// What a job run gives back: one summary line, its figures, and with `--dry-run` its plan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub summary: String,
    pub figures: Vec<(String, f64)>,
    pub plan: Vec<String>,
}

impl Report {
    pub fn new(summary: impl Into<String>) -> Self {
        Report {
            summary: summary.into(),
            ..Report::default()
        }
    }

    pub fn figure(mut self, name: &str, value: f64) -> Self {
        self.figures.push((name.to_string(), value));
        self
    }

    /// The summary and its figures on one line, the figures rounded for a person
    /// ([`crate::units::number`]); the state and the metrics keep them whole.
    pub fn summary_line(&self) -> String {
        let mut line = self.summary.clone();
        if !self.figures.is_empty() {
            let figures: Vec<String> = self
                .figures
                .iter()
                .map(|(k, v)| format!("{k}={}", crate::units::number(*v)))
                .collect();
            line.push_str(&format!(" ({})", figures.join(" ")));
        }
        line
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.plan {
            writeln!(f, "{line}")?;
        }
        f.write_str(&self.summary_line())
    }
}
