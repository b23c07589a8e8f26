//! The `health` job: conditions that alert while they hold and resolve when they clear.

use std::time::Duration;

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;
use crate::config::values::{self, Share, Size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    disk_free_min: Option<Share>,
    database_max_size: Option<Size>,
    wal_max_size: Option<Size>,
    backup_max_age: Option<RawBackupAge>,
    error_rate_max: Option<RawErrorRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackupAge {
    job: Option<String>,
    age: Option<values::Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrorRate {
    share: Option<Share>,
    over: Option<values::Duration>,
}

#[derive(Debug, Clone)]
pub struct BackupAge {
    pub job: String,
    pub age: Duration,
}

#[derive(Debug, Clone)]
pub struct ErrorRate {
    pub share: f64,
    pub over: Duration,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub disk_free_min: Option<f64>,
    pub database_max_size: Option<u64>,
    pub wal_max_size: Option<u64>,
    pub backup_max_age: Option<BackupAge>,
    pub error_rate_max: Option<ErrorRate>,
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let mut ok = true;
    let backup_max_age = match raw.backup_max_age {
        Some(RawBackupAge {
            job: Some(job),
            age: Some(age),
        }) => Some(BackupAge { job, age: age.0 }),
        Some(_) => {
            checks.error(
                &format!("{path}.backup_max_age"),
                "needs both keys; accepted: {job: <backup job name>, age: 26h}",
            );
            ok = false;
            None
        }
        None => None,
    };
    let error_rate_max = match raw.error_rate_max {
        Some(RawErrorRate {
            share: Some(share),
            over: Some(over),
        }) => Some(ErrorRate {
            share: share.0,
            over: over.0,
        }),
        Some(_) => {
            checks.error(
                &format!("{path}.error_rate_max"),
                "needs both keys; accepted: {share: 5%, over: 1h}",
            );
            ok = false;
            None
        }
        None => None,
    };
    let spec = Spec {
        disk_free_min: raw.disk_free_min.map(|s| s.0),
        database_max_size: raw.database_max_size.map(|s| s.0),
        wal_max_size: raw.wal_max_size.map(|s| s.0),
        backup_max_age,
        error_rate_max,
    };
    if ok
        && spec.disk_free_min.is_none()
        && spec.database_max_size.is_none()
        && spec.wal_max_size.is_none()
        && spec.backup_max_age.is_none()
        && spec.error_rate_max.is_none()
    {
        checks.error(path, "a health job needs at least one condition; accepted: disk_free_min, database_max_size, wal_max_size, backup_max_age, error_rate_max");
        return None;
    }
    ok.then_some(spec)
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("health")
}
