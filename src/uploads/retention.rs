//! Remote retention: a backup job's keep tiers applied to the remote's own listing of that job's archives.
//!
//! The decision is the backup job's own ([`crate::jobs::backup::prune`], restic's `forget`
//! semantics, the newest never deleted), over the archives the remote lists under
//! `<prefix><job>/`: an object whose name does not parse as one of the job's archives (a
//! probe, a file someone else put there) is never counted nor deleted.

use chrono_tz::Tz;

use crate::backup::ArchiveName;
use crate::jobs::backup::prune;
use crate::jobs::backup::retention::{Decision, Policy};
use crate::remote::client::{Client, Object};

/// The verdict on a remote listing: each of `job`'s archives in it, newest first.
pub fn decide(
    objects: &[Object],
    prefix: &str,
    job: &str,
    policy: &Policy,
    tz: Tz,
) -> Vec<Decision<ArchiveName>> {
    let archives = objects
        .iter()
        .filter_map(|o| o.key.strip_prefix(prefix))
        .filter(|name| !name.contains('/'))
        .filter_map(|name| ArchiveName::parse(job, name))
        .map(|a| (a, false))
        .collect();
    prune(archives, policy, tz, true)
}

/// Lists `job`'s archives on the client's remote and deletes those the policy does not keep;
/// returns the `s3://` URLs deleted.
pub fn apply(client: &Client, job: &str, policy: &Policy, tz: Tz) -> anyhow::Result<Vec<String>> {
    let remote = client.remote();
    let prefix = remote.job_prefix(job);
    let objects = client.list(&prefix)?;
    let mut deleted = Vec::new();
    for d in decide(&objects, &prefix, job, policy, tz) {
        if d.keep {
            continue;
        }
        let key = format!("{prefix}{}", d.item.file_name());
        client.delete(&key)?;
        tracing::info!(remote = %remote.name, %key, "deleted by remote retention");
        deleted.push(remote.url_of(&key));
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Format;
    use crate::jobs::backup::retention::KeepConfig;
    use chrono::{TimeZone, Utc};

    #[test]
    fn only_the_job_s_archives_count_and_the_newest_stays() {
        let at = |d: u32| Utc.with_ymd_and_hms(2026, 3, d, 2, 0, 0).unwrap();
        let object = |key: String| Object {
            key,
            size: 1,
            modified: at(1),
        };
        let mut objects: Vec<Object> = (1..=5)
            .map(|d| {
                object(format!(
                    "p/b/{}",
                    ArchiveName::new("b", at(d), Format::TarGz).file_name()
                ))
            })
            .collect();
        objects.push(object("p/b/notes.txt".into()));
        objects.push(object("p/b/sub/b-20260310T020000Z.tar.gz".into()));
        objects.push(object("p/b/other-20260310T020000Z.tar.gz".into()));
        let policy: Policy = serde_json::from_value::<KeepConfig>(serde_json::json!({"last": 2}))
            .unwrap()
            .to_policy()
            .unwrap();
        let decisions = decide(&objects, "p/b/", "b", &policy, chrono_tz::UTC);
        let kept: Vec<String> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.item.file_name())
            .collect();
        assert_eq!(decisions.len(), 5);
        assert_eq!(
            kept,
            ["b-20260305T020000Z.tar.gz", "b-20260304T020000Z.tar.gz"]
        );
    }
}
