//! The reconciler: pages through every RDS instance, matches the `silo:tenant-id` tags with
//! the catalog, and reports silo instances no live tenant owns and tenants whose instance is
//! missing. It deletes nothing unless told to, and then only silo-tagged orphans, each with
//! a final snapshot. Runs periodically and on demand (the ReconcileRdsInstances call).

use std::{collections::BTreeMap, time::Duration};

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::{AwsFault, RdsDetails, RdsProvisioner, identifiers, tenant_tag};
use crate::{
    catalog::{Catalog, CatalogError, TenantFilter, TenantRecord},
    provisioner::{Availability, ProvisionError},
    tenant::TenantState,
};

/// Why a reconcile pass stopped before its report was complete.
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// DescribeDBInstances failed (after the SDK's retries); the message is AWS's, without
    /// credentials.
    #[error("listing RDS instances: {0}")]
    Aws(String),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A silo-tagged instance that no live tenant in the catalog owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanInstance {
    /// RDS DB instance identifier.
    pub instance_id: String,
    /// The tenant id its `silo:tenant-id` tag names (which may never have existed or be
    /// `DELETED`).
    pub tenant_id: String,
    /// The instance status RDS reports (`available`, `deleting`, ...).
    pub status: String,
    /// What happened when deletion was asked for (empty when it was not).
    pub action: String,
}

/// A tenant the catalog places on an instance that RDS does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingInstance {
    /// The tenant.
    pub tenant_id: String,
    /// The DB instance identifier its placement names.
    pub instance_id: String,
    /// The tenant's state; only tenants that must have an instance (`MIGRATING`, `ACTIVE`,
    /// `SUSPENDED`) are reported.
    pub state: TenantState,
}

/// What a reconcile pass found (and, if asked, deleted); returned by ReconcileRdsInstances
/// and logged by the periodic pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Every instance DescribeDBInstances listed, silo's or not.
    pub instances_seen: usize,
    /// Instances without a `silo:tenant-id` tag: not silo's, never touched.
    pub foreign_instances: usize,
    /// Silo-tagged instances that are the placement of the tenant their tag names, or an
    /// end of a move of that tenant that has not finished.
    pub matched: usize,
    /// Silo-tagged instances whose tagged tenant is gone, `DELETED`, or placed elsewhere.
    pub orphans: Vec<OrphanInstance>,
    /// Live tenants whose instance RDS does not list.
    pub missing: Vec<MissingInstance>,
}

/// States in which a tenant's instance must exist.
fn needs_instance(state: TenantState) -> bool {
    matches!(
        state,
        TenantState::Migrating | TenantState::Active | TenantState::Suspended
    )
}

async fn rds_tenants(catalog: &Catalog) -> Result<BTreeMap<String, TenantRecord>, CatalogError> {
    let mut tenants = BTreeMap::new();
    let mut filter = TenantFilter {
        limit: 500,
        ..TenantFilter::default()
    };
    loop {
        let page = catalog.list_tenants(&filter).await?;
        for tenant in page.tenants {
            if tenant.provisioner == "rds" && tenant.state != TenantState::Deleted {
                tenants.insert(tenant.id.to_string(), tenant);
            }
        }
        match page.next_after {
            Some(after) => filter.after = Some(after),
            None => return Ok(tenants),
        }
    }
}

/// Compares RDS with the catalog; with `delete_orphans`, also deletes the orphans.
pub async fn reconcile(
    rds: &RdsProvisioner,
    catalog: &Catalog,
    delete_orphans: bool,
) -> Result<ReconcileReport, ReconcileError> {
    let tenants = rds_tenants(catalog).await?;
    // Read before and after listing the instances: a move started meanwhile may have made
    // its instance already.
    let mut in_moves: std::collections::BTreeSet<(String, String)> =
        catalog.servers_in_moves().await?.into_iter().collect();
    let mut report = ReconcileReport::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = rds
        .inner
        .rds
        .describe_db_instances()
        .into_paginator()
        .page_size(100)
        .send();
    let mut listed = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            ReconcileError::Aws(AwsFault::from_sdk("describing RDS instances", &e).message)
        })?;
        listed.extend(page.db_instances().iter().cloned());
    }
    in_moves.extend(catalog.servers_in_moves().await?);
    for instance in &listed {
        report.instances_seen += 1;
        let id = instance
            .db_instance_identifier()
            .unwrap_or_default()
            .to_owned();
        seen.insert(id.clone());
        let Some(owner) = tenant_tag(instance) else {
            report.foreign_instances += 1;
            continue;
        };
        let owned = tenants
            .get(owner)
            .and_then(|t| t.placement.as_ref())
            .is_some_and(|p| p.server == id)
            || in_moves.contains(&(owner.to_owned(), id.clone()));
        if owned {
            report.matched += 1;
            continue;
        }
        let status = instance
            .db_instance_status()
            .unwrap_or("unknown")
            .to_owned();
        tracing::warn!(instance_id = %id, tenant_id = %owner, status = %status, "rds instance has no tenant");
        let mut orphan = OrphanInstance {
            instance_id: id.clone(),
            tenant_id: owner.to_owned(),
            status,
            action: String::new(),
        };
        if delete_orphans {
            let request_id = instance
                .tag_list()
                .iter()
                .find(|t| t.key() == Some(identifiers::REQUEST_TAG))
                .and_then(|t| t.value())
                .unwrap_or("orphan");
            orphan.action = match rds.delete_instance(&id, owner, request_id).await {
                Ok(Availability::Ready) => "gone".into(),
                Ok(Availability::Waiting { status, .. }) => status,
                Err(ProvisionError::Transient(e) | ProvisionError::Permanent(e)) => {
                    format!("delete failed: {e}")
                }
            };
        }
        report.orphans.push(orphan);
    }
    for (tenant_id, tenant) in &tenants {
        let Some(placement) = &tenant.placement else {
            continue;
        };
        if needs_instance(tenant.state) && !seen.contains(&placement.server) {
            let instance_id = RdsDetails::from_placement(placement)
                .map_or_else(|_| placement.server.clone(), |d| d.instance_id);
            tracing::warn!(tenant_id = %tenant_id, instance_id = %instance_id, "tenant has no rds instance");
            report.missing.push(MissingInstance {
                tenant_id: tenant_id.clone(),
                instance_id,
                state: tenant.state,
            });
        }
    }
    Ok(report)
}

/// Reconciles every `interval` until `shutdown`, reporting only (it never deletes).
pub async fn run_periodically(
    rds: RdsProvisioner,
    catalog: Catalog,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match reconcile(&rds, &catalog, false).await {
            Ok(report) => tracing::info!(
                instances = report.instances_seen,
                matched = report.matched,
                orphans = report.orphans.len(),
                missing = report.missing.len(),
                "rds reconciliation done"
            ),
            Err(error) => tracing::warn!(error = %error, "rds reconciliation failed"),
        }
    }
}
