//! The gateway's configuration (`gateway:`): which table and columns hold what, where its database is, and how long we wait for its locks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::checks::Checks;
use crate::checks::values;

use super::postgres::server::{self, RawServer, Server};

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
    pub postgres: Option<Server>,
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
            Preset::Litellm => Some(litellm_columns()),
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

/// Whether `name` is a table name caretaker accepts on PostgreSQL: `table` or `schema.table`,
/// each part a plain name (letters, digits, `_`; mixed case is kept and quoted).
pub fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_identifier(p))
}

/// LiteLLM's request table.
pub const LITELLM_TABLE: &str = "LiteLLM_SpendLogs";

/// The LiteLLM preset's table and columns.
pub fn litellm_columns() -> (String, Columns) {
    let s = |v: &str| v.to_string();
    (
        s(LITELLM_TABLE),
        Columns {
            time: s("startTime"),
            time_format: TimeFormat::Timestamp,
            model: s("model"),
            provider: Some(s("custom_llm_provider")),
            input_tokens: s("prompt_tokens"),
            output_tokens: s("completion_tokens"),
            cost: CostColumns::Single(s("spend")),
            // Failed is `status` not 'success' (LITELLM.failed_sql), not "error is non-NULL".
            error: Some(s("status")),
            payload: vec![s("messages"), s("response"), s("proxy_server_request")],
        },
    )
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
            let server = server::validate(
                RawServer {
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
        Some(t) if on_postgres && is_table_name(&t) => Some(t),
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
    /// Where the gateway's database is, for messages.
    pub fn location(&self) -> String {
        match &self.postgres {
            Some(server) => server.describe.clone(),
            None => self.database.display().to_string(),
        }
    }

    /// Until every kind runs on PostgreSQL, one that does not yet says so instead of opening a
    /// SQLite file that is not there.
    pub(super) fn refuse_postgres(&self) -> anyhow::Result<()> {
        if let Some(server) = &self.postgres {
            anyhow::bail!(
                "this job kind does not run on PostgreSQL yet (the gateway is the {}); not yet on PostgreSQL",
                server.describe
            );
        }
        Ok(())
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

    /// What to do about a name the database does not have.
    pub(crate) fn fix(&self, what: &str) -> String {
        match self.preset {
            Preset::Custom => "fix it in the jobs file".to_string(),
            preset => format!(
                "`schema: {}` expects this {what}: point gateway.database at that gateway's database, or describe this one with `schema: custom`",
                format!("{preset:?}").to_lowercase()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ExecExt as _;

    #[test]
    fn our_gateway_connection_reads_a_misspelt_double_quoted_column_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = crate::gateway::sqlite::tests::apantli(&dir);
        let mut db = gateway.open(crate::gateway::Access::ReadOnly).unwrap();
        db.check_columns().unwrap();
        let err = db
            .exec()
            .query_one(
                "SELECT count(*) FROM requests WHERE \"eror\" IS NULL",
                &[],
                |r| r.i64(0),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("no such column: \"eror\""),
            "{err}"
        );
    }

    /// The kinds that work on the request table reach it through the interface only
    /// (`Gateway::open`, `GatewayDb`, `Dialect`, `Value`): a SQLite connection, pacer or value
    /// named in one of them would tie its plan to one engine again. Their tests may use SQLite
    /// directly.
    #[test]
    fn the_request_table_kinds_name_no_engine() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/jobs");
        let files = [
            "archive/mod.rs",
            "archive/run.rs",
            "archive/select.rs",
            "archive/encode.rs",
            "pricing/mod.rs",
            "budget/mod.rs",
            "health.rs",
        ];
        let forbidden = [
            ".connect(",
            "Pacer",
            "use rusqlite",
            "rusqlite::types",
            "rusqlite::Connection",
            "rusqlite::Transaction",
            "ToSql",
        ];
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(src.join(file)).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for f in forbidden.iter().filter(|f| line.contains(*f)) {
                    found.push(format!(
                        "src/jobs/{file}:{}: `{f}` in {}",
                        i + 1,
                        line.trim()
                    ));
                }
            }
        }
        assert!(
            found.is_empty(),
            "use the gateway interface:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn table_names_may_be_schema_qualified_and_are_quoted_per_part() {
        assert!(is_table_name("llm_log"));
        assert!(is_table_name("gw.LiteLLM_SpendLogs"));
        assert!(!is_table_name("a.b.c"));
        assert!(!is_table_name("a;drop"));
        assert!(!is_table_name("gw."));
        assert_eq!(
            crate::gateway::Dialect::Postgres.table("gw.LiteLLM_SpendLogs"),
            "\"gw\".\"LiteLLM_SpendLogs\""
        );
    }
}
