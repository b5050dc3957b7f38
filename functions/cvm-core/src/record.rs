//! What the table holds about a device: one enrollment record per serial, whichever door the
//! device uses (the HTTPS vend, fleet provisioning by claim, renewal). A token, a registered
//! key and a lockout mean the same thing on every door.
//!
//! ```text
//!                       ┌──────── release (a failed vend undid its work) ───────┐
//!                       ▼                                                        │
//!   enroll ──▶ Enrolled ──claim (token or registered key)──▶ Claimed ──complete──┼─▶ Issued ──revoke──▶ Revoked
//!                 │  ▲                                                           │    │  ▲
//!                 │  └────────────── reenroll (certificate revoked) ─────────────┼────┘  │
//!                 └──── fleet provisioning hook (token or registered key) ───────┘       │
//!                                                                                         │
//!   Issued ──renew (signed by the current key)──▶ Issued + renewal in progress ──▶ Issued + proposed
//!          ◀──confirm (signed by the new key): proposed becomes current, the old one is revoked
//!          ◀──abandon (no proof within the grace): the proposed one is revoked
//! ```
//!
//! Every state change is a conditional write ([`Guard`]) of a [`Change`]; the in-memory fake
//! and the DynamoDB adapter apply the same changes, and [`Change::apply`] is the reference
//! for both.

use std::time::Duration;

use crate::audit::AuditEvent;
use crate::csr::KeyFingerprint;
use crate::domain::{Attributes, PolicyName, Serial, ThingName, TokenHash};
use crate::lockout::Lockout;

/// An AWS IoT certificate by id and ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRef {
    pub id: String,
    pub arn: String,
}

/// Work in progress on a record (a vend, or a renewal). Its id guards every later write so
/// that work which lost its claim (lease expired, taken over) can no longer change the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: String,
    /// The key the certificate being made is for.
    pub fingerprint: KeyFingerprint,
    /// Seconds since the Unix epoch.
    pub claimed_at: i64,
    /// The certificate this work created, recorded before it is activated, so that work
    /// that died half-way leaves no certificate the table does not know.
    pub pending: Option<CertificateRef>,
}

impl Claim {
    /// Whether the claim still protects its work at `now` (seconds since the epoch).
    pub fn is_live(&self, lease: Duration, now: i64) -> bool {
        now < self.expires_at(lease)
    }

    pub fn expires_at(&self, lease: Duration) -> i64 {
        let lease = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
        self.claimed_at.saturating_add(lease)
    }
}

/// Through which door a certificate reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST /v1/certificates`.
    Vend,
    /// AWS IoT fleet provisioning by claim (the pre-provisioning hook).
    FleetProvisioning,
    /// `POST /v1/renewals`, then confirmed.
    Renewal,
}

impl Door {
    pub fn as_str(&self) -> &'static str {
        match self {
            Door::Vend => "vend",
            Door::FleetProvisioning => "fleet-provisioning",
            Door::Renewal => "renewal",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Door::Vend, Door::FleetProvisioning, Door::Renewal]
            .into_iter()
            .find(|d| d.as_str() == raw)
    }
}

/// A certificate delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate: CertificateRef,
    pub certificate_pem: String,
    pub fingerprint: KeyFingerprint,
    /// RFC 3339.
    pub issued_at: String,
    pub door: Door,
}

/// A renewal of an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The new certificate is being made.
    InProgress(Claim),
    /// The new certificate is issued and active beside the current one, until the device
    /// proves it has it (or the grace period ends).
    Proposed(IssuedCertificate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    Enrolled,
    Claimed(Claim),
    Issued {
        current: IssuedCertificate,
        renewal: Option<Renewal>,
    },
    Revoked {
        revoked_at: String,
        /// The certificate that was revoked, if one had been issued.
        certificate: Option<CertificateRef>,
    },
}

impl DeviceStatus {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceStatus::Enrolled => "enrolled",
            DeviceStatus::Claimed(_) => "claimed",
            DeviceStatus::Issued { .. } => "issued",
            DeviceStatus::Revoked { .. } => "revoked",
        }
    }

    pub fn issued(current: IssuedCertificate) -> Self {
        DeviceStatus::Issued {
            current,
            renewal: None,
        }
    }
}

/// The credential a device proves itself with on first enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// SHA-256 of the one-time token; `None` for a device enrolled by its public key only.
    pub token_hash: Option<TokenHash>,
    /// A pre-registered device key (factory manifest): only a CSR for this key is accepted,
    /// and a device presenting it may enroll without a token.
    pub registered_key: Option<KeyFingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub serial: Serial,
    pub credentials: Credentials,
    pub thing_name: ThingName,
    /// Overrides the deployment's default policy for this device.
    pub policy_name: Option<PolicyName>,
    pub attributes: Attributes,
    pub status: DeviceStatus,
    pub lockout: Lockout,
    /// Bumped by every change of state; writes that depend on what was read are conditional
    /// on it (optimistic concurrency).
    pub version: u64,
    /// RFC 3339.
    pub enrolled_at: String,
    /// Oldest first, at most [`crate::audit::MAX_HISTORY`] entries.
    pub history: Vec<AuditEvent>,
}

impl DeviceRecord {
    pub fn new_enrollment(
        serial: Serial,
        credentials: Credentials,
        thing_name: ThingName,
        policy_name: Option<PolicyName>,
        attributes: Attributes,
        enrolled: AuditEvent,
    ) -> Self {
        Self {
            serial,
            credentials,
            thing_name,
            policy_name,
            attributes,
            status: DeviceStatus::Enrolled,
            lockout: Lockout::default(),
            version: 0,
            enrolled_at: enrolled.at.clone(),
            history: vec![enrolled],
        }
    }

    /// Certificates the record names: the current and a proposed one, or a pending one.
    pub fn certificate_ids(&self) -> Vec<&str> {
        let mut ids = Vec::new();
        match &self.status {
            DeviceStatus::Claimed(c) => ids.extend(c.pending.as_ref().map(|p| p.id.as_str())),
            DeviceStatus::Issued { current, renewal } => {
                ids.push(current.certificate.id.as_str());
                match renewal {
                    Some(Renewal::InProgress(c)) => {
                        ids.extend(c.pending.as_ref().map(|p| p.id.as_str()))
                    }
                    Some(Renewal::Proposed(p)) => ids.push(p.certificate.id.as_str()),
                    None => {}
                }
            }
            DeviceStatus::Revoked { certificate, .. } => {
                ids.extend(certificate.as_ref().map(|c| c.id.as_str()))
            }
            DeviceStatus::Enrolled => {}
        }
        ids
    }
}

/// What a conditional write requires of the record it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The record is still at this version.
    Version(u64),
    /// This vend still holds the record's claim.
    Claim(String),
    /// This renewal still holds the record's renewal claim.
    RenewalClaim(String),
    /// The lockout is still as it was read (counting a wrong token; it does not move the
    /// version, so it never disturbs work in progress).
    Lockout(Lockout),
    /// Both: a wrong token that also rewrites the history (a lockout starting), which must not
    /// lose an entry a concurrent change appended.
    VersionAndLockout(u64, Lockout),
}

impl Guard {
    pub fn admits(&self, record: &DeviceRecord) -> bool {
        match self {
            Guard::Version(v) => record.version == *v,
            Guard::Claim(id) => matches!(&record.status, DeviceStatus::Claimed(c) if &c.id == id),
            Guard::RenewalClaim(id) => matches!(
                &record.status,
                DeviceStatus::Issued { renewal: Some(Renewal::InProgress(c)), .. } if &c.id == id
            ),
            Guard::Lockout(l) => &record.lockout == l,
            Guard::VersionAndLockout(v, l) => record.version == *v && &record.lockout == l,
        }
    }
}

/// A change of a record, applied by a conditional write. Each variant touches only the
/// attributes it names, so that independent changes (a wrong token counted while a vend is in
/// progress) do not overwrite each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Take over an expired claim (the dead work's pending certificate is carried over).
    Claim(Claim),
    /// The certificate the claim's work created, before it becomes active. Moves the version,
    /// so that a takeover decided on an older read cannot forget it.
    Pending(CertificateRef),
    /// The claim's vend finished: the record becomes `Issued`.
    Complete(IssuedCertificate, AuditEvent),
    /// The claim's work was undone: `Enrolled` again, the token usable again.
    Release,
    /// A wrong token or key was counted. When a lockout starts, the whole new history (with
    /// its entry, bounded) is written too: wrong tokens are the one thing anyone can repeat,
    /// so their entries must not grow the record without bound.
    FailedAttempt(Lockout, Option<Vec<AuditEvent>>),
    /// A device was given the certificate it already had; the whole new history, bounded.
    Replayed(Vec<AuditEvent>),
    /// Fleet provisioning: the record becomes `Issued` with a certificate AWS IoT made
    /// (replacing the current one when the device started over with the same key).
    ProvisionedByClaim(IssuedCertificate, AuditEvent),
    /// A renewal starts (its claim guards its later writes).
    RenewalClaim(Claim),
    /// The renewal's new certificate, before it becomes active.
    RenewalPending(CertificateRef),
    /// The renewal's new certificate is active and handed to the device.
    RenewalProposed(IssuedCertificate, AuditEvent),
    /// The device proved the new certificate (the proposed one, given here): it becomes the
    /// current one.
    RenewalConfirmed(IssuedCertificate, AuditEvent),
    /// The renewal was given up (undone, or not proven within the grace period).
    RenewalAbandoned(Option<AuditEvent>),
    /// Ops revoked the device.
    Revoked {
        at: String,
        certificate: Option<CertificateRef>,
        event: AuditEvent,
    },
    /// Ops lifted a lockout.
    Unlocked(AuditEvent),
    /// Ops gave a device that lost its identity a new token (and/or a new registered key).
    Reenrolled(Credentials, AuditEvent),
}

impl Change {
    /// Whether this change moves the record's version.
    pub fn moves_version(&self) -> bool {
        !matches!(self, Change::FailedAttempt(..) | Change::Replayed(_))
    }

    /// The record after the change. The reference semantics the store adapters implement.
    pub fn apply(&self, record: &DeviceRecord) -> DeviceRecord {
        let mut r = record.clone();
        let mut event = None;
        match self {
            Change::Claim(claim) => r.status = DeviceStatus::Claimed(claim.clone()),
            Change::Pending(certificate) => {
                if let DeviceStatus::Claimed(c) = &mut r.status {
                    c.pending = Some(certificate.clone());
                }
            }
            Change::Complete(issued, e) => {
                r.status = DeviceStatus::issued(issued.clone());
                r.lockout = Lockout::default();
                event = Some(e);
            }
            Change::Release => r.status = DeviceStatus::Enrolled,
            Change::FailedAttempt(lockout, history) => {
                r.lockout = lockout.clone();
                if let Some(h) = history {
                    r.history = h.clone();
                }
            }
            Change::Replayed(history) => r.history = history.clone(),
            Change::ProvisionedByClaim(issued, e) => {
                r.status = DeviceStatus::issued(issued.clone());
                r.lockout = Lockout::default();
                event = Some(e);
            }
            Change::RenewalClaim(claim) => {
                if let DeviceStatus::Issued { renewal, .. } = &mut r.status {
                    *renewal = Some(Renewal::InProgress(claim.clone()));
                }
            }
            Change::RenewalPending(certificate) => {
                if let DeviceStatus::Issued {
                    renewal: Some(Renewal::InProgress(c)),
                    ..
                } = &mut r.status
                {
                    c.pending = Some(certificate.clone());
                }
            }
            Change::RenewalProposed(issued, e) => {
                if let DeviceStatus::Issued { renewal, .. } = &mut r.status {
                    *renewal = Some(Renewal::Proposed(issued.clone()));
                }
                event = Some(e);
            }
            Change::RenewalConfirmed(proposed, e) => {
                r.status = DeviceStatus::issued(proposed.clone());
                event = Some(e);
            }
            Change::RenewalAbandoned(e) => {
                if let DeviceStatus::Issued { renewal, .. } = &mut r.status {
                    *renewal = None;
                }
                event = e.as_ref();
            }
            Change::Revoked {
                at,
                certificate,
                event: e,
            } => {
                r.status = DeviceStatus::Revoked {
                    revoked_at: at.clone(),
                    certificate: certificate.clone(),
                };
                event = Some(e);
            }
            Change::Unlocked(e) => {
                r.lockout = Lockout::default();
                event = Some(e);
            }
            Change::Reenrolled(credentials, e) => {
                r.credentials = credentials.clone();
                r.status = DeviceStatus::Enrolled;
                r.lockout = Lockout::default();
                event = Some(e);
            }
        }
        if let Some(e) = event {
            crate::audit::append(&mut r.history, e.clone());
        }
        if self.moves_version() {
            r.version += 1;
        }
        r
    }
}
