//! The `verify` job: periodic test restores of a backup job's archives.
//!
//! A test restore does what `caretaker restore` does short of replacing anything: it reads
//! the whole archive and writes the database to a scratch file beside the archives through
//! [`archive::extract`] (gzip CRC, tar, SHA-256 of every entry, SQLite header, page and row
//! counts against the manifest), with `integrity_check` and `foreign_key_check`. It never opens the gateway's database.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::jobs::contract::{BACKUPS, Context, Contract, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::backup::archive::{self, CheckLevel};
use crate::backup::{self as backups, ArchiveName, Scratch};
use crate::checks::Checks;
use crate::units;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    Latest,
    All,
    Rotate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    backups_of: Option<String>,
    which: Option<Which>,
    from: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub backups_of: String,
    pub which: Which,
    /// The directory of the backup job `backups_of` names: taken once the whole file is
    /// validated ([`super::resolve`]), `None` when it names no backup job (`check` says so).
    pub backup_to: Option<PathBuf>,
    /// Test-restore the copies on this remote instead of the local archives.
    pub from: Option<String>,
}

impl Contract for Spec {
    /// A test restore reads the backup job's archives, never the gateway's database.
    fn touches_gateway(&self) -> bool {
        false
    }

    fn needs_gateway(&self) -> Option<&'static str> {
        None
    }

    fn depends_on(&self) -> Vec<(&'static str, &str)> {
        vec![("verify.backups_of", self.backups_of.as_str())]
    }

    fn remotes_named(&self) -> Vec<(String, &str)> {
        self.from
            .iter()
            .map(|name| ("from".to_string(), name.as_str()))
            .collect()
    }

    /// Takes the directory of the backup job `backups_of` names, the one it writes its
    /// backups into (`check` has said whether it names a backup job).
    fn resolve(&mut self, jobs: &[(&str, &dyn Contract)]) {
        self.backup_to = jobs
            .iter()
            .find(|(name, _)| *name == self.backups_of)
            .and_then(|(_, backup)| {
                backup
                    .writes()
                    .into_iter()
                    .find_map(|(dir, holds)| (holds == BACKUPS).then_some(dir))
            });
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let Some(backups_of) = raw.backups_of else {
        checks.error(
            &format!("{path}.backups_of"),
            "missing key `backups_of`; accepted: the name of a backup job",
        );
        return None;
    };
    Some(Spec {
        backups_of,
        which: raw.which.unwrap_or(Which::Latest),
        backup_to: None,
        from: raw.from,
    })
}

/// Which archives a run tests: `archives` are the backup job's, oldest first; `cursor` is the
/// file name `rotate` tested last.
pub fn choose(which: Which, archives: &[ArchiveName], cursor: Option<&str>) -> Vec<ArchiveName> {
    match which {
        Which::Latest => archives.last().cloned().into_iter().collect(),
        Which::All => archives.to_vec(),
        Which::Rotate => {
            // The next one after the cursor in time, wrapping to the oldest: over N runs every
            // archive is tested once, and new archives join the round as they appear.
            let after = cursor.and_then(|c| archives.iter().find(|a| a.file_name().as_str() > c));
            after.or(archives.first()).cloned().into_iter().collect()
        }
    }
}

fn cursor_ns(job: &str) -> String {
    format!("verify:{job}")
}

/// What one test restore found.
struct Tested {
    rows: Option<u64>,
    bytes: u64,
    foreign_key_violations: u64,
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    if let Some(remote) = &spec.from {
        return run_from_remote(spec, remote, ctx);
    }
    let Some(dir) = &spec.backup_to else {
        bail!(
            "`backups_of: {}` does not name a backup job; accepted: the name of a job with a `backup` block",
            spec.backups_of
        );
    };
    let archives: Vec<ArchiveName> = backups::list(dir, &spec.backups_of)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if archives.is_empty() {
        bail!(
            "there are no archives of the backup job `{}` in {} to verify; run `caretaker run-job {}` first",
            spec.backups_of,
            dir.display(),
            spec.backups_of
        );
    }
    let cursor: Option<String> = ctx.state.get(&cursor_ns(ctx.job), "last")?;
    let chosen = choose(spec.which, &archives, cursor.as_deref());
    if ctx.dry_run {
        let mut report = Report::new(format!(
            "would test-restore {} of {} archives",
            chosen.len(),
            archives.len()
        ));
        report.plan = chosen
            .iter()
            .map(|a| format!("test-restore {}", dir.join(a.file_name()).display()))
            .collect();
        return Ok(report);
    }
    for path in backups::sweep_scratch(dir, &spec.backups_of, Scratch::Verify)? {
        tracing::info!(job = ctx.job, path = %path.display(), "removed a temporary file left by an interrupted run");
    }

    let started = Instant::now();
    let mut passed = Vec::new();
    let mut failures = Vec::new();
    let mut bytes = 0;
    let mut violations = 0;
    for name in &chosen {
        ctx.checkpoint()?;
        let path = dir.join(name.file_name());
        match test_restore(&path, name, dir) {
            Ok(t) => {
                bytes += t.bytes;
                violations += t.foreign_key_violations;
                passed.push(format!(
                    "{} ({} rows)",
                    name,
                    t.rows.map_or("no".into(), |r| r.to_string())
                ));
            }
            Err(e) => failures.push(format!("{}: {e:#}", path.display())),
        }
        if spec.which == Which::Rotate {
            // Move on even after a failure, so one bad archive does not hide the others.
            ctx.state
                .put(&cursor_ns(ctx.job), "last", &name.file_name())?;
        }
    }
    let alert_key = format!("backup-corrupt:{}", ctx.job);
    let what = format!("backups of {} fail their test restore", spec.backups_of);
    if !failures.is_empty() {
        ctx.alerts.push(AlertEvent::Raise(Alert {
            key: alert_key,
            severity: Severity::Critical,
            job: Some(ctx.job.to_string()),
            what,
            body: format!(
                "The test restore of {} of {} archives of `{}` failed:\n\n{}\n\nThese archives cannot be restored. Check the disk holding {}, keep the next backups coming, and move the bad archives away once investigated.",
                failures.len(),
                chosen.len(),
                spec.backups_of,
                failures.join("\n"),
                dir.display()
            ),
        }));
        bail!(
            "{} of {} archives failed their test restore: {}",
            failures.len(),
            chosen.len(),
            failures.join("; ")
        );
    }
    ctx.alerts.push(AlertEvent::Resolve {
        key: alert_key,
        job: Some(ctx.job.to_string()),
        what,
    });
    Ok(Report::new(format!("test-restored {}", passed.join(", ")))
        .figure("archives_verified", passed.len() as f64)
        .figure("database_bytes", bytes as f64)
        .figure("foreign_key_violations", violations as f64)
        .figure("verify_ms", started.elapsed().as_secs_f64() * 1000.0))
}

/// A run with `from`: lists the backup job's archives on the remote, downloads the chosen ones
/// into scratch files in `state_dir` and test-restores each as a local one.
fn run_from_remote(spec: &Spec, remote: &str, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let remote = ctx
        .remotes
        .get(remote)
        .with_context(|| format!("remote `{remote}` is not in the jobs file"))?;
    let client = crate::remote::client::Client::new(remote)?;
    let prefix = remote.job_prefix(&spec.backups_of);
    let mut archives: Vec<ArchiveName> = client
        .list(&prefix)?
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix))
        .filter_map(|name| ArchiveName::parse(&spec.backups_of, name))
        .collect();
    archives.sort_by_key(|a| a.time);
    if archives.is_empty() {
        bail!(
            "there are no archives of the backup job `{}` on remote `{}` under s3://{}/{prefix} to verify",
            spec.backups_of,
            remote.name,
            remote.bucket
        );
    }
    let cursor: Option<String> = ctx.state.get(&cursor_ns(ctx.job), "last")?;
    let chosen = choose(spec.which, &archives, cursor.as_deref());
    if ctx.dry_run {
        let mut report = Report::new(format!(
            "would download and test-restore {} of {} archives on remote `{}`",
            chosen.len(),
            archives.len(),
            remote.name
        ));
        report.plan = chosen
            .iter()
            .map(|a| format!("test-restore {}", remote.url_of(&format!("{prefix}{}", a.file_name()))))
            .collect();
        return Ok(report);
    }
    let dir = ctx.state_dir;
    let started = Instant::now();
    let mut passed = Vec::new();
    let mut bytes = 0;
    let mut violations = 0;
    for name in &chosen {
        ctx.checkpoint()?;
        let key = format!("{prefix}{}", name.file_name());
        let dest = dir.join(name.file_name());
        for path in crate::fsx::sweep_dead_temps(&dest)? {
            tracing::info!(job = ctx.job, path = %path.display(), "removed a temporary file left by an interrupted run");
        }
        let mut download = crate::fsx::PendingFile::create(&dest)?;
        let temp = download.temp_path().to_path_buf();
        client.download(&key, download.file(), &temp)?;
        let tested = test_restore(&temp, name, dir)
            .with_context(|| format!("the test restore of {} failed", remote.url_of(&key)));
        drop(download);
        if spec.which == Which::Rotate {
            ctx.state.put(&cursor_ns(ctx.job), "last", &name.file_name())?;
        }
        let t = tested?;
        bytes += t.bytes;
        violations += t.foreign_key_violations;
        passed.push(format!(
            "{} ({} rows)",
            remote.url_of(&key),
            t.rows.map_or("no".into(), |r| r.to_string())
        ));
    }
    Ok(Report::new(format!("test-restored {}", passed.join(", ")))
        .figure("archives_verified", passed.len() as f64)
        .figure("database_bytes", bytes as f64)
        .figure("foreign_key_violations", violations as f64)
        .figure("verify_ms", started.elapsed().as_secs_f64() * 1000.0))
}

/// Extracts `archive`'s database into a scratch file in `dir` and checks it thoroughly.
fn test_restore(archive: &Path, name: &ArchiveName, dir: &Path) -> anyhow::Result<Tested> {
    let manifest = archive::peek_manifest(archive)?;
    if let Some(pg) = &manifest.postgres {
        return test_dump(archive, name, dir, &manifest, &pg.dump_tool);
    }
    // Every database of the archive is extracted (and its included files, for one of several).
    let needed = manifest.size
        + manifest.databases.iter().map(|d| d.size).sum::<u64>()
        + if manifest.databases.is_empty() {
            0
        } else {
            manifest.files.iter().map(|f| f.size).sum::<u64>()
        };
    backups::ensure_free(
        dir,
        needed,
        &format!("a test restore of {name} ({})", units::bytes(needed)),
    )?;
    let scratch = name.scratch_path(dir, Scratch::Verify);
    if !manifest.databases.is_empty() {
        // Every database of the archive, extracted in one pass into a scratch directory.
        let result =
            crate::backup::restore_dir::extract_into(archive, &scratch, CheckLevel::Full).map(|r| {
                Tested {
                    rows: r.manifest.row_count,
                    bytes: r.bytes,
                    foreign_key_violations: r.foreign_key_violations,
                }
            });
        let _ = fs::remove_dir_all(&scratch);
        return result;
    }
    let result = (|| {
        let mut file = create_scratch(&scratch)?;
        let extracted = archive::extract(archive, &mut file, &scratch, CheckLevel::Full)?;
        Ok(Tested {
            rows: extracted.rows,
            bytes: extracted.manifest.size,
            foreign_key_violations: extracted.check.foreign_key_violations,
        })
    })();
    for suffix in crate::sqlite::WITH_COMPANIONS {
        let _ = fs::remove_file(crate::sqlite::companion(&scratch, suffix));
    }
    result
}

/// A new private scratch file for a test restore.
fn create_scratch(path: &Path) -> anyhow::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the scratch file {}", path.display()))
}

/// A PostgreSQL backup's test: every checksum of the archive, and the dump's table of contents
/// read back by `pg_restore --list` (the restore into a scratch database is the backup's own
/// `verify: full`; this job never connects to the gateway's server).
fn test_dump(
    archive: &Path,
    name: &ArchiveName,
    dir: &Path,
    manifest: &archive::Manifest,
    dump_tool: &str,
) -> anyhow::Result<Tested> {
    backups::ensure_free(
        dir,
        manifest.size,
        &format!("a test read of {name} ({})", units::bytes(manifest.size)),
    )?;
    let (pg_restore, _) = crate::backup::pg_dump::restore_tool_for(dump_tool)?;
    let scratch = name.scratch_path(dir, Scratch::Verify);
    let result = (|| {
        let mut file = create_scratch(&scratch)?;
        archive::read(archive, &mut file)?;
        crate::backup::pg_dump::check_listing(&pg_restore, &scratch, &manifest.table)?;
        Ok(Tested {
            rows: manifest.row_count,
            bytes: manifest.size,
            foreign_key_violations: 0,
        })
    })();
    let _ = fs::remove_file(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Format;
    use chrono::{TimeZone, Utc};

    #[test]
    fn chooses_latest_all_and_rotates_through_every_archive() {
        let names: Vec<ArchiveName> = (1..=3)
            .map(|d| {
                ArchiveName::new(
                    "b",
                    Utc.with_ymd_and_hms(2026, 5, d, 2, 0, 0).unwrap(),
                    Format::TarGz,
                )
            })
            .collect();
        let files = |v: Vec<ArchiveName>| v.iter().map(ArchiveName::file_name).collect::<Vec<_>>();
        assert_eq!(
            files(choose(Which::Latest, &names, None)),
            ["b-20260503T020000Z.tar.gz"]
        );
        assert_eq!(choose(Which::All, &names, None).len(), 3);
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let next = choose(Which::Rotate, &names, cursor.as_deref())
                .pop()
                .unwrap()
                .file_name();
            seen.push(next.clone());
            cursor = Some(next);
        }
        assert_eq!(
            seen,
            [
                "b-20260501T020000Z.tar.gz",
                "b-20260502T020000Z.tar.gz",
                "b-20260503T020000Z.tar.gz",
                "b-20260501T020000Z.tar.gz"
            ]
        );
        // A cursor naming an archive pruned since then still moves on to the next newer one.
        let next = choose(Which::Rotate, &names, Some("b-20260501T120000Z.tar.gz"));
        assert_eq!(files(next), ["b-20260502T020000Z.tar.gz"]);
        assert!(choose(Which::Latest, &[], None).is_empty());
    }
}
