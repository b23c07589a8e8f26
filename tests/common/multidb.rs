//! Test rig for more databases than one: the per-user layout of tldw (`Databases/users.db`, `Databases/user_databases/<id>/Media_DB_v2.db` and `ChaChaNotes.db`), a jobs file that declares them, and a look into archives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use rusqlite::Connection;

use super::backup::{Schema, create_db};
use super::bins;

/// A per-user database with `rows` rows in a table of notes, in `mode` (`wal` or `delete`).
pub fn create_user_db(path: &Path, rows: u64, mode: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = {mode};
         CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO tags (name) VALUES ('a');"
    ))
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO notes (body) SELECT hex(randomblob(200)) FROM n",
        [rows as i64],
    )
    .unwrap();
}

/// The tldw layout under `root`: `users.db` and `users` users with two databases each; the
/// databases of the users in `live` are left for a writer to create. Returns every database
/// path created.
pub fn tldw_layout(root: &Path, users: u32, live: &[u32]) -> Vec<PathBuf> {
    let dbs = root.join("Databases");
    let mut made = vec![dbs.join("users.db")];
    create_user_db(&made[0], 30, "delete");
    for user in 1..=users {
        let dir = dbs.join("user_databases").join(user.to_string());
        fs::create_dir_all(&dir).unwrap();
        for (file, mode) in [("Media_DB_v2.db", "wal"), ("ChaChaNotes.db", "delete")] {
            let path = dir.join(file);
            if !(live.contains(&user) && file == "Media_DB_v2.db") {
                create_user_db(&path, u64::from(user), mode);
                made.push(path);
            }
        }
    }
    made
}

/// A jobs file at `dir/jobs.yaml`: an Apantli gateway at `dir/requests.db`, the tldw
/// databases under `root` declared as `users`, `media` and `notes`, and a backup job
/// `nightly` to `dir/backups` (`backup_extra` added to its block) with a verify job `check`.
pub fn jobs_file(dir: &Path, root: &Path, backup_extra: &str) -> PathBuf {
    jobs_file_with(dir, root, backup_extra, "")
}

/// [`jobs_file`] with `more_jobs` (YAML at the indentation of a job) added under `jobs`, and
/// alerts appended to `dir/state/alerts.jsonl`.
pub fn jobs_file_with(dir: &Path, root: &Path, backup_extra: &str, more_jobs: &str) -> PathBuf {
    let gateway = dir.join("requests.db");
    if !gateway.exists() {
        create_db(&gateway, Schema::Apantli, 40);
    }
    let dbs = root.join("Databases");
    let mut block = String::new();
    for line in backup_extra.lines().filter(|l| !l.trim().is_empty()) {
        block.push_str(&format!("      {}\n", line.trim()));
    }
    let yaml = format!(
        "gateway:\n  database: {gw}\n  schema: apantli\nstate_dir: {state}\nalerts:\n  file: {state}/alerts.jsonl\ndatabases:\n  users: {dbs}/users.db\n  media: {dbs}/user_databases/*/Media_DB_v2.db\n  notes: {{path: {dbs}/user_databases/*/ChaChaNotes.db}}\njobs:\n  nightly:\n    on_signal: USR1\n    backup:\n      to: {to}\n      keep: {{last: 50}}\n      verify: quick\n{block}  check:\n    on_signal: USR2\n    verify: {{backups_of: nightly, which: latest}}\n{more_jobs}",
        gw = gateway.display(),
        state = dir.join("state").display(),
        dbs = dbs.display(),
        to = dir.join("backups").display(),
    );
    let path = dir.join("jobs.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

pub fn caretaker(args: &[&str]) -> Output {
    bins::caretaker()
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("CARETAKER_CONFIG")
        .output()
        .expect("running caretaker")
}

/// Rows of `table` in `db`.
pub fn count(db: &Path, table: &str) -> u64 {
    let conn = Connection::open(db).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

/// A jobs file at `dir/jobs.yaml` with no `gateway:`: the tldw databases under `root` declared
/// as `users`, `media` and `notes`, state, alerts and `metrics.prom` under `dir/state`, and
/// `jobs` (YAML at the indentation of a job) under `jobs`.
pub fn jobs_file_without_gateway(dir: &Path, root: &Path, jobs: &str) -> PathBuf {
    let dbs = root.join("Databases");
    let yaml = format!(
        "state_dir: {state}\nmetrics_file: {state}/metrics.prom\nalerts:\n  file: {state}/alerts.jsonl\ndatabases:\n  users: {dbs}/users.db\n  media: {dbs}/user_databases/*/Media_DB_v2.db\n  notes: {dbs}/user_databases/*/ChaChaNotes.db\njobs:\n{jobs}",
        state = dir.join("state").display(),
        dbs = dbs.display(),
    );
    let path = dir.join("jobs.yaml");
    fs::write(&path, yaml).unwrap();
    path
}
