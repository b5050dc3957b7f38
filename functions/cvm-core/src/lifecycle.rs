//! What happens to a record after enrollment, other than a device's own requests: wrong tokens
//! counted, and what ops do (unlock, revoke, re-enroll). Every change is one conditional write
//! on the record's version, recorded in its history with the operator's principal.

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::domain::Serial;
use crate::lockout::LockoutPolicy;
use crate::ports::{CertificateIssuer, DeviceStore, PortError, ThingRegistry, Written};
use crate::record::{
    CertificateRef, Change, Credentials, DeviceRecord, DeviceStatus, Guard, Renewal,
};
use crate::vend::rfc3339;

/// How many times a write is retried when the record moved under it.
const RETRIES: usize = 3;

fn at(now: i64) -> String {
    OffsetDateTime::from_unix_timestamp(now)
        .map(rfc3339)
        .unwrap_or_else(|_| now.to_string())
}

/// Counts a wrong token (or a wrong key without a token) against the record's lockout.
/// Concurrent failures each count: the write is conditional on the lockout as read, and the
/// record is read again when it moved. A failure to count is logged, never raised: the caller
/// refuses the request either way.
pub async fn count_failure<S: DeviceStore>(
    store: &S,
    policy: &LockoutPolicy,
    record: &DeviceRecord,
    now: i64,
) {
    let mut current = record.clone();
    for _ in 0..RETRIES {
        let next = current.lockout.after_failure(policy, now);
        let window = next.retry_after(now);
        let history = next.opened_window(&current.lockout, now).then(|| {
            crate::audit::with_event(
                &current.history,
                AuditEvent::new(
                    at(now),
                    AuditKind::LockedOut,
                    "device",
                    format!(
                        "{} wrong tokens; closed for {} s",
                        next.failures,
                        window.map(|w| w.as_secs()).unwrap_or(0)
                    ),
                ),
            )
        });
        let guard = match history {
            Some(_) => Guard::VersionAndLockout(current.version, current.lockout.clone()),
            None => Guard::Lockout(current.lockout.clone()),
        };
        let change = Change::FailedAttempt(next.clone(), history);
        match store.apply(&record.serial, &guard, &change).await {
            Ok(Written::Done) => {
                match window {
                    Some(w) => warn!(
                        failed_attempts = next.failures,
                        locked_for_s = w.as_secs(),
                        "wrong token; serial slowed down"
                    ),
                    None => info!(
                        reason = "wrong token",
                        failed_attempts = next.failures,
                        "refused"
                    ),
                }
                return;
            }
            Ok(Written::ConditionFailed) => match store.get(&record.serial).await {
                Ok(Some(r)) => current = r,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "could not count a wrong token");
                    return;
                }
            },
            Err(e) => {
                warn!(error = %e, "could not count a wrong token");
                return;
            }
        }
    }
    warn!("could not count a wrong token: the record kept changing");
}

/// Why an operation on a record could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("serial {0} is not enrolled")]
    NotEnrolled(Serial),
    #[error("a vend or renewal for {0} is in progress; run this again after {1} s")]
    InProgress(Serial, i64),
    #[error("the record of {0} changed while this ran; run it again")]
    Changed(Serial),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Changed(DeviceRecord),
    /// Nothing needed doing.
    Unchanged(DeviceRecord),
}

/// Ops lifts a lockout: the failures are forgotten at once.
pub async fn unlock<S: DeviceStore>(
    store: &S,
    serial: &Serial,
    actor: &str,
    now: i64,
) -> Result<Done, LifecycleError> {
    let record = read(store, serial).await?;
    if record.lockout == crate::Lockout::default() {
        return Ok(Done::Unchanged(record));
    }
    let detail = format!("{} failures forgotten", record.lockout.failures);
    let change = Change::Unlocked(AuditEvent::new(at(now), AuditKind::Unlocked, actor, detail));
    write(store, &record, change).await
}

/// The certificates a record names that are (or may be) in AWS IoT, and whether each was
/// delivered to the device (delivered ones are revoked, others discarded).
fn certificates_of(record: &DeviceRecord) -> Vec<(CertificateRef, bool)> {
    match &record.status {
        DeviceStatus::Claimed(c) => c.pending.iter().map(|p| (p.clone(), false)).collect(),
        DeviceStatus::Issued { current, renewal } => {
            let mut out = vec![(current.certificate.clone(), true)];
            match renewal {
                Some(Renewal::Proposed(p)) => out.push((p.certificate.clone(), true)),
                Some(Renewal::InProgress(c)) => {
                    out.extend(c.pending.iter().map(|p| (p.clone(), false)))
                }
                None => {}
            }
            out
        }
        DeviceStatus::Enrolled | DeviceStatus::Revoked { .. } => Vec::new(),
    }
}

/// Takes every certificate a record names out of use: delivered ones REVOKED (in AWS IoT and
/// at the CA where it supports it), undelivered ones deleted; all detached from the thing and
/// every policy. Each step accepts "already done", so a run that failed half-way can be
/// repeated. Refuses while a vend or renewal holds a live claim.
async fn retire_certificates<I, R>(
    issuer: &I,
    registry: &R,
    record: &DeviceRecord,
    lease: std::time::Duration,
    now: i64,
) -> Result<Option<CertificateRef>, LifecycleError>
where
    I: CertificateIssuer,
    R: ThingRegistry,
{
    let live_claim = match &record.status {
        DeviceStatus::Claimed(c) => Some(c),
        DeviceStatus::Issued {
            renewal: Some(Renewal::InProgress(c)),
            ..
        } => Some(c),
        _ => None,
    };
    if let Some(c) = live_claim {
        if c.is_live(lease, now) {
            return Err(LifecycleError::InProgress(
                record.serial.clone(),
                c.expires_at(lease) - now,
            ));
        }
    }
    let mut revoked = None;
    for (certificate, delivered) in certificates_of(record) {
        if delivered {
            issuer.revoke(&certificate).await?;
        }
        registry
            .detach_thing_principal(&record.thing_name, &certificate)
            .await?;
        registry.detach_all_policies(&certificate).await?;
        if delivered {
            info!(certificate_id = %certificate.id, "certificate revoked and detached");
            revoked.get_or_insert(certificate);
        } else {
            issuer.discard(&certificate).await?;
            info!(certificate_id = %certificate.id, "undelivered certificate removed");
        }
    }
    Ok(revoked)
}

/// Ops revokes a device: its certificates are revoked (and detached), then the record becomes
/// `revoked` (conditional on its version); the device's token and key are refused from then
/// on. Certificates go first: if the record cannot be written, the device can no longer
/// connect, and running it again finishes the job.
pub async fn revoke<S, I, R>(
    store: &S,
    issuer: &I,
    registry: &R,
    serial: &Serial,
    actor: &str,
    lease: std::time::Duration,
    now: i64,
) -> Result<Done, LifecycleError>
where
    S: DeviceStore,
    I: CertificateIssuer,
    R: ThingRegistry,
{
    let record = read(store, serial).await?;
    if let DeviceStatus::Revoked { .. } = record.status {
        return Ok(Done::Unchanged(record));
    }
    let certificate = retire_certificates(issuer, registry, &record, lease, now).await?;
    let detail = certificate
        .as_ref()
        .map(|c| format!("certificate {}", c.id))
        .unwrap_or_else(|| "no certificate had been issued".into());
    let change = Change::Revoked {
        at: at(now),
        certificate,
        event: AuditEvent::new(at(now), AuditKind::Revoked, actor, detail),
    };
    write(store, &record, change).await
}

/// Ops gives a device that lost its identity (a board swap, a re-flashed card) a way back:
/// its certificates are revoked first, then the record is `enrolled` again with new
/// credentials (a new token's hash and/or a registered key); its history is kept.
#[allow(clippy::too_many_arguments)]
pub async fn reenroll<S, I, R>(
    store: &S,
    issuer: &I,
    registry: &R,
    serial: &Serial,
    credentials: Credentials,
    actor: &str,
    lease: std::time::Duration,
    now: i64,
) -> Result<Done, LifecycleError>
where
    S: DeviceStore,
    I: CertificateIssuer,
    R: ThingRegistry,
{
    let record = read(store, serial).await?;
    let certificate = retire_certificates(issuer, registry, &record, lease, now).await?;
    let mut detail = String::from("new ");
    detail.push_str(
        match (&credentials.token_hash, &credentials.registered_key) {
            (Some(_), Some(_)) => "token and registered key",
            (Some(_), None) => "token",
            (None, Some(_)) => "registered key",
            (None, None) => "credentials (none: the device cannot enroll until reenrolled again)",
        },
    );
    if let Some(c) = &certificate {
        detail.push_str(&format!("; certificate {} revoked", c.id));
    }
    let change = Change::Reenrolled(
        credentials,
        AuditEvent::new(at(now), AuditKind::Reenrolled, actor, detail),
    );
    write(store, &record, change).await
}

async fn read<S: DeviceStore>(store: &S, serial: &Serial) -> Result<DeviceRecord, LifecycleError> {
    store
        .get(serial)
        .await?
        .ok_or_else(|| LifecycleError::NotEnrolled(serial.clone()))
}

async fn write<S: DeviceStore>(
    store: &S,
    record: &DeviceRecord,
    change: Change,
) -> Result<Done, LifecycleError> {
    match store
        .apply(&record.serial, &Guard::Version(record.version), &change)
        .await?
    {
        Written::Done => Ok(Done::Changed(change.apply(record))),
        Written::ConditionFailed => Err(LifecycleError::Changed(record.serial.clone())),
    }
}

/// A new enrollment's credentials from what ops gave.
pub fn credentials(
    token: Option<&crate::Token>,
    registered_key: Option<crate::KeyFingerprint>,
) -> Credentials {
    Credentials {
        token_hash: token.map(crate::Token::hash),
        registered_key,
    }
}

/// A proposed renewal older than `grace` that the device never confirmed: its certificate is
/// revoked and detached (the current one stays), and the proposal is forgotten. Returns the
/// record after, or `None` when there was nothing to abandon.
pub async fn abandon_expired_renewal<S, I, R>(
    store: &S,
    issuer: &I,
    registry: &R,
    record: &DeviceRecord,
    grace: std::time::Duration,
    actor: &str,
    now: i64,
) -> Result<Option<DeviceRecord>, LifecycleError>
where
    S: DeviceStore,
    I: CertificateIssuer,
    R: ThingRegistry,
{
    let DeviceStatus::Issued {
        renewal: Some(Renewal::Proposed(proposed)),
        ..
    } = &record.status
    else {
        return Ok(None);
    };
    let issued_at = time::OffsetDateTime::parse(
        &proposed.issued_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| t.unix_timestamp())
    .unwrap_or(0);
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    if now <= issued_at.saturating_add(grace) {
        return Ok(None);
    }
    let certificate = &proposed.certificate;
    issuer.revoke(certificate).await?;
    registry
        .detach_thing_principal(&record.thing_name, certificate)
        .await?;
    registry.detach_all_policies(certificate).await?;
    let event = AuditEvent::new(
        at(now),
        AuditKind::RenewalAbandoned,
        actor,
        format!(
            "certificate {} revoked: not confirmed within the grace period",
            certificate.id
        ),
    );
    match write(store, record, Change::RenewalAbandoned(Some(event))).await? {
        Done::Changed(r) | Done::Unchanged(r) => Ok(Some(r)),
    }
}
