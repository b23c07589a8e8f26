//! A stand-in gateway writing like the real one: paced single-row inserts with Apantli's or
//! BobaMixer's connection habits, counting every row the gateway would have lost.
//!
//! Apantli serves requests concurrently; each logged request opens a new connection with a 5 s
//! busy timeout in the default rollback journal, inserts one row and closes. BobaMixer records
//! usage through one short-lived `sqlite3` process per statement: WAL set on every open and no
//! busy timeout, so any write lock held by someone else makes the insert fail at once. A failed
//! insert is counted, never retried: the real gateways drop that row, and the count is the
//! "rows lost" figure caretaker must keep at zero.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use rand::{RngExt, SeedableRng};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::sample::{
    APANTLI_INSERT, APANTLI_SCHEMA, ApantliRow, ApantliRowMaker, BOBA_INSERT_SESSION,
    BOBA_INSERT_USAGE, BOBAMIXER_SCHEMA, RowKind, SampleRng, SessionRow, Spelling, UsageRecord,
};
use crate::gateway::APANTLI_BUSY_TIMEOUT;

/// Apantli writes still waiting for a lock at once before the pacer waits for one to finish;
/// bounds threads when a lock is held for long at a high rate.
const MAX_IN_FLIGHT: u64 = 1024;

/// How often the pacer looks at the stop flag while idle.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Which gateway's write habits to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// New connection per write, 5 s busy timeout, rollback journal, concurrent requests.
    Apantli,
    /// New connection per write, no busy timeout, WAL set on open, one write at a time.
    Bobamixer,
    /// LiteLLM's proxy on PostgreSQL: batched inserts from a queue over a small pool
    /// (`gateway-sim --postgres URL`, see `super::pgsim`).
    Litellm,
}

/// What to simulate; [`SimOptions::new`] fills in the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// The gateway database; created with the style's schema if its table is missing.
    pub db: PathBuf,
    pub style: Style,
    /// Writes per second, on a fixed schedule: write `k` is due at `start + k / rate`.
    pub rate: f64,
    /// Stop scheduling writes after this long; `None` runs until `stop` is set.
    pub duration: Option<Duration>,
    /// Share of written rows that are error rows (Apantli only; BobaMixer has no error column).
    pub failed_share: f64,
    /// Approximate `request_data` size of Apantli rows.
    pub payload_bytes: usize,
    /// Seed for row contents (models, tokens, texts); timestamps come from the clock.
    pub seed: u64,
    /// Created once the first write has committed, so callers can wait on it instead of sleeping.
    pub ready_file: Option<PathBuf>,
    /// Receives the key of every committed row, one per line, written atomically at the end.
    pub committed_file: Option<PathBuf>,
}

impl SimOptions {
    /// Options for `style` writes to `db` at `rate` per second, until stopped, without error rows.
    pub fn new(db: impl Into<PathBuf>, style: Style, rate: f64) -> Self {
        Self {
            db: db.into(),
            style,
            rate,
            duration: None,
            failed_share: 0.0,
            payload_bytes: 1024,
            seed: 1,
            ready_file: None,
            committed_file: None,
        }
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0,
            "rate {} is not a number of writes per second between 0 (exclusive) and 100000",
            self.rate
        );
        ensure!(
            (0.0..=1.0).contains(&self.failed_share),
            "failed share {} is not a share between 0.0 and 1.0",
            self.failed_share
        );
        Ok(())
    }
}

/// The key of a committed row: Apantli's integer `id`, BobaMixer's text `id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RowKey {
    Id(i64),
    Text(String),
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Text(id) => f.write_str(id),
        }
    }
}

/// Time from opening the connection to closing it, over all attempted writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub max: f64,
    pub p99: f64,
    pub p50: f64,
}

/// What the simulated gateway experienced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub style: Style,
    /// Writes attempted; always `committed + failed`.
    pub attempted: u64,
    pub committed: u64,
    /// Rows the real gateway would have lost.
    pub failed: u64,
    /// Failure messages (e.g. `database is locked`) and how often each occurred.
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: LatencyMs,
    /// First committed key (Apantli: the lowest id).
    pub first_id: Option<RowKey>,
    /// Last committed key (Apantli: the highest id).
    pub last_committed_id: Option<RowKey>,
    /// Where the committed keys were written, if asked to.
    pub committed_ids_file: Option<PathBuf>,
    /// Seconds from the first scheduled write until the last write finished.
    pub elapsed_s: f64,
}

/// One finished write.
pub(super) struct Outcome {
    pub(super) latency: Duration,
    pub(super) result: Result<RowKey, String>,
}

/// Runs the simulated gateway until `opts.duration` has elapsed or `stop` is set, then waits for
/// writes still in flight and reports.
pub fn run(opts: &SimOptions, stop: Arc<AtomicBool>) -> anyhow::Result<SimReport> {
    opts.validate()?;
    ensure!(
        opts.style != Style::Litellm,
        "LiteLLM writes to PostgreSQL: give its URL with --postgres instead of --db"
    );
    ensure_schema(&opts.db, opts.style)?;
    let mut source = RowSource::new(opts);
    let (tx, rx) = mpsc::channel::<Outcome>();
    let mut tally = Tally::default();
    let mut ready = opts.ready_file.as_deref();
    let mut dispatched = 0_u64;
    let mut handles = Vec::new();
    let start = Instant::now();
    let end = opts.duration.map(|d| start + d);

    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + Duration::from_secs_f64(dispatched as f64 / opts.rate);
        if end.is_some_and(|end| due >= end) {
            break;
        }
        let now = Instant::now();
        if now < due {
            match rx.recv_timeout((due - now).min(STOP_POLL)) {
                Ok(outcome) => tally.record(outcome, &mut ready)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("run holds a sender"),
            }
            continue;
        }
        match opts.style {
            Style::Apantli => {
                while dispatched - tally.attempted >= MAX_IN_FLIGHT {
                    let outcome = rx.recv().expect("run holds a sender");
                    tally.record(outcome, &mut ready)?;
                }
                let row = source.apantli_row();
                let (db, tx) = (opts.db.clone(), tx.clone());
                handles.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
                handles.push(std::thread::spawn(move || {
                    let began = Instant::now();
                    let result = write_apantli(&db, &row).map_err(|e| e.to_string());
                    // The receiver only goes away when run fails; the outcome no longer matters then.
                    let _ = tx.send(Outcome {
                        latency: began.elapsed(),
                        result,
                    });
                }));
            }
            Style::Litellm => unreachable!("refused above"),
            Style::Bobamixer => {
                let (session, record) = source.bobamixer_rows();
                let began = Instant::now();
                let result =
                    write_bobamixer(&opts.db, session.as_ref(), &record).map_err(|e| e.to_string());
                tally.record(
                    Outcome {
                        latency: began.elapsed(),
                        result,
                    },
                    &mut ready,
                )?;
            }
        }
        dispatched += 1;
    }

    drop(tx);
    for outcome in rx {
        tally.record(outcome, &mut ready)?;
    }
    for handle in handles {
        if handle.join().is_err() {
            bail!("an Apantli writer thread panicked; the report would be incomplete");
        }
    }
    let elapsed = start.elapsed();
    tally.write_committed(opts)?;
    Ok(tally.into_report(opts, elapsed))
}

/// Creates the style's tables when the database does not have them yet, as the gateway does
/// at startup.
fn ensure_schema(db: &Path, style: Style) -> anyhow::Result<()> {
    let (table, schema) = match style {
        Style::Apantli => ("requests", APANTLI_SCHEMA),
        Style::Bobamixer => ("usage_records", BOBAMIXER_SCHEMA),
        Style::Litellm => unreachable!("run refuses LiteLLM on SQLite"),
    };
    let conn = Connection::open(db)
        .with_context(|| format!("opening gateway database {}", db.display()))?;
    conn.busy_timeout(APANTLI_BUSY_TIMEOUT)?;
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .with_context(|| format!("reading the schema of {}", db.display()))?;
    if !exists {
        conn.execute_batch(schema)
            .with_context(|| format!("creating the {style:?} schema in {}", db.display()))?;
    }
    Ok(())
}

fn write_apantli(db: &Path, row: &ApantliRow) -> rusqlite::Result<RowKey> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(APANTLI_BUSY_TIMEOUT)?;
    let id = row.insert(&mut conn.prepare(APANTLI_INSERT)?)?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(RowKey::Id(id))
}

fn write_bobamixer(
    db: &Path,
    session: Option<&SessionRow>,
    record: &UsageRecord,
) -> rusqlite::Result<RowKey> {
    let conn = Connection::open(db)?;
    // rusqlite waits 5 s by default; the sqlite3 CLI BobaMixer runs does not wait at all.
    conn.busy_timeout(Duration::ZERO)?;
    // The sqlite3 CLI leaves foreign keys off; the bundled SQLite turns them on by default.
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    if let Some(session) = session {
        session.insert(&mut conn.prepare(BOBA_INSERT_SESSION)?)?;
    }
    record.insert(&mut conn.prepare(BOBA_INSERT_USAGE)?)?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(RowKey::Text(record.id.clone()))
}

/// Produces the next row to write, with realistic contents and the current time.
struct RowSource {
    rng: SampleRng,
    maker: ApantliRowMaker,
    failed_share: f64,
    /// The BobaMixer session records go to, and how many more records it gets.
    session_id: String,
    session_left: u32,
    last_nanos: i64,
}

impl RowSource {
    fn new(opts: &SimOptions) -> Self {
        let mut rng = SampleRng::seed_from_u64(opts.seed);
        let maker = ApantliRowMaker::new(&mut rng, opts.payload_bytes);
        Self {
            rng,
            maker,
            failed_share: opts.failed_share,
            session_id: String::new(),
            session_left: 0,
            last_nanos: 0,
        }
    }

    fn apantli_row(&mut self) -> ApantliRow {
        let kind = RowKind::draw(&mut self.rng, self.failed_share, 0.0);
        self.maker
            .row(&mut self.rng, Utc::now(), Spelling::Zulu, kind)
    }

    /// The next usage record, and a new session to insert first when one starts.
    fn bobamixer_rows(&mut self) -> (Option<SessionRow>, UsageRecord) {
        let now = Utc::now();
        let session = (self.session_left == 0).then(|| {
            let session = SessionRow::open(&mut self.rng, now.timestamp());
            self.session_id = session.id.clone();
            self.session_left = self.rng.random_range(1..=20);
            session
        });
        self.session_left -= 1;
        // 'rec_<unixnano>', kept strictly increasing so two writes in one clock tick stay distinct.
        let nanos = now
            .timestamp_nanos_opt()
            .unwrap_or(i64::MAX)
            .max(self.last_nanos + 1);
        self.last_nanos = nanos;
        let record = UsageRecord::new(
            &mut self.rng,
            format!("rec_{nanos}"),
            &self.session_id,
            now.timestamp(),
            false,
        );
        (session, record)
    }
}

#[derive(Default)]
pub(super) struct Tally {
    attempted: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
    pub(super) committed: Vec<RowKey>,
}

impl Tally {
    /// Counts one finished write; creates the ready file (once) when the first one committed.
    pub(super) fn record(
        &mut self,
        outcome: Outcome,
        ready: &mut Option<&Path>,
    ) -> anyhow::Result<()> {
        self.attempted += 1;
        self.latencies_ms
            .push(outcome.latency.as_secs_f64() * 1000.0);
        match outcome.result {
            Ok(key) => {
                self.committed.push(key);
                if let Some(path) = ready.take() {
                    fs::write(path, b"ready\n")
                        .with_context(|| format!("creating the ready file {}", path.display()))?;
                }
            }
            Err(message) => {
                self.failed += 1;
                *self.errors.entry(message).or_default() += 1;
            }
        }
        Ok(())
    }

    /// Writes the committed keys to `opts.committed_file`, when asked to.
    pub(super) fn write_committed(&self, opts: &SimOptions) -> anyhow::Result<()> {
        if let Some(path) = &opts.committed_file {
            let mut text = String::with_capacity(self.committed.len() * 12);
            for key in &self.committed {
                text.push_str(&key.to_string());
                text.push('\n');
            }
            crate::fsx::write_atomic(path, text.as_bytes())?;
        }
        Ok(())
    }

    pub(super) fn into_report(mut self, opts: &SimOptions, elapsed: Duration) -> SimReport {
        self.latencies_ms.sort_by(f64::total_cmp);
        let (first_id, last_committed_id) = match opts.style {
            // Concurrent writers commit out of schedule order; ids tell the true order.
            Style::Apantli | Style::Litellm => (
                self.committed.iter().min().cloned(),
                self.committed.iter().max().cloned(),
            ),
            Style::Bobamixer => (
                self.committed.first().cloned(),
                self.committed.last().cloned(),
            ),
        };
        SimReport {
            style: opts.style,
            attempted: self.attempted,
            committed: self.committed.len() as u64,
            failed: self.failed,
            errors: self.errors,
            latency_ms: LatencyMs {
                max: self.latencies_ms.last().copied().unwrap_or(0.0),
                p99: percentile(&self.latencies_ms, 0.99),
                p50: percentile(&self.latencies_ms, 0.50),
            },
            first_id,
            last_committed_id,
            committed_ids_file: opts.committed_file.clone(),
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Parses a duration such as `30s`, `500ms`, `1.5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!(
            "duration {text:?} needs a number and one of the units ms, s, m, h (e.g. 30s, 500ms)"
        ),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .with_context(|| format!("duration {text:?} does not start with a number (e.g. 30s)"))?;
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .with_context(|| format!("duration {text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let cases = [
            ("30s", Some(Duration::from_secs(30))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            (" 0s ", Some(Duration::ZERO)),
            ("30", None),
            ("s", None),
            ("thirty s", None),
            ("1.2.3s", None),
            ("5d", None),
            ("-1s", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "parsing {text:?}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_accepted() {
        let message = parse_duration("30").unwrap_err().to_string();
        assert!(message.contains("ms, s, m, h"), "{message}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn rejects_bad_options() {
        for (rate, share) in [(0.0, 0.0), (-5.0, 0.0), (f64::NAN, 0.0), (10.0, 1.5)] {
            let mut opts = SimOptions::new("unused.db", Style::Apantli, rate);
            opts.failed_share = share;
            assert!(opts.validate().is_err(), "rate {rate}, share {share}");
        }
    }
}
