//! Two daemons on one PostgreSQL gateway: the session advisory lock makes exactly one of them
//! run the jobs that touch the gateway; kill -9 of that one and the other takes over.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::bins;
use common::pg::Cluster;
use common::sandbox::Daemon;

/// A daemon's directory: its jobs file (a gateway backup and a log rotation, both every 2 s,
/// and a backup for run-job) and its own state.
fn host(root: &Path, name: &str, url: &str) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("jobs.yaml"),
        format!(
            "gateway:\n  url: {url}\n  schema: litellm\n  standby_takeover: 3s\nstate_dir: state\njobs:\n  nightly:\n    schedule: \"*/2 * * * * *\"\n    backup: {{to: backups, keep: {{last: 2}}, verify: none}}\n  rotate:\n    schedule: \"*/2 * * * * *\"\n    logrotate: {{files: [app.log], period: daily, missing_ok: true}}\n  manual:\n    on_signal: USR2\n    backup: {{to: manual, keep: {{last: 2}}, verify: none}}\n"
        ),
    )
    .unwrap();
    dir
}

fn start(dir: &Path) -> Daemon {
    let log = dir.join("daemon.log");
    let child = bins::caretaker()
        .arg("run")
        .arg("--config")
        .arg(dir.join("jobs.yaml"))
        .env_remove("CARETAKER_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon { child, log }
}

/// Successful runs of `job` recorded in the state of the daemon in `dir`.
fn runs(dir: &Path, job: &str) -> usize {
    let Ok(state) = caretaker::state::State::open(&dir.join("state")) else {
        return 0;
    };
    state
        .runs_of(job, 1000)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.result == "ok")
        .count()
}

fn role(dir: &Path) -> Option<String> {
    caretaker::gateway::postgres::standby::describe(&dir.join("state")).map(|(r, _)| r.role)
}

fn status(dir: &Path) -> String {
    let out = bins::caretaker()
        .args(["status", "--config"])
        .arg(dir.join("jobs.yaml"))
        .output()
        .unwrap();
    bins::describe(&out)
}

#[test]
fn one_daemon_runs_the_gateway_jobs_and_the_standby_takes_over_after_kill_9() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let root = tempfile::tempdir().unwrap();
    // b reaches the same database under another name (a link to the socket's directory), as
    // two hosts may name one server differently: they must still meet on one lock.
    let link = root.path().join("sock");
    std::os::unix::fs::symlink(cluster.socket_dir(), &link).unwrap();
    let other_name = cluster.url(&db).replace(
        cluster.socket_dir().to_str().unwrap(),
        link.to_str().unwrap(),
    );
    let (a, b) = (
        host(root.path(), "a", &cluster.url(&db)),
        host(root.path(), "b", &other_name),
    );
    let mut first = start(&a);
    common::wait::until("daemon a to become active", common::wait::DEADLINE, || {
        role(&a).as_deref() == Some("active")
    });
    let second = start(&b);
    common::wait::until(
        "daemon b to become the standby",
        common::wait::DEADLINE,
        || role(&b).as_deref() == Some("standby"),
    );

    // Both alive: a runs the backups, b only the rotation.
    common::wait::until(
        "backups by a and rotations by b",
        common::wait::DEADLINE,
        || runs(&a, "nightly") >= 3 && runs(&b, "rotate") >= 3,
    );
    assert_eq!(
        runs(&b, "nightly"),
        0,
        "the standby ran a gateway job:\n{}",
        second.log_text()
    );
    assert!(
        status(&a).contains("this daemon: active since"),
        "{}",
        status(&a)
    );
    assert!(
        status(&b).contains("this daemon: standby since"),
        "{}",
        status(&b)
    );
    // run-job of a gateway job runs only where the active daemon runs.
    let run_job = |dir: &Path| {
        bins::caretaker()
            .args(["run-job", "manual", "--config"])
            .arg(dir.join("jobs.yaml"))
            .output()
            .unwrap()
    };
    let refused = run_job(&b);
    let text = bins::describe(&refused);
    assert_eq!(refused.status.code(), Some(3), "{text}");
    assert!(
        text.contains("another caretaker daemon holds the gateway's advisory lock"),
        "{text}"
    );
    let ran = run_job(&a);
    assert!(ran.status.success(), "{}", bins::describe(&ran));

    // kill -9 of the active daemon: the standby takes the lock and runs the next backup.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&first.child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    first.wait_exit(Duration::from_secs(10)).expect("a died");
    let before = runs(&a, "nightly");
    common::wait::until("daemon b to take over", common::wait::DEADLINE, || {
        role(&b).as_deref() == Some("active")
    });
    common::wait::until("a backup by b", common::wait::DEADLINE, || {
        runs(&b, "nightly") >= 1
    });
    assert_eq!(runs(&a, "nightly"), before);
    assert!(
        status(&a).contains("this daemon: not running"),
        "{}",
        status(&a)
    );
    second.signal("TERM");
}
