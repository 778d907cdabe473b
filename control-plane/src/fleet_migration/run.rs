//! Running a planned migration: wave by wave, each with its own concurrency; a wave starts
//! only when every earlier wave finished without failures.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::{StreamExt, stream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    catalog::{CatalogError, FailurePolicy, OperationRecord, TenantMigrationState},
    onboarding::{Onboarding, Outcome, StepError},
    provisioner::{ProvisionError, Provisioner, TenantSpec, bootstrap},
    tenant::{TenantId, TenantState},
};

impl Onboarding {
    pub(crate) async fn migrate_fleet(
        &self,
        operation: &OperationRecord,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, StepError> {
        let params = operation.migration_params()?;
        let target = params.target_version;
        for (index, wave) in params.waves.iter().enumerate() {
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            let rows = self.catalog.migration_tenants(operation.id).await?;
            let todo: Vec<TenantId> = rows
                .iter()
                .filter(|row| row.wave == index)
                .filter(|row| {
                    matches!(
                        row.state,
                        TenantMigrationState::Pending | TenantMigrationState::Running
                    )
                })
                .map(|row| row.tenant_id.clone())
                .collect();
            let stopped = AtomicBool::new(false);
            let results: Vec<Result<(), CatalogError>> = stream::iter(todo)
                .map(|tenant| {
                    let stopped = &stopped;
                    async move {
                        let give_up = shutdown.is_cancelled()
                            || (params.failure_policy == FailurePolicy::Stop
                                && stopped.load(Ordering::SeqCst));
                        if give_up {
                            return Ok(());
                        }
                        let ok = self
                            .migrate_tenant(operation.id, &tenant, target, params.include_suspended)
                            .await?;
                        if !ok {
                            stopped.store(true, Ordering::SeqCst);
                        }
                        Ok(())
                    }
                })
                .buffer_unordered(wave.concurrency.max(1) as usize)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
            if shutdown.is_cancelled() {
                return Ok(Outcome::Wait(
                    Duration::ZERO,
                    "control plane stopping".into(),
                ));
            }
            let rows = self.catalog.migration_tenants(operation.id).await?;
            let in_wave = rows.iter().filter(|row| row.wave == index);
            let failed = in_wave
                .clone()
                .filter(|row| row.state == TenantMigrationState::Failed)
                .count();
            let left = in_wave
                .filter(|row| row.state == TenantMigrationState::Pending)
                .count();
            if failed > 0 {
                let later = if index + 1 < params.waves.len() as i32 {
                    "; later waves were not started"
                } else {
                    ""
                };
                return Ok(Outcome::Failed(format!(
                    "wave {}: {failed} tenant(s) failed, {left} not started{later}; fix them and call ResumeMigration",
                    wave.name
                )));
            }
        }
        Ok(Outcome::Done)
    }

    /// Migrates one tenant to `target` and records the result; false when it failed.
    async fn migrate_tenant(
        &self,
        run: Uuid,
        tenant: &TenantId,
        target: i64,
        include_suspended: bool,
    ) -> Result<bool, CatalogError> {
        use TenantMigrationState::{Done, Failed, Running, Skipped};
        self.catalog
            .set_tenant_migration(run, tenant, Running, None, "")
            .await?;
        let record = match self.catalog.get_tenant(tenant).await {
            Ok(record) => record,
            Err(CatalogError::TenantNotFound) => {
                self.catalog
                    .set_tenant_migration(run, tenant, Skipped, None, "tenant is gone")
                    .await?;
                return Ok(true);
            }
            Err(error) => return Err(error),
        };
        let servable = record.state == TenantState::Active
            || (include_suspended && record.state == TenantState::Suspended);
        if !servable {
            let detail = format!("tenant is {} now", record.state);
            self.catalog
                .set_tenant_migration(run, tenant, Skipped, None, &detail)
                .await?;
            return Ok(true);
        }
        if record.schema_version >= target {
            let detail = format!("already at version {}", record.schema_version);
            self.catalog
                .set_tenant_migration(run, tenant, Done, Some(record.schema_version), &detail)
                .await?;
            return Ok(true);
        }
        let result = self.apply_to_silo(&record, target).await;
        match result {
            Ok(version) => {
                let detail = format!("{} -> {version}", record.schema_version);
                self.catalog
                    .set_tenant_migration(run, tenant, Done, Some(version), &detail)
                    .await?;
                tracing::info!(tenant_id = %tenant, from = record.schema_version, to = version, "tenant migrated");
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(tenant_id = %tenant, error = %error, "tenant migration failed");
                self.catalog
                    .set_tenant_migration(run, tenant, Failed, None, &error.to_string())
                    .await?;
                Ok(false)
            }
        }
    }

    async fn apply_to_silo(
        &self,
        record: &crate::catalog::TenantRecord,
        target: i64,
    ) -> Result<i64, ProvisionError> {
        let provisioner = self.provisioners.get(&record.provisioner).ok_or_else(|| {
            ProvisionError::Permanent(format!(
                "provisioner {} is not configured",
                record.provisioner
            ))
        })?;
        let placement = record
            .placement
            .as_ref()
            .ok_or_else(|| ProvisionError::Permanent("tenant has no placement".into()))?;
        let sealed = record
            .credentials
            .as_ref()
            .ok_or_else(|| ProvisionError::Permanent("tenant has no credentials".into()))?;
        let password = self
            .cipher
            .decrypt(record.id.as_str(), sealed)
            .map_err(|e| ProvisionError::Permanent(e.to_string()))?;
        let admin = provisioner.admin_access(placement).await?;
        let spec = TenantSpec::of(record);
        bootstrap::migrate_silo_to(&admin, &spec, &password, &self.migrations, target).await
    }
}
