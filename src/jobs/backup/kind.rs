//! The `backup` kind: its block of the jobs file, its plan and shrink guard, its retention, and its run on a SQLite gateway (a PostgreSQL gateway's is in `postgres.rs`).
//!
//! One run: sweep what a killed run left, check free space, snapshot the gateway database in
//! one step (the only moment the gateway is touched), check the copy with SQLite, write the
//! archive to a temporary file, read it back against the manifest's SHA-256, publish it
//! (fsync, rename, fsync the directory), then prune this job's archives by the keep policy.
//! An archive that fails a check is never published, so it is never counted or kept.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::jobs::contract::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::backup::archive::{self, CheckLevel, Manifest};
use crate::backup::snapshot::Snapshot;
use crate::backup::{self as backups, ArchiveName, Format, Scratch};
use crate::backup::multi;
use crate::checks::Checks;
use crate::databases::Selection;
use crate::fsx;
use crate::units;
use super::retention::{self, Decision, KeepConfig, Policy, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyLevel {
    None,
    Quick,
    Full,
}

/// The default gzip level. Our deflate (zlib-rs, like zlib-ng) takes a faster, greedier path
/// up to level 6, which leaves SQLite pages about 8 % larger than `gzip -6` does; from level 7
/// it matches lazily as GNU gzip's level 6 does, and the archive comes out slightly smaller
/// than `gzip -6`'s (docs/benchmarks.md).
const DEFAULT_LEVEL: u32 = 7;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    to: Option<PathBuf>,
    include: Option<Vec<PathBuf>>,
    compression: Option<Compression>,
    level: Option<u32>,
    keep: Option<KeepConfig>,
    verify: Option<VerifyLevel>,
    shrink_guard: Option<ShrinkGuard>,
    databases: Option<Vec<String>>,
    pg_dump: Option<PathBuf>,
    copy_to: Option<Vec<String>>,
    remote_keep: Option<KeepConfig>,
}

/// `shrink_guard`: a new snapshot with fewer than this share of the rows or of the bytes of the
/// newest archive that passed the guard is held: still written, but retention deletes nothing
/// in that run and never counts it. A gateway database that was emptied, replaced or mostly
/// deleted would otherwise push the good archives out of the keep policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShrinkGuard {
    Off,
    Under(f64),
}

/// The default: a fall to under half.
const DEFAULT_SHRINK_GUARD: ShrinkGuard = ShrinkGuard::Under(0.5);

impl<'de> Deserialize<'de> for ShrinkGuard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ShrinkGuard;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a percentage such as 50%, or off")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ShrinkGuard, E> {
                if s == "off" {
                    return Ok(ShrinkGuard::Off);
                }
                crate::units::parse_share(s)
                    .map(ShrinkGuard::Under)
                    .map_err(|e| E::custom(format!("{e}, or `off`")))
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<ShrinkGuard, E> {
                if b {
                    Err(E::custom(
                        "`true` is not a shrink guard: expected a percentage such as 50%, or `off`",
                    ))
                } else {
                    Ok(ShrinkGuard::Off)
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub to: PathBuf,
    pub include: Vec<PathBuf>,
    pub compression: Compression,
    pub level: u32,
    pub keep: Policy,
    pub verify: VerifyLevel,
    pub shrink_guard: ShrinkGuard,
    /// The databases backed up: `gateway` and those declared under `databases:`.
    pub databases: Selection,
    /// The `pg_dump` of a PostgreSQL gateway's backups; `None`: the newest installed.
    pub pg_dump: Option<PathBuf>,
    /// Remotes each new archive is copied to.
    pub copy_to: Vec<String>,
    /// The remotes' own tiers; `None` applies `keep` there too. (Boxed: a policy is large, and
    /// every job's `Kind` would otherwise carry room for two.)
    pub remote_keep: Option<Box<Policy>>,
}

impl crate::jobs::contract::Contract for Spec {
    fn writes(&self) -> Vec<(PathBuf, &'static str)> {
        vec![(self.to.clone(), crate::jobs::contract::BACKUPS)]
    }

    fn needs_gateway(&self) -> Option<&'static str> {
        self.databases.has_gateway().then_some("databases")
    }

    fn selection_mut(&mut self) -> Option<&mut Selection> {
        Some(&mut self.databases)
    }

    fn gateway_problems(&self, gateway: &crate::gateway::Gateway) -> Vec<(String, String)> {
        match (&self.pg_dump, &gateway.postgres) {
            (Some(_), None) => vec![(
                "pg_dump".into(),
                "is only read for a PostgreSQL gateway (gateway.url); a SQLite gateway is backed up by its own snapshot".into(),
            )],
            _ => Vec::new(),
        }
    }

    fn remotes_named(&self) -> Vec<(String, &str)> {
        crate::remote::named_in("copy_to", &self.copy_to)
    }

    fn remote_keep(&self) -> Option<&Policy> {
        (!self.copy_to.is_empty()).then(|| self.remote_keep.as_deref().unwrap_or(&self.keep))
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let to = checks.given_path(&format!("{path}.to"), raw.to.as_deref());
    if raw.to.is_none() {
        checks.error(
            &format!("{path}.to"),
            "missing key `to`; accepted: the directory the archives are written to",
        );
    }
    let level = raw.level.unwrap_or(DEFAULT_LEVEL);
    if level > 9 {
        checks.error(
            &format!("{path}.level"),
            format!("compression level {level} is out of range; accepted: 0 to 9"),
        );
    }
    let keep = match raw.keep {
        Some(k) => match k.to_policy() {
            Ok(policy) => Some(policy),
            Err(message) => {
                checks.error(&format!("{path}.keep"), message);
                None
            }
        },
        None => {
            checks.error(
                &format!("{path}.keep"),
                "missing key `keep`: a backup job without a retention policy would fill the disk; accepted: e.g. {last: 2, daily: 7, weekly: 4, monthly: 12}",
            );
            None
        }
    };
    let remote_keep = match raw.remote_keep.map(|k| k.to_policy()) {
        Some(Err(message)) => {
            checks.error(&format!("{path}.remote_keep"), message);
            return None;
        }
        Some(Ok(policy)) => Some(Box::new(policy)),
        None => None,
    };
    if level > 9 {
        return None;
    }
    Some(Spec {
        to: to?,
        include: raw
            .include
            .unwrap_or_default()
            .iter()
            .map(|p| checks.path(p))
            .collect(),
        compression: raw.compression.unwrap_or(Compression::Gzip),
        level,
        keep: keep?,
        verify: raw.verify.unwrap_or(VerifyLevel::Quick),
        shrink_guard: raw.shrink_guard.unwrap_or(DEFAULT_SHRINK_GUARD),
        databases: Selection::from_raw(raw.databases, &format!("{path}.databases"), checks),
        pg_dump: raw.pg_dump.map(|p| checks.path(&p)),
        copy_to: raw.copy_to.unwrap_or_default(),
        remote_keep,
    })
}

/// What a run will do, computed without touching anything.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The archive this run writes.
    pub archive: ArchiveName,
    /// Every archive of the job after this run's one is published, newest first, with the
    /// keep policy's verdict and reasons.
    pub retention: Vec<Decision<ArchiveName>>,
}

impl Spec {
    fn format(&self) -> Format {
        match self.compression {
            Compression::Gzip => Format::TarGz,
            Compression::None => Format::Tar,
        }
    }

    fn check_level(&self) -> Option<CheckLevel> {
        match self.verify {
            VerifyLevel::None => None,
            VerifyLevel::Quick => Some(CheckLevel::Quick),
            VerifyLevel::Full => Some(CheckLevel::Full),
        }
    }
}

/// The run's plan: the new archive's name from `now`, and the keep policy applied in `tz` to
/// the `existing` archives of the job (each with whether it is held) plus the new one, as if the
/// new one passes its shrink guard.
pub fn plan(
    job: &str,
    spec: &Spec,
    now: DateTime<Utc>,
    tz: Tz,
    existing: Vec<(ArchiveName, bool)>,
) -> Plan {
    let archive = ArchiveName::new(job, truncate_to_second(now), spec.format());
    let mut all = existing;
    all.push((archive.clone(), false));
    Plan {
        retention: prune(all, &spec.keep, tz, true),
        archive,
    }
}

/// The keep policy's verdict on `archives`, newest first; each comes with whether it is held
/// (it failed its shrink guard when written). The newest archive that is not held is always
/// kept. A held archive takes no keep slot, so no archive is ever deleted to make room for it,
/// and it stays while it is newer than the oldest archive the policy keeps. With `may_prune`
/// false (this run's own archive is held) every archive stays.
pub fn prune(
    archives: Vec<(ArchiveName, bool)>,
    policy: &Policy,
    tz: Tz,
    may_prune: bool,
) -> Vec<Decision<ArchiveName>> {
    let newest_first = |decisions: &mut Vec<Decision<ArchiveName>>| {
        decisions.sort_by_key(|d| std::cmp::Reverse(d.time));
    };
    if !may_prune {
        let mut all: Vec<Decision<ArchiveName>> = archives
            .into_iter()
            .map(|(a, _)| Decision {
                time: a.time,
                item: a,
                keep: true,
                reasons: vec![Reason::Paused],
            })
            .collect();
        newest_first(&mut all);
        return all;
    }
    let (held, counted): (Vec<_>, Vec<_>) = archives.into_iter().partition(|(_, held)| *held);
    let timed = counted.into_iter().map(|(a, _)| (a.time, a)).collect();
    let mut decisions = retention::decide(timed, policy, tz);
    let oldest_kept = decisions.iter().filter(|d| d.keep).map(|d| d.time).min();
    for (a, _) in held {
        let keep = oldest_kept.is_none_or(|oldest| a.time > oldest);
        decisions.push(Decision {
            time: a.time,
            item: a,
            keep,
            reasons: if keep { vec![Reason::Held] } else { Vec::new() },
        });
    }
    newest_first(&mut decisions);
    decisions
}

/// The rows of the gateway's table and the bytes of a database copy: what the shrink guard
/// compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub rows: u64,
    pub bytes: u64,
}

/// Why `new` fell sharply against `base`: to under `share` of its rows or of its bytes. `None`
/// when it did not.
pub fn shrunk(base: Extent, new: Extent, share: f64) -> Option<String> {
    let fell = |new: u64, base: u64| (new as f64) < share * base as f64;
    let percent = |new: u64, base: u64| new as f64 * 100.0 / base.max(1) as f64;
    let mut why = Vec::new();
    if fell(new.rows, base.rows) {
        why.push(format!(
            "its rows fell from {} to {} ({:.1}%)",
            base.rows,
            new.rows,
            percent(new.rows, base.rows)
        ));
    }
    if fell(new.bytes, base.bytes) {
        why.push(format!(
            "its size fell from {} to {} ({:.1}%)",
            units::bytes(base.bytes),
            units::bytes(new.bytes),
            percent(new.bytes, base.bytes)
        ));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{}, under the shrink guard's {}%",
            why.join(" and "),
            share * 100.0
        )
    })
}

/// What the baseline should hold now that caretaker itself removed `own` since it was taken:
/// its rows less those the archive purged, and after a VACUUM of ours no size to compare (a
/// size of 0 compares nothing), since the VACUUM gave the free pages back on purpose.
pub fn expected_after(base: Extent, own: crate::ledger::Removed) -> Extent {
    Extent {
        rows: base.rows.saturating_sub(own.rows),
        bytes: if own.vacuumed { 0 } else { base.bytes },
    }
}

/// The words for what was allowed for: `" (less 1200 rows our archive purged since)"`.
fn own_removals(own: crate::ledger::Removed) -> String {
    let mut said = Vec::new();
    if own.rows > 0 {
        said.push(format!("less {} rows our archive purged since", own.rows));
    }
    if own.vacuumed {
        said.push("its size not compared after our VACUUM".to_string());
    }
    if said.is_empty() {
        String::new()
    } else {
        format!(" ({})", said.join("; "))
    }
}

/// The shrink guard's verdict on a new copy of `extent` against `base` (the newest good
/// archive), allowing for what caretaker itself removed since; a held archive is recorded
/// before it is published (a run killed in between leaves a name that matches no file, never a
/// held archive that retention would count).
pub(super) fn guard(
    spec: &Spec,
    ctx: &Context<'_>,
    base: Option<&(ArchiveName, Extent)>,
    extent: Extent,
    archive: &ArchiveName,
    held: &mut BTreeMap<String, String>,
) -> anyhow::Result<Option<String>> {
    let shrink = match (spec.shrink_guard, base) {
        (ShrinkGuard::Under(share), Some((name, base))) => {
            let own = crate::ledger::since(ctx.state, name.time)?;
            shrunk(expected_after(*base, own), extent, share)
                .map(|why| format!("{why} of {name}{}", own_removals(own)))
        }
        _ => None,
    };
    if let Some(why) = &shrink {
        held.insert(archive.file_name(), why.clone());
        ctx.state.put(&state_ns(ctx.job), HELD, &*held)?;
    }
    Ok(shrink)
}

/// Raises the shrink guard's alert for a held archive of `source`, or resolves it.
/// What every engine's run does once its archive is published: queue the remote copies
/// (before retention, so that retention never deletes a file a remote still needs), apply
/// retention, keep the list of held archives that still exist, and raise or resolve the shrink
/// alert. Returns how many archives were kept and which were deleted.
pub(super) fn settle(
    spec: &Spec,
    ctx: &mut Context<'_>,
    held: &mut BTreeMap<String, String>,
    shrink: Option<&str>,
    source: &str,
    published: &Path,
) -> anyhow::Result<(usize, Vec<String>)> {
    crate::remote::queue::enqueue_copies(
        ctx.state,
        ctx.remotes,
        &spec.copy_to,
        ctx.job,
        published,
        ctx.now,
    )?;
    let waiting = crate::remote::queue::waiting(ctx.state)?;
    let (kept, deleted) = apply_retention(
        ctx.job,
        spec,
        ctx.timezone,
        held,
        shrink.is_none(),
        &waiting,
    )?;
    held.retain(|file, _| spec.to.join(file).exists());
    ctx.state.put(&state_ns(ctx.job), HELD, &*held)?;
    shrink_alert(ctx, shrink, source, published);
    Ok((kept, deleted))
}

pub(super) fn shrink_alert(ctx: &mut Context<'_>, shrink: Option<&str>, source: &str, published: &Path) {
    let key = format!("backup-shrunk:{}", ctx.job);
    let what = format!("the database backed up by `{}` shrank sharply", ctx.job);
    let job = Some(ctx.job.to_string());
    ctx.alerts.push(match shrink {
        Some(why) => AlertEvent::Raise(Alert {
            key,
            severity: Severity::Critical,
            job,
            what,
            body: format!(
                "The snapshot of {source} written to {} is suspect: {why}.\n\n\
                 It was kept, but retention deleted nothing in this run and never counts it, so the \
                 earlier archives stay. Until a snapshot passes the guard, every run is compared with \
                 the same earlier archive and held the same way.\n\n\
                 If the gateway lost its data, stop it and restore that archive with `caretaker restore`. \
                 If the change was expected (a purge, a VACUUM, a new database), run the job once with \
                 `shrink_guard: off`, then set the guard back.",
                published.display()
            ),
        }),
        None => AlertEvent::Resolve { key, job, what },
    });
}

/// The state key holding this job's held archives: file name -> why it was held.
pub(super) const HELD: &str = "held";

fn state_ns(job: &str) -> String {
    format!("backup:{job}")
}

/// The newest archive that is not held and whose manifest reads, with its extent: what a new
/// snapshot is compared against. An unreadable archive is skipped (the verify job reports it).
fn baseline(
    archives: &[(ArchiveName, PathBuf)],
    held: &BTreeMap<String, String>,
) -> Option<(ArchiveName, Extent)> {
    archives
        .iter()
        .rev()
        .filter(|(name, _)| !held.contains_key(&name.file_name()))
        .find_map(|(name, path)| match archive::peek_manifest(path) {
            Ok(m) => Some((
                name.clone(),
                Extent {
                    rows: m.row_count.unwrap_or(0),
                    // A dump has no pages: its size is what compares.
                    bytes: if m.postgres.is_some() {
                        m.size
                    } else {
                        m.page_count.saturating_mul(m.page_size)
                    },
                },
            )),
            Err(e) => {
                tracing::warn!(archive = %path.display(), error = %format!("{e:#}"), "skipping an unreadable archive as the shrink guard's baseline");
                None
            }
        })
}

fn truncate_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn plan_lines(
    plan: &Plan,
    spec: &Spec,
    ctx: &Context<'_>,
    base: Option<&(ArchiveName, Extent)>,
) -> Vec<String> {
    let db = &ctx.gateway.database;
    let size = |p: &Path| fs::metadata(p).map_or("missing".to_string(), |m| units::bytes(m.len()));
    let wal = crate::sqlite::companion(db, crate::sqlite::WAL);
    let mut lines = vec![format!(
        "snapshot {} ({}{}) into {}, verify: {}",
        db.display(),
        size(db),
        if wal.exists() {
            format!(", WAL {}", size(&wal))
        } else {
            String::new()
        },
        spec.to.join(plan.archive.file_name()).display(),
        match spec.verify {
            VerifyLevel::None => "none",
            VerifyLevel::Quick => "quick",
            VerifyLevel::Full => "full",
        }
    )];
    if !spec.databases.has_gateway() {
        lines[0] = format!(
            "the gateway's database is not in this job's databases; archive {}",
            spec.to.join(plan.archive.file_name()).display()
        );
    }
    for declared in &spec.databases.declared {
        lines.push(match declared.expand() {
            Ok(found) => format!(
                "snapshot database {} ({}): {} file{} now, one at a time",
                declared.name,
                declared.pattern.display(),
                found.len(),
                if found.len() == 1 { "" } else { "s" }
            ),
            Err(e) => format!("database {}: {e:#}", declared.name),
        });
    }
    for include in &spec.include {
        let kind = if include.is_dir() { ", a directory" } else { "" };
        lines.push(format!("include {} ({}{kind})", include.display(), size(include)));
    }
    lines.push(match (spec.shrink_guard, base) {
        (ShrinkGuard::Off, _) => "shrink guard: off".to_string(),
        (ShrinkGuard::Under(_), None) => {
            "shrink guard: no earlier archive to compare with".to_string()
        }
        (ShrinkGuard::Under(share), Some((name, e))) => format!(
            "shrink guard: under {}% of the {} rows or {} of {name}, the archive is held and retention deletes nothing",
            share * 100.0,
            e.rows,
            units::bytes(e.bytes)
        ),
    });
    for d in &plan.retention {
        let new = if d.item == plan.archive {
            " (this run)"
        } else {
            ""
        };
        if d.keep {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            lines.push(format!("keep {}{new}: {}", d.item, reasons.join(", ")));
        } else {
            lines.push(format!("delete {}{new}: no keep rule matches", d.item));
        }
    }
    lines
}

/// Where a run starts, on either engine: the archives this job holds (in the state under
/// [`state_ns`]), the shrink guard's baseline among its archives, and the plan.
pub(super) struct Start {
    pub held: BTreeMap<String, String>,
    pub base: Option<(ArchiveName, Extent)>,
    pub plan: Plan,
}

pub(super) fn start(spec: &Spec, ctx: &Context<'_>) -> anyhow::Result<Start> {
    let listed = backups::list(&spec.to, ctx.job)?;
    let ns = state_ns(ctx.job);
    let held: BTreeMap<String, String> = ctx.state.get(&ns, HELD)?.unwrap_or_default();
    let base = match spec.shrink_guard {
        ShrinkGuard::Off => None,
        ShrinkGuard::Under(_) => baseline(&listed, &held),
    };
    let existing = listed
        .iter()
        .map(|(n, _)| (n.clone(), held.contains_key(&n.file_name())))
        .collect();
    let plan = plan(ctx.job, spec, ctx.now, ctx.timezone, existing);
    Ok(Start {
        held,
        base,
        plan,
    })
}

/// A backup of a SQLite gateway ([`super::run`] chooses by the gateway's engine).
pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let to = &spec.to;
    let Start {
        mut held,
        base,
        plan,
    } = start(spec, ctx)?;
    if ctx.dry_run {
        // The table must exist for the run to write anything; say so now.
        if spec.databases.has_gateway() {
            ctx.gateway
                .open(crate::gateway::Access::ReadOnly)?
                .check_table()?;
        }
        let mut report = Report::new(format!(
            "would write {} and keep {} of {} archives",
            plan.archive,
            plan.retention.iter().filter(|d| d.keep).count(),
            plan.retention.len()
        ));
        report.plan = plan_lines(&plan, spec, ctx, base.as_ref());
        return Ok(report);
    }
    let dest = prepare_dir(spec, ctx, &plan)?;

    let gateway = ctx.gateway;
    let with_gateway = spec.databases.has_gateway();
    // Globs are expanded afresh at every run, and included directories walked.
    let listing = multi::Listing::new(&spec.databases.declared, &spec.include)?;
    let needed = listing.bytes_needed(with_gateway.then_some(gateway.database.as_path()));
    let what = if listing.targets.is_empty() {
        gateway.database.display().to_string()
    } else {
        format!(
            "{} databases",
            listing.targets.len() + usize::from(with_gateway)
        )
    };
    backups::ensure_free(to, needed, &format!("the snapshots and archive of {what}"))?;
    ctx.checkpoint()?;

    let started = Instant::now();
    let copies = multi::take_copies(
        listing,
        with_gateway.then_some(gateway),
        to,
        &plan.archive,
        gateway.busy_timeout,
        &mut || Ok(ctx.checkpoint()?),
    )?;
    let snap = &copies.snap;
    let snapshot_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(job = ctx.job, journal_mode = %snap.journal_mode, held_ms = snap.held.as_millis() as u64, writer_block_ms = snap.writer_block.as_millis() as u64, databases = copies.count(), "snapshots taken");
    let rows = if with_gateway { snap.rows } else { Some(snap.rows.unwrap_or(0)) };
    let Some(rows) = rows else {
        bail!(
            "the gateway database {} has no table `{}`: it was emptied, truncated or replaced, or gateway.database names the wrong file; no archive was written and none was deleted. If the gateway lost its data, stop it and restore the newest good archive in {} with `caretaker restore`",
            gateway.database.display(),
            gateway.table,
            to.display()
        );
    };
    let extent = Extent {
        rows,
        bytes: snap.page_count.saturating_mul(snap.page_size),
    };
    let shrink = guard(spec, ctx, base.as_ref(), extent, &plan.archive, &mut held)?;
    ctx.checkpoint()?;

    // Everything after the snapshot only costs CPU and disk; on a small machine it must not
    // starve the gateway's own writers of CPU (a writer descheduled while holding its lock
    // makes the others wait), so it runs at a lower priority.
    let after = std::thread::scope(|s| {
        s.spawn(|| {
            lower_priority();
            check_write_and_publish(spec, ctx, &plan.archive, &dest, &copies)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    let Published {
        databases,
        path: published,
        archive_bytes,
        size,
        check,
        compress_ms,
        verify_ms,
        read_back_ms,
    } = after;

    let (kept, deleted) = settle(
        spec,
        ctx,
        &mut held,
        shrink.as_deref(),
        &copies.primary.source.display().to_string(),
        &published,
    )?;
    let mut report =
        Report::new(format!(
        "wrote {} ({}, {rows} rows, {} mode{}){}{}{}; kept {kept} archives, deleted {}",
        published.display(),
        units::bytes(archive_bytes),
        snap.journal_mode,
        if databases > 1 { format!(", {databases} databases") } else { String::new() },
        copies.remarks(),
        shrink.as_ref().map_or(String::new(), |why| format!("; HELD, retention paused: {why}")),
        check.as_ref().filter(|c| c.foreign_key_violations > 0).map_or(String::new(), |c| format!(
            "; {} rows without their foreign-key parent (as in the gateway database), e.g. {}",
            c.foreign_key_violations,
            c.examples.first().map_or("", String::as_str)
        )),
        if deleted.is_empty() { "none".to_string() } else { deleted.join(", ") }
    ))
        .figure("lock_ms", snap.writer_block.as_secs_f64() * 1000.0)
        .figure("read_txn_ms", snap.held.as_secs_f64() * 1000.0)
        .figure("snapshot_ms", snapshot_ms)
        .figure("compress_ms", compress_ms)
        .figure("verify_ms", verify_ms)
        .figure("read_back_ms", read_back_ms)
        .figure("database_bytes", size as f64)
        .figure("archive_bytes", archive_bytes as f64)
        .figure("rows", rows as f64)
        .figure("held", f64::from(u8::from(shrink.is_some())))
        .figure("kept", kept as f64)
        .figure("deleted", deleted.len() as f64);
    if databases > 1 || !copies.vanished.is_empty() {
        report = report
            .figure("databases", databases as f64)
            .figure("vanished", copies.vanished.len() as f64);
    }
    if let Some(c) = &check {
        report = report.figure("foreign_key_violations", c.foreign_key_violations as f64);
    }
    Ok(report)
}

/// What the part after the snapshot produced.
struct Published {
    /// The databases in the archive.
    databases: usize,
    path: PathBuf,
    archive_bytes: u64,
    /// The database's size in bytes.
    size: u64,
    check: Option<archive::CheckReport>,
    compress_ms: f64,
    /// The checks, hashes and the read-back.
    verify_ms: f64,
    /// The read-back alone.
    read_back_ms: f64,
}

/// Nice 10 for the calling thread and the threads it starts (Linux keeps nice per thread).
/// Best effort: failing to lower our own priority changes nothing else.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::debug!(error = %e, "could not lower the priority of the compression thread");
    }
}

/// Checks the snapshot, writes the archive to a temporary file, reads it back and publishes it.
/// Makes the backup directory ready for the new archive, on either engine: private, what a
/// killed run left swept, and no archive of the same name there. Returns the archive's path.
pub(super) fn prepare_dir(spec: &Spec, ctx: &Context<'_>, plan: &Plan) -> anyhow::Result<PathBuf> {
    let to = &spec.to;
    fsx::private_dir(to)?;
    for path in backups::sweep_scratch(to, ctx.job, Scratch::Snapshot)? {
        tracing::info!(job = ctx.job, path = %path.display(), "removed a temporary file left by an interrupted run");
    }
    let dest = to.join(plan.archive.file_name());
    if dest.exists() {
        bail!(
            "the archive {} already exists (two runs in the same second?); nothing was written",
            dest.display()
        );
    }
    Ok(dest)
}

impl Spec {
    /// The archive's compression, as the spec asks for it.
    pub(super) fn archive_compression(&self) -> archive::Compression {
        match self.compression {
            Compression::Gzip => archive::Compression::Gzip {
                level: self.level,
                threads: archive::compression_threads(),
            },
            Compression::None => archive::Compression::None,
        }
    }
}

/// Reads the written archive back (unless `verify: none`), adding the time to `verify_ms`, and
/// publishes it: on either engine an archive that does not read back is never published.
pub(super) fn read_back_and_publish(
    spec: &Spec,
    ctx: &Context<'_>,
    pending: fsx::PendingFile,
    verify_ms: &mut f64,
) -> anyhow::Result<PathBuf> {
    if spec.verify != VerifyLevel::None {
        let reading = Instant::now();
        // Reading back proves the archive holds exactly the snapshot that passed the check.
        archive::read(pending.temp_path(), &mut std::io::sink())
            .context("the archive did not read back intact; it was removed and not published")?;
        *verify_ms += reading.elapsed().as_secs_f64() * 1000.0;
    }
    ctx.checkpoint()?;
    pending.commit()
}

fn check_write_and_publish(
    spec: &Spec,
    ctx: &Context<'_>,
    name: &ArchiveName,
    dest: &Path,
    copies: &multi::Copies,
) -> anyhow::Result<Published> {
    let multi::Copies {
        primary,
        snap,
        others,
        matched,
        includes,
        ..
    } = copies;
    let checking = Instant::now();
    let (check, sha256, size) = check_and_hash(&snap.path, spec.check_level())
        .context("the snapshot failed its check; no archive was written")?;
    let mut archived = Vec::new();
    for other in others {
        ctx.checkpoint()?;
        let (_, sha256, size) = check_and_hash(&other.snap.path, spec.check_level())
            .with_context(|| {
                format!(
                    "the snapshot of database `{}` ({}) failed its check; no archive was written",
                    other.target.name,
                    other.target.source.display()
                )
            })?;
        archived.push(other.archived(sha256, size));
    }
    let mut verify_ms = checking.elapsed().as_secs_f64() * 1000.0;
    ctx.checkpoint()?;

    let mut manifest = manifest(ctx.job, name, primary, snap, sha256, size, includes);
    manifest.databases = archived;
    manifest.matched = matched.clone();
    let other_paths: Vec<&Path> = others.iter().map(|o| o.snap.path.as_path()).collect();
    let compression = spec.archive_compression();
    let compressing = Instant::now();
    let (pending, archive_bytes) =
        archive::write_all(dest, &manifest, &snap.path, &other_paths, includes, compression)?;
    let compress_ms = compressing.elapsed().as_secs_f64() * 1000.0;
    let before = verify_ms;
    let path = read_back_and_publish(spec, ctx, pending, &mut verify_ms)?;
    // Reading back proves the archive holds exactly the snapshot that passed the check.
    let read_back_ms = verify_ms - before;
    Ok(Published {
        databases: 1 + others.len(),
        path,
        archive_bytes,
        size,
        check,
        compress_ms,
        verify_ms,
        read_back_ms,
    })
}

/// SQLite's check of a snapshot at `level` (none with `None`) and its SHA-256 and size. The
/// check and the hash each take about a second per GB on one core: they run side by side.
fn check_and_hash(
    path: &Path,
    level: Option<CheckLevel>,
) -> anyhow::Result<(Option<archive::CheckReport>, String, u64)> {
    let (check, hashed) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| archive::hash_file(path));
        let check = level
            .map(|level| archive::check_database(path, level))
            .transpose();
        let hashed = hashing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (check, hashed)
    });
    let check = check?;
    let (sha256, size) = hashed?;
    Ok((check, sha256, size))
}

fn manifest(
    job: &str,
    name: &ArchiveName,
    primary: &multi::Primary,
    snap: &Snapshot,
    sha256: String,
    size: u64,
    includes: &[archive::Include],
) -> Manifest {
    Manifest {
        format: archive::FORMAT_VERSION,
        job: job.to_string(),
        created_at: name.time,
        source: primary.source.clone(),
        database: primary.entry.clone(),
        size,
        sha256,
        sqlite_version: rusqlite::version().to_string(),
        page_size: snap.page_size,
        page_count: snap.page_count,
        journal_mode: snap.journal_mode.clone(),
        table: primary.table.clone(),
        row_count: snap.rows,
        files: includes.iter().map(|i| i.meta.clone()).collect(),
        tool: format!("caretaker {}", env!("CARGO_PKG_VERSION")),
        databases: Vec::new(),
        matched: Vec::new(),
        postgres: None,
    }
}

/// Deletes this job's archives the keep policy does not keep. Runs only after a new archive
/// was published, so a failing backup never prunes the good ones before it; `held` archives
/// take no keep slot, and with `may_prune` false nothing is deleted.
pub(super) fn apply_retention(
    job: &str,
    spec: &Spec,
    tz: Tz,
    held: &BTreeMap<String, String>,
    may_prune: bool,
    waiting: &std::collections::BTreeSet<PathBuf>,
) -> anyhow::Result<(usize, Vec<String>)> {
    let archives = backups::list(&spec.to, job)?
        .into_iter()
        .map(|(n, _)| {
            let is_held = held.contains_key(&n.file_name());
            (n, is_held)
        })
        .collect();
    let decisions = prune(archives, &spec.keep, tz, may_prune);
    let mut kept = 0;
    let mut deleted = Vec::new();
    for d in decisions {
        if d.keep {
            kept += 1;
            continue;
        }
        let path = spec.to.join(d.item.file_name());
        if crate::remote::queue::waits(waiting, &path) {
            // Its copy on a remote is not made yet: deleted by a later run once it is.
            tracing::info!(path = %path.display(), "kept past the keep policy: it still waits for its upload");
            kept += 1;
            continue;
        }
        fs::remove_file(&path)
            .with_context(|| format!("deleting the expired archive {}", path.display()))?;
        deleted.push(d.item.file_name());
    }
    if !deleted.is_empty() {
        fsx::sync_dir(&spec.to)
            .with_context(|| format!("flushing directory {}", spec.to.display()))?;
    }
    Ok((kept, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(keep: Policy) -> Spec {
        Spec {
            to: PathBuf::from("/backups"),
            include: Vec::new(),
            compression: Compression::Gzip,
            level: 6,
            keep,
            verify: VerifyLevel::Quick,
            shrink_guard: DEFAULT_SHRINK_GUARD,
            databases: Selection::default(),
            pg_dump: None,
            copy_to: Vec::new(),
            remote_keep: None,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn kept(plan: &Plan) -> Vec<String> {
        plan.retention
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.item.file_name())
            .collect()
    }

    #[test]
    fn the_plan_names_the_new_archive_and_counts_it_in_retention() {
        let keep = Policy {
            last: 2,
            ..Policy::default()
        };
        let existing = vec![
            (
                ArchiveName::new("nightly", utc(2026, 3, 1, 2, 0), Format::TarGz),
                false,
            ),
            (
                ArchiveName::new("nightly", utc(2026, 3, 2, 2, 0), Format::TarGz),
                false,
            ),
        ];
        let now = utc(2026, 3, 3, 2, 0) + chrono::Duration::milliseconds(730);
        let plan = plan("nightly", &spec(keep), now, chrono_tz::UTC, existing);
        assert_eq!(plan.archive.file_name(), "nightly-20260303T020000Z.tar.gz");
        assert_eq!(
            kept(&plan),
            [
                "nightly-20260303T020000Z.tar.gz",
                "nightly-20260302T020000Z.tar.gz"
            ]
        );
        assert!(!plan.retention.last().unwrap().keep);
    }

    #[test]
    fn daily_buckets_follow_the_configured_zone_across_dst() {
        // Europe/Berlin leaves summer time on 2026-10-25: 22:30 UTC on the 24th is already the
        // 25th locally (00:30 CEST), 23:30 UTC on the 25th is 00:30 CET on the 26th.
        let keep = Policy {
            daily: 3,
            ..Policy::default()
        };
        let times = [
            utc(2026, 10, 24, 21, 30), // 23:30 on the 24th
            utc(2026, 10, 24, 22, 30), // 00:30 on the 25th
            utc(2026, 10, 25, 12, 0),  // 13:00 on the 25th
            utc(2026, 10, 25, 23, 30), // 00:30 on the 26th
        ];
        let names: Vec<(ArchiveName, bool)> = times
            .iter()
            .map(|&t| (ArchiveName::new("b", t, Format::TarGz), false))
            .collect();
        let berlin = prune(names.clone(), &keep, chrono_tz::Europe::Berlin, true);
        let kept_berlin: Vec<DateTime<Utc>> =
            berlin.iter().filter(|d| d.keep).map(|d| d.time).collect();
        assert_eq!(kept_berlin, [times[3], times[2], times[0]]);
        let in_utc = prune(names, &keep, chrono_tz::UTC, true);
        let kept_utc: Vec<DateTime<Utc>> =
            in_utc.iter().filter(|d| d.keep).map(|d| d.time).collect();
        // In UTC the first two share the 24th, and the oldest is kept while the count lasts.
        assert_eq!(kept_utc, [times[3], times[1], times[0]]);
    }

    #[test]
    fn the_newest_archive_is_kept_even_when_no_rule_would() {
        // within 1h of the newest keeps only the newest; the policy must never empty the directory.
        let keep: Policy = KeepConfig {
            within: Some("1h".into()),
            ..Default::default()
        }
        .to_policy()
        .unwrap();
        let names = vec![
            (
                ArchiveName::new("b", utc(2026, 1, 1, 0, 0), Format::Tar),
                false,
            ),
            (
                ArchiveName::new("b", utc(2026, 1, 2, 0, 0), Format::Tar),
                false,
            ),
        ];
        let decisions = prune(names, &keep, chrono_tz::America::New_York, true);
        assert!(decisions[0].keep);
        assert!(!decisions[1].keep);
    }

    /// Day `d` of March 2026 at 02:00, held or not.
    fn day(d: u32, held: bool) -> (ArchiveName, bool) {
        (
            ArchiveName::new("b", utc(2026, 3, d, 2, 0), Format::TarGz),
            held,
        )
    }

    fn verdicts(decisions: &[Decision<ArchiveName>]) -> Vec<(u32, bool, String)> {
        use chrono::Datelike;
        decisions
            .iter()
            .map(|d| {
                let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
                (d.time.day(), d.keep, reasons.join(", "))
            })
            .collect()
    }

    #[test]
    fn held_archives_take_no_keep_slot_and_a_held_run_deletes_nothing() {
        let last2 = Policy {
            last: 2,
            ..Policy::default()
        };
        let tz = chrono_tz::UTC;
        /// What, the archives with whether each is held, may_prune, and the verdicts by day.
        type Case = (
            &'static str,
            Vec<(ArchiveName, bool)>,
            bool,
            Vec<(u32, bool, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "this run's archive (5) is held: nothing is deleted",
                vec![
                    day(1, false),
                    day(2, false),
                    day(3, false),
                    day(4, true),
                    day(5, true),
                ],
                false,
                vec![
                    (5, true, "retention paused"),
                    (4, true, "retention paused"),
                    (3, true, "retention paused"),
                    (2, true, "retention paused"),
                    (1, true, "retention paused"),
                ],
            ),
            (
                "a good run (5) after held ones: they do not push the good ones out",
                vec![
                    day(1, false),
                    day(2, false),
                    day(3, true),
                    day(4, true),
                    day(5, false),
                ],
                true,
                vec![
                    (5, true, "last snapshot"),
                    (4, true, "held: failed its shrink guard"),
                    (3, true, "held: failed its shrink guard"),
                    (2, true, "last snapshot"),
                    (1, false, ""),
                ],
            ),
            (
                "held archives go once older than every archive the policy keeps",
                vec![
                    day(2, false),
                    day(3, true),
                    day(4, true),
                    day(5, false),
                    day(6, false),
                ],
                true,
                vec![
                    (6, true, "last snapshot"),
                    (5, true, "last snapshot"),
                    (4, false, ""),
                    (3, false, ""),
                    (2, false, ""),
                ],
            ),
            (
                "only held archives: all stay",
                vec![day(1, true), day(2, true)],
                true,
                vec![
                    (2, true, "held: failed its shrink guard"),
                    (1, true, "held: failed its shrink guard"),
                ],
            ),
        ];
        for (what, archives, may_prune, expected) in cases {
            let got = verdicts(&prune(archives, &last2, tz, may_prune));
            let expected: Vec<(u32, bool, String)> = expected
                .into_iter()
                .map(|(d, k, r)| (d, k, r.to_string()))
                .collect();
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn the_shrink_guard_holds_a_fall_to_under_its_share_of_rows_or_bytes() {
        let e = |rows, bytes| Extent { rows, bytes };
        let base = e(1000, 4 << 20);
        let cases = [
            (e(1000, 4 << 20), 0.5, None),
            (e(500, 2 << 20), 0.5, None),
            (
                e(499, 4 << 20),
                0.5,
                Some("its rows fell from 1000 to 499 (49.9%)"),
            ),
            (
                e(100, 4 << 20),
                0.5,
                Some("its rows fell from 1000 to 100 (10.0%)"),
            ),
            (
                e(1000, 1 << 20),
                0.5,
                Some("its size fell from 4 MiB to 1 MiB (25.0%)"),
            ),
            (
                e(0, 0),
                0.5,
                Some("its rows fell from 1000 to 0 (0.0%) and its size"),
            ),
            (e(100, 4 << 20), 0.05, None),
            (e(2000, 8 << 20), 1.0, None),
            (e(999, 4 << 20), 1.0, Some("its rows fell from 1000 to 999")),
        ];
        for (new, share, expected) in cases {
            let got = shrunk(base, new, share);
            match expected {
                None => assert_eq!(got, None, "{new:?} at {share}"),
                Some(text) => {
                    let got = got.unwrap_or_default();
                    assert!(got.starts_with(text), "{new:?} at {share}: {got}");
                    assert!(got.contains("under the shrink guard's"), "{got}");
                }
            }
        }
        // An empty baseline holds nothing: there is nothing to lose.
        assert_eq!(shrunk(e(0, 0), e(0, 0), 0.5), None);
        // What we removed ourselves is allowed for; an accident on top of it is still caught.
        use crate::ledger::Removed;
        let purged = |rows, vacuumed| Removed { rows, vacuumed };
        let cases = [
            (purged(1800, false), e(200, 4_000), None::<&str>),
            (purged(1800, true), e(200, 400), None),
            (
                purged(1000, false),
                e(200, 4_000),
                Some("rows fell from 1000 to 200"),
            ),
            (purged(0, false), e(2000, 400), Some("size fell from")),
        ];
        for (own, new, why) in cases {
            let got = shrunk(expected_after(e(2000, 4_000), own), new, 0.5);
            match why {
                None => assert_eq!(got, None, "{own:?} {new:?}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{own:?}: {got:?}"
                ),
            }
        }
    }
}
