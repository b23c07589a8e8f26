//! Uploading a large archive to an S3-compatible server: caretaker's client against `aws s3 cp`, wall time and peak RSS.
//!
//! Run with `benches/remote.sh` (installs moto and awscli from PyPI when missing), or `cargo
//! bench --bench remote` when both are installed. `REMOTE_BENCH_MB` sets the file's size
//! (default 1000), `REMOTE_BENCH_ROUNDS` the rounds (default 1). Both tools upload the same
//! file to the same moto server on 127.0.0.1 in the same run, each measured by
//! `/usr/bin/time` (wall time, maximum RSS) as its own process. caretaker's upload is the one
//! the upload queue makes: multipart at the default part size, then the whole object read back
//! and its SHA-256 compared with the bytes sent; `aws s3 cp` does not read back.

mod common;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caretaker::alerts::email::Secret;
use caretaker::remote::client::Client;
use caretaker::remote::{DEFAULT_PART_SIZE, DEFAULT_TIMEOUT, Remote};

const BUCKET: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--upload-child") {
        upload_child(&args[2], &args[3], &args[4]);
        return;
    }
    let megabytes: u64 = common::env_or("REMOTE_BENCH_MB", 1000);
    let rounds: u32 = common::env_or("REMOTE_BENCH_ROUNDS", 1).max(1);
    for tool in ["moto_server", "aws", "/usr/bin/time"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is not installed: run benches/remote.sh"
        );
    }
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = common::bench_dir(&temp);
    let file = dir.join("archive.bin");
    let started = Instant::now();
    write_random(&file, megabytes * 1_000_000);
    println!(
        "input: {megabytes} MB of random bytes written in {:.1} s; {rounds} round(s); part size {} MiB, {} parts in flight",
        started.elapsed().as_secs_f64(),
        DEFAULT_PART_SIZE >> 20,
        caretaker::remote::client::IN_FLIGHT
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut moto = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    aws(&endpoint, &["s3", "mb", &format!("s3://{BUCKET}")]);

    let me = std::env::current_exe().unwrap();
    for round in 1..=rounds {
        let ours = timed(
            Command::new(&me)
                .arg("--upload-child")
                .arg(&endpoint)
                .arg(&file)
                .arg("ours.bin"),
        );
        aws(&endpoint, &["s3", "rm", &format!("s3://{BUCKET}/ours.bin")]);
        let mut cp = Command::new("aws");
        cp.args(["s3", "cp", "--only-show-errors"])
            .arg(&file)
            .arg(format!("s3://{BUCKET}/theirs.bin"))
            .args(["--endpoint-url", &endpoint]);
        let theirs = timed(with_credentials(&mut cp));
        aws(
            &endpoint,
            &["s3", "rm", &format!("s3://{BUCKET}/theirs.bin")],
        );
        println!(
            "round {round}: caretaker {:.1} s, peak RSS {:.1} MiB (upload and read-back); aws s3 cp {:.1} s, peak RSS {:.1} MiB; caretaker/aws {:.2}x",
            ours.0,
            ours.1 as f64 / 1024.0,
            theirs.0,
            theirs.1 as f64 / 1024.0,
            ours.0 / theirs.0
        );
    }
    let _ = moto.kill();
    let _ = moto.wait();
}

/// Runs `cmd` under `/usr/bin/time`: (wall seconds, maximum RSS in KiB).
fn timed(cmd: &mut Command) -> (f64, u64) {
    let mut time = Command::new("/usr/bin/time");
    time.args(["-f", "TIMED %e %M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            time.env(k, v);
        }
    }
    let out = time.output().expect("running /usr/bin/time");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{:?} failed: {stderr}",
        cmd.get_program()
    );
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("TIMED "))
        .expect("the figures of /usr/bin/time");
    let mut words = line.split_whitespace();
    (
        words.next().unwrap().parse().unwrap(),
        words.next().unwrap().parse().unwrap(),
    )
}

fn with_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
}

fn aws(endpoint: &str, args: &[&str]) {
    let mut cmd = Command::new("aws");
    cmd.args(args)
        .args(["--endpoint-url", endpoint])
        .stdout(Stdio::null());
    let status = with_credentials(&mut cmd).status().expect("running aws");
    assert!(status.success(), "aws {args:?} failed");
}

/// The measured process: one upload as the queue makes it.
fn upload_child(endpoint: &str, file: &str, key: &str) {
    let remote = Remote {
        name: "bench".into(),
        bucket: BUCKET.into(),
        prefix: String::new(),
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        access_key_id: Secret::new("bench"),
        secret_access_key: Secret::new("bench-secret"),
        ca_file: None,
        part_size: DEFAULT_PART_SIZE,
        timeout: DEFAULT_TIMEOUT,
    };
    let up = Client::new(&remote)
        .and_then(|c| c.upload(Path::new(file), key))
        .unwrap_or_else(|e| panic!("upload: {e:#}"));
    println!(
        "  caretaker: sent {} bytes in {} parts in {:.1} s, read back and checked in {:.1} s",
        up.bytes,
        up.parts,
        up.sending.as_secs_f64(),
        up.reading_back.as_secs_f64()
    );
}

/// Writes `size` bytes that do not compress (xorshift), in 1 MiB blocks.
fn write_random(path: &Path, size: u64) {
    let mut out = BufWriter::new(File::create(path).expect("creating the input"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).expect("writing the input");
        left -= n as u64;
    }
    out.flush().unwrap();
    drop(out);
    let _ = fs::metadata(path);
}
