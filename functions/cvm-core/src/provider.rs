//! Signing CSRs with a private CA (AWS Private CA): the certificate provider AWS IoT fleet
//! provisioning invokes, and the Private-CA issuer of the vend API.
//!
//! AWS IoT waits 5 seconds for a certificate provider. Private CA issues asynchronously:
//! `IssueCertificate` answers with an ARN at once and `GetCertificate` answers
//! `RequestInProgressException` until the certificate is ready, typically after a few hundred
//! milliseconds. So the provider:
//! - refuses a bad CSR before spending a Private CA call ([`Csr::parse_pem`], subject policy);
//! - derives the idempotency token from the request, so a retried invocation gets the same
//!   certificate instead of a second one ([`IdempotencyToken::derive`]);
//! - polls with a short, capped exponential backoff against a deadline
//!   ([`await_certificate`]), never a fixed sleep;
//! - checks the certificate carries the CSR's subject and public key before answering
//!   ([`check_certificate`]).
//!
//! Private CA is reached through the narrow [`PrivateCa`] port and time through [`Timer`], so
//! all of this runs in unit tests with a fake CA and a manual clock ([`fake`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use der::{DecodePem, Encode};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use x509_cert::name::Name;
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::csr::{check_device_certificate_shape, Csr, CsrError};
use crate::ports::{FailureKind, PortError};

/// Private CA accepts idempotency tokens of at most this many characters.
pub const MAX_IDEMPOTENCY_TOKEN_LEN: usize = 36;

/// The key type of the CA; the signing algorithm must match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyType {
    Rsa,
    Ec,
}

impl CaKeyType {
    /// From Private CA's `KeyAlgorithm` (`RSA_2048`, `EC_prime256v1`, ...). `None` for key
    /// types this project does not sign with (SM2, ML-DSA).
    pub fn from_key_algorithm(key_algorithm: &str) -> Option<Self> {
        if key_algorithm.starts_with("RSA_") {
            Some(CaKeyType::Rsa)
        } else if key_algorithm.starts_with("EC_") {
            Some(CaKeyType::Ec)
        } else {
            None
        }
    }
}

/// Private CA's `SigningAlgorithm` values for RSA and EC CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    Sha256WithRsa,
    Sha384WithRsa,
    Sha512WithRsa,
    Sha256WithEcdsa,
    Sha384WithEcdsa,
    Sha512WithEcdsa,
}

impl SigningAlgorithm {
    const ALL: [SigningAlgorithm; 6] = [
        SigningAlgorithm::Sha256WithRsa,
        SigningAlgorithm::Sha384WithRsa,
        SigningAlgorithm::Sha512WithRsa,
        SigningAlgorithm::Sha256WithEcdsa,
        SigningAlgorithm::Sha384WithEcdsa,
        SigningAlgorithm::Sha512WithEcdsa,
    ];

    /// The name Private CA uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            SigningAlgorithm::Sha256WithRsa => "SHA256WITHRSA",
            SigningAlgorithm::Sha384WithRsa => "SHA384WITHRSA",
            SigningAlgorithm::Sha512WithRsa => "SHA512WITHRSA",
            SigningAlgorithm::Sha256WithEcdsa => "SHA256WITHECDSA",
            SigningAlgorithm::Sha384WithEcdsa => "SHA384WITHECDSA",
            SigningAlgorithm::Sha512WithEcdsa => "SHA512WITHECDSA",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(raw))
    }

    /// SHA-256 with the CA's key type: what AWS IoT and every device TLS stack accept.
    pub fn for_key_type(key_type: CaKeyType) -> Self {
        match key_type {
            CaKeyType::Rsa => SigningAlgorithm::Sha256WithRsa,
            CaKeyType::Ec => SigningAlgorithm::Sha256WithEcdsa,
        }
    }

    pub fn key_type(&self) -> CaKeyType {
        match self {
            SigningAlgorithm::Sha256WithRsa
            | SigningAlgorithm::Sha384WithRsa
            | SigningAlgorithm::Sha512WithRsa => CaKeyType::Rsa,
            _ => CaKeyType::Ec,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `IdempotencyToken` of an `IssueCertificate` call: at most 36 characters.
///
/// Private CA issues one certificate for all calls with the same token within five minutes,
/// so a token derived from the request turns a retried invocation into the same certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyToken(String);

impl IdempotencyToken {
    /// The first 36 hex characters of a SHA-256 over everything that determines the
    /// certificate: the CSR (its DER, so PEM line wrapping does not matter), the principal
    /// that asked, and the issuing parameters. Length-prefixed fields, so no two different
    /// requests hash the same input.
    pub fn derive(csr_der: &[u8], principal_id: &str, issue: &IssueSettings) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let validity = issue.validity_days.to_string();
        let fields: [&[u8]; 6] = [
            b"cvm-certificate-provider/v1",
            csr_der,
            principal_id.as_bytes(),
            issue.signing_algorithm.as_str().as_bytes(),
            validity.as_bytes(),
            issue.template_arn.as_deref().unwrap_or("").as_bytes(),
        ];
        for field in fields {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        let mut hex = hex::encode(ctx.finish());
        hex.truncate(MAX_IDEMPOTENCY_TOKEN_LEN);
        Self(hex)
    }

    /// A fresh random token: for callers whose exactly-once guarantee lies elsewhere (the
    /// vend workflow's claim), so that an undone (revoked) certificate is never handed back.
    /// The SDK's own retries of one call still reuse it.
    pub fn random() -> Result<Self, PortError> {
        let mut bytes = [0u8; 16];
        SystemRandom::new().fill(&mut bytes).map_err(|_| {
            PortError::new(FailureKind::Other, "random").with_code("SystemRandomFailed")
        })?;
        Ok(Self(hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyToken({})", self.0)
    }
}

/// How certificates are issued: the same for every request of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSettings {
    pub signing_algorithm: SigningAlgorithm,
    pub validity_days: u32,
    /// A Private CA template ARN; `None` means Private CA's default (EndEntityCertificate/V1).
    pub template_arn: Option<String>,
}

/// One `IssueCertificate` call.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// The CSR, PEM, as Private CA takes it.
    pub csr_pem: &'a str,
    pub settings: &'a IssueSettings,
    pub idempotency_token: &'a IdempotencyToken,
}

/// The calls the provider makes to a private CA; the adapter lives in `cvm-aws`.
pub trait PrivateCa: Send + Sync {
    /// The CA's key type (`DescribeCertificateAuthority`), to choose the signing algorithm.
    fn key_type(&self) -> impl Future<Output = Result<CaKeyType, PortError>> + Send;

    /// `IssueCertificate`: the ARN of the certificate being issued.
    fn issue(
        &self,
        request: &IssueRequest<'_>,
    ) -> impl Future<Output = Result<String, PortError>> + Send;

    /// `GetCertificate`: the certificate PEM, or `None` while Private CA is still issuing it
    /// (`RequestInProgressException`).
    fn get(
        &self,
        certificate_arn: &str,
    ) -> impl Future<Output = Result<Option<String>, PortError>> + Send;
}

/// Time, injectable so the polling runs on a manual clock in tests.
pub trait Timer: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// Waits between `GetCertificate` polls: `first`, doubling, capped at `max`; after each
/// throttled poll the wait doubles again, up to `throttled_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub throttled_max: Duration,
}

impl Default for Backoff {
    /// 20, 40, 60, 60, ... ms: an answer within 100 ms of the certificate being ready, one
    /// step and a round trip or two (the device waits on it), the first retry well under 50 ms
    /// for a CA that is fast, and fewer than 17 `GetCertificate` calls a second per certificate
    /// in flight. The account's
    /// quota (75 per second) is shared: when Private CA throttles, the waits double per
    /// throttled poll up to 1 s, so a burst of provisioning backs off instead of piling on.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(20),
            max: Duration::from_millis(60),
            throttled_max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The wait after the `retry`-th poll (0-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The wait after the `retry`-th poll when `throttled` of the polls so far were throttled.
    pub fn delay_throttled(&self, retry: u32, throttled: u32) -> Duration {
        if throttled == 0 {
            return self.delay(retry);
        }
        let factor = 1u32.checked_shl(throttled.min(16)).unwrap_or(u32::MAX);
        self.delay(retry)
            .saturating_mul(factor)
            .min(self.throttled_max.max(self.max))
    }
}

/// Why no certificate came out of Private CA.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    /// Private CA was still issuing at the deadline. The certificate may still be issued
    /// later; its ARN is kept for the logs.
    #[error("the certificate was not ready after {waited:?} ({polls} polls of {certificate_arn})")]
    TimedOut {
        certificate_arn: String,
        waited: Duration,
        polls: u32,
        /// The last throttling or availability error seen while polling, if any.
        #[source]
        last_error: Option<PortError>,
    },
    /// `GetCertificate` failed in a way retrying will not fix.
    #[error(transparent)]
    Failed(PortError),
}

/// Polls `GetCertificate` until the certificate is there, with [`Backoff`] between polls.
///
/// The first poll is immediate. No poll starts after `deadline`: give the deadline a reserve
/// for one last call and the answer. Throttling and transient errors are retried like
/// "in progress"; anything else fails at once.
pub async fn await_certificate<P, T>(
    ca: &P,
    timer: &T,
    certificate_arn: &str,
    deadline: Instant,
    backoff: Backoff,
) -> Result<String, AwaitError>
where
    P: PrivateCa + ?Sized,
    T: Timer + ?Sized,
{
    let started = timer.now();
    let mut polls = 0u32;
    let mut throttled = 0u32;
    let mut last_error = None;
    loop {
        polls += 1;
        match ca.get(certificate_arn).await {
            Ok(Some(pem)) => return Ok(pem),
            Ok(None) => {}
            Err(e) if matches!(e.kind, FailureKind::Throttled | FailureKind::Unavailable) => {
                tracing::debug!(error = %e, "GetCertificate failed; retrying");
                if e.kind == FailureKind::Throttled {
                    throttled += 1;
                }
                last_error = Some(e);
            }
            Err(e) => return Err(AwaitError::Failed(e)),
        }
        let now = timer.now();
        if now >= deadline {
            return Err(AwaitError::TimedOut {
                certificate_arn: certificate_arn.to_owned(),
                waited: now.saturating_duration_since(started),
                polls,
                last_error,
            });
        }
        let wait = backoff
            .delay_throttled(polls - 1, throttled)
            .min(deadline - now);
        timer.sleep(wait).await;
    }
}

/// Why a certificate provider request was refused or failed. Each variant has a stable
/// `error_type` for the Lambda's error response and the metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{code}: {0}", code = .0.code())]
    InvalidCsr(CsrError),
    #[error(
        "the CSR's common name {common_name:?} is not allowed by this provider's subject policy"
    )]
    SubjectNotAllowed { common_name: String },
    #[error("Private CA: {0}")]
    PrivateCa(#[source] PortError),
    #[error("Private CA did not issue the certificate in time: {0}")]
    TimedOut(#[source] AwaitError),
    #[error("the issued certificate does not match the CSR: {0}")]
    CertificateMismatch(String),
}

impl ProviderError {
    pub fn error_type(&self) -> &'static str {
        match self {
            ProviderError::InvalidRequest(_) => "InvalidRequest",
            ProviderError::InvalidCsr(_) => "InvalidCsr",
            ProviderError::SubjectNotAllowed { .. } => "SubjectNotAllowed",
            ProviderError::PrivateCa(e) if e.kind == FailureKind::Throttled => "PrivateCaThrottled",
            ProviderError::PrivateCa(e) if e.kind == FailureKind::Unavailable => {
                "PrivateCaUnavailable"
            }
            ProviderError::PrivateCa(_) => "PrivateCaError",
            ProviderError::TimedOut(_) => "IssuanceTimedOut",
            ProviderError::CertificateMismatch(_) => "CertificateMismatch",
        }
    }

    /// What the caller (AWS IoT, and through it the device) is told: the device's mistake in
    /// full, a fault by its kind only. The cause (SDK errors, service messages) is for the
    /// log.
    pub fn public_message(&self) -> String {
        match self {
            ProviderError::InvalidRequest(_)
            | ProviderError::InvalidCsr(_)
            | ProviderError::SubjectNotAllowed { .. } => self.to_string(),
            ProviderError::PrivateCa(e) => match e.kind {
                FailureKind::Throttled => format!("{} was throttled; retry later", e.operation),
                FailureKind::Unavailable => {
                    format!("{} is unavailable; retry later", e.operation)
                }
                _ => format!("{} failed", e.operation),
            },
            ProviderError::TimedOut(_) => {
                "Private CA did not issue the certificate in time; retry later".into()
            }
            ProviderError::CertificateMismatch(_) => {
                "the certificate Private CA issued does not match the request; it was not delivered"
                    .into()
            }
        }
    }

    /// Whether the request itself was at fault (as opposed to the CA or this function).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ProviderError::InvalidRequest(_)
                | ProviderError::InvalidCsr(_)
                | ProviderError::SubjectNotAllowed { .. }
        )
    }
}

impl From<AwaitError> for ProviderError {
    fn from(e: AwaitError) -> Self {
        match e {
            AwaitError::Failed(port) => ProviderError::PrivateCa(port),
            timed_out => ProviderError::TimedOut(timed_out),
        }
    }
}

/// What AWS IoT sends the certificate provider.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRequest {
    pub certificate_signing_request: String,
    pub principal_id: String,
    pub client_id: String,
}

/// What AWS IoT expects back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResponse {
    pub certificate_pem: String,
}

/// The outcome of one signing, with what the logs want to know.
#[derive(Debug, Clone)]
pub struct Provided {
    pub certificate_pem: String,
    pub certificate_arn: String,
    pub common_name: String,
    pub idempotency_token: IdempotencyToken,
}

/// Decides whether a CSR's common name may be signed (e.g. a regular expression from the
/// deployment's configuration).
pub type SubjectPolicy = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Longest principal id accepted; AWS IoT's are 64 hex characters.
const MAX_PRINCIPAL_ID_LEN: usize = 256;

/// The certificate provider: validate, issue idempotently, await, check.
pub struct CertificateProvider<P, T> {
    ca: P,
    timer: T,
    settings: IssueSettings,
    backoff: Backoff,
    subject_policy: Option<SubjectPolicy>,
}

impl<P: PrivateCa, T: Timer> CertificateProvider<P, T> {
    pub fn new(ca: P, timer: T, settings: IssueSettings) -> Self {
        Self {
            ca,
            timer,
            settings,
            backoff: Backoff::default(),
            subject_policy: None,
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_subject_policy(mut self, policy: SubjectPolicy) -> Self {
        self.subject_policy = Some(policy);
        self
    }

    pub fn settings(&self) -> &IssueSettings {
        &self.settings
    }

    pub fn ca(&self) -> &P {
        &self.ca
    }

    pub fn timer(&self) -> &T {
        &self.timer
    }

    /// Signs the request's CSR, answering or failing by `deadline` (plus one `GetCertificate`
    /// round trip). Nothing reaches Private CA unless the request is valid.
    pub async fn provide(
        &self,
        request: &ProviderRequest,
        deadline: Instant,
    ) -> Result<Provided, ProviderError> {
        let principal_id = request.principal_id.trim();
        if principal_id.is_empty() || principal_id.len() > MAX_PRINCIPAL_ID_LEN {
            return Err(ProviderError::InvalidRequest(format!(
                "principalId must be 1 to {MAX_PRINCIPAL_ID_LEN} characters"
            )));
        }
        let csr = Csr::parse_pem(&request.certificate_signing_request)
            .map_err(ProviderError::InvalidCsr)?;
        if let Some(policy) = &self.subject_policy {
            if !policy(csr.common_name()) {
                return Err(ProviderError::SubjectNotAllowed {
                    common_name: csr.common_name().to_owned(),
                });
            }
        }
        let token = IdempotencyToken::derive(csr.der(), principal_id, &self.settings);
        let (certificate_arn, certificate_pem) = issue_and_await(
            &self.ca,
            &self.timer,
            &csr,
            &self.settings,
            &token,
            deadline,
            self.backoff,
        )
        .await?;
        Ok(Provided {
            certificate_pem,
            certificate_arn,
            common_name: csr.common_name().to_owned(),
            idempotency_token: token,
        })
    }
}

/// `IssueCertificate`, then [`await_certificate`], then [`check_certificate`]: the steps the
/// provider and the vend API's Private-CA issuer share. Returns the ARN and the PEM.
pub async fn issue_and_await<P, T>(
    ca: &P,
    timer: &T,
    csr: &Csr,
    settings: &IssueSettings,
    token: &IdempotencyToken,
    deadline: Instant,
    backoff: Backoff,
) -> Result<(String, String), ProviderError>
where
    P: PrivateCa + ?Sized,
    T: Timer + ?Sized,
{
    let request = IssueRequest {
        csr_pem: csr.pem(),
        settings,
        idempotency_token: token,
    };
    let arn = ca.issue(&request).await.map_err(ProviderError::PrivateCa)?;
    let pem = await_certificate(ca, timer, &arn, deadline, backoff).await?;
    check_certificate(csr, &pem)?;
    Ok((arn, pem))
}

/// Checks that a certificate carries the CSR's public key and subject, as AWS IoT requires
/// of a certificate provider's answer, and that it is a device's certificate: an end entity
/// without alternative names, for TLS client authentication only
/// ([`check_device_certificate_shape`]).
pub fn check_certificate(csr: &Csr, certificate_pem: &str) -> Result<(), ProviderError> {
    let mismatch = ProviderError::CertificateMismatch;
    match csr.is_certified_by(certificate_pem) {
        Ok(true) => {}
        Ok(false) => return Err(mismatch("it certifies another public key".into())),
        Err(e) => return Err(mismatch(e.to_string())),
    }
    let req = CertReq::from_pem(csr.pem().as_bytes()).map_err(|e| mismatch(e.to_string()))?;
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| mismatch(format!("issued certificate: {e}")))?;
    if !same_name(&req.info.subject, cert.tbs_certificate().subject()) {
        return Err(mismatch(format!(
            "subject {:?} is not the CSR's {:?}",
            cert.tbs_certificate().subject().to_string(),
            req.info.subject.to_string()
        )));
    }
    check_device_certificate_shape(certificate_pem).map_err(|e| mismatch(e.to_string()))
}

/// Same distinguished name: identical DER, or the same attributes in the same order with the
/// same values (a CA may re-encode a PrintableString as a UTF8String).
fn same_name(a: &Name, b: &Name) -> bool {
    if a.to_der().ok() == b.to_der().ok() {
        return true;
    }
    let flat = |n: &Name| -> Option<Vec<(String, String)>> {
        n.iter()
            .map(|atv| {
                let value = x509_cert::ext::pkix::name::DirectoryString::try_from(&atv.value)
                    .ok()?
                    .value()
                    .into_owned();
                Some((atv.oid.to_string(), value))
            })
            .collect()
    };
    match (flat(a), flat(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A certificate's serial number as Private CA's `RevokeCertificate` takes it: hex bytes
/// separated by colons, as `openssl x509 -text` prints it.
pub fn certificate_serial_hex(certificate_pem: &str) -> Result<String, CsrError> {
    let cert = Certificate::from_pem(certificate_pem.trim().as_bytes())
        .map_err(|e| CsrError::Malformed(format!("certificate: {e}")))?;
    let bytes = cert.tbs_certificate().serial_number().as_bytes();
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// A fake Private CA and a manual clock, for unit tests and benchmarks.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::{CaKeyType, IssueRequest, PrivateCa, Timer};
    use crate::ports::PortError;

    /// A clock that only moves when slept on: `sleep` returns at once, having advanced it.
    #[derive(Clone)]
    pub struct ManualTimer {
        start: Instant,
        elapsed: Arc<Mutex<Duration>>,
        sleeps: Arc<Mutex<Vec<Duration>>>,
    }

    impl Default for ManualTimer {
        fn default() -> Self {
            Self {
                start: Instant::now(),
                elapsed: Arc::default(),
                sleeps: Arc::default(),
            }
        }
    }

    impl ManualTimer {
        pub fn elapsed(&self) -> Duration {
            *self.elapsed.lock().unwrap()
        }
        pub fn advance(&self, by: Duration) {
            *self.elapsed.lock().unwrap() += by;
        }
        /// Every sleep so far, in order.
        pub fn sleeps(&self) -> Vec<Duration> {
            self.sleeps.lock().unwrap().clone()
        }
    }

    impl Timer for ManualTimer {
        fn now(&self) -> Instant {
            self.start + self.elapsed()
        }
        async fn sleep(&self, duration: Duration) {
            self.sleeps.lock().unwrap().push(duration);
            self.advance(duration);
        }
    }

    /// What the fake CA is asked to do.
    #[derive(Clone, Copy, Debug)]
    pub enum Issuance {
        /// The certificate is ready this long after `IssueCertificate`.
        After(Duration),
        /// Never ready: `GetCertificate` answers "in progress" forever.
        Never,
    }

    struct Issued {
        at: Instant,
        pem: String,
    }

    /// Private CA in memory: signs for real with a test CA, honours idempotency tokens, makes
    /// certificates ready after a delay measured on the given timer, counts calls.
    #[derive(Clone)]
    pub struct FakePrivateCa<T> {
        timer: T,
        issuance: Issuance,
        /// Simulated duration of every call.
        round_trip: Duration,
        key_type: CaKeyType,
        ca: Arc<rcgen::Issuer<'static, rcgen::KeyPair>>,
        pub ca_pem: String,
        issued: Arc<Mutex<HashMap<String, Issued>>>,
        tokens: Arc<Mutex<HashMap<String, String>>>,
        pub issue_calls: Arc<AtomicU32>,
        pub get_calls: Arc<AtomicU32>,
        pub describe_calls: Arc<AtomicU32>,
        /// Errors `GetCertificate` returns first, in order.
        pub get_errors: Arc<Mutex<Vec<PortError>>>,
    }

    impl<T: Timer + Clone> FakePrivateCa<T> {
        pub fn new(timer: T, issuance: Issuance) -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Fake Private CA");
            let cert = params.self_signed(&key).unwrap();
            Self {
                timer,
                issuance,
                round_trip: Duration::ZERO,
                key_type: CaKeyType::Ec,
                ca: Arc::new(rcgen::Issuer::new(params, key)),
                ca_pem: cert.pem(),
                issued: Arc::default(),
                tokens: Arc::default(),
                issue_calls: Arc::default(),
                get_calls: Arc::default(),
                describe_calls: Arc::default(),
                get_errors: Arc::default(),
            }
        }

        pub fn with_round_trip(mut self, round_trip: Duration) -> Self {
            self.round_trip = round_trip;
            self
        }

        pub fn calls(&self) -> u32 {
            self.issue_calls.load(Ordering::SeqCst)
                + self.get_calls.load(Ordering::SeqCst)
                + self.describe_calls.load(Ordering::SeqCst)
        }

        async fn round_trip(&self) {
            if !self.round_trip.is_zero() {
                self.timer.sleep(self.round_trip).await;
            }
        }
    }

    impl<T: Timer + Clone> PrivateCa for FakePrivateCa<T> {
        async fn key_type(&self) -> Result<CaKeyType, PortError> {
            self.describe_calls.fetch_add(1, Ordering::SeqCst);
            self.round_trip().await;
            Ok(self.key_type)
        }

        async fn issue(&self, request: &IssueRequest<'_>) -> Result<String, PortError> {
            self.issue_calls.fetch_add(1, Ordering::SeqCst);
            self.round_trip().await;
            let token = request.idempotency_token.as_str().to_owned();
            if let Some(arn) = self.tokens.lock().unwrap().get(&token) {
                return Ok(arn.clone());
            }
            let mut params =
                rcgen::CertificateSigningRequestParams::from_pem(request.csr_pem).unwrap();
            // As Private CA's client-authentication template issues them.
            params.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let pem = params.signed_by(&self.ca).unwrap().pem();
            let arn = format!(
                "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/fake/certificate/{}",
                self.issued.lock().unwrap().len()
            );
            self.issued.lock().unwrap().insert(
                arn.clone(),
                Issued {
                    at: self.timer.now(),
                    pem,
                },
            );
            self.tokens.lock().unwrap().insert(token, arn.clone());
            Ok(arn)
        }

        async fn get(&self, certificate_arn: &str) -> Result<Option<String>, PortError> {
            self.get_calls.fetch_add(1, Ordering::SeqCst);
            self.round_trip().await;
            {
                let mut errors = self.get_errors.lock().unwrap();
                if !errors.is_empty() {
                    return Err(errors.remove(0));
                }
            }
            let issued = self.issued.lock().unwrap();
            let Some(entry) = issued.get(certificate_arn) else {
                panic!("GetCertificate of an unknown ARN {certificate_arn}");
            };
            let ready = match self.issuance {
                Issuance::After(delay) => self.timer.now() >= entry.at + delay,
                Issuance::Never => false,
            };
            Ok(ready.then(|| entry.pem.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::fake::{FakePrivateCa, Issuance, ManualTimer};
    use super::*;
    use std::sync::atomic::Ordering;

    fn fixture(name: &str) -> String {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    fn settings() -> IssueSettings {
        IssueSettings {
            signing_algorithm: SigningAlgorithm::Sha256WithEcdsa,
            validity_days: 365,
            template_arn: None,
        }
    }

    fn request(csr: &str) -> ProviderRequest {
        ProviderRequest {
            certificate_signing_request: csr.to_owned(),
            principal_id: "f2a33ae79323012c5f5b4250de3952568f1d81b2aa5bad1301b23b0991ba0ef4".into(),
            client_id: "221a6d10-9c7f-42f1-9153-e52e6fc869c1".into(),
        }
    }

    fn provider(
        issuance: Issuance,
    ) -> (
        CertificateProvider<FakePrivateCa<ManualTimer>, ManualTimer>,
        FakePrivateCa<ManualTimer>,
        ManualTimer,
    ) {
        let timer = ManualTimer::default();
        let ca = FakePrivateCa::new(timer.clone(), issuance);
        (
            CertificateProvider::new(ca.clone(), timer.clone(), settings()),
            ca,
            timer,
        )
    }

    const BUDGET: Duration = Duration::from_millis(4500);

    #[test]
    fn backoff_starts_short_and_is_capped() {
        let b = Backoff::default();
        assert!(b.delay(0) <= Duration::from_millis(50));
        let delays: Vec<u64> = (0..8).map(|i| b.delay(i).as_millis() as u64).collect();
        assert_eq!(delays, [20, 40, 60, 60, 60, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(60));
    }

    #[test]
    fn throttling_stretches_the_waits_up_to_a_second() {
        let b = Backoff::default();
        assert_eq!(b.delay_throttled(5, 0), Duration::from_millis(60));
        assert_eq!(b.delay_throttled(5, 1), Duration::from_millis(120));
        assert_eq!(b.delay_throttled(5, 2), Duration::from_millis(240));
        assert_eq!(b.delay_throttled(5, 4), Duration::from_millis(960));
        assert_eq!(b.delay_throttled(5, 5), Duration::from_secs(1));
        assert_eq!(
            b.delay_throttled(u32::MAX, u32::MAX),
            Duration::from_secs(1)
        );
        assert_eq!(b.delay_throttled(0, 1), Duration::from_millis(40));
    }

    #[tokio::test]
    async fn answers_within_one_backoff_step_of_issuance() {
        for delay_ms in [0u64, 10, 100, 500, 2000, 4000] {
            let delay = Duration::from_millis(delay_ms);
            let (p, ca, timer) = provider(Issuance::After(delay));
            let out = p
                .provide(&request(&fixture("p256.csr.pem")), timer.now() + BUDGET)
                .await
                .unwrap_or_else(|e| panic!("{delay_ms} ms: {e}"));
            let latency = timer.elapsed();
            assert!(latency >= delay, "{delay_ms} ms: answered before issuance");
            let late = latency - delay;
            // Late by at most the step that was being slept when issuance completed.
            let step = timer.sleeps().last().copied().unwrap_or_default();
            assert!(
                late <= step,
                "{delay_ms} ms: {late:?} late, last step {step:?}"
            );
            assert!(
                late <= Backoff::default().max,
                "{delay_ms} ms: {late:?} late"
            );
            assert_eq!(ca.issue_calls.load(Ordering::SeqCst), 1);
            assert!(out.certificate_pem.contains("BEGIN CERTIFICATE"));
        }
    }

    #[tokio::test]
    async fn first_retry_is_quick_and_polls_stay_few() {
        let (p, ca, timer) = provider(Issuance::After(Duration::from_millis(2000)));
        p.provide(&request(&fixture("p256.csr.pem")), timer.now() + BUDGET)
            .await
            .unwrap();
        let sleeps = timer.sleeps();
        assert!(sleeps[0] <= Duration::from_millis(50), "{sleeps:?}");
        assert!(sleeps.iter().all(|s| *s <= Duration::from_millis(60)));
        // 2 s of waiting in about 35 polls (16.7 a second once capped), not hundreds.
        assert!(
            ca.get_calls.load(Ordering::SeqCst) <= 36,
            "{}",
            ca.get_calls.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn never_ready_fails_cleanly_by_the_deadline() {
        let (p, ca, timer) = provider(Issuance::Never);
        let deadline = timer.now() + BUDGET;
        let err = p
            .provide(&request(&fixture("p256.csr.pem")), deadline)
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "IssuanceTimedOut", "{err}");
        assert!(timer.now() <= deadline, "gave up after the deadline");
        assert!(timer.elapsed() >= BUDGET - Backoff::default().max);
        assert!(err.to_string().contains("not ready"), "{err}");
        assert!(ca.get_calls.load(Ordering::SeqCst) < 80);
    }

    #[tokio::test]
    async fn never_ready_with_slow_calls_still_stops_polling_at_the_deadline() {
        let timer = ManualTimer::default();
        let ca = FakePrivateCa::new(timer.clone(), Issuance::Never)
            .with_round_trip(Duration::from_millis(40));
        let p = CertificateProvider::new(ca, timer.clone(), settings());
        let deadline = timer.now() + BUDGET;
        let err = p
            .provide(&request(&fixture("p256.csr.pem")), deadline)
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "IssuanceTimedOut");
        // At most one call in flight past the deadline.
        assert!(timer.now() <= deadline + Duration::from_millis(40));
    }

    #[tokio::test]
    async fn throttled_polls_are_retried_fatal_ones_are_not() {
        let (p, ca, timer) = provider(Issuance::After(Duration::from_millis(100)));
        ca.get_errors.lock().unwrap().extend([
            PortError::new(FailureKind::Throttled, "acm-pca:GetCertificate")
                .with_code("ThrottlingException"),
            PortError::new(FailureKind::Unavailable, "acm-pca:GetCertificate"),
        ]);
        p.provide(&request(&fixture("p256.csr.pem")), timer.now() + BUDGET)
            .await
            .unwrap();
        // The throttled poll doubles the waits from then on; an unavailable one does not.
        let sleeps = timer.sleeps();
        assert_eq!(
            sleeps[..2],
            [Duration::from_millis(40), Duration::from_millis(80)],
            "{sleeps:?}"
        );

        let (p, ca, timer) = provider(Issuance::After(Duration::from_millis(100)));
        ca.get_errors.lock().unwrap().push(
            PortError::new(FailureKind::Other, "acm-pca:GetCertificate")
                .with_code("AccessDeniedException"),
        );
        let err = p
            .provide(&request(&fixture("p256.csr.pem")), timer.now() + BUDGET)
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "PrivateCaError");
        assert!(err.to_string().contains("AccessDeniedException"), "{err}");
        assert_eq!(ca.get_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_requests_never_reach_the_ca() {
        let (p, ca, timer) = provider(Issuance::After(Duration::ZERO));
        let deadline = timer.now() + BUDGET;
        let cases = [
            (
                fixture("tampered.csr.pem"),
                "InvalidCsr",
                "csr_signature_invalid",
            ),
            ("garbage".to_owned(), "InvalidCsr", "csr_malformed"),
            (
                fixture("rsa1024.csr.pem"),
                "InvalidCsr",
                "csr_key_unsupported",
            ),
            ("A".repeat(20_000), "InvalidCsr", "csr_too_large"),
        ];
        for (csr, error_type, code) in cases {
            let err = p.provide(&request(&csr), deadline).await.unwrap_err();
            assert_eq!(err.error_type(), error_type);
            assert!(err.to_string().starts_with(code), "{err}");
            assert!(err.is_refusal());
        }
        let mut no_principal = request(&fixture("p256.csr.pem"));
        no_principal.principal_id = " ".into();
        let err = p.provide(&no_principal, deadline).await.unwrap_err();
        assert_eq!(err.error_type(), "InvalidRequest");

        let strict = CertificateProvider::new(ca.clone(), timer.clone(), settings())
            .with_subject_policy(Arc::new(|cn: &str| cn.starts_with("fleet-")));
        let err = strict
            .provide(&request(&fixture("p256.csr.pem")), deadline)
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "SubjectNotAllowed");
        assert_eq!(ca.calls(), 0, "a refused request cost a Private CA call");
    }

    #[tokio::test]
    async fn same_request_same_token_same_certificate() {
        let (p, ca, timer) = provider(Issuance::After(Duration::from_millis(100)));
        let deadline = timer.now() + BUDGET;
        let csr = fixture("p256.csr.pem");
        let a = p.provide(&request(&csr), deadline).await.unwrap();
        let b = p
            .provide(&request(&csr), timer.now() + BUDGET)
            .await
            .unwrap();
        assert_eq!(a.idempotency_token, b.idempotency_token);
        assert_eq!(a.certificate_arn, b.certificate_arn);
        assert_eq!(a.certificate_pem, b.certificate_pem);
        assert_eq!(
            a.idempotency_token.as_str().len(),
            MAX_IDEMPOTENCY_TOKEN_LEN
        );

        // Re-wrapped PEM of the same CSR: same token.
        let rewrapped = csr.replace('\n', "\r\n");
        let c = p
            .provide(&request(&rewrapped), timer.now() + BUDGET)
            .await
            .unwrap();
        assert_eq!(c.idempotency_token, a.idempotency_token);

        // Another principal, another CSR or other settings: another token.
        let mut other = request(&csr);
        other.principal_id = "0".repeat(64);
        let d = p.provide(&other, timer.now() + BUDGET).await.unwrap();
        assert_ne!(d.idempotency_token, a.idempotency_token);
        let e = p
            .provide(&request(&fixture("p384.csr.pem")), timer.now() + BUDGET)
            .await
            .unwrap();
        assert_ne!(e.idempotency_token, a.idempotency_token);
        let der = Csr::parse_pem(&csr).unwrap().der().to_vec();
        let mut s = settings();
        s.validity_days = 30;
        assert_ne!(
            IdempotencyToken::derive(&der, &request(&csr).principal_id, &s),
            a.idempotency_token
        );
        assert_eq!(ca.issue_calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn certificate_must_carry_the_csrs_key_and_subject_and_be_a_client_certificate() {
        let csr = Csr::parse_pem(&fixture("p256.csr.pem")).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let client_auth = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issue = |edit: &dyn Fn(&mut rcgen::CertificateParams)| {
            let mut p = rcgen::CertificateSigningRequestParams::from_pem(csr.pem()).unwrap();
            p.params.extended_key_usages = client_auth.clone();
            edit(&mut p.params);
            p.signed_by(&ca).unwrap().pem()
        };

        check_certificate(&csr, &issue(&|_| {})).unwrap();

        let other_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DEVICE-0001");
        params.extended_key_usages = client_auth.clone();
        let wrong_key = params.signed_by(&other_key, &ca).unwrap().pem();
        let err = check_certificate(&csr, &wrong_key).unwrap_err();
        assert_eq!(err.error_type(), "CertificateMismatch");

        let wrong_subject = issue(&|p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "SOMEONE-ELSE");
        });
        let err = check_certificate(&csr, &wrong_subject).unwrap_err();
        assert!(err.to_string().contains("SOMEONE-ELSE"), "{err}");

        // The shape a misconfigured template gives: refused, each with its reason.
        type Edit<'a> = &'a dyn Fn(&mut rcgen::CertificateParams);
        let cases: [(Edit, &str); 5] = [
            (
                &|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
                "CA certificate",
            ),
            (
                &|p| {
                    p.subject_alt_names =
                        vec![rcgen::SanType::DnsName("bank.example".try_into().unwrap())]
                },
                "alternative names",
            ),
            (&|p| p.extended_key_usages = vec![], "client authentication"),
            (
                &|p| {
                    p.extended_key_usages = vec![
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    ]
                },
                "server authentication",
            ),
            (
                &|p| {
                    p.extended_key_usages = vec![
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                        rcgen::ExtendedKeyUsagePurpose::Any,
                    ]
                },
                "any extended key usage",
            ),
        ];
        for (edit, why) in cases {
            let err = check_certificate(&csr, &issue(edit)).unwrap_err();
            assert_eq!(err.error_type(), "CertificateMismatch");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn signing_algorithm_follows_the_ca_key() {
        assert_eq!(
            CaKeyType::from_key_algorithm("EC_prime256v1").map(SigningAlgorithm::for_key_type),
            Some(SigningAlgorithm::Sha256WithEcdsa)
        );
        assert_eq!(
            CaKeyType::from_key_algorithm("RSA_2048").map(SigningAlgorithm::for_key_type),
            Some(SigningAlgorithm::Sha256WithRsa)
        );
        assert_eq!(CaKeyType::from_key_algorithm("SM2"), None);
        assert_eq!(
            SigningAlgorithm::parse("sha384withecdsa"),
            Some(SigningAlgorithm::Sha384WithEcdsa)
        );
        assert_eq!(SigningAlgorithm::parse("MD5WITHRSA"), None);
        assert_eq!(SigningAlgorithm::Sha512WithRsa.key_type(), CaKeyType::Rsa);
    }

    #[test]
    fn serial_is_colon_separated_hex() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0x01]));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_serial_hex(&cert.pem()).unwrap(), "0a:bc:01");
    }
}
