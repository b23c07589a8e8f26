//! The `pricing` job: recompute the cost of historical requests from a price table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;
use crate::config::values;

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

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("pricing")
}
