//! The Python log writer of `scripts/log_writer.py` as a child process: numbered lines as fast
//! as it can, reopening its log on SIGHUP.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::files::names;
use super::{bins, wait};

/// How long the writer may take to start or to write after a rotation.
const LONG: Duration = Duration::from_secs(30);

pub struct LogWriter {
    pub child: Child,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl LogWriter {
    /// Starts the writer on `log` with its pid in `pid_file` and the script's `options` (e.g.
    /// `--dies-on-hup`); returns once it has written its pid file.
    pub fn spawn(log: &Path, pid_file: &Path, options: &[&str]) -> Self {
        let child = Command::new("python3")
            .arg(bins::script("log_writer.py"))
            .arg(log)
            .arg(pid_file)
            .args(options)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        wait::until("the writer's pid file", LONG, || pid_file.exists());
        Self {
            child,
            log: log.to_owned(),
            pid_file: pid_file.to_owned(),
        }
    }

    /// Waits until the live log has grown past `bytes`, i.e. the writer writes to it (after a
    /// rotation with `create`, only once it has reopened).
    pub fn wait_writing(&self, bytes: u64) {
        wait::until(
            &format!("the writer to write to {}", self.log.display()),
            LONG,
            || fs::metadata(&self.log).is_ok_and(|m| m.len() > bytes),
        );
    }

    /// Stops the writer and returns how many lines it wrote.
    pub fn stop(self) -> u64 {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let output = self.child.wait_with_output().expect("writer exits");
        assert!(output.status.success(), "writer failed: {output:?}");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .parse()
            .expect("the writer prints its line count")
    }
}

/// How often each line number occurs across `app.log` in `dir` and its copies, compressed or
/// not.
pub fn count_lines(dir: &Path) -> HashMap<u64, u32> {
    let mut counts = HashMap::new();
    for name in names(dir).into_iter().filter(|n| n.starts_with("app.log")) {
        let path = dir.join(&name);
        let mut text = String::new();
        let file = fs::File::open(&path).expect("open log");
        if name.ends_with(".gz") {
            flate2::read::MultiGzDecoder::new(file).read_to_string(&mut text)
        } else {
            std::io::BufReader::new(file).read_to_string(&mut text)
        }
        .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        for line in text.lines() {
            let n: u64 = line
                .parse()
                .unwrap_or_else(|_| panic!("{name}: bad line {line:?}"));
            *counts.entry(n).or_default() += 1;
        }
    }
    counts
}
