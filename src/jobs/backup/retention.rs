//! Tiered backup retention: which backups a keep policy keeps, and why (restic `forget` semantics).
//!
//! Backups are walked newest first. Each counted rule (`last`, `hourly`, `daily`, `weekly`,
//! `monthly`, `yearly`) keeps a backup whose bucket differs from the last one that rule kept,
//! until its count is used up (-1 never runs out); a rule with count left also keeps the
//! oldest backup, which stretches the history as far back as the counts allow. `within`
//! keeps everything newer than a calendar span before the newest backup, and `within_<tier>`
//! keeps one backup per bucket inside such a span. One backup can satisfy several rules.
//!
//! Buckets (hour, day, ISO week, month, year) and calendar spans are computed in the
//! configured time zone, so "one per day" means one per local day, including the 23- and
//! 25-hour days of DST changes. The newest backup is never deleted.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::Deserialize;

/// How many backups a counted rule keeps: 0 = rule off, -1 = unlimited.
pub const UNLIMITED: i32 = -1;

/// A keep policy. Counts: 0 = rule off, -1 = unlimited, anything below -1 is ignored (and
/// rejected by [`KeepConfig::to_policy`]). Spans of zero length are treated as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: i32,
    pub hourly: i32,
    pub daily: i32,
    pub weekly: i32,
    pub monthly: i32,
    pub yearly: i32,
    pub within: Option<CalendarSpan>,
    pub within_hourly: Option<CalendarSpan>,
    pub within_daily: Option<CalendarSpan>,
    pub within_weekly: Option<CalendarSpan>,
    pub within_monthly: Option<CalendarSpan>,
    pub within_yearly: Option<CalendarSpan>,
}

impl Policy {
    /// True when no rule would keep anything: [`decide`] then keeps every backup rather than
    /// deleting them all.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        let spans = [
            self.within,
            self.within_hourly,
            self.within_daily,
            self.within_weekly,
            self.within_monthly,
            self.within_yearly,
        ];
        counts.iter().all(|&count| count == 0)
            && spans.iter().all(|span| span.is_none_or(|s| s.is_zero()))
    }

    fn counted_rules(&self) -> [(i32, Rule); 6] {
        [
            (self.last, Rule::Last),
            (self.hourly, Rule::Tier(Tier::Hourly)),
            (self.daily, Rule::Tier(Tier::Daily)),
            (self.weekly, Rule::Tier(Tier::Weekly)),
            (self.monthly, Rule::Tier(Tier::Monthly)),
            (self.yearly, Rule::Tier(Tier::Yearly)),
        ]
    }

    fn tiers_within(&self) -> [(Option<CalendarSpan>, Tier); 5] {
        [
            (self.within_hourly, Tier::Hourly),
            (self.within_daily, Tier::Daily),
            (self.within_weekly, Tier::Weekly),
            (self.within_monthly, Tier::Monthly),
            (self.within_yearly, Tier::Yearly),
        ]
    }
}

/// A length of calendar time measured back from the newest backup: years and months are
/// calendar years and months (so "1m" before March 31 is March 3, as in restic, because
/// February 31 rolls over), days are calendar days (the same local clock time across a DST
/// change), hours are elapsed hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CalendarSpan {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl CalendarSpan {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The instant `self` before `newest`, in `tz`'s calendar; `None` if that lies beyond
    /// the dates chrono can represent, which means "since the beginning of time".
    fn before(&self, newest: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = newest.with_timezone(&tz).naive_local();
        let months = i64::from(local.year()) * 12 + i64::from(local.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month = u32::try_from(months.rem_euclid(12)).ok()? + 1;
        // Like Go's time.AddDate (and so restic), a day past the end of the month rolls over
        // into the next one instead of being clamped.
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let date = first.checked_add_signed(Duration::try_days(
            i64::from(local.day()) - 1 - i64::from(self.days),
        )?)?;
        let start = resolve_local(tz, date.and_time(local.time()))?;
        start.checked_sub_signed(Duration::try_hours(i64::from(self.hours))?)
    }
}

/// Maps a local wall-clock time to an instant. A time that occurs twice (DST fall-back) is
/// its first occurrence; a time skipped by a DST gap is read with the offset in force
/// before the gap, which lands just after it.
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            // A day earlier is safely before the gap: transitions are months apart.
            let before_gap = local.checked_sub_signed(Duration::days(1))?.and_utc();
            let offset = tz.offset_from_utc_datetime(&before_gap.naive_utc()).fix();
            Some(
                local
                    .checked_sub_signed(Duration::seconds(i64::from(offset.local_minus_utc())))?
                    .and_utc(),
            )
        }
    }
}

/// Prints like restic: the non-zero units in order, e.g. `1y2m3d4h`, `30d`.
impl fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        for (value, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

/// Why a text could not be read as a [`CalendarSpan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time span {input:?}: {problem}; expected whole numbers with units y (years), m (months), \
     w (weeks of 7 days), d (days), h (hours), each at most once and in that order, \
     e.g. \"1y2m3d4h\", \"30d\", \"2w\", \"6h\""
)]
pub struct ParseSpanError {
    input: String,
    problem: String,
}

impl FromStr for CalendarSpan {
    type Err = ParseSpanError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| ParseSpanError {
            input: input.to_string(),
            problem,
        };
        if input.is_empty() {
            return Err(fail("it is empty".to_string()));
        }
        const UNITS: [char; 5] = ['y', 'm', 'w', 'd', 'h'];
        let mut values = [0u32; 5];
        // Index into UNITS of the next unit allowed, which enforces order and uniqueness.
        let mut next_unit = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(fail(format!("expected a number at {rest:?}")));
            }
            let number: u32 = rest[..digits]
                .parse()
                .map_err(|_| fail(format!("{} is too large", &rest[..digits])))?;
            let Some(unit) = rest[digits..].chars().next() else {
                return Err(fail(format!("the number {number} has no unit")));
            };
            let Some(position) = UNITS.iter().position(|&u| u == unit) else {
                return Err(fail(format!("unknown unit {unit:?}")));
            };
            if position < next_unit {
                return Err(fail(format!("unit {unit:?} is repeated or out of order")));
            }
            values[position] = number;
            next_unit = position + 1;
            rest = &rest[digits + unit.len_utf8()..];
        }
        let [years, months, weeks, days, hours] = values;
        let days = weeks
            .checked_mul(7)
            .and_then(|week_days| week_days.checked_add(days))
            .ok_or_else(|| fail("the number of days is too large".to_string()))?;
        Ok(Self {
            years,
            months,
            days,
            hours,
        })
    }
}

/// The `keep` section of the configuration, as written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepConfig {
    pub last: Option<i32>,
    pub hourly: Option<i32>,
    pub daily: Option<i32>,
    pub weekly: Option<i32>,
    pub monthly: Option<i32>,
    pub yearly: Option<i32>,
    pub within: Option<String>,
    pub within_hourly: Option<String>,
    pub within_daily: Option<String>,
    pub within_weekly: Option<String>,
    pub within_monthly: Option<String>,
    pub within_yearly: Option<String>,
}

impl KeepConfig {
    /// Validates the section into a [`Policy`]. Errors name the key and what it accepts.
    pub fn to_policy(&self) -> Result<Policy, String> {
        let count = |key: &str, value: Option<i32>| -> Result<i32, String> {
            match value.unwrap_or(0) {
                n if n >= UNLIMITED => Ok(n),
                n => Err(format!(
                    "keep.{key} = {n} is not a valid count; accepted: a number of backups to keep \
                     (0 or more), or -1 to keep all of them"
                )),
            }
        };
        let span = |key: &str, value: &Option<String>| -> Result<Option<CalendarSpan>, String> {
            let Some(text) = value else { return Ok(None) };
            let span: CalendarSpan = text.parse().map_err(|e| format!("keep.{key}: {e}"))?;
            if span.is_zero() {
                return Err(format!(
                    "keep.{key} = {text:?} is a span of zero length, which keeps nothing; \
                     give a positive span such as \"1d\", or remove the key"
                ));
            }
            Ok(Some(span))
        };
        let policy = Policy {
            last: count("last", self.last)?,
            hourly: count("hourly", self.hourly)?,
            daily: count("daily", self.daily)?,
            weekly: count("weekly", self.weekly)?,
            monthly: count("monthly", self.monthly)?,
            yearly: count("yearly", self.yearly)?,
            within: span("within", &self.within)?,
            within_hourly: span("within_hourly", &self.within_hourly)?,
            within_daily: span("within_daily", &self.within_daily)?,
            within_weekly: span("within_weekly", &self.within_weekly)?,
            within_monthly: span("within_monthly", &self.within_monthly)?,
            within_yearly: span("within_yearly", &self.within_yearly)?,
        };
        if policy.is_empty() {
            return Err(
                "the keep policy keeps nothing; set at least one of last, hourly, daily, weekly, \
                 monthly, yearly (a count, or -1 for all) or within, within_hourly, within_daily, \
                 within_weekly, within_monthly, within_yearly (a span such as \"30d\")"
                    .to_string(),
            );
        }
        Ok(policy)
    }
}

/// A calendar bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }

    fn bucket(self, local: DateTime<Tz>) -> Bucket {
        match self {
            // The offset tells apart the two hours that share a clock reading when DST ends.
            Tier::Hourly => Bucket::Hour(
                local.date_naive(),
                local.hour(),
                local.offset().fix().local_minus_utc(),
            ),
            Tier::Daily => Bucket::Day(local.date_naive()),
            Tier::Weekly => {
                let week = local.iso_week();
                Bucket::IsoWeek(week.year(), week.week())
            }
            Tier::Monthly => Bucket::Month(local.year(), local.month()),
            Tier::Yearly => Bucket::Year(local.year()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    /// `last`: every backup is a bucket of its own, identified by its position.
    Nth(usize),
    Hour(NaiveDate, u32, i32),
    Day(NaiveDate),
    IsoWeek(i32, u32),
    Month(i32, u32),
    Year(i32),
}

/// A counted rule's progress down the list of backups.
struct CountedRule {
    /// Backups this rule may still keep; -1 for unlimited.
    left: i32,
    rule: Rule,
    last_kept: Option<Bucket>,
}

/// A `within_<tier>` rule: its window and its progress down the list of backups.
struct TierWindow {
    tier: Tier,
    span: CalendarSpan,
    /// Backups after this instant are inside; `None` means all of them are.
    start: Option<DateTime<Utc>>,
    last_kept: Option<Bucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Tier(Tier),
}

/// Why a backup is kept. Displays exactly as restic's reason strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `within`: newer than the span before the newest backup.
    Within(CalendarSpan),
    /// `last`: among the N newest.
    Last,
    /// A counted tier; `oldest` when kept only because it is the oldest backup and the
    /// tier had count left.
    Tier { tier: Tier, oldest: bool },
    /// `within_<tier>`: first of its bucket inside the span; `oldest` as for [`Reason::Tier`].
    TierWithin {
        tier: Tier,
        span: CalendarSpan,
        oldest: bool,
    },
    /// The policy would have deleted the newest backup, which is never done.
    NewestBackup,
    /// The policy has no rules; everything is kept rather than everything deleted.
    EmptyPolicy,
    /// The caller paused retention for this run (a backup job whose new archive failed its
    /// shrink guard): nothing is deleted to make room for it.
    Paused,
    /// This backup failed a check when it was written: it takes no keep slot, and stays while
    /// it is newer than the oldest backup the policy keeps.
    Held,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = |oldest: bool| if oldest { "oldest " } else { "" };
        match self {
            Reason::Within(span) => write!(f, "within {span}"),
            Reason::Last => f.write_str("last snapshot"),
            Reason::Tier { tier, oldest: o } => {
                write!(f, "{}{} snapshot", oldest(*o), tier.name())
            }
            Reason::TierWithin {
                tier,
                span,
                oldest: o,
            } => write!(f, "{}{} within {span}", oldest(*o), tier.name()),
            Reason::NewestBackup => f.write_str("newest backup"),
            Reason::EmptyPolicy => f.write_str("policy is empty"),
            Reason::Paused => f.write_str("retention paused"),
            Reason::Held => f.write_str("held: failed its shrink guard"),
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub time: DateTime<Utc>,
    pub item: T,
    pub keep: bool,
    /// Empty exactly when `keep` is false.
    pub reasons: Vec<Reason>,
}

/// Applies `policy` to `backups` (each a creation time and whatever identifies it, such as a
/// path), with buckets and spans in `tz`. Returns one decision per backup, newest first;
/// backups with equal times keep their input order.
pub fn decide<T>(backups: Vec<(DateTime<Utc>, T)>, policy: &Policy, tz: Tz) -> Vec<Decision<T>> {
    let mut backups = backups;
    // Stable, so equal times stay in input order, as restic's sort.Stable does.
    backups.sort_by_key(|b| std::cmp::Reverse(b.0));
    let Some(&(newest, _)) = backups.first() else {
        return Vec::new();
    };
    let count = backups.len();

    if policy.is_empty() {
        return backups
            .into_iter()
            .map(|(time, item)| Decision {
                time,
                item,
                keep: true,
                reasons: vec![Reason::EmptyPolicy],
            })
            .collect();
    }

    // Window starts; `None` inside means the span reaches past representable time.
    let window = |span: Option<CalendarSpan>| {
        span.filter(|s| !s.is_zero())
            .map(|s| (s, s.before(newest, tz)))
    };
    let within = window(policy.within);
    let mut counted: Vec<CountedRule> = policy
        .counted_rules()
        .into_iter()
        .filter(|&(left, _)| left > 0 || left == UNLIMITED)
        .map(|(left, rule)| CountedRule {
            left,
            rule,
            last_kept: None,
        })
        .collect();
    let mut tiers_within: Vec<TierWindow> = policy
        .tiers_within()
        .into_iter()
        .filter_map(|(span, tier)| {
            window(span).map(|(span, start)| TierWindow {
                tier,
                span,
                start,
                last_kept: None,
            })
        })
        .collect();

    let inside = |time: DateTime<Utc>, start: Option<DateTime<Utc>>| start.is_none_or(|s| time > s);

    backups
        .into_iter()
        .enumerate()
        .map(|(nr, (time, item))| {
            let is_oldest = nr == count - 1;
            let local = time.with_timezone(&tz);
            let mut reasons = Vec::new();

            if let Some((span, start)) = within
                && inside(time, start)
            {
                reasons.push(Reason::Within(span));
            }
            for counted in counted.iter_mut().filter(|c| c.left != 0) {
                let bucket = match counted.rule {
                    Rule::Last => Bucket::Nth(nr),
                    Rule::Tier(tier) => tier.bucket(local),
                };
                let new_bucket = counted.last_kept != Some(bucket);
                if new_bucket || is_oldest {
                    reasons.push(match counted.rule {
                        Rule::Last => Reason::Last,
                        Rule::Tier(tier) => Reason::Tier {
                            tier,
                            oldest: !new_bucket,
                        },
                    });
                    counted.last_kept = Some(bucket);
                    if counted.left > 0 {
                        counted.left -= 1;
                    }
                }
            }
            for window in tiers_within.iter_mut().filter(|w| inside(time, w.start)) {
                let bucket = window.tier.bucket(local);
                let new_bucket = window.last_kept != Some(bucket);
                if new_bucket || is_oldest {
                    reasons.push(Reason::TierWithin {
                        tier: window.tier,
                        span: window.span,
                        oldest: !new_bucket,
                    });
                    window.last_kept = Some(bucket);
                }
            }
            if nr == 0 && reasons.is_empty() {
                reasons.push(Reason::NewestBackup);
            }
            Decision {
                time,
                item,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Berlin, UTC};

    /// Runs `decide` on backups given as RFC 3339 texts (any offset) and returns the kept
    /// ones, newest first, as (input text, reasons).
    fn kept(backups: &[&str], policy: &Policy, tz: Tz) -> Vec<(String, Vec<String>)> {
        let backups = backups
            .iter()
            .map(|text| {
                let time = DateTime::parse_from_rfc3339(text)
                    .unwrap_or_else(|e| panic!("test time {text}: {e}"))
                    .with_timezone(&Utc);
                (time, text.to_string())
            })
            .collect();
        decide(backups, policy, tz)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| (d.item, d.reasons.iter().map(ToString::to_string).collect()))
            .collect()
    }

    /// Kept backups with their reasons, newest first.
    type Expected<'a> = &'a [(&'a str, &'a [&'a str])];

    fn expect(pairs: Expected) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(time, reasons)| {
                (
                    time.to_string(),
                    reasons.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    fn span(text: &str) -> CalendarSpan {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spans_parse_from_the_accepted_forms() {
        let ymdh = |years, months, days, hours| CalendarSpan {
            years,
            months,
            days,
            hours,
        };
        let cases = [
            ("1y2m3d4h", ymdh(1, 2, 3, 4)),
            ("30d", ymdh(0, 0, 30, 0)),
            ("2w", ymdh(0, 0, 14, 0)),
            ("1w2d", ymdh(0, 0, 9, 0)),
            ("6h", ymdh(0, 0, 0, 6)),
            ("18m", ymdh(0, 18, 0, 0)),
            ("1y12h", ymdh(1, 0, 0, 12)),
            ("0d", ymdh(0, 0, 0, 0)),
        ];
        for (text, expected) in cases {
            assert_eq!(span(text), expected, "{text}");
        }
    }

    #[test]
    fn bad_spans_are_rejected_naming_the_input_and_the_accepted_forms() {
        let cases = [
            ("", "it is empty"),
            ("d", "expected a number"),
            ("30", "has no unit"),
            ("3x", "unknown unit 'x'"),
            ("3D", "unknown unit 'D'"),
            ("1d1y", "out of order"),
            ("1d1d", "repeated"),
            ("-1d", "expected a number"),
            ("1.5d", "unknown unit '.'"),
            (" 1d", "expected a number"),
            ("99999999999d", "too large"),
            ("613566757w", "days is too large"),
        ];
        for (text, problem) in cases {
            let err = text.parse::<CalendarSpan>().expect_err(text).to_string();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
            assert!(err.contains(problem), "{text}: {err}");
            assert!(
                err.contains("e.g. \"1y2m3d4h\", \"30d\", \"2w\", \"6h\""),
                "{err}"
            );
        }
    }

    #[test]
    fn spans_display_like_restic() {
        for (text, shown) in [
            ("1y2m3d4h", "1y2m3d4h"),
            ("2w", "14d"),
            ("1m14d", "1m14d"),
            ("0h", "0h"),
        ] {
            assert_eq!(span(text).to_string(), shown);
        }
    }

    #[test]
    fn keep_config_parses_into_a_policy() {
        let config: KeepConfig = serde_json::from_str(
            r#"{"last": 3, "daily": 7, "weekly": -1, "within": "2d", "within_monthly": "1y"}"#,
        )
        .expect("valid keep section");
        let policy = config.to_policy().expect("valid policy");
        assert_eq!(
            policy,
            Policy {
                last: 3,
                daily: 7,
                weekly: -1,
                within: Some(span("2d")),
                within_monthly: Some(span("1y")),
                ..Policy::default()
            }
        );
    }

    #[test]
    fn keep_config_rejects_bad_sections_saying_what_is_accepted() {
        let unknown = serde_json::from_str::<KeepConfig>(r#"{"dayly": 7}"#)
            .expect_err("unknown key")
            .to_string();
        assert!(
            unknown.contains("dayly") && unknown.contains("daily"),
            "{unknown}"
        );

        let cases: &[(&str, &[&str])] = &[
            ("{}", &["keeps nothing", "last, hourly", "within_yearly"]),
            (r#"{"daily": 0}"#, &["keeps nothing"]),
            (r#"{"daily": -2}"#, &["keep.daily = -2", "-1 to keep all"]),
            (
                r#"{"last": 1, "within_weekly": "3x"}"#,
                &["keep.within_weekly", "\"3x\"", "e.g."],
            ),
            (
                r#"{"within": "0d"}"#,
                &["keep.within = \"0d\"", "zero length"],
            ),
        ];
        for (json, fragments) in cases {
            let config: KeepConfig = serde_json::from_str(json).expect(json);
            let err = config.to_policy().expect_err(json);
            for fragment in *fragments {
                assert!(err.contains(fragment), "{json}: {err:?} lacks {fragment:?}");
            }
        }
    }

    #[test]
    fn daily_buckets_follow_local_days_across_dst_changes() {
        let daily = Policy {
            daily: -1,
            ..Policy::default()
        };
        // Spring forward (23-hour day) and fall back (25-hour day): the first and last hour
        // of the local day are one daily bucket, though they fall on two UTC dates.
        let cases: &[(&str, Tz, &[&str], Expected)] = &[
            (
                "spring forward, Berlin",
                Berlin,
                &[
                    "2026-03-29T23:30:00+02:00",
                    "2026-03-29T00:30:00+01:00",
                    "2026-03-28T12:00:00+01:00",
                ],
                &[
                    ("2026-03-29T23:30:00+02:00", &["daily snapshot"]),
                    ("2026-03-28T12:00:00+01:00", &["daily snapshot"]),
                ],
            ),
            (
                "fall back, Berlin",
                Berlin,
                &[
                    "2026-10-25T23:30:00+01:00",
                    "2026-10-25T00:30:00+02:00",
                    "2026-10-24T12:00:00+02:00",
                ],
                &[
                    ("2026-10-25T23:30:00+01:00", &["daily snapshot"]),
                    ("2026-10-24T12:00:00+02:00", &["daily snapshot"]),
                ],
            ),
            (
                "fall back, same backups in UTC",
                UTC,
                &[
                    "2026-10-25T23:30:00+01:00",
                    "2026-10-25T00:30:00+02:00",
                    "2026-10-24T12:00:00+02:00",
                ],
                &[
                    ("2026-10-25T23:30:00+01:00", &["daily snapshot"]),
                    ("2026-10-25T00:30:00+02:00", &["daily snapshot"]),
                    ("2026-10-24T12:00:00+02:00", &["oldest daily snapshot"]),
                ],
            ),
            (
                "fall back, New York",
                New_York,
                &[
                    "2026-11-01T23:30:00-05:00",
                    "2026-11-01T00:30:00-04:00",
                    "2026-10-31T12:00:00-04:00",
                ],
                &[
                    ("2026-11-01T23:30:00-05:00", &["daily snapshot"]),
                    ("2026-10-31T12:00:00-04:00", &["daily snapshot"]),
                ],
            ),
        ];
        for (name, tz, backups, expected) in cases {
            assert_eq!(kept(backups, &daily, *tz), expect(expected), "{name}");
        }
    }

    #[test]
    fn the_repeated_hour_when_dst_ends_is_two_hourly_buckets() {
        let hourly = Policy {
            hourly: -1,
            ..Policy::default()
        };
        let backups = [
            "2026-10-25T02:40:00+01:00",
            "2026-10-25T02:10:00+01:00",
            "2026-10-25T02:40:00+02:00",
            "2026-10-25T02:10:00+02:00",
            "2026-10-25T01:10:00+02:00",
        ];
        assert_eq!(
            kept(&backups, &hourly, Berlin),
            expect(&[
                ("2026-10-25T02:40:00+01:00", &["hourly snapshot"]),
                ("2026-10-25T02:40:00+02:00", &["hourly snapshot"]),
                ("2026-10-25T01:10:00+02:00", &["hourly snapshot"]),
            ])
        );
    }

    #[test]
    fn within_counts_calendar_days_across_dst_changes() {
        // From 12:00 CEST on the spring-forward day, "1d" reaches back to 12:00 CET the day
        // before: 23 elapsed hours, not 24.
        let within = Policy {
            within: Some(span("1d")),
            ..Policy::default()
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "spring forward",
                &[
                    "2026-03-29T12:00:00+02:00",
                    "2026-03-28T12:30:00+01:00",
                    "2026-03-28T11:30:00+01:00",
                ],
                &["2026-03-29T12:00:00+02:00", "2026-03-28T12:30:00+01:00"],
            ),
            (
                "fall back: 25 elapsed hours",
                &[
                    "2026-10-25T12:00:00+01:00",
                    "2026-10-24T12:30:00+02:00",
                    "2026-10-24T11:30:00+02:00",
                ],
                &["2026-10-25T12:00:00+01:00", "2026-10-24T12:30:00+02:00"],
            ),
            (
                // 02:30 on March 29 does not exist; the window starts at 03:30 CEST instead.
                "window start in the DST gap",
                &[
                    "2026-03-30T02:30:00+02:00",
                    "2026-03-29T03:40:00+02:00",
                    "2026-03-29T03:20:00+02:00",
                ],
                &["2026-03-30T02:30:00+02:00", "2026-03-29T03:40:00+02:00"],
            ),
        ];
        for (name, backups, expected) in cases {
            let got: Vec<String> = kept(backups, &within, Berlin)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            assert_eq!(got, *expected, "{name}");
        }
    }

    #[test]
    fn a_month_before_march_31_rolls_over_like_restic() {
        // February 31 does not exist; like Go's AddDate it becomes March 3, not February 28.
        let policy = Policy {
            within: Some(span("1m")),
            ..Policy::default()
        };
        let backups = [
            "2026-03-31T12:00:00Z",
            "2026-03-03T12:30:00Z",
            "2026-03-03T11:30:00Z",
            "2026-02-28T13:00:00Z",
        ];
        let got: Vec<String> = kept(&backups, &policy, UTC)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(got, ["2026-03-31T12:00:00Z", "2026-03-03T12:30:00Z"]);
    }

    #[test]
    fn iso_week_53_spans_the_new_year() {
        // 2020-12-31 (Thursday) and 2021-01-01 (Friday) are both in ISO week 53 of 2020.
        let backups = [
            "2021-01-05T12:00:00+01:00",
            "2021-01-04T12:00:00+01:00",
            "2021-01-01T12:00:00+01:00",
            "2020-12-31T12:00:00+01:00",
            "2020-12-28T12:00:00+01:00",
            "2020-12-20T12:00:00+01:00",
        ];
        let weekly = Policy {
            weekly: -1,
            ..Policy::default()
        };
        assert_eq!(
            kept(&backups, &weekly, Berlin),
            expect(&[
                ("2021-01-05T12:00:00+01:00", &["weekly snapshot"]),
                ("2021-01-01T12:00:00+01:00", &["weekly snapshot"]),
                ("2020-12-20T12:00:00+01:00", &["weekly snapshot"]),
            ])
        );
        let weekly_and_yearly = Policy {
            weekly: 2,
            yearly: 2,
            ..Policy::default()
        };
        assert_eq!(
            kept(&backups, &weekly_and_yearly, Berlin),
            expect(&[
                (
                    "2021-01-05T12:00:00+01:00",
                    &["weekly snapshot", "yearly snapshot"]
                ),
                ("2021-01-01T12:00:00+01:00", &["weekly snapshot"]),
                ("2020-12-31T12:00:00+01:00", &["yearly snapshot"]),
            ])
        );
    }

    #[test]
    fn year_month_and_day_follow_the_local_calendar_at_new_year() {
        // 03:00 UTC on 2021-01-01 is still 2020-12-31 in New York.
        let backups = [
            "2021-01-01T06:00:00Z",
            "2021-01-01T03:00:00Z",
            "2020-12-31T12:00:00Z",
            "2019-06-01T12:00:00Z",
        ];
        let policy = |yearly, monthly, daily| Policy {
            yearly,
            monthly,
            daily,
            ..Policy::default()
        };
        let cases: &[(Policy, Tz, &[&str])] = &[
            (
                policy(-1, 0, 0),
                New_York,
                &[
                    "2021-01-01T06:00:00Z",
                    "2021-01-01T03:00:00Z",
                    "2019-06-01T12:00:00Z",
                ],
            ),
            (
                policy(-1, 0, 0),
                UTC,
                &[
                    "2021-01-01T06:00:00Z",
                    "2020-12-31T12:00:00Z",
                    "2019-06-01T12:00:00Z",
                ],
            ),
            (
                policy(0, 2, 0),
                New_York,
                &["2021-01-01T06:00:00Z", "2021-01-01T03:00:00Z"],
            ),
            (
                policy(0, 0, 2),
                New_York,
                &["2021-01-01T06:00:00Z", "2021-01-01T03:00:00Z"],
            ),
            (
                policy(0, 0, 2),
                UTC,
                &["2021-01-01T06:00:00Z", "2020-12-31T12:00:00Z"],
            ),
        ];
        for (policy, tz, expected) in cases {
            let got: Vec<String> = kept(&backups, policy, *tz)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            assert_eq!(got, *expected, "{policy:?} in {tz}");
        }
    }

    #[test]
    fn the_newest_backup_is_never_deleted() {
        let backups = ["2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"];
        // Counts below -1 are ignored, so this policy has no rule that keeps anything.
        let broken = Policy {
            daily: -5,
            ..Policy::default()
        };
        assert!(!broken.is_empty());
        assert_eq!(
            kept(&backups, &broken, UTC),
            expect(&[("2026-01-03T00:00:00Z", &["newest backup"])])
        );
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let backups = ["2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"];
        let empty = Policy {
            within: Some(CalendarSpan::default()),
            ..Policy::default()
        };
        assert!(empty.is_empty());
        assert_eq!(
            kept(&backups, &empty, UTC),
            expect(&[
                ("2026-01-03T00:00:00Z", &["policy is empty"]),
                ("2026-01-02T00:00:00Z", &["policy is empty"]),
            ])
        );
        assert!(decide(Vec::<(DateTime<Utc>, ())>::new(), &Policy::default(), UTC).is_empty());
    }

    #[test]
    fn decisions_are_newest_first_and_ties_keep_input_order() {
        let t = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect(text)
                .with_timezone(&Utc)
        };
        let backups = vec![
            (t("2026-01-01T00:00:00Z"), "a"),
            (t("2026-01-03T00:00:00Z"), "b"),
            (t("2026-01-03T00:00:00Z"), "c"),
            (t("2026-01-02T00:00:00Z"), "d"),
        ];
        let last_one = Policy {
            last: 1,
            ..Policy::default()
        };
        let decisions = decide(backups, &last_one, UTC);
        let order: Vec<(&str, bool)> = decisions.iter().map(|d| (d.item, d.keep)).collect();
        assert_eq!(
            order,
            [("b", true), ("c", false), ("d", false), ("a", false)]
        );
    }

    #[test]
    fn huge_spans_reach_back_to_the_beginning_of_time() {
        let backups = ["2026-01-03T00:00:00Z", "1970-01-01T00:00:00Z"];
        for text in ["4000000000y", "4000000000h", "4000000000m"] {
            let policy = Policy {
                within: Some(span(text)),
                ..Policy::default()
            };
            assert_eq!(kept(&backups, &policy, Berlin).len(), 2, "{text}");
        }
    }
}
