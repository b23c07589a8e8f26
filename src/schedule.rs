//! When a job is due: cron expressions evaluated in the configured time zone.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression: 5 fields, 6 with seconds first, or an `@` nickname.
///
/// Day of month and day of week combine as in classic cron: `0 0 13 * FRI` runs on every
/// 13th and on every Friday, which is what crontab users expect.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

const ACCEPTED: &str = "accepted: 5 fields (minute hour day-of-month month day-of-week), 6 fields with seconds first, or @hourly @daily @weekly @monthly @yearly";

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!("`{text}` has {fields} fields; {ACCEPTED}"));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build();
        let cron = parser
            .parse(trimmed)
            .map_err(|e| format!("`{text}` is not a valid cron expression ({e}); {ACCEPTED}"))?;
        let schedule = Schedule {
            text: trimmed.to_string(),
            cron,
        };
        if !schedule.ever_fires() {
            return Err(format!(
                "`{text}` never fires: no date matches it (e.g. the 30th of February); accepted: a day of month that the chosen months have"
            ));
        }
        Ok(schedule)
    }

    /// Whether the expression matches any instant at all. Every pattern that fires at all
    /// fires within 8 years of any start: a weekday repeats weekly, and the rarest day of
    /// month, the 29th of February, comes every 4 years (8 across a century that skips one).
    /// The start is fixed so the answer does not depend on the clock.
    fn ever_fires(&self) -> bool {
        let start = DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("2000-01-01 is a date");
        let end = start + chrono::Duration::days(8 * 366);
        self.cron
            .find_next_occurrence(&start, true)
            .is_ok_and(|t| t <= end)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first run strictly after `after`, computed on the wall clock of `tz`: on a
    /// spring-forward day a run in the skipped hour moves to the first valid instant, and on a
    /// fall-back day a run in the repeated hour happens once.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest run at or before `at`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    pub fn upcoming(&self, after: DateTime<Utc>, tz: Tz, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = after;
        while out.len() < count {
            match self.next_after(t, tz) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(tz: Tz, s: &str) -> String {
        utc(s).with_timezone(&tz).to_rfc3339()
    }

    /// (zone, pattern, after (UTC), expected next runs as local RFC 3339)
    const CASES: &[(&str, &str, &str, &[&str])] = &[
        // Europe/Berlin spring forward: 2026-03-29 02:00 CET -> 03:00 CEST. 02:30 does not exist.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-27T12:00:00Z",
            &[
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
            ],
        ),
        // Europe/Berlin fall back: 2026-10-25 03:00 CEST -> 02:00 CET. 02:30 happens twice; run once.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        // A daily 10:00 job keeps 10:00 local across the change (the bug measured in tokio-cron-scheduler).
        (
            "Europe/Berlin",
            "0 10 * * *",
            "2026-03-28T12:00:00Z",
            &["2026-03-29T10:00:00+02:00", "2026-03-30T10:00:00+02:00"],
        ),
        // America/New_York spring forward: 2026-03-08 02:00 EST -> 03:00 EDT.
        (
            "America/New_York",
            "15 2 * * *",
            "2026-03-07T12:00:00Z",
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:15:00-04:00"],
        ),
        // America/New_York fall back: 2026-11-01 02:00 EDT -> 01:00 EST. 01:30 happens twice.
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        // Hourly across the New York fall-back: the repeated hour is one wall-clock hour.
        (
            "America/New_York",
            "@hourly",
            "2026-11-01T04:30:00Z",
            &["2026-11-01T01:00:00-04:00"],
        ),
        // Month ends: the 31st skips short months; `L` is not needed for that.
        (
            "UTC",
            "0 0 31 * *",
            "2026-01-31T01:00:00Z",
            &["2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00"],
        ),
        (
            "UTC",
            "0 0 29 2 *",
            "2026-01-01T00:00:00Z",
            &["2028-02-29T00:00:00+00:00"],
        ),
        // Six fields: seconds first.
        (
            "UTC",
            "*/20 * * * * *",
            "2026-01-01T00:00:05Z",
            &["2026-01-01T00:00:20+00:00", "2026-01-01T00:00:40+00:00"],
        ),
        // Day of month OR day of week, as crontab does.
        (
            "UTC",
            "0 0 13 * FRI",
            "2026-11-01T00:00:00Z",
            &[
                "2026-11-06T00:00:00+00:00",
                "2026-11-13T00:00:00+00:00",
                "2026-11-20T00:00:00+00:00",
            ],
        ),
        (
            "Europe/Berlin",
            "@weekly",
            "2026-11-22T12:00:00Z",
            &["2026-11-29T00:00:00+01:00"],
        ),
        (
            "UTC",
            "@yearly",
            "2026-06-01T00:00:00Z",
            &["2027-01-01T00:00:00+00:00"],
        ),
    ];

    #[test]
    fn next_runs_follow_the_wall_clock_of_the_zone() {
        for (zone, pattern, after, expected) in CASES {
            let tz: Tz = zone.parse().unwrap();
            let schedule = Schedule::parse(pattern).unwrap();
            let got: Vec<String> = schedule
                .upcoming(utc(after), tz, expected.len())
                .into_iter()
                .map(|t| t.with_timezone(&tz).to_rfc3339())
                .collect();
            assert_eq!(&got, expected, "{zone} {pattern} after {after}");
        }
    }

    #[test]
    fn the_repeated_fall_back_hour_runs_an_hourly_job_twice_in_utc_but_a_daily_once() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let runs = hourly.upcoming(utc("2026-11-01T03:30:00Z"), tz, 3);
        assert_eq!(
            runs.iter()
                .map(|t| local(tz, &t.to_rfc3339()))
                .collect::<Vec<_>>()
                .len(),
            3
        );
        assert!(runs.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn previous_run_is_found_for_catch_up() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let s = Schedule::parse("0 2 * * *").unwrap();
        let prev = s
            .previous_at_or_before(utc("2026-11-22T12:00:00Z"), tz)
            .unwrap();
        assert_eq!(prev, tz.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap());
    }

    #[test]
    fn patterns_that_never_fire_are_refused() {
        for never in [
            "0 0 30 2 *",
            "0 0 31 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 0 30 2 * ",
        ] {
            let err = Schedule::parse(never).unwrap_err();
            assert!(err.contains("never fires"), "{never}: {err}");
            assert!(err.contains(never), "{never}: {err}");
        }
        // Rare but real: leap days, and a 31st that only some months have.
        for rare in ["0 0 29 2 *", "0 0 31 1-2 *", "0 0 30 2 MON", "@yearly"] {
            assert!(Schedule::parse(rare).is_ok(), "{rare}");
        }
    }

    #[test]
    fn bad_expressions_say_what_is_accepted() {
        for bad in [
            "0 25 * * *",
            "* * *",
            "@fortnightly",
            "1 2 3 4 5 6 7",
            "0 0 * * MONDAY-ish",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains("accepted: 5 fields"), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
