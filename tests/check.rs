//! `caretaker check` on good and bad jobs files, through the real binary.

mod harness;

use harness::Sandbox;

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

#[test]
fn bad_files_are_refused_with_file_line_column_key_and_what_is_accepted() {
    for (what, jobs, place, phrase) in BAD {
        let sb = Sandbox::new();
        sb.write_jobs(jobs);
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
}

#[test]
fn a_bad_time_zone_is_placed_at_its_value() {
    let sb = Sandbox::new();
    let text = format!(
        "{}timezone: Europe/Berlinn\njobs:\n  b:\n    on_signal: USR1\n    integrity: {{}}\n",
        sb.header()
    );
    harness::write_replace(&sb.jobs_file(), &text);
    let out = sb.caretaker(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("jobs.yaml:9:11: timezone: `Europe/Berlinn` is not an IANA time zone"),
        "{stderr}"
    );
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let sb = Sandbox::new();
    let text = "gateway:\n  database: requests.db\n  schema: apantlee\nbogus: 1\ntimezone: Mars/Base\njobs:\n  a:\n    schedule: \"61 * * * *\"\n    integrity: {check: deep}\n  b:\n    integrity: {}\n";
    harness::write_replace(&sb.jobs_file(), text);
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
    let out = std::process::Command::new(harness::BIN)
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
}

#[test]
fn caretaker_config_names_the_file_when_no_flag_is_given() {
    let sb = Sandbox::new();
    sb.write_jobs("  b:\n    on_signal: USR1\n    integrity: {}\n");
    let out = std::process::Command::new(harness::BIN)
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
