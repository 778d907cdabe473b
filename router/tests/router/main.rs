//! Router tests against real PostgreSQL servers over real gRPC.

mod bench;
mod calls;
mod control_plane;
mod harness;
mod identity;
mod pools;
