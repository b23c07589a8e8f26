//! The gateway's database: its configuration, and one interface over its engines (SQLite, PostgreSQL).
//!
//! This file only declares the parts and re-exports what the rest of the program names
//! (`crate::gateway::Gateway`, `GatewayDb`, `Dialect`, `Value`), so that no part imports it back.

pub mod config;
pub mod db;
pub mod dialect;
mod open;
pub mod postgres;
pub mod sqlite;
pub mod value;

pub use config::{
    APANTLI_BUSY_TIMEOUT, Columns, CostColumns, Gateway, Preset, RawGateway, TimeFormat, validate,
};
pub use db::{Access, Exec, ExecExt, GatewayDb, RowRef, Tuning};
pub use dialect::Dialect;
pub use value::Value;
