//! Runs of the real binaries for the alerting tests: the caretaker daemon and `run-job`, the
//! gateway simulator, the aiosmtpd server of `scripts/smtp_server.py`, mail read back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rustix::process::{Pid, Signal, kill_process};

use super::bins::{self, describe};
use super::wait;

pub const INSTALL_HINT: &str = "these tests need python3 with aiosmtpd, trustme and prometheus-client: run `pip install aiosmtpd trustme prometheus-client`";

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Fails (never skips) when python3 or a package is missing, saying how to install it.
pub fn require_python(modules: &str) {
    let output = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
    assert!(
        output.status.success(),
        "python3 cannot import {modules}: {}; {INSTALL_HINT}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// `caretaker <args>` to completion.
pub fn caretaker(args: &[&str]) -> Output {
    bins::caretaker()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running caretaker")
}

/// `caretaker run-job NAME --config FILE`, returning its output whatever the exit code.
pub fn run_job(config: &Path, name: &str) -> Output {
    caretaker(&["run-job", name, "--config", config.to_str().unwrap()])
}

/// `caretaker status --json`.
pub fn status(config: &Path) -> serde_json::Value {
    let output = caretaker(&["status", "--config", config.to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "status failed: {}",
        describe(&output)
    );
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

/// The gateway simulator, run to completion; returns its JSON report. Each call gets its own
/// seed, as a restarted gateway would not repeat its ids.
pub fn gateway_sim(
    db: &Path,
    style: &str,
    rate: u32,
    duration: &str,
    failed_share: f64,
) -> serde_json::Value {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(1);
    let output = bins::gateway_sim()
        .args(["--seed", &SEED.fetch_add(1, Ordering::SeqCst).to_string()])
        .args(["--db", db.to_str().unwrap(), "--style", style])
        .args(["--rate", &rate.to_string(), "--duration", duration])
        .args(["--failed-share", &failed_share.to_string()])
        .output()
        .expect("running gateway-sim");
    assert!(
        output.status.success(),
        "gateway-sim failed: {}",
        describe(&output)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("gateway-sim prints a JSON report");
    // The simulator only produces rows here; nothing of ours runs meanwhile, so a write lost to
    // the simulator's own queue on a loaded machine says nothing about caretaker.
    assert!(
        report["committed"].as_u64().unwrap_or(0) > 0,
        "the simulated gateway wrote nothing: {report}"
    );
    report
}

/// The lines of the `alerts.file` sink, as JSON.
pub fn alert_lines(path: &Path) -> Vec<serde_json::Value> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each alerts file line is JSON"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// `(subject, resolved)` of the alert file lines with `key`, in order.
pub fn alerts_for(path: &Path, key: &str) -> Vec<(String, bool)> {
    alert_lines(path)
        .into_iter()
        .filter(|l| l["key"] == key)
        .map(|l| {
            (
                l["subject"].as_str().unwrap().to_string(),
                l["resolved"].as_bool().unwrap(),
            )
        })
        .collect()
}

pub fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_child(child);
    kill_process(pid, signal).expect("signalling a child process");
}

/// The daemon (`caretaker run`), its log in a file; killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts it and waits until it has installed its signal handlers and is running.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        let child = bins::caretaker()
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "caretaker=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("creating the daemon's log file"))
            .spawn()
            .expect("starting caretaker run");
        let mut daemon = Daemon {
            child,
            log: log.to_path_buf(),
        };
        let log = daemon.log.clone();
        wait::value(
            "the daemon to start",
            || {
                if let Some(status) = daemon.child.try_wait().expect("polling the daemon") {
                    panic!("the daemon exited with {status}: {}", read_or_empty(&log));
                }
                read_or_empty(&log)
                    .contains("caretaker is running")
                    .then_some(())
            },
            || read_or_empty(&log),
        );
        daemon
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        signal(&self.child, sig);
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(Signal::TERM);
        let log = self.log.clone();
        let status = wait::value(
            "the daemon to exit after SIGTERM",
            || self.child.try_wait().expect("polling the daemon"),
            || read_or_empty(&log),
        );
        assert!(
            status.success(),
            "the daemon exited with {status}: {}",
            self.log()
        );
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for 127.0.0.1, made fresh with trustme.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// The server's arguments for STARTTLS with this certificate.
    pub fn starttls(&self) -> [&str; 3] {
        [
            "--starttls",
            self.cert.to_str().unwrap(),
            self.key.to_str().unwrap(),
        ]
    }
}

pub fn make_certs(dir: &Path) -> Certs {
    require_python("aiosmtpd, trustme");
    let certs = dir.join("certs");
    let output = Command::new("python3")
        .arg(bins::script("smtp_server.py"))
        .arg("--make-certs")
        .arg(&certs)
        .output()
        .expect("running smtp_server.py --make-certs");
    assert!(
        output.status.success(),
        "smtp_server.py --make-certs failed: {}",
        describe(&output)
    );
    Certs {
        ca: certs.join("ca.pem"),
        cert: certs.join("server.pem"),
        key: certs.join("server.key"),
    }
}

/// The python SMTP server as a child process; killed when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
    stderr_path: PathBuf,
}

impl SmtpServer {
    /// Starts it on `port` (0: an ephemeral one) with `extra_args`, saving mail to `dir/mail`.
    pub fn start(dir: &Path, port: u16, extra_args: &[&str]) -> Self {
        require_python("aiosmtpd, trustme");
        let port_file = dir.join("smtp.port");
        let _ = fs::remove_file(&port_file);
        let stderr_path = dir.join(format!("smtp-{}.stderr", rand_suffix()));
        let child = Command::new("python3")
            .arg(bins::script("smtp_server.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--maildir")
            .arg(dir.join("mail"))
            .args(["--port", &port.to_string()])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).expect("creating the server's stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 ({e}); {INSTALL_HINT}"));
        let mut server = SmtpServer {
            child,
            port: 0,
            maildir: dir.join("mail"),
            stderr_path,
        };
        let stderr = server.stderr_path.clone();
        server.port = wait::value(
            "the SMTP server to listen",
            || {
                if let Some(status) = server.child.try_wait().expect("polling the server") {
                    panic!(
                        "smtp_server.py exited with {status}: {}",
                        read_or_empty(&stderr)
                    );
                }
                // Written atomically once the server is listening.
                fs::read_to_string(&port_file)
                    .ok()
                    .map(|t| t.trim().parse().expect("the port file holds a port number"))
            },
            || read_or_empty(&stderr),
        );
        server
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Every message received so far: (raw message, envelope JSON), in arrival order.
    pub fn received(&self) -> Vec<(String, serde_json::Value)> {
        received(&self.maildir)
    }

    /// Stops the server; once this returns, its port refuses connections.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// The messages in a maildir written by smtp_server.py, in arrival order.
pub fn received(maildir: &Path) -> Vec<(String, serde_json::Value)> {
    let Ok(entries) = fs::read_dir(maildir) else {
        return Vec::new();
    };
    let mut emls: Vec<PathBuf> = entries
        .map(|entry| entry.expect("reading the maildir").path())
        // `.tmp-*` files are still being written; the server renames each into place.
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "eml")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    emls.sort();
    emls.iter()
        .map(|eml| {
            let raw = fs::read_to_string(eml).expect("reading a received message");
            let meta = fs::read_to_string(eml.with_extension("json"))
                .expect("reading a received envelope");
            (
                raw,
                serde_json::from_str(&meta).expect("the envelope is JSON"),
            )
        })
        .collect()
}

/// Header value by name (case-insensitive), unfolding continuation lines.
pub fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next()?;
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            unfolded.last_mut()?.push_str(line);
        } else {
            unfolded.push(line.to_owned());
        }
    }
    unfolded.iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The body with line endings normalised; lettre sends plain ASCII text unencoded.
pub fn body(raw: &str) -> String {
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.replace("\r\n", "\n"))
        .unwrap_or_default()
}
