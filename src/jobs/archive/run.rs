//! Running an archive job: finish what a crash left, then archive and purge batch by batch.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::encode::Encoder;
use super::plan::{self, Facts, Left, TARGET_HOLD};
use super::select::{self, Bound, Row, Selection, Table};
use super::spec::{Format, Rows, Spec, Then};
use crate::fsx::{self, PendingFile};
use crate::gateway::dialect::Keyset;
use crate::gateway::postgres::db::{jsonb_columns, not_null_columns};
use crate::gateway::postgres::{LITELLM, PrunedWith};
use crate::gateway::{Access, Dialect, ExecExt, GatewayDb, Preset, Tuning, Value};
use crate::jobs::contract::{Context, Report};
use crate::pgzip::ParallelGzWriter;
use crate::units::{self, millis as ms};
use crate::writelock::HOLD_LIMIT;

/// State namespace of the pending-batch records, keyed by job name.
const NS: &str = "archive";
/// Rows looked at per read transaction at most; the time limit usually ends a read first.
const WINDOW: usize = 20_000;
/// How long one read transaction may hold its shared lock before it stops and hands back the
/// rows read so far: within [`HOLD_LIMIT`], with a row's read and the statement's end to spare.
const READ_HOLD: Duration = HOLD_LIMIT.saturating_sub(Duration::from_millis(1));
/// Where a write transaction stops deleting whatever its planned size, leaving the commit
/// (about a millisecond on tmpfs, a few on a loaded machine) within [`HOLD_LIMIT`].
const STOP_DELETING: Duration = HOLD_LIMIT.saturating_sub(Duration::from_millis(2));
const FIRST_ROWS_PER_TRANSACTION: usize = 200;
/// Rows one PostgreSQL statement purges at most (by `key IN (…)`): a round trip per 100 rows.
const PG_KEYS_PER_STATEMENT: usize = 100;
/// How long one keyset read may go on (PostgreSQL): its snapshot holds back no lock of the
/// gateway's, only vacuum's horizon, so the bound is about memory, not the gateway's writers.
const KEYSET_READ_BUDGET: Duration = Duration::from_secs(2);
/// How much row data one keyset read holds at most: batches stay a few of these in memory
/// whatever the rows carry (an embedding vector can make a row megabytes).
const KEYSET_READ_BYTES: u64 = 64 << 20;
const GZIP_LEVEL: u32 = 6;
const GZIP_THREADS: usize = 2;

/// A primary key value, as kept in the pending-batch record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    fn from_value(v: &Value, table: &str) -> anyhow::Result<Key> {
        match v {
            Value::Integer(n) => Ok(Key::Int(*n)),
            Value::Text(t) => Ok(Key::Text(t.clone())),
            other => anyhow::bail!(
                "table `{table}` has a primary key value that is {}; the archive job handles integer and text keys only",
                other.kind()
            ),
        }
    }

    fn value(&self) -> Value {
        match self {
            Key::Int(n) => Value::Integer(*n),
            Key::Text(t) => Value::Text(t.clone()),
        }
    }
}

/// The batch in flight, recorded before its file is written and cleared once its rows are
/// purged. Whether `file` exists tells a resuming run which side of the rename the crash was on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    file: PathBuf,
    table: String,
    key_columns: Vec<String>,
    payload_columns: Vec<String>,
    then: Then,
    keys: Vec<Vec<Key>>,
    /// Payload columns declared NOT NULL, stripped to `'{}'` instead of NULL.
    #[serde(default)]
    emptied: Vec<String>,
    /// Tables pruned with the request in the same transaction, as (table, column naming the
    /// request's key): LiteLLM's tool index.
    #[serde(default)]
    also: Vec<(String, String)>,
}

impl Pending {
    /// How many rows one statement purges: one on SQLite, whose write transactions are paced
    /// row by row; on PostgreSQL, where a round trip per row would be most of the cost, up to
    /// [`PG_KEYS_PER_STATEMENT`] by a one-column key.
    fn rows_per_statement(&self, d: Dialect) -> usize {
        if d == Dialect::Postgres && self.key_columns.len() == 1 {
            PG_KEYS_PER_STATEMENT
        } else {
            1
        }
    }

    /// The statement that deletes (or strips) `rows` rows of this batch by their keys (the key's
    /// columns per row, in order, as parameters from the first).
    fn purge_sql(&self, d: Dialect, rows: usize) -> String {
        let filter: Vec<String> = if rows == 1 {
            self.key_columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} = {}", d.ident(c), d.param(i + 1)))
                .collect()
        } else {
            vec![format!(
                "{} IN ({})",
                d.ident(&self.key_columns[0]),
                d.params(1, rows)
            )]
        };
        match self.then {
            Then::Delete => format!(
                "DELETE FROM {} WHERE {}",
                d.table(&self.table),
                filter.join(" AND ")
            ),
            Then::StripPayloads => {
                let set: Vec<String> = self
                    .payload_columns
                    .iter()
                    .map(|c| {
                        if self.emptied.contains(c) {
                            format!("{} = '{{}}'", d.ident(c))
                        } else {
                            format!("{} = NULL", d.ident(c))
                        }
                    })
                    .collect();
                format!(
                    "UPDATE {} SET {} WHERE {}",
                    d.table(&self.table),
                    set.join(", "),
                    filter.join(" AND ")
                )
            }
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    rows: u64,
    bytes: u64,
    files: u64,
    file_bytes: u64,
    purged: u64,
    sessions: u64,
    resumed: u64,
    longest_read: Duration,
}

struct Archiver<'c, 'a> {
    spec: &'a Spec,
    ctx: &'c Context<'a>,
    db: Box<dyn GatewayDb>,
    rows_per_transaction: usize,
    /// The shortest write lock seen: about the fixed cost of a commit.
    floor: Option<Duration>,
    /// Batches recorded in the state database: their files may exist, their rows may not be
    /// purged yet. At most three: the one being written, and up to two durable ones in `ready`.
    pendings: Vec<Pending>,
    /// Durable batches whose rows are being purged, oldest first, with how many of the first
    /// one's keys are gone. Write transactions take keys across batch ends, so each is as long
    /// as the target: a short one at a batch's end would cost the gateway the same room.
    ready: VecDeque<Pending>,
    purged_of_first: usize,
    /// The gateway's request table, whose deleted rows go into the ledger.
    request_table: String,
    /// What a batch of the request table adds to its record ([`Pending::emptied`],
    /// [`Pending::also`]).
    emptied: Vec<String>,
    also: Vec<(String, String)>,
    /// Rows deleted from it and not yet in the ledger.
    removed_unrecorded: u64,
    in_flight: Option<InFlight>,
    tally: Tally,
}

impl Drop for Archiver<'_, '_> {
    /// A run that stops early still waits for the file being written: a writer finishing after
    /// the next run looked for it would publish rows that run archives again.
    fn drop(&mut self) {
        if let Some(batch) = self.in_flight.take() {
            let _ = batch.writer.join();
        }
    }
}

/// A batch whose file is being written on its own thread.
struct InFlight {
    pending: Pending,
    writer: std::thread::JoinHandle<anyhow::Result<u64>>,
    rows: u64,
    row_bytes: u64,
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let gateway = ctx.gateway;
    let mut db = gateway.open(Access::unless_dry_run(ctx.dry_run))?;
    db.check_columns()?;
    // Never cascade to rows that were not archived, and keep each transaction's pages in
    // memory until its commit (gateway::sqlite explains both for SQLite).
    db.tune(Tuning::Purge)?;
    // Paced: its reads wait for a gateway that keeps its lock past our busy timeout
    // (docs/design.md, "A busy gateway"), the schema's included.
    let (table, _) = db.read(|c| Table::inspect(c, &gateway.table, &gateway.columns.payload))?;
    let d = db.dialect();
    let cutoff = plan::cutoff(spec, ctx.now)?;
    let bound = Bound::new(gateway.columns.time_format, cutoff);
    let old = bound.condition(d, &gateway.columns.time);
    let mut wanted = old.clone();
    let litellm = gateway.preset == Preset::Litellm;
    match (spec.rows, gateway.failed_sql(d)) {
        (Rows::All, _) => {}
        (Rows::Ok, Some(failed)) => wanted.push_str(&format!(" AND NOT ({failed})")),
        (Rows::Failed, Some(failed)) => wanted.push_str(&format!(" AND ({failed})")),
        (_, None) => anyhow::bail!(
            "archive `rows: ok|failed` needs the gateway's error column, and this gateway has none; use `rows: all` or set gateway.columns.error"
        ),
    }
    // PostgreSQL: a payload column declared NOT NULL is stripped to '{}' (an empty JSON object).
    let emptied: Vec<String> = if d == Dialect::Postgres && spec.then == Then::StripPayloads {
        let payload = table.payload_columns();
        db.read(|c| not_null_columns(c, &table.name))?
            .0
            .into_iter()
            .filter(|c| payload.contains(c))
            .collect()
    } else {
        Vec::new()
    };
    if spec.then == Then::StripPayloads {
        anyhow::ensure!(
            !table.payload.is_empty(),
            "archive `then: strip_payloads` needs payload columns, and this gateway has none; use `then: delete` or set gateway.columns.payload"
        );
        // Rows already stripped have nothing left to archive.
        let any: Vec<String> = table
            .payload_columns()
            .iter()
            .map(|c| {
                if emptied.contains(c) {
                    format!("{} <> '{{}}'", d.ident(c))
                } else {
                    format!("{} IS NOT NULL", d.ident(c))
                }
            })
            .collect();
        wanted.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    let (time_indexed, _) =
        db.read(|c| select::leads_an_index(c, &table.name, &gateway.columns.time))?;
    let selection = Selection {
        table,
        time: gateway.columns.time.clone(),
        old,
        wanted,
        params: bound.params(),
    };
    let sessions = (gateway.preset == Preset::Bobamixer && spec.then == Then::Delete)
        .then(|| cutoff.timestamp());
    let mut archiver = Archiver {
        spec,
        ctx,
        db,
        rows_per_transaction: FIRST_ROWS_PER_TRANSACTION,
        floor: None,
        pendings: Vec::new(),
        ready: VecDeque::new(),
        purged_of_first: 0,
        request_table: gateway.table.clone(),
        emptied: emptied.clone(),
        also: Vec::new(),
        removed_unrecorded: 0,
        in_flight: None,
        tally: Tally::default(),
    };
    // LiteLLM's tables pruned with the spend logs (SPEC's preset table), where they exist.
    let mut pruned_by_time = Vec::new();
    if litellm && spec.then == Then::Delete {
        for pruned in LITELLM.pruned_with {
            match *pruned {
                PrunedWith::ByRequest { table, key } => {
                    let (columns, _) = archiver.db.read(|c| c.columns_of(table))?;
                    if columns.iter().any(|c| c.name == key) {
                        archiver.also.push((table.to_string(), key.to_string()));
                    }
                }
                PrunedWith::ByOwnTime { table, time } if spec.rows != Rows::Ok => {
                    let (columns, _) = archiver.db.read(|c| c.columns_of(table))?;
                    if !columns.is_empty() {
                        let payload: Vec<String> = columns
                            .iter()
                            .filter(|c| c.name == "request_kwargs")
                            .map(|c| c.name.clone())
                            .collect();
                        let (table, _) = archiver
                            .db
                            .read(|c| Table::inspect(c, table, &payload))?;
                        let old = bound.condition(d, time);
                        pruned_by_time.push(Selection {
                            table,
                            time: time.to_string(),
                            wanted: old.clone(),
                            old,
                            params: bound.params(),
                        });
                    }
                }
                PrunedWith::ByOwnTime { .. } => {}
            }
        }
    }
    if ctx.dry_run {
        return archiver.survey(&selection, time_indexed, sessions);
    }
    fsx::private_dir(&spec.to)?;
    fsx::sweep_temps(&spec.to)?;
    archiver.resume()?;
    archiver.archive(&selection, time_indexed, "")?;
    if let Some(cut) = sessions {
        archiver.orphaned_sessions(cut)?;
    }
    let mut vacuum = Vec::new();
    if archiver.tally.purged > 0 {
        vacuum.push(selection.table.name.clone());
    }
    for pruned in &pruned_by_time {
        let before = archiver.tally.purged;
        let prefix = format!("{}-", pruned.table.name.to_lowercase().replace('_', ""));
        archiver.archive(pruned, true, &prefix)?;
        if archiver.tally.purged > before {
            vacuum.push(pruned.table.name.clone());
        }
    }
    let vacuumed = if d == Dialect::Postgres {
        archiver.vacuum(&vacuum)
    } else {
        None
    };
    let mut report = archiver.report(&bound);
    if let Some(note) = vacuumed {
        report.summary.push_str(&format!("; {note}"));
    }
    drop(archiver);
    super::offsite::copy_and_expire(spec, ctx, &mut report)?;
    Ok(report)
}

impl Archiver<'_, '_> {
    /// How the rows of `table` are written. On PostgreSQL every JSONB column is redacted as a
    /// payload is (LiteLLM's `metadata` carries keys in error tracebacks), and keys are also
    /// recognised by their shape there.
    fn encoder(&mut self, table: &Table) -> anyhow::Result<Encoder> {
        let jsonb = if self.db.dialect() == Dialect::Postgres {
            self.db.read(|c| jsonb_columns(c, &table.name))?.0
        } else {
            Vec::new()
        };
        let payload = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| table.payload.contains(&i) || jsonb.contains(c))
            .collect();
        let encoder = Encoder::new(
            self.spec.format,
            table.columns.clone(),
            payload,
            self.spec.redact.clone(),
        );
        Ok(if self.db.dialect() == Dialect::Postgres {
            encoder.with_key_shapes()
        } else {
            encoder
        })
    }

    /// Calls `each` with the wanted rows of every window up to the last old row.
    fn scan(
        &mut self,
        selection: &Selection,
        time_indexed: bool,
        mut each: impl FnMut(&mut Self, Vec<Row>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.db.dialect().keyset() == Keyset::TimeThenKey {
            return self.scan_keyset(selection, each);
        }
        let ((end, read), _) = self
            .db
            .read(|c| selection.last_rowid(c, time_indexed))?;
        self.tally.longest_read = self.tally.longest_read.max(read);
        let Some(end) = end else {
            return Ok(());
        };
        let mut after = i64::MIN;
        loop {
            self.ctx.checkpoint()?;
            let ((rows, last), read) = self
                .db
                .read(|c| selection.window(c, after, end, WINDOW, READ_HOLD))?;
            self.tally.longest_read = self.tally.longest_read.max(read);
            let Some(last) = last else { return Ok(()) };
            after = last;
            each(self, rows)?;
        }
    }

    /// A plain `VACUUM (ANALYZE)` of each table whose rows this run removed or stripped, so
    /// that PostgreSQL reuses their space (never `VACUUM FULL`, which would lock the gateway
    /// out). It takes no lock the proxy's inserts wait on. The rows are archived and gone by
    /// now: a VACUUM that fails (our `statement_timeout`) is said in the summary, and
    /// autovacuum does the work later.
    fn vacuum(&mut self, tables: &[String]) -> Option<String> {
        if tables.is_empty() {
            return None;
        }
        let d = Dialect::Postgres;
        let mut done = Vec::new();
        for table in tables {
            let sql = format!("VACUUM (ANALYZE) {}", d.table(table));
            match self.db.exec().execute(&sql, &[]) {
                Ok(_) => done.push(format!("`{table}`")),
                Err(e) => {
                    tracing::warn!(table = %table, "VACUUM (ANALYZE) after the purge failed: {e:#}; autovacuum will reclaim the space");
                    return Some(format!(
                        "VACUUM (ANALYZE) of `{table}` failed ({e:#}); autovacuum will reclaim the space"
                    ));
                }
            }
        }
        Some(format!("vacuumed {}", done.join(", ")))
    }

    /// [`Archiver::scan`] in (time, key) order: every statement of it under `lock_timeout`
    /// (a read takes no lock the proxy's inserts wait on), a batch's worth per read.
    fn scan_keyset(
        &mut self,
        selection: &Selection,
        mut each: impl FnMut(&mut Self, Vec<Row>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let limit = (self.spec.batch as usize).min(WINDOW);
        let mut after: Option<Vec<Value>> = None;
        loop {
            self.ctx.checkpoint()?;
            let ((rows, last), read) = self.db.read(|c| {
                selection.keyset_window(
                    c,
                    after.as_deref(),
                    limit,
                    KEYSET_READ_BUDGET,
                    KEYSET_READ_BYTES,
                )
            })?;
            self.tally.longest_read = self.tally.longest_read.max(read);
            let Some(last) = last else { return Ok(()) };
            after = Some(last);
            each(self, rows)?;
        }
    }

    fn archive(
        &mut self,
        selection: &Selection,
        time_indexed: bool,
        prefix: &str,
    ) -> anyhow::Result<()> {
        let encoder = self.encoder(&selection.table)?;
        let batch = self.spec.batch as usize;
        let mut buffer: VecDeque<Row> = VecDeque::new();
        self.scan(selection, time_indexed, |me, rows| {
            buffer.extend(rows);
            while buffer.len() >= batch {
                let rows: Vec<Row> = buffer.drain(..batch).collect();
                me.batch(&selection.table, &encoder, prefix, rows)?;
            }
            Ok(())
        })?;
        if !buffer.is_empty() {
            self.batch(&selection.table, &encoder, prefix, buffer.into())?;
        }
        self.drain()
    }

    /// BobaMixer's `sessions` rows left without usage records once those are purged, and
    /// older than the cut-off (a new session gets its first record a moment after it is
    /// inserted, so young sessions are never touched).
    fn orphaned_sessions(&mut self, cut: i64) -> anyhow::Result<()> {
        // BobaMixer's own tables: a SQLite gateway's, whose statements these are.
        let rowids: Vec<i64> = self
            .db
            .exec()
            .query_map(
                "SELECT rowid FROM sessions WHERE COALESCE(ended_at, started_at) < ?1
                 AND id NOT IN (SELECT session_id FROM usage_records) ORDER BY rowid",
                &[cut.into()],
                |r| Ok(r.i64(0)?.unwrap_or_default()),
            )
            .context("finding BobaMixer sessions without usage records")?;
        let table = Table::inspect(self.db.exec(), "sessions", &[])?;
        let encoder = self.encoder(&table)?;
        let selection = Selection {
            table,
            time: String::new(),
            old: String::new(),
            wanted: String::new(),
            params: Vec::new(),
        };
        for chunk in rowids.chunks(self.spec.batch as usize) {
            self.ctx.checkpoint()?;
            let (rows, read) = self.db.read(|c| selection.by_rowids(c, chunk))?;
            self.tally.longest_read = self.tally.longest_read.max(read);
            if rows.is_empty() {
                continue;
            }
            self.tally.sessions += rows.len() as u64;
            self.batch(&selection.table, &encoder, "sessions-", rows)?;
        }
        self.drain()
    }

    /// One batch: record it, start writing its file, and meanwhile complete the previous batch
    /// (its file durable, then its rows purged).
    fn batch(
        &mut self,
        table: &Table,
        encoder: &Encoder,
        prefix: &str,
        rows: Vec<Row>,
    ) -> anyhow::Result<()> {
        let (first, last) = (rows[0].rowid, rows[rows.len() - 1].rowid);
        let dest = unique_dest(
            &self.spec.to,
            self.ctx.job,
            prefix,
            first,
            last,
            self.spec.format,
        );
        let keys = rows
            .iter()
            .map(|r| {
                table
                    .key
                    .iter()
                    .map(|&i| Key::from_value(&r.values[i], &table.name))
                    .collect()
            })
            .collect::<anyhow::Result<Vec<Vec<Key>>>>()?;
        let pending = Pending {
            file: dest.clone(),
            table: table.name.clone(),
            key_columns: table.key_columns(),
            payload_columns: table.payload_columns(),
            then: if prefix.is_empty() {
                self.spec.then
            } else {
                Then::Delete
            },
            keys,
            emptied: if prefix.is_empty() {
                self.emptied.clone()
            } else {
                Vec::new()
            },
            also: if prefix.is_empty() && self.spec.then == Then::Delete {
                self.also.clone()
            } else {
                Vec::new()
            },
        };
        self.pendings.push(pending.clone());
        self.save_pendings()?;
        let expected = (self.spec.format == Format::Jsonl).then_some(rows.len());
        let row_bytes = rows.iter().map(Row::bytes).sum::<u64>();
        let count = rows.len() as u64;
        let encoder = encoder.clone();
        // The file is encoded, compressed and made durable on its own thread while this one
        // purges the previous batch, whose file is already durable: the pauses left to the
        // gateway between write transactions are spent compressing.
        let writer = std::thread::spawn(move || -> anyhow::Result<u64> {
            yield_to_the_lock_holder();
            let written = write_file(&dest, &encoder, &rows)?;
            verify_file(&dest, expected)?;
            Ok(written)
        });
        let previous = self.in_flight.replace(InFlight {
            pending,
            writer,
            rows: count,
            row_bytes,
        });
        if let Some(previous) = previous {
            self.complete(previous)?;
        }
        Ok(())
    }

    /// Waits for a batch's file to be durable, then purges its rows in full write transactions;
    /// a remainder waits for the next batch.
    fn complete(&mut self, batch: InFlight) -> anyhow::Result<()> {
        let written = batch.writer.join().map_err(|_| {
            anyhow::anyhow!("the archive writer thread panicked (a caretaker bug)")
        })??;
        self.tally.rows += batch.rows;
        self.tally.bytes += batch.row_bytes;
        self.tally.files += 1;
        self.tally.file_bytes += written;
        self.ready.push_back(batch.pending);
        self.purge(false)
    }

    /// Completes the batch still being written, if any, and purges every durable batch.
    fn drain(&mut self) -> anyhow::Result<()> {
        if let Some(batch) = self.in_flight.take() {
            self.complete(batch)?;
        }
        self.purge(true)
    }

    /// Tells the ledger the request rows deleted since it was last told, so that the backup's
    /// shrink guard does not take our purge for an emptied database. A crash before this loses
    /// only the count: the guard then holds one backup too many, never deletes one.
    fn note_removed(&mut self) -> anyhow::Result<()> {
        if self.removed_unrecorded > 0 {
            crate::ledger::purged(self.ctx.state, chrono::Utc::now(), self.removed_unrecorded)
                .context("recording the purged rows in the state database")?;
            self.removed_unrecorded = 0;
        }
        Ok(())
    }

    /// Records the batches whose files may exist and whose rows may still be in the table.
    fn save_pendings(&self) -> anyhow::Result<()> {
        if self.pendings.is_empty() {
            self.ctx.state.remove(NS, self.ctx.job)
        } else {
            self.ctx.state.put(NS, self.ctx.job, &self.pendings)
        }
        .context("recording the archive files in flight in the state database")
    }

    /// Finishes the batches a crash interrupted: purges the rows of each whose file was
    /// published; the others' rows are still in the table and are archived again.
    fn resume(&mut self) -> anyhow::Result<()> {
        let Some(pendings) = self.ctx.state.get::<Vec<Pending>>(NS, self.ctx.job)? else {
            return Ok(());
        };
        for pending in pendings {
            if !pending.file.exists() {
                continue;
            }
            verify_file(&pending.file, None).with_context(|| {
                format!(
                    "the archive file {} of an interrupted run is damaged; its rows are still in the table: move the file away and run the job again",
                    pending.file.display()
                )
            })?;
            self.tally.resumed += pending.keys.len() as u64;
            self.pendings.push(pending.clone());
            self.ready.push_back(pending);
        }
        self.purge(true)?;
        self.ctx.state.remove(NS, self.ctx.job)?;
        Ok(())
    }

    /// Deletes (or strips) the rows of the durable batches in short write transactions whose
    /// size adapts to hold the lock about [`TARGET_HOLD`], while a full transaction's worth or
    /// two batches are ready (`all`: until none is left), and forgets each batch once its rows
    /// are gone. Rows already gone are skipped: purging twice is harmless, which is what makes
    /// resuming safe.
    fn purge(&mut self, all: bool) -> anyhow::Result<()> {
        loop {
            let ready =
                self.ready.iter().map(|p| p.keys.len()).sum::<usize>() - self.purged_of_first;
            // A remainder short of a full transaction waits for the next batch, but only one:
            // the batches in flight, and their record in the state database, stay few.
            let wait = ready < self.rows_per_transaction && self.ready.len() < 2;
            if ready == 0 || (!all && wait) {
                return self.note_removed();
            }
            self.ctx.checkpoint()?;
            let want = self.rows_per_transaction.min(ready);
            let (skip, batches) = (self.purged_of_first, &self.ready);
            let request_table = &self.request_table;
            let ((count, n, removed), held) = self.db.write(|tx| {
                // Rows that cost more than the last ones did (pages not cached, a busy
                // machine) end the transaction at the hard limit; the rest go to the next.
                let started = Instant::now();
                let (mut count, mut n, mut removed) = (0u64, 0usize, 0u64);
                let d = tx.dialect();
                'batches: for (i, pending) in batches.iter().enumerate() {
                    let removes = pending.then == Then::Delete && pending.table == *request_table;
                    let per_statement = pending.rows_per_statement(d);
                    let mut rest = &pending.keys[if i == 0 { skip } else { 0 }..];
                    while !rest.is_empty() {
                        let take = per_statement.min(want - n).min(rest.len());
                        let (keys, tail) = rest.split_at(take);
                        rest = tail;
                        let params: Vec<Value> =
                            keys.iter().flatten().map(Key::value).collect();
                        let done = tx.execute(&pending.purge_sql(d, take), &params)?;
                        for (table, column) in &pending.also {
                            let sql = format!(
                                "DELETE FROM {} WHERE {} IN ({})",
                                d.table(table),
                                d.ident(column),
                                d.params(1, take)
                            );
                            tx.execute(&sql, &params)?;
                        }
                        count += done;
                        if removes {
                            removed += done;
                        }
                        n += take;
                        if n == want || started.elapsed() >= STOP_DELETING {
                            break 'batches;
                        }
                    }
                }
                Ok((count, n, removed))
            })?;
            self.tally.purged += count;
            self.removed_unrecorded += removed;
            self.floor = Some(self.floor.map_or(held, |f| f.min(held)));
            self.rows_per_transaction = next_size(
                self.rows_per_transaction,
                n,
                held,
                self.floor.unwrap_or_default(),
            );
            self.purged_of_first += n;
            let mut forgot = false;
            while let Some(first) = self.ready.pop_front() {
                if self.purged_of_first < first.keys.len() {
                    self.ready.push_front(first);
                    break;
                }
                self.purged_of_first -= first.keys.len();
                self.pendings.retain(|p| p.file != first.file);
                forgot = true;
            }
            if forgot {
                self.note_removed()?;
                self.save_pendings()?;
            }
        }
    }

    /// The dry run: gathers the facts a plan needs (the batches a killed run left, the rows
    /// the run would archive), then plans.
    fn survey(
        mut self,
        selection: &Selection,
        time_indexed: bool,
        sessions: Option<i64>,
    ) -> anyhow::Result<Report> {
        let left = self
            .ctx
            .state
            .get::<Vec<Pending>>(NS, self.ctx.job)?
            .unwrap_or_default()
            .into_iter()
            .map(|p| Left {
                published: p.file.exists(),
                rows: p.keys.len(),
                file: p.file,
                table: p.table,
            })
            .collect();
        let (mut rows, mut bytes, mut payload) = (0u64, 0u64, 0u64);
        let payload_idx = selection.table.payload.clone();
        self.scan(selection, time_indexed, |_, found| {
            rows += found.len() as u64;
            for r in &found {
                bytes += r.bytes();
                payload += payload_idx
                    .iter()
                    .map(|&i| select::value_bytes(&r.values[i]))
                    .sum::<u64>();
            }
            Ok(())
        })?;
        let orphaned_sessions = match sessions {
            Some(cut) => Some(self.db.exec().query_one(
                "SELECT count(*) FROM sessions WHERE COALESCE(ended_at, started_at) < ?1
                 AND id NOT IN (SELECT session_id FROM usage_records)",
                &[cut.into()],
                |r| Ok(r.i64(0)?.unwrap_or_default()),
            )? as u64),
            None => None,
        };
        let facts = Facts {
            left,
            table: selection.table.name.clone(),
            time_format: self.ctx.gateway.columns.time_format,
            payload_columns: selection
                .table
                .payload_columns()
                .iter()
                .map(|c| c.to_string())
                .collect(),
            rows,
            bytes,
            payload_bytes: payload,
            orphaned_sessions,
        };
        Ok(plan::plan(self.spec, &facts, self.ctx.now, self.ctx.timezone)?.report())
    }

    fn report(&self, bound: &Bound) -> Report {
        let t = &self.tally;
        let verb = match self.spec.then {
            Then::Delete => "deleted",
            Then::StripPayloads => "stripped",
        };
        let mut summary = format!(
            "archived {} rows older than {} into {} files ({}) in {}; {} rows {verb}",
            t.rows,
            bound.describe(),
            t.files,
            units::bytes(t.file_bytes),
            self.spec.to.display(),
            t.purged
        );
        if t.sessions > 0 {
            summary.push_str(&format!(", including {} orphaned sessions", t.sessions));
        }
        if t.resumed > 0 {
            summary.push_str(&format!(
                "; finished {} rows of an interrupted run",
                t.resumed
            ));
        }
        summary.push_str(&format!(
            "; longest write lock {} over {} transactions, longest read {}",
            units::duration(self.db.pacing().longest),
            self.db.pacing().transactions,
            units::duration(t.longest_read)
        ));
        Report::new(summary)
            .figure("rows_archived", t.rows as f64)
            .figure("row_bytes", t.bytes as f64)
            .figure("files_written", t.files as f64)
            .figure("archive_bytes", t.file_bytes as f64)
            .figure("rows_purged", t.purged as f64)
            .figure("sessions_deleted", t.sessions as f64)
            .figure("resumed_rows", t.resumed as f64)
            .figure("longest_lock_ms", ms(self.db.pacing().longest))
            .figure("write_transactions", self.db.pacing().transactions as f64)
            .figure("lock_seconds", self.db.pacing().total.as_secs_f64())
            .figure("longest_read_ms", ms(t.longest_read))
    }
}

/// Rows for the next write transaction, aiming its lock time at [`TARGET_HOLD`].
///
/// A commit has a fixed cost (the journal's fsyncs: about 20-30 ms on a virtual disk, well under
/// a millisecond on tmpfs) and a cost per row. `floor` is the shortest hold seen so far, an
/// estimate of the fixed part; only the part above it scales with the rows. When the fixed part
/// alone reaches the target, the rows get half the target on top of it: shrinking further would
/// only multiply commits. Steps are at most half or double so one slow fsync does not collapse
/// the size; a transaction of less than half the size (the end of a table) keeps it.
pub(crate) fn next_size(current: usize, done: usize, held: Duration, floor: Duration) -> usize {
    if done < current / 2 {
        return current;
    }
    let per_rows = held.saturating_sub(floor).max(Duration::from_micros(100));
    let room = TARGET_HOLD.saturating_sub(floor).max(TARGET_HOLD / 2);
    let ideal = (done as f64 * room.as_secs_f64() / per_rows.as_secs_f64()) as usize;
    ideal.clamp(current / 2, current * 2).clamp(10, 20_000)
}

/// Lowers the calling thread's CPU priority (nice 10), and with it that of the compression
/// threads it starts, which inherit it. On a busy machine the thread holding a lock on the
/// gateway's database then runs first: a lock held while its thread waits for a core is a
/// lock held longer, and every gateway writer queued behind it waits too. Linux only: there
/// the nice value belongs to one thread; elsewhere it would slow the whole process.
fn yield_to_the_lock_holder() {
    #[cfg(target_os = "linux")]
    {
        // Best effort: a failure leaves the thread at its priority, as before.
        let _ = rustix::process::getpriority_process(None)
            .and_then(|nice| rustix::process::setpriority_process(None, (nice + 10).min(19)));
    }
}

/// `<job>-<prefix><first>-<last>.<ext>`, with `-2`, `-3` ... when taken (rowids of tables
/// without an INTEGER PRIMARY KEY may be reused after a VACUUM).
fn unique_dest(
    dir: &Path,
    job: &str,
    prefix: &str,
    first: i64,
    last: i64,
    format: Format,
) -> PathBuf {
    let ext = format.extension();
    let base = format!("{job}-{prefix}{first}-{last}");
    let mut dest = dir.join(format!("{base}.{ext}"));
    let mut n = 2;
    while dest.exists() {
        dest = dir.join(format!("{base}-{n}.{ext}"));
        n += 1;
    }
    dest
}

/// Writes the rows gzipped to `dest` durably (mode 0600); returns the file's size.
fn write_file(dest: &Path, encoder: &Encoder, rows: &[Row]) -> anyhow::Result<u64> {
    let pending = PendingFile::create(dest)?;
    let temp = pending.temp_path().to_path_buf();
    let mut text = Vec::with_capacity(rows.iter().map(|r| r.bytes() as usize + 64).sum());
    encoder.header(&mut text);
    for row in rows {
        encoder.line(&row.values, &mut text);
    }
    let mut gz = ParallelGzWriter::new(pending, GZIP_LEVEL, GZIP_THREADS)
        .with_context(|| format!("starting to write {}", temp.display()))?;
    gz.write_all(&text)
        .and_then(|()| gz.flush())
        .with_context(|| {
            format!(
                "writing archive file {} (is the disk full?)",
                temp.display()
            )
        })?;
    let pending = gz.finish().with_context(|| {
        format!(
            "writing archive file {} (is the disk full?)",
            temp.display()
        )
    })?;
    let path = pending.commit()?;
    Ok(std::fs::metadata(&path)?.len())
}

/// Decompresses `path` completely (a truncated or damaged gzip fails) and, for JSON lines,
/// checks that it holds `rows` lines.
fn verify_file(path: &Path, rows: Option<usize>) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = flate2::read::GzDecoder::new(file);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0usize;
    loop {
        let n = decoder.read(&mut buf).with_context(|| {
            format!(
                "verifying archive file {}: it does not decompress",
                path.display()
            )
        })?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    if let Some(rows) = rows {
        anyhow::ensure!(
            lines == rows,
            "verifying archive file {}: {lines} lines where {rows} rows were written",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_sizes_move_toward_the_target_within_bounds() {
        let ms = Duration::from_millis;
        // (rows now, rows done, lock held, fixed cost estimate) -> next rows
        let cases = [
            (200, 200, ms(5), ms(2), 400),
            (200, 200, ms(16), ms(2), 200),
            (200, 200, ms(30), ms(2), 100),
            (200, 200, ms(500), ms(2), 100),
            (200, 150, ms(9), ms(2), 300),
            (200, 50, ms(50), ms(2), 200),
            // The fixed cost alone reaches the target: the rows get half the target on top.
            (200, 200, ms(33), ms(25), 200),
            (200, 200, ms(28), ms(25), 400),
            (200, 200, ms(43), ms(25), 100),
            (10, 10, ms(100), ms(5), 10),
            (20_000, 20_000, ms(1), ms(1), 20_000),
        ];
        for (current, done, held, floor, expected) in cases {
            assert_eq!(
                next_size(current, done, held, floor),
                expected,
                "{current} {done} {held:?} {floor:?}"
            );
        }
    }

    #[test]
    fn postgres_purges_by_a_list_of_keys_and_sqlite_row_by_row() {
        let mut pending = Pending {
            file: PathBuf::from("x"),
            table: "LiteLLM_SpendLogs".into(),
            key_columns: vec!["request_id".into()],
            payload_columns: vec!["messages".into(), "response".into()],
            then: Then::Delete,
            keys: Vec::new(),
            emptied: vec!["response".into()],
            also: Vec::new(),
        };
        assert_eq!(pending.rows_per_statement(Dialect::Sqlite), 1);
        assert_eq!(pending.rows_per_statement(Dialect::Postgres), PG_KEYS_PER_STATEMENT);
        assert_eq!(
            pending.purge_sql(Dialect::Postgres, 3),
            "DELETE FROM \"LiteLLM_SpendLogs\" WHERE \"request_id\" IN ($1, $2, $3)"
        );
        assert_eq!(
            pending.purge_sql(Dialect::Sqlite, 1),
            "DELETE FROM \"LiteLLM_SpendLogs\" WHERE \"request_id\" = ?1"
        );
        pending.then = Then::StripPayloads;
        assert_eq!(
            pending.purge_sql(Dialect::Postgres, 2),
            "UPDATE \"LiteLLM_SpendLogs\" SET \"messages\" = NULL, \"response\" = '{}' WHERE \"request_id\" IN ($1, $2)"
        );
        pending.key_columns.push("n".into());
        assert_eq!(pending.rows_per_statement(Dialect::Postgres), 1);
    }

    #[test]
    fn taken_names_get_a_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let first = unique_dest(dir.path(), "arch", "", 1, 2000, Format::Jsonl);
        assert_eq!(first.file_name().unwrap(), "arch-1-2000.jsonl.gz");
        std::fs::write(&first, b"").unwrap();
        let second = unique_dest(dir.path(), "arch", "", 1, 2000, Format::Jsonl);
        assert_eq!(second.file_name().unwrap(), "arch-1-2000-2.jsonl.gz");
        let sessions = unique_dest(dir.path(), "arch", "sessions-", 5, 9, Format::Csv);
        assert_eq!(sessions.file_name().unwrap(), "arch-sessions-5-9.csv.gz");
    }
}
