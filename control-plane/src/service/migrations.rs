//! StartMigration, GetMigration, WatchMigration, ResumeMigration.

use std::time::{Duration, SystemTime};

use silo_proto::controlplane::v1 as pb;
use uuid::Uuid;

use super::{ControlPlaneService, convert, tenant_id};
use crate::{
    catalog::{FailurePolicy, OperationKind, OperationRecord, TenantMigrationState},
    error::{ControlPlaneError, RequestError},
    fleet_migration::{MigrationRequest, WaveSelector, WaveSpec, plan},
};

const DEFAULT_CONCURRENCY: u32 = 8;
const MAX_CONCURRENCY: u32 = 256;

impl ControlPlaneService {
    fn migration_request(
        &self,
        request: &pb::StartMigrationRequest,
    ) -> Result<MigrationRequest, ControlPlaneError> {
        let invalid = |message: String| ControlPlaneError::from(RequestError::Migration(message));
        let target_version = match request.target_version {
            0 => self.migrations.latest_version(),
            v if v > 0 && self.migrations.contains_version(v) => v,
            v => {
                return Err(invalid(format!(
                    "target_version {v} is not a tenant migration this control plane knows"
                )));
            }
        };
        let concurrency = match request.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n if n <= MAX_CONCURRENCY => n,
            n => {
                return Err(invalid(format!(
                    "concurrency {n} is above {MAX_CONCURRENCY}"
                )));
            }
        };
        let failure_policy = match pb::FailurePolicy::try_from(request.failure_policy) {
            Ok(pb::FailurePolicy::Unspecified | pb::FailurePolicy::Stop) => FailurePolicy::Stop,
            Ok(pb::FailurePolicy::Continue) => FailurePolicy::Continue,
            Err(_) => return Err(invalid("unknown failure_policy".into())),
        };
        let mut waves = Vec::new();
        for (index, wave) in request.waves.iter().enumerate() {
            let name = if wave.name.is_empty() {
                format!("wave-{}", index + 1)
            } else {
                wave.name.clone()
            };
            super::bounded("wave name", &name, 100)?;
            let selectors = usize::from(!wave.tenant_ids.is_empty())
                + usize::from(wave.percent > 0)
                + usize::from(!wave.tier.is_empty());
            let selector = match selectors {
                0 => WaveSelector::Rest,
                1 if !wave.tenant_ids.is_empty() => WaveSelector::Tenants(
                    wave.tenant_ids
                        .iter()
                        .map(|id| tenant_id(id))
                        .collect::<Result<_, _>>()?,
                ),
                1 if wave.percent > 0 => {
                    if wave.percent > 100 {
                        return Err(invalid(format!("wave {name}: percent must be 1 to 100")));
                    }
                    WaveSelector::Percent(wave.percent)
                }
                1 => WaveSelector::Tier(wave.tier.clone()),
                _ => {
                    return Err(invalid(format!(
                        "wave {name}: give one of tenant_ids, percent or tier"
                    )));
                }
            };
            let wave_concurrency = match wave.concurrency {
                0 => concurrency,
                n if n <= MAX_CONCURRENCY => n,
                n => {
                    return Err(invalid(format!(
                        "wave {name}: concurrency {n} is above {MAX_CONCURRENCY}"
                    )));
                }
            };
            waves.push(WaveSpec {
                name,
                selector,
                concurrency: wave_concurrency,
            });
        }
        Ok(MigrationRequest {
            target_version,
            waves,
            concurrency,
            failure_policy,
            dry_run: request.dry_run,
            include_suspended: request.include_suspended,
        })
    }

    pub(super) async fn start_migration(
        &self,
        request: pb::StartMigrationRequest,
    ) -> Result<pb::Operation, ControlPlaneError> {
        super::bounded("request_id", &request.request_id, 128)?;
        let parsed = self.migration_request(&request)?;
        let tenants = self.catalog.plan_tenants().await?;
        let (params, rows) = plan(&tenants, &parsed, &self.migrations)?;
        // One entry per tenant of the fleet: gone before the next one is built.
        drop(tenants);
        let request_id = if request.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            request.request_id
        };
        let operation = self
            .catalog
            .start_migration(&request_id, &params, &rows)
            .await?;
        self.operation_message(&operation).await
    }

    pub(super) async fn resume_migration(
        &self,
        id: Uuid,
    ) -> Result<pb::Operation, ControlPlaneError> {
        let operation = self.catalog.resume_migration(id).await?;
        self.operation_message(&operation).await
    }

    /// The operation as the API shows it; migration runs carry their counts.
    pub(super) async fn operation_message(
        &self,
        record: &OperationRecord,
    ) -> Result<pb::Operation, ControlPlaneError> {
        let mut message = convert::operation(record);
        if record.kind == OperationKind::MigrateTenants {
            let counted = self.catalog.migration_state_counts(record.id).await?;
            message.migration = Some(counts(record, &counted)?);
        }
        Ok(message)
    }

    pub(super) async fn migration_run(
        &self,
        id: Uuid,
    ) -> Result<pb::MigrationRun, ControlPlaneError> {
        let record = self.catalog.get_operation(id).await?;
        migration_run(&self.catalog, &self.migrations, &record).await
    }
}

pub(super) async fn migration_run(
    catalog: &crate::catalog::Catalog,
    migrations: &crate::migrations::MigrationSet,
    record: &OperationRecord,
) -> Result<pb::MigrationRun, ControlPlaneError> {
    if record.kind != OperationKind::MigrateTenants {
        return Err(ControlPlaneError::Missing("migration"));
    }
    let params = record.migration_params()?;
    let rows = catalog.migration_tenants(record.id).await?;
    let counted: Vec<(TenantMigrationState, u32)> = {
        let mut counted: Vec<(TenantMigrationState, u32)> = Vec::new();
        for row in &rows {
            match counted.iter_mut().find(|(state, _)| *state == row.state) {
                Some((_, n)) => *n += 1,
                None => counted.push((row.state, 1)),
            }
        }
        counted
    };
    let counts = counts(record, &counted)?;
    let mut operation = convert::operation(record);
    operation.migration = Some(counts);
    let tenants = rows
        .iter()
        .map(|row| {
            let until = if matches!(
                row.state,
                TenantMigrationState::Planned | TenantMigrationState::Pending
            ) {
                params.target_version
            } else {
                row.version
            };
            let took = match (row.started_at, row.finished_at) {
                (Some(start), Some(end)) => end.duration_since(start).ok(),
                (Some(start), None) => SystemTime::now().duration_since(start).ok(),
                _ => None,
            };
            pb::TenantMigration {
                tenant_id: row.tenant_id.to_string(),
                wave: u32::try_from(row.wave).unwrap_or(0),
                wave_name: params
                    .waves
                    .get(usize::try_from(row.wave).unwrap_or(usize::MAX))
                    .map(|w| w.name.clone())
                    .unwrap_or_default(),
                state: state(row.state).into(),
                from_version: row.from_version,
                version: row.version,
                migrations: if row.state == TenantMigrationState::Skipped {
                    Vec::new()
                } else {
                    migrations
                        .between(row.from_version, until)
                        .map(|m| m.version)
                        .collect()
                },
                detail: row.detail.clone(),
                duration: took.map(convert::duration),
            }
        })
        .collect();
    Ok(pb::MigrationRun {
        operation: Some(operation.clone()),
        counts: operation.migration,
        tenants,
    })
}

fn state(state: TenantMigrationState) -> pb::TenantMigrationState {
    match state {
        TenantMigrationState::Planned => pb::TenantMigrationState::Planned,
        TenantMigrationState::Pending => pb::TenantMigrationState::Pending,
        TenantMigrationState::Running => pb::TenantMigrationState::Running,
        TenantMigrationState::Done => pb::TenantMigrationState::Done,
        TenantMigrationState::Failed => pb::TenantMigrationState::Failed,
        TenantMigrationState::Skipped => pb::TenantMigrationState::Skipped,
    }
}

/// A run's counts from how many of its tenants are in each state.
fn counts(
    record: &OperationRecord,
    counted: &[(TenantMigrationState, u32)],
) -> Result<pb::MigrationCounts, ControlPlaneError> {
    let params = record.migration_params()?;
    let count = |wanted: TenantMigrationState| {
        counted
            .iter()
            .filter(|(state, _)| *state == wanted)
            .map(|(_, n)| *n)
            .sum::<u32>()
    };
    Ok(pb::MigrationCounts {
        target_version: params.target_version,
        total: counted.iter().map(|(_, n)| *n).sum(),
        done: count(TenantMigrationState::Done),
        failed: count(TenantMigrationState::Failed),
        pending: count(TenantMigrationState::Pending) + count(TenantMigrationState::Planned),
        running: count(TenantMigrationState::Running),
        skipped: count(TenantMigrationState::Skipped),
        dry_run: params.dry_run,
    })
}

/// How often a migration watch re-reads at the latest.
pub(super) const WATCH_RECHECK: Duration = Duration::from_millis(500);
