//! The databases a jobs file looks after besides the gateway's: their names, paths and globs, the selection a job makes of them, and what a glob matches now.
//!
//! `databases:` maps names to a path or a glob (`{path: ...}` is the same). A glob is expanded
//! afresh at every run, never at `check`: users come and go between runs. What a match is
//! called inside an archive is its path relative to the glob's fixed part (the leading
//! directories without a metacharacter), so `/srv/Databases/user_databases/*/Media_DB_v2.db`
//! puts user 7's file at `databases/media/7/Media_DB_v2.db`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::Connection;
use serde::Deserialize;

use crate::config::Checks;

/// The name the gateway's own database goes by in a job's `databases` list.
pub const GATEWAY: &str = "gateway";

/// How long our statements wait for another program's lock on a declared database when no
/// gateway says otherwise: the gateway's own default.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry of `databases:` as written: a path (or glob), or `{path: ...}`.
#[derive(Debug, Clone)]
pub struct RawDatabase(PathBuf);

impl<'de> Deserialize<'de> for RawDatabase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawDatabase;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path or glob of SQLite databases, or {path: ...}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawDatabase, E> {
                Ok(RawDatabase(PathBuf::from(s)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawDatabase, A::Error> {
                let mut path = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "path" {
                        path = Some(map.next_value::<String>()?);
                    } else {
                        return Err(serde::de::Error::unknown_field(&key, &["path"]));
                    }
                }
                path.map(|p| RawDatabase(PathBuf::from(p)))
                    .ok_or_else(|| serde::de::Error::missing_field("path"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A declared database: a name and an absolute path, which may be a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub pattern: PathBuf,
}

/// The validated `databases:` block, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Databases(pub BTreeMap<String, Declared>);

/// Whether `name` may name a database (or a job): letters, digits, '-' and '_'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Validates `databases:`; every problem is placed at its key.
pub fn validate(raw: Option<BTreeMap<String, RawDatabase>>, checks: &mut Checks<'_>) -> Databases {
    let mut out = BTreeMap::new();
    for (name, RawDatabase(path)) in raw.unwrap_or_default() {
        let key = format!("databases.{name}");
        if name == GATEWAY {
            checks.error(&key, "`gateway` is the gateway's own database (set under `gateway.database`) and cannot be declared again; accepted: another name");
            continue;
        }
        if !valid_name(&name) {
            checks.error(
                &key,
                format!(
                    "`{name}` is not a valid database name; accepted: letters, digits, '-' and '_'"
                ),
            );
            continue;
        }
        let Some(pattern) = checks.given_path(&key, Some(&path)) else {
            continue;
        };
        let Some(text) = pattern.to_str() else {
            checks.error(
                &key,
                "the path is not UTF-8; accepted: a UTF-8 path or glob",
            );
            continue;
        };
        if let Err(e) = glob::Pattern::new(text) {
            checks.error(&key, format!("`{text}` is not a valid glob ({e}); accepted: a path, or a glob such as /srv/app/user_databases/*/Media_DB_v2.db"));
            continue;
        }
        if pattern.components().any(|c| c == Component::ParentDir) {
            checks.error(
                &key,
                format!("`{text}` contains `..`; accepted: a path without `..`"),
            );
            continue;
        }
        if text.ends_with('/') || pattern.file_name().is_none() {
            checks.error(&key, format!("`{text}` names a directory; accepted: the path of a database file, or a glob of them"));
            continue;
        }
        out.insert(name.clone(), Declared { name, pattern });
    }
    Databases(out)
}

/// What a job's `databases: [...]` selected, as written (default `[gateway]`), and once the
/// whole file is validated, the declared databases it names (the gateway's is not among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub names: Vec<String>,
    pub declared: Vec<Declared>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            names: vec![GATEWAY.to_string()],
            declared: Vec::new(),
        }
    }
}

impl Selection {
    /// The job block's `databases` key read: an empty list or a name given twice is an error
    /// at `path`.
    pub fn from_raw(raw: Option<Vec<String>>, path: &str, checks: &mut Checks<'_>) -> Selection {
        let Some(names) = raw else {
            return Selection::default();
        };
        if names.is_empty() {
            checks.error(path, "is empty; accepted: a list of names, `gateway` or those declared under the top-level `databases:` (leave the key out for [gateway])");
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &names {
            if !seen.insert(n.as_str()) {
                checks.error(
                    path,
                    format!("names `{n}` twice; accepted: each database once"),
                );
            }
        }
        Selection {
            names,
            declared: Vec::new(),
        }
    }

    /// Whether the gateway's database is among the selected.
    pub fn has_gateway(&self) -> bool {
        self.names.iter().any(|n| n == GATEWAY)
    }

    /// Resolves the names against `declared`; an unknown one is an error at `path` that says
    /// what is declared.
    pub fn resolve(&mut self, declared: &Databases, path: &str, checks: &mut Checks<'_>) {
        self.declared.clear();
        for name in &self.names {
            if name == GATEWAY {
                continue;
            }
            match declared.0.get(name) {
                Some(d) => self.declared.push(d.clone()),
                None => {
                    let mut known: Vec<&str> = vec![GATEWAY];
                    known.extend(declared.0.keys().map(String::as_str));
                    checks.error(
                        path,
                        format!(
                            "names database `{name}`, which is not declared; accepted: {} (declare others under the top-level `databases:`)",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// One file a declared database's path or glob matches now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The declared name.
    pub name: String,
    pub path: PathBuf,
    /// The path relative to the glob's fixed part (for a plain path: its file name).
    pub relative: PathBuf,
}

impl Found {
    /// The entry of this database in an archive: `databases/<name>/<relative>`.
    pub fn entry(&self) -> String {
        let mut e = PathBuf::from(ENTRY_DIR).join(&self.name);
        e.push(&self.relative);
        e.to_string_lossy().into_owned()
    }

    /// How a report and an alert name it: `media:7/Media_DB_v2.db`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.name, self.relative.display())
    }
}

/// Where databases go inside an archive.
pub const ENTRY_DIR: &str = "databases";

impl Declared {
    /// The leading directories of the pattern that hold no glob metacharacter; for a plain
    /// path, its directory.
    pub fn fixed_part(&self) -> PathBuf {
        let mut fixed = PathBuf::new();
        let parts: Vec<Component> = self.pattern.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if last || has_meta(&part.as_os_str().to_string_lossy()) {
                break;
            }
            fixed.push(part);
        }
        fixed
    }

    pub fn is_glob(&self) -> bool {
        has_meta(&self.pattern.to_string_lossy())
    }

    /// What the path or glob matches now: regular files only (a symlink to one counts),
    /// sorted, never SQLite's `-wal`/`-shm`/`-journal` files. A plain path that does not
    /// exist is an error (the jobs file names a file that is not there); a glob may match
    /// nothing.
    pub fn expand(&self) -> anyhow::Result<Vec<Found>> {
        let fixed = self.fixed_part();
        let found = |path: PathBuf| -> Found {
            let relative = path
                .strip_prefix(&fixed)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| PathBuf::from(path.file_name().unwrap_or_default()));
            Found {
                name: self.name.clone(),
                path,
                relative,
            }
        };
        if !self.is_glob() {
            let meta = std::fs::metadata(&self.pattern).with_context(|| {
                format!(
                    "database `{}` at {}: the file is not there (check `databases.{}` in the jobs file)",
                    self.name,
                    self.pattern.display(),
                    self.name
                )
            })?;
            anyhow::ensure!(
                meta.is_file(),
                "database `{}` at {} is not a regular file; accepted: a SQLite database file",
                self.name,
                self.pattern.display()
            );
            return Ok(vec![found(self.pattern.clone())]);
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let text = self.pattern.to_string_lossy();
        let mut out = Vec::new();
        for entry in glob::glob_with(&text, options)
            .with_context(|| format!("expanding the glob of database `{}`", self.name))?
        {
            // An entry that vanished or is unreadable while listing is left out, as a file that
            // vanishes between listing and snapshot is.
            let Ok(path) = entry else { continue };
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if crate::sqlite::COMPANIONS.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                out.push(found(path));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// The table with the most rows in the database at `path` (a copy of ours) and its rows;
/// `None` when it has no table.
pub fn largest_table(conn: &Connection) -> anyhow::Result<Option<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut best: Option<(String, u64)> = None;
    for name in names {
        let rows: i64 = conn.query_row(
            &format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\"")),
            [],
            |r| r.get(0),
        )?;
        let rows = rows.max(0) as u64;
        if best.as_ref().is_none_or(|(_, b)| rows > *b) {
            best = Some((name, rows));
        }
    }
    Ok(best)
}

impl Databases {
    /// One line per declared database and what its path or glob matches now, for `check`:
    /// a glob is matched again at every run, so this is only what a run now would see.
    pub fn describe_now(&self) -> Vec<String> {
        self.0
            .values()
            .map(|d| match d.expand() {
                Ok(found) if d.is_glob() => format!(
                    "database {}: {} (a glob, matched afresh at each run; {} file{} now)",
                    d.name,
                    d.pattern.display(),
                    found.len(),
                    if found.len() == 1 { "" } else { "s" }
                ),
                Ok(_) => format!("database {}: {}", d.name, d.pattern.display()),
                Err(e) => format!("database {}: {e:#}", d.name),
            })
            .collect()
    }
}

/// How declared databases are opened when the jobs file has no `gateway:`: the defaults a
/// gateway's settings would have (busy timeout [`DEFAULT_BUSY_TIMEOUT`]), with no database of
/// its own. Its table and columns are never read: `check` refuses every job that would.
pub fn without_gateway() -> &'static crate::gateway::Gateway {
    static SETTINGS: std::sync::LazyLock<crate::gateway::Gateway> =
        std::sync::LazyLock::new(|| {
            let preset = crate::gateway::Preset::Custom;
            let (table, columns) = crate::gateway::Preset::Apantli
                .table_and_columns()
                .expect("a preset fixes its table and columns");
            crate::gateway::Gateway {
                database: PathBuf::new(),
                postgres: None,
                preset,
                table,
                columns,
                busy_timeout: DEFAULT_BUSY_TIMEOUT,
            }
        });
    &SETTINGS
}

/// Whether `path` is a regular file that starts with SQLite's header. It is opened without
/// blocking and looked at before a byte is read: a FIFO named where a file belongs must not
/// hang the run (it is not a database, and whoever reads it next says what it is).
pub fn is_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = [0u8; 16];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::ErrorKind::InvalidInput.into());
            }
            f.read_exact(&mut head)
        })
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(pattern: &str) -> Declared {
        Declared {
            name: "media".into(),
            pattern: PathBuf::from(pattern),
        }
    }

    #[test]
    fn only_a_regular_file_with_the_header_is_a_database_and_a_fifo_is_never_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(is_sqlite_file(&db));
        std::fs::write(dir.path().join("short"), b"SQLite").unwrap();
        assert!(!is_sqlite_file(&dir.path().join("short")));
        assert!(!is_sqlite_file(dir.path()));
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(!is_sqlite_file(&fifo));
    }

    #[test]
    fn bad_declarations_and_selections_are_placed_at_their_keys_with_what_is_accepted() {
        let text = "\
gateway: {database: /g.db, schema: apantli}
databases:
  gateway: /x.db
  bad name: /y.db
  broken: /srv/[a-/z.db
  folder: /srv/data/
  users: {path: /srv/users.db}
jobs:
  b:
    on_signal: USR1
    backup: {to: /b, keep: {last: 1}, databases: [users, users]}
  i:
    on_signal: USR1
    integrity: {databases: []}
  m:
    on_signal: USR1
    maintenance: {databases: [gateway, media]}
";
        let errors = crate::config::parse(Path::new("/etc/caretaker/jobs.yaml"), text)
            .unwrap_err()
            .0;
        let found: Vec<(usize, &str, &str)> = errors
            .iter()
            .map(|e| (e.line, e.key_path.as_str(), e.message.as_str()))
            .collect();
        let expect = [
            (3, "databases.gateway", "cannot be declared again"),
            (4, "databases.bad name", "accepted: letters, digits"),
            (5, "databases.broken", "not a valid glob"),
            (6, "databases.folder", "names a directory"),
            (11, "jobs.b.backup.databases", "names `users` twice"),
            (14, "jobs.i.integrity.databases", "is empty"),
            (
                17,
                "jobs.m.maintenance.databases",
                "accepted: gateway, users",
            ),
        ];
        for (line, key, words) in expect {
            assert!(
                found
                    .iter()
                    .any(|(l, k, m)| *l == line && *k == key && m.contains(words)),
                "no error at line {line} {key} saying {words:?}: {found:#?}"
            );
        }
        // `{path: ...}` takes nothing else.
        let text = "gateway: {database: /g.db, schema: apantli}\ndatabases:\n  odd: {path: /z.db, mode: wal}\n";
        let errors = crate::config::parse(Path::new("/j.yaml"), text)
            .unwrap_err()
            .0;
        assert!(
            errors.iter().any(|e| e.line == 3
                && e.key_path.starts_with("databases.odd")
                && e.message.contains("expected `path`")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_fixed_part_ends_before_the_first_metacharacter() {
        let cases = [
            (
                "/srv/D/user_databases/*/Media_DB_v2.db",
                "/srv/D/user_databases",
            ),
            ("/srv/D/users.db", "/srv/D"),
            ("/srv/*.db", "/srv"),
            ("/srv/a[0-9]/x/*.db", "/srv"),
        ];
        for (pattern, fixed) in cases {
            assert_eq!(
                declared(pattern).fixed_part(),
                Path::new(fixed),
                "{pattern}"
            );
        }
    }

    #[test]
    fn a_glob_matches_afresh_without_companions_and_names_entries_by_relative_path() {
        let dir = tempfile::tempdir().unwrap();
        for user in ["1", "2", "10"] {
            let d = dir.path().join("user_databases").join(user);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("Media_DB_v2.db"), b"x").unwrap();
            std::fs::write(d.join("Media_DB_v2.db-wal"), b"x").unwrap();
        }
        let d = Declared {
            name: "media".into(),
            pattern: dir.path().join("user_databases/*/Media_DB_v2.db*"),
        };
        let found = d.expand().unwrap();
        let entries: Vec<String> = found.iter().map(Found::entry).collect();
        assert_eq!(
            entries,
            [
                "databases/media/1/Media_DB_v2.db",
                "databases/media/10/Media_DB_v2.db",
                "databases/media/2/Media_DB_v2.db"
            ]
        );
        std::fs::create_dir_all(dir.path().join("user_databases/3")).unwrap();
        std::fs::write(dir.path().join("user_databases/3/Media_DB_v2.db"), b"x").unwrap();
        assert_eq!(
            d.expand().unwrap().len(),
            4,
            "a new user is found at the next run"
        );
        let missing = Declared {
            name: "users".into(),
            pattern: dir.path().join("users.db"),
        };
        let message = format!("{:#}", missing.expand().unwrap_err());
        assert!(
            message.contains("users.db") && message.contains("databases.users"),
            "{message}"
        );
    }
}
