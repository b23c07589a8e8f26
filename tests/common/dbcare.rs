//! Helpers for the database-care tests: sample gateways, the simulator as a process, jobs files,
//! and reading back tables and archives to compare them row by row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use caretaker::demo::sim::SimReport;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::bins::{self, describe};
use super::sim::Sim;

/// Writes a jobs file into `dir` for the gateway at `db` with the given `jobs:` block.
pub fn jobs_file(dir: &Path, db: &Path, schema: &str, jobs: &str) -> PathBuf {
    let path = dir.join("jobs.yaml");
    let text = format!(
        "gateway:\n  database: {}\n  schema: {schema}\nstate_dir: {}\nalerts:\n  file: {}\njobs:\n{jobs}",
        db.display(),
        dir.join("state").display(),
        dir.join("alerts.jsonl").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub fn run_job(config: &Path, job: &str, extra: &[&str]) -> Output {
    bins::caretaker()
        .args(["run-job", job, "--config"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs `job` while gateway-sim writes `style` rows to `db` at `rate` per second; the job must
/// succeed and the gateway lose no write. Returns the job's output and the gateway's report.
pub fn run_job_beside_gateway(
    config: &Path,
    job: &str,
    db: &Path,
    style: &str,
    rate: f64,
    dir: &Path,
) -> (Output, SimReport) {
    let sim = Sim::start(db, style, rate, 0.1, dir);
    let out = run_job(config, job, &[]);
    let (report, _) = sim.stop();
    assert!(out.status.success(), "{style}: {}", describe(&out));
    assert_eq!(
        report.failed, 0,
        "{style}: gateway writes failed: {:?}",
        report.errors
    );
    (out, report)
}

/// Every row of `table`, keyed by its primary key (or rowid) as text, values in column order.
pub fn rows(db: &Path, table: &str) -> (Vec<String>, BTreeMap<String, Vec<Value>>) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let columns: Vec<(String, i64)> = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .unwrap()
        .query_map([], |r| Ok((r.get(1)?, r.get(5)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = columns.iter().position(|(_, pk)| *pk == 1).unwrap();
    let names: Vec<String> = columns.into_iter().map(|(c, _)| c).collect();
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let mut out = BTreeMap::new();
    let mut q = stmt.query([]).unwrap();
    while let Some(r) = q.next().unwrap() {
        let values: Vec<Value> = (0..names.len()).map(|i| r.get(i).unwrap()).collect();
        out.insert(key_text(&values[key]), values);
    }
    (names, out)
}

pub fn key_text(v: &Value) -> String {
    match v {
        Value::Integer(n) => n.to_string(),
        Value::Text(t) => t.clone(),
        other => panic!("unexpected key {other:?}"),
    }
}

/// The archive files in `dir` (not temporaries), sorted.
pub fn archive_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Decompresses `file` with the standard `gzip` tool.
pub fn gunzip(file: &Path) -> String {
    let out = Command::new("gzip").arg("-dc").arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "gzip -dc {} failed: {}",
        file.display(),
        describe(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON-lines archives in `dir` whose names start with `prefix`, as (file, line objects).
pub fn archived(
    dir: &Path,
    prefix: &str,
) -> Vec<(PathBuf, Vec<serde_json::Map<String, serde_json::Value>>)> {
    archive_files(dir)
        .into_iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .map(|f| {
            let text = gunzip(&f);
            assert!(!text.contains("sk-"), "{} holds an API key", f.display());
            let lines = text
                .lines()
                .map(|l| match serde_json::from_str(l).unwrap() {
                    serde_json::Value::Object(m) => m,
                    other => panic!("a line of {} is not an object: {other}", f.display()),
                })
                .collect();
            (f, lines)
        })
        .collect()
}

/// What `value` of a column looks like in a JSON-lines archive.
pub fn as_json(value: &Value, payload: bool, redact: &[String]) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(n) => (*n).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f).unwrap().into(),
        Value::Text(t) if payload => caretaker::jobs::archive::redact(t, redact)
            .into_owned()
            .into(),
        Value::Text(t) => t.clone().into(),
        Value::Blob(_) => panic!("no blobs in the samples"),
    }
}

/// JSON equality, except that reals may differ in the last bit: serde_json's default number
/// parser is not correctly rounded (the archive writes the shortest exact spelling; the unit
/// tests check that it reads back bit for bit with a correct parser).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64(), a.is_f64() || b.is_f64()) {
        (Some(x), Some(y), true) => x == y || ((x - y) / y).abs() < 1e-15,
        _ => a == b,
    }
}

/// Checks that the `original` rows are each, exactly once, either unchanged in `now` or in
/// `archives` (payload columns redacted). Returns how many were archived.
pub fn assert_union(
    names: &[String],
    payload: &[&str],
    original: &BTreeMap<String, Vec<Value>>,
    now: &BTreeMap<String, Vec<Value>>,
    archives: &[(PathBuf, Vec<serde_json::Map<String, serde_json::Value>>)],
    key: &str,
) -> usize {
    let redact = vec!["api_key".to_string()];
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (file, lines) in archives {
        for line in lines {
            let k = match &line[key] {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => panic!("bad key {other}"),
            };
            if let Some(before) = seen.insert(k.clone(), file.clone()) {
                panic!(
                    "row {k} is in {} and in {}",
                    before.display(),
                    file.display()
                );
            }
            assert!(
                !now.contains_key(&k),
                "row {k} is archived in {} and still in the table",
                file.display()
            );
            let orig = original
                .get(&k)
                .unwrap_or_else(|| panic!("archived row {k} was never in the table"));
            for (i, name) in names.iter().enumerate() {
                let want = as_json(&orig[i], payload.contains(&name.as_str()), &redact);
                assert!(
                    same(&line[name], &want),
                    "row {k} column {name} in {}: {} != {want}",
                    file.display(),
                    line[name]
                );
            }
            assert_eq!(line.len(), names.len(), "row {k} has extra fields");
        }
    }
    for (k, values) in original {
        if seen.contains_key(k) {
            continue;
        }
        let current = now
            .get(k)
            .unwrap_or_else(|| panic!("row {k} is neither in the table nor archived"));
        assert_eq!(current, values, "row {k} changed in the table");
    }
    seen.len()
}
