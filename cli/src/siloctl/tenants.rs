//! `siloctl tenants ...`

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use silo_proto::controlplane::v1 as pb;
use tokio_stream::StreamExt as _;

use crate::{
    client::Connection,
    output::{self, Format},
};

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Onboard a tenant and follow its steps until it is ACTIVE.
    Create {
        tenant_id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Tier (default: the control plane's default tier).
        #[arg(long)]
        tier: Option<String>,
        /// Idempotency key; repeat a create with the same one to get the same operation.
        #[arg(long)]
        request_id: Option<String>,
        /// Return at once instead of following the operation.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show one tenant: state, tier, placement, database and role names, schema version.
    Get { tenant_id: String },
    /// List tenants, every page, optionally of one state or tier.
    List {
        /// Only tenants in this state (e.g. ACTIVE, SUSPENDED).
        #[arg(long)]
        state: Option<String>,
        /// Only tenants of this tier.
        #[arg(long)]
        tier: Option<String>,
        /// Tenants per page asked of the server.
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// Stop serving an ACTIVE tenant: routers refuse its calls until it is resumed; its
    /// data stays.
    Suspend {
        tenant_id: String,
        /// Why, kept with the tenant's events.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Serve a SUSPENDED tenant again.
    Resume { tenant_id: String },
    /// Delete a tenant's database and role, and follow the deletion.
    Delete {
        tenant_id: String,
        /// Keep the database, renamed, instead of dropping it.
        #[arg(long)]
        keep_database: bool,
        /// Return at once instead of following the deletion.
        #[arg(long)]
        no_wait: bool,
    },
    /// Give the tenant's role a new password; routers recycle its pool.
    RotateCredentials { tenant_id: String },
    /// Change a tenant's tier: at once when the tier's provisioner is the tenant's
    /// (routers take the new limits), else by a move that is followed as `move` is.
    ChangeTier {
        tenant_id: String,
        tier: String,
        #[command(flatten)]
        how: MoveOptions,
    },
    /// Set a tenant's own monthly quotas (replacing its tier's; leave one out to use the
    /// tier's again) and show the quotas in force and this month's use.
    Quota {
        tenant_id: String,
        /// Calls per calendar month (UTC).
        #[arg(long)]
        calls: Option<u64>,
        /// Rows (returned plus affected) per calendar month.
        #[arg(long)]
        rows: Option<u64>,
    },
    /// A tenant's settings and feature flags (key -> JSON value): get, set, unset.
    #[command(subcommand)]
    Config(crate::config::ConfigCommand),
    /// Ask a running move (by its operation id) to stop: it gives up at its next step if it
    /// has not switched, and the tenant stays where it was.
    CancelMove { operation_id: String },
    /// Move an ACTIVE tenant's silo to another server of its fleet, or to another tier
    /// (`--tier enterprise`: an RDS instance of its own, and back), and follow the move:
    /// routers hold the tenant's calls while it is copied (about a second for a small
    /// tenant), then send them to the new server.
    Move {
        tenant_id: String,
        /// The fleet server to move to (a name from the control plane's
        /// --postgres-server); may be left out with --tier.
        #[arg(long, required_unless_present_any = ["tier", "rollback"])]
        to: Option<String>,
        /// The tier the tenant has after the move; a tier of another provisioner promotes
        /// (`postgres` → `rds`) or demotes it.
        #[arg(long)]
        tier: Option<String>,
        /// Move back to where the tenant's last finished move took it from (its server, and
        /// its tier if that move changed it), with the tenant's data as it is now.
        #[arg(long, conflicts_with_all = ["to", "tier"])]
        rollback: bool,
        #[command(flatten)]
        how: MoveOptions,
    },
}

/// How a move runs, for `move` and for a `change-tier` that moves.
#[derive(Debug, clap::Args)]
pub struct MoveOptions {
    /// How: `replicate` (logical replication; calls held only for the last changes) or
    /// `copy` (pg_dump | pg_restore while calls are held). Default: replicate when the
    /// source server has wal_level = logical, else copy.
    #[arg(long)]
    method: Option<String>,
    /// Idempotency key; repeat a move with the same one to get the same operation.
    #[arg(long)]
    request_id: Option<String>,
    /// Return at once instead of following the move.
    #[arg(long)]
    no_wait: bool,
}

fn parse_state(raw: &str) -> anyhow::Result<pb::TenantState> {
    let wanted = format!("TENANT_STATE_{}", raw.to_ascii_uppercase());
    pb::TenantState::from_str_name(&wanted).with_context(|| format!("unknown state {raw}"))
}

fn print_tenant(tenant: &pb::Tenant, format: Format) {
    match format {
        Format::Json => output::print_json(&output::tenant_json(tenant)),
        Format::Table | Format::Csv => {
            println!("{}", output::tenants_table(std::slice::from_ref(tenant)))
        }
    }
}

/// Follows an operation with a live display of its steps; returns it when done.
pub async fn follow(
    connection: &Connection,
    operation: pb::Operation,
    format: Format,
) -> anyhow::Result<pb::Operation> {
    let bar = if format == Format::Table {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut stream = connection
        .client()
        .watch_operation(connection.request(pb::WatchOperationRequest {
            operation_id: operation.operation_id.clone(),
        })?)
        .await?
        .into_inner();
    let mut last = operation;
    let mut reported = 0;
    while let Some(update) = stream.next().await {
        let update = update?;
        for step in update.steps.iter().skip(reported) {
            if step.status() == pb::StepStatus::Running {
                break;
            }
            let took = step
                .duration
                .as_ref()
                .map_or(0.0, |d| d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6);
            bar.println(format!(
                "  {:<18} {:?} in {took:.0} ms {}",
                step.name,
                step.status(),
                step.detail
            ));
            reported += 1;
        }
        if let Some(running) = update
            .steps
            .iter()
            .find(|s| s.status() == pb::StepStatus::Running)
        {
            bar.set_message(format!("{} {}", running.name, running.detail));
        }
        let done = update.done;
        last = update;
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(last)
}

/// A move method by name (`replicate`, `copy`); none: the server's default.
pub fn move_method(name: Option<&str>) -> anyhow::Result<pb::MoveMethod> {
    match name {
        None => Ok(pb::MoveMethod::Unspecified),
        Some(name) => {
            pb::MoveMethod::from_str_name(&format!("MOVE_METHOD_{}", name.to_ascii_uppercase()))
                .with_context(|| format!("unknown move method {name} (replicate, copy)"))
        }
    }
}

/// Follows `operation` unless `no_wait`, then prints it; an error if it failed.
async fn follow_and_finish(
    connection: &Connection,
    operation: pb::Operation,
    no_wait: bool,
    format: Format,
) -> anyhow::Result<()> {
    let operation = if no_wait {
        operation
    } else {
        follow(connection, operation, format).await?
    };
    finish(&operation, format)
}

fn finish(operation: &pb::Operation, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&output::operation_json(operation)),
        Format::Table | Format::Csv => println!(
            "{}\noperation {} {:?}{}",
            output::operation_table(operation),
            operation.operation_id,
            operation.status(),
            if operation.error.is_empty() {
                String::new()
            } else {
                format!(": {}", operation.error)
            }
        ),
    }
    anyhow::ensure!(
        operation.status() != pb::OperationStatus::Failed,
        "operation failed: {}",
        operation.error
    );
    Ok(())
}

pub async fn run(
    connection: &Connection,
    command: TenantsCommand,
    format: Format,
) -> anyhow::Result<()> {
    let mut client = connection.client();
    match command {
        TenantsCommand::Create {
            tenant_id,
            name,
            tier,
            request_id,
            no_wait,
        } => {
            let operation = client
                .create_tenant(connection.request(pb::CreateTenantRequest {
                    tenant_id: tenant_id.clone(),
                    display_name: name.unwrap_or_default(),
                    tier: tier.unwrap_or_default(),
                    request_id: request_id.unwrap_or_default(),
                })?)
                .await?
                .into_inner();
            follow_and_finish(connection, operation, no_wait, format).await?;
            if !no_wait && format == Format::Table {
                let tenant = client
                    .get_tenant(connection.request(pb::GetTenantRequest { tenant_id })?)
                    .await?;
                print_tenant(&tenant.into_inner(), format);
            }
        }
        TenantsCommand::Get { tenant_id } => {
            let tenant = client
                .get_tenant(connection.request(pb::GetTenantRequest { tenant_id })?)
                .await?;
            print_tenant(&tenant.into_inner(), format);
        }
        TenantsCommand::List {
            state,
            tier,
            page_size,
        } => {
            let state = state
                .as_deref()
                .map(parse_state)
                .transpose()?
                .unwrap_or(pb::TenantState::Unspecified);
            let mut tenants = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_tenants(connection.request(pb::ListTenantsRequest {
                        page_size,
                        page_token: page_token.clone(),
                        state: state.into(),
                        tier: tier.clone().unwrap_or_default(),
                    })?)
                    .await?
                    .into_inner();
                tenants.extend(page.tenants);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            match format {
                Format::Json => output::print_json(&serde_json::Value::Array(
                    tenants.iter().map(output::tenant_json).collect(),
                )),
                Format::Table | Format::Csv => println!("{}", output::tenants_table(&tenants)),
            }
        }
        TenantsCommand::Suspend { tenant_id, reason } => {
            let tenant = client
                .suspend_tenant(connection.request(pb::SuspendTenantRequest { tenant_id, reason })?)
                .await?;
            print_tenant(&tenant.into_inner(), format);
        }
        TenantsCommand::Resume { tenant_id } => {
            let tenant = client
                .resume_tenant(connection.request(pb::ResumeTenantRequest { tenant_id })?)
                .await?;
            print_tenant(&tenant.into_inner(), format);
        }
        TenantsCommand::Delete {
            tenant_id,
            keep_database,
            no_wait,
        } => {
            let operation = client
                .delete_tenant(connection.request(pb::DeleteTenantRequest {
                    tenant_id,
                    keep_database,
                    request_id: String::new(),
                })?)
                .await?
                .into_inner();
            follow_and_finish(connection, operation, no_wait, format).await?;
        }
        TenantsCommand::Move {
            tenant_id,
            to,
            tier,
            rollback,
            how,
        } => {
            let method = move_method(how.method.as_deref())?;
            let operation = client
                .move_tenant(connection.request(pb::MoveTenantRequest {
                    tenant_id,
                    target_server: to.unwrap_or_default(),
                    method: method.into(),
                    request_id: how.request_id.unwrap_or_default(),
                    target_tier: tier.unwrap_or_default(),
                    rollback,
                })?)
                .await?
                .into_inner();
            follow_and_finish(connection, operation, how.no_wait, format).await?;
        }
        TenantsCommand::ChangeTier {
            tenant_id,
            tier,
            how,
        } => {
            let method = move_method(how.method.as_deref())?;
            let changed = client
                .change_tier(connection.request(pb::ChangeTierRequest {
                    tenant_id,
                    tier,
                    method: method.into(),
                    request_id: how.request_id.unwrap_or_default(),
                })?)
                .await?
                .into_inner();
            match changed.operation {
                Some(operation) => {
                    follow_and_finish(connection, operation, how.no_wait, format).await?;
                }
                None => {
                    if let Some(tenant) = &changed.tenant {
                        print_tenant(tenant, format);
                    }
                }
            }
        }
        TenantsCommand::Quota {
            tenant_id,
            calls,
            rows,
        } => {
            let quota = client
                .set_tenant_quota(connection.request(pb::SetTenantQuotaRequest {
                    tenant_id,
                    monthly_calls: calls,
                    monthly_rows: rows,
                })?)
                .await?
                .into_inner();
            let limit = |quota: u64| {
                if quota == 0 {
                    "none".to_owned()
                } else {
                    quota.to_string()
                }
            };
            match format {
                Format::Json => output::print_json(&serde_json::json!({
                    "tenant_id": quota.tenant_id,
                    "monthly_calls": quota.monthly_calls,
                    "monthly_rows": quota.monthly_rows,
                    "calls_used": quota.calls_used,
                    "rows_used": quota.rows_used,
                    "exhausted": quota.exhausted,
                })),
                Format::Table | Format::Csv => {
                    println!(
                        "{}: calls {} of {}, rows {} of {} this month{}",
                        quota.tenant_id,
                        quota.calls_used,
                        limit(quota.monthly_calls),
                        quota.rows_used,
                        limit(quota.monthly_rows),
                        if quota.exhausted.is_empty() {
                            String::new()
                        } else {
                            format!(" — {}", quota.exhausted)
                        }
                    );
                }
            }
        }
        TenantsCommand::CancelMove { operation_id } => {
            let operation = client
                .cancel_operation(connection.request(pb::CancelOperationRequest { operation_id })?)
                .await?
                .into_inner();
            let operation = follow(connection, operation, format).await?;
            if operation.status() == pb::OperationStatus::Failed
                && operation.error.contains("cancelled by request")
            {
                // What was asked for: the move gave up.
                println!("{}", output::operation_table(&operation));
                println!(
                    "move {} cancelled: {}",
                    operation.operation_id, operation.error
                );
            } else {
                finish(&operation, format)?;
            }
        }
        TenantsCommand::Config(command) => {
            crate::config::run(connection, command, format).await?;
        }
        TenantsCommand::RotateCredentials { tenant_id } => {
            let tenant = client
                .rotate_credentials(connection.request(pb::RotateCredentialsRequest { tenant_id })?)
                .await?;
            print_tenant(&tenant.into_inner(), format);
        }
    }
    Ok(())
}
