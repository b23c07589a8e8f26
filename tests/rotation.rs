//! Log rotation on real directories, real files and real writer processes, after logrotate's own test suite.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use caretaker::jobs::logrotate::{
    Action, FileState, Notify, NotifySignal, Outcome, Period, Plan, RotateConfig, RotateSpec,
    SkipReason, Trigger, execute, plan, survey,
};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use tempfile::TempDir;

use common::files::names;
use common::logwriter::{LogWriter, count_lines};

type State = BTreeMap<PathBuf, FileState>;

/// A `logrotate` block as YAML would give it, with `files` relative to `dir`.
fn spec(dir: &Path, block: Value) -> RotateSpec {
    let config: RotateConfig = serde_json::from_value(block).expect("block deserializes");
    config.validate(dir).expect("block is valid")
}

fn write(path: &Path, content: &str) {
    fs::write(path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_gz(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("decompressing {}: {e}", path.display()));
    text
}

fn set_mtime(path: &Path, when: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .unwrap();
}

/// State saying `path` was last rotated `ago` before `now`.
fn rotated_ago(path: &Path, now: DateTime<Utc>, ago: chrono::Duration) -> State {
    BTreeMap::from([(
        path.to_owned(),
        FileState {
            last_rotated: now - ago,
        },
    )])
}

fn run(spec: &RotateSpec, state: &State, now: DateTime<Utc>, tz: Tz) -> (Plan, Outcome) {
    let (facts, errors) = survey(spec);
    assert!(errors.is_empty(), "survey errors: {errors:?}");
    let plan = plan(spec, &facts, state, now, tz);
    let outcome = execute(&plan);
    (plan, outcome)
}

fn yesterday() -> chrono::Duration {
    chrono::Duration::days(1)
}

fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    common::wait::until(what, Duration::from_secs(30), condition);
}

#[test]
fn numbered_copies_shift_and_the_oldest_beyond_rotate_is_deleted() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "three\n");
    write(&dir.path().join("app.log.1"), "two\n");
    write(
        &dir.path().join("app.log.2.gz"),
        "not really gzip, never read\n",
    );
    write(&dir.path().join("app.log.3"), "oldest\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["*.log"], "period": "daily", "rotate": 3}),
    );
    let now = Utc::now();
    let (plan, outcome) = run(
        &spec,
        &rotated_ago(&log, now, yesterday()),
        now,
        chrono_tz::UTC,
    );
    print!("{plan}");
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(
        names(dir.path()),
        ["app.log", "app.log.1", "app.log.2", "app.log.3.gz"]
    );
    assert_eq!(read(&log), "");
    assert_eq!(read(&dir.path().join("app.log.1")), "three\n");
    assert_eq!(read(&dir.path().join("app.log.2")), "two\n");
    assert_eq!(outcome.state[&log].last_rotated, now);
    let shown = plan.to_string();
    assert!(shown.contains("delete"), "{shown}");
    assert!(shown.contains("app.log.3 (beyond rotate: 3)"), "{shown}");
}

#[test]
fn rotate_zero_deletes_instead_of_keeping() {
    for method in ["create", "copytruncate"] {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("app.log");
        write(&log, "discard me\n");
        write(&dir.path().join("app.log.1"), "old\n");
        let spec = spec(
            dir.path(),
            json!({"files": ["app.log"], "period": "daily", "rotate": 0, "method": method}),
        );
        let now = Utc::now();
        let (_, outcome) = run(
            &spec,
            &rotated_ago(&log, now, yesterday()),
            now,
            chrono_tz::UTC,
        );
        assert!(outcome.is_success(), "{method}: {outcome}");
        assert_eq!(names(dir.path()), ["app.log"], "{method}");
        assert_eq!(read(&log), "", "{method}");
    }
}

#[test]
fn copies_older_than_max_age_are_deleted_when_rotating() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "now\n");
    for (name, days) in [("app.log.1", 5), ("app.log.2", 40), ("app.log.3.gz", 45)] {
        let path = dir.path().join(name);
        write(&path, name);
        set_mtime(
            &path,
            SystemTime::now() - Duration::from_secs(days * 86_400),
        );
    }
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "weekly", "rotate": 9, "max_age": "30d"}),
    );
    let now = Utc::now();
    let state = rotated_ago(&log, now, chrono::Duration::days(8));
    let (plan, outcome) = run(&spec, &state, now, chrono_tz::UTC);
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(names(dir.path()), ["app.log", "app.log.1", "app.log.2"]);
    assert_eq!(read(&dir.path().join("app.log.2")), "app.log.1");
    assert!(
        plan.to_string().contains("older than max_age: 30d)"),
        "{plan}"
    );
}

#[test]
fn compress_gzips_the_new_copy_and_keeps_its_mtime() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "line 1\nline 2\n");
    fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).unwrap();
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    set_mtime(&log, written);
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "daily", "compress": true}),
    );
    let now = Utc::now();
    let (_, outcome) = run(
        &spec,
        &rotated_ago(&log, now, yesterday()),
        now,
        chrono_tz::UTC,
    );
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(names(dir.path()), ["app.log", "app.log.1.gz"]);
    let gz = dir.path().join("app.log.1.gz");
    assert_eq!(read_gz(&gz), "line 1\nline 2\n");
    let meta = fs::metadata(&gz).unwrap();
    assert_eq!(meta.modified().unwrap(), written);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(fs::metadata(&log).unwrap().mode() & 0o777, 0o640);
}

#[test]
fn delay_compress_compresses_the_previous_copy_on_the_next_rotation() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "compress": true, "delay_compress": true}),
    );
    let mut state = State::new();
    for (round, want) in [
        (1, vec!["app.log", "app.log.1"]),
        (2, vec!["app.log", "app.log.1", "app.log.2.gz"]),
        (
            3,
            vec!["app.log", "app.log.1", "app.log.2.gz", "app.log.3.gz"],
        ),
    ] {
        write(&log, &format!("round {round}\n"));
        let (_, outcome) = run(&spec, &state, Utc::now(), chrono_tz::UTC);
        assert!(outcome.is_success(), "{outcome}");
        state.extend(outcome.state);
        assert_eq!(names(dir.path()), want, "round {round}");
    }
    assert_eq!(read(&dir.path().join("app.log.1")), "round 3\n");
    assert_eq!(read_gz(&dir.path().join("app.log.2.gz")), "round 2\n");
    assert_eq!(read_gz(&dir.path().join("app.log.3.gz")), "round 1\n");
}

#[test]
fn date_suffix_names_copies_by_local_date_and_a_second_rotation_that_day_is_refused() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "first\n");
    write(&dir.path().join("app.log-20261101.gz"), "kept");
    write(&dir.path().join("app.log-20261001.gz"), "beyond rotate");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "daily", "max_size": "1KB",
               "rotate": 2, "date_suffix": true}),
    );
    // 23:30 UTC on 22 November is already 23 November in Berlin.
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 23, 30, 0).unwrap();
    let berlin = chrono_tz::Europe::Berlin;
    let (_, outcome) = run(&spec, &rotated_ago(&log, now, yesterday()), now, berlin);
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(
        names(dir.path()),
        ["app.log", "app.log-20261101.gz", "app.log-20261123"]
    );

    // The same day, max_size forces another rotation: its target is taken.
    write(&log, &"x".repeat(2000));
    let (plan, outcome) = run(&spec, &outcome.state, now, berlin);
    let target = dir.path().join("app.log-20261123");
    assert_eq!(
        plan.files[0].action,
        Action::Skip(SkipReason::TargetExists(target))
    );
    assert!(!outcome.is_success());
    assert!(
        outcome.files[0].errors[0].contains("already exists"),
        "{outcome}"
    );
    assert!(
        outcome.state.is_empty(),
        "a refused rotation records no state"
    );
    assert_eq!(read(&log).len(), 2000, "the live log is left alone");
}

#[test]
fn if_empty_decides_whether_an_empty_log_rotates() {
    for (if_empty, rotated) in [(false, false), (true, true)] {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("app.log");
        write(&log, "");
        let spec = spec(
            dir.path(),
            json!({"files": ["app.log"], "period": "daily", "if_empty": if_empty}),
        );
        let now = Utc::now();
        let (plan, outcome) = run(
            &spec,
            &rotated_ago(&log, now, yesterday()),
            now,
            chrono_tz::UTC,
        );
        assert!(outcome.is_success(), "{outcome}");
        assert_eq!(outcome.files[0].rotated, rotated, "if_empty: {if_empty}");
        if !rotated {
            assert_eq!(plan.files[0].action, Action::Skip(SkipReason::Empty));
            assert_eq!(names(dir.path()), ["app.log"]);
            assert!(outcome.state.is_empty());
        } else {
            assert_eq!(names(dir.path()), ["app.log", "app.log.1"]);
        }
    }
}

#[test]
fn min_size_vetoes_a_due_rotation() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "short\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "daily", "min_size": "1KB"}),
    );
    let now = Utc::now();
    let (plan, outcome) = run(
        &spec,
        &rotated_ago(&log, now, yesterday()),
        now,
        chrono_tz::UTC,
    );
    assert_eq!(
        plan.files[0].action,
        Action::Skip(SkipReason::BelowMinSize {
            size: 6,
            min_size: 1000
        })
    );
    assert!(outcome.is_success());
    assert_eq!(names(dir.path()), ["app.log"]);
}

#[test]
fn max_size_rotates_before_the_period_is_over() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "monthly", "max_size": "1KiB"}),
    );
    let now = Utc::now();
    let state = rotated_ago(&log, now, chrono::Duration::minutes(1));

    write(&log, &"x".repeat(1024));
    let (plan, _) = run(&spec, &state, now, chrono_tz::UTC);
    assert!(
        matches!(
            plan.files[0].action,
            Action::Skip(SkipReason::NotDue {
                period: Period::Monthly,
                ..
            })
        ),
        "exactly max_size is not over it: {plan}"
    );

    write(&log, &"x".repeat(1025));
    let (plan, outcome) = run(&spec, &state, now, chrono_tz::UTC);
    assert_eq!(
        plan.files[0].action,
        Action::Rotate(Trigger::MaxSize {
            size: 1025,
            max_size: 1024
        })
    );
    assert!(outcome.files[0].rotated, "{outcome}");
    assert_eq!(names(dir.path()), ["app.log", "app.log.1"]);
}

#[test]
fn a_file_seen_for_the_first_time_is_recorded_not_rotated() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "old content\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "period": "daily", "max_size": "100MB"}),
    );
    let now = Utc::now();
    let (plan, outcome) = run(&spec, &State::new(), now, chrono_tz::UTC);
    assert_eq!(plan.files[0].action, Action::Record);
    assert!(plan.to_string().contains("first seen"), "{plan}");
    assert_eq!(names(dir.path()), ["app.log"]);
    assert_eq!(
        outcome.state,
        BTreeMap::from([(log.clone(), FileState { last_rotated: now })])
    );

    // The next day it is due.
    let later = now + yesterday();
    let (_, outcome) = run(&spec, &outcome.state, later, chrono_tz::UTC);
    assert!(outcome.files[0].rotated, "{outcome}");
}

#[test]
fn missing_files_are_an_error_unless_missing_ok() {
    for missing_ok in [false, true] {
        let dir = TempDir::new().unwrap();
        let spec = spec(
            dir.path(),
            json!({"files": ["gone.log", "*.log"], "period": "daily", "missing_ok": missing_ok}),
        );
        let (facts, errors) = survey(&spec);
        assert!(facts.is_empty());
        if missing_ok {
            assert!(errors.is_empty(), "{errors:?}");
        } else {
            assert_eq!(errors.len(), 2, "{errors:?}");
            assert!(errors[0].path.ends_with("gone.log"));
            assert!(errors[0].message.contains("missing_ok"), "{}", errors[0]);
        }
    }
}

#[test]
fn a_loose_glob_never_matches_rotated_copies() {
    let dir = TempDir::new().unwrap();
    for name in [
        "app.log",
        "app.log.1",
        "app.log.2.gz",
        "app.log-20261120",
        "app.log-20261121.gz",
        "other.txt",
        ".hidden",
    ] {
        write(&dir.path().join(name), name);
    }
    let spec = spec(dir.path(), json!({"files": ["*"], "period": "daily"}));
    let (facts, errors) = survey(&spec);
    assert!(errors.is_empty(), "{errors:?}");
    let matched: Vec<_> = facts.iter().map(|f| f.path.file_name().unwrap()).collect();
    assert_eq!(matched, ["app.log", "other.txt"]);
    let mut copies: Vec<_> = facts[0]
        .copies
        .iter()
        .map(|c| c.path.file_name().unwrap().to_str().unwrap())
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        [
            "app.log-20261120",
            "app.log-20261121.gz",
            "app.log.1",
            "app.log.2.gz"
        ]
    );
}

#[test]
fn a_symbolic_link_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let target_dir = TempDir::new().unwrap();
    let target = target_dir.path().join("real.log");
    write(&target, "content\n");
    let link = dir.path().join("app.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let spec = spec(dir.path(), json!({"files": ["*.log"], "max_size": "1B"}));
    let (plan, outcome) = run(&spec, &State::new(), Utc::now(), chrono_tz::UTC);
    assert_eq!(plan.files[0].action, Action::Skip(SkipReason::Symlink));
    assert!(!outcome.is_success());
    assert!(
        outcome.files[0].errors[0].contains("symbolic link"),
        "{outcome}"
    );
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(names(dir.path()), ["app.log"]);
    assert_eq!(names(target_dir.path()), ["real.log"]);
    assert_eq!(read(&target), "content\n");
}

#[test]
fn a_hard_linked_file_is_skipped_with_a_warning() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "content\n");
    fs::hard_link(&log, dir.path().join("alias.log")).unwrap();
    let spec = spec(dir.path(), json!({"files": ["app.log"], "max_size": "1B"}));
    let (plan, outcome) = run(&spec, &State::new(), Utc::now(), chrono_tz::UTC);
    assert_eq!(
        plan.files[0].action,
        Action::Skip(SkipReason::HardLinked { nlink: 2 })
    );
    assert!(
        outcome.files[0].errors[0].contains("2 hard links"),
        "{outcome}"
    );
    assert_eq!(names(dir.path()), ["alias.log", "app.log"]);
}

/// Name, period, zone, last rotation, now, and whether the file is due.
type PeriodCase = (&'static str, Period, Tz, DateTime<Utc>, DateTime<Utc>, bool);

#[test]
fn periods_follow_local_calendar_dates_across_dst_and_iso_week_53() {
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;
    let local = |tz: Tz, y, mo, d, h, mi| {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .with_timezone(&Utc)
    };
    #[rustfmt::skip]
    let cases: &[PeriodCase] = &[
        // Spring forward: one local day, two UTC dates.
        ("berlin spring day", Period::Daily, Berlin, local(Berlin, 2026, 3, 29, 0, 30), local(Berlin, 2026, 3, 29, 23, 30), false),
        ("berlin after spring day", Period::Daily, Berlin, local(Berlin, 2026, 3, 29, 0, 30), local(Berlin, 2026, 3, 30, 0, 0), true),
        // Fall back: two local days, one UTC date.
        ("berlin fall midnight", Period::Daily, Berlin, local(Berlin, 2026, 10, 25, 23, 30), local(Berlin, 2026, 10, 26, 0, 10), true),
        ("berlin fall day", Period::Daily, Berlin, local(Berlin, 2026, 10, 25, 0, 5), local(Berlin, 2026, 10, 25, 23, 55), false),
        ("new york fall day", Period::Daily, New_York, local(New_York, 2026, 11, 1, 0, 30), local(New_York, 2026, 11, 1, 23, 30), false),
        ("new york next day", Period::Daily, New_York, local(New_York, 2026, 11, 1, 23, 30), local(New_York, 2026, 11, 2, 0, 30), true),
        // ISO week 53 of 2026 runs from Monday 28 December to Sunday 3 January 2027.
        ("week 53 across new year", Period::Weekly, Berlin, local(Berlin, 2026, 12, 28, 9, 0), local(Berlin, 2027, 1, 3, 23, 0), false),
        ("week 1 of 2027", Period::Weekly, Berlin, local(Berlin, 2027, 1, 3, 23, 0), local(Berlin, 2027, 1, 4, 0, 30), true),
        ("week 52 to 53", Period::Weekly, Berlin, local(Berlin, 2026, 12, 27, 12, 0), local(Berlin, 2026, 12, 28, 0, 1), true),
        ("weekly across spring dst", Period::Weekly, Berlin, local(Berlin, 2026, 3, 23, 0, 30), local(Berlin, 2026, 3, 29, 23, 30), false),
        // Month boundaries in local time, not UTC.
        ("berlin new month", Period::Monthly, Berlin, local(Berlin, 2026, 10, 31, 23, 30), local(Berlin, 2026, 11, 1, 0, 30), true),
        ("berlin same month", Period::Monthly, Berlin, local(Berlin, 2026, 3, 1, 0, 30), local(Berlin, 2026, 3, 31, 23, 59), false),
        ("new year", Period::Monthly, New_York, local(New_York, 2026, 12, 31, 23, 0), local(New_York, 2027, 1, 1, 0, 5), true),
        // A clock set back never makes a file due.
        ("clock set back", Period::Daily, Berlin, local(Berlin, 2026, 6, 2, 12, 0), local(Berlin, 2026, 6, 1, 12, 0), false),
    ];
    for &(name, period, tz, last, now, due) in cases {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("app.log");
        write(&log, "line\n");
        let period_name = period.to_string();
        let spec = spec(
            dir.path(),
            json!({"files": ["app.log"], "period": period_name}),
        );
        let state = BTreeMap::from([(log.clone(), FileState { last_rotated: last })]);
        let (plan, outcome) = run(&spec, &state, now, tz);
        assert_eq!(outcome.files[0].rotated, due, "{name}: {plan}");
        if due {
            assert_eq!(
                plan.files[0].action,
                Action::Rotate(Trigger::Period {
                    period,
                    last_rotated: last
                }),
                "{name}"
            );
            assert_eq!(names(dir.path()), ["app.log", "app.log.1"], "{name}");
        } else {
            assert!(outcome.state.is_empty(), "{name}");
            assert_eq!(names(dir.path()), ["app.log"], "{name}");
        }
    }
}

#[test]
fn a_corrupted_state_is_tolerated_as_empty() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "content\n");
    let spec = spec(dir.path(), json!({"files": ["app.log"], "period": "daily"}));
    // What the caller does: a state that does not parse becomes an empty map and a warning.
    let saved = "{\"/var/log/app.log\": {\"last_rot";
    let state: State = serde_json::from_str(saved).unwrap_or_default();
    assert!(state.is_empty());
    let now = Utc::now();
    let (plan, outcome) = run(&spec, &state, now, chrono_tz::UTC);
    assert_eq!(plan.files[0].action, Action::Record);
    assert!(outcome.is_success());
    assert_eq!(names(dir.path()), ["app.log"]);
    // The state written back round-trips through JSON.
    let json = serde_json::to_string(&outcome.state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, outcome.state);
}

/// A shell that records every SIGHUP it receives in `marker`.
fn spawn_hup_recorder(dir: &Path) -> (Child, PathBuf, PathBuf) {
    let marker = dir.join("hups");
    let pid_file = dir.join("writer.pid");
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"trap 'echo hup >> "$1"' HUP; echo $$ > "$2.tmp"; mv "$2.tmp" "$2"; while :; do sleep 0.02; done"#)
        .arg("sh")
        .arg(&marker)
        .arg(&pid_file)
        .spawn()
        .unwrap();
    wait_for("the pid file", || pid_file.exists());
    (child, marker, pid_file)
}

#[test]
fn notify_by_pid_file_signals_the_writer_once_after_rotating() {
    let dir = TempDir::new().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let (mut child, marker, pid_file) = spawn_hup_recorder(dir.path());
    write(&logs.join("a.log"), "a\n");
    write(&logs.join("b.log"), "b\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["logs/*.log"], "max_size": "1B",
               "notify": {"pid_file": "writer.pid", "signal": "HUP"}}),
    );
    assert_eq!(
        spec.notify,
        Some(Notify::Signal {
            pid_file: pid_file.clone(),
            signal: NotifySignal::Hup
        })
    );
    let (plan, outcome) = run(&spec, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(plan.to_string().contains("send HUP"), "{plan}");
    assert_eq!(outcome.notify, Some(Ok(())), "{outcome}");
    wait_for("the writer to receive HUP", || marker.exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(read(&marker), "hup\n", "one signal for two files");
    assert_eq!(names(&logs), ["a.log", "a.log.1", "b.log", "b.log.1"]);
}

#[test]
fn notify_to_a_dead_writer_is_an_error_and_leaves_the_newest_copy_uncompressed() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "content\n");
    write(&dir.path().join("writer.pid"), "2147483000\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "compress": true,
               "notify": {"pid_file": "writer.pid"}}),
    );
    let (_, outcome) = run(&spec, &State::new(), Utc::now(), chrono_tz::UTC);
    let error = outcome.notify.clone().unwrap().unwrap_err();
    assert!(error.contains("is the writer running?"), "{error}");
    assert!(outcome.files[0].rotated);
    assert!(
        outcome.files[0].errors[0].contains("could not be notified"),
        "{outcome}"
    );
    assert_eq!(names(dir.path()), ["app.log", "app.log.1", "writer.pid"]);
}

#[test]
fn notify_by_command_runs_it_and_reports_its_failure() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    let marker = dir.path().join("notified");
    let marker_arg = marker.to_str().unwrap();
    let block = |script: &str| {
        json!({"files": ["app.log"], "max_size": "1B",
               "notify": {"command": ["sh", "-c", script, "sh", marker_arg]}})
    };

    write(&log, "content\n");
    let ok = spec(dir.path(), block(r#"echo notified >> "$1""#));
    let (_, outcome) = run(&ok, &State::new(), Utc::now(), chrono_tz::UTC);
    assert_eq!(outcome.notify, Some(Ok(())), "{outcome}");
    assert_eq!(read(&marker), "notified\n");

    write(&log, "more\n");
    let failing = spec(dir.path(), block("echo 'no such unit' >&2; exit 3"));
    let (_, outcome) = run(&failing, &outcome.state, Utc::now(), chrono_tz::UTC);
    let error = outcome.notify.clone().unwrap().unwrap_err();
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("no such unit"), "{error}");
    assert!(!outcome.is_success());
}

#[test]
fn nothing_is_notified_when_nothing_rotates() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    let marker = dir.path().join("notified");
    write(&log, "content\n");
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1MB",
               "notify": {"command": ["touch", marker.to_str().unwrap()]}}),
    );
    let now = Utc::now();
    let (plan, outcome) = run(
        &spec,
        &rotated_ago(&log, now, yesterday()),
        now,
        chrono_tz::UTC,
    );
    assert_eq!(plan.notify, None);
    assert_eq!(outcome.notify, None);
    assert!(!marker.exists());
}

#[test]
fn the_config_block_is_validated_with_every_error_at_once() {
    let dir = Path::new("/etc/caretaker");
    let full: RotateConfig = serde_json::from_value(json!({
        "files": ["/var/log/apantli/*.log", "local.log"],
        "period": "daily", "max_size": "100MB", "min_size": 0, "rotate": 7,
        "max_age": "30d", "compress": true, "delay_compress": true, "method": "create",
        "notify": {"pid_file": "/run/apantli.pid", "signal": "HUP"},
        "if_empty": false, "missing_ok": true, "date_suffix": false
    }))
    .unwrap();
    let spec = full.validate(dir).unwrap();
    assert_eq!(
        spec.patterns,
        ["/var/log/apantli/*.log", "/etc/caretaker/local.log"]
    );
    assert_eq!(spec.max_size, Some(100_000_000));
    assert_eq!(spec.min_size, 0);
    assert_eq!(spec.max_age, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(spec.keep, 7);

    let numbers: RotateConfig =
        serde_json::from_value(json!({"files": ["a.log"], "max_size": 1048576, "max_age": 30}))
            .unwrap();
    let errors = numbers.validate(dir).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "max_age");
    assert!(errors[0].1.contains("`30` has no unit"), "{errors:?}");

    let bad: RotateConfig = serde_json::from_value(json!({
        "files": ["[unclosed"], "max_size": "100 MB", "min_size": "1mb", "max_age": "30",
        "delay_compress": true, "notify": {"command": [], "signal": "HUPP"}
    }))
    .unwrap();
    let errors = bad.validate(dir).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "files[0]",
            "max_size",
            "min_size",
            "max_age",
            "delay_compress",
            "notify.signal",
            "notify.command"
        ]
    );
    for (key, message) in &errors {
        assert!(
            message.contains("expected") || message.contains("set "),
            "{key}: {message}"
        );
    }

    let neither: RotateConfig = serde_json::from_value(json!({
        "files": [], "notify": {"pid_file": "/run/x.pid", "command": ["true"]}
    }))
    .unwrap();
    let errors = neither.validate(dir).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["files", "period", "notify"]);

    let unknown =
        serde_json::from_value::<RotateConfig>(json!({"files": ["a"], "rotate_count": 3}));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `rotate_count`")
    );
    let bad_period =
        serde_json::from_value::<RotateConfig>(json!({"files": ["a"], "period": "Daily"}));
    assert!(
        bad_period
            .unwrap_err()
            .to_string()
            .contains("expected one of `daily`, `weekly`, `monthly`")
    );
}

/// Rotates the writer's log ten times, waiting each time until it writes to the live log.
fn rotate_under_load(writer: &LogWriter, spec: &RotateSpec) {
    let mut state = State::new();
    for round in 0..10 {
        writer.wait_writing(4096);
        let (plan, outcome) = run(spec, &state, Utc::now(), chrono_tz::UTC);
        assert!(outcome.is_success(), "round {round}: {plan}{outcome}");
        assert!(outcome.files[0].rotated, "round {round}: {plan}");
        state.extend(outcome.state);
    }
    writer.wait_writing(4096);
}

#[test]
fn a_busy_writer_loses_no_line_with_create_and_notify() {
    let dir = TempDir::new().unwrap();
    let writer = LogWriter::spawn(
        &dir.path().join("app.log"),
        &dir.path().join("writer.pid"),
        &[],
    );
    // No compression while the writer runs: in a debug build gzip is slower than the
    // writer, and each round's copy would grow with the previous round's compression time.
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "rotate": 20, "method": "create",
               "notify": {"pid_file": writer.pid_file.to_str().unwrap(), "signal": "HUP"}}),
    );
    rotate_under_load(&writer, &spec);
    let written = writer.stop();

    // One last rotation with compression gzips the live log's copy and every older copy
    // (the writer has stopped: nobody to notify).
    let compress = spec_with(&spec, |s| {
        s.compress = true;
        s.notify = None;
    });
    let (_, outcome) = run(&compress, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(outcome.is_success(), "{outcome}");
    let copies: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with("app.log."))
        .collect();
    assert_eq!(copies.len(), 11, "{copies:?}");
    assert!(copies.iter().all(|n| n.ends_with(".gz")), "{copies:?}");

    let counts = count_lines(dir.path());
    let lost = (0..written).filter(|n| !counts.contains_key(n)).count();
    let duplicated = counts.values().filter(|&&c| c > 1).count();
    println!("create + notify: {written} lines written, {lost} lost, {duplicated} duplicated");
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(counts.len() as u64, written, "no line beyond those written");
}

fn spec_with(spec: &RotateSpec, change: impl FnOnce(&mut RotateSpec)) -> RotateSpec {
    let mut changed = spec.clone();
    change(&mut changed);
    changed
}

#[test]
fn a_busy_writer_with_copytruncate_loses_a_measured_number_of_lines() {
    let dir = TempDir::new().unwrap();
    let writer = LogWriter::spawn(
        &dir.path().join("app.log"),
        &dir.path().join("writer.pid"),
        &[],
    );
    let spec = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "rotate": 20, "method": "copytruncate"}),
    );
    rotate_under_load(&writer, &spec);
    let written = writer.stop();
    let counts = count_lines(dir.path());
    let lost = (0..written).filter(|n| !counts.contains_key(n)).count() as u64;
    let duplicated: u64 = counts
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    println!(
        "copytruncate: {written} lines written in 10 rotations, {lost} lost ({:.1} per rotation), {duplicated} duplicated",
        lost as f64 / 10.0
    );
    assert!(written > 0);
    assert_eq!(
        counts.len() as u64 + lost,
        written,
        "every line written is either found or counted as lost"
    );
}

#[test]
fn leftovers_of_an_interrupted_run_are_handled() {
    // rotate 0: a log moved aside but not yet deleted when the run was killed.
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "new\n");
    write(
        &dir.path().join(".app.log.discard.caretaker-tmp"),
        "discarded\n",
    );
    let zero = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "rotate": 0}),
    );
    let (_, outcome) = run(&zero, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(names(dir.path()), ["app.log"]);

    // compress: a partial .gz under its temporary name; the uncompressed copy is still there.
    write(&log, "newer\n");
    write(&dir.path().join("app.log.1"), "previous\n");
    write(&dir.path().join(".app.log.2.gz.caretaker-tmp"), "partial");
    let compress = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "compress": true, "delay_compress": true}),
    );
    let (_, outcome) = run(&compress, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(outcome.is_success(), "{outcome}");
    assert_eq!(names(dir.path()), ["app.log", "app.log.1", "app.log.2.gz"]);
    assert_eq!(read_gz(&dir.path().join("app.log.2.gz")), "previous\n");

    // copytruncate: a leftover copy may hold the only instance of some lines: never replaced.
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    write(&log, "live\n");
    let leftover = dir.path().join(".app.log.1.caretaker-tmp");
    write(&leftover, "only copy\n");
    let truncate = spec(
        dir.path(),
        json!({"files": ["app.log"], "max_size": "1B", "method": "copytruncate"}),
    );
    let (_, outcome) = run(&truncate, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(
        outcome.files[0].errors[0].contains("interrupted copytruncate"),
        "{outcome}"
    );
    assert!(outcome.state.is_empty());
    assert_eq!(read(&leftover), "only copy\n");
    assert_eq!(read(&log), "live\n");
}

#[test]
fn an_error_on_one_file_does_not_stop_the_others() {
    let dir = TempDir::new().unwrap();
    write(&dir.path().join("a.log"), "a\n");
    write(&dir.path().join("b.log"), "b\n");
    // A directory where a.log's first copy should go: not a copy, and not to be clobbered.
    fs::create_dir(dir.path().join("a.log.1")).unwrap();
    let spec = spec(dir.path(), json!({"files": ["*.log"], "max_size": "1B"}));
    let (_, outcome) = run(&spec, &State::new(), Utc::now(), chrono_tz::UTC);
    assert!(!outcome.files[0].rotated);
    assert!(
        outcome.files[0].errors[0].contains("a.log.1 already exists"),
        "{outcome}"
    );
    assert!(outcome.files[1].rotated, "{outcome}");
    assert_eq!(
        outcome.state.keys().collect::<Vec<_>>(),
        [&dir.path().join("b.log")]
    );
    assert_eq!(read(&dir.path().join("a.log")), "a\n");
    assert_eq!(read(&dir.path().join("b.log.1")), "b\n");
}
