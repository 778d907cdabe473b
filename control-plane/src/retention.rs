//! Retention: the tenant-event log and finished operations are trimmed in the background,
//! so that nothing in silo costs in proportion to the catalog's age. Small batches, each
//! its own statement, so the catalog never holds a long lock; several replicas may trim
//! at once (a row deleted twice is deleted once).

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError};

/// Rows deleted per statement.
const BATCH: i64 = 1_000;

/// How long what is kept, and how often it is trimmed.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Tenant events older than this are deleted (the newest event always stays). A
    /// router that was away longer re-resolves what it caches instead of replaying.
    pub events: Duration,
    /// Finished operations older than this are deleted, except tenant deletions.
    pub operations: Duration,
    /// Usage records and database-size samples older than this are deleted.
    pub usage: Duration,
    /// A trimming pass this often.
    pub every: Duration,
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Tenant events deleted.
    pub events: u64,
    /// Finished operations deleted (their steps and migration rows go with them).
    pub operations: u64,
    /// Usage rows and database-size samples deleted.
    pub usage: u64,
}

/// One pass: deletes, in batches, every event and operation past its retention.
pub async fn trim(catalog: &Catalog, retention: &Retention) -> Result<Trimmed, CatalogError> {
    let now = SystemTime::now();
    let mut trimmed = Trimmed::default();
    let events_cutoff = now
        .checked_sub(retention.events)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    loop {
        let deleted = catalog.delete_events_before(events_cutoff, BATCH).await?;
        trimmed.events += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    let operations_cutoff = now
        .checked_sub(retention.operations)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    loop {
        let deleted = catalog
            .delete_operations_before(operations_cutoff, BATCH)
            .await?;
        trimmed.operations += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    let usage_cutoff = now
        .checked_sub(retention.usage)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    loop {
        let deleted = catalog.delete_usage_before(usage_cutoff, BATCH).await?;
        trimmed.usage += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    Ok(trimmed)
}

/// Trims every `retention.every` until `shutdown`; one line per pass that deleted anything.
pub async fn run_periodically(catalog: Catalog, retention: Retention, shutdown: CancellationToken) {
    loop {
        match trim(&catalog, &retention).await {
            Ok(trimmed) if trimmed != Trimmed::default() => {
                tracing::info!(
                    events = trimmed.events,
                    operations = trimmed.operations,
                    usage = trimmed.usage,
                    "retention pass trimmed the catalog"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "retention pass failed; trying again later")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retention.every) => {}
        }
    }
}
