//! The vending workflow: from `{serial, token, csr}` to a certificate attached to a thing.
//!
//! Critical path, in sequential AWS round trips:
//! 1. read the record;
//! 2. claim it (conditional write on its version);
//! 3. issue the certificate (inactive) ‖ create the thing;
//! 4. record the pending certificate ‖ attach the policy ‖ attach the certificate to the thing;
//! 5. activate the certificate;
//! 6. mark the record issued.
//!
//! Faults lose nothing: a failed step undoes what was done (detach, deactivate, delete) and
//! releases the claim, so the token stays usable. A certificate only becomes active after the
//! table knows its id, so a vend that dies anywhere leaves no active certificate the table does
//! not know; a later vend takes over the expired claim and removes what the dead one left.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::csr::Csr;
use crate::domain::{Serial, ThingName, Token, TokenHash};
use crate::ports::{
    CertificateIssuer, DeviceStore, FailureKind, NewCertificate, PortError, ThingRegistry, Written,
};
use crate::record::{CertificateRef, Claim, DeviceRecord, DeviceStatus, IssuedCertificate};
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
    /// Wrong tokens allowed before the serial locks.
    pub max_failed_attempts: u32,
    /// How long a claim protects a vend in progress. Longer than the function's timeout, so
    /// a claim is only taken over from a vend that is surely dead.
    pub claim_lease: Duration,
    pub endpoints: Endpoints,
    /// PEM certificates a device should trust (the CA chain of its certificate and of the
    /// endpoints).
    pub ca_certificates: Vec<String>,
    /// The IoT role alias for the credentials provider, if the deployment has one.
    pub role_alias: Option<String>,
}

/// A request whose every part has been parsed.
#[derive(Debug)]
pub struct VendRequest {
    pub serial: Serial,
    pub token: Token,
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
    #[error("too many wrong tokens; the enrollment is locked until it is renewed")]
    Locked,
    #[error("this device has been revoked")]
    Revoked,
    #[error("the CSR's common name must be the device serial or its thing name")]
    SubjectNotAllowed,
    #[error("a certificate has already been issued to this device for another key")]
    AlreadyIssued,
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
            VendError::Locked => "enrollment_locked",
            VendError::Revoked => "device_revoked",
            VendError::SubjectNotAllowed => "csr_subject_not_allowed",
            VendError::AlreadyIssued => "already_issued",
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
fn unavailable(source: PortError) -> VendError {
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

/// A clock, injectable so tests can expire claims.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub struct Vendor<S, I, R> {
    store: S,
    issuer: I,
    registry: R,
    config: VendConfig,
    clock: Clock,
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
            store,
            issuer,
            registry,
            config,
            clock,
        }
    }

    pub fn config(&self) -> &VendConfig {
        &self.config
    }

    #[tracing::instrument(name = "vend", skip_all, fields(serial = %request.serial, key = %request.csr.fingerprint()))]
    pub async fn vend(&self, request: &VendRequest) -> Result<VendOutcome, VendError> {
        let serial = &request.serial;
        let record = self.store.get(serial).await.map_err(unavailable)?;
        let Some(record) = record else {
            // The same work as a wrong token (a hash comparison and a conditional write that
            // fails here), so neither the answer nor its timing tells unknown serials apart.
            let _ = TokenHash::placeholder().matches(&request.token);
            let _ = self.store.record_failed_attempt(serial).await;
            info!(reason = "unknown serial", "refused");
            return Err(VendError::InvalidCredentials);
        };
        if !record.token_hash.matches(&request.token) {
            self.count_failed_attempt(&record).await;
            return Err(VendError::InvalidCredentials);
        }
        if record.failed_attempts >= self.config.max_failed_attempts {
            return Err(VendError::Locked);
        }
        let cn = request.csr.common_name();
        if cn != serial.as_str() && cn != record.thing_name.as_str() {
            return Err(VendError::SubjectNotAllowed);
        }

        let now = (self.clock)();
        let mut stale_pending = None;
        match &record.status {
            DeviceStatus::Revoked { .. } => return Err(VendError::Revoked),
            DeviceStatus::Issued(issued) => {
                if &issued.fingerprint == request.csr.fingerprint() {
                    info!(certificate_id = %issued.certificate.id, "replayed");
                    return Ok(VendOutcome::Replayed(
                        self.delivery(&record, issued.clone()),
                    ));
                }
                return Err(VendError::AlreadyIssued);
            }
            DeviceStatus::Claimed(claim) => {
                let lease = i64::try_from(self.config.claim_lease.as_secs()).unwrap_or(i64::MAX);
                let expires = claim.claimed_at.saturating_add(lease);
                if now.unix_timestamp() < expires {
                    let left = u64::try_from(expires - now.unix_timestamp()).unwrap_or(1);
                    return Err(VendError::InProgress {
                        retry_after: Duration::from_secs(left.clamp(1, 30)),
                    });
                }
                warn!(stale_claim = %claim.id, "taking over an expired claim");
                stale_pending = claim.pending.clone();
            }
            DeviceStatus::Enrolled => {}
        }

        let claim = Claim {
            id: new_claim_id()?,
            fingerprint: request.csr.fingerprint().clone(),
            claimed_at: now.unix_timestamp(),
            // Carried over so the table keeps knowing a dead vend's certificate until it is gone.
            pending: stale_pending.clone(),
        };
        match self
            .store
            .claim(serial, record.version, &claim)
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

        if let Some(stale) = &stale_pending {
            // Keep the claim (and so the record of the stale certificate) if this fails: the
            // next attempt after the lease will try again.
            self.undo(&record, stale).await.map_err(unavailable)?;
        }

        match self.issue_under_claim(request, &record, &claim).await {
            Ok(delivery) => Ok(VendOutcome::Issued(delivery)),
            Err(Failure { error, undone }) => {
                if undone {
                    if let Err(e) = self.store.release(serial, &claim.id).await {
                        // The claim expires by itself; the token is usable again after the lease.
                        warn!(error = %e, "could not release the claim");
                    }
                }
                Err(error)
            }
        }
    }

    /// Steps 3 to 6. On failure, says whether the work was undone (so the claim may be released).
    async fn issue_under_claim(
        &self,
        request: &VendRequest,
        record: &DeviceRecord,
        claim: &Claim,
    ) -> Result<Delivery, Failure> {
        let serial = &request.serial;
        let policy = self.policy_for(record);

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
        match request.csr.is_certified_by(&certificate_pem) {
            Ok(true) => {}
            Ok(false) => {
                let err = VendError::Internal(
                    "the issuer returned a certificate for a different public key".into(),
                );
                return Err(self.fail_and_undo(record, &certificate, err).await);
            }
            Err(e) => {
                let err = VendError::Internal(format!(
                    "the issuer returned an unreadable certificate: {e}"
                ));
                return Err(self.fail_and_undo(record, &certificate, err).await);
            }
        }

        let (pending, policy_attached, thing_attached) = tokio::join!(
            self.store.record_pending(serial, &claim.id, &certificate),
            self.registry.attach_policy(&policy, &certificate),
            self.registry
                .attach_thing_principal(&record.thing_name, &certificate),
        );
        let step4 = match (pending, policy_attached, thing_attached) {
            (Ok(Written::Done), Ok(()), Ok(())) => Ok(()),
            (Ok(Written::ConditionFailed), _, _) => Err(lost_claim()),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(unavailable(e)),
        };
        if let Err(err) = step4 {
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
            issued_at: rfc3339((self.clock)()),
        };
        let completed = match self.store.complete(serial, &claim.id, &issued).await {
            Ok(Written::Done) => Ok(()),
            Ok(Written::ConditionFailed) => Err(lost_claim()),
            Err(e) => Err(unavailable(e)),
        };
        if let Err(err) = completed {
            return Err(self.fail_and_undo(record, &certificate, err).await);
        }
        info!(certificate_id = %certificate.id, thing = %record.thing_name, policy = %policy, "issued");
        Ok(self.delivery(record, issued))
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

    /// Remove a certificate and its attachments. Each step accepts "already gone".
    async fn undo(
        &self,
        record: &DeviceRecord,
        certificate: &CertificateRef,
    ) -> Result<(), PortError> {
        let policy = self.policy_for(record);
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

    async fn count_failed_attempt(&self, record: &DeviceRecord) {
        // Counted even when already locked, so a locked serial answers as fast as any other.
        match self.store.record_failed_attempt(&record.serial).await {
            Ok(n) if n == self.config.max_failed_attempts => {
                warn!(
                    failed_attempts = n,
                    lockout = true,
                    "serial locked after repeated wrong tokens"
                );
            }
            Ok(n) => info!(
                reason = "wrong token",
                failed_attempts = n,
                locked = n >= self.config.max_failed_attempts,
                "refused"
            ),
            Err(e) => warn!(error = %e, "could not count a wrong token"),
        }
    }

    fn policy_for(&self, record: &DeviceRecord) -> PolicyName {
        record
            .policy_name
            .clone()
            .unwrap_or_else(|| self.config.default_policy.clone())
    }

    fn delivery(&self, record: &DeviceRecord, issued: IssuedCertificate) -> Delivery {
        Delivery {
            thing_name: record.thing_name.clone(),
            policy_name: self.policy_for(record),
            issued,
            ca_certificates: self.config.ca_certificates.clone(),
            endpoints: self.config.endpoints.clone(),
            role_alias: self.config.role_alias.clone(),
        }
    }
}

struct Failure {
    error: VendError,
    undone: bool,
}

impl Failure {
    fn undone(error: VendError) -> Self {
        Self {
            error,
            undone: true,
        }
    }
}

fn lost_claim() -> VendError {
    VendError::Internal("the claim on the record was lost (lease exceeded)".into())
}

fn new_claim_id() -> Result<String, VendError> {
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
