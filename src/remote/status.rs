//! A remote as `status` shows it: its queue and last upload from the state database, never its credentials.

use super::Remotes;
use super::queue;

/// One remote as `status` shows it: never its credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteStatus {
    pub name: String,
    pub url: String,
    pub queue_length: usize,
    /// Queued uploads that failed at least once.
    pub failing: usize,
    pub last_error: Option<String>,
    pub last_upload_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_upload: Option<String>,
    pub bytes_stored: Option<u64>,
    pub objects: Option<u64>,
}

impl RemoteStatus {
    pub fn line(&self, time: impl Fn(chrono::DateTime<chrono::Utc>) -> String) -> String {
        let mut line = format!(
            "remote {} ({}): last upload {}, {} queued{}, {} stored",
            self.name,
            self.url,
            self.last_upload_at.map_or("never".into(), &time),
            self.queue_length,
            if self.failing > 0 {
                format!(" ({} failing)", self.failing)
            } else {
                String::new()
            },
            self.bytes_stored.map_or("unknown".into(), |b| format!(
                "{} in {} objects",
                crate::units::bytes(b),
                self.objects.unwrap_or(0)
            ))
        );
        if let Some(e) = &self.last_error {
            line.push_str(&format!("\n    last error: {e}"));
        }
        line
    }
}

/// Every remote's figures for `status`, from the state database only (no remote is contacted).
pub fn status(remotes: &Remotes, state: &crate::state::State) -> anyhow::Result<Vec<RemoteStatus>> {
    let pending = queue::pending(state)?;
    remotes
        .values()
        .map(|r| {
            let mine: Vec<&queue::Waiting> =
                pending.iter().filter(|w| w.remote == r.name).collect();
            let stats = queue::stats(state, &r.name)?;
            Ok(RemoteStatus {
                name: r.name.clone(),
                url: format!("s3://{}/{}", r.bucket, r.prefix),
                queue_length: mine.len(),
                failing: mine.iter().filter(|w| w.attempts > 0).count(),
                last_error: mine.iter().rev().find_map(|w| w.last_error.clone()),
                last_upload_at: stats.last_upload_at,
                last_upload: stats.last_upload,
                bytes_stored: stats.bytes_stored,
                objects: stats.objects,
            })
        })
        .collect()
}
