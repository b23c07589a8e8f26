//! Job kinds: one registry list, one contract, one module per kind; and what every job run
//! gets and gives.
//!
//! Adding a kind is one folder (or file) under `src/jobs/`, one line in the [`registry!`] list
//! below and one page under `docs/jobs/`: the list makes the module declaration, the `Kind`
//! enum, its names, the raw job block's field and the dispatch. Each module owns its raw config
//! block (serde, strict), its validated spec, a pure `plan`, the `run` that executes it and
//! its side of the [`Contract`], which is all that the rest of the program (health, the daemon,
//! `check`) asks of a kind.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::alerts::AlertEvent;
use crate::config::values::{self, OneOrMany, SignalName};
use crate::config::{Checks, Config};
use crate::gateway::{Gateway, Preset};
use crate::schedule::Schedule;
use crate::state::State;

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
    /// the whole file is validated, so that a run never looks another job up.
    fn resolve(&mut self, _jobs: &[Job]) {}

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

/// The registry: one line per kind, `field => module::Variant`, where `field` is the kind's
/// block key in the jobs file (and its name), `module` its folder under `src/jobs/` (with a
/// `Raw` block, a `Spec` implementing [`Contract`], `validate` and `run`), and `Variant` its
/// `Kind`.
macro_rules! registry {
    ($($field:ident => $module:ident :: $variant:ident,)+) => {
        $(pub mod $module;)+

        #[derive(Debug, Clone)]
        pub enum Kind {
            $($variant($module::Spec),)+
        }

        /// Every kind's name, in the registry's order.
        pub const NAMES: &[&str] = &[$(stringify!($field)),+];

        /// Every kind's (name, module), in the registry's order.
        #[cfg(test)]
        const MODULES: &[(&str, &str)] = &[$((stringify!($field), stringify!($module))),+];

        impl Kind {
            pub fn name(&self) -> &'static str {
                match self {
                    $(Kind::$variant(_) => stringify!($field),)+
                }
            }

            fn contract(&self) -> &dyn Contract {
                match self {
                    $(Kind::$variant(spec) => spec,)+
                }
            }

            fn contract_mut(&mut self) -> &mut dyn Contract {
                match self {
                    $(Kind::$variant(spec) => spec,)+
                }
            }

            pub fn run(&self, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
                match self {
                    $(Kind::$variant(spec) => $module::run(spec, ctx),)+
                }
            }
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawJob {
            schedule: Option<Schedule>,
            on_signal: Option<OneOrMany<SignalName>>,
            timeout: Option<values::Duration>,
            catch_up: Option<bool>,
            $($field: Option<$module::Raw>,)+
        }

        /// Validates the kind blocks present in `raw`: (their keys, the valid specs, whether
        /// all were valid).
        fn validate_blocks(
            raw: &mut RawJob,
            path: &str,
            checks: &mut Checks<'_>,
        ) -> (Vec<&'static str>, Vec<Kind>, bool) {
            let mut present = Vec::new();
            let mut kinds = Vec::new();
            let mut ok = true;
            $(
                if let Some(block) = raw.$field.take() {
                    present.push(stringify!($field));
                    let block_path = format!("{path}.{}", stringify!($field));
                    if let Some(spec) = $module::validate(block, &block_path, checks) {
                        kinds.push(Kind::$variant(spec));
                    } else {
                        ok = false;
                    }
                }
            )+
            (present, kinds, ok)
        }
    };
}

registry! {
    backup => backup::Backup,
    verify => verify::Verify,
    integrity => integrity::Integrity,
    maintenance => maintenance::Maintenance,
    archive => archive::Archive,
    logrotate => logrotate::Logrotate,
    pricing => pricing::Pricing,
    budget => budget::Budget,
    health => health::Health,
}

/// A validated job of the jobs file.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Option<Schedule>,
    pub on_signal: Vec<SignalName>,
    pub timeout: Option<Duration>,
    pub catch_up: bool,
    pub kind: Kind,
}

impl Kind {
    /// See [`Contract::touches_gateway`].
    pub fn touches_gateway(&self) -> bool {
        self.contract().touches_gateway()
    }

    /// See [`Contract::depends_on`].
    pub fn depends_on(&self) -> Vec<(&'static str, &str)> {
        self.contract().depends_on()
    }

    /// See [`Contract::gateway_problems`].
    pub fn gateway_problems(&self, gateway: &Gateway) -> Vec<(String, String)> {
        self.contract().gateway_problems(gateway)
    }

    /// See [`Contract::writes`].
    pub fn writes(&self) -> Vec<(PathBuf, &'static str)> {
        self.contract().writes()
    }

    /// See [`Contract::watches`].
    pub fn watches(&self) -> Vec<PathBuf> {
        self.contract().watches()
    }

    /// See [`Contract::remotes_named`].
    pub fn remotes_named(&self) -> Vec<(String, &str)> {
        self.contract().remotes_named()
    }

    /// See [`Contract::remote_keep`].
    pub fn remote_keep(&self) -> Option<&crate::jobs::backup::retention::Policy> {
        self.contract().remote_keep()
    }
}

/// Resolves what each job takes from the jobs it depends on ([`Contract::resolve`]), once the
/// references are checked.
pub fn resolve(jobs: &mut [Job]) {
    let all = jobs.to_vec();
    for job in jobs.iter_mut() {
        job.kind.contract_mut().resolve(&all);
    }
}

/// The files the daemon watches: (the job a change runs, the file), from every job's
/// [`Contract::watches`].
pub fn watched_files(jobs: &[Job]) -> Vec<(String, PathBuf)> {
    jobs.iter()
        .flat_map(|job| {
            job.kind
                .watches()
                .into_iter()
                .map(|f| (job.name.clone(), f))
        })
        .collect()
}

/// The directories the jobs write: (the directory, what it holds and for which job), from
/// every job's [`Contract::writes`].
pub fn written_dirs(jobs: &[Job]) -> Vec<(PathBuf, String)> {
    jobs.iter()
        .flat_map(|job| {
            job.kind
                .writes()
                .into_iter()
                .map(|(dir, holds)| (dir, format!("{holds} of {}", job.name)))
        })
        .collect()
}

/// What `check` and the daemon's start say, once, about the jobs' settings against the
/// gateway ([`Contract::advice`]).
pub fn advice(config: &Config) -> Vec<String> {
    config
        .jobs
        .iter()
        .flat_map(|job| {
            let path = format!("jobs.{}.{}", job.name, job.kind.name());
            job.kind.contract().advice(&path, config.gateway.preset)
        })
        .collect()
}

/// The longest job `timeout`: a run that may take over a week is not bounded by one.
pub const MAX_TIMEOUT: (Duration, &str) = (Duration::from_secs(7 * 86_400), "7d");

/// The kinds, as errors list what is accepted.
fn kinds_text() -> String {
    NAMES.join(", ")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn validate(name: &str, mut raw: RawJob, checks: &mut Checks<'_>) -> Option<Job> {
    let path = format!("jobs.{name}");
    let mut ok = true;
    if !valid_name(name) {
        checks.error(
            &path,
            format!("`{name}` is not a valid job name; accepted: letters, digits, '-' and '_'"),
        );
        ok = false;
    }
    let on_signal = raw.on_signal.take().map(|s| s.0).unwrap_or_default();
    if raw.schedule.is_none() && on_signal.is_empty() {
        checks.error(
            &path,
            "the job has neither `schedule` nor `on_signal`, so it would never run; accepted: a cron `schedule`, an `on_signal` (USR1 | USR2 | [USR1, USR2]), or both",
        );
        ok = false;
    }
    let (present, mut kinds, blocks_ok) = validate_blocks(&mut raw, &path, checks);
    ok &= blocks_ok;
    match present.len() {
        1 => {}
        0 => {
            checks.error(
                &path,
                format!(
                    "the job has no kind block; accepted: exactly one of {}",
                    kinds_text()
                ),
            );
            return None;
        }
        _ => {
            checks.error(
                &format!("{path}.{}", present[1]),
                format!(
                    "the job has several kind blocks ({}); accepted: exactly one of {}",
                    present.join(", "),
                    kinds_text()
                ),
            );
            return None;
        }
    }
    let timeout = raw.timeout.map(|d| d.0);
    if let Some(t) = timeout {
        let (max, text) = MAX_TIMEOUT;
        ok &= checks.at_most(&format!("{path}.timeout"), t, max, text);
    }
    if !ok {
        return None;
    }
    Some(Job {
        name: name.to_string(),
        schedule: raw.schedule,
        on_signal,
        timeout,
        catch_up: raw.catch_up.unwrap_or(false),
        kind: kinds.pop()?,
    })
}

/// Tells a running job to stop at its next safe point: the daemon is shutting down, or the
/// job's `timeout` has passed.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("stopped at a safe point because the daemon is shutting down")]
    Shutdown,
    #[error("stopped at a safe point because the job ran past its timeout")]
    Timeout,
}

impl Stop {
    pub fn new(flag: Arc<AtomicBool>, timeout: Option<Duration>) -> Self {
        Stop {
            flag,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// When the job's `timeout` runs out, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn check(&self) -> Result<(), Stopped> {
        if self.flag.load(Ordering::SeqCst) {
            return Err(Stopped::Shutdown);
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(Stopped::Timeout),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// Whether the kind's own file, or any file in its own folder, holds a test.
    fn has_tests(module: &str) -> bool {
        let jobs = root().join("src/jobs");
        let file = jobs.join(format!("{module}.rs"));
        if file.is_file() {
            return fs::read_to_string(&file).unwrap().contains("#[test]");
        }
        let mut stack = vec![jobs.join(module)];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && fs::read_to_string(&path).unwrap().contains("#[test]")
                {
                    return true;
                }
            }
        }
        false
    }

    /// Adding a kind is one folder, one line in the registry and one doc page: every kind the
    /// registry lists has its page, its block in the example jobs file, and tests in its own
    /// folder; and every page under docs/jobs is a registered kind's.
    #[test]
    fn every_registered_kind_has_its_page_its_example_and_its_tests() {
        let example = fs::read_to_string(root().join("jobs.example.yaml")).unwrap();
        for (name, module) in MODULES {
            assert!(
                root().join(format!("docs/jobs/{name}.md")).is_file(),
                "kind `{name}` has no page docs/jobs/{name}.md"
            );
            assert!(
                example.lines().any(|l| l == format!("    {name}:")
                    || l.starts_with(&format!("    {name}: "))),
                "kind `{name}` has no `{name}:` block under a job in jobs.example.yaml"
            );
            assert!(
                has_tests(module),
                "kind `{name}` has no test in src/jobs/{module}.rs or src/jobs/{module}/"
            );
        }
        for entry in fs::read_dir(root().join("docs/jobs")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                NAMES.contains(&stem.as_str()),
                "docs/jobs/{stem}.md is not the page of a registered kind ({})",
                kinds_text()
            );
        }
    }

    /// What health and the daemon ask of the jobs comes through the contract, and verify's
    /// backup directory is taken at validation.
    #[test]
    fn the_contract_answers_for_writes_watches_and_verify_s_backup() {
        let dir = tempfile::tempdir().unwrap();
        let text = "gateway:
  database: requests.db
  schema: apantli
jobs:
  nightly-backup:
    schedule: \"0 2 * * *\"
    backup:
      to: backups
      keep: {daily: 7}
  restore-test:
    schedule: \"0 3 * * *\"
    verify: {backups_of: nightly-backup}
  archive-old:
    schedule: \"0 4 * * *\"
    archive: {to: archives, older_than: 90d}
  reprice:
    on_signal: USR2
    pricing: {prices: prices.json, watch: true}
  reprice-unwatched:
    on_signal: USR1
    pricing: {prices: other.json}
";
        let (config, _) = crate::config::parse(&dir.path().join("jobs.yaml"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        let writes: Vec<(String, PathBuf, &str)> = config
            .jobs
            .iter()
            .flat_map(|j| {
                j.kind
                    .writes()
                    .into_iter()
                    .map(|(d, w)| (j.name.clone(), d, w))
            })
            .collect();
        assert_eq!(
            writes,
            [
                (
                    "nightly-backup".into(),
                    dir.path().join("backups"),
                    "backups"
                ),
                (
                    "archive-old".into(),
                    dir.path().join("archives"),
                    "archives"
                ),
            ]
        );
        assert_eq!(
            watched_files(&config.jobs),
            [("reprice".to_string(), dir.path().join("prices.json"))]
        );
        let Kind::Verify(verify) = &config.job("restore-test").unwrap().kind else {
            panic!("restore-test is not a verify job");
        };
        assert_eq!(verify.backup_to, Some(dir.path().join("backups")));
        let gateway: Vec<&str> = config
            .jobs
            .iter()
            .filter(|j| j.kind.touches_gateway())
            .map(|j| j.name.as_str())
            .collect();
        assert_eq!(
            gateway,
            [
                "nightly-backup",
                "archive-old",
                "reprice",
                "reprice-unwatched"
            ]
        );
    }
}
