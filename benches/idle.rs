//! The idle daemon: time from start to ready, resident memory, and wake-ups per minute.
//!
//! Run with `cargo bench --bench idle` (release build). It starts the real binary on a small
//! sample gateway whose jobs are far in the future, waits for systemd's READY=1 on a socket of
//! its own, then watches the process for `CARETAKER_IDLE_SECONDS` (default 60).

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches")
                || line.starts_with("nonvoluntary_ctxt_switches")
            {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let seconds: u64 = std::env::var("CARETAKER_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    caretaker::demo::sample::create_apantli(
        &dir.path().join("requests.db"),
        &caretaker::demo::sample::SampleOptions {
            rows: 1000,
            days: 30,
            now: chrono::Utc::now(),
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        "gateway: {database: requests.db, schema: apantli}\nstate_dir: state\njobs:\n  nightly:\n    schedule: \"0 3 1 1 *\"\n    integrity: {}\n  on-demand:\n    on_signal: USR1\n    integrity: {}\n",
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut child = common::bins::caretaker()
        .args(["run", "--config"])
        .arg(&jobs)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let ready = started.elapsed();
    let pid = child.id();
    // Let start-up settle before counting.
    std::thread::sleep(Duration::from_secs(2));
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(seconds));
    let after = context_switches(pid);
    let rss = rss_kib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let per_minute = (after - before) as f64 * 60.0 / seconds as f64;
    println!(
        "idle daemon: start to READY {:.1} ms; RSS {:.1} MiB; {per_minute:.1} wake-ups/min over {seconds} s (context switches, all threads)",
        ready.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0
    );
}
