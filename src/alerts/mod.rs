//! Alerts: raised by jobs, kept in the state database's outbox, delivered to every sink.
//!
//! An alert is written to the outbox before anything tries to send it, so a crash, a restart
//! or an unreachable mail server loses none; each sink's delivery is retried with backoff
//! until it succeeds or is refused for good. The same unresolved alert (by key) is not
//! queued again within `repeat_after`; clearing it queues one "resolved" message.

pub mod email;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;

use crate::redact::api_keys;
use crate::state::{State, from_millis, millis};

/// The `alerts` block of the jobs file, validated.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub email: Option<email::SmtpSettings>,
    pub file: Option<PathBuf>,
    pub repeat_after: Duration,
    pub on_job_failure: bool,
}

use email::{DeliveryError, EmailMessage, EmailSink};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Alert {
    /// Identifies the condition, e.g. `job-failed:nightly-backup`; de-duplication is by key.
    pub key: String,
    pub severity: Severity,
    pub job: Option<String>,
    /// A short phrase for the subject line.
    pub what: String,
    /// The figures and what to do next.
    pub body: String,
}

#[derive(Debug, Clone)]
pub enum AlertEvent {
    Raise(Alert),
    /// The condition behind an already raised key got worse, and the raiser has decided that
    /// exactly once (a budget crossing its next threshold in the same period): queued now,
    /// whatever `repeat_after` says. It stays one condition under one key, so one resolve
    /// clears it.
    Escalate(Alert),
    /// The condition behind `key` has cleared.
    Resolve {
        key: String,
        job: Option<String>,
        what: String,
    },
    /// The condition behind `key` has cleared, with a body of the raiser's own: how it ended and
    /// its final figures (a budget period that ended, with its final spend).
    ResolveWith {
        key: String,
        job: Option<String>,
        what: String,
        body: String,
    },
}

/// One message in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub key: String,
    pub resolved: bool,
    pub severity: Severity,
    pub job: Option<String>,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// Reads a `Message` from the first eight columns: id, key, resolved, severity, job, subject, body, created_at.
fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        key: r.get(1)?,
        resolved: r.get(2)?,
        severity: severity_from(&r.get::<_, String>(3)?),
        job: r.get(4)?,
        subject: r.get(5)?,
        body: r.get(6)?,
        created_at: from_millis(r.get(7)?),
    })
}

fn severity_from(s: &str) -> Severity {
    match s {
        "critical" => Severity::Critical,
        "warning" => Severity::Warning,
        _ => Severity::Info,
    }
}

/// Where alerts go.
pub enum Sink {
    File(PathBuf),
    Email(Box<EmailSink>),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::File(_) => "file",
            Sink::Email(_) => "email",
        }
    }

    pub fn from_settings(settings: &AlertSettings) -> anyhow::Result<Vec<Sink>> {
        let mut sinks = Vec::new();
        if let Some(path) = &settings.file {
            sinks.push(Sink::File(path.clone()));
        }
        if let Some(smtp) = &settings.email {
            sinks.push(Sink::Email(Box::new(EmailSink::new(smtp.clone())?)));
        }
        Ok(sinks)
    }

    async fn send(&self, msg: &Message) -> Result<(), DeliveryError> {
        match self {
            Sink::File(path) => {
                append_line(path, msg).map_err(|e| DeliveryError::Transient(format!("{e:#}")))
            }
            Sink::Email(sink) => {
                sink.send(&EmailMessage {
                    subject: msg.subject.clone(),
                    body: msg.body.clone(),
                })
                .await
            }
        }
    }
}

fn append_line(path: &PathBuf, msg: &Message) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the alerts file {}", path.display()))?;
    // One write call per line keeps concurrent appenders from interleaving inside a line.
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending to the alerts file {}", path.display()))
}

fn subject(severity: Severity, job: Option<&str>, what: &str, resolved: bool) -> String {
    let what = if resolved {
        format!("resolved: {what}")
    } else {
        what.to_string()
    };
    email::subject(severity.as_str(), job, &what)
}

/// Puts the run's alert events in the outbox, applying de-duplication. Returns how many
/// messages were queued.
pub fn submit(
    state: &State,
    settings: &AlertSettings,
    sinks: &[&'static str],
    now: DateTime<Utc>,
    events: &[AlertEvent],
) -> anyhow::Result<usize> {
    let mut conn = state.conn();
    let tx = conn.transaction()?;
    let mut queued = 0;
    for event in events {
        let (key, resolved, severity, job, what, body) = match event {
            AlertEvent::Raise(a) | AlertEvent::Escalate(a) => {
                let last: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT active, last_sent_at FROM alert_state WHERE key = ?1",
                        params![a.key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .ok();
                if let (AlertEvent::Raise(_), Some((1, sent))) = (event, last) {
                    let since = now - from_millis(sent);
                    if since.to_std().unwrap_or(Duration::ZERO) < settings.repeat_after {
                        continue;
                    }
                }
                tx.execute(
                    "INSERT INTO alert_state (key, active, last_sent_at) VALUES (?1, 1, ?2)
                     ON CONFLICT(key) DO UPDATE SET active = 1, last_sent_at = excluded.last_sent_at",
                    params![a.key, millis(now)],
                )?;
                (
                    &a.key,
                    false,
                    a.severity,
                    a.job.as_deref(),
                    a.what.as_str(),
                    a.body.clone(),
                )
            }
            AlertEvent::Resolve { key, job, what }
            | AlertEvent::ResolveWith { key, job, what, .. } => {
                let changed = tx.execute(
                    "UPDATE alert_state SET active = 0 WHERE key = ?1 AND active = 1",
                    params![key],
                )?;
                if changed == 0 {
                    continue;
                }
                let body = match event {
                    AlertEvent::ResolveWith { body, .. } => body.clone(),
                    _ => format!("The condition has cleared: {what}.\nNothing more to do."),
                };
                (
                    key,
                    true,
                    Severity::Info,
                    job.as_deref(),
                    what.as_str(),
                    body,
                )
            }
        };
        // Alert texts quote the gateway's values (a budget's top models): API keys in them
        // go before the text is kept, sent or shown.
        tx.execute(
            "INSERT INTO outbox (key, resolved, severity, job, subject, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key,
                resolved,
                severity.as_str(),
                job,
                api_keys(&subject(severity, job, what, resolved)),
                api_keys(&body),
                millis(now)
            ],
        )?;
        let id = tx.last_insert_rowid();
        for sink in sinks {
            tx.execute(
                "INSERT INTO deliveries (outbox_id, sink, next_attempt_at) VALUES (?1, ?2, ?3)",
                params![id, sink, millis(now)],
            )?;
        }
        queued += 1;
    }
    tx.commit()
        .context("queuing alerts in the state database")?;
    Ok(queued)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub sent: usize,
    pub retrying: usize,
    pub given_up: usize,
}

/// Sends every delivery that is due. Safe to run from several processes at once: a delivery
/// is claimed before it is sent, so no message goes out twice.
pub async fn deliver_due(
    state: &State,
    sinks: &[Sink],
    now: DateTime<Utc>,
) -> anyhow::Result<Delivered> {
    let mut done = Delivered::default();
    for sink in sinks {
        let due: Vec<Message> = {
            let conn = state.conn();
            let mut stmt = conn.prepare(
                "SELECT o.id, o.key, o.resolved, o.severity, o.job, o.subject, o.body, o.created_at
                 FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
                 WHERE d.sink = ?1 AND d.delivered_at IS NULL AND d.gave_up = 0 AND d.next_attempt_at <= ?2
                 ORDER BY o.id",
            )?;
            let rows = stmt.query_map(params![sink.name(), millis(now)], message_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        for msg in due {
            // Claim: push the next attempt out first, so a second deliverer skips it and a
            // crash mid-send retries later rather than never.
            let attempts: u32 = {
                let conn = state.conn();
                let claim = millis(now + chrono::Duration::minutes(5));
                let claimed = conn.execute(
                    "UPDATE deliveries SET next_attempt_at = ?3, attempts = attempts + 1, last_error = NULL
                     WHERE outbox_id = ?1 AND sink = ?2 AND delivered_at IS NULL AND next_attempt_at <= ?4",
                    params![msg.id, sink.name(), claim, millis(now)],
                )?;
                if claimed == 0 {
                    continue;
                }
                conn.query_row(
                    "SELECT attempts FROM deliveries WHERE outbox_id = ?1 AND sink = ?2",
                    params![msg.id, sink.name()],
                    |r| r.get(0),
                )?
            };
            let outcome = sink.send(&msg).await;
            let conn = state.conn();
            match outcome {
                Ok(()) => {
                    conn.execute(
                        "UPDATE deliveries SET delivered_at = ?3, last_error = NULL WHERE outbox_id = ?1 AND sink = ?2",
                        params![msg.id, sink.name(), millis(Utc::now())],
                    )?;
                    done.sent += 1;
                }
                Err(DeliveryError::Transient(e)) => {
                    // `attempts` counts this one; the first retry waits backoff(0).
                    let wait = email::backoff(attempts.saturating_sub(1));
                    let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
                    tracing::warn!(sink = sink.name(), alert = msg.id, attempt = attempts, error = %e, retry_at = %next, "alert delivery failed; will retry");
                    conn.execute(
                        "UPDATE deliveries SET next_attempt_at = ?3, last_error = ?4 WHERE outbox_id = ?1 AND sink = ?2",
                        params![msg.id, sink.name(), millis(next), e],
                    )?;
                    done.retrying += 1;
                }
                Err(DeliveryError::Permanent(e)) => {
                    tracing::error!(sink = sink.name(), alert = msg.id, error = %e, "alert delivery refused for good; not retrying (check alerts.email)");
                    conn.execute(
                        "UPDATE deliveries SET gave_up = 1, last_error = ?3 WHERE outbox_id = ?1 AND sink = ?2",
                        params![msg.id, sink.name(), e],
                    )?;
                    done.given_up += 1;
                }
            }
        }
    }
    Ok(done)
}

/// Makes every delivery that failed and waits for its backoff due now; the daemon calls it at
/// start-up, because a restart is usually the operator's answer to a broken mail setup.
/// A delivery claimed by a process still sending it has no error recorded and is left alone,
/// so it cannot go out twice.
pub fn retry_failed_now(state: &State, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let changed = state
        .conn()
        .execute(
            "UPDATE deliveries SET next_attempt_at = ?1
             WHERE delivered_at IS NULL AND gave_up = 0 AND last_error IS NOT NULL AND next_attempt_at > ?1",
            params![millis(now)],
        )
        .context("rescheduling failed alert deliveries in the state database")?;
    Ok(changed)
}

/// When the next delivery is due, if any is pending.
pub fn next_delivery(state: &State) -> anyhow::Result<Option<DateTime<Utc>>> {
    let next: Option<i64> = state.conn().query_row(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE delivered_at IS NULL AND gave_up = 0",
        [],
        |r| r.get(0),
    )?;
    Ok(next.map(from_millis))
}

/// A message not yet delivered to one sink.
#[derive(Debug, Clone)]
pub struct Pending {
    pub message: Message,
    pub sink: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Alerts not yet delivered everywhere, for `status`.
pub fn pending(state: &State) -> anyhow::Result<Vec<Pending>> {
    let conn = state.conn();
    let mut stmt = conn.prepare(
        "SELECT o.id, o.key, o.resolved, o.severity, o.job, o.subject, o.body, o.created_at, d.sink, d.attempts, d.last_error
         FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
         WHERE d.delivered_at IS NULL AND d.gave_up = 0 ORDER BY o.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Pending {
            message: message_from_row(r)?,
            sink: r.get(8)?,
            attempts: r.get(9)?,
            last_error: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks every raised key that starts with `prefix` as no longer raised, without a message;
/// returns how many. For keys a newer version no longer uses (the budget job's keys of
/// before its alerts were resolved), so that they do not count as active for ever.
pub fn retire(state: &State, prefix: &str) -> anyhow::Result<usize> {
    // `substr` rather than LIKE: LIKE ignores case and treats `_` and `%` as wildcards.
    state
        .conn()
        .execute(
            "UPDATE alert_state SET active = 0 WHERE active = 1 AND substr(key, 1, length(?1)) = ?1",
            params![prefix],
        )
        .with_context(|| format!("retiring the alert keys `{prefix}*` in the state database"))
}

/// Condition keys that are currently raised, for `status`.
pub fn active(state: &State) -> anyhow::Result<Vec<String>> {
    let conn = state.conn();
    let mut stmt = conn.prepare("SELECT key FROM alert_state WHERE active = 1 ORDER BY key")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn settings(file: PathBuf) -> AlertSettings {
        AlertSettings {
            email: None,
            file: Some(file),
            repeat_after: Duration::from_secs(6 * 3600),
            on_job_failure: true,
        }
    }

    fn raise(key: &str) -> AlertEvent {
        AlertEvent::Raise(Alert {
            key: key.into(),
            severity: Severity::Critical,
            job: Some("nightly".into()),
            what: "backup failed".into(),
            body: "disk full".into(),
        })
    }

    #[tokio::test]
    async fn alerts_are_deduplicated_then_resolved_once_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let file = dir.path().join("alerts.jsonl");
        let s = settings(file.clone());
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        let hour = |h| t0 + chrono::Duration::hours(h);
        let queued = |at, event: &AlertEvent| {
            submit(&state, &s, &["file"], at, std::slice::from_ref(event)).unwrap()
        };
        assert_eq!(queued(t0, &raise("k")), 1);
        // Within repeat_after: suppressed. After it: sent again.
        assert_eq!(queued(hour(1), &raise("k")), 0);
        assert_eq!(queued(hour(7), &raise("k")), 1);
        let resolve = AlertEvent::Resolve {
            key: "k".into(),
            job: Some("nightly".into()),
            what: "backup failed".into(),
        };
        assert_eq!(queued(hour(8), &resolve), 1);
        assert_eq!(queued(hour(9), &resolve), 0);
        let sinks = Sink::from_settings(&s).unwrap();
        let done = deliver_due(&state, &sinks, hour(9)).await.unwrap();
        assert_eq!(
            done,
            Delivered {
                sent: 3,
                retrying: 0,
                given_up: 0
            }
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0]["subject"],
            "[caretaker] critical nightly: backup failed"
        );
        assert_eq!(lines[2]["resolved"], true);
        // Delivered messages are not sent again.
        let again = deliver_due(&state, &sinks, hour(10)).await.unwrap();
        assert_eq!(again.sent, 0);
        assert!(pending(&state).unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_escalation_passes_repeat_after_and_a_resolve_carries_its_own_body() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let file = dir.path().join("alerts.jsonl");
        let s = settings(file.clone());
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        let minute = |m| t0 + chrono::Duration::minutes(m);
        let queued = |at, event: &AlertEvent| {
            submit(&state, &s, &["file"], at, std::slice::from_ref(event)).unwrap()
        };
        let AlertEvent::Raise(alert) = raise("budget:spend:daily:2026-11-22") else {
            panic!("raise() makes a raise");
        };
        assert_eq!(queued(t0, &AlertEvent::Raise(alert.clone())), 1);
        // Within repeat_after a raise is held back, an escalation is not.
        assert_eq!(queued(minute(1), &AlertEvent::Raise(alert.clone())), 0);
        assert_eq!(queued(minute(2), &AlertEvent::Escalate(alert.clone())), 1);
        assert_eq!(active(&state).unwrap(), std::slice::from_ref(&alert.key));
        let resolve = AlertEvent::ResolveWith {
            key: alert.key.clone(),
            job: Some("spend".into()),
            what: "budget daily 2026-11-22 ended at $12.00".into(),
            body: "Budget `daily` ended: $12.00 spent of $10.00.".into(),
        };
        // One resolve for the key, however often it comes.
        assert_eq!(queued(minute(3), &resolve), 1);
        assert_eq!(queued(minute(4), &resolve), 0);
        assert!(active(&state).unwrap().is_empty());
        let sinks = Sink::from_settings(&s).unwrap();
        assert_eq!(
            deliver_due(&state, &sinks, minute(5)).await.unwrap().sent,
            3
        );
        let last: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["resolved"], true);
        assert_eq!(
            last["body"],
            "Budget `daily` ended: $12.00 spent of $10.00."
        );
        assert_eq!(
            last["subject"],
            "[caretaker] info spend: resolved: budget daily 2026-11-22 ended at $12.00"
        );
    }

    #[test]
    fn retire_deactivates_exactly_the_keys_with_the_prefix_and_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let s = settings(dir.path().join("alerts.jsonl"));
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        let keys = [
            "budget:spend:a:1:75",
            "budget:spend:b:1:100",
            "budget:Spend:a:1:75",
            "budget:spendx:a",
            "health:spend:x",
        ];
        let events: Vec<AlertEvent> = keys.iter().map(|k| raise(k)).collect();
        assert_eq!(
            submit(&state, &s, &["file"], t0, &events).unwrap(),
            keys.len()
        );
        assert_eq!(retire(&state, "budget:spend:").unwrap(), 2);
        assert_eq!(
            active(&state).unwrap(),
            ["budget:Spend:a:1:75", "budget:spendx:a", "health:spend:x"]
        );
        assert_eq!(
            pending(&state).unwrap().len(),
            keys.len(),
            "retiring queues nothing"
        );
    }

    #[tokio::test]
    async fn a_failing_sink_keeps_the_alert_queued_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        // A directory where the file should be: every append fails.
        let file = dir.path().join("blocked");
        std::fs::create_dir(&file).unwrap();
        let s = settings(file);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap();
        submit(&state, &s, &["file"], t0, &[raise("k")]).unwrap();
        let sinks = Sink::from_settings(&s).unwrap();
        let done = deliver_due(&state, &sinks, t0).await.unwrap();
        assert_eq!(done.retrying, 1);
        assert_eq!(pending(&state).unwrap().len(), 1);
        let next = next_delivery(&state).unwrap().unwrap();
        // The first retry waits the base backoff.
        assert_eq!(
            next,
            t0 + chrono::Duration::from_std(email::BACKOFF_BASE).unwrap()
        );
        // A restart retries it at once; a delivery still claimed (no error yet) is left alone.
        submit(&state, &s, &["file"], t0, &[raise("claimed")]).unwrap();
        state
            .conn()
            .execute(
                "UPDATE deliveries SET attempts = 1, next_attempt_at = ?1 WHERE outbox_id = 2",
                params![millis(t0 + chrono::Duration::minutes(5))],
            )
            .unwrap();
        let restart = t0 + chrono::Duration::seconds(1);
        assert_eq!(retry_failed_now(&state, restart).unwrap(), 1);
        assert_eq!(next_delivery(&state).unwrap(), Some(restart));
        let due = deliver_due(&state, &sinks, restart).await.unwrap();
        assert_eq!(due.retrying, 1, "only the failed delivery was due");
    }
}
