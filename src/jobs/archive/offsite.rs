//! An archive job's remote copies: queueing its files for `copy_to`, and `keep_local`.
//!
//! Every run queues each of the job's archive files in `to` that a remote of `copy_to` has no
//! row for, so a file written by a run that died before queueing it is queued by the next.
//! `keep_local` then deletes local files older than it whose copies are complete and checked
//! on every remote of `copy_to`; a file still waiting is kept, whatever its age.

use std::fs;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Format, Spec};
use crate::jobs::{Context, Report};
use crate::remote::queue;

/// This job's archive files in `to`: `<job>-….jsonl.gz` or `.csv.gz`, never a hidden or
/// temporary file.
fn files(spec: &Spec, job: &str) -> anyhow::Result<Vec<(PathBuf, fs::Metadata)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(&spec.to) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", spec.to.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", spec.to.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("{job}-"))
            && [Format::Jsonl, Format::Csv]
                .iter()
                .any(|f| name.ends_with(&format!(".{}", f.extension())));
        let meta = entry.metadata()?;
        if ours && meta.is_file() {
            out.push((entry.path(), meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub fn copy_and_expire(spec: &Spec, ctx: &Context<'_>, report: &mut Report) -> anyhow::Result<()> {
    if spec.copy_to.is_empty() {
        return Ok(());
    }
    let mut queued = 0;
    let mut expired = 0;
    for (path, meta) in files(spec, ctx.job)? {
        for remote in &spec.copy_to {
            if !queue::known(ctx.state, &path, remote)? {
                queue::enqueue_copies(ctx.state, ctx.remotes, std::slice::from_ref(remote), ctx.job, &path, ctx.now)?;
                queued += 1;
            }
        }
        let Some(keep) = spec.keep_local else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age > keep && queue::uploaded_everywhere(ctx.state, &path, &spec.copy_to)? {
            fs::remove_file(&path)
                .with_context(|| format!("deleting {} (past keep_local, copied)", path.display()))?;
            tracing::info!(job = ctx.job, path = %path.display(), "deleted: older than keep_local and copied to every remote");
            expired += 1;
        }
    }
    if expired > 0 {
        crate::fsx::sync_dir(&spec.to)?;
    }
    report.summary.push_str(&format!(
        "; queued {queued} copies for {}; deleted {expired} local files past keep_local",
        spec.copy_to.join(", ")
    ));
    report.figures.push(("copies_queued".into(), queued as f64));
    report.figures.push(("local_files_expired".into(), expired as f64));
    Ok(())
}
