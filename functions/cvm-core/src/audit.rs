//! The audit trail of a device: every change of state (enroll, vend, replay, lockout,
//! unlock, reenroll, renew, revoke), with when, what and who, kept in the device's own record
//! so that it is written by the same conditional write as the change it records.

/// Entries kept per record; the oldest are dropped first. A device changes state a handful
/// of times a year; the bound only matters against a flood of lockouts or replays.
pub const MAX_HISTORY: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Enrolled,
    /// A certificate was delivered (by the vend or by fleet provisioning).
    Issued,
    /// A device got the certificate it already had again.
    Replayed,
    /// Fleet provisioning replaced the certificate of a device that started over with the
    /// same key; the old one was deactivated.
    Replaced,
    /// Wrong tokens started a lockout.
    LockedOut,
    Unlocked,
    Reenrolled,
    RenewalIssued,
    RenewalConfirmed,
    RenewalAbandoned,
    Revoked,
}

impl AuditKind {
    const ALL: [AuditKind; 11] = [
        AuditKind::Enrolled,
        AuditKind::Issued,
        AuditKind::Replayed,
        AuditKind::Replaced,
        AuditKind::LockedOut,
        AuditKind::Unlocked,
        AuditKind::Reenrolled,
        AuditKind::RenewalIssued,
        AuditKind::RenewalConfirmed,
        AuditKind::RenewalAbandoned,
        AuditKind::Revoked,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            AuditKind::Enrolled => "enrolled",
            AuditKind::Issued => "issued",
            AuditKind::Replayed => "replayed",
            AuditKind::Replaced => "replaced",
            AuditKind::LockedOut => "locked-out",
            AuditKind::Unlocked => "unlocked",
            AuditKind::Reenrolled => "reenrolled",
            AuditKind::RenewalIssued => "renewal-issued",
            AuditKind::RenewalConfirmed => "renewal-confirmed",
            AuditKind::RenewalAbandoned => "renewal-abandoned",
            AuditKind::Revoked => "revoked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

/// One entry of a device's history. Never holds a secret: no token, no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// RFC 3339.
    pub at: String,
    pub kind: AuditKind,
    /// Who made the change: an operator's AWS principal, or `device` with the door it used.
    pub actor: String,
    /// What it was about (a certificate id, a lockout's length, ...).
    pub detail: String,
}

impl AuditEvent {
    pub fn new(
        at: impl Into<String>,
        kind: AuditKind,
        actor: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at: at.into(),
            kind,
            actor: actor.into(),
            detail: detail.into(),
        }
    }
}

/// A copy of `history` with `event` appended (bounded): for changes that rewrite the whole
/// history.
pub fn with_event(history: &[AuditEvent], event: AuditEvent) -> Vec<AuditEvent> {
    let mut h = history.to_vec();
    append(&mut h, event);
    h
}

/// Appends, dropping the oldest entries beyond [`MAX_HISTORY`].
pub fn append(history: &mut Vec<AuditEvent>, event: AuditEvent) {
    history.push(event);
    if history.len() > MAX_HISTORY {
        let excess = history.len() - MAX_HISTORY;
        history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in AuditKind::ALL {
            assert_eq!(AuditKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(AuditKind::parse("nope"), None);
    }

    #[test]
    fn history_is_bounded_oldest_first_out() {
        let mut h = Vec::new();
        for i in 0..(MAX_HISTORY + 5) {
            append(
                &mut h,
                AuditEvent::new(i.to_string(), AuditKind::Replayed, "device", ""),
            );
        }
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h[0].at, "5");
        assert_eq!(h[MAX_HISTORY - 1].at, (MAX_HISTORY + 4).to_string());
    }
}
