//! Jobs file errors that name the file, line, column and key path, and show the line.

use std::fmt;
use std::path::{Path, PathBuf};

use super::yaml::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `jobs.nightly-backup.backup.keep.daily`; empty for the whole file.
    pub key_path: String,
    pub message: String,
    /// The offending source line, shown under the message with a caret.
    pub source_line: Option<String>,
}

impl ConfigError {
    pub fn at(file: &Path, text: &str, pos: Pos, key_path: &str, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key_path: key_path.to_string(),
            message,
            source_line: pos
                .line
                .checked_sub(1)
                .and_then(|i| text.lines().nth(i))
                .map(str::to_string),
        }
    }

    pub fn io(file: &Path, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key_path: String::new(),
            message,
            source_line: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(line) = &self.source_line {
            let gutter = self.line.to_string();
            write!(
                f,
                "\n {gutter} | {line}\n {} | {}^",
                " ".repeat(gutter.len()),
                " ".repeat(self.column.saturating_sub(1))
            )?;
        }
        Ok(())
    }
}

/// Every error of one jobs file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        write!(
            f,
            "\n{} error{} in the jobs file; nothing was changed",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}
