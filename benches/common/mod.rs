//! What the benchmarks share: knobs from the environment and a gateway-sim process per measurement.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use caretaker::demo::sim::SimReport;

// The one helper that finds the built binaries, the same file the integration tests use; it is
// included by path because a bench cannot name the tests' module tree.
#[path = "../../tests/common/bins.rs"]
pub mod bins;

/// A knob from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The directory a benchmark works in: `CARETAKER_BENCH_DIR`, or `temp`.
pub fn bench_dir(temp: &tempfile::TempDir) -> PathBuf {
    let dir = std::env::var_os("CARETAKER_BENCH_DIR")
        .map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
    fs::create_dir_all(&dir).expect("creating the bench directory");
    dir
}

/// The sample Apantli database of `rows` rows in `dir`, created on first use and kept.
pub fn apantli_sample(dir: &Path, rows: u64) -> PathBuf {
    let db = dir.join(format!("requests-{rows}.db"));
    if !db.exists() {
        let start = Instant::now();
        let opts = caretaker::demo::sample::SampleOptions {
            rows,
            ..Default::default()
        };
        caretaker::demo::sample::create_apantli(&db, &opts).expect("creating the sample database");
        println!(
            "created {} in {:.0} s",
            db.display(),
            start.elapsed().as_secs_f64()
        );
    }
    db
}

/// Moves the sample `pristine` into two run directories of `dir`, `caretaker/` and `theirs/`,
/// one copy each, so that each side starts from the same file; returns the two databases.
pub fn copies_for_both_sides(pristine: &Path, dir: &Path, theirs: &str) -> (PathBuf, PathBuf) {
    let dbs = ["caretaker", theirs].map(|side| {
        let run = dir.join(side);
        fs::create_dir(&run).expect("creating a run directory");
        let db = run.join("requests.db");
        fs::copy(pristine, &db).expect("copying the sample");
        db
    });
    fs::remove_file(pristine).expect("removing the pristine copy");
    let [ours, theirs] = dbs;
    (ours, theirs)
}

/// Writes the jobs file `config` for one job `job` (its kind's YAML given as `kind`, e.g.
/// `backup: {to: /x}`) on the Apantli database `db`, with its state under `dir/state`.
pub fn jobs_file(config: &Path, db: &Path, dir: &Path, job: &str, kind: &str) {
    fs::write(
        config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\njobs:\n  {job}:\n    on_signal: USR1\n    {kind}\n",
            db.display(),
            dir.join("state").display(),
        ),
    )
    .expect("writing the jobs file");
}

/// Runs `caretaker run-job JOB --config CONFIG`; its output and wall time in seconds.
pub fn run_job(job: &str, config: &Path) -> (Output, f64) {
    let start = Instant::now();
    let out = bins::caretaker()
        .args(["run-job", job, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running caretaker");
    (out, start.elapsed().as_secs_f64())
}

/// Runs `job` while gateway-sim writes to `db` (see [`Sim::start`]); the job must succeed.
/// Returns its standard output, wall time in seconds, and what the gateway went through.
pub fn run_job_beside_gateway(
    job: &str,
    config: &Path,
    db: &Path,
    dir: &Path,
    rate: f64,
    tag: &str,
) -> (String, f64, SimReport) {
    let sim = Sim::start(db, dir, rate, tag);
    let (out, seconds) = run_job(job, config);
    let sim = sim.stop();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "caretaker failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, seconds, sim)
}

/// The value of `name=` among the figures of a run-job summary line.
pub fn figure(out: &str, name: &str) -> Option<f64> {
    out.split([' ', '(', ')'])
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// A gateway-sim process writing Apantli-style rows for the duration of one measurement.
pub struct Sim {
    child: Child,
    report: PathBuf,
}

impl Sim {
    /// Starts it at `rate` writes/s and returns once its first row has committed.
    pub fn start(db: &Path, dir: &Path, rate: f64, tag: &str) -> Sim {
        let mut cmd = bins::gateway_sim();
        cmd.arg("--db").arg(db).args(["--style", "apantli"]);
        Sim::spawn(cmd, dir, rate, tag)
    }

    /// [`Sim::start`] writing LiteLLM's spend logs to the PostgreSQL database at `url`, in
    /// batches as the proxy does.
    pub fn start_postgres(url: &str, dir: &Path, rate: f64, tag: &str) -> Sim {
        let mut cmd = bins::gateway_sim();
        cmd.args(["--postgres", url, "--batch-interval", "200ms"]);
        Sim::spawn(cmd, dir, rate, tag)
    }

    fn spawn(mut cmd: std::process::Command, dir: &Path, rate: f64, tag: &str) -> Sim {
        let ready = dir.join(format!("sim-{tag}.ready"));
        let report = dir.join(format!("sim-{tag}.json"));
        let _ = fs::remove_file(&ready);
        let child = cmd
            .args(["--rate", &rate.to_string()])
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
