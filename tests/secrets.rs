//! Secrets never reach what caretaker keeps or prints: not the SMTP password that a hostile
//! server echoes back in any encoding we sent it, and not an API key hidden in a value from the
//! gateway's rows (a model name). Each test runs the real binary (`run-job` and the daemon) and
//! then searches everything an operator or a collector can read: the output and the log,
//! `status` and `status --json`, the state database's files byte for byte, the alerts file and
//! the metrics file.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use chrono::Utc;
use common::bins::describe;
use common::health::{Daemon, SmtpServer, caretaker, make_certs, run_job, status};
use common::wait;
use rusqlite::{Connection, params};
use rustix::process::Signal;
use tempfile::TempDir;

const USER: &str = "alerts@example.com";
const PASSWORD: &str = "pw-Echo#5unique!secret";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Everything an operator or a collector can read after the runs, as bytes, each with its name:
/// the state database's files (state.db, -wal, -shm) whole, `status` in both forms, and the
/// files given.
fn readable(config: &Path, state_dir: &Path, files: &[&Path]) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(state_dir).expect("reading the state directory") {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("state.db"))
        {
            found.push((path.display().to_string(), fs::read(&path).unwrap()));
        }
    }
    assert!(
        found.iter().any(|(name, _)| name.ends_with("state.db")),
        "no state.db in {}",
        state_dir.display()
    );
    for args in [&["status"][..], &["status", "--json"]] {
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let output = caretaker(&all);
        assert!(output.status.success(), "{}", describe(&output));
        found.push((args.join(" "), [output.stdout, output.stderr].concat()));
    }
    for file in files {
        let bytes = fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        found.push((file.display().to_string(), bytes));
    }
    found
}

/// Fails naming the place and the form when any of `forms` appears in any of `places`.
fn assert_absent(places: &[(String, Vec<u8>)], forms: &[(&str, String)]) {
    for (place, bytes) in places {
        for (what, form) in forms {
            let hit = bytes.windows(form.len()).position(|w| w == form.as_bytes());
            if let Some(at) = hit {
                let around = &bytes[at.saturating_sub(80)..(at + form.len() + 80).min(bytes.len())];
                panic!(
                    "{what} ({form:?}) found in {place}: …{}…",
                    String::from_utf8_lossy(around)
                );
            }
        }
    }
}

/// An SMTP server that refuses the login quoting our AUTH argument back (PLAIN: base64 of
/// `\0user\0password`; LOGIN: base64 of the user name and of the password), met by `run-job`
/// and by the daemon: the password appears in none of its encodings anywhere, while the
/// server's refusal itself is kept.
fn echoed_auth_leaks_no_password(mechanism: &str) {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let server = SmtpServer::start(
        dir.path(),
        0,
        &[&certs.starttls()[..], &["--echo-auth", mechanism]].concat(),
    );
    let db = dir.path().join("requests.db");
    common::health::gateway_sim(&db, "apantli", 50, "200ms", 0.0);
    let password_file = dir.path().join("smtp.pw");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
    let state_dir = dir.path().join("state");
    let alerts_file = dir.path().join("alerts.jsonl");
    let config = dir.path().join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {db}, schema: apantli}}\nstate_dir: {state}\nalerts:\n  file: {alerts}\n  email:\n    smtp: {{host: 127.0.0.1, port: {port}, tls: starttls, username: {USER}, password_file: smtp.pw, ca_file: {ca}, timeout: 10s}}\n    from: {USER}\n    to: [ops@example.com]\njobs:\n  size-a:\n    on_signal: USR1\n    health: {{database_max_size: 1KB}}\n  size-b:\n    on_signal: USR2\n    health: {{database_max_size: 1KB}}\n",
            db = db.display(),
            state = state_dir.display(),
            alerts = alerts_file.display(),
            port = server.port,
            ca = certs.ca.display(),
        ),
    )
    .unwrap();

    // run-job raises an alert and tries to mail it before it exits.
    let run = run_job(&config, "size-a");
    assert!(run.status.success(), "{}", describe(&run));
    let run_output = [run.stdout, run.stderr].concat();
    // The daemon retries that delivery at start-up and tries a second alert's.
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    daemon.signal(Signal::USR2);
    let pending = wait::value(
        "both email deliveries to fail after a retry",
        || {
            let pending = status(&config)["pending_alerts"]
                .as_array()
                .unwrap()
                .clone();
            let failed =
                |a: &&serde_json::Value| a["sink"] == "email" && !a["last_error"].is_null();
            (pending.iter().filter(failed).count() == 2
                && pending.iter().any(|a| a["attempts"] == 2))
            .then_some(pending)
        },
        || format!("status: {}\ndaemon: {}", status(&config), daemon.log()),
    );
    let log = daemon.stop();

    // Not vacuous: the server's refusal, with the echo where the argument was, is kept.
    for alert in pending.iter().filter(|a| a["sink"] == "email") {
        let error = alert["last_error"].as_str().unwrap();
        assert!(
            error.contains("refused our login (535 ") && error.contains("[redacted]"),
            "{error}"
        );
    }
    assert!(
        String::from_utf8_lossy(&run_output).contains("535"),
        "run-job logs the refusal: {}",
        String::from_utf8_lossy(&run_output)
    );
    assert!(log.contains("535"), "the daemon logs the refusal: {log}");

    let mut places = readable(&config, &state_dir, &[&alerts_file]);
    places.push(("run-job output".into(), run_output));
    places.push(("daemon log".into(), log.into_bytes()));
    let plain = b64(&format!("\0{USER}\0{PASSWORD}"));
    // The first base64 group that starts inside the password.
    let first = (USER.len() + 2).div_ceil(3) * 4;
    assert_absent(
        &places,
        &[
            ("the password", PASSWORD.to_string()),
            ("the password in base64 (AUTH LOGIN)", b64(PASSWORD)),
            ("the AUTH PLAIN argument", plain.clone()),
            // A piece of the PLAIN argument that encodes only password bytes.
            (
                "a piece of the AUTH PLAIN argument",
                plain[first..first + 12].to_string(),
            ),
        ],
    );
}

#[test]
fn an_smtp_server_echoing_auth_plain_leaks_no_password() {
    echoed_auth_leaks_no_password("PLAIN");
}

#[test]
fn an_smtp_server_echoing_auth_login_leaks_no_password() {
    echoed_auth_leaks_no_password("LOGIN");
}

/// The random part of an OpenAI project key: 40 characters.
const KEY_BODY: &str = "Zt4vQ8mN2pL6xR0wK9sB3yH7cJ1dF5gA8eU2iO6q";

/// A request row at the current time, as Apantli writes it.
fn request(conn: &Connection, model: &str, cost: f64) {
    conn.execute(
        "INSERT INTO requests (timestamp, model, provider, prompt_tokens, completion_tokens, total_tokens, cost, duration_ms, request_data, response_data) \
         VALUES (?1, ?2, 'openai', 1000, 500, 1500, ?3, 800, ?4, '{\"usage\": {\"prompt_tokens\": 1000, \"completion_tokens\": 500}}')",
        params![
            Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            model,
            cost,
            serde_json::json!({"model": model, "messages": []}).to_string()
        ],
    )
    .unwrap();
}

/// A gateway row whose model name carries an API key, shown by pricing (a model without a
/// price, in its summary and a figure that becomes a metrics label), budget (its top models,
/// in an alert) and health, run by `run-job` and by the daemon: the key appears nowhere, and
/// the model is still named with the key redacted.
#[test]
fn an_api_key_in_a_model_name_is_redacted_everywhere() {
    let dir = TempDir::new().unwrap();
    let key = format!("sk-proj-{KEY_BODY}");
    let model = format!("mystery-model-{key}");
    let db = dir.path().join("requests.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(caretaker::demo::sample::APANTLI_SCHEMA)
        .unwrap();
    request(&conn, "gpt-4o", 0.0);
    // Unknown when the gateway wrote it (cost 0.0) and unknown to the price table.
    request(&conn, &model, 0.0);
    // Most of this period's spend, so that the budget names it among its top models.
    request(&conn, &model, 9.0);
    drop(conn);

    let metrics_file = dir.path().join("caretaker.prom");
    let jobs = format!(
        "  reprice:\n    on_signal: USR1\n    pricing: {{prices: {prices}}}\n  spend:\n    on_signal: USR1\n    budget:\n      limits:\n        - {{name: daily, period: day, usd: 10, warn_at: [75%]}}\n  health:\n    on_signal: USR1\n    health: {{database_max_size: 1KB}}\n",
        prices = common::pricejob::litellm_path().display()
    );
    let config = common::pricejob::write_config(
        dir.path(),
        &db,
        "apantli",
        &format!("metrics_file: {}", metrics_file.display()),
        &jobs,
    );
    let state_dir = dir.path().join("state");
    let alerts_file = dir.path().join("alerts.jsonl");

    let mut outputs = Vec::new();
    for job in ["reprice", "spend", "health"] {
        let run = run_job(&config, job);
        assert!(run.status.success(), "{job}: {}", describe(&run));
        outputs.push((
            format!("run-job {job} output"),
            [run.stdout, run.stderr].concat(),
        ));
    }
    let runs = |config: &Path| -> Vec<i64> {
        status(config)["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                let run = &j["last_run"];
                if run["result"] == "running" {
                    0
                } else {
                    run["id"].as_i64().unwrap_or(0)
                }
            })
            .collect()
    };
    let before = runs(&config);
    let daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    daemon.signal(Signal::USR1);
    wait::value(
        "the daemon to run the three jobs",
        || {
            runs(&config)
                .iter()
                .zip(&before)
                .all(|(now, then)| now > then)
                .then_some(())
        },
        || format!("status: {}\ndaemon: {}", status(&config), daemon.log()),
    );
    let log = daemon.stop();

    // Not vacuous: the model is named, with its key redacted, where each job shows it.
    let shown = "mystery-model-sk-[redacted]";
    let reprice_output = String::from_utf8_lossy(&outputs[0].1).to_string();
    assert!(reprice_output.contains(shown), "{reprice_output}");
    let alerts = fs::read_to_string(&alerts_file).unwrap();
    assert!(
        alerts.contains("Top models") && alerts.contains(shown),
        "{alerts}"
    );
    let metrics = fs::read_to_string(&metrics_file).unwrap();
    assert!(metrics.contains(shown), "{metrics}");

    let mut places = readable(&config, &state_dir, &[&alerts_file, &metrics_file]);
    places.extend(outputs);
    places.push(("daemon log".into(), log.into_bytes()));
    assert_absent(
        &places,
        &[
            ("the API key", key.clone()),
            ("the key's random part", KEY_BODY.to_string()),
        ],
    );
}
