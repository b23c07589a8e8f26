//! `pg_dump` and `pg_restore`: which binary, the major-version rule, and running them against the gateway.
//!
//! `pg_dump` refuses a server of a newer major version, and `pg_restore` reads only dumps of
//! its own major version or older. The tool is the one `backup.pg_dump` names, else the newest
//! installed one (Debian's `/usr/lib/postgresql/<major>/bin`, then `PATH`); a tool older than
//! the server is refused before it runs, naming both versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::backup::archive::{PgDump, PgTable};
use crate::gateway::Dialect;
use crate::gateway::postgres::connect::libpq_env;
use crate::gateway::postgres::{Server, Session};

/// The major version in `pg_dump --version` / `postgres --version` output
/// (`pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` is 15; `9.6.24` is 9).
pub fn major_of_version(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = version.split('.');
    let first: u32 = parts.next()?.parse().ok()?;
    // Before 10 the major version was two numbers (9.6).
    Some(if first < 10 {
        first * 100 + parts.next()?.parse::<u32>().ok()?
    } else {
        first
    })
}

/// The major version of `server_version_num` (150018 is 15; 90624 is 906).
pub fn major_of_num(num: u32) -> u32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

/// The major-version rule: a tool reads the server only when it is at least as new.
pub fn check_tool(
    tool: &Path,
    tool_version: &str,
    server_version: &str,
    server_num: u32,
) -> anyhow::Result<()> {
    let tool_major = major_of_version(tool_version).with_context(|| {
        format!(
            "reading the version of {} from `{tool_version}`",
            tool.display()
        )
    })?;
    let server_major = major_of_num(server_num);
    if tool_major < server_major {
        bail!(
            "{} is {} (major {tool_major}), older than the gateway's server {server_version} (major {server_major}); pg_dump refuses a newer server: install pg_dump {server_major} or newer and name it with backup.pg_dump (e.g. /usr/lib/postgresql/{server_major}/bin/pg_dump)",
            tool.display(),
            tool_version.trim(),
        );
    }
    Ok(())
}

/// Installed libpq tools named `name`, newest major first: Debian's versioned directories,
/// then `PATH`.
pub fn installed(name: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = glob::glob(&format!("/usr/lib/postgresql/*/bin/{name}"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let major = p.parent()?.parent()?.file_name()?.to_str()?.parse().ok()?;
            Some((major, p))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut out: Vec<PathBuf> = found.into_iter().map(|(_, p)| p).collect();
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .filter(|p| p.is_file()),
        );
    }
    out
}

/// `tool --version`, trimmed.
pub fn version_of(tool: &Path) -> anyhow::Result<String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version (check backup.pg_dump, or install PostgreSQL's client programs)", tool.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --version failed: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tool to run: `chosen`, else the newest installed `name`; with its version.
pub fn pick(chosen: Option<&Path>, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let tool = match chosen {
        Some(p) => p.to_path_buf(),
        None => installed(name).into_iter().next().with_context(|| {
            format!("no {name} found in /usr/lib/postgresql/*/bin or PATH: install PostgreSQL's client programs (Debian: postgresql-client) or name one with backup.pg_dump")
        })?,
    };
    let version = version_of(&tool)?;
    Ok((tool, version))
}

/// The sibling `pg_restore` of a `pg_dump` (same directory, same version), else the newest.
pub fn restore_tool_beside(pg_dump: &Path) -> anyhow::Result<(PathBuf, String)> {
    let beside = pg_dump.with_file_name("pg_restore");
    pick(beside.is_file().then_some(beside.as_path()), "pg_restore")
}

/// The newest installed `pg_restore`, refused when older than the `pg_dump` (`dump_tool`, its
/// `--version`) that wrote the dump: pg_restore cannot read a newer dump.
pub fn restore_tool_for(dump_tool: &str) -> anyhow::Result<(PathBuf, String)> {
    let (pg_restore, version) = pick(None, "pg_restore")?;
    if let (Some(t), Some(d)) = (major_of_version(&version), major_of_version(dump_tool))
        && t < d
    {
        bail!(
            "{} is {version} (major {t}) but the dump was written by {dump_tool} (major {d}); pg_restore cannot read a newer dump: install pg_restore {d} or newer",
            pg_restore.display()
        );
    }
    Ok((pg_restore, version))
}

/// Reads a dump's table of contents back with `pg_restore --list`: it must list the data of
/// `table` (`schema.table` or `table`).
pub fn check_listing(pg_restore: &Path, file: &Path, table: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new(pg_restore);
    cmd.arg("--list").arg(file);
    let listing = run(cmd, &format!("{} --list", pg_restore.display()))?;
    let bare = table.rsplit('.').next().unwrap_or(table);
    anyhow::ensure!(
        listing
            .lines()
            .any(|l| l.contains("TABLE DATA") && l.contains(bare)),
        "the dump's table of contents (pg_restore --list) has no data entry for {table}"
    );
    Ok(())
}

/// The server's version, as text and as `server_version_num`.
pub fn server_version(session: &mut Session) -> anyhow::Result<(String, u32)> {
    let row = session
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .context("reading the server's version")?;
    Ok((row.get(0), row.get::<_, i32>(1) as u32))
}

/// Every table of the current database (not the system's), `schema.table`, with the planner's
/// row estimate.
pub fn tables(session: &mut impl postgres::GenericClient) -> anyhow::Result<Vec<PgTable>> {
    let rows = session
        .query(
            "SELECT n.nspname || '.' || c.relname, c.reltuples::float8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' \
             ORDER BY 1",
            &[],
        )
        .context("listing the database's tables")?;
    Ok(rows
        .iter()
        .map(|r| {
            let estimate: f64 = r.get(1);
            PgTable {
                name: r.get(0),
                // -1 (PostgreSQL 14+) means never analyzed or vacuumed.
                rows_estimate: (estimate >= 0.0).then_some(estimate as u64),
                rows: None,
            }
        })
        .collect())
}

/// `schema.table` quoted for a statement.
pub fn quote_qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!(
            "{}.{}",
            Dialect::Postgres.ident(schema),
            Dialect::Postgres.ident(table)
        ),
        None => Dialect::Postgres.ident(name),
    }
}

/// A command for a libpq tool reaching `server`'s database `dbname` as we do (password and TLS
/// by environment, never on the command line).
pub fn libpq_command(tool: &Path, server: &Server) -> anyhow::Result<Command> {
    let mut cmd = Command::new(tool);
    for (k, v) in libpq_env(server)? {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// `url` naming database `dbname` instead (a scratch database, `postgres`), host and options kept.
pub fn url_of_database(url: &str, dbname: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let query = after.find('?').map_or("", |i| &after[i..]);
    format!(
        "{}{}/{dbname}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    )
}

/// Runs `cmd`, failing with its stderr (which names no secret: passwords go by environment).
pub fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` (a tool writing to its standard output), writing what it writes to a new file
/// `out` (mode 0600) and to `also` (the archive's compressor), hashing it on the way: one pass
/// over the dump instead of three. Returns the SHA-256 and size; fails with the tool's stderr.
pub fn run_into(
    mut cmd: Command,
    out: &Path,
    also: &mut dyn std::io::Write,
    what: &str,
) -> anyhow::Result<(String, u64)> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut hashing = crate::backup::archive::HashingWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
    );
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let copied = (|| {
        let mut buf = vec![0; 1 << 16];
        let mut n = 0u64;
        loop {
            let got = match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hashing.write_all(&buf[..got])?;
            also.write_all(&buf[..got])?;
            n += got as u64;
        }
        hashing.flush()?;
        Ok(n)
    })();
    if copied.is_err() {
        // A full disk: the tool must not go on reading the database for nothing.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}): {}", stderr.trim());
    }
    let size =
        copied.with_context(|| format!("writing the output of {what} to {}", out.display()))?;
    Ok((hashing.finish().0, size))
}

/// Fills `dump.tables[].rows` of the tables `which` names from counts taken in `session`'s
/// current snapshot.
pub fn count_rows(
    session: &mut impl postgres::GenericClient,
    dump: &mut PgDump,
    which: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    for t in dump.tables.iter_mut().filter(|t| which(&t.name)) {
        let n: i64 = session
            .query_one(
                &format!("SELECT count(*) FROM {}", quote_qualified(&t.name)),
                &[],
            )
            .with_context(|| format!("counting the rows of {}", t.name))?
            .get(0);
        t.rows = Some(n as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_postgresql_numbers_them() {
        for (text, major) in [
            (
                "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)",
                Some(15),
            ),
            ("pg_dump (PostgreSQL) 18.6", Some(18)),
            ("pg_dump (PostgreSQL) 9.6.24", Some(906)),
            ("postgres (PostgreSQL) 17beta1", None),
            ("nothing", None),
        ] {
            assert_eq!(major_of_version(text), major, "{text}");
        }
        assert_eq!(major_of_num(150018), 15);
        assert_eq!(major_of_num(180006), 18);
        assert_eq!(major_of_num(90624), 906);
    }

    #[test]
    fn an_older_pg_dump_is_refused_naming_both_versions() {
        let tool = Path::new("/usr/lib/postgresql/15/bin/pg_dump");
        check_tool(tool, "pg_dump (PostgreSQL) 15.18", "15.4", 150004).unwrap();
        check_tool(tool, "pg_dump (PostgreSQL) 15.18", "14.1", 140001).unwrap();
        let err = check_tool(tool, "pg_dump (PostgreSQL) 15.18", "18.1", 180001)
            .unwrap_err()
            .to_string();
        for part in [
            "15.18",
            "major 15",
            "18.1",
            "major 18",
            "backup.pg_dump",
            tool.to_str().unwrap(),
        ] {
            assert!(err.contains(part), "{part:?} missing: {err}");
        }
    }

    #[test]
    fn another_database_of_the_same_server_keeps_host_and_options() {
        for (url, want) in [
            (
                "postgres://caretaker@db:5432/litellm",
                "postgres://caretaker@db:5432/scratch",
            ),
            (
                "postgres://caretaker@/litellm?host=/tmp/x&port=5433",
                "postgres://caretaker@/scratch?host=/tmp/x&port=5433",
            ),
            (
                "postgresql://caretaker@db",
                "postgresql://caretaker@db/scratch",
            ),
        ] {
            assert_eq!(url_of_database(url, "scratch"), want);
        }
    }
}
