//! Renewal without a token: the device proves it is the device on record by signing its new
//! CSR with the key of its current certificate.
//!
//! 1. `POST /v1/renewals {serial, csr, signature}`: the signature (by the current key, over
//!    [`crate::signature::renewal_message`]) is verified against the certificate on record;
//!    a new certificate for the CSR's key (a new key, or the same one for modules with a fixed
//!    key) is issued, attached and activated *beside* the current one, and recorded as proposed.
//!    The device keeps using the current certificate until it has tried the new one.
//! 2. `POST /v1/renewals/confirm {serial, certificateId, signature}`: the signature by the
//!    *new* key over [`crate::signature::confirmation_message`] proves the device holds it; the
//!    old certificate is revoked and detached, the new one becomes current.
//!
//! Never two active certificates after the grace: a proposal not confirmed within
//! [`RenewalPolicy::grace`] is abandoned (its certificate revoked) by the next renewal or by
//! `cvm-admin report --sweep` ([`crate::lifecycle::abandon_expired_renewal`]). Never none before the device has the new one: the current
//! certificate is only revoked on the new key's proof. A certificate that expired may still be
//! renewed, signed by the same key, within [`RenewalPolicy::expired_grace`].

use std::time::Duration;

use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::csr::{certificate_not_after, Csr};
use crate::domain::Serial;
use crate::ports::{CertificateIssuer, DeviceStore, NewCertificate, ThingRegistry, Written};
use crate::record::{
    CertificateRef, Change, Claim, DeviceRecord, DeviceStatus, Door, Guard, IssuedCertificate,
    Renewal,
};
use crate::signature::{confirmation_message, renewal_message, verify_with_certificate};
use crate::vend::{
    check_issued_key, lost_claim, new_claim_id, rfc3339, unavailable, Delivery, Failure, VendError,
    Vendor,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// How long a proposed certificate waits for the device's proof before it is abandoned.
    pub grace: Duration,
    /// How long after its expiry a certificate may still be renewed.
    pub expired_grace: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(7 * 24 * 3600),
            expired_grace: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A renewal request whose every part has been parsed.
#[derive(Debug)]
pub struct RenewRequest {
    pub serial: Serial,
    pub csr: Csr,
    /// By the current certificate's key, over [`renewal_message`].
    pub signature: Vec<u8>,
}

/// A confirmation whose every part has been parsed.
#[derive(Debug)]
pub struct ConfirmRequest {
    pub serial: Serial,
    pub certificate_id: String,
    /// By the new certificate's key, over [`confirmation_message`].
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// A new certificate, active beside the current one until confirmed.
    Proposed(Delivery),
    /// The device asked again for the renewal it was already given.
    Replayed(Delivery),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// The new certificate is now the device's; the old one is revoked.
    Confirmed(Delivery),
    /// It already was (the device lost the first answer).
    AlreadyConfirmed(Delivery),
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl<S: DeviceStore, I: CertificateIssuer, R: ThingRegistry> Vendor<S, I, R> {
    #[tracing::instrument(name = "renew", skip_all, fields(serial = %request.serial, key = %request.csr.fingerprint()))]
    pub async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, VendError> {
        self.renew_once(request).await.map_err(|e| self.paced(e))
    }

    async fn renew_once(&self, request: &RenewRequest) -> Result<RenewOutcome, VendError> {
        let now = self.now().unix_timestamp();
        let record = self
            .store
            .get(&request.serial)
            .await
            .map_err(unavailable)?
            .ok_or(VendError::InvalidSignature)?;
        let (current, renewal) = match &record.status {
            DeviceStatus::Issued { current, renewal } => (current, renewal),
            DeviceStatus::Revoked { .. } => return Err(VendError::Revoked),
            DeviceStatus::Enrolled | DeviceStatus::Claimed(_) => {
                return Err(VendError::NothingToRenew)
            }
        };
        let message = renewal_message(&request.serial, request.csr.der());
        verify_with_certificate(&current.certificate_pem, &message, &request.signature)
            .map_err(|_| VendError::InvalidSignature)?;
        let not_after = certificate_not_after(&current.certificate_pem)
            .map_err(|e| VendError::Internal(format!("certificate on record: {e}")))?;
        if now > not_after.saturating_add(secs(self.config.renewal.expired_grace)) {
            return Err(VendError::RenewalExpired);
        }
        let cn = request.csr.common_name();
        if cn != record.serial.as_str() && cn != record.thing_name.as_str() {
            return Err(VendError::SubjectNotAllowed);
        }

        let mut record = record.clone();
        match renewal {
            Some(Renewal::Proposed(proposed)) => {
                let issued_at = time::OffsetDateTime::parse(
                    &proposed.issued_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| t.unix_timestamp())
                .unwrap_or(0);
                let expired = now > issued_at.saturating_add(secs(self.config.renewal.grace));
                if &proposed.fingerprint == request.csr.fingerprint() && !expired {
                    info!(certificate_id = %proposed.certificate.id, "renewal replayed");
                    return Ok(RenewOutcome::Replayed(
                        self.delivery(&record, proposed.clone()),
                    ));
                }
                // Not proven in time, or the device started over with another key: the
                // proposal is revoked before another is made.
                record = self.abandon_proposal(&record, proposed, expired).await?;
            }
            Some(Renewal::InProgress(claim)) if claim.is_live(self.config.claim_lease, now) => {
                return Err(VendError::InProgress {
                    retry_after: Duration::from_secs(
                        u64::try_from(claim.expires_at(self.config.claim_lease) - now)
                            .unwrap_or(1)
                            .clamp(1, 30),
                    ),
                });
            }
            Some(Renewal::InProgress(_)) | None => {}
        }

        let stale = match &record.status {
            DeviceStatus::Issued {
                renewal: Some(Renewal::InProgress(c)),
                ..
            } => c.pending.clone(),
            _ => None,
        };
        let claim = Claim {
            id: new_claim_id()?,
            fingerprint: request.csr.fingerprint().clone(),
            claimed_at: now,
            pending: stale.clone(),
        };
        let change = Change::RenewalClaim(claim.clone());
        match self
            .store
            .apply(&request.serial, &Guard::Version(record.version), &change)
            .await
            .map_err(unavailable)?
        {
            Written::Done => {}
            Written::ConditionFailed => {
                return Err(VendError::InProgress {
                    retry_after: Duration::from_secs(1),
                })
            }
        }
        let record = change.apply(&record);
        if let Some(leftover) = &stale {
            self.undo(&record, leftover).await.map_err(unavailable)?;
        }
        match self.renew_under_claim(request, &record, &claim).await {
            Ok(delivery) => Ok(RenewOutcome::Proposed(delivery)),
            Err(Failure { error, undone }) => {
                if undone {
                    let guard = Guard::RenewalClaim(claim.id.clone());
                    let change = Change::RenewalAbandoned(None);
                    if let Err(e) = self.store.apply(&request.serial, &guard, &change).await {
                        warn!(error = %e, "could not release the renewal claim");
                    }
                }
                Err(error)
            }
        }
    }

    async fn renew_under_claim(
        &self,
        request: &RenewRequest,
        record: &DeviceRecord,
        claim: &Claim,
    ) -> Result<Delivery, Failure> {
        let serial = &request.serial;
        let policy = self.config.policy_for(record);
        let NewCertificate {
            certificate,
            certificate_pem,
        } = self
            .issuer
            .issue(&request.csr)
            .await
            .map_err(|e| Failure::undone(unavailable(e)))?;
        if let Err(err) = check_issued_key(&request.csr, &certificate_pem) {
            return Err(self.fail_renewal(record, &certificate, err).await);
        }
        let guard = Guard::RenewalClaim(claim.id.clone());
        let record_pending = Change::RenewalPending(certificate.clone());
        let (pending, policy_attached, thing_attached) = tokio::join!(
            self.store.apply(serial, &guard, &record_pending),
            self.registry.attach_policy(&policy, &certificate),
            self.registry
                .attach_thing_principal(&record.thing_name, &certificate),
        );
        let attached = match (pending, policy_attached, thing_attached) {
            (Ok(Written::Done), Ok(()), Ok(())) => Ok(()),
            (Ok(Written::ConditionFailed), _, _) => Err(lost_claim()),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(unavailable(e)),
        };
        if let Err(err) = attached {
            return Err(self.fail_renewal(record, &certificate, err).await);
        }
        let elapsed = self.now().unix_timestamp() - claim.claimed_at;
        let allowed = self
            .config
            .claim_lease
            .saturating_sub(self.config.activation_margin);
        if u64::try_from(elapsed).unwrap_or(u64::MAX) >= allowed.as_secs() {
            return Err(self.fail_renewal(record, &certificate, lost_claim()).await);
        }
        if let Err(e) = self.issuer.activate(&certificate).await {
            return Err(self
                .fail_renewal(record, &certificate, unavailable(e))
                .await);
        }
        let issued = IssuedCertificate {
            certificate: certificate.clone(),
            certificate_pem,
            fingerprint: request.csr.fingerprint().clone(),
            issued_at: rfc3339(self.now()),
            door: Door::Renewal,
        };
        let event = AuditEvent::new(
            issued.issued_at.clone(),
            AuditKind::RenewalIssued,
            "device (renewal)",
            certificate.id.clone(),
        );
        let proposed = self
            .store
            .apply(
                serial,
                &guard,
                &Change::RenewalProposed(issued.clone(), event),
            )
            .await;
        match proposed {
            Ok(Written::Done) => {}
            other => {
                // As for a vend: the write may have committed with its answer lost.
                let committed = matches!(
                    self.store.get(serial).await,
                    Ok(Some(DeviceRecord { status: DeviceStatus::Issued { renewal: Some(Renewal::Proposed(p)), .. }, .. }))
                        if p.certificate.id == certificate.id
                );
                if !committed {
                    let error = match other {
                        Err(e) => unavailable(e),
                        Ok(_) => lost_claim(),
                    };
                    return Err(self.fail_renewal(record, &certificate, error).await);
                }
            }
        }
        info!(certificate_id = %certificate.id, "renewal proposed");
        Ok(self.delivery(record, issued))
    }

    async fn fail_renewal(
        &self,
        record: &DeviceRecord,
        certificate: &CertificateRef,
        error: VendError,
    ) -> Failure {
        warn!(error = %error, certificate_id = %certificate.id, "renewal failed; undoing");
        match self.undo(record, certificate).await {
            Ok(()) => Failure::undone(error),
            Err(e) => {
                warn!(error = %e, certificate_id = %certificate.id, "undo failed; left for the next attempt");
                Failure {
                    error,
                    undone: false,
                }
            }
        }
    }

    /// Revokes a proposed certificate and forgets the proposal; returns the record after.
    async fn abandon_proposal(
        &self,
        record: &DeviceRecord,
        proposed: &IssuedCertificate,
        expired: bool,
    ) -> Result<DeviceRecord, VendError> {
        self.retire(record, &proposed.certificate)
            .await
            .map_err(unavailable)?;
        let why = if expired {
            "not confirmed within the grace period"
        } else {
            "replaced by a renewal for another key"
        };
        let event = AuditEvent::new(
            rfc3339(self.now()),
            AuditKind::RenewalAbandoned,
            "cvm",
            format!("certificate {} revoked: {why}", proposed.certificate.id),
        );
        let change = Change::RenewalAbandoned(Some(event));
        match self
            .store
            .apply(&record.serial, &Guard::Version(record.version), &change)
            .await
            .map_err(unavailable)?
        {
            Written::Done => Ok(change.apply(record)),
            Written::ConditionFailed => Err(VendError::InProgress {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// A delivered certificate out of use: revoked, detached from the thing and every policy.
    async fn retire(
        &self,
        record: &DeviceRecord,
        certificate: &CertificateRef,
    ) -> Result<(), crate::ports::PortError> {
        self.issuer.revoke(certificate).await?;
        let (t, p) = tokio::join!(
            self.registry
                .detach_thing_principal(&record.thing_name, certificate),
            self.registry.detach_all_policies(certificate),
        );
        t?;
        p?;
        info!(certificate_id = %certificate.id, "certificate revoked and detached");
        Ok(())
    }

    #[tracing::instrument(name = "confirm_renewal", skip_all, fields(serial = %request.serial, certificate_id = %request.certificate_id))]
    pub async fn confirm_renewal(
        &self,
        request: &ConfirmRequest,
    ) -> Result<ConfirmOutcome, VendError> {
        self.confirm_once(request).await.map_err(|e| self.paced(e))
    }

    async fn confirm_once(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, VendError> {
        let record = self
            .store
            .get(&request.serial)
            .await
            .map_err(unavailable)?
            .ok_or(VendError::InvalidSignature)?;
        let message = confirmation_message(&request.serial, &request.certificate_id);
        let (current, proposed) = match &record.status {
            DeviceStatus::Issued { current, renewal } => (
                current,
                match renewal {
                    Some(Renewal::Proposed(p)) => Some(p),
                    _ => None,
                },
            ),
            DeviceStatus::Revoked { .. } => return Err(VendError::Revoked),
            _ => return Err(VendError::NothingToRenew),
        };
        if current.certificate.id == request.certificate_id {
            // Confirmed before; the device lost the answer.
            verify_with_certificate(&current.certificate_pem, &message, &request.signature)
                .map_err(|_| VendError::InvalidSignature)?;
            return Ok(ConfirmOutcome::AlreadyConfirmed(
                self.delivery(&record, current.clone()),
            ));
        }
        let Some(proposed) = proposed.filter(|p| p.certificate.id == request.certificate_id) else {
            return Err(VendError::NothingToRenew);
        };
        verify_with_certificate(&proposed.certificate_pem, &message, &request.signature)
            .map_err(|_| VendError::InvalidSignature)?;
        // The old certificate goes first: the table names it until it is revoked.
        self.retire(&record, &current.certificate)
            .await
            .map_err(unavailable)?;
        let event = AuditEvent::new(
            rfc3339(self.now()),
            AuditKind::RenewalConfirmed,
            "device (renewal)",
            format!(
                "certificate {} current; {} revoked",
                proposed.certificate.id, current.certificate.id
            ),
        );
        let change = Change::RenewalConfirmed(proposed.clone(), event);
        let written = self
            .store
            .apply(&request.serial, &Guard::Version(record.version), &change)
            .await;
        let confirmed = match written {
            Ok(Written::Done) => true,
            // Committed with its answer lost, or confirmed by a concurrent request.
            _ => matches!(
                self.store.get(&request.serial).await,
                Ok(Some(DeviceRecord { status: DeviceStatus::Issued { current, .. }, .. }))
                    if current.certificate.id == request.certificate_id
            ),
        };
        if !confirmed {
            return Err(match written {
                Err(e) => unavailable(e),
                Ok(_) => VendError::InProgress {
                    retry_after: Duration::from_secs(1),
                },
            });
        }
        info!(certificate_id = %proposed.certificate.id, "renewal confirmed");
        Ok(ConfirmOutcome::Confirmed(
            self.delivery(&record, proposed.clone()),
        ))
    }
}
