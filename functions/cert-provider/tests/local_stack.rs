//! The certificate provider against the local stack's AWS Private CA (moto, see
//! tests/local-stack/stack.py): real SDK calls, real certificates, checked with openssl.
//! `make test` starts the stack and exports `.local/env`; run alone with `make up` first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use cert_provider::{build, Metrics, Provider, ProviderConfig};
use cvm_aws::pca::AcmPca;
use cvm_core::ports::PortError;
use cvm_core::provider::{CaKeyType, IssueRequest, PrivateCa, ProviderResponse};
use serde_json::json;

const EVENT: &str = include_str!("../../../events/cert-provider.json");

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the local stack: make up (then export .local/env), \
             or run make test"
        )
    })
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh P-256 key and its CSR, made by openssl as a device tool would.
fn openssl_csr(dir: &Path, cn: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{cn}.key"));
    let k = key.to_str().unwrap();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        k,
    ]);
    let csr = openssl(&[
        "req",
        "-new",
        "-key",
        k,
        "-subj",
        &format!("/O=Example Fleet/CN={cn}"),
    ]);
    (key, String::from_utf8(csr).unwrap())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn event(csr: &str, principal: &str) -> serde_json::Value {
    json!({"certificateSigningRequest": csr, "principalId": principal, "clientId": "test-client"})
}

async fn sdk() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    cvm_aws::load_sdk_config().await
}

async fn provider() -> Provider<AcmPca> {
    let sdk = sdk().await;
    env("CVM_PCA_ARN");
    build(&sdk, ProviderConfig::from_env().unwrap(), Metrics::Off)
        .await
        .unwrap()
}

/// The same provider over a wrapped Private CA port.
async fn wrapped<P: PrivateCa>(wrap: impl FnOnce(AcmPca) -> P, budget: Duration) -> Provider<P> {
    let p = provider().await;
    let settings = p.settings().clone();
    let ca = AcmPca::from_sdk(&sdk().await, env("CVM_PCA_ARN"), Duration::from_secs(1));
    let cn =
        regex_lite::Regex::new(&format!("^(?:{})$", cert_provider::DEFAULT_CN_PATTERN)).unwrap();
    Provider::new(wrap(ca), settings, cn, budget, Metrics::Off)
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn serial(cert: &Path) -> String {
    String::from_utf8(openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-serial",
    ]))
    .unwrap()
}

/// Counts every call through the port.
struct Counting<P> {
    inner: P,
    calls: Arc<AtomicU32>,
}

impl<P: PrivateCa> PrivateCa for Counting<P> {
    async fn key_type(&self) -> Result<CaKeyType, PortError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.key_type().await
    }
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<String, PortError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.issue(request).await
    }
    async fn get(&self, arn: &str) -> Result<Option<String>, PortError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.get(arn).await
    }
}

/// Makes issuance take `delay` (or forever): `GetCertificate` answers "in progress" until
/// then, as Private CA does (moto always answers at once).
struct Delayed<P> {
    inner: P,
    delay: Option<Duration>,
    issued_at: Mutex<HashMap<String, Instant>>,
    ready_at: Mutex<Option<Instant>>,
}

impl<P> Delayed<P> {
    fn new(inner: P, delay: Option<Duration>) -> Self {
        Self {
            inner,
            delay,
            issued_at: Mutex::default(),
            ready_at: Mutex::default(),
        }
    }
}

impl<P: PrivateCa> PrivateCa for Delayed<P> {
    async fn key_type(&self) -> Result<CaKeyType, PortError> {
        self.inner.key_type().await
    }
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<String, PortError> {
        let arn = self.inner.issue(request).await?;
        self.issued_at
            .lock()
            .unwrap()
            .entry(arn.clone())
            .or_insert_with(Instant::now);
        Ok(arn)
    }
    async fn get(&self, arn: &str) -> Result<Option<String>, PortError> {
        let issued = self.issued_at.lock().unwrap().get(arn).copied().unwrap();
        match self.delay {
            Some(d) if Instant::now() >= issued + d => {
                self.ready_at.lock().unwrap().get_or_insert(issued + d);
                self.inner.get(arn).await
            }
            _ => Ok(None),
        }
    }
}

#[tokio::test]
async fn certificate_keeps_the_csrs_subject_and_key_and_chains_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cn = unique("fleet");
    let (key, csr) = openssl_csr(dir.path(), &cn);
    let p = provider().await;
    let deadline = SystemTime::now() + Duration::from_secs(5);
    let started = Instant::now();
    let response = p.handle(event(&csr, &"a".repeat(64)), Some(deadline)).await;
    let response: ProviderResponse = response.unwrap_or_else(|d| panic!("{d:?}"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let cert = write(dir.path(), "cert.pem", &response.certificate_pem);
    let c = cert.to_str().unwrap();
    openssl(&["verify", "-CAfile", &env("CVM_PCA_CA_CERT"), c]);
    let cert_key = openssl(&["x509", "-in", c, "-noout", "-pubkey"]);
    let device_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(
        cert_key, device_key,
        "the certificate is not for the CSR's key"
    );
    let csr_path = write(dir.path(), "req.pem", &csr);
    let subject = |args: &[&str]| String::from_utf8(openssl(args)).unwrap();
    assert_eq!(
        subject(&["x509", "-in", c, "-noout", "-subject", "-nameopt", "RFC2253"])
            .trim_start_matches("subject="),
        subject(&[
            "req",
            "-in",
            csr_path.to_str().unwrap(),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253"
        ])
        .trim_start_matches("subject="),
    );
}

#[tokio::test]
async fn a_retried_invocation_gets_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_, csr) = openssl_csr(dir.path(), &unique("retry"));
    let p = provider().await;
    let principal = "b".repeat(64);
    let first = p.handle(event(&csr, &principal), None).await.unwrap();
    let second = p.handle(event(&csr, &principal), None).await.unwrap();
    let a = serial(&write(dir.path(), "a.pem", &first.certificate_pem));
    let b = serial(&write(dir.path(), "b.pem", &second.certificate_pem));
    assert_eq!(a, b, "a retry issued a second certificate");

    // Another principal asking with the same CSR is another request.
    let third = p.handle(event(&csr, &"c".repeat(64)), None).await.unwrap();
    let c = serial(&write(dir.path(), "c.pem", &third.certificate_pem));
    assert_ne!(a, c);
}

#[tokio::test]
async fn bad_csrs_are_refused_without_a_private_ca_call() {
    let dir = tempfile::tempdir().unwrap();
    let (_, csr) = openssl_csr(dir.path(), &unique("tamper"));
    // Change one character of the subject inside the signed DER: the signature no longer
    // verifies.
    let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let at = der.windows(5).position(|w| w == b"tampe").unwrap();
    der[at] = b'T';
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    );

    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let p = wrapped(
        move |inner| Counting { inner, calls: c },
        Duration::from_secs(4),
    )
    .await;
    let cases = [
        (event(&tampered, "p"), "InvalidCsr", "csr_signature_invalid"),
        (event("not a CSR", "p"), "InvalidCsr", "csr_malformed"),
        (
            event(&csr.replace("CERTIFICATE REQUEST", "CERTIFICATE"), "p"),
            "InvalidCsr",
            "csr_malformed",
        ),
        (
            event(&"A".repeat(50_000), "p"),
            "InvalidCsr",
            "csr_too_large",
        ),
        (event(&csr, ""), "InvalidRequest", "principalId"),
        (
            json!({"certificateSigningRequest": csr}),
            "InvalidRequest",
            "principalId",
        ),
        (json!([1, 2]), "InvalidRequest", "expected"),
    ];
    for (e, error_type, needle) in cases {
        let d = p.handle(e, None).await.unwrap_err();
        assert_eq!(d.error_type, error_type, "{d:?}");
        assert!(d.error_message.contains(needle), "{d:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a refused request reached Private CA"
    );

    // The untampered CSR does reach it, through the same wrapper.
    p.handle(event(&csr, "p"), None).await.unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn subject_policy_refuses_before_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (_, csr) = openssl_csr(dir.path(), &unique("other"));
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let base = provider().await;
    let ca = AcmPca::from_sdk(&sdk().await, env("CVM_PCA_ARN"), Duration::from_secs(1));
    let pattern = regex_lite::Regex::new("^(?:fleet-.*)$").unwrap();
    let p = Provider::new(
        Counting {
            inner: ca,
            calls: c,
        },
        base.settings().clone(),
        pattern,
        Duration::from_secs(4),
        Metrics::Off,
    );
    let d = p.handle(event(&csr, "p"), None).await.unwrap_err();
    assert_eq!(d.error_type, "SubjectNotAllowed");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn delayed_issuance_is_answered_within_one_backoff_step() {
    for delay in [Duration::from_millis(150), Duration::from_millis(600)] {
        let dir = tempfile::tempdir().unwrap();
        let (_, csr) = openssl_csr(dir.path(), &unique("slow"));
        let p = wrapped(
            |inner| Delayed::new(inner, Some(delay)),
            Duration::from_secs(4),
        )
        .await;
        let started = Instant::now();
        let response = p.handle(event(&csr, "p"), None).await.unwrap();
        let answered = Instant::now();
        let ready = p.ca().ready_at.lock().unwrap().unwrap();
        // At most one backoff step (250 ms) plus one GetCertificate round trip late.
        let late = answered - ready;
        assert!(
            late <= Duration::from_millis(250 + 150),
            "{delay:?}: answered {late:?} after issuance completed"
        );
        assert!(answered - started >= delay);
        assert!(response.certificate_pem.contains("BEGIN CERTIFICATE"));
    }
}

#[tokio::test]
async fn issuance_that_never_completes_fails_cleanly_before_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_, csr) = openssl_csr(dir.path(), &unique("never"));
    let budget = Duration::from_millis(1500);
    let p = wrapped(|inner| Delayed::new(inner, None), budget).await;
    let started = Instant::now();
    let d = p.handle(event(&csr, "p"), None).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(d.error_type, "IssuanceTimedOut", "{d:?}");
    assert!(took <= budget, "failed after {took:?}, budget {budget:?}");
    assert!(
        took >= budget - Duration::from_millis(500),
        "gave up early: {took:?}"
    );

    // The invocation's own deadline wins when it is closer than the budget.
    let p = wrapped(|inner| Delayed::new(inner, None), Duration::from_secs(4)).await;
    let started = Instant::now();
    let d = p
        .handle(
            event(&csr, "p"),
            Some(SystemTime::now() + Duration::from_millis(1200)),
        )
        .await
        .unwrap_err();
    assert_eq!(d.error_type, "IssuanceTimedOut");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_sample_event_is_signed() {
    let e: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    let p = provider().await;
    let response = p.handle(e, None).await.unwrap_or_else(|d| panic!("{d:?}"));
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &response.certificate_pem);
    openssl(&[
        "verify",
        "-CAfile",
        &env("CVM_PCA_CA_CERT"),
        cert.to_str().unwrap(),
    ]);
    let subject = String::from_utf8(openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-subject",
    ]))
    .unwrap();
    assert!(subject.contains("fleet-device-0001"), "{subject}");
}

#[tokio::test]
async fn the_local_runner_answers_like_the_lambda() {
    let bin = env!("CARGO_BIN_EXE_cert-provider-local");
    env("CVM_PCA_ARN");
    let run = |input: &str| {
        use std::io::Write;
        let mut child = Command::new(bin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = run(EVENT);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["certificatePem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let (code, v) = run(&event("nope", "p").to_string());
    assert_eq!(code, Some(1));
    assert_eq!(v["errorType"], "InvalidCsr");
}
