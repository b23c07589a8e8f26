//! The jobs file: reading, validating, and the validated configuration the daemon runs on.
//!
//! Reading happens in three layers, as in ripgrep's raw-then-validated arguments: the YAML
//! tree with positions (`yaml`), strict serde structs where every key is optional (`raw`, read
//! by `de` which collects every error), and the validated runtime types below, built by checks
//! that know what the keys mean. Every error names the file, line, column and key path.

mod de;
mod error;
mod keys;
mod raw;
pub mod values;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;

pub use error::{ConfigError, ConfigErrors};
pub use keys::{ITEM, JOB_PATH, accepted_keys};

use crate::alerts::email::SmtpSettings;
use crate::gateway::Gateway;
use crate::jobs::Job;

/// Where the jobs file is looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/caretaker/jobs.yaml";

/// The validated jobs file.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub gateway: Gateway,
    pub state_dir: PathBuf,
    pub timezone: Tz,
    pub shutdown_timeout: Duration,
    pub metrics_file: Option<PathBuf>,
    pub log: LogSettings,
    pub alerts: AlertSettings,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub email: Option<SmtpSettings>,
    pub file: Option<PathBuf>,
    pub repeat_after: Duration,
    pub on_job_failure: bool,
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// Reads and validates the jobs file at `path`. All of its errors are returned at once.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::io(
            path,
            format!(
                "cannot read the jobs file: {e}; give its path with --config or CARETAKER_CONFIG"
            ),
        ))
    })?;
    parse(path, &text)
}

/// Validates jobs file text as if it stood at `path` (relative paths in it resolve against
/// the directory of `path`).
pub fn parse(path: &Path, text: &str) -> Result<(Config, Vec<String>), ConfigErrors> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (tree, syntax) = match yaml::parse(text) {
        Ok(parsed) => parsed,
        Err(issue) => {
            return Err(ConfigErrors::single(ConfigError::at(
                path,
                text,
                issue.pos,
                &issue.path,
                issue.message,
            )));
        }
    };
    let mut checks = Checks {
        file: path,
        text,
        tree: &tree,
        base: &base,
        errors: syntax
            .into_iter()
            .map(|i| ConfigError::at(path, text, i.pos, &i.path, i.message))
            .collect(),
        warnings: Vec::new(),
    };
    let recorder = de::Recorder::default();
    let raw_top: Option<raw::Top> = de::read(&tree, "", &recorder);
    let mut jobs = Vec::new();
    if let Some(node) = tree.get("jobs").map(|e| &e.value) {
        match &node.kind {
            yaml::NodeKind::Map(entries) => {
                for entry in entries {
                    let job_path = format!("jobs.{}", entry.key);
                    let raw_job =
                        de::read::<crate::jobs::RawJob>(&entry.value, &job_path, &recorder);
                    if let Some(job) =
                        raw_job.and_then(|raw| crate::jobs::validate(&entry.key, raw, &mut checks))
                    {
                        jobs.push(job);
                    }
                }
            }
            _ if node.is_null() => {}
            _ => checks.error(
                "jobs",
                format!(
                    "expected a mapping of job names to jobs, found {}",
                    node.describe()
                ),
            ),
        }
    }
    for found in recorder.into_found() {
        checks.errors.push(ConfigError::at(
            path,
            text,
            found.pos,
            &found.path,
            found.message,
        ));
    }
    let config = raw_top.and_then(|top| raw::validate(top, jobs, &mut checks));
    let Checks {
        mut errors,
        warnings,
        ..
    } = checks;
    match config {
        Some(config) if errors.is_empty() => Ok((config, warnings)),
        _ => {
            if errors.is_empty() {
                errors.push(ConfigError::at(
                    path,
                    text,
                    tree.pos,
                    "",
                    "the jobs file is not valid".into(),
                ));
            }
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
}

/// Collects the semantic errors of validation, placing each at its key in the file.
pub struct Checks<'a> {
    file: &'a Path,
    text: &'a str,
    tree: &'a yaml::Node,
    base: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checks<'_> {
    pub fn error(&mut self, key_path: &str, message: impl Into<String>) {
        let pos = self.tree.locate(key_path);
        self.errors.push(ConfigError::at(
            self.file,
            self.text,
            pos,
            key_path,
            message.into(),
        ));
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// A path from the jobs file, relative ones taken from the jobs file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub fn base_dir(&self) -> &Path {
        self.base
    }
}
