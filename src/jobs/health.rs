//! The `health` job: conditions that alert while they hold and resolve when they clear.
//!
//! A run gathers [`Facts`] (free space, file sizes, the newest backup, request counts), then
//! [`evaluate`] turns them and the spec into [`Verdict`]s with no I/O and the clock passed in,
//! and [`events`] turns those into alert events: a condition that holds raises
//! `health:<job>:<condition>` (the outbox repeats it at most every `repeat_after`), one that
//! is clear resolves it (the outbox sends one "resolved" message if it was raised). A fact
//! that cannot be measured raises and resolves nothing, and fails the run, so the operator
//! hears that the check itself is broken.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::jobs::contract::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::checks::values::{self, Share, Size};
use crate::checks::Checks;
use crate::databases::Selection;
use crate::gateway::{Access, ExecExt, Gateway, Value};
use crate::units;

/// Each statement counting requests holds a read lock on the gateway's database; Apantli's
/// writers wait at most 5 s for it and BobaMixer's not at all. The count is therefore split
/// into time slices, sized so that one statement takes about this long.
const SLICE_TARGET: Duration = Duration::from_millis(50);
/// How often one slice is tried again after waiting `gateway.busy_timeout` behind the gateway.
const BUSY_RETRIES: u32 = 3;
/// The first slice's width, before the measured statement times resize it.
const FIRST_SLICE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    disk_free_min: Option<Share>,
    database_max_size: Option<Size>,
    wal_max_size: Option<Size>,
    backup_max_age: Option<RawBackupAge>,
    error_rate_max: Option<RawErrorRate>,
    databases: Option<Vec<String>>,
    connections_max: Option<Share>,
    dead_tuples_max: Option<Share>,
    transaction_max_age: Option<values::Duration>,
    table_max_size: Option<Size>,
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
    /// The databases whose sizes `database_max_size` and `wal_max_size` watch, each on its own:
    /// `gateway` and those declared under `databases:`.
    pub databases: Selection,
    /// The conditions of a PostgreSQL gateway's server.
    pub postgres: PgConditions,
}

/// What health watches on a PostgreSQL gateway (SPEC, "PostgreSQL gateways").
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PgConditions {
    /// Client backends against `max_connections`.
    pub connections_max: Option<f64>,
    /// Dead tuples as a share of all tuples, per gateway table.
    pub dead_tuples_max: Option<f64>,
    /// The oldest open transaction (which holds vacuum back).
    pub transaction_max_age: Option<Duration>,
    /// A gateway table with its TOAST and indexes.
    pub table_max_size: Option<u64>,
}

impl PgConditions {
    fn any(&self) -> bool {
        *self != PgConditions::default()
    }

    /// The keys set, by name, for messages.
    fn keys(&self) -> Vec<&'static str> {
        [
            ("connections_max", self.connections_max.is_some()),
            ("dead_tuples_max", self.dead_tuples_max.is_some()),
            ("transaction_max_age", self.transaction_max_age.is_some()),
            ("table_max_size", self.table_max_size.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
    }
}

impl crate::jobs::contract::Contract for Spec {
    fn depends_on(&self) -> Vec<(&'static str, &str)> {
        self.backup_max_age
            .iter()
            .map(|b| ("health.backup_max_age.job", b.job.as_str()))
            .collect()
    }

    /// Sizes and backup ages need no gateway; its request table and its server do.
    fn needs_gateway(&self) -> Option<&'static str> {
        if self.error_rate_max.is_some() {
            Some("error_rate_max")
        } else if let Some(key) = self.postgres.keys().first() {
            Some(key)
        } else {
            self.databases.has_gateway().then_some("databases")
        }
    }

    fn gateway_problems(&self, gateway: &Gateway) -> Vec<(String, String)> {
        gateway_problems(self, gateway)
    }

    fn selection_mut(&mut self) -> Option<&mut Selection> {
        Some(&mut self.databases)
    }
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
        }) => {
            if over.0.is_zero() {
                checks.error(
                    &format!("{path}.error_rate_max.over"),
                    "a window of 0s holds no requests; accepted: a duration above zero such as 1h",
                );
                ok = false;
                None
            } else {
                Some(ErrorRate {
                    share: share.0,
                    over: over.0,
                })
            }
        }
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
        databases: Selection::from_raw(raw.databases, &format!("{path}.databases"), checks),
        postgres: PgConditions {
            connections_max: raw.connections_max.map(|s| s.0),
            dead_tuples_max: raw.dead_tuples_max.map(|s| s.0),
            transaction_max_age: raw.transaction_max_age.map(|d| d.0),
            table_max_size: raw.table_max_size.map(|s| s.0),
        },
    };
    if ok
        && !spec.postgres.any()
        && spec.disk_free_min.is_none()
        && spec.database_max_size.is_none()
        && spec.wal_max_size.is_none()
        && spec.backup_max_age.is_none()
        && spec.error_rate_max.is_none()
    {
        checks.error(
            path,
            "a health job needs at least one condition; accepted: disk_free_min, database_max_size, wal_max_size, backup_max_age, error_rate_max (PostgreSQL: connections_max, dead_tuples_max, transaction_max_age, table_max_size)",
        );
        return None;
    }
    ok.then_some(spec)
}

/// Problems that only show against the validated gateway: `(key below the job's health
/// block, message)`. The loader reports them at `check` time.
pub fn gateway_problems(spec: &Spec, gateway: &Gateway) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if gateway.postgres.is_some() && spec.wal_max_size.is_some() {
        problems.push((
            "wal_max_size".to_string(),
            "does not apply to a PostgreSQL gateway (its WAL belongs to the whole server, and the server manages it: max_wal_size); accepted with gateway.url: connections_max, dead_tuples_max, transaction_max_age, table_max_size, database_max_size, disk_free_min, backup_max_age, error_rate_max".to_string(),
        ));
    }
    if gateway.postgres.is_none() {
        for key in spec.postgres.keys() {
            problems.push((
                key.to_string(),
                "is a PostgreSQL gateway's condition; accepted with gateway.database: disk_free_min, database_max_size, wal_max_size, backup_max_age, error_rate_max".to_string(),
            ));
        }
    }
    if spec.error_rate_max.is_some() && gateway.columns.error.is_none() {
        problems.push((
            "error_rate_max".to_string(),
            format!(
                "cannot be evaluated: the gateway's `{}` schema has no error column, so failed requests cannot be told apart; accepted: remove error_rate_max, or use `schema: custom` with `columns.error`",
                format!("{:?}", gateway.preset).to_lowercase()
            ),
        ));
    }
    problems
}

/// One filesystem that holds some of the paths the job watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    /// Where it is mounted (the topmost directory on the same device).
    pub mount: PathBuf,
    /// What of ours lives on it, e.g. `gateway database`, `state_dir`, `backups of nightly`.
    pub holds: Vec<String>,
    pub total_bytes: u64,
    /// Free space available to unprivileged processes (`f_bavail`): what caretaker and the
    /// gateway can actually use.
    pub available_bytes: u64,
}

impl Filesystem {
    pub fn free_share(&self) -> f64 {
        if self.total_bytes == 0 {
            // Pseudo filesystems report no blocks: nothing can run out there.
            1.0
        } else {
            self.available_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// Requests in the error-rate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCounts {
    pub total: u64,
    pub failed: u64,
}

/// The newest successful run of the backup job named in `backup_max_age`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewestBackup {
    pub job: String,
    pub at: Option<DateTime<Utc>>,
}

/// What one run measured. A fact is `None` when the spec does not ask for it or when it could
/// not be measured; the latter is listed in `problems`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub filesystems: Vec<Filesystem>,
    pub database: Option<PathBuf>,
    pub database_bytes: Option<u64>,
    pub wal_bytes: Option<u64>,
    pub newest_backup: Option<NewestBackup>,
    pub requests: Option<RequestCounts>,
    /// The longest a request-counting statement took (each holds a read lock).
    pub longest_statement: Option<Duration>,
    /// PostgreSQL: client backends and `max_connections`.
    pub connections: Option<(u64, u64)>,
    /// PostgreSQL: each gateway table's sizes and tuples.
    pub tables: Vec<(String, crate::gateway::postgres::db::TableSizes)>,
    /// PostgreSQL: the oldest open transaction's age (zero when none is open).
    pub oldest_transaction: Option<Duration>,
    /// Facts that could not be measured, each with what to check.
    pub problems: Vec<String>,
}

/// One condition's state in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The condition's part of the alert key: `disk_free:<mount>`, `database_size`,
    /// `wal_size`, `backup_age`, `error_rate`.
    pub condition: String,
    pub holds: bool,
    pub severity: Severity,
    /// The subject phrase; the same words while it holds and when it resolves.
    pub what: String,
    /// The figures, in a sentence.
    pub detail: String,
    /// What the operator can do.
    pub advice: String,
}

/// Turns measured facts into one verdict per condition that could be evaluated.
pub fn evaluate(spec: &Spec, facts: &Facts, now: DateTime<Utc>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let Some(min) = spec.disk_free_min {
        for fs in &facts.filesystems {
            let share = fs.free_share();
            verdicts.push(Verdict {
                condition: format!("disk_free:{}", fs.mount.display()),
                holds: share < min,
                severity: Severity::Critical,
                what: format!(
                    "free space on {} below {}",
                    fs.mount.display(),
                    fmt_share(min)
                ),
                detail: format!(
                    "{} has {} free of {} ({}); disk_free_min is {}. It holds: {}.",
                    fs.mount.display(),
                    units::bytes(fs.available_bytes),
                    units::bytes(fs.total_bytes),
                    fmt_share(share),
                    fmt_share(min),
                    fs.holds.join(", ")
                ),
                advice: "A full filesystem makes the gateway lose request rows and stops backups. \
                         Free space (old files, a tighter backup `keep`, an archive job for old rows) \
                         or grow the filesystem."
                    .into(),
            });
        }
    }
    let database = facts.database.as_deref().map_or_else(
        || "the gateway database".into(),
        |p| p.display().to_string(),
    );
    verdicts.extend(size_verdicts(
        spec,
        None,
        &database,
        facts.database_bytes,
        facts.wal_bytes,
    ));
    verdicts.extend(later_verdicts(spec, facts, now));
    verdicts
}

/// The size conditions of one database: the gateway's (`label` `None`, with its v1 condition
/// names) or a declared one (`database_size:<label>`, `wal_size:<label>`).
pub fn size_verdicts(
    spec: &Spec,
    label: Option<&str>,
    database: &str,
    database_bytes: Option<u64>,
    wal_bytes: Option<u64>,
) -> Vec<Verdict> {
    let of = label.map_or(String::new(), |l| format!(":{l}"));
    let subject = label.map_or("gateway database".to_string(), |l| format!("database {l}"));
    let wal_subject = label.map_or("gateway WAL".to_string(), |l| format!("WAL of database {l}"));
    // A file larger than its limit: (condition, the limit and the size, the file's words, its
    // limit's key, the advice).
    let sizes = [
        (
            "database_size",
            spec.database_max_size.zip(database_bytes),
            (subject, database.to_string(), "database_max_size"),
            "Archive old rows (an `archive` job with `then: delete` or `strip_payloads`), \
             then give the space back with a `maintenance` job (`vacuum: auto` or `always`).",
        ),
        (
            "wal_size",
            spec.wal_max_size.zip(wal_bytes),
            (wal_subject, format!("{database}-wal"), "wal_max_size"),
            "A WAL grows while a reader keeps an old snapshot open, so checkpoints cannot \
             finish. Look for a long-running reader of the database (an open sqlite3 shell, \
             a stuck export); a `maintenance` job with `checkpoint: truncate` shrinks the file \
             once it is gone.",
        ),
    ];
    let mut verdicts = Vec::new();
    for (condition, measured, (file, path, key), advice) in sizes {
        let Some((max, bytes)) = measured else {
            continue;
        };
        verdicts.push(Verdict {
            condition: format!("{condition}{of}"),
            holds: bytes > max,
            severity: Severity::Warning,
            what: format!("{file} larger than {}", units::bytes(max)),
            detail: format!(
                "{path} is {}; {key} is {}.",
                units::bytes(bytes),
                units::bytes(max)
            ),
            advice: advice.into(),
        });
    }
    verdicts
}

/// The conditions after the sizes: the backup's age and the error rate.
fn later_verdicts(spec: &Spec, facts: &Facts, now: DateTime<Utc>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let (Some(limit), Some(newest)) = (&spec.backup_max_age, &facts.newest_backup) {
        let max = chrono::TimeDelta::from_std(limit.age).unwrap_or(chrono::TimeDelta::MAX);
        let (holds, detail) = match newest.at {
            Some(at) => {
                let age = now - at;
                (
                    age > max,
                    format!(
                        "The newest successful run of `{}` started at {} ({} ago); backup_max_age is {}.",
                        limit.job,
                        at.format("%Y-%m-%d %H:%M:%S UTC"),
                        units::duration(age.to_std().unwrap_or_default()),
                        units::duration(limit.age)
                    ),
                )
            }
            None => (
                true,
                format!(
                    "`{}` has no successful run recorded; backup_max_age is {}.",
                    limit.job,
                    units::duration(limit.age)
                ),
            ),
        };
        verdicts.push(Verdict {
            condition: "backup_age".into(),
            holds,
            severity: Severity::Critical,
            what: format!(
                "no successful {} backup within {}",
                limit.job,
                units::duration(limit.age)
            ),
            detail,
            advice: format!(
                "`caretaker status` shows the job's last error; `caretaker run-job {}` runs it now.",
                limit.job
            ),
        });
    }
    if let (Some(limit), Some(counts)) = (&spec.error_rate_max, facts.requests) {
        let share = if counts.total == 0 {
            0.0
        } else {
            counts.failed as f64 / counts.total as f64
        };
        verdicts.push(Verdict {
            condition: "error_rate".into(),
            holds: share > limit.share,
            severity: Severity::Warning,
            what: format!(
                "gateway error rate above {} over {}",
                fmt_share(limit.share),
                units::duration(limit.over)
            ),
            detail: format!(
                "{} of {} requests in the last {} failed ({}); error_rate_max is {}.",
                counts.failed,
                counts.total,
                units::duration(limit.over),
                fmt_share(share),
                fmt_share(limit.share)
            ),
            advice: "The error column of the recent failed rows names the provider's error \
                     (rate limits, expired keys, an unreachable provider)."
                .into(),
        });
    }
    evaluate_postgres(&spec.postgres, facts, &mut verdicts);
    verdicts
}

/// The PostgreSQL conditions' verdicts.
fn evaluate_postgres(spec: &PgConditions, facts: &Facts, verdicts: &mut Vec<Verdict>) {
    if let (Some(max), Some((used, limit))) = (spec.connections_max, facts.connections) {
        let share = if limit == 0 { 0.0 } else { used as f64 / limit as f64 };
        verdicts.push(Verdict {
            condition: "connections".into(),
            holds: share > max,
            severity: Severity::Warning,
            what: format!("gateway server connections above {}", fmt_share(max)),
            detail: format!(
                "{used} of max_connections {limit} are in use ({}); connections_max is {}.",
                fmt_share(share),
                fmt_share(max)
            ),
            advice: "When the server runs out of connections the proxy's spend-log writes fail. \
                     Look in pg_stat_activity for idle sessions and their applications; put a pooler \
                     (PgBouncer) in front or raise max_connections."
                .into(),
        });
    }
    for (table, sizes) in &facts.tables {
        if let Some(max) = spec.dead_tuples_max {
            let share = sizes.dead_share();
            verdicts.push(Verdict {
                condition: format!("dead_tuples:{table}"),
                holds: share > max,
                severity: Severity::Warning,
                what: format!("dead tuples in {table} above {}", fmt_share(max)),
                detail: format!(
                    "`{table}` has {} dead and {} live tuples ({} dead); dead_tuples_max is {}.",
                    sizes.dead_tuples,
                    sizes.live_tuples,
                    fmt_share(share),
                    fmt_share(max)
                ),
                advice: "Autovacuum is not keeping up, or an old transaction holds it back \
                         (transaction_max_age). A `maintenance` job runs VACUUM (ANALYZE)."
                    .into(),
            });
        }
        if let Some(max) = spec.table_max_size {
            verdicts.push(Verdict {
                condition: format!("table_size:{table}"),
                holds: sizes.total() > max,
                severity: Severity::Warning,
                what: format!("{table} larger than {}", units::bytes(max)),
                detail: format!(
                    "`{table}` is {} (table {}, TOAST {}, indexes {}); table_max_size is {}.",
                    units::bytes(sizes.total()),
                    units::bytes(sizes.table),
                    units::bytes(sizes.toast),
                    units::bytes(sizes.indexes),
                    units::bytes(max)
                ),
                advice: "Archive old rows (an `archive` job; `strip_payloads` frees the TOAST), \
                         then a `maintenance` job's VACUUM lets the space be reused."
                    .into(),
            });
        }
    }
    if let (Some(max), Some(age)) = (spec.transaction_max_age, facts.oldest_transaction) {
        verdicts.push(Verdict {
            condition: "transaction_age".into(),
            holds: age > max,
            severity: Severity::Warning,
            what: format!("a transaction open longer than {}", units::duration(max)),
            detail: format!(
                "The oldest open transaction on the gateway's database has run for {}; transaction_max_age is {}.",
                units::duration(age),
                units::duration(max)
            ),
            advice: "An open transaction keeps vacuum from removing dead tuples, so tables bloat. \
                     pg_stat_activity shows it (xact_start, state, application_name); end it with \
                     pg_terminate_backend if it is stuck."
                .into(),
        });
    }
}

/// The alert events of a run's verdicts: raise what holds, resolve what is clear.
pub fn events(job: &str, verdicts: &[Verdict]) -> Vec<AlertEvent> {
    verdicts
        .iter()
        .map(|v| {
            let key = format!("health:{job}:{}", v.condition);
            if v.holds {
                AlertEvent::Raise(Alert {
                    key,
                    severity: v.severity,
                    job: Some(job.to_string()),
                    what: v.what.clone(),
                    body: format!(
                        "{}\n\n{}\n\nThis alert repeats while the condition holds (at most every alerts.repeat_after); \
                         a \"resolved\" message follows when it clears.",
                        v.detail, v.advice
                    ),
                })
            } else {
                AlertEvent::Resolve {
                    key,
                    job: Some(job.to_string()),
                    what: v.what.clone(),
                }
            }
        })
        .collect()
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let mut facts = gather(spec, ctx)?;
    let mut verdicts = evaluate(spec, &facts, ctx.now);
    verdicts.extend(declared_sizes(spec, &mut facts.problems));
    let holding: Vec<&str> = verdicts
        .iter()
        .filter(|v| v.holds)
        .map(|v| v.condition.as_str())
        .collect();
    let mut report = Report::new(if holding.is_empty() {
        format!("{} conditions checked, none holds", verdicts.len())
    } else {
        format!(
            "{} conditions checked, {} {}: {}",
            verdicts.len(),
            holding.len(),
            if holding.len() == 1 { "holds" } else { "hold" },
            holding.join(", ")
        )
    });
    if let Some(min) = facts
        .filesystems
        .iter()
        .map(Filesystem::free_share)
        .min_by(f64::total_cmp)
    {
        report = report.figure("disk_free_share_min", min);
    }
    if let Some(bytes) = facts.database_bytes {
        report = report.figure("database_bytes", bytes as f64);
    }
    if let Some(bytes) = facts.wal_bytes {
        report = report.figure("wal_bytes", bytes as f64);
    }
    if let Some(at) = facts.newest_backup.as_ref().and_then(|b| b.at) {
        report = report.figure("backup_age_seconds", (ctx.now - at).num_seconds() as f64);
    }
    if let Some(counts) = facts.requests {
        report = report
            .figure("requests_in_window", counts.total as f64)
            .figure("failed_requests_in_window", counts.failed as f64);
    }
    if let Some(longest) = facts.longest_statement {
        report = report.figure("longest_read_ms", longest.as_secs_f64() * 1000.0);
    }
    report = report.figure("conditions_holding", holding.len() as f64);
    let events = events(ctx.job, &verdicts);
    if ctx.dry_run {
        report.plan = verdicts
            .iter()
            .map(|v| {
                let key = format!("health:{}:{}", ctx.job, v.condition);
                if v.holds {
                    format!("would raise {key}: {} — {}", v.what, v.detail)
                } else {
                    format!("would resolve {key} if raised: {}", v.detail)
                }
            })
            .collect();
    } else {
        ctx.alerts.extend(events);
    }
    if !facts.problems.is_empty() {
        anyhow::bail!(
            "the health check could not measure everything (the conditions it could measure were evaluated):\n- {}",
            facts.problems.join("\n- ")
        );
    }
    Ok(report)
}

/// The size conditions of every current match of the declared databases the job names; what
/// cannot be measured goes to `problems`.
fn declared_sizes(spec: &Spec, problems: &mut Vec<String>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if spec.database_max_size.is_none() && spec.wal_max_size.is_none() {
        return verdicts;
    }
    for declared in &spec.databases.declared {
        let found = match declared.expand() {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!("database sizes: {e:#}"));
                continue;
            }
        };
        for f in found {
            // Gone since the listing: nothing to measure, nothing that grows.
            let Ok(meta) = std::fs::metadata(&f.path) else {
                continue;
            };
            let wal = std::fs::metadata(crate::sqlite::companion(&f.path, crate::sqlite::WAL))
                .map_or(0, |m| m.len());
            verdicts.extend(size_verdicts(
                spec,
                Some(&f.label()),
                &f.path.display().to_string(),
                Some(meta.len()),
                Some(wal),
            ));
        }
    }
    verdicts
}

/// Measures what `spec` asks about. Problems with one fact are collected in
/// `Facts::problems` so that the others are still evaluated; only a stop request is an error.
pub fn gather(spec: &Spec, ctx: &Context<'_>) -> anyhow::Result<Facts> {
    let database = ctx.gateway.database.clone();
    let mut facts = Facts {
        database: Some(database.clone()),
        ..Facts::default()
    };
    if spec.disk_free_min.is_some() {
        let (filesystems, problems) = filesystems(&watched_paths(ctx.gateway, ctx.state_dir, &ctx.written));
        facts.filesystems = filesystems;
        facts.problems.extend(problems);
    }
    let gateway_sizes = spec.databases.has_gateway();
    if ctx.gateway.postgres.is_some() {
        facts.database = None;
        gather_postgres(spec, ctx, &mut facts);
    } else if spec.database_max_size.is_some() && gateway_sizes {
        match std::fs::metadata(&database) {
            Ok(m) => facts.database_bytes = Some(m.len()),
            Err(e) => facts.problems.push(format!(
                "database_max_size: cannot read the size of {}: {e}; check gateway.database",
                database.display()
            )),
        }
    }
    if spec.wal_max_size.is_some() && gateway_sizes && ctx.gateway.postgres.is_none() {
        let wal = crate::sqlite::companion(&database, crate::sqlite::WAL);
        match std::fs::metadata(&wal) {
            Ok(m) => facts.wal_bytes = Some(m.len()),
            // No WAL file: a rollback-journal database, or a WAL one with no writer open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => facts.wal_bytes = Some(0),
            Err(e) => facts.problems.push(format!(
                "wal_max_size: cannot read the size of {}: {e}",
                wal.display()
            )),
        }
    }
    if let Some(limit) = &spec.backup_max_age {
        match ctx.state.last_success(&limit.job) {
            Ok(run) => {
                facts.newest_backup = Some(NewestBackup {
                    job: limit.job.clone(),
                    at: run.map(|r| r.started_at),
                })
            }
            Err(e) => facts.problems.push(format!(
                "backup_max_age: reading the runs of `{}` from the state database: {e:#}",
                limit.job
            )),
        }
    }
    if let Some(limit) = &spec.error_rate_max {
        ctx.checkpoint()?;
        match count_requests(ctx.gateway, ctx, limit.over) {
            Ok((counts, longest)) => {
                facts.requests = Some(counts);
                facts.longest_statement = Some(longest);
            }
            Err(e) if e.is::<crate::stop::Stopped>() => return Err(e),
            Err(e) => facts.problems.push(format!("error_rate_max: {e:#}")),
        }
    }
    Ok(facts)
}

/// Measures a PostgreSQL gateway's server: database size, connections, the gateway tables and
/// the oldest transaction, each read in one statement (a read takes no lock the proxy waits on).
fn gather_postgres(spec: &Spec, ctx: &Context<'_>, facts: &mut Facts) {
    let pg = &spec.postgres;
    if spec.database_max_size.is_none() && !pg.any() {
        return;
    }
    let mut db = match ctx.gateway.open(Access::ReadOnly) {
        Ok(db) => db,
        Err(e) => {
            facts.problems.push(format!("{e:#}"));
            return;
        }
    };
    if spec.database_max_size.is_some() {
        match db.sizes() {
            Ok(sizes) => facts.database_bytes = Some(sizes.database_bytes),
            Err(e) => facts.problems.push(format!("database_max_size: {e:#}")),
        }
    }
    let exec = db.exec();
    if pg.connections_max.is_some() {
        match crate::gateway::postgres::db::connections(exec) {
            Ok(c) => facts.connections = Some(c),
            Err(e) => facts.problems.push(format!("connections_max: {e:#}")),
        }
    }
    if pg.dead_tuples_max.is_some() || pg.table_max_size.is_some() {
        for table in crate::gateway::postgres::gateway_tables(ctx.gateway) {
            match crate::gateway::postgres::db::table_sizes(exec, &table) {
                Ok(Some(sizes)) => facts.tables.push((table, sizes)),
                // A table pruned with the requests that this gateway does not have.
                Ok(None) if table != ctx.gateway.table => {}
                Ok(None) => facts.problems.push(format!(
                    "table_max_size / dead_tuples_max: the gateway database has no table `{table}`; check gateway.table"
                )),
                Err(e) => facts.problems.push(format!("{e:#}")),
            }
        }
    }
    if pg.transaction_max_age.is_some() {
        match crate::gateway::postgres::db::oldest_transaction(exec) {
            Ok(age) => facts.oldest_transaction = Some(age),
            Err(e) => facts.problems.push(format!("transaction_max_age: {e:#}")),
        }
    }
}

/// The directories whose filesystems `disk_free_min` watches, each with what it holds: the
/// gateway database's, `state_dir` and what the jobs write (`written`, see
/// [`super::written_dirs`]).
pub fn watched_paths(
    gateway: &Gateway,
    state_dir: &Path,
    written: &[(PathBuf, String)],
) -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    // A PostgreSQL gateway's files are the server's, on its own host.
    // Without a `gateway:` (only declared databases) there is no gateway directory to watch.
    if gateway.postgres.is_none() && !gateway.database.as_os_str().is_empty() {
        let gateway_dir = gateway
            .database
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        paths.push((gateway_dir, "gateway database".to_string()));
    }
    paths.push((state_dir.to_path_buf(), "state_dir".to_string()));
    paths.extend_from_slice(written);
    paths
}

/// Groups `paths` by filesystem and measures each once. A path that does not exist yet (a
/// backup directory before the first backup) is measured at its nearest existing parent,
/// where it will be created.
fn filesystems(paths: &[(PathBuf, String)]) -> (Vec<Filesystem>, Vec<String>) {
    let mut by_device: BTreeMap<u64, Filesystem> = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, holds) in paths {
        match measure(path) {
            Ok((device, fs)) => {
                let entry = by_device.entry(device).or_insert(fs);
                if !entry.holds.contains(holds) {
                    entry.holds.push(holds.clone());
                }
            }
            Err(e) => problems.push(format!("disk_free_min: {holds}: {e:#}")),
        }
    }
    let mut filesystems: Vec<Filesystem> = by_device.into_values().collect();
    for fs in &mut filesystems {
        fs.holds.sort();
    }
    filesystems.sort_by(|a, b| a.mount.cmp(&b.mount));
    (filesystems, problems)
}

/// The device and free space of the filesystem `path` is (or will be) on; `holds` is left
/// for the caller, who knows what the path is for.
fn measure(path: &Path) -> anyhow::Result<(u64, Filesystem)> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .with_context(|| format!("no part of {} exists", path.display()))?;
    let existing = existing
        .canonicalize()
        .with_context(|| format!("resolving {}", existing.display()))?;
    let device = std::fs::metadata(&existing)
        .with_context(|| format!("reading {}", existing.display()))?
        .dev();
    // statvfs of the path itself, not a lookup in the mount table: it is always the
    // filesystem the path is on, bind mounts and overlays included.
    let stats = rustix::fs::statvfs(&existing)
        .with_context(|| format!("reading the free space of {}", existing.display()))?;
    Ok((
        device,
        Filesystem {
            mount: mount_point(&existing, device),
            holds: Vec::new(),
            total_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
            available_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        },
    ))
}

/// The topmost ancestor of `path` on `device`: the mount point, named in alerts because it
/// is what `df` shows.
fn mount_point(path: &Path, device: u64) -> PathBuf {
    let mut mount = path;
    while let Some(parent) = mount.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == device => mount = parent,
            _ => break,
        }
    }
    mount.to_path_buf()
}

/// Counts requests and failed requests of the last `over`, in time slices so that no one
/// statement holds the gateway's read lock for long. Returns the longest statement time.
fn count_requests(
    gateway: &Gateway,
    ctx: &Context<'_>,
    over: Duration,
) -> anyhow::Result<(RequestCounts, Duration)> {
    let mut db = gateway.open(Access::ReadOnly)?;
    let d = db.dialect();
    let Some(failed) = gateway.failed_sql(d) else {
        anyhow::bail!(
            "the gateway schema has no error column, so the error rate cannot be evaluated; remove error_rate_max or set gateway.columns.error"
        );
    };
    db.check_columns()?;
    let time = d.ident(&gateway.columns.time);
    let table = &gateway.table;
    let count_from = format!(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN {failed} THEN 1 ELSE 0 END), 0) FROM {} WHERE {time} >= {}",
        d.table(table),
        d.param(1)
    );
    let sql_between = format!("{count_from} AND {time} < {}", d.param(2));
    let sql_from = count_from;
    let end = ctx.now;
    let over = chrono::TimeDelta::from_std(over).unwrap_or(chrono::TimeDelta::MAX);
    let mut lo = end - over;
    let mut width = FIRST_SLICE.min(over);
    let mut counts = RequestCounts::default();
    let mut longest = Duration::ZERO;
    loop {
        let hi = lo + width;
        let last = hi >= end;
        let started = Instant::now();
        // The last slice has no upper bound: rows stamped a little ahead of our clock count too.
        let bounds: Vec<Value> = if last {
            vec![db.time_bound(lo)]
        } else {
            vec![db.time_bound(lo), db.time_bound(hi)]
        };
        let sql = if last { &sql_from } else { &sql_between };
        let mut busy = 0;
        let (total, failed): (i64, i64) = loop {
            match db.exec().query_one(sql, &bounds, |r| {
                Ok((r.i64(0)?.unwrap_or(0), r.i64(1)?.unwrap_or(0)))
            }) {
                // Our busy timeout ran out behind a gateway write: the gateway goes first, and
                // the slice is tried again rather than failing the whole check.
                Err(e) if crate::writelock::is_busy(&e) && busy < BUSY_RETRIES => {
                    busy += 1;
                    ctx.checkpoint()?;
                }
                Err(e) if crate::writelock::is_busy(&e) => {
                    return Err(e.context(format!(
                        "counting requests in {table} of {}: the gateway's writes kept it locked through {} waits of gateway.busy_timeout; the next run tries again",
                        gateway.location(),
                        busy + 1
                    )));
                }
                result => {
                    break result.with_context(|| {
                        format!("counting requests in {table} of {}", gateway.location())
                    })?;
                }
            }
        };
        let took = started.elapsed();
        longest = longest.max(took);
        counts.total += total.max(0) as u64;
        counts.failed += failed.max(0) as u64;
        if last {
            break;
        }
        lo = hi;
        width = next_width(width, took);
        ctx.checkpoint()?;
    }
    Ok((counts, longest))
}

/// Halves the slice after a slow statement, doubles it after a quick one; never below a
/// second, the resolution of the time bounds.
fn next_width(width: chrono::TimeDelta, took: Duration) -> chrono::TimeDelta {
    if took > SLICE_TARGET * 2 {
        (width / 2).max(chrono::TimeDelta::seconds(1))
    } else if took < SLICE_TARGET / 2 {
        width.checked_mul(2).unwrap_or(width)
    } else {
        width
    }
}

fn fmt_share(share: f64) -> String {
    let percent = share * 100.0;
    if (percent - percent.round()).abs() < 1e-9 {
        format!("{percent:.0}%")
    } else {
        format!("{percent:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::gateway::TimeFormat;

    fn spec() -> Spec {
        Spec {
            disk_free_min: Some(0.10),
            database_max_size: Some(5_000_000_000),
            wal_max_size: Some(1_000_000_000),
            backup_max_age: Some(BackupAge {
                job: "nightly".into(),
                age: Duration::from_secs(26 * 3600),
            }),
            error_rate_max: Some(ErrorRate {
                share: 0.05,
                over: Duration::from_secs(3600),
            }),
            databases: Selection::default(),
            postgres: PgConditions::default(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap()
    }

    fn fs(mount: &str, available: u64, total: u64) -> Filesystem {
        Filesystem {
            mount: mount.into(),
            holds: vec!["state_dir".into()],
            total_bytes: total,
            available_bytes: available,
        }
    }

    fn healthy() -> Facts {
        Facts {
            filesystems: vec![fs("/", 500, 1000), fs("/backup", 200, 1000)],
            database: Some("/var/lib/apantli/requests.db".into()),
            database_bytes: Some(4_000_000_000),
            wal_bytes: Some(0),
            newest_backup: Some(NewestBackup {
                job: "nightly".into(),
                at: Some(now() - chrono::TimeDelta::hours(25)),
            }),
            requests: Some(RequestCounts {
                total: 1000,
                failed: 50,
            }),
            longest_statement: None,
            problems: Vec::new(),
            ..Facts::default()
        }
    }

    fn holding(spec: &Spec, facts: &Facts) -> Vec<String> {
        evaluate(spec, facts, now())
            .into_iter()
            .filter(|v| v.holds)
            .map(|v| v.condition)
            .collect()
    }

    #[test]
    fn each_condition_holds_just_past_its_limit() {
        let spec = spec();
        assert_eq!(holding(&spec, &healthy()), Vec::<String>::new());
        type Change = fn(&mut Facts);
        let cases: &[(&str, Change, &[&str])] = &[
            (
                "exactly 10% free is enough",
                |f| f.filesystems[1].available_bytes = 100,
                &[],
            ),
            (
                "below 10% free",
                |f| f.filesystems[1].available_bytes = 99,
                &["disk_free:/backup"],
            ),
            (
                "a filesystem with no blocks never fills",
                |f| f.filesystems[0] = fs("/proc", 0, 0),
                &[],
            ),
            (
                "database at its limit",
                |f| f.database_bytes = Some(5_000_000_000),
                &[],
            ),
            (
                "database one byte over",
                |f| f.database_bytes = Some(5_000_000_001),
                &["database_size"],
            ),
            (
                "WAL over",
                |f| f.wal_bytes = Some(1_000_000_001),
                &["wal_size"],
            ),
            (
                "backup exactly 26h old",
                |f| {
                    f.newest_backup.as_mut().unwrap().at =
                        Some(now() - chrono::TimeDelta::hours(26))
                },
                &[],
            ),
            (
                "backup a second too old",
                |f| {
                    f.newest_backup.as_mut().unwrap().at =
                        Some(now() - chrono::TimeDelta::hours(26) - chrono::TimeDelta::seconds(1))
                },
                &["backup_age"],
            ),
            (
                "never backed up",
                |f| f.newest_backup.as_mut().unwrap().at = None,
                &["backup_age"],
            ),
            (
                "error rate exactly 5%",
                |f| {
                    f.requests = Some(RequestCounts {
                        total: 100,
                        failed: 5,
                    })
                },
                &[],
            ),
            (
                "error rate above 5%",
                |f| {
                    f.requests = Some(RequestCounts {
                        total: 100,
                        failed: 6,
                    })
                },
                &["error_rate"],
            ),
            (
                "no requests is no error rate",
                |f| {
                    f.requests = Some(RequestCounts {
                        total: 0,
                        failed: 0,
                    })
                },
                &[],
            ),
            (
                "an unmeasured fact is neither raised nor resolved",
                |f| f.wal_bytes = None,
                &[],
            ),
        ];
        for (name, change, expected) in cases {
            let mut facts = healthy();
            change(&mut facts);
            assert_eq!(holding(&spec, &facts), *expected, "{name}");
        }
    }

    #[test]
    fn unmeasured_and_unconfigured_conditions_give_no_verdict() {
        let mut facts = healthy();
        facts.wal_bytes = None;
        let conditions: Vec<String> = evaluate(&spec(), &facts, now())
            .into_iter()
            .map(|v| v.condition)
            .collect();
        assert_eq!(
            conditions,
            [
                "disk_free:/",
                "disk_free:/backup",
                "database_size",
                "backup_age",
                "error_rate"
            ]
        );
        let only_wal = Spec {
            disk_free_min: None,
            database_max_size: None,
            wal_max_size: Some(1),
            backup_max_age: None,
            error_rate_max: None,
            databases: Selection::default(),
            postgres: PgConditions::default(),
        };
        let verdicts = evaluate(&only_wal, &healthy(), now());
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].condition, "wal_size");
    }

    #[test]
    fn a_declared_database_has_its_own_size_conditions_named_after_it() {
        let verdicts = size_verdicts(
            &spec(),
            Some("media:7/Media_DB_v2.db"),
            "/srv/D/7/Media_DB_v2.db",
            Some(6_000_000_000),
            Some(10),
        );
        let named: Vec<(&str, bool, &str)> = verdicts
            .iter()
            .map(|v| (v.condition.as_str(), v.holds, v.what.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (
                    "database_size:media:7/Media_DB_v2.db",
                    true,
                    "database media:7/Media_DB_v2.db larger than 5 GB"
                ),
                (
                    "wal_size:media:7/Media_DB_v2.db",
                    false,
                    "WAL of database media:7/Media_DB_v2.db larger than 1 GB"
                ),
            ]
        );
        assert!(verdicts[0].detail.contains("/srv/D/7/Media_DB_v2.db is"));
    }

    #[test]
    fn a_backup_age_reads_across_a_dst_change() {
        // 2026-03-29 is the spring-forward day in Europe/Berlin; ages are UTC differences, so
        // the lost local hour neither shortens nor lengthens them.
        let spec = spec();
        let mut facts = healthy();
        facts.newest_backup.as_mut().unwrap().at =
            Some(Utc.with_ymd_and_hms(2026, 3, 27, 23, 30, 0).unwrap());
        assert_eq!(holding(&spec, &facts), Vec::<String>::new(), "exactly 26h");
        facts.newest_backup.as_mut().unwrap().at =
            Some(Utc.with_ymd_and_hms(2026, 3, 27, 23, 29, 0).unwrap());
        assert_eq!(holding(&spec, &facts), ["backup_age"]);
        let verdict = evaluate(&spec, &facts, now())
            .into_iter()
            .find(|v| v.condition == "backup_age")
            .unwrap();
        assert!(
            verdict.detail.contains("(1d 2h 1m ago)"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn verdicts_become_raise_or_resolve_with_stable_words() {
        let mut facts = healthy();
        facts.wal_bytes = Some(2_500_000_000);
        let verdicts = evaluate(&spec(), &facts, now());
        let raised = events("health", &verdicts);
        assert_eq!(raised.len(), verdicts.len());
        let wal = raised
            .iter()
            .find_map(|e| match e {
                AlertEvent::Raise(a) => Some(a),
                _ => None,
            })
            .unwrap();
        assert_eq!(wal.key, "health:health:wal_size");
        assert_eq!(wal.what, "gateway WAL larger than 1 GB");
        assert!(
            wal.body
                .contains("/var/lib/apantli/requests.db-wal is 2.33 GiB"),
            "{}",
            wal.body
        );
        assert!(wal.body.contains("checkpoint: truncate"), "{}", wal.body);
        facts.wal_bytes = Some(0);
        let cleared = events("health", &evaluate(&spec(), &facts, now()));
        let resolve = cleared
            .iter()
            .find_map(|e| match e {
                AlertEvent::Resolve { key, what, .. } if key == "health:health:wal_size" => {
                    Some(what)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            resolve, &wal.what,
            "the resolved subject repeats the raised words"
        );
    }

    #[test]
    fn slices_shrink_after_slow_statements_and_grow_after_quick_ones() {
        let m = chrono::TimeDelta::minutes;
        let cases = [
            (m(16), Duration::from_millis(101), m(8)),
            (m(16), Duration::from_millis(100), m(16)),
            (m(16), Duration::from_millis(25), m(16)),
            (m(16), Duration::from_millis(24), m(32)),
            (
                chrono::TimeDelta::seconds(1),
                Duration::from_secs(3),
                chrono::TimeDelta::seconds(1),
            ),
        ];
        for (width, took, expected) in cases {
            assert_eq!(next_width(width, took), expected, "{width} {took:?}");
        }
    }

    #[test]
    fn time_bounds_match_each_column_format() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 5).unwrap()
            + chrono::TimeDelta::milliseconds(250);
        assert_eq!(
            TimeFormat::Iso8601.bound(t),
            Value::Text("2026-11-22T02:00:05".into())
        );
        assert_eq!(
            TimeFormat::UnixSeconds.bound(t),
            Value::Integer(1_795_312_805)
        );
        assert_eq!(
            TimeFormat::UnixMillis.bound(t),
            Value::Integer(1_795_312_805_250)
        );
    }

    #[test]
    fn the_iso_bound_sorts_with_every_apantli_spelling() {
        let bound = "2025-11-01T03:23:08";
        for (row, after) in [
            ("2025-11-01T03:23:08Z", true),
            ("2025-11-01T03:23:08.830120Z", true),
            ("2025-11-01T03:23:08.000001+00:00", true),
            ("2025-11-01T03:23:08.830120", true),
            ("2025-11-01T03:23:07.999999Z", false),
            ("2025-11-01T03:23:07+00:00", false),
        ] {
            assert_eq!(row >= bound, after, "{row}");
        }
    }

    #[test]
    fn figures_are_written_as_the_jobs_file_writes_them() {
        assert_eq!(units::bytes(999), "999 B");
        assert_eq!(units::bytes(1_000_000), "1 MB");
        assert_eq!(units::bytes(1_234_567), "1.18 MiB");
        assert_eq!(units::bytes(5_000_000_000), "5 GB");
        assert_eq!(fmt_share(0.05), "5%");
        assert_eq!(fmt_share(0.125), "12.5%");
        assert_eq!(units::duration(Duration::from_secs(26 * 3600)), "1d 2h");
        assert_eq!(units::duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(units::duration(Duration::from_secs(90)), "1m 30s");
        let age = |m| units::duration(chrono::TimeDelta::minutes(m).to_std().unwrap());
        assert_eq!(age(59), "59m");
        assert_eq!(age(61), "1h 1m");
    }

    #[test]
    fn a_missing_directory_is_measured_where_it_will_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![
            (dir.path().join("not/yet/there"), "backups of b".to_string()),
            (dir.path().to_path_buf(), "state_dir".to_string()),
        ];
        let (filesystems, problems) = filesystems(&paths);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(filesystems.len(), 1, "{filesystems:?}");
        assert_eq!(filesystems[0].holds, ["backups of b", "state_dir"]);
        assert!(filesystems[0].total_bytes > 0);
        assert!(
            dir.path()
                .canonicalize()
                .unwrap()
                .starts_with(&filesystems[0].mount)
        );
    }
}
