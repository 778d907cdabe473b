//! Rendering API messages as tables or JSON.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use silo_proto::controlplane::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// Comma-separated values (`siloctl usage` only).
    Csv,
}

pub fn timestamp(time: Option<&prost_types::Timestamp>) -> String {
    time.map(ToString::to_string).unwrap_or_default()
}

fn duration_ms(duration: Option<&prost_types::Duration>) -> f64 {
    duration.map_or(0.0, |d| d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6)
}

fn name<T: std::fmt::Debug>(value: T) -> String {
    format!("{value:?}")
}

/// A tenant state as the docs and `--state` spell it: `ACTIVE`, `SUSPENDED`, ...
pub fn state_name(state: pb::TenantState) -> String {
    state
        .as_str_name()
        .trim_start_matches("TENANT_STATE_")
        .to_owned()
}

pub fn tenant_json(tenant: &pb::Tenant) -> Value {
    json!({
        "tenant_id": tenant.tenant_id,
        "display_name": tenant.display_name,
        "tier": tenant.tier,
        "state": state_name(tenant.state()),
        "failure_reason": tenant.failure_reason,
        "provisioner": tenant.provisioner,
        "placement": tenant.placement,
        "database": tenant.database,
        "role": tenant.role,
        "name_scheme": tenant.name_scheme,
        "schema_version": tenant.schema_version,
        "created_at": timestamp(tenant.created_at.as_ref()),
        "updated_at": timestamp(tenant.updated_at.as_ref()),
    })
}

pub fn operation_json(operation: &pb::Operation) -> Value {
    json!({
        "operation_id": operation.operation_id,
        "kind": name(operation.kind()),
        "tenant_id": operation.tenant_id,
        "request_id": operation.request_id,
        "status": name(operation.status()),
        "done": operation.done,
        "error": operation.error,
        "steps": operation.steps.iter().map(|step| json!({
            "name": step.name,
            "status": name(step.status()),
            "detail": step.detail,
            "attempts": step.attempts,
            "duration_ms": duration_ms(step.duration.as_ref()),
        })).collect::<Vec<_>>(),
        "migration": operation.migration.as_ref().map(counts_json),
    })
}

pub fn counts_json(counts: &pb::MigrationCounts) -> Value {
    json!({
        "target_version": counts.target_version,
        "total": counts.total,
        "done": counts.done,
        "failed": counts.failed,
        "pending": counts.pending,
        "running": counts.running,
        "skipped": counts.skipped,
        "dry_run": counts.dry_run,
    })
}

pub fn migration_json(run: &pb::MigrationRun) -> Value {
    json!({
        "operation": run.operation.as_ref().map(operation_json),
        "tenants": run.tenants.iter().map(|t| json!({
            "tenant_id": t.tenant_id,
            "wave": t.wave_name,
            "state": name(t.state()),
            "from_version": t.from_version,
            "version": t.version,
            "migrations": t.migrations,
            "detail": t.detail,
        })).collect::<Vec<_>>(),
    })
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub fn tenants_table(tenants: &[pb::Tenant]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_BORDERS_ONLY).set_header([
        "TENANT",
        "NAME",
        "TIER",
        "STATE",
        "PLACEMENT",
        "DATABASE",
        "ROLE",
        "SCHEMA",
        "CREATED",
    ]);
    for tenant in tenants {
        table.add_row([
            tenant.tenant_id.clone(),
            tenant.display_name.clone(),
            tenant.tier.clone(),
            state_name(tenant.state()),
            tenant.placement.clone(),
            tenant.database.clone(),
            tenant.role.clone(),
            tenant.schema_version.to_string(),
            timestamp(tenant.created_at.as_ref()),
        ]);
    }
    table
}

pub fn operation_table(operation: &pb::Operation) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_BORDERS_ONLY)
        .set_header(["STEP", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"]);
    for step in &operation.steps {
        table.add_row([
            step.name.clone(),
            name(step.status()),
            step.attempts.to_string(),
            format!("{:.0} ms", duration_ms(step.duration.as_ref())),
            step.detail.clone(),
        ]);
    }
    table
}

pub fn migration_table(run: &pb::MigrationRun) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_BORDERS_ONLY).set_header([
        "TENANT",
        "WAVE",
        "STATE",
        "FROM",
        "NOW",
        "MIGRATIONS",
        "DETAIL",
    ]);
    for tenant in &run.tenants {
        table.add_row([
            tenant.tenant_id.clone(),
            tenant.wave_name.clone(),
            name(tenant.state()),
            tenant.from_version.to_string(),
            tenant.version.to_string(),
            tenant
                .migrations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            tenant.detail.clone(),
        ]);
    }
    table
}
