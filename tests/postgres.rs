//! PostgreSQL gateways against a real server: the jobs file's keys, signing in (password from
//! the environment, a file or libpq's password file), the settings of every session, and the
//! LiteLLM simulator.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use caretaker::gateway::postgres::connect_with;
use common::bins;
use common::pg::Cluster;
use common::sim::Sim;

/// The validated gateway of a jobs file with `gateway` as its gateway block and one logrotate job.
fn gateway(dir: &Path, gateway: &str) -> Result<caretaker::gateway::Gateway, String> {
    let text = format!(
        "{gateway}state_dir: state\njobs:\n  rotate:\n    schedule: \"@daily\"\n    logrotate: {{files: [x.log], period: daily}}\n"
    );
    // As `check` reads it: a password variable of the daemon's environment may be unset here.
    caretaker::config::parse_for(
        &dir.join("jobs.yaml"),
        &text,
        caretaker::config::Purpose::Check,
    )
    .map(|(c, _)| c.gateway.expect("the block declares a gateway"))
    .map_err(|e| e.to_string())
}

fn server(dir: &Path, block: &str) -> caretaker::gateway::postgres::Server {
    gateway(dir, block)
        .unwrap_or_else(|e| panic!("{e}"))
        .postgres
        .expect("a PostgreSQL gateway")
}

fn show(client: &mut postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn every_session_sets_its_timeouts_and_name_before_any_statement() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    for (block, lock, statement) in [
        ("", "200ms", "30s"),
        (
            "  lock_timeout: 150ms\n  statement_timeout: 2m\n",
            "150ms",
            "2min",
        ),
    ] {
        let server = server(
            dir.path(),
            &format!(
                "gateway:\n  url: {}\n  schema: litellm\n{block}",
                cluster.url(&db)
            ),
        );
        let mut session = caretaker::gateway::postgres::connect(&server).unwrap();
        assert_eq!(show(&mut session, "lock_timeout"), lock);
        assert_eq!(show(&mut session, "statement_timeout"), statement);
        assert_eq!(show(&mut session, "application_name"), "caretaker");
        // A plain session of the same role has none of them: they are ours, not the server's.
        let mut plain = cluster.client(&db);
        assert_eq!(show(&mut plain, "lock_timeout"), "0");
    }
}

#[test]
fn the_password_comes_from_the_environment_a_file_or_the_password_file_and_never_shows() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let secret = "c0rrect-h0rse";
    cluster.require_passwords(secret);
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url(&db);
    let head = format!("gateway:\n  url: {url}\n  schema: litellm\n");

    // The daemon's environment, as the library reads it.
    let pgpass = dir.path().join("pgpass");
    let env = |name: &str| -> Option<OsString> {
        match name {
            "PW_OK" => Some(secret.into()),
            "PW_BAD" => Some("wr0ng-h0rse".into()),
            "PGPASSFILE" => Some(pgpass.clone().into()),
            _ => None,
        }
    };
    let connect = |server| connect_with(server, &env);

    // password_env, right and wrong. (Check warns that PW_OK is not set in this shell.)
    let ok = server(dir.path(), &format!("{head}  password_env: PW_OK\n"));
    connect(&ok).unwrap();
    let bad = server(dir.path(), &format!("{head}  password_env: PW_BAD\n"));
    let err = format!("{:#}", connect(&bad).err().expect("a wrong password fails"));
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains(&format!("database {db}")), "{err}");
    assert!(!err.contains("wr0ng") && !err.contains(secret), "{err}");

    // password_file: its first line.
    let file = dir.path().join("pw");
    fs::write(&file, format!("{secret}\n")).unwrap();
    let from_file = server(dir.path(), &format!("{head}  password_file: pw\n"));
    connect(&from_file).unwrap();

    // Neither: libpq's password file, only when private.
    fs::write(
        &pgpass,
        format!(
            "# ours\n*:*:other:*:nope\n{}:5432:{db}:caretaker:{secret}\n",
            cluster.socket_dir().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let libpq = server(dir.path(), &head);
    connect(&libpq).unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let err = format!(
        "{:#}",
        connect(&libpq)
            .err()
            .expect("an open password file is ignored")
    );
    assert!(
        err.contains("password") && !err.contains(secret),
        "a group-readable password file is ignored, as libpq ignores it: {err}"
    );
}

#[test]
fn bad_postgres_keys_are_refused_at_their_key_with_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  database: x.db\n  schema: litellm\n",
            "gateway.url",
            "accepted: one of them",
        ),
        (
            "gateway:\n  url: postgres://caretaker:hunter2@db/litellm\n  schema: litellm\n",
            "gateway.url",
            "password_env",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm?sslmode=allow\n  schema: litellm\n",
            "gateway.url",
            "disable, prefer, require, verify-ca, verify-full",
        ),
        (
            "gateway:\n  database: x.db\n  schema: litellm\n",
            "gateway.schema",
            "accepted with gateway.database: apantli, bobamixer, custom",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: apantli\n",
            "gateway.schema",
            "accepted with gateway.url: litellm, custom",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: litellm\n  busy_timeout: 2s\n",
            "gateway.busy_timeout",
            "only read for a SQLite gateway",
        ),
        (
            "gateway:\n  database: x.db\n  schema: apantli\n  lock_timeout: 1s\n",
            "gateway.lock_timeout",
            "only read for a PostgreSQL gateway",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: litellm\n  lock_timeout: 0s\n",
            "gateway.lock_timeout",
            "accepted: a duration above zero",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: litellm\n  password_env: A\n  password_file: b\n",
            "gateway.password_file",
            "not both",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: litellm\n  password_file: missing-pw\n",
            "gateway.password_file",
            "a file holding only the password",
        ),
        (
            "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: custom\n  table: a.b.c\n  columns: {time: t, time_format: timestamp, model: m, input_tokens: i, output_tokens: o, cost: c}\n",
            "gateway.table",
            "`schema.table`",
        ),
        (
            "gateway:\n  database: x.db\n  schema: custom\n  table: t\n  columns: {time: t, time_format: timestamp, model: m, input_tokens: i, output_tokens: o, cost: c}\n",
            "gateway.columns.time_format",
            "accepted with gateway.database: iso8601",
        ),
    ];
    for (block, key, accepted) in cases {
        let err = gateway(dir.path(), block).unwrap_err();
        assert!(err.contains("jobs.yaml:"), "{block}: no file named: {err}");
        assert!(err.contains(key), "{block}: {key} not named: {err}");
        assert!(
            err.contains(accepted),
            "{block}: {accepted:?} not said: {err}"
        );
        assert!(
            !err.contains("hunter2"),
            "{block}: the secret leaked: {err}"
        );
    }
    // A custom table may be schema-qualified on PostgreSQL.
    let custom = gateway(
        dir.path(),
        "gateway:\n  url: postgres://caretaker@db/gw\n  schema: custom\n  table: gw.usage\n  columns: {time: t, time_format: timestamp, model: m, input_tokens: i, output_tokens: o, cost: c}\n",
    )
    .unwrap();
    assert_eq!(custom.table, "gw.usage");
}

/// Every job kind runs on PostgreSQL now: `check` accepts a pricing job there (it refused it
/// while pricing walked SQLite's rowid only).
#[test]
fn check_accepts_every_job_kind_on_postgresql_pricing_included() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    fs::write(
        &jobs,
        "gateway:\n  url: postgres://caretaker@db/litellm\n  schema: litellm\nstate_dir: state\njobs:\n  old:\n    schedule: \"@daily\"\n    pricing: {prices: p.json}\n  rotate:\n    schedule: \"@daily\"\n    logrotate: {files: [x.log], period: daily}\n",
    )
    .unwrap();
    let out = bins::caretaker()
        .args(["check", "--config"])
        .arg(&jobs)
        .output()
        .unwrap();
    let text = bins::describe(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("not yet on PostgreSQL"), "{text}");
    assert!(caretaker::gateway::postgres::NOT_YET.is_empty());
}

#[test]
fn the_simulator_writes_litellm_batches_and_reports_every_row() {
    let cluster = Cluster::start();
    let db = cluster.empty_db();
    let dir = tempfile::tempdir().unwrap();
    // An empty database: the simulator creates LiteLLM's tables, as the proxy's migrations do.
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.1, dir.path());
    common::wait::until("200 committed rows", common::wait::DEADLINE, || {
        cluster.scalar(&db, "SELECT count(*) FROM \"LiteLLM_SpendLogs\"") >= Some(200)
    });
    let (report, committed) = sim.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.attempted, report.committed);
    let in_table = cluster.request_ids(&db);
    assert_eq!(in_table, committed);
    let mut client = cluster.client(&db);
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM \"LiteLLM_SpendLogs\" s JOIN \"LiteLLM_ErrorLogs\" e USING (request_id) WHERE s.status = 'failure'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(failed > 0, "failed requests have their error-log rows");
    let secret_in_payload: i64 = client
        .query_one(
            "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE proxy_server_request->'headers'->>'authorization' LIKE 'Bearer sk-%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(secret_in_payload as usize, in_table.len());
}

#[test]
fn the_simulator_keeps_writing_across_a_server_restart_and_reports_what_it_lost() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.0, dir.path());
    cluster.restart_fast();
    common::wait::until("rows after the restart", common::wait::DEADLINE, || {
        cluster.scalar(
            &db,
            "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE \"startTime\" > now() AT TIME ZONE 'UTC' - interval '1 second'",
        ) > Some(0)
    });
    let (report, committed) = sim.stop();
    let in_table = cluster.request_ids(&db);
    // Whatever the restart cost is in the report: every row it calls committed is there.
    assert_eq!(in_table, committed);
    assert_eq!(report.attempted, report.committed + report.failed);
}

#[test]
fn sslmode_is_libpq_s_over_rustls_with_the_ca_file() {
    let mut cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for 127.0.0.1 and localhost; 127.0.0.2 is the same server under
    // a name the certificate does not have.
    let certs = common::health::make_certs(dir.path());
    let port = cluster.with_tls(&certs.cert, &certs.key);
    let no_env = |_: &str| -> Option<OsString> { None };
    let tls_of = |host: &str, mode: &str, ca: bool| -> Result<bool, String> {
        let ca_line = if ca {
            format!("  ca_file: {}\n", certs.ca.display())
        } else {
            String::new()
        };
        let server = server(
            dir.path(),
            &format!(
                "gateway:\n  url: postgres://caretaker@{host}:{port}/{db}?sslmode={mode}\n  schema: litellm\n{ca_line}"
            ),
        );
        let mut session = connect_with(&server, &no_env).map_err(|e| format!("{e:#}"))?;
        Ok(session
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0))
    };
    assert_eq!(tls_of("127.0.0.1", "disable", false), Ok(false));
    assert_eq!(tls_of("127.0.0.1", "prefer", false), Ok(true));
    assert_eq!(tls_of("127.0.0.2", "require", false), Ok(true));
    assert_eq!(tls_of("localhost", "verify-full", true), Ok(true));
    assert_eq!(tls_of("127.0.0.1", "verify-full", true), Ok(true));
    assert_eq!(tls_of("127.0.0.2", "verify-ca", true), Ok(true));
    for (host, mode, ca, why) in [
        ("localhost", "verify-full", false, "UnknownIssuer"),
        ("127.0.0.2", "verify-ca", false, "UnknownIssuer"),
        ("127.0.0.2", "verify-full", true, "not valid for name"),
    ] {
        let err = tls_of(host, mode, ca).unwrap_err();
        assert!(
            err.contains(why) && err.contains("sslmode"),
            "{host} {mode} ca={ca}: {err}"
        );
    }
}

#[test]
fn the_simulator_waits_for_a_lock_as_the_proxy_does_and_reports_the_slow_batch() {
    let cluster = Cluster::start();
    let db = cluster.litellm_db();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_postgres(&cluster.url(&db), 100.0, 0.0, dir.path());
    let mut locker = cluster.client(&db);
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE \"LiteLLM_SpendLogs\" IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // Held until a batch of the simulator has waited for it for over a second.
    common::wait::until(
        "a batch waiting over a second for the lock",
        common::wait::DEADLINE,
        || {
            cluster.scalar(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND now() - query_start > interval '1200 ms'",
        ) > Some(0)
        },
    );
    tx.commit().unwrap();
    drop(locker);
    let (report, committed) = sim.stop();
    // No lock_timeout, as the proxy: the batch waited and lost nothing.
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(cluster.request_ids(&db), committed);
    let slow = report
        .slow
        .iter()
        .find(|s| s.ms >= 1200.0)
        .unwrap_or_else(|| panic!("the wait is not in the report: {report:?}"));
    assert!(slow.rows >= 1, "{slow:?}");
}
