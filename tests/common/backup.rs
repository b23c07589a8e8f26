//! Test rig for backups: a gateway database, a jobs file, the real binaries and a writing gateway simulator.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rusqlite::Connection;
use tempfile::TempDir;

use super::bins::{self, describe};
use super::files::names;
use super::sim::Sim;
use super::wait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Rollback journal, writers with a 5 s busy timeout.
    Apantli,
    /// WAL, writers without a busy timeout.
    Bobamixer,
}

impl Schema {
    pub fn name(self) -> &'static str {
        match self {
            Schema::Apantli => "apantli",
            Schema::Bobamixer => "bobamixer",
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Schema::Apantli => "requests",
            Schema::Bobamixer => "usage_records",
        }
    }

    /// The column gateway-sim reports committed keys by.
    pub fn key(self) -> &'static str {
        "id"
    }
}

pub struct Rig {
    pub dir: TempDir,
    pub schema: Schema,
    pub db: PathBuf,
    pub to: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub include: PathBuf,
}

/// Creates a gateway database of `rows` rows of about 1 KB each.
pub fn create_db(path: &Path, schema: Schema, rows: u64) {
    match schema {
        Schema::Apantli => {
            let opts = caretaker::demo::sample::SampleOptions {
                rows,
                ..Default::default()
            };
            caretaker::demo::sample::create_apantli(path, &opts)
                .expect("creating the Apantli sample");
        }
        Schema::Bobamixer => {
            // Built directly: BobaMixer never enables foreign keys, so its sessions can arrive
            // after their records; the bundled SQLite enforces them by default.
            let conn = Connection::open(path).unwrap();
            conn.execute_batch(caretaker::demo::sample::BOBAMIXER_SCHEMA)
                .unwrap();
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO sessions (id, started_at, project) SELECT 'sess_' || i, i, hex(randomblob(400)) FROM n",
                [rows.div_ceil(10) as i64],
            )
            .unwrap();
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO usage_records (id, session_id, ts, input_tokens, output_tokens, input_cost, output_cost, tool, model)
                 SELECT 'seed_' || i, 'sess_' || ((i + 9) / 10), 1700000000 + i, i % 900, i % 300, 0.001, 0.002,
                        hex(randomblob(250)), 'gpt-4o' FROM n",
                [rows as i64],
            )
            .unwrap();
        }
    }
}

impl Rig {
    /// A gateway database with `rows` rows and a jobs file with a backup job `nightly`
    /// (`backup_extra` is added to its block) and a verify job `check`.
    pub fn new(schema: Schema, rows: u64, backup_extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(match schema {
            Schema::Apantli => "requests.db",
            Schema::Bobamixer => "usage.db",
        });
        create_db(&db, schema, rows);
        let to = dir.path().join("backups");
        Rig::with_paths(dir, schema, db, to, backup_extra)
    }

    pub fn with_paths(
        dir: TempDir,
        schema: Schema,
        db: PathBuf,
        to: PathBuf,
        backup_extra: &str,
    ) -> Rig {
        let state = dir.path().join("state");
        let include = dir.path().join("gateway.env");
        fs::write(&include, "OPENAI_API_KEY=sk-test\n").unwrap();
        let config = dir.path().join("jobs.yaml");
        let mut rig = Rig {
            dir,
            schema,
            db,
            to,
            state,
            config,
            include,
        };
        rig.write_config(backup_extra);
        rig
    }

    pub fn write_config(&mut self, backup_extra: &str) {
        let has = |key: &str| backup_extra.contains(&format!("{key}:"));
        let mut block = String::new();
        if !has("keep") {
            block.push_str("      keep: {last: 3}\n");
        }
        if !has("verify") {
            block.push_str("      verify: full\n");
        }
        if !has("include") {
            block.push_str(&format!("      include: [{}]\n", self.include.display()));
        }
        for line in backup_extra.lines().filter(|l| !l.trim().is_empty()) {
            block.push_str(&format!("      {}\n", line.trim()));
        }
        let yaml = format!(
            "gateway:\n  database: {}\n  schema: {}\n  busy_timeout: 2s\nstate_dir: {}\ntimezone: Europe/Berlin\nalerts:\n  file: {}\njobs:\n  nightly:\n    on_signal: USR1\n    backup:\n      to: {}\n{block}  check:\n    on_signal: USR2\n    verify: {{backups_of: nightly, which: all}}\n",
            self.db.display(),
            self.schema.name(),
            self.state.display(),
            self.alerts_file().display(),
            self.to.display(),
        );
        fs::write(&self.config, yaml).unwrap();
    }

    pub fn alerts_file(&self) -> PathBuf {
        self.state.join("alerts.jsonl")
    }

    pub fn caretaker(&self, args: &[&str]) -> Command {
        let mut cmd = bins::caretaker();
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env_remove("CARETAKER_CONFIG");
        cmd
    }

    pub fn run_job_command(&self, job: &str) -> Command {
        self.caretaker(&["run-job", job, "--config", self.config.to_str().unwrap()])
    }

    pub fn run_job(&self, job: &str) -> Output {
        self.run_job_command(job)
            .output()
            .expect("running caretaker run-job")
    }

    pub fn restore(&self, archive: &Path, to: &Path, force: bool) -> Output {
        let mut args = vec![
            "restore",
            archive.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        self.caretaker(&args)
            .output()
            .expect("running caretaker restore")
    }

    /// Runs the backup job `nightly`, which must succeed, and returns its newest archive.
    pub fn backed_up(&self) -> PathBuf {
        let out = self.run_job("nightly");
        assert!(out.status.success(), "{}", describe(&out));
        self.archives().pop().unwrap()
    }

    /// Restoring `bad` fails (exit 1) with an error naming it and each of `words`, and leaves
    /// neither the target nor a temporary file.
    pub fn assert_refused(&self, bad: &Path, what: &str, words: &[&str]) {
        let target = self.dir.path().join("restored.db");
        let out = self.restore(bad, &target, false);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for word in words.iter().chain([&bad.to_str().unwrap()]) {
            assert!(stderr.contains(word), "{what}: `{word}` not in: {stderr}");
        }
        assert!(!target.exists(), "{what}: nothing may be restored");
        let dir = names(self.dir.path());
        assert!(
            dir.iter().all(|n| !n.contains("caretaker-tmp")),
            "{what}: {dir:?}"
        );
    }

    /// This job's archives in `to`, oldest first.
    pub fn archives(&self) -> Vec<PathBuf> {
        caretaker::backup::list(&self.to, "nightly")
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    pub fn start_sim(&self, rate: f64) -> Sim {
        Sim::start(&self.db, self.schema.name(), rate, 0.0, self.dir.path())
    }
}

/// The value of `name=` in a run-job report line.
pub fn figure(out: &Output, name: &str) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = format!("{name}=");
    let start = stdout
        .find(&key)
        .unwrap_or_else(|| panic!("no figure {name} in {stdout}"))
        + key.len();
    stdout[start..]
        .split([' ', ')'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Keys of every row of the gateway table in `db`, as gateway-sim prints them.
pub fn keys(db: &Path, schema: Schema) -> BTreeSet<String> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let sql = format!(
        "SELECT CAST({} AS TEXT) FROM {}",
        schema.key(),
        schema.table()
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Waits until a new run would name its archive after a later second than `archive`'s: two
/// runs in one second would collide, which the job refuses.
pub fn wait_for_next_second(archive: &Path) {
    let name = archive.file_name().unwrap().to_str().unwrap();
    let taken = caretaker::backup::ArchiveName::parse("nightly", name)
        .unwrap_or_else(|| panic!("{name} is not an archive of `nightly`"))
        .time;
    wait::until(
        "the clock to pass the archive's second",
        Duration::from_secs(3),
        || chrono::Utc::now().timestamp() > taken.timestamp(),
    );
}
