//! The sample event (`events/provisioning-hook.json`, usable with `cargo lambda invoke
//! --data-file`) through the hook's handler over in-memory ports: allowed with the record's
//! names, allowed again, and a fault answered as an error, not a decision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cvm_core::fleet::{HookConfig, HookResponse, ProvisioningHook};
use cvm_core::ports::{DeviceStore, FailureKind};
use cvm_core::testing::{FakeIot, MemoryStore};
use cvm_core::*;
use provisioning_hook::{Hook, Metrics};

const EVENT: &str = include_str!("../../../events/provisioning-hook.json");

async fn hook() -> (Hook<MemoryStore, FakeIot>, MemoryStore) {
    let event: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    let serial = Serial::parse(event["parameters"]["SerialNumber"].as_str().unwrap()).unwrap();
    let token = Token::parse(event["parameters"]["EnrollmentToken"].as_str().unwrap()).unwrap();
    let store = MemoryStore::default();
    store
        .create(&DeviceRecord::new_enrollment(
            serial.clone(),
            lifecycle::credentials(Some(&token), None),
            ThingName::parse("kiln-7").unwrap(),
            None,
            Attributes::parse([("site".to_string(), "plant-2".to_string())]).unwrap(),
            AuditEvent::new("2027-01-01T00:00:00Z", AuditKind::Enrolled, "ops", ""),
        ))
        .await
        .unwrap();
    let core = ProvisioningHook::new(
        store.clone(),
        FakeIot::new(),
        HookConfig {
            default_policy: PolicyName::parse("cvm-device-default").unwrap(),
            lockout: LockoutPolicy::default(),
        },
    );
    (
        Hook::new(core, Duration::from_millis(4500), Metrics::Off),
        store,
    )
}

#[tokio::test]
async fn the_sample_event_is_allowed_with_the_records_names_then_allowed_again() {
    let (hook, _) = hook().await;
    let payload: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    for _ in 0..2 {
        let answer = hook.handle(payload.clone(), None).await.unwrap();
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["allowProvisioning"], true, "{json}");
        assert_eq!(json["parameterOverrides"]["ThingName"], "kiln-7");
        assert_eq!(
            json["parameterOverrides"]["PolicyName"],
            "cvm-device-default"
        );
        assert_eq!(json["parameterOverrides"]["Attribute_site"], "plant-2");
    }
}

#[tokio::test]
async fn a_wrong_token_is_a_denial_and_a_bad_event_or_a_fault_an_error() {
    let (hook, store) = hook().await;
    let mut payload: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    payload["parameters"]["EnrollmentToken"] = "a-wrong-token-for-this-one".into();
    let answer: HookResponse = hook.handle(payload, None).await.unwrap();
    assert!(!answer.allow_provisioning);
    assert!(answer.parameter_overrides.is_empty());

    let err = hook
        .handle(serde_json::json!({"certificateId": 7}), None)
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidEvent");

    store
        .faults
        .fail_next("store.admit", FailureKind::Unavailable);
    let payload: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    let err = hook.handle(payload, None).await.unwrap_err();
    assert_eq!(err.error_type, "DependencyFailed");
    assert!(
        !err.error_message.contains("InjectedFault"),
        "no dependency detail for the caller: {}",
        err.error_message
    );
}
