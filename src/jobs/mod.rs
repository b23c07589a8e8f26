//! Job kinds: one registry list, one contract, one module per kind; and what every job run
//! gets and gives.
//!
//! Adding a kind is one folder (or file) under `src/jobs/`, one line in the [`registry!`] list
//! below and one page under `docs/jobs/`: the list makes the module declaration, the `Kind`
//! enum, its names, the raw job block's field and the dispatch. Each module owns its raw config
//! block (serde, strict), its validated spec, a pure `plan`, the `run` that executes it and
//! its side of the [`Contract`], which is all that the rest of the program (health, the daemon,
//! `check`) asks of a kind.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::checks::Checks;
use crate::checks::values::{self, OneOrMany, SignalName};
use crate::gateway::{Gateway, Preset};
use crate::schedule::Schedule;
pub use crate::stop::{Stop, Stopped};

mod contract;
pub use contract::{Context, Contract, Judged, Report};
pub mod per_database;

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

    /// Resolves the job's `databases: [...]` against the declared ones; unknown names are
    /// errors at `path`.
    pub fn resolve_databases(
        &mut self,
        declared: &crate::databases::Databases,
        path: &str,
        checks: &mut Checks<'_>,
    ) {
        if let Some(selection) = self.contract_mut().selection_mut() {
            selection.resolve(declared, path, checks);
        }
    }

    /// See [`Contract::needs_gateway`].
    pub fn needs_gateway(&self) -> Option<&'static str> {
        self.contract().needs_gateway()
    }

    /// See [`Contract::gateway_problems`].
    pub fn gateway_problems(&self, gateway: &Gateway) -> Vec<(String, String)> {
        self.contract().gateway_problems(gateway)
    }

    /// See [`Contract::writes`].
    pub fn writes(&self) -> Vec<(PathBuf, &'static str)> {
        self.contract().writes()
    }

    /// The bound a lock of `operation` ("" for the kind's ordinary locks) is judged against,
    /// `None` when it is not judged: the kind's ([`crate::writelock::bound`]) unless its
    /// [`Contract::operation_bound`] says otherwise.
    pub fn lock_bound(&self, operation: &str, preset: Preset) -> Option<crate::writelock::Bound> {
        match self.contract().operation_bound(operation, preset) {
            Judged::ByTheKind => crate::writelock::bound(self.name()),
            Judged::By(bound) => Some(bound),
            Judged::Not => None,
        }
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
    let named: Vec<(&str, &dyn Contract)> = all
        .iter()
        .map(|j| (j.name.as_str(), j.kind.contract()))
        .collect();
    for job in jobs.iter_mut() {
        job.kind.contract_mut().resolve(&named);
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
/// gateway's `preset` ([`Contract::advice`]).
pub fn advice(jobs: &[Job], preset: Preset) -> Vec<String> {
    jobs.iter()
        .flat_map(|job| {
            let path = format!("jobs.{}.{}", job.name, job.kind.name());
            job.kind.contract().advice(&path, preset)
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
        kind_sources(module)
            .iter()
            .any(|text| text.contains("#[test]"))
    }

    /// The source of the kind's own file, and of every file in its own folder.
    fn kind_source(module: &str) -> String {
        kind_sources(module).concat()
    }

    /// The kind's own file (`{module}.rs`, which may have a folder of its parts beside it) and
    /// every file in its own folder, each read.
    fn kind_sources(module: &str) -> Vec<String> {
        let jobs = root().join("src/jobs");
        let file = jobs.join(format!("{module}.rs"));
        let mut text = Vec::new();
        if file.is_file() {
            text.push(fs::read_to_string(&file).unwrap());
        }
        let mut stack: Vec<_> = Some(jobs.join(module))
            .filter(|d| d.is_dir())
            .into_iter()
            .collect();
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    text.push(fs::read_to_string(&path).unwrap());
                }
            }
        }
        text
    }

    /// Kinds whose pure step still goes by another name than `plan`, with that name: each
    /// has it and its table test, and the list shrinks as they are renamed.
    const PURE_STEP_NAMED_OTHERWISE: &[(&str, &str)] = &[
        ("verify", "choose"),
        ("health", "evaluate"),
        ("budget", "decide"),
    ];

    /// Every kind has its pure step, `plan(spec, facts, now, …)`, and a test that calls it
    /// (its table test): a new kind that plans inside its I/O fails here.
    #[test]
    fn every_registered_kind_has_its_plan_and_its_plan_test_table() {
        for (name, module) in MODULES {
            let source = kind_source(module);
            let step = PURE_STEP_NAMED_OTHERWISE
                .iter()
                .find(|(k, _)| k == name)
                .map_or("plan", |(_, step)| *step);
            assert!(
                source.contains(&format!("pub fn {step}(")),
                "kind `{name}` has no pure `pub fn {step}(` in src/jobs/{module}"
            );
            let calls = |body: &str| {
                body.match_indices(&format!("{step}("))
                    .any(|(i, _)| !body[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
            };
            assert!(
                source.split("#[test]").skip(1).any(calls),
                "kind `{name}` has no test that calls its `{step}` in src/jobs/{module}"
            );
            if step != "plan" {
                assert!(
                    !source.contains("pub fn plan("),
                    "kind `{name}` has its `plan` now: take it off PURE_STEP_NAMED_OTHERWISE"
                );
            }
        }
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
