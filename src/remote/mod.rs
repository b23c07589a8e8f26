//! Remotes: the `remotes:` block of the jobs file (S3-compatible buckets) and where a job's files go in them.
//!
//! A remote is validated with the rest of the file: its URL, endpoint and region, and its
//! credentials, which are read from the environment or from a file and kept as
//! [`Secret`]s, so that no `Debug`, log line, status or alert can show them. `check` alone
//! never contacts a remote; `check --remotes` does ([`client::probe`]). The client, the
//! upload queue and `status`'s figures live in the submodules. Nothing here knows the jobs or the whole `Config`: what
//! needs them (the upload pass of a jobs file, remote retention, `restore s3://`) is the upload
//! service's, `uploads`, above the jobs.

pub mod client;
pub mod queue;
pub mod status;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use object_store::Certificate;
use serde::Deserialize;

use crate::alerts::email::Secret;
use crate::checks::values;
use crate::checks::{Checks, Purpose};

/// How a remote's name stands in a key path: `remotes.<name>.url`.
pub const REMOTE_PATH: &str = "remotes.<name>";

/// The default size of one part of a multipart upload: with [`client::IN_FLIGHT`] parts in
/// flight an upload keeps pace with `aws s3 cp` and stays under 64 MiB of RSS
/// (docs/benchmarks.md), and 10,000 parts still carry 60 GB (a larger file gets larger parts).
pub const DEFAULT_PART_SIZE: u64 = 6 << 20;
/// S3's smallest part (but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The default time one request may take (one part, one listing, one read-back).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id_env: Option<String>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_env: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    part_size: Option<values::Size>,
    timeout: Option<values::Duration>,
}

/// A validated remote.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub ca_file: Option<PathBuf>,
    pub part_size: u64,
    pub timeout: Duration,
}

/// The remotes of a jobs file, by name.
pub type Remotes = BTreeMap<String, Remote>;

impl Remote {
    /// The object key of a job's file: `<prefix><job>/<file name>`.
    pub fn key(&self, job: &str, file_name: &str) -> String {
        format!("{}{job}/{file_name}", self.prefix)
    }

    /// The prefix every object of `job` starts with.
    pub fn job_prefix(&self, job: &str) -> String {
        format!("{}{job}/", self.prefix)
    }

    /// `s3://bucket/key`, for messages.
    pub fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Says where an error happened: the remote, its bucket and the key, never a secret.
    pub fn at(&self, key: &str) -> String {
        format!("remote `{}` (bucket {}, key {key})", self.name, self.bucket)
    }
}

/// Splits `s3://bucket/prefix/` into the bucket and a prefix that is empty or ends in `/`.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let accepted = "accepted: s3://BUCKET/ or s3://BUCKET/PREFIX/";
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!("`{url}` is not an s3:// URL; {accepted}"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(format!(
            "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.'); {accepted}"
        ));
    }
    let segments = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.is_empty()
        && segments
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!(
            "the prefix `{prefix}` has an empty, `.` or `..` segment; {accepted}"
        ));
    }
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

/// Validates the `remotes:` block. Credentials are read now: for `check`, a variable missing
/// from the operator's shell is a warning (the daemon's environment is where it must be set),
/// for running jobs an error.
pub fn validate(raw: BTreeMap<String, RawRemote>, checks: &mut Checks<'_>) -> Remotes {
    let mut remotes = Remotes::new();
    for (name, raw) in raw {
        let path = format!("remotes.{name}");
        if let Some(remote) = validate_one(&name, raw, &path, checks) {
            remotes.insert(name, remote);
        }
    }
    remotes
}

fn validate_one(name: &str, raw: RawRemote, path: &str, checks: &mut Checks<'_>) -> Option<Remote> {
    let mut ok = true;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        checks.error(
            path,
            format!("`{name}` is not a valid remote name; accepted: letters, digits, '-' and '_'"),
        );
        ok = false;
    }
    let url = match raw.url.as_deref().map(parse_url) {
        Some(Ok(parsed)) => Some(parsed),
        Some(Err(message)) => {
            checks.error(&format!("{path}.url"), message);
            None
        }
        None => {
            checks.error(
                &format!("{path}.url"),
                "missing key `url`; accepted: s3://BUCKET/PREFIX/",
            );
            None
        }
    };
    if let Some(endpoint) = &raw.endpoint
        && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        checks.error(
            &format!("{path}.endpoint"),
            format!("`{endpoint}` is not an http(s) URL; accepted: https://HOST[:PORT] (http:// only for a server on this host or network you trust)"),
        );
        ok = false;
    }
    let access_key_id = credential(
        checks,
        path,
        "access_key_id",
        raw.access_key_id_env.as_deref(),
        raw.access_key_id_file.as_deref(),
    );
    let secret_access_key = credential(
        checks,
        path,
        "secret_access_key",
        raw.secret_access_key_env.as_deref(),
        raw.secret_access_key_file.as_deref(),
    );
    let ca_file = raw.ca_file.as_deref().map(|p| checks.path(p));
    if let Some(ca) = &ca_file
        && let Err(message) = read_ca(ca)
    {
        checks.error(&format!("{path}.ca_file"), message);
        ok = false;
    }
    let part_size = raw.part_size.map_or(DEFAULT_PART_SIZE, |s| s.0);
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        checks.error(
            &format!("{path}.part_size"),
            format!(
                "{} is outside what S3 accepts for a part; accepted: 5MiB to 5GiB",
                crate::units::bytes(part_size)
            ),
        );
        ok = false;
    }
    let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    ok &= checks.at_most(
        &format!("{path}.timeout"),
        timeout,
        Duration::from_secs(3600),
        "1h",
    );
    let (bucket, prefix) = url?;
    if !ok {
        return None;
    }
    Some(Remote {
        name: name.to_string(),
        bucket,
        prefix,
        endpoint: raw.endpoint.map(|e| e.trim_end_matches('/').to_string()),
        region: raw.region.unwrap_or_else(|| "us-east-1".into()),
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
        ca_file,
        part_size,
        timeout,
    })
}

/// Reads one credential from `<what>_env` or `<what>_file` (exactly one of them).
fn credential(
    checks: &mut Checks<'_>,
    path: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Option<Secret> {
    let env_key = format!("{path}.{what}_env");
    let file_key = format!("{path}.{what}_file");
    match (env, file) {
        (Some(_), Some(_)) => {
            checks.error(
                &file_key,
                format!("give either {what}_env or {what}_file, not both"),
            );
            None
        }
        (None, None) => {
            checks.error(
                path,
                format!("missing key `{what}_env` or `{what}_file`; accepted: the name of an environment variable, or a file (mode 0600) holding only the value"),
            );
            None
        }
        (Some(var), None) => match std::env::var_os(var).map(OsString::into_string) {
            Some(Ok(value)) if !value.is_empty() => Some(Secret::new(value)),
            Some(Ok(_)) => {
                checks.error(&env_key, format!("environment variable {var} is empty"));
                None
            }
            Some(Err(_)) => {
                checks.error(&env_key, format!("environment variable {var} is not UTF-8"));
                None
            }
            None if checks.purpose == Purpose::Check => {
                checks.warn(format!(
                    "{env_key}: environment variable {var} is not set in this shell; `caretaker run` and `run-job` need it in their environment (the service's Environment= or EnvironmentFile=), or use {what}_file"
                ));
                Some(Secret::new("unset"))
            }
            None => {
                checks.error(
                    &env_key,
                    format!("environment variable {var} is not set; set it in the daemon's environment, or use {what}_file"),
                );
                None
            }
        },
        (None, Some(file)) => {
            let file = checks.path(file);
            match read_secret_file(&file) {
                Ok((secret, warning)) => {
                    if let Some(w) = warning {
                        checks.warn(format!("{file_key}: {w}"));
                    }
                    Some(secret)
                }
                Err(message) => {
                    checks.error(&file_key, message);
                    None
                }
            }
        }
    }
}

/// A credential file: a regular file of at most 4 KiB holding only the value.
fn read_secret_file(path: &Path) -> Result<(Secret, Option<String>), String> {
    use crate::fsx::{ReadError, read_regular};
    use std::os::unix::fs::PermissionsExt;
    let accepted = "accepted: a file (mode 0600) holding only the value";
    let bytes = read_regular(path, 4096).map_err(|e| match e {
        ReadError::NotRegular => format!("{} is not a regular file; {accepted}", path.display()),
        ReadError::TooLarge { .. } => {
            format!("{} is larger than 4 KiB; {accepted}", path.display())
        }
        ReadError::Io(e) => format!("cannot read {}: {e}; {accepted}", path.display()),
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{} is not UTF-8 text; {accepted}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{} is empty; {accepted}", path.display()));
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by group or others (mode {mode:03o}); run chmod 600 on it",
            path.display()
        )
    });
    Ok((Secret::new(value), warning))
}

/// Reads a PEM bundle of CA certificates, for `ca_file`.
pub fn read_ca(path: &Path) -> Result<Vec<Certificate>, String> {
    let accepted = "accepted: a PEM file of CA certificates";
    let pem = crate::fsx::read_regular(path, crate::checks::MAX_FILE_SIZE)
        .map_err(|e| format!("cannot read {}: {e}; {accepted}", path.display()))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not PEM: {e}; {accepted}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate; {accepted}",
            path.display()
        ));
    }
    Ok(certs)
}

/// Checks that every remote a job names (`copy_to`, `verify.from`) is one of `remotes`, each
/// at its own key.
/// `named` holds, for each job, its block's key path (`jobs.<job>.<kind>`) and the remotes it
/// names as [`crate::jobs::Contract::remotes_named`] gives them; `names` are those under
/// `remotes:`, valid or not (an invalid one has its own errors).
pub fn check_names<'a>(
    named: impl IntoIterator<Item = (String, Vec<(String, &'a str)>)>,
    names: &[String],
    checks: &mut Checks<'_>,
) {
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    for (block, remotes) in named {
        for (key, name) in remotes {
            if !known.contains(&name) {
                let accepted = if known.is_empty() {
                    "no remote is defined; define it under the top-level `remotes:`".to_string()
                } else {
                    format!("accepted: {}", known.join(", "))
                };
                checks.error(
                    &format!("{block}.{key}"),
                    format!("names remote `{name}`, which is not under `remotes`; {accepted}"),
                );
            }
        }
    }
}

/// The `copy_to` entries of a kind block as [`crate::jobs::Contract::remotes_named`] gives them.
pub fn named_in<'a>(key: &str, names: &'a [String]) -> Vec<(String, &'a str)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{key}[{i}]"), n.as_str()))
        .collect()
}

/// The remote of a jobs file that `url` (`s3://bucket/key`) lies in, with the key.
pub fn by_url<'a>(remotes: &'a Remotes, url: &str) -> Result<(&'a Remote, String), String> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!("`{url}` is not an s3:// URL"));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if key.is_empty() || key.ends_with('/') {
        return Err(format!(
            "`{url}` names no object; accepted: s3://BUCKET/PREFIX/JOB/ARCHIVE"
        ));
    }
    remotes
        .values()
        .filter(|r| r.bucket == bucket && key.starts_with(&r.prefix))
        .max_by_key(|r| r.prefix.len())
        .map(|r| (r, key.to_string()))
        .ok_or_else(|| {
            let known: Vec<String> = remotes
                .values()
                .map(|r| format!("{} (s3://{}/{})", r.name, r.bucket, r.prefix))
                .collect();
            format!(
                "no remote of the jobs file holds `{url}`; its remotes: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_url("s3://caretaker-backups/apantli/").unwrap(),
            ("caretaker-backups".into(), "apantli/".into())
        );
        assert_eq!(
            parse_url("s3://bkt/a/b").unwrap(),
            ("bkt".into(), "a/b/".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        for bad in [
            "http://bkt/",
            "s3://B/",
            "s3://bkt/../x/",
            "s3://bkt//x/",
            "s3://ab/",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains("accepted: s3://"), "{bad}: {e}");
        }
    }
}
