//! Running a job on each database its `databases:` selection names now, one after the other.

use super::contract::{Context, Report};
use crate::databases::{GATEWAY, Selection};
use crate::gateway::Gateway;
use crate::stop::Stopped;

/// Runs `one` on every database a job's `selection` names now, one after the other, never two
/// at once: the gateway's and each current match of the declared ones. A declared database is
/// handed to `one` as a view of the gateway with its own file, so it is opened, locked and
/// bounded by exactly the rules the gateway's is (its busy timeout, its lock bounds); `one`
/// also gets its label (`None` for the gateway's own, which keeps its v1 alert keys). With the
/// gateway's alone this is `one` on it, unchanged. A database that fails does not stop the
/// others; the run fails at the end, naming each that failed. A stop request stops at once.
pub fn for_each(
    selection: &Selection,
    ctx: &mut Context<'_>,
    mut one: impl FnMut(&mut Context<'_>, &Gateway, Option<&str>) -> anyhow::Result<Report>,
) -> anyhow::Result<Report> {
    let gateway = ctx.gateway;
    if selection.declared.is_empty() {
        return one(ctx, gateway, None);
    }
    let mut views: Vec<(Option<String>, Gateway)> = Vec::new();
    if selection.has_gateway() {
        views.push((None, gateway.clone()));
    }
    for declared in &selection.declared {
        for found in declared.expand()? {
            views.push((
                Some(found.label()),
                Gateway {
                    database: found.path,
                    ..gateway.clone()
                },
            ));
        }
    }
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut figures: Vec<(String, f64)> = Vec::new();
    let mut plan = Vec::new();
    for (label, view) in &views {
        ctx.checkpoint()?;
        let name = label.as_deref().unwrap_or(GATEWAY);
        match one(ctx, view, label.as_deref()) {
            Ok(report) => {
                plan.extend(report.plan.iter().map(|l| format!("{name}: {l}")));
                for (k, v) in report.figures {
                    match figures.iter_mut().find(|(n, _)| *n == k) {
                        Some((_, sum)) => *sum += v,
                        None => figures.push((k, v)),
                    }
                }
                passed.push(format!("{name}: {}", report.summary));
            }
            Err(e) if e.is::<Stopped>() => return Err(e),
            Err(e) => failed.push(format!("{name}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} databases failed:\n- {}",
            failed.len(),
            views.len(),
            failed.join("\n- ")
        );
    }
    // Each database's summary for a few; a count for many (the figures hold the sums).
    const LISTED: usize = 5;
    let summary = if passed.len() <= LISTED {
        format!("{} databases: {}", views.len(), passed.join("; "))
    } else {
        format!(
            "{} databases, each passed; {}; ...",
            views.len(),
            passed[..LISTED].join("; ")
        )
    };
    let mut report = Report::new(summary);
    report.plan = plan;
    report.figures = figures;
    Ok(report.figure("databases", views.len() as f64))
}
