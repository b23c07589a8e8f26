//! The `archive` job: archive-then-purge of request rows older than a cut-off.
//!
//! Per batch: read the rows (short read transactions), record the planned file and the rows'
//! keys in the state database, write the file (temp, fsync, rename, fsync the directory),
//! then delete the rows (or NULL their payloads) in short paced write transactions, then
//! clear the record. A crash anywhere leaves either no file (the temp is swept; the rows are
//! still in the table and are archived again) or a complete file whose rows the next run
//! deletes first: no row lost, none in two files.

mod encode;
pub mod plan;
mod offsite;
mod run;
mod select;
mod spec;

pub use crate::redact::json::redact;
/// Sizes the maintenance job's incremental vacuum steps as it sizes the archive's deletes.
pub(crate) use run::next_size;
pub use run::run;
pub use spec::{Format, Raw, Rows, Spec, Then, validate};

