//! The PostgreSQL-only operations of the integrity and maintenance jobs: amcheck or a full
//! read of each gateway table, `VACUUM (ANALYZE)`, index bloat and `REINDEX INDEX
//! CONCURRENTLY`. None of them takes a lock the proxy's inserts wait on.
//!
//! They run outside a transaction (VACUUM and REINDEX CONCURRENTLY must), each statement under
//! the session's `lock_timeout` and `statement_timeout`.

use anyhow::Context as _;

use super::db::{TableSizes, table_sizes};
use crate::gateway::db::{Exec, ExecExt as _};
use crate::gateway::dialect::Dialect;

/// Which check integrity could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `amcheck`: `bt_index_check` on every index (with `heapallindexed` when `full`), and
    /// `verify_heapam` on every table where the server has it (PostgreSQL 14 and later).
    Amcheck { heap: bool },
    /// No amcheck extension: every row of every table read, TOAST included.
    FullRead,
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::Amcheck { heap: true } => {
                "amcheck (bt_index_check on every index, verify_heapam on every table)"
            }
            Method::Amcheck { heap: false } => {
                "amcheck (bt_index_check on every index; verify_heapam is not on this server)"
            }
            Method::FullRead => {
                "a full read of every row (the amcheck extension is not installed: CREATE EXTENSION amcheck enables the index and heap checks)"
            }
        }
    }
}

/// What an integrity check found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Indexes and tables checked.
    pub checked: Vec<String>,
    /// Each problem: what, where.
    pub problems: Vec<String>,
    pub rows_read: u64,
}

/// Which of amcheck's functions the server has in this database.
pub fn method(exec: &mut dyn Exec) -> anyhow::Result<Method> {
    let (installed, heap) = exec
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck'),
                    EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'verify_heapam')",
            &[],
            |r| Ok((r.get(0)?.as_bool()?, r.get(1)?.as_bool()?)),
        )
        .context("looking for the amcheck extension")?;
    Ok(if installed == Some(true) {
        Method::Amcheck {
            heap: heap == Some(true),
        }
    } else {
        Method::FullRead
    })
}

/// The B-tree indexes of `table`, by their quoted regclass text.
fn btree_indexes(exec: &mut dyn Exec, table: &str) -> anyhow::Result<Vec<String>> {
    exec.query_map(
        "SELECT i.indexrelid::regclass::text FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
          WHERE i.indrelid = to_regclass($1) AND a.amname = 'btree' ORDER BY 1",
        &[Dialect::Postgres.table(table).into()],
        |r| Ok(r.string(0)?.unwrap_or_default()),
    )
    .with_context(|| format!("listing the indexes of `{table}`"))
}

/// Whether `table` exists.
pub fn exists(exec: &mut dyn Exec, table: &str) -> anyhow::Result<bool> {
    Ok(exec
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[Dialect::Postgres.table(table).into()],
            |r| r.get(0)?.as_bool(),
        )?
        .unwrap_or(false))
}

/// Checks `tables` with `method`; `full` adds `heapallindexed` (every heap tuple has its index
/// entry). A check that errors (amcheck raises on corruption) is a finding, not a failed run.
pub fn check(
    exec: &mut dyn Exec,
    tables: &[String],
    method: Method,
    full: bool,
) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    for table in tables {
        let quoted = Dialect::Postgres.table(table);
        match method {
            Method::Amcheck { heap } => {
                for index in btree_indexes(exec, table)? {
                    let sql = format!(
                        "SELECT bt_index_check($1::text::regclass, {})",
                        if full { "true" } else { "false" }
                    );
                    if let Err(e) = exec.execute(&sql, &[index.clone().into()]) {
                        findings.problems.push(format!("index {index}: {e:#}"));
                    }
                    findings.checked.push(format!("index {index}"));
                }
                if heap {
                    let problems = exec.query_map(
                        "SELECT blkno, offnum, attnum, msg FROM verify_heapam($1::text::regclass)",
                        &[quoted.clone().into()],
                        |r| {
                            Ok(format!(
                                "table `{table}` block {} offset {}: {}",
                                r.i64(0)?.unwrap_or(0),
                                r.i64(1)?.unwrap_or(0),
                                r.string(3)?.unwrap_or_default()
                            ))
                        },
                    );
                    match problems {
                        Ok(p) => findings.problems.extend(p),
                        Err(e) => findings.problems.push(format!("table `{table}`: {e:#}")),
                    }
                    findings.checked.push(format!("table `{table}`"));
                }
            }
            Method::FullRead => {
                // Every column of every row turned into text: each TOAST value is fetched and
                // decompressed, each page read.
                let sql = format!("SELECT count(*), sum(length(t::text))::int8 FROM {quoted} t");
                match exec.query_one(&sql, &[], |r| r.i64(0)) {
                    Ok(n) => findings.rows_read += n.unwrap_or(0).max(0) as u64,
                    Err(e) => findings.problems.push(format!("table `{table}`: {e:#}")),
                }
                findings.checked.push(format!("table `{table}`"));
            }
        }
    }
    Ok(findings)
}

/// `VACUUM (ANALYZE)` of `table`: never FULL, which would lock the proxy out of it.
pub fn vacuum_analyze(exec: &mut dyn Exec, table: &str) -> anyhow::Result<()> {
    exec.execute(
        &format!("VACUUM (ANALYZE) {}", Dialect::Postgres.table(table)),
        &[],
    )
    .with_context(|| format!("VACUUM (ANALYZE) of `{table}`"))?;
    Ok(())
}

/// The sizes of `table`, which must exist.
pub fn sizes(exec: &mut dyn Exec, table: &str) -> anyhow::Result<TableSizes> {
    table_sizes(exec, table)?
        .with_context(|| format!("the gateway database has no table `{table}`"))
}

/// An index and how much of it is bloat, estimated from its pages against the tuples it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexBloat {
    pub index: String,
    pub bytes: u64,
    /// Estimated share of the index that is free or dead space.
    pub bloat: f64,
}

/// Each B-tree index of `table` with its estimated bloat: the pages it has against the pages
/// its live tuples would fill at the default fill factor (90%), from the statistics (no index
/// scan). Run after ANALYZE, so that the tuple counts are current.
pub fn index_bloat(exec: &mut dyn Exec, table: &str) -> anyhow::Result<Vec<IndexBloat>> {
    exec.query_map(
        "SELECT ic.oid::regclass::text, pg_relation_size(ic.oid),
                GREATEST(ic.relpages, 1)::float8,
                CEIL(GREATEST(ic.reltuples, 0) * (8 + 4 + COALESCE(
                    (SELECT sum(s.avg_width) FROM pg_attribute a
                       JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = tc.relname AND s.attname = a.attname
                      WHERE a.attrelid = tc.oid AND a.attnum = ANY (i.indkey::int2[])), 8))
                     / (current_setting('block_size')::float8 * 0.9))::float8
           FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_class tc ON tc.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = tc.relnamespace
           JOIN pg_am am ON am.oid = ic.relam
          WHERE i.indrelid = to_regclass($1) AND am.amname = 'btree'
          ORDER BY 1",
        &[Dialect::Postgres.table(table).into()],
        |r| {
            let pages = r.f64(2)?.unwrap_or(1.0);
            let needed = r.f64(3)?.unwrap_or(0.0).max(1.0);
            Ok(IndexBloat {
                index: r.string(0)?.unwrap_or_default(),
                bytes: r.i64(1)?.unwrap_or(0).max(0) as u64,
                bloat: (1.0 - needed / pages).max(0.0),
            })
        },
    )
    .with_context(|| format!("estimating the bloat of the indexes of `{table}`"))
}

/// `REINDEX INDEX CONCURRENTLY`: builds the index anew beside the old one, taking no lock
/// that blocks the proxy's inserts, then swaps them.
pub fn reindex_concurrently(exec: &mut dyn Exec, index: &str) -> anyhow::Result<()> {
    // `index` is regclass text, already quoted where it needs to be.
    exec.execute(&format!("REINDEX INDEX CONCURRENTLY {index}"), &[])
        .with_context(|| format!("REINDEX INDEX CONCURRENTLY {index}"))?;
    Ok(())
}
