//! `cvm-device renew` against the local stack: the vend service's renewal routes (moto behind
//! them) and the MQTT broker for the proof. A renewal gives a new certificate for a new key;
//! the old certificate stays ACTIVE while the new one is only proposed and is REVOKED once the
//! new one is proven and confirmed; a renewal interrupted at any step leaves the device with a
//! working certificate and completes on the next run; a proposal the API no longer has is
//! rolled back and asked again; `--if-due` does nothing outside the window; keys in a file or
//! on a PKCS#11 token; a device provisioned by claim renews the same way.
//!
//! Needs the stack's settings in the environment (`make test` exports them; by hand: `make
//! up`, then `set -a; . .local/env; set +a`); without them these tests fail and say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The in-process SoftHSM2 lock (common::softhsm) is held across awaits on purpose: each
// #[tokio::test] runs on its own thread with its own runtime, and the lock is there to let one
// test at a time use the in-process token.
#![allow(clippy::await_holding_lock)]

mod common;
mod stack;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::*;
use cvm_device::api::Backoff;
use cvm_device::clock::ClockCheck;
use cvm_device::csr::{build_signed_csr, key_fingerprint, sign_message};
use cvm_device::files::Sharing;
use cvm_device::identity::NEXT_DIR;
use cvm_device::keystore::{self, KeySpec, OpenOptions};
use cvm_device::mqtt::{Endpoint, Timeouts};
use cvm_device::provision::DEFAULT_PROOF_TOPIC;
use cvm_device::renew::{
    renew, renewal_message, RenewError, RenewOptions, Step, DEFAULT_GRACE, DEFAULT_WINDOW,
};
use cvm_device::FileKeyStore;
use stack::*;

fn run_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

struct Device {
    serial: String,
    out: PathBuf,
    key_path: PathBuf,
    certificate_id: String,
}

/// A device enrolled over HTTPS with a key file.
async fn enrolled(stack: &Stack, prefix: &str, dir: &Path) -> Device {
    let (serial, token) = stack.enroll_serial(prefix, &[], dir);
    let out = dir.join("cvm");
    let key_path = dir.join("keys/device.key");
    let key = format!("file:{}", key_path.display());
    let run = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &out, &key)),
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let certificate_id = enrollment_json(&out)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    Device {
        serial,
        out,
        key_path,
        certificate_id,
    }
}

/// The library's renewal, as the binary runs it, stopped after `step`.
fn options(stack: &Stack, out: &Path, step: Option<Step>) -> RenewOptions {
    RenewOptions {
        url: stack.api_url.clone(),
        api_ca: Some(stack.api_ca.clone().into()),
        dir: out.to_owned(),
        endpoint: Some(Endpoint::parse(&stack.mqtt_endpoint(), false).unwrap()),
        broker_ca: Some(stack.mqtt_ca.clone().into()),
        proof_topic: DEFAULT_PROOF_TOPIC.into(),
        if_due: false,
        window: DEFAULT_WINDOW,
        grace: DEFAULT_GRACE,
        generate_key: false,
        open: OpenOptions {
            state_dir: out.to_owned(),
            ..OpenOptions::default()
        },
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        timeouts: Timeouts::default(),
        clock: ClockCheck::system(Duration::ZERO),
        sharing: Sharing::PRIVATE,
        interrupt_after: step,
    }
}

/// The certificate proposed in `next/`, if any.
fn proposed(out: &Path) -> Option<String> {
    let raw = std::fs::read(out.join(NEXT_DIR).join("renewal.json")).ok()?;
    let proposal: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    proposal["certificateId"].as_str().map(str::to_owned)
}

/// The certificate the device uses now, as its commands read it.
fn in_use(out: &Path) -> String {
    cvm_device::enroll::Enrollment::load(out)
        .unwrap()
        .certificate_id
}

#[tokio::test]
async fn a_renewal_replaces_the_certificate_and_revokes_the_old_one_only_once_confirmed() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    let tmp = tempfile::tempdir().unwrap();
    let device = enrolled(&stack, "renew", tmp.path()).await;
    let old = device.certificate_id.clone();

    // Proposed and proven, not confirmed: both certificates ACTIVE, the device on the old one.
    let stopped = renew(&options(&stack, &device.out, Some(Step::Proven)))
        .await
        .unwrap_err();
    assert!(
        matches!(stopped, RenewError::Interrupted(Step::Proven)),
        "{stopped}"
    );
    let new = proposed(&device.out).unwrap();
    assert_ne!(new, old);
    assert_eq!(certificate_status(&iot, &old).await, "ACTIVE");
    assert_eq!(certificate_status(&iot, &new).await, "ACTIVE");
    assert_eq!(in_use(&device.out), old);

    let run = run_device(&run_args(&stack.renew_args(&device.out)), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("interrupted renewal completed"),
        "{}",
        run.stdout
    );
    let e = enrollment_json(&device.out);
    assert_eq!(e["certificateId"], new.as_str());
    assert_eq!(e["serial"], device.serial.as_str());
    // A new key file beside the old one; the old one, whose certificate is revoked, is gone.
    let new_key = device.key_path.with_file_name("device-r2.key");
    assert_eq!(e["key"], format!("file:{}", new_key.display()));
    assert!(!device.key_path.exists());
    let store = FileKeyStore::open(&new_key, Sharing::PRIVATE).unwrap();
    assert_eq!(e["publicKeyFingerprint"], key_fingerprint(&store).unwrap());
    let certificate = std::fs::read_to_string(device.out.join("certificate.pem")).unwrap();
    assert_eq!(
        cvm_core::csr::certificate_key_fingerprint(&certificate)
            .unwrap()
            .as_str(),
        key_fingerprint(&store).unwrap()
    );
    assert!(!device.out.join(NEXT_DIR).exists());
    assert_eq!(certificate_status(&iot, &old).await, "REVOKED");
    assert_eq!(
        active_certificates_for(&iot, &device.serial, since).await,
        [new.as_str()]
    );
    stack
        .identity_works(&device.out, &OpenOptions::default())
        .await
        .unwrap();

    // Running the first door again with the configured key finds the renewed enrollment,
    // and makes no key where the old one was.
    let token = tmp.path().join(format!("{}.token", device.serial));
    let key = format!("file:{}", device.key_path.display());
    let again = run_device(
        &run_args(&stack.enroll_args(&device.serial, &token, &device.out, &key)),
        &[],
    )
    .await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.starts_with("already enrolled"),
        "{}",
        again.stdout
    );
    assert!(!device.key_path.exists());

    // And again, from the renewed identity: the next generation of key.
    let run = run_device(&run_args(&stack.renew_args(&device.out)), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("renewed: "), "{}", run.stdout);
    let third = enrollment_json(&device.out)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(device.key_path.with_file_name("device-r3.key").exists());
    assert!(!new_key.exists());
    assert_eq!(certificate_status(&iot, &new).await, "REVOKED");
    assert_eq!(
        active_certificates_for(&iot, &device.serial, since).await,
        [third]
    );
}

#[tokio::test]
async fn a_renewal_interrupted_at_any_step_leaves_one_working_certificate() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    for step in [
        Step::KeyMade,
        Step::RenewalAnswered,
        Step::ProposalKept,
        Step::Proven,
        Step::Committed,
        Step::ConfirmAnswered,
        Step::Confirmed,
        Step::CertificateMoved,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let device = enrolled(&stack, "renew-step", tmp.path()).await;
        let old = device.certificate_id.clone();
        let stopped = renew(&options(&stack, &device.out, Some(step)))
            .await
            .unwrap_err();
        assert!(
            matches!(stopped, RenewError::Interrupted(s) if s == step),
            "{step:?}: {stopped}"
        );

        // Whatever was interrupted, the certificate the device uses is ACTIVE and works.
        let using = in_use(&device.out);
        assert_eq!(certificate_status(&iot, &using).await, "ACTIVE", "{step:?}");
        stack
            .identity_works(&device.out, &OpenOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{step:?}: {e}"));
        let committed = !matches!(
            step,
            Step::KeyMade | Step::RenewalAnswered | Step::ProposalKept | Step::Proven
        );
        assert_eq!(using != old, committed, "{step:?}");
        // The old certificate is revoked only once the API has the confirmation.
        let confirmed = matches!(
            step,
            Step::ConfirmAnswered | Step::Confirmed | Step::CertificateMoved
        );
        let old_status = certificate_status(&iot, &old).await;
        assert_eq!(old_status == "REVOKED", confirmed, "{step:?}: {old_status}");
        assert_eq!(old_status == "ACTIVE", !confirmed, "{step:?}: {old_status}");

        let run = run_device(&run_args(&stack.renew_args(&device.out)), &[]).await;
        assert!(run.status.success(), "{step:?}: {}", run.stderr);
        let new = in_use(&device.out);
        assert_ne!(new, old, "{step:?}");
        assert!(!device.out.join(NEXT_DIR).exists(), "{step:?}");
        assert_eq!(certificate_status(&iot, &old).await, "REVOKED", "{step:?}");
        assert_eq!(
            active_certificates_for(&iot, &device.serial, since).await,
            [new],
            "{step:?}"
        );
        stack
            .identity_works(&device.out, &OpenOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{step:?} after the next run: {e}"));
    }
}

/// The device committed to its proposal, but before it could confirm, the API dropped the
/// proposal (here: a renewal for another key replaced it; in the field, the grace ran out).
/// The confirmation is refused, the commit rolled back, and a new proposal made.
#[tokio::test]
async fn a_proposal_the_api_no_longer_has_is_rolled_back_and_asked_again() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    let tmp = tempfile::tempdir().unwrap();
    let device = enrolled(&stack, "renew-gone", tmp.path()).await;
    let old = device.certificate_id.clone();
    renew(&options(&stack, &device.out, Some(Step::Committed)))
        .await
        .unwrap_err();
    let abandoned = proposed(&device.out).unwrap();

    // Another renewal request, signed by the current key, for another key.
    let current = FileKeyStore::open(&device.key_path, Sharing::PRIVATE).unwrap();
    let other =
        FileKeyStore::open_or_create(&tmp.path().join("other.key"), Sharing::PRIVATE).unwrap();
    let csr = build_signed_csr(&other, &device.serial).unwrap();
    let signature = sign_message(&current, &renewal_message(&device.serial, &csr.der)).unwrap();
    let api_ca = reqwest::Certificate::from_pem(&std::fs::read(&stack.api_ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([api_ca])
        .build()
        .unwrap();
    let answer = client
        .post(format!("{}/v1/renewals", stack.api_url))
        .json(&serde_json::json!({
            "serial": device.serial,
            "csr": csr.pem,
            "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 201);
    assert_eq!(certificate_status(&iot, &abandoned).await, "REVOKED");

    let run = run_device(&run_args(&stack.renew_args(&device.out)), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("no longer has") || run.stderr.contains("nothing_to_renew"),
        "{}",
        run.stderr
    );
    let new = in_use(&device.out);
    assert_ne!(new, abandoned);
    assert_ne!(new, old);
    assert_eq!(certificate_status(&iot, &old).await, "REVOKED");
    assert_eq!(
        active_certificates_for(&iot, &device.serial, since).await,
        [new]
    );
    stack
        .identity_works(&device.out, &OpenOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn if_due_does_nothing_outside_the_window() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    let tmp = tempfile::tempdir().unwrap();
    let device = enrolled(&stack, "renew-due", tmp.path()).await;
    let before = std::fs::read(device.out.join("enrollment.json")).unwrap();

    let mut args = stack.renew_args(&device.out);
    args.push("--if-due".into());
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("not due: "), "{}", run.stdout);
    assert_eq!(
        std::fs::read(device.out.join("enrollment.json")).unwrap(),
        before
    );
    assert!(!device.out.join(NEXT_DIR).exists());
    assert!(!device.key_path.with_file_name("device-r2.key").exists());
    assert_eq!(
        active_certificates_for(&iot, &device.serial, since).await,
        [device.certificate_id.as_str()]
    );

    // A window longer than the certificate's validity: due now.
    args.extend(["--window-days".into(), "3650".into()]);
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("renewed: "), "{}", run.stdout);
    assert_ne!(in_use(&device.out), device.certificate_id);
}

#[tokio::test]
async fn a_pkcs11_key_is_renewed_under_a_new_label_on_the_token() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("renew-hsm", &[], tmp.path());
    let out = tmp.path().join("cvm");
    let (hsm, _in_process) = softhsm();
    let label = format!("renew{}", std::process::id() % 100_000);
    hsm.init_token(&label);
    let key = hsm.spec(&label, "device");
    let env = [("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())];
    let run = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &out, &key)),
        &env,
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let old = in_use(&out);

    let run = run_device(&run_args(&stack.renew_args(&out)), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let next = KeySpec::parse(&key).unwrap().successor().unwrap();
    let store = keystore::open(&next, &OpenOptions::default()).unwrap();
    let e = enrollment_json(&out);
    assert_eq!(e["key"], store.describe().as_str());
    assert!(
        store.describe().contains("key=device-r2"),
        "{}",
        store.describe()
    );
    let certificate = std::fs::read_to_string(out.join("certificate.pem")).unwrap();
    assert_eq!(
        cvm_core::csr::certificate_key_fingerprint(&certificate)
            .unwrap()
            .as_str(),
        key_fingerprint(store.as_ref()).unwrap()
    );
    drop(store);
    assert_eq!(certificate_status(&iot, &old).await, "REVOKED");
    assert_eq!(
        active_certificates_for(&iot, &serial, since).await,
        [in_use(&out)]
    );
    stack
        .identity_works(&out, &OpenOptions::default())
        .await
        .unwrap();

    // The configured label still names the first key: enroll knows the renewed one.
    let again = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &out, &key)),
        &env,
    )
    .await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.starts_with("already enrolled"),
        "{}",
        again.stdout
    );
}

#[tokio::test]
async fn a_device_provisioned_by_claim_renews_the_same_way() {
    let stack = stack();
    let since = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("renew-claim", &[], tmp.path());
    let out = tmp.path().join("cvm");
    let key = format!("file:{}", tmp.path().join("keys/device.key").display());
    let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    let old = in_use(&out);

    let run = run_device(&run_args(&stack.renew_args(&out)), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    let new = in_use(&out);
    assert_ne!(new, old);
    let iot = iot().await;
    assert_eq!(certificate_status(&iot, &old).await, "REVOKED");
    assert_eq!(active_certificates_for(&iot, &serial, since).await, [new]);
    stack
        .identity_works(&out, &OpenOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revoked_device_is_refused_for_good_and_keeps_its_files() {
    let stack = stack();
    let tmp = tempfile::tempdir().unwrap();
    let device = enrolled(&stack, "renew-revoked", tmp.path()).await;
    let revoked = std::process::Command::new(&stack.admin)
        .args(["revoke", "--serial", &device.serial])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let before = std::fs::read(device.out.join("enrollment.json")).unwrap();
    let run = run_device(&run_args(&stack.renew_args(&device.out)), &[]).await;
    assert_one_line_failure(&run, "the API refused the renewal: device_revoked (403)");
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    assert_eq!(
        std::fs::read(device.out.join("enrollment.json")).unwrap(),
        before
    );
}

/// Needs no stack.
#[tokio::test]
async fn renewing_a_device_that_is_not_enrolled_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_device(
        &[
            "renew",
            "--dir",
            tmp.path().join("cvm").to_str().unwrap(),
            "--url",
            "https://127.0.0.1:9",
        ],
        &[],
    )
    .await;
    assert_one_line_failure(&run, "not enrolled yet");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = run_device(&["renew", "--dir", tmp.path().to_str().unwrap()], &[]).await;
    assert_one_line_failure(&run, "no API URL");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
}

#[tokio::test]
async fn a_zymkey_renews_with_the_same_key_or_in_a_new_slot() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;
    let tmp = tempfile::tempdir().unwrap();
    let lib = standin_library();
    let env = [
        ("ZK_STANDIN_DIR", standin_module_dir().to_str().unwrap()),
        ("CVM_ZYMKEY_LIB", lib.to_str().unwrap()),
    ];
    let open = OpenOptions {
        zymkey_lib: Some(lib.to_owned()),
        ..OpenOptions::default()
    };

    // A fixed slot (Zymkey 4i, HSM4, or HSM6 without key generation): the same key again.
    let (serial, token) = stack.enroll_serial("renew-zk", &[], tmp.path());
    let out = tmp.path().join("fixed");
    let run = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &out, "zymkey:0")),
        &env,
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let before = enrollment_json(&out);
    let run = run_device(&run_args(&stack.renew_args(&out)), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let after = enrollment_json(&out);
    assert_eq!(after["key"], "zymkey:0");
    assert_eq!(
        after["publicKeyFingerprint"],
        before["publicKeyFingerprint"]
    );
    assert_ne!(after["certificateId"], before["certificateId"]);
    assert_eq!(
        certificate_status(&iot, before["certificateId"].as_str().unwrap()).await,
        "REVOKED"
    );
    assert_eq!(
        active_certificates_for(&iot, &serial, since).await,
        [after["certificateId"].as_str().unwrap()]
    );
    stack.identity_works(&out, &open).await.unwrap();

    // HSM6/SCM with --generate-key: the next key pair in a new slot, remembered for enroll.
    let (serial, token) = stack.enroll_serial("renew-zk-gen", &[], tmp.path());
    let out = tmp.path().join("generated");
    let mut enroll = stack.enroll_args(&serial, &token, &out, "zymkey");
    enroll.push("--generate-key".into());
    let run = run_device(&run_args(&enroll), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let before = enrollment_json(&out);
    let first_slot = std::fs::read_to_string(out.join("zymkey-slot")).unwrap();
    assert_eq!(before["key"], format!("zymkey:{}", first_slot.trim()));
    let mut renew_args = stack.renew_args(&out);
    renew_args.push("--generate-key".into());
    let run = run_device(&run_args(&renew_args), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let after = enrollment_json(&out);
    let slot = std::fs::read_to_string(out.join("zymkey-slot")).unwrap();
    assert_ne!(slot, first_slot);
    assert_eq!(after["key"], format!("zymkey:{}", slot.trim()));
    assert_ne!(
        after["publicKeyFingerprint"],
        before["publicKeyFingerprint"]
    );
    assert_eq!(
        active_certificates_for(&iot, &serial, since).await,
        [after["certificateId"].as_str().unwrap()]
    );
    stack.identity_works(&out, &open).await.unwrap();
    let again = run_device(&run_args(&enroll), &env).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.starts_with("already enrolled"),
        "{}",
        again.stdout
    );
}
