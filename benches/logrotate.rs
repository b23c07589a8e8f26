//! Wall time of rotating and compressing a large log: `caretaker run-job` against `logrotate -f`.
//!
//! Run with `benches/logrotate.sh` (installs logrotate when missing), or `cargo bench --bench
//! logrotate` when it is installed. `LOGROTATE_BENCH_MB` sets the log's size (default 1000),
//! `LOGROTATE_BENCH_ROUNDS` the number of rounds (default 3).
//! Both tools get the same log, an equivalent configuration (rotate 7, compress, create) and
//! their own state, in the same run; each round copies the log afresh for both, so the page
//! cache holds both and neither pays for reading the disk where the other does not. caretaker
//! also fsyncs its compressed copy before deleting the uncompressed one; logrotate does not.

mod common;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker::demo::sample::{SampleOptions, create_apantli};
use flate2::read::GzDecoder;

const CARETAKER: &str = common::bins::caretaker_bin();

fn main() {
    let megabytes: u64 = env_number("LOGROTATE_BENCH_MB", 1000);
    let rounds = env_number("LOGROTATE_BENCH_ROUNDS", 3).max(1);
    let logrotate = which("logrotate").expect(
        "logrotate is not installed: run benches/logrotate.sh, which installs it with apt-get",
    );
    let root = tempfile::tempdir().expect("temporary directory");
    let ours = root.path().join("caretaker");
    let theirs = root.path().join("logrotate");
    fs::create_dir(&ours).expect("caretaker's directory");
    fs::create_dir(&theirs).expect("logrotate's directory");

    let pristine = root.path().join("pristine.log");
    let started = Instant::now();
    let size = write_gateway_log(&pristine, megabytes * 1_000_000).expect("writing the log");
    println!(
        "input: {:.1} MB gateway log written in {:.1} s; {rounds} round(s), load average {}",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        load_average()
    );

    let jobs = caretaker_config(&ours);
    let conf = theirs.join("logrotate.conf");
    fs::write(
        &conf,
        format!(
            "{} {{\n    rotate 7\n    compress\n    create\n    missingok\n}}\n",
            theirs.join("app.log").display()
        ),
    )
    .expect("writing logrotate.conf");
    let mut run_theirs = Command::new(&logrotate);
    run_theirs
        .arg("-f")
        .arg("-s")
        .arg(theirs.join("logrotate.state"))
        .arg(&conf);
    let mut run_ours = Command::new(CARETAKER);
    run_ours
        .args(["run-job", "rotate", "--config"])
        .arg(&jobs)
        .env("RUST_LOG", "warn");

    // The host is shared: rounds alternate which tool goes first, and the best round of each
    // is compared, so that a burst of someone else's work does not decide the ratio.
    let (mut ours_times, mut theirs_times) = (Vec::new(), Vec::new());
    let (mut ours_gz, mut theirs_gz) = (0, 0);
    for round in 0..rounds {
        for dir in [&ours, &theirs] {
            reset(dir, &pristine);
        }
        let (first, second) = if round % 2 == 0 {
            (&mut run_theirs, &mut run_ours)
        } else {
            (&mut run_ours, &mut run_theirs)
        };
        let first_time = timed(first);
        let second_time = timed(second);
        let (theirs_time, ours_time) = if round % 2 == 0 {
            (first_time, second_time)
        } else {
            (second_time, first_time)
        };
        println!(
            "round {}: logrotate {:.2} s (CPU {:.1} s), caretaker {:.2} s (CPU {:.1} s, {:.2} cores), ratio {:.2}x, load average {}",
            round + 1,
            theirs_time.wall.as_secs_f64(),
            theirs_time.cpu,
            ours_time.wall.as_secs_f64(),
            ours_time.cpu,
            ours_time.cpu / ours_time.wall.as_secs_f64(),
            ours_time.wall.as_secs_f64() / theirs_time.wall.as_secs_f64(),
            load_average()
        );
        ours_times.push(ours_time);
        theirs_times.push(theirs_time);
        if round == 0 {
            ours_gz = check_output(&ours, size);
            theirs_gz = check_output(&theirs, size);
        }
    }

    let best = |times: &[Timing]| times.iter().map(|t| t.wall).min().unwrap_or_default();
    let (ours_best, theirs_best) = (best(&ours_times), best(&theirs_times));
    let mb = size as f64 / 1e6;
    println!(
        "logrotate -f (gzip -6), best:        {:6.2} s  {:6.1} MB/s  output {:.1} MB",
        theirs_best.as_secs_f64(),
        mb / theirs_best.as_secs_f64(),
        theirs_gz as f64 / 1e6
    );
    println!(
        "caretaker run-job (2 threads), best: {:6.2} s  {:6.1} MB/s  output {:.1} MB ({:+.2}% vs gzip)",
        ours_best.as_secs_f64(),
        mb / ours_best.as_secs_f64(),
        ours_gz as f64 / 1e6,
        (ours_gz as f64 / theirs_gz as f64 - 1.0) * 100.0
    );
    let total = |times: &[Timing]| times.iter().map(|t| t.wall.as_secs_f64()).sum::<f64>();
    let cpu = |times: &[Timing]| times.iter().map(|t| t.cpu).sum::<f64>();
    println!(
        "wall time ratio caretaker / logrotate: best {:.2}x, all rounds {:.2}x (goal <= 0.50x)",
        ours_best.as_secs_f64() / theirs_best.as_secs_f64(),
        total(&ours_times) / total(&theirs_times)
    );
    println!(
        "CPU time caretaker / logrotate, all rounds: {:.2}x (with two idle cores the wall time ratio approaches half of this)",
        cpu(&ours_times) / cpu(&theirs_times)
    );
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not `{v}`"))
    })
}

/// The 1-minute load average, to read the figures against: the host may be shared.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Puts a fresh copy of the log in `dir`, removing the previous round's output.
fn reset(dir: &Path, pristine: &Path) {
    for name in ["app.log", "app.log.1", "app.log.1.gz"] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {name} in {}: {e}", dir.display()),
        }
    }
    fs::copy(pristine, dir.join("app.log")).expect("copying the log");
}

/// A jobs file rotating `dir/app.log` like the logrotate configuration, with its own
/// sample gateway database and state directory (the jobs file needs a gateway).
fn caretaker_config(dir: &Path) -> std::path::PathBuf {
    create_apantli(
        &dir.join("gateway.db"),
        &SampleOptions {
            rows: 10,
            days: 1,
            now: chrono::Utc::now(),
            seed: 1,
            ..Default::default()
        },
    )
    .expect("sample gateway database");
    let jobs = dir.join("jobs.yaml");
    fs::write(
        &jobs,
        "gateway: {database: gateway.db, schema: apantli}\nstate_dir: state\njobs:\n  rotate:\n    on_signal: USR1\n    logrotate: {files: [app.log], max_size: 1B, rotate: 7, compress: true, method: create}\n",
    )
    .expect("writing jobs.yaml");
    jobs
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A run's wall time and the CPU time (user + system) of the processes it waited for.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: f64,
}

fn timed(command: &mut Command) -> Timing {
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let output = command.output().expect("running the tool");
    let wall = started.elapsed();
    let cpu = children_cpu_seconds() - cpu_before;
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Timing { wall, cpu }
}

/// CPU seconds used by this process's waited-for children and theirs (`cutime + cstime`
/// of `/proc/self/stat`), which covers logrotate's `gzip` and caretaker's threads alike.
fn children_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // cutime and cstime are fields 16 and 17 of stat(5), i.e. 14 and 15 after the name.
    let ticks: f64 = fields[13..15]
        .iter()
        .map(|f| f.parse::<f64>().expect("a number of clock ticks"))
        .sum();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Checks that `dir` holds an empty new log and one gzip copy that `gzip -t` accepts and
/// that decompresses, as a single member, to `size` bytes; returns the copy's size.
fn check_output(dir: &Path, size: u64) -> u64 {
    let gz = dir.join("app.log.1.gz");
    assert_eq!(
        fs::metadata(dir.join("app.log")).expect("new log").len(),
        0,
        "{}: the new log is not empty",
        dir.display()
    );
    let status = Command::new("gzip")
        .arg("-t")
        .arg(&gz)
        .status()
        .expect("gzip -t");
    assert!(status.success(), "gzip -t rejects {}", gz.display());
    let mut decoder = GzDecoder::new(File::open(&gz).expect("open the copy"));
    let inflated = io::copy(&mut decoder, &mut io::sink()).expect("inflate the copy");
    assert_eq!(inflated, size, "{}: wrong decompressed size", gz.display());
    let mut rest = Vec::new();
    decoder
        .into_inner()
        .read_to_end(&mut rest)
        .expect("read past the member");
    assert!(
        rest.is_empty(),
        "{}: more than one gzip member",
        gz.display()
    );
    fs::metadata(&gz).expect("copy").len()
}

/// Writes about `bytes` of log lines shaped like a gateway's request log: timestamps,
/// models, token counts, costs and request ids, so that it compresses as real logs do.
fn write_gateway_log(path: &Path, bytes: u64) -> io::Result<u64> {
    const MODELS: [&str; 6] = [
        "gpt-4o-mini",
        "gpt-4.1",
        "claude-3-5-haiku-20241022",
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
        "mistral-large-latest",
    ];
    const PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"];
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic, fast, good enough to vary the fields.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut written = 0u64;
    let mut millis: u64 = 0;
    while written < bytes {
        let r = next();
        millis += r % 400;
        let (secs, ms) = (millis / 1000, millis % 1000);
        let model = MODELS[(r >> 8) as usize % MODELS.len()];
        let path = PATHS[(r >> 16) as usize % PATHS.len()];
        let status = if r % 50 == 0 { 429 } else { 200 };
        let prompt = (r >> 20) % 8000;
        let completion = (r >> 33) % 1500;
        let line = format!(
            "2026-11-22 {:02}:{:02}:{:02},{ms:03} INFO apantli.server: POST {path} model={model} status={status} duration_ms={} prompt_tokens={prompt} completion_tokens={completion} cost={:.6} request_id={:016x}\n",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            (r >> 44) % 9000,
            (prompt as f64 * 0.15 + completion as f64 * 0.6) / 1e6,
            next()
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    out.into_inner()?.sync_all()?;
    Ok(written)
}
