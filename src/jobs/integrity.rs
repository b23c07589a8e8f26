//! The `integrity` job: `quick_check`, or `integrity_check` plus `foreign_key_check`.

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Depth {
    Quick,
    Full,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    check: Option<Depth>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub check: Depth,
}

pub fn validate(raw: Raw, _path: &str, _checks: &mut Checks<'_>) -> Option<Spec> {
    Some(Spec {
        check: raw.check.unwrap_or(Depth::Quick),
    })
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("integrity")
}
