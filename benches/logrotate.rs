//! Wall time of rotating and compressing a large log: `caretaker run-job` against `logrotate -f`.
//!
//! Run with `benches/logrotate.sh` (installs logrotate when missing), or `cargo bench --bench
//! logrotate` when it is installed. `LOGROTATE_BENCH_MB` sets the log's size (default 1000).
//! Both tools get the same log, an equivalent configuration (rotate 7, compress, create) and
//! their own state, in the same run; the page cache holds both logs, so neither pays for
//! reading the disk where the other does not.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caretaker::sample::{SampleOptions, create_apantli};
use flate2::read::GzDecoder;

const CARETAKER: &str = env!("CARGO_BIN_EXE_caretaker");

fn main() {
    let megabytes: u64 = std::env::var("LOGROTATE_BENCH_MB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("LOGROTATE_BENCH_MB is a whole number of MB")
        })
        .unwrap_or(1000);
    let logrotate = which("logrotate").expect(
        "logrotate is not installed: run benches/logrotate.sh, which installs it with apt-get",
    );
    let root = tempfile::tempdir().expect("temporary directory");
    let ours = root.path().join("caretaker");
    let theirs = root.path().join("logrotate");
    fs::create_dir(&ours).expect("caretaker's directory");
    fs::create_dir(&theirs).expect("logrotate's directory");

    let log = ours.join("app.log");
    let started = Instant::now();
    let size = write_gateway_log(&log, megabytes * 1_000_000).expect("writing the log");
    fs::copy(&log, theirs.join("app.log")).expect("copying the log for logrotate");
    println!(
        "input: {:.1} MB gateway log written twice in {:.1} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
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

    // Same order every run would favour one tool with a warmer cache or a quieter machine;
    // logrotate goes first here because its run is the longer one.
    let theirs_time = timed(
        Command::new(&logrotate)
            .arg("-f")
            .arg("-s")
            .arg(theirs.join("logrotate.state"))
            .arg(&conf),
    );
    let ours_time = timed(
        Command::new(CARETAKER)
            .args(["run-job", "rotate", "--config"])
            .arg(&jobs)
            .env("RUST_LOG", "warn"),
    );

    let ours_gz = check_output(&ours, size);
    let theirs_gz = check_output(&theirs, size);
    let mb = size as f64 / 1e6;
    println!(
        "logrotate -f (gzip -6):        {:6.2} s  {:6.1} MB/s  output {:.1} MB",
        theirs_time.as_secs_f64(),
        mb / theirs_time.as_secs_f64(),
        theirs_gz as f64 / 1e6
    );
    println!(
        "caretaker run-job (2 threads): {:6.2} s  {:6.1} MB/s  output {:.1} MB ({:+.2}% vs gzip)",
        ours_time.as_secs_f64(),
        mb / ours_time.as_secs_f64(),
        ours_gz as f64 / 1e6,
        (ours_gz as f64 / theirs_gz as f64 - 1.0) * 100.0
    );
    println!(
        "wall time ratio caretaker / logrotate: {:.2}x (goal <= 0.50x)",
        ours_time.as_secs_f64() / theirs_time.as_secs_f64()
    );
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

fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command.output().expect("running the tool");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
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
