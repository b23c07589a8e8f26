//! The jobs file's top-level keys as strict serde structs, and their validation.

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::validated::{Config, LogFormat, LogSettings};
use crate::alerts::AlertSettings;
use crate::alerts::email::{ConfigProblem, EmailConfig, SmtpSettings};
use crate::checks::values::{Duration, Zone};
use crate::checks::{Checks, MAX_FILE_SIZE, Purpose};
use crate::gateway::{self, RawGateway};
use crate::jobs::Job;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    gateway: Option<RawGateway>,
    databases: Option<std::collections::BTreeMap<String, crate::databases::RawDatabase>>,
    state_dir: Option<PathBuf>,
    timezone: Option<Zone>,
    shutdown_timeout: Option<Duration>,
    metrics_file: Option<PathBuf>,
    log: Option<RawLog>,
    alerts: Option<RawAlerts>,
    remotes: Option<std::collections::BTreeMap<String, crate::remote::RawRemote>>,
    /// Read job by job by the loader, so one bad job does not hide the others.
    #[allow(dead_code)]
    jobs: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    email: Option<crate::alerts::email::EmailConfig>,
    file: Option<PathBuf>,
    repeat_after: Option<Duration>,
    on_job_failure: Option<bool>,
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// The longest `gateway.busy_timeout`: our statements wait this long at most for the
/// gateway's locks, and a wait of minutes is already a stuck gateway. (SQLite itself stops
/// at 24 days; rusqlite panics beyond.)
pub const MAX_BUSY_TIMEOUT: (StdDuration, &str) = (StdDuration::from_secs(600), "10m");
/// The longest `shutdown_timeout`: a stop that waits longer than an hour is a hang to the
/// service manager; its own stop timeout must stay above this anyway.
pub const MAX_SHUTDOWN_TIMEOUT: (StdDuration, &str) = (StdDuration::from_secs(3600), "1h");
/// The longest `alerts.email.smtp.timeout`: one delivery that may take longer holds back every
/// alert behind it.
pub const MAX_SMTP_TIMEOUT: (StdDuration, &str) = (StdDuration::from_secs(3600), "1h");
/// The longest `alerts.repeat_after`: an unresolved alert is repeated at least once a year.
pub const MAX_REPEAT_AFTER: (StdDuration, &str) = (StdDuration::from_secs(365 * 86_400), "365d");

pub fn validate(top: Top, mut jobs: Vec<Job>, checks: &mut Checks<'_>) -> Option<Config> {
    let declared_gateway = top.gateway.is_some();
    let gateway = match top.gateway {
        Some(raw) => gateway::validate(raw, checks).filter(|g| {
            let (max, text) = MAX_BUSY_TIMEOUT;
            checks.at_most("gateway.busy_timeout", g.busy_timeout, max, text)
        }),
        // Optional when no job needs the request table: checked below, job by job.
        None => None,
    };
    let log = top.log.map_or(
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        },
        |l| LogSettings {
            format: l.format.unwrap_or_default(),
            level: l.level.unwrap_or_else(|| "info".into()),
        },
    );
    if !LOG_LEVELS.contains(&log.level.as_str()) {
        checks.error(
            "log.level",
            format!(
                "unknown level `{}`; accepted: {}",
                log.level,
                LOG_LEVELS.join(", ")
            ),
        );
    }
    let alerts = match top.alerts {
        None => AlertSettings {
            email: None,
            file: None,
            repeat_after: StdDuration::from_secs(6 * 3600),
            on_job_failure: true,
        },
        Some(raw) => {
            let email = raw.email.and_then(|e| match resolve_email(&e, checks) {
                Ok((settings, warnings)) => {
                    for w in warnings {
                        checks.warn(w);
                    }
                    let (max, text) = MAX_SMTP_TIMEOUT;
                    checks
                        .at_most("alerts.email.smtp.timeout", settings.timeout, max, text)
                        .then_some(settings)
                }
                Err(errors) => {
                    for (key, message) in errors {
                        checks.error(&format!("alerts.email.{key}"), message);
                    }
                    None
                }
            });
            AlertSettings {
                email,
                file: checks.given_path("alerts.file", raw.file.as_deref()),
                repeat_after: raw
                    .repeat_after
                    .map_or(StdDuration::from_secs(6 * 3600), |d| d.0),
                on_job_failure: raw.on_job_failure.unwrap_or(true),
            }
        }
    };
    let (max, text) = MAX_REPEAT_AFTER;
    checks.at_most("alerts.repeat_after", alerts.repeat_after, max, text);
    let shutdown_timeout = top
        .shutdown_timeout
        .map_or(StdDuration::from_secs(30), |d| d.0);
    let (max, text) = MAX_SHUTDOWN_TIMEOUT;
    checks.at_most("shutdown_timeout", shutdown_timeout, max, text);
    check_references(&jobs, checks);
    let databases = crate::databases::validate(top.databases, checks);
    for job in &mut jobs {
        let path = format!("jobs.{}.{}.databases", job.name, job.kind.name());
        job.kind.resolve_databases(&databases, &path, checks);
    }
    let raw_remotes = top.remotes.unwrap_or_default();
    let names: Vec<String> = raw_remotes.keys().cloned().collect();
    let remotes = crate::remote::validate(raw_remotes, checks);
    let named = jobs.iter().map(|j| {
        let block = format!("jobs.{}.{}", j.name, j.kind.name());
        (block, j.kind.remotes_named())
    });
    crate::remote::check_names(named, &names, checks);
    crate::jobs::resolve(&mut jobs);
    if !declared_gateway {
        without_gateway(&jobs, &databases, checks);
    }
    if let Some(gateway) = &gateway {
        for job in &jobs {
            if gateway.postgres.is_some()
                && crate::gateway::postgres::NOT_YET.contains(&job.kind.name())
            {
                checks.error(
                    &format!("jobs.{}.{}", job.name, job.kind.name()),
                    format!(
                        "a {} job does not run on a PostgreSQL gateway yet (not yet on PostgreSQL); accepted with gateway.url: {}",
                        job.kind.name(),
                        crate::gateway::postgres::READY.join(", ")
                    ),
                );
                continue;
            }
            for (key, message) in job.kind.gateway_problems(gateway) {
                checks.error(
                    &format!("jobs.{}.{}.{key}", job.name, job.kind.name()),
                    message,
                );
            }
        }
    }
    let metrics_file = checks.given_path("metrics_file", top.metrics_file.as_deref());
    let state_dir = top
        .state_dir
        .as_deref()
        .map_or(Some(PathBuf::from("/var/lib/caretaker")), |p| {
            checks.given_path("state_dir", Some(p))
        });
    Some(Config {
        source: checks.file.to_path_buf(),
        gateway: if declared_gateway {
            Some(gateway?)
        } else {
            None
        },
        databases,
        state_dir: state_dir?,
        timezone: top.timezone.map_or(chrono_tz::UTC, |z| z.0),
        shutdown_timeout,
        metrics_file,
        log,
        alerts,
        remotes,
        jobs,
    })
}

/// The jobs that need the gateway's database in a jobs file that declares no `gateway:`, each
/// an error at its key (SPEC: `gateway` is optional when no job needs the request table).
fn without_gateway(jobs: &[Job], databases: &crate::databases::Databases, checks: &mut Checks<'_>) {
    let declared: Vec<&str> = databases.0.keys().map(String::as_str).collect();
    let declared = if declared.is_empty() {
        "none are declared".to_string()
    } else {
        format!("declared: {}", declared.join(", "))
    };
    for job in jobs {
        let Some(key) = job.kind.needs_gateway() else {
            continue;
        };
        let kind = job.kind.name();
        let (path, what) = match key {
            "" => (
                format!("jobs.{}.{kind}", job.name),
                format!("this {kind} job works on the gateway's request table"),
            ),
            "databases" => (
                format!("jobs.{}.{kind}.databases", job.name),
                "the list includes `gateway` (the default when `databases` is not given)"
                    .to_string(),
            ),
            key => (
                format!("jobs.{}.{kind}.{key}", job.name),
                format!("`{key}` is measured on the gateway's database"),
            ),
        };
        checks.error(
            &path,
            format!(
                "{what}, but the jobs file has no `gateway:`; accepted: declare `gateway:` or list only `databases:` names ({declared}) in backup, integrity, maintenance and health jobs"
            ),
        );
    }
}

/// Reads `alerts.email`. For `check`, an SMTP password variable missing from the operator's
/// shell is a warning: the daemon's environment (its unit file, an EnvironmentFile) is where
/// it must be set, and `run` and `run-job` still refuse to start without it.
fn resolve_email(
    email: &EmailConfig,
    checks: &mut Checks<'_>,
) -> Result<(SmtpSettings, Vec<String>), Vec<ConfigProblem>> {
    // Both files are read during validation, so on every reload: one that is not a regular
    // file (a FIFO would block the daemon's loop forever, /dev/zero would fill its memory) or
    // is far larger than its content can be is refused before it is opened.
    let files = [
        ("smtp.password_file", email.smtp.password_file.as_deref()),
        ("smtp.ca_file", email.smtp.ca_file.as_deref()),
    ];
    let unreadable: Vec<ConfigProblem> = files
        .into_iter()
        .filter_map(|(key, file)| {
            let path = checks.base_dir().join(file?);
            let meta = std::fs::metadata(&path).ok()?;
            let problem = if !meta.is_file() {
                format!(
                    "{} is not a regular file; accepted: a text file",
                    path.display()
                )
            } else if meta.len() > MAX_FILE_SIZE {
                format!(
                    "{} is larger than {} KiB; accepted: a password or PEM file of up to {} KiB",
                    path.display(),
                    MAX_FILE_SIZE >> 10,
                    MAX_FILE_SIZE >> 10
                )
            } else {
                return None;
            };
            Some((key.to_string(), problem))
        })
        .collect();
    if !unreadable.is_empty() {
        return Err(unreadable);
    }
    let unset = email
        .smtp
        .password_env
        .as_deref()
        .filter(|var| std::env::var_os(var).is_none());
    match unset {
        Some(var) if checks.purpose == Purpose::Check => {
            checks.warn(format!(
                "alerts.email.smtp.password_env: environment variable {var} is not set in this shell; `caretaker run` and `run-job` need it in their environment (the service's Environment= or EnvironmentFile=), or use password_file"
            ));
            // A stand-in lets the rest of the block be checked; `check` never sends mail.
            email.resolve_with_env(checks.base_dir(), |name| {
                std::env::var_os(name).or_else(|| (name == var).then(|| "unset".into()))
            })
        }
        _ => email.resolve(checks.base_dir()),
    }
}

/// Jobs that name other jobs must name backup jobs of this file; each reference is placed at
/// its own key.
fn check_references(jobs: &[Job], checks: &mut Checks<'_>) {
    let kinds: std::collections::HashMap<&str, &'static str> = jobs
        .iter()
        .map(|j| (j.name.as_str(), j.kind.name()))
        .collect();
    for job in jobs {
        for (key, dep) in job.kind.depends_on() {
            let key_path = format!("jobs.{}.{key}", job.name);
            // A job of the file that failed its own checks has its own errors already.
            let in_file = checks
                .tree
                .get("jobs")
                .is_some_and(|j| j.value.get(dep).is_some());
            match kinds.get(dep) {
                Some(&"backup") => {}
                None if in_file => {}
                Some(kind) => checks.error(
                    &key_path,
                    format!("names job `{dep}`, whose kind is {kind}, not backup; accepted: the name of a job with a `backup` block"),
                ),
                None => checks.error(
                    &key_path,
                    format!("names job `{dep}`, which is not in this file; accepted: the name of a backup job defined under `jobs`"),
                ),
            }
        }
    }
}
