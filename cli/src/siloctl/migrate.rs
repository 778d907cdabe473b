//! `siloctl migrate`: start, follow (a progress bar with done / failed / pending), resume.

use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use silo_proto::controlplane::v1 as pb;
use tokio_stream::StreamExt as _;

use crate::{
    client::Connection,
    output::{self, Format},
};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    command: Option<MigrateCommand>,
    /// Target schema version (default: the newest the control plane knows).
    #[arg(long, default_value_t = 0)]
    target: i64,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// First wave: these tenants (comma-separated).
    #[arg(long, value_delimiter = ',')]
    canary: Vec<String>,
    /// First wave: this share (1-100) of the fleet.
    #[arg(long, conflicts_with = "canary")]
    canary_percent: Option<u32>,
    /// Finish the wave when a tenant fails, then report (default: stop starting tenants).
    #[arg(long)]
    continue_on_error: bool,
    /// Also migrate SUSPENDED tenants.
    #[arg(long)]
    include_suspended: bool,
    /// Only list which tenants would get which migrations.
    #[arg(long)]
    dry_run: bool,
    /// Return at once instead of following the run.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Show a run's per-tenant state.
    Status { operation_id: String },
    /// Run a stopped or failed run again (only tenants below the target).
    Resume { operation_id: String },
}

async fn show(
    connection: &Connection,
    operation_id: &str,
    format: Format,
) -> anyhow::Result<pb::MigrationRun> {
    let run = connection
        .client()
        .get_migration(connection.request(pb::GetMigrationRequest {
            operation_id: operation_id.to_owned(),
        })?)
        .await?
        .into_inner();
    match format {
        Format::Json => output::print_json(&output::migration_json(&run)),
        Format::Table | Format::Csv => {
            println!("{}", output::migration_table(&run));
            if let Some(operation) = &run.operation {
                println!(
                    "run {} {:?} {}",
                    operation.operation_id,
                    operation.status(),
                    operation.error
                );
            }
        }
    }
    Ok(run)
}

async fn follow(connection: &Connection, operation_id: &str, format: Format) -> anyhow::Result<()> {
    let mut stream = connection
        .client()
        .watch_migration(connection.request(pb::GetMigrationRequest {
            operation_id: operation_id.to_owned(),
        })?)
        .await?
        .into_inner();
    let bar = if format == Format::Table {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    while let Some(update) = stream.next().await {
        let update = update?;
        if let Some(counts) = &update.counts {
            let planned = counts.total.saturating_sub(counts.skipped);
            bar.set_length(u64::from(planned));
            bar.set_position(u64::from(counts.done + counts.failed));
            bar.set_message(format!(
                "done {} failed {} pending {} running {} skipped {}",
                counts.done, counts.failed, counts.pending, counts.running, counts.skipped
            ));
        }
    }
    bar.finish();
    let run = show(connection, operation_id, format).await?;
    let operation = run.operation.unwrap_or_default();
    anyhow::ensure!(
        operation.status() != pb::OperationStatus::Failed,
        "migration failed: {}",
        operation.error
    );
    Ok(())
}

pub async fn run(connection: &Connection, args: MigrateArgs, format: Format) -> anyhow::Result<()> {
    match &args.command {
        Some(MigrateCommand::Status { operation_id }) => {
            show(connection, operation_id, format).await?;
            return Ok(());
        }
        Some(MigrateCommand::Resume { operation_id }) => {
            connection
                .client()
                .resume_migration(connection.request(pb::ResumeMigrationRequest {
                    operation_id: operation_id.clone(),
                })?)
                .await?;
            return if args.no_wait {
                Ok(())
            } else {
                follow(connection, operation_id, format).await
            };
        }
        None => {}
    }
    let mut waves = Vec::new();
    if !args.canary.is_empty() {
        waves.push(pb::MigrationWave {
            name: "canary".into(),
            tenant_ids: args.canary.clone(),
            ..Default::default()
        });
    } else if let Some(percent) = args.canary_percent {
        waves.push(pb::MigrationWave {
            name: "canary".into(),
            percent,
            ..Default::default()
        });
    }
    let failure_policy = if args.continue_on_error {
        pb::FailurePolicy::Continue
    } else {
        pb::FailurePolicy::Stop
    };
    let operation = connection
        .client()
        .start_migration(connection.request(pb::StartMigrationRequest {
            target_version: args.target,
            waves,
            concurrency: args.concurrency,
            failure_policy: failure_policy.into(),
            dry_run: args.dry_run,
            include_suspended: args.include_suspended,
            request_id: String::new(),
        })?)
        .await?
        .into_inner();
    if args.dry_run {
        show(connection, &operation.operation_id, format).await?;
        return Ok(());
    }
    if format == Format::Table {
        println!("migration run {}", operation.operation_id);
    }
    if args.no_wait {
        if format == Format::Json {
            output::print_json(&output::operation_json(&operation));
        }
        return Ok(());
    }
    follow(connection, &operation.operation_id, format).await
}
