//! The validated configuration the daemon runs on.

use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;

use crate::alerts::AlertSettings;
use crate::gateway::Gateway;
use crate::jobs::Job;

/// The validated jobs file.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    /// `None` when the file declares no `gateway:`: then no job needs it (checked), and
    /// [`Config::settings`] gives the jobs their defaults for opening the declared databases.
    pub gateway: Option<Gateway>,
    /// The databases looked after besides the gateway's (`databases:`).
    pub databases: crate::databases::Databases,
    pub state_dir: PathBuf,
    pub timezone: Tz,
    pub shutdown_timeout: Duration,
    pub metrics_file: Option<PathBuf>,
    pub log: LogSettings,
    pub alerts: AlertSettings,
    /// The `remotes:` block: S3-compatible buckets that jobs copy to (`copy_to`).
    pub remotes: crate::remote::Remotes,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Config {
    /// What the jobs open databases with: the gateway, or without one the defaults a declared
    /// database is opened with (an empty `database`, which no job that runs reads).
    pub fn settings(&self) -> &Gateway {
        self.gateway
            .as_ref()
            .unwrap_or_else(|| crate::databases::without_gateway())
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}
