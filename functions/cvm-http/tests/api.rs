//! The HTTP contract against in-memory ports: status codes, stable error codes, identical
//! answers for unknown serials and wrong tokens, and logs free of secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use cvm_core::ports::DeviceStore;
use cvm_core::testing::{FakeIot, MemoryStore};
use cvm_core::*;
use cvm_http::{router, Api, Metrics};
use tower::ServiceExt;

const TOKEN: &str = "Zs1V0n9lHq3cBqk2mTtq8V2Xyq4Jp0aC";

async fn app() -> (axum::Router, FakeIot) {
    let store = MemoryStore::default();
    let iot = FakeIot::new();
    let serial = Serial::parse("SN-100").unwrap();
    store
        .create(&DeviceRecord::new_enrollment(
            serial.clone(),
            Token::parse(TOKEN).unwrap().hash(),
            ThingName::from(&serial),
            None,
            Attributes::default(),
            "2027-01-01T00:00:00Z".into(),
        ))
        .await
        .unwrap();
    let config = VendConfig {
        default_policy: PolicyName::parse("default").unwrap(),
        max_failed_attempts: 5,
        claim_lease: Duration::from_secs(30),
        endpoints: Endpoints {
            data: "data.example".into(),
            credentials: "creds.example".into(),
        },
        ca_certificates: vec![iot.ca_pem.clone()],
        role_alias: Some("cvm-role-alias".into()),
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

fn csr(cn: &str) -> (String, String) {
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

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../cvm-core/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn call(
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

async fn post(app: &axum::Router, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let (status, bytes, _) = call(app, "POST", "/v1/certificates", body.to_string()).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn vend_then_replay_then_conflict() {
    let (app, _) = app().await;
    let (pem, _) = csr("SN-100");
    let (status, first) = post(
        &app,
        serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": pem}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    for field in [
        "thingName",
        "certificateId",
        "certificateArn",
        "certificatePem",
        "policyName",
        "publicKeyFingerprint",
        "issuedAt",
        "roleAlias",
    ] {
        assert!(first[field].is_string(), "{field} missing: {first}");
    }
    assert_eq!(first["endpoints"]["data"], "data.example");
    assert_eq!(first["endpoints"]["credentials"], "creds.example");
    assert!(first["caCertificates"][0]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    let (status, again) = post(
        &app,
        serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": pem}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["certificateId"], first["certificateId"]);

    let (other, _) = csr("SN-100");
    let (status, body) = post(
        &app,
        serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": other}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "already_issued");
}

#[tokio::test]
async fn unknown_serial_and_wrong_token_get_byte_identical_answers() {
    let (app, _) = app().await;
    let unknown = serde_json::json!({"serial": "SN-NOPE", "token": TOKEN, "csr": csr("SN-NOPE").0});
    let wrong = serde_json::json!({"serial": "SN-100", "token": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "csr": csr("SN-100").0});
    let (s1, b1, _) = call(&app, "POST", "/v1/certificates", unknown.to_string()).await;
    let (s2, b2, _) = call(&app, "POST", "/v1/certificates", wrong.to_string()).await;
    assert_eq!(s1, StatusCode::FORBIDDEN);
    assert_eq!(s1, s2);
    assert_eq!(b1, b2);
    let v: serde_json::Value = serde_json::from_slice(&b1).unwrap();
    assert_eq!(v["code"], "invalid_credentials");
}

#[tokio::test]
async fn each_bad_input_has_its_own_code() {
    let (app, iot) = app().await;
    let good_csr = csr("SN-100").0;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("not json".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("{\"serial\": \"SN-100\"".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN}).to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": good_csr, "policy": "admin"}).to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
        (serde_json::json!({"serial": 7, "token": TOKEN, "csr": good_csr}).to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
        (serde_json::json!({"serial": "bad serial", "token": TOKEN, "csr": good_csr}).to_string(), StatusCode::BAD_REQUEST, "invalid_serial"),
        (serde_json::json!({"serial": "SN-100", "token": "short", "csr": good_csr}).to_string(), StatusCode::BAD_REQUEST, "invalid_token"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": "garbage"}).to_string(), StatusCode::BAD_REQUEST, "csr_malformed"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": fixture("tampered.csr.pem")}).to_string(), StatusCode::BAD_REQUEST, "csr_signature_invalid"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": fixture("rsa1024.csr.pem")}).to_string(), StatusCode::BAD_REQUEST, "csr_key_unsupported"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": "A".repeat(13 * 1024)}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": "A".repeat(17 * 1024)}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        (serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": csr("other-device").0}).to_string(), StatusCode::FORBIDDEN, "csr_subject_not_allowed"),
    ];
    for (body, status, code) in cases {
        let (s, bytes, _) = call(&app, "POST", "/v1/certificates", body.clone()).await;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (s, v["code"].as_str().unwrap()),
            (status, code),
            "body {:.80}",
            body
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(!String::from_utf8_lossy(&bytes).contains(TOKEN));
    }
    assert_eq!(
        iot.state.lock().unwrap().created,
        0,
        "nothing may be issued for bad input"
    );

    let (s, bytes, _) = call(&app, "GET", "/v1/certificates", Body::empty()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(String::from_utf8_lossy(&bytes).contains("method_not_allowed"));
    let (s, bytes, _) = call(&app, "POST", "/v1/certificates?token=x", Body::empty()).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let (s, bytes, _) = call(&app, "POST", "/admin", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&bytes).contains("not_found"));
}

#[tokio::test]
async fn upstream_throttling_is_503_with_retry_after() {
    let (app, iot) = app().await;
    iot.faults
        .fail_next("issuer.issue", cvm_core::ports::FailureKind::Throttled);
    let body = serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": csr("SN-100").0});
    let (s, bytes, retry_after) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&bytes).contains("service_busy"));
    assert_eq!(retry_after.as_deref(), Some("2"));
    let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the token stays usable after a failure"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_of_a_full_vend_hold_no_token_and_no_key() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pem, key_pem) = csr("SN-100");
    runtime.block_on(async {
        let (app, iot) = app().await;
        // A wrong token, a failure with undo, then success and a replay: every log path.
        let wrong = serde_json::json!({"serial": "SN-100", "token": "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "csr": pem});
        call(&app, "POST", "/v1/certificates", wrong.to_string()).await;
        iot.faults.fail_next("issuer.activate", cvm_core::ports::FailureKind::Other);
        let body = serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": pem});
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::OK);
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"outcome\":\"issued\""),
        "the vend was logged: {logs}"
    );
    assert!(logs.contains("SN-100"));
    for secret in [
        TOKEN,
        "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        &Token::parse(TOKEN).unwrap().hash().to_hex(),
    ] {
        assert!(
            !logs.contains(secret),
            "a token (or its hash) is in the logs"
        );
    }
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!logs.contains("PRIVATE KEY"));
    assert!(!logs.contains(&key_body[..40]));
}
