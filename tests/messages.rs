//! What a person reads from `status` and the daemon's log, through the real binary.

mod common;

use std::time::Duration;

use common::sandbox::Sandbox;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn status_names_the_time_zone_on_a_line_of_its_own_above_the_table() {
    let sb = Sandbox::new();
    sb.write_jobs("  check:\n    on_signal: USR1\n    integrity: {}\n");
    let out = sb.caretaker(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    // A last line without what follows it ran into the next output (a warning on stderr
    // shown after it): the zone heads the table instead.
    assert_eq!(lines.first(), Some(&"times in UTC"), "{stdout}");
    assert!(lines[1].starts_with("JOB "), "{stdout}");
    assert_eq!(
        stdout.matches("times in").count(),
        1,
        "the zone is said once: {stdout}"
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
}

#[test]
fn a_scheduled_run_queued_behind_another_jobs_gateway_lock_is_not_called_still_going() {
    let sb = Sandbox::new();
    // Due every second; it touches the gateway, so it waits for the gateway lock.
    sb.write_jobs("  every-second:\n    schedule: \"* * * * * *\"\n    integrity: {}\n");
    // Another job holds the gateway lock, taken as the runner takes it.
    let stop = caretaker::jobs::Stop::default();
    let held = caretaker::locks::gateway(&sb.path("state"), "nightly-backup", &stop)
        .expect("lock file")
        .expect("not stopped");
    let daemon = sb.start_daemon();
    daemon.wait_log(
        "waiting for the gateway lock held by job `nightly-backup`",
        LONG,
    );
    daemon.wait_log(
        "the previous run is still queued, waiting for the gateway lock held by job `nightly-backup`",
        LONG,
    );
    assert_eq!(
        daemon.count_log("the previous run is still going"),
        0,
        "{}",
        daemon.log_text()
    );
    drop(held);
}
