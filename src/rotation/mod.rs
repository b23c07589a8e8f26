//! Log rotation for the `logrotate` job: logrotate's semantics with readable names.
//!
//! The work is split so that the decision can be tested without a disk or a clock:
//!
//! 1. [`RotateConfig::validate`] turns the YAML block into a [`RotateSpec`].
//! 2. [`survey`] expands the patterns and gathers [`FileFacts`] (sizes, links, rotated copies).
//! 3. [`plan()`] decides, as a pure function of the facts, the saved state, `now` and the
//!    time zone, what to do with each file; the [`Plan`] prints as a dry-run.
//! 4. [`execute`] carries the plan out and returns the state entries to save.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use caretaker::rotation::*;
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

mod config;
mod execute;
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
