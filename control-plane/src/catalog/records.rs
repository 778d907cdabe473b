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
    pub port: u16,
    /// Provisioner-specific facts (e.g. an RDS secret ARN).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

#[derive(Clone, Debug)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    pub tier: String,
    pub state: TenantState,
    pub failure_reason: String,
    pub provisioner: String,
    pub placement: Option<Placement>,
    pub database_name: String,
    pub role_name: String,
    pub name_scheme: NameScheme,
    /// The isolation steps the silo has been given (`provisioner::isolation::VERSION`).
    pub isolation_version: i32,
    /// Sealed password (see `crypto`); never leaves the control plane but to routers.
    pub credentials: Option<Vec<u8>>,
    pub credentials_version: i32,
    pub schema_version: i64,
    pub request_id: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

pub(crate) const TENANT_COLUMNS: &str = "tenant_id, display_name, tier, state, failure_reason, \
     provisioner, placement, database_name, role_name, name_scheme, isolation_version, credentials, \
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
            credentials: row.try_get("credentials")?,
            credentials_version: row.try_get("credentials_version")?,
            schema_version: row.try_get("schema_version")?,
            request_id: row.try_get("request_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    CreateTenant,
    DeleteTenant,
    /// A schema migration over the fleet; no single tenant.
    MigrateTenants,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTenant => "create_tenant",
            Self::DeleteTenant => "delete_tenant",
            Self::MigrateTenants => "migrate_tenants",
        }
    }

    fn parse(raw: &str) -> Result<Self, CatalogError> {
        match raw {
            "create_tenant" => Ok(Self::CreateTenant),
            "delete_tenant" => Ok(Self::DeleteTenant),
            "migrate_tenants" => Ok(Self::MigrateTenants),
            other => Err(CatalogError::Corrupt(format!("operation kind {other:?}"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl OperationStatus {
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    Running,
    Done,
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

#[derive(Clone, Debug)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub detail: String,
    pub attempts: i32,
    pub started_at: SystemTime,
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
    pub keep_database: bool,
}

#[derive(Clone, Debug)]
pub struct OperationRecord {
    pub id: Uuid,
    pub kind: OperationKind,
    /// None for fleet-wide operations.
    pub tenant_id: Option<TenantId>,
    pub request_id: String,
    pub status: OperationStatus,
    pub error: String,
    pub params: serde_json::Value,
    pub steps: Vec<StepRecord>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
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

    pub fn delete_params(&self) -> DeleteParams {
        serde_json::from_value(self.params.clone()).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    StateChanged,
    Activated,
    Suspended,
    Resumed,
    Deleting,
    Deleted,
    CredentialsRotated,
    Failed,
}

impl EventKind {
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
            Self::Failed => "failed",
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
        ]
        .into_iter()
        .find(|kind| kind.as_str() == raw)
        .ok_or_else(|| CatalogError::Corrupt(format!("event kind {raw:?}")))
    }
}

#[derive(Clone, Debug)]
pub struct TenantEvent {
    pub sequence: i64,
    pub tenant_id: TenantId,
    pub kind: EventKind,
    pub state: TenantState,
    pub occurred_at: SystemTime,
}
