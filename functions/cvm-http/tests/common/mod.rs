//! What the HTTP tests share: a router over in-memory ports with one enrolled serial.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use cvm_core::ports::DeviceStore;
use cvm_core::testing::{FakeIot, MemoryStore};
use cvm_core::*;
use cvm_http::{router, Api, Metrics};
use tower::ServiceExt;

pub const TOKEN: &str = "Zs1V0n9lHq3cBqk2mTtq8V2Xyq4Jp0aC";

pub async fn app() -> (axum::Router, FakeIot) {
    let store = MemoryStore::default();
    let iot = FakeIot::new();
    let serial = Serial::parse("SN-100").unwrap();
    store
        .create(&DeviceRecord::new_enrollment(
            serial.clone(),
            lifecycle::credentials(Some(&Token::parse(TOKEN).unwrap()), None),
            ThingName::from(&serial),
            None,
            Attributes::default(),
            AuditEvent::new("2027-01-01T00:00:00Z", AuditKind::Enrolled, "ops", ""),
        ))
        .await
        .unwrap();
    let config = VendConfig {
        default_policy: PolicyName::parse("default").unwrap(),
        lockout: LockoutPolicy::default(),
        claim_lease: Duration::from_secs(60),
        activation_margin: Duration::from_secs(15),
        endpoints: Endpoints {
            data: "data.example".into(),
            credentials: "creds.example".into(),
        },
        ca_certificates: vec![iot.ca_pem.clone()],
        role_alias: Some("cvm-role-alias".into()),
        renewal: cvm_core::renew::RenewalPolicy::default(),
        quotas: cvm_core::pacing::Quotas::default(),
    };
    let vendor = Vendor::new(store, iot.clone(), iot.clone(), config);
    (
        router(Arc::new(Api {
            vendor,
            metrics: Metrics::Off,
        })),
        iot,
    )
}

pub fn csr(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    (
        params.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../cvm-core/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>, Option<String>) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, bytes.to_vec(), retry_after)
}

pub async fn post(app: &axum::Router, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let (status, bytes, _) = call(app, "POST", "/v1/certificates", body.to_string()).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}
