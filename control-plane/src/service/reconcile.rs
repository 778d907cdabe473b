//! ReconcileRdsInstances: the `rds` provisioner's reconciler, on demand.

use silo_proto::controlplane::v1 as pb;

use super::{Caller, ControlPlaneService, convert};
use crate::{
    error::ControlPlaneError,
    provisioner::{AnyProvisioner, rds},
};

pub(super) async fn rds_instances(
    service: &ControlPlaneService,
    caller: &Caller,
    delete_orphans: bool,
) -> Result<pb::ReconcileRdsInstancesResponse, ControlPlaneError> {
    let Some(AnyProvisioner::Rds(provisioner)) = service.provisioners.get("rds") else {
        return Err(ControlPlaneError::ProvisionerNotConfigured("rds".into()));
    };
    let report = rds::reconcile(provisioner, &service.catalog, delete_orphans).await?;
    tracing::info!(
        audit = delete_orphans,
        subject = %caller.subject,
        role = %caller.role,
        delete_orphans,
        orphans = report.orphans.len(),
        missing = report.missing.len(),
        "rds reconciliation requested"
    );
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(pb::ReconcileRdsInstancesResponse {
        instances_seen: count(report.instances_seen),
        foreign_instances: count(report.foreign_instances),
        matched: count(report.matched),
        orphans: report
            .orphans
            .into_iter()
            .map(|o| pb::OrphanRdsInstance {
                instance_id: o.instance_id,
                tenant_id: o.tenant_id,
                status: o.status,
                action: o.action,
            })
            .collect(),
        missing: report
            .missing
            .into_iter()
            .map(|m| pb::MissingRdsInstance {
                tenant_id: m.tenant_id,
                instance_id: m.instance_id,
                state: convert::state(m.state).into(),
            })
            .collect(),
    })
}
