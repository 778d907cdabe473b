//! Per-tenant configuration: the `tenant_config` table (each tenant's own key → JSON value
//! settings) and the tenant's `config_revision`. Every change is one transaction with its
//! `config_changed` event.

use tokio_postgres::GenericClient;

use super::{Catalog, CatalogError, EventKind, events};
use crate::{
    tenant::{TenantId, TenantState},
    tenant_config::Settings,
};

/// A tenant's own configuration as the catalog holds it.
#[derive(Clone, Debug)]
pub struct StoredConfig {
    /// The tenant's tier, whose defaults apply.
    pub tier: String,
    /// The tenant's state (any but `DELETED`).
    pub state: TenantState,
    /// Bumped by every change of `values`; 0 before any.
    pub revision: i64,
    /// The tenant's own values.
    pub values: Settings,
}

/// The tenant's tier, state and revision (its row locked when `lock`), `TenantNotFound`
/// for an unknown or DELETED tenant.
async fn tenant_row(
    client: &impl GenericClient,
    id: &TenantId,
    lock: bool,
) -> Result<(String, TenantState, i64), CatalogError> {
    let sql = if lock {
        "SELECT tier, state, config_revision FROM tenants WHERE tenant_id = $1 FOR UPDATE"
    } else {
        "SELECT tier, state, config_revision FROM tenants WHERE tenant_id = $1"
    };
    let row = client
        .query_opt(sql, &[&id.as_str()])
        .await?
        .ok_or(CatalogError::TenantNotFound)?;
    let state: TenantState = row
        .try_get::<_, String>(1)?
        .parse()
        .map_err(|e: crate::tenant::UnknownTenantState| CatalogError::Corrupt(e.to_string()))?;
    if state == TenantState::Deleted {
        return Err(CatalogError::TenantNotFound);
    }
    Ok((row.try_get(0)?, state, row.try_get(2)?))
}

async fn values(client: &impl GenericClient, id: &TenantId) -> Result<Settings, CatalogError> {
    let rows = client
        .query(
            "SELECT key, value FROM tenant_config WHERE tenant_id = $1",
            &[&id.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

impl Catalog {
    /// The tenant's own configuration; `TenantNotFound` for an unknown or DELETED tenant.
    pub async fn tenant_config(&self, id: &TenantId) -> Result<StoredConfig, CatalogError> {
        let mut conn = self.conn().await?;
        // One snapshot: the revision and the values it counts.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let (tier, state, revision) = tenant_row(&tx, id, false).await?;
        let values = values(&tx, id).await?;
        tx.commit().await?;
        Ok(StoredConfig {
            tier,
            state,
            revision,
            values,
        })
    }

    /// Sets (`Some`) or removes (`None`) one key of the tenant's own configuration. When
    /// that changes the values, `check` sees them as they would be: its error is returned
    /// as the inner one and nothing is written; otherwise the values, a bumped revision
    /// and a `config_changed` event are written in one transaction. A change that changes
    /// nothing writes nothing.
    ///
    /// # Errors
    /// [`CatalogError::TenantNotFound`] for an unknown or DELETED tenant.
    pub async fn change_tenant_config<E>(
        &self,
        id: &TenantId,
        key: &str,
        value: Option<&serde_json::Value>,
        check: impl FnOnce(&Settings) -> Result<(), E>,
    ) -> Result<Result<StoredConfig, E>, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let (tier, state, revision) = tenant_row(&tx, id, true).await?;
        let mut current = values(&tx, id).await?;
        if current.get(key) == value {
            tx.commit().await?;
            return Ok(Ok(StoredConfig {
                tier,
                state,
                revision,
                values: current,
            }));
        }
        match value {
            Some(value) => {
                current.insert(key.to_owned(), value.clone());
            }
            None => {
                current.remove(key);
            }
        }
        if let Err(error) = check(&current) {
            return Ok(Err(error));
        }
        match value {
            Some(value) => {
                tx.execute(
                    "INSERT INTO tenant_config (tenant_id, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant_id, key)
                     DO UPDATE SET value = excluded.value, updated_at = now()",
                    &[&id.as_str(), &key, value],
                )
                .await?;
            }
            None => {
                tx.execute(
                    "DELETE FROM tenant_config WHERE tenant_id = $1 AND key = $2",
                    &[&id.as_str(), &key],
                )
                .await?;
            }
        }
        let revision: i64 = tx
            .query_one(
                "UPDATE tenants SET config_revision = config_revision + 1
                 WHERE tenant_id = $1 RETURNING config_revision",
                &[&id.as_str()],
            )
            .await?
            .try_get(0)?;
        events::append(&tx, id, EventKind::ConfigChanged, state).await?;
        tx.commit().await?;
        drop(conn);
        self.changes.notify();
        Ok(Ok(StoredConfig {
            tier,
            state,
            revision,
            values: current,
        }))
    }
}
