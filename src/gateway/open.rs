//! Opening the gateway's database on its engine's backend: the one place that names both.

use super::config::Gateway;
use super::db::{Access, GatewayDb};
use super::postgres::db::PgDb;
use super::sqlite::{self, SqliteDb};

impl Gateway {
    /// Opens the gateway's database for a job's work on the request table, on its engine's
    /// backend (docs/design.md, "The gateway behind one interface").
    pub fn open(&self, access: Access) -> anyhow::Result<Box<dyn GatewayDb>> {
        if self.postgres.is_some() {
            return Ok(Box::new(PgDb::open(self, access)?));
        }
        Ok(Box::new(SqliteDb::open(self, access)?))
    }

    /// A SQLite connection to the gateway's database, for the SQLite-only operations (backup
    /// API, integrity check, VACUUM): see [`sqlite::connect`].
    pub fn connect(&self, read_only: bool) -> anyhow::Result<rusqlite::Connection> {
        self.refuse_postgres()?;
        sqlite::connect(self, read_only)
    }
}
