//! The `logrotate` block of the jobs file as written (`RotateConfig`) and as validated (`RotateSpec`).
//!
//! Defaults, where the block leaves a key out, follow logrotate's: `rotate: 7` (logrotate's
//! own default of 0 silently discards logs, which no operator asks for by omission),
//! `method: create`, `if_empty: true`, `missing_ok: false`, no compression, numbered copies.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{parse_duration, parse_size};

/// The `logrotate` block exactly as it appears in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateConfig {
    /// Paths or glob patterns; relative ones are taken from the jobs file's directory.
    /// Rotated copies (`x.1`, `x.2.gz`, `x-20261122`), `.gz` files and hidden files never
    /// match, so `*` is safe in a log directory.
    pub files: Vec<String>,
    /// Rotate at most once per calendar period in the configured time zone.
    #[serde(default)]
    pub period: Option<Period>,
    /// Rotate whatever the period once a file is larger than this (`100MB`).
    #[serde(default, deserialize_with = "text_or_number")]
    pub max_size: Option<String>,
    /// Never rotate a file smaller than this.
    #[serde(default, deserialize_with = "text_or_number")]
    pub min_size: Option<String>,
    /// Rotated copies kept; 0 deletes the rotated content at once.
    #[serde(default = "default_rotate")]
    pub rotate: u32,
    /// Delete rotated copies whose modification time is older than this (`30d`); checked
    /// when the file is rotated, as logrotate does.
    #[serde(default, deserialize_with = "text_or_number")]
    pub max_age: Option<String>,
    #[serde(default)]
    pub compress: bool,
    /// Leave the newest copy uncompressed until the next rotation, for writers that are
    /// slow to reopen their file.
    #[serde(default)]
    pub delay_compress: bool,
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    #[serde(default = "default_true")]
    pub if_empty: bool,
    #[serde(default)]
    pub missing_ok: bool,
    /// Name copies `-YYYYMMDD` (local date) instead of `.1 .2 ...`.
    #[serde(default)]
    pub date_suffix: bool,
    /// Remotes each finished rotated copy is uploaded to.
    #[serde(default)]
    pub copy_to: Vec<String>,
}

/// Reads a size or duration written either as text (`100MB`) or as a bare YAML number
/// (`min_size: 0`), keeping it as text so that one parser judges both.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct TextOrNumber;
    impl<'v> serde::de::Visitor<'v> for TextOrNumber {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string such as 100MB or 30d, or a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'v>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_any(TextOrNumber)
}

fn default_rotate() -> u32 {
    7
}

fn default_true() -> bool {
    true
}

/// A calendar period, evaluated on local dates in the configured time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        })
    }
}

/// How the current file is moved aside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Rename the file, then create a new empty one with the same mode and owner; the
    /// writer must be told to reopen (`notify`). Loses nothing.
    #[default]
    Create,
    /// Copy the file, then truncate it in place. Lines written between the copy and the
    /// truncation are lost: only for writers that cannot reopen their file.
    Copytruncate,
}

/// `notify` as written: `{pid_file, signal}` or `{command: [...]}`.
///
/// One struct rather than an untagged enum so that a mistake gets a precise message
/// instead of serde's "did not match any variant".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub pid_file: Option<String>,
    /// Signal name without `SIG` (default `HUP`).
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// A signal that may be sent to a writer to make it reopen its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifySignal {
    Hup,
    Usr1,
    Usr2,
    Int,
    Term,
    Quit,
    Alrm,
    Winch,
}

const SIGNALS_ACCEPTED: &str = "HUP, USR1, USR2, INT, TERM, QUIT, ALRM or WINCH";

impl NotifySignal {
    fn parse(name: &str) -> Result<Self, String> {
        let bare = name.strip_prefix("SIG").unwrap_or(name);
        Ok(match bare {
            "HUP" => Self::Hup,
            "USR1" => Self::Usr1,
            "USR2" => Self::Usr2,
            "INT" => Self::Int,
            "TERM" => Self::Term,
            "QUIT" => Self::Quit,
            "ALRM" => Self::Alrm,
            "WINCH" => Self::Winch,
            _ => {
                return Err(format!(
                    "`{name}` is not a signal name: expected {SIGNALS_ACCEPTED}"
                ));
            }
        })
    }

    /// INT, TERM and QUIT ask a process to stop (a supervisor then restarts it); the others
    /// are sent to a writer that stays up and reopens its log.
    pub fn asks_to_stop(self) -> bool {
        matches!(self, Self::Int | Self::Term | Self::Quit)
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            Self::Hup => Signal::HUP,
            Self::Usr1 => Signal::USR1,
            Self::Usr2 => Signal::USR2,
            Self::Int => Signal::INT,
            Self::Term => Signal::TERM,
            Self::Quit => Signal::QUIT,
            Self::Alrm => Signal::ALARM,
            Self::Winch => Signal::WINCH,
        }
    }
}

impl fmt::Display for NotifySignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hup => "HUP",
            Self::Usr1 => "USR1",
            Self::Usr2 => "USR2",
            Self::Int => "INT",
            Self::Term => "TERM",
            Self::Quit => "QUIT",
            Self::Alrm => "ALRM",
            Self::Winch => "WINCH",
        })
    }
}

/// How the writer is told to reopen its file after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// Send `signal` to the process whose id is in `pid_file`.
    Signal {
        pid_file: PathBuf,
        signal: NotifySignal,
    },
    /// Run this program with these arguments (no shell); a non-zero exit is an error.
    Command(Vec<String>),
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notify::Signal { pid_file, signal } => {
                write!(f, "send {signal} to the process in {}", pid_file.display())
            }
            Notify::Command(argv) => write!(f, "run {argv:?}"),
        }
    }
}

/// A validated `logrotate` block: absolute patterns, sizes in bytes, durations.
#[derive(Debug, Clone, PartialEq)]
pub struct RotateSpec {
    /// Absolute glob patterns.
    pub patterns: Vec<String>,
    pub period: Option<Period>,
    pub max_size: Option<u64>,
    pub min_size: u64,
    /// Rotated copies kept.
    pub keep: u32,
    pub max_age: Option<Duration>,
    pub compress: bool,
    pub delay_compress: bool,
    pub method: Method,
    pub notify: Option<Notify>,
    pub if_empty: bool,
    pub missing_ok: bool,
    pub date_suffix: bool,
    pub copy_to: Vec<String>,
}

/// One problem found by [`RotateConfig::validate`]: the key (relative to the `logrotate`
/// block) and a message saying what is accepted.
pub type ConfigError = (String, String);

impl RotateConfig {
    /// Checks every key and returns all problems at once, not only the first.
    ///
    /// `base_dir` is the jobs file's directory, against which relative `files` and
    /// `notify.pid_file` are resolved.
    pub fn validate(&self, base_dir: &Path) -> Result<RotateSpec, Vec<ConfigError>> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut fail = |key: String, message: String| errors.push((key, message));

        if self.files.is_empty() {
            fail(
                "files".into(),
                "is empty: expected at least one path or glob pattern, e.g. [/var/log/app/*.log]"
                    .into(),
            );
        }
        let mut patterns = Vec::new();
        for (i, file) in self.files.iter().enumerate() {
            let absolute = base_dir.join(file);
            let Some(text) = absolute.to_str() else {
                fail(format!("files[{i}]"), "is not valid UTF-8".into());
                continue;
            };
            if file.is_empty() {
                fail(
                    format!("files[{i}]"),
                    "is empty: expected a path or glob pattern".into(),
                );
            } else if let Err(e) = glob::Pattern::new(text) {
                fail(
                    format!("files[{i}]"),
                    format!(
                        "`{file}` is not a valid glob pattern ({e}): expected a path with * ? [...] wildcards"
                    ),
                );
            } else {
                patterns.push(text.to_owned());
            }
        }

        let mut size = |key: &str, value: &Option<String>| -> Option<u64> {
            let text = value.as_deref()?;
            parse_size(text).map_err(|e| fail(key.into(), e)).ok()
        };
        let max_size = size("max_size", &self.max_size);
        let min_size = size("min_size", &self.min_size);

        let max_age = self.max_age.as_deref().and_then(|text| {
            parse_duration(text)
                .map_err(|e| fail("max_age".into(), e))
                .ok()
        });

        if self.period.is_none() && self.max_size.is_none() {
            fail(
                "period".into(),
                "neither period nor max_size is set, so nothing would ever be rotated: \
                 expected period (daily | weekly | monthly), max_size, or both"
                    .into(),
            );
        }
        if self.delay_compress && !self.compress {
            fail(
                "delay_compress".into(),
                "is true but compress is false: set compress: true, or remove delay_compress"
                    .into(),
            );
        }

        let notify = self
            .notify
            .as_ref()
            .and_then(|n| validate_notify(n, base_dir, &mut fail));

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RotateSpec {
            patterns,
            period: self.period,
            max_size,
            min_size: min_size.unwrap_or(0),
            keep: self.rotate,
            max_age,
            compress: self.compress,
            delay_compress: self.delay_compress,
            method: self.method,
            notify,
            if_empty: self.if_empty,
            missing_ok: self.missing_ok,
            copy_to: self.copy_to.clone(),
            date_suffix: self.date_suffix,
        })
    }
}

fn validate_notify(
    notify: &NotifyConfig,
    base_dir: &Path,
    fail: &mut impl FnMut(String, String),
) -> Option<Notify> {
    const ACCEPTED: &str =
        "expected {pid_file: /run/app.pid, signal: HUP} or {command: [program, arg, ...]}";
    match (&notify.pid_file, &notify.command) {
        (Some(_), Some(_)) => {
            fail(
                "notify".into(),
                format!("has both pid_file and command: {ACCEPTED}"),
            );
            None
        }
        (None, None) => {
            fail(
                "notify".into(),
                format!("has neither pid_file nor command: {ACCEPTED}"),
            );
            None
        }
        (None, Some(command)) => {
            let mut ok = true;
            if notify.signal.is_some() {
                fail(
                    "notify.signal".into(),
                    format!("only goes with pid_file, not with command: {ACCEPTED}"),
                );
                ok = false;
            }
            if command.first().is_none_or(|program| program.is_empty()) {
                fail(
                    "notify.command".into(),
                    "is empty: expected [program, arg, ...], e.g. [systemctl, kill, -s, HUP, app]"
                        .into(),
                );
                ok = false;
            }
            ok.then(|| Notify::Command(command.clone()))
        }
        (Some(pid_file), None) => {
            let signal = match notify.signal.as_deref() {
                None => Some(NotifySignal::Hup),
                Some(name) => NotifySignal::parse(name)
                    .map_err(|e| fail("notify.signal".into(), e))
                    .ok(),
            };
            if pid_file.is_empty() {
                fail(
                    "notify.pid_file".into(),
                    "is empty: expected the path of the writer's pid file".into(),
                );
                return None;
            }
            Some(Notify::Signal {
                pid_file: base_dir.join(pid_file),
                signal: signal?,
            })
        }
    }
}
