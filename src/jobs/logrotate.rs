//! The `logrotate` job: logrotate's semantics over the gateway's log files.

use super::{Context, Report};
use crate::config::Checks;
use crate::rotation::{RotateConfig, RotateSpec};

pub type Raw = RotateConfig;
pub type Spec = RotateSpec;

pub fn validate(raw: Raw, path: &str, checks: &mut Checks<'_>) -> Option<Spec> {
    match raw.validate(checks.base_dir()) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            for (key, message) in errors {
                checks.error(&format!("{path}.{key}"), message);
            }
            None
        }
    }
}

pub fn run(_spec: &Spec, _ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    super::not_implemented("logrotate")
}
