//! Off-site copies against a real S3-compatible server (moto on 127.0.0.1): uploads checked by SHA-256,
//! an outage, kill -9 during multipart uploads, remote retention against restic's rules, restores
//! and test restores from the remote, wrong credentials, and what `check` says.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};

use common::bins::{self, describe};
use common::s3::{BUCKET, S3Server, sha256_file};
use common::sandbox::{Daemon, Sandbox};
use common::wait;

/// A sample gateway, a jobs file with the remote `offsite` on a moto server, the CLI with the
/// remote's credentials in its environment.
struct Offsite {
    sandbox: Sandbox,
    server: S3Server,
}

const HEADER: &str = "gateway:\n  database: requests.db\n  schema: apantli\n  busy_timeout: 1s\nstate_dir: state\nshutdown_timeout: 5s\nalerts:\n  file: alerts.jsonl\n";

impl Offsite {
    fn new() -> Offsite {
        let sandbox = Sandbox::new();
        let server = S3Server::start(sandbox.dir.path());
        Offsite { sandbox, server }
    }

    fn with_auth() -> Offsite {
        let sandbox = Sandbox::new();
        let server = S3Server::start_with_auth(sandbox.dir.path());
        Offsite { sandbox, server }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.sandbox.path(rel)
    }

    /// Writes the jobs file: the header, `remotes:` with `offsite` (`remote_extra` added to
    /// it), then `jobs` (indented by two spaces).
    fn write_jobs(&self, remote_extra: &str, jobs: &str) {
        let text = format!(
            "{HEADER}remotes:\n{}jobs:\n{jobs}",
            self.server.remote_yaml(
                "offsite",
                "apantli/",
                &format!("    timeout: 3s\n{remote_extra}")
            )
        );
        common::files::write_replace(&self.sandbox.jobs_file(), &text);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bins::caretaker();
        cmd.args(args)
            .arg("--config")
            .arg(self.sandbox.jobs_file())
            .env_remove("CARETAKER_CONFIG")
            .env("RUST_LOG", "info")
            .envs(self.server.env());
        cmd
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running caretaker")
    }

    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn archives(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.path("backups"))
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| {
                        let name = p.file_name().unwrap().to_string_lossy().into_owned();
                        name.starts_with("nightly-")
                            && (name.ends_with(".tar") || name.ends_with(".tar.gz"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every object of the job `nightly` on the remote, by file name.
    fn remote_copies(&self) -> BTreeMap<String, String> {
        self.server
            .list("apantli/nightly/")
            .into_iter()
            .map(|o| {
                (
                    o.key.trim_start_matches("apantli/nightly/").to_string(),
                    o.sha256.expect("read whole"),
                )
            })
            .collect()
    }

    fn start_daemon(&self) -> Daemon {
        let log = self.path("daemon.log");
        let child = self
            .command(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start daemon");
        let d = Daemon { child, log };
        d.wait_log("caretaker is running", Duration::from_secs(20));
        d
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

const BACKUP_JOB: &str = "  nightly:\n    on_signal: USR1\n    backup: {to: backups, keep: {last: 5}, copy_to: [offsite]}\n";

#[test]
fn a_backup_lands_on_the_remote_with_the_same_sha256_and_status_shows_it() {
    let o = Offsite::new();
    o.write_jobs("", BACKUP_JOB);
    let out = o.cli(&["run-job", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    let archive = o.archives().pop().expect("an archive");
    let copies = o.remote_copies();
    assert_eq!(
        copies,
        BTreeMap::from([(file_name(&archive), sha256_file(&archive))]),
        "the remote holds the archive under <prefix><job>/<file name>, byte for byte"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "copied to s3://{BUCKET}/apantli/nightly/{}",
            file_name(&archive)
        )),
        "{stderr}"
    );
    let status = o.status();
    let remote = &status["remotes"][0];
    assert_eq!(remote["name"], "offsite");
    assert_eq!(remote["queue_length"], 0);
    assert_eq!(
        remote["bytes_stored"],
        fs::metadata(&archive).unwrap().len()
    );
    assert!(remote["last_upload_at"].is_string(), "{status}");
    let text = String::from_utf8_lossy(&o.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("remote offsite (s3://caretaker-test/apantli/): last upload"),
        "{text}"
    );
    assert!(!text.contains(&o.server.secret) && !status.to_string().contains(&o.server.secret));
}

#[test]
fn wrong_credentials_name_the_remote_keep_the_files_and_never_show_the_secret() {
    let o = Offsite::with_auth();
    let wrong = "Wr0ngSecretThatMustNeverShow1234567890abc";
    let remote = |secret: &str| {
        let dir = o.path("creds");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("id"), &o.server.key_id).unwrap();
        fs::write(dir.join("secret"), secret).unwrap();
    };
    remote(wrong);
    let text = format!(
        "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {}\n    access_key_id_file: creds/id\n    secret_access_key_file: creds/secret\n    timeout: 3s\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 1}}, copy_to: [offsite]}}\n",
        o.server.endpoint()
    );
    common::files::write_replace(&o.sandbox.jobs_file(), &text);
    let first = o.cli(&["run-job", "nightly"]);
    assert_eq!(first.status.code(), Some(1), "{}", describe(&first));
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "remote `offsite` (bucket {BUCKET}, key apantli/nightly/nightly-"
        )) && stderr.contains("SignatureDoesNotMatch")
            && stderr.contains("stays queued"),
        "{stderr}"
    );
    let kept = o.archives();
    assert_eq!(kept.len(), 1);
    // A second backup with `keep: {last: 1}` would delete the first: it still waits for its
    // upload, so it stays.
    wait::until(
        "a new second for the next archive's name",
        Duration::from_secs(3),
        || Utc::now().timestamp() > file_time(&kept[0]),
    );
    let second = o.cli(&["run-job", "nightly"]);
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    assert_eq!(
        o.archives().len(),
        2,
        "nothing waiting for its upload is deleted"
    );
    assert!(kept[0].exists());
    let status = o.status();
    assert_eq!(status["remotes"][0]["queue_length"], 2, "{status}");
    let error = status["remotes"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("remote `offsite`"), "{error}");
    let mut everything = format!(
        "{stderr}{}{status}",
        String::from_utf8_lossy(&second.stderr)
    );
    for f in ["state/state.db", "state/state.db-wal", "alerts.jsonl"] {
        everything.push_str(&String::from_utf8_lossy(
            &fs::read(o.path(f)).unwrap_or_default(),
        ));
    }
    assert!(!everything.contains(wrong), "the secret leaked");
    // (moto with signatures checked refuses a listing with a prefix: the whole bucket, then.)
    assert!(o.server.list("").is_empty());
}

/// The UTC time in an archive's name, as a Unix timestamp.
fn file_time(archive: &Path) -> i64 {
    let name = file_name(archive);
    let stamp = name
        .trim_start_matches("nightly-")
        .split('.')
        .next()
        .unwrap();
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc()
        .timestamp()
}

#[test]
fn uploads_that_keep_failing_raise_one_alert_and_the_first_success_resolves_it() {
    use caretaker::alerts::AlertEvent;
    use caretaker::remote::queue;
    let o = Offsite::with_auth();
    let creds = o.path("creds");
    fs::create_dir_all(&creds).unwrap();
    fs::write(creds.join("id"), &o.server.key_id).unwrap();
    let config = |secret: &str| {
        fs::write(creds.join("secret"), secret).unwrap();
        let text = format!(
            "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {}\n    access_key_id_file: creds/id\n    secret_access_key_file: creds/secret\n    timeout: 3s\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 1}}, copy_to: [offsite]}}\n",
            o.server.endpoint()
        );
        caretaker::config::parse(&o.sandbox.jobs_file(), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    };
    let bad = config("wrong-secret");
    let state = o.sandbox.state();
    let file = o.path("payload.bin");
    fs::write(&file, b"some archive bytes").unwrap();
    let start = Utc::now();
    queue::enqueue(
        &state,
        "offsite",
        "nightly",
        &file,
        "apantli/nightly/payload.bin",
        start,
    )
    .unwrap();
    let raised = |events: &[AlertEvent]| {
        events
            .iter()
            .any(|e| matches!(e, AlertEvent::Raise(a) if a.key == "remote-upload:offsite"))
    };
    for pass in 1..=queue::ALERT_AFTER {
        // Each pass is due: the clock handed in runs past the backoff.
        let now = start + chrono::Duration::hours(i64::from(pass));
        let done = caretaker::uploads::process_config(&bad, &state, now).unwrap();
        assert_eq!(done.failed.len(), 1, "pass {pass}: {done:?}");
        assert_eq!(
            raised(&done.events),
            pass == queue::ALERT_AFTER,
            "pass {pass}: {:?}",
            done.events
        );
    }
    assert!(file.exists(), "a failing upload deletes nothing");
    let good = config(&o.server.secret);
    let done =
        caretaker::uploads::process_config(&good, &state, start + chrono::Duration::hours(9))
            .unwrap();
    assert_eq!(
        done.uploaded,
        [format!("s3://{BUCKET}/apantli/nightly/payload.bin")]
    );
    assert!(
        done.events.iter().any(
            |e| matches!(e, AlertEvent::Resolve { key, .. } if key == "remote-upload:offsite")
        ),
        "{:?}",
        done.events
    );
    assert!(queue::pending(&state).unwrap().is_empty());
}

#[test]
fn a_paused_server_leaves_the_copy_queued_and_it_is_uploaded_once_when_back() {
    let o = Offsite::new();
    o.write_jobs("", BACKUP_JOB);
    let daemon = o.start_daemon();
    o.server.pause();
    daemon.signal("USR1");
    let state = o.sandbox.state();
    let failed = wait::value(
        "the upload to fail against the paused server",
        || {
            caretaker::remote::queue::pending(&state)
                .ok()?
                .into_iter()
                .find(|w| w.attempts >= 1)
        },
        || daemon.log_text(),
    );
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("remote `offsite`"),
        "{failed:?}"
    );
    o.server.resume();
    wait::value(
        "the queued upload to complete after the server came back",
        || {
            caretaker::remote::queue::pending(&state)
                .ok()?
                .is_empty()
                .then_some(())
        },
        || daemon.log_text(),
    );
    let archive = o.archives().pop().unwrap();
    assert_eq!(
        o.remote_copies(),
        BTreeMap::from([(file_name(&archive), sha256_file(&archive))])
    );
    assert_eq!(
        daemon.count_log("uploaded and checked"),
        1,
        "{}",
        daemon.log_text()
    );
}

#[test]
fn kill_9_during_multipart_uploads_never_leaves_a_wrong_object_and_the_next_run_completes() {
    let o = Offsite::new();
    // 11 MB of random pages: three parts of at most 5 MiB, incompressible.
    {
        let conn = rusqlite::Connection::open(o.path("requests.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE filler (b BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 11) INSERT INTO filler SELECT randomblob(1000000) FROM n;",
        )
        .unwrap();
    }
    o.write_jobs(
        "    part_size: 5MiB\n",
        "  nightly:\n    on_signal: USR1\n    backup: {to: backups, keep: {last: 100}, compression: none, verify: none, copy_to: [offsite]}\n",
    );
    // Each object is read whole once: a key checked before holds what it held (an upload never
    // puts other bytes under a key, and this test's second client writes nothing).
    let backups = o.path("backups");
    let mut seen: Vec<String> = Vec::new();
    let mut check = |when: &str| {
        for listed in o.server.list_new("apantli/nightly/", &seen) {
            let Some(sha) = listed.sha256 else { continue };
            let local = backups.join(listed.key.trim_start_matches("apantli/nightly/"));
            assert_eq!(
                sha,
                sha256_file(&local),
                "{when}: the object {} differs from its local file",
                listed.key
            );
            seen.push(listed.key);
        }
    };
    let mut killed = 0;
    for run in 0..20u64 {
        let parts_before = o.server.parts_in_progress();
        let mut child = o
            .command(&["run-job", "nightly"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed after 1 or 2 parts of an upload went out.
        let target = parts_before + 1 + run % 2;
        let in_flight = wait::poll(wait::DEADLINE, || {
            if child.try_wait().unwrap().is_some() {
                return Some(false);
            }
            (o.server.parts_in_progress() >= target).then_some(true)
        })
        .expect("the run to upload or end");
        if in_flight {
            Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status()
                .unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        check(&format!("after run {run}"));
    }
    assert!(
        killed >= 10,
        "only {killed} of 20 runs were killed during an upload"
    );
    let last = o.cli(&["run-job", "nightly"]);
    assert!(last.status.success(), "{}", describe(&last));
    let local: BTreeMap<String, String> = o
        .archives()
        .iter()
        .map(|a| (file_name(a), sha256_file(a)))
        .collect();
    assert_eq!(
        o.remote_copies(),
        local,
        "every archive is on the remote, byte for byte"
    );
    assert_eq!(o.status()["remotes"][0]["queue_length"], 0);
}

#[test]
fn remote_retention_deletes_exactly_what_restic_s_rules_say() {
    use caretaker::backup::{ArchiveName, Format};
    use caretaker::jobs::backup::retention::KeepConfig;
    #[derive(serde::Deserialize)]
    struct Cases {
        backups: Vec<DateTime<Utc>>,
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        case: u32,
        policy: serde_json::Value,
        keep: Vec<DateTime<Utc>>,
    }
    let fixture = bins::repo_file("tests/fixtures/retention/restic-retention-cases.json");
    let cases: Cases = serde_json::from_str(&fs::read_to_string(fixture).unwrap()).unwrap();
    assert!(cases.backups.len() >= 40);
    let o = Offsite::new();
    o.write_jobs("", BACKUP_JOB);
    let (config, _) = caretaker::config::parse(&o.sandbox.jobs_file(), &{
        // Credentials from files: this process's environment is not the CLI's.
        fs::write(o.path("id"), &o.server.key_id).unwrap();
        fs::write(o.path("secret"), &o.server.secret).unwrap();
        format!(
            "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {}\n    access_key_id_file: id\n    secret_access_key_file: secret\njobs:\n{BACKUP_JOB}",
            o.server.endpoint()
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let client = caretaker::remote::client::Client::new(&config.remotes["offsite"]).unwrap();
    let name = |t: DateTime<Utc>| ArchiveName::new("nightly", t, Format::TarGz).file_name();
    for case in cases
        .cases
        .iter()
        .filter(|c| [9, 15, 17, 39].contains(&c.case))
    {
        o.server.tool(&["delete-all", BUCKET, "apantli/"]);
        let mut args = vec!["put-many".to_string(), BUCKET.to_string()];
        args.extend(
            cases
                .backups
                .iter()
                .map(|t| format!("apantli/nightly/{}", name(*t))),
        );
        // Not the job's: never counted, never deleted.
        args.push("apantli/nightly/notes.txt".into());
        args.push("apantli/other/other-20140901T102030Z.tar.gz".into());
        o.server
            .tool(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let policy = serde_json::from_value::<KeepConfig>(case.policy.clone())
            .unwrap()
            .to_policy()
            .unwrap();
        let deleted =
            caretaker::uploads::retention::apply(&client, "nightly", &policy, chrono_tz::UTC)
                .unwrap();
        // restic's list has backups in the same second, which share one archive name.
        let all: std::collections::BTreeSet<String> =
            cases.backups.iter().map(|t| name(*t)).collect();
        let mut expected: std::collections::BTreeSet<String> =
            case.keep.iter().map(|t| name(*t)).collect();
        let kept = expected.len();
        expected.insert("notes.txt".into());
        let left: std::collections::BTreeSet<String> = o.remote_copies().into_keys().collect();
        assert_eq!(left, expected, "case {}", case.case);
        assert_eq!(deleted.len(), all.len() - kept, "case {}", case.case);
        assert_eq!(o.server.list("apantli/other/").len(), 1);
    }
}

#[test]
fn restore_and_verify_from_the_remote_give_a_database_that_passes_integrity_check() {
    let o = Offsite::new();
    o.write_jobs(
        "",
        &format!("{BACKUP_JOB}  offsite-check:\n    on_signal: USR2\n    verify: {{backups_of: nightly, from: offsite}}\n"),
    );
    let out = o.cli(&["run-job", "nightly"]);
    assert!(out.status.success(), "{}", describe(&out));
    let archive = o.archives().pop().unwrap();
    // The local copy is gone: the remote is all there is.
    fs::remove_file(&archive).unwrap();
    let url = format!("s3://{BUCKET}/apantli/nightly/{}", file_name(&archive));
    let target = o.path("restored/requests.db");
    let restored = o.cli(&["restore", &url, "--to", target.to_str().unwrap()]);
    assert!(restored.status.success(), "{}", describe(&restored));
    assert!(String::from_utf8_lossy(&restored.stdout).contains(&url));
    let conn = rusqlite::Connection::open(&target).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 200);
    let leftovers: Vec<_> = fs::read_dir(o.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("caretaker-tmp")),
        "the download is removed: {leftovers:?}"
    );

    let verified = o.cli(&["run-job", "offsite-check"]);
    assert!(verified.status.success(), "{}", describe(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout)
            .contains(&format!("test-restored {url} (200 rows)"))
    );

    // A remote copy that is not the archive fails the test restore, naming it.
    let junk = o.path("junk.tar.gz");
    fs::write(&junk, b"not an archive").unwrap();
    o.server
        .put(&format!("apantli/nightly/{}", file_name(&archive)), &junk);
    let failed = o.cli(&["run-job", "offsite-check"]);
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains(&url),
        "{}",
        describe(&failed)
    );
    let bad = o.cli(&[
        "restore",
        &url,
        "--to",
        o.path("again.db").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    assert!(!o.path("again.db").exists());
}

#[test]
fn check_names_bad_remotes_at_their_keys_and_only_check_remotes_contacts_them() {
    let o = Offsite::new();
    // Unknown names in copy_to and verify.from, a bad URL, both an env and a file.
    let text = format!(
        "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {}\n    access_key_id_env: CARETAKER_TEST_S3_KEY_ID\n    secret_access_key_env: CARETAKER_TEST_S3_SECRET\n  broken:\n    url: https://bucket/x/\n    access_key_id_env: A\n    access_key_id_file: a.txt\n    secret_access_key_env: B\njobs:\n  nightly:\n    on_signal: USR1\n    backup: {{to: backups, keep: {{last: 2}}, copy_to: [offsite, elsewhere]}}\n  offsite-check:\n    on_signal: USR2\n    verify: {{backups_of: nightly, from: nowhere}}\n",
        o.server.endpoint()
    );
    common::files::write_replace(&o.sandbox.jobs_file(), &text);
    let out = o.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    for needle in [
        "jobs.nightly.backup.copy_to[1]",
        "names remote `elsewhere`, which is not under `remotes`; accepted: broken, offsite",
        "jobs.offsite-check.verify.from",
        "names remote `nowhere`",
        "remotes.broken.url",
        "accepted: s3://BUCKET/ or s3://BUCKET/PREFIX/",
        "remotes.broken.access_key_id_file",
        "give either access_key_id_env or access_key_id_file, not both",
        "jobs.yaml:23:63:",
        "jobs.yaml:26:35:",
    ] {
        assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
    }

    // `check` alone never contacts a remote: a remote on a closed port passes.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let jobs = |endpoint: &str| {
        format!(
            "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {endpoint}\n    access_key_id_env: CARETAKER_TEST_S3_KEY_ID\n    secret_access_key_env: CARETAKER_TEST_S3_SECRET\n    timeout: 3s\njobs:\n{BACKUP_JOB}"
        )
    };
    common::files::write_replace(
        &o.sandbox.jobs_file(),
        &jobs(&format!("http://127.0.0.1:{closed}")),
    );
    let out = o.cli(&["check"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = o.cli(&["check", "--remotes"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("remote offsite (s3://caretaker-test/apantli/): FAILED: listing remote `offsite` (bucket caretaker-test"),
        "{said}"
    );
    common::files::write_replace(&o.sandbox.jobs_file(), &jobs(&o.server.endpoint()));
    let out = o.cli(&["check", "--remotes"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("put, read back and deleted a probe object")
    );
    assert!(o.server.list("apantli/").is_empty(), "the probe is deleted");
}

#[test]
fn archive_files_are_copied_and_keep_local_deletes_only_what_every_remote_holds() {
    let o = Offsite::new();
    o.write_jobs(
        "",
        "  archive-old:\n    on_signal: USR1\n    archive: {older_than: 2d, to: archives, copy_to: [offsite], keep_local: 1s}\n",
    );
    let first = o.cli(&["run-job", "archive-old"]);
    assert!(first.status.success(), "{}", describe(&first));
    let files: BTreeMap<String, String> = fs::read_dir(o.path("archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (file_name(&p), sha256_file(&p)))
        .collect();
    assert!(!files.is_empty());
    let remote: BTreeMap<String, String> = o
        .server
        .list("apantli/archive-old/")
        .into_iter()
        .map(|l| (l.key.replace("apantli/archive-old/", ""), l.sha256.unwrap()))
        .collect();
    assert_eq!(
        remote, files,
        "every archive file is on the remote, byte for byte"
    );
    // The files are young: keep_local kept them.
    assert_eq!(
        fs::read_dir(o.path("archives")).unwrap().count(),
        files.len()
    );
    let oldest = files.keys().next().unwrap().clone();
    wait::until(
        "the files to be older than keep_local",
        Duration::from_secs(10),
        || {
            fs::metadata(o.path("archives").join(&oldest))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(1))
        },
    );
    let second = o.cli(&["run-job", "archive-old"]);
    assert!(second.status.success(), "{}", describe(&second));
    assert_eq!(
        fs::read_dir(o.path("archives")).unwrap().count(),
        0,
        "copied files past keep_local are deleted: {}",
        describe(&second)
    );
    assert_eq!(o.server.list("apantli/archive-old/").len(), files.len());
}

#[test]
fn rotated_logs_wait_for_their_upload_even_past_rotate_and_max_age() {
    use caretaker::remote::queue;
    let o = Offsite::new();
    fs::create_dir_all(o.path("logs")).unwrap();
    fs::write(o.path("id"), &o.server.key_id).unwrap();
    fs::write(o.path("secret"), &o.server.secret).unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let jobs = |endpoint: &str| {
        format!(
            "{HEADER}remotes:\n  offsite:\n    url: s3://{BUCKET}/apantli/\n    endpoint: {endpoint}\n    access_key_id_file: id\n    secret_access_key_file: secret\n    timeout: 3s\njobs:\n  rotate-logs:\n    on_signal: USR1\n    logrotate: {{files: [logs/*.log], max_size: 1, rotate: 1, max_age: 1s, compress: true, copy_to: [offsite]}}\n"
        )
    };
    // The remote is unreachable for two rotations: the second deletes the first copy.
    common::files::write_replace(
        &o.sandbox.jobs_file(),
        &jobs(&format!("http://127.0.0.1:{closed}")),
    );
    for round in 0..2 {
        let text = format!("round {round} line\n").repeat(100);
        fs::write(o.path("logs/app.log"), &text).unwrap();
        let out = o.cli(&["run-job", "rotate-logs"]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("remote `offsite`"));
    }
    let rotated: Vec<String> = fs::read_dir(o.path("logs"))
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .filter(|n| n.starts_with("app.log."))
        .collect();
    assert_eq!(
        rotated,
        ["app.log.1.gz"],
        "rotate: 1 deleted the first copy"
    );
    let spool: Vec<PathBuf> = fs::read_dir(o.path("logs/.caretaker-upload"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(spool.len(), 2, "both copies wait for their upload");
    let waiting: std::collections::BTreeSet<(String, String)> = spool
        .iter()
        .map(|p| (file_name(p), sha256_file(p)))
        .collect();

    // The remote is back: the queue empties, each copy lands once and the links go.
    common::files::write_replace(&o.sandbox.jobs_file(), &jobs(&o.server.endpoint()));
    let (config, _) =
        caretaker::config::load(&o.sandbox.jobs_file()).unwrap_or_else(|e| panic!("{e}"));
    let state = o.sandbox.state();
    let pass = caretaker::uploads::process_config(
        &config,
        &state,
        Utc::now() + chrono::Duration::hours(2),
    )
    .unwrap();
    assert_eq!(pass.uploaded.len(), 2, "{pass:?}");
    let listed: std::collections::BTreeSet<(String, String)> = o
        .server
        .list("apantli/rotate-logs/")
        .into_iter()
        .map(|l| (l.key.replace("apantli/rotate-logs/", ""), l.sha256.unwrap()))
        .collect();
    assert_eq!(
        listed, waiting,
        "each waiting copy landed once, byte for byte"
    );
    assert!(
        listed
            .iter()
            .all(|(name, _)| name.starts_with("app.log-") && name.ends_with(".gz"))
    );
    assert_eq!(
        fs::read_dir(o.path("logs/.caretaker-upload"))
            .unwrap()
            .count(),
        0
    );
    assert!(queue::pending(&state).unwrap().is_empty());
}
