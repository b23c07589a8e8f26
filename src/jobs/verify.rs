//! The `verify` job: periodic test restores of a backup job's archives.

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    Latest,
    All,
    Rotate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    backups_of: Option<String>,
    which: Option<Which>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub backups_of: String,
    pub which: Which,
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let Some(backups_of) = raw.backups_of else {
        checks.error(
            &format!("{path}.backups_of"),
            "missing key `backups_of`; accepted: the name of a backup job",
        );
        return None;
    };
    Some(Spec {
        backups_of,
        which: raw.which.unwrap_or(Which::Latest),
    })
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("verify")
}
