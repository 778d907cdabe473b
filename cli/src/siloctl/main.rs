//! `siloctl`: operate silo from a terminal. Endpoints and tokens come from flags or
//! `SILO_*` variables; errors print the gRPC code and a one-line reason and exit non-zero.

mod client;
mod migrate;
mod output;
mod tenants;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{client::Connection, output::Format};

#[derive(Debug, Parser)]
#[command(
    name = "siloctl",
    version,
    about = "Operate silo: tenants, migrations, tokens"
)]
struct Cli {
    /// Control-plane gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "SILO_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50052"
    )]
    control_plane: String,
    /// Bearer token for the control plane (role admin for changes, viewer for reads).
    #[arg(long, global = true, env = "SILO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "SILO_OUTPUT",
        default_value = "table"
    )]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, suspend, resume, delete tenants.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Migrate every tenant silo to a schema version, in waves.
    Migrate(migrate::MigrateArgs),
    /// Mint a token from a local key (for development).
    Token(token::TokenArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token(args) => token::run(&args),
        Command::Tenants(command) => {
            let connection = Connection::new(&cli.control_plane, cli.token).await?;
            tenants::run(&connection, command, cli.output).await
        }
        Command::Migrate(args) => {
            let connection = Connection::new(&cli.control_plane, cli.token).await?;
            migrate::run(&connection, args, cli.output).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
