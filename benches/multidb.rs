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

use common::{bench_dir, env_or, run_job};

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

    // caretaker: one job, every database one at a time, one archive.
    let out_dir = dir.join("caretaker-out");
    let _ = fs::remove_dir_all(&out_dir);
    let config = dir.join("jobs.yaml");
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
    fs::write(
        &config,
        format!(
            "gateway: {{database: {}, schema: apantli}}\nstate_dir: {}\ndatabases:\n  media: {}/Databases/user_databases/*/Media_DB_v2.db\njobs:\n  bench:\n    on_signal: USR1\n    backup: {{to: {}, keep: {{last: 1}}, verify: quick, databases: [media]}}\n",
            gateway.display(),
            dir.join("state").display(),
            root.display(),
            out_dir.display()
        ),
    )
    .expect("writing the jobs file");
    let (out, ours) = run_job("bench", &config);
    assert!(
        out.status.success(),
        "caretaker failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = caretaker::backup::list(&out_dir, "bench")
        .expect("listing caretaker's output")
        .pop()
        .expect("caretaker's archive")
        .1;
    let our_bytes = fs::metadata(&archive).expect("the archive").len();
    println!("caretaker: {}", String::from_utf8_lossy(&out.stdout).trim());

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
    let start = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("running the recipe");
    let theirs = start.elapsed().as_secs_f64();
    assert!(status.success(), "the recipe failed: {status}");
    let their_bytes = fs::metadata(&tarball).expect("the tarball").len();

    println!();
    println!("| method | wall s | archive MB |");
    println!("|---|---|---|");
    println!(
        "| caretaker run-job (snapshots one at a time, quick_check, SHA-256, parallel gzip level 7, read-back, publish) | {ours:.1} | {:.1} |",
        our_bytes as f64 / 1e6
    );
    println!(
        "| sqlite3 \".backup\" per database, then tar czf | {theirs:.1} | {:.1} |",
        their_bytes as f64 / 1e6
    );
    println!(
        "caretaker / recipe: wall time {:.2}x, size {:.3}x",
        ours / theirs,
        our_bytes as f64 / their_bytes as f64
    );
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&tarball);
    let _ = fs::remove_dir_all(&out_dir);
}
