use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use cvm_core::ports::{FailureKind, PortError};

/// Error codes that mean "slow down", across DynamoDB, IoT and Private CA.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
];

const UNAVAILABLE_CODES: &[&str] = &[
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailureException",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
];

/// Converts an SDK error into a [`PortError`], keeping what the operator needs to see.
pub fn port_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (kind, code) = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            (FailureKind::Unavailable, None)
        }
        SdkError::ResponseError(_) => (FailureKind::Unavailable, None),
        SdkError::ServiceError(service) => {
            let code = service.err().code().map(str::to_owned);
            let kind = match code.as_deref() {
                Some(c) if THROTTLING_CODES.contains(&c) => FailureKind::Throttled,
                Some(c) if UNAVAILABLE_CODES.contains(&c) => FailureKind::Unavailable,
                Some("ResourceNotFoundException") => FailureKind::NotFound,
                _ => FailureKind::Other,
            };
            (kind, code)
        }
        _ => (FailureKind::Other, None),
    };
    let mut port = PortError::new(kind, operation);
    port.code = code;
    port.with_source(err)
}

/// The service error code of an SDK error, if it is a service error.
pub fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// A response without a field the API promises: a service fault we cannot work around.
pub(crate) fn missing(operation: &'static str, field: &str) -> PortError {
    PortError::new(FailureKind::Other, operation).with_code(format!("MissingField({field})"))
}
