//! Helpers for the pricing and budget tests: jobs files, running one job with a given clock,
//! and LiteLLM's rates read straight from the fixture table.

use std::path::{Path, PathBuf};

use caretaker::alerts::AlertEvent;
use caretaker::config::{self, Config};
use caretaker::jobs::{Report, Stop};
use caretaker::state::State;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::bins;

pub fn litellm_path() -> PathBuf {
    bins::repo_file("tests/fixtures/litellm/model_prices_and_context_window.json")
}

pub fn litellm() -> Value {
    let text = std::fs::read_to_string(litellm_path()).expect("reading the LiteLLM fixture");
    serde_json::from_str(&text).expect("the LiteLLM fixture is JSON")
}

/// Writes a jobs file into `dir` for `db` with `schema`, the given `jobs:` block (indented
/// by two spaces) and optional top-level lines, and returns its path.
pub fn write_config(dir: &Path, db: &Path, schema: &str, top: &str, jobs: &str) -> PathBuf {
    let path = dir.join("jobs.yaml");
    let text = format!(
        "gateway: {{database: {db}, schema: {schema}, busy_timeout: 5s}}\nstate_dir: {state}\n{top}\nalerts: {{file: {alerts}}}\njobs:\n{jobs}",
        db = db.display(),
        state = dir.join("state").display(),
        alerts = dir.join("alerts.jsonl").display(),
    );
    std::fs::write(&path, text).expect("writing the jobs file");
    path
}

pub fn load(path: &Path) -> Config {
    config::load(path)
        .unwrap_or_else(|e| panic!("invalid test jobs file: {e}"))
        .0
}

/// Runs job `name` in this process with the clock at `now`, as the runner would, and returns
/// its report and the alerts it raised.
pub fn run_at(
    config: &Config,
    state: &State,
    name: &str,
    now: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<(Report, Vec<AlertEvent>)> {
    let job = config.job(name).unwrap_or_else(|| panic!("no job {name}"));
    let mut ctx = caretaker::runner::context(config, job, state, now, dry_run, Stop::default());
    let report = job.kind.run(&mut ctx)?;
    Ok((report, ctx.alerts))
}

pub fn figure(report: &Report, name: &str) -> f64 {
    report
        .figures
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no figure {name} in {report}"))
        .1
}

/// The rate `key` of a LiteLLM entry, with the `_above_200k_tokens` variant when `long`.
fn rate(entry: &Value, key: &str, long: bool) -> Option<f64> {
    if long
        && let Some(v) = entry
            .get(format!("{key}_above_200k_tokens"))
            .and_then(Value::as_f64)
    {
        return Some(v);
    }
    entry.get(key).and_then(Value::as_f64)
}

/// The LiteLLM entry for `model`, trying it as given and then without provider prefixes.
pub fn entry<'a>(table: &'a Value, model: &str) -> Option<&'a Value> {
    let mut name = model;
    loop {
        if let Some(e) = table.get(name) {
            return Some(e);
        }
        name = name.split_once('/')?.1;
    }
}

/// The cost of one request computed by hand from LiteLLM's table: prompt tokens (cache
/// tokens included, OpenAI's convention) split into uncached, cache read and cache write,
/// each at its rate; the long-context rates for every token when the prompt exceeds 200k.
/// Returns (input USD, output USD).
pub fn litellm_cost(
    table: &Value,
    model: &str,
    prompt: u64,
    completion: u64,
    cache_read: u64,
    cache_write: u64,
) -> Option<(f64, f64)> {
    let e = entry(table, model)?;
    let long = prompt > 200_000;
    let input = rate(e, "input_cost_per_token", long)?;
    let output = rate(e, "output_cost_per_token", long)?;
    let read = rate(e, "cache_read_input_token_cost", long).unwrap_or(input);
    let write = rate(e, "cache_creation_input_token_cost", long).unwrap_or(input);
    let uncached = prompt - cache_read - cache_write;
    Some((
        uncached as f64 * input + cache_read as f64 * read + cache_write as f64 * write,
        completion as f64 * output,
    ))
}

/// Cache token counts of an Apantli `response_data`, read by hand.
pub fn apantli_cache_tokens(response: &str) -> (u64, u64) {
    let v: Value = serde_json::from_str(response).expect("response_data is JSON");
    let u = &v["usage"];
    let read = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .max(u["cache_read_input_tokens"].as_u64().unwrap_or(0));
    (read, u["cache_creation_input_tokens"].as_u64().unwrap_or(0))
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + 1e-9 * a.abs().max(b.abs())
}
