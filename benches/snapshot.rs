//! Why the rollback-journal snapshot is read into memory and kept off the gateway's disk: the figures behind docs/jobs/backup.md ("Why memory").
//!
//! `cargo bench --bench snapshot`. Three measurements on a sample Apantli database:
//! 1. copying the file three ways, as the snapshot could under its lock: read into a buffer
//!    whose pages are already faulted in, `copy_file_range` to a new file beside it, and a copy
//!    into a file in `/dev/shm`;
//! 2. what writing a file of the database's size beside it costs a gateway writing
//!    Apantli-style meanwhile (nothing written, all at once, in fsynced 32 MB pieces);
//! 3. `snapshot::take` itself while the gateway writes: the lock it holds and the stall.
//!
//! Environment: `CARETAKER_BENCH_ROWS` (default 500,000 rows, about 1.1 GB),
//! `CARETAKER_BENCH_DIR` (a directory on the disk to measure; default a temporary directory),
//! `CARETAKER_BENCH_RATE` (gateway writes/s, default 100).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use caretaker::gateway::{Gateway, Preset};

mod common;

use common::{Sim, apantli_sample, bench_dir, env_or};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn read_into_memory(db: &Path, buf: &mut [u8]) -> Duration {
    let mut file = File::open(db).expect("opening the sample");
    let start = Instant::now();
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).expect("reading the sample") {
            0 => break,
            n => filled += n,
        }
    }
    start.elapsed()
}

fn copy_to(db: &Path, dest: &Path) -> Duration {
    let _ = fs::remove_file(dest);
    let mut from = File::open(db).expect("opening the sample");
    let mut to = File::create(dest).expect("creating the copy");
    let start = Instant::now();
    std::io::copy(&mut from, &mut to).expect("copying the sample");
    let took = start.elapsed();
    drop(to);
    fs::remove_file(dest).expect("removing the copy");
    took
}

/// Writes `data` to a new file `dest` (at once, or flushed every 32 MB) while the gateway
/// writes, and returns the simulator's longest write and its failed writes.
fn write_beside(db: &Path, dir: &Path, rate: f64, data: &[u8], how: &str) -> String {
    let dest = dir.join("beside.bin");
    let sim = Sim::start(db, dir, rate, &format!("beside-{how}"));
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let mut out = File::create(&dest).expect("creating the file beside the database");
    match how {
        "at once" => out.write_all(data).expect("writing"),
        "in fsynced 32 MB pieces" => {
            for (i, piece) in data.chunks(32 << 20).enumerate() {
                out.write_all_at(piece, (i as u64) << 25).expect("writing");
                out.sync_data().expect("flushing");
            }
        }
        _ => {}
    }
    out.sync_all().expect("flushing");
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let report = sim.stop();
    fs::remove_file(&dest).expect("removing the file beside the database");
    format!(
        "| {how} | {} | {:.0} ms | {:.0} ms | {} of {} |",
        ms(took),
        report.latency_ms.max,
        report.latency_ms.p99,
        report.failed,
        report.attempted
    )
}

fn main() {
    let rows: u64 = env_or("CARETAKER_BENCH_ROWS", 500_000);
    let rate: f64 = env_or("CARETAKER_BENCH_RATE", 100.0);
    let temp = tempfile::tempdir().expect("creating a temporary directory");
    let dir = bench_dir(&temp);
    let db = apantli_sample(&dir, rows);
    let size = fs::metadata(&db).expect("sample database").len() as usize;
    println!(
        "database: {rows} rows, {:.0} MB; gateway-sim apantli at {rate} writes/s",
        size as f64 / 1e6
    );

    println!("\n1. copying the file (the page cache warm), three rounds");
    let mut buf = vec![0u8; size];
    for page in buf.chunks_mut(4096) {
        page[0] = 1;
    }
    let shm = Path::new("/dev/shm");
    for round in 1..=3 {
        let memory = read_into_memory(&db, &mut buf);
        let disk = copy_to(&db, &dir.join("copy.db"));
        let in_shm = shm
            .is_dir()
            .then(|| ms(copy_to(&db, &shm.join("caretaker-bench-copy.db"))));
        println!(
            "round {round}: read into memory {}, copy_file_range beside it {}, into /dev/shm {}",
            ms(memory),
            ms(disk),
            in_shm.unwrap_or_else(|| "-".into())
        );
    }

    println!("\n2. a file of the database's size written beside it while the gateway writes\n");
    println!("| written | took | longest gateway write | p99 | failed |\n|---|---|---|---|---|");
    for how in ["nothing", "at once", "in fsynced 32 MB pieces"] {
        println!("{}", write_beside(&db, &dir, rate, &buf, how));
    }
    drop(buf);

    println!("\n3. snapshot::take while the gateway writes, three times\n");
    let (table, columns) = Preset::Apantli
        .table_and_columns()
        .expect("the Apantli preset");
    let gateway = Gateway {
        database: db.clone(),
        preset: Preset::Apantli,
        table,
        columns,
        busy_timeout: Duration::from_secs(5),
        postgres: None,
    };
    let sim = Sim::start(&db, &dir, rate, "snapshot");
    for round in 1..=3 {
        let dest = dir.join(format!("snapshot-{round}.db"));
        let _ = fs::remove_file(&dest);
        let snap = caretaker::backup::snapshot::take(&gateway, &dest).expect("taking a snapshot");
        println!(
            "round {round}: lock {}, in memory: {}",
            ms(snap.held),
            snap.in_memory()
        );
        drop(snap);
        let _ = fs::remove_file(&dest);
    }
    let report = sim.stop();
    println!(
        "gateway meanwhile: longest write {:.0} ms, p99 {:.0} ms, {} of {} failed",
        report.latency_ms.max, report.latency_ms.p99, report.failed, report.attempted
    );
}
