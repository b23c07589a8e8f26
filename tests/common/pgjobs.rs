//! Job tests on a PostgreSQL gateway: LiteLLM rows old enough to archive (secrets inside their
//! JSONB), a jobs file for one job, and every row's content in one comparable form.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::pg::Cluster;

/// Fills `db` with `n` LiteLLM spend-log rows about 100 days old (three rows share each
/// start time, so keyset batches meet ties), their error-log rows for the failed ones, and a
/// tool index with a row for every tenth request. Secrets sit in `metadata` (an error trace),
/// in a request copy's `authorization` header and under an `api_key` key.
pub fn seed_old(cluster: &Cluster, db: &str, n: u32) {
    cluster
        .client(db)
        .batch_execute(&format!(
            r#"
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
    completion_tokens, "startTime", "endTime", model, custom_llm_provider, "user", metadata, messages,
    response, proxy_server_request, status, request_tags, session_id)
SELECT 'old-' || lpad(g::text, 6, '0'), 'acompletion', md5(g::text), g * 0.001 + 0.1, g + 7, g, 7,
    date_trunc('milliseconds', now() AT TIME ZONE 'UTC' - interval '100 days' + (g / 3) * interval '1.5 seconds'),
    date_trunc('milliseconds', now() AT TIME ZONE 'UTC' - interval '100 days' + (g / 3) * interval '1.5 seconds' + interval '800 ms'),
    'gpt-4o', 'openai', 'user-' || (g % 4),
    jsonb_build_object('trace', 'Traceback: AuthenticationError for key sk-proj-' || md5(g::text) || md5('x' || g), 'n', g, 'ünï', 'çødé'),
    jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('tell me about kestrels ', 20) || g)),
    CASE WHEN g % 5 = 0 THEN '{{}}'::jsonb ELSE jsonb_build_object('choices', jsonb_build_array(jsonb_build_object('text', 'kestrels hover ' || g, 'score', (g % 8) / 4.0))) END,
    jsonb_build_object('headers', jsonb_build_object('authorization', 'Bearer sk-' || md5(g::text)), 'body', jsonb_build_object('api_key', 'secret-' || g, 'model', 'gpt-4o')),
    CASE WHEN g % 5 = 0 THEN 'failure' WHEN g % 11 = 0 THEN NULL ELSE 'success' END,
    '["batch", "nightly"]'::jsonb,
    CASE WHEN g % 2 = 0 THEN 'sess-' || (g % 9) END
FROM generate_series(1, {n}) g;
INSERT INTO "LiteLLM_ErrorLogs" (request_id, "startTime", "endTime", model_group, request_kwargs, exception_type, exception_string, status_code)
SELECT request_id, "startTime", "endTime", 'gpt-4o',
    jsonb_build_object('api_key', 'secret-err-' || request_id, 'model', 'gpt-4o'), 'RateLimitError', 'rate limited', '429'
FROM "LiteLLM_SpendLogs" WHERE status = 'failure' AND request_id LIKE 'old-%';
CREATE TABLE IF NOT EXISTS "LiteLLM_SpendLogToolIndex" (
    request_id TEXT NOT NULL, tool_name TEXT NOT NULL, "startTime" TIMESTAMP(3) NOT NULL,
    PRIMARY KEY (request_id, tool_name));
INSERT INTO "LiteLLM_SpendLogToolIndex"
SELECT request_id, 'search', "startTime" FROM "LiteLLM_SpendLogs" WHERE request_id LIKE 'old-%' AND right(request_id, 1) = '0';
"#
        ))
        .unwrap();
}

/// A young request with a tool-index row and an error-log row: none of it may be pruned.
pub fn seed_young(cluster: &Cluster, db: &str) {
    cluster
        .client(db)
        .batch_execute(
            r#"
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, "startTime", "endTime", status)
VALUES ('young-1', 'acompletion', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 'failure');
INSERT INTO "LiteLLM_ErrorLogs" (request_id, "startTime", "endTime") VALUES ('young-1', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');
INSERT INTO "LiteLLM_SpendLogToolIndex" VALUES ('young-1', 'search', now() AT TIME ZONE 'UTC');
"#,
        )
        .unwrap();
}

/// A jobs file in `dir` for the gateway `url` (LiteLLM) with one job `old` of body `job`, and
/// alerts appended to `alerts.jsonl`.
pub fn jobs_file(dir: &Path, url: &str, job: &str) -> PathBuf {
    let path = dir.join("jobs.yaml");
    fs::write(
        &path,
        format!(
            "gateway:\n  url: {url}\n  schema: litellm\nstate_dir: state\nalerts:\n  file: alerts.jsonl\njobs:\n  old:\n    on_signal: USR1\n    {job}\n"
        ),
    )
    .unwrap();
    path
}

/// `caretaker run-job old` with the jobs file `jobs`.
pub fn run_job(jobs: &Path) -> std::process::Output {
    super::bins::caretaker()
        .args(["run-job", "old", "--config"])
        .arg(jobs)
        .env_remove("CARETAKER_CONFIG")
        .output()
        .unwrap()
}

/// The data type of each column of `table`.
pub fn column_types(cluster: &Cluster, db: &str, table: &str) -> BTreeMap<String, String> {
    cluster
        .client(db)
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = $1",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One row in a form both the table and the archive give the same way: times to the
/// millisecond, numbers as reals, JSON parsed.
pub type Canon = BTreeMap<String, Json>;

fn canon_value(data_type: &str, v: Json, from_archive: bool) -> Json {
    match (data_type, v) {
        (_, Json::Null) => Json::Null,
        ("jsonb" | "json", Json::String(s)) if from_archive => {
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("archived JSON {s}: {e}"))
        }
        (t, Json::String(s)) if t.starts_with("timestamp") => {
            let naive = s.trim_end_matches('Z');
            let t = chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
                .unwrap_or_else(|e| panic!("time {s}: {e}"));
            Json::String(t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
        }
        (_, Json::Number(n)) => Json::from(n.as_f64().unwrap()),
        (_, v) => v,
    }
}

/// Every row of `table` by its `key`, as PostgreSQL's `row_to_json` gives it.
pub fn table_rows(cluster: &Cluster, db: &str, table: &str, key: &str) -> BTreeMap<String, Canon> {
    let types = column_types(cluster, db, table);
    cluster
        .client(db)
        .query(
            &format!("SELECT row_to_json(t)::text FROM \"{table}\" t"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let text: String = r.get(0);
            let obj: serde_json::Map<String, Json> = serde_json::from_str(&text).unwrap();
            let row: Canon = obj
                .into_iter()
                .map(|(k, v)| {
                    let v = canon_value(&types[&k], v, false);
                    (k, v)
                })
                .collect();
            (row[key].as_str().unwrap().to_string(), row)
        })
        .collect()
}

/// The archive files in `dir` whose names start with `prefix`: `old-litellmerrorlogs-` for the
/// error logs archived by job `old`; `old-` alone names its spend-log files only.
pub fn archive_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with(prefix)
            && name.ends_with(".jsonl.gz")
            && (prefix.contains("litellm") || !name.contains("litellm"))
    });
    found.sort();
    found
}

/// The decompressed text of an archive file (a damaged one fails the test).
pub fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{} does not decompress: {e}", path.display()));
    text
}

/// Every archived row of the files, by key, failing on a key archived twice.
pub fn archived_rows(
    files: &[PathBuf],
    types: &BTreeMap<String, String>,
    key: &str,
) -> BTreeMap<String, Canon> {
    let mut rows = BTreeMap::new();
    for file in files {
        for line in gunzip(file).lines() {
            let obj: serde_json::Map<String, Json> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a line does not parse: {e}", file.display()));
            let row: Canon = obj
                .into_iter()
                .map(|(k, v)| {
                    let v = canon_value(&types[&k], v, true);
                    (k, v)
                })
                .collect();
            let id = row[key].as_str().unwrap().to_string();
            assert!(
                rows.insert(id.clone(), row).is_none(),
                "{id} archived twice (last in {})",
                file.display()
            );
        }
    }
    rows
}

/// `row` as the archive must hold it: the `redact` keys' values and key-shaped strings in its
/// JSON columns replaced, as caretaker's redaction does.
pub fn redacted(row: &Canon, types: &BTreeMap<String, String>, keys: &[String]) -> Canon {
    row.iter()
        .map(|(k, v)| {
            let v = match types[k].as_str() {
                "jsonb" | "json" if !v.is_null() => {
                    let text = v.to_string();
                    let keyed = caretaker::redact::json::redact(&text, keys);
                    let shaped = caretaker::redact::api_keys(&keyed);
                    serde_json::from_str(&shaped).unwrap()
                }
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Panics when any archive file holds a secret of the seeded rows or the simulator's: a key
/// after `sk-` (its redacted form keeps the prefix only) or an `api_key` value (`secret-…`).
pub fn assert_no_secrets(files: &[PathBuf]) {
    for file in files {
        let text = gunzip(file);
        for (at, _) in text.match_indices("sk-") {
            let after = &text[at + 3..];
            assert!(
                after.starts_with("[redacted]"),
                "{} holds a key: {}",
                file.display(),
                &after[..after.len().min(60)]
            );
        }
        assert!(
            !text.contains("secret-"),
            "{} holds an api_key value",
            file.display()
        );
    }
}

/// `caretaker run-job old` with the jobs file `jobs`, in the background, its output piped.
pub fn spawn_job(jobs: &Path) -> std::process::Child {
    super::bins::caretaker()
        .args(["run-job", "old", "--config"])
        .arg(jobs)
        .env_remove("CARETAKER_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// How many of our statements gave up on a lock so far (the server logs each).
pub fn lock_timeouts(cluster: &Cluster) -> usize {
    cluster
        .log()
        .matches("canceling statement due to lock timeout")
        .count()
}

/// What a run that met a held row lock did.
pub struct HeldLockRun {
    pub success: bool,
    /// Its log and report (stderr, then stdout).
    pub output: String,
}

/// Runs job `old` of `jobs` while another session holds `FOR UPDATE` locks on the spend-log
/// rows whose `request_id` is from `first` to `last`, as a long transaction would: waits until
/// our statements have met the lock twice, checks that the run still goes on, then releases
/// the lock and waits for the run to end.
pub fn run_through_held_lock(
    cluster: &Cluster,
    db: &str,
    jobs: &Path,
    first: &str,
    last: &str,
) -> HeldLockRun {
    let mut blocker = cluster.client(db);
    let mut tx = blocker.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM \"LiteLLM_SpendLogs\" WHERE request_id BETWEEN $1 AND $2 FOR UPDATE",
        &[&first, &last],
    )
    .unwrap();
    let mut child = spawn_job(jobs);
    super::wait::until(
        "our statements to meet the lock twice",
        super::wait::DEADLINE,
        || lock_timeouts(cluster) >= 2 || child.try_wait().unwrap().is_some(),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended while the lock was held"
    );
    tx.commit().unwrap();
    let status = child.wait().unwrap();
    let mut output = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    HeldLockRun {
        success: status.success(),
        output,
    }
}
