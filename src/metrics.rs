//! `metrics_file`: every job's last run, the gateway's file sizes and budget spend, in the
//! Prometheus text format for node_exporter's textfile collector.
//!
//! The file is rewritten whole after each job run, atomically, from the state database, so it
//! never shows half a write and always agrees with `caretaker status`. [`gather`] reads,
//! [`render`] is a pure function of what was read.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::fsx::PendingFile;
use crate::state::{RunRecord, State};

/// The run results `caretaker_job_last_result` has one series for each.
const RESULTS: [&str; 4] = ["ok", "failed", "interrupted", "running"];

/// What a budget job keeps in the state database for the metrics file, one entry per limit:
/// `state.put("budget:<job>", "spend", &Vec<BudgetSpend>)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSpend {
    /// The limit's `name` in the jobs file.
    pub limit: String,
    /// `day`, `week` or `month`.
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub spend_usd: f64,
    pub limit_usd: f64,
}

/// Where the runner keeps each job's last run's locks on the gateway, keyed by job name:
/// `state.put(LOCKS_NS, <job>, &RunLocks)`.
pub const LOCKS_NS: &str = "locks";

/// The locks a job's last recorded run held on the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunLocks {
    pub stats: crate::writelock::LockStats,
    /// How many were longer than the docs promise for the job's kind.
    pub over_bound: u64,
}

/// One job as the metrics file shows it.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    pub name: String,
    pub kind: &'static str,
    pub last_run: Option<RunRecord>,
    pub last_success: Option<DateTime<Utc>>,
    /// The figures of the last successful run (a failed run has none).
    pub figures: Vec<(String, f64)>,
    pub budgets: Vec<BudgetSpend>,
    /// The gateway locks of its last run that took any part in them (kinds that lock).
    pub locks: Option<RunLocks>,
}

/// Everything the metrics file shows, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub jobs: Vec<JobMetrics>,
    pub database_bytes: Option<u64>,
    pub wal_bytes: Option<u64>,
    /// Every current match of the declared databases (`databases:`): its label
    /// (`media:7/Media_DB_v2.db`), its size and its WAL's.
    pub databases: Vec<(String, u64, u64)>,
    /// Alert deliveries not yet made (one per alert and sink).
    pub alerts_undelivered: usize,
    /// Alert conditions currently raised.
    pub alerts_active: usize,
}

/// A job of the jobs file as the metrics file names it: its name and its kind's.
pub struct Named<'a> {
    pub name: &'a str,
    pub kind: &'static str,
}

/// Reads the snapshot of `jobs` from the state database, the gateway's files (`database`) and
/// the current matches of the `declared` databases.
pub fn gather(
    jobs_of_file: &[Named<'_>],
    database: &Path,
    declared: &crate::databases::Databases,
    state: &State,
) -> anyhow::Result<Snapshot> {
    let mut jobs = Vec::with_capacity(jobs_of_file.len());
    for job in jobs_of_file {
        let last_success = state.last_success(job.name)?;
        let figures = last_success
            .as_ref()
            .map(|run| run_figures(state, run.id))
            .transpose()?
            .unwrap_or_default();
        let budgets = state
            .get::<Vec<BudgetSpend>>(&format!("budget:{}", job.name), "spend")
            .unwrap_or_else(|e| {
                // A layout this version does not know: leave the series out, keep the rest.
                tracing::debug!(job = %job.name, "budget spend not shown in the metrics file: {e:#}");
                None
            })
            .unwrap_or_default();
        let locks = state
            .get::<RunLocks>(LOCKS_NS, job.name)
            .unwrap_or_else(|e| {
                tracing::debug!(job = %job.name, "lock figures not shown in the metrics file: {e:#}");
                None
            });
        jobs.push(JobMetrics {
            name: job.name.to_string(),
            kind: job.kind,
            last_run: state.last_run_settled(job.name)?,
            last_success: last_success.map(|r| r.started_at),
            figures,
            budgets,
            locks,
        });
    }
    let size = |path: &Path| std::fs::metadata(path).ok().map(|m| m.len());
    let wal = crate::sqlite::companion(database, crate::sqlite::WAL);
    Ok(Snapshot {
        jobs,
        database_bytes: size(database),
        // No WAL file is an empty WAL, as long as the database itself is there.
        wal_bytes: size(Path::new(&wal)).or(size(database).map(|_| 0)),
        databases: declared_sizes(declared),
        alerts_undelivered: crate::alerts::pending(state)?.len(),
        alerts_active: crate::alerts::active(state)?.len(),
    })
}

/// The sizes of every current match of the declared databases; a path that is missing now is
/// left out (the jobs that use it say so).
fn declared_sizes(declared: &crate::databases::Databases) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for d in declared.0.values() {
        for f in d.expand().unwrap_or_default() {
            let Ok(meta) = std::fs::metadata(&f.path) else {
                continue;
            };
            let wal = std::fs::metadata(crate::sqlite::companion(&f.path, crate::sqlite::WAL))
                .map_or(0, |m| m.len());
            out.push((f.label(), meta.len(), wal));
        }
    }
    out
}

fn run_figures(state: &State, run_id: i64) -> anyhow::Result<Vec<(String, f64)>> {
    let text: Option<String> = state
        .conn()
        .query_row(
            "SELECT figures FROM runs WHERE id = ?1",
            params![run_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    match text {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).with_context(|| {
            format!("reading the figures of run {run_id} from the state database")
        }),
    }
}

/// One metric family: its header once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// Label values escape backslash, double quote and line feed; nothing else. API keys are
/// redacted first: a label can carry a gateway's value (a model name in a figure's name).
pub fn escape_label(value: &str) -> String {
    crate::redact::api_keys(value)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// A gauge family of one sample without labels, when there is a `value`.
fn gauge(out: &mut String, name: &str, help: &str, value: Option<f64>) {
    let mut f = Family::new(out, name, "gauge", help);
    if let Some(v) = value {
        f.sample(name, &[], v);
    }
}

/// A gauge family with one sample per job, for the jobs `value` gives one for.
fn job_gauge(
    out: &mut String,
    jobs: &[JobMetrics],
    name: &str,
    help: &str,
    value: impl Fn(&JobMetrics) -> Option<f64>,
) {
    let mut f = Family::new(out, name, "gauge", help);
    for j in jobs {
        if let Some(v) = value(j) {
            f.sample(name, &[("job", &j.name), ("kind", j.kind)], v);
        }
    }
}

/// The metrics file's text. Series of a job that never ran (or never succeeded) are left out
/// rather than written as 0, which would read as "ran at 1970".
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let jobs = &snapshot.jobs;
    job_gauge(
        &mut out,
        jobs,
        "caretaker_job_last_run_timestamp_seconds",
        "When the job's last run started (Unix time).",
        |j| j.last_run.as_ref().map(|run| seconds(run.started_at)),
    );
    job_gauge(
        &mut out,
        jobs,
        "caretaker_job_last_run_duration_seconds",
        "How long the job's last finished run took.",
        |j| {
            j.last_run
                .as_ref()
                .and_then(RunRecord::duration)
                .map(|d| d.as_secs_f64())
        },
    );
    {
        let name = "caretaker_job_last_result";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "1 for the result of the job's last run (ok, failed, interrupted, running), 0 for the others.",
        );
        for j in jobs {
            if let Some(run) = &j.last_run {
                for result in RESULTS {
                    let value = if run.result == result { 1.0 } else { 0.0 };
                    f.sample(
                        name,
                        &[("job", &j.name), ("kind", j.kind), ("result", result)],
                        value,
                    );
                }
            }
        }
    }
    job_gauge(
        &mut out,
        jobs,
        "caretaker_job_last_success_timestamp_seconds",
        "When the job's last successful run started (Unix time).",
        |j| j.last_success.map(seconds),
    );
    {
        let name = "caretaker_job_figure";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "The figures the job's last successful run reported (bytes_written, rows_archived, rows_repriced, ...).",
        );
        for j in jobs {
            for (figure, value) in &j.figures {
                f.sample(
                    name,
                    &[("job", &j.name), ("kind", j.kind), ("name", figure)],
                    *value,
                );
            }
        }
    }
    {
        // A summary: the quantiles of one run's locks (1 is the longest), their sum and count.
        let name = "caretaker_job_lock_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "summary",
            "The locks the job's last run held on the gateway database (quantile 1 is the longest).",
        );
        for j in jobs {
            if let Some(l) = &j.locks {
                let s = &l.stats;
                // A run that held no lock has no quantiles, only its count of 0.
                let quantiles = if s.count > 0 {
                    vec![("0.5", s.p50), ("0.99", s.p99), ("1", s.max)]
                } else {
                    Vec::new()
                };
                for (q, d) in quantiles {
                    f.sample(
                        name,
                        &[("job", &j.name), ("kind", j.kind), ("quantile", q)],
                        d.as_secs_f64(),
                    );
                }
                let labels = [("job", j.name.as_str()), ("kind", j.kind)];
                f.sample(&format!("{name}_sum"), &labels, s.total.as_secs_f64());
                f.sample(&format!("{name}_count"), &labels, s.count as f64);
            }
        }
    }
    job_gauge(
        &mut out,
        jobs,
        "caretaker_job_locks_over_bound",
        "How many of the job's last run's gateway locks were longer than the docs promise for its kind.",
        |j| j.locks.as_ref().map(|l| l.over_bound as f64),
    );
    gauge(
        &mut out,
        "caretaker_gateway_database_bytes",
        "Size of the gateway's database file.",
        snapshot.database_bytes.map(|b| b as f64),
    );
    gauge(
        &mut out,
        "caretaker_gateway_wal_bytes",
        "Size of the gateway database's -wal file (0 when there is none).",
        snapshot.wal_bytes.map(|b| b as f64),
    );
    for (name, help, wal) in [
        (
            "caretaker_database_bytes",
            "Size of a database declared under `databases:` (one series per file a path or glob matches).",
            false,
        ),
        (
            "caretaker_database_wal_bytes",
            "Size of the -wal file of a database declared under `databases:` (0 when there is none).",
            true,
        ),
    ] {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for (label, bytes, wal_bytes) in &snapshot.databases {
            let value = if wal { *wal_bytes } else { *bytes };
            f.sample(name, &[("database", label)], value as f64);
        }
    }
    for (name, help, value) in [
        (
            "caretaker_budget_spend_usd",
            "Spend in the current period of a budget limit, in USD.",
            (|b: &BudgetSpend| b.spend_usd) as fn(&BudgetSpend) -> f64,
        ),
        (
            "caretaker_budget_limit_usd",
            "A budget limit, in USD.",
            |b| b.limit_usd,
        ),
        (
            "caretaker_budget_period_start_timestamp_seconds",
            "Start of a budget limit's current period (Unix time).",
            |b| seconds(b.period_start),
        ),
    ] {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for j in jobs {
            for b in &j.budgets {
                f.sample(
                    name,
                    &[("job", &j.name), ("limit", &b.limit), ("period", &b.period)],
                    value(b),
                );
            }
        }
    }
    gauge(
        &mut out,
        "caretaker_alerts_undelivered",
        "Alert deliveries waiting in the outbox (one per alert and sink).",
        Some(snapshot.alerts_undelivered as f64),
    );
    gauge(
        &mut out,
        "caretaker_alerts_active",
        "Alert conditions currently raised and not resolved.",
        Some(snapshot.alerts_active as f64),
    );
    out
}

/// Gathers, renders and atomically replaces `path`.
///
/// The file is mode 0644, unlike everything else caretaker writes: it holds no secret, and
/// node_exporter reads it as another user.
pub fn write(
    jobs: &[Named<'_>],
    database: &Path,
    declared: &crate::databases::Databases,
    state: &State,
    path: &Path,
) -> anyhow::Result<()> {
    let text = render(&gather(jobs, database, declared, state)?);
    let mut pending = PendingFile::create(path).with_context(|| {
        format!(
            "writing the metrics file {} (check metrics_file and that its directory exists)",
            path.display()
        )
    })?;
    pending
        .write_all(text.as_bytes())
        .with_context(|| format!("writing {}", pending.temp_path().display()))?;
    pending
        .file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("making {} readable", pending.temp_path().display()))?;
    pending.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    fn run(result: &str, started: DateTime<Utc>, seconds: i64) -> RunRecord {
        RunRecord {
            id: 1,
            job: "nightly".into(),
            trigger: "schedule".into(),
            started_at: started,
            ended_at: (result != "running").then(|| started + chrono::TimeDelta::seconds(seconds)),
            result: result.into(),
            summary: None,
            error: None,
        }
    }

    #[test]
    fn a_job_renders_its_run_result_and_figures() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        let snapshot = Snapshot {
            jobs: vec![
                JobMetrics {
                    name: "nightly".into(),
                    kind: "backup",
                    last_run: Some(run("failed", t, 3)),
                    last_success: Some(t - chrono::TimeDelta::days(1)),
                    figures: vec![("bytes_written".into(), 1234.5)],
                    budgets: Vec::new(),
                    locks: Some(RunLocks {
                        stats: crate::writelock::lock_stats(&[
                            Duration::from_millis(4),
                            Duration::from_millis(6),
                            Duration::from_millis(250),
                        ]),
                        over_bound: 1,
                    }),
                },
                JobMetrics {
                    name: "never".into(),
                    kind: "verify",
                    last_run: None,
                    last_success: None,
                    figures: Vec::new(),
                    budgets: Vec::new(),
                    locks: None,
                },
            ],
            database_bytes: Some(4096),
            wal_bytes: Some(0),
            databases: vec![("media:7/Media_DB_v2.db".into(), 8192, 512)],
            alerts_undelivered: 2,
            alerts_active: 1,
        };
        let text = render(&snapshot);
        for line in [
            "caretaker_job_last_run_timestamp_seconds{job=\"nightly\",kind=\"backup\"} 1795312800",
            "caretaker_job_last_run_duration_seconds{job=\"nightly\",kind=\"backup\"} 3",
            "caretaker_job_last_result{job=\"nightly\",kind=\"backup\",result=\"failed\"} 1",
            "caretaker_job_last_result{job=\"nightly\",kind=\"backup\",result=\"ok\"} 0",
            "caretaker_job_last_success_timestamp_seconds{job=\"nightly\",kind=\"backup\"} 1795226400",
            "caretaker_job_figure{job=\"nightly\",kind=\"backup\",name=\"bytes_written\"} 1234.5",
            "caretaker_gateway_database_bytes 4096",
            "caretaker_gateway_wal_bytes 0",
            "caretaker_database_bytes{database=\"media:7/Media_DB_v2.db\"} 8192",
            "caretaker_database_wal_bytes{database=\"media:7/Media_DB_v2.db\"} 512",
            "caretaker_alerts_undelivered 2",
            "caretaker_job_lock_seconds{job=\"nightly\",kind=\"backup\",quantile=\"0.5\"} 0.006",
            "caretaker_job_lock_seconds{job=\"nightly\",kind=\"backup\",quantile=\"0.99\"} 0.25",
            "caretaker_job_lock_seconds{job=\"nightly\",kind=\"backup\",quantile=\"1\"} 0.25",
            "caretaker_job_lock_seconds_sum{job=\"nightly\",kind=\"backup\"} 0.26",
            "caretaker_job_lock_seconds_count{job=\"nightly\",kind=\"backup\"} 3",
            "caretaker_job_locks_over_bound{job=\"nightly\",kind=\"backup\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("job=\"never\""), "{text}");
    }

    #[test]
    fn label_values_and_special_numbers_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        assert_eq!(
            escape_label(&format!("unpriced_rows{{model=\"mystery-{key}\"}}")),
            r#"unpriced_rows{model=\"mystery-sk-[redacted]\"}"#
        );
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1e21), "1000000000000000000000");
    }
}
