//! Catalog records to proto messages, and proto enums to domain values.

use std::time::{Duration, SystemTime};

use silo_proto::controlplane::v1 as pb;

use crate::{
    catalog::{
        EventKind, OperationKind, OperationRecord, OperationStatus, StepRecord, StepStatus,
        TenantEvent, TenantRecord,
    },
    tenant::TenantState,
};

pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

pub fn state(state: TenantState) -> pb::TenantState {
    match state {
        TenantState::Requested => pb::TenantState::Requested,
        TenantState::Provisioning => pb::TenantState::Provisioning,
        TenantState::WaitingAvailable => pb::TenantState::WaitingAvailable,
        TenantState::Migrating => pb::TenantState::Migrating,
        TenantState::Active => pb::TenantState::Active,
        TenantState::Suspended => pb::TenantState::Suspended,
        TenantState::Deleting => pb::TenantState::Deleting,
        TenantState::Deleted => pb::TenantState::Deleted,
        TenantState::Failed => pb::TenantState::Failed,
        TenantState::Moving => pb::TenantState::Moving,
    }
}

/// None for UNSPECIFIED (no filter); Err for a number the API does not define.
pub fn state_filter(raw: i32) -> Result<Option<TenantState>, ()> {
    let parsed = pb::TenantState::try_from(raw).map_err(|_| ())?;
    Ok(match parsed {
        pb::TenantState::Unspecified => None,
        pb::TenantState::Requested => Some(TenantState::Requested),
        pb::TenantState::Provisioning => Some(TenantState::Provisioning),
        pb::TenantState::WaitingAvailable => Some(TenantState::WaitingAvailable),
        pb::TenantState::Migrating => Some(TenantState::Migrating),
        pb::TenantState::Active => Some(TenantState::Active),
        pb::TenantState::Suspended => Some(TenantState::Suspended),
        pb::TenantState::Deleting => Some(TenantState::Deleting),
        pb::TenantState::Deleted => Some(TenantState::Deleted),
        pb::TenantState::Failed => Some(TenantState::Failed),
        pb::TenantState::Moving => Some(TenantState::Moving),
    })
}

pub fn tenant(record: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        tenant_id: record.id.to_string(),
        display_name: record.display_name.clone(),
        tier: record.tier.clone(),
        state: state(record.state).into(),
        failure_reason: record.failure_reason.clone(),
        provisioner: record.provisioner.clone(),
        placement: record
            .placement
            .as_ref()
            .map(|p| p.server.clone())
            .unwrap_or_default(),
        database: record.database_name.clone(),
        role: record.role_name.clone(),
        name_scheme: record.name_scheme.as_str().to_owned(),
        schema_version: record.schema_version,
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn step(record: &StepRecord) -> pb::OperationStep {
    let status = match record.status {
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::Done => pb::StepStatus::Done,
        StepStatus::Failed => pb::StepStatus::Failed,
    };
    let took = record
        .finished_at
        .unwrap_or_else(SystemTime::now)
        .duration_since(record.started_at)
        .unwrap_or_default();
    pb::OperationStep {
        name: record.name.clone(),
        status: status.into(),
        detail: record.detail.clone(),
        started_at: Some(timestamp(record.started_at)),
        finished_at: record.finished_at.map(timestamp),
        duration: Some(duration(took)),
        attempts: u32::try_from(record.attempts).unwrap_or(0),
    }
}

pub fn operation(record: &OperationRecord) -> pb::Operation {
    let kind = match record.kind {
        OperationKind::CreateTenant => pb::OperationKind::CreateTenant,
        OperationKind::DeleteTenant => pb::OperationKind::DeleteTenant,
        OperationKind::MigrateTenants => pb::OperationKind::MigrateTenants,
        OperationKind::MoveTenant => pb::OperationKind::MoveTenant,
    };
    let status = match record.status {
        OperationStatus::Pending => pb::OperationStatus::Pending,
        OperationStatus::Running => pb::OperationStatus::Running,
        OperationStatus::Succeeded => pb::OperationStatus::Succeeded,
        OperationStatus::Failed => pb::OperationStatus::Failed,
    };
    pb::Operation {
        operation_id: record.id.to_string(),
        kind: kind.into(),
        tenant_id: record
            .tenant_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        request_id: record.request_id.clone(),
        status: status.into(),
        done: record.status.is_done(),
        error: if record.status == OperationStatus::Failed {
            record.error.clone()
        } else {
            String::new()
        },
        steps: record.steps.iter().map(step).collect(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        finished_at: record.finished_at.map(timestamp),
        migration: None,
    }
}

/// A heartbeat on a tenant-event stream whose last event has sequence `last`.
pub fn heartbeat(last: i64) -> pb::TenantEvent {
    pb::TenantEvent {
        sequence: u64::try_from(last).unwrap_or(0),
        tenant_id: String::new(),
        kind: pb::TenantEventKind::Heartbeat.into(),
        state: pb::TenantState::Unspecified.into(),
        occurred_at: Some(timestamp(SystemTime::now())),
    }
}

pub fn event(record: &TenantEvent) -> pb::TenantEvent {
    let kind = match record.kind {
        EventKind::Created => pb::TenantEventKind::Created,
        EventKind::StateChanged => pb::TenantEventKind::StateChanged,
        EventKind::Activated => pb::TenantEventKind::Activated,
        EventKind::Suspended => pb::TenantEventKind::Suspended,
        EventKind::Resumed => pb::TenantEventKind::Resumed,
        EventKind::Deleting => pb::TenantEventKind::Deleting,
        EventKind::Deleted => pb::TenantEventKind::Deleted,
        EventKind::CredentialsRotated => pb::TenantEventKind::CredentialsRotated,
        EventKind::Failed => pb::TenantEventKind::Failed,
        EventKind::TierChanged => pb::TenantEventKind::TierChanged,
        EventKind::ConfigChanged => pb::TenantEventKind::ConfigChanged,
        EventKind::QuotaChanged => pb::TenantEventKind::QuotaChanged,
    };
    pb::TenantEvent {
        sequence: u64::try_from(record.sequence).unwrap_or(0),
        tenant_id: record.tenant_id.to_string(),
        kind: kind.into(),
        state: state(record.state).into(),
        occurred_at: Some(timestamp(record.occurred_at)),
    }
}
