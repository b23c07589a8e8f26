//! A backup of a PostgreSQL gateway: `pg_dump --format=custom` in one exported snapshot, verified, archived and pruned as on SQLite.
//!
//! The dump is taken uncompressed (`--compress=0`) and gzipped on all cores while pg_dump
//! writes it (the archive's body; the manifest is put in front once the dump's SHA-256 is
//! known), and kept uncompressed beside it for the checks. `verify: quick` reads the dump's table of contents back with
//! `pg_restore --list`; `full` restores it into a scratch database that the run creates and
//! drops, and compares each table's rows with the counts taken in the dump's own snapshot.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};

use super::kind::{self, Extent, Spec, VerifyLevel, guard, settle};
use crate::backup::archive::{self, Manifest, PgDump};
use crate::backup::{self as backups, Scratch};
use crate::backup::pg_dump as dump;
use crate::gateway::Dialect;
use crate::gateway::postgres::{self, Server};
use crate::jobs::{Context, Report};
use crate::units;

/// The archive entry of the dump.
pub const DUMP_ENTRY: &str = "database.pgdump";

pub fn run(spec: &Spec, ctx: &mut Context<'_>, server: &Server) -> anyhow::Result<Report> {
    let to = &spec.to;
    let kind::Start {
        mut held,
        base,
        plan,
    } = kind::start(spec, ctx)?;

    let mut session = postgres::connect(server)?;
    let (server_version, server_num) = dump::server_version(&mut session)?;
    let (pg_dump, dump_version) = dump::pick(spec.pg_dump.as_deref(), "pg_dump")?;
    dump::check_tool(&pg_dump, &dump_version, &server_version, server_num)?;
    let table = Dialect::Postgres.table(&ctx.gateway.table);
    let exists: bool = session
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .context("looking for the gateway's table")?
        .get(0);
    if !exists {
        bail!(
            "the gateway's {} has no table {table}: it was emptied or replaced, or gateway.url names the wrong database; no archive was written and none was deleted",
            server.describe
        );
    }
    let qualified = qualified_name(&mut session, &ctx.gateway.table);
    if ctx.dry_run {
        return Ok(Report::new(format!(
            "would dump the gateway's {} (server {server_version}) with {} ({dump_version}) into {} and keep {} of {} archives",
            server.describe,
            pg_dump.display(),
            plan.archive,
            plan.retention.iter().filter(|d| d.keep).count(),
            plan.retention.len()
        )));
    }
    let dest = kind::prepare_dir(spec, ctx, &plan)?;
    let includes = spec
        .include
        .iter()
        .map(|p| archive::read_include(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let database_bytes: i64 = session
        .query_one("SELECT pg_database_size(current_database())", &[])
        .context("reading the database's size")?
        .get(0);
    // An uncompressed dump is at most about the data's size; the archive at most that again.
    let needed = 2 * database_bytes.max(0) as u64
        + includes.iter().map(|i| i.meta.size).sum::<u64>()
        + (1 << 20);
    backups::ensure_free(to, needed, &format!("the dump and archive of the gateway's {}", server.describe))?;
    ctx.checkpoint()?;

    let scratch = backups::ScratchDb(plan.archive.scratch_path(to, Scratch::Snapshot));
    let compression = spec.archive_compression();
    // The dump is compressed into the archive's body while pg_dump writes it (on all cores),
    // and kept uncompressed beside it for the checks of `verify`.
    let mut body = archive::StreamedBody::create(&dest, compression)?;
    let dumping = Instant::now();
    let (pgdump, sha256, size) = dump_in_snapshot(
        spec,
        server,
        &mut session,
        &pg_dump,
        (&scratch.0, &mut body),
        &qualified,
        PgDump {
            server_version,
            dump_tool: dump_version,
            tables: Vec::new(),
        },
    )?;
    let gateway_rows = pgdump
        .tables
        .iter()
        .find(|t| t.name == qualified)
        .and_then(|t| t.rows);
    let extent = Extent {
        rows: gateway_rows.unwrap_or(0),
        bytes: size,
    };
    let shrink = guard(spec, ctx, base.as_ref(), extent, &plan.archive, &mut held)?;
    let dump_ms = dumping.elapsed().as_secs_f64() * 1000.0;
    ctx.checkpoint()?;

    let verifying = Instant::now();
    match spec.verify {
        VerifyLevel::None => {}
        VerifyLevel::Quick => list_contents(&pg_dump, &scratch.0, &ctx.gateway.table)?,
        VerifyLevel::Full => {
            list_contents(&pg_dump, &scratch.0, &ctx.gateway.table)?;
            restore_and_compare(server, &mut session, &pg_dump, &scratch.0, ctx.job, &pgdump)?;
        }
    }
    let mut verify_ms = verifying.elapsed().as_secs_f64() * 1000.0;
    ctx.checkpoint()?;

    let manifest = Manifest {
        format: archive::FORMAT_VERSION,
        job: ctx.job.to_string(),
        created_at: plan.archive.time,
        source: server.describe.clone().into(),
        database: DUMP_ENTRY.to_string(),
        size,
        sha256,
        sqlite_version: String::new(),
        page_size: 0,
        page_count: 0,
        journal_mode: String::new(),
        table: ctx.gateway.table.clone(),
        row_count: gateway_rows,
        files: includes.iter().map(|i| i.meta.clone()).collect(),
        tool: format!("caretaker {}", env!("CARGO_PKG_VERSION")),
        databases: Vec::new(),
        matched: Vec::new(),
        postgres: Some(pgdump),
    };
    let compressing = Instant::now();
    let (pending, archive_bytes) = body.finish(&dest, &manifest, &includes)?;
    let compress_ms = compressing.elapsed().as_secs_f64() * 1000.0;
    let published = kind::read_back_and_publish(spec, ctx, pending, &mut verify_ms)?;
    drop(scratch);
    let (kept, deleted) = settle(
        spec,
        ctx,
        &mut held,
        shrink.as_deref(),
        &server.describe,
        &published,
    )?;
    Ok(Report::new(format!(
        "wrote {} ({}, dump {} of server {} by {}, {} rows in {}){}; kept {kept} archives, deleted {}",
        published.display(),
        units::bytes(archive_bytes),
        units::bytes(size),
        manifest.postgres.as_ref().map_or("", |p| p.server_version.as_str()),
        manifest.postgres.as_ref().map_or("", |p| p.dump_tool.as_str()),
        gateway_rows.map_or_else(|| "unknown".to_string(), |r| r.to_string()),
        ctx.gateway.table,
        shrink.as_ref().map_or(String::new(), |why| format!("; HELD, retention paused: {why}")),
        if deleted.is_empty() { "none".to_string() } else { deleted.join(", ") }
    ))
    .figure("dump_ms", dump_ms)
    .figure("compress_ms", compress_ms)
    .figure("verify_ms", verify_ms)
    .figure("database_bytes", size as f64)
    .figure("archive_bytes", archive_bytes as f64)
    .figure("rows", gateway_rows.unwrap_or(0) as f64)
    .figure("held", f64::from(u8::from(shrink.is_some())))
    .figure("kept", kept as f64)
    .figure("deleted", deleted.len() as f64))
}

/// `schema.table` of the gateway's table as the catalog names it (the search path resolves an
/// unqualified name).
fn qualified_name(session: &mut postgres::Session, table: &str) -> String {
    session
        .query_one(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&Dialect::Postgres.table(table)],
        )
        .map(|r| r.get(0))
        .unwrap_or_else(|_| table.to_string())
}

/// Dumps the database in a snapshot this session exports: the table list, the row counts (for
/// `verify: full`) and the dump all see the same rows. `pgdump` brings the versions; its tables
/// are filled here. The dump goes to `out`: the uncompressed file for the checks, and the
/// archive's body.
fn dump_in_snapshot(
    spec: &Spec,
    server: &Server,
    session: &mut postgres::Session,
    pg_dump: &Path,
    out: (&Path, &mut archive::StreamedBody),
    gateway_table: &str,
    mut pgdump: PgDump,
) -> anyhow::Result<(PgDump, String, u64)> {
    let mut tx = session
        .build_transaction()
        .isolation_level(::postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .context("starting the dump's snapshot transaction")?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .context("exporting the dump's snapshot")?
        .get(0);
    pgdump.tables = dump::tables(&mut tx)?;
    // The gateway table's rows always (the shrink guard compares them), every table's for
    // `verify: full`.
    let full = spec.verify == VerifyLevel::Full;
    dump::count_rows(&mut tx, &mut pgdump, |name| full || name == gateway_table)?;
    let mut cmd = dump::libpq_command(pg_dump, server)?;
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--lock-wait-timeout={}ms", server.lock_timeout.as_millis()))
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={}", server.url));
    let (sha256, size) = dump::run_into(
        cmd,
        out.0,
        out.1,
        &format!("{} of the gateway's {}", pg_dump.display(), server.describe),
    )?;
    tx.commit().context("ending the dump's snapshot transaction")?;
    Ok((pgdump, sha256, size))
}

/// `verify: quick`: the dump's table of contents reads back and holds the gateway table's data.
fn list_contents(pg_dump: &Path, file: &Path, table: &str) -> anyhow::Result<()> {
    let (pg_restore, _) = dump::restore_tool_beside(pg_dump)?;
    dump::check_listing(&pg_restore, file, table)
        .context("the new dump did not read back; no archive was written")
}

/// `verify: full`: restores the dump into a scratch database created for it (dropped again
/// however this ends) and compares every table's rows with the snapshot's counts.
fn restore_and_compare(
    server: &Server,
    session: &mut postgres::Session,
    pg_dump: &Path,
    file: &Path,
    job: &str,
    pgdump: &PgDump,
) -> anyhow::Result<()> {
    let name = format!("caretaker_verify_{job}");
    let quoted = Dialect::Postgres.ident(&name);
    // A killed run's scratch database goes first.
    let drop_scratch = |session: &mut postgres::Session| {
        session
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .with_context(|| format!("dropping the scratch database {name}"))
    };
    drop_scratch(session)?;
    session
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .with_context(|| format!("creating the scratch database {name} for `verify: full` (the role needs CREATEDB, see docs/postgres.md)"))?;
    let compared = restore_into(server, &name, pg_dump, file, pgdump);
    let dropped = drop_scratch(session);
    compared.and(dropped)
}

fn restore_into(
    server: &Server,
    name: &str,
    pg_dump: &Path,
    file: &Path,
    pgdump: &PgDump,
) -> anyhow::Result<()> {
    let (pg_restore, _) = dump::restore_tool_beside(pg_dump)?;
    let url = dump::url_of_database(&server.url, name);
    let mut cmd = dump::libpq_command(&pg_restore, server)?;
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"])
        .arg(format!("--dbname={url}"))
        .arg(file);
    dump::run(cmd, &format!("{} into the scratch database {name}", pg_restore.display()))?;
    let scratch_server = Server {
        url,
        dbname: name.to_string(),
        ..server.clone()
    };
    let mut restored = postgres::connect(&scratch_server)?;
    for t in &pgdump.tables {
        let Some(want) = t.rows else { continue };
        let got: i64 = restored
            .query_one(&format!("SELECT count(*) FROM {}", dump::quote_qualified(&t.name)), &[])
            .with_context(|| format!("counting {} in the scratch database {name}", t.name))?
            .get(0);
        ensure!(
            got as u64 == want,
            "verify full: {} has {got} rows restored but {want} in the dump's snapshot; no archive was written",
            t.name
        );
    }
    Ok(())
}
