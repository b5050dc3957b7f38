//! What the CLI shows of a record: everything ops need, never a token or a token hash (a
//! record says only whether it has a token). Certificate expiry is read from the certificate
//! itself.

use cvm_core::record::{Claim, IssuedCertificate};
use cvm_core::{DeviceRecord, DeviceStatus, Renewal};
use serde_json::{json, Value};

use crate::context::rfc3339;

/// The state `list --state` and the report use: the record's status, with `locked` apart.
pub fn state(record: &DeviceRecord) -> &'static str {
    record.status.name()
}

pub fn is_locked(record: &DeviceRecord, now: i64) -> bool {
    record.lockout.retry_after(now).is_some()
}

/// The certificate's `notAfter`, seconds since the epoch (`None`: unreadable PEM).
pub fn not_after(certificate: &IssuedCertificate) -> Option<i64> {
    cvm_core::csr::certificate_not_after(&certificate.certificate_pem).ok()
}

/// How a device proves itself at enrollment.
pub fn credentials(record: &DeviceRecord) -> &'static str {
    match (
        record.credentials.token_hash.is_some(),
        record.credentials.registered_key.is_some(),
    ) {
        (true, true) => "token+key",
        (true, false) => "token",
        (false, true) => "key",
        (false, false) => "none",
    }
}

pub fn certificate(c: &IssuedCertificate) -> Value {
    json!({
        "certificateId": c.certificate.id,
        "certificateArn": c.certificate.arn,
        "publicKeyFingerprint": c.fingerprint,
        "issuedAt": c.issued_at,
        "notAfter": not_after(c).map(rfc3339),
        "door": c.door.as_str(),
    })
}

fn claim(c: &Claim, lease: std::time::Duration, now: i64) -> Value {
    json!({
        "claimedAt": rfc3339(c.claimed_at),
        "leaseEndsAt": rfc3339(c.expires_at(lease)),
        "live": c.is_live(lease, now),
        "keyFingerprint": c.fingerprint,
        "pendingCertificateId": c.pending.as_ref().map(|p| &p.id),
    })
}

/// One line of `list --json`: the record's summary.
pub fn summary(record: &DeviceRecord, now: i64) -> Value {
    let current = match &record.status {
        DeviceStatus::Issued { current, .. } => Some(current),
        _ => None,
    };
    json!({
        "serial": record.serial,
        "thingName": record.thing_name,
        "state": state(record),
        "locked": is_locked(record, now),
        "credentials": credentials(record),
        "policyName": record.policy_name,
        "certificateId": current.map(|c| &c.certificate.id),
        "notAfter": current.and_then(not_after).map(rfc3339),
        "renewal": match &record.status {
            DeviceStatus::Issued { renewal: Some(Renewal::InProgress(_)), .. } => Some("in-progress"),
            DeviceStatus::Issued { renewal: Some(Renewal::Proposed(_)), .. } => Some("proposed"),
            _ => None,
        },
        "enrolledAt": record.enrolled_at,
    })
}

/// `show`: the whole record, without secrets.
pub fn detail(record: &DeviceRecord, lease: std::time::Duration, now: i64) -> Value {
    let lockout = &record.lockout;
    let mut out = json!({
        "serial": record.serial,
        "thingName": record.thing_name,
        "policyName": record.policy_name,
        "attributes": record.attributes,
        "state": state(record),
        "credentials": {
            "token": record.credentials.token_hash.is_some(),
            "registeredKey": record.credentials.registered_key,
        },
        "lockout": {
            "locked": is_locked(record, now),
            "failedAttempts": lockout.failures,
            "lastFailureAt": (lockout.last_failure_at > 0).then(|| rfc3339(lockout.last_failure_at)),
            "lockedUntil": (lockout.locked_until > 0).then(|| rfc3339(lockout.locked_until)),
            "retryAfterSeconds": lockout.retry_after(now).map(|d| d.as_secs()),
        },
        "version": record.version,
        "enrolledAt": record.enrolled_at,
        "historyEntries": record.history.len(),
    });
    match &record.status {
        DeviceStatus::Enrolled => {}
        DeviceStatus::Claimed(c) => out["claim"] = claim(c, lease, now),
        DeviceStatus::Issued { current, renewal } => {
            out["certificate"] = certificate(current);
            match renewal {
                None => {}
                Some(Renewal::InProgress(c)) => {
                    out["renewal"] = json!({"state": "in-progress", "claim": claim(c, lease, now)});
                }
                Some(Renewal::Proposed(p)) => {
                    out["renewal"] = json!({"state": "proposed", "certificate": certificate(p)});
                }
            }
        }
        DeviceStatus::Revoked {
            revoked_at,
            certificate,
        } => {
            out["revoked"] = json!({
                "revokedAt": revoked_at,
                "certificateId": certificate.as_ref().map(|c| &c.id),
                "certificateArn": certificate.as_ref().map(|c| &c.arn),
            });
        }
    }
    out
}

/// Left-aligned columns for people: each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use cvm_core::{AuditEvent, AuditKind, Serial, ThingName, Token};

    #[test]
    fn no_view_shows_the_token_or_its_hash() {
        let token = Token::generate().unwrap();
        let serial = Serial::parse("ZK-1").unwrap();
        let record = DeviceRecord::new_enrollment(
            serial.clone(),
            cvm_core::lifecycle::credentials(Some(&token), None),
            ThingName::from(&serial),
            None,
            Default::default(),
            AuditEvent::new("2026-01-01T00:00:00Z", AuditKind::Enrolled, "op", ""),
        );
        let hash = token.hash().to_hex();
        for v in [
            summary(&record, 0),
            detail(&record, std::time::Duration::from_secs(60), 0),
        ] {
            let text = v.to_string();
            assert!(!text.contains(token.expose_secret()), "{text}");
            assert!(!text.contains(&hash), "{text}");
        }
        assert_eq!(
            detail(&record, std::time::Duration::from_secs(60), 0)["credentials"]["token"],
            true
        );
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }
}
