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
    /// The offending source line, shown under the message with a caret; a long line is cut to
    /// the part around the column.
    pub source_line: Option<String>,
    /// Where the caret stands under `source_line`, in characters from its start.
    pub(super) caret: usize,
}

/// The most characters shown on either side of an error's column: a file whose one line holds
/// 20,000 errors must not print (or keep) that line 20,000 times.
const EXCERPT: usize = 60;

/// The part of `line` around the 1-based `column`, and the caret's offset in it.
pub(super) fn excerpt(line: &str, column: usize) -> (String, usize) {
    let at = column.saturating_sub(1);
    let chars = line.chars().count();
    let start = at.saturating_sub(EXCERPT);
    let end = at.saturating_add(EXCERPT).min(chars);
    if start == 0 && end == chars {
        return (line.to_string(), at);
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(line.chars().skip(start).take(end.saturating_sub(start)));
    if end < chars {
        out.push('…');
    }
    (out, at - start + usize::from(start > 0))
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

    /// Line `line` (counted from 1) without its line break.
    pub fn line(&self, line: usize) -> Option<&'a str> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let rest = &self.text[start..];
        let end = rest.find('\n').unwrap_or(rest.len());
        Some(rest[..end].strip_suffix('\r').unwrap_or(&rest[..end]))
    }
}

impl ConfigError {
    /// An error at `pos`. Its source line is added by [`ConfigError::show_line`], once the
    /// errors are sorted, and only to those that are shown.
    pub fn at(file: &Path, pos: Pos, key_path: &str, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key_path: key_path.to_string(),
            message,
            source_line: None,
            caret: 0,
        }
    }

    /// Adds the part of the error's line around its column, for the caret display.
    pub(super) fn show_line(&mut self, source: &Source<'_>) {
        let shown = source
            .line(self.line)
            .filter(|l| !l.is_empty() || self.line < source.starts.len())
            .map(|l| excerpt(l, self.column));
        if let Some((line, caret)) = shown {
            self.source_line = Some(hide_url_passwords(&line));
            self.caret = caret;
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
            caret: 0,
        }
    }
}

/// `line` with the password of a URL (`scheme://user:PASSWORD@host`, `?password=PASSWORD`)
/// replaced by `[redacted]`: an error about a URL shows its line, and the line must not show
/// the secret that was the mistake.
pub(super) fn hide_url_passwords(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', ' ', '"', '\'']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) if tail[..at].contains(':') => {
                let colon = tail[..at].find(':').unwrap_or(at);
                out.push_str(&tail[..=colon]);
                out.push_str("[redacted]");
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    let mut masked = String::with_capacity(out.len());
    let mut parts = out.split("password=");
    masked.push_str(parts.next().unwrap_or(""));
    for part in parts {
        masked.push_str("password=[redacted]");
        let end = part.find(['&', ' ', '"', '\'']).unwrap_or(part.len());
        masked.push_str(&part[end..]);
    }
    masked
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
                " ".repeat(self.caret)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_line_hides_the_password_of_a_url() {
        for (line, want) in [
            (
                "  url: postgres://caretaker:hunter2@db:5432/litellm",
                "  url: postgres://caretaker:[redacted]@db:5432/litellm",
            ),
            (
                "  url: postgres://caretaker@db/x?sslmode=require&password=hunter2&a=b",
                "  url: postgres://caretaker@db/x?sslmode=require&password=[redacted]&a=b",
            ),
            (
                "  url: postgres://caretaker@db/litellm",
                "  url: postgres://caretaker@db/litellm",
            ),
            ("  to: /var/backups", "  to: /var/backups"),
        ] {
            assert_eq!(hide_url_passwords(line), want);
        }
    }

    #[test]
    fn a_long_line_is_cut_around_the_column_with_the_caret_on_it() {
        let line = format!("{}X{}", "a".repeat(500), "b".repeat(500));
        let (shown, caret) = excerpt(&line, 501);
        assert_eq!(shown.chars().nth(caret), Some('X'));
        assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
        assert_eq!(shown.chars().count(), 2 * EXCERPT + 2);
        // A short line is shown whole.
        assert_eq!(excerpt("  key: value", 3), ("  key: value".to_string(), 2));
        // Near the start: cut at the end only.
        let (shown, caret) = excerpt(&line, 1);
        assert_eq!((caret, shown.starts_with('a')), (0, true));
    }
}
