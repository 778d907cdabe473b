//! Long-running operations, their steps, and the claim a worker holds while it runs one.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient, Transaction};
use uuid::Uuid;

use super::{
    Catalog, CatalogError, OPERATION_COLUMNS, OperationKind, OperationRecord, StepRecord,
    StepStatus,
};
use crate::tenant::TenantId;

pub(super) async fn insert(
    tx: &Transaction<'_>,
    kind: OperationKind,
    tenant: Option<&TenantId>,
    request_id: &str,
    params: serde_json::Value,
) -> Result<Uuid, CatalogError> {
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO operations (operation_id, kind, tenant_id, request_id, status, params)
         VALUES ($1, $2, $3, $4, 'pending', $5)",
        &[
            &id,
            &kind.as_str(),
            &tenant.map(TenantId::as_str),
            &request_id,
            &params,
        ],
    )
    .await?;
    Ok(id)
}

async fn load<C: GenericClient>(
    client: &C,
    row: &tokio_postgres::Row,
) -> Result<OperationRecord, CatalogError> {
    let id: Uuid = row.try_get("operation_id")?;
    let steps = client
        .query(
            "SELECT name, status, detail, attempts, started_at, finished_at
             FROM operation_steps WHERE operation_id = $1 ORDER BY position",
            &[&id],
        )
        .await?
        .iter()
        .map(StepRecord::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    OperationRecord::from_row(row, steps)
}

pub(super) async fn find_by_request<C: GenericClient>(
    client: &C,
    kind: OperationKind,
    tenant: &TenantId,
    request_id: &str,
) -> Result<Option<OperationRecord>, CatalogError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {OPERATION_COLUMNS} FROM operations
                 WHERE kind = $1 AND tenant_id = $2 AND request_id = $3"
            ),
            &[&kind.as_str(), &tenant.as_str(), &request_id],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(load(client, &row).await?)),
        None => Ok(None),
    }
}

pub(super) async fn find_pending<C: GenericClient>(
    client: &C,
    kind: OperationKind,
    tenant: &TenantId,
) -> Result<Option<OperationRecord>, CatalogError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {OPERATION_COLUMNS} FROM operations
                 WHERE kind = $1 AND tenant_id = $2 AND status = 'pending'
                 ORDER BY created_at DESC LIMIT 1"
            ),
            &[&kind.as_str(), &tenant.as_str()],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(load(client, &row).await?)),
        None => Ok(None),
    }
}

/// Opens a step; a step of the same name that is still open (its worker stopped) is taken
/// over and counts another attempt.
pub(super) async fn start_step(
    tx: &Transaction<'_>,
    operation: Uuid,
    name: &str,
) -> Result<(), CatalogError> {
    let resumed = tx
        .execute(
            "UPDATE operation_steps SET attempts = attempts + 1, status = 'running', detail = ''
             WHERE operation_id = $1 AND name = $2 AND status <> 'done'
               AND position = (SELECT max(position) FROM operation_steps WHERE operation_id = $1)",
            &[&operation, &name],
        )
        .await?;
    if resumed == 0 {
        tx.execute(
            "INSERT INTO operation_steps (operation_id, position, name, status)
             SELECT $1, coalesce(max(position), 0) + 1, $2, 'running'
             FROM operation_steps WHERE operation_id = $1",
            &[&operation, &name],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn finish_step(
    tx: &Transaction<'_>,
    operation: Uuid,
    status: StepStatus,
    detail: &str,
) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE operation_steps SET status = $2, detail = $3, finished_at = now()
         WHERE operation_id = $1 AND status = 'running'",
        &[&operation, &status.as_str(), &detail],
    )
    .await?;
    Ok(())
}

/// An operation a worker has claimed. The claim is a row lock held by an open transaction
/// on a dedicated connection: if the worker's process dies, PostgreSQL drops the connection
/// and the lock with it, and another replica picks the operation up at once.
pub struct ClaimedOperation<'a> {
    client: &'a Client,
    /// The operation as it was when claimed.
    pub operation: OperationRecord,
    /// How many earlier attempts were released with `retry_after` (0 on the first);
    /// onboarding fails the tenant once it reaches `--max-step-attempts`.
    pub attempts: i32,
}

impl Catalog {
    /// The operation `id` with its steps; `OperationNotFound` if there is none.
    pub async fn get_operation(&self, id: Uuid) -> Result<OperationRecord, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = $1"),
                &[&id],
            )
            .await?
            .ok_or(CatalogError::OperationNotFound)?;
        load(&*conn, &row).await
    }

    /// The servers (source and target) of every unfinished move, with its tenant: an RDS
    /// instance a promotion is making, or a demotion has not yet retired, belongs to it.
    pub async fn servers_in_moves(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT tenant_id, server FROM operations,
                     LATERAL (VALUES (params->>'source_server'), (params->>'target_server'))
                         AS s(server)
                 WHERE kind = $1 AND status = 'pending' AND server IS NOT NULL",
                &[&OperationKind::MoveTenant.as_str()],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The tenant's move that finished (succeeded) last, if any.
    pub async fn last_finished_move(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<OperationRecord>, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT {OPERATION_COLUMNS} FROM operations
                     WHERE kind = $1 AND tenant_id = $2 AND status = 'succeeded'
                     ORDER BY finished_at DESC LIMIT 1"
                ),
                &[&OperationKind::MoveTenant.as_str(), &tenant.as_str()],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(load(&*conn, &row).await?)),
            None => Ok(None),
        }
    }

    /// The operation of `kind` a call with `request_id` made for the tenant, if any.
    pub async fn find_operation(
        &self,
        kind: OperationKind,
        tenant: &TenantId,
        request_id: &str,
    ) -> Result<Option<OperationRecord>, CatalogError> {
        let conn = self.conn().await?;
        find_by_request(&*conn, kind, tenant, request_id).await
    }

    /// Records that the move `id` should stop (see [`MoveParams::cancel_requested`]) and
    /// returns it.
    ///
    /// # Errors
    /// [`CatalogError::OperationNotFound`]; [`CatalogError::Conflict`] for an operation
    /// that is no move or has finished.
    pub async fn request_cancel(&self, id: Uuid) -> Result<OperationRecord, CatalogError> {
        let operation = self.get_operation(id).await?;
        if operation.kind != OperationKind::MoveTenant {
            return Err(CatalogError::Conflict(format!(
                "only moves can be cancelled, not {}",
                operation.kind.as_str()
            )));
        }
        // Not an UPDATE of the operation's row: a worker's claim holds it for its whole
        // pass, and the request would wait for the pass (a copy) to end.
        let conn = self.conn().await?;
        let recorded = conn
            .execute(
                "INSERT INTO operation_cancellations (operation_id)
                 SELECT operation_id FROM operations
                 WHERE operation_id = $1 AND status = 'pending'
                 ON CONFLICT (operation_id) DO NOTHING",
                &[&id],
            )
            .await?;
        let asked_before = recorded == 0 && self.cancel_requested(id).await?;
        drop(conn);
        let operation = self.get_operation(id).await?;
        if recorded == 0 && !(asked_before && operation.finished_at.is_none()) {
            return Err(CatalogError::Conflict("the move has finished".into()));
        }
        self.changes.notify();
        Ok(operation)
    }

    /// Whether CancelOperation was called for the operation.
    pub async fn cancel_requested(&self, id: Uuid) -> Result<bool, CatalogError> {
        let conn = self.conn().await?;
        Ok(conn
            .query_opt(
                "SELECT 1 FROM operation_cancellations WHERE operation_id = $1",
                &[&id],
            )
            .await?
            .is_some())
    }

    /// Whether an unfinished operation of `kind` other than `except` exists for the tenant.
    pub async fn has_pending(
        &self,
        kind: OperationKind,
        tenant: &TenantId,
        except: Uuid,
    ) -> Result<bool, CatalogError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT 1 FROM operations
                 WHERE kind = $1 AND tenant_id = $2 AND status = 'pending' AND operation_id <> $3",
                &[&kind.as_str(), &tenant.as_str(), &except],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Claims the oldest due pending operation no other worker holds
    /// (`FOR NO KEY UPDATE SKIP LOCKED`; NO KEY so that step rows can still reference it).
    /// `client` is the worker's own connection (see `dedicated_connection`), not a pooled one.
    pub async fn claim_operation<'a>(
        &self,
        client: &'a Client,
    ) -> Result<Option<ClaimedOperation<'a>>, CatalogError> {
        client.batch_execute("BEGIN").await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {OPERATION_COLUMNS}, attempts FROM operations
                     WHERE status = 'pending' AND next_attempt_at <= now()
                     ORDER BY next_attempt_at, created_at
                     LIMIT 1
                     FOR NO KEY UPDATE SKIP LOCKED"
                ),
                &[],
            )
            .await?;
        let Some(row) = row else {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        };
        let attempts: i32 = row.try_get("attempts")?;
        // Steps are read through the pool: they are committed rows, not part of the claim.
        let operation = {
            let conn = self.conn().await?;
            load(&*conn, &row).await?
        };
        Ok(Some(ClaimedOperation {
            client,
            operation,
            attempts,
        }))
    }
}

impl ClaimedOperation<'_> {
    /// Finishes the operation and releases the claim.
    pub async fn finish(self, catalog: &Catalog, error: Option<&str>) -> Result<(), CatalogError> {
        let status = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.client
            .execute(
                "UPDATE operations SET status = $2, error = $3, finished_at = clock_timestamp(),
                        updated_at = clock_timestamp()
                 WHERE operation_id = $1",
                &[&self.operation.id, &status, &error.unwrap_or_default()],
            )
            .await?;
        let step_status = if error.is_some() {
            StepStatus::Failed
        } else {
            StepStatus::Done
        };
        self.client
            .execute(
                "UPDATE operation_steps SET status = $2, detail = $3, finished_at = clock_timestamp()
                 WHERE operation_id = $1 AND status = 'running'",
                &[
                    &self.operation.id,
                    &step_status.as_str(),
                    &error.unwrap_or_default(),
                ],
            )
            .await?;
        self.client.batch_execute("COMMIT").await?;
        catalog.changes.notify();
        Ok(())
    }

    /// Replaces the operation's parameters (a move's target placement as it is learnt, or
    /// the reason it is being given up), within the claim: the claim's row lock would
    /// make any other session's update wait for it. `cancel_requested` once set stays set.
    pub async fn set_params(&self, params: &serde_json::Value) -> Result<(), CatalogError> {
        self.client
            .execute(
                "UPDATE operations
                 SET params = $2::jsonb || jsonb_build_object('cancel_requested',
                         coalesce((params->>'cancel_requested')::boolean, false)
                         OR coalesce(($2::jsonb->>'cancel_requested')::boolean, false)),
                     updated_at = clock_timestamp()
                 WHERE operation_id = $1",
                &[&self.operation.id, params],
            )
            .await?;
        Ok(())
    }

    /// Releases the claim; the operation is due again after `delay`. `attempt`: the pass
    /// failed and counts against `--max-step-attempts`; a wait does not.
    pub async fn retry_after(
        self,
        delay: Duration,
        note: &str,
        attempt: bool,
    ) -> Result<(), CatalogError> {
        let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self.client
            .execute(
                "UPDATE operations SET attempts = attempts + $3::int, updated_at = clock_timestamp(),
                        next_attempt_at = clock_timestamp() + make_interval(secs => $2::bigint / 1000.0)
                 WHERE operation_id = $1",
                &[&self.operation.id, &millis, &i32::from(attempt)],
            )
            .await?;
        self.client
            .execute(
                "UPDATE operation_steps SET detail = $2
                 WHERE operation_id = $1 AND status = 'running'",
                &[&self.operation.id, &note],
            )
            .await?;
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}
