//! The HTTP contract against in-memory ports: status codes, stable error codes, and identical
//! answers for unknown serials and wrong tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::*;

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
async fn upstream_throttling_is_503_with_a_retry_after_from_the_quota() {
    let (app, iot) = app().await;
    let body = serde_json::json!({"serial": "SN-100", "token": TOKEN, "csr": csr("SN-100").0});
    // The fakes' operations are paced at 10 per second: a burst of twelve throttled requests
    // is told to come back spread over two seconds, not all at once.
    let mut waits = Vec::new();
    for _ in 0..12 {
        iot.faults
            .fail_next("issuer.issue", cvm_core::ports::FailureKind::Throttled);
        let (s, bytes, retry_after) =
            call(&app, "POST", "/v1/certificates", body.to_string()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&bytes).contains("service_busy"));
        waits.push(retry_after.unwrap());
    }
    assert_eq!(waits.iter().filter(|w| *w == "1").count(), 10, "{waits:?}");
    assert_eq!(waits.iter().filter(|w| *w == "2").count(), 2, "{waits:?}");
    let (s, _, _) = call(&app, "POST", "/v1/certificates", body.to_string()).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the token stays usable after a failure"
    );
}
