//! The rotation decision: given surveyed facts, saved state, the clock and the time zone, what to do.
//!
//! A pure function, following logrotate's order: `max_size` rotates whatever the period;
//! otherwise the period decides, by local calendar date in the configured zone; then
//! `min_size` and `if_empty` can veto. A file seen for the first time is recorded, not
//! rotated on a time rule, so that enabling the job does not rotate every log at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::config::{Method, Notify, Period, RotateSpec};
use super::survey::{CopySuffix, FileFacts, RotatedCopy, TEMP_SUFFIX};

/// What is remembered about one log between runs; the caller persists the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// When the file was last rotated, or first seen if never rotated.
    pub last_rotated: DateTime<Utc>,
}

/// Everything one run would do, in order: per-file steps, one notification, then the
/// per-file steps that must wait until the writer has reopened its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub now: DateTime<Utc>,
    pub files: Vec<FilePlan>,
    /// Set when at least one file is rotated and the spec has `notify`.
    pub notify: Option<Notify>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    pub path: PathBuf,
    pub action: Action,
    /// Deletions, shifts of older copies, then the rotation itself.
    pub steps: Vec<Step>,
    /// Compression and discarding, which must not touch a copy the writer may still be
    /// writing to before it has been notified.
    pub after_notify: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Rotate(Trigger),
    /// First sighting: remember the file (the period starts now), do not rotate.
    Record,
    Skip(SkipReason),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    MaxSize {
        size: u64,
        max_size: u64,
    },
    Period {
        period: Period,
        last_rotated: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// Rotating through a symbolic link could move or create files elsewhere.
    Symlink,
    NotRegular,
    /// Renaming one name of a hard-linked file would leave the writer and the other names
    /// on the rotated copy.
    HardLinked {
        nlink: u64,
    },
    NotDue {
        period: Period,
        last_rotated: DateTime<Utc>,
    },
    NotOverMaxSize {
        size: u64,
        max_size: u64,
    },
    BelowMinSize {
        size: u64,
        min_size: u64,
    },
    Empty,
    /// The dated copy for today already exists (`date_suffix` rotates at most once a day).
    TargetExists(PathBuf),
}

impl SkipReason {
    /// Whether this skip deserves a warning rather than being the normal outcome of a run.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            SkipReason::Symlink
                | SkipReason::NotRegular
                | SkipReason::HardLinked { .. }
                | SkipReason::TargetExists(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Delete {
        path: PathBuf,
        why: DeleteWhy,
    },
    /// Shift an older copy (`.1` to `.2`).
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    /// Move the live file's content to its first copy by `method`.
    Move {
        from: PathBuf,
        to: PathBuf,
        method: Method,
    },
    /// `copytruncate` with `rotate: 0`: the content is discarded in place.
    Truncate {
        path: PathBuf,
    },
    Compress {
        from: PathBuf,
        to: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeleteWhy {
    BeyondRotate(u32),
    OlderThanMaxAge(Duration),
    RotateZero,
}

/// Whether `period` has passed since `last_rotated`, by local calendar date in `tz`.
///
/// Daily: the local date changed; weekly: the ISO week changed (so 31 December and
/// 1 January can share week 53); monthly: the month changed. A `last_rotated` in the
/// future (the clock was set back) is never due.
pub fn period_due(period: Period, last_rotated: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> bool {
    let last = last_rotated.with_timezone(&tz).date_naive();
    let today = now.with_timezone(&tz).date_naive();
    match period {
        Period::Daily => today > last,
        Period::Weekly => {
            let (l, t) = (last.iso_week(), today.iso_week());
            (t.year(), t.week()) > (l.year(), l.week())
        }
        Period::Monthly => (today.year(), today.month()) > (last.year(), last.month()),
    }
}

/// Decides, for every surveyed file, whether to rotate it and how.
pub fn plan(
    spec: &RotateSpec,
    files: &[FileFacts],
    state: &BTreeMap<PathBuf, FileState>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Plan {
    let files: Vec<FilePlan> = files
        .iter()
        .map(|facts| plan_file(spec, facts, state.get(&facts.path), now, tz))
        .collect();
    let any_rotated = files.iter().any(|f| matches!(f.action, Action::Rotate(_)));
    Plan {
        now,
        notify: spec.notify.clone().filter(|_| any_rotated),
        files,
    }
}

fn decide(
    spec: &RotateSpec,
    facts: &FileFacts,
    state: Option<&FileState>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Action {
    use SkipReason::*;
    if facts.is_symlink {
        return Action::Skip(Symlink);
    }
    if !facts.is_file {
        return Action::Skip(NotRegular);
    }
    if facts.nlink > 1 {
        return Action::Skip(HardLinked { nlink: facts.nlink });
    }
    let size = facts.size;
    let trigger = match (spec.max_size, state, spec.period) {
        (Some(max_size), _, _) if size > max_size => Trigger::MaxSize { size, max_size },
        (_, None, _) => return Action::Record,
        (_, Some(st), Some(period)) => {
            if !period_due(period, st.last_rotated, now, tz) {
                return Action::Skip(NotDue {
                    period,
                    last_rotated: st.last_rotated,
                });
            }
            Trigger::Period {
                period,
                last_rotated: st.last_rotated,
            }
        }
        (max_size, Some(_), None) => {
            return Action::Skip(NotOverMaxSize {
                size,
                max_size: max_size.unwrap_or(u64::MAX),
            });
        }
    };
    if size < spec.min_size {
        return Action::Skip(BelowMinSize {
            size,
            min_size: spec.min_size,
        });
    }
    if size == 0 && !spec.if_empty {
        return Action::Skip(Empty);
    }
    Action::Rotate(trigger)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn gz(path: &Path) -> PathBuf {
    with_suffix(path, ".gz")
}

fn plan_file(
    spec: &RotateSpec,
    facts: &FileFacts,
    state: Option<&FileState>,
    now: DateTime<Utc>,
    tz: Tz,
) -> FilePlan {
    let mut file_plan = FilePlan {
        path: facts.path.clone(),
        action: decide(spec, facts, state, now, tz),
        steps: Vec::new(),
        after_notify: Vec::new(),
    };
    if !matches!(file_plan.action, Action::Rotate(_)) {
        return file_plan;
    }
    let path = &facts.path;
    let mut copies: Vec<&RotatedCopy> = facts
        .copies
        .iter()
        .filter(|c| matches!(c.suffix, CopySuffix::Date(_)) == spec.date_suffix)
        .collect();
    // Newest first: lowest number, latest date. Uncompressed before compressed for a tie,
    // so the order is total and the plan deterministic.
    copies.sort_by(|a, b| {
        let newest = match (a.suffix, b.suffix) {
            (CopySuffix::Date(x), CopySuffix::Date(y)) => y.cmp(&x),
            (x, y) => x.cmp(&y),
        };
        newest.then(a.compressed.cmp(&b.compressed))
    });
    let steps = &mut file_plan.steps;
    let after = &mut file_plan.after_notify;

    if spec.keep == 0 {
        for copy in &copies {
            steps.push(Step::Delete {
                path: copy.path.clone(),
                why: DeleteWhy::RotateZero,
            });
        }
        match spec.method {
            Method::Create => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let discard = path.with_file_name(format!(".{name}.discard{TEMP_SUFFIX}"));
                steps.push(Step::Move {
                    from: path.clone(),
                    to: discard.clone(),
                    method: Method::Create,
                });
                after.push(Step::Delete {
                    path: discard,
                    why: DeleteWhy::RotateZero,
                });
            }
            Method::Copytruncate => steps.push(Step::Truncate { path: path.clone() }),
        }
        return file_plan;
    }

    let first_copy = if spec.date_suffix {
        let today = now.with_timezone(&tz).date_naive();
        if let Some(clash) = copies.iter().find(|c| c.suffix == CopySuffix::Date(today)) {
            file_plan.action = Action::Skip(SkipReason::TargetExists(clash.path.clone()));
            return file_plan;
        }
        with_suffix(path, &today.format("-%Y%m%d").to_string())
    } else {
        with_suffix(path, ".1")
    };

    let too_old = |copy: &RotatedCopy| {
        // A max_age reaching before the start of chrono's calendar deletes nothing.
        spec.max_age
            .and_then(|age| chrono::Duration::from_std(age).ok())
            .and_then(|age| now.checked_sub_signed(age))
            .is_some_and(|cutoff| copy.mtime < cutoff)
    };
    // Uncompressed copies still kept after this run, by their path after the shift.
    let mut kept: Vec<PathBuf> = Vec::new();
    // Walk oldest first so that every shift's target has already been moved away.
    for (position, copy) in copies.iter().enumerate().rev() {
        // Numbered copies are kept up to `.{keep}` after the shift; dated ones by count, the
        // new copy taking the first of `keep` slots.
        let beyond = match copy.suffix {
            CopySuffix::Number(n) => u64::from(n) + 1 > u64::from(spec.keep),
            CopySuffix::Date(_) => position + 1 >= spec.keep as usize,
        };
        let why = if beyond {
            Some(DeleteWhy::BeyondRotate(spec.keep))
        } else if too_old(copy) {
            spec.max_age.map(DeleteWhy::OlderThanMaxAge)
        } else {
            None
        };
        if let Some(why) = why {
            steps.push(Step::Delete {
                path: copy.path.clone(),
                why,
            });
            continue;
        }
        let target = match copy.suffix {
            CopySuffix::Number(n) => {
                let shifted = with_suffix(path, &format!(".{}", n.saturating_add(1)));
                let shifted = if copy.compressed {
                    gz(&shifted)
                } else {
                    shifted
                };
                steps.push(Step::Rename {
                    from: copy.path.clone(),
                    to: shifted.clone(),
                });
                shifted
            }
            CopySuffix::Date(_) => copy.path.clone(),
        };
        if !copy.compressed {
            kept.push(target);
        }
    }
    steps.push(Step::Move {
        from: path.clone(),
        to: first_copy.clone(),
        method: spec.method,
    });
    if spec.compress {
        // Older uncompressed copies are compressed now: with delay_compress that is the
        // previous run's newest copy; without it, one left over by an interrupted run.
        kept.reverse();
        if !spec.delay_compress {
            kept.insert(0, first_copy);
        }
        for copy in kept {
            after.push(Step::Compress {
                to: gz(&copy),
                from: copy,
            });
        }
    }
    file_plan
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::MaxSize { size, max_size } => write!(
                f,
                "size {} is over max_size {}",
                crate::units::bytes(*size),
                crate::units::bytes(*max_size)
            ),
            Trigger::Period {
                period,
                last_rotated,
            } => write!(
                f,
                "{period}, last rotated {}",
                last_rotated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Symlink => {
                f.write_str("is a symbolic link; rotation refused, name the target instead")
            }
            SkipReason::NotRegular => f.write_str("not a regular file"),
            SkipReason::HardLinked { nlink } => write!(
                f,
                "has {nlink} hard links; rotation would split them, remove the extra links"
            ),
            SkipReason::NotDue {
                period,
                last_rotated,
            } => write!(
                f,
                "not due ({period}, last rotated {})",
                last_rotated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            SkipReason::NotOverMaxSize { size, max_size } => write!(
                f,
                "size {} is not over max_size {}",
                crate::units::bytes(*size),
                crate::units::bytes(*max_size)
            ),
            SkipReason::BelowMinSize { size, min_size } => write!(
                f,
                "size {} is below min_size {}",
                crate::units::bytes(*size),
                crate::units::bytes(*min_size)
            ),
            SkipReason::Empty => f.write_str("empty (if_empty: false)"),
            SkipReason::TargetExists(path) => write!(
                f,
                "today's copy {} already exists; date_suffix rotates at most once a day",
                path.display()
            ),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Delete { path, why } => {
                write!(f, "delete {} (", path.display())?;
                match why {
                    DeleteWhy::BeyondRotate(keep) => write!(f, "beyond rotate: {keep})"),
                    DeleteWhy::OlderThanMaxAge(age) => {
                        write!(f, "older than max_age: {})", crate::units::duration(*age))
                    }
                    DeleteWhy::RotateZero => f.write_str("rotate: 0)"),
                }
            }
            Step::Rename { from, to } => {
                write!(f, "rename {} -> {}", from.display(), to.display())
            }
            Step::Move {
                from,
                to,
                method: Method::Create,
            } => write!(
                f,
                "rename {} -> {}, then create a new empty {} with the same mode and owner",
                from.display(),
                to.display(),
                from.display()
            ),
            Step::Move {
                from,
                to,
                method: Method::Copytruncate,
            } => write!(
                f,
                "copy {} -> {}, then truncate {} (lines written in between are lost)",
                from.display(),
                to.display(),
                from.display()
            ),
            Step::Truncate { path } => write!(f, "truncate {} (rotate: 0)", path.display()),
            Step::Compress { from, to } => {
                write!(f, "compress {} -> {}", from.display(), to.display())
            }
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.files.is_empty() {
            return writeln!(f, "no log file matched");
        }
        for file in &self.files {
            match &file.action {
                Action::Rotate(trigger) => {
                    writeln!(f, "{}: rotate ({trigger})", file.path.display())?
                }
                Action::Record => writeln!(
                    f,
                    "{}: first seen, recorded; its period starts now",
                    file.path.display()
                )?,
                Action::Skip(reason) => writeln!(f, "{}: skip, {reason}", file.path.display())?,
            }
            for step in &file.steps {
                writeln!(f, "  {step}")?;
            }
        }
        if let Some(notify) = &self.notify {
            writeln!(f, "then {notify}")?;
        }
        let mut after = self
            .files
            .iter()
            .flat_map(|file| &file.after_notify)
            .peekable();
        if after.peek().is_some() {
            writeln!(f, "then")?;
            for step in after {
                writeln!(f, "  {step}")?;
            }
        }
        Ok(())
    }
}
