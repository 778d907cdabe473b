//! `siloctl rebalance`: the moves that would even out the postgres fleet, and starting them.

use serde_json::json;
use silo_proto::controlplane::v1 as pb;

use crate::{
    client::Connection,
    output::{self, Format},
};

#[derive(Debug, clap::Args)]
pub struct RebalanceArgs {
    /// Start the proposed moves (without it, only show them).
    #[arg(long)]
    execute: bool,
    /// The most moves to propose.
    #[arg(long, default_value_t = 10)]
    max_moves: u32,
    /// How the moves copy: `replicate` or `copy` (default: replicate where the source
    /// server allows it).
    #[arg(long)]
    method: Option<String>,
    /// Idempotency key of an executed rebalance.
    #[arg(long)]
    request_id: Option<String>,
}

pub async fn run(
    connection: &Connection,
    args: RebalanceArgs,
    format: Format,
) -> anyhow::Result<()> {
    let method = crate::tenants::move_method(args.method.as_deref())?;
    let plan = connection
        .client()
        .rebalance_fleet(connection.request(pb::RebalanceFleetRequest {
            execute: args.execute,
            max_moves: args.max_moves,
            method: method.into(),
            request_id: args.request_id.unwrap_or_default(),
        })?)
        .await?
        .into_inner();
    match format {
        Format::Json => output::print_json(&json!({
            "before": loads(&plan.before),
            "after": loads(&plan.after),
            "moves": plan.moves.iter().map(|m| json!({
                "tenant_id": m.tenant_id,
                "from_server": m.from_server,
                "to_server": m.to_server,
                "database_bytes": m.database_bytes,
                "operation_id": m.operation_id,
            })).collect::<Vec<_>>(),
        })),
        Format::Table | Format::Csv => {
            println!(
                "{:<16} {:>16} {:>28}",
                "SERVER", "TENANTS", "DATABASE BYTES"
            );
            for (before, after) in plan.before.iter().zip(&plan.after) {
                println!(
                    "{:<16} {:>16} {:>28}",
                    before.server,
                    format!("{} -> {}", before.tenants, after.tenants),
                    format!("{} -> {}", before.database_bytes, after.database_bytes)
                );
            }
            if plan.moves.is_empty() {
                println!("no move would even the fleet out further");
            }
            for m in &plan.moves {
                println!(
                    "move {} from {} to {} ({} bytes){}",
                    m.tenant_id,
                    m.from_server,
                    m.to_server,
                    m.database_bytes,
                    if m.operation_id.is_empty() {
                        String::new()
                    } else {
                        format!(": operation {}", m.operation_id)
                    }
                );
            }
            if !args.execute && !plan.moves.is_empty() {
                println!("(a dry run: --execute starts these moves)");
            }
        }
    }
    Ok(())
}

fn loads(loads: &[pb::ServerLoad]) -> Vec<serde_json::Value> {
    loads
        .iter()
        .map(|l| json!({"server": l.server, "tenants": l.tenants, "database_bytes": l.database_bytes}))
        .collect()
}
