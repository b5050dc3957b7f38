//! The three ports the vending workflow needs. Each is as narrow as the workflow's use of it;
//! adapters live at the edge (`cvm-aws`), fakes in [`crate::testing`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use crate::csr::Csr;
use crate::domain::{Attributes, PolicyName, Serial, ThingName};
use crate::record::{CertificateRef, Claim, DeviceRecord, IssuedCertificate};

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

    /// Atomically count a wrong token; returns the new count.
    fn record_failed_attempt(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<u32, PortError>> + Send;

    /// Claim the record for a vend if it is still at `expected_version`.
    fn claim(
        &self,
        serial: &Serial,
        expected_version: u64,
        claim: &Claim,
    ) -> impl Future<Output = Result<Written, PortError>> + Send;

    /// Note the certificate the claim's vend created, before it becomes active.
    fn record_pending(
        &self,
        serial: &Serial,
        claim_id: &str,
        certificate: &CertificateRef,
    ) -> impl Future<Output = Result<Written, PortError>> + Send;

    /// Finish the claim's vend: the record becomes `Issued`.
    fn complete(
        &self,
        serial: &Serial,
        claim_id: &str,
        issued: &IssuedCertificate,
    ) -> impl Future<Output = Result<Written, PortError>> + Send;

    /// Give up the claim (its work has been undone): the record is `Enrolled` again.
    fn release(
        &self,
        serial: &Serial,
        claim_id: &str,
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

    /// Deactivate and delete (and revoke, where the CA supports it). The certificate must have
    /// no attachments left. A certificate already gone is success.
    fn discard(
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
}
