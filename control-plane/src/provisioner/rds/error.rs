//! AWS errors as provisioning errors: throttling, 5xx and network trouble are transient
//! (the step is retried); quota, KMS, missing-resource and validation faults are permanent,
//! with a reason an operator can act on.

use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};

use crate::provisioner::ProvisionError;

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
];

const SERVER_SIDE: &[&str] = &[
    "InternalFailure",
    "InternalError",
    "InternalServiceError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// An AWS call that failed, reduced to what silo decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsFault {
    /// The AWS error code (`DBInstanceNotFound`, `Throttling`, ...), if the service sent one.
    pub code: Option<String>,
    /// What failed and AWS's message, prefixed with the call's context (never credentials).
    pub message: String,
    /// Worth retrying: throttling, a 5xx, a timeout, AWS unreachable; false for
    /// configuration and client errors.
    pub transient: bool,
}

impl AwsFault {
    /// Whether AWS answered with error code `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Reduces an SDK error of the call described by `context` to a fault: service errors
    /// keep their code, and throttling, server-side codes, HTTP 5xx, timeouts and dispatch
    /// failures are transient.
    pub fn from_sdk<E>(context: &str, error: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().map(str::to_owned);
                let status = service.raw().status().as_u16();
                let detail = service.err().message().unwrap_or("no message");
                let transient = status >= 500
                    || code
                        .as_deref()
                        .is_some_and(|c| THROTTLING.contains(&c) || SERVER_SIDE.contains(&c));
                let message = match &code {
                    Some(code) => format!("{context}: {code}: {detail}"),
                    None => format!("{context}: HTTP {status}: {detail}"),
                };
                Self {
                    code,
                    message,
                    transient,
                }
            }
            SdkError::TimeoutError(_) => Self::transient(format!("{context}: timed out")),
            SdkError::DispatchFailure(failure) => Self::transient(format!(
                "{context}: AWS unreachable{}",
                if failure.is_timeout() {
                    " (timeout)"
                } else {
                    ""
                }
            )),
            SdkError::ResponseError(_) => {
                Self::transient(format!("{context}: unreadable response from AWS"))
            }
            SdkError::ConstructionFailure(_) => Self {
                code: None,
                message: format!(
                    "{context}: the request could not be built (configuration): {}",
                    aws_sdk_rds::error::DisplayErrorContext(error)
                ),
                transient: false,
            },
            _ => Self::transient(format!("{context}: unexpected AWS client error")),
        }
    }

    fn transient(message: String) -> Self {
        Self {
            code: None,
            message,
            transient: true,
        }
    }
}

impl From<AwsFault> for ProvisionError {
    fn from(fault: AwsFault) -> Self {
        if fault.transient {
            ProvisionError::Transient(fault.message)
        } else {
            ProvisionError::Permanent(fault.message)
        }
    }
}
