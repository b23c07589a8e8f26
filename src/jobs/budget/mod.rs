//! The `budget` job: spend against limits per calendar period, one alert per crossing, one
//! "resolved" message when the period ends or the spend is back under.
//!
//! The spend is read from the gateway in one short read per period; [`decide`] turns it and
//! the alerts raised so far into what to raise and what to resolve, as a pure function of the
//! clock and the zone. Raised alerts live in the state database, so a restart neither raises
//! nor resolves anything twice.

pub mod periods;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::jobs::contract::{Context, Report};
use crate::alerts::{Alert, AlertEvent, Severity};
use crate::checks::Checks;
use crate::checks::values::Share;
use crate::gateway::{Access, Exec, ExecExt, Gateway};
use crate::metrics::{BudgetSpend, escape_label as label};
use periods::Period;

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

impl crate::jobs::contract::Contract for Spec {}

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
    db: &mut dyn Exec,
    gateway: &Gateway,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    include_failed: bool,
) -> anyhow::Result<Vec<ModelSpend>> {
    let c = &gateway.columns;
    let d = db.dialect();
    let provider = c
        .provider
        .as_ref()
        .map_or_else(|| "NULL".to_string(), |p| d.ident(p));
    let failed = match (gateway.failed_sql(d), include_failed) {
        (Some(failed), false) => format!(" AND NOT ({failed})"),
        _ => String::new(),
    };
    let sql = format!(
        "SELECT {model}, {provider}, SUM({cost}) FROM {table} \
         WHERE {time} >= {p1} AND {time} < {p2}{failed} GROUP BY 1, 2",
        model = d.ident(&c.model),
        cost = gateway.cost_expr(d),
        table = d.table(&gateway.table),
        time = d.ident(&c.time),
        p1 = d.param(1),
        p2 = d.param(2),
    );
    let reading = || {
        format!(
            "reading the spend from table `{}` of {} (check gateway.schema and gateway.columns)",
            gateway.table,
            gateway.location()
        )
    };
    let bounds = [
        d.time_bound(c.time_format, start),
        d.time_bound(c.time_format, end),
    ];
    db.query_map(&sql, &bounds, |r| {
        Ok(ModelSpend {
            model: r.string(0)?.unwrap_or_default(),
            provider: r.string(1)?,
            usd: r.f64(2)?.unwrap_or(0.0),
        })
    })
    .with_context(reading)
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

/// The key of a limit's alert in one period. One key per limit and period: the thresholds
/// crossed in it raise and escalate that one condition, and one "resolved" message ends it. A
/// new period has a new key, so its crossings raise afresh.
pub fn alert_key(job: &str, limit: &str, label: &str) -> String {
    format!("budget:{job}:{limit}:{label}")
}

/// A limit's budget alert that is raised and not resolved yet, as kept in the state database
/// (namespace `budget:<job>`, key `alerts`, by limit name). There is at most one per limit:
/// the one of the period it was raised in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub key: String,
    pub period: Period,
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Thresholds alerted in this period and still reached, in percent: one fallen under is
    /// dropped, so that crossing it again alerts again.
    pub percents: BTreeSet<u32>,
    /// Every threshold alerted in this period, for the "resolved" message.
    pub alerted: BTreeSet<u32>,
    /// The spend and the limit when last measured: what a resolve says when the limit is gone.
    pub spent: f64,
    pub usd: f64,
}

/// The raised budget alerts of one job, by limit name.
pub type Actives = BTreeMap<String, Active>;

/// Whether `active` belongs to a period other than `limit`'s current one: the period has
/// rolled over (or the limit now counts by another kind of period).
pub fn is_stale(active: &Active, limit: &Limit, now: DateTime<Utc>, tz: Tz) -> bool {
    active.period != limit.period || active.label != periods::period_label(limit.period, now, tz)
}

/// A limit that reached thresholds not alerted yet in this period.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub limit: String,
    pub key: String,
    /// No alert of this limit is raised in this period yet: a raise, not an escalation.
    pub first: bool,
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
}

/// Why a raised budget alert is resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cleared {
    /// Its period is over; the spend is the period's final one.
    PeriodEnded,
    /// The limit counts by another kind of period now (`day` became `month`).
    PeriodChanged(Period),
    /// The spend is under every threshold again (rows re-priced or archived, the limit or its
    /// thresholds raised); `lowest` is the lowest threshold, in percent.
    BackUnder { lowest: u32 },
    /// The limit is no longer in the jobs file; the spend is the last one measured.
    LimitRemoved,
}

/// A raised budget alert to resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub limit: String,
    pub active: Active,
    pub why: Cleared,
    /// The spend at the end: the whole ended period's, or the current one.
    pub spent: f64,
    pub usd: f64,
}

/// What one run does: resolve, then raise; and the raised alerts it leaves behind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub resolutions: Vec<Resolution>,
    pub crossings: Vec<Crossing>,
    pub actives: Actives,
}

/// Decides a run, as a pure function of the clock `now` in zone `tz`.
///
/// `spends` is each limit's spend in its current period (same order as `spec.limits`);
/// `ended` is, for a limit whose raised alert belongs to a period that is over, that
/// period's final spend ([`is_stale`] says which); `actives` are the alerts raised and not
/// resolved, as recorded. A limit's alert is resolved when its period is over, when its spend
/// is under every threshold again, or when the limit is gone; thresholds reached and not
/// alerted yet in the current period raise its alert (or escalate it when it is already
/// raised in this period). Several thresholds reached at once make one crossing naming all.
/// Run twice on the same inputs and the recorded `actives` of the first, it does nothing more.
pub fn decide(
    spec: &Spec,
    job: &str,
    spends: &[LimitSpend],
    ended: &BTreeMap<String, f64>,
    actives: &Actives,
    now: DateTime<Utc>,
    tz: Tz,
) -> Plan {
    let mut plan = Plan::default();
    for (name, active) in actives {
        if !spec.limits.iter().any(|l| &l.name == name) {
            plan.resolutions.push(Resolution {
                limit: name.clone(),
                active: active.clone(),
                why: Cleared::LimitRemoved,
                spent: active.spent,
                usd: active.usd,
            });
        }
    }
    for (limit, spend) in spec.limits.iter().zip(spends) {
        let mut current = actives.get(&limit.name);
        if let Some(active) = current
            && is_stale(active, limit, now, tz)
        {
            plan.resolutions.push(Resolution {
                limit: limit.name.clone(),
                active: active.clone(),
                why: if active.period == limit.period {
                    Cleared::PeriodEnded
                } else {
                    Cleared::PeriodChanged(limit.period)
                },
                spent: ended.get(&limit.name).copied().unwrap_or(active.spent),
                usd: limit.usd,
            });
            current = None;
        }
        let reached: BTreeSet<u32> =
            periods::crossings(limit.usd, &limit.warn_at, spend.spent, &BTreeSet::new())
                .into_iter()
                .collect();
        if reached.is_empty() {
            if let Some(active) = current {
                plan.resolutions.push(Resolution {
                    limit: limit.name.clone(),
                    active: active.clone(),
                    why: Cleared::BackUnder {
                        lowest: limit
                            .warn_at
                            .first()
                            .map_or(100, |s| (s * 100.0).round() as u32),
                    },
                    spent: spend.spent,
                    usd: limit.usd,
                });
            }
            continue;
        }
        let label = periods::period_label(limit.period, now, tz);
        let (start, end) = periods::bounds(limit.period, now, tz);
        let key = alert_key(job, &limit.name, &label);
        let alerted = current.map(|a| &a.percents);
        let percents: Vec<u32> = reached
            .iter()
            .filter(|p| alerted.is_none_or(|a| !a.contains(p)))
            .copied()
            .collect();
        if !percents.is_empty() {
            plan.crossings.push(Crossing {
                limit: limit.name.clone(),
                key: key.clone(),
                first: current.is_none(),
                period: limit.period,
                label: label.clone(),
                percents,
                spent: spend.spent,
                usd: limit.usd,
                start,
                end,
                projected: periods::projection(spend.spent, start, end, now),
                top: spend.top.clone(),
                model: limit.model.as_ref().map(|g| g.as_str().to_string()),
                provider: limit.provider.as_ref().map(|g| g.as_str().to_string()),
            });
        }
        let mut alerted = current.map(|a| a.alerted.clone()).unwrap_or_default();
        alerted.extend(reached.iter().copied());
        // A threshold the spend fell back under is forgotten, so crossing it again alerts again.
        plan.actives.insert(
            limit.name.clone(),
            Active {
                key,
                period: limit.period,
                label,
                start,
                end,
                percents: reached,
                alerted,
                spent: spend.spent,
                usd: limit.usd,
            },
        );
    }
    plan
}

fn percent_list(percents: impl IntoIterator<Item = u32>) -> String {
    percents
        .into_iter()
        .map(|p| format!("{p} %"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The alert for one crossing: the spend, the limit, the share, the top models and the
/// projection to the period's end, under the key of the limit's period.
pub fn alert(job: &str, c: &Crossing, tz: Tz) -> Alert {
    let share = c.spent / c.usd * 100.0;
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let mut body = format!(
        "Budget `{}` ({} {}): ${:.2} spent of ${:.2}, {share:.1} % of the limit; crossed {}.\n",
        c.limit,
        c.period.name(),
        c.label,
        c.spent,
        c.usd,
        percent_list(c.percents.iter().copied())
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
    let _ = write!(
        body,
        "\nThis threshold is not alerted again in this period unless the spend falls back under it. \
         A \"resolved\" message follows when the period ends ({}) or the spend is back under every threshold. \
         Raise the limit in the jobs file, or look at `caretaker status` and the gateway's dashboard for who spends.",
        local(c.end)
    );
    Alert {
        key: c.key.clone(),
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

/// The event for one crossing: a raise, or an escalation of the alert already raised in this
/// period (which `repeat_after` must not hold back: it is a new threshold, decided once).
pub fn raise_event(job: &str, c: &Crossing, tz: Tz) -> AlertEvent {
    let alert = alert(job, c, tz);
    if c.first {
        AlertEvent::Raise(alert)
    } else {
        AlertEvent::Escalate(alert)
    }
}

/// The "resolved" message for one resolution: why the alert ended and the final spend.
pub fn resolve_event(job: &str, r: &Resolution, tz: Tz) -> AlertEvent {
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let a = &r.active;
    let share = r.spent / r.usd * 100.0;
    let of = format!(
        "${:.2} spent of ${:.2}, {share:.1} % of the limit",
        r.spent, r.usd
    );
    let (what, mut body) = match r.why {
        Cleared::PeriodEnded => (
            format!(
                "budget {} {} ended at ${:.2}, {share:.0} % of ${:.2}",
                r.limit, a.label, r.spent, r.usd
            ),
            format!(
                "Budget `{}` ({} {}) ended at {}: {of} (the final spend of that period).\n\
                 The new period starts afresh: its crossings alert again.\n",
                r.limit,
                a.period.name(),
                a.label,
                local(a.end)
            ),
        ),
        Cleared::PeriodChanged(to) => (
            format!(
                "budget {} {} ended: the limit counts by {} now",
                r.limit,
                a.label,
                to.name()
            ),
            format!(
                "Budget `{}` ({} {}) ended: the limit counts by {} now. Its spend in {}: {of}.\n",
                r.limit,
                a.period.name(),
                a.label,
                to.name(),
                a.label
            ),
        ),
        Cleared::BackUnder { lowest } => (
            format!(
                "budget {} back under {lowest} % of ${:.2} ({}): ${:.2}",
                r.limit, r.usd, a.label, r.spent
            ),
            format!(
                "Budget `{}` ({} {}): {of}, back under {lowest} %, its lowest threshold.\n\
                 The spend went down (rows re-priced or archived) or the limit or its thresholds were raised. \
                 A threshold crossed again in this period alerts again.\n",
                r.limit,
                a.period.name(),
                a.label
            ),
        ),
        Cleared::LimitRemoved => (
            format!(
                "budget {} removed from the jobs file ({})",
                r.limit, a.label
            ),
            format!(
                "Budget `{}` ({} {}) is no longer in the jobs file. Last measured: {of}.\n",
                r.limit,
                a.period.name(),
                a.label
            ),
        ),
    };
    let _ = writeln!(
        body,
        "Thresholds alerted in {}: {}.",
        a.label,
        percent_list(a.alerted.iter().copied())
    );
    AlertEvent::ResolveWith {
        key: a.key.clone(),
        job: Some(job.to_string()),
        what,
        body,
    }
}

/// Before resolved budget alerts, the thresholds sent were kept per limit and period (key
/// `<limit>@<label>`) and each crossing had its own alert key, never resolved. Carries this
/// period's thresholds over (so an upgrade mid-period re-sends nothing); `clean` also drops
/// those records and retires the old keys without a message (a mail per old crossing would
/// flood the operator for alerts of long-gone periods).
fn migrate_legacy(
    spec: &Spec,
    ctx: &Context<'_>,
    ns: &str,
    clean: bool,
) -> anyhow::Result<Actives> {
    let tz = ctx.timezone;
    let mut actives = Actives::new();
    for limit in &spec.limits {
        let label = periods::period_label(limit.period, ctx.now, tz);
        let Some(percents) = ctx
            .state
            .get::<BTreeSet<u32>>(ns, &format!("{}@{label}", limit.name))?
        else {
            continue;
        };
        if percents.is_empty() {
            continue;
        }
        let (start, end) = periods::bounds(limit.period, ctx.now, tz);
        actives.insert(
            limit.name.clone(),
            Active {
                key: alert_key(ctx.job, &limit.name, &label),
                period: limit.period,
                label,
                start,
                end,
                alerted: percents.clone(),
                percents,
                spent: 0.0,
                usd: limit.usd,
            },
        );
    }
    if clean {
        ctx.state
            .conn()
            .execute(
                "DELETE FROM kv WHERE ns = ?1 AND key LIKE '%@%'",
                rusqlite::params![ns],
            )
            .with_context(|| {
                format!(
                    "dropping the old budget records of job `{}` from {}",
                    ctx.job,
                    ctx.state.path().display()
                )
            })?;
        crate::alerts::retire(ctx.state, &format!("{ns}:"))?;
    }
    Ok(actives)
}

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    let gateway = ctx.gateway;
    let tz = ctx.timezone;
    if gateway.columns.provider.is_none()
        && let Some(limit) = spec.limits.iter().find(|l| l.provider.is_some())
    {
        anyhow::bail!(
            "budget limit `{}` filters by provider, but this gateway records no provider (gateway.schema {:?}); remove `provider` from the limit or set gateway.columns.provider",
            limit.name,
            gateway.preset
        );
    }
    let ns = format!("budget:{}", ctx.job);
    let recorded: Option<Actives> = ctx.state.get(&ns, "alerts")?;
    let actives = match &recorded {
        Some(a) => a.clone(),
        None => migrate_legacy(spec, ctx, &ns, !ctx.dry_run)?,
    };

    // One read per distinct period: the current ones, and those of raised alerts whose period
    // is over (their final spend goes into the "resolved" message).
    let mut db = gateway.open(Access::ReadOnly)?;
    db.check_columns()?;
    let mut by_bounds: BTreeMap<(DateTime<Utc>, DateTime<Utc>), Vec<ModelSpend>> = BTreeMap::new();
    let mut longest_read = Duration::ZERO;
    let mut read = |start: DateTime<Utc>, end: DateTime<Utc>| -> anyhow::Result<()> {
        if let Entry::Vacant(slot) = by_bounds.entry((start, end)) {
            let started = Instant::now();
            let rows = spend_by_model(db.exec(), gateway, start, end, spec.include_failed)?;
            longest_read = longest_read.max(started.elapsed());
            slot.insert(rows);
        }
        Ok(())
    };
    for limit in &spec.limits {
        let (start, end) = periods::bounds(limit.period, ctx.now, tz);
        read(start, end)?;
        if let Some(active) = actives.get(&limit.name)
            && is_stale(active, limit, ctx.now, tz)
        {
            read(active.start, active.end)?;
        }
    }
    drop(db);
    let spends: Vec<LimitSpend> = spec
        .limits
        .iter()
        .map(|l| limit_spend(l, &by_bounds[&periods::bounds(l.period, ctx.now, tz)]))
        .collect();
    let ended: BTreeMap<String, f64> = spec
        .limits
        .iter()
        .filter_map(|l| {
            let active = actives.get(&l.name)?;
            is_stale(active, l, ctx.now, tz).then(|| {
                (
                    l.name.clone(),
                    limit_spend(l, &by_bounds[&(active.start, active.end)]).spent,
                )
            })
        })
        .collect();
    let plan = decide(spec, ctx.job, &spends, &ended, &actives, ctx.now, tz);

    let mut report = Report::new(String::new());
    let events: Vec<AlertEvent> = plan
        .resolutions
        .iter()
        .map(|r| resolve_event(ctx.job, r, tz))
        .chain(plan.crossings.iter().map(|c| raise_event(ctx.job, c, tz)))
        .collect();
    if ctx.dry_run {
        for event in &events {
            match event {
                AlertEvent::Raise(a) | AlertEvent::Escalate(a) => {
                    report.plan.push(format!("would alert: {}", a.what));
                }
                AlertEvent::Resolve { what, .. } | AlertEvent::ResolveWith { what, .. } => {
                    report.plan.push(format!("would resolve: {what}"));
                }
            }
        }
    } else {
        // Recorded before the events are queued: a crash in between loses a message rather
        // than sending it twice, which is what "once" promises. The outbox de-duplicates by
        // key as well: a resolve of a key not raised, or a raise of a key raised within
        // `repeat_after`, queues nothing.
        if recorded.as_ref() != Some(&plan.actives) {
            ctx.state.put(&ns, "alerts", &plan.actives)?;
        }
        ctx.alerts.extend(events);
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
    let (raised, resolved) = (plan.crossings.len(), plan.resolutions.len());
    let verb = if ctx.dry_run { "would be " } else { "" };
    report.summary = format!(
        "{}; {raised} {} {verb}sent, {resolved} {verb}resolved",
        parts.join("; "),
        if raised == 1 { "alert" } else { "alerts" },
    );
    let counted = |n: usize| if ctx.dry_run { 0.0 } else { n as f64 };
    Ok(report
        .figure("alerts_sent", counted(raised))
        .figure("alerts_resolved", counted(resolved))
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

    fn daily(usd: f64) -> Spec {
        Spec {
            limits: vec![limit("daily", Period::Day, usd, &[0.75, 1.0], None)],
            include_failed: false,
        }
    }

    fn spent(usd: f64) -> Vec<LimitSpend> {
        vec![LimitSpend {
            spent: usd,
            top: vec![("gpt-4o".into(), usd)],
        }]
    }

    /// What the state database gives back after a restart: the recorded alerts, through JSON.
    fn restart(actives: &Actives) -> Actives {
        serde_json::from_str(&serde_json::to_string(actives).unwrap()).unwrap()
    }

    /// One run of the table: the clock, the spend of the current period, the final spend of
    /// an ended one; the raises expected as (key, percents, first) and the resolves as (key,
    /// why, final spend).
    struct Step<'a> {
        at: &'a str,
        spent: f64,
        ended: Option<f64>,
        raises: &'a [(&'a str, &'a [u32], bool)],
        resolves: &'a [(&'a str, Cleared, f64)],
    }

    fn step<'a>(
        at: &'a str,
        spent: f64,
        ended: Option<f64>,
        raises: &'a [(&'a str, &'a [u32], bool)],
        resolves: &'a [(&'a str, Cleared, f64)],
    ) -> Step<'a> {
        Step {
            at,
            spent,
            ended,
            raises,
            resolves,
        }
    }

    /// Runs `steps` in order on one limit, carrying the recorded alerts from run to run
    /// through a restart each time, and checks each run's plan.
    fn walk(spec: &Spec, tz: Tz, steps: &[Step<'_>]) -> Actives {
        let mut actives = Actives::new();
        for (i, s) in steps.iter().enumerate() {
            let ended: BTreeMap<String, f64> = s
                .ended
                .map(|e| ("daily".to_string(), e))
                .into_iter()
                .collect();
            let plan = decide(
                spec,
                "spend",
                &spent(s.spent),
                &ended,
                &actives,
                utc(s.at),
                tz,
            );
            let raises: Vec<(&str, &[u32], bool)> = plan
                .crossings
                .iter()
                .map(|c| (c.key.as_str(), c.percents.as_slice(), c.first))
                .collect();
            assert_eq!(raises, s.raises, "step {i} at {} in {tz}: raises", s.at);
            let resolves: Vec<(&str, Cleared, f64)> = plan
                .resolutions
                .iter()
                .map(|r| (r.active.key.as_str(), r.why, r.spent))
                .collect();
            assert_eq!(
                resolves, s.resolves,
                "step {i} at {} in {tz}: resolves",
                s.at
            );
            actives = restart(&plan.actives);
            // The same run again, as after a restart mid-period, decides nothing more.
            let again = decide(
                spec,
                "spend",
                &spent(s.spent),
                &BTreeMap::new(),
                &actives,
                utc(s.at),
                tz,
            );
            assert!(
                again.crossings.is_empty() && again.resolutions.is_empty(),
                "step {i} at {}: a re-run decided {again:?}",
                s.at
            );
            assert_eq!(again.actives, actives, "step {i}: a re-run changes nothing");
        }
        actives
    }

    const ENDED: Cleared = Cleared::PeriodEnded;
    const UNDER: Cleared = Cleared::BackUnder { lowest: 75 };

    #[test]
    fn crossings_raise_then_escalate_one_key_and_reruns_do_nothing() {
        const DAY: &str = "budget:spend:daily:2026-11-22";
        #[rustfmt::skip]
        let steps = [
            step("2026-11-22T08:00:00Z", 30.0, None, &[], &[]),
            step("2026-11-22T09:00:00Z", 40.0, None, &[(DAY, &[75], true)], &[]),
            step("2026-11-22T09:10:00Z", 41.0, None, &[], &[]),
            step("2026-11-22T10:00:00Z", 55.0, None, &[(DAY, &[100], false)], &[]),
            step("2026-11-22T11:00:00Z", 80.0, None, &[], &[]),
        ];
        let left = walk(&daily(50.0), chrono_tz::Europe::Berlin, &steps);
        assert_eq!(left["daily"].percents, BTreeSet::from([75, 100]));
        // Both at once: one crossing naming both, keyed by the period.
        let both = decide(
            &daily(50.0),
            "spend",
            &spent(60.0),
            &BTreeMap::new(),
            &Actives::new(),
            utc("2026-11-22T10:00:00Z"),
            chrono_tz::Europe::Berlin,
        );
        assert_eq!(both.crossings[0].percents, [75, 100]);
        assert_eq!(both.crossings[0].highest(), 100);
    }

    #[test]
    fn local_midnight_resolves_the_old_period_with_its_final_spend_also_on_dst_days() {
        // (zone, raised before midnight, just after the local midnight, old label, new label)
        #[rustfmt::skip]
        let cases = [
            // Berlin midnight is 23:00 UTC in winter: still the 22nd in UTC, already the 23rd locally.
            (chrono_tz::Europe::Berlin, "2026-11-22T22:59:00Z", "2026-11-22T23:01:00Z", "2026-11-22", "2026-11-23"),
            // Berlin falls back on 2026-10-25: that day lasts 25 hours, to 23:00 UTC.
            (chrono_tz::Europe::Berlin, "2026-10-25T22:59:00Z", "2026-10-25T23:01:00Z", "2026-10-25", "2026-10-26"),
            // Berlin springs forward on 2026-03-29: that day starts at 23:00 UTC on the 28th.
            (chrono_tz::Europe::Berlin, "2026-03-28T22:59:00Z", "2026-03-28T23:01:00Z", "2026-03-28", "2026-03-29"),
            // New York springs forward on 2026-03-08 (midnight at 05:00 UTC) ...
            (chrono_tz::America::New_York, "2026-03-08T04:59:00Z", "2026-03-08T05:01:00Z", "2026-03-07", "2026-03-08"),
            // ... and falls back on 2026-11-01 (midnight at 04:00 UTC, the day lasts 25 hours).
            (chrono_tz::America::New_York, "2026-11-01T03:59:00Z", "2026-11-01T04:01:00Z", "2026-10-31", "2026-11-01"),
        ];
        for (tz, before, after, old, new) in cases {
            let (old_key, new_key) = (
                format!("budget:spend:daily:{old}"),
                format!("budget:spend:daily:{new}"),
            );
            let raise_old = [(old_key.as_str(), &[75][..], true)];
            let resolve_old = [(old_key.as_str(), ENDED, 9.5)];
            let raise_new = [(new_key.as_str(), &[75][..], true)];
            let steps = [
                step(before, 9.0, None, &raise_old, &[]),
                // After midnight: the old day is resolved with its final spend (read over its
                // whole span, so a row logged in its last minute counts); the new one starts at 0.
                step(after, 0.0, Some(9.5), &[], &resolve_old),
                step(after, 8.0, None, &raise_new, &[]),
            ];
            let left = walk(&daily(10.0), tz, &steps);
            let day = &left["daily"];
            assert_eq!(day.label, new, "{tz}");
            assert!(day.start <= utc(after) && utc(after) < day.end, "{tz}");
            assert_eq!(
                day.start,
                utc(before) + chrono::Duration::minutes(1),
                "{tz}: the new day starts at the local midnight"
            );
        }
    }

    #[test]
    fn a_new_period_already_over_resolves_the_old_and_raises_the_new_in_one_run() {
        #[rustfmt::skip]
        let steps = [
            step("2026-11-22T12:00:00Z", 10.0, None, &[("budget:spend:daily:2026-11-22", &[75, 100], true)], &[]),
            // The daemon was down over midnight; the first run of the 24th finds both.
            step("2026-11-24T12:00:00Z", 8.0, Some(12.0), &[("budget:spend:daily:2026-11-24", &[75], true)], &[("budget:spend:daily:2026-11-22", ENDED, 12.0)]),
        ];
        walk(&daily(10.0), chrono_tz::Europe::Berlin, &steps);
    }

    #[test]
    fn spend_back_under_resolves_and_a_new_crossing_raises_again() {
        let berlin = chrono_tz::Europe::Berlin;
        const DAY: &str = "budget:spend:daily:2026-11-22";
        #[rustfmt::skip]
        let steps = [
            step("2026-11-22T09:00:00Z", 11.0, None, &[(DAY, &[75, 100], true)], &[]),
            // Re-priced down to 80 %: still raised (75 % holds), nothing sent.
            step("2026-11-22T10:00:00Z", 8.0, None, &[], &[]),
            // ... up again past 100 %: that threshold was fallen under, so it alerts again.
            step("2026-11-22T11:00:00Z", 10.5, None, &[(DAY, &[100], false)], &[]),
            // Rows archived: under every threshold, resolved with the spend now.
            step("2026-11-22T12:00:00Z", 3.0, None, &[], &[(DAY, UNDER, 3.0)]),
            step("2026-11-22T13:00:00Z", 7.5, None, &[(DAY, &[75], true)], &[]),
        ];
        walk(&daily(10.0), berlin, &steps);
        // The limit raised in the jobs file: the same spend is back under.
        let actives = decide(
            &daily(10.0),
            "spend",
            &spent(9.0),
            &BTreeMap::new(),
            &Actives::new(),
            utc("2026-11-22T09:00:00Z"),
            berlin,
        )
        .actives;
        let raised = decide(
            &daily(20.0),
            "spend",
            &spent(9.0),
            &BTreeMap::new(),
            &actives,
            utc("2026-11-22T09:10:00Z"),
            berlin,
        );
        assert_eq!(raised.resolutions.len(), 1);
        assert_eq!(
            (raised.resolutions[0].why, raised.resolutions[0].usd),
            (UNDER, 20.0)
        );
        assert!(raised.actives.is_empty());
        // A limit gone from the jobs file: resolved with the spend last measured.
        let gone = decide(
            &Spec {
                limits: Vec::new(),
                include_failed: false,
            },
            "spend",
            &[],
            &BTreeMap::new(),
            &actives,
            utc("2026-11-22T09:10:00Z"),
            berlin,
        );
        assert_eq!(gone.resolutions.len(), 1);
        assert_eq!(
            (gone.resolutions[0].why, gone.resolutions[0].spent),
            (Cleared::LimitRemoved, 9.0)
        );
        // A limit that counts by month now: its day alert ends, the month starts with its own.
        let mut monthly = daily(10.0);
        monthly.limits[0].period = Period::Month;
        let moved = decide(
            &monthly,
            "spend",
            &spent(9.0),
            &BTreeMap::from([("daily".to_string(), 9.0)]),
            &actives,
            utc("2026-11-22T09:10:00Z"),
            berlin,
        );
        assert_eq!(
            moved.resolutions[0].why,
            Cleared::PeriodChanged(Period::Month)
        );
        assert_eq!(moved.crossings[0].key, "budget:spend:daily:2026-11");
    }

    #[test]
    fn the_resolved_message_says_why_and_the_final_spend() {
        let berlin = chrono_tz::Europe::Berlin;
        let actives = decide(
            &daily(10.0),
            "spend",
            &spent(11.0),
            &BTreeMap::new(),
            &Actives::new(),
            utc("2026-11-22T12:00:00Z"),
            berlin,
        )
        .actives;
        let plan = decide(
            &daily(10.0),
            "spend",
            &spent(0.0),
            &BTreeMap::from([("daily".to_string(), 12.5)]),
            &actives,
            utc("2026-11-22T23:05:00Z"),
            berlin,
        );
        let AlertEvent::ResolveWith {
            key,
            what,
            body,
            job,
        } = resolve_event("spend", &plan.resolutions[0], berlin)
        else {
            panic!("a budget alert resolves with its own body");
        };
        assert_eq!(key, "budget:spend:daily:2026-11-22");
        assert_eq!(job.as_deref(), Some("spend"));
        assert_eq!(
            what,
            "budget daily 2026-11-22 ended at $12.50, 125 % of $10.00"
        );
        for needle in [
            "Budget `daily` (day 2026-11-22) ended at 2026-11-23 00:00 CET: $12.50 spent of $10.00, 125.0 % of the limit",
            "Thresholds alerted in 2026-11-22: 75 %, 100 %.",
        ] {
            assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
        }
        let under = decide(
            &daily(10.0),
            "spend",
            &spent(2.0),
            &BTreeMap::new(),
            &actives,
            utc("2026-11-22T13:00:00Z"),
            berlin,
        );
        let AlertEvent::ResolveWith { what, body, .. } =
            resolve_event("spend", &under.resolutions[0], berlin)
        else {
            panic!("a budget alert resolves with its own body");
        };
        assert_eq!(
            what,
            "budget daily back under 75 % of $10.00 (2026-11-22): $2.00"
        );
        assert!(
            body.contains("$2.00 spent of $10.00, 20.0 % of the limit, back under 75 %"),
            "{body}"
        );
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
        let c = &decide(
            &spec,
            "spend",
            &spends,
            &BTreeMap::new(),
            &Actives::new(),
            now,
            berlin,
        )
        .crossings[0];
        assert_eq!(c.projected, 80.0);
        let a = alert("spend", c, berlin);
        assert_eq!(a.key, "budget:spend:daily:2026-11-22");
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!(a.what, "budget daily at 80 % of $50.00 (2026-11-22)");
        assert!(matches!(
            raise_event("spend", c, berlin),
            AlertEvent::Raise(_)
        ));
        let escalation = Crossing {
            first: false,
            ..c.clone()
        };
        assert!(matches!(
            raise_event("spend", &escalation, berlin),
            AlertEvent::Escalate(_)
        ));
        for needle in [
            "$40.00 spent of $50.00, 80.0 % of the limit; crossed 75 %",
            "Projected to the end of the period (2026-11-23 00:00 CET): $80.00, 160.0 %",
            "gpt-4o",
            "$30.00",
            "gpt-4.1-mini",
            "model gpt-*",
            "A \"resolved\" message follows when the period ends (2026-11-23 00:00 CET)",
        ] {
            assert!(
                a.body.contains(needle),
                "missing {needle:?} in:\n{}",
                a.body
            );
        }
    }
}
