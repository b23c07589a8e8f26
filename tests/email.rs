//! Alert email delivery against a real SMTP server (aiosmtpd, run from tests/common/scripts/smtp_server.py).

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use caretaker::alerts::email::{
    DeliveryError, EmailConfig, EmailMessage, EmailSink, Secret, SmtpSettings, TlsMode,
};
use common::health::{SmtpServer, body, header, make_certs};
use serde_json::json;
use tempfile::TempDir;

const USER: &str = "alerts@example.com";
const PASSWORD: &str = "pw-Zq7#kV9!unique";

fn settings(port: u16, tls: TlsMode) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        tls,
        username: None,
        password: None,
        from: "caretaker <alerts@example.com>".into(),
        to: vec!["ops@example.com".into()],
        timeout: Duration::from_secs(20),
        ca_file: None,
    }
}

fn with_auth(mut settings: SmtpSettings, password: &str, ca: &Path) -> SmtpSettings {
    settings.username = Some(USER.into());
    settings.password = Some(Secret::new(password));
    settings.ca_file = Some(ca.to_owned());
    settings
}

fn message() -> EmailMessage {
    EmailMessage {
        subject: "[caretaker] critical nightly-backup: backup failed".into(),
        body: "The backup of requests.db failed.\nDisk full.\n".into(),
    }
}

#[tokio::test]
async fn plain_delivery_carries_headers_and_body() {
    let dir = TempDir::new().unwrap();
    let server = SmtpServer::start(dir.path(), 0, &[]);
    let mut settings = settings(server.port, TlsMode::None);
    settings.to = vec![
        "ops@example.com".into(),
        "Oncall <oncall@example.org>".into(),
    ];
    let sink = EmailSink::new(settings).unwrap();

    // Spawned, as the daemon will: the sink and its future must be Send.
    tokio::spawn(async move { sink.send(&message()).await })
        .await
        .unwrap()
        .unwrap();

    let received = server.received();
    assert_eq!(received.len(), 1, "server log: {}", server.stderr());
    let (raw, envelope) = &received[0];
    assert_eq!(envelope["mail_from"], "alerts@example.com");
    assert_eq!(
        envelope["rcpt_tos"],
        json!(["ops@example.com", "oncall@example.org"])
    );
    assert_eq!(envelope["tls"], false);
    assert_eq!(
        header(raw, "From").as_deref(),
        Some("caretaker <alerts@example.com>")
    );
    assert_eq!(
        header(raw, "To").as_deref(),
        Some("ops@example.com, Oncall <oncall@example.org>")
    );
    assert_eq!(header(raw, "Subject"), Some(message().subject));
    assert_eq!(
        header(raw, "Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert!(
        header(raw, "Content-Type").is_some_and(|v| v.starts_with("text/plain")),
        "{raw}"
    );
    assert!(header(raw, "Date").is_some(), "{raw}");
    assert!(header(raw, "Message-ID").is_some(), "{raw}");
    assert_eq!(body(raw).trim_end(), message().body.trim_end());
}

#[tokio::test]
async fn starttls_with_the_test_ca_and_auth_delivers() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let auth = format!("{USER}:{PASSWORD}");
    let server = SmtpServer::start(
        dir.path(),
        0,
        &[&certs.starttls()[..], &["--auth", &auth]].concat(),
    );

    // Through the configuration path, as the daemon does it: password from a 0600 file.
    fs::write(dir.path().join("smtp.pw"), format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(
        dir.path().join("smtp.pw"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config: EmailConfig = serde_json::from_value(json!({
        "smtp": {"host": "127.0.0.1", "port": server.port, "tls": "starttls",
                 "username": USER, "password_file": "smtp.pw", "timeout": "20s",
                 "ca_file": certs.ca},
        "from": "caretaker <alerts@example.com>",
        "to": ["ops@example.com"],
    }))
    .unwrap();
    let (settings, warnings) = config.resolve(dir.path()).unwrap();
    assert_eq!(warnings, Vec::<String>::new());
    assert_eq!(
        settings.password.as_ref().map(Secret::expose),
        Some(PASSWORD)
    );

    EmailSink::new(settings)
        .unwrap()
        .send(&message())
        .await
        .unwrap_or_else(|e| panic!("{e}; server log: {}", server.stderr()));

    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1["tls"], true);
    assert_eq!(received[0].1["auth_login"], USER);
    assert_eq!(header(&received[0].0, "Subject"), Some(message().subject));
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let auth = format!("{USER}:{PASSWORD}");
    let server = SmtpServer::start(
        dir.path(),
        0,
        &[
            "--tls",
            certs.cert.to_str().unwrap(),
            certs.key.to_str().unwrap(),
            "--auth",
            &auth,
        ],
    );
    let settings = with_auth(settings(server.port, TlsMode::Tls), PASSWORD, &certs.ca);

    EmailSink::new(settings)
        .unwrap()
        .send(&message())
        .await
        .unwrap_or_else(|e| panic!("{e}; server log: {}", server.stderr()));

    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1["tls"], true);
    assert_eq!(received[0].1["auth_login"], USER);
}

#[tokio::test]
async fn untrusted_certificate_is_refused_as_transient() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let server = SmtpServer::start(dir.path(), 0, &certs.starttls());
    // No ca_file: the test CA is not trusted, so the handshake must fail.
    let sink = EmailSink::new(settings(server.port, TlsMode::Starttls)).unwrap();

    let error = sink.send(&message()).await.unwrap_err();

    assert!(matches!(error, DeliveryError::Transient(_)), "{error:?}");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert!(server.received().is_empty());
}

/// A refused login is Transient: it is a configuration fault that the operator fixes, and the
/// alert must still go out afterwards rather than be dropped.
#[tokio::test]
async fn wrong_password_is_transient_and_never_shown() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let auth = format!("{USER}:{PASSWORD}");
    let server = SmtpServer::start(
        dir.path(),
        0,
        &[&certs.starttls()[..], &["--auth", &auth]].concat(),
    );
    let wrong = "wrong-Xy8$pw-unique";
    let settings = with_auth(settings(server.port, TlsMode::Starttls), wrong, &certs.ca);
    let sink = EmailSink::new(settings).unwrap();
    assert!(!format!("{sink:?}").contains(wrong));

    let error = sink.send(&message()).await.unwrap_err();

    let DeliveryError::Transient(text) = &error else {
        panic!("expected Transient, got {error:?}");
    };
    assert!(text.contains("refused our login (535 "), "{text}");
    assert!(text.contains("smtp.username"), "{text}");
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(wrong), "password leaked: {shown}");
        assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    }
    assert!(server.received().is_empty());
}

/// A server that quotes our AUTH argument back in its refusal (AUTH PLAIN: base64 of
/// `\0user\0password`; AUTH LOGIN: base64 of the user name, then of the password): the error
/// keeps the refusal and loses the password in every encoding.
#[tokio::test]
async fn an_echoed_auth_argument_is_scrubbed_from_the_error() {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    for mechanism in ["PLAIN", "LOGIN"] {
        let dir = TempDir::new().unwrap();
        let certs = make_certs(dir.path());
        let server = SmtpServer::start(
            dir.path(),
            0,
            &[&certs.starttls()[..], &["--echo-auth", mechanism]].concat(),
        );
        let settings = with_auth(
            settings(server.port, TlsMode::Starttls),
            PASSWORD,
            &certs.ca,
        );
        let error = EmailSink::new(settings)
            .unwrap()
            .send(&message())
            .await
            .unwrap_err();
        let DeliveryError::Transient(text) = &error else {
            panic!("{mechanism}: expected Transient, got {error:?}");
        };
        assert!(
            text.contains("refused our login (535 ") && text.contains("[redacted]"),
            "{mechanism}: {text}"
        );
        for shown in [error.to_string(), format!("{error:?}")] {
            for form in [
                PASSWORD.to_string(),
                b64(PASSWORD),
                b64(&format!("\0{USER}\0{PASSWORD}")),
            ] {
                assert!(!shown.contains(&form), "{mechanism}: {form} in {shown}");
            }
        }
        if mechanism == "LOGIN" {
            assert!(
                text.contains(&b64(USER)),
                "the user name is no secret: {text}"
            );
        }
    }
}

#[tokio::test]
async fn server_down_is_transient() {
    // A port that was just free and now has no listener: connection refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink = EmailSink::new(settings(port, TlsMode::None)).unwrap();

    let error = sink.send(&message()).await.unwrap_err();

    let DeliveryError::Transient(text) = &error else {
        panic!("expected Transient, got {error:?}");
    };
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

#[tokio::test]
async fn silent_server_times_out_as_transient() {
    // Accepts TCP connections (the kernel does, from the backlog) but never greets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = settings(listener.local_addr().unwrap().port(), TlsMode::None);
    settings.timeout = Duration::from_secs(1);
    let sink = EmailSink::new(settings).unwrap();

    let started = Instant::now();
    let error = sink.send(&message()).await.unwrap_err();
    let took = started.elapsed();

    assert!(matches!(error, DeliveryError::Transient(_)), "{error:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // Nothing was ever read from us beyond the connection itself.
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
}

/// A recipient the server refuses: a 5xx reply is permanent, a 4xx one transient; nothing is
/// delivered either way.
#[tokio::test]
async fn refused_recipients_are_permanent_or_transient_by_reply_code() {
    // (server option, recipient, whether the error is permanent, the reply code it names)
    let cases = [
        ("--reject-rcpt", "nobody@example.com", true, "550"),
        ("--defer-rcpt", "later@example.com", false, "451"),
    ];
    for (option, recipient, permanent, code) in cases {
        let dir = TempDir::new().unwrap();
        let server = SmtpServer::start(dir.path(), 0, &[option, recipient]);
        let mut settings = settings(server.port, TlsMode::None);
        settings.to = vec![recipient.into()];
        let sink = EmailSink::new(settings).unwrap();

        let error = sink.send(&message()).await.unwrap_err();

        let text = match (&error, permanent) {
            (DeliveryError::Permanent(text), true) | (DeliveryError::Transient(text), false) => {
                text
            }
            _ => panic!(
                "{option}: expected {}, got {error:?}",
                if permanent { "Permanent" } else { "Transient" }
            ),
        };
        assert!(text.contains(code), "{option}: {text}");
        assert!(server.received().is_empty(), "{option}");
    }
}

#[tokio::test]
async fn starttls_not_offered_fails_before_any_credentials_are_sent() {
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    // A plain server: no STARTTLS. The sink must stop rather than continue unencrypted.
    let server = SmtpServer::start(dir.path(), 0, &[]);
    let settings = with_auth(
        settings(server.port, TlsMode::Starttls),
        PASSWORD,
        &certs.ca,
    );
    let sink = EmailSink::new(settings).unwrap();

    let error = sink.send(&message()).await.unwrap_err();

    assert!(matches!(error, DeliveryError::Transient(_)), "{error:?}");
    assert!(error.to_string().contains("STARTTLS"), "{error}");
    assert!(!error.to_string().contains(PASSWORD), "{error}");
    assert!(server.received().is_empty());
}

fn email_config(smtp: serde_json::Value) -> EmailConfig {
    serde_json::from_value(json!({
        "smtp": smtp,
        "from": "caretaker <alerts@example.com>",
        "to": ["ops@example.com"],
    }))
    .unwrap()
}

#[test]
fn password_file_readable_by_others_warns() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("pw");
    fs::write(&file, "secret\r\n").unwrap();
    let config =
        email_config(json!({"host": "smtp.example.com", "username": USER, "password_file": "pw"}));

    for (mode, warns) in [
        (0o644, true),
        (0o640, true),
        (0o604, true),
        (0o600, false),
        (0o400, false),
    ] {
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        let (settings, warnings) = config.resolve(dir.path()).unwrap();
        assert_eq!(
            settings.password.as_ref().map(Secret::expose),
            Some("secret")
        );
        assert_eq!(!warnings.is_empty(), warns, "mode {mode:o}: {warnings:?}");
        if warns {
            assert!(warnings[0].contains("smtp.password_file"), "{warnings:?}");
            assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
            assert!(!warnings[0].contains("secret"), "{warnings:?}");
        }
    }
}

#[test]
fn defaults_and_password_from_the_environment() {
    let config = email_config(json!({"host": "smtp.example.com", "username": USER,
                               "password_env": "CARETAKER_SMTP_PASSWORD"}));
    let (settings, warnings) = config
        .resolve_with_env(Path::new("/nonexistent"), |name| {
            (name == "CARETAKER_SMTP_PASSWORD").then(|| "from-env".into())
        })
        .unwrap();
    assert!(warnings.is_empty());
    assert_eq!(settings.port, 587);
    assert_eq!(settings.tls, TlsMode::Starttls);
    assert_eq!(settings.timeout, Duration::from_secs(30));
    assert_eq!(
        settings.password.as_ref().map(Secret::expose),
        Some("from-env")
    );

    for (tls, port) in [("tls", 465), ("none", 25), ("starttls", 587)] {
        let config = email_config(json!({"host": "smtp.example.com", "tls": tls}));
        assert_eq!(
            config.resolve(Path::new("/")).unwrap().0.port,
            port,
            "{tls}"
        );
    }
}

#[test]
fn bad_values_name_their_key() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("not-a-cert.pem"), "hello\n").unwrap();
    fs::write(dir.path().join("empty.pw"), "\n").unwrap();
    let no_env = |_: &str| None;
    // (smtp block, from, to, expected key, a word the message must contain)
    let cases: Vec<(serde_json::Value, &str, serde_json::Value, &str, &str)> = vec![
        (
            json!({"host": ""}),
            USER,
            json!([USER]),
            "smtp.host",
            "accepted",
        ),
        (
            json!({"host": "smtp.example.com", "port": 0}),
            USER,
            json!([USER]),
            "smtp.port",
            "65535",
        ),
        (
            json!({"host": "h", "timeout": "30"}),
            USER,
            json!([USER]),
            "smtp.timeout",
            "30s",
        ),
        (
            json!({"host": "h", "timeout": "0s"}),
            USER,
            json!([USER]),
            "smtp.timeout",
            "above zero",
        ),
        (
            json!({"host": "h", "username": USER, "password_env": "CT_PW", "password_file": "pw"}),
            USER,
            json!([USER]),
            "smtp.password_file",
            "not both",
        ),
        (
            json!({"host": "h", "username": USER, "password_env": "CT_MISSING_PW"}),
            USER,
            json!([USER]),
            "smtp.password_env",
            "CT_MISSING_PW is not set",
        ),
        (
            json!({"host": "h", "username": USER, "password_file": "missing.pw"}),
            USER,
            json!([USER]),
            "smtp.password_file",
            "missing.pw",
        ),
        (
            json!({"host": "h", "username": USER, "password_file": "empty.pw"}),
            USER,
            json!([USER]),
            "smtp.password_file",
            "empty",
        ),
        (
            json!({"host": "h", "username": USER}),
            USER,
            json!([USER]),
            "smtp.username",
            "password_env",
        ),
        (
            json!({"host": "h", "password_file": "pw"}),
            USER,
            json!([USER]),
            "smtp.username",
            "missing",
        ),
        (
            json!({"host": "h", "tls": "none", "username": USER, "password_env": "CT_PW"}),
            USER,
            json!([USER]),
            "smtp.tls",
            "starttls",
        ),
        (
            json!({"host": "h", "ca_file": "not-a-cert.pem"}),
            USER,
            json!([USER]),
            "smtp.ca_file",
            "PEM",
        ),
        (
            json!({"host": "h", "ca_file": "nope.pem"}),
            USER,
            json!([USER]),
            "smtp.ca_file",
            "nope.pem",
        ),
        (
            json!({"host": "h"}),
            "not an address",
            json!([USER]),
            "from",
            "alerts@example.com",
        ),
        (json!({"host": "h"}), USER, json!([]), "to", "at least one"),
        (
            json!({"host": "h"}),
            USER,
            json!([USER, "ops@@example.com"]),
            "to[1]",
            "accepted",
        ),
    ];
    for (smtp, from, to, key, word) in cases {
        let config: EmailConfig =
            serde_json::from_value(json!({"smtp": smtp, "from": from, "to": to})).unwrap();
        let problems = config
            .resolve_with_env(dir.path(), no_env)
            .expect_err(&format!("{smtp} {from} {to} must be refused"));
        assert!(
            problems.iter().any(|(k, m)| k == key && m.contains(word)),
            "{smtp} {from} {to}: expected {key} mentioning {word:?}, got {problems:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let config: EmailConfig = serde_json::from_value(json!({
        "smtp": {"host": "", "port": 0, "timeout": "soon"},
        "from": "x",
        "to": ["y"],
    }))
    .unwrap();
    let problems = config.resolve(Path::new("/")).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["smtp.host", "smtp.port", "smtp.timeout", "from", "to[0]"]
    );
}

#[test]
fn unknown_keys_and_tls_modes_are_refused() {
    let unknown = serde_json::from_value::<EmailConfig>(json!({
        "smtp": {"host": "h", "pasword_env": "X"}, "from": USER, "to": [USER],
    }))
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("unknown field `pasword_env`"), "{unknown}");
    assert!(unknown.contains("password_env"), "{unknown}");

    let bad_tls = serde_json::from_value::<EmailConfig>(json!({
        "smtp": {"host": "h", "tls": "ssl"}, "from": USER, "to": [USER],
    }))
    .unwrap_err()
    .to_string();
    assert!(
        bad_tls.contains("starttls") && bad_tls.contains("none"),
        "{bad_tls}"
    );
}
