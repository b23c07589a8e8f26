//! A sandbox for the CLI and daemon tests: a sample gateway, a jobs file, the real daemon binary.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use chrono::Utc;

use super::wait::poll;
use super::{bins, files};

/// A temporary directory with a small Apantli database and a jobs file around it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("requests.db");
        caretaker::demo::sample::create_apantli(
            &db,
            &caretaker::demo::sample::SampleOptions {
                rows: 200,
                days: 10,
                now: Utc::now(),
                seed: 1,
                ..Default::default()
            },
        )
        .expect("sample database");
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn jobs_file(&self) -> PathBuf {
        self.path("jobs.yaml")
    }

    /// Writes a jobs file: the common header plus `jobs` (YAML, indented by two spaces).
    pub fn write_jobs(&self, jobs: &str) {
        let text = format!("{}jobs:\n{jobs}", self.header());
        files::write_replace(&self.jobs_file(), &text);
    }

    pub fn header(&self) -> String {
        "gateway:\n  database: requests.db\n  schema: apantli\n  busy_timeout: 1s\nstate_dir: state\nshutdown_timeout: 5s\nalerts:\n  file: alerts.jsonl\n"
            .to_string()
    }

    pub fn state(&self) -> caretaker::state::State {
        caretaker::state::State::open(&self.path("state")).expect("state db")
    }

    pub fn caretaker(&self, args: &[&str]) -> std::process::Output {
        bins::caretaker()
            .args(args)
            .arg("--config")
            .arg(self.jobs_file())
            .env_remove("CARETAKER_CONFIG")
            .env("RUST_LOG", "info")
            .output()
            .expect("run caretaker")
    }

    pub fn start_daemon(&self) -> Daemon {
        let log = self.path("daemon.log");
        let child = bins::caretaker()
            .arg("run")
            .arg("--config")
            .arg(self.jobs_file())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start daemon");
        let d = Daemon { child, log };
        d.wait_log("caretaker is running", Duration::from_secs(20));
        d
    }

    /// Holds the gateway lock as another job (or `run-job`) working on the gateway would.
    pub fn hold_gateway_lock(&self) -> fs::File {
        let path = self.path("state/locks/gateway.lock");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        lock.lock().unwrap();
        lock
    }

    pub fn alerts(&self) -> String {
        fs::read_to_string(self.path("alerts.jsonl")).unwrap_or_default()
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let text = poll(timeout, || {
            let t = self.log_text();
            t.contains(needle).then_some(t)
        });
        assert!(
            text.is_some(),
            "waited {timeout:?} for `{needle}` in the daemon log:\n{}",
            self.log_text()
        );
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child.try_wait().expect("try_wait"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
