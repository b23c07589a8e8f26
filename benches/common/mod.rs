//! What the benchmarks share: knobs from the environment and a gateway-sim process per measurement.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caretaker::sim::SimReport;

/// A knob from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A gateway-sim process writing Apantli-style rows for the duration of one measurement.
pub struct Sim {
    child: Child,
    report: PathBuf,
}

impl Sim {
    /// Starts it at `rate` writes/s and returns once its first row has committed.
    pub fn start(db: &Path, dir: &Path, rate: f64, tag: &str) -> Sim {
        let ready = dir.join(format!("sim-{tag}.ready"));
        let report = dir.join(format!("sim-{tag}.json"));
        let _ = fs::remove_file(&ready);
        let child = Command::new(env!("CARGO_BIN_EXE_gateway-sim"))
            .arg("--db")
            .arg(db)
            .args(["--style", "apantli", "--rate", &rate.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting gateway-sim");
        let start = Instant::now();
        while !ready.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "gateway-sim did not commit a first row within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Sim { child, report }
    }

    /// Stops it (SIGTERM, as a supervisor would) and returns its report.
    pub fn stop(mut self) -> SimReport {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .expect("signalling gateway-sim");
        let status = self.child.wait().expect("waiting for gateway-sim");
        assert!(status.success(), "gateway-sim failed: {status}");
        serde_json::from_slice(&fs::read(&self.report).expect("reading the simulator's report"))
            .expect("parsing the simulator's report")
    }
}
