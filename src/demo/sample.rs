//! Realistic sample gateway databases: Apantli and BobaMixer files filled with rows that look real.
//!
//! Every caretaker test and benchmark starts from these files, so they carry the quirks that real
//! files have and that caretaker must cope with: three timestamp spellings in one Apantli column,
//! provider API keys in plain text inside `request_data`, error rows without a response, cost 0.0
//! for unknown prices, cache token counts in the usage JSON, BobaMixer's split and rounded costs,
//! text ids of mixed shapes and its WAL journal.
//!
//! Everything is derived from [`SampleOptions::seed`] and [`SampleOptions::now`]: the same options
//! give a byte-for-byte identical set of rows, and nothing reads the clock.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, TimeDelta, TimeZone, Timelike, Utc};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rusqlite::{Connection, params};
use serde::Serialize;

// The gateways' schemas have one copy, the test fixtures that every test builds its databases
// from: the samples, the demo and the tests cannot drift apart.
/// Apantli's schema, as Apantli 1.0 creates it.
pub const APANTLI_SCHEMA: &str = include_str!("../../tests/fixtures/schemas/apantli.sql");
/// BobaMixer's schema version 3, including its `journal_mode = WAL` and `user_version = 3` pragmas.
pub const BOBAMIXER_SCHEMA: &str = include_str!("../../tests/fixtures/schemas/bobamixer.sql");

/// The generator behind every sample; portable, so a seed means the same rows on every platform.
pub(crate) type SampleRng = Xoshiro256PlusPlus;

/// Largest accepted `payload_bytes`: far above any real request, low enough to catch a unit mix-up.
const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// What to put into a sample database.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Number of request rows (Apantli `requests`, BobaMixer `usage_records`).
    pub rows: u64,
    /// The rows are spread evenly (with jitter) over this many days ending at `now`.
    pub days: u32,
    /// The newest possible row time; passed in so samples are reproducible.
    pub now: DateTime<Utc>,
    /// Seed of the generator: the same seed and options give the same rows.
    pub seed: u64,
    /// Approximate size of Apantli's `request_data` JSON per row (the messages are padded to it).
    pub payload_bytes: usize,
    /// Share of Apantli rows that are error rows (`error` set, cost 0, no `response_data`).
    /// BobaMixer records no errors, so its samples ignore this.
    pub error_share: f64,
    /// Share of successful rows whose price was unknown when they were written (cost 0.0).
    pub zero_cost_share: f64,
}

impl Default for SampleOptions {
    /// 10,000 rows over 30 days of 1 KB requests, ending at a fixed instant (no clock read).
    fn default() -> Self {
        Self {
            rows: 10_000,
            days: 30,
            now: Utc
                .with_ymd_and_hms(2025, 11, 1, 12, 0, 0)
                .single()
                .expect("a fixed, valid UTC instant"),
            seed: 42,
            payload_bytes: 1024,
            error_share: 0.03,
            zero_cost_share: 0.05,
        }
    }
}

impl SampleOptions {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.rows == 0 || self.days > 0,
            "sample options: days must be at least 1 to spread {} rows over",
            self.rows
        );
        ensure!(
            self.payload_bytes <= MAX_PAYLOAD_BYTES,
            "sample options: payload_bytes {} is above the accepted maximum of {MAX_PAYLOAD_BYTES}",
            self.payload_bytes
        );
        for (name, share) in [
            ("error_share", self.error_share),
            ("zero_cost_share", self.zero_cost_share),
        ] {
            ensure!(
                (0.0..=1.0).contains(&share),
                "sample options: {name} {share} is not a share between 0.0 and 1.0"
            );
        }
        Ok(())
    }

    fn start(&self) -> DateTime<Utc> {
        self.now - TimeDelta::days(i64::from(self.days))
    }
}

/// What a sample database ended up holding, for tests to compare against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleSummary {
    /// Request rows written (Apantli `requests`, BobaMixer `usage_records`).
    pub rows: u64,
    /// Apantli error rows; always 0 for BobaMixer.
    pub error_rows: u64,
    /// Successful rows with cost 0.0 because their price was unknown.
    pub zero_cost_rows: u64,
    /// BobaMixer `sessions` rows; always 0 for Apantli.
    pub sessions: u64,
    /// Time of the oldest and newest row, `None` without rows.
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Sum of all row costs in USD (BobaMixer: `input_cost + output_cost`).
    pub total_cost_usd: f64,
}

impl SampleSummary {
    fn empty() -> Self {
        Self {
            rows: 0,
            error_rows: 0,
            zero_cost_rows: 0,
            sessions: 0,
            first: None,
            last: None,
            total_cost_usd: 0.0,
        }
    }

    fn count(&mut self, at: DateTime<Utc>, cost: f64) {
        self.rows += 1;
        self.first.get_or_insert(at);
        self.last = Some(at);
        self.total_cost_usd += cost;
    }
}

/// Creates a new Apantli `requests.db` at `path` holding `opts.rows` realistic request rows.
///
/// The file is built beside `path` and renamed into place when complete, so a crash leaves either
/// no file or a whole one. `path` must not exist yet.
pub fn create_apantli(path: &Path, opts: &SampleOptions) -> anyhow::Result<SampleSummary> {
    opts.validate()?;
    build_then_publish(path, |conn| fill_apantli(conn, opts))
        .with_context(|| format!("creating sample Apantli database {}", path.display()))
}

/// Creates a new BobaMixer `usage.db` at `path` (WAL, `user_version` 3) holding `opts.rows`
/// usage records grouped into sessions.
///
/// Built beside `path` and renamed into place when complete; `path` must not exist yet.
pub fn create_bobamixer(path: &Path, opts: &SampleOptions) -> anyhow::Result<SampleSummary> {
    opts.validate()?;
    build_then_publish(path, |conn| fill_bobamixer(conn, opts))
        .with_context(|| format!("creating sample BobaMixer database {}", path.display()))
}

/// Runs `fill` on a fresh database next to `path`, then moves it to `path` durably.
fn build_then_publish(
    path: &Path,
    fill: impl FnOnce(&mut Connection) -> anyhow::Result<SampleSummary>,
) -> anyhow::Result<SampleSummary> {
    if path.exists() {
        bail!(
            "{} already exists; remove it or choose a new path",
            path.display()
        );
    }
    let tmp = temp_path_beside(path)?;
    let result = (|| {
        let mut conn = crate::sqlite::open_or_create(&tmp)
            .with_context(|| format!("opening the temporary database {}", tmp.display()))?;
        // The build is one throwaway transaction on a private file: durability comes from the
        // fsync before the rename, not from SQLite's per-commit syncs.
        // BobaMixer declares foreign keys but never enables them, and its sessions are written
        // when they close, after their records; bundled SQLite enables them by default.
        conn.execute_batch(
            "PRAGMA synchronous = OFF; PRAGMA cache_size = -65536; PRAGMA foreign_keys = OFF;",
        )?;
        let summary = fill(&mut conn)?;
        // Closing checkpoints and removes a WAL file, so the single renamed file is complete.
        conn.close()
            .map_err(|(_, e)| e)
            .with_context(|| format!("closing {}", tmp.display()))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        crate::fsx::sync_parent(path)?;
        Ok(summary)
    })();
    if result.is_err() {
        for leftover in [
            tmp.clone(),
            crate::sqlite::companion(&tmp, crate::sqlite::WAL),
            crate::sqlite::companion(&tmp, crate::sqlite::SHM),
        ] {
            let _ = fs::remove_file(leftover);
        }
    }
    result
}

fn temp_path_beside(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Turns the journal off for the bulk load: the file is private until renamed and deleted on
/// failure, so a rollback journal (or a WAL, which would write every page twice) buys nothing.
/// Only WAL is stored in the file, so a rollback-journal database reopens in its default mode.
fn bulk_load_mode(conn: &Connection) -> anyhow::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
    ensure!(
        mode == "off",
        "turning the journal off for the bulk load left {mode:?}"
    );
    Ok(())
}

/// Row `i` of `rows`, spread evenly over `[start, start + span)` with jitter, never decreasing:
/// gateways append in time order, and ids must grow with time as they do in real files.
fn row_time(
    start: DateTime<Utc>,
    span: TimeDelta,
    i: u64,
    rows: u64,
    rng: &mut SampleRng,
) -> DateTime<Utc> {
    let span_us = span.num_microseconds().unwrap_or(i64::MAX) as f64;
    let position = (i as f64 + rng.random::<f64>()) / rows as f64;
    let mut t = start + TimeDelta::microseconds((span_us * position) as i64);
    // Python's isoformat drops the fraction when it is zero; make that case common enough to test.
    if rng.random_bool(0.02) {
        t = t.with_nanosecond(0).expect("0 ns is always valid");
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Apantli
// ---------------------------------------------------------------------------------------------

/// The three ways Apantli has written `timestamp` over its versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spelling {
    /// Older rows: naive UTC, `2025-10-20T03:23:08.830120`.
    Naive,
    /// A short window: `2025-10-31T20:01:02.123456+00:00`.
    Offset,
    /// Current: `2025-11-01T03:23:08.830120Z`.
    Zulu,
}

impl Spelling {
    /// Which spelling a row written at `position` (0 = oldest, 1 = newest) of a sample carries.
    fn at(position: f64) -> Self {
        if position < 0.45 {
            Self::Naive
        } else if position < 0.55 {
            Self::Offset
        } else {
            Self::Zulu
        }
    }
}

/// Formats `t` as Python's `isoformat()` does: microseconds only when non-zero.
pub(crate) fn apantli_timestamp(t: DateTime<Utc>, spelling: Spelling) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = t.timestamp_subsec_micros();
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    match spelling {
        Spelling::Naive => {}
        Spelling::Offset => s.push_str("+00:00"),
        Spelling::Zulu => s.push('Z'),
    }
    s
}

/// A model as the gateway's config routes it; prices are LiteLLM's list prices in USD per token.
struct ApantliModel {
    alias: &'static str,
    provider: &'static str,
    provider_model: &'static str,
    response_model: &'static str,
    input_per_token: f64,
    output_per_token: f64,
    weight: u32,
}

/// Client aliases differ from the provider name for some models (`sonnet`), as in real configs.
const APANTLI_MODELS: &[ApantliModel] = &[
    ApantliModel {
        alias: "gpt-4.1-mini",
        provider: "openai",
        provider_model: "openai/gpt-4.1-mini",
        response_model: "gpt-4.1-mini-2025-04-14",
        input_per_token: 4e-7,
        output_per_token: 1.6e-6,
        weight: 35,
    },
    ApantliModel {
        alias: "gpt-4o",
        provider: "openai",
        provider_model: "openai/gpt-4o",
        response_model: "gpt-4o-2024-08-06",
        input_per_token: 2.5e-6,
        output_per_token: 1e-5,
        weight: 20,
    },
    ApantliModel {
        alias: "sonnet",
        provider: "anthropic",
        provider_model: "anthropic/claude-sonnet-4-5",
        response_model: "claude-sonnet-4-5-20250929",
        input_per_token: 3e-6,
        output_per_token: 1.5e-5,
        weight: 20,
    },
    ApantliModel {
        alias: "claude-haiku-4-5",
        provider: "anthropic",
        provider_model: "anthropic/claude-haiku-4-5",
        response_model: "claude-haiku-4-5-20251001",
        input_per_token: 1e-6,
        output_per_token: 5e-6,
        weight: 10,
    },
    ApantliModel {
        alias: "gemini-2.5-pro",
        provider: "gemini",
        provider_model: "gemini/gemini-2.5-pro",
        response_model: "gemini-2.5-pro",
        input_per_token: 1.25e-6,
        output_per_token: 1e-5,
        weight: 15,
    },
];

const ERROR_KINDS: &[(&str, &str)] = &[
    (
        "RateLimitError",
        "Rate limit reached for requests; please retry after 20s",
    ),
    (
        "RateLimitError",
        "tokens per min (TPM): Limit 30000, Used 29812, Requested 1460",
    ),
    ("APIConnectionError", "Connection reset by peer"),
    ("Timeout", "Request timed out after 600.0 seconds"),
    ("InternalServerError", "Overloaded"),
    (
        "BadRequestError",
        "context_length_exceeded: the request exceeds the model's context window",
    ),
    (
        "ServiceUnavailableError",
        "The server is temporarily unable to handle the request",
    ),
];

pub(crate) const WORDS: &[&str] = &[
    "the",
    "function",
    "returns",
    "a",
    "list",
    "of",
    "rows",
    "please",
    "explain",
    "why",
    "this",
    "query",
    "is",
    "slow",
    "and",
    "how",
    "to",
    "fix",
    "it",
    "with",
    "an",
    "index",
    "on",
    "column",
    "refactor",
    "module",
    "error",
    "handling",
    "test",
    "case",
    "should",
    "cover",
    "edge",
    "cases",
    "summarize",
    "document",
    "below",
    "in",
    "three",
    "bullet",
    "points",
    "write",
    "email",
    "to",
    "team",
    "about",
    "deployment",
    "schedule",
    "database",
    "backup",
    "retention",
    "policy",
];

/// Whether a generated row succeeded, failed, or succeeded at an unknown price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    Priced,
    UnknownPrice,
    Error,
}

impl RowKind {
    pub(crate) fn draw(rng: &mut SampleRng, error_share: f64, zero_cost_share: f64) -> Self {
        if rng.random_bool(error_share) {
            Self::Error
        } else if rng.random_bool(zero_cost_share) {
            Self::UnknownPrice
        } else {
            Self::Priced
        }
    }
}

/// One `requests` row, in column order.
pub(crate) struct ApantliRow {
    pub timestamp: String,
    pub model: &'static str,
    pub provider: &'static str,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost: f64,
    pub duration_ms: i64,
    pub request_data: String,
    pub response_data: Option<String>,
    pub error: Option<String>,
}

pub(crate) const APANTLI_INSERT: &str = "INSERT INTO requests (timestamp, model, provider, \
     prompt_tokens, completion_tokens, total_tokens, cost, duration_ms, request_data, \
     response_data, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

impl ApantliRow {
    pub(crate) fn insert(&self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<i64> {
        stmt.insert(params![
            self.timestamp,
            self.model,
            self.provider,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cost,
            self.duration_ms,
            self.request_data,
            self.response_data,
            self.error,
        ])
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct RequestData<'a> {
    model: &'static str,
    messages: [Message<'a>; 2],
    temperature: f64,
    max_tokens: u32,
    stream: bool,
    api_key: &'a str,
}

#[derive(Serialize)]
struct ResponseData<'a> {
    id: String,
    created: i64,
    model: &'static str,
    object: &'static str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    finish_reason: &'static str,
    index: u32,
    message: Message<'a>,
}

#[derive(Serialize)]
struct Usage {
    completion_tokens: i64,
    prompt_tokens: i64,
    total_tokens: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<i64>,
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: i64,
}

/// Python's `json.dumps` spacing (`", "` and `": "`), which is what Apantli stores; tools that
/// grep the column for `"api_key": "` must see the real spelling.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn python_json(value: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonJson);
    value
        .serialize(&mut ser)
        .expect("serializing plain structs to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

pub(crate) fn random_alnum(rng: &mut SampleRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

pub(crate) fn random_hex(rng: &mut SampleRng, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(len);
    s
}

/// Makes Apantli rows; holds what stays fixed across rows (API keys, filler text).
pub(crate) struct ApantliRowMaker {
    payload_bytes: usize,
    /// One key per provider, as a gateway configures one; the same key in every row.
    api_keys: [String; 3],
    /// ASCII words without quotes or escapes, sliced to pad messages to the payload size.
    filler: String,
    total_weight: u32,
}

impl ApantliRowMaker {
    pub(crate) fn new(rng: &mut SampleRng, payload_bytes: usize) -> Self {
        let api_keys = [
            format!("sk-proj-{}", random_alnum(rng, 48)),
            format!("sk-ant-api03-{}", random_alnum(rng, 40)),
            format!("AIzaSy{}", random_alnum(rng, 33)),
        ];
        let mut filler = String::with_capacity(payload_bytes + 17 * 1024);
        while filler.len() < payload_bytes + 16 * 1024 {
            filler.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            filler.push(if rng.random_bool(0.08) { '.' } else { ' ' });
        }
        Self {
            payload_bytes,
            api_keys,
            filler,
            total_weight: APANTLI_MODELS.iter().map(|m| m.weight).sum(),
        }
    }

    fn pick_model(&self, rng: &mut SampleRng) -> &'static ApantliModel {
        let mut n = rng.random_range(0..self.total_weight);
        for m in APANTLI_MODELS {
            if n < m.weight {
                return m;
            }
            n -= m.weight;
        }
        unreachable!("n is below the sum of the weights")
    }

    fn api_key(&self, provider: &str) -> &str {
        match provider {
            "openai" => &self.api_keys[0],
            "anthropic" => &self.api_keys[1],
            _ => &self.api_keys[2],
        }
    }

    fn text(&self, rng: &mut SampleRng, len: usize) -> &str {
        let start = rng.random_range(0..=self.filler.len() - len.min(self.filler.len()));
        &self.filler[start..start + len.min(self.filler.len() - start)]
    }

    /// A row written at `at` and spelled `spelling`.
    pub(crate) fn row(
        &self,
        rng: &mut SampleRng,
        at: DateTime<Utc>,
        spelling: Spelling,
        kind: RowKind,
    ) -> ApantliRow {
        let model = self.pick_model(rng);
        let max_tokens = [256, 1024, 2048, 4096][rng.random_range(0..4)];
        let request = RequestData {
            model: model.provider_model,
            messages: [
                Message {
                    role: "system",
                    content: "You are a helpful assistant.",
                },
                Message {
                    role: "user",
                    content: "",
                },
            ],
            temperature: [0.0, 0.2, 0.7, 1.0][rng.random_range(0..4)],
            max_tokens,
            stream: false,
            api_key: self.api_key(model.provider),
        };
        // Serialize once with an empty user message, then splice the padding into it: the filler
        // needs no JSON escaping, so the result is what serializing the padded request gives.
        let mut request_data = python_json(&request);
        const EMPTY_USER_CONTENT: &str = r#""content": ""}]"#;
        let at_content = request_data
            .find(EMPTY_USER_CONTENT)
            .expect("the user message is the last one and empty")
            + r#""content": ""#.len();
        let pad = self.payload_bytes.saturating_sub(request_data.len());
        request_data.insert_str(at_content, self.text(rng, pad));

        // About four bytes per token, as for English text.
        let prompt_tokens =
            (request_data.len() as f64 / 4.0 * rng.random_range(0.8..1.2)) as i64 + 8;
        let duration_ms =
            (rng.random_range(250.0_f64..3_000.0) * rng.random_range(1.0_f64..4.0)) as i64;
        let (model_name, provider) = (model.alias, model.provider);

        if kind == RowKind::Error {
            let (class, detail) = ERROR_KINDS[rng.random_range(0..ERROR_KINDS.len())];
            let exception = match provider {
                "openai" => "OpenAIException",
                "anthropic" => "AnthropicException",
                _ => "GeminiException",
            };
            return ApantliRow {
                timestamp: apantli_timestamp(at, spelling),
                model: model_name,
                provider,
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
                cost: 0.0,
                duration_ms,
                request_data,
                response_data: None,
                error: Some(format!("{class}: litellm.{class}: {exception} - {detail}")),
            };
        }

        let completion_tokens = rng.random_range(16..i64::from(max_tokens).min(1200));
        let total_tokens = prompt_tokens + completion_tokens;
        let mut usage = Usage {
            completion_tokens,
            prompt_tokens,
            total_tokens,
            prompt_tokens_details: None,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
        };
        match provider {
            "openai" if rng.random_bool(0.6) => {
                let cached = if rng.random_bool(0.5) {
                    prompt_tokens / 128 * 128
                } else {
                    0
                };
                usage.prompt_tokens_details = Some(PromptTokensDetails {
                    cached_tokens: cached,
                });
            }
            "anthropic" if rng.random_bool(0.5) => {
                let read = rng.random_range(0..=prompt_tokens);
                usage.cache_read_input_tokens = Some(read);
                usage.cache_creation_input_tokens =
                    Some(rng.random_range(0..=prompt_tokens - read));
                usage.prompt_tokens_details = Some(PromptTokensDetails {
                    cached_tokens: read,
                });
            }
            _ => {}
        }
        let content_len = usize::try_from(completion_tokens * 4).unwrap_or(0).min(512);
        let response = ResponseData {
            id: format!("chatcmpl-{}", random_alnum(rng, 29)),
            created: at.timestamp(),
            model: model.response_model,
            object: "chat.completion",
            choices: [Choice {
                finish_reason: "stop",
                index: 0,
                message: Message {
                    role: "assistant",
                    content: self.text(rng, content_len),
                },
            }],
            usage,
        };
        // List price without cache discounts: simple enough for a price recalculation to reproduce.
        let cost = match kind {
            RowKind::UnknownPrice => 0.0,
            _ => {
                prompt_tokens as f64 * model.input_per_token
                    + completion_tokens as f64 * model.output_per_token
            }
        };
        ApantliRow {
            timestamp: apantli_timestamp(at, spelling),
            model: model_name,
            provider,
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cost,
            duration_ms,
            request_data,
            response_data: Some(python_json(&response)),
            error: None,
        }
    }
}

fn fill_apantli(conn: &mut Connection, opts: &SampleOptions) -> anyhow::Result<SampleSummary> {
    conn.execute_batch(APANTLI_SCHEMA)
        .context("creating the Apantli schema")?;
    bulk_load_mode(conn)?;
    let mut rng = SampleRng::seed_from_u64(opts.seed);
    let maker = ApantliRowMaker::new(&mut rng, opts.payload_bytes);
    let (start, span) = (opts.start(), TimeDelta::days(i64::from(opts.days)));
    let mut summary = SampleSummary::empty();
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(APANTLI_INSERT)?;
        for i in 0..opts.rows {
            let at = row_time(start, span, i, opts.rows, &mut rng);
            let position = (at - start).as_seconds_f64() / span.as_seconds_f64();
            let kind = RowKind::draw(&mut rng, opts.error_share, opts.zero_cost_share);
            let row = maker.row(&mut rng, at, Spelling::at(position), kind);
            row.insert(&mut stmt)
                .with_context(|| format!("inserting request row {i}"))?;
            summary.count(at, row.cost);
            match kind {
                RowKind::Error => summary.error_rows += 1,
                RowKind::UnknownPrice => summary.zero_cost_rows += 1,
                RowKind::Priced => {}
            }
        }
    }
    tx.commit().context("committing the sample rows")?;
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// BobaMixer
// ---------------------------------------------------------------------------------------------

/// A model in BobaMixer's own price table (USD per 1K tokens, exact names) and the tool using it.
struct BobaModel {
    name: &'static str,
    tool: &'static str,
    input_per_1k: f64,
    output_per_1k: f64,
}

const BOBA_MODELS: &[BobaModel] = &[
    BobaModel {
        name: "claude-sonnet-4-5",
        tool: "claude",
        input_per_1k: 0.003,
        output_per_1k: 0.015,
    },
    BobaModel {
        name: "claude-haiku-4-5",
        tool: "claude",
        input_per_1k: 0.001,
        output_per_1k: 0.005,
    },
    BobaModel {
        name: "gpt-4o",
        tool: "codex",
        input_per_1k: 0.0025,
        output_per_1k: 0.01,
    },
    BobaModel {
        name: "gpt-4.1-mini",
        tool: "codex",
        input_per_1k: 0.0004,
        output_per_1k: 0.0016,
    },
    BobaModel {
        name: "gemini-2.5-pro",
        tool: "gemini",
        input_per_1k: 0.00125,
        output_per_1k: 0.01,
    },
];

/// Models missing from BobaMixer's price table: their records cost 0.
const BOBA_UNPRICED: &[(&str, &str)] = &[
    ("qwen2.5-coder:32b", "ollama"),
    ("deepseek-coder-v2", "aider"),
];

const PROJECTS: &[&str] = &["webshop", "caretaker", "infra", "docs-site", "ml-pipeline"];
const BRANCHES: &[&str] = &[
    "main",
    "develop",
    "feat/search",
    "fix/login-timeout",
    "chore/deps",
];
const PROFILES: &[&str] = &["default", "fast", "quality", "cheap"];
const ADAPTERS: &[&str] = &["claude-code", "codex-cli", "gemini-cli", "aider"];
const TASK_TYPES: &[&str] = &["code", "review", "chat", "refactor", "test"];

pub(crate) const BOBA_INSERT_USAGE: &str = "INSERT INTO usage_records (id, session_id, ts, \
     input_tokens, output_tokens, input_cost, output_cost, tool, model, estimate_level) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

pub(crate) const BOBA_INSERT_SESSION: &str = "INSERT INTO sessions (id, started_at, ended_at, \
     project, branch, profile, adapter, task_type, success, latency_ms, notes, explore) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// Rounds to BobaMixer's 6 decimals.
fn round6(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

pub(crate) fn uuid_v4(rng: &mut SampleRng) -> String {
    let h = random_hex(rng, 32);
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        ["8", "9", "a", "b"][rng.random_range(0..4)],
        &h[17..20],
        &h[20..32]
    )
}

/// One `usage_records` row, in column order.
pub(crate) struct UsageRecord {
    pub id: String,
    pub session_id: String,
    pub ts: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub input_cost: f64,
    pub output_cost: f64,
    pub tool: &'static str,
    pub model: &'static str,
    pub estimate_level: &'static str,
}

impl UsageRecord {
    /// A record at `ts` for `session_id`; `id` is chosen by the caller, who knows the id shapes in use.
    pub(crate) fn new(
        rng: &mut SampleRng,
        id: String,
        session_id: &str,
        ts: i64,
        unpriced: bool,
    ) -> Self {
        let input_tokens = rng.random_range(200..40_000);
        let output_tokens = rng.random_range(20..4_000);
        let (model, tool, input_cost, output_cost) = if unpriced {
            let (name, tool) = BOBA_UNPRICED[rng.random_range(0..BOBA_UNPRICED.len())];
            (name, tool, 0.0, 0.0)
        } else {
            let m = &BOBA_MODELS[rng.random_range(0..BOBA_MODELS.len())];
            (
                m.name,
                m.tool,
                round6(input_tokens as f64 / 1000.0 * m.input_per_1k),
                round6(output_tokens as f64 / 1000.0 * m.output_per_1k),
            )
        };
        let estimate_level = match rng.random_range(0..10) {
            0..7 => "exact",
            7..9 => "mapped",
            _ => "heuristic",
        };
        Self {
            id,
            session_id: session_id.to_owned(),
            ts,
            input_tokens,
            output_tokens,
            input_cost,
            output_cost,
            tool,
            model,
            estimate_level,
        }
    }

    pub(crate) fn insert(&self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<usize> {
        stmt.execute(params![
            self.id,
            self.session_id,
            self.ts,
            self.input_tokens,
            self.output_tokens,
            self.input_cost,
            self.output_cost,
            self.tool,
            self.model,
            self.estimate_level,
        ])
    }
}

/// One `sessions` row, in column order.
pub(crate) struct SessionRow {
    pub id: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub project: &'static str,
    pub branch: &'static str,
    pub profile: &'static str,
    pub adapter: &'static str,
    pub task_type: &'static str,
    pub success: Option<i64>,
    pub latency_ms: Option<i64>,
    pub notes: Option<&'static str>,
    pub explore: i64,
}

impl SessionRow {
    /// A session starting at `started_at`, still open (no end, success or latency yet).
    pub(crate) fn open(rng: &mut SampleRng, started_at: i64) -> Self {
        let pick =
            |rng: &mut SampleRng, list: &[&'static str]| list[rng.random_range(0..list.len())];
        Self {
            id: uuid_v4(rng),
            started_at,
            ended_at: None,
            project: pick(rng, PROJECTS),
            branch: pick(rng, BRANCHES),
            profile: pick(rng, PROFILES),
            adapter: pick(rng, ADAPTERS),
            task_type: pick(rng, TASK_TYPES),
            success: None,
            latency_ms: None,
            notes: None,
            explore: i64::from(rng.random_bool(0.1)),
        }
    }

    fn close(&mut self, rng: &mut SampleRng, ended_at: i64) {
        self.ended_at = Some(ended_at);
        self.success = Some(i64::from(rng.random_bool(0.9)));
        self.latency_ms = Some(rng.random_range(400..30_000));
        if rng.random_bool(0.05) {
            self.notes = Some("user aborted");
        }
    }

    pub(crate) fn insert(&self, stmt: &mut rusqlite::Statement<'_>) -> rusqlite::Result<usize> {
        stmt.execute(params![
            self.id,
            self.started_at,
            self.ended_at,
            self.project,
            self.branch,
            self.profile,
            self.adapter,
            self.task_type,
            self.success,
            self.latency_ms,
            self.notes,
            self.explore,
        ])
    }
}

fn fill_bobamixer(conn: &mut Connection, opts: &SampleOptions) -> anyhow::Result<SampleSummary> {
    conn.execute_batch(BOBAMIXER_SCHEMA)
        .context("creating the BobaMixer schema")?;
    // Sessions are written when they close, after their records; BobaMixer never enables
    // foreign keys, but the bundled SQLite turns them on by default.
    conn.pragma_update(None, "foreign_keys", false)?;
    bulk_load_mode(conn)?;
    let mut rng = SampleRng::seed_from_u64(opts.seed);
    let (start, span) = (opts.start(), TimeDelta::days(i64::from(opts.days)));
    let mut summary = SampleSummary::empty();
    let tx = conn.transaction()?;
    {
        tx.execute(
            "INSERT INTO budgets (id, scope, target, daily_usd, hard_cap, period_start, period_end, spent_usd) \
             VALUES ('global', 'global', NULL, 10.0, 50.0, NULL, NULL, 0)",
            [],
        )?;
        let mut usage_stmt = tx.prepare(BOBA_INSERT_USAGE)?;
        let mut session_stmt = tx.prepare(BOBA_INSERT_SESSION)?;
        let mut session: Option<(SessionRow, u32)> = None;
        let mut last_nanos = 0_i64;
        for i in 0..opts.rows {
            let at = row_time(start, span, i, opts.rows, &mut rng);
            let ts = at.timestamp();
            if session.as_ref().is_none_or(|(_, left)| *left == 0) {
                if let Some((mut done, _)) = session.take() {
                    let end = (summary_last_ts(&summary) + rng.random_range(1..120))
                        .min(ts)
                        .max(done.started_at);
                    done.close(&mut rng, end);
                    done.insert(&mut session_stmt)?;
                    summary.sessions += 1;
                }
                let started_at = ts - rng.random_range(0..30);
                let opened = SessionRow::open(&mut rng, started_at);
                session = Some((opened, rng.random_range(1..=40)));
            }
            let (current, left) = session.as_mut().expect("a session is open here");
            *left -= 1;
            // Ids in the shapes BobaMixer has used: 'rec_<unixnano>', UUIDs and bare hex.
            let id = match rng.random_range(0..10) {
                0..7 => {
                    let nanos = (at.timestamp_nanos_opt().unwrap_or(i64::MAX)).max(last_nanos + 1);
                    last_nanos = nanos;
                    format!("rec_{nanos}")
                }
                7..9 => uuid_v4(&mut rng),
                _ => random_hex(&mut rng, 32),
            };
            let unpriced = rng.random_bool(opts.zero_cost_share);
            let record = UsageRecord::new(&mut rng, id, &current.id, ts, unpriced);
            record
                .insert(&mut usage_stmt)
                .with_context(|| format!("inserting usage record {i}"))?;
            summary.count(at, record.input_cost + record.output_cost);
            if unpriced {
                summary.zero_cost_rows += 1;
            }
        }
        if let Some((mut last, _)) = session.take() {
            // The newest session stays open when it was active in the last ten minutes.
            let last_ts = summary_last_ts(&summary);
            if opts.now.timestamp() - last_ts > 600 {
                let end = last_ts + rng.random_range(1..120);
                last.close(&mut rng, end);
            }
            last.insert(&mut session_stmt)?;
            summary.sessions += 1;
        }
    }
    tx.commit().context("committing the sample rows")?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "switching the sample back to WAL left journal mode {mode:?}"
    );
    Ok(summary)
}

fn summary_last_ts(summary: &SampleSummary) -> i64 {
    summary.last.map_or(0, |t| t.timestamp())
}
