//! A bounded fuzz run over the jobs file reader: whatever the text, it returns a configuration
//! or errors placed in the file, and never panics.
//!
//! Two generators: mutations of `jobs.example.yaml` (so that the mutated values reach the
//! checks deep inside each job), and random YAML built from the jobs file's own keys with
//! anchors, aliases, odd scalars and deep nesting. Inputs that once broke the reader stay in
//! `REGRESSIONS` and in the proptest-regressions file beside this one.

use std::path::{Path, PathBuf};

use caretaker::config::{self, Purpose};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

const EXAMPLE: &str = include_str!("../jobs.example.yaml");

/// Inputs found by this fuzz run or by hand that broke the reader once, read on every run.
const REGRESSIONS: &[&str] = &[
    // Alias expansion by copy ("billion laughs"): exhausted memory.
    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
    // A long key copied by aliases: the keys' text counts too.
    "a: &a {kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk: 1}\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
    // Nesting that only aliases make deep: each copy adds its levels where it stands.
    "a: &a [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\nb: &b [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\nc: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*b]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    // Durations that overflow timers and clocks.
    "gateway: {database: r.db, schema: apantli, busy_timeout: 25d}\nshutdown_timeout: 18446744073709551615s\njobs: {}\n",
    "gateway: {database: r.db, schema: apantli}\njobs:\n  a: {on_signal: USR1, timeout: 18446744073709551615s, archive: {to: x, older_than: 9999999999d}}\n",
    // Numbers above i64, and floats that are not finite.
    "gateway: {database: r.db, schema: apantli}\njobs:\n  h: {on_signal: USR1, health: {database_max_size: 18446744073709551616}}\n",
    "gateway: {database: r.db, schema: apantli}\njobs:\n  a: {on_signal: USR1, archive: {to: x, older_than: 1d, batch: 1e400}}\n",
    // Schedules that never fire.
    "gateway: {database: r.db, schema: apantli}\njobs:\n  a: {schedule: \"0 0 30 2 *\", integrity: {}}\n",
    // Empty, comment-only, a document marker, other roots.
    "",
    "# nothing\n",
    "---\n",
    "...\n",
    "~\n",
    "[1, 2]\n",
    "- a\n- b\n",
    "!!binary aGVsbG8=\n",
    "? [a, b]\n: c\n",
    "a: *unknown\n",
    "jobs:\n\ta: 1\n",
    "gateway:\n  database: r.db\n  \tschema: apantli\n",
    "&a a: 1\n",
    "a: &a\nb: *a\n",
    "a: !tag &x {b: *x}\n",
    "\u{feff}gateway: {}\n",
    "a: \"\\uD800\"\n",
    "a: 'unterminated\n",
    "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    "jobs:\n  \"\":\n    on_signal: USR1\n    integrity: {}\n",
    "jobs:\n  a:\n    on_signal: []\n    verify: {backups_of: a}\n",
];

fn base() -> PathBuf {
    std::env::temp_dir()
        .join("caretaker-reader-fuzz")
        .join("jobs.yaml")
}

/// The property: a configuration, or errors that each stand at a line and column of the text
/// (or concern the whole file, and then say so).
fn read_is_sane(path: &Path, text: &str) -> Result<(), TestCaseError> {
    for purpose in [Purpose::Check, Purpose::Run] {
        let Err(errors) = config::parse_for(path, text, purpose) else {
            continue;
        };
        prop_assert!(!errors.0.is_empty());
        let lines = text.lines().count().max(1);
        for e in &errors.0 {
            if e.line == 0 {
                prop_assert!(
                    e.message.contains("empty"),
                    "an error without a place that is not about the whole file: {e}"
                );
                continue;
            }
            prop_assert!(e.column >= 1, "no column: {e}");
            prop_assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line);
            prop_assert!(
                !e.message.is_empty(),
                "no message at {}:{}",
                e.line,
                e.column
            );
        }
    }
    Ok(())
}

#[test]
fn regressions_read_without_panicking() {
    let path = base();
    for text in REGRESSIONS {
        read_is_sane(&path, text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
}

/// Text that stresses the reader when put anywhere in a file.
const SNIPPETS: &[&str] = &[
    "&a ",
    "*a",
    "&b [*a, *a, *a]",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "? ",
    ": ",
    "- ",
    "---\n",
    "...\n",
    "\t",
    "  ",
    "\n",
    "\r\n",
    "#",
    "\"",
    "'",
    "{",
    "}",
    "[",
    "]",
    ",",
    "|\n",
    ">-\n",
    "~",
    "null",
    "true",
    "-1",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e999",
    "NaN",
    ".inf",
    "0x10",
    "0o7",
    "1_000",
    "25d",
    "9999999999d",
    "18446744073709551615s",
    "0s",
    "120%",
    "-5%",
    "1025TiB",
    "0 0 30 2 *",
    "0 0 31 2 *",
    "*/0 * * * *",
    "@reboot",
    "USR1",
    "HUP",
    "\"\"",
    "''",
    "\u{0}",
    "\u{feff}",
    "é",
    "\u{202e}",
    "{a: {b: {c: {d: {e: {f: {g: 1}}}}}}}",
    "[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Delete `len` bytes at a position (as a share of the text).
    Delete(f64, usize),
    /// Insert a snippet at a position.
    Insert(f64, &'static str),
    /// Repeat the line at a position `n` times.
    RepeatLine(f64, usize),
    /// Replace the value after the `:` of the line at a position with a snippet.
    ReplaceValue(f64, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1..40usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        (at.clone(), prop::sample::select(SNIPPETS)).prop_map(|(p, s)| Edit::Insert(p, s)),
        (at.clone(), 2..200usize).prop_map(|(p, n)| Edit::RepeatLine(p, n)),
        (at, prop::sample::select(SNIPPETS)).prop_map(|(p, s)| Edit::ReplaceValue(p, s)),
    ]
}

/// The byte index at share `p` of `text`, moved back to a character boundary.
fn index(text: &str, p: f64) -> usize {
    let mut i = ((text.len() as f64) * p) as usize;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn line_at(text: &str, p: f64) -> (usize, usize) {
    let i = index(text, p);
    let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
    let end = text[i..].find('\n').map_or(text.len(), |n| i + n + 1);
    (start, end)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    for e in edits {
        match *e {
            Edit::Delete(p, len) => {
                let start = index(&text, p);
                let mut end = (start + len).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(start..end, "");
            }
            Edit::Insert(p, s) => {
                let i = index(&text, p);
                text.insert_str(i, s);
            }
            Edit::RepeatLine(p, n) => {
                let (start, end) = line_at(&text, p);
                let line = text[start..end].to_string();
                text.insert_str(end, &line.repeat(n));
            }
            Edit::ReplaceValue(p, s) => {
                let (start, end) = line_at(&text, p);
                if let Some(colon) = text[start..end].find(": ") {
                    let value_end = if text[start..end].ends_with('\n') {
                        end - 1
                    } else {
                        end
                    };
                    text.replace_range(start + colon + 2..value_end, s);
                }
            }
        }
    }
    text
}

/// The example without its `#: ` markers, so that the optional keys are read too.
fn example() -> String {
    EXAMPLE.replace("#: ", "")
}

/// A key of the jobs file at any level: the last segment of each accepted key path.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = config::accepted_keys()
        .iter()
        .map(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            last.trim_end_matches("[]").to_string()
        })
        .collect();
    keys.extend(["nightly".into(), "b".into(), "<<".into(), "unknown".into()]);
    keys.sort();
    keys.dedup();
    keys
}

/// A YAML value: scalars from the snippets and the values the keys expect, lists, mappings of
/// the jobs file's keys, anchors and aliases.
fn yaml_value(keys: Vec<String>) -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        prop::sample::select(SNIPPETS).prop_map(|s| format!("\"{}\"", s.escape_default())),
        prop::sample::select(
            &[
                "1s",
                "2s",
                "30d",
                "26h",
                "apantli",
                "custom",
                "requests.db",
                "USR1",
                "[USR1, USR2]",
                "\"0 2 * * *\"",
                "\"@daily\"",
                "quick",
                "full",
                "gzip",
                "none",
                "7",
                "-1",
                "75%",
                "512MB",
                "5GiB",
                "b",
                "nightly",
                "~",
                "18446744073709551615",
                "1e400",
                "*a",
                "{}",
                "[]",
            ][..]
        )
        .prop_map(str::to_string),
    ];
    scalar.prop_recursive(6, 48, 6, move |inner| {
        let keys = keys.clone();
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((prop::sample::select(keys), inner.clone()), 0..6).prop_map(
                |entries| {
                    let body: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect();
                    format!("{{{}}}", body.join(", "))
                }
            ),
            inner.clone().prop_map(|v| format!("&a {v}")),
            (inner, 1..4usize).prop_map(|(v, n)| format!(
                "{}{v}{}",
                "[".repeat(n * 20),
                "]".repeat(n * 20)
            )),
        ]
    })
}

/// A file with a gateway and jobs whose bodies are random values.
fn structured() -> impl Strategy<Value = String> {
    let keys = keys();
    let job = (prop::sample::select(keys.clone()), yaml_value(keys.clone()));
    (
        yaml_value(keys.clone()),
        prop::collection::vec(job, 0..5),
        prop::collection::vec((prop::sample::select(keys.clone()), yaml_value(keys)), 0..3),
    )
        .prop_map(|(anchor, jobs, top)| {
            let mut text = format!(
                "gateway: {{database: requests.db, schema: apantli}}\nx-anchor: &a {anchor}\n"
            );
            for (k, v) in top {
                text.push_str(&format!("{k}: {v}\n"));
            }
            text.push_str("jobs:\n");
            for (i, (kind, body)) in jobs.into_iter().enumerate() {
                text.push_str(&format!(
                    "  job{i}:\n    schedule: \"@daily\"\n    {kind}: {body}\n"
                ));
            }
            text
        })
}

/// `cases` per generator, kept small enough for CI in a debug build; `PROPTEST_CASES` runs a
/// longer hunt (`PROPTEST_CASES=20000 cargo test --release --test reader_fuzz`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn mutations_of_the_example_read_without_panicking(edits in prop::collection::vec(edit(), 1..8)) {
        read_is_sane(&base(), &apply(&example(), &edits))?;
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn random_yaml_reads_without_panicking(text in structured()) {
        read_is_sane(&base(), &text)?;
    }
}

proptest! {
    #![proptest_config(config(100))]

    /// Bytes, not text: read through the file loader, which places bad UTF-8.
    #[test]
    fn mutated_bytes_load_without_panicking(
        edits in prop::collection::vec(edit(), 0..4),
        bad in prop::collection::vec((0.0..1.0f64, 0x80..=0xffu8), 0..3),
    ) {
        let mut bytes = apply(&example(), &edits).into_bytes();
        for (p, b) in bad {
            let i = ((bytes.len() as f64) * p) as usize;
            bytes.insert(i.min(bytes.len()), b);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.yaml");
        std::fs::write(&path, &bytes).unwrap();
        for purpose in [Purpose::Check, Purpose::Run] {
            if let Err(errors) = config::load_for(&path, purpose) {
                for e in &errors.0 {
                    prop_assert!(e.line >= 1 || e.message.contains("empty"), "{e}");
                }
            }
        }
    }
}
