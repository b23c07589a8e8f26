//! A logrotate job's remote copies: each rotated copy in its final form, queued for `copy_to`.
//!
//! Rotated copies change names at every rotation (`.1` becomes `.2`) and `rotate` and
//! `max_age` delete them, so the queue never points at one: the finished copy (the `.gz` once
//! compressed, else the `.1`) is hard-linked under a stable, dated name into the hidden
//! directory `.caretaker-upload/` beside it, and that link is what waits and is uploaded, then
//! removed. Renames and deletions of the rotated copies cannot touch what the remote still
//! needs, and the link costs no space.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::config::RotateSpec as Spec;
use super::execute::Outcome;
use super::plan::{Action, Plan, Step};
use crate::jobs::Context;
use crate::remote::queue;

/// The directory, beside the rotated copies, of the links that wait for their upload.
pub const SPOOL_DIR: &str = ".caretaker-upload";

/// The copies of this run that are final: compressed ones when `compress`, else the new `.1`.
fn finished(spec: &Spec, plan: &Plan, outcome: &Outcome) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for file in &plan.files {
        let Action::Rotate(_) = file.action else {
            continue;
        };
        let ok = outcome
            .files
            .iter()
            .any(|o| o.path == file.path && o.rotated && o.errors.is_empty());
        if !ok {
            continue;
        }
        for step in file.steps.iter().chain(&file.after_notify) {
            match step {
                Step::Compress { to, .. } if spec.compress => out.push((file.path.clone(), to.clone())),
                Step::Move { to, .. } if !spec.compress => out.push((file.path.clone(), to.clone())),
                _ => {}
            }
        }
    }
    out
}

/// A name for `copy` in the spool that no other link has: `<log>-<UTC time>[-n][.gz]`.
fn spool_path(dir: &Path, log: &Path, copy: &Path, now: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let log_name = log.file_name().unwrap_or_default().to_string_lossy();
    let ext = if copy.extension().is_some_and(|e| e == "gz") { ".gz" } else { "" };
    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let mut path = dir.join(format!("{log_name}-{stamp}{ext}"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{log_name}-{stamp}-{n}{ext}"));
        n += 1;
    }
    path
}

pub fn queue_copies(spec: &Spec, ctx: &Context<'_>, plan: &Plan, outcome: &Outcome) -> anyhow::Result<usize> {
    if spec.copy_to.is_empty() {
        return Ok(0);
    }
    let mut queued = 0;
    for (log, copy) in finished(spec, plan, outcome) {
        if !copy.is_file() {
            continue;
        }
        let dir = copy.parent().unwrap_or(Path::new(".")).join(SPOOL_DIR);
        crate::fsx::private_dir(&dir)?;
        let link = spool_path(&dir, &log, &copy, ctx.now);
        std::fs::hard_link(&copy, &link)
            .with_context(|| format!("linking {} to {} for its upload", copy.display(), link.display()))?;
        crate::fsx::sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        let name = link.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for remote in &spec.copy_to {
            let target = ctx
                .remotes
                .get(remote)
                .with_context(|| format!("remote `{remote}` is not in the jobs file"))?;
            queue::enqueue_as(ctx.state, remote, ctx.job, &link, &target.key(ctx.job, &name), ctx.now, true)?;
            queued += 1;
        }
    }
    Ok(queued)
}
