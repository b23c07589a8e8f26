//! How the gateway's SQL differs between engines: placeholders, quoting, time columns,
//! RETURNING, the keyset order of batches, and how a statement waits for the gateway's locks.
//!
//! Job code builds its statements with these pieces and nothing engine-specific, so a kind's
//! SQL is written once. Each difference is one method, with a table test below.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::config::{CostColumns, Gateway, Preset, TimeFormat};
use super::postgres::litellm::LITELLM;
use super::value::Value;

/// The SQL dialect of a gateway's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The order in which batch jobs walk the request table: a key that only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyset {
    /// SQLite's `rowid`: one integer, in insertion order, cheap to range over.
    Rowid,
    /// PostgreSQL has no stable row number (`ctid` moves on update and vacuum): batches go in
    /// (time, primary key) order, which LiteLLM's `("startTime", request_id)` index serves.
    TimeThenKey,
}

/// How our statements are made to give way to the gateway's locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockWait {
    /// SQLite: the connection's busy handler waits this long, then the statement fails busy.
    BusyTimeout(Duration),
    /// PostgreSQL: a statement run once on the connection (`SET lock_timeout`), after which
    /// any of ours that waits longer for a lock fails (SQLSTATE 55P03) instead of queueing
    /// the gateway's writers behind it.
    Statement(String),
}

impl Dialect {
    /// The `n`-th positional parameter (1-based): `?3` or `$3`.
    pub fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// `first` to `first + count - 1` as a parameter list: `?2, ?3`.
    pub fn params(self, first: usize, count: usize) -> String {
        (first..first + count)
            .map(|n| self.param(n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A column (or other single) name, double-quoted with quotes inside doubled. Both engines
    /// follow the standard here; PostgreSQL needs it for mixed-case names (`"startTime"`).
    pub fn ident(self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    /// A table name as configured, quoted. On PostgreSQL a dot separates the schema
    /// (`public.x` is `"public"."x"`), and a part already written in double quotes
    /// (`"LiteLLM_SpendLogs"`) is taken as is; SQLite's names are one part.
    pub fn table(self, name: &str) -> String {
        match self {
            Dialect::Sqlite => self.ident(name),
            Dialect::Postgres => split_qualified(name)
                .iter()
                .map(|part| self.ident(part))
                .collect::<Vec<_>>()
                .join("."),
        }
    }

    /// `t` as the time column stores it, to compare against the raw column so that its index
    /// serves the range. SQLite keeps times as ISO-8601 text (bounds are naive
    /// `YYYY-MM-DDTHH:MM:SS`, which sorts correctly against all of Apantli's spellings) or Unix
    /// seconds or milliseconds; PostgreSQL's `timestamp` columns take a time.
    pub fn time_bound(self, format: TimeFormat, t: DateTime<Utc>) -> Value {
        match (self, format) {
            (_, TimeFormat::Timestamp) => Value::Time(t),
            (_, TimeFormat::Iso8601) => Value::Text(t.format("%Y-%m-%dT%H:%M:%S").to_string()),
            (_, TimeFormat::UnixSeconds) => Value::Integer(t.timestamp()),
            (_, TimeFormat::UnixMillis) => Value::Integer(t.timestamp_millis()),
        }
    }

    /// A condition true when `expr` equals the parameter, nulls equal to each other: the
    /// "still what we read" check of an optimistic update.
    pub fn same(self, expr: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{expr} IS {param}"),
            Dialect::Postgres => format!("{expr} IS NOT DISTINCT FROM {param}"),
        }
    }

    /// A `RETURNING` clause for the given columns. Both engines have it (SQLite since 3.35;
    /// ours is bundled and newer), so a delete can hand back what it removed in one statement.
    pub fn returning(self, columns: &[&str]) -> String {
        let quoted: Vec<String> = columns.iter().map(|c| self.ident(c)).collect();
        format!(" RETURNING {}", quoted.join(", "))
    }

    /// How batch jobs walk the request table.
    pub fn keyset(self) -> Keyset {
        match self {
            Dialect::Sqlite => Keyset::Rowid,
            Dialect::Postgres => Keyset::TimeThenKey,
        }
    }

    /// How our statements give way to the gateway's locks after `timeout`.
    pub fn lock_wait(self, timeout: Duration) -> LockWait {
        match self {
            Dialect::Sqlite => LockWait::BusyTimeout(timeout),
            Dialect::Postgres => {
                LockWait::Statement(format!("SET lock_timeout = '{}ms'", timeout.as_millis()))
            }
        }
    }
}

impl TimeFormat {
    /// `t` in the column's own format on SQLite, to compare against the raw column so its
    /// index is used. ISO text bounds are `YYYY-MM-DDTHH:MM:SS`: all three Apantli spellings of
    /// the same second sort at or after it, and `datetime()`'s space separator would sort
    /// wrongly. Other engines: [`Dialect::time_bound`].
    pub fn bound(self, t: chrono::DateTime<chrono::Utc>) -> Value {
        Dialect::Sqlite.time_bound(self, t)
    }
}

/// The SQL of the gateway's facts, in a dialect.
impl Gateway {
    /// The SQL condition of a failed request, or `None` when the gateway records no failures:
    /// the error column is set, or LiteLLM's `status` is not `success` (NULL included).
    pub fn failed_sql(&self, d: Dialect) -> Option<String> {
        match self.preset {
            Preset::Litellm => Some(LITELLM.failed_sql.to_string()),
            _ => self
                .columns
                .error
                .as_ref()
                .map(|e| format!("{} IS NOT NULL", d.ident(e))),
        }
    }

    /// The SQL expression of a row's total cost.
    pub fn cost_expr(&self, d: Dialect) -> String {
        match &self.columns.cost {
            CostColumns::Single(c) => d.ident(c),
            CostColumns::Split { input, output } => {
                format!(
                    "(COALESCE({}, 0) + COALESCE({}, 0))",
                    d.ident(input),
                    d.ident(output)
                )
            }
        }
    }
}

/// The parts of a possibly schema-qualified name: dots inside double quotes do not split, and
/// the quotes themselves (with `""` for a quote inside) are removed.
fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                parts.last_mut().expect("one part").push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    use Dialect::{Postgres, Sqlite};

    #[test]
    fn placeholders() {
        for (dialect, n, want) in [
            (Sqlite, 1, "?1"),
            (Sqlite, 12, "?12"),
            (Postgres, 1, "$1"),
            (Postgres, 12, "$12"),
        ] {
            assert_eq!(dialect.param(n), want, "{dialect:?} {n}");
        }
        assert_eq!(Sqlite.params(2, 3), "?2, ?3, ?4");
        assert_eq!(Postgres.params(1, 2), "$1, $2");
        assert_eq!(Postgres.params(4, 0), "");
    }

    #[test]
    fn identifiers_and_tables_are_quoted() {
        for (dialect, name, ident, table) in [
            (Sqlite, "requests", "\"requests\"", "\"requests\""),
            (Sqlite, "a\"b", "\"a\"\"b\"", "\"a\"\"b\""),
            // SQLite's table names from the jobs file are one plain name.
            (Sqlite, "x.y", "\"x.y\"", "\"x.y\""),
            (
                Postgres,
                "LiteLLM_SpendLogs",
                "\"LiteLLM_SpendLogs\"",
                "\"LiteLLM_SpendLogs\"",
            ),
            (Postgres, "startTime", "\"startTime\"", "\"startTime\""),
            (Postgres, "public.x", "\"public.x\"", "\"public\".\"x\""),
        ] {
            assert_eq!(dialect.ident(name), ident, "{dialect:?} ident {name}");
            assert_eq!(dialect.table(name), table, "{dialect:?} table {name}");
        }
        for (name, table) in [
            ("\"LiteLLM_SpendLogs\"", "\"LiteLLM_SpendLogs\""),
            (
                "public.\"LiteLLM_SpendLogs\"",
                "\"public\".\"LiteLLM_SpendLogs\"",
            ),
            ("\"my.schema\".t", "\"my.schema\".\"t\""),
            ("\"a\"\"b\".c", "\"a\"\"b\".\"c\""),
        ] {
            assert_eq!(Postgres.table(name), table, "{name}");
        }
    }

    #[test]
    fn time_bounds_follow_the_column() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 5).unwrap()
            + chrono::TimeDelta::milliseconds(250);
        for (dialect, format, want) in [
            (
                Sqlite,
                TimeFormat::Iso8601,
                Value::Text("2026-11-22T02:00:05".into()),
            ),
            (
                Sqlite,
                TimeFormat::UnixSeconds,
                Value::Integer(1_795_312_805),
            ),
            (
                Sqlite,
                TimeFormat::UnixMillis,
                Value::Integer(1_795_312_805_250),
            ),
            (Postgres, TimeFormat::Timestamp, Value::Time(t)),
            (
                Postgres,
                TimeFormat::UnixSeconds,
                Value::Integer(1_795_312_805),
            ),
            (
                Postgres,
                TimeFormat::Iso8601,
                Value::Text("2026-11-22T02:00:05".into()),
            ),
        ] {
            assert_eq!(
                dialect.time_bound(format, t),
                want,
                "{dialect:?} {format:?}"
            );
        }
    }

    #[test]
    fn null_safe_comparison_returning_keyset_and_lock_waits() {
        assert_eq!(Sqlite.same("\"cost\"", "?3"), "\"cost\" IS ?3");
        assert_eq!(
            Postgres.same("\"spend\"", "$3"),
            "\"spend\" IS NOT DISTINCT FROM $3"
        );
        assert_eq!(
            Postgres.returning(&["request_id", "startTime"]),
            " RETURNING \"request_id\", \"startTime\""
        );
        assert_eq!(Sqlite.returning(&["id"]), " RETURNING \"id\"");
        assert_eq!(Sqlite.keyset(), Keyset::Rowid);
        assert_eq!(Postgres.keyset(), Keyset::TimeThenKey);
        let ms = Duration::from_millis;
        assert_eq!(Sqlite.lock_wait(ms(2000)), LockWait::BusyTimeout(ms(2000)));
        assert_eq!(
            Postgres.lock_wait(ms(200)),
            LockWait::Statement("SET lock_timeout = '200ms'".into())
        );
    }
}
