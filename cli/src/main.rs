//! `silo`: the command line. `silo dev` runs the embedded default.

mod dev;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "silo",
    version,
    about = "silo: one PostgreSQL database per tenant"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Local PostgreSQL server, control plane, router and demo tenants, until Ctrl-C.
    Dev(dev::DevArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev(args) => dev::run(args).await,
    }
}
