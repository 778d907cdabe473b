//! What the catalog stores, as the rest of the control plane sees it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use super::CatalogError;
use crate::tenant::{NameScheme, SiloNames, TenantId, TenantState};

/// Where a tenant's silo lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Fleet member name (`postgres`) or instance identifier (`rds`).
    pub server: String,
    /// Address routers connect to; may be empty until the server is available.
    pub host: String,
    /// TCP port routers connect to (5432 unless the server listens elsewhere).
    pub port: u16,
    /// Provisioner-specific facts (e.g. an RDS secret ARN).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// A row of the `tenants` table: one tenant, its lifecycle state, and where its silo lives.
#[derive(Clone, Debug)]
pub struct TenantRecord {
    /// The tenant id; primary key of the catalog.
    pub id: TenantId,
    /// Free-form name for people, as given at creation; never used to address anything.
    pub display_name: String,
    /// Name of the tier (from `--tiers-file`) the tenant was created in; it chose the
    /// provisioner and instance settings.
    pub tier: String,
    /// Where the tenant is in its lifecycle (see [`TenantState`]).
    pub state: TenantState,
    /// Why onboarding failed, for a tenant in `FAILED`; empty otherwise.
    pub failure_reason: String,
    /// Name of the provisioner that made the silo (`postgres` or `rds`), fixed at creation.
    pub provisioner: String,
    /// Where the silo lives; `None` until the provisioner has placed it.
    pub placement: Option<Placement>,
    /// Name of the tenant's database on its server; read from here, never recomputed.
    pub database_name: String,
    /// Name of the tenant's login role on its server; unique over the catalog.
    pub role_name: String,
    /// How `database_name` and `role_name` were made (tenants made before keyed names keep
    /// `t_<id>`).
    pub name_scheme: NameScheme,
    /// The isolation steps the silo has been given (`provisioner::isolation::VERSION`).
    pub isolation_version: i32,
    /// Which monthly quota is used up (routers refuse its SQL calls); empty while none is.
    pub quota_exhausted: String,
    /// Sealed password (see `crypto`); never leaves the control plane but to routers.
    pub credentials: Option<Vec<u8>>,
    /// Bumped each time a new sealed password is stored (onboarding's first one included),
    /// so routers and the silo guard can tell a new password from an old one; 0 before any.
    pub credentials_version: i32,
    /// Tenant schema migration version the silo is at (the `V<n>` of the last applied
    /// tenant migration); 0 before any.
    pub schema_version: i64,
    /// Idempotency key of the CreateTenant call that made the tenant.
    pub request_id: String,
    /// When the row was inserted.
    pub created_at: SystemTime,
    /// When the row last changed (state, placement, credentials or schema version).
    pub updated_at: SystemTime,
}

pub(crate) const TENANT_COLUMNS: &str = "tenant_id, display_name, tier, state, failure_reason, \
     provisioner, placement, database_name, role_name, name_scheme, isolation_version, quota_exhausted, credentials, \
     credentials_version, schema_version, request_id, created_at, updated_at";

impl TenantRecord {
    /// The names of the tenant's database and role, as stored.
    pub fn silo_names(&self) -> SiloNames {
        SiloNames {
            database: self.database_name.clone(),
            role: self.role_name.clone(),
            scheme: self.name_scheme,
        }
    }

    pub(crate) fn from_row(row: &Row) -> Result<Self, CatalogError> {
        let id: String = row.try_get("tenant_id")?;
        let state: String = row.try_get("state")?;
        let placement: Option<serde_json::Value> = row.try_get("placement")?;
        Ok(Self {
            id: TenantId::parse(&id).map_err(|e| CatalogError::Corrupt(e.to_string()))?,
            display_name: row.try_get("display_name")?,
            tier: row.try_get("tier")?,
            state: state
                .parse()
                .map_err(|e: crate::tenant::UnknownTenantState| {
                    CatalogError::Corrupt(e.to_string())
                })?,
            failure_reason: row.try_get("failure_reason")?,
            provisioner: row.try_get("provisioner")?,
            placement: placement
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| CatalogError::Corrupt(format!("placement: {e}")))?,
            database_name: row.try_get("database_name")?,
            role_name: row.try_get("role_name")?,
            name_scheme: {
                let raw: String = row.try_get("name_scheme")?;
                NameScheme::parse(&raw)
                    .ok_or_else(|| CatalogError::Corrupt(format!("name scheme {raw:?}")))?
            },
            isolation_version: row.try_get("isolation_version")?,
            quota_exhausted: row.try_get("quota_exhausted")?,
            credentials: row.try_get("credentials")?,
            credentials_version: row.try_get("credentials_version")?,
            schema_version: row.try_get("schema_version")?,
            request_id: row.try_get("request_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What a long-running operation does; stored as text in `operations.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// Onboarding of one tenant: provision, wait for availability, migrate, activate.
    CreateTenant,
    /// Deletion of one tenant's silo (see [`DeleteParams`]).
    DeleteTenant,
    /// A schema migration over the fleet; no single tenant.
    MigrateTenants,
    /// A move of one tenant's silo to another fleet server (see [`MoveParams`]).
    MoveTenant,
}

impl OperationKind {
    /// The text stored in `operations.kind` (`create_tenant`, `delete_tenant`,
    /// `migrate_tenants`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTenant => "create_tenant",
            Self::DeleteTenant => "delete_tenant",
            Self::MigrateTenants => "migrate_tenants",
            Self::MoveTenant => "move_tenant",
        }
    }

    fn parse(raw: &str) -> Result<Self, CatalogError> {
        match raw {
            "create_tenant" => Ok(Self::CreateTenant),
            "delete_tenant" => Ok(Self::DeleteTenant),
            "migrate_tenants" => Ok(Self::MigrateTenants),
            "move_tenant" => Ok(Self::MoveTenant),
            other => Err(CatalogError::Corrupt(format!("operation kind {other:?}"))),
        }
    }
}

/// Where an operation is, as reported to callers (GetOperation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    /// Stored as `pending` and no step has started yet: waiting for a worker.
    Pending,
    /// Stored as `pending` with at least one step started: a worker has it, or will retry
    /// it.
    Running,
    /// Finished; every step is done.
    Succeeded,
    /// Finished without success; `OperationRecord::error` says why.
    Failed,
}

impl OperationStatus {
    /// True once the operation has succeeded or failed and will not run again.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// State of one step of an operation, stored as text in `operation_steps.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// Started and not yet finished (or the worker running it died; the next attempt
    /// restarts it).
    Running,
    /// Finished successfully.
    Done,
    /// Finished with an error; `StepRecord::detail` holds it.
    Failed,
}

impl StepStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Result<Self, CatalogError> {
        match raw {
            "running" => Ok(Self::Running),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            other => Err(CatalogError::Corrupt(format!("step status {other:?}"))),
        }
    }
}

/// One row of `operation_steps`: a named step of an operation, in the order it ran.
#[derive(Clone, Debug)]
pub struct StepRecord {
    /// Name of the step: the tenant state it runs in (`PROVISIONING`, `WAITING_AVAILABLE`,
    /// `MIGRATING`, `DELETING`), or a fleet migration phase.
    pub name: String,
    /// Where the step is.
    pub status: StepStatus,
    /// The error of a failed step, or why a running step waits for its next attempt; often
    /// empty.
    pub detail: String,
    /// How many times the step has been started (1 on the first run).
    pub attempts: i32,
    /// When the step was (last) started.
    pub started_at: SystemTime,
    /// When the step finished; `None` while it runs.
    pub finished_at: Option<SystemTime>,
}

impl StepRecord {
    pub(crate) fn from_row(row: &Row) -> Result<Self, CatalogError> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            name: row.try_get("name")?,
            status: StepStatus::parse(&status)?,
            detail: row.try_get("detail")?,
            attempts: row.try_get("attempts")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// Options of a deletion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteParams {
    /// Keep the tenant's data: on a `postgres` fleet server the database stays, renamed and
    /// owned by the admin, instead of being dropped (the role goes either way). An `rds`
    /// instance is deleted either way; its final snapshot keeps the data.
    pub keep_database: bool,
}

/// How a move copies a silo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveMethod {
    /// `pg_dump | pg_restore` while routers hold the tenant's calls.
    #[default]
    Copy,
    /// The schema copied, the rows by logical replication while the tenant is served;
    /// calls are held only while the last changes arrive.
    Replicate,
}

/// The steps of a move, in order; each is a step of its operation, named as
/// [`MoveStep::as_str`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// The target database and role are made (the tenant stays ACTIVE and served).
    Preparing,
    /// `replicate`: the schema copied, a publication on the source and a subscription on
    /// the target, until the initial copy of every table is done (the tenant is served).
    Subscribing,
    /// The tenant is MOVING (routers hold its calls); the source database is closed to
    /// the tenant role once its last statement has ended.
    Holding,
    /// `copy`: the silo is copied to the target (`pg_dump | pg_restore`).
    Copying,
    /// `replicate`: the target has received every change the source made before it was
    /// closed; sequences are set to the source's values.
    CatchingUp,
    /// Row counts of every table compared on source and target.
    Verifying,
    /// The tenant is ACTIVE on the target: routers release the held calls there.
    Switching,
    /// The source database is kept, renamed, and the source role dropped.
    Retiring,
}

impl MoveStep {
    /// Every step.
    pub const ALL: [MoveStep; 8] = [
        Self::Preparing,
        Self::Subscribing,
        Self::Holding,
        Self::Copying,
        Self::CatchingUp,
        Self::Verifying,
        Self::Switching,
        Self::Retiring,
    ];

    /// The steps of a move by `method`, in order.
    pub fn of(method: MoveMethod) -> &'static [MoveStep] {
        match method {
            MoveMethod::Copy => &[
                Self::Preparing,
                Self::Holding,
                Self::Copying,
                Self::Verifying,
                Self::Switching,
                Self::Retiring,
            ],
            MoveMethod::Replicate => &[
                Self::Preparing,
                Self::Subscribing,
                Self::Holding,
                Self::CatchingUp,
                Self::Verifying,
                Self::Switching,
                Self::Retiring,
            ],
        }
    }

    /// The step's name in the operation (`PREPARING`, `HOLDING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "PREPARING",
            Self::Subscribing => "SUBSCRIBING",
            Self::CatchingUp => "CATCHING_UP",
            Self::Holding => "HOLDING",
            Self::Copying => "COPYING",
            Self::Verifying => "VERIFYING",
            Self::Switching => "SWITCHING",
            Self::Retiring => "RETIRING",
        }
    }

    /// The step named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|step| step.as_str() == name)
    }

    /// The step after this one in a move by `method`; `None` after the last.
    pub fn next(self, method: MoveMethod) -> Option<Self> {
        let steps = Self::of(method);
        let at = steps.iter().position(|step| *step == self)?;
        steps.get(at + 1).copied()
    }
}

/// What a move does: from where to where, and how. Written when the move is requested
/// (the target's placement is updated while PREPARING makes it); the move's progress is
/// its steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveParams {
    /// The server (fleet server name, or RDS instance id) the silo is on when the move is
    /// requested.
    pub source_server: String,
    /// The server it moves to: a fleet server name, or the RDS instance id of a promotion.
    pub target_server: String,
    /// The tenant's placement when the move was requested; after the switch the tenant's
    /// own placement is the target's, and RETIRING still needs this one. `None` in moves
    /// recorded before it was kept (fleet moves: the fleet server's placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Placement>,
    /// The target's placement, chosen when the move is requested and completed while
    /// PREPARING makes the server (an RDS instance's endpoint); kept so a resumed move
    /// makes the same one. `None` as for `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Placement>,
    /// The provisioner of the source (the tenant's when requested); `None`: the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_provisioner: Option<String>,
    /// The provisioner of the target; `None`: the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_provisioner: Option<String>,
    /// The tenant's tier when the move was requested (what a rollback returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tier: Option<String>,
    /// The tier the tenant has from the switch on (a promotion or demotion); `None`: its
    /// own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tier: Option<String>,
    /// Why the move is being given up: set before undoing anything, so a worker that
    /// resumes it goes on undoing instead of moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
    /// How the data is copied.
    pub method: MoveMethod,
    /// CancelOperation asked the move to stop: it gives up at its next step boundary
    /// unless it has switched.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// A row of `operations` with its steps: a long-running, idempotent request (create,
/// delete, fleet migration, move).
#[derive(Clone, Debug)]
pub struct OperationRecord {
    /// Operation id (UUID v4), returned to the caller to poll with GetOperation.
    pub id: Uuid,
    /// What the operation does.
    pub kind: OperationKind,
    /// None for fleet-wide operations.
    pub tenant_id: Option<TenantId>,
    /// Idempotency key of the call; with `kind` and the tenant it identifies the operation
    /// (unique index).
    pub request_id: String,
    /// Where the operation is; `Pending` vs `Running` is derived from whether a step has
    /// started.
    pub status: OperationStatus,
    /// Why the operation failed; empty unless `status` is `Failed`.
    pub error: String,
    /// Kind-specific parameters as JSON (`DeleteParams` for deletions, the plan options for
    /// fleet migrations).
    pub params: serde_json::Value,
    /// The steps started so far, in order.
    pub steps: Vec<StepRecord>,
    /// When the operation was requested.
    pub created_at: SystemTime,
    /// Latest change to the operation or any of its steps.
    pub updated_at: SystemTime,
    /// When the operation succeeded or failed; `None` until then.
    pub finished_at: Option<SystemTime>,
}

pub(crate) const OPERATION_COLUMNS: &str = "operation_id, kind, tenant_id, request_id, status, \
     error, params, created_at, updated_at, finished_at";

impl OperationRecord {
    pub(crate) fn from_row(row: &Row, steps: Vec<StepRecord>) -> Result<Self, CatalogError> {
        let kind: String = row.try_get("kind")?;
        let tenant: Option<String> = row.try_get("tenant_id")?;
        let status: String = row.try_get("status")?;
        let status = match status.as_str() {
            "pending" if steps.is_empty() => OperationStatus::Pending,
            "pending" => OperationStatus::Running,
            "succeeded" => OperationStatus::Succeeded,
            "failed" => OperationStatus::Failed,
            other => return Err(CatalogError::Corrupt(format!("operation status {other:?}"))),
        };
        let updated_at: SystemTime = row.try_get("updated_at")?;
        let step_times = steps
            .iter()
            .flat_map(|s| [Some(s.started_at), s.finished_at])
            .flatten();
        Ok(Self {
            id: row.try_get("operation_id")?,
            kind: OperationKind::parse(&kind)?,
            tenant_id: tenant
                .map(|t| TenantId::parse(&t).map_err(|e| CatalogError::Corrupt(e.to_string())))
                .transpose()?,
            request_id: row.try_get("request_id")?,
            status,
            error: row.try_get("error")?,
            params: row.try_get("params")?,
            updated_at: step_times.fold(updated_at, SystemTime::max),
            steps,
            created_at: row.try_get("created_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }

    /// The tenant of a per-tenant operation.
    pub fn tenant(&self) -> Result<&TenantId, CatalogError> {
        self.tenant_id
            .as_ref()
            .ok_or_else(|| CatalogError::Corrupt(format!("operation {} has no tenant", self.id)))
    }

    /// The parameters of a move.
    ///
    /// # Errors
    /// [`CatalogError::Corrupt`] when `params` does not hold them.
    pub fn move_params(&self) -> Result<MoveParams, CatalogError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| CatalogError::Corrupt(format!("move parameters: {e}")))
    }

    /// The step running now (started, not finished), if any.
    pub fn current_step(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .rev()
            .find(|step| step.finished_at.is_none())
    }

    /// The parameters of a deletion; defaults (keep nothing) if `params` does not hold
    /// them.
    pub fn delete_params(&self) -> DeleteParams {
        serde_json::from_value(self.params.clone()).unwrap_or_default()
    }
}

/// What happened to a tenant, as recorded in `tenant_events` and streamed to routers by
/// WatchTenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The tenant was created (in `REQUESTED`).
    Created,
    /// The tenant moved from one onboarding state to the next.
    StateChanged,
    /// Onboarding finished: the tenant is `ACTIVE` and routable.
    Activated,
    /// The tenant was suspended: routers stop serving it.
    Suspended,
    /// The tenant was resumed from `SUSPENDED` to `ACTIVE`.
    Resumed,
    /// Deletion began: routers drop the tenant's pool.
    Deleting,
    /// Deletion finished: the silo is retired and the tenant is `DELETED`.
    Deleted,
    /// The role's password was replaced; routers fetch the new one.
    CredentialsRotated,
    /// Onboarding failed; the tenant is `FAILED`.
    Failed,
    /// The tenant's tier changed (limits, and with a move, its provisioner): routers
    /// resolve it again.
    TierChanged,
    /// The tenant's own configuration changed (its state did not): routers refresh its
    /// route, which carries the merged settings.
    ConfigChanged,
    /// A monthly quota of the tenant became used up or available again: routers resolve
    /// it again.
    QuotaChanged,
}

impl EventKind {
    /// The text stored in `tenant_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::StateChanged => "state_changed",
            Self::Activated => "activated",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::CredentialsRotated => "credentials_rotated",
            Self::TierChanged => "tier_changed",
            Self::Failed => "failed",
            Self::ConfigChanged => "config_changed",
            Self::QuotaChanged => "quota_changed",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, CatalogError> {
        [
            Self::Created,
            Self::StateChanged,
            Self::Activated,
            Self::Suspended,
            Self::Resumed,
            Self::Deleting,
            Self::Deleted,
            Self::CredentialsRotated,
            Self::Failed,
            Self::TierChanged,
            Self::ConfigChanged,
            Self::QuotaChanged,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == raw)
        .ok_or_else(|| CatalogError::Corrupt(format!("event kind {raw:?}")))
    }
}

/// One row of `tenant_events`, the log routers follow with WatchTenants.
#[derive(Clone, Debug)]
pub struct TenantEvent {
    /// Position in the log; strictly increasing, and visible in order (written under the
    /// event lock), so a watcher resumes after the last one it saw.
    pub sequence: i64,
    /// The tenant the event is about.
    pub tenant_id: TenantId,
    /// What happened.
    pub kind: EventKind,
    /// The tenant's state right after the event.
    pub state: TenantState,
    /// When the event was recorded.
    pub occurred_at: SystemTime,
}
