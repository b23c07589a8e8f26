//! The upload service: a jobs file's upload passes (`run-job`'s and the daemon's loop), remote retention after them, and `restore s3://`'s download.
//!
//! It sits above the jobs, the configuration and the runner, because it needs all three: the
//! backup jobs' keep policies, the whole `Config`, the alert sinks. What the jobs themselves
//! need of a remote (its block, the client, queueing a copy, which files wait) is `remote`'s,
//! below the jobs, so that no circle runs through a job's `Context`.

pub mod retention;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::remote::client::Client;
use crate::remote::queue::{self, Pass};
use crate::state::State;

/// The keep policies of the jobs whose remote copies are pruned: (job, policy).
pub type Policies<'a> = BTreeMap<&'a str, &'a crate::jobs::backup::retention::Policy>;

/// [`queue::process`] for a whole jobs file, queueing the alerts it raises; what `run-job` and the
/// daemon's upload loop call.
pub fn process_config(
    config: &crate::config::Config,
    state: &State,
    now: DateTime<Utc>,
) -> anyhow::Result<Pass> {
    if config.remotes.is_empty() {
        return Ok(Pass::default());
    }
    let policies: Policies<'_> = config
        .jobs
        .iter()
        .filter_map(|j| j.kind.remote_keep().map(|p| (j.name.as_str(), p)))
        .collect();
    let prune = |client: &Client, job: &str| {
        let policy = policies.get(job)?;
        Some(retention::apply(client, job, policy, config.timezone))
    };
    let pass = queue::process(state, &config.state_dir, &config.remotes, &prune, now)?;
    crate::alerts::submit(
        state,
        &config.alerts,
        &crate::runner::sink_names(config),
        Utc::now(),
        &pass.events,
    )?;
    Ok(pass)
}

/// The daemon's upload loop: a pass whenever a row is due, a job finished (`wake`) or the
/// configuration changed, on a blocking thread since uploads read files and wait on the network.
pub async fn upload_loop(
    mut config: tokio::sync::watch::Receiver<std::sync::Arc<crate::config::Config>>,
    state: std::sync::Arc<State>,
    wake: std::sync::Arc<tokio::sync::Notify>,
) {
    /// The longest sleep while remotes are configured: a row queued by a `run-job` in another
    /// process is seen this late. Without remotes the loop sleeps until woken.
    const MAX_SLEEP: Duration = Duration::from_secs(300);
    loop {
        let current = config.borrow_and_update().clone();
        let idle = current.remotes.is_empty();
        let pass_state = state.clone();
        let pass =
            tokio::task::spawn_blocking(move || process_config(&current, &pass_state, Utc::now()))
                .await;
        match pass {
            Ok(Err(e)) => tracing::error!("upload queue: {e:#}"),
            // The runtime is shutting down: no pass can run any more.
            Err(e) if e.is_cancelled() => return,
            Err(e) => tracing::error!("upload queue: the pass panicked: {e}"),
            Ok(Ok(_)) => {}
        }
        let sleep = match queue::next_due(&state) {
            _ if idle => None,
            Ok(Some(t)) => Some(
                (t - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::from_millis(10))
                    .min(MAX_SLEEP),
            ),
            _ => Some(MAX_SLEEP),
        };
        let timer = async {
            match sleep {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = timer => {}
            _ = wake.notified() => {}
            _ = config.changed() => {}
        }
    }
}

/// Downloads the archive at `url` (`s3://bucket/key`, in one of the jobs file's remotes) into
/// a temporary file in `state_dir`, removed when the returned file is dropped.
pub fn fetch(config: &crate::config::Config, url: &str) -> anyhow::Result<crate::fsx::PendingFile> {
    let (remote, key) = crate::remote::by_url(&config.remotes, url).map_err(anyhow::Error::msg)?;
    let file_name = key.rsplit('/').next().unwrap_or(&key);
    crate::fsx::private_dir(&config.state_dir)?;
    let dest = config.state_dir.join(file_name);
    crate::fsx::sweep_dead_temps(&dest)?;
    let mut download = crate::fsx::PendingFile::create(&dest)?;
    let temp = download.temp_path().to_path_buf();
    Client::new(remote)?.download(&key, download.file(), &temp)?;
    Ok(download)
}
