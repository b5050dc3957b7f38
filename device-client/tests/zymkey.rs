//! The Zymkey binding, end to end against a stand-in `libzk_app_utils` (the same C functions
//! over software P-256 keys): exported key, signatures, CSR, key generation, serialized use
//! of the context, and the errors when the library or the module is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use cvm_device::csr::{build_csr, key_fingerprint};
use cvm_device::keystore::{self, KeySpec, OpenOptions, ZymkeyStore};
use cvm_device::KeyStore;

fn open(slot: i32) -> ZymkeyStore {
    standin_module_dir();
    ZymkeyStore::open(Some(standin_library()), slot).unwrap()
}

#[test]
fn the_exported_key_is_stable_and_its_signatures_verify() {
    let a = open(0);
    let b = open(0);
    assert_eq!(a.public_key().unwrap(), b.public_key().unwrap());
    assert_eq!(a.public_key().unwrap()[0], 0x04);
    assert_ne!(open(1).public_key().unwrap(), a.public_key().unwrap());
    assert_signs(&a);
    assert_eq!(a.describe(), "zymkey:0");
}

#[test]
fn a_csr_made_through_the_module_verifies_with_openssl() {
    let store = open(0);
    let pem = build_csr(&store, "ZK-DEVICE-1").unwrap();
    let csr = cvm_core::Csr::parse_pem(&pem).unwrap();
    assert_eq!(csr.common_name(), "ZK-DEVICE-1");
    assert_eq!(csr.fingerprint().as_str(), key_fingerprint(&store).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.pem");
    std::fs::write(&path, &pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn concurrent_signers_share_one_context_safely() {
    // The stand-in fails any call that overlaps another on the same context.
    let store = Arc::new(open(0));
    let public = store.public_key().unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let digest = [i; 32];
                (digest, store.sign_digest(&digest))
            })
        })
        .collect();
    for t in threads {
        let (digest, sig) = t.join().unwrap();
        assert!(verify_raw(&public, &digest, &sig.unwrap()));
    }
}

#[test]
fn an_empty_slot_is_reported() {
    standin_module_dir();
    let err = ZymkeyStore::open(Some(standin_library()), 9)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("zkExportPubKey failed for slot 9"), "{err}");
}

#[test]
fn generate_key_makes_a_key_once_and_remembers_its_slot() {
    standin_module_dir();
    let state = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        zymkey_lib: Some(standin_library().to_owned()),
        generate_key: true,
        state_dir: state.path().to_owned(),
        may_generate: true,
        ..Default::default()
    };
    let first = keystore::open(&KeySpec::Zymkey(None), &options).unwrap();
    let slot: i32 = std::fs::read_to_string(state.path().join("zymkey-slot"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(slot >= 16, "generated keys live in slots 16 and up: {slot}");
    assert_eq!(first.describe(), format!("zymkey:{slot}"));
    assert_signs(first.as_ref());

    // Again (a retry, or `credentials` later): the same key, no new one.
    let again = keystore::open(
        &KeySpec::Zymkey(None),
        &OpenOptions {
            may_generate: false,
            ..options.clone()
        },
    )
    .unwrap();
    assert_eq!(again.public_key().unwrap(), first.public_key().unwrap());

    // A command that may not generate says what to do when there is no key yet.
    let empty = tempfile::tempdir().unwrap();
    let err = keystore::open(
        &KeySpec::Zymkey(None),
        &OpenOptions {
            state_dir: empty.path().to_owned(),
            may_generate: false,
            ..options.clone()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("run `cvm-device enroll` first"), "{err}");

    // A fixed slot and --generate-key contradict each other at enrollment.
    let err = keystore::open(&KeySpec::Zymkey(Some(0)), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--generate-key picks the slot"), "{err}");
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let err = ZymkeyStore::open(
        Some(std::path::Path::new("/nonexistent/libzk_app_utils.so")),
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("cannot load the Zymkey library"), "{err}");
    assert!(err.contains("/nonexistent/libzk_app_utils.so"), "{err}");
    assert!(err.contains("--zymkey-lib"), "{err}");
    assert!(!err.contains('\n'));
}

#[test]
fn a_library_that_is_not_zymbits_is_named() {
    let err = ZymkeyStore::open(Some(std::path::Path::new(SOFTHSM_MODULE)), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is not Zymbit's libzk_app_utils"), "{err}");
    assert!(err.contains("zkOpen"), "{err}");
}

#[tokio::test]
async fn the_binary_reports_a_missing_library_or_module_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cvm");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let base = [
        "enroll",
        "--url",
        "https://127.0.0.1:9",
        "--serial",
        "ZK-1",
        "--token-file",
        token.to_str().unwrap(),
        "--dir",
        out.to_str().unwrap(),
        "--key",
        "zymkey",
    ];

    let mut args = base.to_vec();
    args.extend(["--zymkey-lib", "/nonexistent/libzk_app_utils.so"]);
    let run = run_device(&args, &[]).await;
    assert_one_line_failure(&run, "cannot load the Zymkey library");
    assert!(files_in(&out).is_empty());

    // The default names, looked up like any library (nowhere to be found here).
    let run = run_device(&base, &[]).await;
    assert_one_line_failure(&run, "libzk_app_utils.so.3");

    // The library is there but no module answers.
    let mut args = base.to_vec();
    args.extend(["--zymkey-lib", standin_library().to_str().unwrap()]);
    let run = run_device(&args, &[]).await;
    assert_one_line_failure(&run, "zkOpen failed");
    assert!(files_in(&out).is_empty());
}

#[tokio::test]
async fn the_binary_finds_the_library_by_its_default_name() {
    // With the library on the search path and no --zymkey-lib, the key opens and the run gets
    // as far as the (closed) port.
    let module = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let out = dir.path().join("cvm");
    let run = run_device(
        &[
            "enroll",
            "--url",
            "https://127.0.0.1:9",
            "--serial",
            "ZK-2",
            "--token-file",
            token.to_str().unwrap(),
            "--dir",
            out.to_str().unwrap(),
            "--key",
            "zymkey:0",
            "--max-attempts",
            "1",
        ],
        &[
            (
                "LD_LIBRARY_PATH",
                standin_library().parent().unwrap().to_str().unwrap(),
            ),
            ("ZK_STANDIN_DIR", module.path().to_str().unwrap()),
        ],
    )
    .await;
    assert_one_line_failure(&run, "could not reach the API at https://127.0.0.1:9");
    assert!(module.path().join("slot-0.pem").exists());
    assert!(!out.join("enrollment.json").exists());
}
