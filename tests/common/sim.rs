//! The simulated gateway as its own process, writing beside the job under test.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use caretaker::demo::sim::SimReport;

use super::bins;
use super::wait;

/// A running gateway-sim process; killed when dropped before [`Sim::stop`].
pub struct Sim {
    child: Option<Child>,
    report: PathBuf,
    committed: PathBuf,
}

impl Sim {
    /// Starts gateway-sim writing `style` rows to `db` at `rate` per second, `failed_share` of
    /// them failed requests, its files in `dir`; returns once its first write has committed.
    pub fn start(db: &Path, style: &str, rate: f64, failed_share: f64, dir: &Path) -> Sim {
        let mut cmd = bins::gateway_sim();
        cmd.arg("--db").arg(db).args(["--style", style]);
        Sim::spawn(cmd, rate, failed_share, dir)
    }

    /// Starts gateway-sim writing LiteLLM spend logs to the PostgreSQL database at `url` as the
    /// proxy does (batches from a queue over a pool, batch interval 200ms so tests see rows
    /// soon); returns once its first batch has committed.
    pub fn start_postgres(url: &str, rate: f64, failed_share: f64, dir: &Path) -> Sim {
        let mut cmd = bins::gateway_sim();
        cmd.args(["--postgres", url, "--batch-interval", "200ms"]);
        Sim::spawn(cmd, rate, failed_share, dir)
    }

    fn spawn(mut cmd: std::process::Command, rate: f64, failed_share: f64, dir: &Path) -> Sim {
        let n = rand::random::<u32>();
        let ready = dir.join(format!("sim-{n}.ready"));
        let report = dir.join(format!("sim-{n}.json"));
        let committed = dir.join(format!("sim-{n}.committed"));
        let child = cmd
            .args(["--rate", &rate.to_string()])
            .args(["--failed-share", &failed_share.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--report")
            .arg(&report)
            .arg("--committed")
            .arg(&committed)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting gateway-sim");
        wait::until(
            "gateway-sim's first committed write",
            Duration::from_secs(30),
            || ready.exists(),
        );
        Sim {
            child: Some(child),
            report,
            committed,
        }
    }

    /// Stops the simulator (SIGTERM, as a supervisor would) and returns its report and the keys
    /// it committed.
    pub fn stop(mut self) -> (SimReport, BTreeSet<String>) {
        let child = self.child.take().unwrap();
        let status = terminate(child);
        assert!(status.success(), "gateway-sim failed: {status}");
        let report: SimReport = serde_json::from_slice(&fs::read(&self.report).unwrap()).unwrap();
        let committed = fs::read_to_string(&self.committed)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        (report, committed)
    }
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    child.wait().unwrap()
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
