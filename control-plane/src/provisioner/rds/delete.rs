//! Deleting a tenant's instance: deletion protection off (applied immediately), then
//! DeleteDBInstance with a deterministic final snapshot, then wait until RDS no longer
//! knows the instance. Only instances whose `silo:tenant-id` tag names the tenant are
//! touched; a final snapshot of ours that exists already counts as taken.

use std::time::Duration;

use super::{AwsFault, RdsProvisioner, identifiers::final_snapshot_id, tenant_tag};
use crate::provisioner::{Availability, ProvisionError};

const DELETE_POLL: Duration = Duration::from_secs(15);

impl RdsProvisioner {
    /// One step of deleting `instance_id` for `tenant_id`; Waiting until it is gone.
    pub async fn delete_instance(
        &self,
        instance_id: &str,
        tenant_id: &str,
        request_id: &str,
    ) -> Result<Availability, ProvisionError> {
        let retry_after = self.inner.timing.min.min(DELETE_POLL);
        let waiting = |status: String| {
            Ok(Availability::Waiting {
                status,
                retry_after,
            })
        };
        let Some(instance) = self.describe(instance_id).await? else {
            tracing::info!(instance_id, "rds instance is gone");
            return Ok(Availability::Ready);
        };
        if tenant_tag(&instance) != Some(tenant_id) {
            tracing::warn!(
                instance_id,
                tenant_id,
                "rds instance is not this tenant's; left untouched"
            );
            return Ok(Availability::Ready);
        }
        let status = instance.db_instance_status().unwrap_or("unknown");
        if status == "deleting" {
            return waiting(format!("instance {instance_id} is deleting"));
        }
        if instance.deletion_protection() == Some(true) {
            self.inner
                .rds
                .modify_db_instance()
                .db_instance_identifier(instance_id)
                .deletion_protection(false)
                .apply_immediately(true)
                .send()
                .await
                .map_err(|e| {
                    AwsFault::from_sdk(
                        &format!("turning deletion protection off on {instance_id}"),
                        &e,
                    )
                })?;
        }
        let snapshot = final_snapshot_id(instance_id, request_id);
        let mut skip_snapshot = false;
        loop {
            let request = self
                .inner
                .rds
                .delete_db_instance()
                .db_instance_identifier(instance_id)
                .delete_automated_backups(false);
            let request = if skip_snapshot {
                request.skip_final_snapshot(true)
            } else {
                request
                    .skip_final_snapshot(false)
                    .final_db_snapshot_identifier(&snapshot)
            };
            let deleted = request.send().await;
            let fault = match deleted {
                Ok(_) => {
                    tracing::info!(instance_id, snapshot = %snapshot, "rds instance deletion requested");
                    return waiting(format!(
                        "instance {instance_id} is deleting (final snapshot {snapshot})"
                    ));
                }
                Err(e) => AwsFault::from_sdk(&format!("deleting RDS instance {instance_id}"), &e),
            };
            if fault.is("DBInstanceNotFound") {
                return Ok(Availability::Ready);
            }
            if fault.is("InvalidDBInstanceState") || fault.is("InvalidParameterCombination") {
                // Busy (modifying, backing up) or the protection change not applied yet.
                return waiting(format!(
                    "instance {instance_id} cannot be deleted yet: {}",
                    fault.message
                ));
            }
            if fault.is("DBSnapshotAlreadyExists") && !skip_snapshot {
                if self.snapshot_of(&snapshot).await?.as_deref() == Some(instance_id) {
                    tracing::info!(instance_id, snapshot = %snapshot, "final snapshot exists already");
                    skip_snapshot = true;
                    continue;
                }
                return Err(ProvisionError::Permanent(format!(
                    "snapshot {snapshot} exists and was not taken from {instance_id}; instance left in place"
                )));
            }
            return Err(fault.into());
        }
    }

    /// The instance a snapshot was taken from, or None when there is no such snapshot.
    pub async fn snapshot_of(&self, snapshot_id: &str) -> Result<Option<String>, AwsFault> {
        let described = self
            .inner
            .rds
            .describe_db_snapshots()
            .db_snapshot_identifier(snapshot_id)
            .send()
            .await;
        match described {
            Ok(output) => Ok(output
                .db_snapshots()
                .first()
                .and_then(|s| s.db_instance_identifier())
                .map(str::to_owned)),
            Err(e) => {
                let fault = AwsFault::from_sdk(&format!("describing snapshot {snapshot_id}"), &e);
                if fault.is("DBSnapshotNotFound") {
                    Ok(None)
                } else {
                    Err(fault)
                }
            }
        }
    }
}
