//! Measures how long starting and stopping local PostgreSQL servers takes.
//!
//! `cargo run -p silo-pg-server --example start_timing`; run it with a fresh `TMPDIR` to
//! include building the template cluster (initdb) in the first measurement.

use std::time::Instant;

use silo_pg_server::{PgServer, PgServerError, PgServerOptions, start_many};

#[tokio::main]
async fn main() -> Result<(), PgServerError> {
    let started = Instant::now();
    let first = PgServer::start(PgServerOptions::for_tests()).await?;
    println!("first server (may include initdb): {:?}", started.elapsed());
    drop(first);

    for round in 1..=3 {
        let started = Instant::now();
        let one = PgServer::start(PgServerOptions::for_tests()).await?;
        let start_one = started.elapsed();
        let started = Instant::now();
        drop(one);
        let drop_one = started.elapsed();

        let started = Instant::now();
        let four = start_many(4, PgServerOptions::for_tests()).await?;
        let start_four = started.elapsed();
        let started = Instant::now();
        drop(four);
        let drop_four = started.elapsed();
        println!(
            "round {round}: start 1 {start_one:?}, drop 1 {drop_one:?}, \
             start 4 {start_four:?}, drop 4 {drop_four:?}"
        );
    }
    Ok(())
}
