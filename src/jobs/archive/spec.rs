//! The `archive` block of the jobs file: its raw keys, their validation and the spec a run
//! follows.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::checks::values;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl.gz",
            Format::Csv => "csv.gz",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    Delete,
    StripPayloads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rows {
    All,
    Ok,
    Failed,
}

impl Rows {
    pub fn name(self) -> &'static str {
        match self {
            Rows::All => "all",
            Rows::Ok => "ok",
            Rows::Failed => "failed",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    older_than: Option<values::Duration>,
    to: Option<PathBuf>,
    format: Option<Format>,
    then: Option<Then>,
    rows: Option<Rows>,
    redact: Option<Vec<String>>,
    batch: Option<u32>,
    copy_to: Option<Vec<String>>,
    keep_local: Option<values::Duration>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub older_than: Duration,
    pub to: PathBuf,
    pub format: Format,
    pub then: Then,
    pub rows: Rows,
    pub redact: Vec<String>,
    pub batch: u32,
    /// Remotes each archive file is copied to.
    pub copy_to: Vec<String>,
    /// Local archive files older than this are deleted once every remote has its copy.
    pub keep_local: Option<Duration>,
}

impl crate::jobs::contract::Contract for Spec {
    fn writes(&self) -> Vec<(PathBuf, &'static str)> {
        vec![(self.to.clone(), "archives")]
    }

    fn remotes_named(&self) -> Vec<(String, &str)> {
        crate::remote::named_in("copy_to", &self.copy_to)
    }
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let older_than = raw.older_than.map(|d| d.0);
    if older_than.is_none() {
        checks.error(
            &format!("{path}.older_than"),
            "missing key `older_than`; accepted: a duration such as 90d",
        );
    }
    let to = checks.given_path(&format!("{path}.to"), raw.to.as_deref());
    if raw.to.is_none() {
        checks.error(
            &format!("{path}.to"),
            "missing key `to`; accepted: the directory the archive files are written to",
        );
    }
    let batch = raw.batch.unwrap_or(2000);
    if !(1..=100_000).contains(&batch) {
        checks.error(
            &format!("{path}.batch"),
            format!("batch {batch} is out of range; accepted: 1 to 100000 rows"),
        );
        return None;
    }
    let rows = raw.rows.unwrap_or(Rows::All);
    let copy_to = raw.copy_to.unwrap_or_default();
    let keep_local = raw.keep_local.map(|d| d.0);
    if keep_local.is_some() && copy_to.is_empty() {
        // Without a remote copy, keep_local would delete the only copy of archived rows.
        checks.error(
            &format!("{path}.keep_local"),
            "keep_local deletes local archive files once their remote copies exist, and this job has no `copy_to`; accepted: keep_local together with copy_to: [REMOTE]",
        );
        return None;
    }
    Some(Spec {
        older_than: older_than?,
        to: to?,
        format: raw.format.unwrap_or(Format::Jsonl),
        then: raw.then.unwrap_or(Then::Delete),
        rows,
        // API keys sit in Apantli's payloads in plain text; redacting them is the safe default.
        redact: raw.redact.unwrap_or_else(|| vec!["api_key".to_string()]),
        batch,
        copy_to,
        keep_local,
    })
}
