//! Fleet-wide migration runs: the run is an operation; each tenant it plans has a row whose
//! state moves pending → running → done / failed, or is skipped (or planned, for a dry run).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    Catalog, CatalogError, OPERATION_COLUMNS, OperationKind, OperationRecord, operations,
    tenants::parse_tenant_id,
};
use crate::tenant::{TenantId, TenantState};

/// Serializes starting and resuming runs, so at most one real run is pending at a time.
const RUN_LOCK_KEY: i64 = 0x5110_0004;

/// What a fleet migration run does after a tenant's migration fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Start no more tenants once one failed.
    Stop,
    /// Finish the wave and report.
    Continue,
}

/// One wave of a run as stored: the tenants of a wave start only after the previous wave
/// finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveParams {
    /// Name of the wave, as requested (`rest` for the wave of tenants no named wave took,
    /// `all` when none were named).
    pub name: String,
    /// How many tenants of the wave are migrated at once; at least 1.
    pub concurrency: u32,
}

/// A run's settings, kept in the operation's params.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationParams {
    /// Tenant schema version every planned tenant is brought to.
    pub target_version: i64,
    /// The waves, in the order they run; `TenantMigration::wave` indexes into this.
    pub waves: Vec<WaveParams>,
    /// What to do after a tenant fails.
    pub failure_policy: FailurePolicy,
    /// Only plan: tenants are recorded as `planned` and nothing is migrated.
    pub dry_run: bool,
    /// Also migrate `SUSPENDED` tenants (otherwise they are skipped).
    pub include_suspended: bool,
}

/// Where one tenant is in a fleet migration run; stored as text in
/// `migration_tenants.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantMigrationState {
    /// In the plan of a dry run; will not be migrated.
    Planned,
    /// Waiting for its wave.
    Pending,
    /// Being migrated (or the worker died mid-way; resuming the run starts it again).
    Running,
    /// At the target version (or found already there).
    Done,
    /// Its migration failed; `detail` holds the error.
    Failed,
    /// Not migrated: not `ACTIVE` (or suspended without `include_suspended`), already at
    /// the target, or gone; `detail` says which.
    Skipped,
}

impl TenantMigrationState {
    /// The text stored in `migration_tenants.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn parse(raw: &str) -> Result<Self, CatalogError> {
        [
            Self::Planned,
            Self::Pending,
            Self::Running,
            Self::Done,
            Self::Failed,
            Self::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == raw)
        .ok_or_else(|| CatalogError::Corrupt(format!("tenant migration state {raw:?}")))
    }
}

/// One tenant's place in a run.
#[derive(Clone, Debug)]
pub struct TenantMigration {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Index of the tenant's wave in `MigrationParams::waves` (0 for skipped tenants).
    pub wave: i32,
    /// Where the tenant is in the run.
    pub state: TenantMigrationState,
    /// The tenant's schema version when the run was planned.
    pub from_version: i64,
    /// The tenant's schema version as last recorded by the run: `from_version` until it is
    /// migrated, then the version reached.
    pub version: i64,
    /// What happened: the error, the skip reason, or `<from> -> <to>`; empty while pending.
    pub detail: String,
    /// How many times the run started migrating this tenant.
    pub attempts: i32,
    /// When the tenant's migration (last) started; `None` until then.
    pub started_at: Option<SystemTime>,
    /// When the tenant's migration finished; `None` until then.
    pub finished_at: Option<SystemTime>,
}

impl TenantMigration {
    fn from_row(row: &Row) -> Result<Self, CatalogError> {
        let tenant: String = row.try_get("tenant_id")?;
        let state: String = row.try_get("state")?;
        Ok(Self {
            tenant_id: parse_tenant_id(&tenant)?,
            wave: row.try_get("wave")?,
            state: TenantMigrationState::parse(&state)?,
            from_version: row.try_get("from_version")?,
            version: row.try_get("version")?,
            detail: row.try_get("detail")?,
            attempts: row.try_get("attempts")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// A tenant as planning sees it.
#[derive(Clone, Debug)]
pub struct PlanTenant {
    /// The tenant.
    pub id: TenantId,
    /// The tenant's tier, for `Tier` wave selectors.
    pub tier: String,
    /// The tenant's state; only `ACTIVE` (and `SUSPENDED`, if asked) tenants are migrated.
    pub state: TenantState,
    /// The tenant's current schema version.
    pub schema_version: i64,
}

impl Catalog {
    /// Every tenant that is not DELETED, by id. Rows are read as they arrive, so the
    /// fleet is in memory once (as plan entries), not twice.
    pub async fn plan_tenants(&self) -> Result<Vec<PlanTenant>, CatalogError> {
        use futures::TryStreamExt;
        let conn = self.conn().await?;
        let rows = conn
            .query_raw(
                "SELECT tenant_id, tier, state, schema_version FROM tenants
                 WHERE state <> 'DELETED' ORDER BY tenant_id",
                std::iter::empty::<&str>(),
            )
            .await?;
        let mut rows = std::pin::pin!(rows);
        let mut tenants = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let id: &str = row.try_get(0)?;
            let state: &str = row.try_get(2)?;
            tenants.push(PlanTenant {
                id: parse_tenant_id(id)?,
                tier: row.try_get(1)?,
                state: state
                    .parse()
                    .map_err(|e: crate::tenant::UnknownTenantState| {
                        CatalogError::Corrupt(e.to_string())
                    })?,
                schema_version: row.try_get(3)?,
            });
        }
        Ok(tenants)
    }

    /// Records a run with its planned tenants; returns the earlier run for a repeated
    /// request id. A real run is refused while another one is unfinished.
    pub async fn start_migration(
        &self,
        request_id: &str,
        params: &MigrationParams,
        planned: &[TenantMigration],
    ) -> Result<OperationRecord, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RUN_LOCK_KEY])
            .await?;
        let earlier = tx
            .query_opt(
                "SELECT operation_id FROM operations
                 WHERE kind = $1 AND tenant_id IS NULL AND request_id = $2",
                &[&OperationKind::MigrateTenants.as_str(), &request_id],
            )
            .await?;
        if let Some(row) = earlier {
            let id: Uuid = row.try_get(0)?;
            drop(tx);
            drop(conn);
            return self.get_operation(id).await;
        }
        if !params.dry_run {
            refuse_if_running(&tx, None).await?;
        }
        let json =
            serde_json::to_value(params).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let id =
            operations::insert(&tx, OperationKind::MigrateTenants, None, request_id, json).await?;
        if params.dry_run {
            tx.execute(
                "UPDATE operations SET status = 'succeeded', finished_at = now() WHERE operation_id = $1",
                &[&id],
            )
            .await?;
        }
        let tenants: Vec<&str> = planned.iter().map(|t| t.tenant_id.as_str()).collect();
        let waves: Vec<i32> = planned.iter().map(|t| t.wave).collect();
        let states: Vec<&str> = planned.iter().map(|t| t.state.as_str()).collect();
        let versions: Vec<i64> = planned.iter().map(|t| t.from_version).collect();
        let details: Vec<&str> = planned.iter().map(|t| t.detail.as_str()).collect();
        tx.execute(
            "INSERT INTO migration_tenants (operation_id, tenant_id, wave, state, from_version, version, detail)
             SELECT $1, t, w, s, v, v, d
             FROM unnest($2::text[], $3::int[], $4::text[], $5::bigint[], $6::text[]) AS x(t, w, s, v, d)",
            &[&id, &tenants, &waves, &states, &versions, &details],
        )
        .await?;
        tx.commit().await?;
        // Give the connection back before taking another: holding one while waiting for a
        // second can starve the pool under load.
        drop(conn);
        self.changes.notify();
        self.get_operation(id).await
    }

    /// Makes a failed or stopped run due again: its failed tenants go back to pending.
    pub async fn resume_migration(&self, id: Uuid) -> Result<OperationRecord, CatalogError> {
        let operation = self.get_operation(id).await?;
        if operation.kind != OperationKind::MigrateTenants {
            return Err(CatalogError::OperationNotFound);
        }
        let params = operation.migration_params()?;
        if params.dry_run {
            return Err(CatalogError::Conflict(
                "a dry run cannot be resumed; start a real run".into(),
            ));
        }
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RUN_LOCK_KEY])
            .await?;
        refuse_if_running(&tx, Some(id)).await?;
        tx.execute(
            "UPDATE migration_tenants SET state = 'pending', detail = ''
             WHERE operation_id = $1 AND state IN ('failed', 'running')",
            &[&id],
        )
        .await?;
        tx.execute(
            "UPDATE operations SET status = 'pending', error = '', finished_at = NULL,
                    next_attempt_at = now(), updated_at = now()
             WHERE operation_id = $1",
            &[&id],
        )
        .await?;
        tx.commit().await?;
        // Give the connection back before taking another: holding one while waiting for a
        // second can starve the pool under load.
        drop(conn);
        self.changes.notify();
        self.get_operation(id).await
    }

    /// How many of a run's tenants are in each state, counted by the catalog (a run can
    /// hold every tenant of the fleet).
    pub async fn migration_state_counts(
        &self,
        id: Uuid,
    ) -> Result<Vec<(TenantMigrationState, u32)>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT state, count(*) FROM migration_tenants WHERE operation_id = $1
                 GROUP BY state",
                &[&id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let state: &str = row.try_get(0)?;
                let count: i64 = row.try_get(1)?;
                Ok((
                    TenantMigrationState::parse(state)?,
                    u32::try_from(count).unwrap_or(u32::MAX),
                ))
            })
            .collect()
    }

    /// Every tenant row of run `id`, by wave and tenant id.
    pub async fn migration_tenants(&self, id: Uuid) -> Result<Vec<TenantMigration>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT tenant_id, wave, state, from_version, version, detail, attempts, started_at, finished_at
                 FROM migration_tenants WHERE operation_id = $1 ORDER BY wave, tenant_id",
                &[&id],
            )
            .await?;
        rows.iter().map(TenantMigration::from_row).collect()
    }

    /// Moves one tenant of a run on; with `version`, the catalog's mirror of the tenant's
    /// schema version moves in the same transaction.
    pub async fn set_tenant_migration(
        &self,
        id: Uuid,
        tenant: &TenantId,
        state: TenantMigrationState,
        version: Option<i64>,
        detail: &str,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "UPDATE migration_tenants SET
                 state = $3,
                 version = coalesce($4, version),
                 detail = $5,
                 attempts = attempts + CASE WHEN $3 = 'running' THEN 1 ELSE 0 END,
                 started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END,
                 finished_at = CASE WHEN $3 IN ('done', 'failed', 'skipped') THEN now() ELSE NULL END
             WHERE operation_id = $1 AND tenant_id = $2",
            &[&id, &tenant.as_str(), &state.as_str(), &version, &detail],
        )
        .await?;
        if let Some(version) = version {
            tx.execute(
                "UPDATE tenants SET schema_version = greatest(schema_version, $2), updated_at = now()
                 WHERE tenant_id = $1",
                &[&tenant.as_str(), &version],
            )
            .await?;
        }
        tx.commit().await?;
        self.changes.notify();
        Ok(())
    }
}

async fn refuse_if_running(
    tx: &tokio_postgres::Transaction<'_>,
    except: Option<Uuid>,
) -> Result<(), CatalogError> {
    let running = tx
        .query_opt(
            &format!(
                "SELECT {OPERATION_COLUMNS} FROM operations
                 WHERE kind = $1 AND status = 'pending' AND ($2::uuid IS NULL OR operation_id <> $2)
                 LIMIT 1"
            ),
            &[&OperationKind::MigrateTenants.as_str(), &except],
        )
        .await?;
    match running {
        Some(row) => {
            let id: Uuid = row.try_get("operation_id")?;
            Err(CatalogError::Conflict(format!(
                "migration run {id} is still running; wait for it or let it finish first"
            )))
        }
        None => Ok(()),
    }
}

impl OperationRecord {
    /// The run settings of a fleet migration operation; `Corrupt` if `params` does not hold
    /// them.
    pub fn migration_params(&self) -> Result<MigrationParams, CatalogError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| CatalogError::Corrupt(format!("migration params: {e}")))
    }
}
