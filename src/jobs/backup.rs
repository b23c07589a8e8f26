//! The `backup` job: a consistent hot snapshot, compressed, verified, published, pruned by tiers.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Context, Report};
use crate::config::Checks;
use crate::retention::{KeepConfig, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyLevel {
    None,
    Quick,
    Full,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    to: Option<PathBuf>,
    include: Option<Vec<PathBuf>>,
    compression: Option<Compression>,
    level: Option<u32>,
    keep: Option<KeepConfig>,
    verify: Option<VerifyLevel>,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub to: PathBuf,
    pub include: Vec<PathBuf>,
    pub compression: Compression,
    pub level: u32,
    pub keep: Policy,
    pub verify: VerifyLevel,
}

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    let to = raw.to.map(|p| checks.path(&p));
    if to.is_none() {
        checks.error(
            &format!("{path}.to"),
            "missing key `to`; accepted: the directory the archives are written to",
        );
    }
    let level = raw.level.unwrap_or(6);
    if level > 9 {
        checks.error(
            &format!("{path}.level"),
            format!("compression level {level} is out of range; accepted: 0 to 9"),
        );
    }
    let keep = match raw.keep {
        Some(k) => match k.to_policy() {
            Ok(policy) => Some(policy),
            Err(message) => {
                checks.error(&format!("{path}.keep"), message);
                None
            }
        },
        None => {
            checks.error(
                &format!("{path}.keep"),
                "missing key `keep`: a backup job without a retention policy would fill the disk; accepted: e.g. {last: 2, daily: 7, weekly: 4, monthly: 12}",
            );
            None
        }
    };
    if level > 9 {
        return None;
    }
    Some(Spec {
        to: to?,
        include: raw
            .include
            .unwrap_or_default()
            .iter()
            .map(|p| checks.path(p))
            .collect(),
        compression: raw.compression.unwrap_or(Compression::Gzip),
        level,
        keep: keep?,
        verify: raw.verify.unwrap_or(VerifyLevel::Quick),
    })
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("backup")
}
