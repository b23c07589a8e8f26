//! What validating the jobs file is built from: the YAML tree with positions (`yaml`), errors
//! placed at a key (`error`), the typed values a key holds (`values`), and the [`Checks`] every
//! block's validation reports to. It knows no block of the file: the kinds, the gateway and
//! the alerts validate their own blocks with it, and `config` puts the file together above
//! them.

pub mod error;
pub mod values;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::time::Duration;

use error::ConfigError;

/// The largest jobs file read (and the largest file it names that validation reads, the SMTP
/// password and CA files): a real one is a few KiB. The limit keeps a file replaced by
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

/// Collects the semantic errors of validation, placing each at its key in the file.
pub struct Checks<'a> {
    pub(crate) file: &'a Path,
    /// Whether the configuration is for `check` or for running jobs.
    pub purpose: Purpose,
    pub(crate) tree: &'a yaml::Node,
    pub(crate) base: &'a Path,
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) warnings: Vec<String>,
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
