//! The three ports the vending workflow needs. Each is as narrow as the workflow's use of it;
//! adapters live at the edge (`cvm-aws`), fakes in [`crate::testing`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use crate::csr::{Csr, KeyFingerprint};
use crate::domain::{Attributes, PolicyName, Serial, ThingName, TokenHash};
use crate::record::{CertificateRef, Change, DeviceRecord, DeviceStatus, Guard};

/// What kind of failure an adapter saw; the workflow decides retry advice from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The service asked us to slow down.
    Throttled,
    /// Network error, timeout, 5xx: worth retrying later.
    Unavailable,
    /// The resource was not there (a detach of something already detached, say).
    NotFound,
    /// Anything else: a bug or a misconfiguration.
    Other,
}

/// A failed call through a port, keeping the operation, the service's error code and the cause.
#[derive(Debug)]
pub struct PortError {
    pub kind: FailureKind,
    pub operation: &'static str,
    pub code: Option<String>,
    pub source: Option<Box<dyn StdError + Send + Sync>>,
}

impl PortError {
    pub fn new(kind: FailureKind, operation: &'static str) -> Self {
        Self {
            kind,
            operation,
            code: None,
            source: None,
        }
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({:?}", self.operation, self.kind)?;
        if let Some(code) = &self.code {
            write!(f, ", {code}")?;
        }
        f.write_str(")")?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for PortError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The record changed under us (another vend claimed it, our claim was taken over, or the
    /// record exists already): nothing was written.
    ConditionFailed,
}

/// What a device presents to be let in on its first enrollment, checked inside the same
/// conditional write that claims the record (one round trip, no read before it).
#[derive(Debug, Clone)]
pub struct Admission {
    /// SHA-256 of the token presented, if one was.
    pub token_hash: Option<TokenHash>,
    /// The key of the CSR (or of the certificate, for fleet provisioning).
    pub fingerprint: KeyFingerprint,
    /// The subject's common name: it must be the serial or the record's thing name.
    pub common_name: String,
    /// Seconds since the Unix epoch: the record must not be locked out at this time.
    pub now: i64,
}

impl Admission {
    /// Whether `record` lets this device in: enrolled, not locked out, the right credential
    /// (the token, and the registered key if there is one; or the registered key alone), and
    /// an allowed subject. The reference semantics of [`DeviceStore::admit`].
    pub fn admits(&self, record: &DeviceRecord) -> bool {
        matches!(record.status, DeviceStatus::Enrolled)
            && record.lockout.retry_after(self.now).is_none()
            && self.credentials_match(record)
            && (self.common_name == record.serial.as_str()
                || self.common_name == record.thing_name.as_str())
    }

    /// The credential check alone: constant-time on the token hash.
    pub fn credentials_match(&self, record: &DeviceRecord) -> bool {
        let key_ok = |required: bool| match &record.credentials.registered_key {
            Some(key) => key == &self.fingerprint,
            None => !required,
        };
        match (&self.token_hash, &record.credentials.token_hash) {
            (Some(presented), Some(stored)) => stored.matches_hash(presented) && key_ok(false),
            (Some(_), None) => false,
            (None, _) => key_ok(true),
        }
    }
}

/// What [`DeviceStore::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// The change was applied; the record as it is now.
    Applied(DeviceRecord),
    /// Nothing was written; the record as it is (`None`: no such serial).
    Refused(Option<DeviceRecord>),
}

/// Device records in the table.
pub trait DeviceStore: Send + Sync {
    /// Strongly consistent read.
    fn get(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, PortError>> + Send;

    /// Create a new enrollment unless the serial exists.
    fn create(
        &self,
        record: &DeviceRecord,
    ) -> impl Future<Output = Result<Written, PortError>> + Send;

    /// Apply `change` if [`Admission::admits`] the record; otherwise return the record as it
    /// is, from the same call.
    fn admit(
        &self,
        serial: &Serial,
        admission: &Admission,
        change: &Change,
    ) -> impl Future<Output = Result<Admitted, PortError>> + Send;

    /// Apply `change` if the record satisfies `guard` ([`Change::apply`] is the reference).
    fn apply(
        &self,
        serial: &Serial,
        guard: &Guard,
        change: &Change,
    ) -> impl Future<Output = Result<Written, PortError>> + Send;
}

/// A certificate freshly made for a CSR; in AWS IoT but not active yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    pub certificate: CertificateRef,
    pub certificate_pem: String,
}

/// Makes certificates for CSRs and manages their life in AWS IoT.
pub trait CertificateIssuer: Send + Sync {
    /// Create a certificate for the CSR, registered in AWS IoT as INACTIVE.
    fn issue(&self, csr: &Csr) -> impl Future<Output = Result<NewCertificate, PortError>> + Send;

    fn activate(
        &self,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// INACTIVE in AWS IoT: the certificate can no longer connect, and can be activated again.
    fn deactivate(
        &self,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// For a certificate never delivered: deactivate and delete (and revoke, where the CA
    /// supports it). The certificate must have no attachments left. Already gone is success.
    fn discard(
        &self,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// For a delivered certificate the device must no longer use: REVOKED in AWS IoT (kept,
    /// for the record) and revoked at the CA where the CA supports it. Already revoked is
    /// success.
    fn revoke(
        &self,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// Things and attachments in the AWS IoT registry.
pub trait ThingRegistry: Send + Sync {
    /// Create the thing, or accept an existing one of that name.
    fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    fn attach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Detaching a policy that is not attached is success.
    fn detach_policy(
        &self,
        policy: &PolicyName,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    fn attach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Detaching a principal that is not attached is success.
    fn detach_thing_principal(
        &self,
        thing: &ThingName,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Detach every policy attached to the certificate (whatever the record says now: ops may
    /// have changed the device's policy since).
    fn detach_all_policies(
        &self,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}
