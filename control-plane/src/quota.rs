//! Monthly quotas: after each RecordUsage, the tenants it names are checked against their
//! quotas (their own, else their tier's), and a used-up quota is recorded with a
//! `quota_changed` event, so routers refuse the tenant's SQL calls (RESOURCE_EXHAUSTED
//! naming the quota) until a new month or a raised quota. Routers learn of usage only
//! from their shipments, so a tenant may run past its quota by what its routers serve
//! in one flush interval.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, CatalogError, QuotaUse},
    config::Tiers,
    tenant::TenantId,
};

/// The quotas in force for `usage`'s tenant: its own, else its tier's (`None`: no quota).
pub fn quotas(tiers: &Tiers, usage: &QuotaUse) -> (Option<u64>, Option<u64>) {
    let tier = tiers.get(&usage.tier);
    let own = |value: Option<i64>| value.map(|v| u64::try_from(v).unwrap_or(0));
    (
        own(usage.own_calls).or(tier.and_then(|t| t.monthly_call_quota)),
        own(usage.own_rows).or(tier.and_then(|t| t.monthly_row_quota)),
    )
}

/// Which quota `usage` has used up, as routers tell the tenant; empty while none is.
pub fn exhausted(tiers: &Tiers, usage: &QuotaUse) -> String {
    let (calls, rows) = quotas(tiers, usage);
    let used = |value: i64| u64::try_from(value).unwrap_or(0);
    if let Some(quota) = calls
        && used(usage.calls_used) >= quota
    {
        return format!(
            "monthly call quota of {quota} calls used ({} this month)",
            usage.calls_used
        );
    }
    if let Some(quota) = rows
        && used(usage.rows_used) >= quota
    {
        return format!(
            "monthly row quota of {quota} rows used ({} this month)",
            usage.rows_used
        );
    }
    String::new()
}

/// Checks `tenants` against their quotas and records what changed.
pub async fn check(
    catalog: &Catalog,
    tiers: &Tiers,
    tenants: &[String],
) -> Result<(), CatalogError> {
    // Every RecordUsage runs this: the month's use is summed only for tenants that can
    // have a quota.
    let quota_tiers: Vec<String> = tiers
        .tiers
        .iter()
        .filter(|(_, tier)| tier.monthly_call_quota.is_some() || tier.monthly_row_quota.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for usage in catalog.quota_use(tenants, Some(&quota_tiers)).await? {
        let now = exhausted(tiers, &usage);
        if now != usage.exhausted {
            let Some(id) = TenantId::parse(&usage.tenant_id).ok() else {
                continue;
            };
            if catalog.set_quota_exhausted(&id, &now).await? {
                tracing::info!(tenant_id = %id, exhausted = %now, "tenant quota changed");
            }
        }
    }
    Ok(())
}

/// Checks the tenants whose quota is used up every `every` until `shutdown`: a new month
/// (or a quota raised in the tiers file) serves them again.
pub async fn recheck_periodically(
    catalog: Catalog,
    tiers: std::sync::Arc<Tiers>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let checked = match catalog.quota_exhausted_tenants().await {
            Ok(tenants) => check(&catalog, &tiers, &tenants).await,
            Err(error) => Err(error),
        };
        if let Err(error) = checked {
            tracing::warn!(error = %error, "checking used-up quotas failed; trying again later");
        }
    }
}
