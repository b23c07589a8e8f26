//! The SQLite backend of the gateway interface: our connection to a gateway's SQLite file, its
//! statements over our values, and its transactions paced by [`crate::writelock::Pacer`].
//!
//! The SQLite-only operations (the online backup API, `PRAGMA integrity_check`, VACUUM,
//! ANALYZE, `wal_checkpoint`, the journal mode) stay with the kinds that need them, on the
//! connection [`connect`] opens or [`GatewayDb::as_sqlite`] lends: they have no counterpart
//! to share an interface with (docs/design.md, "The gateway behind one interface").

use std::borrow::Borrow;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use super::Gateway;
use super::db::{Access, Column, Exec, GatewayDb, Pacing, RowRef, Sizes, Tuning};
use super::dialect::Dialect;
use super::value::Value;
use crate::writelock::Pacer;

/// A connection to the gateway's database for our jobs: [`connect_file`] on its file.
pub fn connect(gateway: &Gateway, read_only: bool) -> anyhow::Result<Connection> {
    connect_file(&gateway.database, read_only, gateway.busy_timeout).with_context(|| {
        format!(
            "opening the gateway database {} (check gateway.database and that caretaker may read it)",
            gateway.database.display()
        )
    })
}

/// A connection for our jobs to a SQLite database, the gateway's or another one we look
/// after, opened the same way for all.
///
/// It never changes the journal mode, waits at most `busy_timeout` for another program's
/// locks, and is set not to checkpoint the WAL when it closes: a checkpoint on close would
/// take locks the job did not plan for. The caller's context names the database.
pub fn connect_file(
    path: &std::path::Path,
    read_only: bool,
    busy_timeout: Duration,
) -> anyhow::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = crate::sqlite::open(path, flags)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .context("setting NO_CKPT_ON_CLOSE on the connection")?;
    conn.busy_timeout(busy_timeout)
        .context("setting the busy timeout on the connection")?;
    // The bundled SQLite enforces foreign keys by default; the gateways' own connections
    // do not (BobaMixer declares ON DELETE CASCADE but never enables it), and a cascade
    // they never run must not start with ours.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .context("turning foreign key enforcement off, as the gateway has it")?;
    Ok(conn)
}

/// The gateway's SQLite database, opened for a job.
pub struct SqliteDb {
    gateway: Gateway,
    conn: SqliteExec<Connection>,
    /// Made at the first paced transaction: reading the journal mode takes a shared lock,
    /// which jobs that never pace (budget, health) do not take.
    pacer: Option<Pacer>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("database", &self.gateway.database)
            .finish_non_exhaustive()
    }
}

impl SqliteDb {
    pub fn open(gateway: &Gateway, access: Access) -> anyhow::Result<SqliteDb> {
        let conn = connect(gateway, access == Access::ReadOnly)?;
        Ok(SqliteDb {
            gateway: gateway.clone(),
            conn: SqliteExec(conn),
            pacer: None,
        })
    }

    fn pacer(&mut self) -> anyhow::Result<&mut Pacer> {
        Ok(self.paced()?.0)
    }

    /// The pacer, made on first use, and the connection it paces.
    fn paced(&mut self) -> anyhow::Result<(&mut Pacer, &mut Connection)> {
        if self.pacer.is_none() {
            self.pacer = Some(Pacer::new(&self.conn.0)?);
        }
        let pacer = self.pacer.as_mut().expect("made above");
        Ok((pacer, &mut self.conn.0))
    }
}

/// Statements on a SQLite connection, owned or borrowed (a transaction derefs to one).
pub struct SqliteExec<C: Borrow<Connection>>(pub C);

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            // SQLite has no time type: ISO-8601 in UTC, as Apantli writes its own.
            Value::Time(t) => ToSqlOutput::Owned(rusqlite::types::Value::Text(
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            )),
        })
    }
}

/// A SQLite value as ours. Text that is not UTF-8 was refused before it got here (rusqlite's
/// own conversion): an archive must hold what the row held, never a replacement character.
pub fn value(v: rusqlite::types::Value) -> Value {
    use rusqlite::types::Value as V;
    match v {
        V::Null => Value::Null,
        V::Integer(n) => Value::Integer(n),
        V::Real(f) => Value::Real(f),
        V::Text(t) => Value::Text(t),
        V::Blob(b) => Value::Blob(b),
    }
}

struct Row<'s, 'r>(&'r rusqlite::Row<'s>, usize);

impl RowRef for Row<'_, '_> {
    fn len(&self) -> usize {
        self.1
    }

    fn get(&self, i: usize) -> anyhow::Result<Value> {
        Ok(value(self.0.get(i)?))
    }
}

impl<C: Borrow<Connection>> Exec for SqliteExec<C> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn RowRef) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut stmt = self.0.borrow().prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            if !each(&Row(r, n))? {
                break;
            }
        }
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let mut stmt = self.0.borrow().prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    /// `PRAGMA table_info`, with each column's place in the primary key.
    fn columns_of(&mut self, table: &str) -> anyhow::Result<Vec<Column>> {
        let mut stmt = self
            .0
            .borrow()
            .prepare_cached("SELECT name, pk FROM pragma_table_info(?1)")?;
        let columns = stmt
            .query_map([table], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    key: r.get::<_, i64>(1)?.max(0) as u32,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(columns)
    }

    fn tables(&mut self) -> anyhow::Result<Vec<String>> {
        let mut stmt = self.0.borrow().prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        let tables = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(tables)
    }

    fn leads_an_index(&mut self, table: &str, column: &str) -> anyhow::Result<bool> {
        Ok(self.0.borrow().query_row(
            "SELECT count(*) FROM pragma_index_list(?1) AS l, pragma_index_info(l.name) AS i
             WHERE i.seqno = 0 AND i.name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }
}

impl GatewayDb for SqliteDb {
    fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self) -> &mut dyn Exec {
        &mut self.conn
    }

    /// `Purge`: no foreign key actions (a declared ON DELETE CASCADE, BobaMixer's, which the
    /// gateway itself never enables, would delete rows that were not archived), and no cache
    /// spill (a delete that outgrows the page cache writes pages into the database file in the
    /// middle of the transaction, which takes the EXCLUSIVE lock early and waits, with the
    /// busy handler's growing sleeps, for every reader to finish: the gateway's writers then
    /// wait too; our transactions are a few MB at most).
    ///
    /// `Update`: in WAL mode, `synchronous = NORMAL` (a commit without fsync keeps the
    /// database consistent and only risks this batch on power loss; it shortens the write
    /// lock a BobaMixer insert, which never waits, can collide with; the rollback journal
    /// keeps FULL), and a cache for a batch's pages (a cache too small spills in
    /// mid-transaction, with the same early exclusive lock). Both are our connection's
    /// settings, not the gateway's.
    fn tune(&mut self, tuning: Tuning) -> anyhow::Result<()> {
        match tuning {
            Tuning::Purge => {
                let conn = &self.conn.0;
                conn.pragma_update(None, "foreign_keys", false)
                    .context("turning off foreign key actions on our gateway connection")?;
                conn.pragma_update(None, "cache_spill", false)
                    .context("turning off cache spill on our gateway connection")?;
            }
            Tuning::Update { cache_kib } => {
                let wal = self.pacer()?.is_wal();
                let conn = &self.conn.0;
                if wal {
                    conn.pragma_update(None, "synchronous", "NORMAL")
                        .context("setting synchronous = NORMAL on our gateway connection")?;
                }
                conn.pragma_update(None, "cache_size", -cache_kib)
                    .context("setting cache_size on our gateway connection")?;
            }
        }
        Ok(())
    }

    fn paced_read(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        let (pacer, conn) = self.paced()?;
        Ok(pacer.read(conn, |c| work(&mut SqliteExec(c)))?.1)
    }

    fn paced_write(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        let (pacer, conn) = self.paced()?;
        Ok(pacer.write(conn, |tx| work(&mut SqliteExec(&**tx)))?.1)
    }

    fn pacing(&self) -> Pacing {
        self.pacer
            .as_ref()
            .map_or_else(Pacing::default, |p| Pacing {
                longest: p.longest(),
                transactions: p.transactions(),
                total: p.total(),
            })
    }

    /// The database file and its `-wal` (0 when there is none: a rollback journal, or WAL
    /// with no writer open), read from the filesystem without a lock.
    fn sizes(&mut self) -> anyhow::Result<Sizes> {
        let database = &self.gateway.database;
        let database_bytes = std::fs::metadata(database)
            .with_context(|| format!("reading the size of {}", database.display()))?
            .len();
        let wal = crate::sqlite::companion(database, crate::sqlite::WAL);
        let wal_bytes = match std::fs::metadata(&wal) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(e).with_context(|| format!("reading the size of {}", wal.display()));
            }
        };
        Ok(Sizes {
            database_bytes,
            wal_bytes: Some(wal_bytes),
        })
    }

    fn as_sqlite(&self) -> Option<&Connection> {
        Some(&self.conn.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gateway::{ExecExt, Preset};

    /// An empty Apantli database in `dir`, and the gateway configuration for it.
    pub(crate) fn apantli(dir: &tempfile::TempDir) -> Gateway {
        let database = dir.path().join("requests.db");
        crate::sqlite::open_or_create(&database)
            .unwrap()
            .execute_batch(crate::demo::sample::APANTLI_SCHEMA)
            .unwrap();
        let (table, columns) = Preset::Apantli.table_and_columns().unwrap();
        Gateway {
            database,
            preset: Preset::Apantli,
            table,
            columns,
            busy_timeout: Duration::from_millis(100),
            postgres: None,
        }
    }

    #[test]
    fn values_go_in_and_come_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = apantli(&dir);
        let mut db = gateway.open(Access::ReadWrite).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5Z")
            .unwrap()
            .to_utc();
        let values = [
            Value::Null,
            Value::Integer(-7),
            Value::Real(0.5),
            Value::Text("é".into()),
            Value::Blob(vec![0, 255]),
        ];
        for v in values {
            let back = db
                .exec()
                .query_one("SELECT ?1", std::slice::from_ref(&v), |r| r.get(0))
                .unwrap();
            assert_eq!(back, v);
        }
        let back = db
            .exec()
            .query_one("SELECT ?1", &[Value::Time(t)], |r| r.get(0))
            .unwrap();
        assert_eq!(back, Value::Text("2026-01-02T03:04:05.500000Z".into()));
        // Text that is not UTF-8 is an error, as rusqlite's own conversion has it: never
        // archived with a replacement character.
        let err = db
            .exec()
            .query_one("SELECT CAST(x'ff' AS TEXT)", &[], |r| r.get(0))
            .unwrap_err();
        assert!(format!("{err:#}").contains("utf-8"), "{err:#}");
    }

    #[test]
    fn a_paced_write_commits_returns_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = apantli(&dir);
        let mut db = gateway.open(Access::ReadWrite).unwrap();
        db.check_columns().unwrap();
        let d = db.dialect();
        let insert = format!(
            "INSERT INTO {} ({}, {}) VALUES ({})",
            d.table("requests"),
            d.ident("timestamp"),
            d.ident("model"),
            d.params(1, 2)
        );
        let (n, _) = db
            .write(|tx| tx.execute(&insert, &["2026-01-01T00:00:00Z".into(), "m".into()]))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(db.pacing().transactions, 1);
        // RETURNING hands back what a delete removed.
        let delete = format!(
            "DELETE FROM {} WHERE {} = ?1{}",
            d.table("requests"),
            d.ident("model"),
            d.returning(&["model"])
        );
        let (gone, _) = db
            .write(|tx| tx.query_map(&delete, &["m".into()], |r| r.string(0)))
            .unwrap();
        assert_eq!(gone, vec![Some("m".to_string())]);
        let ((), _) = db
            .read(|c| {
                let n = c.query_one("SELECT count(*) FROM requests", &[], |r| r.i64(0))?;
                assert_eq!(n, Some(0));
                Ok(())
            })
            .unwrap();
        let sizes = db.sizes().unwrap();
        assert!(sizes.database_bytes > 0);
        assert_eq!(sizes.wal_bytes, Some(0));
    }

    #[test]
    fn a_missing_table_and_column_are_named_with_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut gateway = apantli(&dir);
        gateway.columns.model = "modle".into();
        let mut db = gateway.open(Access::ReadOnly).unwrap();
        let err = db.check_columns().unwrap_err().to_string();
        assert!(err.contains("has no column `modle`"), "{err}");
        gateway.table = "requets".into();
        let mut db = gateway.open(Access::ReadOnly).unwrap();
        let err = db.check_columns().unwrap_err().to_string();
        assert!(
            err.contains("has no table `requets`; its tables are: requests"),
            "{err}"
        );
        assert_eq!(
            db.exec().columns_of("requests").unwrap()[0],
            Column {
                name: "id".into(),
                key: 1
            }
        );
    }
}
