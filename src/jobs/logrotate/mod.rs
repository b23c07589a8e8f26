//! The `logrotate` job: logrotate's semantics over the gateway's log files.
//!
//! The engine is split so that the decision can be tested without a disk or a clock:
//!
//! 1. [`RotateConfig::validate`] turns the YAML block into a [`RotateSpec`].
//! 2. [`survey`] expands the patterns and gathers [`FileFacts`] (sizes, links, rotated copies).
//! 3. [`plan()`] decides, as a pure function of the facts, the saved state, `now` and the
//!    time zone, what to do with each file; the [`Plan`] prints as a dry-run.
//! 4. [`execute`] carries the plan out and returns the state entries to save.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use caretaker::jobs::logrotate::*;
//! # fn run(config: &RotateConfig, saved: &mut BTreeMap<std::path::PathBuf, FileState>) {
//! let spec = config.validate(std::path::Path::new("/etc/caretaker")).expect("valid block");
//! let (facts, survey_errors) = survey(&spec);
//! let plan = plan(&spec, &facts, saved, chrono::Utc::now(), chrono_tz::Europe::Berlin);
//! print!("{plan}");
//! let outcome = execute(&plan);
//! saved.extend(outcome.state.clone());
//! # let _ = survey_errors;
//! # }
//! ```
//!
//! This module ties the engine to a job run: the per-file state kept in the state database,
//! `--dry-run`, the report and its figures, and the rule that one file's failure fails the run
//! only after every other file was handled and the state of the files that did rotate was saved.

mod config;
mod execute;
mod offsite;
mod plan;
mod survey;

pub use config::{
    ConfigError, Method, Notify, NotifyConfig, NotifySignal, Period, RotateConfig, RotateSpec,
};
pub use execute::{FileOutcome, Outcome, execute};
pub use plan::{
    Action, DeleteWhy, FilePlan, FileState, Plan, SkipReason, Step, Trigger, period_due, plan,
};
pub use survey::{CopySuffix, FileError, FileFacts, RotatedCopy, survey};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::jobs::contract::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::checks::Checks;

pub type Raw = RotateConfig;
pub type Spec = RotateSpec;

/// Namespace of the per-file state in the state database; the key is the job's name.
const STATE_NS: &str = "logrotate";

/// The per-file state of one job: when each log was last rotated (or first seen).
type Saved = BTreeMap<PathBuf, FileState>;

/// Logrotate works on log files only: it never opens the gateway's database.
impl crate::jobs::contract::Contract for Spec {
    fn touches_gateway(&self) -> bool {
        false
    }

    fn remotes_named(&self) -> Vec<(String, &str)> {
        crate::remote::named_in("copy_to", &self.copy_to)
    }

    fn needs_gateway(&self) -> Option<&'static str> {
        None
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    // The state is keyed by each log's path: an absolute one keeps the key the same whether
    // the jobs file was named `jobs.yaml` or by its full path, from whatever directory.
    let given = match checks.base_dir() {
        dir if dir.as_os_str().is_empty() => PathBuf::from("."),
        dir => dir.to_owned(),
    };
    let base_dir = std::path::absolute(&given).unwrap_or_else(|e| {
        checks.error(
            path,
            format!(
                "cannot make {} absolute to resolve `files` ({e}); name the jobs file by its absolute path",
                given.display()
            ),
        );
        given.clone()
    });
    match raw.validate(&base_dir) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            for (key, message) in errors {
                checks.error(&format!("{path}.{key}"), message);
            }
            None
        }
    }
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let (mut saved, state_note) = load_state(ctx)?;
    let (facts, survey_errors) = survey(spec);
    let plan = plan(spec, &facts, &saved, ctx.now, ctx.timezone);
    let survey_errors: Vec<String> = survey_errors.iter().map(ToString::to_string).collect();

    if ctx.dry_run {
        let mut lines: Vec<String> = plan.to_string().lines().map(str::to_owned).collect();
        lines.extend(survey_errors.iter().map(|e| format!("error: {e}")));
        lines.extend(state_note.clone());
        let mut report = Report::new(dry_run_summary(&plan, survey_errors.len()));
        report.plan = lines;
        return Ok(report);
    }

    // The last safe point: once moves have started, the run finishes them and saves the state.
    ctx.checkpoint()?;
    let outcome = execute(&plan);
    saved.extend(outcome.state.clone());
    let saving = ctx.state.put(STATE_NS, ctx.job, &saved).with_context(|| {
        format!(
            "saving which logs were rotated to {}; the next run may rotate them again",
            ctx.state.path().display()
        )
    });

    let figures = Figures::of(&plan, &outcome, &facts);
    let mut errors = survey_errors;
    if let Err(e) = offsite::queue_copies(spec, ctx, &plan, &outcome) {
        errors.push(format!("queueing the rotated copies for upload: {e:#}"));
    }
    if let Err(e) = saving {
        errors.push(format!("{e:#}"));
    }
    errors.extend(outcome.files.iter().flat_map(|f| f.errors.iter().cloned()));
    if let Some(Err(e)) = &outcome.notify {
        errors.push(format!("notifying the writer: {e}"));
    }
    let stopped_key = format!("writer-stopped:{}", ctx.job);
    if let Some(what) = &outcome.writer_stopped {
        // The gateway is down: this is not one more failed rotation.
        ctx.alerts.push(AlertEvent::Raise(Alert {
            key: stopped_key,
            severity: Severity::Critical,
            job: Some(ctx.job.to_owned()),
            what: "the notify signal stopped the log writer".into(),
            body: format!(
                "The logrotate job `{}` rotated its logs and signalled the writer, and the signal stopped it:\n\n{what}\n\nThe process is not running now. Start it again, then change `notify` (or `method: copytruncate`) as docs/jobs/logrotate.md describes for your gateway.",
                ctx.job
            ),
        }));
    } else if spec.notify.is_none() || matches!(outcome.notify, Some(Ok(()))) {
        // The writer took our signal, or the job no longer signals it.
        ctx.alerts.push(AlertEvent::Resolve {
            key: stopped_key,
            job: Some(ctx.job.to_owned()),
            what: "the notify signal stopped the log writer".into(),
        });
    }
    let mut summary = figures.summary();
    if outcome.writer_stopped.is_some() {
        summary.insert_str(0, "the notify signal stopped the log writer; ");
    }
    if let Some(note) = state_note {
        summary.push_str("; ");
        summary.push_str(&note);
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "{summary}; {} error(s):\n{}",
            errors.len(),
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(figures.report(summary))
}

/// The saved per-file state, or an empty map and a note when it does not parse.
///
/// A corrupted value costs at most one period's rotations (every log is then seen for
/// the first time and recorded), which is far better than a job that never runs again.
/// A state database that cannot be read at all is an error.
fn load_state(ctx: &Context<'_>) -> anyhow::Result<(Saved, Option<String>)> {
    match ctx.state.get::<Saved>(STATE_NS, ctx.job) {
        Ok(saved) => Ok((saved.unwrap_or_default(), None)),
        Err(e) if e.downcast_ref::<serde_json::Error>().is_some() => {
            tracing::warn!(
                job = ctx.job,
                error = %format!("{e:#}"),
                "the saved rotation state is corrupted; starting afresh, every log is recorded as first seen"
            );
            Ok((
                Saved::new(),
                Some(format!(
                    "warning: the saved rotation state was corrupted ({e:#}) and was replaced; logs not over max_size are recorded as first seen"
                )),
            ))
        }
        Err(e) => Err(e.context("reading the saved rotation state")),
    }
}

fn dry_run_summary(plan: &Plan, errors: usize) -> String {
    let count = |pred: fn(&Action) -> bool| plan.files.iter().filter(|f| pred(&f.action)).count();
    let rotate = count(|a| matches!(a, Action::Rotate(_)));
    let record = count(|a| matches!(a, Action::Record));
    let refused = count(|a| matches!(a, Action::Skip(reason) if reason.is_problem()));
    let errors = errors + refused;
    let mut summary = format!(
        "would rotate {rotate} of {} log file(s), record {record} first seen",
        plan.files.len()
    );
    if errors > 0 {
        summary.push_str(&format!(
            ", {errors} error(s): the run would fail after handling the other files"
        ));
    }
    summary
}

/// What a run did, in numbers.
#[derive(Debug, Default)]
struct Figures {
    matched: usize,
    rotated: u64,
    recorded: u64,
    /// Sizes of the rotated logs when surveyed.
    bytes: u64,
    deleted: u64,
    compressed: u64,
}

impl Figures {
    fn of(plan: &Plan, outcome: &Outcome, facts: &[FileFacts]) -> Self {
        let size_of = |path: &PathBuf| facts.iter().find(|f| &f.path == path).map_or(0, |f| f.size);
        let mut figures = Figures {
            matched: plan.files.len(),
            ..Figures::default()
        };
        for file in &outcome.files {
            if file.rotated {
                figures.rotated += 1;
                figures.bytes += size_of(&file.path);
            }
            if matches!(file.action, Action::Record) {
                figures.recorded += 1;
            }
            figures.deleted += u64::from(file.deleted);
            figures.compressed += u64::from(file.compressed);
        }
        figures
    }

    fn summary(&self) -> String {
        format!(
            "rotated {} of {} log file(s) ({}), recorded {} first seen, deleted {} old {}, compressed {}",
            self.rotated,
            self.matched,
            crate::units::bytes(self.bytes),
            self.recorded,
            self.deleted,
            if self.deleted == 1 { "copy" } else { "copies" },
            self.compressed
        )
    }

    fn report(&self, summary: String) -> Report {
        Report::new(summary)
            .figure("files_rotated", self.rotated as f64)
            .figure("bytes_rotated", self.bytes as f64)
            .figure("copies_deleted", self.deleted as f64)
            .figure("files_compressed", self.compressed as f64)
    }
}
