//! Control-plane errors and their one mapping to gRPC status (DESIGN.md, "Errors").

use thiserror::Error;
use tonic::{Code, Status};

use crate::{
    catalog::CatalogError, crypto::CryptoError, fleet_migration::PlanError,
    provisioner::ProvisionError, tenant::TenantState,
};

/// A request refused as malformed before anything is read or written.
#[derive(Debug, Error)]
pub enum RequestError {
    /// A tenant id that is not a valid slug.
    #[error(transparent)]
    TenantId(#[from] crate::tenant::InvalidTenantId),
    /// A text field longer than allowed or holding control characters.
    #[error("{field} must be at most {max} printable characters")]
    TooLong {
        /// The field's name in the request.
        field: &'static str,
        /// Most characters it may hold.
        max: usize,
    },
    /// A tier the control plane's configuration does not name.
    #[error("unknown tier {0:?}")]
    UnknownTier(String),
    /// A state filter that is no tenant state.
    #[error("unknown state")]
    UnknownState,
    /// A page token this control plane did not hand out.
    #[error("invalid page_token")]
    PageToken,
    /// A `from_sequence` beyond what the event log can hold.
    #[error("from_sequence is too large")]
    FromSequenceTooLarge,
    /// An operation id that is not a UUID.
    #[error("operation_id must be a UUID")]
    OperationId,
    /// A StartMigration field out of range or inconsistent; the message says which.
    #[error("{0}")]
    Migration(String),
    /// A wave naming a tenant the fleet does not have.
    #[error(transparent)]
    UnknownWaveTenant(PlanError),
    /// A move's target that is no server of the tenant's fleet, or the one it is on; the
    /// message says which.
    #[error("{0}")]
    MoveTarget(String),
    /// A GetUsage range or a usage record that cannot be taken; the message says which.
    #[error("{0}")]
    Usage(String),

    /// A per-tenant config key or value that breaks its rules, or a change that would take
    /// the tenant past its limits (count of keys, total size); nothing was written.
    #[error(transparent)]
    Config(#[from] crate::tenant_config::ConfigRuleError),
}

/// Why a ControlPlane call failed. The variants are named after the gRPC code they map to
/// (one mapping, `From<ControlPlaneError> for Status`); each says below which domain
/// conditions it stands for.
#[derive(Debug, Error)]
pub enum ControlPlaneError {
    /// The request was refused as malformed before anything was read or written
    /// (INVALID_ARGUMENT).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The call carries no bearer token, or its JWT fails verification (signature,
    /// algorithm, `exp` / `nbf`, issuer, audience); the message says which
    /// (UNAUTHENTICATED).
    #[error("missing or invalid token: {0}")]
    InvalidToken(String),
    /// The token is valid but its `role` claim may not make this call: `admin` mutates,
    /// `admin` and `viewer` read, `router` resolves tenants, `admin` and `router` watch
    /// events (PERMISSION_DENIED).
    #[error("{0}")]
    RoleNotAllowed(&'static str),
    /// What the call names does not exist: a tenant that was never created or is `DELETED`,
    /// an operation id, or a migration run; the payload names the kind of thing
    /// (NOT_FOUND).
    #[error("{0} not found")]
    Missing(&'static str),
    /// CreateTenant for an id whose tenant is live (not `FAILED` or `DELETED`) with a
    /// different request id; a retry must reuse the original request id (ALREADY_EXISTS).
    #[error("{0}")]
    Exists(&'static str),
    /// The tenant's state forbids the call (suspending a tenant that is not `ACTIVE`,
    /// resuming one that is not `SUSPENDED`, rotating credentials of one that is neither),
    /// or it moved on while the call ran; the payload is the state it is in
    /// (FAILED_PRECONDITION).
    #[error("tenant is {0}")]
    WrongState(TenantState),
    /// The fleet or the catalog is not where the call needs it: another migration run is
    /// still pending, a dry run was asked to resume, or a contract migration's barrier is
    /// not met; the message says what to do first (FAILED_PRECONDITION).
    #[error("{0}")]
    Conflict(String),
    /// A tier or tenant names a provisioner this control plane was not started with. No
    /// retry helps until it is configured, so every call that meets it gets the same
    /// FAILED_PRECONDITION (a migration run records it as a permanent failure).
    #[error("the {0} provisioner is not configured")]
    ProvisionerNotConfigured(String),
    /// A dependency is down or refusing for now and a retry may succeed: the catalog cannot
    /// be reached, a provisioner step failed transiently, or AWS refused to list RDS
    /// instances (UNAVAILABLE).
    #[error("{0}")]
    Unreachable(String),
    /// A position in a log that is no longer kept: WatchTenants from a sequence older than
    /// the event retention keeps (`--event-retention-hours`); the router must watch from
    /// the head and resolve its cached tenants again (OUT_OF_RANGE).
    #[error("{0}")]
    HistoryTrimmed(String),
    /// A bug or a broken deployment, not the caller's fault: a corrupt catalog row, a
    /// failed catalog migration, a database error, a sealed credential that does not open,
    /// a permanent provisioner failure. The detail is logged; the caller only sees
    /// "internal error" (INTERNAL).
    #[error("internal error")]
    Unexpected(String),
}

impl From<CatalogError> for ControlPlaneError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::TenantNotFound => Self::Missing("tenant"),
            CatalogError::OperationNotFound => Self::Missing("operation"),
            CatalogError::TenantExists => {
                Self::Exists("tenant already exists (a retry must reuse the original request_id)")
            }
            CatalogError::WrongState(state) => Self::WrongState(state),
            CatalogError::Conflict(message) => Self::Conflict(message),
            CatalogError::Unreachable(_) => Self::Unreachable("catalog unavailable".into()),
            CatalogError::Database(ref db) if db.is_closed() || db.as_db_error().is_none() => {
                Self::Unreachable("catalog unavailable".into())
            }
            CatalogError::Database(_) | CatalogError::Migration(_) | CatalogError::Corrupt(_) => {
                Self::Unexpected(error.to_string())
            }
        }
    }
}

impl From<crate::provisioner::rds::reconcile::ReconcileError> for ControlPlaneError {
    fn from(error: crate::provisioner::rds::reconcile::ReconcileError) -> Self {
        use crate::provisioner::rds::reconcile::ReconcileError;
        match error {
            ReconcileError::Aws(message) => Self::Unreachable(message),
            ReconcileError::Catalog(error) => error.into(),
        }
    }
}

impl From<PlanError> for ControlPlaneError {
    fn from(error: PlanError) -> Self {
        match error {
            // The request named a tenant the fleet does not have.
            PlanError::UnknownTenant { .. } => RequestError::UnknownWaveTenant(error).into(),
            // The fleet is not yet where the migration needs it.
            PlanError::Barrier { .. } => Self::Conflict(error.to_string()),
        }
    }
}

/// Sealing or opening stored credentials fails only with a wrong key or damaged data:
/// the operator's problem, never the caller's, so the detail stays in the logs.
impl From<CryptoError> for ControlPlaneError {
    fn from(error: CryptoError) -> Self {
        match error {
            CryptoError::BadKey | CryptoError::Decrypt | CryptoError::Encrypt => {
                Self::Unexpected(error.to_string())
            }
        }
    }
}

impl From<ProvisionError> for ControlPlaneError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::Transient(message) => Self::Unreachable(message),
            ProvisionError::Permanent(message) => Self::Unexpected(message),
        }
    }
}

impl From<ControlPlaneError> for Status {
    fn from(error: ControlPlaneError) -> Self {
        let code = match &error {
            ControlPlaneError::Request(e) => match e {
                RequestError::TenantId(_)
                | RequestError::TooLong { .. }
                | RequestError::UnknownTier(_)
                | RequestError::UnknownState
                | RequestError::PageToken
                | RequestError::FromSequenceTooLarge
                | RequestError::OperationId
                | RequestError::Migration(_)
                | RequestError::UnknownWaveTenant(_)
                | RequestError::MoveTarget(_)
                | RequestError::Usage(_)
                | RequestError::Config(_) => Code::InvalidArgument,
            },
            ControlPlaneError::InvalidToken(_) => Code::Unauthenticated,
            ControlPlaneError::RoleNotAllowed(_) => Code::PermissionDenied,
            ControlPlaneError::Missing(_) => Code::NotFound,
            ControlPlaneError::Exists(_) => Code::AlreadyExists,
            ControlPlaneError::WrongState(_)
            | ControlPlaneError::Conflict(_)
            | ControlPlaneError::ProvisionerNotConfigured(_) => Code::FailedPrecondition,
            ControlPlaneError::Unreachable(_) => Code::Unavailable,
            ControlPlaneError::HistoryTrimmed(_) => Code::OutOfRange,
            ControlPlaneError::Unexpected(detail) => {
                tracing::error!(error = %detail, "internal error");
                Code::Internal
            }
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::MigrationError;
    use crate::provisioner::rds::reconcile::ReconcileError;

    /// DESIGN.md's error table for the control plane: every variant of
    /// `ControlPlaneError`, and every domain error that becomes one, to its gRPC code.
    #[test]
    fn every_control_plane_error_maps_to_its_row_of_the_error_table() {
        let rows: Vec<(ControlPlaneError, Code)> = vec![
            (
                RequestError::TenantId(crate::tenant::InvalidTenantId).into(),
                Code::InvalidArgument,
            ),
            (
                RequestError::TooLong {
                    field: "display_name",
                    max: 200,
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                RequestError::UnknownTier("gold".into()).into(),
                Code::InvalidArgument,
            ),
            (
                RequestError::Usage("from must be before to".into()).into(),
                Code::InvalidArgument,
            ),
            (RequestError::UnknownState.into(), Code::InvalidArgument),
            (RequestError::PageToken.into(), Code::InvalidArgument),
            (
                RequestError::FromSequenceTooLarge.into(),
                Code::InvalidArgument,
            ),
            (RequestError::OperationId.into(), Code::InvalidArgument),
            (
                RequestError::Migration("concurrency 999 is above 256".into()).into(),
                Code::InvalidArgument,
            ),
            (
                ControlPlaneError::InvalidToken("expired".into()),
                Code::Unauthenticated,
            ),
            (
                ControlPlaneError::RoleNotAllowed("admin only"),
                Code::PermissionDenied,
            ),
            (ControlPlaneError::Missing("tenant"), Code::NotFound),
            (ControlPlaneError::Exists("tenant"), Code::AlreadyExists),
            (
                ControlPlaneError::WrongState(TenantState::Deleting),
                Code::FailedPrecondition,
            ),
            (
                ControlPlaneError::Conflict("contract".into()),
                Code::FailedPrecondition,
            ),
            (
                ControlPlaneError::ProvisionerNotConfigured("rds".into()),
                Code::FailedPrecondition,
            ),
            (
                ControlPlaneError::Unreachable("catalog".into()),
                Code::Unavailable,
            ),
            (
                ControlPlaneError::HistoryTrimmed("trimmed".into()),
                Code::OutOfRange,
            ),
            (
                RequestError::MoveTarget("no fleet server b".into()).into(),
                Code::InvalidArgument,
            ),
            (ControlPlaneError::Unexpected("bug".into()), Code::Internal),
            (
                RequestError::Config(crate::tenant_config::ConfigRuleError::TooManyKeys).into(),
                Code::InvalidArgument,
            ),
            // Domain errors, through their one conversion each.
            (CatalogError::TenantNotFound.into(), Code::NotFound),
            (CatalogError::OperationNotFound.into(), Code::NotFound),
            (CatalogError::TenantExists.into(), Code::AlreadyExists),
            (
                CatalogError::WrongState(TenantState::Suspended).into(),
                Code::FailedPrecondition,
            ),
            (
                CatalogError::Conflict("run".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                CatalogError::Unreachable("refused".into()).into(),
                Code::Unavailable,
            ),
            (
                CatalogError::Migration(MigrationError::DuplicateVersion(2)).into(),
                Code::Internal,
            ),
            (CatalogError::Corrupt("state".into()).into(), Code::Internal),
            (
                ProvisionError::Transient("throttled".into()).into(),
                Code::Unavailable,
            ),
            (
                ProvisionError::Permanent("quota".into()).into(),
                Code::Internal,
            ),
            (
                ReconcileError::Aws("listing".into()).into(),
                Code::Unavailable,
            ),
            (
                PlanError::UnknownTenant {
                    wave: "canary".into(),
                    tenant: "nobody".into(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                PlanError::Barrier {
                    version: 3,
                    name: "contract".into(),
                    requires: 2,
                    count: 1,
                    examples: "acme".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (CryptoError::BadKey.into(), Code::Internal),
            (CryptoError::Decrypt.into(), Code::Internal),
            (CryptoError::Encrypt.into(), Code::Internal),
            (
                ReconcileError::Catalog(CatalogError::TenantNotFound).into(),
                Code::NotFound,
            ),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (error, code) in rows {
            covered.insert(variant(&error));
            let shown = format!("{error:?}");
            assert_eq!(Status::from(error).code(), code, "{shown}");
        }
        let missing: Vec<_> = VARIANTS.iter().filter(|v| !covered.contains(*v)).collect();
        assert!(missing.is_empty(), "no row for {missing:?}");
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let status = Status::from(ControlPlaneError::Unexpected("password=hunter2".into()));
        assert_eq!(status.message(), "internal error");
    }

    /// Every variant `variant` names: a new variant does not compile until `variant`
    /// names it, and fails the table test until the table has a row for it.
    const VARIANTS: &[&str] = &[
        "Request::TenantId",
        "Request::TooLong",
        "Request::UnknownTier",
        "Request::UnknownState",
        "Request::PageToken",
        "Request::FromSequenceTooLarge",
        "Request::OperationId",
        "Request::Migration",
        "Request::UnknownWaveTenant",
        "Request::MoveTarget",
        "Request::Usage",
        "Request::Config",
        "InvalidToken",
        "RoleNotAllowed",
        "Missing",
        "Exists",
        "WrongState",
        "Conflict",
        "ProvisionerNotConfigured",
        "Unreachable",
        "HistoryTrimmed",
        "Unexpected",
    ];

    /// The variant of `error`, by an exhaustive match (no `_` arm, on purpose).
    fn variant(error: &ControlPlaneError) -> &'static str {
        match error {
            ControlPlaneError::Request(e) => match e {
                RequestError::TenantId(_) => "Request::TenantId",
                RequestError::TooLong { .. } => "Request::TooLong",
                RequestError::UnknownTier(_) => "Request::UnknownTier",
                RequestError::UnknownState => "Request::UnknownState",
                RequestError::PageToken => "Request::PageToken",
                RequestError::FromSequenceTooLarge => "Request::FromSequenceTooLarge",
                RequestError::OperationId => "Request::OperationId",
                RequestError::Migration(_) => "Request::Migration",
                RequestError::UnknownWaveTenant(_) => "Request::UnknownWaveTenant",
                RequestError::MoveTarget(_) => "Request::MoveTarget",
                RequestError::Usage(_) => "Request::Usage",
                RequestError::Config(_) => "Request::Config",
            },
            ControlPlaneError::InvalidToken(_) => "InvalidToken",
            ControlPlaneError::RoleNotAllowed(_) => "RoleNotAllowed",
            ControlPlaneError::Missing(_) => "Missing",
            ControlPlaneError::Exists(_) => "Exists",
            ControlPlaneError::WrongState(_) => "WrongState",
            ControlPlaneError::Conflict(_) => "Conflict",
            ControlPlaneError::ProvisionerNotConfigured(_) => "ProvisionerNotConfigured",
            ControlPlaneError::Unreachable(_) => "Unreachable",
            ControlPlaneError::HistoryTrimmed(_) => "HistoryTrimmed",
            ControlPlaneError::Unexpected(_) => "Unexpected",
        }
    }
}
