//! The fleet-provisioning door's pre-provisioning hook against in-memory ports: one
//! enrollment record with the vend API's semantics (token once across both doors, unknown
//! serial like a wrong token, the same lockout, keys recorded), idempotent for the same
//! certificate, and never two active certificates for a device that started over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use cvm_core::fleet::{Decision, Denial, HookConfig, HookRequest, ProvisioningHook};
use cvm_core::ports::CertificateIssuer;
use cvm_core::testing::{CertStatus, FakeIot, MemoryStore};
use cvm_core::*;

const TEMPLATE: &str = "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/cvm-fleet";

struct Fleet {
    h: Harness,
    hook: ProvisioningHook<MemoryStore, FakeIot>,
}

fn fleet() -> Fleet {
    let h = Harness::new();
    let hook = ProvisioningHook::with_clock(
        h.store.clone(),
        h.iot.clone(),
        HookConfig {
            default_policy: config().default_policy,
            lockout: config().lockout,
        },
        Arc::clone(&h.clock),
    );
    Fleet { h, hook }
}

/// What AWS IoT would hold after `CreateCertificateFromCsr` through the certificate provider:
/// an inactive certificate for the device's key.
async fn certificate_for(iot: &FakeIot, device: &Device, cn: &str) -> (String, String) {
    let csr = Csr::parse_pem(&device.csr(cn)).unwrap();
    let c = iot.issue(&csr).await.unwrap();
    (c.certificate.id, c.certificate_pem)
}

fn hook_request(certificate: &(String, String), parameters: &[(&str, &str)]) -> HookRequest {
    HookRequest {
        claim_certificate_id: "c1a1m".into(),
        certificate_id: certificate.0.clone(),
        certificate_pem: certificate.1.clone(),
        template_arn: TEMPLATE.into(),
        client_id: "claim-SN-F1".into(),
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn overrides(decision: &Decision) -> BTreeMap<String, String> {
    let response = decision.response();
    assert!(response.allow_provisioning, "{decision:?}");
    response.parameter_overrides
}

#[tokio::test]
async fn allows_once_with_the_records_names_and_the_token_is_spent_for_both_doors() {
    let f = fleet();
    f.h.enroll_with("SN-F1", Some("kiln-1"), Some(TOKEN), None)
        .await;
    let device = Device::new();
    let cert = certificate_for(&f.h.iot, &device, "SN-F1").await;
    // The device tries to choose its thing, policy and attributes: all overridden.
    let decision = f
        .hook
        .decide(&hook_request(
            &cert,
            &[
                ("SerialNumber", "SN-F1"),
                ("EnrollmentToken", TOKEN),
                ("ThingName", "somebody-elses-thing"),
                ("PolicyName", "admin"),
                ("Attribute_site", "evil"),
                ("Attribute_other", "x"),
            ],
        ))
        .await
        .unwrap();
    assert!(matches!(decision, Decision::Allowed(_)), "{decision:?}");
    let o = overrides(&decision);
    assert_eq!(o["ThingName"], "kiln-1");
    assert_eq!(o["PolicyName"], "default-policy");
    assert_eq!(o["Attribute_site"], "lab");
    assert_eq!(o["Attribute_other"], "", "blanked: not the device's to set");
    assert!(!o.contains_key("SerialNumber") && !o.contains_key("EnrollmentToken"));

    let record = f.h.record("SN-F1");
    let issued = current(&record);
    assert_eq!(issued.certificate.id, cert.0);
    assert_eq!(issued.door, Door::FleetProvisioning);
    assert_eq!(issued.fingerprint, device.fingerprint("SN-F1"));
    assert_eq!(
        issued.certificate.arn,
        format!("arn:aws:iot:us-east-1:123456789012:cert/{}", cert.0)
    );
    assert!(record.history.last().unwrap().actor.contains("claim-SN-F1"));

    // The token was spent on this key: the vend API replays for this key only.
    let err =
        f.h.vendor
            .vend(&request("SN-F1", Some(TOKEN), &csr_for("kiln-1")))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "already_issued");
    let replay =
        f.h.vendor
            .vend(&request("SN-F1", Some(TOKEN), &device.csr("SN-F1")))
            .await
            .unwrap();
    assert!(matches!(replay, VendOutcome::Replayed(d) if d.issued.certificate.id == cert.0));
}

#[tokio::test]
async fn the_same_certificate_asking_again_is_allowed_again() {
    let f = fleet();
    f.h.enroll("SN-F2").await;
    let device = Device::new();
    let cert = certificate_for(&f.h.iot, &device, "SN-F2").await;
    let req = hook_request(
        &cert,
        &[("SerialNumber", "SN-F2"), ("EnrollmentToken", TOKEN)],
    );
    assert!(matches!(
        f.hook.decide(&req).await.unwrap(),
        Decision::Allowed(_)
    ));
    let again = f.hook.decide(&req).await.unwrap();
    assert!(matches!(again, Decision::AllowedAgain(_)), "{again:?}");
    assert_eq!(overrides(&again)["ThingName"], "SN-F2");
}

#[tokio::test]
async fn a_device_that_started_over_with_its_key_gets_its_identity_back_with_one_active_certificate(
) {
    let f = fleet();
    f.h.enroll("SN-F3").await;
    let device = Device::new();
    let first = certificate_for(&f.h.iot, &device, "SN-F3").await;
    let params = [("SerialNumber", "SN-F3"), ("EnrollmentToken", TOKEN)];
    f.hook.decide(&hook_request(&first, &params)).await.unwrap();
    f.h.iot
        .activate(&current(&f.h.record("SN-F3")).certificate)
        .await
        .unwrap(); // what the template does
    let second = certificate_for(&f.h.iot, &device, "SN-F3").await;
    let decision = f
        .hook
        .decide(&hook_request(&second, &params))
        .await
        .unwrap();
    assert!(matches!(decision, Decision::Replaced(_)), "{decision:?}");
    {
        let state = f.h.iot.state.lock().unwrap();
        assert_eq!(state.certificates[&first.0].status, CertStatus::Inactive);
    }
    assert_eq!(current(&f.h.record("SN-F3")).certificate.id, second.0);
    assert_eq!(
        f.h.iot.active_count(),
        0,
        "the template activates the new one"
    );
    assert!(kinds(&f.h.record("SN-F3")).contains(&AuditKind::Replaced));
}

#[tokio::test]
async fn another_key_is_denied_through_either_door() {
    let f = fleet();
    f.h.enroll("SN-F4").await;
    let device = Device::new();
    f.h.vendor
        .vend(&request("SN-F4", Some(TOKEN), &device.csr("SN-F4")))
        .await
        .unwrap();
    let other = certificate_for(&f.h.iot, &Device::new(), "SN-F4").await;
    let decision = f
        .hook
        .decide(&hook_request(
            &other,
            &[("SerialNumber", "SN-F4"), ("EnrollmentToken", TOKEN)],
        ))
        .await
        .unwrap();
    assert_eq!(decision, Decision::Denied(Denial::AlreadyIssued));
    assert!(!decision.response().allow_provisioning);
    // The vend's certificate for the same key, asked through the fleet door: a replacement.
    let same = certificate_for(&f.h.iot, &device, "SN-F4").await;
    let decision = f
        .hook
        .decide(&hook_request(
            &same,
            &[("SerialNumber", "SN-F4"), ("EnrollmentToken", TOKEN)],
        ))
        .await
        .unwrap();
    assert!(matches!(decision, Decision::Replaced(_)));
}

#[tokio::test]
async fn wrong_tokens_and_unknown_serials_are_one_answer_and_count_toward_the_same_lockout() {
    let f = fleet();
    f.h.enroll("SN-F5").await;
    let cert = certificate_for(&f.h.iot, &Device::new(), "SN-F5").await;
    let unknown = certificate_for(&f.h.iot, &Device::new(), "NOPE").await;
    assert_eq!(
        f.hook
            .decide(&hook_request(
                &unknown,
                &[("SerialNumber", "NOPE"), ("EnrollmentToken", TOKEN)]
            ))
            .await
            .unwrap(),
        Decision::Denied(Denial::InvalidCredentials)
    );
    let wrong = hook_request(
        &cert,
        &[("SerialNumber", "SN-F5"), ("EnrollmentToken", WRONG)],
    );
    for _ in 0..2 {
        assert_eq!(
            f.hook.decide(&wrong).await.unwrap(),
            Decision::Denied(Denial::InvalidCredentials)
        );
    }
    // One more wrong token through the vend API: the same lockout opens.
    let _ =
        f.h.vendor
            .vend(&request("SN-F5", Some(WRONG), &csr_for("SN-F5")))
            .await;
    assert!(f
        .h
        .record("SN-F5")
        .lockout
        .retry_after(f.h.time())
        .is_some());
    let right = hook_request(
        &cert,
        &[("SerialNumber", "SN-F5"), ("EnrollmentToken", TOKEN)],
    );
    assert_eq!(
        f.hook.decide(&right).await.unwrap(),
        Decision::Denied(Denial::Locked)
    );
    f.h.advance(31);
    assert!(matches!(
        f.hook.decide(&right).await.unwrap(),
        Decision::Allowed(_)
    ));
}

#[tokio::test]
async fn a_registered_key_provisions_without_a_token() {
    let f = fleet();
    let device = Device::new();
    f.h.enroll_with("SN-F6", None, None, Some(device.fingerprint("SN-F6")))
        .await;
    let other = certificate_for(&f.h.iot, &Device::new(), "SN-F6").await;
    assert_eq!(
        f.hook
            .decide(&hook_request(&other, &[("SerialNumber", "SN-F6")]))
            .await
            .unwrap(),
        Decision::Denied(Denial::InvalidCredentials)
    );
    let cert = certificate_for(&f.h.iot, &device, "SN-F6").await;
    assert!(matches!(
        f.hook
            .decide(&hook_request(
                &cert,
                &[("SerialNumber", "SN-F6"), ("EnrollmentToken", "")]
            ))
            .await
            .unwrap(),
        Decision::Allowed(_)
    ));
}

#[tokio::test]
async fn malformed_requests_are_denied_without_touching_the_record() {
    let f = fleet();
    f.h.enroll("SN-F7").await;
    let cert = certificate_for(&f.h.iot, &Device::new(), "SN-F7").await;
    let good = [("SerialNumber", "SN-F7"), ("EnrollmentToken", TOKEN)];
    let mut cases: Vec<HookRequest> = Vec::new();
    cases.push(hook_request(&cert, &[("EnrollmentToken", TOKEN)]));
    cases.push(hook_request(
        &cert,
        &[("SerialNumber", "bad serial"), ("EnrollmentToken", TOKEN)],
    ));
    cases.push(hook_request(
        &cert,
        &[("SerialNumber", "SN-F7"), ("EnrollmentToken", "short")],
    ));
    let mut r = hook_request(&cert, &good);
    r.certificate_id = "0".repeat(64);
    cases.push(r);
    let mut r = hook_request(&cert, &good);
    r.certificate_pem = "not a certificate".into();
    cases.push(r);
    let mut r = hook_request(&cert, &good);
    r.template_arn = "arn:aws:iot:us-east-1:123456789012:thing/x".into();
    cases.push(r);
    for req in cases {
        assert_eq!(
            f.hook.decide(&req).await.unwrap(),
            Decision::Denied(Denial::InvalidRequest),
            "{req:?}"
        );
    }
    let record = f.h.record("SN-F7");
    assert_eq!(record.status, DeviceStatus::Enrolled);
    assert_eq!(record.lockout, Lockout::default());

    // A certificate whose subject is neither the serial nor the thing name.
    let other = certificate_for(&f.h.iot, &Device::new(), "someone-else").await;
    assert_eq!(
        f.hook.decide(&hook_request(&other, &good)).await.unwrap(),
        Decision::Denied(Denial::SubjectNotAllowed)
    );
}
