//! The `pricing` job: recompute the cost of historical requests from a price table.
//!
//! The job reads candidate rows in short windows (SQLite: by `rowid`; PostgreSQL, which has no
//! stable row number: keyset reads in (time, primary key) order), prices them with a pure
//! [`plan`], and writes the changes in short write transactions whose lock time it measures and
//! keeps far below the gateway's busy timeout. Every update is conditional on the cost it was
//! planned from, so a row changed by someone else meanwhile is left alone.

pub mod prices;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;

use crate::checks::Checks;
use crate::checks::values;
use crate::gateway::dialect::Keyset;
use crate::gateway::{
    Access, CostColumns, Dialect, Exec, ExecExt, Gateway, Preset, RowRef, Tuning, Value,
};
use crate::jobs::contract::{Context, Report};
// Label values in figure names are quoted as in the metrics file.
use crate::gateway::db::Pacing;
use crate::metrics::escape_label as label;
use crate::units::{usd, usd_change};
use crate::writelock::HOLD_LIMIT;
use prices::{PriceTable, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    Missing,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    prices: Option<PathBuf>,
    watch: Option<bool>,
    recompute: Option<Recompute>,
    since: Option<values::Duration>,
    aliases: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub prices: PathBuf,
    pub watch: bool,
    pub recompute: Recompute,
    pub since: Option<Duration>,
    pub aliases: BTreeMap<String, String>,
}

impl crate::jobs::contract::Contract for Spec {
    /// The price file, with `watch: true`: a change reprices at once.
    fn watches(&self) -> Vec<PathBuf> {
        if self.watch {
            vec![self.prices.clone()]
        } else {
            Vec::new()
        }
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let Some(prices) = raw.prices else {
        checks.error(
            &format!("{path}.prices"),
            "missing key `prices`; accepted: the path of LiteLLM's model_prices_and_context_window.json or a YAML price table",
        );
        return None;
    };
    Some(Spec {
        prices: checks.path(&prices),
        watch: raw.watch.unwrap_or(false),
        recompute: raw.recompute.unwrap_or(Recompute::Missing),
        since: raw.since.map(|d| d.0),
        aliases: raw.aliases.unwrap_or_default(),
    })
}

/// Rowids read per statement at most; the time limit usually ends a read first. Every read is
/// followed by the room the pacer owes the gateway, so few long reads cost less than many
/// short ones.
const READ_WINDOW: i64 = 5_000;
/// How long one read may hold its shared lock before it stops (the rest of its window is read
/// next), as the archive job's reads do: a gateway commit waits for it. Within
/// [`HOLD_LIMIT`], with a row's read and the statement's end to spare.
const READ_HOLD: Duration = HOLD_LIMIT.saturating_sub(Duration::from_millis(1));
/// How long one keyset read (PostgreSQL) may go on: it holds no lock the gateway's inserts
/// wait on (MVCC), only vacuum's horizon, so the bound is about memory and the window's
/// progress, not the gateway's writers.
const KEYSET_READ_BUDGET: Duration = Duration::from_secs(1);
/// Rows one PostgreSQL update statement changes at most (by a one-column key): a round trip
/// per 100 rows, as the archive job purges.
const PG_ROWS_PER_STATEMENT: usize = 100;
/// Windows read ahead of the parser thread: enough to keep it busy through a pause.
const READ_AHEAD: usize = 4;
/// Our connection's page cache (KiB): holds the pages a batch changes until its COMMIT.
const CACHE_KIB: i64 = 256 * 1024;
/// The write lock we promise never to exceed by design (far below Apantli's 5 s).
pub const MAX_LOCK: Duration = Duration::from_millis(50);
const FIRST_BATCH: usize = 200;
const MIN_BATCH: usize = 10;
const MAX_BATCH: usize = 20_000;
/// Changed rows listed one by one in a dry run; the rest are counted.
const LISTED_CHANGES: usize = 200;
/// Two costs closer than this (USD) are the same price: recomputing `all` does not rewrite
/// rows for float noise.
const SAME_COST_USD: f64 = 1e-12;

/// A cost as the gateway stores it: one column, or BobaMixer's input and output columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stored {
    Single(Option<f64>),
    Split {
        input: Option<f64>,
        output: Option<f64>,
    },
}

impl Stored {
    pub fn total(&self) -> f64 {
        match *self {
            Stored::Single(c) => c.unwrap_or(0.0),
            Stored::Split { input, output } => input.unwrap_or(0.0) + output.unwrap_or(0.0),
        }
    }

    fn same_as(&self, other: &Stored) -> bool {
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= SAME_COST_USD,
            (None, None) => true,
            _ => false,
        };
        match (*self, *other) {
            (Stored::Single(a), Stored::Single(b)) => close(a, b),
            (
                Stored::Split {
                    input: a,
                    output: b,
                },
                Stored::Split {
                    input: c,
                    output: d,
                },
            ) => close(a, c) && close(b, d),
            _ => false,
        }
    }
}

/// Which row a change is for, whatever the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum RowKey {
    /// SQLite's `rowid`.
    Rowid(i64),
    /// The values of the table's primary key, in key order (LiteLLM: its `request_id`):
    /// PostgreSQL has no stable row number (`ctid` moves on update and vacuum).
    Key(Vec<Value>),
}

impl RowKey {
    /// The key as the update's first parameters.
    fn params(&self) -> Vec<Value> {
        match self {
            RowKey::Rowid(n) => vec![Value::Integer(*n)],
            RowKey::Key(values) => values.clone(),
        }
    }
}

impl std::fmt::Display for RowKey {
    /// `12` for a rowid; a key's values as written, joined by `, `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowKey::Rowid(n) => write!(f, "{n}"),
            RowKey::Key(values) => {
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match v {
                        Value::Text(t) => f.write_str(t)?,
                        Value::Integer(n) => write!(f, "{n}")?,
                        other => write!(f, "{other:?}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// One row to price: the name to look its price up by, its token counts and its cost now.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: RowKey,
    pub model: String,
    /// The gateway's model column when it differs from `model` (Apantli: the client's name,
    /// `claude-haiku-3.5`, while `model` is the provider's): `aliases` match it too.
    pub column: Option<String>,
    pub usage: Usage,
    pub old: Stored,
}

/// One row's planned update.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: RowKey,
    pub old: Stored,
    pub new: Stored,
}

/// The rows and dollars of one model in a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelTotals {
    pub rows: u64,
    pub old_usd: f64,
    pub new_usd: f64,
}

/// What a run changes: the updates, and the models it could not price.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Changed rows by the model name they were looked up by.
    pub by_model: BTreeMap<String, ModelTotals>,
    /// Models without a per-token price, and how many candidate rows each has: they keep
    /// their cost.
    pub unpriced: BTreeMap<String, u64>,
    /// Candidates whose recomputed cost equals their cost.
    pub unchanged: u64,
    /// Candidates matched by each `aliases` key (one of the row's names, as given or without
    /// provider prefixes, is the key); a key missing here matched no row.
    pub alias_rows: BTreeMap<String, u64>,
}

impl Plan {
    /// Adds `other` (a later window's plan) to this one.
    pub fn absorb(&mut self, other: Plan) {
        self.changes.extend(other.changes);
        for (model, t) in other.by_model {
            let mine = self.by_model.entry(model).or_default();
            mine.rows += t.rows;
            mine.old_usd += t.old_usd;
            mine.new_usd += t.new_usd;
        }
        for (model, n) in other.unpriced {
            *self.unpriced.entry(model).or_default() += n;
        }
        self.unchanged += other.unchanged;
        for (alias, n) in other.alias_rows {
            *self.alias_rows.entry(alias).or_default() += n;
        }
    }
}

/// BobaMixer writes each cost rounded to 6 decimals; so do we, so that recomputed rows look
/// like the gateway's own.
fn round6(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

/// Prices `candidates`: a pure function of the rows and the table.
///
/// A model without a per-token price is counted in `unpriced` and its rows are left out of
/// the changes: its cost is never set to 0. Split costs are rounded to 6 decimals each, as
/// BobaMixer stores them; a single cost is stored as computed, as LiteLLM logs it.
pub fn plan(
    candidates: &[Candidate],
    table: &PriceTable,
    aliases: &BTreeMap<String, String>,
) -> Plan {
    let mut plan = Plan::default();
    for c in candidates {
        let names: &[&str] = match &c.column {
            Some(column) => &[&c.model, column],
            None => &[&c.model],
        };
        for alias in prices::aliases_matching(names, aliases) {
            *plan.alias_rows.entry(alias.to_owned()).or_default() += 1;
        }
        let Some((_, price)) = table.lookup_row(names, aliases) else {
            *plan.unpriced.entry(c.model.clone()).or_default() += 1;
            continue;
        };
        let cost = prices::cost(price, &c.usage);
        let new = match c.old {
            Stored::Single(_) => Stored::Single(Some(cost.total)),
            Stored::Split { .. } => Stored::Split {
                input: Some(round6(cost.input_usd)),
                output: Some(round6(cost.output_usd)),
            },
        };
        if new.same_as(&c.old) {
            plan.unchanged += 1;
            continue;
        }
        let totals = plan.by_model.entry(c.model.clone()).or_default();
        totals.rows += 1;
        totals.old_usd += c.old.total();
        totals.new_usd += new.total();
        plan.changes.push(Change {
            key: c.key.clone(),
            old: c.old,
            new,
        });
    }
    plan
}

/// How the job walks the request table ([`Dialect::keyset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Walk {
    /// SQLite: rowid windows.
    Rowid,
    /// PostgreSQL: keyset reads in (time, `key`) order, `key` the primary key's columns, which
    /// LiteLLM's `("startTime", request_id)` index serves.
    Keyset { key: Vec<String> },
}

/// Where a run has got to in the table.
#[derive(Debug, Clone, PartialEq)]
enum Cursor {
    /// Rowids in `(after, hi]` are left to read.
    Rowid { after: i64, hi: i64 },
    /// Rows after `after` (time and key values; `None`: from the start) up to `hi` are left to
    /// read, unless `done`.
    Keyset {
        after: Option<Vec<Value>>,
        hi: Vec<Value>,
        done: bool,
    },
}

impl Cursor {
    fn done(&self) -> bool {
        match self {
            Cursor::Rowid { after, hi } => after >= hi,
            Cursor::Keyset { done, .. } => *done,
        }
    }
}

/// How the job reads and writes one gateway's rows.
struct Rows<'a> {
    gateway: &'a Gateway,
    walk: Walk,
    /// The row's facts after its position columns: model, tokens, cost(s), Apantli's payloads.
    facts: String,
    /// The conditions of a row to price (not failed; with `recompute: missing`, no cost yet).
    filters: Vec<String>,
    /// SQLite's read of a rowid window, the filters in it.
    select: String,
    update: String,
    /// Bound after the position's parameters.
    since: Option<Value>,
}

impl<'a> Rows<'a> {
    fn new(
        gateway: &'a Gateway,
        d: Dialect,
        walk: Walk,
        spec: &Spec,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Rows<'a> {
        let c = &gateway.columns;
        let q = |name: &str| d.ident(name);
        let mut columns = vec![q(&c.model), q(&c.input_tokens), q(&c.output_tokens)];
        let missing = match &c.cost {
            CostColumns::Single(cost) => {
                columns.push(q(cost));
                format!("({0} IS NULL OR {0} = 0)", q(cost))
            }
            CostColumns::Split { input, output } => {
                columns.push(q(input));
                columns.push(q(output));
                format!(
                    "(COALESCE({}, 0) = 0 AND COALESCE({}, 0) = 0)",
                    q(input),
                    q(output)
                )
            }
        };
        if gateway.preset == Preset::Apantli {
            columns.push(q("request_data"));
            columns.push(q("response_data"));
        }
        let mut filters = Vec::new();
        // A failed request cost nothing; the gateways log 0 for it, and so it stays. LiteLLM
        // says so in `status` (anything but `success`), the others by an error column set.
        match (gateway.preset, gateway.failed_sql(d)) {
            (Preset::Litellm, Some(failed)) => filters.push(format!("NOT ({failed})")),
            _ => {
                if let Some(error) = &c.error {
                    filters.push(format!("{} IS NULL", q(error)));
                }
            }
        }
        if spec.recompute == Recompute::Missing {
            filters.push(missing);
        }
        // A `since` reaching before the calendar's start is no bound at all.
        let since = spec
            .since
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| now.checked_sub_signed(d))
            .map(|t| d.time_bound(c.time_format, t));
        let table = d.table(&gateway.table);
        let facts = columns.join(", ");
        let mut windowed = vec![
            format!("rowid > {}", d.param(1)),
            format!("rowid <= {}", d.param(2)),
        ];
        windowed.extend(filters.iter().cloned());
        if since.is_some() {
            windowed.push(format!("{} >= {}", q(&c.time), d.param(3)));
        }
        let select = format!(
            "SELECT rowid, {facts} FROM {table} WHERE {} ORDER BY rowid",
            windowed.join(" AND ")
        );
        // The key's parameters come first, then the new cost(s), then the old.
        let keys: Vec<String> = match &walk {
            Walk::Rowid => vec!["rowid".to_string()],
            Walk::Keyset { key } => key.iter().map(|k| q(k)).collect(),
        };
        let p = |n: usize| d.param(keys.len() + n);
        // PostgreSQL infers a parameter's type from the column: a cost column of `numeric` or
        // `real` takes our double as well.
        let num = |param: String| match d {
            Dialect::Sqlite => param,
            Dialect::Postgres => format!("CAST({param} AS double precision)"),
        };
        let by_key = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} = {}", d.param(i + 1)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let update = match &c.cost {
            CostColumns::Single(cost) => format!(
                "UPDATE {table} SET {} = {} WHERE {by_key} AND {}",
                q(cost),
                num(p(1)),
                d.same(&q(cost), &num(p(2)))
            ),
            CostColumns::Split { input, output } => format!(
                "UPDATE {table} SET {} = {}, {} = {} WHERE {by_key} AND {} AND {}",
                q(input),
                num(p(1)),
                q(output),
                num(p(2)),
                d.same(&q(input), &num(p(3))),
                d.same(&q(output), &num(p(4)))
            ),
        };
        Rows {
            gateway,
            walk,
            facts,
            filters,
            select,
            update,
            since,
        }
    }

    /// The columns of the walk's order, quoted: time and key, or the rowid.
    fn order_columns(&self, d: Dialect) -> Vec<String> {
        match &self.walk {
            Walk::Rowid => vec!["rowid".to_string()],
            Walk::Keyset { key } => std::iter::once(&self.gateway.columns.time)
                .chain(key)
                .map(|c| d.ident(c))
                .collect(),
        }
    }

    /// The walk's order, as a list.
    fn order(&self, d: Dialect) -> String {
        self.order_columns(d).join(", ")
    }

    /// Where the run starts, and the last row it looks at: rows written after this are the
    /// gateway's, priced by it. `None` for an empty table.
    fn start(&self, db: &mut dyn Exec) -> anyhow::Result<Option<Cursor>> {
        let d = db.dialect();
        let table = d.table(&self.gateway.table);
        match &self.walk {
            Walk::Rowid => {
                let sql = format!("SELECT min(rowid), max(rowid) FROM {table}");
                let (lo, hi) = db
                    .query_one(&sql, &[], |r| Ok((r.i64(0)?, r.i64(1)?)))
                    .with_context(|| self.reading())?;
                Ok(lo.zip(hi).map(|(lo, hi)| Cursor::Rowid {
                    after: lo.saturating_sub(1),
                    hi,
                }))
            }
            Walk::Keyset { .. } => {
                // The last row in (time, key) order: a backward step on the time index.
                let descending = self
                    .order_columns(d)
                    .iter()
                    .map(|c| format!("{c} DESC"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT {} FROM {table} ORDER BY {descending} LIMIT 1",
                    self.order(d)
                );
                let hi = db
                    .query_opt(&sql, &[], |r| r.values())
                    .with_context(|| self.reading())?;
                Ok(hi.map(|hi| Cursor::Keyset {
                    after: None,
                    hi,
                    done: false,
                }))
            }
        }
    }

    fn reading(&self) -> String {
        format!(
            "reading table `{}` of the gateway database {} (check gateway.schema and gateway.columns)",
            self.gateway.table,
            self.gateway.location()
        )
    }

    /// Reads the next window of candidates after `cursor`: one short statement. Returns them
    /// with where the next read goes on from.
    fn read_next(
        &self,
        db: &mut dyn Exec,
        cursor: &Cursor,
    ) -> anyhow::Result<(Vec<RawRow>, Cursor)> {
        match cursor {
            Cursor::Rowid { after, hi } => {
                let upto = after.saturating_add(READ_WINDOW).min(*hi);
                // Each read stops at READ_HOLD, so no writer waits long on its shared lock.
                let (raw, through) = self.read_window(db, *after, upto, READ_HOLD)?;
                Ok((
                    raw,
                    Cursor::Rowid {
                        after: through,
                        hi: *hi,
                    },
                ))
            }
            Cursor::Keyset { after, hi, .. } => self.read_keyset(
                db,
                after.as_deref(),
                hi,
                READ_WINDOW as usize,
                KEYSET_READ_BUDGET,
            ),
        }
    }

    /// Reads the candidates with rowid in `(after, upto]`, in rowid order, for at most `budget`
    /// (at least one row): one short statement, whose values are copied out so that JSON is
    /// parsed after the shared lock is gone. Returns them with the rowid read up to.
    fn read_window(
        &self,
        db: &mut dyn Exec,
        after: i64,
        upto: i64,
        budget: Duration,
    ) -> anyhow::Result<(Vec<RawRow>, i64)> {
        let began = Instant::now();
        let mut params = vec![Value::Integer(after), Value::Integer(upto)];
        params.extend(self.since.clone());
        let mut read = Vec::new();
        let mut through = upto;
        db.query(&self.select, &params, &mut |r| {
            let rowid = r.i64(0)?.unwrap_or_default();
            read.push(self.raw_row(r, RowKey::Rowid(rowid), 1)?);
            if began.elapsed() >= budget {
                through = rowid;
                return Ok(false);
            }
            Ok(true)
        })
        .with_context(|| self.reading())?;
        Ok((read, through))
    }

    /// Reads up to `limit` rows after `after` and up to `hi` in (time, key) order, for at most
    /// `budget` (at least one row), and returns the candidates among them with where the next
    /// read goes on from. Every row in the range is looked at and the filters are a column,
    /// so that one statement's work is bounded by `limit` however few rows need a price (a
    /// filter in the WHERE clause could make it walk the whole table).
    fn read_keyset(
        &self,
        db: &mut dyn Exec,
        after: Option<&[Value]>,
        hi: &[Value],
        limit: usize,
        budget: Duration,
    ) -> anyhow::Result<(Vec<RawRow>, Cursor)> {
        let began = Instant::now();
        let d = db.dialect();
        let order = self.order(d);
        let wanted = if self.filters.is_empty() {
            "TRUE".to_string()
        } else {
            self.filters.join(" AND ")
        };
        let mut params: Vec<Value> = Vec::new();
        let next = |params: &mut Vec<Value>, values: &[Value]| {
            let first = params.len() + 1;
            params.extend(values.iter().cloned());
            d.params(first, values.len())
        };
        let mut conditions = vec![format!("({order}) <= ({})", next(&mut params, hi))];
        if let Some(after) = after {
            conditions.push(format!("({order}) > ({})", next(&mut params, after)));
        }
        if let Some(since) = &self.since {
            conditions.push(format!(
                "{} >= {}",
                d.ident(&self.gateway.columns.time),
                next(&mut params, std::slice::from_ref(since))
            ));
        }
        let limit_param = next(&mut params, &[Value::Integer(limit as i64)]);
        let sql = format!(
            "SELECT ({wanted}) AS wanted, {order}, {} FROM {} WHERE {} ORDER BY {order} LIMIT {limit_param}",
            self.facts,
            d.table(&self.gateway.table),
            conditions.join(" AND ")
        );
        let width = hi.len();
        let mut read = Vec::new();
        let (mut seen, mut stopped) = (0usize, false);
        let mut last: Option<Vec<Value>> = None;
        db.query(&sql, &params, &mut |r| {
            seen += 1;
            let position: Vec<Value> = (1..=width)
                .map(|i| r.get(i))
                .collect::<anyhow::Result<_>>()?;
            if r.get(0)?.as_bool()?.unwrap_or(false) {
                let key = RowKey::Key(position[1..].to_vec());
                read.push(self.raw_row(r, key, 1 + width)?);
            }
            last = Some(position);
            if began.elapsed() >= budget {
                stopped = true;
                return Ok(false);
            }
            Ok(true)
        })
        .with_context(|| self.reading())?;
        let done = !stopped && seen < limit;
        Ok((
            read,
            Cursor::Keyset {
                after: last.or_else(|| after.map(<[Value]>::to_vec)),
                hi: hi.to_vec(),
                done,
            },
        ))
    }

    /// The candidate in `r`, whose facts start at column `first`.
    fn raw_row(&self, r: &dyn RowRef, key: RowKey, first: usize) -> anyhow::Result<RawRow> {
        let split = matches!(self.gateway.columns.cost, CostColumns::Split { .. });
        let payloads = self.gateway.preset == Preset::Apantli;
        let tokens =
            |i: usize| -> anyhow::Result<u64> { Ok(r.i64(first + i)?.unwrap_or(0).max(0) as u64) };
        let (old, next) = if split {
            (
                Stored::Split {
                    input: r.f64(first + 3)?,
                    output: r.f64(first + 4)?,
                },
                first + 5,
            )
        } else {
            (Stored::Single(r.f64(first + 3)?), first + 4)
        };
        Ok(RawRow {
            key,
            model: r.string(first)?.unwrap_or_default(),
            input_tokens: tokens(1)?,
            output_tokens: tokens(2)?,
            old,
            request_data: if payloads { r.string(next)? } else { None },
            response_data: if payloads { r.string(next + 1)? } else { None },
        })
    }

    /// Updates one batch inside the write transaction `tx`; returns how many rows changed.
    fn update_batch(&self, tx: &mut dyn Exec, batch: &[Change]) -> anyhow::Result<usize> {
        let writing = || {
            format!(
                "updating costs in table `{}` of {}",
                self.gateway.table,
                self.gateway.location()
            )
        };
        let mut changed = 0;
        let mut rest = batch;
        // PostgreSQL: many rows per statement where the key is one column, so that a batch
        // costs a few round trips instead of one per row.
        if let Walk::Keyset { key } = &self.walk
            && let [key] = key.as_slice()
        {
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(rest.len().min(PG_ROWS_PER_STATEMENT));
                let Some((sql, params)) = self.update_many(key, chunk) else {
                    break;
                };
                changed += tx.execute(&sql, &params).with_context(writing)? as usize;
                rest = after;
            }
        }
        for change in rest {
            let mut params = change.key.params();
            params.extend(change.costs());
            changed += tx.execute(&self.update, &params).with_context(writing)? as usize;
        }
        Ok(changed)
    }

    /// One statement updating every row of `chunk` by its one-column `key`, each only while
    /// its cost is still the one read (null-safe), or `None` for a key value that is neither
    /// an integer nor text (those rows go one by one).
    fn update_many(&self, key: &str, chunk: &[Change]) -> Option<(String, Vec<Value>)> {
        let d = Dialect::Postgres;
        let key_type = match &chunk.first()?.key {
            RowKey::Key(v) => match v.as_slice() {
                [Value::Integer(_)] => "bigint",
                [Value::Text(_)] => "text",
                _ => return None,
            },
            RowKey::Rowid(_) => return None,
        };
        let (set, same, width) = match &self.gateway.columns.cost {
            CostColumns::Single(cost) => (
                format!("{} = v.new", d.ident(cost)),
                d.same(&format!("t.{}", d.ident(cost)), "v.old"),
                3,
            ),
            CostColumns::Split { input, output } => (
                format!(
                    "{} = v.new_in, {} = v.new_out",
                    d.ident(input),
                    d.ident(output)
                ),
                format!(
                    "{} AND {}",
                    d.same(&format!("t.{}", d.ident(input)), "v.old_in"),
                    d.same(&format!("t.{}", d.ident(output)), "v.old_out")
                ),
                5,
            ),
        };
        let names = if width == 3 {
            "k, new, old"
        } else {
            "k, new_in, new_out, old_in, old_out"
        };
        let mut params = Vec::with_capacity(chunk.len() * width);
        let mut rows = Vec::with_capacity(chunk.len());
        for change in chunk {
            let RowKey::Key(k) = &change.key else {
                return None;
            };
            let first = params.len() + 1;
            params.extend(k.iter().cloned());
            params.extend(change.costs());
            let costs: Vec<String> = (1..width)
                .map(|i| format!("CAST({} AS double precision)", d.param(first + i)))
                .collect();
            rows.push(format!(
                "(CAST({} AS {key_type}), {})",
                d.param(first),
                costs.join(", ")
            ));
        }
        let sql = format!(
            "UPDATE {} AS t SET {set} FROM (VALUES {}) AS v({names}) WHERE t.{} = v.k AND {same}",
            d.table(&self.gateway.table),
            rows.join(", "),
            d.ident(key)
        );
        Some((sql, params))
    }
}

impl Change {
    /// The new cost(s), then the old, as the updates bind them after the key.
    fn costs(&self) -> Vec<Value> {
        match (self.new, self.old) {
            (Stored::Single(new), Stored::Single(old)) => vec![new.into(), old.into()],
            (
                Stored::Split { input, output },
                Stored::Split {
                    input: old_in,
                    output: old_out,
                },
            ) => vec![input.into(), output.into(), old_in.into(), old_out.into()],
            _ => unreachable!("plan keeps the stored shape of each row"),
        }
    }
}

/// The primary key's columns of the gateway's table, in key order: the rows' keys on
/// PostgreSQL. A table without one is refused, as by the archive job.
fn key_columns(db: &mut dyn Exec, gateway: &Gateway) -> anyhow::Result<Vec<String>> {
    let mut key: Vec<(u32, String)> = db
        .columns_of(&gateway.table)
        .with_context(|| format!("reading the columns of table `{}`", gateway.table))?
        .into_iter()
        .filter(|c| c.key > 0)
        .map(|c| (c.key, c.name))
        .collect();
    key.sort();
    anyhow::ensure!(
        !key.is_empty(),
        "table `{}` in {} has no primary key; the pricing job needs one to update exactly the rows it priced (add one, or leave this gateway's costs to it); nothing was changed",
        gateway.table,
        gateway.location()
    );
    Ok(key.into_iter().map(|(_, name)| name).collect())
}

/// A candidate row as read, before its JSON is parsed.
struct RawRow {
    key: RowKey,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    old: Stored,
    request_data: Option<String>,
    response_data: Option<String>,
}

impl RawRow {
    /// Apantli rows are keyed by `request_data`'s model and carry cache tokens in
    /// `response_data`; other gateways give the model and two token counts.
    fn candidate(self, preset: Preset) -> Candidate {
        let (model, column, usage) = if preset == Preset::Apantli {
            let key = apantli_key(&self.model, self.request_data.as_deref());
            let column = (key != self.model).then_some(self.model);
            (
                key,
                column,
                apantli_usage(
                    self.input_tokens,
                    self.output_tokens,
                    self.response_data.as_deref(),
                ),
            )
        } else {
            (
                self.model,
                None,
                Usage {
                    input_tokens: self.input_tokens,
                    output_tokens: self.output_tokens,
                    ..Usage::default()
                },
            )
        };
        Candidate {
            key: self.key,
            model,
            column,
            usage,
            old: self.old,
        }
    }
}

/// The one field of a request the price lookup needs. serde skips the others (the messages,
/// most of the bytes) without building them.
#[derive(Deserialize)]
struct RequestModel {
    model: Option<serde_json::Value>,
}

/// The one field of a response the token counts need.
#[derive(Deserialize)]
struct ResponseUsage {
    usage: Option<serde_json::Value>,
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// [`prices::apantli_price_key`], several times faster on large requests; anything unusual
/// (not an object, a repeated key) goes to it unchanged.
fn apantli_key(model_column: &str, request_data: Option<&str>) -> String {
    match request_data
        .filter(|t| is_json_object(t))
        .map(serde_json::from_str::<RequestModel>)
    {
        Some(Ok(RequestModel {
            model: Some(serde_json::Value::String(m)),
        })) if !m.trim().is_empty() => m.trim().to_owned(),
        Some(Ok(_)) => model_column.to_owned(),
        _ => prices::apantli_price_key(model_column, request_data),
    }
}

/// [`prices::usage_from_apantli`], reading only the response's `usage` object; anything
/// unusual goes to it unchanged.
fn apantli_usage(prompt_tokens: u64, completion_tokens: u64, response_data: Option<&str>) -> Usage {
    match response_data
        .filter(|t| is_json_object(t))
        .map(serde_json::from_str::<ResponseUsage>)
    {
        Some(Ok(ResponseUsage { usage: Some(usage) })) => {
            let small = serde_json::json!({ "usage": usage }).to_string();
            prices::usage_from_apantli(prompt_tokens, completion_tokens, Some(&small))
        }
        Some(Ok(ResponseUsage { usage: None })) => {
            prices::usage_from_apantli(prompt_tokens, completion_tokens, None)
        }
        _ => prices::usage_from_apantli(prompt_tokens, completion_tokens, response_data),
    }
}

/// What executing a plan measured, phase by phase, so that a slow run says where its time went.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    rows_written: u64,
    elapsed: Duration,
    longest_read: Duration,
    /// Reading candidate rows (each read holds a shared lock).
    reading: Duration,
    /// Parsing JSON and pricing, on the parser thread, alongside the reads and writes.
    parsing: Duration,
    /// Waiting for the parser with nothing else to do.
    waiting_for_parser: Duration,
    /// Running the UPDATE statements, inside the write lock (the rest of it is the commit).
    updating: Duration,
    /// Pauses left to the gateway before our batches, and waits for its lock.
    pausing: Duration,
}

/// How long a write batch may hold the lock, and the room the gateway gets between batches on
/// top of [`Pacer`]'s, for the way a gateway's writers meet our lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aim {
    /// The write lock a batch aims at; batches grow below it and shrink above it.
    pub target_lock: Duration,
    /// The least time from the end of one batch to the start of the next ...
    pub min_spacing: Duration,
    /// ... and at least this many times the lock the batch held.
    pub spacing_per_lock: u32,
}

impl Aim {
    pub fn for_gateway(preset: Preset) -> Aim {
        match preset {
            // Apantli's writers wait up to 5 s for our lock; the pacer leaves them room after
            // each batch (src/writelock.rs: until every writer that met it has tried twice),
            // so a writer that met a batch of 30 ms gets in by its busy handler's try at 53 ms.
            // A rollback-journal commit has fixed costs (journal write, fsyncs, journal
            // delete), so the target is well above them and below MAX_LOCK. (The archive job
            // keeps its locks under writelock::HOLD_LIMIT, for tries before 50 ms; this job's
            // batches are not cut short inside a transaction.)
            Preset::Apantli => Aim {
                target_lock: Duration::from_millis(30),
                min_spacing: Duration::ZERO,
                spacing_per_lock: 0,
            },
            // BobaMixer's inserts never wait: one that meets our lock is lost. Nothing but
            // not writing makes that impossible, so the share of time we hold the lock is
            // kept below 1 %: an insert meets it with at most that chance while the job runs.
            // The pacer then starts each batch in a gap between the gateway's commits. A
            // custom gateway's writers are unknown, so they get the same care.
            Preset::Bobamixer | Preset::Custom => Aim {
                target_lock: Duration::from_millis(2),
                min_spacing: Duration::from_millis(250),
                spacing_per_lock: 100,
            },
            // LiteLLM's proxy only inserts spend-log rows: our update holds row locks on old
            // rows that no insert of its waits for (PostgreSQL's readers and writers do not
            // block each other), and any statement of ours that meets a lock gives up after
            // `lock_timeout`. What is left to spare is the server's time: batches of about
            // 20 ms, each followed by a pause as long, so the proxy gets at least half of it.
            Preset::Litellm => Aim {
                target_lock: Duration::from_millis(20),
                min_spacing: Duration::ZERO,
                spacing_per_lock: 1,
            },
        }
    }

    /// The least time from the end of a batch that held `lock` to the start of the next.
    pub fn spacing(&self, lock: Duration) -> Duration {
        (lock * self.spacing_per_lock).max(self.min_spacing)
    }
}

/// Sizes write batches so the lock stays near the aim's target, and keeps the aim's spacing.
struct Batcher {
    aim: Aim,
    size: usize,
    /// When our last batch ended and how long it held the lock.
    last: Option<(Instant, Duration)>,
}

impl Batcher {
    fn new(aim: Aim) -> Batcher {
        Batcher {
            aim,
            size: FIRST_BATCH,
            last: None,
        }
    }

    /// Learns from a batch of `rows` that held the lock for `lock`.
    fn learn(&mut self, rows: usize, lock: Duration) {
        self.last = Some((Instant::now(), lock));
        let target = self.aim.target_lock;
        // A short final batch says nothing about the size; inside the band the size stays,
        // so that the noise of a loaded machine does not make it swing.
        let over = lock > target * 3 / 2;
        let under = lock < target * 3 / 4 && rows >= self.size;
        if !over && !under {
            return;
        }
        // Toward the target in proportion (a lock grows about linearly with the rows on a
        // fast filesystem), at most halving or doubling per batch: a commit's fixed cost makes
        // it far from proportional on a slow one.
        let ratio = (target.as_secs_f64() / lock.as_secs_f64().max(1e-6)).clamp(0.5, 2.0);
        self.size = ((self.size as f64 * ratio) as usize).clamp(MIN_BATCH, MAX_BATCH);
    }

    /// Sleeps what is left of the aim's spacing since the last batch.
    fn keep_spacing(&self) {
        if let Some((ended, lock)) = self.last {
            std::thread::sleep(self.aim.spacing(lock).saturating_sub(ended.elapsed()));
        }
    }
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let table = PriceTable::load(&spec.prices).with_context(|| {
        "loading the price table (nothing was changed; fix the file or `prices`)".to_string()
    })?;
    let gateway = ctx.gateway;
    let mut db = gateway.open(Access::unless_dry_run(ctx.dry_run))?;
    db.check_columns()?;
    let d = db.dialect();
    let walk = match d.keyset() {
        Keyset::Rowid => Walk::Rowid,
        Keyset::TimeThenKey => Walk::Keyset {
            key: db.read(|c| key_columns(c, gateway))?.0,
        },
    };
    let rows = Rows::new(gateway, d, walk, spec, ctx.now);
    // A commit that risks only its batch on power loss where the engine allows it (the next
    // run redoes it), and room in our connection's cache for a batch's pages until COMMIT
    // (gateway::sqlite explains both for SQLite).
    db.tune(Tuning::Update {
        cache_kib: CACHE_KIB,
    })?;

    let started = Instant::now();
    let mut total = Plan::default();
    let mut measured = Measured::default();
    let mut batcher = Batcher::new(Aim::for_gateway(gateway.preset));
    let (start, _) = db.read(|conn| rows.start(conn))?;
    if let Some(mut cursor) = start {
        let (preset, table, aliases) = (gateway.preset, &table, &spec.aliases);
        std::thread::scope(|s| -> anyhow::Result<()> {
            // Reads stay on this thread, between our write transactions; JSON and prices go
            // to a second thread, so they overlap the writes and the pauses.
            let (raw_tx, raw_rx) = mpsc::sync_channel::<Vec<RawRow>>(READ_AHEAD);
            let (plan_tx, plan_rx) = mpsc::channel::<(Plan, Duration)>();
            s.spawn(move || {
                for raw in raw_rx {
                    let began = Instant::now();
                    let candidates: Vec<Candidate> =
                        raw.into_iter().map(|r| r.candidate(preset)).collect();
                    let window = plan(&candidates, table, aliases);
                    if plan_tx.send((window, began.elapsed())).is_err() {
                        break;
                    }
                }
            });
            let stopped = || anyhow::anyhow!("the pricing job's parser thread stopped");
            let mut in_flight = 0;
            let mut pending: Vec<Change> = Vec::new();
            loop {
                // Read ahead while the parser has room: short reads, after the room the pacer
                // leaves the gateway (JSON and prices are worked out meanwhile on the other
                // thread).
                while in_flight < READ_AHEAD && !cursor.done() {
                    ctx.checkpoint()?;
                    // Through the pacer: the gateway gets its room after our last write
                    // first, and each read stops at its time budget, so no writer waits long
                    // on it.
                    let ((raw, next), took) = db.read(|conn| rows.read_next(conn, &cursor))?;
                    measured.reading += took;
                    measured.longest_read = measured.longest_read.max(took);
                    cursor = next;
                    raw_tx.send(raw).map_err(|_| stopped())?;
                    in_flight += 1;
                }
                if in_flight > 0 && (ctx.dry_run || pending.len() < batcher.size) {
                    let began = Instant::now();
                    let (window, parsing) = plan_rx.recv().map_err(|_| stopped())?;
                    measured.waiting_for_parser += began.elapsed();
                    measured.parsing += parsing;
                    in_flight -= 1;
                    let mut window = window;
                    if !ctx.dry_run {
                        // Written below, or listed: only a dry run keeps each change.
                        pending.append(&mut window.changes);
                    }
                    total.absorb(window);
                    continue;
                }
                // Here everything read is parsed, or a full batch waits.
                if pending.is_empty() {
                    return Ok(());
                }
                let n = batcher.size.min(pending.len());
                let began = Instant::now();
                batcher.keep_spacing();
                // A gateway that keeps the lock past our busy timeout is waited for by the
                // pacer, within the job's budget (docs/design.md, "A busy gateway").
                let updating = &mut measured.updating;
                let (changed, lock) = db.write(|tx| {
                    let began = Instant::now();
                    let changed = rows.update_batch(tx, &pending[..n]);
                    *updating += began.elapsed();
                    changed
                })?;
                measured.pausing += began.elapsed().saturating_sub(lock);
                pending.drain(..n);
                measured.rows_written += changed as u64;
                if lock > MAX_LOCK {
                    tracing::warn!(
                        job = ctx.job,
                        lock_ms = lock.as_secs_f64() * 1e3,
                        rows = n,
                        "a pricing batch held the write lock longer than intended; batches shrink"
                    );
                }
                batcher.learn(n, lock);
                ctx.checkpoint()?;
            }
        })?;
    }
    measured.elapsed = started.elapsed();
    Ok(report(
        spec,
        &table,
        &total,
        &measured,
        db.pacing(),
        ctx.dry_run,
    ))
}

fn report(
    spec: &Spec,
    table: &PriceTable,
    plan: &Plan,
    measured: &Measured,
    pacer: Pacing,
    dry_run: bool,
) -> Report {
    let rows: u64 = plan.by_model.values().map(|t| t.rows).sum();
    // Folded from +0.0: an empty float `sum` is -0.0, which would print as `-0`.
    let old = plan.by_model.values().fold(0.0, |a, t| a + t.old_usd);
    let new = plan.by_model.values().fold(0.0, |a, t| a + t.new_usd);
    let unpriced_rows: u64 = plan.unpriced.values().sum();
    let looked_at = rows + plan.unchanged + unpriced_rows;
    let mut summary = format!(
        "{} {rows} rows from {} ({} models priced): {} -> {} ({}); {} unchanged",
        if dry_run {
            "would re-price"
        } else {
            "re-priced"
        },
        table.source().display(),
        table.priced_len(),
        usd(old),
        usd(new),
        usd_change(new - old),
        plan.unchanged
    );
    let aliases = alias_findings(spec, table, plan, looked_at);
    for finding in &aliases {
        let _ = write!(summary, "; {finding}");
    }
    if !plan.unpriced.is_empty() {
        let names: Vec<String> = plan
            .unpriced
            .iter()
            .map(|(m, n)| format!("{m} ({n} rows)"))
            .collect();
        let _ = write!(
            summary,
            "; {unpriced_rows} rows of {} models without a price kept their cost: {} (add them to the table or to `aliases`)",
            plan.unpriced.len(),
            names.join(", ")
        );
    }
    if !dry_run {
        let _ = write!(
            summary,
            "; longest write lock {}",
            crate::units::duration(pacer.longest)
        );
    }
    let mut report = Report::new(summary)
        .figure(
            "rows_repriced",
            if dry_run { rows } else { measured.rows_written } as f64,
        )
        .figure("usd_before", old)
        .figure("usd_after", new)
        .figure("rows_unchanged", plan.unchanged as f64)
        .figure("rows_unpriced", unpriced_rows as f64)
        .figure("write_batches", pacer.transactions as f64)
        .figure("longest_write_lock_ms", pacer.longest.as_secs_f64() * 1e3)
        .figure("longest_read_ms", measured.longest_read.as_secs_f64() * 1e3)
        .figure("write_lock_total_ms", pacer.total.as_secs_f64() * 1e3)
        .figure(
            "write_lock_share",
            pacer.total.as_secs_f64() / measured.elapsed.as_secs_f64().max(1e-9),
        )
        .figure("read_seconds", measured.reading.as_secs_f64())
        .figure("parse_seconds", measured.parsing.as_secs_f64())
        .figure(
            "parse_wait_seconds",
            measured.waiting_for_parser.as_secs_f64(),
        )
        .figure("update_seconds", measured.updating.as_secs_f64())
        .figure("pause_seconds", measured.pausing.as_secs_f64());
    for (model, n) in &plan.unpriced {
        report = report.figure(
            &format!("unpriced_rows{{model=\"{}\"}}", label(model)),
            *n as f64,
        );
    }
    if dry_run {
        for (alias, target) in &spec.aliases {
            report.plan.push(match plan.alias_rows.get(alias) {
                Some(n) => format!("alias {alias} -> {target}: matched {n} rows"),
                None => format!(
                    "alias {alias} -> {target}: matched none of the {looked_at} rows looked at"
                ),
            });
        }
        for (model, t) in &plan.by_model {
            report.plan.push(format!(
                "model {model}: {} rows, {} -> {}",
                t.rows,
                usd(t.old_usd),
                usd(t.new_usd)
            ));
        }
        for c in plan.changes.iter().take(LISTED_CHANGES) {
            report.plan.push(format!(
                "row {}: {} -> {}",
                c.key,
                describe(&c.old),
                describe(&c.new)
            ));
        }
        if plan.changes.len() > LISTED_CHANGES {
            report.plan.push(format!(
                "... and {} more rows",
                plan.changes.len() - LISTED_CHANGES
            ));
        }
        report.plan.push(format!(
            "total: {rows} rows, {} -> {} ({}); recompute: {}",
            usd(old),
            usd(new),
            usd_change(new - old),
            match spec.recompute {
                Recompute::Missing => "missing",
                Recompute::All => "all",
            }
        ));
    }
    report
}

/// What the operator should know about `aliases`: each one that matched none of the rows the
/// run looked at (its key is none of their names: Apantli rows are matched by the `model`
/// column and by `request_data`'s model), and each one whose target has no price in the
/// table. Unmatched aliases are only told when the run looked at rows at all.
fn alias_findings(spec: &Spec, table: &PriceTable, plan: &Plan, looked_at: u64) -> Vec<String> {
    let mut findings = Vec::new();
    let unmatched: Vec<&str> = spec
        .aliases
        .keys()
        .filter(|alias| !plan.alias_rows.contains_key(*alias))
        .map(String::as_str)
        .collect();
    if looked_at > 0 && !unmatched.is_empty() {
        findings.push(format!(
            "{} of {} aliases matched none of the {looked_at} rows looked at: {} (an alias matches a row's model column or request model, as written or without its provider/ prefix)",
            unmatched.len(),
            spec.aliases.len(),
            unmatched.join(", ")
        ));
    }
    let unpriced: Vec<String> = spec
        .aliases
        .iter()
        .filter(|(_, target)| !table.prices_alias_target(target))
        .map(|(alias, target)| format!("{alias} -> {target}"))
        .collect();
    if !unpriced.is_empty() {
        findings.push(format!(
            "{} aliases name a model without a per-token price in {}, so their rows are priced by their own names or not at all: {}",
            unpriced.len(),
            table.source().display(),
            unpriced.join(", ")
        ));
    }
    findings
}

fn describe(s: &Stored) -> String {
    let one = |v: Option<f64>| v.map_or_else(|| "NULL".to_string(), usd);
    match *s {
        Stored::Single(c) => one(c),
        Stored::Split { input, output } => format!("in {} + out {}", one(input), one(output)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table() -> PriceTable {
        PriceTable::from_yaml(
            "models:\n  gpt-4o: {input_per_million: 2.5, output_per_million: 10}\n",
            Path::new("test.yaml"),
        )
        .unwrap()
    }

    fn candidate(rowid: i64, model: &str, input: u64, output: u64, old: Stored) -> Candidate {
        Candidate {
            key: RowKey::Rowid(rowid),
            model: model.into(),
            column: None,
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
            old,
        }
    }

    /// A pricing spec of `recompute: missing`, whose price file is never read.
    fn missing_spec() -> Spec {
        Spec {
            prices: "unused.yaml".into(),
            watch: false,
            recompute: Recompute::Missing,
            since: None,
            aliases: BTreeMap::new(),
        }
    }

    /// A gateway of `preset`'s table and columns at `database`.
    fn gateway_of(preset: Preset, database: std::path::PathBuf) -> Gateway {
        let (table, columns) = preset.table_and_columns().unwrap();
        Gateway {
            database,
            preset,
            table,
            columns,
            busy_timeout: Duration::from_secs(2),
            postgres: None,
        }
    }

    /// The bound the docs promise for pricing's locks is 4 times the longest batch it aims at.
    #[test]
    fn the_lock_bound_is_four_times_the_batch_s_longest() {
        assert_eq!(
            crate::writelock::bound("pricing").unwrap().for_bytes(0),
            MAX_LOCK * 4
        );
    }

    #[test]
    fn plan_prices_known_models_and_counts_unknown_ones() {
        let table = table();
        let aliases = BTreeMap::from([("four-o".to_string(), "gpt-4o".to_string())]);
        let rows = [
            candidate(1, "gpt-4o", 1000, 100, Stored::Single(None)),
            candidate(2, "four-o", 1000, 100, Stored::Single(Some(0.0))),
            candidate(3, "mystery", 1000, 100, Stored::Single(Some(0.0))),
            candidate(4, "mystery", 10, 10, Stored::Single(None)),
            // Already right: nothing to write.
            candidate(5, "gpt-4o", 1000, 100, Stored::Single(Some(0.0035))),
            candidate(
                6,
                "openai/gpt-4o",
                1_234_567,
                7_654_321,
                Stored::Split {
                    input: Some(0.0),
                    output: None,
                },
            ),
        ];
        let mut rows = rows.to_vec();
        // An Apantli row whose payload model is unknown, with the alias in its column.
        rows.push(Candidate {
            column: Some("four-o".into()),
            ..candidate(7, "acme/unknown", 1000, 100, Stored::Single(None))
        });
        let plan = plan(&rows, &table, &aliases);
        assert_eq!(plan.alias_rows, BTreeMap::from([("four-o".to_string(), 2)]));
        assert_eq!(plan.unpriced, BTreeMap::from([("mystery".to_string(), 2)]));
        assert_eq!(plan.unchanged, 1);
        let ids: Vec<String> = plan.changes.iter().map(|c| c.key.to_string()).collect();
        assert_eq!(ids, ["1", "2", "6", "7"]);
        match plan.changes[0].new {
            Stored::Single(Some(v)) => assert!((v - 0.0035).abs() < 1e-15, "{v}"),
            other => panic!("{other:?}"),
        }
        // Split costs are rounded to 6 decimals each, as BobaMixer writes them.
        assert_eq!(
            plan.changes[2].new,
            Stored::Split {
                input: Some(3.086418),
                output: Some(76.54321)
            }
        );
        assert_eq!(plan.by_model["gpt-4o"].rows, 1);
        assert_eq!(plan.by_model["four-o"].rows, 1);
    }

    #[test]
    fn the_fast_json_readers_agree_with_the_price_module() {
        use crate::demo::sample::{ApantliRowMaker, RowKind, SampleRng, Spelling};
        use rand::SeedableRng;
        let mut rng = SampleRng::seed_from_u64(7);
        let maker = ApantliRowMaker::new(&mut rng, 2048);
        let at = chrono::Utc::now();
        // (model column, request_data, response_data, prompt tokens, completion tokens)
        type Case = (String, Option<String>, Option<String>, u64, u64);
        let mut cases: Vec<Case> = (0..400)
            .map(|i| {
                let kind = if i % 10 == 0 {
                    RowKind::Error
                } else {
                    RowKind::Priced
                };
                let row = maker.row(&mut rng, at, Spelling::Zulu, kind);
                (
                    row.model.to_string(),
                    Some(row.request_data),
                    row.response_data,
                    row.prompt_tokens as u64,
                    row.completion_tokens as u64,
                )
            })
            .collect();
        for (request, response) in [
            (r#"{"model": "  openai/gpt-4o  "}"#, r#"{"usage": null}"#),
            (r#"{"model": ""}"#, r#"{"id": 1}"#),
            (
                r#"{"model": 42}"#,
                r#"{"usage": {"prompt_tokens_details": {"cached_tokens": 5}}}"#,
            ),
            (
                r#"{"model": "a", "model": "b"}"#,
                r#"{"usage": {"cache_read_input_tokens": 3}, "usage": {}}"#,
            ),
            (r#"["openai/gpt-4o"]"#, r#"[{"usage": {}}]"#),
            ("not json", "not json"),
            (
                r#"{"model": "x\u00e9\"y"}"#,
                r#"{"usage": {"cache_creation_input_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}}}"#,
            ),
        ] {
            cases.push((
                "col".into(),
                Some(request.into()),
                Some(response.into()),
                100,
                20,
            ));
        }
        cases.push(("col".into(), None, None, 1, 2));
        for (column, request, response, prompt, completion) in cases {
            assert_eq!(
                apantli_key(&column, request.as_deref()),
                prices::apantli_price_key(&column, request.as_deref()),
                "{request:?}"
            );
            assert_eq!(
                apantli_usage(prompt, completion, response.as_deref()),
                prices::usage_from_apantli(prompt, completion, response.as_deref()),
                "{response:?}"
            );
        }
    }

    #[test]
    fn a_read_stops_at_its_time_budget_and_the_next_one_goes_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("requests.db");
        crate::demo::sample::create_apantli(
            &db,
            &crate::demo::sample::SampleOptions {
                rows: 40,
                ..Default::default()
            },
        )
        .unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("UPDATE requests SET cost = NULL WHERE error IS NULL")
            .unwrap();
        let mut conn = crate::gateway::sqlite::SqliteExec(&conn);
        let gateway = gateway_of(Preset::Apantli, db);
        let spec = missing_spec();
        let rows = Rows::new(
            &gateway,
            Dialect::Sqlite,
            Walk::Rowid,
            &spec,
            chrono::Utc::now(),
        );
        let (all, through) = rows
            .read_window(&mut conn, 0, 40, Duration::from_secs(60))
            .unwrap();
        assert_eq!(through, 40, "with time to spare the window is read whole");
        assert!(!all.is_empty());
        // A spent budget still reads one row, so every read makes progress, and the reads that
        // follow on from where each stopped find exactly the same rows.
        let (mut after, mut stepped) = (0, Vec::new());
        while after < 40 {
            let (got, through) = rows
                .read_window(&mut conn, after, 40, Duration::ZERO)
                .unwrap();
            assert!(got.len() <= 1 && through > after, "{after} -> {through}");
            stepped.extend(got.into_iter().map(|r| r.key));
            after = through;
        }
        let whole: Vec<RowKey> = all.into_iter().map(|r| r.key).collect();
        assert_eq!(stepped, whole);
    }

    /// SQLite's statements are those of the rowid walk as they were; PostgreSQL's update a row
    /// by its key, null-safe, with the costs bound as doubles; failed LiteLLM rows (`status`
    /// not `success`) are never candidates.
    #[test]
    fn statements_per_engine_and_keys_as_the_dry_run_lists_them() {
        let spec = missing_spec();
        let gateway = |preset: Preset| gateway_of(preset, "unused.db".into());
        let now = chrono::Utc::now();
        let apantli = gateway(Preset::Apantli);
        let rows = Rows::new(&apantli, Dialect::Sqlite, Walk::Rowid, &spec, now);
        assert_eq!(
            rows.select,
            "SELECT rowid, \"model\", \"prompt_tokens\", \"completion_tokens\", \"cost\", \"request_data\", \"response_data\" FROM \"requests\" WHERE rowid > ?1 AND rowid <= ?2 AND \"error\" IS NULL AND (\"cost\" IS NULL OR \"cost\" = 0) ORDER BY rowid"
        );
        assert_eq!(
            rows.update,
            "UPDATE \"requests\" SET \"cost\" = ?2 WHERE rowid = ?1 AND \"cost\" IS ?3"
        );
        let boba = gateway(Preset::Bobamixer);
        let rows = Rows::new(&boba, Dialect::Sqlite, Walk::Rowid, &spec, now);
        assert_eq!(
            rows.update,
            "UPDATE \"usage_records\" SET \"input_cost\" = ?2, \"output_cost\" = ?3 WHERE rowid = ?1 AND \"input_cost\" IS ?4 AND \"output_cost\" IS ?5"
        );
        let litellm = gateway(Preset::Litellm);
        let walk = Walk::Keyset {
            key: vec!["request_id".into()],
        };
        let rows = Rows::new(&litellm, Dialect::Postgres, walk, &spec, now);
        assert_eq!(
            rows.update,
            "UPDATE \"LiteLLM_SpendLogs\" SET \"spend\" = CAST($2 AS double precision) WHERE \"request_id\" = $1 AND \"spend\" IS NOT DISTINCT FROM CAST($3 AS double precision)"
        );
        assert_eq!(
            rows.filters,
            [
                "NOT (\"status\" IS DISTINCT FROM 'success')",
                "(\"spend\" IS NULL OR \"spend\" = 0)"
            ]
        );
        assert_eq!(
            rows.order(Dialect::Postgres),
            "\"startTime\", \"request_id\""
        );
        // Many rows per statement by a one-column key, cast by the key's kind.
        let change = |key: Value, old: Option<f64>| Change {
            key: RowKey::Key(vec![key]),
            old: Stored::Single(old),
            new: Stored::Single(Some(0.5)),
        };
        let (sql, params) = rows
            .update_many(
                "request_id",
                &[change("a".into(), Some(0.0)), change("b".into(), None)],
            )
            .unwrap();
        assert_eq!(
            sql,
            "UPDATE \"LiteLLM_SpendLogs\" AS t SET \"spend\" = v.new FROM (VALUES (CAST($1 AS text), CAST($2 AS double precision), CAST($3 AS double precision)), (CAST($4 AS text), CAST($5 AS double precision), CAST($6 AS double precision))) AS v(k, new, old) WHERE t.\"request_id\" = v.k AND t.\"spend\" IS NOT DISTINCT FROM v.old"
        );
        assert_eq!(
            params,
            [
                Value::from("a"),
                Value::Real(0.5),
                Value::Real(0.0),
                Value::from("b"),
                Value::Real(0.5),
                Value::Null
            ]
        );
        let (sql, _) = rows
            .update_many("id", &[change(Value::Integer(7), None)])
            .unwrap();
        assert!(sql.contains("(CAST($1 AS bigint), "), "{sql}");
        // A key of another kind goes row by row.
        assert!(
            rows.update_many("id", &[change(Value::Real(1.0), None)])
                .is_none()
        );
        for (key, shown) in [
            (RowKey::Rowid(17), "17"),
            (RowKey::Key(vec!["req-1".into()]), "req-1"),
            (RowKey::Key(vec!["eu".into(), Value::Integer(4)]), "eu, 4"),
        ] {
            assert_eq!(key.to_string(), shown);
        }
    }

    #[test]
    fn batches_shrink_above_the_target_and_grow_below_it() {
        let mut b = Batcher::new(Aim::for_gateway(Preset::Apantli));
        b.size = 1000;
        b.learn(1000, Duration::from_millis(80));
        assert_eq!(b.size, 500);
        // Inside the band: the size stays.
        b.learn(500, Duration::from_millis(30));
        assert_eq!(b.size, 500);
        b.learn(500, Duration::from_millis(1));
        assert_eq!(b.size, 1000);
        // Toward the target in proportion.
        b.learn(1000, Duration::from_millis(20));
        assert_eq!(b.size, 1500);
        // A short final batch says nothing about the size.
        b.learn(3, Duration::from_micros(10));
        assert_eq!(b.size, 1500);
        for _ in 0..20 {
            b.learn(b.size, Duration::from_secs(1));
        }
        assert_eq!(b.size, MIN_BATCH);
        for _ in 0..30 {
            b.learn(b.size, Duration::from_micros(1));
        }
        assert_eq!(b.size, MAX_BATCH);
    }

    #[test]
    fn gateways_that_never_wait_see_our_lock_less_than_one_percent_of_the_time() {
        for preset in [Preset::Bobamixer, Preset::Custom] {
            let aim = Aim::for_gateway(preset);
            for lock_ms in [1, 2, 4, 10, 40] {
                let lock = Duration::from_millis(lock_ms);
                let spacing = aim.spacing(lock);
                assert!(
                    lock.as_secs_f64() / (lock + spacing).as_secs_f64() < 0.01,
                    "{preset:?} {lock_ms} ms"
                );
            }
        }
    }
}
