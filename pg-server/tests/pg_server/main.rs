//! Tests against real PostgreSQL servers started from the machine's binaries.
//!
//! One test binary for the whole crate: the modules below are its suites.

mod lifecycle;
mod persistent;
mod shared_fleet;
mod support;
mod watchdog;
