//! What the table holds about a device, and the states an enrollment moves through.
//!
//! ```text
//!   Enrolled ──claim──▶ Claimed ──complete──▶ Issued ──revoke──▶ Revoked
//!       ▲                  │
//!       └────release───────┘   (a failed vend undoes its work and releases the claim)
//! ```

use crate::csr::KeyFingerprint;
use crate::domain::{Attributes, PolicyName, Serial, ThingName, TokenHash};

/// An AWS IoT certificate by id and ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRef {
    pub id: String,
    pub arn: String,
}

/// A vend in progress. Its id guards every later write so that a vend which lost its claim
/// (lease expired, taken over) can no longer change the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: String,
    pub fingerprint: KeyFingerprint,
    /// Seconds since the Unix epoch.
    pub claimed_at: i64,
    /// The certificate this vend created, recorded before it is activated, so that a vend that
    /// died half-way leaves no certificate the table does not know.
    pub pending: Option<CertificateRef>,
}

/// A certificate delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate: CertificateRef,
    pub certificate_pem: String,
    pub fingerprint: KeyFingerprint,
    /// RFC 3339.
    pub issued_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    Enrolled,
    Claimed(Claim),
    Issued(IssuedCertificate),
    Revoked { revoked_at: String },
}

impl DeviceStatus {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceStatus::Enrolled => "enrolled",
            DeviceStatus::Claimed(_) => "claimed",
            DeviceStatus::Issued(_) => "issued",
            DeviceStatus::Revoked { .. } => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub serial: Serial,
    pub token_hash: TokenHash,
    pub thing_name: ThingName,
    /// Overrides the deployment's default policy for this device.
    pub policy_name: Option<PolicyName>,
    pub attributes: Attributes,
    pub status: DeviceStatus,
    pub failed_attempts: u32,
    /// Bumped by every state change; claims are conditional on it (optimistic concurrency).
    pub version: u64,
    /// RFC 3339.
    pub enrolled_at: String,
}

impl DeviceRecord {
    pub fn new_enrollment(
        serial: Serial,
        token_hash: TokenHash,
        thing_name: ThingName,
        policy_name: Option<PolicyName>,
        attributes: Attributes,
        enrolled_at: String,
    ) -> Self {
        Self {
            serial,
            token_hash,
            thing_name,
            policy_name,
            attributes,
            status: DeviceStatus::Enrolled,
            failed_attempts: 0,
            version: 0,
            enrolled_at,
        }
    }
}
