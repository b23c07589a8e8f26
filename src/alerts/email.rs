//! Email delivery of alerts over SMTP: configuration, the sink, and how failures are classified.
//!
//! The alert outbox owns retries and de-duplication; this module delivers one message per call
//! and tells the outbox whether trying again later can help ([`DeliveryError`]).

use std::error::Error as _;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use crate::redact::Scrubber;

/// Used when `smtp.timeout` is not given: long enough for a slow relay, short enough that a
/// hung server does not hold up the next alert for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// First retry delay after a transient failure; doubles per attempt up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);

/// Longest wait between retries: an alert is still worth sending an hour late, and a relay that
/// was down for a day should not make the operator wait a further day after it recovers.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60 * 60);

/// Long free-text in a subject line gets cut by mail clients anyway; cut it ourselves so the
/// filterable prefix always survives.
const SUBJECT_WHAT_MAX_CHARS: usize = 160;

/// A string that must never be printed: Debug and Display show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (the SMTP AUTH exchange).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS; refuses to continue if the server cannot upgrade.
    Starttls,
    /// TLS from the first byte ("SMTPS", usually port 465).
    Tls,
    /// No encryption: only for a relay on the same host or a trusted network.
    None,
}

impl TlsMode {
    /// The port an operator means when they leave `smtp.port` out.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }
}

/// Everything needed to deliver alert mail, validated; built by [`EmailConfig::resolve`].
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Sender mailbox, e.g. `caretaker <alerts@example.com>`.
    pub from: String,
    pub to: Vec<String>,
    /// Deadline for one whole delivery: connect, TLS, AUTH and the message.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), added to the system's: for internal CAs and tests.
    pub ca_file: Option<PathBuf>,
}

/// The `alerts.email` block of the jobs file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp: SmtpConfig,
    pub from: String,
    pub to: Vec<String>,
}

/// The `alerts.email.smtp` block of the jobs file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to the usual port of `tls`: 587, 465 or 25.
    #[serde(default)]
    pub port: Option<u16>,
    /// Defaults to `starttls`.
    #[serde(default)]
    pub tls: Option<TlsMode>,
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password; relative paths are relative to the jobs file's directory.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A duration such as `30s` or `2m`; defaults to 30 s.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Extra trusted CA certificates (PEM); relative paths are relative to the jobs file's directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// One configuration problem: the key path inside `alerts.email` and what is wrong and accepted.
pub type ConfigProblem = (String, String);

impl EmailConfig {
    /// Validates the block and reads the password; `base_dir` anchors relative paths (the
    /// directory of the jobs file). Returns the settings and warnings, or every problem found.
    pub fn resolve(
        &self,
        base_dir: &Path,
    ) -> Result<(SmtpSettings, Vec<String>), Vec<ConfigProblem>> {
        self.resolve_with_env(base_dir, |name| std::env::var_os(name))
    }

    /// [`EmailConfig::resolve`] with the environment passed in, so that callers and tests can
    /// resolve against an environment other than the process's own.
    pub fn resolve_with_env(
        &self,
        base_dir: &Path,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<(SmtpSettings, Vec<String>), Vec<ConfigProblem>> {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));
        let smtp = &self.smtp;

        let host = smtp.host.trim();
        if host.is_empty() || host.contains(char::is_whitespace) {
            problem(
                "smtp.host",
                format!(
                    "{:?} is not a host name; accepted: a host name or IP address such as smtp.example.com",
                    smtp.host
                ),
            );
        }

        let tls = smtp.tls.unwrap_or(TlsMode::Starttls);
        let port = smtp.port.unwrap_or_else(|| tls.default_port());
        if port == 0 {
            problem(
                "smtp.port",
                "0 is not a usable port; accepted: 1 to 65535, usually 587 (starttls), 465 (tls) or 25 (none)".to_owned(),
            );
        }

        let timeout = match &smtp.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => match parse_duration(text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    problem(
                        "smtp.timeout",
                        format!(
                            "{text:?} is not a duration above zero; accepted: a whole number followed by s, m, h, d or w, e.g. 30s"
                        ),
                    );
                    DEFAULT_TIMEOUT
                }
            },
        };

        let password = match (&smtp.password_env, &smtp.password_file) {
            (Some(_), Some(_)) => {
                problem(
                    "smtp.password_file",
                    "give either password_env or password_file, not both".to_owned(),
                );
                None
            }
            (Some(var), None) => match env(var) {
                None => {
                    problem(
                        "smtp.password_env",
                        format!(
                            "environment variable {var} is not set; set it in the daemon's environment, or use password_file"
                        ),
                    );
                    None
                }
                Some(value) => match value.into_string() {
                    Ok(value) if value.is_empty() => {
                        problem(
                            "smtp.password_env",
                            format!(
                                "environment variable {var} is empty; accepted: the SMTP password"
                            ),
                        );
                        None
                    }
                    Ok(value) => Some(Secret::new(value)),
                    Err(_) => {
                        problem(
                            "smtp.password_env",
                            format!("environment variable {var} is not valid UTF-8"),
                        );
                        None
                    }
                },
            },
            (None, Some(file)) => {
                let path = base_dir.join(file);
                match read_password_file(&path) {
                    Ok((secret, warning)) => {
                        warnings.extend(warning);
                        Some(secret)
                    }
                    Err(message) => {
                        problem("smtp.password_file", message);
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let password_given = smtp.password_env.is_some() || smtp.password_file.is_some();

        let username = smtp.username.as_deref().map(str::trim);
        match username {
            Some("") => problem(
                "smtp.username",
                "is empty; accepted: the SMTP login name, or leave username out for no AUTH"
                    .to_owned(),
            ),
            Some(_) if !password_given => problem(
                "smtp.username",
                "is set but no password is; add password_env or password_file".to_owned(),
            ),
            None if password_given => problem(
                "smtp.username",
                "is missing but a password is set; add the SMTP login name".to_owned(),
            ),
            _ => {}
        }
        if tls == TlsMode::None && password_given {
            // The password would cross the network in clear text (AUTH PLAIN is base64).
            problem(
                "smtp.tls",
                "none would send the SMTP password unencrypted; accepted with a password: starttls or tls"
                    .to_owned(),
            );
        }

        let ca_file = smtp.ca_file.as_ref().map(|file| base_dir.join(file));
        if let Some(path) = &ca_file {
            if tls == TlsMode::None {
                warnings
                    .push("alerts.email.smtp.ca_file: ignored because smtp.tls is none".to_owned());
            }
            if let Err(message) = load_ca(path) {
                problem("smtp.ca_file", message);
            }
        }

        if let Err(message) = parse_mailbox(&self.from) {
            problem("from", message);
        }
        if self.to.is_empty() {
            problem(
                "to",
                "is empty; accepted: a list of at least one address, e.g. [ops@example.com]"
                    .to_owned(),
            );
        }
        for (index, address) in self.to.iter().enumerate() {
            if let Err(message) = parse_mailbox(address) {
                problem(&format!("to[{index}]"), message);
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let settings = SmtpSettings {
            host: host.to_owned(),
            port,
            tls,
            username: username.map(str::to_owned),
            password,
            from: self.from.clone(),
            to: self.to.clone(),
            timeout,
            ca_file,
        };
        Ok((settings, warnings))
    }
}

/// Reads a password file: the whole file minus trailing line breaks (editors add one). Also
/// returns a warning when the file is readable by group or others.
fn read_password_file(path: &Path) -> Result<(Secret, Option<String>), String> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; accepted: a file holding only the SMTP password",
            path.display()
        )
    })?;
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; accepted: a file holding only the SMTP password",
            path.display()
        )
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{} is not valid UTF-8 text", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "{} is empty; accepted: a file holding only the SMTP password",
            path.display()
        ));
    }
    let mode = metadata.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "alerts.email.smtp.password_file: {} is readable by group or others (mode {mode:03o}); run chmod 600 on it",
            path.display()
        )
    });
    Ok((Secret::new(password), warning))
}

fn load_ca(path: &Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; accepted: a PEM file of CA certificates",
            path.display()
        )
    })?;
    let no_certificate = || {
        format!(
            "{} holds no PEM certificate; accepted: a PEM file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        )
    };
    // `Certificate::from_pem` accepts a file without certificates; a CA file that trusts nothing
    // is a mistake the operator wants to hear about now, not at the first alert.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(no_certificate());
    }
    Certificate::from_pem(&pem).map_err(|_| no_certificate())
}

fn parse_mailbox(text: &str) -> Result<Mailbox, String> {
    text.parse::<Mailbox>().map_err(|e| {
        format!(
            "{text:?} is not an email address ({e}); accepted: alerts@example.com or \"caretaker <alerts@example.com>\""
        )
    })
}

/// Parses `90s 15m 6h 30d 2w`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "w" => 7 * 24 * 60 * 60,
        _ => return None,
    };
    number.checked_mul(unit_secs).map(Duration::from_secs)
}

/// One alert mail, plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailMessage {
    pub subject: String,
    pub body: String,
}

/// Why a delivery failed, as far as the retry decision is concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Trying again later can succeed: the server was unreachable, slow, busy (4xx), refused the
    /// TLS handshake, or refused our login. A refused login is here, not under `Permanent`,
    /// because it is fixed by correcting the configuration, and the alert must still go out then.
    #[error("email not delivered yet, will retry: {0}")]
    Transient(String),
    /// The server refused this message for good (5xx, e.g. 550 for an unknown recipient):
    /// sending the same message again gets the same answer.
    #[error("email refused for good: {0}")]
    Permanent(String),
}

impl DeliveryError {
    /// The same kind of error with its text passed through `f`.
    pub fn map_text(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            DeliveryError::Transient(text) => DeliveryError::Transient(f(text)),
            DeliveryError::Permanent(text) => DeliveryError::Permanent(f(text)),
        }
    }
}

/// Delivers alert mail through one configured SMTP server.
pub struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// The password in every form the AUTH exchange sends it, to remove from any error text
    /// (a server may echo the AUTH argument in its refusal).
    scrubber: Scrubber,
    timeout: Duration,
    server: String,
}

impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSink")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl EmailSink {
    /// Builds the SMTP transport once; no connection is made until [`EmailSink::send`].
    pub fn new(settings: SmtpSettings) -> anyhow::Result<Self> {
        let server = format!("{}:{}", settings.host, settings.port);
        let from = parse_mailbox(&settings.from)
            .map_err(anyhow::Error::msg)
            .context("setting up alert email: the sender (alerts.email.from)")?;
        let to = settings
            .to
            .iter()
            .map(|address| parse_mailbox(address).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("setting up alert email: a recipient (alerts.email.to)")?;
        anyhow::ensure!(
            !to.is_empty(),
            "setting up alert email: alerts.email.to lists no recipient; add at least one address"
        );

        let tls = match settings.tls {
            TlsMode::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(settings.host.clone());
                if let Some(path) = &settings.ca_file {
                    let ca = load_ca(path)
                        .map_err(anyhow::Error::msg)
                        .context("setting up alert email: alerts.email.smtp.ca_file")?;
                    params = params.add_root_certificate(ca);
                }
                let params = params.build_rustls().with_context(|| {
                    format!("setting up TLS for alert email to {server}; check smtp.ca_file")
                })?;
                if mode == TlsMode::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };

        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout))
            // Named rather than left to lettre's default, because the scrubber must know every
            // form in which the password leaves this process.
            .authentication(AUTH_MECHANISMS.to_vec());
        let mut scrubber = Scrubber::default();
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
            scrubber = Scrubber::new(auth_forms(user, password.expose()));
        } else if let Some(password) = &settings.password {
            scrubber = Scrubber::new([password.expose().to_owned()]);
        }

        Ok(Self {
            transport: builder.build(),
            from,
            to,
            scrubber,
            timeout: settings.timeout,
            server,
        })
    }

    /// Delivers one message to every configured recipient, within the configured timeout.
    ///
    /// All recipients share one SMTP transaction: if the server refuses one of them, nobody
    /// gets the message and the error is [`DeliveryError::Permanent`].
    pub async fn send(&self, msg: &EmailMessage) -> Result<(), DeliveryError> {
        let message = self.build(msg)?;
        // lettre bounds only the TCP connect by its timeout; a server that accepts and then stalls
        // would hang forever, so the whole exchange gets one deadline.
        let outcome = match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Err(_elapsed) => Err(DeliveryError::Transient(format!(
                "SMTP server {} did not complete the delivery within {}",
                self.server,
                crate::units::duration(self.timeout)
            ))),
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(self.classify(&e)),
        };
        // Every error text leaves through here, to the log, `status` and the state database.
        outcome.map_err(|e| e.map_text(|text| self.scrubber.scrub(&text).into_owned()))
    }

    fn build(&self, msg: &EmailMessage) -> Result<Message, DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(msg.subject.as_str())
            .message_id(None)
            // RFC 3834: tells vacation responders and ticket systems not to answer.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(msg.body.clone())
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the alert email: {e}")))
    }

    fn classify(&self, e: &lettre::transport::smtp::Error) -> DeliveryError {
        let text = format!("SMTP server {}: {e}", self.server);
        let code = e.status().map(|code| code.to_string());
        match code.as_deref() {
            // RFC 4954: AUTH required, mechanism too weak, credentials invalid, encryption
            // required. The configuration is wrong, not the message; keep it for after the fix.
            Some(code @ ("530" | "534" | "535" | "538")) => {
                let reply = e
                    .source()
                    .map(|reply| reply.to_string())
                    .unwrap_or_default();
                DeliveryError::Transient(format!(
                    "SMTP server {} refused our login ({code} {reply}): check smtp.username and the password",
                    self.server
                ))
            }
            _ if e.is_permanent() => DeliveryError::Permanent(text),
            _ => DeliveryError::Transient(text),
        }
    }
}

/// The AUTH mechanisms we offer, in order of preference: both send the password base64-encoded
/// ([`auth_forms`] lists how).
const AUTH_MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// Every form in which [`AUTH_MECHANISMS`] send the password: as typed (a server may echo it
/// decoded), base64 of the password alone (AUTH LOGIN's second answer) and base64 of the AUTH
/// PLAIN argument `\0user\0password`. AUTH LOGIN's first answer, the base64 of the user name,
/// is no secret.
fn auth_forms(user: &str, password: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    vec![
        password.to_owned(),
        b64(password),
        b64(&format!("\0{user}\0{password}")),
    ]
}

/// Delay before retry number `attempt` (0 for the first retry): 30 s doubling per attempt, at
/// most one hour.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    let secs = BACKOFF_BASE.as_secs().saturating_mul(factor);
    Duration::from_secs(secs).min(BACKOFF_CAP)
}

/// The subject line of an alert: `[caretaker] <severity> <job>: <what>`, or without the job for
/// alerts about the daemon itself. The fixed prefix lets mail rules filter on it. Line breaks
/// and other control characters become spaces, and `what` is cut to a readable length.
pub fn subject(severity: &str, job: Option<&str>, what: &str) -> String {
    let clean = |text: &str| -> String {
        text.split(|c: char| c.is_control() || c.is_whitespace())
            .filter(|word| !word.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut what = clean(what);
    if what.chars().count() > SUBJECT_WHAT_MAX_CHARS {
        what = what.chars().take(SUBJECT_WHAT_MAX_CHARS - 1).collect();
        what.push('…');
    }
    match job.map(clean).filter(|job| !job.is_empty()) {
        Some(job) => format!("[caretaker] {} {job}: {what}", clean(severity)),
        None => format!("[caretaker] {}: {what}", clean(severity)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_30s_to_a_one_hour_cap() {
        let cases: &[(u32, u64)] = &[
            (0, 30),
            (1, 60),
            (2, 120),
            (3, 240),
            (4, 480),
            (5, 960),
            (6, 1920),
            (7, 3600),
            (8, 3600),
            (63, 3600),
            (64, 3600),
            (u32::MAX, 3600),
        ];
        for &(attempt, secs) in cases {
            assert_eq!(
                backoff(attempt),
                Duration::from_secs(secs),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn subject_has_a_filterable_prefix() {
        let long = "x".repeat(500);
        let cut = format!("{}…", "x".repeat(SUBJECT_WHAT_MAX_CHARS - 1));
        let cases: &[(&str, Option<&str>, &str, String)] = &[
            (
                "critical",
                Some("nightly-backup"),
                "backup failed",
                "[caretaker] critical nightly-backup: backup failed".into(),
            ),
            (
                "warning",
                None,
                "config reload refused",
                "[caretaker] warning: config reload refused".into(),
            ),
            (
                "resolved",
                Some(""),
                "disk free above 10%",
                "[caretaker] resolved: disk free above 10%".into(),
            ),
            (
                "warning",
                Some("budget"),
                "daily 75%\r\nBcc: evil@example.com",
                "[caretaker] warning budget: daily 75% Bcc: evil@example.com".into(),
            ),
            (
                "info",
                Some("job\twith\ttabs"),
                "  spaced   out  ",
                "[caretaker] info job with tabs: spaced out".into(),
            ),
            (
                "warning",
                Some("j"),
                &long,
                format!("[caretaker] warning j: {cut}"),
            ),
        ];
        for (severity, job, what, expected) in cases {
            assert_eq!(&subject(severity, *job, what), expected, "{what:?}");
        }
    }

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        let settings = settings_with_password("hunter2");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    fn settings_with_password(password: &str) -> SmtpSettings {
        SmtpSettings {
            host: "smtp.example.com".into(),
            port: 587,
            tls: TlsMode::Starttls,
            username: Some("u".into()),
            password: Some(Secret::new(password)),
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            timeout: DEFAULT_TIMEOUT,
            ca_file: None,
        }
    }

    #[test]
    fn a_password_echoed_by_the_server_is_scrubbed() {
        let mut settings = settings_with_password("hunter2");
        settings.tls = TlsMode::None;
        let sink = EmailSink::new(settings).unwrap();
        // "u" and "hunter2": the password, its base64 (AUTH LOGIN) and that of "\0u\0hunter2"
        // (AUTH PLAIN).
        assert_eq!(
            sink.scrubber
                .scrub("535 bad login u/hunter2 aHVudGVyMg== AHUAaHVudGVyMg== (AHUAaHVudG)"),
            "535 bad login u/[redacted] [redacted] [redacted] ([redacted])"
        );
        assert!(!format!("{sink:?}").contains("hunter2"));
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30)),
            ("2m", Some(120)),
            ("1h", Some(3600)),
            ("1d", Some(86400)),
            ("2w", Some(1_209_600)),
            (" 5s ", Some(5)),
            ("30", None),
            ("s", None),
            ("1.5s", None),
            ("-1s", None),
            ("30 s", None),
            ("10ms", None),
            ("", None),
            ("99999999999999999999w", None),
        ];
        for &(text, secs) in cases {
            assert_eq!(
                parse_duration(text),
                secs.map(Duration::from_secs),
                "{text:?}"
            );
        }
    }
}
