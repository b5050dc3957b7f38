//! The vending API over HTTP, the same router behind API Gateway (through `lambda_http`) and
//! in the local HTTPS server: `POST /v1/certificates` (first enrollment),
//! `POST /v1/renewals` and `POST /v1/renewals/confirm` (renewal without a token).
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
use cvm_core::renew::{ConfirmOutcome, ConfirmRequest, RenewOutcome, RenewRequest};
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
    let method_not_allowed = || async { ApiError::MethodNotAllowed };
    Router::new()
        .route(
            "/v1/certificates",
            post(vend::<S, I, R>).fallback(method_not_allowed),
        )
        .route(
            "/v1/renewals",
            post(renew::<S, I, R>).fallback(method_not_allowed),
        )
        .route(
            "/v1/renewals/confirm",
            post(confirm::<S, I, R>).fallback(method_not_allowed),
        )
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::map_response(no_store))
        .with_state(api)
}

/// Every answer, the 404 and 405 of the fallbacks included, is for its caller alone.
async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The vend request body: exactly these fields; the device chooses nothing else. The token
/// may be left out by a device whose key was registered at enrollment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VendBody {
    serial: String,
    #[serde(default)]
    token: Option<String>,
    csr: String,
}

/// `POST /v1/renewals`: a new CSR, signed by the current certificate's key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    serial: String,
    csr: String,
    /// Base64 (standard alphabet) of the signature over the renewal message.
    signature: String,
}

/// `POST /v1/renewals/confirm`: the new certificate's id, signed by its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfirmBody {
    serial: String,
    certificate_id: String,
    signature: String,
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

/// The body as JSON of type `T`, at most [`MAX_BODY_BYTES`].
async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    shape: &'static str,
) -> Result<T, ApiError> {
    let bytes = to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::RequestTooLarge)?;
    let parsed = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::InvalidJson
        } else {
            // Field names only; serde's message never contains the values of our fields.
            ApiError::InvalidRequest {
                shape,
                detail: e.to_string(),
            }
        }
    })?;
    // serde also reads a struct from a JSON array of its fields in declaration order
    // (`["SN-1", "<token>", "<csr>"]`); the contract is an object with named fields only.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidRequest {
            shape,
            detail: "the body must be a JSON object".into(),
        });
    }
    Ok(parsed)
}

fn serial(raw: &str) -> Result<Serial, ApiError> {
    Serial::parse(raw).map_err(|e| ApiError::InvalidSerial(e.to_string()))
}

fn signature(raw: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    if raw.is_empty() || raw.len() > 2048 {
        return Err(ApiError::InvalidSignatureEncoding);
    }
    base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| ApiError::InvalidSignatureEncoding)
}

/// Parse, don't validate: every field becomes a domain type or the request is refused.
async fn parse_vend(body: Body) -> Result<VendRequest, ApiError> {
    let body: VendBody = json_body(body, VEND_SHAPE).await?;
    let serial = serial(&body.serial)?;
    let token = body
        .token
        .as_deref()
        .map(|t| Token::parse(t).map_err(|e| ApiError::InvalidToken(e.to_string())))
        .transpose()?;
    let csr = Csr::parse_pem(&body.csr).map_err(ApiError::Csr)?;
    Ok(VendRequest { serial, token, csr })
}

async fn parse_renew(body: Body) -> Result<RenewRequest, ApiError> {
    let body: RenewBody = json_body(body, RENEW_SHAPE).await?;
    Ok(RenewRequest {
        serial: serial(&body.serial)?,
        csr: Csr::parse_pem(&body.csr).map_err(ApiError::Csr)?,
        signature: signature(&body.signature)?,
    })
}

async fn parse_confirm(body: Body) -> Result<ConfirmRequest, ApiError> {
    let body: ConfirmBody = json_body(body, CONFIRM_SHAPE).await?;
    let id = body.certificate_id.to_ascii_lowercase();
    if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::InvalidCertificateId);
    }
    Ok(ConfirmRequest {
        serial: serial(&body.serial)?,
        certificate_id: id,
        signature: signature(&body.signature)?,
    })
}

const VEND_SHAPE: &str = "{\"serial\", \"token\" (optional for a registered key), \"csr\"}";
const RENEW_SHAPE: &str = "{\"serial\", \"csr\", \"signature\"}";
const CONFIRM_SHAPE: &str = "{\"serial\", \"certificateId\", \"signature\"}";

/// One answer: logged, counted, never cached.
fn respond(
    metrics: &Metrics,
    operation: &'static str,
    started: Instant,
    result: Result<(StatusCode, &'static str, Delivery), ApiError>,
) -> Response {
    let throttled = matches!(&result, Err(e) if e.is_upstream_throttle());
    let (outcome, response) = match result {
        Ok((status, outcome, delivery)) => (
            outcome,
            (status, Json(VendResponse::from(delivery))).into_response(),
        ),
        Err(e) => (e.outcome(), e.into_response()),
    };
    let elapsed = started.elapsed();
    tracing::info!(
        operation,
        outcome,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_millis() as u64,
        "request"
    );
    metrics::record_request(metrics, operation, outcome, throttled, elapsed);
    response
}

async fn vend<S, I, R>(State(api): State<Arc<Api<S, I, R>>>, body: Body) -> Response
where
    S: DeviceStore + 'static,
    I: CertificateIssuer + 'static,
    R: ThingRegistry + 'static,
{
    let started = Instant::now();
    let result = match parse_vend(body).await {
        Ok(request) => api
            .vendor
            .vend(&request)
            .await
            .map(|outcome| match outcome {
                VendOutcome::Issued(d) => (StatusCode::CREATED, "issued", d),
                VendOutcome::Replayed(d) => (StatusCode::OK, "replayed", d),
            })
            .map_err(ApiError::Vend),
        Err(e) => Err(e),
    };
    respond(&api.metrics, "vend", started, result)
}

async fn renew<S, I, R>(State(api): State<Arc<Api<S, I, R>>>, body: Body) -> Response
where
    S: DeviceStore + 'static,
    I: CertificateIssuer + 'static,
    R: ThingRegistry + 'static,
{
    let started = Instant::now();
    let result = match parse_renew(body).await {
        Ok(request) => api
            .vendor
            .renew(&request)
            .await
            .map(|outcome| match outcome {
                RenewOutcome::Proposed(d) => (StatusCode::CREATED, "proposed", d),
                RenewOutcome::Replayed(d) => (StatusCode::OK, "replayed", d),
            })
            .map_err(ApiError::Vend),
        Err(e) => Err(e),
    };
    respond(&api.metrics, "renew", started, result)
}

async fn confirm<S, I, R>(State(api): State<Arc<Api<S, I, R>>>, body: Body) -> Response
where
    S: DeviceStore + 'static,
    I: CertificateIssuer + 'static,
    R: ThingRegistry + 'static,
{
    let started = Instant::now();
    let result = match parse_confirm(body).await {
        Ok(request) => api
            .vendor
            .confirm_renewal(&request)
            .await
            .map(|outcome| match outcome {
                ConfirmOutcome::Confirmed(d) => (StatusCode::OK, "confirmed", d),
                ConfirmOutcome::AlreadyConfirmed(d) => (StatusCode::OK, "replayed", d),
            })
            .map_err(ApiError::Vend),
        Err(e) => Err(e),
    };
    respond(&api.metrics, "confirm", started, result)
}
