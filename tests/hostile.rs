//! Hostile jobs files through every command of the real binary: each ends with an exit code
//! and a message, never a panic, a hang or an exhausted memory.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::files::write_replace;
use common::sandbox::Sandbox;
use common::wait::poll;

/// How long one command may take before the test calls it a hang. Generous: the debug binary
/// on a busy machine; every command here finishes in well under a second when it works.
const DEADLINE: Duration = Duration::from_secs(30);

/// Bounds the address space of each command, so that a reader that copies without limit
/// fails here (as an abort) instead of taking the machine's memory.
const ADDRESS_SPACE_KB: u64 = 4 << 20;

const HEADER: &str = "gateway:\n  database: requests.db\n  schema: apantli\n  busy_timeout: 1s\nstate_dir: state\nshutdown_timeout: 5s\nalerts:\n  file: alerts.jsonl\n";

/// A file whose jobs section is `jobs` (indented by two spaces), after the usual header.
fn with_jobs(jobs: &str) -> Vec<u8> {
    format!("{HEADER}jobs:\n{jobs}").into_bytes()
}

/// The usual file with one header line replaced.
fn with_header(from: &str, to: &str) -> Vec<u8> {
    assert!(HEADER.contains(from), "{from}");
    format!(
        "{}jobs:\n  h:\n    on_signal: USR1\n    integrity: {{}}\n",
        HEADER.replace(from, to)
    )
    .into_bytes()
}

/// One job `h` of the given body.
fn job(body: &str) -> Vec<u8> {
    with_jobs(&format!("  h:\n    on_signal: USR1\n{body}"))
}

/// "Billion laughs": nine levels of nine aliases each, a few hundred bytes of text.
fn laughs(item: &str) -> Vec<u8> {
    let mut text = format!("{HEADER}a: &a [{}]\n", [item; 9].join(","));
    let mut prev = 'a';
    for c in 'b'..='j' {
        text.push_str(&format!(
            "{c}: &{c} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
        prev = c;
    }
    text.push_str("jobs:\n  h:\n    on_signal: USR1\n    integrity: {}\n");
    text.into_bytes()
}

fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let huge = "18446744073709551615";
    let many = |line: &str, n: usize| line.repeat(n);
    vec![
        ("billion laughs", laughs("\"lol\"")),
        ("billion laughs of long text", laughs(&"x".repeat(200))),
        (
            "laughs under a job",
            with_jobs(&format!(
                "  h:\n    on_signal: &s [{}]\n    integrity: {{}}\n  i:\n    on_signal: [{}]\n    integrity: {{}}\n",
                vec!["USR1"; 300].join(","),
                vec!["*s"; 1000].join(",")
            )),
        ),
        ("alias to no anchor", job("    integrity: *nothing\n")),
        (
            "merge key",
            with_jobs("  base: &b\n    on_signal: USR1\n  h:\n    <<: *b\n    integrity: {}\n"),
        ),
        (
            "nested lists",
            format!(
                "{HEADER}x: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
        (
            "nested mappings",
            format!(
                "{HEADER}x: {}1{}\n",
                "{a: ".repeat(50_000),
                "}".repeat(50_000)
            )
            .into_bytes(),
        ),
        ("nesting by chained aliases", {
            let mut text = format!("{HEADER}a0: &a0 {}x{}\n", "[".repeat(60), "]".repeat(60));
            for i in 1..50 {
                let (open, close) = ("[".repeat(60), "]".repeat(60));
                text.push_str(&format!("a{i}: &a{i} {open}*a{}{close}\n", i - 1));
            }
            text.into_bytes()
        }),
        (
            "20,000 duplicate keys",
            with_jobs(&many(
                "  h:\n    on_signal: USR1\n    integrity: {}\n",
                20_000,
            )),
        ),
        (
            "20,000 unknown keys",
            format!(
                "{HEADER}{}jobs: {{}}\n",
                (0..20_000)
                    .map(|i| format!("k{i}: 1\n"))
                    .collect::<String>()
            )
            .into_bytes(),
        ),
        (
            "20,000 jobs with errors",
            with_jobs(
                &(0..20_000)
                    .map(|i| format!("  j{i}:\n    integrity: {{depth: 1}}\n"))
                    .collect::<String>(),
            ),
        ),
        (
            "20,000 bad addresses on one line",
            with_header(
                "file: alerts.jsonl",
                &format!(
                    "file: alerts.jsonl\n  email:\n    smtp: {{host: localhost}}\n    from: a@example.com\n    to: [{}]",
                    vec!["not an address"; 20_000].join(", ")
                ),
            ),
        ),
        (
            "20,000 bad values in a mapping of free names",
            job(&format!(
                "    pricing:\n      file: prices.json\n      aliases:\n{}",
                (0..20_000)
                    .map(|i| format!("        m{i}: [x]\n"))
                    .collect::<String>()
            )),
        ),
        (
            "over a megabyte",
            format!(
                "{HEADER}{}",
                many("# padding padding padding padding\n", 40_000)
            )
            .into_bytes(),
        ),
        (
            "a 900 KB value",
            job(&format!(
                "    integrity: {{check: {}}}\n",
                "q".repeat(900_000)
            )),
        ),
        ("not UTF-8", {
            let mut b = with_jobs("  h:\n    on_signal: USR1\n    integrity: {}\n");
            b.insert(HEADER.len() + 10, 0xff);
            b
        }),
        ("a NUL byte", job("    integrity: {check: \"a\0b\"}\n")),
        ("empty", Vec::new()),
        ("comments only", b"# a comment\n\n   # another\n".to_vec()),
        ("a document marker only", b"---\n".to_vec()),
        ("null root", b"~\n".to_vec()),
        ("scalar root", b"hello\n".to_vec()),
        ("list root", b"[1, 2]\n".to_vec()),
        (
            "two documents",
            format!("{HEADER}---\n{HEADER}").into_bytes(),
        ),
        ("tab indentation", job("\tintegrity: {}\n")),
        ("a mapping as key", with_jobs("  ? {a: 1}\n  : b\n")),
        ("tags", job("    integrity: !!binary aGVsbG8=\n")),
        (
            "CRLF line ends",
            with_jobs("  h:\r\n    on_signal: USR1\r\n    integrity: {}\r\n"),
        ),
        ("a byte order mark", {
            let mut b = "\u{feff}".as_bytes().to_vec();
            b.extend(job("    integrity: {}\n"));
            b
        }),
        (
            "busy_timeout 25d",
            with_header("busy_timeout: 1s", "busy_timeout: 25d"),
        ),
        (
            "busy_timeout u64::MAX seconds",
            with_header("busy_timeout: 1s", &format!("busy_timeout: {huge}s")),
        ),
        (
            "shutdown_timeout u64::MAX seconds",
            with_header(
                "shutdown_timeout: 5s",
                &format!("shutdown_timeout: {huge}s"),
            ),
        ),
        (
            "shutdown_timeout 99999w",
            with_header("shutdown_timeout: 5s", "shutdown_timeout: 99999w"),
        ),
        (
            "repeat_after u64::MAX seconds",
            with_header(
                "file: alerts.jsonl",
                &format!("file: alerts.jsonl\n  repeat_after: {huge}s"),
            ),
        ),
        (
            "state_dir empty",
            with_header("state_dir: state", "state_dir: \"\""),
        ),
        (
            "time zone garbage",
            with_header(
                "state_dir: state",
                "state_dir: state\ntimezone: \"../../etc/passwd\"",
            ),
        ),
        (
            "smtp timeout u64::MAX seconds",
            with_header(
                "file: alerts.jsonl",
                &format!(
                    "file: alerts.jsonl\n  email:\n    smtp: {{host: localhost, port: 1, tls: none, timeout: {huge}s}}\n    from: a@example.com\n    to: [b@example.com]"
                ),
            ),
        ),
        (
            "SMTP password from /dev/zero",
            with_header(
                "file: alerts.jsonl",
                "file: alerts.jsonl\n  email:\n    smtp: {host: localhost, username: u, password_file: /dev/zero}\n    from: a@example.com\n    to: [b@example.com]",
            ),
        ),
        (
            "SMTP password from a FIFO",
            with_header(
                "file: alerts.jsonl",
                "file: alerts.jsonl\n  email:\n    smtp: {host: localhost, username: u, password_file: fifo}\n    from: a@example.com\n    to: [b@example.com]",
            ),
        ),
        (
            "CA file from /dev/zero",
            with_header(
                "file: alerts.jsonl",
                "file: alerts.jsonl\n  email:\n    smtp: {host: localhost, ca_file: /dev/zero}\n    from: a@example.com\n    to: [b@example.com]",
            ),
        ),
        (
            "backup including /dev/zero",
            job("    backup: {to: backups, keep: {last: 2}, include: [/dev/zero]}\n"),
        ),
        (
            "backup including a FIFO",
            job("    backup: {to: backups, keep: {last: 2}, include: [fifo]}\n"),
        ),
        (
            "price table from a FIFO",
            job("    pricing: {prices: fifo.json}\n"),
        ),
        (
            "job timeout u64::MAX seconds",
            job(&format!("    timeout: {huge}s\n    integrity: {{}}\n")),
        ),
        (
            "job timeout 36500d",
            job("    timeout: 36500d\n    integrity: {}\n"),
        ),
        (
            "older_than beyond any date",
            job("    archive: {to: arch, older_than: 9999999999d}\n"),
        ),
        (
            "older_than a century",
            job("    archive: {to: arch, older_than: 36500d}\n"),
        ),
        ("backup to empty", job("    backup: {to: \"\"}\n")),
        (
            "backup level beyond u32",
            job("    backup: {to: b, level: 4294967296}\n"),
        ),
        (
            "backup keep negative",
            job("    backup: {to: b, keep: {daily: -99999999999}}\n"),
        ),
        (
            "backup keep huge",
            job(&format!(
                "    backup: {{to: b, keep: {{daily: {huge}0}}}}\n"
            )),
        ),
        (
            "keep within a million years",
            job("    backup: {to: b, keep: {within: 1000000y}}\n"),
        ),
        (
            "sizes beyond u64",
            job(&format!(
                "    health: {{database_max_size: {huge}0, wal_max_size: 99999999TiB}}\n"
            )),
        ),
        (
            "size of u64::MAX bytes",
            job(&format!("    health: {{database_max_size: {huge}}}\n")),
        ),
        (
            "health ages beyond any date",
            job(&format!(
                "    health: {{error_rate_max: {{share: 5%, over: {huge}s}}}}\n"
            )),
        ),
        (
            "health window of a century",
            job("    health: {error_rate_max: {share: 5%, over: 36500d}}\n"),
        ),
        (
            "share as float garbage",
            job("    maintenance: {vacuum_threshold: 1e999%}\n"),
        ),
        (
            "batch as float",
            job("    archive: {to: arch, older_than: 1d, batch: 1e400}\n"),
        ),
        (
            "schedule 30 February",
            with_jobs("  h:\n    schedule: \"0 0 30 2 *\"\n    integrity: {}\n"),
        ),
        (
            "schedule 31 February",
            with_jobs("  h:\n    schedule: \"0 0 31 2 *\"\n    integrity: {}\n"),
        ),
        (
            "schedule of 10,000 fields",
            with_jobs(&format!(
                "  h:\n    schedule: \"{}\"\n    integrity: {{}}\n",
                "* ".repeat(10_000)
            )),
        ),
        (
            "schedule step 0",
            with_jobs("  h:\n    schedule: \"*/0 * * * *\"\n    integrity: {}\n"),
        ),
        (
            "verify of a non-backup job",
            with_jobs(
                "  h:\n    on_signal: USR1\n    verify: {backups_of: i}\n  i:\n    on_signal: USR1\n    integrity: {}\n",
            ),
        ),
        (
            "verify of itself",
            with_jobs("  h:\n    on_signal: USR1\n    verify: {backups_of: h}\n"),
        ),
        (
            "health age of a non-backup job",
            with_jobs(
                "  h:\n    on_signal: USR1\n    health: {backup_max_age: {job: i, age: 1d}}\n  i:\n    on_signal: USR1\n    integrity: {}\n",
            ),
        ),
        (
            "10,000 signals",
            job(&format!(
                "    on_signal: [{}]\n    integrity: {{}}\n",
                vec!["USR1"; 10_000].join(",")
            )),
        ),
        (
            "a 10,000 character job name",
            with_jobs(&format!(
                "  {}:\n    on_signal: USR1\n    integrity: {{}}\n",
                "n".repeat(10_000)
            )),
        ),
        (
            "a job name of control characters",
            with_jobs("  \"\\e[31m\\u0007\":\n    on_signal: USR1\n    integrity: {}\n"),
        ),
    ]
}

/// GNU time, where installed, to measure each command's peak memory.
const TIME: &str = "/usr/bin/time";

/// The most memory one command may use, measured where [`TIME`] is installed.
const PEAK_RSS_KB: u64 = 200 * 1024;

/// FIFOs named `fifo` and `fifo.json` (a price table's name) beside the jobs file, for the
/// inputs that point a file key at one: opening it for reading blocks until a writer comes,
/// which none does.
fn make_fifo(sb: &Sandbox) {
    for name in ["fifo", "fifo.json"] {
        let status = Command::new("mkfifo").arg(sb.path(name)).status().unwrap();
        assert!(status.success(), "mkfifo {name}");
    }
}

/// Runs `caretaker` with `args`, bounded in address space and in time. Returns how it ended,
/// its output, how long it took (reported, not asserted: the deadline is the bound) and, where
/// GNU time is installed, its peak resident memory in KiB.
fn bounded(sb: &Sandbox, args: &[&str]) -> (ExitStatus, String, Duration, Option<u64>) {
    let started = std::time::Instant::now();
    let out = sb.path("out.txt");
    let rss = sb.path("rss.txt");
    let _ = fs::remove_file(&rss);
    let measure = Path::new(TIME).exists();
    let exec = if measure {
        format!("exec {TIME} -f %M -o '{}'", rss.display())
    } else {
        "exec".to_string()
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KB}; {exec} \"$0\" \"$@\""
        ))
        .arg(common::bins::caretaker_bin())
        .args(args)
        .env_remove("CARETAKER_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(sb.path("err.txt")).unwrap())
        .spawn()
        .expect("start caretaker");
    let status = poll(DEADLINE, || child.try_wait().expect("try_wait"));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("caretaker {args:?} did not finish within {DEADLINE:?}");
    };
    let measured = fs::read_to_string(&rss).unwrap_or_default();
    // GNU time reports a killed command in its output file and exits 128 + the signal.
    assert!(
        !measured.contains("terminated by signal"),
        "caretaker {args:?}: {measured}"
    );
    let peak = measured.lines().last().and_then(|l| l.trim().parse().ok());
    let text = fs::read_to_string(&out).unwrap_or_default()
        + &fs::read_to_string(sb.path("err.txt")).unwrap_or_default();
    (status, text, started.elapsed(), peak)
}

fn assert_sane(what: &str, args: &[&str], status: ExitStatus, output: &str) {
    assert!(
        status.code().is_some(),
        "{what}: caretaker {args:?} was killed ({status}); output:\n{}",
        head(output)
    );
    assert_ne!(
        status.code(),
        Some(101),
        "{what}: {args:?} panicked:\n{}",
        head(output)
    );
    assert!(
        !output.contains("panicked"),
        "{what}: {args:?} panicked:\n{}",
        head(output)
    );
}

fn head(text: &str) -> String {
    text.chars().take(2000).collect()
}

/// The daemon on the file: it refuses it at once, or starts and stops cleanly on SIGTERM.
fn run_for_a_moment(what: &str, sb: &Sandbox, config: &Path) {
    let log = sb.path("daemon.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KB}; exec \"$0\" \"$@\""))
        .arg(common::bins::caretaker_bin())
        .args(["run", "--config"])
        .arg(config)
        .env_remove("CARETAKER_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start daemon");
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let started = poll(DEADLINE, || {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(Some(status));
        }
        log_text().contains("caretaker is running").then_some(None)
    });
    let status = match started {
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: the daemon neither started nor exited within {DEADLINE:?}:\n{}",
                head(&log_text())
            );
        }
        Some(Some(exited)) => exited,
        Some(None) => {
            let pid = child.id().to_string();
            for signal in ["-HUP", "-USR1", "-TERM"] {
                Command::new("kill").args([signal, &pid]).status().unwrap();
            }
            let stopped = poll(DEADLINE, || child.try_wait().expect("try_wait"));
            let Some(stopped) = stopped else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what}: the daemon did not stop within {DEADLINE:?}:\n{}",
                    head(&log_text())
                );
            };
            assert_eq!(stopped.code(), Some(0), "{what}:\n{}", head(&log_text()));
            stopped
        }
    };
    assert_sane(what, &["run"], status, &log_text());
}

/// Every command on every hostile file: no panic, no hang, no exhausted memory.
#[test]
fn no_hostile_jobs_file_panics_hangs_or_exhausts_any_command() {
    let inputs = hostile_inputs();
    let mut commands = 0;
    let mut peak: Option<(u64, String)> = None;
    let mut slowest: Option<(Duration, String)> = None;
    for (what, bytes) in &inputs {
        let sb = Sandbox::new();
        make_fifo(&sb);
        let config = sb.jobs_file();
        fs::write(&config, bytes).unwrap();
        let config_arg = config.to_str().unwrap();
        let restored = sb.path("restored.db");
        let runs: [Vec<&str>; 6] = [
            vec!["check", "--config", config_arg],
            vec!["run-job", "h", "--config", config_arg],
            vec!["run-job", "h", "--dry-run", "--config", config_arg],
            vec!["status", "--config", config_arg],
            vec!["status", "--json", "--config", config_arg],
            // The hostile bytes as an archive: the restore reader must refuse them too.
            vec!["restore", config_arg, "--to", restored.to_str().unwrap()],
        ];
        for args in &runs {
            let (status, output, took, rss) = bounded(&sb, args);
            assert_sane(what, args, status, &output);
            if slowest.as_ref().is_none_or(|(max, _)| took > *max) {
                slowest = Some((took, format!("{what}: {}", args[0])));
            }
            if let Some(kb) = rss {
                assert!(
                    kb <= PEAK_RSS_KB,
                    "{what}: {args:?} took {kb} KiB; accepted: up to {PEAK_RSS_KB} KiB"
                );
                if peak.as_ref().is_none_or(|(max, _)| kb > *max) {
                    peak = Some((kb, format!("{what}: {}", args[0])));
                }
            }
            commands += 1;
        }
        run_for_a_moment(what, &sb, &config);
        commands += 1;
    }
    let (took, at) = slowest.expect("commands ran");
    eprintln!(
        "{} hostile jobs files, {commands} command runs: no panic, no hang; slowest {:.2} s ({at}); peak memory {}",
        inputs.len(),
        took.as_secs_f64(),
        peak.map_or(
            "not measured (no GNU time)".to_string(),
            |(kb, at)| format!("{} MiB ({at})", kb / 1024)
        )
    );
    assert!(inputs.len() >= 68, "the table shrank to {}", inputs.len());
}

/// Every hostile file saved over the watched jobs file of a running daemon: each reload is
/// refused (or taken, when the file is valid), and the daemon keeps running on the old
/// configuration.
#[test]
fn no_hostile_jobs_file_takes_a_running_daemon_down_on_reload() {
    let sb = Sandbox::new();
    make_fifo(&sb);
    sb.write_jobs("  h:\n    on_signal: USR1\n    integrity: {}\n");
    let mut daemon = sb.start_daemon();
    let reloads = |d: &common::sandbox::Daemon| {
        d.count_log("configuration reloaded") + d.count_log("the old configuration keeps running")
    };
    for (what, bytes) in hostile_inputs() {
        let before = reloads(&daemon);
        let tmp = sb.path("jobs.yaml.tmp-edit");
        fs::write(&tmp, &bytes).unwrap();
        fs::rename(&tmp, sb.jobs_file()).unwrap();
        daemon.signal("HUP");
        let seen = poll(DEADLINE, || {
            assert!(
                daemon.child.try_wait().unwrap().is_none(),
                "{what}: the daemon died on reload:\n{}",
                head(&daemon.log_text())
            );
            (reloads(&daemon) > before).then_some(())
        });
        assert!(seen.is_some(), "{what}: no reload within {DEADLINE:?}");
    }
    assert!(
        !daemon.log_text().contains("panicked"),
        "{}",
        daemon.log_text()
    );
    // Still alive and still answering: a good file is taken again.
    write_replace(
        &sb.jobs_file(),
        &format!("{HEADER}jobs:\n  after-the-storm:\n    on_signal: USR1\n    integrity: {{}}\n"),
    );
    let before = daemon.count_log("configuration reloaded");
    daemon.signal("HUP");
    let reloaded = poll(DEADLINE, || {
        (daemon.count_log("configuration reloaded") > before).then_some(())
    });
    assert!(reloaded.is_some(), "{}", head(&daemon.log_text()));
    daemon.signal("USR1");
    daemon.wait_log("job=after-the-storm", DEADLINE);
    daemon.signal("TERM");
    let status = daemon.wait_exit(DEADLINE).expect("the daemon stops");
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
}

/// `check > /dev/full`: the failed write is an error message and exit code 1, not a panic.
#[test]
fn a_full_stdout_is_an_error_and_exit_1() {
    let sb = Sandbox::new();
    sb.write_jobs("  h:\n    on_signal: USR1\n    integrity: {}\n");
    let out = Command::new(common::bins::caretaker_bin())
        .args(["check", "--config"])
        .arg(sb.jobs_file())
        .stdout(
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: writing to standard output: No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `check | head -1`, `run-job … | head -1`, `status | head -1`: a reader that went away ends the command
/// quietly with 141, as a shell reports a coreutils program stopped by SIGPIPE.
#[test]
fn a_closed_stdout_ends_the_command_quietly_with_141() {
    let sb = Sandbox::new();
    sb.write_jobs("  h:\n    on_signal: USR1\n    integrity: {}\n");
    for args in [
        &["check"][..],
        &["run-job", "h"],
        &["run-job", "h", "--dry-run"],
        &["status"],
        &["status", "--json"],
    ] {
        let mut child = Command::new(common::bins::caretaker_bin())
            .args(args)
            .arg("--config")
            .arg(sb.jobs_file())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes its first byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("standard output"), "{args:?}: {stderr}");
    }
}
