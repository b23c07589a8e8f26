//! The PostgreSQL backend of the gateway interface: statements over our values on a blocking
//! session, the catalog through information_schema, and write transactions whose lock timeout
//! is the gateway's "busy" signal.
//!
//! PostgreSQL's readers and writers do not block each other (MVCC), so there is no gap to wait
//! for as on SQLite: what could make the proxy's inserts queue behind us is a lock of ours that
//! its batch needs. Every statement runs under the session's `lock_timeout` ([`super::connect`]);
//! a statement that meets a lock held longer fails with SQLSTATE 55P03, which is reported as
//! [`crate::writelock::LockTimedOut`] so that [`crate::writelock::patiently`] rolls the
//! transaction back, pauses and runs it again later, as it does for SQLite's busy errors
//! (docs/design.md, "The gateway behind one interface").

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use postgres::GenericClient;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::gateway::Gateway;
use crate::gateway::db::{
    Access, Column, Exec, ExecExt as _, GatewayDb, Pacing, RowRef, Sizes, Tuning,
};
use crate::gateway::dialect::Dialect;
use crate::gateway::value::Value;
use crate::writelock::{LockTimedOut, patiently, record};

/// The gateway's PostgreSQL database, opened for a job.
pub struct PgDb {
    gateway: Gateway,
    conn: PgExec<postgres::Client>,
    pacing: Pacing,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb")
            .field("server", &self.gateway.location())
            .finish_non_exhaustive()
    }
}

impl PgDb {
    /// Opens a session with our timeouts; a read-only job's session refuses every write
    /// (`default_transaction_read_only`), so a dry run cannot change a row even by mistake.
    pub fn open(gateway: &Gateway, access: Access) -> anyhow::Result<PgDb> {
        let server = gateway
            .postgres
            .as_ref()
            .context("opening a PostgreSQL backend for a SQLite gateway (a caretaker bug)")?;
        let mut client = super::connect(server)?;
        if access == Access::ReadOnly {
            client
                .batch_execute("SET default_transaction_read_only = on")
                .map_err(pg_error)
                .with_context(|| {
                    format!("making our session read-only on the {}", server.describe)
                })?;
        }
        Ok(PgDb {
            gateway: gateway.clone(),
            conn: PgExec(client),
            pacing: Pacing::default(),
        })
    }
}

/// Statements on a PostgreSQL session or inside one of its transactions.
pub struct PgExec<C: GenericClient>(pub C);

/// An engine error as ours: a lock timeout becomes [`LockTimedOut`] (the gateway's "busy"),
/// anything else stays the server's own error, its message and detail kept.
pub fn pg_error(e: postgres::Error) -> anyhow::Error {
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        return anyhow::Error::new(LockTimedOut(Box::new(e)));
    }
    match e.as_db_error() {
        // The server's own words, once: severity, message, detail and hint.
        Some(db) => anyhow::anyhow!(
            "{}: {}{}{}",
            db.severity(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default(),
            db.hint()
                .map(|h| format!("; hint: {h}"))
                .unwrap_or_default()
        ),
        None => anyhow::Error::new(e),
    }
}

impl ToSql for Value {
    /// Binds our value as the parameter's type asks: a statement written once for SQLite binds
    /// an integer where PostgreSQL expects `integer` or `double precision`, text where it
    /// expects `jsonb`.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Integer(n), &Type::INT2) => i16::try_from(*n)?.to_sql(ty, out),
            (Value::Integer(n), &Type::INT4) => i32::try_from(*n)?.to_sql(ty, out),
            (Value::Integer(n), &Type::INT8) => n.to_sql(ty, out),
            (Value::Integer(n), &Type::FLOAT8) => (*n as f64).to_sql(ty, out),
            (Value::Integer(n), &Type::FLOAT4) => (*n as f32).to_sql(ty, out),
            (Value::Integer(n), &Type::BOOL) => (*n != 0).to_sql(ty, out),
            (Value::Integer(n), &Type::TEXT | &Type::VARCHAR) => n.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Real(f), &Type::TEXT | &Type::VARCHAR) => f.to_string().to_sql(ty, out),
            (Value::Text(t), &Type::JSONB) => {
                // jsonb's binary form: a version byte, then the JSON text.
                out.extend_from_slice(&[1]);
                out.extend_from_slice(t.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Text(t), &Type::JSON) => {
                out.extend_from_slice(t.as_bytes());
                Ok(IsNull::No)
            }
            (
                Value::Text(t),
                &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN,
            ) => t.as_str().to_sql(ty, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(ty, out),
            (Value::Time(t), &Type::TIMESTAMPTZ) => t.to_sql(ty, out),
            (Value::Time(t), &Type::TIMESTAMP) => t.naive_utc().to_sql(ty, out),
            (Value::Time(t), &Type::TEXT | &Type::VARCHAR) => t.to_rfc3339().to_sql(ty, out),
            (v, ty) => Err(format!(
                "cannot bind {} to a parameter of type {ty}; cast the parameter in the statement",
                v.kind()
            )
            .into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column of a row read, converted to our value by its type.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Cell, Box<dyn std::error::Error + Sync + Send>> {
        let v = match *ty {
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::OID => Value::Integer(i64::from(u32::from_sql(ty, raw)?)),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric(raw)?,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(String::from_sql(ty, raw)?)
            }
            // The JSON text as stored: what the archive writes and redacts.
            Type::JSONB => match raw.split_first() {
                Some((1, text)) => Value::Text(std::str::from_utf8(text)?.to_string()),
                _ => return Err("unsupported jsonb version".into()),
            },
            Type::JSON => Value::Text(std::str::from_utf8(raw)?.to_string()),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            // LiteLLM writes UTC into `timestamp without time zone`.
            Type::TIMESTAMP => Value::Time(NaiveDateTime::from_sql(ty, raw)?.and_utc()),
            Type::TIMESTAMPTZ => Value::Time(DateTime::<Utc>::from_sql(ty, raw)?),
            Type::DATE => Value::Text(NaiveDate::from_sql(ty, raw)?.to_string()),
            ref other => {
                return Err(format!(
                    "a column of type {other} cannot be read; cast it to text in the statement"
                )
                .into());
            }
        };
        Ok(Cell(v))
    }

    fn from_sql_null(_: &Type) -> Result<Cell, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A `numeric` (what `sum` of a `bigint` returns) from its binary form: an integer when it has
/// no fraction and fits, else a real.
fn numeric(raw: &[u8]) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".into())
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut int: Option<i64> = Some(0);
    let mut real = 0f64;
    for i in 0..ndigits.max(0) as usize {
        let digit = i64::from(word(4 + i)?);
        let power = i32::from(weight) - i as i32;
        real += digit as f64 * 10f64.powi(4 * power);
        int = match (int, power >= 0) {
            (Some(n), true) => 10_000i64
                .checked_pow(power as u32)
                .and_then(|p| digit.checked_mul(p))
                .and_then(|d| n.checked_add(d)),
            (_, false) if digit != 0 => None,
            (n, _) => n,
        };
    }
    let negative = sign == 0x4000;
    Ok(match int {
        Some(n) if dscale == 0 => Value::Integer(if negative { -n } else { n }),
        _ => Value::Real(if negative { -real } else { real }),
    })
}

struct Row<'r>(&'r postgres::Row);

impl RowRef for Row<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, i: usize) -> anyhow::Result<Value> {
        let cell: Cell = self.0.try_get(i).with_context(|| {
            format!(
                "reading column `{}`",
                self.0.columns().get(i).map_or("?", |c| c.name())
            )
        })?;
        Ok(cell.0)
    }
}

/// `name` or `schema.name` as (schema, table); no schema means the session's current one.
fn split_table(table: &str) -> (Option<String>, String) {
    match table.split_once('.') {
        Some((schema, name)) => (Some(unquote(schema)), unquote(name)),
        None => (None, unquote(table)),
    }
}

fn unquote(part: &str) -> String {
    part.strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .map_or_else(|| part.to_string(), |p| p.replace("\"\"", "\""))
}

impl<C: GenericClient> Exec for PgExec<C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn RowRef) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let mut rows = self.0.query_raw(sql, params.iter()).map_err(pg_error)?;
        while let Some(row) = rows.next().map_err(pg_error)? {
            if !each(&Row(&row))? {
                break;
            }
        }
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.0.execute(sql, &params).map_err(pg_error)
    }

    /// From information_schema, which shows what our role may see: each column with its place
    /// in the primary key. A schema-qualified name (`gw.usage`) is looked up in that schema,
    /// a plain one in the session's current schema.
    fn columns_of(&mut self, table: &str) -> anyhow::Result<Vec<Column>> {
        let (schema, name) = split_table(table);
        let sql = "SELECT c.column_name::text,
                COALESCE((SELECT k.ordinal_position::int8
                  FROM information_schema.table_constraints t
                  JOIN information_schema.key_column_usage k
                    ON k.constraint_schema = t.constraint_schema AND k.constraint_name = t.constraint_name
                   AND k.table_schema = t.table_schema AND k.table_name = t.table_name
                 WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = c.table_schema
                   AND t.table_name = c.table_name AND k.column_name = c.column_name), 0)
              FROM information_schema.columns c
             WHERE c.table_schema = COALESCE($1, current_schema()) AND c.table_name = $2
             ORDER BY c.ordinal_position";
        let mut out = Vec::new();
        self.query(sql, &[schema.into(), name.into()], &mut |r| {
            out.push(Column {
                name: r.get(0)?.into_string()?.unwrap_or_default(),
                key: r.get(1)?.as_i64()?.unwrap_or(0).max(0) as u32,
            });
            Ok(true)
        })?;
        Ok(out)
    }

    /// The tables of the current schema by name, others as `schema.table`.
    fn tables(&mut self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        self.query(
            "SELECT CASE WHEN table_schema = current_schema() THEN table_name::text
                    ELSE table_schema || '.' || table_name END
               FROM information_schema.tables
              WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
              ORDER BY 1",
            &[],
            &mut |r| {
                out.push(r.get(0)?.into_string()?.unwrap_or_default());
                Ok(true)
            },
        )?;
        Ok(out)
    }

    fn leads_an_index(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        let mut found = false;
        self.query(
            "SELECT count(*) FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = to_regclass($1) AND a.attname = $2",
            &[Dialect::Postgres.table(table).into(), column.into()],
            &mut |r| {
                found = r.get(0)?.as_i64()?.unwrap_or(0) > 0;
                Ok(false)
            },
        )?;
        Ok(found)
    }
}

/// Books a write transaction held since `began`.
fn book(pacing: &mut Pacing, began: Instant) -> Duration {
    let held = began.elapsed();
    pacing.longest = pacing.longest.max(held);
    pacing.total += held;
    pacing.transactions += 1;
    record(held, 0);
    held
}

impl GatewayDb for PgDb {
    fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self) -> &mut dyn Exec {
        &mut self.conn
    }

    /// Nothing to set: PostgreSQL runs a declared `ON DELETE CASCADE` whatever the session says
    /// (the LiteLLM tables declare none; `check_columns` is where a custom table is looked at),
    /// and a transaction's changes never spill into a lock the gateway waits on.
    fn tune(&mut self, _tuning: Tuning) -> anyhow::Result<()> {
        Ok(())
    }

    /// A read-only transaction: one snapshot for the statements of `work`, which holds no lock
    /// the gateway's inserts wait on.
    fn paced_read(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        let client = &mut self.conn.0;
        patiently("reading", || {
            let began = Instant::now();
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .map_err(pg_error)
                .context("starting a read transaction on the gateway database")?;
            let mut exec = PgExec(tx);
            work(&mut exec)?;
            exec.0.commit().map_err(pg_error)?;
            Ok(began.elapsed())
        })
    }

    /// One transaction, committed when `work` succeeds; a statement that met a lock past our
    /// `lock_timeout` rolls it back and it runs again after a pause ([`patiently`]): the
    /// proxy's batch that held the lock goes first.
    fn paced_write(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        let mut held = None;
        let (client, pacing) = (&mut self.conn.0, &mut self.pacing);
        patiently("writing", || {
            let began = Instant::now();
            let tx = client
                .transaction()
                .map_err(pg_error)
                .context("starting a write transaction on the gateway database")?;
            let mut exec = PgExec(tx);
            let result = work(&mut exec).and_then(|()| {
                exec.0
                    .commit()
                    .map_err(pg_error)
                    .context("committing a write transaction on the gateway database")
            });
            // A try that gave up on a lock held no lock the proxy's inserts wait for: it waited
            // itself, and only the committed transactions count as holds.
            if result.is_ok() {
                held = Some(book(pacing, began));
            }
            result
        })?;
        Ok(held.unwrap_or_default())
    }

    fn pacing(&self) -> Pacing {
        self.pacing
    }

    fn sizes(&mut self) -> anyhow::Result<Sizes> {
        let bytes = self
            .conn
            .query_one("SELECT pg_database_size(current_database())", &[], |r| {
                r.i64(0)
            })
            .context("reading the size of the gateway database")?;
        Ok(Sizes {
            database_bytes: bytes.unwrap_or(0).max(0) as u64,
            wal_bytes: None,
        })
    }
}

/// How big one table is and how many of its tuples are dead, as the statistics collector
/// and the relation sizes tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// The heap alone.
    pub table: u64,
    /// The TOAST table and its index, where the big JSONB values live.
    pub toast: u64,
    pub indexes: u64,
    pub live_tuples: u64,
    pub dead_tuples: u64,
}

impl TableSizes {
    /// Table, TOAST and indexes: what `table_max_size` compares.
    pub fn total(&self) -> u64 {
        self.table + self.toast + self.indexes
    }

    /// Dead tuples as a share of all tuples (0 for an empty table).
    pub fn dead_share(&self) -> f64 {
        let all = self.live_tuples + self.dead_tuples;
        if all == 0 {
            0.0
        } else {
            self.dead_tuples as f64 / all as f64
        }
    }
}

/// The sizes of `table` (as configured: `name` or `schema.name`), or `None` when there is no
/// such table.
pub fn table_sizes(exec: &mut dyn Exec, table: &str) -> anyhow::Result<Option<TableSizes>> {
    let quoted = Dialect::Postgres.table(table);
    exec.query_opt(
        "SELECT pg_relation_size(c.oid),
                COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),
                pg_indexes_size(c.oid),
                COALESCE(s.n_live_tup, 0), COALESCE(s.n_dead_tup, 0)
           FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
          WHERE c.oid = to_regclass($1)",
        &[quoted.into()],
        |r| {
            let n = |i| -> anyhow::Result<u64> { Ok(r.i64(i)?.unwrap_or(0).max(0) as u64) };
            Ok(TableSizes {
                table: n(0)?,
                toast: n(1)?,
                indexes: n(2)?,
                live_tuples: n(3)?,
                dead_tuples: n(4)?,
            })
        },
    )
    .with_context(|| format!("reading the sizes of table `{table}`"))
}

/// The columns of `table` declared NOT NULL (information_schema), in order.
pub fn not_null_columns(exec: &mut dyn Exec, table: &str) -> anyhow::Result<Vec<String>> {
    columns_where(exec, table, "is_nullable = 'NO'")
        .with_context(|| format!("reading which columns of `{table}` are NOT NULL"))
}

/// The JSONB and JSON columns of `table`, in order: where payloads and their secrets sit.
pub fn jsonb_columns(exec: &mut dyn Exec, table: &str) -> anyhow::Result<Vec<String>> {
    columns_where(exec, table, "data_type IN ('jsonb', 'json')")
        .with_context(|| format!("reading the JSON columns of `{table}`"))
}

/// The columns of `table` for which `condition` on information_schema.columns holds.
fn columns_where(exec: &mut dyn Exec, table: &str, condition: &str) -> anyhow::Result<Vec<String>> {
    let (schema, name) = split_table(table);
    exec.query_map(
        &format!(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2
                AND {condition} ORDER BY ordinal_position"
        ),
        &[schema.into(), name.into()],
        |r| Ok(r.string(0)?.unwrap_or_default()),
    )
}

/// Client backends connected to the server, and its `max_connections`.
pub fn connections(exec: &mut dyn Exec) -> anyhow::Result<(u64, u64)> {
    exec.query_one(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
                current_setting('max_connections')::int8",
        &[],
        |r| {
            Ok((
                r.i64(0)?.unwrap_or(0).max(0) as u64,
                r.i64(1)?.unwrap_or(0).max(0) as u64,
            ))
        },
    )
    .context("counting the server's connections (pg_stat_activity)")
}

/// How long the oldest open transaction on the gateway's database has run (zero when none):
/// it holds vacuum back. Our own session's is left out. Another role's sessions show their
/// `xact_start` only to a member of `pg_read_all_stats` (docs/postgres.md, the grants).
pub fn oldest_transaction(exec: &mut dyn Exec) -> anyhow::Result<Duration> {
    let seconds = exec
        .query_one(
            "SELECT COALESCE(EXTRACT(EPOCH FROM max(clock_timestamp() - xact_start)), 0)::float8
               FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
            &[],
            |r| r.f64(0),
        )
        .context("reading the oldest open transaction (pg_stat_activity)")?;
    Ok(Duration::from_secs_f64(seconds.unwrap_or(0.0).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_read_as_integers_when_whole_else_reals() {
        // (ndigits, weight, sign, dscale, digits...) as PostgreSQL sends them.
        let enc =
            |words: &[i16]| -> Vec<u8> { words.iter().flat_map(|w| w.to_be_bytes()).collect() };
        assert_eq!(numeric(&enc(&[0, 0, 0, 0])).unwrap(), Value::Integer(0));
        assert_eq!(
            numeric(&enc(&[2, 1, 0, 0, 12, 3456])).unwrap(),
            Value::Integer(123_456)
        );
        assert_eq!(
            numeric(&enc(&[1, 0, 0x4000, 0, 42])).unwrap(),
            Value::Integer(-42)
        );
        assert_eq!(
            numeric(&enc(&[2, 0, 0, 2, 1, 5000])).unwrap(),
            Value::Real(1.5)
        );
    }

    #[test]
    fn table_names_split_into_schema_and_name() {
        assert_eq!(split_table("t"), (None, "t".to_string()));
        assert_eq!(
            split_table("gw.LiteLLM_SpendLogs"),
            (Some("gw".to_string()), "LiteLLM_SpendLogs".to_string())
        );
        assert_eq!(
            split_table("\"LiteLLM_SpendLogs\""),
            (None, "LiteLLM_SpendLogs".to_string())
        );
    }
}
