//! The parallel gzip writer's output is one standard gzip member that flate2 and `gzip -d` read back.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use caretaker::pgzip::{BLOCK_SIZE, ParallelGzWriter};
use flate2::read::{GzDecoder, MultiGzDecoder};

/// Deterministic incompressible bytes.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Log-like text: repetitive, with numbers that vary, and long-range repeats across blocks.
fn compressible(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len + 100);
    let mut n = 0u64;
    while data.len() < len {
        n += 1;
        let line = format!(
            "{n}|gpt-4o-mini|2026-11-22T02:{:02}:{:02}Z|prompt={}|completion={}|status=200\n",
            n % 60,
            (n * 7) % 60,
            (n * 31) % 4000,
            (n * 17) % 900
        );
        data.extend_from_slice(line.as_bytes());
    }
    data.truncate(len);
    data
}

fn compress(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
    let mut writer = ParallelGzWriter::new(Vec::new(), level, threads).expect("valid settings");
    for piece in data.chunks(chunk.max(1)) {
        writer.write_all(piece).expect("writing into memory");
    }
    writer.finish().expect("finishing into memory")
}

fn flate2_decode(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(gz)
        .read_to_end(&mut out)
        .expect("GzDecoder reads the output");
    out
}

fn gzip_cli_decode(gz: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data.gz");
    std::fs::write(&path, gz).expect("writing the gzip file");
    let output = Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("running gzip -dc (is gzip installed?)");
    assert!(
        output.status.success(),
        "gzip -dc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn single_member(gz: &[u8]) {
    // A GzDecoder stops after the first member; the multi-member decoder reads them all.
    // Equal output means there is exactly one member (with nothing after it).
    let mut all = Vec::new();
    MultiGzDecoder::new(gz)
        .read_to_end(&mut all)
        .expect("MultiGzDecoder reads the output");
    assert_eq!(all, flate2_decode(gz), "the output is a single gzip member");
}

#[test]
fn round_trips_through_flate2_and_gzip_cli() {
    let sizes = [
        0,
        1,
        100,
        BLOCK_SIZE - 1,
        BLOCK_SIZE,
        BLOCK_SIZE + 1,
        2 * BLOCK_SIZE + 4321,
    ];
    for &size in &sizes {
        for (kind, data) in [
            ("random", random(size, size as u64)),
            ("compressible", compressible(size)),
        ] {
            for threads in [1, 3] {
                let gz = compress(&data, 6, threads, 64 * 1024 + 7);
                let what = format!("{kind} {size} bytes, {threads} threads");
                assert!(flate2_decode(&gz) == data, "GzDecoder round trip: {what}");
                assert!(gzip_cli_decode(&gz) == data, "gzip -d round trip: {what}");
                single_member(&gz);
            }
        }
    }
}

#[test]
fn many_blocks_with_odd_write_sizes_round_trip() {
    let data = compressible(9 * BLOCK_SIZE + 17);
    for chunk in [1 << 13, BLOCK_SIZE + 3, 9 * BLOCK_SIZE + 17] {
        let gz = compress(&data, 6, 2, chunk);
        assert!(
            flate2_decode(&gz) == data,
            "GzDecoder round trip, {chunk}-byte writes"
        );
        assert!(
            gzip_cli_decode(&gz) == data,
            "gzip -d round trip, {chunk}-byte writes"
        );
    }
}

#[test]
fn every_level_round_trips() {
    let data = compressible(2 * BLOCK_SIZE + 5);
    for level in 0..=9 {
        let gz = compress(&data, level, 2, BLOCK_SIZE);
        assert!(
            gzip_cli_decode(&gz) == data,
            "gzip -d round trip at level {level}"
        );
    }
}

#[test]
fn ratio_is_within_a_few_percent_of_single_threaded_flate2() {
    let data = compressible(6 * BLOCK_SIZE);
    let mut reference = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    reference.write_all(&data).expect("flate2 into memory");
    let reference = reference.finish().expect("flate2 finish");

    let parallel = compress(&data, 6, 2, BLOCK_SIZE);
    let excess = parallel.len() as f64 / reference.len() as f64 - 1.0;
    println!(
        "level 6, 6 blocks: parallel {} bytes, flate2 {} bytes ({:+.3}%)",
        parallel.len(),
        reference.len(),
        excess * 100.0
    );
    assert!(
        excess < 0.02,
        "parallel output {} bytes vs flate2 {} bytes: {:+.2}% (allowed < +2%)",
        parallel.len(),
        reference.len(),
        excess * 100.0
    );
}

#[test]
fn bad_level_and_thread_count_are_rejected_with_what_is_accepted() {
    let err = ParallelGzWriter::new(Vec::new(), 10, 2)
        .err()
        .expect("level 10 rejected");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("0 (store only) to 9"), "{err}");

    let err = ParallelGzWriter::new(Vec::new(), 6, 0)
        .err()
        .expect("0 threads rejected");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("at least 1"), "{err}");
}

/// Accepts `budget` bytes, then fails every write like a full disk.
struct FullDisk {
    written: Vec<u8>,
    budget: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.len() >= self.budget {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(self.budget - self.written.len());
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn inner_write_errors_propagate_from_write_or_finish() {
    let data = random(8 * BLOCK_SIZE, 7);
    let disk = FullDisk {
        written: Vec::new(),
        budget: 2 * BLOCK_SIZE,
    };
    let mut writer = ParallelGzWriter::new(disk, 1, 2).expect("valid settings");
    let result = writer
        .write_all(&data)
        .and_then(|()| writer.finish().map(drop));
    let err = result.expect_err("a full disk is reported");
    assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");

    // A header that cannot be written fails construction.
    let disk = FullDisk {
        written: Vec::new(),
        budget: 0,
    };
    let err = ParallelGzWriter::new(disk, 6, 2)
        .err()
        .expect("header write fails");
    assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
}

#[test]
fn an_unfinished_stream_is_not_a_valid_gzip_file() {
    let data = compressible(2 * BLOCK_SIZE + 99);
    let mut partial = Vec::new();
    {
        let mut writer = ParallelGzWriter::new(&mut partial, 6, 2).expect("valid settings");
        writer.write_all(&data).expect("writing into memory");
        writer.flush().expect("flushing into memory");
        // Dropped without finish, as when the job is interrupted.
    }
    assert!(partial.len() > 10, "flush wrote the completed blocks");
    let mut out = Vec::new();
    assert!(
        GzDecoder::new(&partial[..]).read_to_end(&mut out).is_err(),
        "an unfinished stream must not decode as complete"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("partial.gz");
    std::fs::write(&path, &partial).expect("writing the partial file");
    let status = Command::new("gzip")
        .arg("-t")
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("running gzip -t");
    assert!(!status.success(), "gzip -t rejects an unfinished stream");
}
