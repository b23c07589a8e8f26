//! What jobs ask of a gateway database, whatever its engine: one interface, one implementation
//! per backend (`sqlite` today).
//!
//! The interface is small and made of primitives, as Litestream keeps each replica backend
//! behind one `ReplicaClient` (list, read, write, delete) and the replication policy above it:
//! statements over our own [`Value`]s, paced read and write transactions, the table's columns,
//! size facts. What a job does with them (which rows, how many per transaction, what to alert
//! on) stays in the job, written once. Statements are built with the backend's [`Dialect`].
//! An operation that only one engine has (VACUUM, the online backup API, `PRAGMA
//! integrity_check`) is reached through that backend's own type, not through this interface
//! (docs/design.md, "The gateway behind one interface").

use std::time::Duration;

use anyhow::Context as _;

use super::dialect::Dialect;
use super::value::Value;
use super::{Gateway, Preset};

/// How a job opens the gateway's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    /// Read-only for a dry run, which must not change anything.
    pub fn unless_dry_run(dry_run: bool) -> Access {
        if dry_run {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// A row being read: its columns, converted to [`Value`]s on demand (a row skipped costs no
/// conversion).
pub trait RowRef {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> anyhow::Result<Value>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl dyn RowRef + '_ {
    /// Column `i` as an integer, or `None` for null; another kind of value is an error.
    pub fn i64(&self, i: usize) -> anyhow::Result<Option<i64>> {
        self.get(i)?
            .as_i64()
            .with_context(|| format!("reading column {i}"))
    }

    /// Column `i` as a number (an integer reads as a real), or `None` for null.
    pub fn f64(&self, i: usize) -> anyhow::Result<Option<f64>> {
        self.get(i)?
            .as_f64()
            .with_context(|| format!("reading column {i}"))
    }

    /// Column `i` as text, or `None` for null.
    pub fn string(&self, i: usize) -> anyhow::Result<Option<String>> {
        self.get(i)?
            .into_string()
            .with_context(|| format!("reading column {i}"))
    }

    /// Every column.
    pub fn values(&self) -> anyhow::Result<Vec<Value>> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

/// Running statements and reading the catalog: on a connection, or inside one of its
/// transactions.
///
/// Errors are the engine's own, unwrapped, so that callers add what they were doing and
/// [`crate::writelock::is_busy`] still recognises a lock the gateway kept.
pub trait Exec {
    fn dialect(&self) -> Dialect;

    /// Runs `sql` with `params`, calling `each` with every row until it returns `false`.
    fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn RowRef) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()>;

    /// Runs a statement that returns no rows; returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64>;

    // The catalog: each engine keeps it its own way.

    /// The columns of `table`, in order; empty when there is no such table.
    fn columns_of(&mut self, table: &str) -> anyhow::Result<Vec<Column>>;

    /// The names of the database's tables (for a message naming what exists).
    fn tables(&mut self) -> anyhow::Result<Vec<String>>;

    /// Whether some index of `table` starts with `column`.
    fn leads_an_index(&mut self, table: &str, column: &str) -> anyhow::Result<bool>;
}

/// Typed helpers over [`Exec::query`], for any connection or transaction (`use` it).
pub trait ExecExt: Exec {
    /// Every row of `sql`, each converted by `row`.
    fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        mut row: impl FnMut(&dyn RowRef) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        self.query(sql, params, &mut |r| {
            out.push(row(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first row of `sql` converted by `row`, or `None` when there is none.
    fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        mut row: impl FnMut(&dyn RowRef) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        let mut out = None;
        self.query(sql, params, &mut |r| {
            out = Some(row(r)?);
            Ok(false)
        })?;
        Ok(out)
    }

    /// The first row of `sql`, which must have one (an aggregate's).
    fn query_one<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        row: impl FnMut(&dyn RowRef) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.query_opt(sql, params, row)?
            .with_context(|| format!("the statement returned no row: {sql}"))
    }
}

impl<E: Exec + ?Sized> ExecExt for E {}

/// A table column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Its position in the primary key (1-based), or 0 when it is not part of it.
    pub key: u32,
}

/// How big the gateway's database is, as far as its engine tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// The database (SQLite: its file; PostgreSQL: `pg_database_size`).
    pub database_bytes: u64,
    /// SQLite's write-ahead log beside it (0 when there is none); `None` where the engine has
    /// no such file of its own (PostgreSQL's WAL belongs to the whole cluster).
    pub wal_bytes: Option<u64>,
}

/// What our paced transactions held so far: for a job's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    /// The longest write transaction.
    pub longest: Duration,
    pub transactions: u64,
    /// All write transactions together.
    pub total: Duration,
}

/// What a job is about to do with its connection, so the backend sets it up for that. Each
/// backend does what its engine needs (see [`super::sqlite`]); one may do nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Deleting or stripping rows a few hundred at a time: no cascades to rows we did not
    /// archive, and no transaction that outgrows memory and locks early.
    Purge,
    /// Updating many rows in small batches: a commit that risks only its own batch on power
    /// loss where the engine's log allows it, and a cache of `cache_kib` for a batch's pages.
    Update { cache_kib: i64 },
}

/// A connection to the gateway's database, as jobs use it. Open one with
/// [`Gateway::open`].
///
/// Trait methods whose work is a closure take `dyn FnMut` so the trait stays usable as
/// `Box<dyn GatewayDb>`; use the typed [`read`](#method.read) and [`write`](#method.write)
/// on `dyn GatewayDb`.
pub trait GatewayDb: Send {
    /// The configuration this connection was opened for.
    fn gateway(&self) -> &Gateway;

    fn dialect(&self) -> Dialect;

    /// Statements and the catalog, outside a paced transaction (a read that holds no lock
    /// the gateway's writers wait on, such as a WAL reader's or PostgreSQL's).
    fn exec(&mut self) -> &mut dyn Exec;

    /// Sets the connection up for the work that follows.
    fn tune(&mut self, tuning: Tuning) -> anyhow::Result<()>;

    /// Runs `work` as one read transaction that the gateway barely notices (after the room
    /// owed to it, timed, recorded where it holds the gateway's writers off, tried again while
    /// the gateway keeps its lock past our timeout). `work` must stop by
    /// [`crate::writelock::HOLD_LIMIT`]. Returns how long it took.
    fn paced_read(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration>;

    /// Runs `work` in one write transaction started at a good moment for the gateway, timed
    /// and recorded; committed when `work` succeeds, rolled back when it fails. Returns how
    /// long the write lock was held.
    fn paced_write(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration>;

    /// The write transactions so far.
    fn pacing(&self) -> Pacing;

    /// How big the database is.
    fn sizes(&mut self) -> anyhow::Result<Sizes>;

    /// The SQLite connection underneath, for the few SQLite-only operations; `None` on other
    /// engines.
    fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        None
    }
}

/// The work of a paced transaction, as the `dyn` trait methods take it.
type Work<'w> = &'w mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>;

/// Runs `work` through `paced` (a `dyn` paced method) and hands back what it returned.
fn typed<T>(
    paced: impl FnOnce(Work<'_>) -> anyhow::Result<Duration>,
    mut work: impl FnMut(&mut dyn Exec) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let mut out = None;
    let took = paced(&mut |e| {
        out = Some(work(e)?);
        Ok(())
    })?;
    Ok((
        out.expect("a paced transaction that succeeded ran its work"),
        took,
    ))
}

impl dyn GatewayDb + '_ {
    /// [`GatewayDb::paced_read`] returning what `work` returns, with how long it took.
    pub fn read<T>(
        &mut self,
        work: impl FnMut(&mut dyn Exec) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        typed(|w| self.paced_read(w), work)
    }

    /// [`GatewayDb::paced_write`] returning what `work` returns, with how long the write lock
    /// was held. `work` may run more than once (a try that met the gateway's lock is rolled
    /// back and made again).
    pub fn write<T>(
        &mut self,
        work: impl FnMut(&mut dyn Exec) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Duration)> {
        typed(|w| self.paced_write(w), work)
    }

    /// Checks that the gateway's table and every column the configuration names exist, before
    /// a job reads or changes a row. `check` cannot see the database, so every job that reads
    /// the request table calls this at the start of each run (dry runs too): a name that is
    /// wrong would otherwise make a filter constant (see `crate::sqlite`) or fail halfway.
    pub fn check_columns(&mut self) -> anyhow::Result<()> {
        let Some(existing) = self.check_table()? else {
            return Ok(());
        };
        let gateway = self.gateway();
        for (key, column) in gateway.named_columns() {
            if !existing.iter().any(|e| e.eq_ignore_ascii_case(column)) {
                anyhow::bail!(
                    "{key}: table `{}` in {} has no column `{column}`; its columns are: {}; nothing was read or changed; {}",
                    gateway.table,
                    gateway.location(),
                    existing.join(", "),
                    gateway.fix("column")
                );
            }
        }
        Ok(())
    }

    /// Checks that the gateway's table exists, naming the tables that do when it does not.
    /// Returns its columns, or `None` when a gateway transaction kept the schema locked for
    /// all of our lock timeout: the job's own statements then wait and retry as they always
    /// do, and a wrong name still fails each of them ("no such column") before it reads or
    /// changes a row.
    pub fn check_table(&mut self) -> anyhow::Result<Option<Vec<String>>> {
        let (table, db) = (self.gateway().table.clone(), self.gateway().location());
        let existing: Vec<String> = match self.exec().columns_of(&table) {
            Err(e) if crate::writelock::is_busy(&e) => {
                tracing::info!(database = %db, "the gateway kept its database locked; the check of its table and columns is left to the statements that follow");
                return Ok(None);
            }
            read => read
                .with_context(|| format!("reading the columns of table `{table}` in {db}"))?
                .into_iter()
                .map(|c| c.name)
                .collect(),
        };
        if existing.is_empty() {
            let gateway = self.gateway();
            let key = match gateway.preset {
                Preset::Custom => "gateway.table",
                _ => "gateway.schema",
            };
            let fix = gateway.fix("table");
            let tables = self
                .exec()
                .tables()
                .with_context(|| format!("listing the tables of {db}"))?;
            anyhow::bail!(
                "{key}: the gateway database {db} has no table `{table}`; its tables are: {}; nothing was read or changed; {fix}",
                if tables.is_empty() {
                    "none (is it empty, or not the gateway's database?)".to_string()
                } else {
                    tables.join(", ")
                },
            );
        }
        Ok(Some(existing))
    }

    /// `t` as the gateway's time column stores it, for `WHERE time >= ?` bounds.
    pub fn time_bound(&self, t: chrono::DateTime<chrono::Utc>) -> Value {
        self.dialect()
            .time_bound(self.gateway().columns.time_format, t)
    }
}
