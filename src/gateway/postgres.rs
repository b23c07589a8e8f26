//! A PostgreSQL gateway: its server and sign-in, its sessions, its backend of the gateway interface, its care and the standby daemon.
//!
//! This file only declares the parts and re-exports what the rest of the program names, so
//! that no part imports it back.

pub mod care;
pub mod connect;
pub mod db;
pub mod litellm;
pub mod pgpass;
pub mod secrets;
pub mod server;
pub mod standby;

pub use connect::{Session, connect, connect_with};
pub use litellm::{LITELLM, LITELLM_TABLE, LitellmFacts, PrunedWith, gateway_tables};
pub use server::{
    APPLICATION_NAME, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT, DEFAULT_TAKEOVER, NOT_YET,
    Password, READY, RawServer, Server, SslMode, host_and_port, parse_url, validate,
};
