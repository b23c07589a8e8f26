//! The gateway's database: which table and columns hold what, and how we connect to it politely.

pub mod postgres;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;

use crate::config::Checks;
use crate::config::values;

/// Apantli's busy timeout: a write waits this long for a lock before the row is lost.
pub const APANTLI_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Apantli,
    Bobamixer,
    /// LiteLLM's spend logs, on PostgreSQL only.
    Litellm,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// UTC ISO-8601 text; Apantli writes three spellings (`Z`, `+00:00`, naive) that all sort
    /// correctly against a `YYYY-MM-DDTHH:MM:SS` bound.
    Iso8601,
    UnixSeconds,
    UnixMillis,
    /// A PostgreSQL `timestamp` (UTC, as LiteLLM writes it); PostgreSQL gateways only.
    Timestamp,
}

impl TimeFormat {
    /// `t` in the column's own format, to compare against the raw column so its index is used.
    /// ISO text bounds are `YYYY-MM-DDTHH:MM:SS`: all three Apantli spellings of the same
    /// second sort at or after it, and `datetime()`'s space separator would sort wrongly.
    pub fn bound(self, t: chrono::DateTime<chrono::Utc>) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match self {
            TimeFormat::Iso8601 => Value::Text(t.format("%Y-%m-%dT%H:%M:%S").to_string()),
            TimeFormat::Timestamp => Value::Text(t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            TimeFormat::UnixSeconds => Value::Integer(t.timestamp()),
            TimeFormat::UnixMillis => Value::Integer(t.timestamp_millis()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostColumns {
    Single(String),
    Split { input: String, output: String },
}

/// Where a gateway keeps each fact of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub time: String,
    pub time_format: TimeFormat,
    pub model: String,
    pub provider: Option<String>,
    pub input_tokens: String,
    pub output_tokens: String,
    pub cost: CostColumns,
    pub error: Option<String>,
    pub payload: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The SQLite file; empty for a PostgreSQL gateway (see `postgres`).
    pub database: PathBuf,
    /// The server of a PostgreSQL gateway (`gateway.url`); `None` for SQLite.
    pub postgres: Option<postgres::Server>,
    pub preset: Preset,
    pub table: String,
    pub columns: Columns,
    /// How long our own statements wait for the gateway's locks.
    pub busy_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    database: Option<PathBuf>,
    url: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    lock_timeout: Option<values::Duration>,
    statement_timeout: Option<values::Duration>,
    standby_takeover: Option<values::Duration>,
    schema: Option<Preset>,
    busy_timeout: Option<values::Duration>,
    table: Option<String>,
    columns: Option<RawColumns>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumns {
    time: Option<String>,
    time_format: Option<TimeFormat>,
    model: Option<String>,
    provider: Option<String>,
    input_tokens: Option<String>,
    output_tokens: Option<String>,
    cost: Option<String>,
    input_cost: Option<String>,
    output_cost: Option<String>,
    error: Option<String>,
    payload: Option<values::OneOrMany<String>>,
}

impl Preset {
    pub fn table_and_columns(self) -> Option<(String, Columns)> {
        let s = |v: &str| v.to_string();
        match self {
            Preset::Apantli => Some((
                s("requests"),
                Columns {
                    time: s("timestamp"),
                    time_format: TimeFormat::Iso8601,
                    model: s("model"),
                    provider: Some(s("provider")),
                    input_tokens: s("prompt_tokens"),
                    output_tokens: s("completion_tokens"),
                    cost: CostColumns::Single(s("cost")),
                    error: Some(s("error")),
                    payload: vec![s("request_data"), s("response_data")],
                },
            )),
            Preset::Bobamixer => Some((
                s("usage_records"),
                Columns {
                    time: s("ts"),
                    time_format: TimeFormat::UnixSeconds,
                    model: s("model"),
                    provider: None,
                    input_tokens: s("input_tokens"),
                    output_tokens: s("output_tokens"),
                    cost: CostColumns::Split {
                        input: s("input_cost"),
                        output: s("output_cost"),
                    },
                    error: None,
                    payload: Vec::new(),
                },
            )),
            Preset::Litellm => Some(postgres::litellm_columns()),
            Preset::Custom => None,
        }
    }
}

/// SQL identifiers from the jobs file are quoted into statements, so only plain names pass.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn validate(mut raw: RawGateway, checks: &mut Checks<'_>) -> Option<Gateway> {
    let on_postgres = raw.url.is_some();
    let (database, server) = match (raw.database, raw.url) {
        (Some(_), Some(_)) => {
            checks.error(
                "gateway.url",
                "`gateway.database` and `gateway.url` are both set; accepted: one of them (database: a SQLite file, url: a PostgreSQL server)",
            );
            (None, None)
        }
        (Some(p), None) => (checks.given_path("gateway.database", Some(&p)), None),
        (None, Some(url)) => {
            let server = postgres::validate(
                postgres::RawServer {
                    url,
                    password_env: raw.password_env.take(),
                    password_file: raw.password_file.take(),
                    ca_file: raw.ca_file.take(),
                    lock_timeout: raw.lock_timeout.map(|d| d.0),
                    statement_timeout: raw.statement_timeout.map(|d| d.0),
                    standby_takeover: raw.standby_takeover.map(|d| d.0),
                },
                checks,
            );
            (server.is_some().then(PathBuf::new), server)
        }
        (None, None) => {
            checks.error(
                "gateway.database",
                "missing key `gateway.database`; accepted: the path of the gateway's SQLite file, or `gateway.url` for a PostgreSQL server",
            );
            (None, None)
        }
    };
    // The PostgreSQL keys mean nothing to a SQLite file: a stray one is a mistake to hear about.
    let sqlite_only = [("busy_timeout", raw.busy_timeout.is_some())];
    let postgres_only = [
        ("password_env", raw.password_env.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("lock_timeout", raw.lock_timeout.is_some()),
        ("statement_timeout", raw.statement_timeout.is_some()),
        ("standby_takeover", raw.standby_takeover.is_some()),
    ];
    let (stray, engine, other) = if on_postgres {
        (
            &sqlite_only[..],
            "PostgreSQL (gateway.url)",
            "a SQLite gateway",
        )
    } else {
        (
            &postgres_only[..],
            "SQLite (gateway.database)",
            "a PostgreSQL gateway (gateway.url)",
        )
    };
    for (key, _) in stray.iter().filter(|(_, set)| *set) {
        checks.error(
            &format!("gateway.{key}"),
            format!("`{key}` is only read for {other}; this gateway is {engine}"),
        );
    }
    let preset = raw.schema.unwrap_or_else(|| {
        checks.error(
            "gateway.schema",
            if on_postgres {
                "missing key `gateway.schema`; accepted with gateway.url: litellm, custom"
            } else {
                "missing key `gateway.schema`; accepted: apantli, bobamixer, custom"
            },
        );
        Preset::Custom
    });
    match (preset, on_postgres) {
        (Preset::Litellm, false) => checks.error(
            "gateway.schema",
            "`litellm` keeps its spend logs in PostgreSQL; accepted with gateway.database: apantli, bobamixer, custom (or give gateway.url for litellm)",
        ),
        (Preset::Apantli | Preset::Bobamixer, true) => checks.error(
            "gateway.schema",
            "this preset is a SQLite gateway's; accepted with gateway.url: litellm, custom",
        ),
        _ => {}
    }
    let busy_timeout = raw.busy_timeout.map_or(Duration::from_secs(2), |d| d.0);
    let (table, columns) = match preset.table_and_columns() {
        Some(found) => {
            for (key, set) in [
                ("table", raw.table.is_some()),
                ("columns", raw.columns.is_some()),
            ] {
                if set {
                    checks.error(
                        &format!("gateway.{key}"),
                        format!("`{key}` is only read with `schema: custom`; the preset fixes it"),
                    );
                }
            }
            found
        }
        None => custom(raw.table, raw.columns, on_postgres, checks)?,
    };
    if !on_postgres && columns.time_format == TimeFormat::Timestamp {
        checks.error(
            "gateway.columns.time_format",
            "`timestamp` is a PostgreSQL column type; accepted with gateway.database: iso8601, unix_seconds, unix_millis",
        );
    }
    Some(Gateway {
        database: database?,
        postgres: server,
        preset,
        table,
        columns,
        busy_timeout,
    })
}

fn custom(
    table: Option<String>,
    columns: Option<RawColumns>,
    on_postgres: bool,
    checks: &mut Checks<'_>,
) -> Option<(String, Columns)> {
    let invalid = std::cell::Cell::new(false);
    let name = |key: &str, value: Option<String>, checks: &mut Checks<'_>| -> Option<String> {
        match value {
            Some(v) if is_identifier(&v) => Some(v),
            Some(v) => {
                checks.error(
                    key,
                    format!("`{v}` is not a plain SQL name; accepted: letters, digits and _"),
                );
                invalid.set(true);
                None
            }
            None => None,
        }
    };
    // On PostgreSQL the table may be schema-qualified (`gw.llm_usage_log`).
    let table = match table {
        Some(t) if on_postgres && postgres::is_table_name(&t) => Some(t),
        Some(t) if on_postgres => {
            checks.error(
                "gateway.table",
                format!("`{t}` is not a table name; accepted: `table` or `schema.table`, each a plain SQL name (letters, digits and _)"),
            );
            invalid.set(true);
            None
        }
        t => name("gateway.table", t, checks),
    };
    let Some(c) = columns else {
        checks.error(
            "gateway.columns",
            "`schema: custom` needs `columns` (time, time_format, model, input_tokens, output_tokens, cost or input_cost + output_cost)",
        );
        return None;
    };
    let required = [
        ("table", table.is_some() || invalid.get()),
        ("columns.time", c.time.is_some()),
        ("columns.model", c.model.is_some()),
        ("columns.input_tokens", c.input_tokens.is_some()),
        ("columns.output_tokens", c.output_tokens.is_some()),
        ("columns.time_format", c.time_format.is_some()),
    ];
    let time = name("gateway.columns.time", c.time, checks);
    let model = name("gateway.columns.model", c.model, checks);
    let provider = name("gateway.columns.provider", c.provider, checks);
    let input_tokens = name("gateway.columns.input_tokens", c.input_tokens, checks);
    let output_tokens = name("gateway.columns.output_tokens", c.output_tokens, checks);
    let cost = name("gateway.columns.cost", c.cost, checks);
    let input_cost = name("gateway.columns.input_cost", c.input_cost, checks);
    let output_cost = name("gateway.columns.output_cost", c.output_cost, checks);
    let error = name("gateway.columns.error", c.error, checks);
    let payload: Vec<String> = c
        .payload
        .map(|p| p.0)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| name(&format!("gateway.columns.payload[{i}]"), Some(p), checks))
        .collect();
    let mut ok = !invalid.get();
    for (key, present) in required {
        if !present {
            checks.error(
                &format!("gateway.{key}"),
                format!("`schema: custom` needs `gateway.{key}`"),
            );
            ok = false;
        }
    }
    let cost = match (cost, input_cost, output_cost) {
        (Some(c), None, None) => Some(CostColumns::Single(c)),
        (None, Some(input), Some(output)) => Some(CostColumns::Split { input, output }),
        _ => {
            checks.error(
                "gateway.columns",
                "the cost columns are ambiguous; accepted: either `cost`, or both `input_cost` and `output_cost`",
            );
            None
        }
    };
    if !ok {
        return None;
    }
    Some((
        table?,
        Columns {
            time: time?,
            time_format: c.time_format?,
            model: model?,
            provider,
            input_tokens: input_tokens?,
            output_tokens: output_tokens?,
            cost: cost?,
            error,
            payload,
        },
    ))
}

impl Gateway {
    /// A connection to the gateway's database for our jobs.
    ///
    /// It never changes the journal mode, waits at most `busy_timeout` for the gateway's locks,
    /// and is set not to checkpoint the WAL when it closes: a checkpoint on close would take
    /// locks the job did not plan for.
    pub fn connect(&self, read_only: bool) -> anyhow::Result<Connection> {
        if let Some(server) = &self.postgres {
            anyhow::bail!(
                "this job kind does not run on PostgreSQL yet (the gateway is the {}); not yet on PostgreSQL",
                server.describe
            );
        }
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        flags |= if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn = crate::sqlite::open(&self.database, flags).with_context(|| {
            format!(
                "opening the gateway database {} (check gateway.database and that caretaker may read it)",
                self.database.display()
            )
        })?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .context("setting NO_CKPT_ON_CLOSE on the gateway connection")?;
        conn.busy_timeout(self.busy_timeout)
            .context("setting the busy timeout on the gateway connection")?;
        // The bundled SQLite enforces foreign keys by default; the gateways' own connections
        // do not (BobaMixer declares ON DELETE CASCADE but never enables it), and a cascade
        // they never run must not start with ours.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .context("turning foreign key enforcement off, as the gateway has it")?;
        Ok(conn)
    }

    /// Every column the configuration names, each with the jobs-file key that names it.
    /// A preset's columns are all named by `gateway.schema`.
    pub fn named_columns(&self) -> Vec<(String, &str)> {
        let c = &self.columns;
        let mut named: Vec<(&str, &str)> = vec![
            ("time", &c.time),
            ("model", &c.model),
            ("input_tokens", &c.input_tokens),
            ("output_tokens", &c.output_tokens),
        ];
        named.extend(c.provider.as_deref().map(|p| ("provider", p)));
        match &c.cost {
            CostColumns::Single(cost) => named.push(("cost", cost)),
            CostColumns::Split { input, output } => {
                named.push(("input_cost", input));
                named.push(("output_cost", output));
            }
        }
        named.extend(c.error.as_deref().map(|e| ("error", e)));
        let mut out: Vec<(String, &str)> = named
            .into_iter()
            .map(|(k, v)| (format!("gateway.columns.{k}"), v))
            .collect();
        out.extend(
            c.payload
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("gateway.columns.payload[{i}]"), p.as_str())),
        );
        if self.preset != Preset::Custom {
            for (key, _) in &mut out {
                *key = "gateway.schema".to_string();
            }
        }
        out
    }

    /// Checks that the gateway's table and every column the configuration names exist, before
    /// a job reads or changes a row. `check` cannot see the database, so every job that reads
    /// the request table calls this at the start of each run (dry runs too): a name that is
    /// wrong would otherwise make a filter constant (see `crate::sqlite`) or fail halfway.
    pub fn check_columns(&self, conn: &Connection) -> anyhow::Result<()> {
        let Some(existing) = self.check_table(conn)? else {
            return Ok(());
        };
        for (key, column) in self.named_columns() {
            if !existing.iter().any(|e| e.eq_ignore_ascii_case(column)) {
                anyhow::bail!(
                    "{key}: table `{}` in {} has no column `{column}`; its columns are: {}; nothing was read or changed; {}",
                    self.table,
                    self.database.display(),
                    existing.join(", "),
                    self.fix("column")
                );
            }
        }
        Ok(())
    }

    /// What to do about a name the database does not have.
    fn fix(&self, what: &str) -> String {
        match self.preset {
            Preset::Custom => "fix it in the jobs file".to_string(),
            preset => format!(
                "`schema: {}` expects this {what}: point gateway.database at that gateway's database, or describe this one with `schema: custom`",
                format!("{preset:?}").to_lowercase()
            ),
        }
    }

    /// Checks that the gateway's table exists, naming the tables that do when it does not.
    /// Returns its columns, or `None` when a gateway transaction kept the schema locked for
    /// all of `busy_timeout`: the job's own statements then wait and retry as they always do,
    /// and with double-quoted literals off (`crate::sqlite`) a wrong name still fails each of
    /// them ("no such column") before it reads or changes a row.
    pub fn check_table(&self, conn: &Connection) -> anyhow::Result<Option<Vec<String>>> {
        let db = self.database.display();
        let table = &self.table;
        let existing: Vec<String> = match conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .and_then(|mut s| s.query_map([table], |r| r.get(0))?.collect())
        {
            Err(e) if crate::sqlite::is_busy(&e) => {
                tracing::info!(database = %db, "the gateway kept its database locked; the check of its table and columns is left to the statements that follow");
                return Ok(None);
            }
            read => {
                read.with_context(|| format!("reading the columns of table `{table}` in {db}"))?
            }
        };
        if existing.is_empty() {
            let key = match self.preset {
                Preset::Custom => "gateway.table",
                _ => "gateway.schema",
            };
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .with_context(|| format!("listing the tables of {db}"))?;
            anyhow::bail!(
                "{key}: the gateway database {db} has no table `{table}`; its tables are: {}; nothing was read or changed; {}",
                if tables.is_empty() {
                    "none (is it empty, or not the gateway's database?)".to_string()
                } else {
                    tables.join(", ")
                },
                self.fix("table")
            );
        }
        Ok(Some(existing))
    }

    /// `t` as the time column stores it, for `WHERE time >= ?` bounds. ISO-8601 bounds are
    /// naive `YYYY-MM-DDTHH:MM:SS`, which sorts correctly against all three of Apantli's
    /// spellings (`Z`, `+00:00`, naive) and lets an index on the column serve the range.
    pub fn time_value(&self, t: chrono::DateTime<chrono::Utc>) -> rusqlite::types::Value {
        self.columns.time_format.bound(t)
    }

    /// The SQL expression of a row's total cost.
    pub fn cost_expr(&self) -> String {
        match &self.columns.cost {
            CostColumns::Single(c) => format!("\"{c}\""),
            CostColumns::Split { input, output } => {
                format!("(COALESCE(\"{input}\", 0) + COALESCE(\"{output}\", 0))")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_gateway_connection_reads_a_misspelt_double_quoted_column_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("requests.db");
        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch(crate::demo::sample::APANTLI_SCHEMA)
            .unwrap();
        let (table, columns) = Preset::Apantli.table_and_columns().unwrap();
        let gateway = Gateway {
            database,
            preset: Preset::Apantli,
            table,
            columns,
            busy_timeout: Duration::from_millis(100),
            postgres: None,
        };
        let conn = gateway.connect(true).unwrap();
        gateway.check_columns(&conn).unwrap();
        let err = conn
            .query_row(
                "SELECT count(*) FROM requests WHERE \"eror\" IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("no such column: \"eror\""),
            "{err}"
        );
    }
}
