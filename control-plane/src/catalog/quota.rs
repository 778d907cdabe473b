//! Monthly quotas in the catalog: a tenant's own quotas, this month's use from
//! `tenant_usage`, and the used-up flag routers refuse calls by.

use super::{Catalog, CatalogError, EventKind, events, tenants::locked_state};
use crate::tenant::TenantId;

/// A tenant's quotas and this calendar month's (UTC) use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUse {
    /// The tenant.
    pub tenant_id: String,
    /// Its tier (whose quotas apply where it has none of its own).
    pub tier: String,
    /// Its own call quota, if set.
    pub own_calls: Option<i64>,
    /// Its own row quota, if set.
    pub own_rows: Option<i64>,
    /// Calls this month, over every router.
    pub calls_used: i64,
    /// Rows returned plus affected this month.
    pub rows_used: i64,
    /// Which quota is used up as stored now; empty while none is.
    pub exhausted: String,
}

impl Catalog {
    /// The quotas and this month's use of each live tenant in `tenants` (unknown or
    /// DELETED ones are left out). With `quota_tiers`, only tenants that can have a quota
    /// are read (one of their own, a tier of these, or one used up now): the month's use
    /// is summed for no other.
    pub async fn quota_use(
        &self,
        tenants: &[String],
        quota_tiers: Option<&[String]>,
    ) -> Result<Vec<QuotaUse>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT t.tenant_id, t.tier, t.quota_calls, t.quota_rows, t.quota_exhausted,
                        coalesce(sum(u.calls), 0)::bigint,
                        coalesce(sum(u.rows_returned + u.rows_affected), 0)::bigint
                 FROM tenants t
                 LEFT JOIN tenant_usage u ON u.tenant_id = t.tenant_id
                      AND u.minute >= date_trunc('month', now(), 'UTC')
                 WHERE t.tenant_id = ANY($1) AND t.state <> 'DELETED'
                   AND ($2::text[] IS NULL OR t.tier = ANY($2) OR t.quota_calls IS NOT NULL
                        OR t.quota_rows IS NOT NULL OR t.quota_exhausted <> '')
                 GROUP BY t.tenant_id",
                &[&tenants, &quota_tiers],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(QuotaUse {
                    tenant_id: row.try_get(0)?,
                    tier: row.try_get(1)?,
                    own_calls: row.try_get(2)?,
                    own_rows: row.try_get(3)?,
                    exhausted: row.try_get(4)?,
                    calls_used: row.try_get(5)?,
                    rows_used: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// The tenants a quota is used up for now.
    pub async fn quota_exhausted_tenants(&self) -> Result<Vec<String>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT tenant_id FROM tenants WHERE quota_exhausted <> '' AND state <> 'DELETED'",
                &[],
            )
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Records which quota of the tenant is used up (`""`: none), with a `quota_changed`
    /// event when that changes. Returns whether it changed.
    pub async fn set_quota_exhausted(
        &self,
        id: &TenantId,
        exhausted: &str,
    ) -> Result<bool, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let state = locked_state(&tx, id).await?;
        let changed = tx
            .execute(
                "UPDATE tenants SET quota_exhausted = $2, updated_at = now()
                 WHERE tenant_id = $1 AND quota_exhausted <> $2",
                &[&id.as_str(), &exhausted],
            )
            .await?
            > 0;
        if changed {
            events::append(&tx, id, EventKind::QuotaChanged, state).await?;
        }
        tx.commit().await?;
        drop(conn);
        if changed {
            self.changes.notify();
        }
        Ok(changed)
    }

    /// Sets the tenant's own quotas (`None`: its tier's).
    ///
    /// # Errors
    /// [`CatalogError::TenantNotFound`] for an unknown or DELETED tenant.
    pub async fn set_tenant_quota(
        &self,
        id: &TenantId,
        calls: Option<i64>,
        rows: Option<i64>,
    ) -> Result<(), CatalogError> {
        let conn = self.conn().await?;
        let updated = conn
            .execute(
                "UPDATE tenants SET quota_calls = $2, quota_rows = $3, updated_at = now()
                 WHERE tenant_id = $1 AND state <> 'DELETED'",
                &[&id.as_str(), &calls, &rows],
            )
            .await?;
        if updated == 0 {
            return Err(CatalogError::TenantNotFound);
        }
        Ok(())
    }
}
