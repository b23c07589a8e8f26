//! The `maintenance` job: WAL checkpoint, ANALYZE and optimize, VACUUM when it pays.

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;
use crate::config::values::Share;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    Passive,
    Truncate,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vacuum {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    checkpoint: Option<Checkpoint>,
    analyze: Option<bool>,
    vacuum: Option<Vacuum>,
    vacuum_threshold: Option<Share>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub checkpoint: Checkpoint,
    pub analyze: bool,
    pub vacuum: Vacuum,
    /// Share of free pages from which `vacuum: auto` runs VACUUM.
    pub vacuum_threshold: f64,
}

pub fn validate(raw: Raw, _path: &str, _checks: &mut Checks<'_>) -> Option<Spec> {
    Some(Spec {
        checkpoint: raw.checkpoint.unwrap_or(Checkpoint::Passive),
        analyze: raw.analyze.unwrap_or(true),
        vacuum: raw.vacuum.unwrap_or(Vacuum::Auto),
        vacuum_threshold: raw.vacuum_threshold.map_or(0.2, |s| s.0),
    })
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("maintenance")
}
