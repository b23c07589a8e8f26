//! Throughput and ratio of the parallel gzip writer against single-threaded flate2 and `gzip -6`.
//!
//! Run with `cargo bench --bench pgzip`. Compresses a ~200 MB buffer shaped like a gateway's
//! SQLite file (4 KiB pages of request-log rows, partly empty) and prints MB/s and sizes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caretaker::pgzip::ParallelGzWriter;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

const TOTAL_BYTES: usize = 200 * 1024 * 1024;
const PAGE_SIZE: usize = 4096;
const LEVEL: u32 = 6;

fn main() {
    let data = sqlite_like(TOTAL_BYTES);
    let mb = data.len() as f64 / 1e6;
    println!("input: {mb:.1} MB of SQLite-like pages, level {LEVEL}");
    // Wall-clock figures mean little on a busy machine; say how busy it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average: {} on {} CPUs",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }

    let (single, single_time) = timed(|| {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(LEVEL));
        encoder
            .write_all(&data)
            .expect("flate2 compresses into memory");
        encoder.finish().expect("flate2 finishes into memory")
    });
    report("flate2 GzEncoder, 1 thread", mb, single.len(), single_time);

    let mut parallel_sizes = Vec::new();
    for threads in [1, 2] {
        let (parallel, time) = timed(|| {
            let mut writer =
                ParallelGzWriter::new(Vec::new(), LEVEL, threads).expect("valid level and threads");
            writer.write_all(&data).expect("compresses into memory");
            writer.finish().expect("finishes into memory")
        });
        report(
            &format!("ParallelGzWriter, {threads} thread(s)"),
            mb,
            parallel.len(),
            time,
        );
        println!(
            "  size vs flate2: {:+.3}%, speed vs flate2: {:.2}x",
            (parallel.len() as f64 / single.len() as f64 - 1.0) * 100.0,
            single_time.wall.as_secs_f64() / time.wall.as_secs_f64()
        );
        assert_round_trip(&parallel, &data);
        parallel_sizes.push((threads, parallel.len()));
    }

    match gzip_cli(&data) {
        Ok((size, time)) => {
            report("gzip -6 CLI", mb, size, time);
            let versus = |ours: usize| (ours as f64 / size as f64 - 1.0) * 100.0;
            println!("  flate2 size vs gzip -6: {:+.3}%", versus(single.len()));
            for (threads, ours) in parallel_sizes {
                println!(
                    "  ParallelGzWriter ({threads} thread(s)) size vs gzip -6: {:+.3}%",
                    versus(ours)
                );
            }
        }
        Err(e) => println!("gzip -6 CLI: not measured ({e})"),
    }
}

fn report(name: &str, mb: f64, size: usize, time: Timing) {
    let cpu = time.cpu.map_or_else(
        || "n/a".to_string(),
        |cpu| format!("{:.1} s", cpu.as_secs_f64()),
    );
    println!(
        "{name:<32} {:>8.1} MB/s  {:>12} bytes  ratio {:.3}  (wall {:.1} s, cpu {cpu})",
        mb / time.wall.as_secs_f64(),
        size,
        mb * 1e6 / size as f64,
        time.wall.as_secs_f64(),
    );
}

/// Wall time, and the CPU time this process spent (all threads) when the OS tells us.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Timing) {
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    let value = f();
    let wall = start.elapsed();
    let cpu = cpu_start
        .zip(process_cpu_time())
        .map(|(start, end)| end.saturating_sub(start));
    (value, Timing { wall, cpu })
}

/// User plus system CPU time of this process from /proc/self/stat (Linux), in clock ticks
/// of 1/100 s, the value Linux uses for USER_HZ on every mainstream architecture.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn assert_round_trip(compressed: &[u8], original: &[u8]) {
    let mut decoded = Vec::with_capacity(original.len());
    GzDecoder::new(compressed)
        .read_to_end(&mut decoded)
        .expect("parallel output decodes");
    assert!(decoded == original, "parallel output decodes to the input");
}

/// Pipes `data` through `gzip -6` and returns the compressed size and the wall time.
fn gzip_cli(data: &[u8]) -> std::io::Result<(usize, Timing)> {
    let start = Instant::now();
    let mut child = Command::new("gzip")
        .arg("-6")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let size = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut sink = Vec::new();
            stdout.read_to_end(&mut sink).map(|_| sink.len())
        });
        stdin.write_all(data)?;
        drop(stdin);
        reader.join().expect("reader thread does not panic")
    })?;
    let status = child.wait()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("gzip exited with {status}")));
    }
    // gzip's CPU time is its own process's, not ours.
    let timing = Timing {
        wall: start.elapsed(),
        cpu: None,
    };
    Ok((size, timing))
}

/// Pages of pipe-separated request-log rows with varying numbers, each page partly empty
/// like a B-tree leaf after deletes: compressible, but not trivially.
fn sqlite_like(total: usize) -> Vec<u8> {
    let models = [
        "gpt-4o-mini",
        "claude-sonnet-4",
        "gemini-2.5-flash",
        "llama-3.1-70b",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: deterministic and fast, so every run measures the same bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data = Vec::with_capacity(total);
    let mut id = 0u64;
    while data.len() < total {
        let mut page = Vec::with_capacity(PAGE_SIZE);
        page.extend_from_slice(&[0x0d, 0, 0, 0, 0, 0x10, 0, 0]);
        let fill = PAGE_SIZE * (60 + (next() % 40) as usize) / 100;
        while page.len() < fill {
            id += 1;
            let r = next();
            let row = format!(
                "{id}|{}|2026-11-{:02}T{:02}:{:02}:{:02}Z|{}|{}|{:.6}|200|req_{:016x}\n",
                models[(r % 4) as usize],
                1 + (r >> 8) % 28,
                (r >> 16) % 24,
                (r >> 24) % 60,
                (r >> 32) % 60,
                (r >> 40) % 4000,
                (r >> 20) % 900,
                ((r >> 12) % 100_000) as f64 / 1e7,
                next()
            );
            page.extend_from_slice(row.as_bytes());
        }
        page.resize(PAGE_SIZE, 0);
        data.extend_from_slice(&page);
    }
    data.truncate(total);
    data
}
