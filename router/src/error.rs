//! Every error a call can end with, and the one place they become a gRPC `Status`.

use std::error::Error as _;

use silo_telemetry::Throttle;
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

/// The warnings a failing control plane or server would repeat on every call: one line
/// per interval each, with the count held back (`held_back`).
static UNRESOLVED: Throttle = Throttle::new(LOG_INTERVAL);
static UNUSABLE_ROUTE: Throttle = Throttle::new(LOG_INTERVAL);
static UNEXPECTED_ANSWER: Throttle = Throttle::new(LOG_INTERVAL);
const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest database message passed on to the caller.
const MAX_MESSAGE_LEN: usize = 512;

/// Why a call failed; `From<RouterError> for Status` is the one mapping to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The caller's token or tenant choice was refused.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The tenant's route could not be had.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The tenant is in this state, not ACTIVE.
    #[error("tenant is not active ({0:?})")]
    NotActive(TenantState),
    /// The tenant stayed MOVING for the whole hold (the duration) without a new route.
    #[error("the tenant's database is moving: the call was held for {} ms; retry it", .0.as_millis())]
    MoveHold(std::time::Duration),
    /// No connection to the tenant's database.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The tenant's rate or concurrency limit refused the call.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A monthly quota of the tenant is used up (which one, and the use).
    #[error("the tenant's {0}; an admin can raise it (SetTenantQuota)")]
    QuotaExhausted(String),
    /// The request is malformed or asks for what the router does not do.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Running the statement failed.
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
                RouteError::Unavailable(detail) => {
                    if let Some(held_back) = UNRESOLVED.allow() {
                        tracing::warn!(error = %detail, held_back, "cannot resolve tenant");
                    }
                    Status::unavailable("tenant routing is unavailable")
                }
                RouteError::Invalid(detail) => {
                    if let Some(held_back) = UNUSABLE_ROUTE.allow() {
                        tracing::error!(error = %detail, held_back, "cannot use the tenant's route");
                    }
                    Status::internal("tenant routing failed")
                }
            },
            // Only an open transaction sees it (calls are held): ended, to be retried.
            RouterError::NotActive(TenantState::Moving) => Status::aborted(
                "the tenant's database is moving: the transaction was ended; retry it",
            ),
            RouterError::MoveHold(_) => with_retry(
                Status::unavailable(error.to_string()),
                std::time::Duration::from_millis(100),
            ),
            RouterError::NotActive(state) => {
                let state = match state {
                    TenantState::Moving => "moving",
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
                PoolError::Unreachable(_) => Status::unavailable(e.to_string()),
                PoolError::Exhausted => with_retry(
                    Status::resource_exhausted(e.to_string()),
                    std::time::Duration::from_millis(100),
                ),
            },
            RouterError::QuotaExhausted(_) => Status::resource_exhausted(error.to_string()),
            RouterError::Limit(e) => match e {
                LimitError::Rate { retry_after } => {
                    with_retry(Status::resource_exhausted(e.to_string()), retry_after)
                }
                LimitError::Concurrency => with_retry(
                    Status::resource_exhausted(e.to_string()),
                    std::time::Duration::from_millis(10),
                ),
            },
            RouterError::Request(e) => match e {
                RequestError::Unsupported(_) => Status::unimplemented(e.to_string()),
                RequestError::MissingStatement
                | RequestError::EmptySql
                | RequestError::NulInSql
                | RequestError::Param { .. }
                | RequestError::EmptyBatch
                | RequestError::TransactionControl
                | RequestError::Invalid(_) => Status::invalid_argument(e.to_string()),
            },
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
        CallError::Idle(_) | CallError::StaleStatement => Status::aborted(error.to_string()),
        CallError::TransactionLost(_) => Status::internal(error.to_string()),
        CallError::ConnectionLost => Status::unavailable(error.to_string()),
    }
}

/// Whether `error` leaves the connection in a protocol state the router does not know
/// (not a database error, not a value the router refused, not a closed connection): such a
/// connection is closed rather than lent again.
pub fn leaves_connection_unknown(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_none()
        && !error.is_closed()
        && !error
            .source()
            .is_some_and(|s| s.is::<ValueError>() || s.is::<std::io::Error>())
}

/// A tokio-postgres error: a database error by its SQLSTATE; a value the router refused
/// as a bad argument; a lost connection as UNAVAILABLE (a retry gets another); anything
/// else (the server sent what the protocol did not lead us to expect) as INTERNAL.
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
    if error.is_closed() || error.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return Status::unavailable("connection to the tenant database lost");
    }
    if let Some(held_back) = UNEXPECTED_ANSWER.allow() {
        tracing::warn!(error = %error, held_back, "unexpected answer from the tenant database");
    }
    Status::internal("unexpected answer from the tenant database")
}

/// gRPC code for a SQLSTATE (PostgreSQL's Appendix A), by class (its first two
/// characters) after a few codes of their own. Only what a retry can fix is UNAVAILABLE
/// (the server going away) or ABORTED (a conflict with another transaction); the caller's
/// own mistakes are INVALID_ARGUMENT, broken rules FAILED_PRECONDITION, duplicates
/// ALREADY_EXISTS. The README's error table lists the same rows.
pub fn sqlstate_code(sqlstate: &str) -> Code {
    match sqlstate {
        // unique_violation, and creating what exists (duplicate_cursor, _database,
        // _function, _prepared_statement, _schema, _table, _alias, _column, _object).
        "23505" | "42P03" | "42P04" | "42723" | "42P05" | "42P06" | "42P07" | "42712" | "42701"
        | "42710" => return Code::AlreadyExists,
        // insufficient_privilege.
        "42501" => return Code::PermissionDenied,
        // query_canceled: the statement timeout (the call's deadline or the tier's).
        "57014" => return Code::DeadlineExceeded,
        // lock_not_available (NOWAIT, lock_timeout): a conflict, worth a retry.
        "55P03" => return Code::Aborted,
        _ => {}
    }
    match sqlstate.get(..2).unwrap_or_default() {
        // Statement not complete, locator, grantor, role, diagnostics, CASE not found,
        // cardinality, data exception, SQL statement name, routine, cursor name,
        // external routine (invocation), savepoint, catalog name, schema name, syntax or
        // access rule, program limit.
        "03" | "0F" | "0L" | "0P" | "0Z" | "20" | "21" | "22" | "26" | "2F" | "34" | "38"
        | "39" | "3B" | "3D" | "3F" | "42" | "54" => Code::InvalidArgument,
        // Feature not supported.
        "0A" => Code::Unimplemented,
        // Triggered action, transaction initiation, integrity constraint, cursor state,
        // transaction state, dependent privileges, transaction termination, triggered
        // data change, WITH CHECK OPTION, object not in prerequisite state, PL/pgSQL
        // RAISE and assertions.
        "09" | "0B" | "23" | "24" | "25" | "2B" | "2D" | "27" | "44" | "55" | "P0" => {
            Code::FailedPrecondition
        }
        // Transaction rollback (serialization failure, deadlock), snapshot too old.
        "40" | "72" => Code::Aborted,
        // Insufficient resources (disk full, out of memory, too many connections).
        "53" => Code::ResourceExhausted,
        // Connection exception, operator intervention (shutdown, crash), invalid
        // authorization (a login refused mid-session).
        "08" | "57" | "28" => Code::Unavailable,
        // System error, configuration file, foreign data wrapper, internal error, and any
        // class PostgreSQL may add.
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
        assert_eq!(sqlstate_code("3D000"), Code::InvalidArgument);
        assert_eq!(sqlstate_code("0A000"), Code::Unimplemented);
        assert_eq!(sqlstate_code("42P07"), Code::AlreadyExists);
        assert_eq!(sqlstate_code("42501"), Code::PermissionDenied);
        assert_eq!(sqlstate_code("53300"), Code::ResourceExhausted);
        assert_eq!(sqlstate_code("55P03"), Code::Aborted);
        assert_eq!(sqlstate_code(""), Code::Internal);
    }

    /// The README's first error table, one assertion per row it can build here (the
    /// SQLSTATE rows are checked against a real server in `tests/router/error_codes.rs`).
    #[test]
    fn every_router_error_maps_to_its_row_of_the_error_table() {
        use silo_auth::AuthError;
        let rows: Vec<(RouterError, Code)> = vec![
            (
                IdentityError::Unauthenticated(AuthError::Expired).into(),
                Code::Unauthenticated,
            ),
            (
                IdentityError::PermissionDenied.into(),
                Code::PermissionDenied,
            ),
            (IdentityError::TenantNotChosen.into(), Code::InvalidArgument),
            (RouteError::NotFound.into(), Code::NotFound),
            (
                RouteError::Unavailable("down".into()).into(),
                Code::Unavailable,
            ),
            (
                RouteError::Invalid("bad token".into()).into(),
                Code::Internal,
            ),
            (
                RouterError::NotActive(TenantState::Suspended),
                Code::FailedPrecondition,
            ),
            (
                RouterError::NotActive(TenantState::Onboarding),
                Code::FailedPrecondition,
            ),
            (
                RouterError::NotActive(TenantState::Deleting),
                Code::FailedPrecondition,
            ),
            (
                RouterError::NotActive(TenantState::Failed),
                Code::FailedPrecondition,
            ),
            (
                RouterError::NotActive(TenantState::Active),
                Code::FailedPrecondition,
            ),
            (
                RouterError::NotActive(TenantState::Deleted),
                Code::FailedPrecondition,
            ),
            (RouterError::NotActive(TenantState::Moving), Code::Aborted),
            (
                RouterError::MoveHold(std::time::Duration::from_secs(2)),
                Code::Unavailable,
            ),
            (PoolError::Unreachable(None).into(), Code::Unavailable),
            (PoolError::Exhausted.into(), Code::ResourceExhausted),
            (
                LimitError::Rate {
                    retry_after: std::time::Duration::from_millis(5),
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (LimitError::Concurrency.into(), Code::ResourceExhausted),
            (
                RouterError::QuotaExhausted("monthly call quota of 10 calls used (10)".into()),
                Code::ResourceExhausted,
            ),
            (RequestError::EmptySql.into(), Code::InvalidArgument),
            (RequestError::NulInSql.into(), Code::InvalidArgument),
            (RequestError::MissingStatement.into(), Code::InvalidArgument),
            (RequestError::EmptyBatch.into(), Code::InvalidArgument),
            (
                RequestError::TransactionControl.into(),
                Code::InvalidArgument,
            ),
            (RequestError::Invalid("x").into(), Code::InvalidArgument),
            (
                RequestError::Param {
                    index: 1,
                    source: ValueError::RaggedArray,
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                RequestError::Unsupported("COPY").into(),
                Code::Unimplemented,
            ),
            (
                CallError::Value(ValueError::UnsupportedType("tsvector".into())).into(),
                Code::InvalidArgument,
            ),
            (
                CallError::Value(ValueError::Unreadable("x".into())).into(),
                Code::InvalidArgument,
            ),
            (
                CallError::ParamCount {
                    expected: 1,
                    got: 2,
                }
                .into(),
                Code::InvalidArgument,
            ),
            (CallError::TooManyRows(1).into(), Code::ResourceExhausted),
            (CallError::TooLarge(1).into(), Code::ResourceExhausted),
            (CallError::RowTooLarge(1).into(), Code::ResourceExhausted),
            (CallError::DeadlineExceeded.into(), Code::DeadlineExceeded),
            (
                CallError::Idle(std::time::Duration::from_secs(1)).into(),
                Code::Aborted,
            ),
            (CallError::StaleStatement.into(), Code::Aborted),
            (CallError::TransactionLost("COMMIT").into(), Code::Internal),
            (CallError::ConnectionLost.into(), Code::Unavailable),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (error, code) in rows {
            covered.insert(variant(&error));
            let shown = format!("{error:?}");
            assert_eq!(Status::from(error).code(), code, "{shown}");
        }
        // SQL errors need a server: tests/router/error_codes.rs walks every SQLSTATE class.
        covered.insert("Call::Sql");
        let missing: Vec<_> = VARIANTS.iter().filter(|v| !covered.contains(*v)).collect();
        assert!(missing.is_empty(), "no row for {missing:?}");
    }

    /// Every variant `variant` can name: a new error variant does not compile until
    /// `variant` names it, and fails the table test until the table has a row for it.
    const VARIANTS: &[&str] = &[
        "Identity::Unauthenticated",
        "Identity::PermissionDenied",
        "Identity::TenantNotChosen",
        "Route::NotFound",
        "Route::Unavailable",
        "Route::Invalid",
        "NotActive::Active",
        "NotActive::Onboarding",
        "NotActive::Suspended",
        "NotActive::Deleting",
        "NotActive::Deleted",
        "NotActive::Failed",
        "NotActive::Moving",
        "MoveHold",
        "Pool::Unreachable",
        "Pool::Exhausted",
        "Limit::Rate",
        "Limit::Concurrency",
        "QuotaExhausted",
        "Request::MissingStatement",
        "Request::EmptySql",
        "Request::Param",
        "Request::NulInSql",
        "Request::EmptyBatch",
        "Request::TransactionControl",
        "Request::Unsupported",
        "Request::Invalid",
        "Call::Sql",
        "Call::Value",
        "Call::ParamCount",
        "Call::TooManyRows",
        "Call::TooLarge",
        "Call::RowTooLarge",
        "Call::DeadlineExceeded",
        "Call::Idle",
        "Call::StaleStatement",
        "Call::ConnectionLost",
        "Call::TransactionLost",
    ];

    /// The variant of `error`, by an exhaustive match (no `_` arm, on purpose).
    fn variant(error: &RouterError) -> &'static str {
        match error {
            RouterError::Identity(e) => match e {
                IdentityError::Unauthenticated(_) => "Identity::Unauthenticated",
                IdentityError::PermissionDenied => "Identity::PermissionDenied",
                IdentityError::TenantNotChosen => "Identity::TenantNotChosen",
            },
            RouterError::Route(e) => match e {
                RouteError::NotFound => "Route::NotFound",
                RouteError::Unavailable(_) => "Route::Unavailable",
                RouteError::Invalid(_) => "Route::Invalid",
            },
            RouterError::NotActive(state) => match state {
                TenantState::Active => "NotActive::Active",
                TenantState::Onboarding => "NotActive::Onboarding",
                TenantState::Suspended => "NotActive::Suspended",
                TenantState::Deleting => "NotActive::Deleting",
                TenantState::Deleted => "NotActive::Deleted",
                TenantState::Failed => "NotActive::Failed",
                TenantState::Moving => "NotActive::Moving",
            },
            RouterError::MoveHold(_) => "MoveHold",
            RouterError::Pool(e) => match e {
                PoolError::Unreachable(_) => "Pool::Unreachable",
                PoolError::Exhausted => "Pool::Exhausted",
            },
            RouterError::Limit(e) => match e {
                LimitError::Rate { .. } => "Limit::Rate",
                LimitError::Concurrency => "Limit::Concurrency",
            },
            RouterError::QuotaExhausted(_) => "QuotaExhausted",
            RouterError::Request(e) => match e {
                RequestError::MissingStatement => "Request::MissingStatement",
                RequestError::EmptySql => "Request::EmptySql",
                RequestError::Param { .. } => "Request::Param",
                RequestError::NulInSql => "Request::NulInSql",
                RequestError::EmptyBatch => "Request::EmptyBatch",
                RequestError::TransactionControl => "Request::TransactionControl",
                RequestError::Unsupported(_) => "Request::Unsupported",
                RequestError::Invalid(_) => "Request::Invalid",
            },
            RouterError::Call(e) => match e {
                CallError::Sql(_) => "Call::Sql",
                CallError::Value(_) => "Call::Value",
                CallError::ParamCount { .. } => "Call::ParamCount",
                CallError::TooManyRows(_) => "Call::TooManyRows",
                CallError::TooLarge(_) => "Call::TooLarge",
                CallError::RowTooLarge(_) => "Call::RowTooLarge",
                CallError::DeadlineExceeded => "Call::DeadlineExceeded",
                CallError::Idle(_) => "Call::Idle",
                CallError::StaleStatement => "Call::StaleStatement",
                CallError::ConnectionLost => "Call::ConnectionLost",
                CallError::TransactionLost(_) => "Call::TransactionLost",
            },
        }
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
