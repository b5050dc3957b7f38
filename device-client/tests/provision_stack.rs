//! `cvm-device provision` against the local stack: Mosquitto with mutual TLS and the stand-in
//! for AWS IoT's side of fleet provisioning, which runs the real certificate provider (AWS
//! Private CA in moto) and the real pre-provisioning hook over the same device table as the
//! vend API. A device provisions by claim with its key in a file or in SoftHSM2 (the claim key
//! in a file or on the token), over 8883 or the ALPN port; its certificate chains to the
//! Private CA and carries its key; the thing, its attributes, policy and ACTIVE certificate
//! are in AWS IoT (moto). A wrong token is denied by the hook and counted; a second key for a
//! serial is refused through either door; a run interrupted at any step, or whose answer was
//! lost, completes on the next run with one ACTIVE certificate.
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
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use cvm_device::api::Backoff;
use cvm_device::clock::ClockCheck;
use cvm_device::csr::key_fingerprint;
use cvm_device::files::Sharing;
use cvm_device::keystore::{self, KeySpec, OpenOptions};
use cvm_device::mqtt::{Endpoint, Timeouts};
use cvm_device::provision::{
    provision, ProvisionError, ProvisionOptions, Recorded, Step, DEFAULT_PROOF_TOPIC, PENDING_FILE,
};
use cvm_device::tls::ClientKey;
use cvm_device::{FileKeyStore, KeyStore};
use secrecy::SecretString;
use stack::*;

fn file_key(dir: &Path) -> (String, PathBuf) {
    let path = dir.join("keys/device.key");
    (format!("file:{}", path.display()), path)
}

fn run_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The library's provisioning, as the binary runs it, stopped after `step`.
async fn interrupted(
    stack: &Stack,
    serial: &str,
    token: &Path,
    out: &Path,
    key: &Path,
    step: Step,
) -> ProvisionError {
    let store: Arc<dyn KeyStore> =
        Arc::new(FileKeyStore::open_or_create(key, Sharing::PRIVATE).unwrap());
    let options = ProvisionOptions {
        serial: serial.to_owned(),
        token: Some(SecretString::from(std::fs::read_to_string(token).unwrap())),
        template: stack.template.clone(),
        endpoint: Endpoint::parse(&stack.mqtt_endpoint(), false).unwrap(),
        broker_ca: stack.mqtt_ca.clone().into(),
        claim_certificate: stack.claim_cert.clone().into(),
        claim_key: ClientKey::File {
            path: stack.claim_key.clone().into(),
            sharing: Sharing::PRIVATE,
        },
        client_id: format!("claim-{serial}"),
        proof_topic: DEFAULT_PROOF_TOPIC.into(),
        recorded: Recorded::default(),
        out: out.to_owned(),
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        timeouts: Timeouts::default(),
        clock: ClockCheck::system(Duration::ZERO),
        sharing: Sharing::PRIVATE,
        interrupt_after: Some(step),
    };
    provision(store, &options).await.unwrap_err()
}

/// The thing exists with the enrollment's attributes, the certificate is ACTIVE, attached to
/// it and to the deployment's default policy, and it is the only ACTIVE certificate for the
/// serial.
async fn assert_provisioned_in_aws_iot(
    stack: &Stack,
    serial: &str,
    certificate_id: &str,
    attribute: Option<(&str, &str)>,
    since: SystemTime,
) {
    let iot = iot().await;
    assert_eq!(certificate_status(&iot, certificate_id).await, "ACTIVE");
    let thing = iot
        .describe_thing()
        .thing_name(serial)
        .send()
        .await
        .unwrap();
    if let Some((name, value)) = attribute {
        assert_eq!(
            thing
                .attributes()
                .and_then(|a| a.get(name))
                .map(String::as_str),
            Some(value)
        );
    }
    let principals = iot
        .list_thing_principals()
        .thing_name(serial)
        .send()
        .await
        .unwrap();
    let arn = principals
        .principals()
        .iter()
        .find(|arn| arn.ends_with(certificate_id))
        .unwrap_or_else(|| panic!("{certificate_id} not attached to {serial}"))
        .clone();
    let policies = iot
        .list_attached_policies()
        .target(arn)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = policies
        .policies()
        .iter()
        .filter_map(|p| p.policy_name())
        .collect();
    assert_eq!(names, [stack.default_policy.as_str()]);
    assert_eq!(
        active_certificates_for(&iot, serial, since).await,
        [certificate_id]
    );
}

#[tokio::test]
async fn provisions_by_claim_with_a_key_file_next_to_enroll() {
    let stack = stack();
    let since = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("prov-file", &["--attr", "site=lab"], tmp.path());
    let out = tmp.path().join("cvm");
    let (key, key_path) = file_key(tmp.path());

    let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("provisioned: "), "{}", run.stdout);
    let provision_time = run.elapsed;

    // The same files as enroll writes, owner-only, and nothing of the provisioning left.
    assert_eq!(
        files_in(&out),
        ["ca.pem", "certificate.pem", "enrollment.json"]
    );
    for name in files_in(&out) {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(out.join(&name)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let store = FileKeyStore::open(&key_path, Sharing::PRIVATE).unwrap();
    let e = enrollment_json(&out);
    assert_eq!(e["serial"], serial.as_str());
    assert_eq!(e["thingName"], serial.as_str());
    assert_eq!(e["key"], key.as_str());
    assert_eq!(e["publicKeyFingerprint"], key_fingerprint(&store).unwrap());
    assert_eq!(e["endpoints"]["data"], "127.0.0.1");
    assert!(e["certificateArn"].is_null());
    let certificate_id = e["certificateId"].as_str().unwrap().to_owned();
    assert_eq!(certificate_id.len(), 64);

    // Signed by the Private CA through the certificate provider, for the device's key.
    let certificate = out.join("certificate.pem");
    assert!(chains_to(&certificate, &stack.pca_ca));
    assert_eq!(
        cvm_core::csr::certificate_key_fingerprint(&std::fs::read_to_string(&certificate).unwrap())
            .unwrap()
            .as_str(),
        key_fingerprint(&store).unwrap()
    );
    assert_provisioned_in_aws_iot(
        &stack,
        &serial,
        &certificate_id,
        Some(("site", "lab")),
        since,
    )
    .await;
    stack
        .identity_works(&out, &OpenOptions::default())
        .await
        .unwrap();

    // Once provisioned, nothing is asked.
    let again = run_device(&run_args(&args), &[]).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.starts_with("already enrolled"),
        "{}",
        again.stdout
    );

    // The other door, for comparison.
    let (serial, token) = stack.enroll_serial("enroll-file", &[], tmp.path());
    let enroll_out = tmp.path().join("enrolled");
    let enroll_key = format!("file:{}", tmp.path().join("keys/enrolled.key").display());
    let enrolled = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &enroll_out, &enroll_key)),
        &[],
    )
    .await;
    assert!(enrolled.status.success(), "{}", enrolled.stderr);
    eprintln!(
        "end to end, process start to exit: provision {:.0} ms (MQTT: CreateCertificateFromCsr, \
         RegisterThing, proof publish), enroll {:.0} ms (HTTPS: one POST)",
        provision_time.as_secs_f64() * 1000.0,
        enrolled.elapsed.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn provisions_with_device_and_claim_keys_in_softhsm_over_the_alpn_port() {
    let stack = stack();
    let since = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("prov-hsm", &[], tmp.path());
    let out = tmp.path().join("cvm");
    let (hsm, _in_process) = softhsm();
    let label = format!("fleet{}", std::process::id() % 100_000);
    hsm.init_token(&label);
    let imported = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .args(["--import", &stack.claim_key, "--token", &label])
        .args(["--label", "claim", "--id", "c1", "--pin", TOKEN_PIN])
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let device_key = hsm.spec(&label, "device");
    let claim_key = hsm.spec(&label, "claim");

    let mut args = stack.provision_args(&serial, Some(&token), &out, &device_key, &claim_key);
    // AWS IoT's port 443: ALPN x-amzn-mqtt-ca (the stack's front refuses clients without it).
    let alpn_endpoint = format!("127.0.0.1:{}", stack.mqtt_alpn_port);
    let at = args.iter().position(|a| a == "--mqtt-endpoint").unwrap();
    args[at + 1] = alpn_endpoint.clone();
    let conf = hsm.conf.to_str().unwrap();
    let without_alpn = run_device(
        &[&run_args(&args)[..], &["--max-attempts", "1"]].concat(),
        &[("SOFTHSM2_CONF", conf)],
    )
    .await;
    assert_eq!(
        without_alpn.status.code(),
        Some(1),
        "{}",
        without_alpn.stderr
    );
    args.push("--mqtt-alpn".into());
    let run = run_device(&run_args(&args), &[("SOFTHSM2_CONF", conf)]).await;
    assert!(run.status.success(), "{}", run.stderr);

    let store = keystore::open(
        &KeySpec::parse(&device_key).unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    let e = enrollment_json(&out);
    assert_eq!(e["key"], store.describe().as_str());
    let certificate = std::fs::read_to_string(out.join("certificate.pem")).unwrap();
    assert_eq!(
        cvm_core::csr::certificate_key_fingerprint(&certificate)
            .unwrap()
            .as_str(),
        key_fingerprint(store.as_ref()).unwrap(),
        "the certificate carries the token's key"
    );
    assert!(chains_to(&out.join("certificate.pem"), &stack.pca_ca));
    drop(store);
    assert_provisioned_in_aws_iot(
        &stack,
        &serial,
        e["certificateId"].as_str().unwrap(),
        None,
        since,
    )
    .await;
    stack
        .identity_works(&out, &OpenOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_denied_by_the_hook_and_counted_toward_the_lockout() {
    let stack = stack();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, _) = stack.enroll_serial("prov-wrong", &[], tmp.path());
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "wrong-token-wrong-token-wrong-tok").unwrap();
    let out = tmp.path().join("cvm");
    let (key, _) = file_key(tmp.path());
    let before = stack.show(&serial)["lockout"]["failedAttempts"].clone();
    assert_eq!(before, 0);

    let args = stack.provision_args(&serial, Some(&wrong), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert_one_line_failure(&run, "AWS IoT rejected RegisterThing: AccessDenied (403)");
    assert_eq!(run.status.code(), Some(3), "final: {}", run.stderr);
    assert!(!run.stderr.contains("wrong-token"), "{}", run.stderr);
    assert!(!out.join("enrollment.json").exists());
    assert!(!out.join("certificate.pem").exists());

    let record = stack.show(&serial);
    assert_eq!(record["lockout"]["failedAttempts"], 1, "{record}");
    assert_eq!(record["state"], "enrolled");
}

#[tokio::test]
async fn a_second_key_for_a_serial_is_refused_through_either_door() {
    let stack = stack();
    let since = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    let keys = |name: &str| {
        format!(
            "file:{}",
            tmp.path().join(format!("keys/{name}.key")).display()
        )
    };

    // Enrolled over HTTPS with key A; provisioning by claim with key B is refused.
    let (serial, token) = stack.enroll_serial("doors-1", &[], tmp.path());
    let enrolled = tmp.path().join("enrolled");
    let run = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &enrolled, &keys("a1"))),
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let first = enrollment_json(&enrolled)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = tmp.path().join("other");
    let args = stack.provision_args(&serial, Some(&token), &other, &keys("b1"), &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert_one_line_failure(&run, "AccessDenied (403)");
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    let iot = iot().await;
    assert_eq!(active_certificates_for(&iot, &serial, since).await, [first]);

    // Provisioned by claim with key A; enrolling over HTTPS with key B is refused.
    let (serial, token) = stack.enroll_serial("doors-2", &[], tmp.path());
    let provisioned = tmp.path().join("provisioned");
    let args = stack.provision_args(
        &serial,
        Some(&token),
        &provisioned,
        &keys("a2"),
        &stack.claim_key,
    );
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    let first = enrollment_json(&provisioned)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = tmp.path().join("other2");
    let run = run_device(
        &run_args(&stack.enroll_args(&serial, &token, &other, &keys("b2"))),
        &[],
    )
    .await;
    assert_one_line_failure(&run, "the API refused the enrollment");
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    assert!(!other.join("enrollment.json").exists());
    assert_eq!(active_certificates_for(&iot, &serial, since).await, [first]);
}

#[tokio::test]
async fn a_lost_register_thing_answer_is_asked_again_and_the_identity_comes_back() {
    let stack = stack();
    let since = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("prov-lost", &[], tmp.path());
    let out = tmp.path().join("cvm");
    let (key, key_path) = file_key(tmp.path());

    // RegisterThing was accepted (thing made, certificate ACTIVE) but the answer never came.
    let stopped = interrupted(
        &stack,
        &serial,
        &token,
        &out,
        &key_path,
        Step::ThingRegistered,
    )
    .await;
    assert!(
        matches!(stopped, ProvisionError::Interrupted(Step::ThingRegistered)),
        "{stopped}"
    );
    let pending: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(PENDING_FILE)).unwrap()).unwrap();
    let certificate_id = pending["certificateId"].as_str().unwrap().to_owned();
    assert!(pending["registration"].is_null());
    assert!(!out.join("enrollment.json").exists());

    let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("interrupted provisioning completed"),
        "{}",
        run.stdout
    );
    assert_eq!(
        enrollment_json(&out)["certificateId"],
        certificate_id.as_str()
    );
    assert!(!out.join(PENDING_FILE).exists());
    assert_provisioned_in_aws_iot(&stack, &serial, &certificate_id, None, since).await;
    let record = stack.show(&serial);
    assert_eq!(record["state"], "issued", "{record}");
}

/// Storage wiped, the key kept (it lives in the module), the device provisions again.
#[tokio::test]
async fn a_device_starting_over_with_the_same_key_ends_with_one_active_certificate() {
    let stack = stack();
    let since = SystemTime::now();
    let iot = iot().await;

    // A key file signs deterministically (RFC 6979): the same CSR again, and the certificate
    // provider's request-derived idempotency gives the same certificate back.
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = stack.enroll_serial("prov-over-file", &[], tmp.path());
    let out = tmp.path().join("cvm");
    let (key, _) = file_key(tmp.path());
    let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    let first = enrollment_json(&out)["certificateId"].clone();
    std::fs::remove_dir_all(&out).unwrap();
    let run = run_device(&run_args(&args), &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(enrollment_json(&out)["certificateId"], first);
    assert_provisioned_in_aws_iot(&stack, &serial, first.as_str().unwrap(), None, since).await;

    // A module signs with a fresh nonce: a new CSR, a new certificate for the same key, and
    // the hook deactivates the one it replaces.
    let (serial, token) = stack.enroll_serial("prov-over-hsm", &[], tmp.path());
    let out = tmp.path().join("cvm-hsm");
    let (hsm, _in_process) = softhsm();
    let label = format!("over{}", std::process::id() % 100_000);
    hsm.init_token(&label);
    let key = hsm.spec(&label, "device");
    let env = [("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())];
    let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
    let run = run_device(&run_args(&args), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let first = enrollment_json(&out)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_dir_all(&out).unwrap();
    let run = run_device(&run_args(&args), &env).await;
    assert!(run.status.success(), "{}", run.stderr);
    let second = enrollment_json(&out)["certificateId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    assert_eq!(certificate_status(&iot, &first).await, "INACTIVE");
    assert_provisioned_in_aws_iot(&stack, &serial, &second, None, since).await;
    stack
        .identity_works(&out, &OpenOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_interrupted_at_any_step_is_completed_by_the_next() {
    let stack = stack();
    let since = SystemTime::now();
    for step in [
        Step::CertificateCreated,
        Step::CertificateKept,
        Step::RegistrationKept,
        Step::Proven,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (serial, token) = stack.enroll_serial("prov-step", &[], tmp.path());
        let out = tmp.path().join("cvm");
        let (key, key_path) = file_key(tmp.path());
        let stopped = interrupted(&stack, &serial, &token, &out, &key_path, step).await;
        assert!(
            matches!(stopped, ProvisionError::Interrupted(s) if s == step),
            "{step:?}: {stopped}"
        );
        assert!(!out.join("enrollment.json").exists(), "{step:?}");

        let args = stack.provision_args(&serial, Some(&token), &out, &key, &stack.claim_key);
        let run = run_device(&run_args(&args), &[]).await;
        assert!(run.status.success(), "{step:?}: {}", run.stderr);
        let certificate_id = enrollment_json(&out)["certificateId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_provisioned_in_aws_iot(&stack, &serial, &certificate_id, None, since).await;
        stack
            .identity_works(&out, &OpenOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{step:?}: {e}"));
    }
}

/// Settings that are missing or wrong are named, with status 2, before anything is sent; an
/// unreachable broker is transient (1). Needs no stack.
#[tokio::test]
async fn missing_or_wrong_settings_are_named_and_an_unreachable_broker_is_transient() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test claim CA");
    let claim_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point: [u8; 65] = claim_key.public_key_raw().try_into().unwrap();
    let claim_cert = tmp.path().join("claim.pem");
    std::fs::write(&claim_cert, ca.client_for(point, "claim")).unwrap();
    let claim_key_path = tmp.path().join("claim.key");
    std::fs::write(&claim_key_path, claim_key.serialize_pem()).unwrap();
    std::fs::set_permissions(
        &claim_key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ca_file = tmp.path().join("ca.pem");
    ca.write(&ca_file);
    let token = tmp.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tmp.path().join("cvm");
    let key = format!("file:{}", tmp.path().join("device.key").display());
    let endpoint = format!("127.0.0.1:{closed}");
    let base = |skip: &str| -> Vec<String> {
        let all = [
            ("--dir", out.to_str().unwrap()),
            ("--serial", "S-1"),
            ("--token-file", token.to_str().unwrap()),
            ("--key", &key),
            ("--mqtt-endpoint", &endpoint),
            ("--mqtt-ca", ca_file.to_str().unwrap()),
            ("--template", "cvm-fleet"),
            ("--claim-cert", claim_cert.to_str().unwrap()),
            ("--claim-key", claim_key_path.to_str().unwrap()),
        ];
        let mut args = vec!["provision".to_owned()];
        for (flag, value) in all {
            if flag != skip {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args
    };
    for (skip, named) in [
        ("--template", "no provisioning template"),
        ("--claim-cert", "no claim certificate"),
        ("--claim-key", "no claim key"),
        ("--mqtt-endpoint", "no MQTT endpoint"),
        ("--mqtt-ca", "no broker CA"),
        ("--key", "no key store chosen"),
        ("--token-file", "no token"),
    ] {
        let run = run_device(&run_args(&base(skip)), &[]).await;
        assert_one_line_failure(&run, named);
        assert_eq!(run.status.code(), Some(2), "{skip}: {}", run.stderr);
    }
    let mut plain = base("");
    let at = plain.iter().position(|a| a == "--mqtt-endpoint").unwrap();
    plain[at + 1] = "mqtt://127.0.0.1:1883".into();
    let run = run_device(&run_args(&plain), &[]).await;
    assert_one_line_failure(&run, "TLS is required");
    assert_eq!(run.status.code(), Some(2));

    // A claim key others can read is refused, and named.
    std::fs::set_permissions(
        &claim_key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let run = run_device(&run_args(&base("")), &[]).await;
    assert_one_line_failure(&run, "chmod 600");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    std::fs::set_permissions(
        &claim_key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let run = run_device(
        &[&run_args(&base(""))[..], &["--max-attempts", "2"]].concat(),
        &[],
    )
    .await;
    assert_one_line_failure(&run, "could not connect to");
    assert_eq!(run.status.code(), Some(1), "transient: {}", run.stderr);
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}
