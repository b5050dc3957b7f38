//! Renewal without a token: signed by the current key, proposed beside the current
//! certificate, confirmed by the new key; never two active certificates after the grace,
//! never none before the device holds the new one; interrupted at every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use cvm_core::ports::FailureKind;
use cvm_core::renew::{ConfirmOutcome, ConfirmRequest, RenewOutcome, RenewRequest};
use cvm_core::signature::{confirmation_message, renewal_message};
use cvm_core::testing::CertStatus;
use cvm_core::*;

const SERIAL: &str = "SN-R1";

/// A device enrolled through the vend, with its key.
async fn enrolled(h: &Harness) -> (Device, IssuedCertificate) {
    h.enroll(SERIAL).await;
    let device = Device::new();
    let d = delivery(
        h.vendor
            .vend(&request(SERIAL, Some(TOKEN), &device.csr(SERIAL)))
            .await
            .unwrap(),
    );
    (device, d.issued)
}

fn renew_request(signer: &Device, new: &Device) -> RenewRequest {
    let csr = Csr::parse_pem(&new.csr(SERIAL)).unwrap();
    let serial = Serial::parse(SERIAL).unwrap();
    RenewRequest {
        signature: signer.sign(&renewal_message(&serial, csr.der())),
        serial,
        csr,
    }
}

fn confirm_request(signer: &Device, certificate_id: &str) -> ConfirmRequest {
    let serial = Serial::parse(SERIAL).unwrap();
    ConfirmRequest {
        signature: signer.sign(&confirmation_message(&serial, certificate_id)),
        serial,
        certificate_id: certificate_id.to_owned(),
    }
}

fn status(h: &Harness, id: &str) -> CertStatus {
    h.iot.state.lock().unwrap().certificates[id].status
}

fn proposed(outcome: RenewOutcome) -> vend::Delivery {
    match outcome {
        RenewOutcome::Proposed(d) => d,
        other => panic!("expected a proposal: {other:?}"),
    }
}

#[tokio::test]
async fn renew_then_confirm_swaps_certificates_with_one_active_at_the_end() {
    let h = Harness::new();
    let (old_key, old) = enrolled(&h).await;
    let new_key = Device::new();

    let new = proposed(
        h.vendor
            .renew(&renew_request(&old_key, &new_key))
            .await
            .unwrap(),
    );
    assert_eq!(new.issued.door, Door::Renewal);
    assert_eq!(new.issued.fingerprint, new_key.fingerprint(SERIAL));
    // Both usable until the device proves it has the new one.
    assert_eq!(status(&h, &old.certificate.id), CertStatus::Active);
    assert_eq!(status(&h, &new.issued.certificate.id), CertStatus::Active);
    {
        let state = h.iot.state.lock().unwrap();
        assert!(state
            .thing_principals
            .contains(&(SERIAL.into(), new.issued.certificate.arn.clone())));
        assert!(state
            .policy_attachments
            .contains(&("default-policy".into(), new.issued.certificate.arn.clone())));
    }

    // The device lost the answer and asks again: the same proposal.
    let again = h
        .vendor
        .renew(&renew_request(&old_key, &new_key))
        .await
        .unwrap();
    assert!(
        matches!(&again, RenewOutcome::Replayed(d) if d.issued.certificate == new.issued.certificate)
    );

    // Confirmation must come from the new key.
    let err = h
        .vendor
        .confirm_renewal(&confirm_request(&old_key, &new.issued.certificate.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_signature");
    let confirmed = h
        .vendor
        .confirm_renewal(&confirm_request(&new_key, &new.issued.certificate.id))
        .await
        .unwrap();
    assert!(matches!(confirmed, ConfirmOutcome::Confirmed(_)));
    assert_eq!(status(&h, &old.certificate.id), CertStatus::Revoked);
    assert_eq!(status(&h, &new.issued.certificate.id), CertStatus::Active);
    assert_eq!(h.iot.active_count(), 1);
    {
        let state = h.iot.state.lock().unwrap();
        assert!(!state
            .thing_principals
            .iter()
            .any(|(_, arn)| *arn == old.certificate.arn));
        assert!(!state
            .policy_attachments
            .iter()
            .any(|(_, arn)| *arn == old.certificate.arn));
    }
    let record = h.record(SERIAL);
    assert_eq!(current(&record).certificate, new.issued.certificate);
    assert_eq!(
        kinds(&record),
        [
            AuditKind::Enrolled,
            AuditKind::Issued,
            AuditKind::RenewalIssued,
            AuditKind::RenewalConfirmed
        ]
    );
    // A lost confirmation answer: confirming again is fine.
    let again = h
        .vendor
        .confirm_renewal(&confirm_request(&new_key, &new.issued.certificate.id))
        .await
        .unwrap();
    assert!(matches!(again, ConfirmOutcome::AlreadyConfirmed(_)));
    // The next renewal is signed by the new key; the old key is no use any more.
    let err = h
        .vendor
        .renew(&renew_request(&old_key, &Device::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_signature");
}

#[tokio::test]
async fn a_module_with_a_fixed_key_renews_with_the_same_key() {
    let h = Harness::new();
    let (key, old) = enrolled(&h).await;
    let new = proposed(h.vendor.renew(&renew_request(&key, &key)).await.unwrap());
    assert_ne!(new.issued.certificate.id, old.certificate.id);
    assert_eq!(new.issued.fingerprint, old.fingerprint);
    h.vendor
        .confirm_renewal(&confirm_request(&key, &new.issued.certificate.id))
        .await
        .unwrap();
    assert_eq!(h.iot.active_count(), 1);
}

#[tokio::test]
async fn only_the_device_on_record_may_renew() {
    let h = Harness::new();
    let (key, _) = enrolled(&h).await;
    let stranger = Device::new();
    for (req, code) in [
        (renew_request(&stranger, &stranger), "invalid_signature"),
        (
            RenewRequest {
                signature: vec![0x30, 0x00],
                ..renew_request(&key, &Device::new())
            },
            "invalid_signature",
        ),
    ] {
        let err = h.vendor.renew(&req).await.unwrap_err();
        assert_eq!(err.code(), code);
    }
    // A signature over another CSR than the one sent.
    let new = Device::new();
    let mut req = renew_request(&key, &new);
    req.csr = Csr::parse_pem(&Device::new().csr(SERIAL)).unwrap();
    assert_eq!(
        h.vendor.renew(&req).await.unwrap_err().code(),
        "invalid_signature"
    );
    // Unknown serial: the same answer.
    let mut req = renew_request(&key, &new);
    req.serial = Serial::parse("NOPE").unwrap();
    assert_eq!(
        h.vendor.renew(&req).await.unwrap_err().code(),
        "invalid_signature"
    );
    // Another subject.
    let csr = Csr::parse_pem(&new.csr("someone-else")).unwrap();
    let serial = Serial::parse(SERIAL).unwrap();
    let req = RenewRequest {
        signature: key.sign(&renewal_message(&serial, csr.der())),
        serial,
        csr,
    };
    assert_eq!(
        h.vendor.renew(&req).await.unwrap_err().code(),
        "csr_subject_not_allowed"
    );
    assert_eq!(h.iot.active_count(), 1, "nothing was issued");
}

#[tokio::test]
async fn nothing_to_renew_before_enrollment_and_nothing_after_revocation() {
    let h = Harness::new();
    h.enroll(SERIAL).await;
    let key = Device::new();
    assert_eq!(
        h.vendor
            .renew(&renew_request(&key, &key))
            .await
            .unwrap_err()
            .code(),
        "nothing_to_renew"
    );
    let h = Harness::new();
    let (key, _) = enrolled(&h).await;
    lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &Serial::parse(SERIAL).unwrap(),
        "ops",
        std::time::Duration::from_secs(60),
        h.time(),
    )
    .await
    .unwrap();
    assert_eq!(
        h.vendor
            .renew(&renew_request(&key, &Device::new()))
            .await
            .unwrap_err()
            .code(),
        "device_revoked"
    );
}

#[tokio::test]
async fn an_expired_certificate_renews_within_the_grace_then_not() {
    let h = Harness::new();
    let (key, old) = enrolled(&h).await;
    let not_after = cvm_core::csr::certificate_not_after(&old.certificate_pem).unwrap();
    h.set_time(not_after + 10 * 24 * 3600);
    assert!(h.vendor.renew(&renew_request(&key, &key)).await.is_ok());

    let h = Harness::new();
    let (key, old) = enrolled(&h).await;
    let not_after = cvm_core::csr::certificate_not_after(&old.certificate_pem).unwrap();
    h.set_time(not_after + 31 * 24 * 3600);
    assert_eq!(
        h.vendor
            .renew(&renew_request(&key, &key))
            .await
            .unwrap_err()
            .code(),
        "renewal_expired"
    );
}

#[tokio::test]
async fn a_proposal_never_confirmed_is_abandoned_after_the_grace() {
    let h = Harness::new();
    let (key, old) = enrolled(&h).await;
    let first = proposed(
        h.vendor
            .renew(&renew_request(&key, &Device::new()))
            .await
            .unwrap(),
    );
    assert_eq!(h.iot.active_count(), 2);
    // Within the grace the sweep leaves it alone.
    let record = h.record(SERIAL);
    let grace = config().renewal.grace;
    assert!(lifecycle::abandon_expired_renewal(
        &h.store,
        &h.iot,
        &h.iot,
        &record,
        grace,
        "sweep",
        h.time()
    )
    .await
    .unwrap()
    .is_none());
    // After it: revoked, the current one stays; never two active after the grace.
    h.advance(grace.as_secs() as i64 + 1);
    let after = lifecycle::abandon_expired_renewal(
        &h.store,
        &h.iot,
        &h.iot,
        &h.record(SERIAL),
        grace,
        "sweep",
        h.time(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        after.status,
        DeviceStatus::issued(old.clone()),
        "the current certificate stays"
    );
    assert_eq!(
        status(&h, &first.issued.certificate.id),
        CertStatus::Revoked
    );
    assert_eq!(status(&h, &old.certificate.id), CertStatus::Active);
    assert_eq!(h.iot.active_count(), 1);
    assert!(kinds(&after).contains(&AuditKind::RenewalAbandoned));
    // The device can renew again.
    assert!(h
        .vendor
        .renew(&renew_request(&key, &Device::new()))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_device_that_started_over_replaces_its_proposal() {
    let h = Harness::new();
    let (key, _) = enrolled(&h).await;
    let first = proposed(
        h.vendor
            .renew(&renew_request(&key, &Device::new()))
            .await
            .unwrap(),
    );
    let second = proposed(
        h.vendor
            .renew(&renew_request(&key, &Device::new()))
            .await
            .unwrap(),
    );
    assert_ne!(first.issued.certificate, second.issued.certificate);
    assert_eq!(
        status(&h, &first.issued.certificate.id),
        CertStatus::Revoked
    );
    assert_eq!(
        h.iot.active_count(),
        2,
        "the current one and the new proposal"
    );
}

#[tokio::test]
async fn a_renewal_interrupted_at_each_step_leaves_one_working_certificate() {
    let steps = [
        "issuer.issue",
        "store.apply(renewal_claim)",
        "store.apply(renewal_pending)",
        "registry.attach_policy",
        "registry.attach_thing_principal",
        "issuer.activate",
        "store.apply(renewal_proposed)",
    ];
    for step in steps {
        let h = Harness::new();
        let (key, old) = enrolled(&h).await;
        let new_key = Device::new();
        if step.starts_with("store.") {
            h.store.faults.fail_next(step, FailureKind::Unavailable);
        } else {
            h.iot.faults.fail_next(step, FailureKind::Unavailable);
        }
        let err = h
            .vendor
            .renew(&renew_request(&key, &new_key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "service_unavailable", "{step}");
        // The current certificate is untouched; nothing else is active.
        assert_eq!(
            status(&h, &old.certificate.id),
            CertStatus::Active,
            "{step}"
        );
        assert_eq!(h.iot.active_count(), 1, "{step}");
        assert!(h.iot.active_unknown_to(&h.store).is_empty(), "{step}");
        // The device retries and completes the renewal.
        let new = proposed(
            h.vendor
                .renew(&renew_request(&key, &new_key))
                .await
                .unwrap_or_else(|e| panic!("{step}: retry failed: {e}")),
        );
        h.vendor
            .confirm_renewal(&confirm_request(&new_key, &new.issued.certificate.id))
            .await
            .unwrap();
        assert_eq!(h.iot.active_count(), 1, "{step}");
    }

    // Interrupted while confirming: the old one is revoked only once the record can say so;
    // the new one keeps working, and confirming again finishes.
    for step in ["issuer.revoke", "store.apply(renewal_confirmed)"] {
        let h = Harness::new();
        let (key, old) = enrolled(&h).await;
        let new_key = Device::new();
        let new = proposed(
            h.vendor
                .renew(&renew_request(&key, &new_key))
                .await
                .unwrap(),
        );
        if step.starts_with("store.") {
            h.store.faults.fail_next(step, FailureKind::Unavailable);
        } else {
            h.iot.faults.fail_next(step, FailureKind::Unavailable);
        }
        let confirm = confirm_request(&new_key, &new.issued.certificate.id);
        assert!(h.vendor.confirm_renewal(&confirm).await.is_err(), "{step}");
        assert_eq!(
            status(&h, &new.issued.certificate.id),
            CertStatus::Active,
            "{step}"
        );
        assert!(h.iot.active_unknown_to(&h.store).is_empty(), "{step}");
        h.vendor.confirm_renewal(&confirm).await.unwrap();
        assert_eq!(
            status(&h, &old.certificate.id),
            CertStatus::Revoked,
            "{step}"
        );
        assert_eq!(h.iot.active_count(), 1, "{step}");
    }
}
