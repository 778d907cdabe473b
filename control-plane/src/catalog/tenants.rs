//! Tenant rows: creation (idempotent on the request id), reads, and state transitions.

use tokio_postgres::{Transaction, types::ToSql};
use uuid::Uuid;

use super::{
    Catalog, CatalogError, DeleteParams, EventKind, MoveParams, MoveStep, OperationKind,
    OperationRecord, Placement, StepStatus, TENANT_COLUMNS, TenantRecord, events, operations,
};
use crate::tenant::{SiloNames, TenantId, TenantState};

/// A tenant to onboard.
#[derive(Clone, Debug)]
pub struct NewTenant {
    /// The tenant id; must not belong to a live tenant (one not `FAILED` or `DELETED`).
    pub id: TenantId,
    /// Free-form name for people.
    pub display_name: String,
    /// Name of the tier the tenant is created in.
    pub tier: String,
    /// Name of the provisioner the tier uses (`postgres` or `rds`).
    pub provisioner: String,
    /// Idempotency key: a second call with the same key returns the first call's operation.
    pub request_id: String,
    /// The silo names for a new tenant (a tenant created again after FAILED keeps the
    /// names its earlier attempt stored, so it adopts what that attempt made).
    pub names: SiloNames,
}

/// What `list_tenants` returns: tenants matching every field that is set, by id.
#[derive(Clone, Debug, Default)]
pub struct TenantFilter {
    /// Only tenants in this state; `None` lists every state but `DELETED`.
    pub state: Option<TenantState>,
    /// Only tenants of this tier.
    pub tier: Option<String>,
    /// List tenants with ids greater than this (keyset pagination).
    pub after: Option<String>,
    /// Page size; 0 is taken as 1.
    pub limit: u32,
}

/// One page of `list_tenants`, ordered by tenant id.
#[derive(Clone, Debug)]
pub struct TenantPage {
    /// At most `limit` tenants.
    pub tenants: Vec<TenantRecord>,
    /// The last id of this page when more may follow.
    pub next_after: Option<String>,
}

/// One state change of a tenant, written in one transaction together with its operation
/// step and its event. `from` is checked: if the tenant moved on meanwhile, nothing is
/// written and `apply` returns false.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The tenant that changes.
    pub tenant: TenantId,
    /// The state the tenant must be in for the change to apply.
    pub from: TenantState,
    /// The state it moves to (the same as `from` for changes that keep the state).
    pub to: TenantState,
    /// The event routers see; None for bookkeeping that changes nothing they serve.
    pub event: Option<EventKind>,
    /// New placement; `None` keeps the stored one.
    pub placement: Option<Placement>,
    /// New tier; `None` keeps it.
    pub tier: Option<String>,
    /// New provisioner (with a placement it made); `None` keeps it.
    pub provisioner: Option<String>,
    /// New sealed password; `Some` also bumps `credentials_version`.
    pub credentials: Option<Vec<u8>>,
    /// Remove the stored credentials (takes precedence over `credentials`).
    pub clear_credentials: bool,
    /// New tenant schema version; `None` keeps it.
    pub schema_version: Option<i64>,
    /// The isolation the silo has now been given (`provisioner::isolation::VERSION`).
    pub isolation_version: Option<i32>,
    /// Why the tenant failed; stored only when `to` is `FAILED`, and cleared on any other
    /// transition.
    pub failure_reason: Option<String>,
    /// The operation whose steps record this transition.
    pub operation: Option<Uuid>,
    /// Close the operation's open step with this status and detail.
    pub finish_step: Option<(StepStatus, String)>,
    /// Then open a step with this name.
    pub start_step: Option<String>,
}

impl Transition {
    /// A transition from `from` to `to` that emits `event` and changes nothing else; set
    /// the other fields to add to it.
    pub fn new(tenant: &TenantId, from: TenantState, to: TenantState, event: EventKind) -> Self {
        Self {
            tenant: tenant.clone(),
            from,
            to,
            event: Some(event),
            placement: None,
            tier: None,
            provisioner: None,
            credentials: None,
            clear_credentials: false,
            schema_version: None,
            isolation_version: None,
            failure_reason: None,
            operation: None,
            finish_step: None,
            start_step: None,
        }
    }

    /// A change that keeps the state and emits no event (placement, stored credentials).
    pub fn quiet(tenant: &TenantId, state: TenantState) -> Self {
        Self {
            event: None,
            ..Self::new(tenant, state, state, EventKind::StateChanged)
        }
    }

    pub(crate) async fn apply_in(&self, tx: &Transaction<'_>) -> Result<bool, CatalogError> {
        let placement = self
            .placement
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let server = self.placement.as_ref().map(|p| p.server.clone());
        let params: [&(dyn ToSql + Sync); 13] = [
            &self.tenant.as_str(),
            &self.from.as_str(),
            &self.to.as_str(),
            &placement,
            &server,
            &self.credentials,
            &self.clear_credentials,
            &self.schema_version,
            &self.failure_reason,
            &(self.to == TenantState::Failed),
            &self.isolation_version,
            &self.tier,
            &self.provisioner,
        ];
        let updated = tx
            .execute(
                "UPDATE tenants SET
                     state = $3,
                     placement = coalesce($4, placement),
                     placement_server = coalesce($5, placement_server),
                     credentials = CASE WHEN $7 THEN NULL ELSE coalesce($6, credentials) END,
                     credentials_version = credentials_version
                         + CASE WHEN $6::bytea IS NOT NULL THEN 1 ELSE 0 END,
                     schema_version = coalesce($8, schema_version),
                     isolation_version = coalesce($11, isolation_version),
                     tier = coalesce($12, tier),
                     provisioner = coalesce($13, provisioner),
                     failure_reason = CASE WHEN $10 THEN coalesce($9, failure_reason) ELSE '' END,
                     updated_at = now()
                 WHERE tenant_id = $1 AND state = $2",
                &params,
            )
            .await?;
        if updated == 0 {
            return Ok(false);
        }
        if let Some(operation) = self.operation {
            if let Some((status, detail)) = &self.finish_step {
                operations::finish_step(tx, operation, *status, detail).await?;
            }
            if let Some(name) = &self.start_step {
                operations::start_step(tx, operation, name).await?;
            }
        }
        if let Some(event) = self.event {
            events::append(tx, &self.tenant, event, self.to).await?;
        }
        Ok(true)
    }
}

pub(super) fn parse_tenant_id(raw: &str) -> Result<TenantId, CatalogError> {
    TenantId::parse(raw).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

impl Catalog {
    /// Records the tenant as REQUESTED with its onboarding operation, or returns the
    /// operation an earlier call with the same request id made. A FAILED or DELETED tenant
    /// may be created again with a new request id.
    pub async fn create_tenant(&self, new: &NewTenant) -> Result<OperationRecord, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let existing = tx
            .query_opt(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1 FOR UPDATE"),
                &[&new.id.as_str()],
            )
            .await?;
        let mut names = new.names.clone();
        if let Some(row) = existing {
            let record = TenantRecord::from_row(&row)?;
            let earlier = operations::find_by_request(
                &tx,
                OperationKind::CreateTenant,
                &new.id,
                &new.request_id,
            )
            .await?;
            if let Some(operation) = earlier {
                return Ok(operation);
            }
            if !matches!(record.state, TenantState::Failed | TenantState::Deleted) {
                return Err(CatalogError::TenantExists);
            }
            if record.state == TenantState::Failed {
                // What the failed attempt made is found again under the names it used.
                names = record.silo_names();
            }
            tx.execute(
                "DELETE FROM tenants WHERE tenant_id = $1",
                &[&new.id.as_str()],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO tenants (tenant_id, display_name, tier, state, provisioner,
                                  database_name, role_name, name_scheme, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &new.id.as_str(),
                &new.display_name,
                &new.tier,
                &TenantState::Requested.as_str(),
                &new.provisioner,
                &names.database,
                &names.role,
                &names.scheme.as_str(),
                &new.request_id,
            ],
        )
        .await?;
        let id = operations::insert(
            &tx,
            OperationKind::CreateTenant,
            Some(&new.id),
            &new.request_id,
            serde_json::Value::Object(Default::default()),
        )
        .await?;
        events::append(&tx, &new.id, EventKind::Created, TenantState::Requested).await?;
        tx.commit().await?;
        // Give the connection back before taking another: holding one while waiting for a
        // second can starve the pool under load.
        drop(conn);
        self.changes.notify();
        self.get_operation(id).await
    }

    /// The tenant's row, whatever its state; `TenantNotFound` if there is none.
    pub async fn get_tenant(&self, id: &TenantId) -> Result<TenantRecord, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1"),
                &[&id.as_str()],
            )
            .await?
            .ok_or(CatalogError::TenantNotFound)?;
        TenantRecord::from_row(&row)
    }

    /// One page of tenants matching `filter` (keyset pagination on the tenant id).
    pub async fn list_tenants(&self, filter: &TenantFilter) -> Result<TenantPage, CatalogError> {
        let conn = self.conn().await?;
        let state = filter.state.map(TenantState::as_str);
        let limit = i64::from(filter.limit.max(1));
        let rows = conn
            .query(
                &format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants
                     WHERE ($1::text IS NULL AND state <> 'DELETED' OR state = $1)
                       AND ($2::text IS NULL OR tier = $2)
                       AND ($3::text IS NULL OR tenant_id > $3)
                     ORDER BY tenant_id
                     LIMIT $4"
                ),
                &[&state, &filter.tier, &filter.after, &(limit + 1)],
            )
            .await?;
        let mut tenants = rows
            .iter()
            .map(TenantRecord::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = tenants.len() as i64 > limit;
        tenants.truncate(limit as usize);
        let next_after = more
            .then(|| tenants.last().map(|t| t.id.as_str().to_owned()))
            .flatten();
        Ok(TenantPage {
            tenants,
            next_after,
        })
    }

    /// Applies a transition in its own transaction. False when the tenant was no longer in
    /// `from`.
    pub async fn transition(&self, transition: &Transition) -> Result<bool, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let applied = transition.apply_in(&tx).await?;
        tx.commit().await?;
        if applied {
            self.changes.notify();
        }
        Ok(applied)
    }

    /// ACTIVE → SUSPENDED (a no-op when already suspended).
    pub async fn suspend_tenant(&self, id: &TenantId) -> Result<TenantRecord, CatalogError> {
        self.toggle(
            id,
            TenantState::Active,
            TenantState::Suspended,
            EventKind::Suspended,
        )
        .await
    }

    /// SUSPENDED → ACTIVE (a no-op when already active).
    pub async fn resume_tenant(&self, id: &TenantId) -> Result<TenantRecord, CatalogError> {
        self.toggle(
            id,
            TenantState::Suspended,
            TenantState::Active,
            EventKind::Resumed,
        )
        .await
    }

    async fn toggle(
        &self,
        id: &TenantId,
        from: TenantState,
        to: TenantState,
        event: EventKind,
    ) -> Result<TenantRecord, CatalogError> {
        let current = self.get_tenant(id).await?;
        if current.state == to {
            return Ok(current);
        }
        if current.state == TenantState::Deleted {
            return Err(CatalogError::TenantNotFound);
        }
        if current.state != from {
            return Err(CatalogError::WrongState(current.state));
        }
        if !self
            .transition(&Transition::new(id, from, to, event))
            .await?
        {
            let now = self.get_tenant(id).await?;
            return Err(CatalogError::WrongState(now.state));
        }
        self.get_tenant(id).await
    }

    /// Gives an ACTIVE or SUSPENDED tenant the tier `tier` in place (same provisioner and
    /// placement) and tells routers (a `tier_changed` event: they take the new limits). A
    /// no-op when it has that tier already.
    ///
    /// # Errors
    /// [`CatalogError::TenantNotFound`]; [`CatalogError::WrongState`] in other states;
    /// [`CatalogError::Conflict`] while a move of the tenant runs (it sets the tier itself).
    pub async fn change_tier(
        &self,
        id: &TenantId,
        tier: &str,
    ) -> Result<TenantRecord, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let state = locked_state(&tx, id).await?;
        if let Some(running) = operations::find_pending(&tx, OperationKind::MoveTenant, id).await? {
            return Err(CatalogError::Conflict(format!(
                "a move of the tenant is running (operation {})",
                running.id
            )));
        }
        match state {
            TenantState::Active | TenantState::Suspended => {}
            TenantState::Deleted => return Err(CatalogError::TenantNotFound),
            other => return Err(CatalogError::WrongState(other)),
        }
        let mut transition = Transition::new(id, state, state, EventKind::TierChanged);
        transition.tier = Some(tier.to_owned());
        let current: String = tx
            .query_one(
                "SELECT tier FROM tenants WHERE tenant_id = $1",
                &[&id.as_str()],
            )
            .await?
            .try_get(0)?;
        let changed = current != tier && transition.apply_in(&tx).await?;
        tx.commit().await?;
        drop(conn);
        if changed {
            self.changes.notify();
        }
        self.get_tenant(id).await
    }

    /// Moves the tenant to DELETING and records the deletion operation, or returns the
    /// deletion already under way (or the one this request id started). A tenant whose
    /// deletion failed is still DELETING; calling this again starts a new attempt.
    pub async fn start_delete(
        &self,
        id: &TenantId,
        request_id: &str,
        params: DeleteParams,
    ) -> Result<OperationRecord, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let state = locked_state(&tx, id).await?;
        match state {
            // A retry of the deletion that finished gets its answer again; any other
            // request finds the tenant gone.
            TenantState::Deleted => {
                return operations::find_by_request(
                    &tx,
                    OperationKind::DeleteTenant,
                    id,
                    request_id,
                )
                .await?
                .ok_or(CatalogError::TenantNotFound);
            }
            TenantState::Deleting => {
                if let Some(running) =
                    operations::find_pending(&tx, OperationKind::DeleteTenant, id).await?
                {
                    return Ok(running);
                }
                if let Some(earlier) =
                    operations::find_by_request(&tx, OperationKind::DeleteTenant, id, request_id)
                        .await?
                {
                    return Ok(earlier);
                }
                // The last deletion failed: this call runs it again, from wherever it
                // stopped (every step adopts what an earlier attempt did).
            }
            _ => {}
        }
        let params =
            serde_json::to_value(params).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let operation = operations::insert(
            &tx,
            OperationKind::DeleteTenant,
            Some(id),
            request_id,
            params,
        )
        .await?;
        let mut transition = if state == TenantState::Deleting {
            Transition::quiet(id, state)
        } else {
            Transition::new(id, state, TenantState::Deleting, EventKind::Deleting)
        };
        transition.operation = Some(operation);
        transition.start_step = Some(TenantState::Deleting.as_str().to_owned());
        transition.apply_in(&tx).await?;
        tx.commit().await?;
        // Give the connection back before taking another: holding one while waiting for a
        // second can starve the pool under load.
        drop(conn);
        self.changes.notify();
        self.get_operation(operation).await
    }

    /// Records a move of the ACTIVE tenant `id` and returns its operation; its first step,
    /// PREPARING, is open. A request id seen before returns that move's operation.
    ///
    /// # Errors
    /// [`CatalogError::TenantNotFound`]; [`CatalogError::WrongState`] unless the tenant is
    /// ACTIVE; [`CatalogError::Conflict`] while another move of the tenant runs, or when
    /// the tenant is on the target server already.
    pub async fn start_move(
        &self,
        id: &TenantId,
        request_id: &str,
        params: &MoveParams,
    ) -> Result<OperationRecord, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let state = locked_state(&tx, id).await?;
        if let Some(earlier) =
            operations::find_by_request(&tx, OperationKind::MoveTenant, id, request_id).await?
        {
            return Ok(earlier);
        }
        if let Some(running) = operations::find_pending(&tx, OperationKind::MoveTenant, id).await? {
            return Err(CatalogError::Conflict(format!(
                "a move of the tenant is running (operation {})",
                running.id
            )));
        }
        if state != TenantState::Active {
            return Err(CatalogError::WrongState(state));
        }
        if params.source_server == params.target_server {
            return Err(CatalogError::Conflict(format!(
                "the tenant is on {} already",
                params.target_server
            )));
        }
        let params =
            serde_json::to_value(params).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let operation =
            operations::insert(&tx, OperationKind::MoveTenant, Some(id), request_id, params)
                .await?;
        let mut transition = Transition::quiet(id, state);
        transition.operation = Some(operation);
        transition.start_step = Some(MoveStep::Preparing.as_str().to_owned());
        transition.apply_in(&tx).await?;
        tx.commit().await?;
        drop(conn);
        self.changes.notify();
        self.get_operation(operation).await
    }

    /// The tenants whose silos the silo guard watches: ACTIVE or SUSPENDED, placed by
    /// `provisioner`, with credentials.
    pub async fn guarded_tenants(
        &self,
        provisioner: &str,
    ) -> Result<Vec<TenantRecord>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants
                     WHERE provisioner = $1 AND state IN ('ACTIVE', 'SUSPENDED')
                       AND placement IS NOT NULL AND credentials IS NOT NULL
                     ORDER BY placement_server, tenant_id"
                ),
                &[&provisioner],
            )
            .await?;
        rows.iter().map(TenantRecord::from_row).collect()
    }

    /// Records that the tenant's silo has the isolation `version` (no event: routers serve
    /// it the same).
    pub async fn set_isolation_version(
        &self,
        id: &TenantId,
        version: i32,
    ) -> Result<(), CatalogError> {
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE tenants SET isolation_version = $2, updated_at = now()
             WHERE tenant_id = $1 AND state IN ('ACTIVE', 'SUSPENDED')",
            &[&id.as_str(), &version],
        )
        .await?;
        Ok(())
    }

    /// Stores a new sealed password for an ACTIVE or SUSPENDED tenant and tells routers.
    pub async fn rotate_credentials(
        &self,
        id: &TenantId,
        state: TenantState,
        sealed: Vec<u8>,
    ) -> Result<TenantRecord, CatalogError> {
        let mut transition = Transition::new(id, state, state, EventKind::CredentialsRotated);
        transition.credentials = Some(sealed);
        if !self.transition(&transition).await? {
            let now = self.get_tenant(id).await?;
            return Err(CatalogError::WrongState(now.state));
        }
        self.get_tenant(id).await
    }

    /// How many live tenants each server of a provisioner holds, taken under a lock so that
    /// concurrent placements see each other. Returns inside `tx`; the caller records its
    /// choice in the same transaction.
    pub(crate) async fn placement_load(
        tx: &Transaction<'_>,
        provisioner: &str,
    ) -> Result<Vec<(String, i64)>, CatalogError> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLACEMENT_LOCK_KEY])
            .await?;
        let rows = tx
            .query(
                "SELECT placement_server, count(*) FROM tenants
                 WHERE provisioner = $1 AND placement_server IS NOT NULL AND state <> 'DELETED'
                 GROUP BY placement_server",
                &[&provisioner],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Live tenants per server of `provisioner` (what [`crate::provisioner::Provisioner::place`]
    /// weighs), read under the placement lock so no placement is half-counted.
    pub async fn placement_load_of(
        &self,
        provisioner: &str,
    ) -> Result<Vec<(String, i64)>, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let load = Self::placement_load(&tx, provisioner).await?;
        tx.commit().await?;
        Ok(load)
    }

    /// Places a PROVISIONING tenant: `choose` picks a server from the current load, and the
    /// choice is recorded together with the move to `to`, in one transaction.
    /// The outer error is the catalog's, the inner one `choose`'s; Ok(Ok(None)) means the
    /// tenant was no longer PROVISIONING.
    pub async fn place_tenant<E>(
        &self,
        tenant: &TenantId,
        provisioner: &str,
        operation: Uuid,
        choose: impl FnOnce(&[(String, i64)]) -> Result<Placement, E>,
    ) -> Result<Result<Option<Placement>, E>, CatalogError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let load = Self::placement_load(&tx, provisioner).await?;
        let placement = match choose(&load) {
            Ok(placement) => placement,
            Err(error) => return Ok(Err(error)),
        };
        let mut transition = Transition::quiet(tenant, TenantState::Provisioning);
        transition.placement = Some(placement.clone());
        transition.operation = Some(operation);
        if !transition.apply_in(&tx).await? {
            return Ok(Ok(None));
        }
        tx.commit().await?;
        Ok(Ok(Some(placement)))
    }
}

const PLACEMENT_LOCK_KEY: i64 = 0x5110_0002;

/// The tenant's state, its row locked (`FOR UPDATE`) until `tx` ends.
pub(super) async fn locked_state(
    tx: &Transaction<'_>,
    id: &TenantId,
) -> Result<TenantState, CatalogError> {
    let row = tx
        .query_opt(
            "SELECT state FROM tenants WHERE tenant_id = $1 FOR UPDATE",
            &[&id.as_str()],
        )
        .await?
        .ok_or(CatalogError::TenantNotFound)?;
    row.try_get::<_, String>(0)?
        .parse()
        .map_err(|e: crate::tenant::UnknownTenantState| CatalogError::Corrupt(e.to_string()))
}
