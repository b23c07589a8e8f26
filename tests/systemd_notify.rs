//! The daemon's conversation with systemd over `NOTIFY_SOCKET`: READY, RELOADING/READY, STOPPING, WATCHDOG.
//!
//! The test plays the service manager: it binds the Unix datagram socket systemd would pass in
//! `NOTIFY_SOCKET`, runs the real binary, signals it as `systemctl reload` and `systemctl stop`
//! would, and reads what the daemon reports. Every wait is a socket read with a deadline.

mod common;

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use caretaker::demo::sample::{self, SampleOptions};
use rustix::process::{Pid, Signal, kill_process};

/// Generous: the debug binary starts on a busy 2-core machine; a healthy run answers in milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// A fresh gateway, jobs file and state directory, plus the socket the daemon reports to.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: UnixDatagram,
    socket_path: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let opts = SampleOptions {
            rows: 50,
            days: 2,
            ..SampleOptions::default()
        };
        sample::create_apantli(&dir.path().join("requests.db"), &opts)
            .expect("creating the sample gateway database");
        // A job bound only to a signal: nothing runs on its own, so the only traffic on the
        // socket is the daemon's own lifecycle.
        let config = dir.path().join("jobs.yaml");
        std::fs::write(
            &config,
            "gateway:\n  database: requests.db\n  schema: apantli\nstate_dir: state\nshutdown_timeout: 5s\njobs:\n  check:\n    on_signal: USR1\n    integrity: {check: quick}\n",
        )
        .expect("writing the jobs file");
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
        Setup {
            dir,
            config,
            socket,
            socket_path,
        }
    }

    /// Starts `caretaker run` the way systemd would, with `extra` environment variables.
    fn start(&self, extra: &[(&str, &str)]) -> Daemon {
        let mut cmd = common::bins::caretaker();
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.socket_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("CARETAKER_CONFIG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd, &self.socket)
    }

    /// Starts the daemon through `sh -c 'exec ...'` so that `WATCHDOG_PID` can name the
    /// daemon's own pid (exec keeps it), exactly as systemd sets it for the main process.
    fn start_with_watchdog_pid(&self, watchdog_usec: &str) -> Daemon {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"")
            .arg(common::bins::caretaker_bin())
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.socket_path)
            .env("WATCHDOG_USEC", watchdog_usec)
            .env_remove("WATCHDOG_PID")
            .env_remove("CARETAKER_CONFIG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Daemon::spawn(cmd, &self.socket)
    }
}

/// The running daemon and everything it said on the socket so far.
struct Daemon {
    child: Option<Child>,
    socket: UnixDatagram,
    /// Every message received, with its arrival time, for failure messages and timing checks.
    heard: Vec<(Instant, String)>,
    /// How far `expect` has read in `heard`.
    cursor: usize,
}

impl Daemon {
    fn spawn(mut cmd: Command, socket: &UnixDatagram) -> Daemon {
        let child = cmd.spawn().expect("starting caretaker run");
        Daemon {
            child: Some(child),
            socket: socket.try_clone().expect("cloning the notify socket"),
            heard: Vec::new(),
            cursor: 0,
        }
    }

    fn pid(&self) -> Pid {
        let id = self.child.as_ref().expect("the daemon is running").id();
        Pid::from_raw(id as i32).expect("a child's pid is positive")
    }

    fn signal(&self, signal: Signal) {
        kill_process(self.pid(), signal).expect("signalling the daemon");
    }

    /// Reads one datagram, waiting at most until `deadline`; `None` when the deadline passes.
    fn receive(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.socket
            .set_read_timeout(Some(left))
            .expect("setting the socket read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.heard.push((Instant::now(), text.clone()));
                Some(text)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// Waits for a message holding the line `wanted`, skipping others (watchdog pings may come
    /// in between). Returns the index of the message in `heard`.
    fn expect(&mut self, wanted: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while self.cursor < self.heard.len() {
                let i = self.cursor;
                self.cursor += 1;
                if self.heard[i].1.lines().any(|l| l == wanted) {
                    return i;
                }
            }
            // Short reads, so that a daemon that died is reported at once, not after PATIENCE.
            let slice = deadline.min(Instant::now() + Duration::from_millis(250));
            if self.receive(slice).is_some() {
                continue;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("polling the daemon"));
            if exited.is_some() || Instant::now() >= deadline {
                let stderr = self.stop_and_collect_stderr();
                let heard: Vec<&str> = self.heard.iter().map(|(_, m)| m.as_str()).collect();
                let why = match exited {
                    Some(status) => format!("the daemon exited ({status})"),
                    None => format!("nothing within {PATIENCE:?}"),
                };
                panic!("waiting for `{wanted}`: {why}; heard {heard:?}\ndaemon stderr:\n{stderr}");
            }
        }
    }

    /// Waits for the daemon to exit on its own and returns its status and stderr.
    fn wait(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("the daemon is running");
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                let _ = io::Read::read_to_string(&mut s, &mut text);
            }
            let _ = tx.send((child.wait(), text));
        });
        match rx.recv_timeout(PATIENCE) {
            Ok((status, text)) => (status.expect("waiting for the daemon"), text),
            Err(_) => panic!("the daemon did not exit within {PATIENCE:?} of SIGTERM"),
        }
    }

    /// SIGTERM: the daemon says STOPPING=1 and exits cleanly.
    fn stop_on_sigterm(&mut self) {
        self.signal(Signal::TERM);
        self.expect("STOPPING=1");
        let (status, stderr) = self.wait();
        assert!(
            status.success(),
            "exit status {status} after SIGTERM; stderr:\n{stderr}"
        );
    }

    fn stop_and_collect_stderr(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = child.kill();
        match child.wait_with_output() {
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => format!("(could not read stderr: {e})"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed assertion must not leave a daemon running behind the test.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn reports_ready_reloading_and_stopping_over_the_notify_socket() {
    let setup = Setup::new();
    let mut daemon = setup.start(&[]);

    let ready = daemon.expect("READY=1");
    // Systemd's ExecReload=/bin/kill -HUP $MAINPID.
    daemon.signal(Signal::HUP);
    let reloading = daemon.expect("RELOADING=1");
    let ready_again = daemon.expect("READY=1");
    assert!(ready < reloading && reloading < ready_again);

    // A reload that finds a broken file still ends in READY=1: the old configuration keeps running.
    std::fs::write(&setup.config, "gateway: [not, a, mapping]\n").expect("breaking the jobs file");
    daemon.signal(Signal::HUP);
    daemon.expect("RELOADING=1");
    daemon.expect("READY=1");

    daemon.stop_on_sigterm();
    let watchdog = daemon
        .heard
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    assert_eq!(
        watchdog, 0,
        "watchdog pings without WATCHDOG_USEC: {:?}",
        daemon.heard
    );
}

#[test]
fn pings_the_watchdog_well_within_watchdog_usec() {
    let setup = Setup::new();
    // One second: pings at half of it give a wide margin on a loaded machine.
    let usec = 1_000_000u64;
    let mut daemon = setup.start_with_watchdog_pid(&usec.to_string());
    daemon.expect("READY=1");
    let mut pings = Vec::new();
    for _ in 0..4 {
        let at = daemon.expect("WATCHDOG=1");
        pings.push(daemon.heard[at].0);
    }
    let limit = Duration::from_micros(usec);
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < limit,
            "{gap:?} between two watchdog pings; systemd kills the service after WATCHDOG_USEC = {limit:?}"
        );
    }
    daemon.stop_on_sigterm();
}

#[test]
fn pings_the_watchdog_when_watchdog_pid_is_unset() {
    let setup = Setup::new();
    let mut daemon = setup.start(&[("WATCHDOG_USEC", "1000000")]);
    daemon.expect("READY=1");
    daemon.expect("WATCHDOG=1");
    daemon.expect("WATCHDOG=1");
    daemon.stop_on_sigterm();
}

#[test]
fn does_not_ping_a_watchdog_meant_for_another_process() {
    let setup = Setup::new();
    // systemd sets WATCHDOG_PID to the main pid; a process that inherited the variables (pid 1
    // is never us) must not ping. The pinger would start right after READY and ping at once,
    // every 100 ms; the reload and stop round trips give it time to show up.
    let mut daemon = setup.start(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
    daemon.expect("READY=1");
    daemon.signal(Signal::HUP);
    daemon.expect("RELOADING=1");
    daemon.expect("READY=1");
    daemon.stop_on_sigterm();
    let watchdog = daemon
        .heard
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    assert_eq!(watchdog, 0, "pinged for another pid: {:?}", daemon.heard);
}
