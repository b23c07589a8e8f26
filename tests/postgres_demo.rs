//! `caretaker demo --postgres`: a throwaway local cluster with LiteLLM's spend logs, a proxy
//! writing to it, the daemon backing it up, and the cluster stopped when the demo ends.

mod common;

use std::fs;
use std::process::Stdio;

use common::bins;
use common::sandbox::Daemon;

#[test]
fn the_postgres_demo_backs_up_a_live_litellm_database_and_stops_its_cluster() {
    // The demo finds the server as the tests do; a missing server fails here, not silently.
    common::pg::server_bin();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("demo");
    let log = root.path().join("demo.log");
    let child = bins::caretaker()
        .args(["demo", "--postgres"])
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(root.path().join("demo.out")).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut demo = Daemon { child, log };
    demo.wait_log("caretaker is running", common::wait::DEADLINE);
    demo.signal("USR1");
    common::wait::until(
        "a verified backup of the demo database",
        common::wait::DEADLINE,
        || {
            fs::read_dir(dir.join("backups"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
                })
                .unwrap_or(false)
        },
    );
    let out = fs::read_to_string(root.path().join("demo.out")).unwrap();
    assert!(out.contains("20000 requests over 120 days"), "{out}");
    demo.signal("INT");
    let status = demo
        .wait_exit(common::wait::DEADLINE)
        .expect("the demo ends on Ctrl-C");
    assert!(status.success(), "{status}\n{}", demo.log_text());
    let cluster = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster:"))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .expect("the demo names its cluster's directory");
    assert!(
        !std::path::Path::new(&cluster)
            .join("data/postmaster.pid")
            .exists(),
        "the demo's cluster still runs"
    );
    fs::remove_dir_all(&cluster).unwrap();
}
