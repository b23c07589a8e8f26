//! Budget, health, integrity and maintenance on a PostgreSQL gateway (LiteLLM's spend logs)
//! against a real server while the LiteLLM simulator writes.

mod common;

use std::path::Path;
use std::process::Output;

use common::bins;
use common::pg::Cluster;
use common::pgjobs;
use common::sim::Sim;

fn check(jobs: &Path) -> Output {
    bins::caretaker()
        .args(["check", "--config"])
        .arg(jobs)
        .env_remove("CARETAKER_CONFIG")
        .output()
        .unwrap()
}

fn alerts(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap_or_default()
}

#[test]
fn budget_and_health_read_litellms_columns_and_the_servers_conditions() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.3, dir.path());
    common::wait::until("rows from the simulator", common::wait::DEADLINE, || {
        cluster.scalar(&db, "SELECT count(*) FROM \"LiteLLM_SpendLogs\"") >= Some(200)
    });
    // Budget: today's spend of successful requests, from `spend`.
    let jobs = pgjobs::jobs_file(
        dir.path(),
        &cluster.url(&db),
        "budget: {limits: [{name: daily, period: day, usd: 0.000001, warn_at: [100%]}]}",
    );
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    let text = alerts(dir.path());
    assert!(
        text.contains("budget:old:daily"),
        "{text}\n{}",
        bins::describe(&out)
    );

    // Health: dead tuples, a big table, an old transaction, connections and the error rate.
    cluster
        .client(&db)
        .batch_execute(
            "UPDATE \"LiteLLM_SpendLogs\" SET spend = spend WHERE request_id IN (SELECT request_id FROM \"LiteLLM_SpendLogs\" LIMIT 150)",
        )
        .unwrap();
    common::wait::until(
        "the dead tuples in the statistics",
        common::wait::DEADLINE,
        || {
            cluster.scalar(
                &db,
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'LiteLLM_SpendLogs'",
            ) >= Some(150)
        },
    );
    let mut old = cluster.client(&db);
    let mut open = old.transaction().unwrap();
    open.execute("SELECT 1", &[]).unwrap();
    common::wait::until(
        "the transaction to be 2 s old",
        common::wait::DEADLINE,
        || {
            cluster.scalar(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE xact_start < now() - interval '2 seconds'",
        ) >= Some(1)
        },
    );
    let jobs = pgjobs::jobs_file(
        dir.path(),
        &cluster.url(&db),
        "health: {dead_tuples_max: 20%, table_max_size: 16KB, transaction_max_age: 1s, connections_max: 80%, error_rate_max: {share: 5%, over: 1h}, database_max_size: 1GB}",
    );
    let out = pgjobs::run_job(&jobs);
    assert!(out.status.success(), "{}", bins::describe(&out));
    open.rollback().unwrap();
    let text = alerts(dir.path());
    for key in [
        "health:old:dead_tuples:LiteLLM_SpendLogs",
        "health:old:table_size:LiteLLM_SpendLogs",
        "health:old:transaction_age",
        "health:old:error_rate",
    ] {
        assert!(text.contains(key), "{key} not raised: {text}");
    }
    for key in ["health:old:connections", "health:old:database_size"] {
        assert!(!text.contains(key), "{key} raised: {text}");
    }
    let (report, _) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");

    // wal_max_size does not apply to PostgreSQL: check says so at its key.
    let jobs = pgjobs::jobs_file(dir.path(), &cluster.url(&db), "health: {wal_max_size: 1GB}");
    let out = check(&jobs);
    let text = bins::describe(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("jobs.old.health.wal_max_size"), "{text}");
    assert!(
        text.contains("does not apply to a PostgreSQL gateway"),
        "{text}"
    );
}

#[test]
fn integrity_says_which_check_ran_and_maintenance_vacuums_and_reindexes_concurrently() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    pgjobs::seed_old(&cluster, &db, 400);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.1, dir.path());
    let integrity = |dir: &Path| {
        let jobs = pgjobs::jobs_file(dir, &cluster.url(&db), "integrity: {check: full}");
        pgjobs::run_job(&jobs)
    };
    // Without amcheck: a full read of every table, and the summary says so.
    let out = integrity(dir.path());
    assert!(out.status.success(), "{}", bins::describe(&out));
    assert!(
        bins::describe(&out).contains("a full read of every row"),
        "{}",
        bins::describe(&out)
    );
    // With amcheck: every index of the gateway tables, and the heap.
    cluster
        .client(&db)
        .batch_execute("CREATE EXTENSION amcheck")
        .unwrap();
    let out = integrity(dir.path());
    assert!(out.status.success(), "{}", bins::describe(&out));
    let text = bins::describe(&out);
    assert!(
        text.contains("amcheck (bt_index_check on every index, verify_heapam"),
        "{text}"
    );
    // Maintenance: VACUUM (ANALYZE), sizes and dead tuples before and after, and the bloated
    // index rebuilt concurrently.
    cluster
        .client(&db)
        .batch_execute(
            "REINDEX INDEX \"LiteLLM_SpendLogs_session_id_idx\";
             DELETE FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'old-%' AND right(request_id, 1) <> '7';
             ANALYZE \"LiteLLM_SpendLogs\"",
        )
        .unwrap();
    common::wait::until(
        "the dead tuples in the statistics",
        common::wait::DEADLINE,
        || {
            cluster.scalar(
                &db,
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'LiteLLM_SpendLogs'",
            ) >= Some(300)
        },
    );
    let jobs = pgjobs::jobs_file(
        dir.path(),
        &cluster.url(&db),
        "maintenance: {reindex: {bloat_over: 50%}}",
    );
    let out = pgjobs::run_job(&jobs);
    let text = bins::describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("VACUUM (ANALYZE) of `LiteLLM_SpendLogs`"),
        "{text}"
    );
    assert!(text.contains("rebuilt concurrently"), "{text}");
    assert_eq!(
        cluster.scalar(
            &db,
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'LiteLLM_SpendLogs' AND last_vacuum IS NOT NULL"
        ),
        Some(1)
    );
    let (report, _) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    // A corrupt index (the simulator stopped: its inserts would fail on it): amcheck finds it,
    // and a critical alert is raised.
    let index = "\"LiteLLM_SpendLogs_session_id_idx\"";
    let path: String = cluster
        .client(&db)
        .query_one(&format!("SELECT pg_relation_filepath('{index}')"), &[])
        .unwrap()
        .get(0);
    cluster
        .client(&db)
        .batch_execute(&format!("CHECKPOINT; SELECT pg_relation_size('{index}')"))
        .unwrap();
    let file = cluster.data().join(path);
    let mut bytes = std::fs::read(&file).unwrap();
    // Page 1 (the first leaf) scrambled past its header: its items no longer sort.
    for b in &mut bytes[8192 + 64..8192 + 4096] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&file, &bytes).unwrap();
    cluster.restart_fast();
    let out = integrity(dir.path());
    assert!(!out.status.success(), "{}", bins::describe(&out));
    let text = alerts(dir.path());
    assert!(
        text.contains("integrity:old") && text.contains("critical"),
        "{text}"
    );
}

#[test]
fn budget_and_health_statements_use_the_time_index() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    // 100 days of requests: a day's or an hour's range is a small part of the table.
    let mut client = cluster.client(&db);
    client
        .batch_execute(
            "INSERT INTO \"LiteLLM_SpendLogs\" (request_id, call_type, spend, \"startTime\", \"endTime\", model, custom_llm_provider, status)
             SELECT 'bulk-' || g, 'acompletion', 0.01, now() AT TIME ZONE 'UTC' - g * interval '5 minutes',
                    now() AT TIME ZONE 'UTC' - g * interval '5 minutes', 'gpt-4o', 'openai', 'success'
               FROM generate_series(1, 30000) g",
        )
        .unwrap();
    client.batch_execute("ANALYZE").unwrap();
    // Every statement's plan in the server's log, as it ran it.
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain';
             ALTER DATABASE {db} SET auto_explain.log_min_duration = 0"
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for job in [
        "budget: {limits: [{name: daily, period: day, usd: 100, warn_at: [100%]}]}",
        "health: {error_rate_max: {share: 50%, over: 1h}}",
    ] {
        let jobs = pgjobs::jobs_file(dir.path(), &cluster.url(&db), job);
        let out = pgjobs::run_job(&jobs);
        assert!(out.status.success(), "{}", bins::describe(&out));
    }
    let log = cluster.log();
    let plans: Vec<&str> = log
        .split("LOG:  duration:")
        .filter(|p| p.contains("FROM \"LiteLLM_SpendLogs\" WHERE \"startTime\" >="))
        .collect();
    assert!(plans.len() >= 2, "no plan of our statements logged:\n{log}");
    for plan in plans {
        let plan = plan.split("\n20").next().unwrap_or(plan);
        assert!(
            plan.contains("LiteLLM_SpendLogs_startTime"),
            "a statement did not use the time index:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "a sequential scan:\n{plan}");
    }
}

#[test]
fn the_backend_binds_and_reads_our_values_by_the_servers_types_and_reports_a_lock_as_busy() {
    use caretaker::gateway::{Access, ExecExt, Value};
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    let jobs = pgjobs::jobs_file(
        dir.path(),
        &cluster.url(&db),
        "budget: {limits: [{name: d, period: day, usd: 1}]}",
    );
    let text = std::fs::read_to_string(&jobs).unwrap();
    let (config, _) =
        caretaker::config::parse_for(&jobs, &text, caretaker::config::Purpose::Check).unwrap();
    let gateway = config.gateway.expect("the jobs file declares a gateway");
    let mut conn = gateway.open(Access::ReadWrite).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123Z")
        .unwrap()
        .to_utc();
    let exec = conn.exec();
    // A time into `timestamp`, text into `jsonb`, integers into int4 and float8, and back.
    exec.execute(
        "INSERT INTO \"LiteLLM_SpendLogs\" (request_id, call_type, \"startTime\", \"endTime\", prompt_tokens, spend, metadata)
         VALUES ($1, $2, $3, $3, $4, $5, $6)",
        &[
            "r1".into(),
            "acompletion".into(),
            Value::Time(t),
            Value::Integer(12),
            Value::Integer(2),
            "{\"k\": [1, \"é\"]}".into(),
        ],
    )
    .unwrap();
    let row = exec
        .query_one(
            "SELECT \"startTime\", metadata, prompt_tokens, spend, sum(prompt_tokens::int8) OVER (), status = 'x', NULL::text
               FROM \"LiteLLM_SpendLogs\" WHERE request_id = $1",
            &["r1".into()],
            |r| r.values(),
        )
        .unwrap();
    assert_eq!(
        row,
        vec![
            Value::Time(t),
            Value::Text("{\"k\": [1, \"é\"]}".into()),
            Value::Integer(12),
            Value::Real(2.0),
            Value::Integer(12),
            Value::Null,
            Value::Null,
        ]
    );
    // The columns with their place in the primary key; a missing table has none.
    let columns = exec.columns_of("public.LiteLLM_SpendLogs").unwrap();
    assert_eq!(columns[0].name, "request_id");
    assert_eq!(columns[0].key, 1);
    assert!(columns.iter().skip(1).all(|c| c.key == 0));
    assert!(exec.columns_of("nope").unwrap().is_empty());
    assert!(
        exec.leads_an_index("LiteLLM_SpendLogs", "startTime")
            .unwrap()
    );
    assert!(!exec.leads_an_index("LiteLLM_SpendLogs", "model").unwrap());
    // A lock kept past our lock_timeout is the gateway's "busy", not a plain error.
    let mut holder = cluster.client(&db);
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE \"LiteLLM_SpendLogs\" IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let err = conn
        .exec()
        .execute(
            "DELETE FROM \"LiteLLM_SpendLogs\" WHERE request_id = $1",
            &["r1".into()],
        )
        .unwrap_err();
    assert!(caretaker::writelock::is_busy(&err), "{err:#}");
    tx.rollback().unwrap();
    let err = conn.exec().execute("SELECT nope", &[]).unwrap_err();
    assert!(!caretaker::writelock::is_busy(&err));
    assert!(
        format!("{err:#}").contains("column \"nope\" does not exist"),
        "{err:#}"
    );
}
