//! Opening SQLite connections: every connection caretaker opens comes from here, strict about names; and the names of the files SQLite keeps beside a database.
//!
//! SQLite, for compatibility with old MySQL habits, reads a double-quoted name that matches no
//! column as a string literal (its "DQS" misfeature): `WHERE "eror" IS NOT NULL` is true for
//! every row. Our statements quote the table and column names from the jobs file in double
//! quotes, so one typo there would turn a filter into a constant and select, price or delete
//! the wrong rows. With DQS off the same typo is an error ("no such column"). Only a
//! connection's own parsing changes: the database file and the gateway's connections are
//! untouched.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// The suffix of a database's write-ahead log (journal_mode=WAL).
pub const WAL: &str = "-wal";
/// The suffix of a WAL database's shared-memory index.
pub const SHM: &str = "-shm";
/// The suffix of a rollback journal (journal_mode=DELETE and the other rollback modes).
pub const JOURNAL: &str = "-journal";
/// The files SQLite keeps beside a database; a leftover one belongs to that database.
pub const COMPANIONS: [&str; 3] = [WAL, SHM, JOURNAL];
/// A database and its companions, as suffixes of the database's path (the first is the file).
pub const WITH_COMPANIONS: [&str; 4] = ["", WAL, SHM, JOURNAL];

/// `db` with `suffix` appended to its file name, as SQLite names its companions:
/// `companion(db, WAL)` is `<db>-wal`.
pub fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` with `flags` and turns double-quoted string literals off, in statements and in
/// schema definitions alike.
pub fn open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    Ok(conn)
}

/// [`open`] with rusqlite's default flags: read-write, created when missing.
pub fn open_or_create(path: &Path) -> rusqlite::Result<Connection> {
    open(path, OpenFlags::default())
}

/// Whether `e` is SQLite giving up on a lock another connection holds (after our busy
/// timeout): a retry later may succeed, unlike every other error.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether the database of `conn` has a table named `name`.
pub fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_sit_beside_the_database_under_its_whole_name() {
        let cases = [
            (
                "/var/lib/app/requests.db",
                WAL,
                "/var/lib/app/requests.db-wal",
            ),
            ("requests.db", JOURNAL, "requests.db-journal"),
            ("/a b/db", SHM, "/a b/db-shm"),
            ("/x/db", "", "/x/db"),
        ];
        for (db, suffix, want) in cases {
            assert_eq!(companion(Path::new(db), suffix), Path::new(want), "{db}");
        }
    }

    #[test]
    fn a_double_quoted_name_that_is_no_column_is_an_error_not_a_string() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open_or_create(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, error TEXT); INSERT INTO t (error) VALUES (NULL);")
            .unwrap();
        let err = conn
            .query_row(
                "SELECT count(*) FROM t WHERE \"eror\" IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("no such column: \"eror\""),
            "{err}"
        );
        let err = conn
            .execute_batch("CREATE INDEX i ON t (\"nope\")")
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        // The same statement on a plain connection counts the one row: the misfeature this
        // module exists to switch off.
        let plain = Connection::open(&path).unwrap();
        let n: i64 = plain
            .query_row(
                "SELECT count(*) FROM t WHERE \"eror\" IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// Every connection outside the tests comes from [`open`]: a new `Connection::open*`
    /// elsewhere would parse our statements with the misfeature back on. The gateway simulator
    /// is exempt: it stands in for the gateway, whose connections keep SQLite's defaults.
    #[test]
    fn no_other_module_opens_a_connection() {
        fn walk(dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                    continue;
                }
                let exempt = ["sqlite.rs", "sim.rs"];
                if path.extension().is_none_or(|e| e != "rs")
                    || exempt.iter().any(|e| path.ends_with(e))
                {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (i, line) in code.lines().enumerate() {
                    if line.contains("Connection::open") {
                        found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "open connections with crate::sqlite::open:\n{}",
            found.join("\n")
        );
    }
}
