//! The `integrity` job: `quick_check`, or `integrity_check` plus `foreign_key_check`.
//!
//! Both checks run in one read transaction. In WAL mode the gateway keeps writing meanwhile, so
//! the live database is checked. With a rollback journal (Apantli) the gateway's commits wait
//! for as long as a read transaction lasts, and a full check of a 2 GB file outlasts Apantli's
//! 5 s busy timeout; so by default a full check of such a database first copies it the way the
//! backup job does (read into memory under one read transaction, a fraction of the time the
//! full check would hold it) and checks the copy, byte for byte the database's file, while the
//! gateway writes on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, ErrorCode};
use serde::Deserialize;

use super::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::backup::{self, ScratchDb, free_bytes, snapshot};
use crate::config::Checks;
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
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub check: Depth,
    pub copy: Copy,
}

impl super::Contract for Spec {}

pub fn validate(raw: Raw, _path: &str, _checks: &mut Checks<'_>) -> Option<Spec> {
    Some(Spec {
        check: raw.check.unwrap_or(Depth::Quick),
        copy: raw.copy.unwrap_or(Copy::Auto),
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

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let gateway = ctx.gateway;
    let key = format!("integrity:{}", ctx.job);
    if gateway.postgres.is_some() {
        return run_postgres(spec, ctx, key);
    }
    let pragma = match spec.check {
        Depth::Quick => "PRAGMA quick_check",
        Depth::Full => "PRAGMA integrity_check and PRAGMA foreign_key_check",
    };
    let db = gateway.database.display().to_string();
    // An emptied file would pass as a sound, empty database.
    super::maintenance::refuse_unless_sqlite(&gateway.database)?;
    let conn = gateway.connect(true)?;
    let wal = journal_mode(&conn)? == "wal";
    let on_copy = spec.copy.applies(wal, spec.check);
    if ctx.dry_run {
        let bytes = database_bytes(&gateway.database)?;
        let mut report = Report::new(format!("would run {pragma} on {db}"));
        report.plan.push(if on_copy {
            format!(
                "copy: {} of {db} into {} under one read transaction, then check the copy: {pragma}, changing nothing",
                units::bytes(bytes),
                ctx.state_dir.display()
            )
        } else {
            format!(
                "check: {pragma} reads all {} of {db} in one read transaction, changing nothing",
                units::bytes(bytes)
            )
        });
        return Ok(report.figure("database_bytes", bytes as f64));
    }
    let started = Instant::now();
    let (findings, lock) = if on_copy {
        drop(conn);
        check_a_copy(gateway, ctx.state_dir, ctx.job, spec.check)?
    } else {
        let findings = check(&conn, spec.check)?;
        let lock = started.elapsed();
        // With a rollback journal the read transaction held the gateway's commits off for the
        // whole check; the copy's lock is recorded by the snapshot.
        if !wal {
            crate::writelock::record(lock, database_bytes(&gateway.database)?);
        }
        (findings, lock)
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
            what: "the gateway database fails its integrity check".into(),
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
        what: "the gateway database fails its integrity check".into(),
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
    // One fixed name per job: the job lock keeps two runs of it apart, and a run killed midway
    // leaves a copy that the next run removes first.
    let copy = ScratchDb(state_dir.join(format!("integrity-{job}.copy.db")));
    copy.remove()?;
    let needed = database_bytes(&gateway.database)?;
    let free = free_bytes(state_dir)?;
    if free < needed {
        anyhow::bail!(
            "not enough free space in {} for a copy of {} to check: about {} needed, {} available; \
             free space there, or set `copy: never` to check the live database (its commits then wait \
             for the whole check)",
            state_dir.display(),
            gateway.database.display(),
            units::bytes(needed),
            units::bytes(free)
        );
    }
    let snap = match snapshot::take(gateway, &copy.0) {
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
    let conn = crate::sqlite::open(
        &snap.path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the copy {}", snap.path.display()))?;
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
