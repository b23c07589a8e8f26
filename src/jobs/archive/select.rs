//! Which rows are old enough, and reading them in short read transactions.
//!
//! The cut-off is computed in Rust and compared against the time column in its own format,
//! so the time index (Apantli's `idx_timestamp`) serves the comparison. Rows are then read in
//! rowid order, a bounded window per read transaction: with a rollback journal a read
//! transaction holds off the gateway's commits, so none may last long.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::gateway::{Dialect, Exec, ExecExt, TimeFormat, Value};

/// Time index entries read per read transaction while looking for the last old row.
pub const INDEX_CHUNK: usize = 20_000;

/// The cut-off as the time column spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// ISO-8601 text: rows sort below `YYYY-MM-DDTHH:MM:SS` in all of Apantli's spellings
    /// (`...Z`, `...+00:00`, naive, with or without fractions). Rows written with a space
    /// separator (SQLite's `datetime()`) sort below every `T` time of their day, so the rows
    /// of the cut-off day at or after the cut-off time in that spelling are excluded apart.
    Iso {
        t: String,
        space: String,
        day: String,
    },
    Integer(i64),
    /// A native time column (PostgreSQL's `timestamp`).
    Time(DateTime<Utc>),
}

impl Bound {
    pub fn new(format: TimeFormat, cutoff: DateTime<Utc>) -> Bound {
        match format {
            TimeFormat::Iso8601 => Bound::Iso {
                t: cutoff.format("%Y-%m-%dT%H:%M:%S").to_string(),
                space: cutoff.format("%Y-%m-%d %H:%M:%S").to_string(),
                day: cutoff.format("%Y-%m-%dT").to_string(),
            },
            TimeFormat::UnixSeconds => Bound::Integer(cutoff.timestamp()),
            TimeFormat::UnixMillis => Bound::Integer(cutoff.timestamp_millis()),
            TimeFormat::Timestamp => Bound::Time(cutoff),
        }
    }

    /// A SQL condition true for rows older than the cut-off, using the first parameters
    /// ([`Bound::params`], from 1).
    pub fn condition(&self, d: Dialect, column: &str) -> String {
        let column = d.ident(column);
        match self {
            Bound::Iso { .. } => format!(
                "({column} < {} AND NOT ({column} >= {} AND {column} < {}))",
                d.param(1),
                d.param(2),
                d.param(3)
            ),
            Bound::Integer(_) | Bound::Time(_) => format!("{column} < {}", d.param(1)),
        }
    }

    pub fn params(&self) -> Vec<Value> {
        match self {
            Bound::Iso { t, space, day } => vec![
                Value::Text(t.clone()),
                Value::Text(space.clone()),
                Value::Text(day.clone()),
            ],
            Bound::Integer(n) => vec![Value::Integer(*n)],
            Bound::Time(t) => vec![Value::Time(*t)],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Bound::Iso { t, .. } => format!("'{t}'"),
            Bound::Integer(n) => n.to_string(),
            Bound::Time(t) => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.3f")),
        }
    }
}

/// A table's columns as caretaker needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    /// Indices of the primary key columns: how an archived row is found again to delete it.
    pub key: Vec<usize>,
    /// Indices of the payload columns.
    pub payload: Vec<usize>,
}

impl Table {
    pub fn inspect(db: &mut dyn Exec, name: &str, payload: &[String]) -> anyhow::Result<Table> {
        let info: Vec<(String, u32)> = db
            .columns_of(name)
            .with_context(|| format!("reading the columns of table `{name}`"))?
            .into_iter()
            .map(|c| (c.name, c.key))
            .collect();
        anyhow::ensure!(
            !info.is_empty(),
            "the gateway database has no table `{name}`; check gateway.schema / gateway.table"
        );
        let columns: Vec<String> = info.iter().map(|(c, _)| c.clone()).collect();
        let mut key: Vec<(u32, usize)> = info
            .iter()
            .enumerate()
            .filter(|(_, (_, pk))| *pk > 0)
            .map(|(i, (_, pk))| (*pk, i))
            .collect();
        key.sort();
        anyhow::ensure!(
            !key.is_empty(),
            "table `{name}` has no primary key; the archive job needs one to delete exactly the rows it archived"
        );
        let payload = payload
            .iter()
            .map(|p| {
                columns.iter().position(|c| c == p).with_context(|| {
                    format!(
                        "table `{name}` has no payload column `{p}`; check gateway.columns.payload"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Table {
            name: name.to_string(),
            columns,
            key: key.into_iter().map(|(_, i)| i).collect(),
            payload,
        })
    }

    pub fn key_columns(&self) -> Vec<String> {
        self.key.iter().map(|&i| self.columns[i].clone()).collect()
    }

    pub fn payload_columns(&self) -> Vec<String> {
        self.payload
            .iter()
            .map(|&i| self.columns[i].clone())
            .collect()
    }

    fn column_list(&self, d: Dialect) -> String {
        let quoted: Vec<String> = self.columns.iter().map(|c| d.ident(c)).collect();
        quoted.join(", ")
    }
}

/// Whether some index of `table` starts with `column`.
pub fn leads_an_index(db: &mut dyn Exec, table: &str, column: &str) -> anyhow::Result<bool> {
    db.leads_an_index(table, column)
        .with_context(|| format!("reading the indexes of table `{table}`"))
}

/// One row read from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub rowid: i64,
    pub values: Vec<Value>,
}

impl Row {
    /// Bytes of row data: text and blob lengths, 8 per number.
    pub fn bytes(&self) -> u64 {
        self.values.iter().map(value_bytes).sum()
    }
}

pub fn value_bytes(v: &Value) -> u64 {
    v.bytes()
}

/// The rows of one table that a run archives: a SQL condition and its parameters.
#[derive(Debug, Clone)]
pub struct Selection {
    pub table: Table,
    /// The time column.
    pub time: String,
    /// True for rows older than the cut-off: the time condition alone, which the time index
    /// answers without reading rows.
    pub old: String,
    /// `old` plus the `rows:` filter and, for `strip_payloads`, payloads not yet stripped.
    pub wanted: String,
    /// The parameters of `old` and `wanted`, from the first; a statement's own follow them.
    pub params: Vec<Value>,
}

impl Selection {
    /// The selection's parameters followed by `extra`.
    fn with(&self, extra: impl IntoIterator<Item = Value>) -> Vec<Value> {
        self.params.iter().cloned().chain(extra).collect()
    }

    /// The placeholder of the `i`-th (0-based) parameter after the selection's own.
    fn extra(&self, d: Dialect, i: usize) -> String {
        d.param(self.params.len() + 1 + i)
    }

    /// The highest rowid a run has to look at.
    ///
    /// With a time index, the old part of the index is walked in pieces of [`INDEX_CHUNK`]
    /// entries, each its own short read transaction (one pass over a million entries would
    /// hold the gateway's commits off for a tenth of a second). Without one, the table's
    /// largest rowid (one lookup) and every window is read.
    ///
    /// Also returns the longest single read transaction it took.
    pub fn last_rowid(
        &self,
        db: &mut dyn Exec,
        time_indexed: bool,
    ) -> anyhow::Result<(Option<i64>, Duration)> {
        let mut longest = Duration::ZERO;
        let d = db.dialect();
        let (table, time) = (d.table(&self.table.name), d.ident(&self.time));
        let context = || format!("finding the last row to archive in `{}`", self.table.name);
        if !time_indexed {
            let started = Instant::now();
            let last = db
                .query_one(&format!("SELECT max(rowid) FROM {table}"), &[], |r| r.i64(0))
                .with_context(context)?;
            return Ok((last, started.elapsed()));
        }
        let from_param = self.extra(d, 0);
        let chunk = format!(
            "SELECT {time}, rowid FROM {table} WHERE {} AND {time} >= {from_param} ORDER BY {time} LIMIT {INDEX_CHUNK}",
            self.old
        );
        // Ties at a chunk's end are read again by the next chunk (>=); a chunk of one time
        // only is finished by one query on that time.
        let tie = format!(
            "SELECT max(+rowid) FROM {table} WHERE {time} = {}",
            d.param(1)
        );
        let after = format!(
            "SELECT {time} FROM {table} WHERE {time} > {} ORDER BY {time} LIMIT 1",
            d.param(1)
        );
        // Text sorts above every integer in SQLite, so the smallest integer starts at the
        // beginning whatever the column's format.
        let mut from = Value::Integer(i64::MIN);
        let mut best: Option<i64> = None;
        loop {
            let params = self.with([from.clone()]);
            let started = Instant::now();
            let rows: Vec<(Value, i64)> = db
                .query_map(&chunk, &params, |r| {
                    Ok((r.get(0)?, r.i64(1)?.unwrap_or_default()))
                })
                .with_context(context)?;
            longest = longest.max(started.elapsed());
            let Some((last_time, _)) = rows.last().cloned() else {
                return Ok((best, longest));
            };
            best = rows.iter().map(|(_, id)| *id).chain(best).max();
            if rows.len() < INDEX_CHUNK {
                return Ok((best, longest));
            }
            if rows.iter().all(|(t, _)| *t == last_time) {
                let tied: Option<i64> = db
                    .query_one(&tie, std::slice::from_ref(&last_time), |r| r.i64(0))
                    .with_context(context)?;
                best = tied.into_iter().chain(best).max();
                // Move past this time: the next chunk starts at the first greater value.
                from = last_time;
                let next: Option<Value> = db
                    .query_opt(&after, std::slice::from_ref(&from), |r| r.get(0))
                    .with_context(context)?;
                match next {
                    Some(v) => from = v,
                    None => return Ok((best, longest)),
                }
            } else {
                from = last_time;
            }
        }
    }

    /// Reads up to `limit` rows with rowid in `(after, end]`, in one read transaction that
    /// stops early once it has lasted `budget`, and returns the wanted ones with the last rowid
    /// looked at (`None`: nothing left). Rows vary in size; the time bound keeps the shared
    /// lock short whatever they hold.
    pub fn window(
        &self,
        db: &mut dyn Exec,
        after: i64,
        end: i64,
        limit: usize,
        budget: Duration,
    ) -> anyhow::Result<(Vec<Row>, Option<i64>)> {
        let started = Instant::now();
        let d = db.dialect();
        let sql = format!(
            "SELECT rowid, ({}) AS wanted, {} FROM {} WHERE rowid > {} AND rowid <= {} ORDER BY rowid LIMIT {}",
            self.wanted,
            self.table.column_list(d),
            d.table(&self.table.name),
            self.extra(d, 0),
            self.extra(d, 1),
            self.extra(d, 2)
        );
        let params = self.with([
            Value::Integer(after),
            Value::Integer(end),
            Value::Integer(limit as i64),
        ]);
        let mut wanted = Vec::new();
        let mut last = None;
        let n = self.table.columns.len();
        db.query(&sql, &params, &mut |r| {
            let rowid = r.i64(0)?.unwrap_or_default();
            last = Some(rowid);
            if r.get(1)?.as_bool()?.unwrap_or(false) {
                let values = (0..n).map(|i| r.get(i + 2)).collect::<anyhow::Result<_>>()?;
                wanted.push(Row { rowid, values });
            }
            Ok(started.elapsed() < budget)
        })
        .with_context(|| format!("reading rows of `{}`", self.table.name))?;
        Ok((wanted, last))
    }

    /// PostgreSQL has no stable row number: reads up to `limit` old rows after `after` (the
    /// time and key values of the last row looked at; `None` from the start) in (time, key)
    /// order, which LiteLLM's `("startTime", request_id)` index serves, stopping early once it
    /// has lasted `budget` or read `max_bytes` of row data (a spend log with embedding vectors
    /// can be megabytes: a batch's rows are held in memory until their file is written). Returns the wanted ones with the position of the last row looked
    /// at (`None`: nothing left). Each row's `rowid` is its time in Unix milliseconds, which
    /// only names the files.
    pub fn keyset_window(
        &self,
        db: &mut dyn Exec,
        after: Option<&[Value]>,
        limit: usize,
        budget: Duration,
        max_bytes: u64,
    ) -> anyhow::Result<(Vec<Row>, Option<Vec<Value>>)> {
        let started = Instant::now();
        let d = db.dialect();
        let time_at = self
            .table
            .columns
            .iter()
            .position(|c| *c == self.time)
            .with_context(|| {
                format!(
                    "table `{}` has no time column `{}`",
                    self.table.name, self.time
                )
            })?;
        let order: Vec<usize> = std::iter::once(time_at)
            .chain(self.table.key.iter().copied().filter(|&k| k != time_at))
            .collect();
        let order_sql: Vec<String> = order
            .iter()
            .map(|&i| d.ident(&self.table.columns[i]))
            .collect();
        let order_sql = order_sql.join(", ");
        let mut params = self.params.clone();
        let mut sql = format!(
            "SELECT ({}) AS wanted, {} FROM {} WHERE {}",
            self.wanted,
            self.table.column_list(d),
            d.table(&self.table.name),
            self.old
        );
        if let Some(after) = after {
            sql.push_str(&format!(
                " AND ({order_sql}) > ({})",
                d.params(params.len() + 1, after.len())
            ));
            params.extend(after.iter().cloned());
        }
        sql.push_str(&format!(
            " ORDER BY {order_sql} LIMIT {}",
            d.param(params.len() + 1)
        ));
        params.push(Value::Integer(limit as i64));
        let mut wanted = Vec::new();
        let mut last = None;
        let mut bytes = 0u64;
        let n = self.table.columns.len();
        db.query(&sql, &params, &mut |r| {
            let values: Vec<Value> = (0..n).map(|i| r.get(i + 1)).collect::<anyhow::Result<_>>()?;
            bytes += values.iter().map(Value::bytes).sum::<u64>();
            last = Some(order.iter().map(|&i| values[i].clone()).collect());
            if r.get(0)?.as_bool()?.unwrap_or(false) {
                let rowid = match &values[time_at] {
                    Value::Time(t) => t.timestamp_millis(),
                    Value::Integer(n) => *n,
                    _ => 0,
                };
                wanted.push(Row { rowid, values });
            }
            Ok(started.elapsed() < budget && bytes < max_bytes)
        })
        .with_context(|| format!("reading rows of `{}`", self.table.name))?;
        Ok((wanted, last))
    }

    /// Reads the rows with the given rowids (sorted), in one read transaction.
    pub fn by_rowids(&self, db: &mut dyn Exec, rowids: &[i64]) -> anyhow::Result<Vec<Row>> {
        let (Some(&first), Some(&last)) = (rowids.first(), rowids.last()) else {
            return Ok(Vec::new());
        };
        let d = db.dialect();
        let sql = format!(
            "SELECT rowid, {} FROM {} WHERE rowid >= {} AND rowid <= {} ORDER BY rowid",
            self.table.column_list(d),
            d.table(&self.table.name),
            d.param(1),
            d.param(2)
        );
        let wanted: std::collections::HashSet<i64> = rowids.iter().copied().collect();
        let n = self.table.columns.len();
        let mut out = Vec::new();
        db.query(&sql, &[first.into(), last.into()], &mut |r| {
            let rowid = r.i64(0)?.unwrap_or_default();
            if wanted.contains(&rowid) {
                let values = (0..n).map(|i| r.get(i + 1)).collect::<anyhow::Result<_>>()?;
                out.push(Row { rowid, values });
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::sqlite::SqliteExec;
    use chrono::TimeZone;
    use rusqlite::Connection;

    #[test]
    fn iso_bound_sorts_every_spelling_right() {
        let cutoff = Utc.with_ymd_and_hms(2025, 8, 3, 12, 0, 0).unwrap();
        let bound = Bound::new(TimeFormat::Iso8601, cutoff);
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (ts TEXT); CREATE INDEX i ON t(ts);")
            .unwrap();
        let cases = [
            ("2025-08-03T11:59:59.999999Z", true),
            ("2025-08-03T11:59:59+00:00", true),
            ("2025-08-03T11:59:59", true),
            ("2025-08-03 11:59:59", true),
            ("2025-08-02 23:00:00", true),
            ("2025-08-03T12:00:00Z", false),
            ("2025-08-03T12:00:00", false),
            ("2025-08-03T12:00:00.000001", false),
            ("2025-08-03T12:00:00+00:00", false),
            ("2025-08-03 12:00:00", false),
            ("2025-08-03 13:00:00", false),
            ("2025-08-04 01:00:00", false),
            ("2025-08-04T00:00:00Z", false),
        ];
        let cond = bound.condition(Dialect::Sqlite, "ts");
        for (ts, old) in cases {
            let got: bool = conn
                .query_row(
                    &format!("SELECT {cond} FROM (SELECT '{ts}' AS ts)"),
                    rusqlite::params_from_iter(bound.params()),
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(got, old, "{ts}");
        }
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN SELECT max(+rowid) FROM t WHERE {cond}"),
                rusqlite::params_from_iter(bound.params()),
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("USING COVERING INDEX i"), "{plan}");
    }

    #[test]
    fn the_last_old_row_is_found_in_index_chunks_across_ties() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, ts INTEGER); CREATE INDEX i ON t(ts);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for n in 0..30_000_i64 {
            tx.execute("INSERT INTO t (ts) VALUES (?1)", [n]).unwrap();
        }
        // More rows of one time than a chunk holds.
        for _ in 0..25_000 {
            tx.execute("INSERT INTO t (ts) VALUES (30000)", []).unwrap();
        }
        for n in 30_001..40_000_i64 {
            tx.execute("INSERT INTO t (ts) VALUES (?1)", [n]).unwrap();
        }
        // A late row with an old time: the highest rowid of all old rows.
        tx.execute("INSERT INTO t (ts) VALUES (5)", []).unwrap();
        tx.execute("INSERT INTO t (ts) VALUES (99999)", []).unwrap();
        tx.commit().unwrap();
        let table = Table::inspect(&mut SqliteExec(&conn), "t", &[]).unwrap();
        for (cut, expected) in [
            (35_000, 65_000),
            (1, 1),
            (0, 0),
            (30_001, 65_000),
            (100_000, 65_001),
        ] {
            let bound = Bound::Integer(cut);
            let selection = Selection {
                table: table.clone(),
                time: "ts".into(),
                old: bound.condition(Dialect::Sqlite, "ts"),
                wanted: bound.condition(Dialect::Sqlite, "ts"),
                params: bound.params(),
            };
            let (got, _) = selection.last_rowid(&mut SqliteExec(&conn), true).unwrap();
            let expected = (expected > 0).then_some(expected);
            assert_eq!(got, expected, "cut {cut}");
        }
    }

    #[test]
    fn a_window_stops_at_its_time_budget_and_the_next_one_goes_on_from_there() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, ts INTEGER)")
            .unwrap();
        for n in 1..=50_i64 {
            conn.execute("INSERT INTO t (ts) VALUES (?1)", [n % 2])
                .unwrap();
        }
        let table = Table::inspect(&mut SqliteExec(&conn), "t", &[]).unwrap();
        let bound = Bound::Integer(1);
        let selection = Selection {
            table,
            time: "ts".into(),
            old: bound.condition(Dialect::Sqlite, "ts"),
            wanted: bound.condition(Dialect::Sqlite, "ts"),
            params: bound.params(),
        };
        // A spent budget still reads one row, so every window makes progress.
        let mut after = i64::MIN;
        let mut wanted = Vec::new();
        let mut windows = 0;
        while let (rows, Some(last)) = selection
            .window(&mut SqliteExec(&conn), after, 50, 1000, Duration::ZERO)
            .unwrap()
        {
            assert_eq!(last, after.max(0) + 1, "one row per window");
            wanted.extend(rows.into_iter().map(|r| r.rowid));
            after = last;
            windows += 1;
        }
        assert_eq!(windows, 50);
        // ts = n % 2 for row n: the even rows are older than 1.
        assert_eq!(wanted, (2..=50).step_by(2).collect::<Vec<i64>>());
        // With time to spare, the row limit ends the window.
        let (_, last) = selection
            .window(&mut SqliteExec(&conn), i64::MIN, 50, 7, Duration::from_secs(60))
            .unwrap();
        assert_eq!(last, Some(7));
    }

    #[test]
    fn unix_bounds() {
        let cutoff = Utc.with_ymd_and_hms(2025, 8, 3, 12, 0, 0).unwrap();
        assert_eq!(
            Bound::new(TimeFormat::UnixSeconds, cutoff),
            Bound::Integer(1_754_222_400)
        );
        assert_eq!(
            Bound::new(TimeFormat::UnixMillis, cutoff),
            Bound::Integer(1_754_222_400_000)
        );
    }
}
