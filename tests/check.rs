//! `caretaker check` on good and bad jobs files, through the real binary.

mod common;

use common::sandbox::Sandbox;

#[test]
fn a_good_file_lists_every_job_with_its_next_three_runs() {
    let sb = Sandbox::new();
    sb.write_jobs(
        "  nightly:\n    schedule: \"0 2 * * *\"\n    on_signal: USR1\n    integrity: {check: quick}\n  on-demand:\n    on_signal: [USR1, USR2]\n    integrity: {}\n",
    );
    let out = sb.caretaker(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid; 2 jobs"), "{stdout}");
    let nightly = stdout
        .lines()
        .find(|l| l.contains("schedule \"0 2 * * *\""))
        .expect(&stdout);
    assert_eq!(nightly.matches("02:00:00").count(), 3, "{nightly}");
    assert!(stdout.contains("on SIGUSR1, SIGUSR2"), "{stdout}");
}

/// (what, jobs section, expected `file:line:column: key path` and a phrase of the message)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "type error",
        "  b:\n    schedule: \"@daily\"\n    backup:\n      to: backups\n      keep: {daily: seven}\n",
        "jobs.yaml:14:21: jobs.b.backup.keep.daily",
        "expected an integer, found `seven`",
    ),
    (
        "unknown key",
        "  b:\n    schedule: \"@daily\"\n    integrity: {check: quick, depth: 3}\n",
        "jobs.yaml:12:31: jobs.b.integrity.depth",
        "unknown key `depth`; accepted keys here: check",
    ),
    (
        "bad cron",
        "  b:\n    schedule: \"0 25 * * *\"\n    integrity: {}\n",
        "jobs.yaml:11:15: jobs.b.schedule",
        "accepted: 5 fields",
    ),
    (
        "duplicate job",
        "  b:\n    schedule: \"@daily\"\n    integrity: {}\n  b:\n    on_signal: USR1\n    integrity: {}\n",
        "jobs.yaml:13:3: jobs.b",
        "duplicate key `b` (first defined at line 10)",
    ),
    (
        "neither schedule nor signal",
        "  b:\n    integrity: {}\n",
        "jobs.yaml:10:3: jobs.b",
        "neither `schedule` nor `on_signal`",
    ),
    (
        "two kinds",
        "  b:\n    on_signal: USR1\n    integrity: {}\n    maintenance: {}\n",
        "jobs.yaml:13:5: jobs.b.maintenance",
        "accepted: exactly one of",
    ),
    (
        "bad signal",
        "  b:\n    on_signal: HUP\n    integrity: {}\n",
        "jobs.yaml:11:16: jobs.b.on_signal",
        "accepted: USR1, USR2",
    ),
    (
        "bad share",
        "  b:\n    on_signal: USR1\n    maintenance: {vacuum_threshold: 120%}\n",
        "jobs.yaml:12:37: jobs.b.maintenance.vacuum_threshold",
        "percentage from 0% to 100%",
    ),
];

/// `check` refuses the sandbox's jobs file (exit 2) naming `place` and saying `phrase`.
fn assert_refused(sb: &Sandbox, what: &str, place: &str, phrase: &str) {
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert!(
        stderr.contains(place),
        "{what}: expected `{place}` in:\n{stderr}"
    );
    assert!(
        stderr.contains(phrase),
        "{what}: expected `{phrase}` in:\n{stderr}"
    );
}

#[test]
fn bad_files_are_refused_with_file_line_column_key_and_what_is_accepted() {
    for (what, jobs, place, phrase) in BAD {
        let sb = Sandbox::new();
        sb.write_jobs(jobs);
        assert_refused(&sb, what, place, phrase);
    }
}

#[test]
fn a_bad_time_zone_is_placed_at_its_value() {
    let sb = Sandbox::new();
    let text = format!(
        "{}timezone: Europe/Berlinn\njobs:\n  b:\n    on_signal: USR1\n    integrity: {{}}\n",
        sb.header()
    );
    common::files::write_replace(&sb.jobs_file(), &text);
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("jobs.yaml:9:11: timezone: `Europe/Berlinn` is not an IANA time zone"),
        "{stderr}"
    );
}

#[test]
fn an_empty_gateway_database_path_is_refused_at_its_key() {
    // An empty path would resolve to the jobs file's own directory.
    let sb = Sandbox::new();
    let text = sb
        .header()
        .replace("database: requests.db", "database: \"\"")
        + "jobs:\n  b:\n    on_signal: USR1\n    integrity: {}\n";
    common::files::write_replace(&sb.jobs_file(), &text);
    assert_refused(
        &sb,
        "empty gateway.database",
        "jobs.yaml:2:3: gateway.database",
        "is empty; accepted: a path",
    );
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let sb = Sandbox::new();
    let text = "gateway:\n  database: requests.db\n  schema: apantlee\nbogus: 1\ntimezone: Mars/Base\njobs:\n  a:\n    schedule: \"61 * * * *\"\n    integrity: {check: deep}\n  b:\n    integrity: {}\n";
    common::files::write_replace(&sb.jobs_file(), text);
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    for place in [
        "jobs.yaml:3:11: gateway.schema",
        "jobs.yaml:4:1: bogus",
        "jobs.yaml:5:11: timezone",
        "jobs.yaml:8:15: jobs.a.schedule",
        "jobs.yaml:9:24: jobs.a.integrity.check",
        "jobs.yaml:10:3: jobs.b",
    ] {
        assert!(stderr.contains(place), "expected `{place}` in:\n{stderr}");
    }
    assert!(stderr.contains("6 errors in the jobs file"), "{stderr}");
}

#[test]
fn a_missing_file_is_a_usage_error_naming_the_path() {
    let out = std::process::Command::new(common::bins::caretaker_bin())
        .args(["check", "--config", "/nonexistent/jobs.yaml"])
        .env_remove("CARETAKER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/jobs.yaml") && stderr.contains("cannot read"),
        "{stderr}"
    );
    // The path was given: a hint to give it would mislead.
    assert!(!stderr.contains("--config"), "{stderr}");
}

#[test]
fn caretaker_config_names_the_file_when_no_flag_is_given() {
    let sb = Sandbox::new();
    sb.write_jobs("  b:\n    on_signal: USR1\n    integrity: {}\n");
    let out = std::process::Command::new(common::bins::caretaker_bin())
        .arg("check")
        .env("CARETAKER_CONFIG", sb.jobs_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Values that read well but can never work: refused by `check` at their own key.
const NEVER_WORK: &[(&str, &str, &str, &str)] = &[
    (
        "30 February",
        "  b:\n    schedule: \"0 0 30 2 *\"\n    integrity: {}\n",
        "jobs.yaml:11:15: jobs.b.schedule",
        "`0 0 30 2 *` never fires",
    ),
    (
        "31 February, with seconds",
        "  b:\n    schedule: \"0 0 0 31 2 *\"\n    integrity: {}\n",
        "jobs.yaml:11:15: jobs.b.schedule",
        "never fires",
    ),
    (
        "verify of a job that is not a backup",
        "  b:\n    on_signal: USR1\n    integrity: {}\n  v:\n    on_signal: USR1\n    verify: {backups_of: b}\n",
        "jobs.yaml:15:14: jobs.v.verify.backups_of",
        "names job `b`, whose kind is integrity, not backup; accepted: the name of a job with a `backup` block",
    ),
    (
        "backup age of a job that is not a backup",
        "  b:\n    on_signal: USR1\n    integrity: {}\n  h:\n    on_signal: USR1\n    health:\n      backup_max_age: {job: b, age: 1d}\n",
        "jobs.yaml:16:24: jobs.h.health.backup_max_age.job",
        "whose kind is integrity, not backup",
    ),
    (
        "older_than beyond any date",
        "  a:\n    on_signal: USR1\n    archive: {to: arch, older_than: 9999999999d}\n",
        "jobs.yaml:12:37: jobs.a.archive.older_than",
        "accepted: up to 36500d (100 years)",
    ),
    (
        "backup to an empty path",
        "  b:\n    on_signal: USR1\n    backup: {to: \"\", keep: {last: 2}}\n",
        "jobs.yaml:12:14: jobs.b.backup.to",
        "is empty; accepted: a path",
    ),
    (
        "a job timeout over a week",
        "  b:\n    on_signal: USR1\n    timeout: 8d\n    integrity: {}\n",
        "jobs.yaml:12:5: jobs.b.timeout",
        "`8d` is longer than this key allows; accepted: up to 7d",
    ),
    (
        "a job timeout that overflows",
        "  b:\n    on_signal: USR1\n    timeout: 18446744073709551615s\n    integrity: {}\n",
        "jobs.yaml:12:14: jobs.b.timeout",
        "accepted: up to 36500d",
    ),
    (
        "a size beyond any disk",
        "  h:\n    on_signal: USR1\n    health: {database_max_size: 18446744073709551615}\n",
        "jobs.yaml:12:33: jobs.h.health.database_max_size",
        "accepted: up to 1024TiB",
    ),
];

#[test]
fn values_that_can_never_work_are_refused_at_their_key() {
    for (what, jobs, place, phrase) in NEVER_WORK {
        let sb = Sandbox::new();
        sb.write_jobs(jobs);
        assert_refused(&sb, what, place, phrase);
    }
}

/// (header line, its replacement, expected place, phrase): durations the daemon cannot use.
const BOUNDS: &[(&str, &str, &str, &str)] = &[
    (
        "busy_timeout: 1s",
        "busy_timeout: 25d",
        "jobs.yaml:4:3: gateway.busy_timeout",
        "`25d` is longer than this key allows; accepted: up to 10m",
    ),
    (
        "shutdown_timeout: 5s",
        "shutdown_timeout: 18446744073709551615s",
        "jobs.yaml:6:19: shutdown_timeout",
        "accepted: up to 36500d (100 years)",
    ),
    (
        "shutdown_timeout: 5s",
        "shutdown_timeout: 2h",
        "jobs.yaml:6:1: shutdown_timeout",
        "accepted: up to 1h",
    ),
    (
        "file: alerts.jsonl",
        "file: alerts.jsonl\n  repeat_after: 400d",
        "jobs.yaml:9:3: alerts.repeat_after",
        "accepted: up to 365d",
    ),
    (
        "file: alerts.jsonl",
        "file: alerts.jsonl\n  email:\n    smtp: {host: localhost, tls: none, timeout: 18446744073709551615s}\n    from: a@example.com\n    to: [b@example.com]",
        "jobs.yaml:10:40: alerts.email.smtp.timeout",
        "accepted: up to 1h",
    ),
];

#[test]
fn every_duration_has_an_upper_bound_said_in_the_error() {
    for (from, to, place, phrase) in BOUNDS {
        let sb = Sandbox::new();
        let text = format!(
            "{}jobs:\n  b:\n    on_signal: USR1\n    integrity: {{}}\n",
            sb.header().replace(from, to)
        );
        common::files::write_replace(&sb.jobs_file(), &text);
        assert_refused(&sb, to, place, phrase);
    }
}

#[test]
fn a_file_that_is_not_utf8_is_placed_at_its_first_bad_byte() {
    let sb = Sandbox::new();
    let mut bytes = sb.header().into_bytes();
    // Line 9, the fifth byte of `jobs:`.
    let offset = bytes.len() + 4;
    bytes.extend(b"jobs\xff:\n");
    std::fs::write(sb.jobs_file(), &bytes).unwrap();
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("jobs.yaml:9:5: byte 0xff"), "{stderr}");
    assert!(
        stderr.contains(&format!("at byte offset {offset} ")),
        "{stderr}"
    );
    assert!(stderr.contains("accepted: a UTF-8 text file"), "{stderr}");
    // The path was given: it is the file the operator meant.
    assert!(!stderr.contains("--config"), "{stderr}");
}

#[test]
fn an_empty_file_says_so_and_shows_a_minimal_one() {
    for text in ["", "\n\n", "# only a comment\n   # and another\n"] {
        let sb = Sandbox::new();
        common::files::write_replace(&sb.jobs_file(), text);
        let out = sb.caretaker(&["check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains("the jobs file is empty"),
            "{text:?}: {stderr}"
        );
        assert!(
            stderr.contains("gateway:\n  database: ")
                && stderr.contains("  schema: apantli\njobs:\n"),
            "{text:?}: {stderr}"
        );
    }
    // The minimal file shown is itself a valid one.
    let sb = Sandbox::new();
    common::files::write_replace(&sb.jobs_file(), "");
    let stderr = String::from_utf8_lossy(&sb.caretaker(&["check"]).stderr).into_owned();
    let minimal = stderr
        .split_once("at least:\n")
        .and_then(|(_, rest)| rest.split_once("\n(every key"))
        .map(|(minimal, _)| minimal.to_string())
        .expect(&stderr);
    common::files::write_replace(&sb.jobs_file(), &minimal);
    let out = sb.caretaker(&["check"]);
    assert!(
        out.status.success(),
        "{minimal}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tab_in_the_indentation_is_placed_at_the_tab() {
    let sb = Sandbox::new();
    sb.write_jobs("  b:\n  \ton_signal: USR1\n    integrity: {}\n");
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("jobs.yaml:11:3: a tab is used for indentation here; accepted: spaces only"),
        "{stderr}"
    );
}

/// `check` runs in the operator's shell, the daemon in its own environment: an SMTP password
/// variable missing from the shell is a warning for `check` and an error for the commands
/// that would send mail.
#[test]
fn an_unset_password_variable_warns_at_check_and_stops_run_job() {
    let sb = Sandbox::new();
    let text = format!(
        "{}  email:\n    smtp: {{host: smtp.example.com, username: u, password_env: CARETAKER_TEST_UNSET_PASSWORD}}\n    from: a@example.com\n    to: [b@example.com]\njobs:\n  b:\n    on_signal: USR1\n    integrity: {{}}\n",
        sb.header()
    );
    common::files::write_replace(&sb.jobs_file(), &text);
    let check = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: alerts.email.smtp.password_env: environment variable CARETAKER_TEST_UNSET_PASSWORD is not set in this shell"),
        "{stderr}"
    );
    for args in [&["run-job", "b"][..], &["run"]] {
        let out = sb.caretaker(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("alerts.email.smtp.password_env: environment variable CARETAKER_TEST_UNSET_PASSWORD is not set"),
            "{args:?}: {stderr}"
        );
    }
}
