//! Every error a call can end with, and the one place they become a gRPC `Status`.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::call::CallError;
use crate::identity::IdentityError;
use crate::limits::LimitError;
use crate::pool::PoolError;
use crate::request::RequestError;
use crate::routes::RouteError;
use crate::tenant::TenantState;
use crate::value::ValueError;

/// Trailer / metadata key carrying the SQLSTATE of a database error.
pub const SQLSTATE_METADATA: &str = "x-silo-sqlstate";
/// Metadata key telling a limited caller when to retry, in milliseconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// Longest database message passed on to the caller.
const MAX_MESSAGE_LEN: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("tenant is not active ({0:?})")]
    NotActive(TenantState),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Call(#[from] CallError),
}

impl From<RouterError> for Status {
    fn from(error: RouterError) -> Self {
        match error {
            RouterError::Identity(e) => match e {
                IdentityError::Unauthenticated(auth) => Status::unauthenticated(auth.to_string()),
                IdentityError::PermissionDenied => Status::permission_denied(e.to_string()),
                IdentityError::TenantNotChosen => Status::invalid_argument(e.to_string()),
            },
            RouterError::Route(e) => match e {
                RouteError::NotFound => Status::not_found("tenant not found"),
                RouteError::Unavailable(detail) | RouteError::Invalid(detail) => {
                    tracing::warn!(error = %detail, "cannot resolve tenant");
                    Status::unavailable("tenant routing is unavailable")
                }
            },
            RouterError::NotActive(state) => {
                let state = match state {
                    TenantState::Active => "active",
                    TenantState::Onboarding => "being provisioned",
                    TenantState::Suspended => "suspended",
                    TenantState::Deleting => "being deleted",
                    TenantState::Deleted => "deleted",
                    TenantState::Failed => "failed",
                };
                Status::failed_precondition(format!("tenant is {state}"))
            }
            RouterError::Pool(e) => match e {
                PoolError::Unreachable => Status::unavailable(e.to_string()),
                PoolError::Exhausted => with_retry(
                    Status::resource_exhausted(e.to_string()),
                    std::time::Duration::from_millis(100),
                ),
            },
            RouterError::Limit(e) => match e {
                LimitError::Rate { retry_after } => {
                    with_retry(Status::resource_exhausted(e.to_string()), retry_after)
                }
                LimitError::Concurrency => with_retry(
                    Status::resource_exhausted(e.to_string()),
                    std::time::Duration::from_millis(10),
                ),
            },
            RouterError::Request(e) => Status::invalid_argument(e.to_string()),
            RouterError::Call(e) => call_status(e),
        }
    }
}

fn with_retry(mut status: Status, after: std::time::Duration) -> Status {
    if let Ok(value) = after.as_millis().max(1).to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
    }
    status
}

fn call_status(error: CallError) -> Status {
    match &error {
        CallError::Sql(e) => sql_status(e),
        CallError::Value(e) => Status::invalid_argument(e.to_string()),
        CallError::ParamCount { .. } => Status::invalid_argument(error.to_string()),
        CallError::TooManyRows(_) | CallError::TooLarge(_) | CallError::RowTooLarge(_) => {
            Status::resource_exhausted(error.to_string())
        }
        CallError::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
        CallError::Idle(_) => Status::aborted(error.to_string()),
    }
}

/// A tokio-postgres error: a database error by its SQLSTATE, a conversion error as a bad
/// argument, anything else (closed connection, I/O) as the silo being unavailable.
fn sql_status(error: &tokio_postgres::Error) -> Status {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let mut message: String = db.message().chars().take(MAX_MESSAGE_LEN).collect();
        message.push_str(&format!(" (SQLSTATE {code})"));
        let mut status = Status::new(sqlstate_code(code), message);
        if let Ok(value) = code.parse() {
            status.metadata_mut().insert(SQLSTATE_METADATA, value);
        }
        return status;
    }
    if let Some(value) = error.source().and_then(|s| s.downcast_ref::<ValueError>()) {
        return Status::invalid_argument(value.to_string());
    }
    if error.is_closed() {
        return Status::unavailable("connection to the tenant database lost");
    }
    tracing::warn!(error = %error, "database call failed");
    Status::unavailable("tenant database error")
}

/// gRPC code for a SQLSTATE, by class (the first two characters), per DESIGN.md.
pub fn sqlstate_code(sqlstate: &str) -> Code {
    match sqlstate {
        "40001" | "40P01" => return Code::Aborted,
        "23505" => return Code::AlreadyExists,
        "57014" => return Code::DeadlineExceeded,
        _ => {}
    }
    match sqlstate.get(..2).unwrap_or_default() {
        // Data exception, syntax / access rule, feature not supported, cardinality,
        // program limit.
        "22" | "42" | "0A" | "21" | "54" | "2F" | "39" | "3F" | "44" => Code::InvalidArgument,
        // Constraint violation, bad transaction state, object in use, raised by PL/pgSQL.
        "23" | "25" | "2D" | "55" | "P0" => Code::FailedPrecondition,
        "40" => Code::Aborted,
        "53" => Code::ResourceExhausted,
        // Connection problems, operator intervention, no such database, bad login.
        "08" | "57" | "3D" | "28" => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_by_class() {
        assert_eq!(sqlstate_code("40001"), Code::Aborted);
        assert_eq!(sqlstate_code("40P01"), Code::Aborted);
        assert_eq!(sqlstate_code("23505"), Code::AlreadyExists);
        assert_eq!(sqlstate_code("23503"), Code::FailedPrecondition);
        assert_eq!(sqlstate_code("42601"), Code::InvalidArgument);
        assert_eq!(sqlstate_code("22012"), Code::InvalidArgument);
        assert_eq!(sqlstate_code("57014"), Code::DeadlineExceeded);
        assert_eq!(sqlstate_code("57P01"), Code::Unavailable);
        assert_eq!(sqlstate_code("XX000"), Code::Internal);
    }

    #[test]
    fn permission_denied_does_not_depend_on_the_tenant() {
        let status = Status::from(RouterError::Identity(IdentityError::PermissionDenied));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(!status.message().contains("exist"));
    }

    #[test]
    fn limits_carry_retry_information() {
        let status = Status::from(RouterError::Limit(LimitError::Rate {
            retry_after: std::time::Duration::from_millis(250),
        }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
    }
}
