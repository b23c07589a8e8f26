//! The archive's plan: from the spec, what a survey of the gateway found and the clock, what a
//! run would archive and purge; its `Display` is the `--dry-run` output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::select::Bound;
use super::spec::{Spec, Then};
use crate::gateway::TimeFormat;
use crate::jobs::contract::Report;
use crate::units;
use crate::writelock::HOLD_LIMIT;

/// What each write transaction's planned size aims at; the rows per transaction adapt. Above
/// the run's `STOP_DELETING`, so that most transactions end there, as long as allowed: each one costs
/// the gateway the same room after it.
pub const TARGET_HOLD: Duration = HOLD_LIMIT;

/// The cut-off: rows older than this are archived. `older_than` is elapsed time, not calendar
/// days in the zone, so a day across a DST change is 24 hours.
pub fn cutoff(spec: &Spec, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    chrono::Duration::from_std(spec.older_than)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .context("archive `older_than` reaches before the year 0; accepted: a duration such as 90d")
}

/// A batch a killed run left recorded in the state database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub file: PathBuf,
    pub table: String,
    pub rows: usize,
    /// Whether its file was published (complete and durable) before the run ended.
    pub published: bool,
}

/// What a survey of the gateway found: gathered by `run` (I/O), read by [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub left: Vec<Left>,
    /// The request table and how its time column is written.
    pub table: String,
    pub time_format: TimeFormat,
    pub payload_columns: Vec<String>,
    /// The rows older than the cut-off that the job's `rows` selects, their bytes and the
    /// bytes of their payload columns.
    pub rows: u64,
    pub bytes: u64,
    pub payload_bytes: u64,
    /// BobaMixer's sessions older than the cut-off without usage records, when the run
    /// deletes them too.
    pub orphaned_sessions: Option<u64>,
}

/// What a run would do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub lines: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    pub payload_bytes: u64,
    pub files: u64,
    pub orphaned_sessions: u64,
}

/// The plan for `facts` at `now`. `tz` is the jobs file's zone: the cut-off is said in UTC,
/// as the gateways write their times.
pub fn plan(
    spec: &Spec,
    facts: &Facts,
    now: DateTime<Utc>,
    _tz: Tz,
) -> anyhow::Result<Plan> {
    let cutoff = cutoff(spec, now)?;
    let bound = Bound::new(facts.time_format, cutoff);
    let mut lines = Vec::new();
    for left in &facts.left {
        lines.push(if left.published {
            format!(
                "resume: {} is complete; its {} rows would be purged from `{}`",
                left.file.display(),
                left.rows,
                left.table
            )
        } else {
            format!(
                "resume: {} was never published; its rows are still in `{}` and are archived again",
                left.file.display(),
                left.table
            )
        });
    }
    let (rows, bytes, table) = (facts.rows, facts.bytes, &facts.table);
    let files = rows.div_ceil(u64::from(spec.batch));
    lines.push(format!(
        "archive: {rows} rows of `{table}` older than {} ({}, rows: {}), {} of row data, into {files} {} files in {}",
        bound.describe(),
        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        spec.rows.name(),
        units::bytes(bytes),
        spec.format.extension(),
        spec.to.display()
    ));
    lines.push(match spec.then {
        Then::Delete => format!(
            "delete: {rows} rows ({}) from `{table}` in write transactions of about {} each",
            units::bytes(bytes),
            units::duration(TARGET_HOLD)
        ),
        Then::StripPayloads => format!(
            "strip: set {} to NULL in {rows} rows of `{table}` ({} of payloads)",
            facts.payload_columns.join(", "),
            units::bytes(facts.payload_bytes)
        ),
    });
    if let Some(orphans) = facts.orphaned_sessions {
        lines.push(format!(
            "sessions: archive and delete {orphans} `sessions` rows older than the cut-off that have no usage records now (more once the rows above are deleted)"
        ));
    }
    Ok(Plan {
        lines,
        rows,
        bytes,
        payload_bytes: facts.payload_bytes,
        files,
        orphaned_sessions: facts.orphaned_sessions.unwrap_or(0),
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl Plan {
    /// The dry run's report: the plan, a summary and its figures.
    pub fn report(&self) -> Report {
        Report::new(format!(
            "would archive {} rows ({}) into {} files",
            self.rows,
            units::bytes(self.bytes),
            self.files
        ))
        .figure("rows", self.rows as f64)
        .figure("bytes", self.bytes as f64)
        .figure("payload_bytes", self.payload_bytes as f64)
        .figure("orphaned_sessions", self.orphaned_sessions as f64)
        .with_plan(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::jobs::archive::spec::{Format, Rows};

    fn spec(older_than_days: u64, then: Then) -> Spec {
        Spec {
            older_than: Duration::from_secs(older_than_days * 86_400),
            to: PathBuf::from("/srv/archives"),
            format: Format::Jsonl,
            then,
            rows: Rows::All,
            redact: Vec::new(),
            batch: 2000,
            copy_to: Vec::new(),
            keep_local: None,
        }
    }

    fn facts(format: TimeFormat) -> Facts {
        Facts {
            left: Vec::new(),
            table: "requests".into(),
            time_format: format,
            payload_columns: vec!["request_data".into(), "response_data".into()],
            rows: 4500,
            bytes: 3 << 20,
            payload_bytes: 2 << 20,
            orphaned_sessions: None,
        }
    }

    const DELETE: &str =
        "delete: 4500 rows (3 MiB) from `requests` in write transactions of about 16 ms each";

    /// The plan's `archive:` line for a cut-off as the time column spells it and in UTC.
    fn archive(bound: &str, utc: &str) -> String {
        format!(
            "archive: 4500 rows of `requests` older than {bound} ({utc}, rows: all), 3 MiB of row data, into 3 jsonl.gz files in /srv/archives"
        )
    }

    /// One row per case: the clock, the zone, what was found, and the plan's lines.
    #[test]
    fn plan_table() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let utc = |y, mo, d, h| Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap();
        let mut left = facts(TimeFormat::UnixSeconds);
        left.left = vec![
            Left {
                file: "/srv/archives/a.jsonl.gz".into(),
                table: "requests".into(),
                rows: 12,
                published: true,
            },
            Left {
                file: "/srv/archives/b.jsonl.gz".into(),
                table: "requests".into(),
                rows: 7,
                published: false,
            },
        ];
        let mut sessions = facts(TimeFormat::UnixSeconds);
        sessions.orphaned_sessions = Some(3);
        // (what the case shows, spec, facts, now, zone, the plan's lines)
        type Case = (&'static str, Spec, Facts, DateTime<Utc>, Tz, Vec<String>);
        let cases: Vec<Case> = vec![
            (
                "ISO times, delete",
                spec(90, Then::Delete),
                facts(TimeFormat::Iso8601),
                utc(2026, 6, 1, 12),
                chrono_tz::UTC,
                vec![
                    archive("'2026-03-03T12:00:00'", "2026-03-03T12:00:00Z"),
                    DELETE.into(),
                ],
            ),
            (
                // Berlin springs forward on 29 March 2026 at 01:00 UTC: a day back from 14:00
                // local (12:00 UTC) is 24 hours back, 13:00 local the day before.
                "a day across the spring DST change is 24 hours",
                spec(1, Then::StripPayloads),
                facts(TimeFormat::UnixSeconds),
                utc(2026, 3, 29, 12),
                berlin,
                vec![
                    archive("1774699200", "2026-03-28T12:00:00Z"),
                    "strip: set request_data, response_data to NULL in 4500 rows of `requests` (2 MiB of payloads)".into(),
                ],
            ),
            (
                "the autumn change too",
                spec(1, Then::Delete),
                facts(TimeFormat::UnixMillis),
                utc(2026, 10, 25, 12),
                berlin,
                vec![
                    archive("1792843200000", "2026-10-24T12:00:00Z"),
                    DELETE.into(),
                ],
            ),
            (
                "batches a killed run left come first",
                spec(1, Then::Delete),
                left,
                utc(2026, 1, 2, 0),
                chrono_tz::UTC,
                vec![
                    "resume: /srv/archives/a.jsonl.gz is complete; its 12 rows would be purged from `requests`".into(),
                    "resume: /srv/archives/b.jsonl.gz was never published; its rows are still in `requests` and are archived again".into(),
                    archive("1767225600", "2026-01-01T00:00:00Z"),
                    DELETE.into(),
                ],
            ),
            (
                "BobaMixer's orphaned sessions",
                spec(1, Then::Delete),
                sessions,
                utc(2026, 1, 2, 0),
                chrono_tz::UTC,
                vec![
                    archive("1767225600", "2026-01-01T00:00:00Z"),
                    DELETE.into(),
                    "sessions: archive and delete 3 `sessions` rows older than the cut-off that have no usage records now (more once the rows above are deleted)".into(),
                ],
            ),
        ];
        for (name, spec, facts, now, tz, want) in cases {
            let plan = plan(&spec, &facts, now, tz).unwrap();
            assert_eq!(plan.lines, want, "{name}");
            let mut text = want.join("\n");
            text.push('\n');
            assert_eq!(plan.to_string(), text, "{name}");
        }
    }

    #[test]
    fn plan_refuses_a_cut_off_before_the_year_0() {
        let mut s = spec(1, Then::Delete);
        s.older_than = Duration::from_secs(u64::MAX / 4);
        let e = plan(&s, &facts(TimeFormat::UnixSeconds), Utc::now(), chrono_tz::UTC)
            .unwrap_err()
            .to_string();
        assert!(e.contains("older_than"), "{e}");
    }
}
