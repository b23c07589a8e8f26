//! Opening a session on the gateway's PostgreSQL server: the password, TLS by `sslmode`, and the
//! session settings every statement of ours runs under.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::secrets::{MAX_SECRET_FILE, read_ca_file, read_password_file};
use super::{APPLICATION_NAME, Password, Server, SslMode, pgpass};

/// A blocking session on the gateway's server (jobs run on blocking threads).
pub type Session = postgres::Client;

/// Opens a session on `server` and sets, before any other statement, `lock_timeout` and
/// `statement_timeout`; the session is named `caretaker` in `pg_stat_activity` from its start.
pub fn connect(server: &Server) -> anyhow::Result<Session> {
    connect_with(server, &|name| std::env::var_os(name))
}

/// What a process's environment holds: `std::env::var_os`, or a stand-in in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// [`connect`] with the environment (`password_env`'s variable, `PGPASSFILE`, `HOME`) read
/// through `env`.
pub fn connect_with(server: &Server, env: Env<'_>) -> anyhow::Result<Session> {
    let mut config: postgres::Config = server
        .url
        .parse()
        .context("reading gateway.url (it was valid at check)")?;
    config.application_name(APPLICATION_NAME);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if let Some(password) = password(server, env)? {
        config.password(password);
    }
    let fail = || {
        format!(
            "connecting to the gateway's {} (sslmode {}); check gateway.url, the password (gateway.password_env, password_file or .pgpass) and the server's pg_hba.conf",
            server.describe,
            server.sslmode.as_str()
        )
    };
    let mut client = match server.sslmode {
        SslMode::Disable => {
            config.ssl_mode(postgres::config::SslMode::Disable);
            config.connect(postgres::NoTls)
        }
        mode => {
            config.ssl_mode(if mode == SslMode::Prefer {
                postgres::config::SslMode::Prefer
            } else {
                postgres::config::SslMode::Require
            });
            let tls = tls_config(server)?;
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        }
    }
    .with_context(fail)?;
    client
        .batch_execute(&session_settings(server))
        .with_context(|| {
            format!(
                "setting the session's timeouts on the gateway's {}",
                server.describe
            )
        })?;
    Ok(client)
}

/// The statements that start every session of ours.
pub fn session_settings(server: &Server) -> String {
    format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'",
        server.lock_timeout.as_millis(),
        server.statement_timeout.as_millis()
    )
}

/// The password for `server`, from where the jobs file says; `None` to sign in without one.
pub fn password(server: &Server, env: Env<'_>) -> anyhow::Result<Option<String>> {
    match &server.password {
        Password::Env(var) => match env(var).and_then(|v| v.into_string().ok()) {
            Some(v) if !v.is_empty() => Ok(Some(v)),
            _ => anyhow::bail!(
                "gateway.password_env: environment variable {var} is not set or empty in caretaker's environment; set it (the service's Environment= or EnvironmentFile=), or use password_file"
            ),
        },
        Password::File(path) => read_password_file(path)
            .map(Some)
            .map_err(|m| anyhow::anyhow!("gateway.password_file: {m}")),
        Password::Pgpass => Ok(from_pgpass(server, env)),
    }
}

/// The password libpq would find without being given one: `PGPASSWORD`, else its password file.
fn from_pgpass(server: &Server, env: Env<'_>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(password) = env("PGPASSWORD").and_then(|v| v.into_string().ok())
        && !password.is_empty()
    {
        return Some(password);
    }
    let home = env("HOME").map(std::path::PathBuf::from);
    let pgpassfile = env("PGPASSFILE").and_then(|v| v.into_string().ok());
    let path = pgpass::location(pgpassfile.as_deref(), home.as_deref())?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if !pgpass::mode_is_private(meta.mode()) {
        tracing::warn!(
            file = %path.display(),
            "the password file is readable by group or others and is ignored, as libpq ignores it; run chmod 600 on it"
        );
        return None;
    }
    let text = crate::fsx::read_regular(&path, MAX_SECRET_FILE).ok()?;
    pgpass::lookup(
        &String::from_utf8_lossy(&text),
        &pgpass::Target {
            host: &server.host,
            port: server.port,
            database: &server.dbname,
            user: &server.user,
        },
    )
}

/// rustls settings for `server.sslmode` (not `disable`).
fn tls_config(server: &Server) -> anyhow::Result<rustls::ClientConfig> {
    crate::tls::install_ring();
    let builder = rustls::ClientConfig::builder();
    if matches!(server.sslmode, SslMode::Prefer | SslMode::Require) {
        // libpq's prefer and require encrypt without checking who answers.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &server.ca_file {
        for cert in read_ca_file(path).map_err(|m| anyhow::anyhow!("gateway.ca_file: {m}"))? {
            roots.add(cert).with_context(|| {
                format!(
                    "gateway.ca_file: adding {} to the trusted CAs",
                    path.display()
                )
            })?;
        }
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .context("building the certificate verifier (no trusted CA: set gateway.ca_file)")?;
    if server.sslmode == SslMode::VerifyFull {
        return Ok(builder.with_webpki_verifier(webpki).with_no_client_auth());
    }
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        .with_no_client_auth())
}

/// `require`: any certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct EncryptOnly;

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The environment a libpq tool (`pg_dump`, `pg_restore`) needs to reach `server` as we do:
/// the password (never on its command line), sslmode, the CA file and our application name.
pub fn libpq_env(server: &Server) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut env = vec![
        ("PGSSLMODE", server.sslmode.as_str().to_string()),
        ("PGAPPNAME", APPLICATION_NAME.to_string()),
    ];
    if let Some(password) = password(server, &|name| std::env::var_os(name))? {
        env.push(("PGPASSWORD", password));
    }
    if let Some(ca) = &server.ca_file {
        env.push(("PGSSLROOTCERT", ca.display().to_string()));
    }
    Ok(env)
}
