//! `siloctl`: operate silo from a terminal. Endpoints and tokens come from flags or
//! `SILO_*` variables; errors print the gRPC code and a one-line reason and exit non-zero.

mod client;
mod config;
mod migrate;
mod output;
mod rebalance;
mod sql;
mod tenants;
mod token;
mod usage;
mod values;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{client::Connection, output::Format};

#[derive(Debug, Parser)]
#[command(
    name = "siloctl",
    version,
    about = "Operate silo: tenants, migrations, SQL through the router, tokens"
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
    /// Router gRPC endpoint (query, exec).
    #[arg(
        long,
        global = true,
        env = "SILO_ROUTER",
        default_value = "http://127.0.0.1:50051"
    )]
    router: String,
    /// Bearer token: for query / exec, a token for the tenant or a service token allowed to
    /// pick it; for the control plane too, unless --admin-token is given.
    #[arg(long, global = true, env = "SILO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Bearer token for the control plane (tenants, migrate): role admin for changes or
    /// viewer for reads. Kept apart from --token so a tenant token for SQL and an admin
    /// token can both be exported at once.
    #[arg(long, global = true, env = "SILO_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PEM CA certificates the server's certificate must chain to, for `https://`
    /// endpoints. Unset: the system's CA certificates.
    #[arg(long, global = true, env = "SILO_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate for servers that require one (mutual TLS).
    #[arg(long, global = true, env = "SILO_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, global = true, env = "SILO_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
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
    /// Show the moves that would even out the postgres fleet's servers (tenants and
    /// database bytes); --execute starts them.
    Rebalance(rebalance::RebalanceArgs),
    /// Run a statement in a tenant's silo through the router and print its rows.
    Query(sql::QueryArgs),
    /// Run a statement in a tenant's silo through the router and print the rows affected.
    Exec(sql::SqlArgs),
    /// Show the calling tenant's settings as the router serves them (GetConfig).
    Config(sql::ConfigArgs),
    /// Mint a token from a local key (for development).
    Token(token::TokenArgs),
    /// Per-tenant usage (calls, rows, bytes, database time and size) by period, with a
    /// total; `-o csv` for a spreadsheet.
    Usage(usage::UsageArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = silo_tls::grpc::ClientTls {
        ca_file: cli.ca_file,
        cert_file: cli.cert_file,
        key_file: cli.key_file,
    };
    if cli.output == Format::Csv && !matches!(cli.command, Command::Usage(_)) {
        anyhow::bail!("-o csv is for siloctl usage; use table or json");
    }
    match cli.command {
        Command::Token(args) => token::run(&args),
        Command::Usage(args) => {
            let token = cli.admin_token.or(cli.token);
            let connection = Connection::new(&cli.control_plane, token, &tls).await?;
            usage::run(&connection, args, cli.output).await
        }
        Command::Tenants(command) => {
            let token = cli.admin_token.or(cli.token);
            let connection = Connection::new(&cli.control_plane, token, &tls).await?;
            tenants::run(&connection, command, cli.output).await
        }
        Command::Rebalance(args) => {
            let token = cli.admin_token.or(cli.token);
            let connection = Connection::new(&cli.control_plane, token, &tls).await?;
            rebalance::run(&connection, args, cli.output).await
        }
        Command::Migrate(args) => {
            let token = cli.admin_token.or(cli.token);
            let connection = Connection::new(&cli.control_plane, token, &tls).await?;
            migrate::run(&connection, args, cli.output).await
        }
        Command::Query(args) => {
            let router = sql::RouterConnection::new(&cli.router, cli.token, &tls).await?;
            sql::query(&router, args, cli.output).await
        }
        Command::Exec(args) => {
            let router = sql::RouterConnection::new(&cli.router, cli.token, &tls).await?;
            sql::exec(&router, args, cli.output).await
        }
        Command::Config(args) => {
            let router = sql::RouterConnection::new(&cli.router, cli.token, &tls).await?;
            sql::config(&router, args, cli.output).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let sql = matches!(
        cli.command,
        Command::Query(_) | Command::Exec(_) | Command::Config(_)
    );
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => {
                    eprintln!("error: {:?}: {}", status.code(), status_text(status));
                    if let Some(hint) = hint(status, sql) {
                        eprintln!("hint: {hint}");
                    }
                }
                None => eprintln!("error: {}", chain_text(&error)),
            }
            ExitCode::FAILURE
        }
    }
}

/// The status's message, or what an empty one means.
fn status_text(status: &tonic::Status) -> String {
    match (status.code(), status.message()) {
        (tonic::Code::Unimplemented, "") => {
            "the server does not serve this API (the address of the router where the control \
             plane's is wanted, or the other way round?)"
                .to_owned()
        }
        (_, message) => message.to_owned(),
    }
}

/// What to try next, for mistakes a newcomer makes.
fn hint(status: &tonic::Status, sql: bool) -> Option<&'static str> {
    match status.code() {
        tonic::Code::Unauthenticated if sql => Some(
            "query and exec need a tenant's token in SILO_TOKEN (siloctl token --tenant <id>); \
             the admin token goes in SILO_ADMIN_TOKEN",
        ),
        tonic::Code::PermissionDenied if !sql => Some(
            "tenants and migrate need a token with role admin (or viewer, for reads) in \
             SILO_ADMIN_TOKEN",
        ),
        _ => None,
    }
}

/// The error and its causes, each said once: transport errors repeat their cause's words
/// (`tcp connect error: tcp connect error: ...`).
fn chain_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if said.is_empty() || text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}
