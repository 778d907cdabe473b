//! Control-plane errors and their one mapping to gRPC status (DESIGN.md, "Errors").

use thiserror::Error;
use tonic::{Code, Status};

use crate::{catalog::CatalogError, provisioner::ProvisionError, tenant::TenantState};

#[derive(Debug, Error)]
pub enum ControlPlaneError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("missing or invalid token: {0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(&'static str),
    #[error("tenant is {0}")]
    WrongState(TenantState),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A position in a log that is no longer kept.
    #[error("{0}")]
    OutOfRange(String),
    #[error("internal error")]
    Internal(String),
}

impl From<CatalogError> for ControlPlaneError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::TenantNotFound => Self::NotFound("tenant"),
            CatalogError::OperationNotFound => Self::NotFound("operation"),
            CatalogError::TenantExists => Self::AlreadyExists(
                "tenant already exists (a retry must reuse the original request_id)",
            ),
            CatalogError::WrongState(state) => Self::WrongState(state),
            CatalogError::Conflict(message) => Self::FailedPrecondition(message),
            CatalogError::Unreachable(_) => Self::Unavailable("catalog unavailable".into()),
            CatalogError::Database(ref db) if db.is_closed() || db.as_db_error().is_none() => {
                Self::Unavailable("catalog unavailable".into())
            }
            CatalogError::Database(_) | CatalogError::Migration(_) | CatalogError::Corrupt(_) => {
                Self::Internal(error.to_string())
            }
        }
    }
}

impl From<crate::provisioner::rds::reconcile::ReconcileError> for ControlPlaneError {
    fn from(error: crate::provisioner::rds::reconcile::ReconcileError) -> Self {
        use crate::provisioner::rds::reconcile::ReconcileError;
        match error {
            ReconcileError::Aws(message) => Self::Unavailable(message),
            ReconcileError::Catalog(error) => error.into(),
        }
    }
}

impl From<ProvisionError> for ControlPlaneError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::Transient(message) => Self::Unavailable(message),
            ProvisionError::Permanent(message) => Self::Internal(message),
        }
    }
}

impl From<ControlPlaneError> for Status {
    fn from(error: ControlPlaneError) -> Self {
        let code = match &error {
            ControlPlaneError::InvalidArgument(_) => Code::InvalidArgument,
            ControlPlaneError::Unauthenticated(_) => Code::Unauthenticated,
            ControlPlaneError::PermissionDenied(_) => Code::PermissionDenied,
            ControlPlaneError::NotFound(_) => Code::NotFound,
            ControlPlaneError::AlreadyExists(_) => Code::AlreadyExists,
            ControlPlaneError::WrongState(_) | ControlPlaneError::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            ControlPlaneError::Unavailable(_) => Code::Unavailable,
            ControlPlaneError::OutOfRange(_) => Code::OutOfRange,
            ControlPlaneError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Code::Internal
            }
        };
        Status::new(code, error.to_string())
    }
}
