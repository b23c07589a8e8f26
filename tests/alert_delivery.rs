//! Alert email end to end: the real daemon (`caretaker run`) delivering to a real SMTP server
//! (aiosmtpd, tests/common/scripts/smtp_server.py) over STARTTLS with a test CA and AUTH; alerts
//! queued while the server is down survive a daemon restart and arrive exactly once; a
//! recipient the server refuses for good is logged and never retried.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::health::{Daemon, SmtpServer, body, header, make_certs, status};
use common::wait;
use rusqlite::{Connection, OpenFlags};
use rustix::process::Signal;
use tempfile::TempDir;

const USER: &str = "alerts@example.com";
const PASSWORD: &str = "pw-Daemon#7uniq!";

/// Three health jobs whose condition always holds (any database is larger than 1 KB): one on
/// SIGUSR1, two on SIGUSR2, so a signal raises a known number of distinct alerts.
fn jobs() -> &'static str {
    "jobs:\n  size-a:\n    on_signal: USR1\n    health: {database_max_size: 1KB}\n  size-b:\n    on_signal: USR2\n    health: {database_max_size: 1KB}\n  size-c:\n    on_signal: USR2\n    health: {database_max_size: 1KB}\n"
}

fn gateway(dir: &Path) -> PathBuf {
    let db = dir.join("requests.db");
    common::health::gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    db
}

fn pending(config: &Path) -> Vec<serde_json::Value> {
    status(config)["pending_alerts"].as_array().unwrap().clone()
}

fn subjects(maildir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (raw, _) in common::health::received(maildir) {
        *counts.entry(header(&raw, "Subject").unwrap()).or_default() += 1;
    }
    counts
}

fn subject(job: &str) -> String {
    format!("[caretaker] warning {job}: gateway database larger than 1 KB")
}

#[test]
fn queued_alerts_survive_a_restart_and_arrive_exactly_once_over_starttls_with_auth() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let auth = format!("{USER}:{PASSWORD}");
    let tls_args = [&certs.starttls()[..], &["--auth", &auth]].concat();
    let server = SmtpServer::start(dir.path(), 0, &tls_args);
    let port = server.port;
    let db = gateway(dir.path());
    fs::write(dir.path().join("smtp.pw"), format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(
        dir.path().join("smtp.pw"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\nalerts:\n  email:\n    smtp: {{host: 127.0.0.1, port: {port}, tls: starttls, username: {USER}, password_file: smtp.pw, ca_file: {}, timeout: 10s}}\n    from: \"caretaker <{USER}>\"\n    to: [ops@example.com, \"Oncall <oncall@example.org>\"]\n{}",
            db.display(),
            dir.path().join("state").display(),
            certs.ca.display(),
            jobs()
        ),
    )
    .unwrap();
    let maildir = server.maildir.clone();

    // 1. The server is up: an alert arrives, encrypted and authenticated.
    let daemon = Daemon::start(&config, &dir.path().join("daemon-1.log"));
    daemon.signal(Signal::USR1);
    let received = wait::value(
        "the first alert to arrive",
        || Some(server.received()).filter(|r| !r.is_empty()),
        || format!("daemon: {}\nserver: {}", daemon.log(), server.stderr()),
    );
    let (raw, envelope) = &received[0];
    assert_eq!(envelope["tls"], true, "{envelope}");
    assert_eq!(envelope["auth_login"], USER, "{envelope}");
    assert_eq!(envelope["mail_from"], USER);
    assert_eq!(
        envelope["rcpt_tos"],
        serde_json::json!(["ops@example.com", "oncall@example.org"])
    );
    assert_eq!(header(raw, "Subject"), Some(subject("size-a")));
    assert_eq!(
        header(raw, "From").as_deref(),
        Some("caretaker <alerts@example.com>")
    );
    assert_eq!(
        header(raw, "To").as_deref(),
        Some("ops@example.com, Oncall <oncall@example.org>")
    );
    assert_eq!(
        header(raw, "Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert!(
        header(raw, "Content-Type").is_some_and(|v| v.starts_with("text/plain")),
        "{raw}"
    );
    let text = body(raw);
    assert!(text.contains(&format!("{} is ", db.display())), "{text}");
    assert!(text.contains("database_max_size is 1 KB"), "{text}");
    assert!(text.contains("Archive old rows"), "{text}");

    // 2. The server goes away: two more alerts queue and their first attempts fail. Stop it
    // only once the daemon has recorded the first delivery: a server killed between writing a
    // message and its 250 reply makes the sender retry, which is at-least-once by design.
    wait::value(
        "the first delivery to be recorded",
        || pending(&config).is_empty().then_some(()),
        || format!("status: {}\ndaemon: {}", status(&config), daemon.log()),
    );
    server.stop();
    daemon.signal(Signal::USR2);
    let queued = wait::value(
        "two alerts to queue after a failed attempt",
        || {
            let p = pending(&config);
            (p.len() == 2
                && p.iter()
                    .all(|a| a["attempts"] == 1 && !a["last_error"].is_null()))
            .then_some(p)
        },
        || format!("status: {}\ndaemon: {}", status(&config), daemon.log()),
    );
    for alert in &queued {
        assert_eq!(alert["sink"], "email");
        let error = alert["last_error"].as_str().unwrap();
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    }
    let log = daemon.stop();

    // 3. The server comes back and the daemon is restarted: it retries at start-up instead of
    // waiting out the backoff, and each queued alert arrives once.
    let server = SmtpServer::start(dir.path(), port, &tls_args);
    let daemon = Daemon::start(&config, &dir.path().join("daemon-2.log"));
    wait::value(
        "the queued alerts to be delivered",
        || pending(&config).is_empty().then_some(()),
        || {
            format!(
                "status: {}\ndaemon: {}\nserver: {}",
                status(&config),
                daemon.log(),
                server.stderr()
            )
        },
    );
    let restarted = daemon.stop();
    assert!(
        restarted.contains("retrying undelivered alerts now"),
        "{restarted}"
    );
    let log = log + &restarted;
    let expected: BTreeMap<String, usize> =
        [subject("size-a"), subject("size-b"), subject("size-c")]
            .into_iter()
            .map(|s| (s, 1))
            .collect();
    assert_eq!(subjects(&maildir), expected);
    for (_, envelope) in server.received() {
        assert_eq!(envelope["tls"], true);
        assert_eq!(envelope["auth_login"], USER);
    }
    assert!(log.contains("will retry"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the daemon logged the SMTP password"
    );
}

/// `(attempts, gave_up)` of every email delivery, by outbox id.
fn deliveries(state_dir: &Path) -> Vec<(i64, u32, bool)> {
    let conn =
        Connection::open_with_flags(state_dir.join("state.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT outbox_id, attempts, gave_up FROM deliveries WHERE sink = 'email' ORDER BY outbox_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_permanently_rejected_recipient_is_logged_and_not_retried() {
    let dir = TempDir::new().unwrap();
    let server = SmtpServer::start(dir.path(), 0, &["--reject-rcpt", "nobody@example.com"]);
    let db = gateway(dir.path());
    let state_dir = dir.path().join("state");
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\nalerts:\n  email:\n    smtp: {{host: 127.0.0.1, port: {}, tls: none, timeout: 10s}}\n    from: {USER}\n    to: [nobody@example.com]\n{}",
            db.display(),
            state_dir.display(),
            server.port,
            jobs()
        ),
    )
    .unwrap();
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("refused for good"))
            .count()
    };

    let daemon = Daemon::start(&config, &dir.path().join("daemon-1.log"));
    daemon.signal(Signal::USR1);
    wait::value(
        "the refusal to be logged",
        || (refusals(&daemon.log()) == 1 && pending(&config).is_empty()).then_some(()),
        || daemon.log(),
    );
    let log = daemon.stop();
    assert!(
        log.contains("550"),
        "the log names the server's answer: {log}"
    );
    assert_eq!(deliveries(&state_dir), [(1, 1, true)]);

    // After a restart, the refused alert stays given up: a new alert is tried, the old one is not.
    let daemon = Daemon::start(&config, &dir.path().join("daemon-2.log"));
    daemon.signal(Signal::USR1);
    daemon.signal(Signal::USR2);
    wait::value(
        "the new alerts to be refused",
        || (refusals(&daemon.log()) == 2 && pending(&config).is_empty()).then_some(()),
        || daemon.log(),
    );
    daemon.stop();
    // size-a is still active (within repeat_after), so USR1 queued nothing new.
    assert_eq!(
        deliveries(&state_dir),
        [(1, 1, true), (2, 1, true), (3, 1, true)]
    );
    assert!(server.received().is_empty());
}
