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
    "invalid time span {input:?}: {problem}; expected numbers with units y (years), m (months), \
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
    backups.sort_by(|a, b| b.0.cmp(&a.0));
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
    let mut counted: Vec<(i32, Rule, Option<Bucket>)> = policy
        .counted_rules()
        .into_iter()
        .filter(|&(n, _)| n > 0 || n == UNLIMITED)
        .map(|(n, rule)| (n, rule, None))
        .collect();
    let mut tiers_within: Vec<(Tier, CalendarSpan, Option<DateTime<Utc>>, Option<Bucket>)> = policy
        .tiers_within()
        .into_iter()
        .filter_map(|(span, tier)| window(span).map(|(s, start)| (tier, s, start, None)))
        .collect();

    let inside = |time: DateTime<Utc>, start: Option<DateTime<Utc>>| start.is_none_or(|s| time > s);

    backups
        .into_iter()
        .enumerate()
        .map(|(nr, (time, item))| {
            let is_oldest = nr == count - 1;
            let local = time.with_timezone(&tz);
            let mut reasons = Vec::new();

            if let Some((span, start)) = within {
                if inside(time, start) {
                    reasons.push(Reason::Within(span));
                }
            }
            for (left, rule, last_kept) in counted.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let bucket = match rule {
                    Rule::Last => Bucket::Nth(nr),
                    Rule::Tier(tier) => tier.bucket(local),
                };
                let new_bucket = *last_kept != Some(bucket);
                if new_bucket || is_oldest {
                    reasons.push(match rule {
                        Rule::Last => Reason::Last,
                        Rule::Tier(tier) => Reason::Tier {
                            tier: *tier,
                            oldest: !new_bucket,
                        },
                    });
                    *last_kept = Some(bucket);
                    if *left > 0 {
                        *left -= 1;
                    }
                }
            }
            for (tier, span, start, last_kept) in tiers_within.iter_mut() {
                if !inside(time, *start) {
                    continue;
                }
                let bucket = tier.bucket(local);
                let new_bucket = *last_kept != Some(bucket);
                if new_bucket || is_oldest {
                    reasons.push(Reason::TierWithin {
                        tier: *tier,
                        span: *span,
                        oldest: !new_bucket,
                    });
                    *last_kept = Some(bucket);
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
