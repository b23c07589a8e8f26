//! What every job kind is to the rest of the program: the [`Contract`] its spec implements,
//! the [`Context`] a run gets and the [`Report`] it gives back.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::alerts::AlertEvent;
use crate::gateway::{Gateway, Preset};
use crate::state::State;
use crate::stop::{Stop, Stopped};
use crate::writelock::Bound;

/// What a directory of [`Contract::writes`] holds when it holds backups: verify finds the
/// directory of the backup job it names by it.
pub const BACKUPS: &str = "backups";

/// How the locks of an operation are judged against a bound ([`Contract::operation_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// By the kind's bound, as its other locks.
    ByTheKind,
    /// By a bound of the operation's own.
    By(Bound),
    /// Not at all: the operator consented to a lock of any length, and the kind reports it.
    Not,
}

/// What the rest of the program may ask of a kind's validated spec, so that no code outside a
/// kind matches on another kind. The defaults say "none" for a kind that has nothing to tell.
pub trait Contract {
    /// Jobs that open the gateway's database run one at a time, across the daemon and
    /// `run-job`, so that their locks never add up in front of the gateway.
    fn touches_gateway(&self) -> bool {
        true
    }

    /// Other jobs this one refers to by name: (the key below the job that names it, the name).
    /// Each must be a backup job; `check` says so at the key.
    fn depends_on(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// Takes what the spec needs from the jobs it [`depends_on`](Contract::depends_on), once
    /// the whole file is validated, so that a run never looks another job up: `jobs` are
    /// every job's name and contract.
    fn resolve(&mut self, _jobs: &[(&str, &dyn Contract)]) {}

    /// The job's `databases: [...]`, for kinds that take one ([`crate::databases::Selection`]).
    fn selection_mut(&mut self) -> Option<&mut crate::databases::Selection> {
        None
    }

    /// What of the job reads the gateway's database, when the jobs file declares no `gateway:`:
    /// the key below the kind block that needs it ("" for the kind itself), or `None` when the
    /// job runs without one (SPEC: backup, integrity, maintenance, logrotate, health and verify
    /// need no request table). A new kind needs the gateway until it says otherwise.
    fn needs_gateway(&self) -> Option<&'static str> {
        Some("")
    }

    /// Problems that only show against the validated gateway (a condition its schema cannot
    /// answer): `(key path below the job's kind block, message)`, reported by `check`.
    fn gateway_problems(&self, _gateway: &Gateway) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The directories the kind writes what it keeps into, with what they hold ("backups"):
    /// health watches the free space of their filesystems.
    fn writes(&self) -> Vec<(PathBuf, &'static str)> {
        Vec::new()
    }

    /// Files whose change runs the job: the daemon watches them.
    fn watches(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// How the locks of an operation the kind names apart ([`crate::writelock::operation`])
    /// are judged, where not by the kind's bound ([`crate::writelock::bound`]): a VACUUM the
    /// operator consented to is held to its own `vacuum_max_lock`, not to the 250 ms of
    /// maintenance's statements. `preset` is the gateway's, whose busy timeout a bound may
    /// come from.
    fn operation_bound(&self, _operation: &str, _preset: Preset) -> Judged {
        Judged::ByTheKind
    }

    /// Warnings that `check` and the daemon's start give once about this job's settings
    /// against the gateway's `preset`; `path` is the key path of the job's kind block.
    fn advice(&self, _path: &str, _preset: Preset) -> Vec<String> {
        Vec::new()
    }

    /// The remotes the job names (`copy_to`, `verify.from`): (the key below the kind block,
    /// the name). Each must be under `remotes:`; `check` says so at the key.
    fn remotes_named(&self) -> Vec<(String, &str)> {
        Vec::new()
    }

    /// The keep policy of the job's copies on its remotes, for a kind whose remote copies are
    /// pruned (backup).
    fn remote_keep(&self) -> Option<&crate::jobs::backup::retention::Policy> {
        None
    }
}

/// Everything a job run gets: its environment, not the whole jobs file, so that no kind reads
/// another kind's settings.
pub struct Context<'a> {
    pub job: &'a str,
    /// The gateway database and how to open it.
    pub gateway: &'a Gateway,
    /// The zone the jobs file's calendar (periods, retention buckets, rotation) is read in.
    pub timezone: Tz,
    /// Where caretaker keeps its own state: scratch copies go here.
    pub state_dir: &'a Path,
    /// The jobs file's remotes: a job queues its copies for those its `copy_to` names.
    pub remotes: &'a crate::remote::Remotes,
    /// The directories every job writes ([`written_dirs`]), each with what it holds, for
    /// health's free-space condition.
    pub written: Vec<(PathBuf, String)>,
    pub state: &'a State,
    pub now: DateTime<Utc>,
    pub dry_run: bool,
    pub stop: Stop,
    /// Alerts raised or resolved by this run; the runner puts them in the outbox.
    pub alerts: Vec<AlertEvent>,
}

impl Context<'_> {
    /// A safe point: returns an error when the job must stop here.
    pub fn checkpoint(&self) -> Result<(), Stopped> {
        self.stop.check()
    }
}

/// What a job run gives back: one summary line, its figures, and with `--dry-run` its plan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub summary: String,
    pub figures: Vec<(String, f64)>,
    pub plan: Vec<String>,
}

impl Report {
    pub fn new(summary: impl Into<String>) -> Self {
        Report {
            summary: summary.into(),
            ..Report::default()
        }
    }

    pub fn figure(mut self, name: &str, value: f64) -> Self {
        self.figures.push((name.to_string(), value));
        self
    }

    /// The report with `plan`'s lines as its `--dry-run` plan: a kind's plan is a type whose
    /// `Display` is that output, one line each.
    pub fn with_plan(mut self, plan: &impl fmt::Display) -> Self {
        self.plan = plan.to_string().lines().map(str::to_string).collect();
        self
    }

    /// The summary and its figures on one line, the figures rounded for a person
    /// ([`crate::units::number`]); the state and the metrics keep them whole.
    pub fn summary_line(&self) -> String {
        let mut line = self.summary.clone();
        if !self.figures.is_empty() {
            let figures: Vec<String> = self
                .figures
                .iter()
                .map(|(k, v)| format!("{k}={}", crate::units::number(*v)))
                .collect();
            line.push_str(&format!(" ({})", figures.join(" ")));
        }
        line
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.plan {
            writeln!(f, "{line}")?;
        }
        f.write_str(&self.summary_line())
    }
}
