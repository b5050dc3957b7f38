//! The PKCS#11 key store against SoftHSM2: a key pair made on the token (sensitive, not
//! extractable) at enrollment only and found again by label, signatures and a CSR through it,
//! and one-line errors for a wrong PIN, a missing token, a missing module and a missing key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cvm_device::csr::{build_csr, key_fingerprint};
use cvm_device::keystore::{self, KeySpec, OpenOptions, Pkcs11Spec, Pkcs11Store};
use cvm_device::{KeyStore, KeyStoreError};

fn spec(hsm: &SoftHsm, token: &str, key: &str) -> Pkcs11Spec {
    match KeySpec::parse(&hsm.spec(token, key)).unwrap() {
        KeySpec::Pkcs11(spec) => spec,
        other => panic!("{other:?}"),
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{nanos}")
}

#[test]
fn a_key_is_made_on_the_token_once_and_never_leaves_it() {
    let (hsm, _guard) = softhsm();
    let token = unique("gen");
    hsm.init_token(&token);
    let spec = spec(hsm, &token, "device");

    let public = {
        let store = Pkcs11Store::open_or_generate(&spec).unwrap();
        assert_signs(&store);
        assert_eq!(
            KeySpec::parse(&store.describe()).unwrap(),
            KeySpec::Pkcs11(spec.clone())
        );
        assert!(!store.describe().contains(TOKEN_PIN));
        store.public_key().unwrap()
    };
    // Found again by label, not made anew.
    let again = Pkcs11Store::open(&spec).unwrap();
    assert_eq!(again.public_key().unwrap(), public);
    drop(again);

    // Look at the objects with the module directly: one pair, the private key on the token,
    // sensitive, not extractable, its value unreadable.
    let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = pkcs11.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&TOKEN_PIN.to_owned().into()))
        .unwrap();
    let private = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"device".to_vec()),
        ])
        .unwrap();
    assert_eq!(private.len(), 1);
    let attributes = session
        .get_attributes(
            private[0],
            &[
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .unwrap();
    assert!(
        attributes.contains(&Attribute::Token(true)),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&Attribute::Sensitive(true)),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&Attribute::Extractable(false)),
        "{attributes:?}"
    );
    let value = session
        .get_attributes(private[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the private value is readable: {value:?}"
    );
    drop(session);
    pkcs11.finalize().unwrap();
}

#[test]
fn a_csr_made_through_the_token_verifies_with_openssl() {
    let (hsm, _guard) = softhsm();
    let token = unique("csr");
    hsm.init_token(&token);
    let store = Pkcs11Store::open_or_generate(&spec(hsm, &token, "device")).unwrap();
    let pem = build_csr(&store, "HSM-DEVICE-1").unwrap();
    let csr = cvm_core::Csr::parse_pem(&pem).unwrap();
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

/// The objects on the in-process SoftHSM2's token `token` (a fresh look: the module is
/// initialized for it, so what another process wrote is seen).
fn objects_on(token: &str) -> usize {
    let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = pkcs11.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&TOKEN_PIN.to_owned().into()))
        .unwrap();
    let count = session.find_objects(&[]).unwrap().len();
    drop(session);
    pkcs11.finalize().unwrap();
    count
}

#[test]
fn only_enrollment_generates_a_key_other_commands_name_the_missing_one() {
    let (hsm, _guard) = softhsm();
    let token = unique("nokey");
    hsm.init_token(&token);
    let spec = spec(hsm, &token, "device");

    let err = open_err(&spec);
    assert!(
        err.contains(&format!(
            "no key labelled \"device\" on PKCS#11 token \"{token}\""
        )),
        "{err}"
    );
    let key_spec = KeySpec::Pkcs11(spec.clone());
    let err = keystore::open(&key_spec, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, KeyStoreError::NoKey(_)), "{err}");
    assert_eq!(objects_on(&token), 0, "nothing was made");

    // What enroll opens with makes the pair, once.
    let enroll = OpenOptions {
        may_generate: true,
        ..Default::default()
    };
    let made = keystore::open(&key_spec, &enroll)
        .unwrap()
        .public_key()
        .unwrap();
    assert_eq!(objects_on(&token), 2, "one key pair");
    let found = Pkcs11Store::open(&spec).unwrap().public_key().unwrap();
    assert_eq!(made, found);
}

#[tokio::test]
async fn credentials_and_publish_name_a_missing_key_and_make_none() {
    let token = unique("cmds");
    let conf = {
        let (hsm, _in_process) = softhsm();
        hsm.init_token(&token);
        (
            hsm.spec(&token, "device"),
            hsm.conf.to_str().unwrap().to_owned(),
        )
    };
    let (key, conf) = conf;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let commands: [&[&str]; 2] = [
        &[
            "credentials",
            "--endpoint",
            "127.0.0.1:9",
            "--role-alias",
            "alias",
            "--thing-name",
            "thing",
        ],
        &[
            "publish",
            "--endpoint",
            "127.0.0.1:9",
            "--topic",
            "t",
            "--message",
            "m",
        ],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--dir", dir_arg, "--key", &key]);
        let run = run_device(&args, &[("SOFTHSM2_CONF", &conf)]).await;
        assert_one_line_failure(
            &run,
            &format!("no key labelled \"device\" on PKCS#11 token \"{token}\""),
        );
        assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    }
    let (_hsm, _in_process) = softhsm();
    assert_eq!(objects_on(&token), 0, "no key was generated on the token");
}

fn open_err(spec: &Pkcs11Spec) -> String {
    let err = Pkcs11Store::open(spec).err().unwrap().to_string();
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn wrong_pin_missing_token_and_missing_module_are_named() {
    let (hsm, _guard) = softhsm();
    let token = unique("errors");
    hsm.init_token(&token);

    let mut wrong_pin = spec(hsm, &token, "device");
    let pin_file = hsm.root.join("wrong-pin");
    std::fs::write(&pin_file, "0000").unwrap();
    wrong_pin.pin_file = Some(pin_file);
    let err = open_err(&wrong_pin);
    assert!(err.contains("wrong PIN"), "{err}");
    assert!(err.contains(&token), "{err}");

    let err = open_err(&spec(hsm, "no-such-token", "device"));
    assert!(
        err.contains("no PKCS#11 token labelled \"no-such-token\""),
        "{err}"
    );
    assert!(err.contains(&token), "the tokens there are listed: {err}");

    let mut no_module = spec(hsm, &token, "device");
    no_module.module = "/nonexistent/libpkcs11.so".into();
    let err = open_err(&no_module);
    assert!(
        err.contains("cannot load the PKCS#11 module /nonexistent/libpkcs11.so"),
        "{err}"
    );

    let mut no_pin_file = spec(hsm, &token, "device");
    no_pin_file.pin_file = Some(hsm.root.join("absent"));
    let err = open_err(&no_pin_file);
    assert!(err.contains("PIN file"), "{err}");
}

#[tokio::test]
async fn the_binary_takes_the_pin_from_the_environment_and_reports_errors_in_one_line() {
    let hsm = SoftHsm::new();
    hsm.init_token("cli");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let out = dir.path().join("cvm");
    let spec = format!("pkcs11:module={SOFTHSM_MODULE};token=cli;key=device");
    let args = |key: &str| {
        vec![
            "enroll".to_owned(),
            "--url".into(),
            "https://127.0.0.1:9".into(),
            "--serial".into(),
            "HSM-1".into(),
            "--token-file".into(),
            token.to_str().unwrap().into(),
            "--dir".into(),
            out.to_str().unwrap().into(),
            "--max-attempts".into(),
            "1".into(),
            "--key".into(),
            key.into(),
        ]
    };
    let conf = hsm.conf.to_str().unwrap();
    let run = |key: String, pin: Option<&'static str>| {
        let args = args(&key);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut env = vec![("SOFTHSM2_CONF", conf)];
            if let Some(pin) = pin {
                env.push(("CVM_PKCS11_PIN", pin));
            }
            run_device(&refs, &env).await
        }
    };

    let r = run(spec.clone(), Some("0000")).await;
    assert_one_line_failure(&r, "wrong PIN for PKCS#11 token \"cli\"");
    assert_eq!(
        r.status.code(),
        Some(2),
        "a wrong PIN is not retried: retries would lock the token"
    );
    let r = run(spec.clone(), None).await;
    assert_one_line_failure(&r, "no PIN for token \"cli\"");
    assert_eq!(r.status.code(), Some(2));
    let r = run(spec.replace("token=cli", "token=other"), Some(TOKEN_PIN)).await;
    assert_one_line_failure(&r, "no PKCS#11 token labelled \"other\"");
    let r = run(
        spec.replace(SOFTHSM_MODULE, "/nonexistent/p11.so"),
        Some(TOKEN_PIN),
    )
    .await;
    assert_one_line_failure(&r, "cannot load the PKCS#11 module /nonexistent/p11.so");
    assert!(files_in(&out).is_empty());

    // The right PIN from the environment: the key opens and the run gets to the network.
    let r = run(spec.clone(), Some(TOKEN_PIN)).await;
    assert_one_line_failure(&r, "could not reach the API");
    assert_eq!(r.status.code(), Some(1));
    assert!(!out.join("enrollment.json").exists());
}
