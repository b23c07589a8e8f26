//! The `backup` job: a consistent hot snapshot (or a PostgreSQL gateway's `pg_dump`), compressed, verified, published, pruned by tiers.
//!
//! This file declares the parts, re-exports what the registry and the rest of the program name,
//! and runs a job on its gateway's engine: the kind itself is in `kind.rs`, the PostgreSQL run
//! in `postgres.rs`, so that neither imports this file back.

mod kind;
pub mod postgres;
pub mod retention;

pub use kind::{
    Compression, Extent, Plan, Raw, ShrinkGuard, Spec, VerifyLevel, expected_after, plan, prune,
    shrunk, validate,
};

use crate::jobs::contract::{Context, Report};

pub fn run(spec: &Spec, ctx: &mut Context<'_>) -> anyhow::Result<Report> {
    if let Some(server) = &ctx.gateway.postgres {
        return postgres::run(spec, ctx, server);
    }
    kind::run(spec, ctx)
}
