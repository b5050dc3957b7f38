//! In-memory fakes of the ports, faithful where the workflow's correctness depends on it
//! (conditional writes, "delete needs detach and deactivate", inactive until activated), with
//! fault injection per operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::csr::Csr;
use crate::domain::{Attributes, PolicyName, Serial, ThingName};
use crate::ports::{
    Admission, Admitted, CertificateIssuer, DeviceStore, FailureKind, NewCertificate, PortError,
    ThingRegistry, Written,
};
use crate::record::{CertificateRef, Change, DeviceRecord, Guard};

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

/// Every operation a vend goes through that the fakes can fail, in workflow order.
/// `store.apply(...)` names the change (see [`change_name`]).
pub const OPERATIONS: &[&str] = &[
    "store.admit",
    "issuer.issue",
    "registry.ensure_thing",
    "store.apply(pending)",
    "registry.attach_policy",
    "registry.attach_thing_principal",
    "issuer.activate",
    "store.apply(complete)",
];

/// The fault-injection name of a conditional write.
pub fn change_name(change: &Change) -> &'static str {
    match change {
        Change::Claim(_) => "store.apply(claim)",
        Change::Pending(_) => "store.apply(pending)",
        Change::Complete(..) => "store.apply(complete)",
        Change::Release => "store.apply(release)",
        Change::FailedAttempt(..) => "store.apply(failed_attempt)",
        Change::Replayed(_) => "store.apply(replayed)",
        Change::ProvisionedByClaim(..) => "store.apply(provisioned)",
        Change::RenewalClaim(_) => "store.apply(renewal_claim)",
        Change::RenewalPending(_) => "store.apply(renewal_pending)",
        Change::RenewalProposed(..) => "store.apply(renewal_proposed)",
        Change::RenewalConfirmed(..) => "store.apply(renewal_confirmed)",
        Change::RenewalAbandoned(_) => "store.apply(renewal_abandoned)",
        Change::Revoked { .. } => "store.apply(revoked)",
        Change::Unlocked(_) => "store.apply(unlocked)",
        Change::Reenrolled(..) => "store.apply(reenrolled)",
    }
}

/// The device table in memory, with DynamoDB's semantics for what the workflow relies on:
/// conditional writes, and answers that can be lost after the write committed.
#[derive(Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<BTreeMap<Serial, DeviceRecord>>>,
    pub faults: Faults,
    /// Writes (by [`change_name`], or `store.admit`) whose answer is lost after they commit;
    /// the caller then gets what the SDK's automatic retry of the same request would get from
    /// DynamoDB: the retry's condition evaluated on the record the first attempt wrote.
    pub lost_answers: Arc<Mutex<Vec<&'static str>>>,
    /// Writes that commit and then fail with an error (the SDK gave up on a lost answer).
    pub failed_after_commit: Arc<Mutex<Vec<&'static str>>>,
}

impl MemoryStore {
    pub fn record(&self, serial: &Serial) -> Option<DeviceRecord> {
        self.records.lock().unwrap().get(serial).cloned()
    }

    pub fn put(&self, record: DeviceRecord) {
        self.records
            .lock()
            .unwrap()
            .insert(record.serial.clone(), record);
    }

    /// The next `operation` commits, then its answer is lost (and the SDK retries it).
    pub fn lose_answer(&self, operation: &'static str) {
        self.lost_answers.lock().unwrap().push(operation);
    }

    /// The next `operation` commits, then fails as if every retry's answer was lost too.
    pub fn fail_after_commit(&self, operation: &'static str) {
        self.failed_after_commit.lock().unwrap().push(operation);
    }

    fn take(list: &Mutex<Vec<&'static str>>, operation: &'static str) -> bool {
        let mut list = list.lock().unwrap();
        match list.iter().position(|o| *o == operation) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    fn answer_lost(&self, operation: &'static str) -> bool {
        let mut lost = self.lost_answers.lock().unwrap();
        match lost.iter().position(|o| *o == operation) {
            Some(i) => {
                lost.remove(i);
                true
            }
            None => false,
        }
    }

    /// Certificate ids the table knows.
    pub fn known_certificate_ids(&self) -> BTreeSet<String> {
        let records = self.records.lock().unwrap();
        records
            .values()
            .flat_map(|r| r.certificate_ids().into_iter().map(str::to_owned))
            .collect()
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

    async fn admit(
        &self,
        serial: &Serial,
        admission: &Admission,
        change: &Change,
    ) -> Result<Admitted, PortError> {
        self.faults.check("store.admit")?;
        let mut records = self.records.lock().unwrap();
        let Some(record) = records.get_mut(serial) else {
            return Ok(Admitted::Refused(None));
        };
        if !admission.admits(record) {
            return Ok(Admitted::Refused(Some(record.clone())));
        }
        *record = change.apply(record);
        if self.answer_lost("store.admit") {
            // The retry's condition no longer holds (the record is claimed now): refused,
            // with the record as the first attempt left it.
            return Ok(if admission.admits(record) {
                Admitted::Applied(record.clone())
            } else {
                Admitted::Refused(Some(record.clone()))
            });
        }
        Ok(Admitted::Applied(record.clone()))
    }

    async fn apply(
        &self,
        serial: &Serial,
        guard: &Guard,
        change: &Change,
    ) -> Result<Written, PortError> {
        let name = change_name(change);
        self.faults.check(name)?;
        let mut records = self.records.lock().unwrap();
        let Some(record) = records.get_mut(serial) else {
            return Ok(Written::ConditionFailed);
        };
        if !guard.admits(record) {
            return Ok(Written::ConditionFailed);
        }
        *record = change.apply(record);
        if Self::take(&self.failed_after_commit, name) {
            return Err(PortError::new(FailureKind::Unavailable, name).with_code("AnswerLost"));
        }
        if self.answer_lost(name) && !guard.admits(record) {
            // The retry of the same write is refused by its own condition.
            return Ok(Written::ConditionFailed);
        }
        Ok(Written::Done)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Active,
    Inactive,
    Revoked,
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

/// Something to run when a fake is called.
type Hook = Box<dyn Fn() + Send + Sync>;

/// AWS IoT in memory: an issuer signing with a real (test) CA, and a registry.
#[derive(Clone)]
pub struct FakeIot {
    pub state: Arc<Mutex<IotState>>,
    ca: Arc<rcgen::Issuer<'static, rcgen::KeyPair>>,
    pub ca_pem: String,
    pub faults: Faults,
    /// Make the issuer certify a different key than the CSR's (as an unfaithful CA would).
    pub certify_wrong_key: Arc<Mutex<bool>>,
    /// Run on every issue (a slow CA, a clock that moves meanwhile).
    on_issue: Arc<Mutex<Option<Hook>>>,
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
            on_issue: Arc::default(),
        }
    }

    /// Runs `f` on every issue.
    pub fn on_issue(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.on_issue.lock().unwrap() = Some(Box::new(f));
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
        if let Some(f) = self.on_issue.lock().unwrap().as_ref() {
            f();
        }
        let pem = if *self.certify_wrong_key.lock().unwrap() {
            let other = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.signed_by(&other, &self.ca).unwrap().pem()
        } else {
            let params = rcgen::CertificateSigningRequestParams::from_pem(csr.pem())
                .map_err(|e| PortError::new(FailureKind::Other, "issuer.issue").with_source(e))?;
            params.signed_by(&self.ca).unwrap().pem()
        };
        // As AWS IoT: SHA-256 of the DER.
        let id = crate::csr::certificate_id(&pem).unwrap();
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

    async fn deactivate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        self.faults.check("issuer.deactivate")?;
        let mut state = self.state.lock().unwrap();
        match state.certificates.get_mut(&certificate.id) {
            Some(c) if c.status == CertStatus::Active => c.status = CertStatus::Inactive,
            Some(_) => {}
            None => return Err(PortError::new(FailureKind::NotFound, "issuer.deactivate")),
        }
        Ok(())
    }

    async fn revoke(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        self.faults.check("issuer.revoke")?;
        let mut state = self.state.lock().unwrap();
        if let Some(c) = state.certificates.get_mut(&certificate.id) {
            c.status = CertStatus::Revoked;
        }
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

    async fn detach_all_policies(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        self.faults.check("registry.detach_all_policies")?;
        self.state
            .lock()
            .unwrap()
            .policy_attachments
            .retain(|(_, arn)| *arn != certificate.arn);
        Ok(())
    }
}
