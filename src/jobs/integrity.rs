//! The `integrity` job: `quick_check`, or `integrity_check` plus `foreign_key_check`.
//!
//! Both checks run in one read transaction. In WAL mode the gateway keeps writing meanwhile, so
//! the live database is checked. With a rollback journal (Apantli) the gateway's commits wait
//! for as long as a read transaction lasts, and a full check of a 2 GB file outlasts Apantli's
//! 5 s busy timeout; so by default a full check of such a database first copies it the way the
//! backup job does (read into memory under one read transaction, a fraction of the time the
//! full check would hold it) and checks the copy, byte for byte the database's file, while the
//! gateway writes on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rusqlite::{Connection, ErrorCode};
use serde::Deserialize;

use crate::jobs::contract::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::backup::{self, snapshot};
use crate::checks::Checks;
use crate::databases::Selection;
use crate::gateway::Gateway;
use crate::units;
use crate::writelock::journal_mode;

/// Findings quoted in the summary and the alert; the rest are counted.
const QUOTED_FINDINGS: usize = 10;
/// `quick_check` and `integrity_check` stop after this many problems.
const MAX_FINDINGS: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Depth {
    Quick,
    Full,
}

/// Whether the check reads the live database or a copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Copy {
    /// A copy for a full check of a rollback-journal database, the live database otherwise.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    check: Option<Depth>,
    copy: Option<Copy>,
    databases: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub check: Depth,
    pub copy: Copy,
    /// The databases checked, one at a time: `gateway` and those declared under `databases:`.
    pub databases: Selection,
}

impl crate::jobs::contract::Contract for Spec {
    fn needs_gateway(&self) -> Option<&'static str> {
        self.databases.has_gateway().then_some("databases")
    }

    fn selection_mut(&mut self) -> Option<&mut Selection> {
        Some(&mut self.databases)
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    Some(Spec {
        check: raw.check.unwrap_or(Depth::Quick),
        copy: raw.copy.unwrap_or(Copy::Auto),
        databases: Selection::from_raw(raw.databases, &format!("{path}.databases"), checks),
    })
}

impl Copy {
    /// Whether to check a copy, given the database's journal mode and the depth of the check.
    /// Where memory is short the copy is a file on the disk the gateway fsyncs to, and writing
    /// it costs the gateway about what a live `quick_check` holds it (both about 1-1.5 s per
    /// GB); a live full check holds it 2-4.5 s per GB (docs/benchmarks.md). So `auto` copies
    /// for a full check only.
    pub fn applies(self, wal: bool, depth: Depth) -> bool {
        match self {
            Copy::Auto => !wal && depth == Depth::Full,
            Copy::Always => true,
            Copy::Never => false,
        }
    }
}

/// What the checks found: empty when the database is sound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub structure: Vec<String>,
    pub foreign_keys: Vec<String>,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.structure.is_empty() && self.foreign_keys.is_empty()
    }

    /// One line per kind of problem, quoting the first few of each.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("structural problem", &self.structure),
            ("foreign key violation", &self.foreign_keys),
        ] {
            if list.is_empty() {
                continue;
            }
            let quoted: Vec<&str> = list
                .iter()
                .take(QUOTED_FINDINGS)
                .map(String::as_str)
                .collect();
            let more = list.len().saturating_sub(QUOTED_FINDINGS);
            parts.push(format!(
                "{} {what}{}: {}{}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                quoted.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        parts.join(". ")
    }
}

/// Runs the checks of `depth` on `conn` inside one read transaction.
///
/// A database too damaged to be read at all is a finding, not an error: SQLite's "malformed"
/// and "not a database" answers are reported as structural problems.
pub fn check(conn: &Connection, depth: Depth) -> anyhow::Result<Findings> {
    match check_inner(conn, depth) {
        Ok(f) => Ok(f),
        Err(e) if is_corruption(&e) => Ok(Findings {
            structure: vec![format!("SQLite cannot read the database: {e}")],
            foreign_keys: Vec::new(),
        }),
        Err(e) => Err(e).context("running the integrity check on the gateway database"),
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn check_inner(conn: &Connection, depth: Depth) -> rusqlite::Result<Findings> {
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let pragma = match depth {
            Depth::Quick => "quick_check",
            Depth::Full => "integrity_check",
        };
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_FINDINGS})"))?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        let structure = if lines == ["ok"] { Vec::new() } else { lines };
        let mut foreign_keys = Vec::new();
        if depth == Depth::Full {
            let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{} row {} refers to a missing {} row",
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?
                        .map_or_else(|| "(without rowid)".to_string(), |id| id.to_string()),
                    r.get::<_, String>(2)?
                ))
            })?;
            for row in rows {
                foreign_keys.push(row?);
            }
        }
        Ok(Findings {
            structure,
            foreign_keys,
        })
    })();
    // Ending a read transaction cannot lose anything; a failure here means the connection is gone.
    let _ = conn.execute_batch("COMMIT");
    result
}

/// What the plan needs to know of the gateway database: gathered by `run` (I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub database: PathBuf,
    pub bytes: u64,
    /// Whether the database is in WAL mode (the gateway's commits then go on during a read).
    pub wal: bool,
    /// Where a copy to check goes: caretaker's `state_dir`.
    pub scratch_dir: PathBuf,
}

/// What the check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Live,
    /// A copy in this directory, taken as the backup job takes its snapshot.
    Copy(PathBuf),
}

/// What a run would do: which check, on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub depth: Depth,
    pub target: Target,
    pub database: PathBuf,
    pub bytes: u64,
}

/// The plan for `facts`. The check does not depend on the clock or the zone: they are taken
/// as every kind's plan takes them.
pub fn plan(spec: &Spec, facts: &Facts, _now: DateTime<Utc>, _tz: Tz) -> Plan {
    Plan {
        depth: spec.check,
        target: if spec.copy.applies(facts.wal, spec.check) {
            Target::Copy(facts.scratch_dir.clone())
        } else {
            Target::Live
        },
        database: facts.database.clone(),
        bytes: facts.bytes,
    }
}

impl Plan {
    fn pragma(&self) -> &'static str {
        match self.depth {
            Depth::Quick => "PRAGMA quick_check",
            Depth::Full => "PRAGMA integrity_check and PRAGMA foreign_key_check",
        }
    }

    /// The dry run's report.
    pub fn report(&self) -> Report {
        Report::new(format!(
            "would run {} on {}",
            self.pragma(),
            self.database.display()
        ))
        .figure("database_bytes", self.bytes as f64)
        .with_plan(self)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pragma, db) = (self.pragma(), self.database.display());
        match &self.target {
            Target::Copy(dir) => writeln!(
                f,
                "copy: {} of {db} into {} under one read transaction, then check the copy: {pragma}, changing nothing",
                units::bytes(self.bytes),
                dir.display()
            ),
            Target::Live => writeln!(
                f,
                "check: {pragma} reads all {} of {db} in one read transaction, changing nothing",
                units::bytes(self.bytes)
            ),
        }
    }
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    if ctx.gateway.postgres.is_some() {
        let key = format!("integrity:{}", ctx.job);
        return run_postgres(spec, ctx, key);
    }
    crate::jobs::per_database::for_each(&spec.databases, ctx, |ctx, gateway, label| {
        run_one(spec, ctx, gateway, label)
    })
}

/// Checks one database: the gateway's (`label` `None`) or a declared one, whose findings and
/// alert carry its label.
fn run_one(
    spec: &Spec,
    ctx: &mut Context<'_>,
    gateway: &Gateway,
    label: Option<&str>,
) -> anyhow::Result<Report> {
    let key = match label {
        None => format!("integrity:{}", ctx.job),
        Some(label) => format!("integrity:{}:{label}", ctx.job),
    };
    let subject = match label {
        None => "the gateway database".to_string(),
        Some(label) => format!("database {label}"),
    };
    let db = gateway.database.display().to_string();
    // An emptied file would pass as a sound, empty database.
    super::maintenance::refuse_unless_sqlite(&gateway.database)?;
    let conn = gateway.connect(true)?;
    let facts = Facts {
        database: gateway.database.clone(),
        bytes: database_bytes(&gateway.database)?,
        wal: journal_mode(&conn)? == "wal",
        scratch_dir: ctx.state_dir.to_path_buf(),
    };
    let plan = plan(spec, &facts, ctx.now, ctx.timezone);
    if ctx.dry_run {
        return Ok(plan.report());
    }
    let pragma = plan.pragma();
    let started = Instant::now();
    let on_copy = plan.target != Target::Live;
    let (findings, lock) = match &plan.target {
        Target::Copy(dir) => {
            drop(conn);
            check_a_copy(gateway, dir, ctx.job, spec.check)?
        }
        Target::Live => {
            let findings = check(&conn, spec.check)?;
            let lock = started.elapsed();
            // With a rollback journal the read transaction held the gateway's commits off for
            // the whole check; the copy's lock is recorded by the snapshot.
            if !facts.wal {
                crate::writelock::record(lock, facts.bytes);
            }
            (findings, lock)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let checked = if on_copy {
        format!("{db} (a copy)")
    } else {
        db.clone()
    };
    if findings.is_clean() {
        ctx.alerts.push(AlertEvent::Resolve {
            key,
            job: Some(ctx.job.to_string()),
            what: format!("{subject} fails its integrity check"),
        });
        return Ok(Report::new(format!("{checked}: {pragma} found no problem"))
            .figure("check_seconds", seconds)
            .figure("read_txn_ms", lock.as_secs_f64() * 1000.0)
            .figure("findings", 0.0));
    }
    let described = findings.describe();
    ctx.alerts.push(AlertEvent::Raise(Alert {
        key,
        severity: Severity::Critical,
        job: Some(ctx.job.to_string()),
        what: format!("{subject} fails its integrity check"),
        body: format!(
            "{pragma} on {checked} reported: {described}\n\n\
             Stop the gateway if you can, keep a copy of the damaged file (with its -wal and -journal \
             files), and restore the latest verified backup with `caretaker restore`. \
             `sqlite3 {db} .recover` can salvage rows the backup does not have."
        ),
    }));
    anyhow::bail!("{checked} fails its integrity check ({pragma}): {described}")
}

/// The integrity check of a PostgreSQL gateway: amcheck on every index (and heap, where the
/// server has `verify_heapam`) of the gateway tables when the extension is installed, else a
/// full read of each table; the report says which ran. `copy` does not apply: the checks read
/// under MVCC and hold no lock the proxy waits on.
fn run_postgres(spec: &Spec, ctx: &mut Context<'_>, key: String) -> anyhow::Result<Report> {
    use crate::gateway::postgres::care;
    let gateway = ctx.gateway;
    let mut db = gateway.open(crate::gateway::Access::ReadOnly)?;
    let exec = db.exec();
    let mut tables = Vec::new();
    for table in crate::gateway::postgres::gateway_tables(gateway) {
        if care::exists(exec, &table)? {
            tables.push(table);
        }
    }
    anyhow::ensure!(
        tables.contains(&gateway.table),
        "the gateway database ({}) has no table `{}`; check gateway.schema / gateway.table",
        gateway.location(),
        gateway.table
    );
    let method = care::method(exec)?;
    let full = spec.check == Depth::Full;
    let what = "the gateway database fails its integrity check";
    if ctx.dry_run {
        let mut report = Report::new(format!(
            "would check {} with {}",
            tables.join(", "),
            method.describe()
        ));
        report.plan.push(format!(
            "check: {} of {}, changing nothing",
            method.describe(),
            tables.join(", ")
        ));
        return Ok(report);
    }
    let started = Instant::now();
    let findings = care::check(exec, &tables, method, full)?;
    let seconds = started.elapsed().as_secs_f64();
    let checked = format!("{} on the {}", tables.join(", "), gateway.location());
    if findings.problems.is_empty() {
        ctx.alerts.push(AlertEvent::Resolve {
            key,
            job: Some(ctx.job.to_string()),
            what: what.into(),
        });
        return Ok(Report::new(format!(
            "{checked}: {} found no problem in {} relations",
            method.describe(),
            findings.checked.len()
        ))
        .figure("check_seconds", seconds)
        .figure("relations_checked", findings.checked.len() as f64)
        .figure("rows_read", findings.rows_read as f64)
        .figure("amcheck", f64::from(u8::from(method != care::Method::FullRead)))
        .figure("findings", 0.0));
    }
    let described = findings.problems.join("; ");
    ctx.alerts.push(AlertEvent::Raise(Alert {
        key,
        severity: Severity::Critical,
        job: Some(ctx.job.to_string()),
        what: what.into(),
        body: format!(
            "{} on {checked} reported: {described}\n\n\
             Keep the server's data directory as it is, take a `pg_dump` of what still reads, and \
             restore the latest verified backup (`caretaker restore ARCHIVE --to postgres://…`) into \
             a new database. A damaged index alone can be rebuilt with REINDEX.",
            method.describe()
        ),
    }));
    anyhow::bail!(
        "{checked} fails its integrity check ({}): {described}",
        method.describe()
    )
}

/// The bytes of the gateway database, failing clearly when it is missing.
fn database_bytes(db: &Path) -> anyhow::Result<u64> {
    std::fs::metadata(db).with_context(|| format!("reading the size of {}", db.display()))?;
    Ok(backup::database_bytes(db))
}

/// Copies the gateway database into `state_dir` as the backup job does and checks the copy.
/// Returns the findings and how long the copy held the gateway's database.
fn check_a_copy(
    gateway: &Gateway,
    state_dir: &Path,
    job: &str,
    depth: Depth,
) -> anyhow::Result<(Findings, Duration)> {
    let (_copy, snap) = snapshot::scratch_copy(
        gateway,
        state_dir,
        &format!("integrity-{job}.copy.db"),
        &format!("a copy of {} to check", gateway.database.display()),
        "free space there, or set `copy: never` to check the live database (its commits then wait for the whole check)",
    )?;
    let snap = match snap {
        Ok(snap) => snap,
        // A file too damaged to copy is what the check is there to find.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<rusqlite::Error>()
                    .is_some_and(is_corruption)
            }) =>
        {
            let findings = Findings {
                structure: vec![format!("SQLite cannot read the database: {e:#}")],
                foreign_keys: Vec::new(),
            };
            return Ok((findings, Duration::ZERO));
        }
        Err(e) => return Err(e.context("copying the gateway database to check the copy")),
    };
    let conn = snap.open_copy("the copy")?;
    let findings = check(&conn, depth)?;
    drop(conn);
    Ok((findings, snap.held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_copies_for_a_full_check_of_a_rollback_journal_database_only() {
        let cases = [
            (Copy::Auto, false, Depth::Full, true),
            (Copy::Auto, false, Depth::Quick, false),
            (Copy::Auto, true, Depth::Full, false),
            (Copy::Auto, true, Depth::Quick, false),
            (Copy::Always, true, Depth::Quick, true),
            (Copy::Never, false, Depth::Full, false),
        ];
        for (copy, wal, depth, expected) in cases {
            assert_eq!(
                copy.applies(wal, depth),
                expected,
                "{copy:?} wal={wal} {depth:?}"
            );
        }
    }

    /// One row per case: the spec, the database's journal, and the plan's line. The clock
    /// does not enter: a run at a DST change plans as any other.
    #[test]
    fn plan_table() {
        use chrono::TimeZone;
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let noon = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        // 02:30 local does not exist in Berlin on this day: the clock jumps from 02:00 to 03:00.
        let spring = Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap();
        let quick = "check: PRAGMA quick_check reads all 1.5 GiB of /srv/gw/requests.db in one read transaction, changing nothing\n";
        let full_live = "check: PRAGMA integrity_check and PRAGMA foreign_key_check reads all 1.5 GiB of /srv/gw/requests.db in one read transaction, changing nothing\n";
        let full_copy = "copy: 1.5 GiB of /srv/gw/requests.db into /var/lib/caretaker under one read transaction, then check the copy: PRAGMA integrity_check and PRAGMA foreign_key_check, changing nothing\n";
        let quick_copy = "copy: 1.5 GiB of /srv/gw/requests.db into /var/lib/caretaker under one read transaction, then check the copy: PRAGMA quick_check, changing nothing\n";
        let cases = [
            (Depth::Quick, Copy::Auto, false, noon, chrono_tz::UTC, quick),
            (Depth::Full, Copy::Auto, false, noon, chrono_tz::UTC, full_copy),
            (Depth::Full, Copy::Auto, true, noon, chrono_tz::UTC, full_live),
            (Depth::Full, Copy::Never, false, noon, chrono_tz::UTC, full_live),
            (Depth::Quick, Copy::Always, true, noon, chrono_tz::UTC, quick_copy),
            (Depth::Full, Copy::Auto, false, spring, berlin, full_copy),
            (Depth::Quick, Copy::Auto, true, spring, berlin, quick),
        ];
        for (check, copy, wal, now, tz, want) in cases {
            let facts = Facts {
                database: "/srv/gw/requests.db".into(),
                bytes: 3 << 29,
                wal,
                scratch_dir: "/var/lib/caretaker".into(),
            };
            let spec = Spec {
                check,
                copy,
                databases: Default::default(),
            };
            let plan = plan(&spec, &facts, now, tz);
            assert_eq!(plan.to_string(), want, "{check:?} {copy:?} wal={wal} at {now}");
            let report = plan.report();
            assert_eq!(report.plan, [want.trim_end()]);
            assert_eq!(report.figures, [("database_bytes".to_string(), (3u64 << 29) as f64)]);
        }
    }

    #[test]
    fn a_sound_database_has_no_findings_at_either_depth() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("ok.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p REFERENCES p(id));
             INSERT INTO p VALUES (1); INSERT INTO c VALUES (1);",
        )
        .unwrap();
        for depth in [Depth::Quick, Depth::Full] {
            assert!(check(&conn, depth).unwrap().is_clean(), "{depth:?}");
        }
    }

    #[test]
    fn foreign_key_violations_are_found_by_the_full_check_only() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("fk.db")).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p (id TEXT PRIMARY KEY); CREATE TABLE c (p REFERENCES p(id));
             INSERT INTO c VALUES ('gone');",
        )
        .unwrap();
        assert!(check(&conn, Depth::Quick).unwrap().is_clean());
        let full = check(&conn, Depth::Full).unwrap();
        assert_eq!(full.foreign_keys, vec!["c row 1 refers to a missing p row"]);
        assert!(
            full.describe().starts_with("1 foreign key violation: "),
            "{}",
            full.describe()
        );
    }

    #[test]
    fn descriptions_quote_the_first_findings_and_count_the_rest() {
        let findings = Findings {
            structure: (0..12).map(|i| format!("problem {i}")).collect(),
            foreign_keys: Vec::new(),
        };
        let text = findings.describe();
        assert!(
            text.starts_with("12 structural problems: problem 0; "),
            "{text}"
        );
        assert!(text.ends_with("problem 9; and 2 more"), "{text}");
    }
}
