//! The vending workflow against in-memory ports: the contract of the BRIEF's vending flow,
//! including a failure injected at every step, answers lost after their write committed, the
//! lockout, and pre-registered keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use cvm_core::ports::{Admission, DeviceStore, FailureKind, Written};
use cvm_core::testing::{CertStatus, OPERATIONS};
use cvm_core::*;

#[tokio::test]
async fn issues_attaches_and_records() {
    let h = Harness::new();
    h.enroll("SN-1").await;
    let csr = csr_for("SN-1");
    let out = h
        .vendor
        .vend(&request("SN-1", Some(TOKEN), &csr))
        .await
        .unwrap();
    let VendOutcome::Issued(d) = out else {
        panic!("expected Issued")
    };
    let parsed = Csr::parse_pem(&csr).unwrap();
    assert!(parsed.is_certified_by(&d.issued.certificate_pem).unwrap());
    assert_eq!(d.thing_name.as_str(), "SN-1");
    assert_eq!(d.policy_name.as_str(), "default-policy");
    assert_eq!(d.issued.door, Door::Vend);

    {
        let state = h.iot.state.lock().unwrap();
        let cert = &state.certificates[&d.issued.certificate.id];
        assert_eq!(cert.status, CertStatus::Active);
        assert_eq!(
            state.things["SN-1"].iter().collect::<Vec<_>>(),
            vec![("site", "lab")]
        );
        assert!(state
            .policy_attachments
            .contains(&("default-policy".into(), d.issued.certificate.arn.clone())));
        assert!(state
            .thing_principals
            .contains(&("SN-1".into(), d.issued.certificate.arn.clone())));
    }
    let record = h.record("SN-1");
    assert_eq!(current(&record), d.issued);
    assert_eq!(kinds(&record), [AuditKind::Enrolled, AuditKind::Issued]);
    assert_eq!(record.history[1].detail, d.issued.certificate.id);
}

#[tokio::test]
async fn replay_same_key_returns_same_certificate_other_key_conflicts() {
    let h = Harness::new();
    h.enroll("SN-2").await;
    let csr = csr_for("SN-2");
    let first = delivery(
        h.vendor
            .vend(&request("SN-2", Some(TOKEN), &csr))
            .await
            .unwrap(),
    );
    let again = h
        .vendor
        .vend(&request("SN-2", Some(TOKEN), &csr))
        .await
        .unwrap();
    assert!(matches!(&again, VendOutcome::Replayed(d) if d == &first));
    let err = h
        .vendor
        .vend(&request("SN-2", Some(TOKEN), &csr_for("SN-2")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "already_issued");
    assert_eq!(h.iot.state.lock().unwrap().created, 1);
    assert_eq!(
        kinds(&h.record("SN-2")),
        [AuditKind::Enrolled, AuditKind::Issued, AuditKind::Replayed]
    );
}

#[tokio::test]
async fn unknown_serial_and_wrong_token_are_one_answer() {
    let h = Harness::new();
    h.enroll("SN-3").await;
    let unknown = h
        .vendor
        .vend(&request("NOPE", Some(TOKEN), &csr_for("NOPE")))
        .await
        .unwrap_err();
    let wrong = h
        .vendor
        .vend(&request("SN-3", Some(WRONG), &csr_for("SN-3")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "invalid_credentials");
    assert_eq!(unknown.to_string(), wrong.to_string());
    assert_eq!(unknown.code(), wrong.code());
    assert_eq!(
        h.record("SN-3").lockout.failures,
        1,
        "the wrong token counted"
    );
    assert!(
        h.store.record(&Serial::parse("NOPE").unwrap()).is_none(),
        "an unknown serial is never created"
    );
}

#[tokio::test]
async fn wrong_tokens_slow_a_serial_down_and_it_recovers_by_itself() {
    let h = Harness::new();
    h.enroll("SN-L").await;
    let csr = csr_for("SN-L");
    // Three wrong tokens: the third opens a 30 s window.
    for _ in 0..3 {
        let err = h
            .vendor
            .vend(&request("SN-L", Some(WRONG), &csr))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_credentials");
    }
    // While it is open, even the right token waits, told for how long.
    let locked = h
        .vendor
        .vend(&request("SN-L", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert!(
        matches!(locked, VendError::Locked { retry_after } if retry_after == Duration::from_secs(30)),
        "{locked:?}"
    );
    // Refusals while locked neither compare nor count.
    let _ = h.vendor.vend(&request("SN-L", Some(WRONG), &csr)).await;
    assert_eq!(h.record("SN-L").lockout.failures, 3);
    // Another wrong token after the window: twice as long.
    h.advance(30);
    let _ = h.vendor.vend(&request("SN-L", Some(WRONG), &csr)).await;
    let locked = h
        .vendor
        .vend(&request("SN-L", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert!(
        matches!(locked, VendError::Locked { retry_after } if retry_after == Duration::from_secs(60))
    );
    // Never for good: once the window closes, the right token works.
    h.advance(60);
    assert!(matches!(
        h.vendor
            .vend(&request("SN-L", Some(TOKEN), &csr))
            .await
            .unwrap(),
        VendOutcome::Issued(_)
    ));
    let record = h.record("SN-L");
    assert_eq!(
        record.lockout,
        Lockout::default(),
        "a vend clears the lockout"
    );
    assert!(kinds(&record).contains(&AuditKind::LockedOut));
    assert_eq!(h.iot.state.lock().unwrap().created, 1);
}

#[tokio::test]
async fn a_hammered_serial_is_slowed_never_closed_for_good() {
    let h = Harness::new();
    h.enroll("SN-H").await;
    let csr = csr_for("SN-H");
    // An attacker guesses as often as the serial lets them, for a day.
    let mut guesses = 0;
    let end = h.time() + 24 * 3600;
    while h.time() < end {
        match h.vendor.vend(&request("SN-H", Some(WRONG), &csr)).await {
            Err(VendError::Locked { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(900), "{retry_after:?}");
                h.advance(retry_after.as_secs() as i64);
            }
            Err(e) => {
                assert_eq!(e.code(), "invalid_credentials");
                guesses += 1;
            }
            Ok(_) => panic!("a wrong token got in"),
        }
    }
    // The free attempts, the windows growing to 15 minutes, then one guess per window.
    assert!(guesses <= 3 + 6 + 24 * 4, "{guesses} guesses in a day");
    // The history does not grow without bound.
    assert!(h.record("SN-H").history.len() <= cvm_core::audit::MAX_HISTORY);
    // The device, retrying after its Retry-After, gets in.
    loop {
        match h.vendor.vend(&request("SN-H", Some(TOKEN), &csr)).await {
            Err(VendError::Locked { retry_after }) => h.advance(retry_after.as_secs() as i64),
            Ok(VendOutcome::Issued(_)) => break,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_claim_itself_refuses_a_locked_serial() {
    // However stale a decision, the conditional claim re-checks the lockout: a right token
    // racing wrong ones cannot get past a window they opened.
    let h = Harness::new();
    h.enroll("SN-R").await;
    let record = h.record("SN-R");
    let locked = Lockout {
        failures: 3,
        last_failure_at: START,
        locked_until: START + 30,
    };
    assert_eq!(
        h.store
            .apply(
                &record.serial,
                &Guard::Lockout(Lockout::default()),
                &Change::FailedAttempt(locked, None)
            )
            .await
            .unwrap(),
        Written::Done
    );
    let csr = Csr::parse_pem(&csr_for("SN-R")).unwrap();
    let admission = Admission {
        token_hash: Some(Token::parse(TOKEN).unwrap().hash()),
        fingerprint: csr.fingerprint().clone(),
        common_name: "SN-R".into(),
        now: START + 1,
    };
    assert!(!admission.admits(&h.record("SN-R")));
    assert!(admission.credentials_match(&h.record("SN-R")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_guesses_are_each_counted() {
    let h = Harness::new();
    h.enroll("SN-P").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let vendor = h.vendor.clone();
        tasks.push(tokio::spawn(async move {
            vendor
                .vend(&request("SN-P", Some(WRONG), &csr_for("SN-P")))
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(
            matches!(err.code(), "invalid_credentials" | "enrollment_locked"),
            "{err}"
        );
    }
    let lockout = h.record("SN-P").lockout;
    assert!(lockout.failures >= 3, "{lockout:?}");
    assert!(lockout.retry_after(START).is_some());
    let err = h
        .vendor
        .vend(&request("SN-P", Some(TOKEN), &csr_for("SN-P")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "enrollment_locked");
}

#[tokio::test]
async fn subject_must_be_serial_or_thing_name() {
    let h = Harness::new();
    h.enroll_with("SN-4", Some("kiln-4"), Some(TOKEN), None)
        .await;
    let err = h
        .vendor
        .vend(&request("SN-4", Some(TOKEN), &csr_for("someone-else")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "csr_subject_not_allowed");
    let ok = h
        .vendor
        .vend(&request("SN-4", Some(TOKEN), &csr_for("kiln-4")))
        .await
        .unwrap();
    assert_eq!(delivery(ok).thing_name.as_str(), "kiln-4");
}

#[tokio::test]
async fn a_failure_at_every_step_loses_nothing_and_a_retry_succeeds() {
    for op in OPERATIONS {
        for kind in [FailureKind::Unavailable, FailureKind::Throttled] {
            let h = Harness::new();
            h.enroll("SN-5").await;
            let csr = csr_for("SN-5");
            let faults = if op.starts_with("store.") {
                &h.store.faults
            } else {
                &h.iot.faults
            };
            faults.fail_next(op, kind);
            let err = h
                .vendor
                .vend(&request("SN-5", Some(TOKEN), &csr))
                .await
                .unwrap_err();
            let expected = if kind == FailureKind::Throttled {
                "service_busy"
            } else {
                "service_unavailable"
            };
            assert_eq!(err.code(), expected, "{op}");
            assert!(
                h.iot.active_unknown_to(&h.store).is_empty(),
                "{op}: unknown active certificate"
            );
            assert_eq!(h.iot.certificate_count(), 0, "{op}: leftover certificate");
            assert_eq!(
                h.record("SN-5").status,
                DeviceStatus::Enrolled,
                "{op}: token not usable again"
            );

            let ok = h.vendor.vend(&request("SN-5", Some(TOKEN), &csr)).await;
            assert!(
                matches!(ok, Ok(VendOutcome::Issued(_))),
                "{op}: retry failed: {ok:?}"
            );
            assert_eq!(h.iot.active_count(), 1, "{op}");
            assert_eq!(h.iot.certificate_count(), 1, "{op}");
        }
    }
}

#[tokio::test]
async fn a_final_write_that_committed_with_its_answer_lost_is_a_success() {
    // The SDK's retry of the completion is refused by its own condition (the claim is gone):
    // the record says issued, so the certificate must stay, and a replay must get it.
    let h = Harness::new();
    h.enroll("SN-C").await;
    let csr = csr_for("SN-C");
    h.store.lose_answer("store.apply(complete)");
    let d = delivery(
        h.vendor
            .vend(&request("SN-C", Some(TOKEN), &csr))
            .await
            .unwrap(),
    );
    let status = h.iot.state.lock().unwrap().certificates[&d.issued.certificate.id].status;
    assert_eq!(status, CertStatus::Active);
    let replay = h
        .vendor
        .vend(&request("SN-C", Some(TOKEN), &csr))
        .await
        .unwrap();
    assert!(
        matches!(replay, VendOutcome::Replayed(r) if r.issued.certificate.id == d.issued.certificate.id)
    );

    // The SDK gave up on a completion that committed: still not undone.
    let h = Harness::new();
    h.enroll("SN-D").await;
    let csr = csr_for("SN-D");
    h.store.fail_after_commit("store.apply(complete)");
    let d = delivery(
        h.vendor
            .vend(&request("SN-D", Some(TOKEN), &csr))
            .await
            .unwrap(),
    );
    assert_eq!(h.iot.active_count(), 1);
    assert_eq!(current(&h.record("SN-D")).certificate, d.issued.certificate);
}

#[tokio::test]
async fn every_write_whose_answer_is_lost_settles_right() {
    for op in [
        "store.admit",
        "store.apply(pending)",
        "store.apply(complete)",
    ] {
        let h = Harness::new();
        h.enroll("SN-W").await;
        let csr = csr_for("SN-W");
        h.store.lose_answer(op);
        let out = h.vendor.vend(&request("SN-W", Some(TOKEN), &csr)).await;
        assert!(matches!(out, Ok(VendOutcome::Issued(_))), "{op}: {out:?}");
        assert_eq!(h.iot.active_count(), 1, "{op}");
        assert_eq!(h.iot.certificate_count(), 1, "{op}");
        assert!(h.iot.active_unknown_to(&h.store).is_empty(), "{op}");
    }
}

#[tokio::test]
async fn a_vend_that_dies_half_way_is_cleaned_up_by_the_next_after_the_lease() {
    // Activation succeeds, recording the result fails, and the undo fails too (as if the
    // function had been killed): the table still knows the certificate as pending.
    let h = Harness::new();
    h.enroll("SN-6").await;
    let csr = csr_for("SN-6");
    h.store
        .faults
        .fail_next("store.apply(complete)", FailureKind::Unavailable);
    h.store
        .faults
        .fail_next("store.get", FailureKind::Unavailable);
    let err = h
        .vendor
        .vend(&request("SN-6", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "service_unavailable");
    assert!(h.iot.active_unknown_to(&h.store).is_empty());
    let DeviceStatus::Claimed(claim) = &h.record("SN-6").status else {
        panic!("expected Claimed")
    };
    let stale = claim.pending.clone().unwrap();

    // Within the lease: in progress, with a Retry-After.
    let busy = h
        .vendor
        .vend(&request("SN-6", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert!(matches!(busy, VendError::InProgress { retry_after } if retry_after.as_secs() >= 1));

    // After the lease: the stale certificate is removed and a new one issued.
    h.advance(61);
    let d = delivery(
        h.vendor
            .vend(&request("SN-6", Some(TOKEN), &csr))
            .await
            .unwrap(),
    );
    assert_ne!(d.issued.certificate.id, stale.id);
    assert_eq!(h.iot.certificate_count(), 1);
    assert!(h.iot.active_unknown_to(&h.store).is_empty());
}

#[tokio::test]
async fn a_vend_near_the_end_of_its_lease_does_not_activate() {
    // The clock jumps past the activation margin while the vend runs (a slow dependency):
    // it undoes its work instead of racing a takeover.
    let h = Harness::new();
    h.enroll("SN-M").await;
    let csr = csr_for("SN-M");
    let now = h.now.clone();
    h.iot.on_issue(move || {
        now.fetch_add(50, std::sync::atomic::Ordering::SeqCst);
    });
    let err = h
        .vendor
        .vend(&request("SN-M", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert!(matches!(err, VendError::Unavailable { .. }), "{err:?}");
    assert_eq!(h.iot.certificate_count(), 0, "undone, never activated");
    assert_eq!(h.record("SN-M").status, DeviceStatus::Enrolled);
}

#[tokio::test]
async fn recording_the_pending_certificate_moves_the_version() {
    // A takeover decided on a read from before the pending certificate was recorded must not
    // succeed (it would forget that certificate).
    let h = Harness::new();
    h.enroll("SN-V").await;
    let serial = Serial::parse("SN-V").unwrap();
    let claim = Claim {
        id: "c1".into(),
        fingerprint: Csr::parse_pem(&csr_for("SN-V"))
            .unwrap()
            .fingerprint()
            .clone(),
        claimed_at: START,
        pending: None,
    };
    let v0 = h.record("SN-V").version;
    h.store
        .apply(&serial, &Guard::Version(v0), &Change::Claim(claim.clone()))
        .await
        .unwrap();
    let read_before = h.record("SN-V");
    let certificate = CertificateRef {
        id: "x".into(),
        arn: "arn:x".into(),
    };
    h.store
        .apply(
            &serial,
            &Guard::Claim("c1".into()),
            &Change::Pending(certificate),
        )
        .await
        .unwrap();
    assert_eq!(h.record("SN-V").version, read_before.version + 1);
    let takeover = Change::Claim(Claim {
        id: "c2".into(),
        ..claim
    });
    assert_eq!(
        h.store
            .apply(&serial, &Guard::Version(read_before.version), &takeover)
            .await
            .unwrap(),
        Written::ConditionFailed
    );
}

#[tokio::test]
async fn a_certificate_for_another_key_is_never_delivered() {
    let h = Harness::new();
    h.enroll("SN-7").await;
    *h.iot.certify_wrong_key.lock().unwrap() = true;
    let csr = csr_for("SN-7");
    let err = h
        .vendor
        .vend(&request("SN-7", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "internal_error");
    assert_eq!(h.iot.certificate_count(), 0);
    *h.iot.certify_wrong_key.lock().unwrap() = false;
    assert!(h
        .vendor
        .vend(&request("SN-7", Some(TOKEN), &csr))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_vends_issue_exactly_one_certificate() {
    let h = Harness::new();
    h.enroll("SN-8").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let vendor = h.vendor.clone();
        let csr = csr_for("SN-8");
        tasks.push(tokio::spawn(async move {
            vendor.vend(&request("SN-8", Some(TOKEN), &csr)).await
        }));
    }
    let mut issued = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(VendOutcome::Issued(_)) => issued += 1,
            Ok(VendOutcome::Replayed(_)) => panic!("no key was reused"),
            Err(e) => assert!(
                matches!(e.code(), "enrollment_in_progress" | "already_issued"),
                "{e}"
            ),
        }
    }
    assert_eq!(issued, 1);
    assert_eq!(h.iot.state.lock().unwrap().created, 1);
    assert_eq!(h.iot.active_count(), 1);
}

#[tokio::test]
async fn a_registered_key_enrolls_without_a_token_and_no_other_key_does() {
    let h = Harness::new();
    let device = Device::new();
    h.enroll_with("SN-K", None, None, Some(device.fingerprint("SN-K")))
        .await;
    // Another key without a token: a failed attempt like a wrong token.
    let err = h
        .vendor
        .vend(&request("SN-K", None, &csr_for("SN-K")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_credentials");
    assert_eq!(h.record("SN-K").lockout.failures, 1);
    // The registered key, no token: issued.
    let d = delivery(
        h.vendor
            .vend(&request("SN-K", None, &device.csr("SN-K")))
            .await
            .unwrap(),
    );
    assert_eq!(d.issued.fingerprint, device.fingerprint("SN-K"));

    // With a token too, the key must still be the registered one.
    let h = Harness::new();
    let device = Device::new();
    h.enroll_with(
        "SN-KT",
        None,
        Some(TOKEN),
        Some(device.fingerprint("SN-KT")),
    )
    .await;
    let err = h
        .vendor
        .vend(&request("SN-KT", Some(TOKEN), &csr_for("SN-KT")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "csr_key_not_registered");
    assert_eq!(h.record("SN-KT").lockout.failures, 0, "not a guess");
    assert!(h
        .vendor
        .vend(&request("SN-KT", Some(TOKEN), &device.csr("SN-KT")))
        .await
        .is_ok());
    // A device with a token but no registered key cannot leave the token out.
    let h = Harness::new();
    h.enroll("SN-NT").await;
    let err = h
        .vendor
        .vend(&request("SN-NT", None, &csr_for("SN-NT")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_credentials");
}

#[tokio::test]
async fn revoked_devices_get_nothing() {
    let h = Harness::new();
    h.enroll("SN-9").await;
    let csr = csr_for("SN-9");
    h.vendor
        .vend(&request("SN-9", Some(TOKEN), &csr))
        .await
        .unwrap();
    lifecycle::revoke(
        &h.store,
        &h.iot,
        &h.iot,
        &Serial::parse("SN-9").unwrap(),
        "ops",
        Duration::from_secs(60),
        h.time(),
    )
    .await
    .unwrap();
    let err = h
        .vendor
        .vend(&request("SN-9", Some(TOKEN), &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "device_revoked");
    // A wrong token still gets the generic answer: revocation tells a guesser nothing.
    let err = h
        .vendor
        .vend(&request("SN-9", Some(WRONG), &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_credentials");
}
