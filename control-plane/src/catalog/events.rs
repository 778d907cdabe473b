//! The tenant-event log that routers follow (WatchTenants).

use std::time::SystemTime;

use tokio_postgres::Transaction;

use super::{
    Catalog, CatalogError, EventKind, TenantEvent, notify::CHANNEL, tenants::parse_tenant_id,
};
use crate::tenant::{TenantId, TenantState};

/// Serializes event writers. Taken inside the writing transaction and held until it commits,
/// so sequence numbers are handed out in commit order: a reader that has seen N will never
/// later find a committed event below N that it did not see.
const EVENT_LOCK_KEY: i64 = 0x5110_0001;

pub(super) async fn append(
    tx: &Transaction<'_>,
    tenant: &TenantId,
    kind: EventKind,
    state: TenantState,
) -> Result<(), CatalogError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENT_LOCK_KEY])
        .await?;
    tx.execute(
        "INSERT INTO tenant_events (sequence, tenant_id, kind, state)
         SELECT coalesce(max(sequence), 0) + 1, $1, $2, $3 FROM tenant_events",
        &[&tenant.as_str(), &kind.as_str(), &state.as_str()],
    )
    .await?;
    tx.execute(&format!("NOTIFY {CHANNEL}"), &[]).await?;
    Ok(())
}

impl Catalog {
    /// Events with a sequence number above `after`, oldest first.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<TenantEvent>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT sequence, tenant_id, kind, state, occurred_at FROM tenant_events
                 WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let tenant: String = row.try_get(1)?;
                let kind: String = row.try_get(2)?;
                let state: String = row.try_get(3)?;
                let occurred_at: SystemTime = row.try_get(4)?;
                Ok(TenantEvent {
                    sequence: row.try_get(0)?,
                    tenant_id: parse_tenant_id(&tenant)?,
                    kind: EventKind::parse(&kind)?,
                    state: state
                        .parse()
                        .map_err(|e: crate::tenant::UnknownTenantState| {
                            CatalogError::Corrupt(e.to_string())
                        })?,
                    occurred_at,
                })
            })
            .collect()
    }

    /// The oldest sequence number still kept (0 when the log is empty).
    pub async fn oldest_sequence(&self) -> Result<i64, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT coalesce(min(sequence), 0) FROM tenant_events", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Deletes at most `batch` of the oldest events that occurred before `cutoff`, never the
    /// newest one (the next sequence number is computed from it). Returns how many went.
    pub async fn delete_events_before(
        &self,
        cutoff: std::time::SystemTime,
        batch: i64,
    ) -> Result<u64, CatalogError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "DELETE FROM tenant_events WHERE sequence IN (
                     SELECT sequence FROM tenant_events
                     WHERE occurred_at < $1
                       AND sequence < (SELECT max(sequence) FROM tenant_events)
                     ORDER BY sequence LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?)
    }

    /// Deletes at most `batch` of the finished operations (with their steps and migration
    /// rows) that finished before `cutoff`, except tenant deletions, which stay as the
    /// record of who deleted what and when. Returns how many went.
    pub async fn delete_operations_before(
        &self,
        cutoff: std::time::SystemTime,
        batch: i64,
    ) -> Result<u64, CatalogError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "DELETE FROM operations WHERE operation_id IN (
                     SELECT operation_id FROM operations
                     WHERE status IN ('succeeded', 'failed') AND finished_at < $1
                       AND kind <> 'delete_tenant'
                     ORDER BY finished_at LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?)
    }

    /// The newest sequence number (0 when the log is empty).
    pub async fn latest_sequence(&self) -> Result<i64, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT coalesce(max(sequence), 0) FROM tenant_events", &[])
            .await?;
        Ok(row.try_get(0)?)
    }
}
