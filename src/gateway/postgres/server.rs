//! A PostgreSQL gateway's server: where it is and how we sign in (`gateway.url` and its keys).
//!
//! The jobs file names the server by URL (`gateway.url`); the password comes from
//! `password_env`, `password_file`, or libpq's password file, never from the URL, so that the
//! jobs file, `check`'s output and every log line stay free of it. Every session we open sets
//! `lock_timeout` and `statement_timeout` before any other statement ([`super::connect`]).

use std::path::PathBuf;
use std::time::Duration;

/// Default `lock_timeout`: far below the proxy's own patience, so a batch of the gateway's
/// inserts never queues behind us for long.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `gateway.standby_takeover`.
pub const DEFAULT_TAKEOVER: Duration = Duration::from_secs(30);
/// What `pg_stat_activity` shows for every session of ours.
pub const APPLICATION_NAME: &str = "caretaker";

/// libpq's `sslmode`, all five of the values caretaker accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate chain checked against the trusted CAs.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    pub const ACCEPTED: &str = "disable, prefer, require, verify-ca, verify-full";

    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// An environment variable of the daemon.
    Env(String),
    /// A file holding only the password.
    File(PathBuf),
    /// libpq's password file (`PGPASSFILE`, else `~/.pgpass`), or none (trust, peer).
    Pgpass,
}

/// The validated connection settings of a PostgreSQL gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The URL without `sslmode` (kept apart in [`Server::sslmode`]); it never holds a password.
    pub url: String,
    pub sslmode: SslMode,
    pub password: Password,
    /// An extra trusted CA for `verify-ca` and `verify-full`, beside the system's.
    pub ca_file: Option<PathBuf>,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    /// How soon a standby daemon takes over after the active one died.
    pub standby_takeover: Duration,
    /// How the server is named in messages: `database litellm on db.internal:5432 as caretaker`.
    pub describe: String,
    /// The database name (for `pg_dump`, scratch databases, the advisory lock's key).
    pub dbname: String,
    pub user: String,
    pub host: String,
    pub port: u16,
}

/// The URL as given, taken apart: what libpq would take from it, sslmode aside, or what is wrong.
pub fn parse_url(url: &str) -> Result<(String, SslMode, tokio_postgres::Config), String> {
    const ACCEPTED: &str = "accepted: postgres://USER@HOST[:PORT]/DATABASE[?sslmode=MODE], or postgres://USER@/DATABASE?host=/SOCKET/DIR";
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("is not a postgres:// URL; {ACCEPTED}"))?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@')
        && rest[..at].contains(':')
    {
        return Err(format!(
            "holds a password; the jobs file must not: remove it from the URL and use gateway.password_env, gateway.password_file or a .pgpass file; {ACCEPTED}"
        ));
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut sslmode = SslMode::Prefer;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                sslmode = SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "has sslmode `{value}`; accepted sslmode values: {}",
                        SslMode::ACCEPTED
                    )
                })?;
            }
            "password" => {
                return Err(format!(
                    "holds a password parameter; the jobs file must not: use gateway.password_env, gateway.password_file or a .pgpass file; {ACCEPTED}"
                ));
            }
            "application_name" => {
                return Err(
                    "sets application_name; caretaker's sessions are always named `caretaker` so that they can be told apart in pg_stat_activity".to_string(),
                );
            }
            _ => kept.push(pair),
        }
    }
    let clean = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config: tokio_postgres::Config = clean
        .parse()
        .map_err(|e| format!("cannot be read ({e}); {ACCEPTED}"))?;
    if config.get_user().is_none() {
        return Err(format!(
            "names no user; name the role caretaker signs in as; {ACCEPTED}"
        ));
    }
    if config.get_dbname().is_none() {
        return Err(format!("names no database; {ACCEPTED}"));
    }
    if config.get_hosts().is_empty() {
        return Err(format!("names no host or socket directory; {ACCEPTED}"));
    }
    Ok((clean, sslmode, config))
}

/// Host (or socket directory) and port of a parsed URL, as messages and the password file name them.
pub fn host_and_port(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// The raw `gateway` keys that only a PostgreSQL gateway reads.
#[derive(Debug, Default)]
pub struct RawServer {
    pub url: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub standby_takeover: Option<Duration>,
}

/// Validates the PostgreSQL keys of `gateway`, each error at its key.
pub fn validate(raw: RawServer, checks: &mut crate::config::Checks<'_>) -> Option<Server> {
    let parsed = match parse_url(&raw.url) {
        Ok(p) => Some(p),
        Err(message) => {
            checks.error("gateway.url", message);
            None
        }
    };
    let password = match (raw.password_env, raw.password_file) {
        (Some(_), Some(_)) => {
            checks.error(
                "gateway.password_file",
                "give either password_env or password_file, not both; accepted: one of them, or neither (then libpq's .pgpass / PGPASSFILE, or a server that needs no password)",
            );
            None
        }
        (Some(var), None) => {
            if var.is_empty() {
                checks.error(
                    "gateway.password_env",
                    "is empty; accepted: the name of an environment variable holding the password",
                );
                None
            } else {
                if std::env::var_os(&var).is_none() {
                    let message = format!(
                        "environment variable {var} is not set in this shell; `caretaker run` and `run-job` need it in their environment (the service's Environment= or EnvironmentFile=), or use password_file"
                    );
                    if checks.purpose == crate::config::Purpose::Check {
                        checks.warn(format!("gateway.password_env: {message}"));
                    } else {
                        checks.error("gateway.password_env", message);
                    }
                }
                Some(Password::Env(var))
            }
        }
        (None, Some(file)) => {
            let path = checks.given_path("gateway.password_file", Some(&file));
            if let Some(p) = &path
                && let Err(message) = super::secrets::read_password_file(p)
            {
                checks.error("gateway.password_file", message);
            }
            path.map(Password::File)
        }
        (None, None) => Some(Password::Pgpass),
    };
    let ca_file = raw
        .ca_file
        .and_then(|f| checks.given_path("gateway.ca_file", Some(&f)));
    if let Some(path) = &ca_file
        && let Err(message) = super::secrets::read_ca_file(path)
    {
        checks.error("gateway.ca_file", message);
    }
    let lock_timeout = raw.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT);
    let statement_timeout = raw.statement_timeout.unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
    let standby_takeover = raw.standby_takeover.unwrap_or(DEFAULT_TAKEOVER);
    for (key, value) in [
        ("gateway.lock_timeout", lock_timeout),
        ("gateway.statement_timeout", statement_timeout),
        ("gateway.standby_takeover", standby_takeover),
    ] {
        // 0 means "wait forever" to PostgreSQL: exactly what these keys exist to prevent.
        if value.is_zero() {
            checks.error(
                key,
                "is zero (PostgreSQL reads a zero timeout as no limit); accepted: a duration above zero, e.g. 200ms or 30s",
            );
        }
    }
    checks.at_most(
        "gateway.lock_timeout",
        lock_timeout,
        Duration::from_secs(60),
        "60s",
    );
    let (url, sslmode, config) = parsed?;
    if ca_file.is_some() && !matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
        checks.warn(format!(
            "gateway.ca_file: ignored because the URL's sslmode is {}; certificates are checked only with verify-ca or verify-full",
            sslmode.as_str()
        ));
    }
    let (host, port) = host_and_port(&config);
    let dbname = config.get_dbname().unwrap_or_default().to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    Some(Server {
        describe: format!("database {dbname} on {host}:{port} as {user}"),
        url,
        sslmode,
        password: password?,
        ca_file,
        lock_timeout,
        statement_timeout,
        standby_takeover,
        dbname,
        user,
        host,
        port,
    })
}

/// Job kinds that run on a PostgreSQL gateway; `check` refuses the others there ([`NOT_YET`]).
pub const READY: &[&str] = &[
    "backup",
    "verify",
    "logrotate",
    "archive",
    "budget",
    "health",
    "integrity",
    "maintenance",
    "pricing",
];
/// Job kinds that read the gateway the SQLite way and are not ported to PostgreSQL yet.
pub const NOT_YET: &[&str] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_libpq_reads_them_or_refused_with_what_is_accepted() {
        let ok: &[(&str, SslMode, &str, &str, u16)] = &[
            (
                "postgres://caretaker@db.internal:5432/litellm?sslmode=verify-full",
                SslMode::VerifyFull,
                "litellm",
                "db.internal",
                5432,
            ),
            (
                "postgresql://caretaker@db/litellm",
                SslMode::Prefer,
                "litellm",
                "db",
                5432,
            ),
            (
                "postgres://caretaker@/litellm?host=/tmp/pg&port=5433&sslmode=disable",
                SslMode::Disable,
                "litellm",
                "/tmp/pg",
                5433,
            ),
            (
                "postgres://caretaker@db:6000/x?sslmode=verify-ca&connect_timeout=5",
                SslMode::VerifyCa,
                "x",
                "db",
                6000,
            ),
        ];
        for (url, mode, db, host, port) in ok {
            let (clean, sslmode, config) = parse_url(url).unwrap();
            assert!(!clean.contains("sslmode"), "{clean}");
            assert_eq!(sslmode, *mode, "{url}");
            assert_eq!(config.get_dbname(), Some(*db), "{url}");
            assert_eq!(host_and_port(&config), (host.to_string(), *port), "{url}");
        }
        let bad: &[(&str, &str)] = &[
            ("mysql://u@h/db", "not a postgres:// URL"),
            ("postgres://u:hunter2@h/db", "holds a password"),
            ("postgres://u@h/db?password=hunter2", "password parameter"),
            (
                "postgres://u@h/db?sslmode=allow",
                "accepted sslmode values: disable, prefer",
            ),
            ("postgres://h/db", "names no user"),
            ("postgres://u@h", "names no database"),
            ("postgres://u@h/db?application_name=x", "application_name"),
            ("postgres://u@h/db?frobnicate=1", "cannot be read"),
        ];
        for (url, want) in bad {
            let err = parse_url(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: the secret leaked: {err}");
        }
    }
}
