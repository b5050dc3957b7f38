//! What the workflow tests share: in-memory ports, a clock the test moves, enrollments, CSRs
//! and device signatures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cvm_core::ports::DeviceStore;
use cvm_core::renew::RenewalPolicy;
use cvm_core::testing::{FakeIot, MemoryStore};
use cvm_core::vend::Clock;
use cvm_core::*;
use time::OffsetDateTime;

pub const TOKEN: &str = "correct-horse-battery-staple-0001";
pub const WRONG: &str = "wrong-token-wrong-token";
/// 2027-01-15T08:00:00Z
pub const START: i64 = 1_800_000_000;

pub fn config() -> VendConfig {
    VendConfig {
        default_policy: PolicyName::parse("default-policy").unwrap(),
        lockout: LockoutPolicy {
            free_attempts: 3,
            base: Duration::from_secs(30),
            max: Duration::from_secs(900),
            decay: Duration::from_secs(900),
        },
        claim_lease: Duration::from_secs(60),
        activation_margin: Duration::from_secs(15),
        endpoints: Endpoints {
            data: "data.example".into(),
            credentials: "creds.example".into(),
        },
        ca_certificates: vec!["CA".into()],
        role_alias: None,
        renewal: RenewalPolicy::default(),
        quotas: cvm_core::pacing::Quotas::default(),
    }
}

pub struct Harness {
    pub store: MemoryStore,
    pub iot: FakeIot,
    pub vendor: Arc<Vendor<MemoryStore, FakeIot, FakeIot>>,
    pub now: Arc<AtomicI64>,
    pub clock: Clock,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: VendConfig) -> Self {
        let store = MemoryStore::default();
        let iot = FakeIot::new();
        let now = Arc::new(AtomicI64::new(START));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || {
            OffsetDateTime::from_unix_timestamp(clock_now.load(Ordering::SeqCst)).unwrap()
        });
        let vendor = Arc::new(Vendor::with_clock(
            store.clone(),
            iot.clone(),
            iot.clone(),
            config,
            clock.clone(),
        ));
        Self {
            store,
            iot,
            vendor,
            now,
            clock,
        }
    }

    pub fn advance(&self, seconds: i64) {
        self.now.fetch_add(seconds, Ordering::SeqCst);
    }

    pub fn set_time(&self, unix: i64) {
        self.now.store(unix, Ordering::SeqCst);
    }

    pub fn time(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Enrolls `serial` with the test token (and the `site=lab` attribute).
    pub async fn enroll(&self, serial: &str) {
        self.enroll_with(serial, None, Some(TOKEN), None).await
    }

    pub async fn enroll_with(
        &self,
        serial: &str,
        thing: Option<&str>,
        token: Option<&str>,
        registered_key: Option<KeyFingerprint>,
    ) {
        let serial = Serial::parse(serial).unwrap();
        let thing = thing
            .map(|t| ThingName::parse(t).unwrap())
            .unwrap_or_else(|| ThingName::from(&serial));
        let attrs = Attributes::parse([("site".to_string(), "lab".to_string())]).unwrap();
        let token = token.map(|t| Token::parse(t).unwrap());
        let record = DeviceRecord::new_enrollment(
            serial,
            lifecycle::credentials(token.as_ref(), registered_key),
            thing,
            None,
            attrs,
            AuditEvent::new("2027-01-01T00:00:00Z", AuditKind::Enrolled, "ops", ""),
        );
        self.store.create(&record).await.unwrap();
    }

    pub fn record(&self, serial: &str) -> DeviceRecord {
        self.store.record(&Serial::parse(serial).unwrap()).unwrap()
    }
}

/// A device key and a CSR for it.
pub struct Device {
    pub key: rcgen::KeyPair,
}

impl Device {
    pub fn new() -> Self {
        Self {
            key: rcgen::KeyPair::generate().unwrap(),
        }
    }

    pub fn csr(&self, cn: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&self.key).unwrap().pem().unwrap()
    }

    pub fn fingerprint(&self, cn: &str) -> KeyFingerprint {
        Csr::parse_pem(&self.csr(cn)).unwrap().fingerprint().clone()
    }

    /// ECDSA P-256 with SHA-256, ASN.1 DER, as the device signs with its key store.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &self.key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        signer
            .sign(&ring::rand::SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

pub fn csr_for(cn: &str) -> String {
    Device::new().csr(cn)
}

pub fn request(serial: &str, token: Option<&str>, csr_pem: &str) -> VendRequest {
    VendRequest {
        serial: Serial::parse(serial).unwrap(),
        token: token.map(|t| Token::parse(t).unwrap()),
        csr: Csr::parse_pem(csr_pem).unwrap(),
    }
}

pub fn delivery(outcome: VendOutcome) -> vend::Delivery {
    match outcome {
        VendOutcome::Issued(d) | VendOutcome::Replayed(d) => d,
    }
}

pub fn current(record: &DeviceRecord) -> IssuedCertificate {
    match &record.status {
        DeviceStatus::Issued { current, .. } => current.clone(),
        other => panic!("not issued: {other:?}"),
    }
}

pub fn kinds(record: &DeviceRecord) -> Vec<AuditKind> {
    record.history.iter().map(|e| e.kind).collect()
}
