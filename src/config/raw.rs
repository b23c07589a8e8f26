//! The jobs file's top-level keys as strict serde structs, and their validation.

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::values::{Duration, Zone};
use super::{AlertSettings, Checks, Config, LogFormat, LogSettings};
use crate::gateway::{self, RawGateway};
use crate::jobs::Job;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    gateway: Option<RawGateway>,
    state_dir: Option<PathBuf>,
    timezone: Option<Zone>,
    shutdown_timeout: Option<Duration>,
    metrics_file: Option<PathBuf>,
    log: Option<RawLog>,
    alerts: Option<RawAlerts>,
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

pub fn validate(top: Top, jobs: Vec<Job>, checks: &mut Checks<'_>) -> Option<Config> {
    let gateway = match top.gateway {
        Some(raw) => gateway::validate(raw, checks),
        None => {
            checks.error(
                "gateway",
                "missing key `gateway`; accepted: a mapping with database, schema (apantli | bobamixer | custom) and busy_timeout",
            );
            None
        }
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
            let email = raw.email.and_then(|e| match e.resolve(checks.base_dir()) {
                Ok((settings, warnings)) => {
                    for w in warnings {
                        checks.warn(w);
                    }
                    Some(settings)
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
                file: raw.file.map(|p| checks.path(&p)),
                repeat_after: raw
                    .repeat_after
                    .map_or(StdDuration::from_secs(6 * 3600), |d| d.0),
                on_job_failure: raw.on_job_failure.unwrap_or(true),
            }
        }
    };
    let mut names = std::collections::HashSet::new();
    for job in &jobs {
        names.insert(job.name.clone());
    }
    for job in &jobs {
        for dep in job.kind.depends_on() {
            if !names.contains(dep) {
                checks.error(
                    &format!("jobs.{}", job.name),
                    format!("names job `{dep}`, which is not in this file; accepted: the name of a backup job defined under `jobs`"),
                );
            }
        }
    }
    if let Some(gateway) = &gateway {
        for job in &jobs {
            for (key, message) in job.kind.gateway_problems(gateway) {
                checks.error(
                    &format!("jobs.{}.{}.{key}", job.name, job.kind.name()),
                    message,
                );
            }
        }
    }
    Some(Config {
        source: checks.file.to_path_buf(),
        gateway: gateway?,
        state_dir: checks.path(
            &top.state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/caretaker")),
        ),
        timezone: top.timezone.map_or(chrono_tz::UTC, |z| z.0),
        shutdown_timeout: top
            .shutdown_timeout
            .map_or(StdDuration::from_secs(30), |d| d.0),
        metrics_file: top.metrics_file.map(|p| checks.path(&p)),
        log,
        alerts,
        jobs,
    })
}
