//! caretaker: a daemon that keeps an LLM gateway's SQLite data healthy.

pub mod sample;
pub mod sim;
