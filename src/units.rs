//! Value types of the jobs file (sizes `512MB`, durations `2w`, shares `75%`) and the numbers, dollars, bytes and durations a person reads.
//!
//! Each parser takes the text exactly as written in YAML and returns an error that says what
//! was wrong and what is accepted, so the configuration loader can prefix it with the file,
//! line and key path.

use std::time::Duration;

const SIZE_ACCEPTED: &str = "a whole number of bytes, optionally followed by B, KB, MB, GB, TB (powers of 1000) \
     or KiB, MiB, GiB, TiB (powers of 1024), e.g. 512MB or 5GiB";

const DURATION_ACCEPTED: &str = "a whole number followed by ms, s, m, h, d or w (milliseconds, seconds, minutes, hours, days, weeks), \
     e.g. 200ms, 90s, 15m, 6h, 30d or 2w";

const SHARE_ACCEPTED: &str = "a percentage from 0% to 100%, e.g. 75% or 12.5%";

/// The longest duration any key accepts: 100 years, far beyond any useful window or age, and
/// far inside what clocks, dates and timers can hold. Keys with a tighter sense (timeouts)
/// have their own, lower bounds.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);
const MAX_DURATION_TEXT: &str = "36500d (100 years)";

/// The largest size any key accepts: 1024TiB, beyond any disk a gateway runs on.
pub const MAX_SIZE: u64 = 1 << 50;
const MAX_SIZE_TEXT: &str = "1024TiB";

/// Splits `"512MB"` into `("512", "MB")`: the leading ASCII digits and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses a size such as `512MB` (10^6 bytes each), `5GiB` (2^30 bytes each) or `4096` (bytes).
///
/// Units are case-sensitive because `Mb` (megabit) and `MB` (megabyte) differ; a space
/// between the number and the unit is not accepted, as the documentation never writes one.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a size: expected {SIZE_ACCEPTED}"));
    }
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` has an unknown size unit `{unit}`: expected {SIZE_ACCEPTED}"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|&n| n <= MAX_SIZE)
        .ok_or_else(|| format!("`{text}` is too large; accepted: up to {MAX_SIZE_TEXT}"))
}

/// Parses a duration such as `90s`, `15m`, `6h`, `30d` or `2w`.
///
/// A day is 24 hours here: calendar-aware periods (daily, weekly, monthly) are separate
/// settings evaluated in the configured time zone.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: expected {DURATION_ACCEPTED}"
        ));
    }
    // Milliseconds are for the PostgreSQL timeouts (`lock_timeout: 200ms`).
    if unit == "ms" {
        return digits
            .parse::<u64>()
            .ok()
            .map(Duration::from_millis)
            .filter(|&d| d <= MAX_DURATION)
            .ok_or_else(|| {
                format!("`{text}` is too long a duration; accepted: up to {MAX_DURATION_TEXT}")
            });
    }
    let seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => {
            return Err(format!(
                "`{text}` has no unit: expected {DURATION_ACCEPTED}"
            ));
        }
        _ => {
            return Err(format!(
                "`{text}` has an unknown duration unit `{unit}`: expected {DURATION_ACCEPTED}"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds))
        .map(Duration::from_secs)
        .filter(|&d| d <= MAX_DURATION)
        .ok_or_else(|| {
            format!("`{text}` is too long a duration; accepted: up to {MAX_DURATION_TEXT}")
        })
}

/// Parses a share such as `75%` into a fraction (`0.75`).
pub fn parse_share(text: &str) -> Result<f64, String> {
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!(
            "`{text}` is not a share: expected {SHARE_ACCEPTED}"
        ));
    };
    // `f64::from_str` would also accept `inf`, `NaN` and `1e2`: only plain decimals are wanted.
    let plain = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let percent: f64 = match number.parse() {
        Ok(p) if plain => p,
        _ => {
            return Err(format!(
                "`{text}` is not a share: expected {SHARE_ACCEPTED}"
            ));
        }
    };
    if percent > 100.0 {
        return Err(format!(
            "`{text}` is more than 100%: expected {SHARE_ACCEPTED}"
        ));
    }
    Ok(percent / 100.0)
}

/// `v` rounded to `digits` significant digits (never fewer than its integer part has), with
/// trailing zeros trimmed down to `min_decimals` decimals, and no negative zero.
fn significant(v: f64, digits: i32, min_decimals: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let magnitude = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    let decimals = usize::try_from(digits - 1 - magnitude)
        .unwrap_or(0)
        .max(min_decimals);
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        let keep = text.find('.').map_or(0, |dot| dot + 1 + min_decimals);
        while text.len() > keep && text.ends_with('0') {
            text.pop();
        }
        if text.ends_with('.') {
            text.pop();
        }
    }
    // `-0.0`, or a tiny negative rounded away, reads as zero.
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text.remove(0);
    }
    text
}

/// A figure as a person reads it in a summary: 4 significant digits (`0.142035681` → `0.142`,
/// `0.7834000000000001` → `0.7834`), whole numbers as they are, never `-0`. The state
/// database, `status --json` and the metrics file keep the full value.
pub fn number(v: f64) -> String {
    significant(v, 4, 0)
}

/// An amount of US dollars as a person reads it: cents from $1 up (`$1834.22`), 3
/// significant digits below (`$0.783`, `$0.00412`), never fewer than 2 decimals, never `$-0`.
pub fn usd(v: f64) -> String {
    let digits = if v.abs() >= 1.0 {
        format!("{:.2}", v.abs())
    } else {
        significant(v.abs(), 3, 2)
    };
    let zero = digits.chars().all(|c| c == '0' || c == '.');
    let sign = if v < 0.0 && !zero { "-" } else { "" };
    format!("{sign}${digits}")
}

/// A change in US dollars: [`usd`] with its sign, `+$0.00` for none.
pub fn usd_change(v: f64) -> String {
    let amount = usd(v);
    if amount.starts_with('-') {
        amount
    } else {
        format!("+{amount}")
    }
}

/// An amount of bytes as a person reads it. A whole number (under 1000) of a decimal or binary
/// unit reads in that unit, as a jobs file writes a limit (`5 GB`, `512 MiB`, `1 KB`), so a
/// threshold reads back as it was written; any other amount reads in binary units with their
/// IEC names: exact bytes under 1 KiB (`812 B`), then 3 significant digits (`1.5 GiB`,
/// `812 KiB`, `12.3 MiB`). Every message, summary, alert and dry-run says sizes this way
/// (docs/design.md, "Units"); the state database, `status --json` and the metrics file keep
/// the raw byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    const DECIMAL: [&str; 6] = ["KB", "MB", "GB", "TB", "PB", "EB"];
    for k in (1..=6u32).rev() {
        for (base, names) in [(1024u64, &UNITS), (1000, &DECIMAL)] {
            let unit = base.pow(k);
            if n >= unit && n.is_multiple_of(unit) && n / unit < 1000 {
                return format!("{} {}", n / unit, names[k as usize - 1]);
            }
        }
    }
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let mut text = significant(value, 3, 0);
    // 1023.8 KiB rounds to `1024`: say `1 MiB` instead.
    if text == "1024" && unit < UNITS.len() - 1 {
        text = "1".into();
        unit += 1;
    }
    format!("{text} {}", UNITS[unit])
}

/// A duration as a figure in milliseconds, to a tenth: what summaries and metrics carry.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// A duration as a person reads it: milliseconds under a second (`42 ms`, `0.35 ms`, 3
/// significant digits), tenths of a second under a minute (`1.3 s`, `12 s`), minutes and
/// seconds under an hour (`1m 30s`), then days, hours and minutes (`6h 12m`, `1d 2h 1m`,
/// `30d`), trailing zero parts left out. Minutes are kept because an age just past a
/// configured limit (`1d 2h`) must not read as the limit itself.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        let ms = significant(secs * 1000.0, 3, 0);
        if ms != "1000" {
            return format!("{ms} ms");
        }
    }
    let tenths = (secs * 10.0).round() / 10.0;
    if tenths < 60.0 {
        return format!("{} s", significant(tenths, 3, 0));
    }
    let total = secs.round() as u64;
    let parts = if total < 3_600 {
        vec![(total / 60, "m"), (total % 60, "s")]
    } else {
        let minutes = (total + 30) / 60;
        let (days, hours) = (minutes / 1_440, minutes / 60 % 24);
        let mut parts = vec![(hours, "h"), (minutes % 60, "m")];
        if days > 0 {
            parts.insert(0, (days, "d"));
        }
        parts
    };
    let keep = parts.iter().rposition(|&(n, _)| n > 0).unwrap_or(0) + 1;
    parts[..keep]
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_milliseconds_for_the_postgresql_timeouts() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        let err = parse_duration("200us").unwrap_err();
        assert!(err.contains("ms, s, m, h, d or w"), "{err}");
    }

    #[test]
    fn sizes() {
        let good: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("1KB", 1_000),
            ("512MB", 512_000_000),
            ("5GB", 5_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("1KiB", 1024),
            ("100MiB", 100 << 20),
            ("5GiB", 5 << 30),
            ("1TiB", 1 << 40),
            ("1024TiB", 1 << 50),
        ];
        for &(text, want) in good {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "not a size"),
            ("MB", "not a size"),
            ("-5MB", "not a size"),
            ("1.5GB", "unknown size unit `.5GB`"),
            ("5 MB", "unknown size unit ` MB`"),
            ("5mb", "unknown size unit `mb`"),
            ("5Mb", "unknown size unit `Mb`"),
            ("5G", "unknown size unit `G`"),
            ("18446744073709551616", "too large"),
            ("20000000TB", "too large"),
            ("18446744073709551615", "accepted: up to 1024TiB"),
            ("1025TiB", "accepted: up to 1024TiB"),
        ];
        for &(text, want) in bad {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
            assert!(
                err.contains("expected") || err.contains("accepted"),
                "{err}"
            );
        }
    }

    #[test]
    fn durations() {
        let good: &[(&str, u64)] = &[
            ("0s", 0),
            ("90s", 90),
            ("15m", 900),
            ("6h", 21_600),
            ("30d", 2_592_000),
            ("2w", 1_209_600),
            ("36500d", 36_500 * 86_400),
        ];
        for &(text, want) in good {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(want)),
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "not a duration"),
            ("d", "not a duration"),
            ("30", "no unit"),
            ("30 d", "unknown duration unit ` d`"),
            ("1h30m", "unknown duration unit `h30m`"),
            ("30D", "unknown duration unit `D`"),
            ("1.5h", "unknown duration unit `.5h`"),
            ("-1h", "not a duration"),
            ("99999999999999999999w", "too long"),
            ("9999999999999999999w", "too long"),
            ("18446744073709551615s", "accepted: up to 36500d"),
            ("36501d", "accepted: up to 36500d"),
        ];
        for &(text, want) in bad {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn shares() {
        let good: &[(&str, f64)] = &[("0%", 0.0), ("75%", 0.75), ("12.5%", 0.125), ("100%", 1.0)];
        for &(text, want) in good {
            assert_eq!(parse_share(text), Ok(want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("75", "not a share"),
            ("%", "not a share"),
            (".%", "not a share"),
            ("0.75", "not a share"),
            ("-5%", "not a share"),
            ("1e2%", "not a share"),
            ("inf%", "not a share"),
            ("1.2.3%", "not a share"),
            ("101%", "more than 100%"),
        ];
        for &(text, want) in bad {
            let err = parse_share(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn numbers_and_money_read_as_a_person_needs_them() {
        let numbers: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (-1e-13, "-0.0000000000001"),
            (0.142035681, "0.142"),
            (0.7834000000000001, "0.7834"),
            (3.0, "3"),
            (12.3456, "12.35"),
            (1834.2157, "1834"),
            (123_456_789.0, "123456789"),
            (0.00342, "0.00342"),
            (-2.5, "-2.5"),
        ];
        for &(v, want) in numbers {
            assert_eq!(number(v), want, "{v:?}");
        }
        let money: &[(f64, &str)] = &[
            (0.0, "$0.00"),
            (-0.0, "$0.00"),
            (-1e-9, "-$0.000000001"),
            (0.5, "$0.50"),
            (0.7834000000000001, "$0.783"),
            (0.0035, "$0.0035"),
            (0.00412, "$0.00412"),
            (6.410221, "$6.41"),
            (1834.2157, "$1834.22"),
            (-0.42, "-$0.42"),
        ];
        for &(v, want) in money {
            assert_eq!(usd(v), want, "{v:?}");
        }
        assert_eq!(usd_change(0.0), "+$0.00");
        assert_eq!(usd_change(-0.0), "+$0.00");
        assert_eq!(usd_change(6.410221), "+$6.41");
        assert_eq!(usd_change(-0.42), "-$0.42");
    }

    #[test]
    fn bytes_read_as_written_when_whole_else_in_binary_units() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (12, "12 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (831_488, "812 KiB"),
            (1000, "1 KB"),
            (1_000_000, "1 MB"),
            (1_000_001, "977 KiB"),
            (1_048_063, "1023 KiB"),
            (1_048_575, "1 MiB"),
            (1_234_567, "1.18 MiB"),
            (4 << 20, "4 MiB"),
            (12_900_000, "12.3 MiB"),
            (1_000_000_000, "1 GB"),
            (999_999_999, "954 MiB"),
            (3 << 29, "1.5 GiB"),
            (5_000_000_000, "5 GB"),
            (5_000_000_001, "4.66 GiB"),
            (2 << 40, "2 TiB"),
            (u64::MAX, "16 EiB"),
        ];
        for &(n, want) in cases {
            assert_eq!(bytes(n), want, "{n}");
        }
    }

    #[test]
    fn durations_read_as_a_person_needs_them() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0 ms"),
            (Duration::from_micros(350), "0.35 ms"),
            (ms(42), "42 ms"),
            (Duration::from_micros(12_345), "12.3 ms"),
            (ms(999), "999 ms"),
            (Duration::from_micros(999_900), "1 s"),
            (ms(1_300), "1.3 s"),
            (ms(1_340), "1.3 s"),
            (s(12), "12 s"),
            (ms(59_940), "59.9 s"),
            (ms(59_960), "1m"),
            (s(90), "1m 30s"),
            (s(3_599), "59m 59s"),
            (s(3_600), "1h"),
            (s(6 * 3_600 + 12 * 60 + 20), "6h 12m"),
            (s(6 * 3_600 + 12 * 60 + 40), "6h 13m"),
            (s(86_380), "1d"),
            (s(26 * 3_600), "1d 2h"),
            (s(26 * 3_600 + 60), "1d 2h 1m"),
            (s(86_400 + 5 * 60), "1d 0h 5m"),
            (s(3 * 3_600 + 20), "3h"),
            (s(30 * 86_400), "30d"),
            (s(14 * 86_400), "14d"),
        ];
        for &(d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }
}
