//! Router tests against real PostgreSQL servers over real gRPC.

mod bench;
mod calls;
mod control_plane;
mod fairness;
mod harness;
mod identity;
mod pools;
mod sessions;

/// The allocator of the `silo-router` binary, so the benchmark measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
