//! The one tree of integration-test helpers: each `tests/*.rs` says `mod common;` and uses the
//! parts it needs.
//!
//! Cargo compiles every `tests/*.rs` as its own crate with this whole tree inside it, so the
//! helpers a given test file does not call would each raise a dead-code warning there; they are
//! allowed here, once, for the whole tree.
#![allow(dead_code)]

pub mod backup;
pub mod bins;
pub mod dbcare;
pub mod files;
pub mod health;
pub mod logwriter;
pub mod multidb;
pub mod pg;
pub mod pgjobs;
pub mod pricejob;
pub mod s3;
pub mod sandbox;
pub mod sim;
pub mod wait;
