//! The `maintenance` job: WAL checkpoint, ANALYZE and optimize, and free pages given back to the
//! filesystem only under locks the gateway can wait out.
//!
//! Each step is one statement whose write lock we time. ANALYZE reads a bounded sample
//! (`analysis_limit`) so it holds the lock for milliseconds, not for a scan of every index.
//! VACUUM rewrites the whole file under an exclusive lock: it is the one step that can make a
//! gateway lose rows (Apantli lost one to a 5.5 s VACUUM). So `vacuum: auto` first VACUUMs a
//! copy taken the way the backup job takes it (the gateway keeps writing meanwhile), and runs
//! the real one only when that trial, times [`TRIAL_MARGIN`], fits under `vacuum_max_lock`;
//! otherwise it skips it with the figure and an alert. `vacuum: incremental` switches the
//! database to `auto_vacuum = INCREMENTAL` once and then gives free pages back in short paced
//! transactions (`PRAGMA incremental_vacuum(N)`), each of them timed against [`STEP_BOUND`].

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::Connection;
use serde::Deserialize;

use crate::jobs::contract::{Context, Judged, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::backup::{self, snapshot};
use crate::checks::values::Share;
use crate::checks::Checks;
use crate::databases::Selection;
use crate::gateway::{Gateway, Preset};
use crate::units::{self, millis as ms};
use crate::writelock::{self, Pacer};

/// Rows ANALYZE samples per index: enough for the planner, milliseconds of lock.
const ANALYSIS_LIMIT: u32 = 1000;
/// `checkpoint: truncate` waits this long for the gateway's writers before it gives up a try.
const TRUNCATE_BUSY_TIMEOUT: Duration = Duration::from_millis(50);
const TRUNCATE_TRIES: u32 = 3;
/// VACUUM writes a full copy of the database before the old one is released.
const VACUUM_SPACE_FACTOR: u64 = 2;
/// The live VACUUM's exclusive lock against the trial VACUUM of the copy: the copy is VACUUMed
/// in memory (or in `state_dir`) with no journal, the live one also writes its rollback journal
/// or WAL and waits for the disk to take both. Measured on 2 cores beside gateway-sim at 30
/// writes/s (docs/jobs/maintenance.md): the live VACUUM took 1.8-2.4 times the trial on 320 MB
/// and 1.8-5.3 times on 64 MB, where the disk's share weighs more; 4 covers all but the worst.
pub const TRIAL_MARGIN: f64 = 4.0;
/// The default `vacuum_max_lock` as a share of the gateway's busy timeout: the writers that
/// queued behind the lock still have to get in one by one after it, each sleeping up to 100 ms
/// in its busy handler between tries. Measured at 30 writes/s: an exclusive lock of 1 s made
/// the slowest write wait 1.9-2.9 s, of 1.5 s 3.6 s, and of 2 s lost 2 of 360 writes to
/// Apantli's 5 s timeout. 1 s of Apantli's 5 s.
const SHARE_OF_GATEWAY_WAIT: f64 = 0.2;
/// The longest lock an incremental step may hold before the run reports it and raises
/// `vacuum-lock:<job>`. The steps aim at 16 ms, but each ends with a commit whose fsyncs a busy
/// disk stretches now and then: of 1,170 steps on a loaded, shared 2-core machine the longest
/// held 250 ms. 500 ms is a tenth of Apantli's 5 s busy timeout, half the full VACUUM's default
/// bound: its writers queue for it but none comes near losing its row.
pub const STEP_BOUND: Duration = Duration::from_millis(500);
/// Pages the first incremental step moves; later steps are sized on the time the last took,
/// as the archive's deletes are ([`super::archive::next_size`]: towards the house's 16 ms
/// lock limit above the commit's fixed cost, at most halved or doubled per step).
const FIRST_STEP_PAGES: usize = 16;
/// `PRAGMA auto_vacuum` values.
const AUTO_VACUUM_FULL: u64 = 1;
const AUTO_VACUUM_INCREMENTAL: u64 = 2;
/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

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
    Incremental,
}

/// A lock time from the jobs file: `500ms`, or any duration such as `2s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LockTime(pub Duration);

impl TryFrom<String> for LockTime {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.strip_suffix("ms") {
            Some(n) => n.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                format!("`{text}` is not a lock time: expected milliseconds such as 500ms or a duration such as 2s")
            }),
            None => crate::units::parse_duration(&text),
        }
        .map(LockTime)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    checkpoint: Option<Checkpoint>,
    analyze: Option<bool>,
    vacuum: Option<Vacuum>,
    vacuum_threshold: Option<Share>,
    vacuum_max_lock: Option<LockTime>,
    vacuum_convert: Option<bool>,
    databases: Option<Vec<String>>,
    reindex: Option<RawReindex>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReindex {
    bloat_over: Option<Share>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub checkpoint: Checkpoint,
    pub analyze: bool,
    pub vacuum: Vacuum,
    /// Share of free pages from which `vacuum: auto` runs VACUUM.
    pub vacuum_threshold: f64,
    /// The longest exclusive lock a VACUUM may take without consent; `None`: from the gateway.
    pub vacuum_max_lock: Option<Duration>,
    /// `vacuum: incremental`: switch the database with a full VACUUM whatever it costs.
    pub vacuum_convert: bool,
    /// The databases maintained, one at a time: `gateway` and those declared under `databases:`.
    pub databases: Selection,
    /// PostgreSQL: rebuild (`REINDEX INDEX CONCURRENTLY`) a gateway index whose estimated bloat
    /// is above this share.
    pub reindex_bloat_over: Option<f64>,
}

impl crate::jobs::contract::Contract for Spec {
    fn gateway_problems(&self, gateway: &Gateway) -> Vec<(String, String)> {
        gateway_problems(self, gateway)
    }

    fn advice(&self, path: &str, preset: Preset) -> Vec<String> {
        advice(self, path, preset)
    }

    /// A full VACUUM is held to its own bound, not to the 250 ms of the job's statements: the
    /// one `vacuum: auto` runs under (`vacuum_max_lock`, or a share of the gateway's busy
    /// timeout); one the operator consented to (`vacuum: always`, `vacuum_convert`) to none,
    /// and the job's summary says how long it held.
    fn operation_bound(&self, operation: &str, preset: Preset) -> Judged {
        if operation != VACUUM {
            return Judged::ByTheKind;
        }
        if self.vacuum == Vacuum::Always || self.vacuum_convert {
            return Judged::Not;
        }
        match lock_bound(self, preset) {
            Ok(bound) => Judged::By(writelock::Bound {
                fixed: bound,
                per_gib: Duration::ZERO,
            }),
            Err(_) => Judged::Not,
        }
    }

    fn needs_gateway(&self) -> Option<&'static str> {
        self.databases.has_gateway().then_some("databases")
    }

    fn selection_mut(&mut self) -> Option<&mut Selection> {
        Some(&mut self.databases)
    }
}

/// The operation a full VACUUM's lock is recorded as ([`writelock::operation`]).
pub const VACUUM: &str = "vacuum";

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let vacuum = raw.vacuum.unwrap_or(Vacuum::Auto);
    let mut ok = true;
    let databases = Selection::from_raw(raw.databases, &format!("{path}.databases"), checks);
    if raw.vacuum_max_lock.is_some() && !matches!(vacuum, Vacuum::Auto | Vacuum::Incremental) {
        checks.error(
            &format!("{path}.vacuum_max_lock"),
            "`vacuum_max_lock` is only read with `vacuum: auto` or `vacuum: incremental`; `always` takes the lock whatever its length and `never` takes none",
        );
        ok = false;
    }
    if raw.vacuum_max_lock.is_some_and(|l| l.0.is_zero()) {
        checks.error(
            &format!("{path}.vacuum_max_lock"),
            "`vacuum_max_lock` must be longer than 0; accepted: a lock time such as 500ms or 2s (to never VACUUM, set `vacuum: never`)",
        );
        ok = false;
    }
    if raw.vacuum_convert.is_some() && vacuum != Vacuum::Incremental {
        checks.error(
            &format!("{path}.vacuum_convert"),
            "`vacuum_convert` is only read with `vacuum: incremental`",
        );
        ok = false;
    }
    let reindex_bloat_over = match raw.reindex {
        Some(RawReindex {
            bloat_over: Some(share),
        }) => Some(share.0),
        Some(RawReindex { bloat_over: None }) => {
            checks.error(
                &format!("{path}.reindex.bloat_over"),
                "missing key `bloat_over`; accepted: reindex: {bloat_over: 50%}",
            );
            ok = false;
            None
        }
        None => None,
    };
    ok.then(|| Spec {
        reindex_bloat_over,
        checkpoint: raw.checkpoint.unwrap_or(Checkpoint::Passive),
        analyze: raw.analyze.unwrap_or(true),
        vacuum,
        vacuum_threshold: raw.vacuum_threshold.map_or(0.2, |s| s.0),
        vacuum_max_lock: raw.vacuum_max_lock.map(|l| l.0),
        vacuum_convert: raw.vacuum_convert.unwrap_or(false),
        databases,
    })
}

/// Maintenance of a PostgreSQL gateway: `VACUUM (ANALYZE)` of each gateway table (never
/// FULL), sizes and dead tuples before and after, and `REINDEX INDEX CONCURRENTLY` of the
/// indexes bloated past `reindex.bloat_over`. The SQLite keys (checkpoint, vacuum) do not apply.
fn run_postgres(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    use crate::gateway::postgres::care;
    let gateway = ctx.gateway;
    let mut db = gateway.open(crate::gateway::Access::unless_dry_run(ctx.dry_run))?;
    db.check_columns()?;
    let exec = db.exec();
    let mut tables = Vec::new();
    for table in crate::gateway::postgres::gateway_tables(gateway) {
        if care::exists(exec, &table)? {
            tables.push(table);
        }
    }
    if ctx.dry_run {
        let mut report = Report::new(format!(
            "would VACUUM (ANALYZE) {} on the {}",
            tables.join(", "),
            gateway.location()
        ));
        for table in &tables {
            let s = care::sizes(exec, table)?;
            report.plan.push(format!(
                "vacuum: VACUUM (ANALYZE) `{table}` (table {}, TOAST {}, indexes {}, {} dead tuples)",
                units::bytes(s.table),
                units::bytes(s.toast),
                units::bytes(s.indexes),
                s.dead_tuples
            ));
        }
        if let Some(over) = spec.reindex_bloat_over {
            report.plan.push(format!(
                "reindex: REINDEX INDEX CONCURRENTLY each index of these tables estimated more than {:.0}% bloat after the VACUUM",
                over * 100.0
            ));
        }
        return Ok(report);
    }
    let mut lines = Vec::new();
    let mut report_figures = Vec::new();
    let mut reindexed = Vec::new();
    for table in &tables {
        ctx.checkpoint()?;
        let before = care::sizes(exec, table)?;
        care::vacuum_analyze(exec, table)?;
        let after = care::sizes(exec, table)?;
        lines.push(format!(
            "`{table}`: {} → {} (table {} → {}, TOAST {} → {}, indexes {} → {}), dead tuples {} → {}",
            units::bytes(before.total()),
            units::bytes(after.total()),
            units::bytes(before.table),
            units::bytes(after.table),
            units::bytes(before.toast),
            units::bytes(after.toast),
            units::bytes(before.indexes),
            units::bytes(after.indexes),
            before.dead_tuples,
            after.dead_tuples
        ));
        if table == &gateway.table {
            report_figures = vec![
                ("bytes_before", before.total() as f64),
                ("bytes_after", after.total() as f64),
                ("dead_tuples_before", before.dead_tuples as f64),
                ("dead_tuples_after", after.dead_tuples as f64),
            ];
        }
        if let Some(over) = spec.reindex_bloat_over {
            for index in care::index_bloat(exec, table)? {
                if index.bloat > over {
                    ctx.checkpoint()?;
                    care::reindex_concurrently(exec, &index.index)?;
                    reindexed.push(format!(
                        "{} ({} with about {:.0}% bloat)",
                        index.index,
                        units::bytes(index.bytes),
                        index.bloat * 100.0
                    ));
                }
            }
        }
    }
    let mut summary = format!("VACUUM (ANALYZE) of {}", lines.join("; "));
    if spec.reindex_bloat_over.is_some() {
        summary.push_str(&if reindexed.is_empty() {
            "; no index bloated enough to rebuild".to_string()
        } else {
            format!("; rebuilt concurrently: {}", reindexed.join(", "))
        });
    }
    let mut report = Report::new(summary).figure("indexes_rebuilt", reindexed.len() as f64);
    for (name, value) in report_figures {
        report = report.figure(name, value);
    }
    Ok(report)
}

/// How long the gateway's writers wait for a lock before they give up the row: Apantli's
/// busy timeout; BobaMixer has none, and a custom gateway's is unknown.
fn gateway_wait(preset: Preset) -> Option<Duration> {
    match preset {
        Preset::Apantli => Some(crate::gateway::APANTLI_BUSY_TIMEOUT),
        Preset::Bobamixer | Preset::Custom | Preset::Litellm => None,
    }
}

fn preset_name(preset: Preset) -> &'static str {
    match preset {
        Preset::Apantli => "Apantli",
        Preset::Bobamixer => "BobaMixer",
        Preset::Custom => "custom",
        Preset::Litellm => "LiteLLM",
    }
}

/// The longest exclusive lock a VACUUM may take without consent, or why none may be taken.
pub fn lock_bound(spec: &Spec, preset: Preset) -> Result<Duration, String> {
    if let Some(set) = spec.vacuum_max_lock {
        return Ok(set);
    }
    match preset {
        Preset::Apantli => {
            Ok(crate::gateway::APANTLI_BUSY_TIMEOUT.mul_f64(SHARE_OF_GATEWAY_WAIT))
        }
        Preset::Bobamixer => Err(
            "BobaMixer has no busy timeout: a write that meets VACUUM's exclusive lock is lost at once"
                .into(),
        ),
        Preset::Custom | Preset::Litellm => Err(
            "the busy timeout of a custom gateway is not known: set `vacuum_max_lock` well under it to let VACUUM run"
                .into(),
        ),
    }
}

/// Problems of the spec against the gateway: `(key below the maintenance block, message)`.
pub fn gateway_problems(spec: &Spec, gateway: &Gateway) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if gateway.postgres.is_none() && spec.reindex_bloat_over.is_some() {
        problems.push((
            "reindex".into(),
            "`reindex` is read for a PostgreSQL gateway (REINDEX INDEX CONCURRENTLY); SQLite's indexes are rebuilt by VACUUM: remove it".into(),
        ));
    }
    let Some(set) = spec.vacuum_max_lock else {
        return problems;
    };
    match (gateway.preset, gateway_wait(gateway.preset)) {
        (Preset::Bobamixer, _) => problems.push((
            "vacuum_max_lock".into(),
            "BobaMixer has no busy timeout, so any exclusive lock loses the writes that meet it; accepted: leave vacuum_max_lock unset (a full VACUUM then never runs unasked), or give free pages back with `vacuum: incremental`".into(),
        )),
        (preset, Some(wait)) if set >= wait => problems.push((
            "vacuum_max_lock".into(),
            format!(
                "{} is not under {}'s {} busy timeout: a write that waits that long is lost; accepted: a lock time well under it (default {}), or `vacuum: always` in a window when the gateway is stopped",
                units::duration(set),
                preset_name(preset),
                units::duration(wait),
                units::duration(wait.mul_f64(SHARE_OF_GATEWAY_WAIT))
            ),
        )),
        _ => {}
    }
    problems
}

/// What `check` and the daemon's start say, once, about the VACUUM of a maintenance job whose
/// block is at `path`.
fn advice(spec: &Spec, path: &str, preset: Preset) -> Vec<String> {
    // PostgreSQL's VACUUM (ANALYZE) takes no lock the proxy waits on: nothing to warn of.
    if preset == Preset::Litellm {
        return Vec::new();
    }
    let losing = match preset {
        Preset::Apantli => "Apantli loses a write that waits longer than its 5 s busy timeout",
        Preset::Bobamixer => "BobaMixer has no busy timeout and loses every write meanwhile",
        Preset::Custom | Preset::Litellm => {
            "the gateway loses the writes that wait longer than its busy timeout"
        }
    };
    let mut lines = Vec::new();
    match spec.vacuum {
        Vacuum::Always => lines.push(format!(
            "{path}.vacuum: always: VACUUM holds an exclusive lock on the gateway database for the whole rewrite (about 6 s per GB measured) and {losing}: schedule this job only in a window when the gateway is stopped, or use `vacuum: auto` or `vacuum: incremental`"
        )),
        Vacuum::Incremental if spec.vacuum_convert => lines.push(format!(
            "{path}.vacuum_convert: the one switch to auto_vacuum = INCREMENTAL is a full VACUUM that holds an exclusive lock whatever its length, and {losing}: run this job once in a window when the gateway is stopped, then remove vacuum_convert"
        )),
        Vacuum::Auto | Vacuum::Incremental => {
            if let Err(why) = lock_bound(spec, preset) {
                lines.push(format!(
                    "{path}.vacuum: {}: a full VACUUM never runs unasked here ({why}); free pages stay in the file for SQLite to reuse, see docs/jobs/maintenance.md",
                    if spec.vacuum == Vacuum::Auto { "auto" } else { "incremental" }
                ));
            }
        }
        Vacuum::Never => {}
    }
    lines
}

/// The database's shape as the plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub wal: bool,
    pub page_size: u64,
    pub page_count: u64,
    pub freelist_count: u64,
    /// `PRAGMA auto_vacuum`: 0 none, 1 full, 2 incremental.
    pub auto_vacuum: u64,
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

    fn free_text(&self) -> String {
        format!(
            "{} of {} pages ({:.1}%, {}) are free",
            self.freelist_count,
            self.page_count,
            self.free_share() * 100.0,
            units::bytes(self.freelist_count * self.page_size)
        )
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
    /// The database as planned from, which the plan's words quote.
    pub facts: Facts,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VacuumDecision {
    /// Nothing to give back, or not asked to.
    Skip(String),
    /// Free pages should be given back, but no lock the gateway can wait out would do it.
    Blocked(String),
    /// A full VACUUM (`convert`: switching to incremental) if a trial on a copy predicts its
    /// lock within `bound`.
    Trial { convert: bool, bound: Duration },
    /// A full VACUUM whatever it costs: `vacuum: always`, or `vacuum_convert: true`.
    Run { convert: bool },
    /// Free pages given back in paced `PRAGMA incremental_vacuum` steps.
    Incremental,
    /// VACUUM is wanted but the filesystem lacks room for it.
    NoRoom { needed: u64, available: u64 },
}

/// `bound`: [`lock_bound`] for the job's gateway.
pub fn plan(spec: &Spec, facts: &Facts, bound: &Result<Duration, String>) -> Plan {
    let (checkpoint, checkpoint_note) = match (spec.checkpoint, facts.wal) {
        (Checkpoint::Off, _) => (None, None),
        (mode, true) => (Some(mode), None),
        (_, false) => (
            None,
            Some("checkpoint skipped: the database uses a rollback journal, not WAL".to_string()),
        ),
    };
    let full = |convert: bool, consent: bool| {
        let needed = facts.bytes() * VACUUM_SPACE_FACTOR;
        if facts.available < needed {
            return VacuumDecision::NoRoom {
                needed,
                available: facts.available,
            };
        }
        match (consent, bound) {
            (true, _) => VacuumDecision::Run { convert },
            (false, Ok(bound)) => VacuumDecision::Trial {
                convert,
                bound: *bound,
            },
            (false, Err(why)) => VacuumDecision::Blocked(why.clone()),
        }
    };
    let vacuum = match spec.vacuum {
        Vacuum::Never => VacuumDecision::Skip("vacuum: never".to_string()),
        Vacuum::Always => full(false, true),
        Vacuum::Auto if facts.free_share() >= spec.vacuum_threshold => full(false, false),
        Vacuum::Auto => VacuumDecision::Skip(format!(
            "{:.1}% of pages are free, below vacuum_threshold {:.1}%",
            facts.free_share() * 100.0,
            spec.vacuum_threshold * 100.0
        )),
        Vacuum::Incremental => match facts.auto_vacuum {
            AUTO_VACUUM_INCREMENTAL if facts.freelist_count == 0 => {
                VacuumDecision::Skip("no free pages to give back".to_string())
            }
            AUTO_VACUUM_INCREMENTAL => VacuumDecision::Incremental,
            AUTO_VACUUM_FULL => VacuumDecision::Skip(
                "the database has auto_vacuum = FULL: SQLite gives free pages back at every commit"
                    .to_string(),
            ),
            _ => full(true, spec.vacuum_convert),
        },
    };
    Plan {
        checkpoint,
        checkpoint_note,
        analyze: spec.analyze,
        vacuum,
        facts: *facts,
    }
}

/// What a trial VACUUM of a copy says about the live one: `Ok(expected lock)` when it fits
/// under `bound` with [`TRIAL_MARGIN`], `Err(why not)` with the figures otherwise.
pub fn judge(trial: Duration, bound: Duration) -> Result<Duration, String> {
    let expected = trial.mul_f64(TRIAL_MARGIN);
    if expected <= bound {
        Ok(expected)
    } else {
        Err(format!(
            "a trial VACUUM of a copy took {}, so the exclusive lock on the gateway would last about {} (times {TRIAL_MARGIN} for load), over vacuum_max_lock {}",
            units::duration(trial),
            units::duration(expected),
            units::duration(bound)
        ))
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
    backup::free_bytes(dir)
}

fn facts(conn: &Connection, db: &Path) -> anyhow::Result<Facts> {
    Ok(Facts {
        wal: writelock::journal_mode(conn)? == "wal",
        page_size: pragma_u64(conn, "page_size")?,
        page_count: pragma_u64(conn, "page_count")?,
        freelist_count: pragma_u64(conn, "freelist_count")?,
        auto_vacuum: pragma_u64(conn, "auto_vacuum")?,
        available: available_bytes(db)?,
    })
}

/// Refuses, before anything opens it, a gateway database that is not a SQLite file: missing,
/// empty (SQLite would take a 0-byte file for a new database and ANALYZE would write one into
/// it), or not starting with the SQLite header.
pub fn refuse_unless_sqlite(db: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let check = "check gateway.database; caretaker writes nothing into a file that is not the gateway's SQLite database";
    let meta = std::fs::metadata(db)
        .with_context(|| format!("reading the gateway database {} ({check})", db.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "the gateway database {} is not a regular file; {check}",
            db.display()
        );
    }
    if meta.len() == 0 {
        anyhow::bail!(
            "the gateway database {} is empty (0 bytes), not a SQLite database; {check} (a gateway that was just installed creates its database with its first request)",
            db.display()
        );
    }
    let mut header = [0u8; 16];
    let read = std::fs::File::open(db)
        .and_then(|f| f.take(16).read(&mut header))
        .with_context(|| {
            format!(
                "reading the header of the gateway database {}",
                db.display()
            )
        })?;
    if read < header.len() || &header != SQLITE_HEADER {
        anyhow::bail!(
            "the gateway database {} is not a SQLite database (its first 16 bytes are not \"SQLite format 3\"); {check}",
            db.display()
        );
    }
    Ok(())
}

/// Refuses a SQLite database without the gateway's table: not the gateway's file.
fn refuse_without_table(conn: &Connection, gateway: &Gateway) -> anyhow::Result<()> {
    let found = crate::sqlite::has_table(conn, &gateway.table).with_context(|| {
            format!(
                "reading the schema of the gateway database {}",
                gateway.database.display()
            )
        })?;
    if !found {
        anyhow::bail!(
            "the gateway database {} has no table `{}`, which the {} schema names: is gateway.database the gateway's file? caretaker maintains nothing it cannot recognise",
            gateway.database.display(),
            gateway.table,
            preset_name(gateway.preset)
        );
    }
    Ok(())
}

/// Copies the gateway database as the backup job does (the gateway keeps writing while the
/// copy is VACUUMed) and VACUUMs the copy. Returns how long that VACUUM took and how long the
/// copy held off the gateway's commits.
fn trial(
    gateway: &Gateway,
    state_dir: &Path,
    job: &str,
    convert: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let (_copy, snap) = snapshot::scratch_copy(
        gateway,
        state_dir,
        &format!("maintenance-{job}.trial.db"),
        "a copy of the gateway database to time a trial VACUUM on",
        backup::MAKE_ROOM,
    )?;
    let snap = snap.context("copying the gateway database to time a trial VACUUM")?;
    let conn = snap.open_copy("the trial copy")?;
    // A scratch copy needs no journal; without one, a large copy in memory does not need
    // room for a second.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF;{}",
        if convert {
            " PRAGMA auto_vacuum = INCREMENTAL;"
        } else {
            ""
        }
    ))
    .with_context(|| format!("preparing the trial copy {}", snap.path.display()))?;
    let began = Instant::now();
    conn.execute_batch("VACUUM")
        .with_context(|| format!("running the trial VACUUM on {}", snap.path.display()))?;
    Ok((began.elapsed(), snap.writer_block))
}

/// What the run did to free pages, for the summary and the figures.
#[derive(Debug, Default)]
struct Vacuumed {
    /// The full VACUUM's exclusive lock, when one ran.
    full: Option<Duration>,
    trial: Option<Duration>,
    expected: Option<Duration>,
    /// The lock the copy for the trial held on the gateway (rollback journal).
    trial_copy_lock: Option<Duration>,
    steps: u64,
    longest_step: Duration,
    steps_over: u64,
    /// The bound each VACUUM lock of this run was held to, if any.
    bound: Option<Duration>,
}

impl Vacuumed {
    /// The VACUUM locks of the run that outlasted the bound they were held to, in words.
    fn over_bound(&self) -> Option<String> {
        match (self.bound, self.full) {
            (Some(bound), Some(held)) if held > bound => Some(format!(
                "VACUUM held the exclusive lock {}, over its bound of {}",
                units::duration(held),
                units::duration(bound)
            )),
            (Some(bound), None) if self.steps_over > 0 => Some(format!(
                "{} of {} incremental vacuum steps held the write lock over their bound of {} (longest {})",
                self.steps_over,
                self.steps,
                units::duration(bound),
                units::duration(self.longest_step)
            )),
            _ => None,
        }
    }
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    if ctx.gateway.postgres.is_some() {
        return run_postgres(spec, ctx);
    }
    crate::jobs::per_database::for_each(&spec.databases, ctx, |ctx, gateway, label| {
        run_one(spec, ctx, gateway, label)
    })
}

/// Maintains one database: the gateway's (`label` `None`) or a declared one, whose alerts carry
/// its label. A declared database is held to the gateway's lock bounds: its writers are not
/// known to wait any longer than the gateway's.
fn run_one(
    spec: &Spec,
    ctx: &mut Context<'_>,
    gateway: &Gateway,
    label: Option<&str>,
) -> anyhow::Result<Report> {
    let db = &gateway.database;
    refuse_unless_sqlite(db)?;
    let mut conn = gateway.connect(false)?;
    if label.is_none() {
        refuse_without_table(&conn, gateway)?;
    }
    let of = label.map_or(String::new(), |l| format!(":{l}"));
    let subject = label.map_or("the gateway database".to_string(), |l| format!("database {l}"));
    let about = label.map_or(String::new(), |l| format!(" (database {l})"));
    let before = facts(&conn, db)?;
    let bound = lock_bound(spec, gateway.preset);
    let plan = plan(spec, &before, &bound);
    let space_key = format!("vacuum-space:{}{of}", ctx.job);
    let skipped_key = format!("vacuum-skipped:{}{of}", ctx.job);
    let lock_key = format!("vacuum-lock:{}{of}", ctx.job);
    if ctx.dry_run {
        let report = Report::new(format!("would maintain {}", db.display()));
        return Ok(report.with_plan(&plan));
    }
    let files_before = backup::database_bytes(db);
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
            "ANALYZE and optimize held the write lock {}",
            units::duration(held)
        ));
        ctx.checkpoint()?;
    }
    let mut vacuumed = Vacuumed::default();
    let resolve = |key: &str, what: &str| AlertEvent::Resolve {
        key: key.to_string(),
        job: Some(ctx.job.to_string()),
        what: what.into(),
    };
    const SKIPPED: &str = "VACUUM skipped: its lock would outlast what the gateway waits";
    const OVER: &str = "a VACUUM lock outlasted its bound";
    // Why the VACUUM was not run, for the alert that names the ways out.
    let mut blocked: Option<String> = None;
    let mut full: Option<bool> = None;
    match &plan.vacuum {
        VacuumDecision::Skip(why) => {
            done.push(format!("VACUUM skipped: {why}"));
            ctx.alerts.push(resolve(&skipped_key, &format!("{SKIPPED}{about}")));
        }
        VacuumDecision::Blocked(why) => blocked = Some(why.clone()),
        VacuumDecision::NoRoom { needed, available } => {
            let message = format!(
                "VACUUM of {} refused: it needs about {} free on its filesystem (twice the database), only {} are available; free space there or set `vacuum: never`",
                db.display(),
                units::bytes(*needed),
                units::bytes(*available)
            );
            ctx.alerts.push(AlertEvent::Raise(Alert {
                key: space_key,
                severity: Severity::Warning,
                job: Some(ctx.job.to_string()),
                what: format!("no room to VACUUM {subject}"),
                body: message.clone(),
            }));
            anyhow::bail!(message);
        }
        VacuumDecision::Trial { convert, bound } => {
            let (took, copy_lock) = trial(gateway, ctx.state_dir, ctx.job, *convert)?;
            vacuumed.trial = Some(took);
            vacuumed.trial_copy_lock = Some(copy_lock);
            vacuumed.bound = Some(*bound);
            match judge(took, *bound) {
                Ok(expected) => {
                    vacuumed.expected = Some(expected);
                    full = Some(*convert);
                }
                Err(why) => blocked = Some(why),
            }
            ctx.checkpoint()?;
        }
        VacuumDecision::Run { convert } => full = Some(*convert),
        VacuumDecision::Incremental => {
            vacuumed.bound = Some(STEP_BOUND);
            reclaim(&mut conn, &mut pacer, ctx, &mut vacuumed)?;
            ctx.alerts.push(resolve(&skipped_key, &format!("{SKIPPED}{about}")));
        }
    }
    if let Some(why) = &blocked {
        let converting = spec.vacuum == Vacuum::Incremental;
        let what = if converting {
            "the switch to auto_vacuum = INCREMENTAL (a full VACUUM)"
        } else {
            "VACUUM"
        };
        done.push(format!("{what} skipped: {why}; {}", before.free_text()));
        ctx.alerts.push(AlertEvent::Raise(Alert {
            key: skipped_key.clone(),
            severity: Severity::Warning,
            job: Some(ctx.job.to_string()),
            what: format!("{SKIPPED}{about}"),
            body: format!(
                "{what} of {} was skipped: {why}.\n\n{} inside the file; SQLite reuses them for new rows, but the file does not shrink.\n\n\
                 Two ways to give them back:\n\
                 - `vacuum: always` on a schedule in a window when the gateway is stopped: VACUUM holds an exclusive lock for the whole rewrite;\n\
                 - `vacuum: incremental`: after a one-time switch of the database to auto_vacuum = INCREMENTAL (itself a full VACUUM: add `vacuum_convert: true` for one run with the gateway stopped), each run gives free pages back in short paced steps.",
                db.display(),
                before.free_text()
            ),
        }));
    }
    if let Some(convert) = full {
        let sql = if convert {
            "PRAGMA auto_vacuum = INCREMENTAL; VACUUM;"
        } else {
            "VACUUM"
        };
        let vacuum = writelock::operation(VACUUM);
        let (_, held) = pacer.statement(&conn, |c| {
            c.execute_batch(sql)
                .with_context(|| format!("running VACUUM on {}", db.display()))
        })?;
        drop(vacuum);
        vacuumed.full = Some(held);
        ctx.alerts.push(resolve(&space_key, &format!("no room to VACUUM {subject}")));
        ctx.alerts.push(resolve(&skipped_key, &format!("{SKIPPED}{about}")));
        let mut line = format!(
            "{} held an exclusive lock {}",
            if convert {
                "VACUUM switching the database to auto_vacuum = INCREMENTAL"
            } else {
                "VACUUM"
            },
            units::duration(held)
        );
        if let Some(expected) = vacuumed.expected {
            line.push_str(&format!(" (expected {})", units::duration(expected)));
        }
        if vacuumed.bound.is_none() {
            // `always` or `vacuum_convert`: the operator's consent; said, not alerted.
            match gateway_wait(gateway.preset) {
                Some(wait) if held >= wait => line.push_str(&format!(
                    ", longer than {}'s {} busy timeout: only safe with the gateway stopped",
                    preset_name(gateway.preset),
                    units::duration(wait)
                )),
                Some(_) => {}
                None => line.push_str(&format!(
                    ", and a {} gateway loses the writes that meet it: only safe with the gateway stopped",
                    preset_name(gateway.preset)
                )),
            }
        }
        done.push(line);
    }
    let over = vacuumed.over_bound();
    if let Some(over) = &over {
        done.push(over.clone());
        let beyond_wait = gateway_wait(gateway.preset)
            .is_some_and(|wait| vacuumed.full.is_some_and(|held| held >= wait));
        ctx.alerts.push(AlertEvent::Raise(Alert {
            key: lock_key,
            severity: if beyond_wait {
                Severity::Critical
            } else {
                Severity::Warning
            },
            job: Some(ctx.job.to_string()),
            what: format!("{OVER}{about}"),
            body: format!(
                "On {}: {over}{}.\n\nA machine busier than usual stretches locks; if it happens again, lower vacuum_max_lock, \
                 or move this job to a quieter hour (docs/jobs/maintenance.md).",
                db.display(),
                if beyond_wait {
                    format!(
                        ", longer than {}'s busy timeout: writes that arrived at its start were lost",
                        preset_name(gateway.preset)
                    )
                } else {
                    String::new()
                }
            ),
        }));
    } else if vacuumed.bound.is_some() && (vacuumed.full.is_some() || vacuumed.steps > 0) {
        ctx.alerts.push(resolve(&lock_key, &format!("{OVER}{about}")));
    }
    let after = facts(&conn, db)?;
    let files_after = backup::database_bytes(db);
    done.push(format!(
        "size {} -> {} ({} -> {} free pages)",
        units::bytes(files_before),
        units::bytes(files_after),
        before.freelist_count,
        after.freelist_count
    ));
    let mut report = Report::new(done.join("; "))
        .figure("bytes_before", files_before as f64)
        .figure("bytes_after", files_after as f64)
        .figure("free_pages_before", before.freelist_count as f64)
        .figure("free_pages_after", after.freelist_count as f64)
        .figure("longest_lock_ms", ms(pacer.longest()))
        .figure(
            "vacuum_seconds",
            vacuumed.full.map_or(0.0, |d| d.as_secs_f64()),
        );
    let vacuum_lock = vacuumed.full.unwrap_or(vacuumed.longest_step);
    if (vacuumed.full.is_some() || vacuumed.steps > 0) && !ctx.dry_run {
        // The file shrank on purpose: the backup's shrink guard must not take it for an
        // emptied database.
        crate::ledger::vacuumed(ctx.state, chrono::Utc::now())
            .context("recording the VACUUM in the state database")?;
    }
    if vacuumed.full.is_some() || vacuumed.steps > 0 {
        report = report.figure("vacuum_lock_ms", ms(vacuum_lock));
    }
    if let Some(bound) = vacuumed.bound {
        report = report.figure("vacuum_lock_bound_ms", ms(bound));
    }
    if let Some(trial) = vacuumed.trial {
        report = report
            .figure("vacuum_trial_ms", ms(trial))
            .figure("vacuum_expected_ms", ms(trial.mul_f64(TRIAL_MARGIN)));
    }
    if let Some(copy_lock) = vacuumed.trial_copy_lock {
        report = report.figure("trial_copy_lock_ms", ms(copy_lock));
    }
    if vacuumed.steps > 0 {
        report = report
            .figure("vacuum_steps", vacuumed.steps as f64)
            .figure("vacuum_steps_over_bound", vacuumed.steps_over as f64);
    }
    Ok(report)
}

/// Gives the free pages of an `auto_vacuum = INCREMENTAL` database back to the filesystem in
/// paced write transactions, each sized on the time the last one took.
fn reclaim(
    conn: &mut Connection,
    pacer: &mut Pacer,
    ctx: &Context<'_>,
    vacuumed: &mut Vacuumed,
) -> anyhow::Result<()> {
    let mut pages = FIRST_STEP_PAGES;
    // The shortest step's lock: about the commit's fixed cost (its fsyncs).
    let mut floor = Duration::MAX;
    let mut left = pragma_u64(conn, "freelist_count")?;
    let started = left;
    while left > 0 {
        ctx.checkpoint()?;
        let (now_left, held) = pacer.write(conn, |tx| {
            // It frees one page per row it returns: stepped once, it frees one page.
            let vacuuming = || "running PRAGMA incremental_vacuum on the gateway database";
            let mut stmt = tx
                .prepare(&format!("PRAGMA incremental_vacuum({pages})"))
                .with_context(vacuuming)?;
            let mut rows = stmt.query([]).with_context(vacuuming)?;
            while rows.next().with_context(vacuuming)?.is_some() {}
            drop(rows);
            drop(stmt);
            pragma_u64(tx, "freelist_count")
        })?;
        vacuumed.steps += 1;
        vacuumed.longest_step = vacuumed.longest_step.max(held);
        if held > STEP_BOUND {
            vacuumed.steps_over += 1;
        }
        if now_left >= left {
            break; // nothing moved: the gateway freed pages as fast, or SQLite cannot
        }
        let moved = usize::try_from(left - now_left).unwrap_or(usize::MAX);
        tracing::trace!(pages, moved, held_ms = ms(held), "incremental vacuum step");
        left = now_left;
        floor = floor.min(held);
        pages = super::archive::next_size(pages, moved, held, floor);
    }
    tracing::debug!(
        pages = started - left,
        steps = vacuumed.steps,
        "incremental vacuum"
    );
    Ok(())
}

/// The `--dry-run` output: one line per step.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let facts = &self.facts;
        if let Some(note) = &self.checkpoint_note {
            writeln!(f, "{note}")?;
        }
        if let Some(mode) = self.checkpoint {
            writeln!(
                f,
                "{}",
                format!("checkpoint: {mode:?} checkpoint of the WAL").to_lowercase()
            )?;
        }
        if self.analyze {
            writeln!(
                f,
                "analyze: ANALYZE (sampling {ANALYSIS_LIMIT} rows per index) then PRAGMA optimize"
            )?;
        }
        let rewrite = |convert: bool| {
            format!(
                "rewrite {} ({}){} under an exclusive lock",
                units::bytes(facts.bytes()),
                facts.free_text(),
                if convert {
                    " switching it to auto_vacuum = INCREMENTAL"
                } else {
                    ""
                }
            )
        };
        let vacuum = match &self.vacuum {
            VacuumDecision::Skip(why) => format!("vacuum: skipped, {why}"),
            VacuumDecision::Blocked(why) => format!("vacuum: skipped with an alert, {why}"),
            VacuumDecision::Trial { convert, bound } => format!(
                "vacuum: VACUUM a copy first; if that, times {TRIAL_MARGIN}, is within {}, {}",
                units::duration(*bound),
                rewrite(*convert)
            ),
            VacuumDecision::Run { convert } => format!("vacuum: {}", rewrite(*convert)),
            VacuumDecision::Incremental => format!(
                "vacuum: give back {} in paced PRAGMA incremental_vacuum steps",
                facts.free_text()
            ),
            VacuumDecision::NoRoom { needed, available } => format!(
                "vacuum: would be refused, needs {} free, {} available",
                units::bytes(*needed),
                units::bytes(*available)
            ),
        };
        writeln!(f, "{vacuum}")
    }
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
                            "truncate checkpoint copied {done} WAL frames and emptied the WAL in {} (try {attempt})",
                            units::duration(held)
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
            vacuum_max_lock: None,
            vacuum_convert: false,
            databases: Selection::default(),
            reindex_bloat_over: None,
        }
    }

    fn facts(wal: bool, free: u64, available: u64) -> Facts {
        Facts {
            wal,
            page_size: 4096,
            page_count: 1000,
            freelist_count: free,
            auto_vacuum: 0,
            available,
        }
    }

    const ROOM: u64 = 10 * 4096 * 1000;
    const TWO_S: Duration = Duration::from_secs(2);

    #[test]
    fn vacuum_decisions() {
        let apantli: Result<Duration, String> = Ok(TWO_S);
        let boba: Result<Duration, String> = Err("no busy timeout".into());
        let cases = [
            (
                Vacuum::Never,
                900,
                ROOM,
                &apantli,
                VacuumDecision::Skip("vacuum: never".into()),
            ),
            (
                Vacuum::Always,
                0,
                ROOM,
                &boba,
                VacuumDecision::Run { convert: false },
            ),
            (
                Vacuum::Auto,
                200,
                ROOM,
                &apantli,
                VacuumDecision::Trial {
                    convert: false,
                    bound: TWO_S,
                },
            ),
            (
                Vacuum::Auto,
                200,
                ROOM,
                &boba,
                VacuumDecision::Blocked("no busy timeout".into()),
            ),
            (
                Vacuum::Auto,
                199,
                ROOM,
                &boba,
                VacuumDecision::Skip(
                    "19.9% of pages are free, below vacuum_threshold 20.0%".into(),
                ),
            ),
            (
                Vacuum::Always,
                0,
                2 * 4096 * 1000 - 1,
                &apantli,
                VacuumDecision::NoRoom {
                    needed: 2 * 4096 * 1000,
                    available: 2 * 4096 * 1000 - 1,
                },
            ),
            (
                Vacuum::Always,
                0,
                2 * 4096 * 1000,
                &apantli,
                VacuumDecision::Run { convert: false },
            ),
            (
                Vacuum::Incremental,
                0,
                ROOM,
                &apantli,
                VacuumDecision::Trial {
                    convert: true,
                    bound: TWO_S,
                },
            ),
            (
                Vacuum::Incremental,
                500,
                ROOM,
                &boba,
                VacuumDecision::Blocked("no busy timeout".into()),
            ),
        ];
        for (mode, free, available, bound, expected) in cases {
            let got = plan(&spec(mode), &facts(true, free, available), bound).vacuum;
            assert_eq!(
                got, expected,
                "{mode:?} free={free} available={available} bound={bound:?}"
            );
        }
    }

    #[test]
    fn incremental_decisions_follow_the_database_and_the_consent() {
        let boba: Result<Duration, String> = Err("no busy timeout".into());
        let consent = Spec {
            vacuum_convert: true,
            ..spec(Vacuum::Incremental)
        };
        assert_eq!(
            plan(&consent, &facts(true, 0, ROOM), &boba).vacuum,
            VacuumDecision::Run { convert: true }
        );
        // The consent is for the switch only: once switched, free pages go back in steps.
        let switched = |free| Facts {
            auto_vacuum: AUTO_VACUUM_INCREMENTAL,
            ..facts(true, free, 0)
        };
        assert_eq!(
            plan(&consent, &switched(10), &boba).vacuum,
            VacuumDecision::Incremental
        );
        assert_eq!(
            plan(&consent, &switched(0), &boba).vacuum,
            VacuumDecision::Skip("no free pages to give back".into())
        );
        let full = Facts {
            auto_vacuum: AUTO_VACUUM_FULL,
            ..facts(true, 10, ROOM)
        };
        assert!(matches!(
            plan(&consent, &full, &boba).vacuum,
            VacuumDecision::Skip(why) if why.contains("auto_vacuum = FULL")
        ));
        // Without room the switch is refused like any VACUUM.
        assert!(matches!(
            plan(&consent, &facts(true, 0, 1), &boba).vacuum,
            VacuumDecision::NoRoom { .. }
        ));
    }

    #[test]
    fn the_bound_comes_from_the_gateway_unless_set() {
        assert_eq!(
            lock_bound(&spec(Vacuum::Auto), Preset::Apantli),
            Ok(Duration::from_secs(1))
        );
        for preset in [Preset::Bobamixer, Preset::Custom] {
            assert!(
                lock_bound(&spec(Vacuum::Auto), preset).is_err(),
                "{preset:?}"
            );
        }
        let set = Spec {
            vacuum_max_lock: Some(Duration::from_millis(300)),
            ..spec(Vacuum::Auto)
        };
        assert_eq!(
            lock_bound(&set, Preset::Custom),
            Ok(Duration::from_millis(300))
        );
    }

    #[test]
    fn a_trial_is_judged_with_its_margin() {
        let cases = [
            (450, 2000, Ok(1800)),
            (500, 2000, Ok(2000)),
            (501, 2000, Err(())),
            (1384, 2000, Err(())),
        ];
        for (trial, bound, expected) in cases {
            let got = judge(Duration::from_millis(trial), Duration::from_millis(bound));
            match (got, expected) {
                (Ok(e), Ok(want)) => assert_eq!(e.as_millis(), want, "{trial}"),
                (Err(why), Err(())) => {
                    assert!(why.contains("over vacuum_max_lock 2 s"), "{trial}: {why}")
                }
                (got, _) => panic!("trial {trial} ms: {got:?}"),
            }
        }
        let why = judge(Duration::from_millis(1384), Duration::from_secs(1)).unwrap_err();
        assert!(
            why.contains("took 1.4 s") && why.contains("about 5.5 s"),
            "{why}"
        );
    }

    #[test]
    fn locks_over_their_bound_are_named() {
        let ms = Duration::from_millis;
        let within = Vacuumed {
            full: Some(ms(900)),
            bound: Some(ms(1000)),
            ..Vacuumed::default()
        };
        assert_eq!(within.over_bound(), None);
        let over = Vacuumed {
            full: Some(ms(1200)),
            ..within
        };
        assert_eq!(
            over.over_bound().unwrap(),
            "VACUUM held the exclusive lock 1.2 s, over its bound of 1 s"
        );
        // `vacuum: always` holds no bound: its lock is reported, not judged.
        let consented = Vacuumed {
            full: Some(ms(9000)),
            ..Vacuumed::default()
        };
        assert_eq!(consented.over_bound(), None);
        let steps = Vacuumed {
            steps: 9,
            steps_over: 2,
            longest_step: ms(600),
            bound: Some(STEP_BOUND),
            ..Vacuumed::default()
        };
        assert_eq!(
            steps.over_bound().unwrap(),
            "2 of 9 incremental vacuum steps held the write lock over their bound of 500 ms (longest 600 ms)"
        );
    }

    #[test]
    fn lock_times_read_as_milliseconds_or_durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("0ms", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(LockTime::try_from(text.to_string()), Ok(LockTime(want)));
        }
        for bad in ["fast", "1.5s", "-3ms", "ms"] {
            let e = LockTime::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn checkpoint_only_on_wal() {
        let none: Result<Duration, String> = Ok(TWO_S);
        let rollback = plan(&spec(Vacuum::Never), &facts(false, 0, 0), &none);
        assert_eq!(rollback.checkpoint, None);
        assert!(
            rollback
                .checkpoint_note
                .unwrap()
                .contains("rollback journal")
        );
        let wal = plan(&spec(Vacuum::Never), &facts(true, 0, 0), &none);
        assert_eq!(wal.checkpoint, Some(Checkpoint::Passive));
        assert_eq!(wal.checkpoint_note, None);
        let off = Spec {
            checkpoint: Checkpoint::Off,
            ..spec(Vacuum::Never)
        };
        assert_eq!(plan(&off, &facts(false, 0, 0), &none).checkpoint_note, None);
    }

    /// The plan's words are the `--dry-run` output, one line per step.
    #[test]
    fn plan_reads_as_the_dry_run() {
        let bound: Result<Duration, String> = Ok(TWO_S);
        let cases = [
            (
                spec(Vacuum::Never),
                facts(false, 0, ROOM),
                "checkpoint skipped: the database uses a rollback journal, not WAL\n\
                 analyze: ANALYZE (sampling 1000 rows per index) then PRAGMA optimize\n\
                 vacuum: skipped, vacuum: never\n",
            ),
            (
                spec(Vacuum::Auto),
                facts(true, 500, ROOM),
                "checkpoint: passive checkpoint of the wal\n\
                 analyze: ANALYZE (sampling 1000 rows per index) then PRAGMA optimize\n\
                 vacuum: VACUUM a copy first; if that, times 4, is within 2 s, rewrite 3.91 MiB (500 of 1000 pages (50.0%, 1.95 MiB) are free) under an exclusive lock\n",
            ),
        ];
        for (spec, facts, want) in cases {
            assert_eq!(plan(&spec, &facts, &bound).to_string(), want);
        }
    }

    #[test]
    fn an_empty_database_has_no_free_share() {
        let f = Facts {
            page_count: 0,
            ..facts(true, 0, 0)
        };
        assert_eq!(f.free_share(), 0.0);
    }

    #[test]
    fn only_sqlite_files_are_maintained() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], &str); 3] = [
            ("empty.db", b"", "is empty (0 bytes)"),
            (
                "text.db",
                b"hello, not a database at all\n",
                "is not a SQLite database",
            ),
            ("short.db", b"SQLite", "is not a SQLite database"),
        ];
        for (name, bytes, said) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = format!("{:#}", refuse_unless_sqlite(&path).unwrap_err());
            assert!(e.contains(name) && e.contains(said), "{name}: {e}");
            assert!(e.contains("gateway.database"), "{name}: {e}");
        }
        let missing = dir.path().join("missing.db");
        let e = format!("{:#}", refuse_unless_sqlite(&missing).unwrap_err());
        assert!(
            e.contains("missing.db") && e.contains("gateway.database"),
            "{e}"
        );
        assert!(!missing.exists());
        let e = format!("{:#}", refuse_unless_sqlite(dir.path()).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        let db = dir.path().join("real.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        refuse_unless_sqlite(&db).unwrap();
    }
}
