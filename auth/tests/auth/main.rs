//! silo-auth test suite: one binary, reading the dev-only keys in `tests/fixtures/keys`.

mod accept;
mod bearer;
mod common;
mod config;
mod jwks;
mod reject;
