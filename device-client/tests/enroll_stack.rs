//! `cvm-device enroll` against the local stack (moto + the vend service), once per key store:
//! the stand-in Zymkey, a SoftHSM2 token and a key file each get a certificate whose public
//! key is the store's. Needs the stack's settings in the environment (`make test` exports
//! them); without them these tests fail, saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use cvm_device::csr::key_fingerprint;
use cvm_device::keystore::{self, KeySpec, OpenOptions, ZymkeyStore};
use cvm_device::KeyStore;

struct Stack {
    api_url: String,
    api_ca: String,
    admin: String,
}

fn stack() -> Stack {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: start the local stack: make up (then export .local/env, \
                 as `make test` does)"
            )
        })
    };
    Stack {
        api_url: var("CVM_API_URL"),
        api_ca: var("CVM_API_CA"),
        admin: var("CVM_ADMIN"),
    }
}

/// Enrolls a fresh serial with cvm-admin; its token in a 0600 file.
fn new_device(stack: &Stack, prefix: &str, dir: &Path) -> (String, PathBuf) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let serial = format!("{prefix}-{}-{nanos}", std::process::id());
    let out = std::process::Command::new(&stack.admin)
        .args(["enroll", "--serial", &serial, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cvm-admin enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, answer["token"].as_str().unwrap()).unwrap();
    (serial, token)
}

async fn enroll(
    stack: &Stack,
    serial: &str,
    token: &Path,
    out: &Path,
    key: &str,
    env: &[(&str, &str)],
) -> Run {
    run_device(
        &[
            "enroll",
            "--url",
            &stack.api_url,
            "--serial",
            serial,
            "--token-file",
            token.to_str().unwrap(),
            "--ca",
            &stack.api_ca,
            "--dir",
            out.to_str().unwrap(),
            "--key",
            key,
        ],
        env,
    )
    .await
}

/// Enrolls, checks the certificate carries the store's key, enrolls again (nothing asked),
/// and reports the time of the first run.
async fn enroll_and_check(
    label: &str,
    stack: &Stack,
    store: &dyn KeyStore,
    key: &str,
    env: &[(&str, &str)],
) {
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = new_device(stack, label, tmp.path());
    let out = tmp.path().join("cvm");

    let first = enroll(stack, &serial, &token, &out, key, env).await;
    assert!(first.status.success(), "{}", first.stderr);
    assert!(first.stdout.contains("new certificate"), "{}", first.stdout);
    eprintln!(
        "enroll with the {label} key store: {:.0} ms end to end (process start to exit)",
        first.elapsed.as_secs_f64() * 1000.0
    );

    let certificate = std::fs::read_to_string(out.join("certificate.pem")).unwrap();
    assert_eq!(
        cvm_core::csr::certificate_key_fingerprint(&certificate)
            .unwrap()
            .as_str(),
        key_fingerprint(store).unwrap(),
        "the certificate carries the {label} store's public key"
    );
    let enrollment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("enrollment.json")).unwrap()).unwrap();
    assert_eq!(enrollment["serial"], serial.as_str());
    assert_eq!(enrollment["key"], store.describe().as_str());
    assert!(enrollment["endpoints"]["credentials"].is_string());

    let again = enroll(stack, &serial, &token, &out, key, env).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.contains("already enrolled"),
        "{}",
        again.stdout
    );
}

#[tokio::test]
async fn enrolls_with_a_key_file() {
    let stack = stack();
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("device.key");
    let spec = format!("file:{}", path.display());
    let store = keystore::open(
        &KeySpec::parse(&spec).unwrap(),
        &OpenOptions {
            may_generate: true,
            ..Default::default()
        },
    )
    .unwrap();
    enroll_and_check("file", &stack, store.as_ref(), &spec, &[]).await;
}

#[tokio::test]
async fn enrolls_with_the_zymkey() {
    let stack = stack();
    let module = standin_module_dir().to_str().unwrap();
    let lib = standin_library().to_str().unwrap();
    let store = ZymkeyStore::open(Some(standin_library()), 0).unwrap();
    enroll_and_check(
        "zymkey",
        &stack,
        &store,
        "zymkey:0",
        &[("ZK_STANDIN_DIR", module), ("CVM_ZYMKEY_LIB", lib)],
    )
    .await;
}

#[tokio::test]
async fn enrolls_with_a_pkcs11_token() {
    let stack = stack();
    let (hsm, spec, recorded) = {
        let (hsm, _in_process) = softhsm();
        hsm.init_token("stack");
        let spec = hsm.spec("stack", "device");
        // Makes the key pair on the token, as enroll would; closed again before the binary
        // opens it.
        let enroll = OpenOptions {
            may_generate: true,
            ..Default::default()
        };
        let store = keystore::open(&KeySpec::parse(&spec).unwrap(), &enroll).unwrap();
        let recorded = PublicOnly(store.public_key().unwrap(), store.describe());
        (hsm, spec, recorded)
    };
    enroll_and_check(
        "pkcs11",
        &stack,
        &recorded,
        &spec,
        &[("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())],
    )
    .await;
}

#[tokio::test]
async fn a_lost_answer_is_delivered_again_and_a_wrong_token_refused() {
    let stack = stack();
    let tmp = tempfile::tempdir().unwrap();
    let (serial, token) = new_device(&stack, "redeliver", tmp.path());
    let out = tmp.path().join("cvm");
    let key = format!("file:{}", tmp.path().join("device.key").display());
    let first = enroll(&stack, &serial, &token, &out, &key, &[]).await;
    assert!(first.status.success(), "{}", first.stderr);
    let certificate = std::fs::read_to_string(out.join("certificate.pem")).unwrap();

    // As if the answer had been lost: nothing on disk but the key.
    std::fs::remove_dir_all(&out).unwrap();
    let again = enroll(&stack, &serial, &token, &out, &key, &[]).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        again.stdout.contains("certificate re-delivered"),
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read_to_string(out.join("certificate.pem")).unwrap(),
        certificate
    );

    // Another device's attempt with a wrong token: refused, in one line, nothing written.
    let (serial, _) = new_device(&stack, "wrong-token", tmp.path());
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let other_out = tmp.path().join("other");
    let other_key = format!("file:{}", tmp.path().join("other.key").display());
    let refused = enroll(&stack, &serial, &wrong, &other_out, &other_key, &[]).await;
    assert_one_line_failure(&refused, "the API refused the enrollment");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "refused for good: {}",
        refused.stderr
    );
    assert!(
        files_in(&other_out).is_empty(),
        "{:?}",
        files_in(&other_out)
    );
}

struct PublicOnly([u8; 65], String);

impl KeyStore for PublicOnly {
    fn public_key(&self) -> Result<[u8; 65], cvm_device::KeyStoreError> {
        Ok(self.0)
    }
    fn sign_digest(&self, _: &[u8; 32]) -> Result<[u8; 64], cvm_device::KeyStoreError> {
        Err(cvm_device::KeyStoreError::Signing("public key only".into()))
    }
    fn describe(&self) -> String {
        self.1.clone()
    }
}
