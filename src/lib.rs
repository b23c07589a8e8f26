//! caretaker: a daemon that keeps an LLM gateway's SQLite data healthy.
//!
//! The binary (`main.rs`) only parses the command line; everything else lives here, one
//! module per domain noun.

pub mod alerts;
pub mod backup;
pub mod checks;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod databases;
pub mod demo;
pub mod fsx;
pub mod gateway;
pub mod jobs;
pub mod ledger;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod pgzip;
pub mod readahead;
pub mod redact;
pub mod remote;
pub mod runner;
pub mod schedule;
pub mod sqlite;
pub mod state;
pub mod stop;
#[cfg(test)]
mod structure;
pub mod tls;
pub mod units;
pub mod uploads;
pub mod writelock;
