//! Enrollment against a stub vending API on 127.0.0.1 that fails on purpose: 5xx, a lost
//! response, 429 with Retry-After, enrollment in progress, 403, an unreachable port, a
//! certificate for another key. Retries where a retry can succeed, never otherwise, always
//! with the same key; nothing half-written on disk when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cvm_device::enroll::{enroll, Backoff, EnrollError, EnrollOptions, Enrollment, Outcome};
use cvm_device::FileKeyStore;
use serde_json::json;

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(40),
};

struct Stub {
    ca: Arc<TestCa>,
    server: TestServer,
    ca_file: tempfile::NamedTempFile,
}

/// A stub API answering the n-th request (from 0) with `script(n, certificate)`, where
/// `certificate` is a certificate for the request's CSR.
async fn stub(script: impl Fn(usize, String) -> Reply + Send + Sync + 'static) -> Stub {
    let ca = Arc::new(TestCa::new("stub API CA"));
    let count = AtomicUsize::new(0);
    let issuer = ca.clone();
    let handler: Handler = Arc::new(move |request: &Received| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let certificate = issuer.certify_csr(body["csr"].as_str().unwrap());
        script(n, certificate)
    });
    let server = TestServer::start(server_tls(&ca, None), handler).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write(ca_file.path());
    Stub {
        ca,
        server,
        ca_file,
    }
}

fn vended(status: u16, certificate: String, ca: &TestCa) -> Reply {
    Reply::json(
        status,
        json!({
            "thingName": "thing-STUB-1",
            "certificateId": "c0ffee",
            "certificateArn": "arn:aws:iot:us-east-1:123456789012:cert/c0ffee",
            "certificatePem": certificate,
            "caCertificates": [ca.pem],
            "endpoints": {"data": "data.example.com", "credentials": "creds.example.com"},
            "policyName": "cvm-device-default",
            "publicKeyFingerprint": "ignored",
            "issuedAt": "2030-01-01T00:00:00Z",
            "roleAlias": "cvm-device-role-alias"
        }),
    )
}

fn error(status: u16, code: &str, retry_after: Option<u64>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(seconds) = retry_after {
        headers.push(("retry-after", seconds.to_string()));
    }
    Reply::Respond {
        status,
        headers,
        body: json!({"code": code, "message": format!("stub says {code}")}).to_string(),
    }
}

fn options(url: String, ca: &Path, out: &Path, max_attempts: u32) -> EnrollOptions {
    EnrollOptions {
        url,
        serial: "STUB-1".into(),
        token: "one-time-token".to_owned().into(),
        ca: Some(ca.to_owned()),
        out: out.to_owned(),
        max_attempts,
        backoff: FAST,
    }
}

/// The public-key fingerprints of the CSRs the stub received.
fn csr_keys(server: &TestServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            cvm_core::Csr::parse_pem(body["csr"].as_str().unwrap())
                .unwrap()
                .fingerprint()
                .as_str()
                .to_owned()
        })
        .collect()
}

/// After a failure: the key and nothing else.
fn assert_nothing_written(out: &Path) {
    assert_eq!(files_in(out), vec!["device.key".to_owned()]);
}

struct Device {
    _dir: tempfile::TempDir,
    out: std::path::PathBuf,
    store: FileKeyStore,
}

fn device() -> Device {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cvm");
    let store = FileKeyStore::open_or_create(&out.join("device.key")).unwrap();
    Device {
        _dir: dir,
        out,
        store,
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_key_until_it_works() {
    let stub = stub(|n, certificate| match n {
        0 | 1 => error(503, "service_unavailable", None),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let outcome = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: true, .. }));
    let keys = csr_keys(&stub.server);
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "one key for every attempt"
    );
    assert_eq!(
        files_in(&d.out),
        ["ca.pem", "certificate.pem", "device.key", "enrollment.json"]
    );
    let enrollment = Enrollment::load(&d.out).unwrap();
    assert_eq!(enrollment.thing_name, "thing-STUB-1");
    assert_eq!(enrollment.public_key_fingerprint, keys[0]);
    assert_eq!(
        enrollment.role_alias.as_deref(),
        Some("cvm-device-role-alias")
    );
    assert!(enrollment.key.starts_with("file:"));
    let _ = &stub.ca;

    // Once enrolled, running again asks nothing.
    let again = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(again, Outcome::AlreadyEnrolled(_)));
    assert_eq!(stub.server.requests().len(), 3);
}

#[tokio::test]
async fn a_lost_response_is_asked_again_with_the_same_key_and_the_certificate_re_delivered() {
    // The first vend happens but its answer never arrives; the retry gets the same
    // certificate (200: re-delivered), because it comes with the same key.
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = first.clone();
    let stub = stub(move |n, certificate| {
        let mut first = seen.lock().unwrap();
        match n {
            0 => {
                *first = Some(certificate);
                Reply::Drop
            }
            _ => vended(200, first.clone().unwrap(), &TestCa::new("unused")),
        }
    })
    .await;
    let d = device();
    let outcome = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Enrolled { new: false, .. }));
    let keys = csr_keys(&stub.server);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
    let stored = std::fs::read_to_string(d.out.join("certificate.pem")).unwrap();
    assert_eq!(Some(stored), first.lock().unwrap().clone());
}

#[tokio::test]
async fn retry_after_is_respected_on_429_and_enrollment_in_progress() {
    let stub = stub(|n, certificate| match n {
        0 => error(429, "throttled", Some(1)),
        1 => error(409, "enrollment_in_progress", Some(1)),
        _ => vended(201, certificate, &TestCa::new("unused")),
    })
    .await;
    let d = device();
    let started = Instant::now();
    enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap();
    // The backoff alone would have waited a few tens of milliseconds.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stub.server.requests().len(), 3);
}

#[tokio::test]
async fn a_403_is_final_and_leaves_nothing_on_disk() {
    let stub = stub(|_, _| error(403, "invalid_credentials", None)).await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 6),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EnrollError::Api { status: 403, code, .. } if code == "invalid_credentials"),
        "{err}"
    );
    assert_eq!(stub.server.requests().len(), 1, "no retry on a 4xx");
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn giving_up_after_the_last_attempt_leaves_nothing_on_disk() {
    let stub = stub(|_, _| error(500, "internal", None)).await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 3),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EnrollError::Api { status: 500, .. }), "{err}");
    assert_eq!(stub.server.requests().len(), 3);
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn a_certificate_for_another_key_is_refused() {
    let other =
        FileKeyStore::open_or_create(&tempfile::tempdir().unwrap().path().join("k")).unwrap();
    let other_csr = cvm_device::csr::build_csr(&other, "STUB-1").unwrap();
    let stub = stub(move |_, _| {
        let ca = TestCa::new("unused");
        vended(201, ca.certify_csr(&other_csr), &ca)
    })
    .await;
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 3),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("not for this device's key"),
        "{err}"
    );
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn an_unreachable_api_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = TestCa::new("unused");
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write(ca_file.path());
    let d = device();
    let err = enroll(
        &d.store,
        &options(
            format!("https://127.0.0.1:{port}"),
            ca_file.path(),
            &d.out,
            2,
        ),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, EnrollError::Network { .. }), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains('\n'));
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn an_api_with_an_untrusted_certificate_is_refused() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let stranger = TestCa::new("not the API's CA");
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    stranger.write(ca_file.path());
    let d = device();
    let err = enroll(
        &d.store,
        &options(stub.server.url(), ca_file.path(), &d.out, 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(stub.server.requests().is_empty());
    assert_nothing_written(&d.out);
}

#[tokio::test]
async fn a_refused_re_enrollment_keeps_the_previous_one() {
    let stub = stub(|_, certificate| vended(201, certificate, &TestCa::new("unused"))).await;
    let d = device();
    enroll(
        &d.store,
        &options(stub.server.url(), stub.ca_file.path(), &d.out, 1),
    )
    .await
    .unwrap();
    // Another serial on the same device, refused: the old files are replaced only once a new
    // certificate has arrived, so the device keeps a working identity.
    let refusing = self::stub(|_, _| error(403, "invalid_credentials", None)).await;
    let mut other = options(refusing.server.url(), refusing.ca_file.path(), &d.out, 1);
    other.serial = "STUB-2".into();
    assert!(enroll(&d.store, &other).await.is_err());
    assert_eq!(Enrollment::load(&d.out).unwrap().serial, "STUB-1");
}

#[tokio::test]
async fn the_binary_reports_a_refusal_in_one_line() {
    let stub = stub(|_, _| error(403, "invalid_credentials", None)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cvm");
    let token = dir.path().join("token");
    std::fs::write(&token, "one-time-token\n").unwrap();
    let run = run_device(
        &[
            "enroll",
            "--url",
            &stub.server.url(),
            "--serial",
            "STUB-1",
            "--token-file",
            token.to_str().unwrap(),
            "--ca",
            stub.ca_file.path().to_str().unwrap(),
            "--dir",
            out.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_one_line_failure(
        &run,
        "the API refused the enrollment: invalid_credentials (403): stub says invalid_credentials",
    );
    assert!(!run.stderr.contains("one-time-token"));
    assert_nothing_written(&out);
    let body: serde_json::Value = serde_json::from_slice(&stub.server.requests()[0].body).unwrap();
    assert_eq!(
        body["token"], "one-time-token",
        "the file's newline is not part of it"
    );
}
