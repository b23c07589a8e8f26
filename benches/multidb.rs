//! 200 per-user SQLite databases of 5 MB each: one caretaker backup job against the guide's recipe, `sqlite3 db ".backup"` per file then `tar czf`, in the same run.
//!
//! Run with `benches/multidb.sh` (or `cargo bench --bench multidb`). The databases are laid out
//! as tldw keeps them (`Databases/user_databases/<id>/Media_DB_v2.db`), every other one in WAL
//! mode, the rest with a rollback journal; nothing writes to them (the guide's recipe needs the
//! application quiesced). caretaker's run includes what the recipe does not do: `quick_check` of
//! every snapshot, SHA-256 of every database, and reading the archive back before publishing.
//!
//! Environment: `CARETAKER_BENCH_DATABASES` (default 200), `CARETAKER_BENCH_MB` (MB per
//! database, default 5), `CARETAKER_BENCH_DIR` (default: a temporary directory; set it to keep
//! the databases between runs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use common::{bench_dir, env_or, figure, run_job};

/// Creates `count` databases of about `mb` MB each under `root`; returns their paths.
fn layout(root: &Path, count: u32, mb: u64) -> Vec<PathBuf> {
    let mut dbs = Vec::new();
    let start = Instant::now();
    for user in 1..=count {
        let dir = root.join(format!("Databases/user_databases/{user}"));
        let db = dir.join("Media_DB_v2.db");
        dbs.push(db.clone());
        if db.exists() {
            continue;
        }
        fs::create_dir_all(&dir).expect("creating a user directory");
        let conn = rusqlite::Connection::open(&db).expect("creating a database");
        let mode = if user % 2 == 0 { "wal" } else { "delete" };
        // Rows of text with words, ids and a random part; about 460 bytes each on disk (a run
        // with 600 here made databases of 3.8 MB instead of 5).
        let rows = mb * 1_000_000 / 460;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = {mode};
             CREATE TABLE media (id INTEGER PRIMARY KEY, title TEXT, content TEXT, added TEXT);
             CREATE TABLE keywords (id INTEGER PRIMARY KEY, word TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO media (title, content, added)
             SELECT 'video ' || i || ' of user {user}',
                    printf('%s the speaker talks about %s and then %s; %s', hex(randomblob(40)),
                           substr('transcripts summaries notes chapters keywords', 1 + i % 30, 12),
                           substr('retrieval embeddings models prompts agents', 1 + i % 25, 14),
                           hex(randomblob(120))),
                    '2026-11-' || (1 + i % 28)
             FROM n;
             INSERT INTO keywords (word) VALUES ('a'), ('b');"
        ))
        .expect("filling a database");
    }
    println!(
        "{count} databases under {} ready in {:.0} s",
        root.display(),
        start.elapsed().as_secs_f64()
    );
    dbs
}

fn main() {
    let count: u32 = env_or("CARETAKER_BENCH_DATABASES", 200);
    let mb: u64 = env_or("CARETAKER_BENCH_MB", 5);
    let temp = tempfile::tempdir().expect("creating a temporary directory");
    let dir = bench_dir(&temp);
    let root = dir.join("tldw");
    let dbs = layout(&root, count, mb);
    let total: u64 = dbs
        .iter()
        .map(|d| fs::metadata(d).map_or(0, |m| m.len()))
        .sum();
    println!(
        "{} databases, {:.0} MB in all; {} cores",
        dbs.len(),
        total as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // caretaker: one job, every database one at a time, one archive; at the default level 7
    // (zlib-rs's level 7 matches lazily, as GNU gzip's level 6 does: the sizes compare like
    // with like) and at level 6 (the same level number as the recipe's `tar czf`).
    let gateway = dir.join("requests.db");
    if !gateway.exists() {
        caretaker::demo::sample::create_apantli(
            &gateway,
            &caretaker::demo::sample::SampleOptions {
                rows: 10,
                ..Default::default()
            },
        )
        .expect("creating the gateway database");
    }
    let ours: Vec<Measured> = [7, 6]
        .into_iter()
        .map(|level| ours(&dir, &root, &gateway, level))
        .collect();
    // The guide's recipe: a `.backup` per database, then one tarball.
    let staging = dir.join("recipe");
    let tarball = dir.join("recipe.tar.gz");
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&tarball);
    let mut script = String::from("set -e\n");
    for db in &dbs {
        let rel = db.strip_prefix(&root).expect("inside the layout");
        let copy = staging.join(rel);
        script.push_str(&format!(
            "mkdir -p '{}' && sqlite3 '{}' \".backup '{}'\"\n",
            copy.parent().expect("a directory").display(),
            db.display(),
            copy.display()
        ));
    }
    script.push_str(&format!(
        "tar czf '{}' -C '{}' .\n",
        tarball.display(),
        staging.display()
    ));
    let cpu = children_cpu();
    let start = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("running the recipe");
    let theirs = start.elapsed().as_secs_f64();
    let their_cpu = children_cpu() - cpu;
    assert!(status.success(), "the recipe failed: {status}");
    let their_bytes = fs::metadata(&tarball).expect("the tarball").len();

    println!();
    println!("load average at the end: {}", load_average());
    println!("| method | wall s | CPU s (user + sys) | archive MB |");
    println!("|---|---|---|---|");
    for m in &ours {
        println!(
            "| caretaker run-job, gzip level {} (snapshots one at a time, quick_check, SHA-256, {} gzip threads, read-back, publish) | {:.1} | {:.1} | {:.1} |",
            m.level,
            caretaker::backup::archive::compression_threads(),
            m.wall,
            m.cpu,
            m.bytes as f64 / 1e6
        );
    }
    println!(
        "| sqlite3 \".backup\" per database, then tar czf (gzip -6) | {theirs:.1} | {their_cpu:.1} | {:.1} |",
        their_bytes as f64 / 1e6
    );
    for m in &ours {
        println!(
            "level {}: wall time {:.2}x, CPU {:.2}x, size {:.3}x the recipe's; snapshots {:.1} s, check + hash {:.1} s, compression {:.1} s, read-back {:.1} s",
            m.level,
            m.wall / theirs,
            m.cpu / their_cpu,
            m.bytes as f64 / their_bytes as f64,
            m.snapshot_ms / 1000.0,
            m.check_ms / 1000.0,
            m.compress_ms / 1000.0,
            m.read_back_ms / 1000.0,
        );
    }
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&tarball);
}

/// One caretaker run: its wall and CPU seconds, archive size and the phases its report gives.
struct Measured {
    level: u32,
    wall: f64,
    cpu: f64,
    bytes: u64,
    snapshot_ms: f64,
    check_ms: f64,
    compress_ms: f64,
    read_back_ms: f64,
}

/// Backs up every media database of the layout under `root` with gzip `level`.
fn ours(dir: &Path, root: &Path, gateway: &Path, level: u32) -> Measured {
    let out_dir = dir.join("caretaker-out");
    let _ = fs::remove_dir_all(&out_dir);
    let config = dir.join("jobs.yaml");
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\ndatabases:\n  media: {}/Databases/user_databases/*/Media_DB_v2.db\njobs:\n  bench:\n    on_signal: USR1\n    backup: {{to: {}, keep: {{last: 1}}, verify: quick, level: {level}, databases: [media]}}\n",
            gateway.display(),
            dir.join("state").display(),
            root.display(),
            out_dir.display()
        ),
    )
    .expect("writing the jobs file");
    let cpu = children_cpu();
    let (out, wall) = run_job("bench", &config);
    let cpu = children_cpu() - cpu;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "caretaker failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = caretaker::backup::list(&out_dir, "bench")
        .expect("listing caretaker's output")
        .pop()
        .expect("caretaker's archive")
        .1;
    let bytes = fs::metadata(&archive).expect("the archive").len();
    println!("caretaker, level {level}: {}", stdout.trim());
    let _ = fs::remove_dir_all(&out_dir);
    let phase = |name| figure(&stdout, name).unwrap_or(f64::NAN);
    Measured {
        level,
        wall,
        cpu,
        bytes,
        snapshot_ms: phase("snapshot_ms"),
        check_ms: phase("verify_ms") - phase("read_back_ms"),
        compress_ms: phase("compress_ms"),
        read_back_ms: phase("read_back_ms"),
    }
}

/// User + system CPU seconds of this process's finished children (and theirs), from
/// `/proc/self/stat` (`cutime`, `cstime`, in clock ticks).
fn children_cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let after = &stat[stat.rfind(')').expect("the command name's end") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 16 and 17 of proc(5); `after` starts at field 3.
    let ticks: f64 = fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap();
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / per_second
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
