//! One error type for the HTTP boundary, mapped to a status and a stable code once, here.
//! Internal causes are logged, never echoed.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvm_core::{CsrError, VendError};
use serde::Serialize;

#[derive(Debug)]
pub enum ApiError {
    /// 413: body larger than [`crate::MAX_BODY_BYTES`].
    RequestTooLarge,
    /// 400: body is not JSON.
    InvalidJson,
    /// 400: JSON of the wrong shape (missing or unknown field, wrong type).
    InvalidRequest { shape: &'static str, detail: String },
    /// 400
    InvalidSerial(String),
    /// 400: the token is not of the token format (says nothing about any serial).
    InvalidToken(String),
    /// 400 (413 for an oversized CSR)
    Csr(CsrError),
    /// 400: the signature is not base64 of a plausible length.
    InvalidSignatureEncoding,
    /// 400: not a certificate id (64 hex characters).
    InvalidCertificateId,
    /// From the workflow; status per [`VendError`] variant, code from [`VendError::code`].
    Vend(VendError),
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::RequestTooLarge | ApiError::Csr(CsrError::TooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::InvalidJson
            | ApiError::InvalidRequest { .. }
            | ApiError::InvalidSerial(_)
            | ApiError::InvalidToken(_)
            | ApiError::InvalidSignatureEncoding
            | ApiError::InvalidCertificateId
            | ApiError::Csr(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Vend(e) => match e {
                VendError::InvalidCredentials
                | VendError::KeyNotRegistered
                | VendError::Revoked
                | VendError::SubjectNotAllowed
                | VendError::InvalidSignature
                | VendError::RenewalExpired => StatusCode::FORBIDDEN,
                // Not a refusal for good: the serial is slowed down, and opens again by itself.
                VendError::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
                VendError::AlreadyIssued
                | VendError::InProgress { .. }
                | VendError::NothingToRenew => StatusCode::CONFLICT,
                VendError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                VendError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::RequestTooLarge => "request_too_large",
            ApiError::InvalidJson => "invalid_json",
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::InvalidSignatureEncoding => "invalid_signature_encoding",
            ApiError::InvalidCertificateId => "invalid_certificate_id",
            ApiError::InvalidSerial(_) => "invalid_serial",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::Csr(e) => e.code(),
            ApiError::Vend(e) => e.code(),
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// What the client reads. Internal causes stay in the log.
    fn message(&self) -> String {
        match self {
            ApiError::RequestTooLarge => {
                format!("request body exceeds {} bytes", crate::MAX_BODY_BYTES)
            }
            ApiError::InvalidJson => "request body is not valid JSON".into(),
            ApiError::InvalidRequest { shape, detail } => {
                format!("request must be {shape}: {detail}")
            }
            ApiError::InvalidSignatureEncoding => {
                "signature must be the base64 (standard alphabet) of a signature".into()
            }
            ApiError::InvalidCertificateId => {
                "certificateId must be a certificate id (64 hexadecimal characters)".into()
            }
            ApiError::InvalidSerial(m) | ApiError::InvalidToken(m) => m.clone(),
            ApiError::Csr(e) => e.to_string(),
            ApiError::Vend(VendError::Internal(_)) => {
                "internal error; the request can be retried".into()
            }
            ApiError::Vend(VendError::Unavailable { .. }) => {
                "a dependency is unavailable or throttling; retry after the given delay".into()
            }
            ApiError::Vend(e) => e.to_string(),
            ApiError::NotFound => {
                "no such resource; the API is POST /v1/certificates, /v1/renewals and /v1/renewals/confirm".into()
            }
            ApiError::MethodNotAllowed => "use POST".into(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Vend(VendError::InProgress { retry_after })
            | ApiError::Vend(VendError::Locked { retry_after })
            | ApiError::Vend(VendError::Unavailable { retry_after, .. }) => Some(*retry_after),
            ApiError::Vend(VendError::Internal(_)) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// Whether AWS throttled us (as opposed to the caller being refused).
    pub fn is_upstream_throttle(&self) -> bool {
        matches!(self, ApiError::Vend(VendError::Unavailable { source, .. })
            if source.kind == cvm_core::ports::FailureKind::Throttled)
    }

    /// The metric dimension for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Vend(VendError::Locked { .. }) => "locked",
            ApiError::Vend(VendError::AlreadyIssued | VendError::InProgress { .. }) => "conflict",
            ApiError::Vend(VendError::Unavailable { .. } | VendError::Internal(_)) => "failed",
            _ => "rejected",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The full cause (operation, service code, source chain) for operators only.
            tracing::error!(code = self.code(), error = ?self, "vend failed");
        } else {
            tracing::info!(code = self.code(), "vend refused");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                code: self.code(),
                message: self.message(),
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
