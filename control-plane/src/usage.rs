//! Database sizes for usage: every tenant's `pg_database_size`, sampled periodically
//! through its provisioner's admin login (one session per server), stored in the catalog
//! for GetUsage.

use std::{collections::BTreeMap, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, CatalogError, Placement},
    provisioner::{ProvisionError, Provisioner, Provisioners, bootstrap},
};

/// Why a sampling pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// One pass: samples the database size of every ACTIVE or SUSPENDED tenant and stores
/// them. A server that cannot be reached is skipped (logged); returns how many tenants
/// were sampled.
pub async fn sample_database_sizes(
    catalog: &Catalog,
    provisioners: &Provisioners,
) -> Result<usize, SampleError> {
    let sampled_at = std::time::SystemTime::now();
    let mut sizes = Vec::new();
    for name in provisioners.names() {
        let Some(provisioner) = provisioners.get(name) else {
            continue;
        };
        // Tenants by server: one admin session per server.
        let mut by_server: BTreeMap<String, (Placement, Vec<(String, String)>)> = BTreeMap::new();
        for tenant in catalog.guarded_tenants(name).await? {
            let Some(placement) = tenant.placement.clone() else {
                continue;
            };
            by_server
                .entry(placement.server.clone())
                .or_insert_with(|| (placement, Vec::new()))
                .1
                .push((tenant.id.to_string(), tenant.database_name.clone()));
        }
        for (server, (placement, tenants)) in by_server {
            match sizes_on(provisioner, &placement, &tenants).await {
                Ok(found) => sizes.extend(found),
                Err(error) => {
                    tracing::warn!(server = %server, error = %error, "sampling database sizes failed; trying again next pass");
                }
            }
        }
    }
    catalog.record_database_sizes(sampled_at, &sizes).await?;
    Ok(sizes.len())
}

async fn sizes_on(
    provisioner: &impl Provisioner,
    placement: &Placement,
    tenants: &[(String, String)],
) -> Result<Vec<(String, i64)>, ProvisionError> {
    let admin = provisioner.admin_access(placement).await?;
    let client = bootstrap::admin_session(&admin).await?;
    let databases: Vec<&str> = tenants.iter().map(|(_, db)| db.as_str()).collect();
    let rows = client
        .query(
            "SELECT datname::text, pg_database_size(oid) FROM pg_database
             WHERE datname = ANY($1)",
            &[&databases],
        )
        .await
        .map_err(|e| bootstrap::classify("reading database sizes", &e))?;
    let by_database: BTreeMap<String, i64> = rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    Ok(tenants
        .iter()
        .filter_map(|(tenant, db)| by_database.get(db).map(|bytes| (tenant.clone(), *bytes)))
        .collect())
}

/// Samples every `every` until `shutdown`, the first pass at once.
pub async fn sample_periodically(
    catalog: Catalog,
    provisioners: Provisioners,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match sample_database_sizes(&catalog, &provisioners).await {
            Ok(tenants) => tracing::debug!(tenants, "database sizes sampled"),
            Err(error) => tracing::warn!(error = %error, "sampling database sizes failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
