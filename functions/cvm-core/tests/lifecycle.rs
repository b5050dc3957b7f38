//! What ops do to a record: unlock, revoke (also a serial whose claim expired), re-enroll;
//! each one conditional write, each recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use cvm_core::lifecycle::{self, Done, LifecycleError};
use cvm_core::ports::FailureKind;
use cvm_core::testing::CertStatus;
use cvm_core::*;

const LEASE: Duration = Duration::from_secs(60);

fn serial(s: &str) -> Serial {
    Serial::parse(s).unwrap()
}

#[tokio::test]
async fn revoke_takes_the_certificate_out_of_use_then_marks_the_record() {
    let h = Harness::new();
    h.enroll("SN-X1").await;
    let d = delivery(
        h.vendor
            .vend(&request("SN-X1", Some(TOKEN), &csr_for("SN-X1")))
            .await
            .unwrap(),
    );
    let done = lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &serial("SN-X1"),
        "arn:ops",
        LEASE,
        h.time(),
    )
    .await
    .unwrap();
    let Done::Changed(record) = done else {
        panic!("expected a change")
    };
    assert!(matches!(
        &record.status,
        DeviceStatus::Revoked { certificate: Some(c), .. } if c == &d.issued.certificate
    ));
    {
        let state = h.iot.state.lock().unwrap();
        assert_eq!(
            state.certificates[&d.issued.certificate.id].status,
            CertStatus::Revoked
        );
        assert!(state.thing_principals.is_empty() && state.policy_attachments.is_empty());
    }
    let last = record.history.last().unwrap();
    assert_eq!(
        (last.kind, last.actor.as_str()),
        (AuditKind::Revoked, "arn:ops")
    );
    // Running it again changes nothing.
    assert!(matches!(
        lifecycle::revoke(
            &h.store,
            &h.iot,
            &h.iot,
            &serial("SN-X1"),
            "arn:ops",
            LEASE,
            h.time()
        )
        .await
        .unwrap(),
        Done::Unchanged(_)
    ));
}

#[tokio::test]
async fn revoke_waits_for_a_live_claim_and_cleans_up_an_expired_one() {
    let h = Harness::new();
    h.enroll("SN-X2").await;
    // A vend that died after activating: the record holds its pending certificate.
    h.store
        .faults
        .fail_next("store.apply(complete)", FailureKind::Unavailable);
    h.store
        .faults
        .fail_next("store.get", FailureKind::Unavailable);
    let _ = h
        .vendor
        .vend(&request("SN-X2", Some(TOKEN), &csr_for("SN-X2")))
        .await;
    assert!(matches!(h.record("SN-X2").status, DeviceStatus::Claimed(_)));
    let err = lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &serial("SN-X2"),
        "ops",
        LEASE,
        h.time(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LifecycleError::InProgress(..)), "{err}");
    h.advance(61);
    lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &serial("SN-X2"),
        "ops",
        LEASE,
        h.time(),
    )
    .await
    .unwrap();
    assert!(matches!(
        h.record("SN-X2").status,
        DeviceStatus::Revoked { .. }
    ));
    assert_eq!(
        h.iot.certificate_count(),
        0,
        "the undelivered certificate is gone"
    );
}

#[tokio::test]
async fn revoke_is_conditional_on_the_version_it_read() {
    let h = Harness::new();
    h.enroll("SN-X3").await;
    h.store
        .faults
        .fail_next("store.apply(revoked)", FailureKind::Unavailable);
    assert!(lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &serial("SN-X3"),
        "ops",
        LEASE,
        h.time()
    )
    .await
    .is_err());
    assert_eq!(h.record("SN-X3").status, DeviceStatus::Enrolled);
}

#[tokio::test]
async fn reenroll_revokes_and_a_new_token_gets_a_new_certificate() {
    let h = Harness::new();
    h.enroll("SN-X4").await;
    let old = delivery(
        h.vendor
            .vend(&request("SN-X4", Some(TOKEN), &csr_for("SN-X4")))
            .await
            .unwrap(),
    );
    let new_token = "a-brand-new-token-for-sn-x4";
    lifecycle::reenroll(
        &h.store,
        &h.iot,
        &h.iot,
        &serial("SN-X4"),
        lifecycle::credentials(Some(&Token::parse(new_token).unwrap()), None),
        "arn:ops",
        LEASE,
        h.time(),
    )
    .await
    .unwrap();
    assert_eq!(
        h.iot.state.lock().unwrap().certificates[&old.issued.certificate.id].status,
        CertStatus::Revoked
    );
    // The old token is spent for good; the new one works once.
    let err = h
        .vendor
        .vend(&request("SN-X4", Some(TOKEN), &csr_for("SN-X4")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_credentials");
    let new = delivery(
        h.vendor
            .vend(&request("SN-X4", Some(new_token), &csr_for("SN-X4")))
            .await
            .unwrap(),
    );
    assert_ne!(new.issued.certificate, old.issued.certificate);
    assert_eq!(h.iot.active_count(), 1);
    assert_eq!(
        kinds(&h.record("SN-X4")),
        [
            AuditKind::Enrolled,
            AuditKind::Issued,
            AuditKind::Reenrolled,
            AuditKind::Issued
        ],
        "the history is kept"
    );
}

#[tokio::test]
async fn unlock_lifts_a_lockout_at_once() {
    let h = Harness::new();
    h.enroll("SN-X5").await;
    for _ in 0..3 {
        let _ = h
            .vendor
            .vend(&request("SN-X5", Some(WRONG), &csr_for("SN-X5")))
            .await;
    }
    assert!(h.record("SN-X5").lockout.retry_after(h.time()).is_some());
    assert!(matches!(
        lifecycle::unlock(&h.store, &serial("SN-X5"), "arn:ops", h.time())
            .await
            .unwrap(),
        Done::Changed(_)
    ));
    assert!(h
        .vendor
        .vend(&request("SN-X5", Some(TOKEN), &csr_for("SN-X5")))
        .await
        .is_ok());
    let record = h.record("SN-X5");
    assert!(kinds(&record).contains(&AuditKind::Unlocked));
    assert!(matches!(
        lifecycle::unlock(&h.store, &serial("SN-X5"), "arn:ops", h.time())
            .await
            .unwrap(),
        Done::Unchanged(_)
    ));
    assert!(matches!(
        lifecycle::unlock(&h.store, &serial("NOPE"), "arn:ops", h.time()).await,
        Err(LifecycleError::NotEnrolled(_))
    ));
}
