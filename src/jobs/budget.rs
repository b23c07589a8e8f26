//! The `budget` job: spend against limits per calendar period, one alert per crossing.

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;
use crate::config::values::Share;
use crate::periods::Period;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    limits: Option<Vec<RawLimit>>,
    include_failed: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: Option<String>,
    period: Option<Period>,
    usd: Option<f64>,
    warn_at: Option<Vec<Share>>,
    model: Option<String>,
    provider: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Limit {
    pub name: String,
    pub period: Period,
    pub usd: f64,
    /// Shares of `usd` (1.0 = 100 %) at which an alert is sent, ascending.
    pub warn_at: Vec<f64>,
    pub model: Option<glob::Pattern>,
    pub provider: Option<glob::Pattern>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub limits: Vec<Limit>,
    /// Count failed requests' cost too (normally 0; off by default, like the gateways' dashboards).
    pub include_failed: bool,
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let raw_limits = raw.limits.unwrap_or_default();
    if raw_limits.is_empty() {
        checks.error(
            &format!("{path}.limits"),
            "a budget job needs at least one limit; accepted: a list of {name, period: day|week|month, usd, warn_at: [75%, 100%]}",
        );
        return None;
    }
    let mut limits = Vec::new();
    let mut ok = true;
    for (i, l) in raw_limits.into_iter().enumerate() {
        let at = format!("{path}.limits[{i}]");
        let mut need = |key: &str, present: bool, what: &str| {
            if !present {
                checks.error(
                    &format!("{at}.{key}"),
                    format!("missing key `{key}`; accepted: {what}"),
                );
                ok = false;
            }
        };
        need("name", l.name.is_some(), "a name for the limit");
        need("period", l.period.is_some(), "day, week, month");
        need("usd", l.usd.is_some(), "the limit in US dollars");
        let mut glob = |key: &str, value: Option<String>| -> Option<glob::Pattern> {
            let v = value?;
            match glob::Pattern::new(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    checks.error(
                        &format!("{at}.{key}"),
                        format!("`{v}` is not a valid glob ({e}); accepted: e.g. \"gpt-4*\""),
                    );
                    ok = false;
                    None
                }
            }
        };
        let model = glob("model", l.model);
        let provider = glob("provider", l.provider);
        if let Some(usd) = l.usd
            && usd <= 0.0
        {
            checks.error(
                &format!("{at}.usd"),
                format!("{usd} is not a usable limit; accepted: an amount above 0"),
            );
            ok = false;
        }
        let mut warn_at: Vec<f64> = l
            .warn_at
            .map_or_else(|| vec![1.0], |w| w.into_iter().map(|s| s.0).collect());
        warn_at.sort_by(f64::total_cmp);
        warn_at.dedup();
        if let (Some(name), Some(period), Some(usd)) = (l.name, l.period, l.usd) {
            limits.push(Limit {
                name,
                period,
                usd,
                warn_at,
                model,
                provider,
            });
        }
    }
    ok.then_some(Spec {
        limits,
        include_failed: raw.include_failed.unwrap_or(false),
    })
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("budget")
}
