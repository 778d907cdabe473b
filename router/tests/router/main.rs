//! Router tests against real PostgreSQL servers over real gRPC.

mod bench;
mod callers_leave;
mod calls;
mod control_plane;
mod error_codes;
mod fairness;
mod guards;
mod harness;
mod identity;
mod moves;
mod pools;
mod sessions;
mod stale_statements;
mod transaction_control;

/// The allocator of the `silo-router` binary, so the benchmark measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
