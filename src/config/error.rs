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

/// The jobs file's text with where each line starts, so that showing the line of an error
/// costs the same whether the file has 10 errors or 20,000.
pub struct Source<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source { text, starts }
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// Line `line` (counted from 1) without its line break.
    pub fn line(&self, line: usize) -> Option<&'a str> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let rest = &self.text[start..];
        let end = rest.find('\n').unwrap_or(rest.len());
        Some(rest[..end].strip_suffix('\r').unwrap_or(&rest[..end]))
    }
}

impl ConfigError {
    pub fn at(file: &Path, source: &Source<'_>, pos: Pos, key_path: &str, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key_path: key_path.to_string(),
            message,
            source_line: source
                .line(pos.line)
                .filter(|l| !l.is_empty() || pos.line < source.starts.len())
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

/// The most errors shown one by one; a file with thousands (a pasted log, a generated file)
/// is summed up after these.
pub const SHOWN_ERRORS: usize = 100;

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(SHOWN_ERRORS).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        if self.0.len() > SHOWN_ERRORS {
            write!(
                f,
                "\n... and {} more errors, not shown",
                self.0.len() - SHOWN_ERRORS
            )?;
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
