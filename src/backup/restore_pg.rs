//! `caretaker restore ARCHIVE --to postgres://…/DB`: a verified dump restored into an empty database in one transaction.

use std::path::Path;

use anyhow::Context;

use crate::backup::restore::RestoreError;
use crate::backup::{archive, pg_dump as dump};
use crate::fsx::PendingFile;
use crate::gateway::postgres::{self, Password, Server};

/// Whether `to` names a PostgreSQL database rather than a file.
pub fn is_url(to: &str) -> bool {
    to.starts_with("postgres://") || to.starts_with("postgresql://")
}

/// The target as a server: the URL's settings, the password from `PGPASSWORD` or libpq's
/// password file (the operator's shell), no extra CA.
fn target(url: &str) -> anyhow::Result<Server> {
    let (clean, sslmode, config) =
        postgres::parse_url(url).map_err(|m| anyhow::anyhow!("--to {m}"))?;
    let (host, port) = postgres::host_and_port(&config);
    let dbname = config.get_dbname().unwrap_or_default().to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    Ok(Server {
        describe: format!("database {dbname} on {host}:{port} as {user}"),
        url: clean,
        sslmode,
        password: Password::Pgpass,
        ca_file: None,
        lock_timeout: postgres::DEFAULT_LOCK_TIMEOUT,
        statement_timeout: postgres::DEFAULT_STATEMENT_TIMEOUT,
        standby_takeover: postgres::DEFAULT_TAKEOVER,
        dbname,
        user,
        host,
        port,
    })
}

/// Verifies `archive` (every checksum), then restores its dump into the database `url` names:
/// an empty one, or with `force` one whose objects of the same names are dropped first. All in
/// one transaction: a failed restore leaves the database as it was.
pub fn restore(archive_path: &Path, url: &str, force: bool) -> Result<String, RestoreError> {
    if !archive_path.is_file() {
        return Err(RestoreError::NoArchive(archive_path.to_path_buf()));
    }
    let server = target(url)?;
    let manifest = archive::peek_manifest(archive_path)?;
    let Some(pg) = &manifest.postgres else {
        return Err(anyhow::anyhow!(
            "{} holds a SQLite database ({}), not a PostgreSQL dump: restore it with --to PATH",
            archive_path.display(),
            manifest.database
        )
        .into());
    };
    let (pg_restore, _) = dump::restore_tool_for(&pg.dump_tool)?;
    let mut session = postgres::connect(&server)?;
    let tables: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .context("counting the target database's tables")?
        .get(0);
    if tables > 0 && !force {
        return Err(RestoreError::NotEmpty(format!(
            "the {} has {tables} tables; add --force to restore over them (the archive's tables are dropped and recreated, in one transaction)",
            server.describe
        )));
    }

    let temp_dir = std::env::temp_dir();
    crate::backup::ensure_free(&temp_dir, manifest.size, "the dump read from the archive")?;
    let mut pending = PendingFile::create(
        &temp_dir.join(format!("caretaker-restore-{}.pgdump", std::process::id())),
    )?;
    archive::read(archive_path, pending.file())
        .with_context(|| format!("nothing was restored from {}", archive_path.display()))?;
    let mut cmd = dump::libpq_command(&pg_restore, &server)?;
    cmd.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
    ]);
    if force {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg(format!("--dbname={}", server.url))
        .arg(pending.temp_path());
    dump::run(
        cmd,
        &format!("{} into the {}", pg_restore.display(), server.describe),
    )?;
    drop(pending);

    let mut counted = 0;
    for t in &pg.tables {
        let Some(want) = t.rows else { continue };
        let got: i64 = session
            .query_one(
                &format!("SELECT count(*) FROM {}", dump::quote_qualified(&t.name)),
                &[],
            )
            .with_context(|| format!("counting {} after the restore", t.name))?
            .get(0);
        if got as u64 != want {
            return Err(anyhow::anyhow!(
                "{} has {got} rows after the restore but {want} in the archive's manifest",
                t.name
            )
            .into());
        }
        counted += 1;
    }
    Ok(format!(
        "restored {} (server {}, {} tables{}) from {} into the {}",
        manifest.database,
        pg.server_version,
        pg.tables.len(),
        if counted > 0 {
            format!(", rows of {counted} compared with the manifest")
        } else {
            String::new()
        },
        archive_path.display(),
        server.describe
    ))
}
