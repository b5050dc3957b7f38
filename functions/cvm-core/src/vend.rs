//! The vending workflow: from `{serial, token, csr}` to a certificate attached to a thing.
//!
//! Critical path, in sequential AWS round trips:
//! 1. claim the record: one conditional write that checks the token (or the registered key),
//!    the lockout, the subject and the state, and returns the record (no read before it);
//! 2. issue the certificate (inactive) ‖ create the thing;
//! 3. record the pending certificate ‖ attach the policy ‖ attach the certificate to the thing;
//! 4. activate the certificate;
//! 5. mark the record issued.
//!
//! A refused claim answers with the record as it was (same round trip), which tells a wrong
//! token, a lockout, a replay and a vend in progress apart.
//!
//! Faults lose nothing: a failed step undoes what was done (detach, deactivate, delete) and
//! releases the claim, so the token stays usable. A certificate only becomes active after the
//! table knows its id, so a vend that dies anywhere leaves no active certificate the table does
//! not know; a later vend takes over the expired claim and removes what the dead one left.
//! Writes whose answer may have been lost (the SDK retried a write that had committed) are
//! settled by reading the record, never by undoing a certificate the record delivered.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::csr::Csr;
use crate::domain::{Serial, ThingName, Token};
use crate::lockout::LockoutPolicy;
use crate::ports::{
    Admission, Admitted, CertificateIssuer, DeviceStore, FailureKind, NewCertificate, PortError,
    ThingRegistry, Written,
};
use crate::record::{
    CertificateRef, Change, Claim, DeviceRecord, DeviceStatus, Door, Guard, IssuedCertificate,
};
use crate::PolicyName;

/// AWS IoT endpoints a device needs, returned with its certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoints {
    /// `iot:Data-ATS` endpoint (MQTT and HTTPS publish).
    pub data: String,
    /// `iot:CredentialProvider` endpoint.
    pub credentials: String,
}

#[derive(Debug, Clone)]
pub struct VendConfig {
    pub default_policy: PolicyName,
    /// How wrong tokens slow a serial down.
    pub lockout: LockoutPolicy,
    /// How long a claim protects a vend in progress. Longer than the function's timeout, so
    /// a claim is only taken over from a vend that is surely dead.
    pub claim_lease: Duration,
    /// A vend does not activate its certificate with less than this left of its lease: it
    /// undoes its work instead, so it never races a takeover.
    pub activation_margin: Duration,
    pub endpoints: Endpoints,
    /// PEM certificates a device should trust (the CA chain of its certificate and of the
    /// endpoints).
    pub ca_certificates: Vec<String>,
    /// The IoT role alias for the credentials provider, if the deployment has one.
    pub role_alias: Option<String>,
    /// How renewals wait for proof, and how late they may come.
    pub renewal: crate::renew::RenewalPolicy,
    /// AWS's rates per operation: a request refused because AWS throttled one is told to
    /// come back when the quota has room for it.
    pub quotas: crate::pacing::Quotas,
}

impl VendConfig {
    pub fn policy_for(&self, record: &DeviceRecord) -> PolicyName {
        record
            .policy_name
            .clone()
            .unwrap_or_else(|| self.default_policy.clone())
    }
}

/// A request whose every part has been parsed.
#[derive(Debug)]
pub struct VendRequest {
    pub serial: Serial,
    /// Absent for a device whose key was registered at enrollment.
    pub token: Option<Token>,
    pub csr: Csr,
}

/// Everything a device gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub thing_name: ThingName,
    pub policy_name: PolicyName,
    pub issued: IssuedCertificate,
    pub ca_certificates: Vec<String>,
    pub endpoints: Endpoints,
    pub role_alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VendOutcome {
    /// A new certificate was made.
    Issued(Delivery),
    /// The device asked again with the key it was already given a certificate for.
    Replayed(Delivery),
}

#[derive(Debug, thiserror::Error)]
pub enum VendError {
    /// Unknown serial or wrong token: deliberately one answer for both.
    #[error("serial or token not recognised")]
    InvalidCredentials,
    #[error("too many wrong tokens for this serial; retry after the given delay")]
    Locked { retry_after: Duration },
    #[error("this device's key was registered at enrollment; the CSR is for another key")]
    KeyNotRegistered,
    #[error("this device has been revoked")]
    Revoked,
    #[error("the CSR's common name must be the device serial or its thing name")]
    SubjectNotAllowed,
    #[error("a certificate has already been issued to this device for another key")]
    AlreadyIssued,
    /// Renewal: unknown serial, or the signature does not verify with the key of the
    /// certificate on record (one answer for both).
    #[error("the signature does not verify with this device's certificate on record")]
    InvalidSignature,
    #[error("this device has no certificate to renew or confirm; enroll it first")]
    NothingToRenew,
    #[error("the certificate on record expired longer ago than renewals allow; ops must re-enroll the device")]
    RenewalExpired,
    #[error("another enrollment for this serial is in progress")]
    InProgress { retry_after: Duration },
    #[error("a dependency is unavailable: {source}")]
    Unavailable {
        retry_after: Duration,
        #[source]
        source: PortError,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl VendError {
    pub fn code(&self) -> &'static str {
        match self {
            VendError::InvalidCredentials => "invalid_credentials",
            VendError::Locked { .. } => "enrollment_locked",
            VendError::KeyNotRegistered => "csr_key_not_registered",
            VendError::Revoked => "device_revoked",
            VendError::SubjectNotAllowed => "csr_subject_not_allowed",
            VendError::AlreadyIssued => "already_issued",
            VendError::InvalidSignature => "invalid_signature",
            VendError::NothingToRenew => "nothing_to_renew",
            VendError::RenewalExpired => "renewal_expired",
            VendError::InProgress { .. } => "enrollment_in_progress",
            VendError::Unavailable { source, .. } if source.kind == FailureKind::Throttled => {
                "service_busy"
            }
            VendError::Unavailable { .. } => "service_unavailable",
            VendError::Internal(_) => "internal_error",
        }
    }
}

/// Maps a failed dependency call: throttling and outages are worth a retry later (503 with
/// Retry-After); anything else (access denied, a bad configuration) is our fault (500).
pub fn unavailable(source: PortError) -> VendError {
    let retry_after = match source.kind {
        FailureKind::Throttled => Duration::from_secs(2),
        FailureKind::Unavailable | FailureKind::NotFound => Duration::from_secs(5),
        FailureKind::Other => return VendError::Internal(source.to_string()),
    };
    VendError::Unavailable {
        retry_after,
        source,
    }
}

/// A clock, injectable so tests can expire claims and lockouts.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub struct Vendor<S, I, R> {
    pub(crate) store: S,
    pub(crate) issuer: I,
    pub(crate) registry: R,
    pub(crate) config: VendConfig,
    pub(crate) clock: Clock,
    pacer: crate::pacing::Pacer,
}

impl<S: DeviceStore, I: CertificateIssuer, R: ThingRegistry> Vendor<S, I, R> {
    pub fn new(store: S, issuer: I, registry: R, config: VendConfig) -> Self {
        Self::with_clock(
            store,
            issuer,
            registry,
            config,
            Arc::new(OffsetDateTime::now_utc),
        )
    }

    pub fn with_clock(store: S, issuer: I, registry: R, config: VendConfig, clock: Clock) -> Self {
        Self {
            pacer: crate::pacing::Pacer::new(config.quotas.clone()),
            store,
            issuer,
            registry,
            config,
            clock,
        }
    }

    /// A throttling refusal's Retry-After from the throttled operation's quota.
    pub(crate) fn paced(&self, error: VendError) -> VendError {
        match error {
            VendError::Unavailable { source, .. } if source.kind == FailureKind::Throttled => {
                let retry_after = self
                    .pacer
                    .retry_after(source.operation, std::time::Instant::now());
                VendError::Unavailable {
                    retry_after,
                    source,
                }
            }
            other => other,
        }
    }

    pub fn config(&self) -> &VendConfig {
        &self.config
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub(crate) fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    #[tracing::instrument(name = "vend", skip_all, fields(serial = %request.serial, key = %request.csr.fingerprint()))]
    pub async fn vend(&self, request: &VendRequest) -> Result<VendOutcome, VendError> {
        self.vend_once(request).await.map_err(|e| self.paced(e))
    }

    async fn vend_once(&self, request: &VendRequest) -> Result<VendOutcome, VendError> {
        let serial = &request.serial;
        let now = self.now().unix_timestamp();
        let claim = Claim {
            id: new_claim_id()?,
            fingerprint: request.csr.fingerprint().clone(),
            claimed_at: now,
            pending: None,
        };
        let admission = Admission {
            token_hash: request.token.as_ref().map(Token::hash),
            fingerprint: request.csr.fingerprint().clone(),
            common_name: request.csr.common_name().to_owned(),
            now,
        };
        let admitted = self
            .store
            .admit(serial, &admission, &Change::Claim(claim.clone()))
            .await
            .map_err(unavailable)?;
        let record = match admitted {
            Admitted::Applied(record) => record,
            // The SDK retried a claim whose first answer was lost: the claim is ours.
            Admitted::Refused(Some(record)) if is_claimed_by(&record, &claim.id) => record,
            Admitted::Refused(None) => return Err(self.unknown_serial(serial, &admission).await),
            Admitted::Refused(Some(record)) => {
                return self.refused(request, &admission, record).await
            }
        };
        self.issue_claimed(request, &record, &claim).await
    }

    /// Why the claim was refused, from the record as it was; a vend that finds an expired
    /// claim takes it over.
    async fn refused(
        &self,
        request: &VendRequest,
        admission: &Admission,
        record: DeviceRecord,
    ) -> Result<VendOutcome, VendError> {
        let now = admission.now;
        if let Some(retry_after) = record.lockout.retry_after(now) {
            info!(reason = "locked out", "refused");
            return Err(VendError::Locked { retry_after });
        }
        if !admission.credentials_match(&record) {
            if admission.token_hash.is_some() && record_token_matches(admission, &record) {
                // The right token with another key than the registered one: not a guess.
                info!(reason = "key not registered", "refused");
                return Err(VendError::KeyNotRegistered);
            }
            self.count_failure(&record, now).await;
            return Err(VendError::InvalidCredentials);
        }
        let cn = request.csr.common_name();
        if cn != record.serial.as_str() && cn != record.thing_name.as_str() {
            return Err(VendError::SubjectNotAllowed);
        }
        match &record.status {
            DeviceStatus::Revoked { .. } => Err(VendError::Revoked),
            DeviceStatus::Issued { current, .. } => {
                if &current.fingerprint != request.csr.fingerprint() {
                    return Err(VendError::AlreadyIssued);
                }
                info!(certificate_id = %current.certificate.id, "replayed");
                let event = AuditEvent::new(
                    rfc3339(self.now()),
                    AuditKind::Replayed,
                    "device (vend)",
                    current.certificate.id.clone(),
                );
                let history = crate::audit::with_event(&record.history, event);
                self.note(&record, Change::Replayed(history)).await;
                Ok(VendOutcome::Replayed(
                    self.delivery(&record, current.clone()),
                ))
            }
            DeviceStatus::Claimed(claim) => {
                if claim.is_live(self.config.claim_lease, now) {
                    let left = claim.expires_at(self.config.claim_lease) - now;
                    return Err(VendError::InProgress {
                        retry_after: Duration::from_secs(
                            u64::try_from(left).unwrap_or(1).clamp(1, 30),
                        ),
                    });
                }
                self.take_over(request, &record, claim).await
            }
            // Changed between the claim and now (a vend released it): try again shortly.
            DeviceStatus::Enrolled => Err(VendError::InProgress {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The claim of a vend that died: take it over (carrying its pending certificate so the
    /// table keeps knowing it), remove what it left, and vend.
    async fn take_over(
        &self,
        request: &VendRequest,
        record: &DeviceRecord,
        stale: &Claim,
    ) -> Result<VendOutcome, VendError> {
        warn!(stale_claim = %stale.id, "taking over an expired claim");
        let claim = Claim {
            id: new_claim_id()?,
            fingerprint: request.csr.fingerprint().clone(),
            claimed_at: self.now().unix_timestamp(),
            pending: stale.pending.clone(),
        };
        let change = Change::Claim(claim.clone());
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
        let record = change.apply(record);
        if let Some(leftover) = &stale.pending {
            // Keep the claim (and so the record of the leftover) if this fails: the next
            // attempt after the lease will try again.
            self.undo(&record, leftover).await.map_err(unavailable)?;
        }
        self.issue_claimed(request, &record, &claim).await
    }

    /// Steps 2 to 5 under the claim; on a failure that was undone, the claim is released.
    async fn issue_claimed(
        &self,
        request: &VendRequest,
        record: &DeviceRecord,
        claim: &Claim,
    ) -> Result<VendOutcome, VendError> {
        match self.issue_under_claim(request, record, claim).await {
            Ok(delivery) => Ok(VendOutcome::Issued(delivery)),
            Err(Failure { error, undone }) => {
                if undone {
                    self.release(&request.serial, &claim.id).await;
                }
                Err(error)
            }
        }
    }

    async fn release(&self, serial: &Serial, claim_id: &str) {
        let guard = Guard::Claim(claim_id.to_owned());
        if let Err(e) = self.store.apply(serial, &guard, &Change::Release).await {
            // The claim expires by itself; the token is usable again after the lease.
            warn!(error = %e, "could not release the claim");
        }
    }

    async fn issue_under_claim(
        &self,
        request: &VendRequest,
        record: &DeviceRecord,
        claim: &Claim,
    ) -> Result<Delivery, Failure> {
        let serial = &request.serial;
        let policy = self.config.policy_for(record);

        let (issued, thing) = tokio::join!(
            self.issuer.issue(&request.csr),
            self.registry
                .ensure_thing(&record.thing_name, &record.attributes),
        );
        let NewCertificate {
            certificate,
            certificate_pem,
        } = issued.map_err(|e| Failure::undone(unavailable(e)))?;
        info!(certificate_id = %certificate.id, "certificate created (inactive)");

        if let Err(e) = thing {
            return Err(self
                .fail_and_undo(record, &certificate, unavailable(e))
                .await);
        }
        if let Err(err) = check_issued_key(&request.csr, &certificate_pem) {
            return Err(self.fail_and_undo(record, &certificate, err).await);
        }

        let guard = Guard::Claim(claim.id.clone());
        let record_pending = Change::Pending(certificate.clone());
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
            return Err(self.fail_and_undo(record, &certificate, err).await);
        }

        // Never activate when a takeover could be deciding on this claim right now.
        let elapsed = self.now().unix_timestamp() - claim.claimed_at;
        let allowed = self
            .config
            .claim_lease
            .saturating_sub(self.config.activation_margin);
        if u64::try_from(elapsed).unwrap_or(u64::MAX) >= allowed.as_secs() {
            let err = VendError::Unavailable {
                retry_after: Duration::from_secs(1),
                source: PortError::new(FailureKind::Unavailable, "vend")
                    .with_code("ClaimLeaseNearlyOver"),
            };
            return Err(self.fail_and_undo(record, &certificate, err).await);
        }
        if let Err(e) = self.issuer.activate(&certificate).await {
            return Err(self
                .fail_and_undo(record, &certificate, unavailable(e))
                .await);
        }

        let issued = IssuedCertificate {
            certificate: certificate.clone(),
            certificate_pem,
            fingerprint: request.csr.fingerprint().clone(),
            issued_at: rfc3339(self.now()),
            door: Door::Vend,
        };
        let event = AuditEvent::new(
            issued.issued_at.clone(),
            AuditKind::Issued,
            "device (vend)",
            certificate.id.clone(),
        );
        let completed = self
            .store
            .apply(serial, &guard, &Change::Complete(issued.clone(), event))
            .await;
        match completed {
            Ok(Written::Done) => {}
            Ok(Written::ConditionFailed) | Err(_) => {
                self.settle_completion(record, claim, &certificate, completed)
                    .await?
            }
        }
        info!(certificate_id = %certificate.id, thing = %record.thing_name, policy = %policy, "issued");
        Ok(self.delivery(record, issued))
    }

    /// The final write failed or was refused; it may still have committed (its answer lost,
    /// the SDK's retry refused because the claim is gone). The record decides: issued with this
    /// certificate is a success; still claimed by us, nothing was written and the work is
    /// undone; unreadable, nothing is undone (the claim expires and a later vend settles it).
    async fn settle_completion(
        &self,
        record: &DeviceRecord,
        claim: &Claim,
        certificate: &CertificateRef,
        completed: Result<Written, PortError>,
    ) -> Result<(), Failure> {
        let error = match completed {
            Err(e) => unavailable(e),
            Ok(_) => lost_claim(),
        };
        match self.store.get(&record.serial).await {
            Ok(Some(now)) => match &now.status {
                DeviceStatus::Issued { current, .. }
                    if current.certificate.id == certificate.id =>
                {
                    info!(certificate_id = %certificate.id, "completion committed; its answer was lost");
                    Ok(())
                }
                _ => {
                    let still_ours = is_claimed_by(&now, &claim.id);
                    let failure = self.fail_and_undo(record, certificate, error).await;
                    // Only release a claim that is still ours.
                    Err(Failure {
                        undone: failure.undone && still_ours,
                        ..failure
                    })
                }
            },
            Ok(None) => Err(self.fail_and_undo(record, certificate, error).await),
            Err(read) => {
                error!(error = %read, certificate_id = %certificate.id, "completion unknown; left for the next attempt");
                Err(Failure {
                    error,
                    undone: false,
                })
            }
        }
    }

    async fn fail_and_undo(
        &self,
        record: &DeviceRecord,
        certificate: &CertificateRef,
        error: VendError,
    ) -> Failure {
        warn!(error = %error, certificate_id = %certificate.id, "vend failed; undoing");
        match self.undo(record, certificate).await {
            Ok(()) => Failure::undone(error),
            Err(e) => {
                // The certificate stays recorded as pending under the claim (or was never
                // activated); the next vend after the lease removes it.
                error!(error = %e, certificate_id = %certificate.id, "undo failed; left for the next attempt");
                Failure {
                    error,
                    undone: false,
                }
            }
        }
    }

    /// Remove a certificate that was never delivered, and its attachments. Each step accepts
    /// "already gone".
    pub(crate) async fn undo(
        &self,
        record: &DeviceRecord,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        let policy = self.config.policy_for(record);
        let (p, t) = tokio::join!(
            self.registry.detach_policy(&policy, certificate),
            self.registry
                .detach_thing_principal(&record.thing_name, certificate),
        );
        p?;
        t?;
        self.issuer.discard(certificate).await?;
        info!(certificate_id = %certificate.id, "certificate removed");
        Ok(())
    }

    /// An unknown serial does the same work as a wrong token (a constant-time comparison and
    /// a conditional write that fails here), so neither the answer nor its timing tells.
    async fn unknown_serial(&self, serial: &Serial, admission: &Admission) -> VendError {
        if let Some(presented) = &admission.token_hash {
            let _ = crate::TokenHash::placeholder().matches_hash(presented);
        }
        let failure = crate::Lockout::default().after_failure(&self.config.lockout, admission.now);
        let guard = Guard::Lockout(crate::Lockout::default());
        let _ = self
            .store
            .apply(serial, &guard, &Change::FailedAttempt(failure, None))
            .await;
        info!(reason = "unknown serial", "refused");
        VendError::InvalidCredentials
    }

    /// Counts a wrong token against the record's lockout. Concurrent wrong tokens each count:
    /// the write is conditional on the lockout as read, and re-read when it moved.
    pub(crate) async fn count_failure(&self, record: &DeviceRecord, now: i64) {
        crate::lifecycle::count_failure(&self.store, &self.config.lockout, record, now).await;
    }

    /// Records something that changes no state (a replay); a failure is logged, not raised.
    async fn note(&self, record: &DeviceRecord, change: Change) {
        let guard = Guard::Version(record.version);
        match self.store.apply(&record.serial, &guard, &change).await {
            Ok(Written::Done) => {}
            Ok(Written::ConditionFailed) => {
                info!("record changed meanwhile; the event is not in its history")
            }
            Err(e) => warn!(error = %e, "could not record the event"),
        }
    }

    pub(crate) fn delivery(&self, record: &DeviceRecord, issued: IssuedCertificate) -> Delivery {
        Delivery {
            thing_name: record.thing_name.clone(),
            policy_name: self.config.policy_for(record),
            issued,
            ca_certificates: self.config.ca_certificates.clone(),
            endpoints: self.config.endpoints.clone(),
            role_alias: self.config.role_alias.clone(),
        }
    }
}

/// The token matches the record's (whatever the key): used to tell a wrong key from a guess.
fn record_token_matches(admission: &Admission, record: &DeviceRecord) -> bool {
    match (&admission.token_hash, &record.credentials.token_hash) {
        (Some(presented), Some(stored)) => stored.matches_hash(presented),
        _ => false,
    }
}

pub(crate) fn is_claimed_by(record: &DeviceRecord, claim_id: &str) -> bool {
    matches!(&record.status, DeviceStatus::Claimed(c) if c.id == claim_id)
}

/// The issuer's certificate must carry the CSR's key; one that does not is never delivered.
pub(crate) fn check_issued_key(csr: &Csr, certificate_pem: &str) -> Result<(), VendError> {
    match csr.is_certified_by(certificate_pem) {
        Ok(true) => Ok(()),
        Ok(false) => Err(VendError::Internal(
            "the issuer returned a certificate for a different public key".into(),
        )),
        Err(e) => Err(VendError::Internal(format!(
            "the issuer returned an unreadable certificate: {e}"
        ))),
    }
}

pub(crate) struct Failure {
    pub(crate) error: VendError,
    pub(crate) undone: bool,
}

impl Failure {
    pub(crate) fn undone(error: VendError) -> Self {
        Self {
            error,
            undone: true,
        }
    }
}

pub(crate) fn lost_claim() -> VendError {
    VendError::Internal("the claim on the record was lost (lease exceeded)".into())
}

pub(crate) fn new_claim_id() -> Result<String, VendError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| VendError::Internal("system random source failed".into()))?;
    Ok(hex::encode(bytes))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    // Formatting a valid OffsetDateTime as RFC 3339 only fails for years outside 0..=9999.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
