//! The vending API over HTTP: one route, `POST /v1/certificates`, the same router behind
//! API Gateway (through `lambda_http`) and in the local HTTPS server.
//!
//! Every answer that is not a certificate is JSON `{"code", "message"}` with a stable code.

pub mod error;
pub mod metrics;

use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cvm_core::ports::{CertificateIssuer, DeviceStore, ThingRegistry};
use cvm_core::vend::Delivery;
use cvm_core::{Csr, Serial, Token, VendOutcome, VendRequest, Vendor};
use serde::{Deserialize, Serialize};

pub use error::ApiError;
pub use metrics::Metrics;

/// Largest request body accepted. A CSR is at most a few KiB; anything bigger is refused
/// before it is parsed.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct Api<S, I, R> {
    pub vendor: Vendor<S, I, R>,
    pub metrics: Metrics,
}

/// The router, for API Gateway and for the local server alike.
pub fn router<S, I, R>(api: Arc<Api<S, I, R>>) -> Router
where
    S: DeviceStore + 'static,
    I: CertificateIssuer + 'static,
    R: ThingRegistry + 'static,
{
    Router::new()
        .route(
            "/v1/certificates",
            post(vend::<S, I, R>).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .fallback(|| async { ApiError::NotFound })
        .with_state(api)
}

/// The request body, exactly these three fields: the device chooses nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VendBody {
    serial: String,
    token: String,
    csr: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VendResponse {
    pub thing_name: String,
    pub certificate_id: String,
    pub certificate_arn: String,
    pub certificate_pem: String,
    pub ca_certificates: Vec<String>,
    pub endpoints: cvm_core::Endpoints,
    pub policy_name: String,
    pub public_key_fingerprint: String,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_alias: Option<String>,
}

impl From<Delivery> for VendResponse {
    fn from(d: Delivery) -> Self {
        Self {
            thing_name: d.thing_name.as_str().to_owned(),
            certificate_id: d.issued.certificate.id,
            certificate_arn: d.issued.certificate.arn,
            certificate_pem: d.issued.certificate_pem,
            ca_certificates: d.ca_certificates,
            endpoints: d.endpoints,
            policy_name: d.policy_name.as_str().to_owned(),
            public_key_fingerprint: d.issued.fingerprint.as_str().to_owned(),
            issued_at: d.issued.issued_at,
            role_alias: d.role_alias,
        }
    }
}

/// Parse, don't validate: every field becomes a domain type or the request is refused.
async fn parse_request(body: Body) -> Result<VendRequest, ApiError> {
    let bytes = to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::RequestTooLarge)?;
    let body: VendBody = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::InvalidJson
        } else {
            // Field names only; serde's message never contains the values of our fields.
            ApiError::InvalidRequest(e.to_string())
        }
    })?;
    let serial = Serial::parse(&body.serial).map_err(|e| ApiError::InvalidSerial(e.to_string()))?;
    let token = Token::parse(&body.token).map_err(|e| ApiError::InvalidToken(e.to_string()))?;
    let csr = Csr::parse_pem(&body.csr).map_err(ApiError::Csr)?;
    Ok(VendRequest { serial, token, csr })
}

async fn vend<S, I, R>(State(api): State<Arc<Api<S, I, R>>>, body: Body) -> Response
where
    S: DeviceStore + 'static,
    I: CertificateIssuer + 'static,
    R: ThingRegistry + 'static,
{
    let started = Instant::now();
    let result = match parse_request(body).await {
        Ok(request) => api.vendor.vend(&request).await.map_err(ApiError::Vend),
        Err(e) => Err(e),
    };
    let throttled = matches!(&result, Err(e) if e.is_upstream_throttle());
    let (outcome, response) = match result {
        Ok(VendOutcome::Issued(d)) => (
            "issued",
            (StatusCode::CREATED, Json(VendResponse::from(d))).into_response(),
        ),
        Ok(VendOutcome::Replayed(d)) => (
            "replayed",
            (StatusCode::OK, Json(VendResponse::from(d))).into_response(),
        ),
        Err(e) => (e.outcome(), e.into_response()),
    };
    let elapsed = started.elapsed();
    tracing::info!(
        outcome,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_millis() as u64,
        "vend request"
    );
    metrics::record_vend(&api.metrics, outcome, throttled, elapsed);
    let mut response = response;
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
