//! Model price tables and the cost of one request.
//!
//! A [`PriceTable`] is read from LiteLLM's `model_prices_and_context_window.json` as LiteLLM
//! ships it, or from a small YAML table written by the operator. [`cost`] prices one request
//! the way LiteLLM prices it, so a recomputed cost matches what the gateway would have logged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::Value;

/// LiteLLM's documentation entry: it has the shape of a model but prices nothing.
const LITELLM_SAMPLE_SPEC: &str = "sample_spec";

/// YAML table values are USD per million tokens; a [`ModelPrice`] holds USD per token.
const TOKENS_PER_MILLION: f64 = 1_000_000.0;

/// The per-token prices of one model, in USD per token.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    /// Uncached prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Prompt tokens served from the provider's cache; `None` bills them at the input rate.
    pub cache_read: Option<f64>,
    /// Prompt tokens written to the provider's cache; `None` bills them at the input rate.
    pub cache_write: Option<f64>,
    /// Reasoning tokens; `None` bills them at the output rate.
    pub reasoning: Option<f64>,
    /// Long-context tiers, ascending by `above_tokens`.
    pub tiers: Vec<Tier>,
}

/// Rates that replace the base rates for every token of a request whose prompt is longer
/// than `above_tokens` (LiteLLM's `..._above_200k_tokens` keys and `tiered_pricing` ranges).
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// The tier applies when the prompt (uncached + cache read + cache write) exceeds this.
    pub above_tokens: u64,
    pub input: f64,
    pub output: f64,
    /// `None` bills cache reads at this tier's input rate.
    pub cache_read: Option<f64>,
    /// `None` bills cache writes at this tier's input rate.
    pub cache_write: Option<f64>,
}

/// The token counts of one request.
///
/// Convention: the four prompt-side counts are disjoint, as Anthropic reports them.
/// `input_tokens` are the uncached prompt tokens only; `cache_read_tokens` and
/// `cache_write_tokens` are not part of it. OpenAI-style counts, where `prompt_tokens`
/// includes `cached_tokens`, are converted by [`usage_from_apantli`].
/// `reasoning_tokens` are part of `output_tokens`, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// The share of `output_tokens` spent on reasoning; billed at the reasoning rate if the
    /// model has one.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The whole prompt, as LiteLLM compares it against a long-context tier threshold.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}

/// The cost of one request in USD, split the way gateways store it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Uncached input, cache reads and cache writes.
    pub input_usd: f64,
    /// Output, including reasoning.
    pub output_usd: f64,
    pub total: f64,
}

/// A model price table, keyed by the names the table uses.
#[derive(Debug, Clone)]
pub struct PriceTable {
    source: PathBuf,
    /// Every model entry of the file. `None` marks a model the table knows but does not price
    /// per token (image, audio and per-second models): such a model keeps the cost it has.
    models: BTreeMap<String, Option<ModelPrice>>,
}

/// The largest price table read: LiteLLM's whole table is about 1.5 MB.
const PRICE_TABLE_LIMIT: u64 = 64 << 20;

impl PriceTable {
    /// Reads a price table: LiteLLM's JSON format for `.json`, the YAML table for `.yaml` or
    /// `.yml`. Every problem in the file is reported at once, each naming the model and field.
    pub fn load(path: &Path) -> anyhow::Result<PriceTable> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse = match extension.as_deref() {
            Some("json") => Self::from_litellm_json,
            Some("yaml" | "yml") => Self::from_yaml,
            _ => bail!(
                "price table {}: unknown format; accepted are LiteLLM's JSON (a .json file) \
                 or a YAML table (a .yaml or .yml file)",
                path.display()
            ),
        };
        let bytes = crate::fsx::read_regular(path, PRICE_TABLE_LIMIT).with_context(|| {
            format!(
                "reading the price table {} (accepted: a regular file of up to {})",
                path.display(),
                crate::units::bytes(PRICE_TABLE_LIMIT)
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "price table {}: byte {} is not UTF-8; accepted: a JSON or YAML text file",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        parse(&text, path)
    }

    /// Parses LiteLLM's `model_prices_and_context_window.json`. `source` names the file in errors.
    pub fn from_litellm_json(text: &str, source: &Path) -> anyhow::Result<PriceTable> {
        let file = source.display();
        let root: Value = serde_json::from_str(text).with_context(|| {
            format!("price table {file}: not valid JSON; expected LiteLLM's model_prices_and_context_window.json")
        })?;
        let Value::Object(entries) = root else {
            bail!("price table {file}: expected a JSON object of model name to prices");
        };
        let mut models = BTreeMap::new();
        let mut problems = Problems::new(source);
        for (model, entry) in entries {
            if model == LITELLM_SAMPLE_SPEC {
                continue;
            }
            let Value::Object(fields) = &entry else {
                problems.push(&model, None, "expected an object of prices");
                continue;
            };
            let price = litellm_model_price(&model, fields, &mut problems);
            models.insert(model, price);
        }
        problems.into_result()?;
        Ok(PriceTable {
            source: source.to_path_buf(),
            models,
        })
    }

    /// Parses the YAML table; rates are USD per million tokens. `source` names the file in
    /// errors. Only the first YAML document is read.
    ///
    /// ```yaml
    /// models:
    ///   gpt-4o: {input_per_million: 2.5, output_per_million: 10, cache_read_per_million: 1.25}
    ///   gemini-2.5-pro:
    ///     input_per_million: 1.25
    ///     output_per_million: 10
    ///     tiers: [{above_tokens: 200k, input_per_million: 2.5, output_per_million: 15}]
    /// ```
    pub fn from_yaml(text: &str, source: &Path) -> anyhow::Result<PriceTable> {
        let root = yaml::parse(text)
            .with_context(|| format!("price table {}: not valid YAML", source.display()))?;
        let mut problems = Problems::new(source);
        let models = yaml_table(root.as_ref(), &mut problems);
        problems.into_result()?;
        Ok(PriceTable {
            source: source.to_path_buf(),
            models,
        })
    }

    /// The file the table was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The number of model entries, including those without per-token prices.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The number of models that have per-token prices.
    pub fn priced_len(&self) -> usize {
        self.models.values().filter(|p| p.is_some()).count()
    }

    /// Finds the price of `model`, returning the table key that matched: [`PriceTable::lookup_row`]
    /// for a row that carries one name.
    pub fn lookup(
        &self,
        model: &str,
        aliases: &BTreeMap<String, String>,
    ) -> Option<(&str, &ModelPrice)> {
        self.lookup_row(&[model], aliases)
    }

    /// Finds the price of a row that carries the model names `names`, the name to price it by
    /// first (Apantli: `request_data`'s model, the provider's name), then the others (Apantli:
    /// the `model` column, the client's name). Returns the table key that matched.
    ///
    /// Names are tried in this order, and the first name the table contains decides (if that
    /// entry has no per-token price, the answer is `None`):
    /// 1. `aliases[name]` for each name exactly as the row carries it. An alias is the
    ///    operator's explicit word, so it beats the table's own entries; its target is tried
    ///    as given, then without its leading `provider/` segments, one at a time; an alias
    ///    whose target is missing falls through.
    /// 2. The first name, then without its first `provider/` segment (`openai/gpt-4o` →
    ///    `gpt-4o`), and so on for each further segment (`openrouter/openai/gpt-4o` →
    ///    `openai/gpt-4o` → `gpt-4o`): each first through `aliases`, then in the table.
    /// 3. The other names without their `provider/` segments, through `aliases` only: a
    ///    client's name is not the provider's, so it is never looked up in the table.
    ///
    /// Table keys are never stripped: a bare `gpt-4o` would match `azure/gpt-4o`,
    /// `github_copilot/gpt-4o` and others, which price differently.
    pub fn lookup_row(
        &self,
        names: &[&str],
        aliases: &BTreeMap<String, String>,
    ) -> Option<(&str, &ModelPrice)> {
        let entry = |name: &str| {
            self.models
                .get_key_value(name)
                .map(|(key, price)| price.as_ref().map(|p| (key.as_str(), p)))
        };
        let via_alias = |name: &str| {
            aliases
                .get(name)
                .and_then(|target| with_prefixes_stripped(target).find_map(entry))
        };
        let (first, others) = names.split_first()?;
        let found = names
            .iter()
            .find_map(|name| via_alias(name))
            .or_else(|| {
                with_prefixes_stripped(first)
                    .find_map(|name| via_alias(name).or_else(|| entry(name)))
            })
            .or_else(|| {
                others
                    .iter()
                    .flat_map(|name| with_prefixes_stripped(name).skip(1))
                    .find_map(via_alias)
            });
        found.flatten()
    }

    /// Whether `target` (an alias's right-hand side) names a model with a per-token price,
    /// as [`PriceTable::lookup_row`] resolves it.
    pub fn prices_alias_target(&self, target: &str) -> bool {
        with_prefixes_stripped(target)
            .find_map(|name| self.models.get(name))
            .is_some_and(Option::is_some)
    }
}

/// The `aliases` keys that match a row carrying `names`: each name as given and without its
/// `provider/` segments, as [`PriceTable::lookup_row`] tries them. Each key once.
pub fn aliases_matching<'a>(names: &[&str], aliases: &'a BTreeMap<String, String>) -> Vec<&'a str> {
    let mut keys: Vec<&'a str> = Vec::new();
    for form in names.iter().flat_map(|name| with_prefixes_stripped(name)) {
        if let Some((key, _)) = aliases.get_key_value(form)
            && !keys.contains(&key.as_str())
        {
            keys.push(key);
        }
    }
    keys
}

/// `a/b/c`, `b/c`, `c`.
fn with_prefixes_stripped(model: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(model), |name| {
        name.split_once('/')
            .map(|(_, rest)| rest)
            .filter(|rest| !rest.is_empty())
    })
}

/// Prices one request as LiteLLM does (`generic_cost_per_token`):
/// - the tier is chosen by the whole prompt ([`Usage::prompt_tokens`], cache tokens
///   included): the highest tier whose `above_tokens` the prompt exceeds supplies the rates
///   for every token of the request, not just the tokens past the threshold;
/// - cache reads and writes are billed at their rates, or at the input rate if absent;
/// - reasoning tokens at the reasoning rate, or at the (tier's) output rate if absent.
pub fn cost(price: &ModelPrice, usage: &Usage) -> Cost {
    let prompt = usage.prompt_tokens();
    let (input, output, cache_read, cache_write) =
        match price.tiers.iter().rev().find(|t| prompt > t.above_tokens) {
            Some(t) => (t.input, t.output, t.cache_read, t.cache_write),
            None => (
                price.input,
                price.output,
                price.cache_read,
                price.cache_write,
            ),
        };
    let reasoning_tokens = usage.reasoning_tokens.min(usage.output_tokens);
    let input_usd = usage.input_tokens as f64 * input
        + usage.cache_read_tokens as f64 * cache_read.unwrap_or(input)
        + usage.cache_write_tokens as f64 * cache_write.unwrap_or(input);
    let output_usd = (usage.output_tokens - reasoning_tokens) as f64 * output
        + reasoning_tokens as f64 * price.reasoning.unwrap_or(output);
    Cost {
        input_usd,
        output_usd,
        total: input_usd + output_usd,
    }
}

/// Reads one Apantli row's token counts.
///
/// Apantli logs LiteLLM's response, whose `usage` follows OpenAI's convention for every
/// provider: `prompt_tokens` includes the cached tokens
/// (`usage.prompt_tokens_details.cached_tokens`) and, for Anthropic, LiteLLM also adds
/// `cache_read_input_tokens` and `cache_creation_input_tokens` into it. The uncached input is
/// therefore `prompt_tokens - cache read - cache write`, as LiteLLM computes it. If the
/// cache counts exceed `prompt_tokens`, the counts can only have been Anthropic's own (cache
/// tokens separate from the prompt), and `prompt_tokens` is taken as the uncached input.
///
/// A missing or unreadable `response_data` (error rows) yields no cache or reasoning tokens.
pub fn usage_from_apantli(
    prompt_tokens: u64,
    completion_tokens: u64,
    response_data: Option<&str>,
) -> Usage {
    let usage_json = response_data
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|mut response| response.get_mut("usage").map(Value::take))
        .unwrap_or(Value::Null);
    let count = |path: &[&str]| {
        path.iter()
            .try_fold(&usage_json, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    // OpenAI reports reads only under prompt_tokens_details; LiteLLM's Anthropic usage
    // carries the same number in both places, so the larger one is the count.
    let cache_read =
        count(&["prompt_tokens_details", "cached_tokens"]).max(count(&["cache_read_input_tokens"]));
    let cache_write = count(&["cache_creation_input_tokens"])
        .max(count(&["prompt_tokens_details", "cache_creation_tokens"]));
    let cached = cache_read.saturating_add(cache_write);
    let input_tokens = if prompt_tokens >= cached {
        prompt_tokens - cached
    } else {
        prompt_tokens
    };
    Usage {
        input_tokens,
        output_tokens: completion_tokens,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: count(&["completion_tokens_details", "reasoning_tokens"]),
    }
}

/// The name to look an Apantli row's price up by: `request_data`'s `model` holds the
/// provider's name (`openai/gpt-4.1-mini`), while the `model` column may hold the client's
/// alias. Falls back to the column when `request_data` is missing or has no model.
pub fn apantli_price_key(model_column: &str, request_data: Option<&str>) -> String {
    request_data
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|request| match request.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => Some(m.trim().to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| model_column.to_owned())
}

/// Collects every problem of one file, so the operator fixes them in one pass.
struct Problems<'a> {
    source: &'a Path,
    lines: Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(source: &'a Path) -> Self {
        Problems {
            source,
            lines: Vec::new(),
        }
    }

    /// A problem with one model's entry (JSON has no positions to offer).
    fn push(&mut self, model: &str, field: Option<&str>, what: impl std::fmt::Display) {
        let mut line = format!("model {model:?}");
        if let Some(field) = field {
            let _ = write!(line, ", field {field:?}");
        }
        let _ = write!(line, ": {what}");
        self.lines.push(line);
    }

    /// A problem with one model's entry at a position in a YAML file.
    fn push_at(
        &mut self,
        span: Span,
        model: &str,
        field: Option<&str>,
        what: impl std::fmt::Display,
    ) {
        self.push(model, field, what);
        let line = self.lines.pop().unwrap_or_default();
        self.push_file_at(span, line);
    }

    /// A problem with the file's structure rather than one model.
    fn push_file_at(&mut self, span: Span, what: impl std::fmt::Display) {
        self.lines.push(format!(
            "line {}, column {}: {what}",
            span.start.line(),
            span.start.col() + 1
        ));
    }

    fn into_result(self) -> anyhow::Result<()> {
        match self.lines.as_slice() {
            [] => Ok(()),
            [one] => bail!("price table {}: {one}", self.source.display()),
            many => bail!(
                "price table {}: {} problems:\n  {}",
                self.source.display(),
                many.len(),
                many.join("\n  ")
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LiteLLM's JSON table

const LITELLM_INPUT: &str = "input_cost_per_token";
const LITELLM_OUTPUT: &str = "output_cost_per_token";
const LITELLM_CACHE_READ: &str = "cache_read_input_token_cost";
const LITELLM_CACHE_WRITE: &str = "cache_creation_input_token_cost";
const LITELLM_REASONING: &str = "output_cost_per_reasoning_token";
const LITELLM_TIERED: &str = "tiered_pricing";

/// A model's per-token prices, or `None` if it has none (it is priced per image, second,
/// character...). Keys this loader does not use are ignored whatever their type.
fn litellm_model_price(
    model: &str,
    fields: &serde_json::Map<String, Value>,
    problems: &mut Problems,
) -> Option<ModelPrice> {
    let mut rate = |field: &str| -> Option<f64> {
        let value = fields.get(field)?;
        match json_rate(value) {
            Ok(rate) => rate,
            Err(what) => {
                problems.push(model, Some(field), what);
                None
            }
        }
    };
    let input = rate(LITELLM_INPUT);
    let output = rate(LITELLM_OUTPUT);
    let cache_read = rate(LITELLM_CACHE_READ);
    let cache_write = rate(LITELLM_CACHE_WRITE);
    let reasoning = rate(LITELLM_REASONING);

    let mut tiers = Vec::new();
    for (key, _) in fields {
        let Some(threshold) = key
            .strip_prefix(LITELLM_INPUT)
            .and_then(|rest| rest.strip_prefix("_above_"))
            .and_then(|rest| rest.strip_suffix("_tokens"))
        else {
            continue;
        };
        // `_above_1hr_...` and the like are other dimensions, not prompt-length tiers.
        let Some(above_tokens) = parse_token_count(threshold) else {
            continue;
        };
        let Some(tier_input) = rate(key) else {
            continue;
        };
        let suffix = format!("_above_{threshold}_tokens");
        tiers.push(Tier {
            above_tokens,
            input: tier_input,
            output: rate(&format!("{LITELLM_OUTPUT}{suffix}"))
                .or(output)
                .unwrap_or(0.0),
            // LiteLLM falls back to the base cache rate, not the tier's input rate.
            cache_read: rate(&format!("{LITELLM_CACHE_READ}{suffix}")).or(cache_read),
            cache_write: rate(&format!("{LITELLM_CACHE_WRITE}{suffix}")).or(cache_write),
        });
    }

    let mut base = (input, output, cache_read, cache_write);
    if let Some(ranges) = fields.get(LITELLM_TIERED) {
        // LiteLLM prefers `tiered_pricing` over the flat keys when it has per-token tiers.
        let ranged = litellm_tiered_pricing(model, ranges, output, problems);
        if !ranged.is_empty() {
            tiers.clear();
            for tier in ranged {
                if tier.above_tokens == 0 {
                    base = (
                        Some(tier.input),
                        Some(tier.output),
                        tier.cache_read,
                        tier.cache_write,
                    );
                } else {
                    tiers.push(tier);
                }
            }
        }
    }

    let (input, output, cache_read, cache_write) = base;
    if input.is_none() && output.is_none() {
        return None;
    }
    tiers.sort_by_key(|t| t.above_tokens);
    Some(ModelPrice {
        // A model priced on one side only (embeddings, some video models) costs nothing
        // on the other.
        input: input.unwrap_or(0.0),
        output: output.unwrap_or(0.0),
        cache_read,
        cache_write,
        reasoning,
        tiers,
    })
}

/// `tiered_pricing`: a list of `{range: [start, end], input_cost_per_token, ...}`; a tier
/// applies when the prompt is longer than `start`. Entries without a per-token input rate
/// (per-query search tiers) are not token tiers and are skipped. A tier without its own output
/// rate bills `model_output`, as LiteLLM does; one without cache rates bills its input rate.
fn litellm_tiered_pricing(
    model: &str,
    ranges: &Value,
    model_output: Option<f64>,
    problems: &mut Problems,
) -> Vec<Tier> {
    let Value::Array(entries) = ranges else {
        return Vec::new();
    };
    let mut tiers = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(fields) = entry.as_object() else {
            continue;
        };
        if !fields.contains_key(LITELLM_INPUT) {
            continue;
        }
        let field_name = |key: &str| format!("{LITELLM_TIERED}[{i}].{key}");
        let mut rate = |key: &str| -> Option<f64> {
            match json_rate(fields.get(key)?) {
                Ok(rate) => rate,
                Err(what) => {
                    problems.push(model, Some(&field_name(key)), what);
                    None
                }
            }
        };
        let input = rate(LITELLM_INPUT);
        let output = rate(LITELLM_OUTPUT);
        let cache_read = rate(LITELLM_CACHE_READ);
        let cache_write = rate(LITELLM_CACHE_WRITE);
        let start = fields
            .get("range")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0);
        let Some(start) = start else {
            problems.push(
                model,
                Some(&field_name("range")),
                "expected [start, end] token counts",
            );
            continue;
        };
        if let Some(input) = input {
            tiers.push(Tier {
                above_tokens: start as u64,
                input,
                output: output.or(model_output).unwrap_or(0.0),
                cache_read,
                cache_write,
            });
        }
    }
    tiers
}

/// A LiteLLM rate: a non-negative number, or a string holding one (LiteLLM accepts
/// `"3e-7"`). `Ok(None)` for `null`.
fn json_rate(value: &Value) -> Result<Option<f64>, String> {
    let rate = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match rate {
        Some(rate) if rate.is_finite() && rate >= 0.0 => Ok(Some(rate)),
        _ => Err(format!(
            "expected a non-negative number of USD per token, found {value}"
        )),
    }
}

/// `200k` → 200,000; `1m` → 1,000,000; `32000` → 32,000.
fn parse_token_count(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, scale) = if let Some(d) = lower.strip_suffix('k') {
        (d, 1_000)
    } else if let Some(d) = lower.strip_suffix('m') {
        (d, 1_000_000)
    } else {
        (lower.as_str(), 1)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

// ---------------------------------------------------------------------------------------------
// The YAML table

const YAML_MODEL_FIELDS: &str = "input_per_million, output_per_million, cache_read_per_million, \
                                 cache_write_per_million, reasoning_per_million, tiers";
const YAML_TIER_FIELDS: &str = "above_tokens, input_per_million, output_per_million, \
                                cache_read_per_million, cache_write_per_million";

fn yaml_table(
    root: Option<&yaml::Node>,
    problems: &mut Problems,
) -> BTreeMap<String, Option<ModelPrice>> {
    let mut models = BTreeMap::new();
    let Some(root) = root else {
        problems
            .lines
            .push("the file is empty; expected a `models:` mapping".into());
        return models;
    };
    let Some(top) = root.as_map() else {
        problems.push_file_at(root.span, "expected a mapping with the key `models`");
        return models;
    };
    let mut seen_models = false;
    for (key, value) in top {
        if key.as_str() != Some("models") {
            let what = format!("unknown key {:?}; accepted: models", key.describe());
            problems.push_file_at(key.span, what);
            continue;
        }
        seen_models = true;
        let Some(entries) = value.as_map() else {
            problems.push_file_at(
                value.span,
                "`models` must be a mapping of model name to prices",
            );
            continue;
        };
        for (name, fields) in entries {
            let Some(model) = name.as_str() else {
                let what = format!("a model name must be a string, found {}", name.describe());
                problems.push_file_at(name.span, what);
                continue;
            };
            if models.contains_key(model) {
                problems.push_at(name.span, model, None, "listed twice");
                continue;
            }
            let price = yaml_model_price(model, fields, problems);
            models.insert(model.to_owned(), price);
        }
    }
    if !seen_models && problems.lines.is_empty() {
        problems
            .lines
            .push("no `models:` mapping; nothing to price with".into());
    }
    models
}

fn yaml_model_price(model: &str, node: &yaml::Node, problems: &mut Problems) -> Option<ModelPrice> {
    let Some(fields) = node.as_map() else {
        problems.push_at(
            node.span,
            model,
            None,
            format_args!("expected a mapping of {YAML_MODEL_FIELDS}"),
        );
        return None;
    };
    let mut rates = YamlRates::default();
    let mut reasoning = None;
    let mut tier_nodes = None;
    for (key, value) in fields {
        match key.as_str() {
            Some("reasoning_per_million") => {
                reasoning = yaml_rate(model, "reasoning_per_million", value, problems);
            }
            Some("tiers") => tier_nodes = Some(value),
            Some(field) if rates.accepts(field) => {
                let rate = yaml_rate(model, field, value, problems);
                rates.set(field, rate);
            }
            _ => problems.push_at(
                key.span,
                model,
                key.as_str(),
                format_args!("unknown field; accepted: {YAML_MODEL_FIELDS}"),
            ),
        }
    }
    let (Some(input), Some(output)) = (rates.input, rates.output) else {
        let missing = if rates.input.is_none() {
            "input_per_million"
        } else {
            "output_per_million"
        };
        if !rates.seen.iter().any(|f| f == missing) {
            problems.push_at(node.span, model, Some(missing), "missing; it is required");
        }
        return None;
    };
    let mut tiers = Vec::new();
    if let Some(tier_nodes) = tier_nodes {
        let Some(items) = tier_nodes.as_seq() else {
            problems.push_at(
                tier_nodes.span,
                model,
                Some("tiers"),
                format_args!("expected a list of mappings of {YAML_TIER_FIELDS}"),
            );
            return None;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("tiers[{i}]");
            if let Some(tier) = yaml_tier(model, &path, item, &rates, problems) {
                tiers.push(tier);
            }
        }
    }
    tiers.sort_by_key(|t| t.above_tokens);
    Some(ModelPrice {
        input,
        output,
        cache_read: rates.cache_read,
        cache_write: rates.cache_write,
        reasoning,
        tiers,
    })
}

fn yaml_tier(
    model: &str,
    path: &str,
    node: &yaml::Node,
    base: &YamlRates,
    problems: &mut Problems,
) -> Option<Tier> {
    let Some(fields) = node.as_map() else {
        problems.push_at(
            node.span,
            model,
            Some(path),
            format_args!("expected a mapping of {YAML_TIER_FIELDS}"),
        );
        return None;
    };
    let mut rates = YamlRates::default();
    let mut above_tokens = None;
    for (key, value) in fields {
        let field = key.as_str().unwrap_or_default();
        let field_path = format!("{path}.{field}");
        if field == "above_tokens" {
            above_tokens = value.as_str().and_then(parse_token_count);
            if above_tokens.is_none() {
                problems.push_at(
                    value.span,
                    model,
                    Some(&field_path),
                    format_args!(
                        "expected a token count such as 200000 or 200k, found {}",
                        value.describe()
                    ),
                );
            }
        } else if rates.accepts(field) {
            let rate = yaml_rate(model, &field_path, value, problems);
            rates.set(field, rate);
        } else {
            problems.push_at(
                key.span,
                model,
                Some(&field_path),
                format_args!("unknown field; accepted: {YAML_TIER_FIELDS}"),
            );
        }
    }
    let seen_above = fields
        .iter()
        .any(|(k, _)| k.as_str() == Some("above_tokens"));
    let (Some(above_tokens), Some(input)) = (above_tokens, rates.input) else {
        let missing = if !seen_above {
            Some("above_tokens")
        } else if !rates.seen.iter().any(|f| f == "input_per_million") {
            Some("input_per_million")
        } else {
            None // present but invalid: already reported
        };
        if let Some(missing) = missing {
            problems.push_at(
                node.span,
                model,
                Some(&format!("{path}.{missing}")),
                "missing; it is required",
            );
        }
        return None;
    };
    Some(Tier {
        above_tokens,
        input,
        output: rates.output.or(base.output).unwrap_or(0.0),
        // As in LiteLLM's table: a tier without its own cache rate uses the base cache rate.
        cache_read: rates.cache_read.or(base.cache_read),
        cache_write: rates.cache_write.or(base.cache_write),
    })
}

/// Rates read from YAML, already converted to USD per token.
#[derive(Default)]
struct YamlRates {
    input: Option<f64>,
    output: Option<f64>,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    /// Fields present in the file, valid or not, so a bad value is not also called missing.
    seen: Vec<String>,
}

impl YamlRates {
    fn accepts(&self, field: &str) -> bool {
        matches!(
            field,
            "input_per_million"
                | "output_per_million"
                | "cache_read_per_million"
                | "cache_write_per_million"
        )
    }

    fn set(&mut self, field: &str, rate: Option<f64>) {
        let slot = match field {
            "input_per_million" => &mut self.input,
            "output_per_million" => &mut self.output,
            "cache_read_per_million" => &mut self.cache_read,
            "cache_write_per_million" => &mut self.cache_write,
            _ => return,
        };
        *slot = rate;
        self.seen.push(field.to_owned());
    }
}

/// A YAML rate in USD per million tokens, returned in USD per token.
fn yaml_rate(model: &str, field: &str, node: &yaml::Node, problems: &mut Problems) -> Option<f64> {
    let rate = node
        .as_str()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r >= 0.0);
    if rate.is_none() {
        problems.push_at(
            node.span,
            model,
            Some(field),
            format_args!(
                "expected a non-negative number of USD per million tokens, found {}",
                node.describe()
            ),
        );
    }
    rate.map(|r| r / TOKENS_PER_MILLION)
}

/// Just enough YAML for the price table: a tree of scalars, sequences and mappings with the
/// position of each node, built from `saphyr-parser` events.
mod yaml {
    use super::*;

    pub(super) struct Node {
        pub span: Span,
        pub kind: Kind,
    }

    pub(super) enum Kind {
        Scalar(String, ScalarStyle),
        Seq(Vec<Node>),
        Map(Vec<(Node, Node)>),
    }

    impl Node {
        pub fn as_str(&self) -> Option<&str> {
            match &self.kind {
                Kind::Scalar(s, _) => Some(s),
                _ => None,
            }
        }

        pub fn as_map(&self) -> Option<&[(Node, Node)]> {
            match &self.kind {
                Kind::Map(entries) => Some(entries),
                _ => None,
            }
        }

        pub fn as_seq(&self) -> Option<&[Node]> {
            match &self.kind {
                Kind::Seq(items) => Some(items),
                _ => None,
            }
        }

        /// The node as an error message shows it.
        pub fn describe(&self) -> String {
            match &self.kind {
                Kind::Scalar(s, ScalarStyle::Plain) => s.clone(),
                Kind::Scalar(s, _) => format!("{s:?}"),
                Kind::Seq(_) => "a list".into(),
                Kind::Map(_) => "a mapping".into(),
            }
        }
    }

    /// The first document's root node; `None` for an empty file.
    pub(super) fn parse(text: &str) -> anyhow::Result<Option<Node>> {
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, span) = next(&mut parser)?;
            match event {
                Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => {}
                Event::StreamEnd | Event::DocumentEnd => return Ok(None),
                event => return node(&mut parser, event, span).map(Some),
            }
        }
    }

    fn next<'a>(
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    ) -> anyhow::Result<(Event<'a>, Span)> {
        match parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => bail!(
                "line {}, column {}: {}",
                e.marker().line(),
                e.marker().col() + 1,
                e.info()
            ),
            None => bail!("unexpected end of the file"),
        }
    }

    fn node<'a>(
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
        event: Event<'a>,
        span: Span,
    ) -> anyhow::Result<Node> {
        let kind = match event {
            Event::Scalar(value, style, _, _) => Kind::Scalar(value.into_owned(), style),
            Event::SequenceStart(_, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = next(parser)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(node(parser, event, span)?);
                }
                Kind::Seq(items)
            }
            Event::MappingStart(_, _) => {
                let mut entries = Vec::new();
                loop {
                    let (event, key_span) = next(parser)?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key = node(parser, event, key_span)?;
                    let (event, value_span) = next(parser)?;
                    let value = node(parser, event, value_span)?;
                    entries.push((key, value));
                }
                Kind::Map(entries)
            }
            Event::Alias(_) => bail!(
                "line {}: anchors and aliases (*name) are not supported in a price table; \
                 write the values out",
                span.start.line()
            ),
            other => bail!(
                "line {}: unexpected YAML event {other:?}",
                span.start.line()
            ),
        };
        Ok(Node { span, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates are products of small decimals; a hundredth of a micro-dollar is far below
    /// anything a gateway stores.
    const TOLERANCE_USD: f64 = 1e-11;

    fn fixture_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/litellm/model_prices_and_context_window.json")
    }

    /// Loaded once: parsing 3 MB of JSON per test would dominate the suite's time.
    fn real_table() -> &'static PriceTable {
        static TABLE: std::sync::OnceLock<PriceTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| PriceTable::load(&fixture_path()).expect("the LiteLLM fixture loads"))
    }

    fn no_aliases() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn aliases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn assert_usd(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < TOLERANCE_USD,
            "{what}: got {actual}, expected {expected}"
        );
    }

    fn assert_cost(cost: Cost, input_usd: f64, output_usd: f64) {
        assert_usd(cost.input_usd, input_usd, "input_usd");
        assert_usd(cost.output_usd, output_usd, "output_usd");
        assert_usd(cost.total, input_usd + output_usd, "total");
    }

    fn write_temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn real_table_loads_every_model_and_skips_sample_spec() {
        let table = real_table();
        assert_eq!(table.len(), 4_552);
        // Models with a per-token input or output rate (or per-token `tiered_pricing`);
        // the rest are priced per image, second, character or query.
        assert_eq!(table.priced_len(), 3_777);
        assert!(table.lookup("sample_spec", &no_aliases()).is_none());
        assert_eq!(table.source(), fixture_path());
    }

    #[test]
    fn gpt_4o_with_cached_prompt_tokens() {
        let table = real_table();
        let (key, price) = table.lookup("gpt-4o", &no_aliases()).unwrap();
        assert_eq!(key, "gpt-4o");
        // OpenAI: prompt_tokens 1,000 include 200 cached tokens.
        let usage = usage_from_apantli(
            1_000,
            500,
            Some(
                r#"{"usage":{"prompt_tokens":1000,"completion_tokens":500,"prompt_tokens_details":{"cached_tokens":200}}}"#,
            ),
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: 800,
                output_tokens: 500,
                cache_read_tokens: 200,
                ..Usage::default()
            }
        );
        // input 800 × 2.5e-6 = 0.002, cache read 200 × 1.25e-6 = 0.00025 → 0.00225
        // output 500 × 1e-5 = 0.005
        assert_cost(cost(price, &usage), 0.00225, 0.005);
    }

    #[test]
    fn claude_sonnet_4_5_with_cache_read_and_cache_write() {
        let table = real_table();
        let (_, price) = table.lookup("claude-sonnet-4-5", &no_aliases()).unwrap();
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 800,
            cache_read_tokens: 20_000,
            cache_write_tokens: 5_000,
            reasoning_tokens: 0,
        };
        // input 100 × 3e-6 = 0.0003; cache read 20,000 × 3e-7 = 0.006;
        // cache write 5,000 × 3.75e-6 = 0.01875 → 0.02505
        // output 800 × 1.5e-5 = 0.012
        assert_cost(cost(price, &usage), 0.02505, 0.012);
    }

    #[test]
    fn claude_usage_as_litellm_logs_it_in_apantli() {
        // LiteLLM adds Anthropic's cache counts into prompt_tokens: 100 + 20,000 + 5,000.
        let response = r#"{"model":"claude-sonnet-4-5","usage":{"prompt_tokens":25100,
            "completion_tokens":800,"total_tokens":25900,
            "prompt_tokens_details":{"cached_tokens":20000},
            "cache_read_input_tokens":20000,"cache_creation_input_tokens":5000}}"#;
        let usage = usage_from_apantli(25_100, 800, Some(response));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 100,
                output_tokens: 800,
                cache_read_tokens: 20_000,
                cache_write_tokens: 5_000,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn gemini_2_5_pro_above_its_200k_tier_bills_every_token_at_the_tier() {
        let table = real_table();
        let (key, price) = table
            .lookup("gemini/gemini-2.5-pro", &no_aliases())
            .unwrap();
        assert_eq!(key, "gemini/gemini-2.5-pro");
        assert_eq!(price.tiers.len(), 1);
        assert_eq!(price.tiers[0].above_tokens, 200_000);

        // 200,000 uncached + 50,000 cached = 250,000 > 200,000: the tier applies to all.
        let above = Usage {
            input_tokens: 200_000,
            cache_read_tokens: 50_000,
            output_tokens: 2_000,
            ..Usage::default()
        };
        // input 200,000 × 2.5e-6 = 0.5; cache read 50,000 × 2.5e-7 = 0.0125 → 0.5125
        // output 2,000 × 1.5e-5 = 0.03
        assert_cost(cost(price, &above), 0.5125, 0.03);

        // Exactly 200,000 is not above the threshold: base rates.
        let at = Usage {
            input_tokens: 200_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // input 200,000 × 1.25e-6 = 0.25; output 1,000 × 1e-5 = 0.01
        assert_cost(cost(price, &at), 0.25, 0.01);
    }

    #[test]
    fn the_highest_exceeded_tier_wins() {
        let table = real_table();
        let (_, price) = table.lookup("kyma/qwen3.7-flash", &no_aliases()).unwrap();
        let thresholds: Vec<u64> = price.tiers.iter().map(|t| t.above_tokens).collect();
        assert_eq!(thresholds, [32_000, 256_000]);
        let usage = Usage {
            input_tokens: 300_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // above 256k: input 300,000 × 2.7e-7 = 0.081; output 1,000 × 1.08e-6 = 0.00108
        assert_cost(cost(price, &usage), 0.081, 0.00108);
        let usage = Usage {
            input_tokens: 100_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // above 32k: input 100,000 × 1.35e-7 = 0.0135; output 1,000 × 5.4e-7 = 0.00054
        assert_cost(cost(price, &usage), 0.0135, 0.00054);
    }

    #[test]
    fn tiered_pricing_ranges_become_tiers() {
        let table = real_table();
        let (_, price) = table.lookup("dashscope/qwen-flash", &no_aliases()).unwrap();
        // range [0, 256000]: 5e-8 / 4e-7; range [256000, 1000000]: 2.5e-7 / 2e-6
        assert_eq!((price.input, price.output), (5e-8, 4e-7));
        assert_eq!(price.tiers.len(), 1);
        let usage = Usage {
            input_tokens: 300_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // input 300,000 × 2.5e-7 = 0.075; output 1,000 × 2e-6 = 0.002
        assert_cost(cost(price, &usage), 0.075, 0.002);
    }

    #[test]
    fn reasoning_tokens_use_the_reasoning_rate_or_the_output_rate() {
        let price = ModelPrice {
            input: 1e-6,
            output: 4e-6,
            cache_read: None,
            cache_write: None,
            reasoning: Some(8e-6),
            tiers: Vec::new(),
        };
        let usage = Usage {
            output_tokens: 100,
            reasoning_tokens: 30,
            ..Usage::default()
        };
        // 70 × 4e-6 + 30 × 8e-6 = 0.00028 + 0.00024
        assert_cost(cost(&price, &usage), 0.0, 0.00052);
        let without = ModelPrice {
            reasoning: None,
            ..price
        };
        // 100 × 4e-6
        assert_cost(cost(&without, &usage), 0.0, 0.0004);
    }

    #[test]
    fn absent_cache_rates_fall_back_to_the_input_rate() {
        let price = ModelPrice {
            input: 2e-6,
            output: 0.0,
            cache_read: None,
            cache_write: None,
            reasoning: None,
            tiers: Vec::new(),
        };
        let usage = Usage {
            input_tokens: 10,
            cache_read_tokens: 20,
            cache_write_tokens: 30,
            ..Usage::default()
        };
        // (10 + 20 + 30) × 2e-6
        assert_cost(cost(&price, &usage), 0.00012, 0.0);
    }

    #[test]
    fn lookup_order() {
        let table = real_table();
        let none = no_aliases();
        let key = |model: &str, aliases: &BTreeMap<String, String>| {
            table.lookup(model, aliases).map(|(k, _)| k.to_owned())
        };
        // As given, with a prefix that is part of the table's key.
        assert_eq!(key("azure/gpt-4o", &none).as_deref(), Some("azure/gpt-4o"));
        // Prefix stripped from the request's name, one segment at a time.
        assert_eq!(key("openai/gpt-4o", &none).as_deref(), Some("gpt-4o"));
        assert_eq!(
            key("mygateway/openai/gpt-4o", &none).as_deref(),
            Some("gpt-4o")
        );
        // Never stripped on the table side: a bare name does not find a prefixed key.
        assert_eq!(key("gemini-2.5-pro-nonexistent", &none), None);
        // Aliases, with the target's prefix stripped too.
        let a = aliases(&[
            ("sonnet", "anthropic/claude-sonnet-4-5"),
            ("gpt-4o", "gpt-4o-mini"),
        ]);
        assert_eq!(key("sonnet", &a).as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(key("team/sonnet", &a).as_deref(), Some("claude-sonnet-4-5"));
        // An alias beats the table's entry of the same name.
        assert_eq!(key("gpt-4o", &a).as_deref(), Some("gpt-4o-mini"));
        // An alias to a missing model falls through to the name itself.
        let broken = aliases(&[("gpt-4o", "gpt-4o-retired")]);
        assert_eq!(key("gpt-4o", &broken).as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn a_row_with_two_names_is_matched_by_an_alias_of_either() {
        let table = real_table();
        let key = |names: &[&str], aliases: &BTreeMap<String, String>| {
            table.lookup_row(names, aliases).map(|(k, _)| k.to_owned())
        };
        let haiku = "anthropic.claude-3-5-haiku-20241022-v1:0";
        // Apantli: request_data's model first (retired from the table), the column second.
        let row = ["anthropic/claude-3-5-haiku-20241022", "claude-haiku-3.5"];
        assert_eq!(key(&row, &no_aliases()), None);
        for alias in [
            "claude-haiku-3.5",
            "anthropic/claude-3-5-haiku-20241022",
            "claude-3-5-haiku-20241022",
        ] {
            let a = aliases(&[(alias, haiku)]);
            assert_eq!(key(&row, &a).as_deref(), Some(haiku), "{alias}");
            assert_eq!(aliases_matching(&row, &a), [alias], "{alias}");
        }
        // The column's exact name beats the table's price of request_data's model ...
        let row = ["openai/gpt-4o", "cheap"];
        let a = aliases(&[("cheap", "gpt-4o-mini")]);
        assert_eq!(key(&row, &a).as_deref(), Some("gpt-4o-mini"));
        // ... but the column itself is never looked up in the table.
        assert_eq!(key(&["mystery/x", "gpt-4o"], &no_aliases()), None);
        // An alias of the column's stripped form comes after the provider's name.
        let a = aliases(&[("gpt-4o", "gpt-4o-mini")]);
        assert_eq!(
            key(&["azure/gpt-4o", "team/gpt-4o"], &a).as_deref(),
            Some("azure/gpt-4o")
        );
        assert_eq!(
            key(&["mystery/x", "team/gpt-4o"], &a).as_deref(),
            Some("gpt-4o-mini")
        );
        // Each matching key once, whichever names match it.
        let both = aliases(&[("gpt-4o", "gpt-4o-mini"), ("unused", "gpt-4o")]);
        assert_eq!(
            aliases_matching(&["openai/gpt-4o", "gpt-4o"], &both),
            ["gpt-4o"]
        );
        assert!(table.prices_alias_target(haiku));
        assert!(table.prices_alias_target("anthropic/claude-sonnet-4-5"));
        assert!(!table.prices_alias_target("claude-3-5-haiku-20241022"));
        assert!(!table.prices_alias_target("openai/container"));
    }

    #[test]
    fn models_missing_or_unpriced_have_no_price() {
        let table = real_table();
        // Retired: gone from the table (the SPEC's alias example points at it).
        assert!(
            table
                .lookup("claude-3-5-haiku-20241022", &no_aliases())
                .is_none()
        );
        assert!(table.lookup("no-such-model", &no_aliases()).is_none());
        // Present, but priced per session, not per token; its bare name is not tried.
        assert!(table.lookup("openai/container", &no_aliases()).is_none());
    }

    #[test]
    fn usage_from_apantli_without_usable_response_data() {
        let plain = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(usage_from_apantli(10, 5, None), plain);
        assert_eq!(usage_from_apantli(10, 5, Some("not json")), plain);
        assert_eq!(usage_from_apantli(10, 5, Some(r#"{"usage":null}"#)), plain);
    }

    #[test]
    fn usage_from_apantli_with_anthropic_native_counts() {
        // Cache counts larger than prompt_tokens cannot be inclusive: prompt_tokens is the
        // uncached input, as Anthropic reports it.
        let response =
            r#"{"usage":{"cache_read_input_tokens":900,"cache_creation_input_tokens":50}}"#;
        let usage = usage_from_apantli(10, 5, Some(response));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_tokens: 900,
                cache_write_tokens: 50,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn usage_from_apantli_reads_reasoning_tokens() {
        let response = r#"{"usage":{"completion_tokens_details":{"reasoning_tokens":64}}}"#;
        assert_eq!(
            usage_from_apantli(10, 100, Some(response)).reasoning_tokens,
            64
        );
    }

    #[test]
    fn apantli_price_key_prefers_request_data_model() {
        let request = r#"{"model":"openai/gpt-4.1-mini","api_key":"sk-secret","messages":[]}"#;
        assert_eq!(
            apantli_price_key("my-alias", Some(request)),
            "openai/gpt-4.1-mini"
        );
        assert_eq!(apantli_price_key("my-alias", None), "my-alias");
        assert_eq!(apantli_price_key("my-alias", Some("{broken")), "my-alias");
        assert_eq!(
            apantli_price_key("my-alias", Some(r#"{"model":""}"#)),
            "my-alias"
        );
        assert_eq!(
            apantli_price_key("my-alias", Some(r#"{"model":7}"#)),
            "my-alias"
        );
    }

    #[test]
    fn yaml_table_loads() {
        let (_dir, path) = write_temp(
            "prices.yaml",
            "models:\n  gpt-4o: {input_per_million: 2.5, output_per_million: 10, cache_read_per_million: 1.25, cache_write_per_million: 3.125}\n  big:\n    input_per_million: 1.25\n    output_per_million: \"10\"\n    reasoning_per_million: 12\n    tiers:\n      - {above_tokens: 200k, input_per_million: 2.5, output_per_million: 15}\n",
        );
        let table = PriceTable::load(&path).unwrap();
        assert_eq!(table.len(), 2);
        let (_, gpt) = table.lookup("openai/gpt-4o", &no_aliases()).unwrap();
        assert_usd(gpt.input, 2.5e-6, "input");
        assert_usd(gpt.output, 1e-5, "output");
        assert_usd(gpt.cache_read.unwrap(), 1.25e-6, "cache_read");
        assert_usd(gpt.cache_write.unwrap(), 3.125e-6, "cache_write");
        let (_, big) = table.lookup("big", &no_aliases()).unwrap();
        assert_usd(big.reasoning.unwrap(), 1.2e-5, "reasoning");
        assert_eq!(big.tiers.len(), 1);
        assert_eq!(big.tiers[0].above_tokens, 200_000);
        let usage = Usage {
            input_tokens: 200_001,
            output_tokens: 1_000,
            ..Usage::default()
        };
        // 200,001 × 2.5e-6 = 0.5000025; 1,000 × 1.5e-5 = 0.015
        assert_cost(cost(big, &usage), 0.5000025, 0.015);
    }

    #[test]
    fn yaml_table_with_bad_values_names_file_line_model_and_field() {
        let (_dir, path) = write_temp(
            "prices.yml",
            "models:\n  gpt-4o: {input_per_million: cheap, output_per_million: 10}\n  other:\n    input_per_million: 1\n    output_per_million: -3\n    colour: blue\n  incomplete: {input_per_million: 1}\n",
        );
        let err = format!("{:#}", PriceTable::load(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("4 problems"), "{err}");
        assert!(
            err.contains(r#"line 2, column 31: model "gpt-4o", field "input_per_million": expected a non-negative number of USD per million tokens, found cheap"#),
            "{err}"
        );
        assert!(
            err.contains(r#"line 5, column 25: model "other", field "output_per_million""#),
            "{err}"
        );
        assert!(
            err.contains(r#"model "other", field "colour": unknown field; accepted:"#),
            "{err}"
        );
        assert!(
            err.contains(r#"model "incomplete", field "output_per_million": missing"#),
            "{err}"
        );
    }

    #[test]
    fn yaml_structure_errors() {
        for (text, expected) in [
            ("", "the file is empty"),
            ("prices: {}\n", r#"unknown key "prices"; accepted: models"#),
            ("models: [a, b]\n", "`models` must be a mapping"),
            (
                "models:\n  a: &x {input_per_million: 1, output_per_million: 1}\n  b: *x\n",
                "aliases (*name) are not supported",
            ),
            ("models: {a: [\n", "not valid YAML"),
            (
                "models:\n  a: {input_per_million: 1, output_per_million: 1, tiers: [{input_per_million: 2}]}\n",
                r#"field "tiers[0].above_tokens": missing"#,
            ),
        ] {
            let (_dir, path) = write_temp("prices.yaml", text);
            let err = format!("{:#}", PriceTable::load(&path).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains("prices.yaml"), "{text:?}: {err}");
        }
    }

    #[test]
    fn json_table_with_bad_values_names_file_model_and_field() {
        let (_dir, path) = write_temp(
            "prices.json",
            r#"{"sample_spec": {"input_cost_per_token": "documentation"},
                "good": {"input_cost_per_token": "3e-7", "output_cost_per_token": 1,
                         "search_context_cost_per_query": {"low": 1}, "supported_regions": ["eu"]},
                "bad": {"input_cost_per_token": "cheap", "output_cost_per_token": -1},
                "worse": [1, 2]}"#,
        );
        let err = format!("{:#}", PriceTable::load(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("3 problems"), "{err}");
        assert!(
            err.contains(r#"model "bad", field "input_cost_per_token": expected a non-negative number of USD per token, found "cheap""#),
            "{err}"
        );
        assert!(
            err.contains(r#"model "bad", field "output_cost_per_token""#),
            "{err}"
        );
        assert!(
            err.contains(r#"model "worse": expected an object of prices"#),
            "{err}"
        );
    }

    #[test]
    fn json_table_tolerates_strings_objects_and_lists() {
        let (_dir, path) = write_temp(
            "prices.json",
            r#"{"good": {"input_cost_per_token": "3e-7", "output_cost_per_token": 1,
                         "search_context_cost_per_query": {"low": 1}, "supported_regions": ["eu"],
                         "cache_creation_input_token_cost_above_1hr": 9}}"#,
        );
        let table = PriceTable::load(&path).unwrap();
        let (_, good) = table.lookup("good", &no_aliases()).unwrap();
        assert_eq!((good.input, good.output, good.tiers.len()), (3e-7, 1.0, 0));
    }

    #[test]
    fn unreadable_or_unknown_files() {
        let (_dir, path) = write_temp("prices.json", "{not json");
        let err = format!("{:#}", PriceTable::load(&path).unwrap_err());
        assert!(
            err.contains("prices.json") && err.contains("not valid JSON"),
            "{err}"
        );

        let (_dir, path) = write_temp("prices.toml", "");
        let err = format!("{:#}", PriceTable::load(&path).unwrap_err());
        assert!(
            err.contains("prices.toml") && err.contains(".yaml or .yml"),
            "{err}"
        );

        let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-prices.json");
        let err = format!("{:#}", PriceTable::load(&missing).unwrap_err());
        assert!(err.contains("no-such-prices.json"), "{err}");
    }

    #[test]
    fn token_counts() {
        for (text, expected) in [
            ("200k", Some(200_000)),
            ("128K", Some(128_000)),
            ("1m", Some(1_000_000)),
            ("32000", Some(32_000)),
            ("1hr", None),
            ("k", None),
            ("-5", None),
            ("", None),
        ] {
            assert_eq!(parse_token_count(text), expected, "{text:?}");
        }
    }
}
