//! The vending workflow against in-memory ports: the contract of BRIEF "vending flow" 1-9,
//! including a failure injected at every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cvm_core::ports::{DeviceStore, FailureKind};
use cvm_core::testing::{CertStatus, FakeIot, MemoryStore, OPERATIONS};
use cvm_core::vend::Clock;
use cvm_core::*;
use time::OffsetDateTime;

const TOKEN: &str = "correct-horse-battery-staple-0001";

struct Harness {
    store: MemoryStore,
    iot: FakeIot,
    vendor: Arc<Vendor<MemoryStore, FakeIot, FakeIot>>,
    now: Arc<AtomicI64>,
}

fn config() -> VendConfig {
    VendConfig {
        default_policy: PolicyName::parse("default-policy").unwrap(),
        max_failed_attempts: 3,
        claim_lease: Duration::from_secs(30),
        endpoints: Endpoints {
            data: "data.example".into(),
            credentials: "creds.example".into(),
        },
        ca_certificates: vec!["CA".into()],
        role_alias: None,
    }
}

async fn harness(serial: &str, thing: Option<&str>) -> Harness {
    let store = MemoryStore::default();
    let iot = FakeIot::new();
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let clock_now = now.clone();
    let clock: Clock = Arc::new(move || {
        OffsetDateTime::from_unix_timestamp(clock_now.load(Ordering::SeqCst)).unwrap()
    });
    let serial = Serial::parse(serial).unwrap();
    let thing = thing
        .map(|t| ThingName::parse(t).unwrap())
        .unwrap_or_else(|| ThingName::from(&serial));
    let attrs = Attributes::parse([("site".to_string(), "lab".to_string())]).unwrap();
    let record = DeviceRecord::new_enrollment(
        serial,
        Token::parse(TOKEN).unwrap().hash(),
        thing,
        None,
        attrs,
        "2027-01-01T00:00:00Z".into(),
    );
    store.create(&record).await.unwrap();
    let vendor = Arc::new(Vendor::with_clock(
        store.clone(),
        iot.clone(),
        iot.clone(),
        config(),
        clock,
    ));
    Harness {
        store,
        iot,
        vendor,
        now,
    }
}

fn csr_for(cn: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn request(serial: &str, token: &str, csr_pem: &str) -> VendRequest {
    VendRequest {
        serial: Serial::parse(serial).unwrap(),
        token: Token::parse(token).unwrap(),
        csr: Csr::parse_pem(csr_pem).unwrap(),
    }
}

fn delivery(outcome: VendOutcome) -> vend::Delivery {
    match outcome {
        VendOutcome::Issued(d) | VendOutcome::Replayed(d) => d,
    }
}

#[tokio::test]
async fn issues_attaches_and_records() {
    let h = harness("SN-1", None).await;
    let (csr, _) = csr_for("SN-1");
    let out = h.vendor.vend(&request("SN-1", TOKEN, &csr)).await.unwrap();
    let VendOutcome::Issued(d) = out else {
        panic!("expected Issued")
    };
    let parsed = Csr::parse_pem(&csr).unwrap();
    assert!(parsed.is_certified_by(&d.issued.certificate_pem).unwrap());
    assert_eq!(d.thing_name.as_str(), "SN-1");
    assert_eq!(d.policy_name.as_str(), "default-policy");

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
    drop(state);
    let record = h.store.record(&Serial::parse("SN-1").unwrap()).unwrap();
    assert!(matches!(record.status, DeviceStatus::Issued(ref i) if i == &d.issued));
}

#[tokio::test]
async fn replay_same_key_returns_same_certificate_other_key_conflicts() {
    let h = harness("SN-2", None).await;
    let (csr, _) = csr_for("SN-2");
    let first = delivery(h.vendor.vend(&request("SN-2", TOKEN, &csr)).await.unwrap());
    let again = h.vendor.vend(&request("SN-2", TOKEN, &csr)).await.unwrap();
    assert!(matches!(&again, VendOutcome::Replayed(d) if d == &first));
    let (other, _) = csr_for("SN-2");
    let err = h
        .vendor
        .vend(&request("SN-2", TOKEN, &other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "already_issued");
    assert_eq!(h.iot.state.lock().unwrap().created, 1);
}

#[tokio::test]
async fn unknown_serial_and_wrong_token_are_one_answer_and_lock() {
    let h = harness("SN-3", None).await;
    let (csr, _) = csr_for("SN-3");
    let unknown = h
        .vendor
        .vend(&request("NOPE", TOKEN, &csr_for("NOPE").0))
        .await
        .unwrap_err();
    let wrong = h
        .vendor
        .vend(&request("SN-3", "wrong-token-wrong-token", &csr))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "invalid_credentials");
    assert_eq!(unknown.to_string(), wrong.to_string());
    assert_eq!(unknown.code(), wrong.code());
    for _ in 0..2 {
        let _ = h
            .vendor
            .vend(&request("SN-3", "wrong-token-wrong-token", &csr))
            .await;
    }
    // Three wrong tokens: locked, even for the right one; nothing was issued.
    let locked = h
        .vendor
        .vend(&request("SN-3", TOKEN, &csr))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), "enrollment_locked");
    // Past the lock, a wrong token still gets the generic answer.
    let wrong = h
        .vendor
        .vend(&request("SN-3", "wrong-token-wrong-token", &csr))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), "invalid_credentials");
    assert_eq!(h.iot.state.lock().unwrap().created, 0);
}

#[tokio::test]
async fn subject_must_be_serial_or_thing_name() {
    let h = harness("SN-4", Some("kiln-4")).await;
    let err = h
        .vendor
        .vend(&request("SN-4", TOKEN, &csr_for("someone-else").0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "csr_subject_not_allowed");
    let ok = h
        .vendor
        .vend(&request("SN-4", TOKEN, &csr_for("kiln-4").0))
        .await
        .unwrap();
    assert_eq!(delivery(ok).thing_name.as_str(), "kiln-4");
}

#[tokio::test]
async fn a_failure_at_every_step_loses_nothing_and_a_retry_succeeds() {
    for op in OPERATIONS {
        for kind in [FailureKind::Unavailable, FailureKind::Throttled] {
            let h = harness("SN-5", None).await;
            let (csr, _) = csr_for("SN-5");
            let faults = if op.starts_with("store.") {
                &h.store.faults
            } else {
                &h.iot.faults
            };
            faults.fail_next(op, kind);
            let err = h
                .vendor
                .vend(&request("SN-5", TOKEN, &csr))
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
            let record = h.store.record(&Serial::parse("SN-5").unwrap()).unwrap();
            assert_eq!(
                record.status,
                DeviceStatus::Enrolled,
                "{op}: token not usable again"
            );

            let ok = h.vendor.vend(&request("SN-5", TOKEN, &csr)).await;
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
async fn a_vend_that_dies_half_way_is_cleaned_up_by_the_next_after_the_lease() {
    // Activation succeeds, recording the result fails, and the undo fails too (as if the
    // function had been killed): the table still knows the certificate as pending.
    let h = harness("SN-6", None).await;
    let (csr, _) = csr_for("SN-6");
    h.store
        .faults
        .fail_next("store.complete", FailureKind::Unavailable);
    h.iot
        .faults
        .fail_next("registry.detach_policy", FailureKind::Unavailable);
    let err = h
        .vendor
        .vend(&request("SN-6", TOKEN, &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "service_unavailable");
    assert!(h.iot.active_unknown_to(&h.store).is_empty());
    let record = h.store.record(&Serial::parse("SN-6").unwrap()).unwrap();
    let DeviceStatus::Claimed(claim) = &record.status else {
        panic!("expected Claimed")
    };
    let stale = claim.pending.clone().unwrap();

    // Within the lease: in progress, with a Retry-After.
    let busy = h
        .vendor
        .vend(&request("SN-6", TOKEN, &csr))
        .await
        .unwrap_err();
    assert!(matches!(busy, VendError::InProgress { retry_after } if retry_after.as_secs() >= 1));

    // After the lease: the stale certificate is removed and a new one issued.
    h.now.fetch_add(31, Ordering::SeqCst);
    let d = delivery(h.vendor.vend(&request("SN-6", TOKEN, &csr)).await.unwrap());
    assert_ne!(d.issued.certificate.id, stale.id);
    assert_eq!(h.iot.certificate_count(), 1);
    assert!(h.iot.active_unknown_to(&h.store).is_empty());
}

#[tokio::test]
async fn a_certificate_for_another_key_is_never_delivered() {
    let h = harness("SN-7", None).await;
    *h.iot.certify_wrong_key.lock().unwrap() = true;
    let (csr, _) = csr_for("SN-7");
    let err = h
        .vendor
        .vend(&request("SN-7", TOKEN, &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "internal_error");
    assert_eq!(h.iot.certificate_count(), 0);
    *h.iot.certify_wrong_key.lock().unwrap() = false;
    assert!(h.vendor.vend(&request("SN-7", TOKEN, &csr)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_vends_issue_exactly_one_certificate() {
    let h = harness("SN-8", None).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let vendor = h.vendor.clone();
        let (csr, _) = csr_for("SN-8");
        tasks.push(tokio::spawn(async move {
            vendor.vend(&request("SN-8", TOKEN, &csr)).await
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
async fn revoked_devices_get_nothing() {
    let h = harness("SN-9", None).await;
    let (csr, _) = csr_for("SN-9");
    h.vendor.vend(&request("SN-9", TOKEN, &csr)).await.unwrap();
    // Mark revoked through a fresh record (the admin path does this in the table).
    let serial = Serial::parse("SN-9").unwrap();
    let mut record = h.store.record(&serial).unwrap();
    record.status = DeviceStatus::Revoked {
        revoked_at: "now".into(),
    };
    let store = MemoryStore::default();
    store.create(&record).await.unwrap();
    let vendor = Vendor::new(store, h.iot.clone(), h.iot.clone(), config());
    let err = vendor
        .vend(&request("SN-9", TOKEN, &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "device_revoked");
}
