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
use error::{Source, excerpt};
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
    /// The `remotes:` block: S3-compatible buckets that jobs copy to (`copy_to`).
    pub remotes: crate::remote::Remotes,
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

/// The largest jobs file read: a real one is a few KiB. The limit keeps a file replaced by
/// something else (a log, a database) from being read whole into memory by a reload.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// What the validated configuration is for. `check` runs in the operator's shell, not in the
/// daemon's environment, so what only the daemon's environment can supply (the SMTP password
/// of `password_env`) is a warning there and an error for `run` and `run-job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Check,
    Run,
}

/// Reads and validates the jobs file at `path` for running jobs. All of its errors are
/// returned at once.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigErrors> {
    load_for(path, Purpose::Run)
}

/// [`load`] for a given purpose.
pub fn load_for(path: &Path, purpose: Purpose) -> Result<(Config, Vec<String>), ConfigErrors> {
    let bytes = read_bounded(path).map_err(|message| {
        // The hint only helps when the path was not chosen: given with --config or
        // CARETAKER_CONFIG, it is the path the operator meant.
        let hint = if path == Path::new(DEFAULT_PATH) {
            "; give its path with --config or CARETAKER_CONFIG"
        } else {
            ""
        };
        ConfigErrors::single(ConfigError::io(
            path,
            format!("cannot read the jobs file: {message}{hint}"),
        ))
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ConfigErrors::single(not_utf8(path, &bytes, e.valid_up_to())))?;
    parse_for(path, text, purpose)
}

/// Reads the jobs file: a regular file of at most [`MAX_FILE_SIZE`] bytes.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use crate::fsx::{ReadError, read_regular};
    read_regular(path, MAX_FILE_SIZE).map_err(|e| match e {
        ReadError::NotRegular => "it is not a regular file; accepted: a YAML text file".into(),
        ReadError::TooLarge { .. } => format!(
            "it is larger than {} KiB; accepted: up to {} KiB (a jobs file is a few KiB)",
            MAX_FILE_SIZE >> 10,
            MAX_FILE_SIZE >> 10
        ),
        ReadError::Io(e) => e.to_string(),
    })
}

/// Places the first byte that is not UTF-8: its line, its column in bytes, its offset in the file.
fn not_utf8(path: &Path, bytes: &[u8], offset: usize) -> ConfigError {
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = bytes[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| offset + i);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // The bytes before the bad one are UTF-8 (that is how it was found): the caret stands
    // after their characters, under the stand-in the bad byte is shown as.
    let caret = String::from_utf8_lossy(&bytes[line_start..offset])
        .chars()
        .count();
    let (source_line, caret) = excerpt(
        &String::from_utf8_lossy(&bytes[line_start..line_end]),
        caret + 1,
    );
    ConfigError {
        file: path.to_path_buf(),
        line,
        column: offset - line_start + 1,
        key_path: String::new(),
        message: format!(
            "byte 0x{:02x} at byte offset {offset} of the file is not UTF-8 text; accepted: a UTF-8 text file (convert it with `iconv -t UTF-8`)",
            bytes[offset]
        ),
        source_line: Some(source_line),
        caret,
    }
}

/// What the error for an empty jobs file shows.
const MINIMAL_FILE: &str = "gateway:
  database: /var/lib/apantli/requests.db
  schema: apantli
jobs:
  nightly-backup:
    schedule: \"0 2 * * *\"
    backup:
      to: /var/backups/apantli
      keep: {daily: 7, weekly: 4}";

/// Validates jobs file text as if it stood at `path` (relative paths in it resolve against
/// the directory of `path`).
pub fn parse(path: &Path, text: &str) -> Result<(Config, Vec<String>), ConfigErrors> {
    parse_for(path, text, Purpose::Run)
}

/// [`parse`] for a given purpose.
pub fn parse_for(
    path: &Path,
    text: &str,
    purpose: Purpose,
) -> Result<(Config, Vec<String>), ConfigErrors> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let source = Source::new(text);
    let empty = text
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...");
    if empty {
        return Err(ConfigErrors::single(ConfigError::io(
            path,
            format!(
                "the jobs file is empty (it holds no keys, only blank lines or comments); accepted: a gateway and jobs, at least:\n{MINIMAL_FILE}\n(every key: docs/configuration.md and jobs.example.yaml)"
            ),
        )));
    }
    let (tree, syntax) = match yaml::parse(text) {
        Ok(parsed) => parsed,
        Err(issue) => {
            let issue = yaml::blame_tabs(text, issue);
            let mut error = ConfigError::at(path, issue.pos, &issue.path, issue.message);
            error.show_line(&source);
            return Err(ConfigErrors::single(error));
        }
    };
    let mut checks = Checks {
        file: path,
        purpose,
        tree: &tree,
        base: &base,
        errors: syntax
            .into_iter()
            .map(|i| ConfigError::at(path, i.pos, &i.path, i.message))
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
        checks
            .errors
            .push(ConfigError::at(path, found.pos, &found.path, found.message));
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
                    tree.pos,
                    "",
                    "the jobs file is not valid".into(),
                ));
            }
            errors.sort_by_key(|e| (e.line, e.column));
            for e in errors.iter_mut().take(error::SHOWN_ERRORS) {
                e.show_line(&source);
            }
            Err(ConfigErrors(errors))
        }
    }
}

/// Collects the semantic errors of validation, placing each at its key in the file.
pub struct Checks<'a> {
    file: &'a Path,
    /// Whether the configuration is for `check` or for running jobs.
    pub purpose: Purpose,
    tree: &'a yaml::Node,
    base: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checks<'_> {
    pub fn error(&mut self, key_path: &str, message: impl Into<String>) {
        let pos = self.tree.locate(key_path);
        self.errors
            .push(ConfigError::at(self.file, pos, key_path, message.into()));
    }

    /// Refuses a duration above what the key at `key_path` can use (`max_text` says it as the
    /// file would). Returns whether the value is within the bound.
    pub fn at_most(
        &mut self,
        key_path: &str,
        value: Duration,
        max: Duration,
        max_text: &str,
    ) -> bool {
        if value <= max {
            return true;
        }
        let written = match self.tree.find(key_path).map(|n| &n.kind) {
            Some(yaml::NodeKind::Scalar { value, .. }) => value.clone(),
            _ => format!("{}s", value.as_secs()),
        };
        self.error(
            key_path,
            format!("`{written}` is longer than this key allows; accepted: up to {max_text}"),
        );
        false
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

    /// A path key's value resolved as [`Checks::path`] does. An empty one (`to: ""`) is an
    /// error and `None`: it would resolve to the jobs file's own directory, where a job would
    /// then write, and retention delete.
    pub fn given_path(&mut self, key_path: &str, p: Option<&Path>) -> Option<PathBuf> {
        let p = p?;
        if p.as_os_str().is_empty() {
            self.error(
                key_path,
                "is empty; accepted: a path (relative ones are taken from the jobs file's directory)",
            );
            return None;
        }
        Some(self.path(p))
    }

    pub fn base_dir(&self) -> &Path {
        self.base
    }
}
