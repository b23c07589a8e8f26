//! Calendar periods for budgets.
//!
//! A budget period is a calendar day, ISO week or month in the operator's time zone, so its
//! length in hours varies: DST days last 23 or 25 hours. Everything here is a pure function of
//! the instant and the zone it is given.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The calendar period a budget limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    /// An ISO week: Monday to Sunday; week 1 is the week with the year's first Thursday.
    Week,
    Month,
}

impl Period {
    /// The name the jobs file uses: `day`, `week` or `month`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// The first local date of the period containing `date`, and the first date after it.
fn date_bounds(period: Period, date: NaiveDate) -> (NaiveDate, NaiveDate) {
    match period {
        Period::Day => (date, date + Days::new(1)),
        Period::Week => {
            let monday = date - Days::new(u64::from(date.weekday().num_days_from_monday()));
            (monday, monday + Days::new(7))
        }
        Period::Month => {
            let first = date.with_day(1).expect("every month has a first day");
            (first, first + Months::new(1))
        }
    }
}

/// The start (inclusive) and end (exclusive) of the calendar period containing `now` in `tz`.
pub fn bounds(period: Period, now: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let (first, next) = date_bounds(period, now.with_timezone(&tz).date_naive());
    (start_of_day(first, tz), start_of_day(next, tz))
}

/// The instant a local date begins. A midnight that occurs twice (a fall-back at 01:00 to
/// 00:00) begins at its first occurrence. A midnight that never occurs (a spring-forward at
/// 00:00, as America/Sao_Paulo had until 2019, or a skipped date) begins at the first valid
/// instant after it: the moment of the transition.
fn start_of_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap the clock jumps past midnight at the transition, which is midnight read
            // with the offset in force before it. A day earlier is before any single gap.
            let before = midnight.and_utc() - chrono::Duration::days(1);
            let offset = tz.offset_from_utc_datetime(&before.naive_utc()).fix();
            let transition =
                midnight - chrono::Duration::seconds(i64::from(offset.local_minus_utc()));
            transition.and_utc()
        }
    }
}

/// The name of the period containing `now` in `tz`, as mails and the alert state use it:
/// `2026-11-22`, `2026-W47` (ISO week-numbering year and week), `2026-11`.
pub fn period_label(period: Period, now: DateTime<Utc>, tz: Tz) -> String {
    let date = now.with_timezone(&tz).date_naive();
    match period {
        Period::Day => date.format("%Y-%m-%d").to_string(),
        Period::Week => {
            let week = date.iso_week();
            format!("{:04}-W{:02}", week.year(), week.week())
        }
        Period::Month => date.format("%Y-%m").to_string(),
    }
}

/// The spend expected by `end` if it goes on at the average rate since `start`: `spent`
/// scaled by the period's length over the elapsed part. Before any time has elapsed there
/// is no rate to extrapolate, and after `end` nothing more is spent: both give `spent`.
pub fn projection(spent: f64, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    let total = (end - start).num_milliseconds();
    let elapsed = (now - start).num_milliseconds();
    if elapsed <= 0 || total <= 0 || elapsed >= total {
        return spent;
    }
    spent * total as f64 / elapsed as f64
}

/// The warning thresholds, in percent of `limit_usd`, that `spent` has reached and that
/// have not been sent yet in this period, ascending.
///
/// `warn_at` holds shares of the limit (`0.75` for `75%`); a share is reached when the spend
/// is at least that share of the limit. Several thresholds crossed at once are all returned
/// (the caller may send one mail naming the highest). A limit or share that is not a positive
/// number reaches nothing: configuration checks reject those before they get here.
pub fn crossings(
    limit_usd: f64,
    warn_at: &[f64],
    spent: f64,
    already_sent: &BTreeSet<u32>,
) -> Vec<u32> {
    if !(limit_usd.is_finite() && limit_usd > 0.0) {
        return Vec::new();
    }
    let reached: BTreeSet<u32> = warn_at
        .iter()
        .filter(|share| share.is_finite() && **share > 0.0)
        .map(|share| (share * 100.0).round() as u32)
        // Rounded, and compared as spend × 100 against limit × percent, so that 570 of 1000
        // reaches 57 % although 0.57 × 100 is 56.99999999999999.
        .filter(|percent| spent * 100.0 >= limit_usd * f64::from(*percent))
        .collect();
    reached.difference(already_sent).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse()
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;
    const NEW_YORK: Tz = chrono_tz::America::New_York;

    #[test]
    fn bounds_and_labels() {
        use Period::*;
        // (zone, period, now, start, end, hours, label)
        #[rustfmt::skip]
        let cases = [
            // Plain day, week and month around today.
            (BERLIN, Day, "2026-11-22T10:00:00Z", "2026-11-21T23:00:00Z", "2026-11-22T23:00:00Z", 24, "2026-11-22"),
            (BERLIN, Week, "2026-11-22T10:00:00Z", "2026-11-15T23:00:00Z", "2026-11-22T23:00:00Z", 168, "2026-W47"),
            (BERLIN, Month, "2026-11-22T10:00:00Z", "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", 720, "2026-11"),
            // Berlin spring forward (2026-03-29 02:00 → 03:00) and fall back (2026-10-25 03:00 → 02:00).
            (BERLIN, Day, "2026-03-29T12:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", 23, "2026-03-29"),
            (BERLIN, Day, "2026-10-25T12:00:00Z", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", 25, "2026-10-25"),
            (BERLIN, Week, "2026-03-29T12:00:00Z", "2026-03-22T23:00:00Z", "2026-03-29T22:00:00Z", 167, "2026-W13"),
            (BERLIN, Month, "2026-10-15T12:00:00Z", "2026-09-30T22:00:00Z", "2026-10-31T23:00:00Z", 745, "2026-10"),
            // New York spring forward (2026-03-08) and fall back (2026-11-01).
            (NEW_YORK, Day, "2026-03-08T12:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", 23, "2026-03-08"),
            (NEW_YORK, Day, "2026-11-01T12:00:00Z", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", 25, "2026-11-01"),
            (NEW_YORK, Week, "2026-03-08T12:00:00Z", "2026-03-02T05:00:00Z", "2026-03-09T04:00:00Z", 167, "2026-W10"),
            (NEW_YORK, Month, "2026-11-15T12:00:00Z", "2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z", 721, "2026-11"),
            // ISO week 53: 2020-W53 runs Monday 2020-12-28 to Sunday 2021-01-03.
            (BERLIN, Week, "2021-01-02T12:00:00Z", "2020-12-27T23:00:00Z", "2021-01-03T23:00:00Z", 168, "2020-W53"),
            (BERLIN, Week, "2021-01-04T00:30:00Z", "2021-01-03T23:00:00Z", "2021-01-10T23:00:00Z", 168, "2021-W01"),
            // 2026 also has 53 ISO weeks; New Year's Day 2027 is in 2026-W53.
            (NEW_YORK, Week, "2027-01-01T17:00:00Z", "2026-12-28T05:00:00Z", "2027-01-04T05:00:00Z", 168, "2026-W53"),
            // February in a leap year, and its last evening in UTC being March in Berlin.
            (BERLIN, Month, "2024-02-29T22:30:00Z", "2024-01-31T23:00:00Z", "2024-02-29T23:00:00Z", 696, "2024-02"),
            (BERLIN, Month, "2024-02-29T23:30:00Z", "2024-02-29T23:00:00Z", "2024-03-31T22:00:00Z", 743, "2024-03"),
            (BERLIN, Day, "2024-02-29T12:00:00Z", "2024-02-28T23:00:00Z", "2024-02-29T23:00:00Z", 24, "2024-02-29"),
            (NEW_YORK, Month, "2023-02-10T12:00:00Z", "2023-02-01T05:00:00Z", "2023-03-01T05:00:00Z", 672, "2023-02"),
            // Year boundary: the same instant is 2027 in Berlin and still 2026 in New York.
            (BERLIN, Day, "2026-12-31T23:30:00Z", "2026-12-31T23:00:00Z", "2027-01-01T23:00:00Z", 24, "2027-01-01"),
            (BERLIN, Month, "2026-12-31T23:30:00Z", "2026-12-31T23:00:00Z", "2027-01-31T23:00:00Z", 744, "2027-01"),
            (NEW_YORK, Day, "2026-12-31T23:30:00Z", "2026-12-31T05:00:00Z", "2027-01-01T05:00:00Z", 24, "2026-12-31"),
            (NEW_YORK, Month, "2026-12-31T23:30:00Z", "2026-12-01T05:00:00Z", "2027-01-01T05:00:00Z", 744, "2026-12"),
            // Start and end are inclusive and exclusive: midnight belongs to the new day.
            (BERLIN, Day, "2026-11-21T23:00:00Z", "2026-11-21T23:00:00Z", "2026-11-22T23:00:00Z", 24, "2026-11-22"),
            // Sao Paulo 2018-11-04: 00:00 did not exist (→ 01:00); the day began at 01:00 -02.
            (chrono_tz::America::Sao_Paulo, Day, "2018-11-04T12:00:00Z", "2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z", 23, "2018-11-04"),
            (chrono_tz::America::Sao_Paulo, Day, "2018-11-03T12:00:00Z", "2018-11-03T03:00:00Z", "2018-11-04T03:00:00Z", 24, "2018-11-03"),
            // Havana 2025-11-02: 01:00 → 00:00, so midnight came twice; the day began at the first.
            (chrono_tz::America::Havana, Day, "2025-11-02T12:00:00Z", "2025-11-02T04:00:00Z", "2025-11-03T05:00:00Z", 25, "2025-11-02"),
            // Samoa skipped 2011-12-30 entirely: 2011-12-29 ended at 2011-12-31 00:00 +14.
            (chrono_tz::Pacific::Apia, Day, "2011-12-29T12:00:00Z", "2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z", 24, "2011-12-29"),
        ];
        for (tz, period, now, start, end, hours, label) in cases {
            let now = utc(now);
            let what = format!("{period:?} in {tz} at {now}");
            let (s, e) = bounds(period, now, tz);
            assert_eq!((s, e), (utc(start), utc(end)), "{what}");
            assert_eq!((e - s).num_hours(), hours, "{what}");
            assert!(s <= now && now < e, "{what}");
            assert_eq!(period_label(period, now, tz), label, "{what}");
        }
    }

    #[test]
    fn periods_tile_time_without_gaps() {
        // Walking period by period across a whole DST year must never skip or repeat time.
        for tz in [BERLIN, NEW_YORK, chrono_tz::America::Sao_Paulo] {
            for period in [Period::Day, Period::Week, Period::Month] {
                let mut now = utc("2018-01-01T12:00:00Z");
                let (_, mut previous_end) = bounds(period, now, tz);
                now = previous_end;
                while now < utc("2019-12-31T00:00:00Z") {
                    let (start, end) = bounds(period, now, tz);
                    assert_eq!(start, previous_end, "{period:?} in {tz} at {now}");
                    assert!(end > start);
                    previous_end = end;
                    now = end;
                }
            }
        }
    }

    #[test]
    fn period_serde_names() {
        for (period, name) in [
            (Period::Day, "\"day\""),
            (Period::Week, "\"week\""),
            (Period::Month, "\"month\""),
        ] {
            assert_eq!(serde_json::to_string(&period).unwrap(), name);
            assert_eq!(serde_json::from_str::<Period>(name).unwrap(), period);
        }
        assert!(serde_json::from_str::<Period>("\"Day\"").is_err());
        assert!(serde_json::from_str::<Period>("\"year\"").is_err());
    }

    #[test]
    fn projection_is_linear_in_elapsed_share() {
        let start = utc("2026-11-01T00:00:00Z");
        let end = utc("2026-11-05T00:00:00Z");
        // (spent, now, projected)
        for (spent, now, expected) in [
            (10.0, "2026-11-02T00:00:00Z", 40.0), // a quarter elapsed
            (10.0, "2026-11-03T00:00:00Z", 20.0), // half
            (10.0, "2026-11-05T00:00:00Z", 10.0), // over
            (10.0, "2026-11-09T00:00:00Z", 10.0), // past the end
            (10.0, "2026-11-01T00:00:00Z", 10.0), // nothing elapsed: no rate yet
            (0.0, "2026-11-02T00:00:00Z", 0.0),
        ] {
            let projected = projection(spent, start, end, utc(now));
            assert!(
                (projected - expected).abs() < 1e-9,
                "{now}: {projected} != {expected}"
            );
        }
    }

    #[test]
    fn crossings_send_each_threshold_once() {
        let warn_at = [0.75, 1.0];
        let mut sent = BTreeSet::new();
        // A table of successive runs of one daily limit of $50: (spent, newly crossed).
        for (spent, expected) in [
            (10.0, vec![]),
            (37.49, vec![]),
            (37.5, vec![75]), // exactly 75 %
            (40.0, vec![]),   // re-run: already sent
            (50.0, vec![100]),
            (80.0, vec![]), // re-run after 100 %: nothing more
        ] {
            let crossed = crossings(50.0, &warn_at, spent, &sent);
            assert_eq!(crossed, expected, "spent {spent}");
            sent.extend(crossed);
        }
        assert_eq!(sent, BTreeSet::from([75, 100]));
    }

    #[test]
    fn crossings_table() {
        let none = BTreeSet::new();
        // (limit, warn_at, spent, already sent, newly crossed)
        type Case<'a> = (f64, &'a [f64], f64, &'a BTreeSet<u32>, Vec<u32>);
        let cases: [Case; 8] = [
            // A jump past two thresholds at once reports both.
            (1000.0, &[0.5, 0.9, 1.0], 950.0, &none, vec![50, 90]),
            (1000.0, &[0.5, 0.9, 1.0], 2000.0, &none, vec![50, 90, 100]),
            // 570 of 1000 reaches 57 % exactly, though 0.57 × 100 is 56.99999999999999.
            (1000.0, &[0.57], 570.0, &none, vec![57]),
            // Thresholds listed out of order or twice.
            (100.0, &[1.0, 0.5, 0.5], 100.0, &none, vec![50, 100]),
            // Only the thresholds not sent yet.
            (100.0, &[0.5, 1.0], 120.0, &BTreeSet::from([50]), vec![100]),
            // Above 100 %.
            (100.0, &[1.0, 1.5], 151.0, &BTreeSet::from([100]), vec![150]),
            // Limits and shares that are not positive numbers reach nothing.
            (0.0, &[0.5], 10.0, &none, vec![]),
            (100.0, &[0.0, -1.0, f64::NAN], 10.0, &none, vec![]),
        ];
        for (limit, warn_at, spent, sent, expected) in cases {
            assert_eq!(
                crossings(limit, warn_at, spent, sent),
                expected,
                "{limit} {warn_at:?} {spent}"
            );
        }
    }
}
