//! The `budget` job: spend against limits per calendar period, one alert per crossing.
//!
//! The spend is read from the gateway in one short read per period; [`decide`] turns it and
//! the thresholds already alerted into the alerts to send, as a pure function of the clock
//! and the zone. Sent thresholds live in the state database, so a restart sends no repeat.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rusqlite::Connection;
use serde::Deserialize;

use super::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::config::Checks;
use crate::config::values::Share;
use crate::gateway::Gateway;
use crate::metrics::BudgetSpend;
use crate::periods::{self, Period};

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
        if let Some(name) = &l.name
            && limits.iter().any(|other: &Limit| &other.name == name)
        {
            // The name keys the thresholds already sent: two limits sharing one would
            // silence each other.
            checks.error(
                &format!("{at}.name"),
                format!(
                    "the limit name `{name}` is used twice; accepted: a name unique within the job"
                ),
            );
            ok = false;
        }
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

/// Models listed in an alert, most expensive first.
const TOP_MODELS: usize = 5;

/// What one model (and provider, where the gateway records it) cost in a period.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpend {
    pub model: String,
    pub provider: Option<String>,
    pub usd: f64,
}

/// Reads the spend by model over `[start, end)`: one read statement (a shared lock on a
/// rollback-journal database for as long as it runs, which the caller measures).
pub fn spend_by_model(
    conn: &Connection,
    gateway: &Gateway,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    include_failed: bool,
) -> anyhow::Result<Vec<ModelSpend>> {
    let c = &gateway.columns;
    let provider = c
        .provider
        .as_ref()
        .map_or_else(|| "NULL".to_string(), |p| format!("\"{p}\""));
    let failed = match (&c.error, include_failed) {
        (Some(error), false) => format!(" AND \"{error}\" IS NULL"),
        _ => String::new(),
    };
    let sql = format!(
        "SELECT \"{model}\", {provider}, SUM({cost}) FROM \"{table}\" \
         WHERE \"{time}\" >= ?1 AND \"{time}\" < ?2{failed} GROUP BY 1, 2",
        model = c.model,
        cost = gateway.cost_expr(),
        table = gateway.table,
        time = c.time,
    );
    let reading = || {
        format!(
            "reading the spend from table `{}` of {} (check gateway.schema and gateway.columns)",
            gateway.table,
            gateway.database.display()
        )
    };
    let mut stmt = conn.prepare(&sql).with_context(reading)?;
    let rows = stmt
        .query_map([gateway.time_value(start), gateway.time_value(end)], |r| {
            Ok(ModelSpend {
                model: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                provider: r.get(1)?,
                usd: r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
            })
        })
        .with_context(reading)?;
    rows.collect::<Result<_, _>>().with_context(reading)
}

/// What one limit has spent in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpend {
    pub spent: f64,
    /// The most expensive models, descending, at most [`TOP_MODELS`].
    pub top: Vec<(String, f64)>,
}

/// The part of `rows` a limit counts (by its model and provider globs), summed.
pub fn limit_spend(limit: &Limit, rows: &[ModelSpend]) -> LimitSpend {
    let mut by_model: BTreeMap<&str, f64> = BTreeMap::new();
    for row in rows {
        let model_ok = limit.model.as_ref().is_none_or(|g| g.matches(&row.model));
        let provider_ok = limit
            .provider
            .as_ref()
            .is_none_or(|g| row.provider.as_deref().is_some_and(|p| g.matches(p)));
        if model_ok && provider_ok {
            *by_model.entry(&row.model).or_default() += row.usd;
        }
    }
    let spent = by_model.values().sum();
    let mut top: Vec<(String, f64)> = by_model
        .into_iter()
        .map(|(m, u)| (m.to_string(), u))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP_MODELS);
    LimitSpend { spent, top }
}

/// Thresholds already alerted, in percent, by [`sent_key`] (limit name and period label).
pub type Sent = BTreeMap<String, BTreeSet<u32>>;

/// The state key of a limit's thresholds in one period: a new period has a new key, so it
/// starts with none sent.
pub fn sent_key(limit: &str, label: &str) -> String {
    format!("{limit}@{label}")
}

/// A limit that reached thresholds not alerted yet in this period.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub limit: String,
    pub period: Period,
    pub label: String,
    /// Thresholds newly reached, in percent, ascending; the alert names the highest.
    pub percents: Vec<u32>,
    pub spent: f64,
    pub usd: f64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub projected: f64,
    pub top: Vec<(String, f64)>,
    pub model: Option<String>,
    pub provider: Option<String>,
}

impl Crossing {
    pub fn highest(&self) -> u32 {
        self.percents.last().copied().unwrap_or(0)
    }

    pub fn sent_key(&self) -> String {
        sent_key(&self.limit, &self.label)
    }
}

/// The alerts to send: for each limit (with `spends` in the same order), the thresholds its
/// spend has reached in the period containing `now` in `tz` that `sent` does not hold yet.
/// Several thresholds reached at once make one crossing naming all of them.
pub fn decide(
    spec: &Spec,
    spends: &[LimitSpend],
    sent: &Sent,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Crossing> {
    let none = BTreeSet::new();
    spec.limits
        .iter()
        .zip(spends)
        .filter_map(|(limit, spend)| {
            let label = periods::period_label(limit.period, now, tz);
            let already = sent.get(&sent_key(&limit.name, &label)).unwrap_or(&none);
            let percents = periods::crossings(limit.usd, &limit.warn_at, spend.spent, already);
            if percents.is_empty() {
                return None;
            }
            let (start, end) = periods::bounds(limit.period, now, tz);
            Some(Crossing {
                limit: limit.name.clone(),
                period: limit.period,
                label,
                percents,
                spent: spend.spent,
                usd: limit.usd,
                start,
                end,
                projected: periods::projection(spend.spent, start, end, now),
                top: spend.top.clone(),
                model: limit.model.as_ref().map(|g| g.as_str().to_string()),
                provider: limit.provider.as_ref().map(|g| g.as_str().to_string()),
            })
        })
        .collect()
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
    }
}

/// The alert for one crossing: the spend, the limit, the share, the top models and the
/// projection to the period's end. Its key is unique per limit, threshold and period.
pub fn alert(job: &str, c: &Crossing, tz: Tz) -> Alert {
    let share = c.spent / c.usd * 100.0;
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let mut body = format!(
        "Budget `{}` ({} {}): ${:.2} spent of ${:.2}, {share:.1} % of the limit; crossed {} %.\n",
        c.limit,
        period_name(c.period),
        c.label,
        c.spent,
        c.usd,
        c.percents
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" %, ")
    );
    let _ = writeln!(
        body,
        "Projected to the end of the period ({}): ${:.2}, {:.1} % of the limit, at the average rate since {}.",
        local(c.end),
        c.projected,
        c.projected / c.usd * 100.0,
        local(c.start)
    );
    if c.model.is_some() || c.provider.is_some() {
        let _ = writeln!(
            body,
            "Counted: model {}, provider {}.",
            c.model.as_deref().unwrap_or("*"),
            c.provider.as_deref().unwrap_or("*")
        );
    }
    body.push_str("\nTop models this period:\n");
    if c.top.is_empty() {
        body.push_str("  (none)\n");
    }
    for (model, usd) in &c.top {
        let _ = writeln!(body, "  {model:<40} ${usd:.2}");
    }
    body.push_str(
        "\nThis threshold is not alerted again in this period. Raise the limit in the jobs file, or look at `caretaker status` and the gateway's dashboard for who spends.",
    );
    Alert {
        key: format!("budget:{job}:{}:{}:{}", c.limit, c.label, c.highest()),
        severity: if c.highest() >= 100 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        job: Some(job.to_string()),
        what: format!(
            "budget {} at {:.0} % of ${:.2} ({})",
            c.limit, share, c.usd, c.label
        ),
        body,
    }
}

/// Label values in figure names are quoted as in Prometheus' text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let gateway = &ctx.config.gateway;
    let tz = ctx.config.timezone;
    if gateway.columns.provider.is_none()
        && let Some(limit) = spec.limits.iter().find(|l| l.provider.is_some())
    {
        anyhow::bail!(
            "budget limit `{}` filters by provider, but this gateway records no provider (gateway.schema {:?}); remove `provider` from the limit or set gateway.columns.provider",
            limit.name,
            gateway.preset
        );
    }
    let conn = gateway.connect(true)?;
    let mut by_period: BTreeMap<Period, Vec<ModelSpend>> = BTreeMap::new();
    let mut longest_read = Duration::ZERO;
    for limit in &spec.limits {
        if by_period.contains_key(&limit.period) {
            continue;
        }
        let (start, end) = periods::bounds(limit.period, ctx.now, tz);
        let started = Instant::now();
        let rows = spend_by_model(&conn, gateway, start, end, spec.include_failed)?;
        longest_read = longest_read.max(started.elapsed());
        by_period.insert(limit.period, rows);
    }
    drop(conn);
    let spends: Vec<LimitSpend> = spec
        .limits
        .iter()
        .map(|l| limit_spend(l, &by_period[&l.period]))
        .collect();

    let ns = format!("budget:{}", ctx.job);
    let mut sent = Sent::new();
    for limit in &spec.limits {
        let key = sent_key(
            &limit.name,
            &periods::period_label(limit.period, ctx.now, tz),
        );
        if let Some(set) = ctx.state.get::<BTreeSet<u32>>(&ns, &key)? {
            sent.insert(key, set);
        }
    }
    let crossings = decide(spec, &spends, &sent, ctx.now, tz);

    let mut report = Report::new(String::new());
    for c in &crossings {
        let alert = alert(ctx.job, c, tz);
        if ctx.dry_run {
            report.plan.push(format!("would alert: {}", alert.what));
            continue;
        }
        // Recorded before the alert is queued: a crash in between loses one mail rather
        // than sending it twice, which is what "once" promises.
        let mut done = sent.get(&c.sent_key()).cloned().unwrap_or_default();
        done.extend(c.percents.iter().copied());
        ctx.state.put(&ns, &c.sent_key(), &done)?;
        ctx.alerts.push(AlertEvent::Raise(alert));
    }
    if !ctx.dry_run {
        // What the metrics file shows for this job: spend against each limit, this period.
        let shown: Vec<BudgetSpend> = spec
            .limits
            .iter()
            .zip(&spends)
            .map(|(limit, spend)| BudgetSpend {
                limit: limit.name.clone(),
                period: limit.period.name().to_string(),
                period_start: periods::bounds(limit.period, ctx.now, tz).0,
                spend_usd: spend.spent,
                limit_usd: limit.usd,
            })
            .collect();
        ctx.state.put(&ns, "spend", &shown)?;
    }

    let mut parts = Vec::new();
    for (limit, spend) in spec.limits.iter().zip(&spends) {
        let (start, end) = periods::bounds(limit.period, ctx.now, tz);
        let projected = periods::projection(spend.spent, start, end, ctx.now);
        parts.push(format!(
            "{} {}: ${:.2} of ${:.2} ({:.1} %), projected ${:.2}",
            limit.name,
            periods::period_label(limit.period, ctx.now, tz),
            spend.spent,
            limit.usd,
            spend.spent / limit.usd * 100.0,
            projected
        ));
        report = report
            .figure(
                &format!("spent_usd{{limit=\"{}\"}}", label(&limit.name)),
                spend.spent,
            )
            .figure(
                &format!("projected_usd{{limit=\"{}\"}}", label(&limit.name)),
                projected,
            )
            .figure(
                &format!("limit_usd{{limit=\"{}\"}}", label(&limit.name)),
                limit.usd,
            );
    }
    report.summary = format!(
        "{}; {} {}",
        parts.join("; "),
        crossings.len(),
        match (ctx.dry_run, crossings.len()) {
            (true, 1) => "alert would be sent",
            (true, _) => "alerts would be sent",
            (false, 1) => "alert sent",
            (false, _) => "alerts sent",
        }
    );
    Ok(report
        .figure(
            "alerts_sent",
            if ctx.dry_run {
                0.0
            } else {
                crossings.len() as f64
            },
        )
        .figure("longest_read_ms", longest_read.as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse()
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
    }

    fn limit(name: &str, period: Period, usd: f64, warn_at: &[f64], model: Option<&str>) -> Limit {
        Limit {
            name: name.into(),
            period,
            usd,
            warn_at: warn_at.to_vec(),
            model: model.map(|m| glob::Pattern::new(m).unwrap()),
            provider: None,
        }
    }

    fn spend(model: &str, provider: Option<&str>, usd: f64) -> ModelSpend {
        ModelSpend {
            model: model.into(),
            provider: provider.map(Into::into),
            usd,
        }
    }

    #[test]
    fn limits_count_the_models_and_providers_their_globs_match() {
        let rows = [
            spend("gpt-4o", Some("openai"), 3.0),
            spend("gpt-4.1-mini", Some("openai"), 1.0),
            spend("sonnet", Some("anthropic"), 5.0),
            spend("gpt-4o", Some("azure"), 2.0),
        ];
        let all = limit_spend(&limit("all", Period::Day, 10.0, &[1.0], None), &rows);
        assert_eq!(all.spent, 11.0);
        // gpt-4o across two providers ties with sonnet; ties go by name.
        assert_eq!(all.top[0], ("gpt-4o".to_string(), 5.0));
        assert_eq!(all.top[1], ("sonnet".to_string(), 5.0));
        assert_eq!(all.top[2], ("gpt-4.1-mini".to_string(), 1.0));
        let gpt4 = limit_spend(
            &limit("g", Period::Day, 10.0, &[1.0], Some("gpt-4*")),
            &rows,
        );
        assert_eq!(gpt4.spent, 6.0);
        let mut openai = limit("o", Period::Day, 10.0, &[1.0], None);
        openai.provider = Some(glob::Pattern::new("openai").unwrap());
        assert_eq!(limit_spend(&openai, &rows).spent, 4.0);
    }

    #[test]
    fn decide_alerts_each_threshold_once_per_period() {
        let berlin = chrono_tz::Europe::Berlin;
        let spec = Spec {
            limits: vec![limit("daily", Period::Day, 50.0, &[0.75, 1.0], None)],
            include_failed: false,
        };
        let at = |spent: f64| {
            vec![LimitSpend {
                spent,
                top: vec![("gpt-4o".into(), spent)],
            }]
        };
        let now = utc("2026-11-22T10:00:00Z");
        let mut sent = Sent::new();
        assert!(decide(&spec, &at(30.0), &sent, now, berlin).is_empty());
        let first = decide(&spec, &at(40.0), &sent, now, berlin);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].percents, [75]);
        assert_eq!(first[0].label, "2026-11-22");
        sent.insert(first[0].sent_key(), [75].into());
        assert!(decide(&spec, &at(40.0), &sent, now, berlin).is_empty());
        let second = decide(&spec, &at(55.0), &sent, now, berlin);
        assert_eq!(second[0].percents, [100]);
        sent.get_mut(&second[0].sent_key()).unwrap().insert(100);
        assert!(decide(&spec, &at(80.0), &sent, now, berlin).is_empty());
        // Both at once: one crossing naming both, keyed by the highest.
        let fresh = decide(&spec, &at(60.0), &Sent::new(), now, berlin);
        assert_eq!(fresh[0].percents, [75, 100]);
        assert_eq!(fresh[0].highest(), 100);
    }

    #[test]
    fn a_new_local_day_starts_fresh_across_midnight_and_dst() {
        let spec = Spec {
            limits: vec![limit("daily", Period::Day, 10.0, &[0.75], None)],
            include_failed: false,
        };
        let over = [LimitSpend {
            spent: 9.0,
            top: Vec::new(),
        }];
        // (zone, before, after, label before, label after, hours of the day after)
        #[rustfmt::skip]
        let cases = [
            // Berlin midnight is 23:00 UTC in winter: still the 22nd in UTC, already the 23rd locally.
            (chrono_tz::Europe::Berlin, "2026-11-22T22:59:00Z", "2026-11-22T23:01:00Z", "2026-11-22", "2026-11-23", 24),
            // Berlin falls back on 2026-10-25: that day lasts 25 hours, to 23:00 UTC.
            (chrono_tz::Europe::Berlin, "2026-10-25T22:59:00Z", "2026-10-25T23:01:00Z", "2026-10-25", "2026-10-26", 24),
            // Berlin springs forward on 2026-03-29: that day starts at 23:00 UTC on the 28th and lasts 23 hours.
            (chrono_tz::Europe::Berlin, "2026-03-28T22:59:00Z", "2026-03-28T23:01:00Z", "2026-03-28", "2026-03-29", 23),
            // New York springs forward on 2026-03-08 (midnight at 05:00 UTC) ...
            (chrono_tz::America::New_York, "2026-03-08T04:59:00Z", "2026-03-08T05:01:00Z", "2026-03-07", "2026-03-08", 23),
            // ... and falls back on 2026-11-01 (midnight at 04:00 UTC, the day lasts 25 hours).
            (chrono_tz::America::New_York, "2026-11-01T03:59:00Z", "2026-11-01T04:01:00Z", "2026-10-31", "2026-11-01", 25),
        ];
        for (tz, before, after, label_before, label_after, hours) in cases {
            let first = decide(&spec, &over, &Sent::new(), utc(before), tz);
            assert_eq!(first[0].label, label_before, "{tz} {before}");
            let sent = Sent::from([(first[0].sent_key(), BTreeSet::from([75]))]);
            assert!(decide(&spec, &over, &sent, utc(before), tz).is_empty());
            let next = decide(&spec, &over, &sent, utc(after), tz);
            assert_eq!(
                next.len(),
                1,
                "{tz} {after}: a new day starts with nothing sent"
            );
            assert_eq!(next[0].label, label_after);
            assert_eq!(
                (next[0].end - next[0].start).num_hours(),
                hours,
                "{tz} {after}"
            );
        }
    }

    #[test]
    fn the_alert_says_spend_limit_share_top_models_and_projection() {
        let berlin = chrono_tz::Europe::Berlin;
        let spec = Spec {
            limits: vec![limit(
                "daily",
                Period::Day,
                50.0,
                &[0.75, 1.0],
                Some("gpt-*"),
            )],
            include_failed: false,
        };
        let spends = [LimitSpend {
            spent: 40.0,
            top: vec![("gpt-4o".into(), 30.0), ("gpt-4.1-mini".into(), 10.0)],
        }];
        // Noon in Berlin: half the day gone, so the projection doubles the spend.
        let now = utc("2026-11-22T11:00:00Z");
        let c = &decide(&spec, &spends, &Sent::new(), now, berlin)[0];
        assert_eq!(c.projected, 80.0);
        let a = alert("spend", c, berlin);
        assert_eq!(a.key, "budget:spend:daily:2026-11-22:75");
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!(a.what, "budget daily at 80 % of $50.00 (2026-11-22)");
        for needle in [
            "$40.00 spent of $50.00, 80.0 % of the limit; crossed 75 %",
            "Projected to the end of the period (2026-11-23 00:00 CET): $80.00, 160.0 %",
            "gpt-4o",
            "$30.00",
            "gpt-4.1-mini",
            "model gpt-*",
        ] {
            assert!(
                a.body.contains(needle),
                "missing {needle:?} in:\n{}",
                a.body
            );
        }
    }
}
