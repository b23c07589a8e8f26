//! The jobs file reference (`docs/configuration.md`) and `jobs.example.yaml` against the parser.
//!
//! The parser's own structs say which keys exist (`caretaker::config::accepted_keys`); these
//! tests fail when a key is added, renamed or removed without the reference and the example
//! following, and when either documents a key the parser does not accept.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use caretaker::config::yaml::{self, Node, NodeKind};
use caretaker::config::{ITEM, JOB_PATH, accepted_keys};

fn repo_file(name: &str) -> (PathBuf, String) {
    let path = common::bins::repo_file(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

fn accepted() -> BTreeSet<String> {
    accepted_keys().into_iter().collect()
}

/// The example with its optional keys and alternatives switched on: every line whose first
/// non-blank characters are `#: ` loses that marker, as the example's header tells users to do.
fn with_alternatives(text: &str) -> String {
    text.lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            match line[indent..].strip_prefix("#: ") {
                Some(rest) => format!("{}{rest}", &line[..indent]),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The key paths written in a YAML tree, spelt as `accepted_keys` spells them. Only keys the
/// parser reads as structs are walked into, so free names (`aliases`) stay values.
fn written_keys(node: &Node, path: &str, accepted: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    let has_keys_below = |p: &str| {
        accepted
            .iter()
            .any(|k| k.starts_with(&format!("{p}.")) || k.starts_with(&format!("{p}{ITEM}")))
    };
    match &node.kind {
        NodeKind::Map(entries) => {
            for entry in entries {
                if path == "jobs" {
                    written_keys(&entry.value, JOB_PATH, accepted, out);
                    continue;
                }
                if path == "remotes" {
                    written_keys(&entry.value, caretaker::remote::REMOTE_PATH, accepted, out);
                    continue;
                }
                let key = if path.is_empty() {
                    entry.key.clone()
                } else {
                    format!("{path}.{}", entry.key)
                };
                out.insert(key.clone());
                if has_keys_below(&key) || key == "jobs" || key == "remotes" {
                    written_keys(&entry.value, &key, accepted, out);
                }
            }
        }
        NodeKind::Seq(items) => {
            let item_path = format!("{path}{ITEM}");
            for item in items {
                written_keys(item, &item_path, accepted, out);
            }
        }
        NodeKind::Scalar { .. } => {}
    }
}

fn example_keys() -> BTreeSet<String> {
    let (_, text) = repo_file("jobs.example.yaml");
    let (tree, issues) = yaml::parse(&with_alternatives(&text)).unwrap_or_else(|issue| {
        panic!(
            "jobs.example.yaml with its `#: ` lines switched on is not YAML: line {} column {}: {}",
            issue.pos.line, issue.pos.column, issue.message
        )
    });
    assert!(
        issues.is_empty(),
        "jobs.example.yaml with its `#: ` lines switched on: {:?}",
        issues
            .iter()
            .map(|i| (i.pos.line, &i.message))
            .collect::<Vec<_>>()
    );
    let mut keys = BTreeSet::new();
    written_keys(&tree, "", &accepted(), &mut keys);
    keys
}

/// One row of a reference table: `| `key` | type | default | meaning |`.
struct Row {
    line: usize,
    key: String,
    cells: Vec<String>,
}

fn reference_rows() -> Vec<Row> {
    let (_, text) = repo_file("docs/configuration.md");
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let rest = line.strip_prefix("| `")?;
            let key = rest.split('`').next()?.to_string();
            let cells = line
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            Some(Row {
                line: i + 1,
                key,
                cells,
            })
        })
        .collect()
}

fn listing(keys: &BTreeSet<String>) -> String {
    keys.iter().map(|k| format!("\n  {k}")).collect()
}

#[test]
fn the_example_passes_the_parser() {
    let (path, _) = repo_file("jobs.example.yaml");
    // `caretaker check` is config::load (config::parse) plus a listing; the example reads its
    // SMTP password from the environment, as a deployment would.
    let out = common::bins::caretaker()
        .args(["check", "--config"])
        .arg(&path)
        .env("CARETAKER_SMTP_PASSWORD", "example-password")
        .env_remove("CARETAKER_CONFIG")
        .output()
        .expect("running caretaker check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "caretaker check rejected jobs.example.yaml ({}):\n{stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "warnings for jobs.example.yaml:\n{stderr}"
    );
    for kind in [
        "backup",
        "verify",
        "integrity",
        "maintenance",
        "archive",
        "logrotate",
        "pricing",
        "budget",
        "health",
    ] {
        assert!(
            stdout.contains(&format!("({kind})")),
            "jobs.example.yaml has no `{kind}` job:\n{stdout}"
        );
    }
}

#[test]
fn the_example_warns_without_its_password() {
    // The check above must be able to fail: without the variable in the shell, `check` warns
    // naming the key (stderr is no longer empty), as the daemon's environment is the one that
    // must hold it.
    let (path, _) = repo_file("jobs.example.yaml");
    let out = common::bins::caretaker()
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("CARETAKER_SMTP_PASSWORD")
        .env_remove("CARETAKER_CONFIG")
        .output()
        .expect("running caretaker check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: alerts.email.smtp.password_env"),
        "{stderr}"
    );
}

/// The parser, jobs.example.yaml and docs/configuration.md name the same keys, each way round
/// where it matters.
#[test]
fn the_parser_the_example_and_the_reference_name_the_same_keys() {
    let documented: BTreeSet<String> = reference_rows().into_iter().map(|r| r.key).collect();
    // (keys, the keys they must all be among, what a key left over is)
    let cases = [
        (
            accepted(),
            example_keys(),
            "keys the parser accepts but jobs.example.yaml does not show (add them, as `#: ` lines if optional):",
        ),
        (
            example_keys(),
            accepted(),
            "keys in jobs.example.yaml (its `#: ` lines included) that the parser refuses:",
        ),
        (
            accepted(),
            documented,
            "keys the parser accepts without a row in docs/configuration.md:",
        ),
    ];
    for (keys, among, what) in cases {
        let left: BTreeSet<String> = keys.difference(&among).cloned().collect();
        assert!(left.is_empty(), "{what}{}", listing(&left));
    }
}

#[test]
fn every_key_in_the_reference_is_accepted_once_with_type_default_and_meaning() {
    let accepted = accepted();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for row in reference_rows() {
        if !accepted.contains(&row.key) {
            problems.push(format!(
                "line {}: `{}` is not accepted by the parser",
                row.line, row.key
            ));
        }
        if !seen.insert(row.key.clone()) {
            problems.push(format!("line {}: `{}` has a second row", row.line, row.key));
        }
        if row.cells.len() != 4 || row.cells.iter().any(String::is_empty) {
            problems.push(format!(
                "line {}: `{}` needs four cells: key | type | default | meaning",
                row.line, row.key
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn alternatives_are_switched_on_by_removing_the_marker_only() {
    let text = "a:\n  b: 1\n  #: c: 2\n  # a plain comment\n#: d: [1]\n";
    assert_eq!(
        with_alternatives(text),
        "a:\n  b: 1\n  c: 2\n  # a plain comment\nd: [1]"
    );
}
