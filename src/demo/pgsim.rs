//! A stand-in LiteLLM proxy writing spend logs to PostgreSQL the way the proxy does: requests
//! queue in memory, a flusher writes the queue in batches over a small connection pool.
//!
//! The proxy sets no `lock_timeout`: a batch that meets a lock of ours waits for it, and a
//! batch that fails (a statement error, a lost connection) loses its rows. Each row's latency
//! is its batch's time from taking a connection to the commit; a failed row is counted, never
//! retried, as in [`super::sim`], whose report this shares.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{NaiveDateTime, Utc};
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::sample::{SampleRng, WORDS, random_alnum, random_hex};
use super::sim::{Outcome, RowKey, SimOptions, SimReport, Style, Tally};

/// LiteLLM's spend-log tables, as its Prisma schema creates them.
pub const LITELLM_SCHEMA: &str = include_str!("../../tests/fixtures/schemas/litellm.sql");

/// Rows per INSERT statement: 23 parameters a row stays under PostgreSQL's 65535.
const ROWS_PER_STATEMENT: usize = 1000;

/// How often the producer looks at the stop flag while idle.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What only the PostgreSQL simulator needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSimOptions {
    /// `postgres://…` URL of the gateway database (plain connections; the simulator does no TLS).
    pub url: String,
    /// Connections in the pool, each writing one batch at a time.
    pub pool: usize,
    /// How often the queue is written out.
    pub batch_interval: Duration,
}

impl PgSimOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool: 3,
            batch_interval: Duration::from_secs(1),
        }
    }
}

/// One spend-log row, as the proxy builds it.
struct SpendRow {
    request_id: String,
    call_type: &'static str,
    api_key: String,
    spend: f64,
    prompt_tokens: i32,
    completion_tokens: i32,
    start: NaiveDateTime,
    end: NaiveDateTime,
    model: &'static str,
    provider: &'static str,
    user: String,
    metadata: serde_json::Value,
    messages: serde_json::Value,
    response: serde_json::Value,
    proxy_server_request: serde_json::Value,
    failed: bool,
    session_id: String,
}

const MODELS: &[(&str, &str, f64, f64)] = &[
    ("gpt-4o", "openai", 2.5e-6, 1e-5),
    ("gpt-4.1-mini", "openai", 4e-7, 1.6e-6),
    ("claude-sonnet-4-5", "anthropic", 3e-6, 1.5e-5),
    ("gemini-2.5-pro", "vertex_ai", 1.25e-6, 1e-5),
];

/// Makes rows: keys `req-<seed>-<n>`, payloads of about `payload_bytes` (half in `metadata`,
/// which is what makes LiteLLM's rows big), a provider key inside the logged request's headers.
pub struct SpendRowMaker {
    rng: SampleRng,
    seed: u64,
    next: u64,
    payload_bytes: usize,
    failed_share: f64,
}

impl SpendRowMaker {
    pub fn new(seed: u64, payload_bytes: usize, failed_share: f64) -> Self {
        Self {
            rng: SampleRng::seed_from_u64(seed),
            seed,
            next: 0,
            payload_bytes,
            failed_share,
        }
    }

    fn text(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes + 16);
        while s.len() < bytes {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[self.rng.random_range(0..WORDS.len())]);
        }
        s
    }

    fn row(&mut self, start: NaiveDateTime) -> SpendRow {
        self.next += 1;
        let (model, provider, input_price, output_price) =
            MODELS[self.rng.random_range(0..MODELS.len())];
        let failed = self.rng.random_bool(self.failed_share);
        let prompt_tokens = self.rng.random_range(10..4000);
        let completion_tokens = if failed {
            0
        } else {
            self.rng.random_range(1..1500)
        };
        let spend = if failed {
            0.0
        } else {
            f64::from(prompt_tokens) * input_price + f64::from(completion_tokens) * output_price
        };
        let duration_ms = self.rng.random_range(150..4000);
        let prompt = self.text(self.payload_bytes / 4);
        let answer = self.text(self.payload_bytes / 4);
        let trace = self.text(self.payload_bytes / 2);
        let provider_key = format!("sk-sim-{}", random_alnum(&mut self.rng, 40));
        SpendRow {
            request_id: format!("req-{}-{:010}", self.seed, self.next),
            call_type: "acompletion",
            api_key: random_hex(&mut self.rng, 64),
            spend,
            prompt_tokens,
            completion_tokens,
            start,
            end: start + chrono::Duration::milliseconds(duration_ms),
            model,
            provider,
            user: format!("user-{}", self.rng.random_range(1..20)),
            metadata: json!({
                "user_api_key_alias": "team-key",
                "requester_metadata": {"trace": trace},
                "model_map_information": {"model_map_key": model},
            }),
            messages: json!([{"role": "user", "content": prompt}]),
            response: if failed {
                json!({})
            } else {
                json!({"choices": [{"message": {"role": "assistant", "content": answer}}]})
            },
            proxy_server_request: json!({
                "headers": {"authorization": format!("Bearer {provider_key}")},
                "body": {"model": model},
            }),
            failed,
            session_id: format!("sess-{}", self.rng.random_range(1..200)),
        }
    }
}

const INSERT_COLUMNS: &str = "request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens, \"startTime\", \"endTime\", request_duration_ms, model, model_group, custom_llm_provider, api_base, \"user\", metadata, messages, response, status, proxy_server_request, session_id, end_user, team_id";
const INSERT_WIDTH: usize = 23;

/// Writes `rows` as LiteLLM does: one multi-row INSERT into the spend logs (and one into the
/// error logs for failed requests) in one transaction.
fn write_batch(client: &mut postgres::Client, rows: &[SpendRow]) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = format!("INSERT INTO \"LiteLLM_SpendLogs\" ({INSERT_COLUMNS}) VALUES ");
        let mut params: Vec<Box<dyn postgres::types::ToSql + Sync>> =
            Vec::with_capacity(chunk.len() * INSERT_WIDTH);
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..INSERT_WIDTH {
                if c > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", i * INSERT_WIDTH + c + 1));
            }
            sql.push(')');
            let duration_ms = (r.end - r.start).num_milliseconds() as i32;
            params.push(Box::new(r.request_id.clone()));
            params.push(Box::new(r.call_type));
            params.push(Box::new(r.api_key.clone()));
            params.push(Box::new(r.spend));
            params.push(Box::new(r.prompt_tokens + r.completion_tokens));
            params.push(Box::new(r.prompt_tokens));
            params.push(Box::new(r.completion_tokens));
            params.push(Box::new(r.start));
            params.push(Box::new(r.end));
            params.push(Box::new(duration_ms));
            params.push(Box::new(r.model));
            params.push(Box::new(r.model));
            params.push(Box::new(r.provider));
            params.push(Box::new("https://api.example.com/v1"));
            params.push(Box::new(r.user.clone()));
            params.push(Box::new(r.metadata.clone()));
            params.push(Box::new(r.messages.clone()));
            params.push(Box::new(r.response.clone()));
            params.push(Box::new(if r.failed { "failure" } else { "success" }));
            params.push(Box::new(r.proxy_server_request.clone()));
            params.push(Box::new(r.session_id.clone()));
            params.push(Box::new(r.user.clone()));
            params.push(Box::new("team-1"));
        }
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref()).collect();
        tx.execute(&sql, &refs)?;
    }
    for r in rows.iter().filter(|r| r.failed) {
        tx.execute(
            "INSERT INTO \"LiteLLM_ErrorLogs\" (request_id, \"startTime\", \"endTime\", api_base, model_group, litellm_model_name, exception_type, exception_string, status_code) VALUES ($1, $2, $3, '', $4, $4, 'RateLimitError', 'rate limited', '429')",
            &[&r.request_id, &r.start, &r.end, &r.model],
        )?;
    }
    tx.commit()
}

/// Creates LiteLLM's tables when the database does not have them yet (the proxy's migrations).
pub fn ensure_schema(client: &mut postgres::Client) -> anyhow::Result<()> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('\"LiteLLM_SpendLogs\"') IS NOT NULL",
            &[],
        )
        .context("looking for the LiteLLM_SpendLogs table")?
        .get(0);
    if !exists {
        client
            .batch_execute(LITELLM_SCHEMA)
            .context("creating LiteLLM's spend-log tables")?;
    }
    Ok(())
}

fn open(url: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(url, postgres::NoTls)
}

/// Runs the simulated proxy until `opts.duration` has elapsed or `stop` is set, writes what is
/// still queued, and reports.
pub fn run(
    opts: &SimOptions,
    pg: &PgSimOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SimReport> {
    opts.validate()?;
    ensure!(
        opts.style == Style::Litellm,
        "the PostgreSQL simulator writes LiteLLM's rows only"
    );
    ensure!(
        (1..=64).contains(&pg.pool),
        "pool {} is not between 1 and 64",
        pg.pool
    );
    let mut first =
        open(&pg.url).with_context(|| "connecting to the --postgres database".to_string())?;
    ensure_schema(&mut first)?;
    let mut pool = vec![first];
    for _ in 1..pg.pool {
        pool.push(open(&pg.url).context("opening the pool's connections")?);
    }

    let queue: Arc<Mutex<VecDeque<SpendRow>>> = Arc::default();
    let (outcomes_tx, outcomes) = mpsc::channel::<Outcome>();
    let (batches_tx, batches_rx) = mpsc::channel::<Vec<SpendRow>>();
    let batches_rx = Arc::new(Mutex::new(batches_rx));
    let mut workers = Vec::new();
    for client in pool {
        let (rx, tx, url) = (Arc::clone(&batches_rx), outcomes_tx.clone(), pg.url.clone());
        workers.push(std::thread::spawn(move || worker(client, &url, &rx, &tx)));
    }
    drop(outcomes_tx);

    let producing = Arc::new(AtomicBool::new(true));
    let flusher = {
        let (queue, producing, interval) = (
            Arc::clone(&queue),
            Arc::clone(&producing),
            pg.batch_interval,
        );
        std::thread::spawn(move || {
            loop {
                let last = !producing.load(Ordering::Relaxed);
                let batch: Vec<SpendRow> = queue.lock().unwrap().drain(..).collect();
                if !batch.is_empty() && batches_tx.send(batch).is_err() {
                    return;
                }
                if last {
                    return;
                }
                std::thread::sleep(interval);
            }
        })
    };

    let mut maker = SpendRowMaker::new(opts.seed, opts.payload_bytes, opts.failed_share);
    let mut tally = Tally::default();
    let mut ready = opts.ready_file.as_deref();
    let start = Instant::now();
    let end = opts.duration.map(|d| start + d);
    let mut made = 0_u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + Duration::from_secs_f64(made as f64 / opts.rate);
        if end.is_some_and(|end| due >= end) {
            break;
        }
        let now = Instant::now();
        if now < due {
            match outcomes.recv_timeout((due - now).min(STOP_POLL)) {
                Ok(outcome) => tally.record(outcome, &mut ready)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!(
                        "every writer of the pool stopped; the report would be incomplete"
                    )
                }
            }
            continue;
        }
        let row = maker.row(Utc::now().naive_utc());
        queue.lock().unwrap().push_back(row);
        made += 1;
    }
    producing.store(false, Ordering::Relaxed);
    flusher
        .join()
        .map_err(|_| anyhow::anyhow!("the flusher panicked"))?;
    for outcome in outcomes {
        tally.record(outcome, &mut ready)?;
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a pool writer panicked"))?;
    }
    let elapsed = start.elapsed();
    tally.write_committed(opts)?;
    Ok(tally.into_report(opts, elapsed))
}

/// One connection of the pool: writes batches until the flusher is done; reconnects after a
/// lost connection, as the proxy's pool does, so a server restart loses only the batches that
/// met it.
fn worker(
    client: postgres::Client,
    url: &str,
    batches: &Mutex<mpsc::Receiver<Vec<SpendRow>>>,
    outcomes: &mpsc::Sender<Outcome>,
) {
    let mut client = Some(client);
    loop {
        let batch = match batches.lock().unwrap().recv() {
            Ok(b) => b,
            Err(_) => return,
        };
        let began = Instant::now();
        let result = match client.as_mut().filter(|c| !c.is_closed()) {
            Some(c) => write_batch(c, &batch),
            None => open(url).and_then(|mut c| {
                let written = write_batch(&mut c, &batch);
                client = Some(c);
                written
            }),
        };
        let latency = began.elapsed();
        let result = result.map_err(|e| {
            let message = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            if e.is_closed() || e.as_db_error().is_none() {
                client = None;
            }
            message
        });
        for row in batch {
            let outcome = Outcome {
                latency,
                result: result
                    .clone()
                    .map(|()| RowKey::Text(row.request_id.clone())),
            };
            if outcomes.send(outcome).is_err() {
                return;
            }
        }
    }
}
