//! The sample API Gateway event in `events/` goes through the same conversion as in Lambda and
//! the same router, and yields a certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use cvm_core::ports::DeviceStore;
use cvm_core::testing::{FakeIot, MemoryStore};
use cvm_core::*;
use cvm_http::{router, Api, Metrics};
use tower::ServiceExt;

const EVENT: &str = include_str!("../../../events/vend-http-api.json");

#[tokio::test]
async fn sample_event_vends_a_certificate() {
    let request = lambda_http::request::from_str(EVENT).unwrap();
    let body: serde_json::Value = serde_json::from_slice(request.body().as_ref()).unwrap();

    let store = MemoryStore::default();
    let iot = FakeIot::new();
    let serial = Serial::parse(body["serial"].as_str().unwrap()).unwrap();
    let token = Token::parse(body["token"].as_str().unwrap()).unwrap();
    store
        .create(&DeviceRecord::new_enrollment(
            serial.clone(),
            lifecycle::credentials(Some(&token), None),
            ThingName::from(&serial),
            None,
            Attributes::default(),
            AuditEvent::new("2027-01-01T00:00:00Z", AuditKind::Enrolled, "ops", ""),
        ))
        .await
        .unwrap();
    let config = VendConfig {
        default_policy: PolicyName::parse("cvm-device-default").unwrap(),
        lockout: LockoutPolicy::default(),
        claim_lease: Duration::from_secs(60),
        activation_margin: Duration::from_secs(15),
        endpoints: Endpoints {
            data: "d".into(),
            credentials: "c".into(),
        },
        ca_certificates: vec![iot.ca_pem.clone()],
        role_alias: None,
        renewal: cvm_core::renew::RenewalPolicy::default(),
        quotas: cvm_core::pacing::Quotas::default(),
    };
    let app = router(Arc::new(Api {
        vendor: Vendor::new(store, iot.clone(), iot.clone(), config),
        metrics: Metrics::Off,
    }));
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(iot.active_count(), 1);
}
