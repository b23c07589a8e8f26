//! What LiteLLM's preset adds to the columns a SQLite preset has: its key, its failure condition, and the tables pruned with its requests.

pub use crate::gateway::config::LITELLM_TABLE;
use crate::gateway::config::{Gateway, Preset};

/// A table whose rows go with the purged requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunedWith {
    /// Pruned by its own time column, at the same cut-off.
    ByOwnTime {
        table: &'static str,
        time: &'static str,
    },
    /// Rows whose `key` names a purged request; only where the table exists.
    ByRequest {
        table: &'static str,
        key: &'static str,
    },
}

/// What LiteLLM's preset adds to the columns a SQLite preset has (SPEC's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LitellmFacts {
    /// The primary key: keyset batches run in (time, key) order.
    pub key: &'static str,
    /// The SQL condition of a failed request.
    pub failed_sql: &'static str,
    pub pruned_with: &'static [PrunedWith],
}

pub const LITELLM: LitellmFacts = LitellmFacts {
    key: "request_id",
    // NULL (rows written before the column existed) is "not success" too.
    failed_sql: "\"status\" IS DISTINCT FROM 'success'",
    pruned_with: &[
        PrunedWith::ByOwnTime {
            table: "LiteLLM_ErrorLogs",
            time: "startTime",
        },
        PrunedWith::ByRequest {
            table: "LiteLLM_SpendLogToolIndex",
            key: "request_id",
        },
    ],
};

/// The gateway's tables on its server: the request table and, for LiteLLM, the tables pruned
/// with it (which may not exist).
pub fn gateway_tables(gateway: &Gateway) -> Vec<String> {
    let mut tables = vec![gateway.table.clone()];
    if gateway.preset == Preset::Litellm {
        tables.extend(LITELLM.pruned_with.iter().map(|p| match *p {
            PrunedWith::ByOwnTime { table, .. } | PrunedWith::ByRequest { table, .. } => {
                table.to_string()
            }
        }));
    }
    tables
}
