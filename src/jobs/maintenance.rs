//! The `maintenance` job: WAL checkpoint, ANALYZE and optimize, VACUUM when it pays.
//!
//! Each step is one statement whose write lock we time. ANALYZE reads a bounded sample
//! (`analysis_limit`) so it holds the lock for milliseconds, not for a scan of every index.
//! VACUUM rewrites the whole file under an exclusive lock: it is the one step that can make a
//! gateway lose rows, which is why `vacuum: auto` only runs it when enough pages are free, and
//! docs/jobs/maintenance.md says when to schedule it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::Connection;
use serde::Deserialize;

use super::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::config::Checks;
use crate::config::values::Share;
use crate::writelock::{self, Pacer};

/// Rows ANALYZE samples per index: enough for the planner, milliseconds of lock.
const ANALYSIS_LIMIT: u32 = 1000;
/// `checkpoint: truncate` waits this long for the gateway's writers before it gives up a try.
const TRUNCATE_BUSY_TIMEOUT: Duration = Duration::from_millis(50);
const TRUNCATE_TRIES: u32 = 3;
/// VACUUM writes a full copy of the database before the old one is released.
const VACUUM_SPACE_FACTOR: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    Passive,
    Truncate,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vacuum {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    checkpoint: Option<Checkpoint>,
    analyze: Option<bool>,
    vacuum: Option<Vacuum>,
    vacuum_threshold: Option<Share>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub checkpoint: Checkpoint,
    pub analyze: bool,
    pub vacuum: Vacuum,
    /// Share of free pages from which `vacuum: auto` runs VACUUM.
    pub vacuum_threshold: f64,
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let vacuum = raw.vacuum.unwrap_or(Vacuum::Auto);
    if vacuum != Vacuum::Never {
        checks.warn(format!(
            "{path}.vacuum: VACUUM holds an exclusive lock on the gateway database while it rewrites it; \
             a gateway without a busy timeout (BobaMixer) loses every write in that time and Apantli \
             loses them after 5 s: use `vacuum: never` or schedule the job in a quiet window"
        ));
    }
    Some(Spec {
        checkpoint: raw.checkpoint.unwrap_or(Checkpoint::Passive),
        analyze: raw.analyze.unwrap_or(true),
        vacuum,
        vacuum_threshold: raw.vacuum_threshold.map_or(0.2, |s| s.0),
    })
}

/// The database's shape as the plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub wal: bool,
    pub page_size: u64,
    pub page_count: u64,
    pub freelist_count: u64,
    /// Bytes the filesystem of the database gives to unprivileged users.
    pub available: u64,
}

impl Facts {
    pub fn bytes(&self) -> u64 {
        self.page_size * self.page_count
    }

    pub fn free_share(&self) -> f64 {
        if self.page_count == 0 {
            0.0
        } else {
            self.freelist_count as f64 / self.page_count as f64
        }
    }
}

/// What a run will do, decided from the spec and the facts alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub checkpoint: Option<Checkpoint>,
    /// Why the checkpoint is skipped, when it is.
    pub checkpoint_note: Option<String>,
    pub analyze: bool,
    pub vacuum: VacuumDecision,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VacuumDecision {
    Skip(String),
    Run,
    /// VACUUM is wanted but the filesystem lacks room for it.
    NoRoom {
        needed: u64,
        available: u64,
    },
}

pub fn plan(spec: &Spec, facts: &Facts) -> Plan {
    let (checkpoint, checkpoint_note) = match (spec.checkpoint, facts.wal) {
        (Checkpoint::Off, _) => (None, None),
        (mode, true) => (Some(mode), None),
        (_, false) => (
            None,
            Some("checkpoint skipped: the database uses a rollback journal, not WAL".to_string()),
        ),
    };
    let wanted = match spec.vacuum {
        Vacuum::Never => Err("vacuum: never".to_string()),
        Vacuum::Always => Ok(()),
        Vacuum::Auto if facts.free_share() >= spec.vacuum_threshold => Ok(()),
        Vacuum::Auto => Err(format!(
            "{:.1}% of pages are free, below vacuum_threshold {:.1}%",
            facts.free_share() * 100.0,
            spec.vacuum_threshold * 100.0
        )),
    };
    let needed = facts.bytes() * VACUUM_SPACE_FACTOR;
    let vacuum = match wanted {
        Err(why) => VacuumDecision::Skip(why),
        Ok(()) if facts.available < needed => VacuumDecision::NoRoom {
            needed,
            available: facts.available,
        },
        Ok(()) => VacuumDecision::Run,
    };
    Plan {
        checkpoint,
        checkpoint_note,
        analyze: spec.analyze,
        vacuum,
    }
}

fn pragma_u64(conn: &Connection, name: &str) -> anyhow::Result<u64> {
    let v: i64 = conn
        .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .with_context(|| format!("reading PRAGMA {name} of the gateway database"))?;
    Ok(v.max(0) as u64)
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> anyhow::Result<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(dir).with_context(|| {
        format!(
            "reading the free space of the filesystem of {}",
            dir.display()
        )
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn facts(conn: &Connection, db: &Path) -> anyhow::Result<Facts> {
    Ok(Facts {
        wal: writelock::journal_mode(conn)? == "wal",
        page_size: pragma_u64(conn, "page_size")?,
        page_count: pragma_u64(conn, "page_count")?,
        freelist_count: pragma_u64(conn, "freelist_count")?,
        available: available_bytes(db)?,
    })
}

fn file_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    [db.to_path_buf(), wal.into()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let gateway = &ctx.config.gateway;
    let db = &gateway.database;
    let mut conn = gateway.connect(false)?;
    let before = facts(&conn, db)?;
    let plan = plan(spec, &before);
    let space_key = format!("vacuum-space:{}", ctx.job);
    if ctx.dry_run {
        let mut report = Report::new(format!("would maintain {}", db.display()));
        report.plan = describe(&plan, &before);
        return Ok(report);
    }
    let files_before = file_bytes(db);
    let mut pacer = Pacer::new(&conn)?;
    let mut done = Vec::new();
    if let Some(note) = &plan.checkpoint_note {
        done.push(note.clone());
    }
    if let Some(mode) = plan.checkpoint {
        done.push(checkpoint(
            &mut conn,
            &mut pacer,
            mode,
            gateway.busy_timeout,
        )?);
        ctx.checkpoint()?;
    }
    if plan.analyze {
        let (_, held) = pacer.statement(&conn, |c| {
            c.execute_batch(&format!(
                "PRAGMA analysis_limit = {ANALYSIS_LIMIT}; ANALYZE; PRAGMA optimize;"
            ))
            .context("running ANALYZE and PRAGMA optimize on the gateway database")
        })?;
        done.push(format!(
            "ANALYZE and optimize held the write lock {:.1} ms",
            ms(held)
        ));
        ctx.checkpoint()?;
    }
    let mut vacuum_seconds = 0.0;
    match &plan.vacuum {
        VacuumDecision::Skip(why) => done.push(format!("VACUUM skipped: {why}")),
        VacuumDecision::NoRoom { needed, available } => {
            let message = format!(
                "VACUUM of {} refused: it needs about {} free on its filesystem (twice the database), only {} are available; free space there or set `vacuum: never`",
                db.display(),
                mb(*needed),
                mb(*available)
            );
            ctx.alerts.push(AlertEvent::Raise(Alert {
                key: space_key,
                severity: Severity::Warning,
                job: Some(ctx.job.to_string()),
                what: "no room to VACUUM the gateway database".into(),
                body: message.clone(),
            }));
            anyhow::bail!(message);
        }
        VacuumDecision::Run => {
            let (_, held) = pacer.statement(&conn, |c| {
                c.execute_batch("VACUUM")
                    .with_context(|| format!("running VACUUM on {}", db.display()))
            })?;
            vacuum_seconds = held.as_secs_f64();
            ctx.alerts.push(AlertEvent::Resolve {
                key: space_key,
                job: Some(ctx.job.to_string()),
                what: "no room to VACUUM the gateway database".into(),
            });
            done.push(format!("VACUUM held an exclusive lock {:.1} ms", ms(held)));
        }
    }
    let after = facts(&conn, db)?;
    let files_after = file_bytes(db);
    done.push(format!(
        "size {} -> {} ({} -> {} free pages)",
        mb(files_before),
        mb(files_after),
        before.freelist_count,
        after.freelist_count
    ));
    Ok(Report::new(done.join("; "))
        .figure("bytes_before", files_before as f64)
        .figure("bytes_after", files_after as f64)
        .figure("longest_lock_ms", ms(pacer.longest()))
        .figure("vacuum_seconds", vacuum_seconds))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn describe(plan: &Plan, facts: &Facts) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(note) = &plan.checkpoint_note {
        lines.push(note.clone());
    }
    if let Some(mode) = plan.checkpoint {
        lines.push(format!("checkpoint: {mode:?} checkpoint of the WAL").to_lowercase());
    }
    if plan.analyze {
        lines.push(format!(
            "analyze: ANALYZE (sampling {ANALYSIS_LIMIT} rows per index) then PRAGMA optimize"
        ));
    }
    lines.push(match &plan.vacuum {
        VacuumDecision::Skip(why) => format!("vacuum: skipped, {why}"),
        VacuumDecision::Run => format!(
            "vacuum: rewrite {} ({} of {} pages free) under an exclusive lock",
            mb(facts.bytes()),
            facts.freelist_count,
            facts.page_count
        ),
        VacuumDecision::NoRoom { needed, available } => format!(
            "vacuum: would be refused, needs {} free, {} available",
            mb(*needed),
            mb(*available)
        ),
    });
    lines
}

fn checkpoint(
    conn: &mut Connection,
    pacer: &mut Pacer,
    mode: Checkpoint,
    busy_timeout: Duration,
) -> anyhow::Result<String> {
    match mode {
        Checkpoint::Off => Ok(String::new()),
        // PASSIVE copies what it can without waiting for or blocking any writer.
        Checkpoint::Passive => {
            let (busy, log, done) = wal_checkpoint(conn, "PASSIVE")?;
            Ok(format!(
                "passive checkpoint copied {done} of {log} WAL frames{}",
                if busy != 0 {
                    " (readers or writers kept the rest)"
                } else {
                    ""
                }
            ))
        }
        // TRUNCATE holds off new writers while it waits and copies: only a short wait per
        // try, and a few tries, so the gateway is never blocked for long.
        Checkpoint::Truncate => {
            conn.busy_timeout(TRUNCATE_BUSY_TIMEOUT)?;
            let mut outcome = Ok(String::new());
            for attempt in 1..=TRUNCATE_TRIES {
                let result = pacer.statement(conn, |c| wal_checkpoint(c, "TRUNCATE"));
                match result {
                    Ok(((0, _, done), held)) => {
                        outcome = Ok(format!(
                            "truncate checkpoint copied {done} WAL frames and emptied the WAL in {:.1} ms (try {attempt})",
                            ms(held)
                        ));
                        break;
                    }
                    Ok(((_, log, done), _)) => {
                        outcome = Ok(format!(
                            "truncate checkpoint gave up after {TRUNCATE_TRIES} tries: the gateway was busy; {done} of {log} frames copied"
                        ));
                    }
                    Err(e) => outcome = Err(e),
                }
            }
            conn.busy_timeout(busy_timeout)?;
            outcome
        }
    }
}

fn wal_checkpoint(conn: &Connection, mode: &str) -> anyhow::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .with_context(|| format!("running PRAGMA wal_checkpoint({mode}) on the gateway database"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vacuum: Vacuum) -> Spec {
        Spec {
            checkpoint: Checkpoint::Passive,
            analyze: true,
            vacuum,
            vacuum_threshold: 0.2,
        }
    }

    fn facts(wal: bool, free: u64, available: u64) -> Facts {
        Facts {
            wal,
            page_size: 4096,
            page_count: 1000,
            freelist_count: free,
            available,
        }
    }

    #[test]
    fn vacuum_decisions() {
        let room = 10 * 4096 * 1000;
        let cases = [
            (
                Vacuum::Never,
                900,
                room,
                VacuumDecision::Skip("vacuum: never".into()),
            ),
            (Vacuum::Always, 0, room, VacuumDecision::Run),
            (Vacuum::Auto, 200, room, VacuumDecision::Run),
            (
                Vacuum::Auto,
                199,
                room,
                VacuumDecision::Skip(
                    "19.9% of pages are free, below vacuum_threshold 20.0%".into(),
                ),
            ),
            (
                Vacuum::Always,
                0,
                2 * 4096 * 1000 - 1,
                VacuumDecision::NoRoom {
                    needed: 2 * 4096 * 1000,
                    available: 2 * 4096 * 1000 - 1,
                },
            ),
            (Vacuum::Always, 0, 2 * 4096 * 1000, VacuumDecision::Run),
        ];
        for (mode, free, available, expected) in cases {
            let got = plan(&spec(mode), &facts(true, free, available)).vacuum;
            assert_eq!(got, expected, "{mode:?} free={free} available={available}");
        }
    }

    #[test]
    fn checkpoint_only_on_wal() {
        let rollback = plan(&spec(Vacuum::Never), &facts(false, 0, 0));
        assert_eq!(rollback.checkpoint, None);
        assert!(
            rollback
                .checkpoint_note
                .unwrap()
                .contains("rollback journal")
        );
        let wal = plan(&spec(Vacuum::Never), &facts(true, 0, 0));
        assert_eq!(wal.checkpoint, Some(Checkpoint::Passive));
        assert_eq!(wal.checkpoint_note, None);
        let off = Spec {
            checkpoint: Checkpoint::Off,
            ..spec(Vacuum::Never)
        };
        assert_eq!(plan(&off, &facts(false, 0, 0)).checkpoint_note, None);
    }

    #[test]
    fn an_empty_database_has_no_free_share() {
        let f = Facts {
            page_count: 0,
            ..facts(true, 0, 0)
        };
        assert_eq!(f.free_share(), 0.0);
    }
}
