//! In-memory fakes of the ports, faithful where the workflow's correctness depends on it
//! (conditional writes, "delete needs detach and deactivate", inactive until activated), with
//! fault injection per operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

use crate::csr::Csr;
use crate::domain::{Attributes, PolicyName, Serial, ThingName};
use crate::ports::{
    CertificateIssuer, DeviceStore, FailureKind, NewCertificate, PortError, ThingRegistry, Written,
};
use crate::record::{CertificateRef, Claim, DeviceRecord, DeviceStatus, IssuedCertificate};

/// Failures to inject, by operation name (e.g. `"issuer.activate"`), consumed in order.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<HashMap<&'static str, VecDeque<FailureKind>>>>);

impl Faults {
    pub fn fail_next(&self, operation: &'static str, kind: FailureKind) {
        self.0
            .lock()
            .unwrap()
            .entry(operation)
            .or_default()
            .push_back(kind);
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    fn check(&self, operation: &'static str) -> Result<(), PortError> {
        let kind = self
            .0
            .lock()
            .unwrap()
            .get_mut(operation)
            .and_then(|q| q.pop_front());
        match kind {
            Some(kind) => Err(PortError::new(kind, operation).with_code("InjectedFault")),
            None => Ok(()),
        }
    }
}

/// Every operation the fakes can fail, in workflow order.
pub const OPERATIONS: &[&str] = &[
    "store.get",
    "store.claim",
    "issuer.issue",
    "registry.ensure_thing",
    "store.record_pending",
    "registry.attach_policy",
    "registry.attach_thing_principal",
    "issuer.activate",
    "store.complete",
];

#[derive(Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<BTreeMap<Serial, DeviceRecord>>>,
    pub faults: Faults,
}

impl MemoryStore {
    pub fn record(&self, serial: &Serial) -> Option<DeviceRecord> {
        self.records.lock().unwrap().get(serial).cloned()
    }

    /// Certificate ids the table knows (issued or pending).
    pub fn known_certificate_ids(&self) -> BTreeSet<String> {
        let records = self.records.lock().unwrap();
        let mut ids = BTreeSet::new();
        for r in records.values() {
            match &r.status {
                DeviceStatus::Issued(i) => {
                    ids.insert(i.certificate.id.clone());
                }
                DeviceStatus::Claimed(c) => {
                    if let Some(p) = &c.pending {
                        ids.insert(p.id.clone());
                    }
                }
                _ => {}
            }
        }
        ids
    }

    fn update(&self, serial: &Serial, f: impl FnOnce(&mut DeviceRecord) -> bool) -> Written {
        let mut records = self.records.lock().unwrap();
        match records.get_mut(serial) {
            Some(r) => {
                let mut copy = r.clone();
                if f(&mut copy) {
                    *r = copy;
                    Written::Done
                } else {
                    Written::ConditionFailed
                }
            }
            None => Written::ConditionFailed,
        }
    }
}

fn claimed_by<'a>(r: &'a mut DeviceRecord, claim_id: &str) -> Option<&'a mut Claim> {
    match &mut r.status {
        DeviceStatus::Claimed(c) if c.id == claim_id => Some(c),
        _ => None,
    }
}

impl DeviceStore for MemoryStore {
    async fn get(&self, serial: &Serial) -> Result<Option<DeviceRecord>, PortError> {
        self.faults.check("store.get")?;
        Ok(self.record(serial))
    }

    async fn create(&self, record: &DeviceRecord) -> Result<Written, PortError> {
        self.faults.check("store.create")?;
        let mut records = self.records.lock().unwrap();
        if records.contains_key(&record.serial) {
            return Ok(Written::ConditionFailed);
        }
        records.insert(record.serial.clone(), record.clone());
        Ok(Written::Done)
    }

    async fn record_failed_attempt(&self, serial: &Serial) -> Result<u32, PortError> {
        self.faults.check("store.record_failed_attempt")?;
        let mut records = self.records.lock().unwrap();
        let r = records
            .get_mut(serial)
            .ok_or_else(|| PortError::new(FailureKind::NotFound, "store.record_failed_attempt"))?;
        r.failed_attempts += 1;
        Ok(r.failed_attempts)
    }

    async fn claim(
        &self,
        serial: &Serial,
        expected_version: u64,
        claim: &Claim,
    ) -> Result<Written, PortError> {
        self.faults.check("store.claim")?;
        Ok(self.update(serial, |r| {
            if r.version != expected_version {
                return false;
            }
            r.status = DeviceStatus::Claimed(claim.clone());
            r.version += 1;
            true
        }))
    }

    async fn record_pending(
        &self,
        serial: &Serial,
        claim_id: &str,
        certificate: &CertificateRef,
    ) -> Result<Written, PortError> {
        self.faults.check("store.record_pending")?;
        Ok(self.update(serial, |r| match claimed_by(r, claim_id) {
            Some(c) => {
                c.pending = Some(certificate.clone());
                true
            }
            None => false,
        }))
    }

    async fn complete(
        &self,
        serial: &Serial,
        claim_id: &str,
        issued: &IssuedCertificate,
    ) -> Result<Written, PortError> {
        self.faults.check("store.complete")?;
        Ok(self.update(serial, |r| {
            if claimed_by(r, claim_id).is_none() {
                return false;
            }
            r.status = DeviceStatus::Issued(issued.clone());
            r.version += 1;
            true
        }))
    }

    async fn release(&self, serial: &Serial, claim_id: &str) -> Result<Written, PortError> {
        self.faults.check("store.release")?;
        Ok(self.update(serial, |r| {
            if claimed_by(r, claim_id).is_none() {
                return false;
            }
            r.status = DeviceStatus::Enrolled;
            r.version += 1;
            true
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Active,
    Inactive,
}

#[derive(Debug, Clone)]
pub struct FakeCert {
    pub status: CertStatus,
    pub arn: String,
    pub pem: String,
}

#[derive(Default)]
pub struct IotState {
    pub certificates: BTreeMap<String, FakeCert>,
    pub things: BTreeMap<String, Attributes>,
    pub policy_attachments: BTreeSet<(String, String)>,
    pub thing_principals: BTreeSet<(String, String)>,
    /// Every certificate ever created, deleted or not.
    pub created: usize,
}

/// AWS IoT in memory: an issuer signing with a real (test) CA, and a registry.
#[derive(Clone)]
pub struct FakeIot {
    pub state: Arc<Mutex<IotState>>,
    ca: Arc<rcgen::Issuer<'static, rcgen::KeyPair>>,
    pub ca_pem: String,
    pub faults: Faults,
    /// Make the issuer certify a different key than the CSR's (as an unfaithful CA would).
    pub certify_wrong_key: Arc<Mutex<bool>>,
}

impl Default for FakeIot {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeIot {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Device CA");
        let cert = params.self_signed(&key).unwrap();
        Self {
            state: Arc::default(),
            ca: Arc::new(rcgen::Issuer::new(params, key)),
            ca_pem: cert.pem(),
            faults: Faults::default(),
            certify_wrong_key: Arc::default(),
        }
    }

    /// Active certificates whose id the table does not know: must always be empty.
    pub fn active_unknown_to(&self, store: &MemoryStore) -> Vec<String> {
        let known = store.known_certificate_ids();
        self.state
            .lock()
            .unwrap()
            .certificates
            .iter()
            .filter(|(id, c)| c.status == CertStatus::Active && !known.contains(*id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn active_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .certificates
            .values()
            .filter(|c| c.status == CertStatus::Active)
            .count()
    }

    pub fn certificate_count(&self) -> usize {
        self.state.lock().unwrap().certificates.len()
    }
}

impl CertificateIssuer for FakeIot {
    async fn issue(&self, csr: &Csr) -> Result<NewCertificate, PortError> {
        self.faults.check("issuer.issue")?;
        let pem = if *self.certify_wrong_key.lock().unwrap() {
            let other = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.signed_by(&other, &self.ca).unwrap().pem()
        } else {
            let params = rcgen::CertificateSigningRequestParams::from_pem(csr.pem())
                .map_err(|e| PortError::new(FailureKind::Other, "issuer.issue").with_source(e))?;
            params.signed_by(&self.ca).unwrap().pem()
        };
        let id = hex::encode(digest::digest(&digest::SHA256, pem.as_bytes()));
        let arn = format!("arn:aws:iot:us-east-1:123456789012:cert/{id}");
        let mut state = self.state.lock().unwrap();
        state.created += 1;
        state.certificates.insert(
            id.clone(),
            FakeCert {
                status: CertStatus::Inactive,
                arn: arn.clone(),
                pem: pem.clone(),
            },
        );
        Ok(NewCertificate {
            certificate: CertificateRef { id, arn },
            certificate_pem: pem,
        })
    }

    async fn activate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        self.faults.check("issuer.activate")?;
        let mut state = self.state.lock().unwrap();
        let cert = state
            .certificates
            .get_mut(&certificate.id)
            .ok_or_else(|| PortError::new(FailureKind::NotFound, "issuer.activate"))?;
        cert.status = CertStatus::Active;
        Ok(())
    }

    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        self.faults.check("issuer.discard")?;
        let mut state = self.state.lock().unwrap();
        let attached = state
            .policy_attachments
            .iter()
            .any(|(_, arn)| *arn == certificate.arn)
            || state
                .thing_principals
                .iter()
                .any(|(_, arn)| *arn == certificate.arn);
        if attached {
            return Err(PortError::new(FailureKind::Other, "issuer.discard")
                .with_code("DeleteConflictException"));
        }
        state.certificates.remove(&certificate.id);
        Ok(())
    }
}

impl ThingRegistry for FakeIot {
    async fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &Attributes,
    ) -> Result<(), PortError> {
        self.faults.check("registry.ensure_thing")?;
        self.state
            .lock()
            .unwrap()
            .things
            .entry(thing.as_str().to_owned())
            .or_insert_with(|| attributes.clone());
        Ok(())
    }

    async fn attach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.faults.check("registry.attach_policy")?;
        let mut state = self.state.lock().unwrap();
        if !state.certificates.contains_key(&certificate.id) {
            return Err(PortError::new(
                FailureKind::NotFound,
                "registry.attach_policy",
            ));
        }
        state
            .policy_attachments
            .insert((policy.as_str().to_owned(), certificate.arn.clone()));
        Ok(())
    }

    async fn detach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.faults.check("registry.detach_policy")?;
        self.state
            .lock()
            .unwrap()
            .policy_attachments
            .remove(&(policy.as_str().to_owned(), certificate.arn.clone()));
        Ok(())
    }

    async fn attach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.faults.check("registry.attach_thing_principal")?;
        let mut state = self.state.lock().unwrap();
        if !state.things.contains_key(thing.as_str())
            || !state.certificates.contains_key(&certificate.id)
        {
            return Err(PortError::new(
                FailureKind::NotFound,
                "registry.attach_thing_principal",
            ));
        }
        state
            .thing_principals
            .insert((thing.as_str().to_owned(), certificate.arn.clone()));
        Ok(())
    }

    async fn detach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        self.faults.check("registry.detach_thing_principal")?;
        self.state
            .lock()
            .unwrap()
            .thing_principals
            .remove(&(thing.as_str().to_owned(), certificate.arn.clone()));
        Ok(())
    }
}
