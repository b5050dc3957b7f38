//! `cvm-admin register-ca`, the real binary: refusals that must happen before any AWS call
//! (no stack needed), and registrations against the local stack (`make up`, `.local/env`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the local stack: make up (then export .local/env), \
             or run make test"
        )
    })
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn admin(args: &[&str], offline: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cvm-admin"));
    cmd.args(args);
    if offline {
        // Nothing listens there: a refusal that needed AWS would fail differently.
        cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "offline")
            .env("AWS_SECRET_ACCESS_KEY", "offline")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    cmd.output().unwrap()
}

fn registered(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "register-ca failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A CA made exactly as the seed's mk_ca.sh does: `openssl ecparam -genkey` (the key file
/// starts with an EC PARAMETERS block), `openssl req -x509`.
fn seed_style_ec_ca(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-out",
            "ca.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-SHA256",
            "-nodes",
            "-key",
            "ca.key",
            "-days",
            "3650",
            "-out",
            "ca.pem",
            "-subj",
            &format!("/O=Example Fleet/CN={cn}"),
        ],
    );
    (dir.join("ca.pem"), dir.join("ca.key"))
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix} {} {nanos}", std::process::id())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn refuses_a_key_that_is_not_the_cas_before_any_aws_call() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = seed_style_ec_ca(dir.path(), "Mismatch CA");
    openssl(
        dir.path(),
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "other.key",
        ],
    );
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            ca.to_str().unwrap(),
            "--ca-key",
            dir.path().join("other.key").to_str().unwrap(),
        ],
        true,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the key does not match the CA certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refuses_non_ca_expired_and_unreadable_inputs_before_any_aws_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A leaf certificate.
    openssl(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "leaf.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "leaf.key",
            "-days",
            "30",
            "-out",
            "leaf.pem",
            "-subj",
            "/CN=not-a-ca",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let (leaf, leaf_key) = (d.join("leaf.pem"), d.join("leaf.key"));
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            leaf.to_str().unwrap(),
            "--ca-key",
            leaf_key.to_str().unwrap(),
        ],
        true,
    );
    assert!(
        stderr(&out).contains("not a CA certificate"),
        "{}",
        stderr(&out)
    );

    // An expired CA.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Old CA");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(800);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    std::fs::write(d.join("old.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(d.join("old.key"), key.serialize_pem()).unwrap();
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            d.join("old.pem").to_str().unwrap(),
            "--ca-key",
            d.join("old.key").to_str().unwrap(),
        ],
        true,
    );
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Not a key at all; a missing file.
    let (ca, _) = seed_style_ec_ca(d, "Some CA");
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            ca.to_str().unwrap(),
            "--ca-key",
            ca.to_str().unwrap(),
        ],
        true,
    );
    assert!(
        stderr(&out).contains("not a readable private key"),
        "{}",
        stderr(&out)
    );
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            "/nonexistent/ca.pem",
            "--ca-key",
            "/nonexistent/ca.key",
        ],
        true,
    );
    assert!(
        stderr(&out).contains("could not read the CA certificate"),
        "{}",
        stderr(&out)
    );

    // The key material never appears in what the command prints.
    let key_pem = std::fs::read_to_string(d.join("old.key")).unwrap();
    let secret_line = key_pem.lines().nth(1).unwrap();
    let out = admin(
        &[
            "register-ca",
            "--ca-cert",
            d.join("old.pem").to_str().unwrap(),
            "--ca-key",
            d.join("old.key").to_str().unwrap(),
        ],
        true,
    );
    assert!(
        !stderr(&out).contains(secret_line)
            && !String::from_utf8_lossy(&out.stdout).contains(secret_line)
    );

    // One source or the other, not both, not none.
    assert!(!admin(&["register-ca"], true).status.success());
    assert!(!admin(
        &[
            "register-ca",
            "--ca-cert",
            "a",
            "--ca-key",
            "b",
            "--pca-arn",
            "c"
        ],
        true
    )
    .status
    .success());
}

#[tokio::test]
async fn registers_a_file_ca_active_and_again_idempotently() {
    env("AWS_ENDPOINT_URL");
    let iot = aws_sdk_iot::Client::new(&cvm_aws::load_sdk_config().await);
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = seed_style_ec_ca(dir.path(), &unique("Seed CA"));
    let args = [
        "register-ca",
        "--ca-cert",
        ca.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ];

    let first = registered(&admin(
        &[&args[..], &["--auto-registration"]].concat(),
        false,
    ));
    assert_eq!(first["alreadyRegistered"], false);
    assert_eq!(first["status"], "ACTIVE");
    assert_eq!(first["autoRegistrationStatus"], "ENABLE");
    let id = first["certificateId"].as_str().unwrap();
    let d = iot
        .describe_ca_certificate()
        .certificate_id(id)
        .send()
        .await
        .unwrap();
    let desc = d.certificate_description().unwrap();
    assert_eq!(desc.status().unwrap().as_str(), "ACTIVE");
    assert_eq!(
        desc.certificate_pem().unwrap().trim(),
        std::fs::read_to_string(&ca).unwrap().trim()
    );

    // Again without flags: reported as it is, nothing changed.
    let again = registered(&admin(&args, false));
    assert_eq!(again["alreadyRegistered"], true);
    assert_eq!(again["certificateId"], first["certificateId"]);
    assert_eq!(again["status"], "ACTIVE");
    assert_eq!(again["autoRegistrationStatus"], "ENABLE");
    assert_eq!(again["changed"], serde_json::json!([]));

    // Changed only as asked, and only what differs.
    let off = registered(&admin(
        &[
            &args[..],
            &["--set-active", "false", "--auto-registration", "disable"],
        ]
        .concat(),
        false,
    ));
    assert_eq!(off["status"], "INACTIVE");
    assert_eq!(off["autoRegistrationStatus"], "DISABLE");
    assert_eq!(
        off["changed"],
        serde_json::json!(["status", "autoRegistrationStatus"])
    );
    let d = iot
        .describe_ca_certificate()
        .certificate_id(id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.certificate_description()
            .unwrap()
            .status()
            .unwrap()
            .as_str(),
        "INACTIVE"
    );
    let on = registered(&admin(
        &[
            &args[..],
            &["--set-active", "true", "--auto-registration", "disable"],
        ]
        .concat(),
        false,
    ));
    assert_eq!(on["status"], "ACTIVE");
    assert_eq!(on["autoRegistrationStatus"], "DISABLE");
    assert_eq!(on["changed"], serde_json::json!(["status"]));

    // A bad value is a usage error.
    let out = admin(&[&args[..], &["--set-active", "maybe"]].concat(), false);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_first_registration_can_be_inactive() {
    env("AWS_ENDPOINT_URL");
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = seed_style_ec_ca(dir.path(), &unique("Inactive CA"));
    let out = registered(&admin(
        &[
            "register-ca",
            "--ca-cert",
            ca.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
            "--set-active",
            "false",
        ],
        false,
    ));
    assert_eq!(out["alreadyRegistered"], false);
    assert_eq!(out["status"], "INACTIVE");
    assert_eq!(out["autoRegistrationStatus"], "DISABLE");
}

#[tokio::test]
async fn registers_an_rsa_ca_with_a_pkcs1_key() {
    env("AWS_ENDPOINT_URL");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["genrsa", "-traditional", "-out", "ca.key", "2048"]);
    assert!(std::fs::read_to_string(d.join("ca.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "365",
            "-out",
            "ca.pem",
            "-subj",
            &format!("/CN={}", unique("RSA CA")),
        ],
    );
    let out = registered(&admin(
        &[
            "register-ca",
            "--ca-cert",
            d.join("ca.pem").to_str().unwrap(),
            "--ca-key",
            d.join("ca.key").to_str().unwrap(),
        ],
        false,
    ));
    assert_eq!(out["status"], "ACTIVE");
}

#[tokio::test]
async fn registers_the_private_ca_with_a_verification_certificate_it_issued() {
    env("AWS_ENDPOINT_URL");
    let arn = env("CVM_PCA_ARN");
    let out = registered(&admin(
        &["register-ca", "--pca-arn", &arn, "--auto-registration"],
        false,
    ));
    // The stack's CA may have been registered by an earlier run against the same stack.
    assert_eq!(out["status"], "ACTIVE");
    assert_eq!(out["autoRegistrationStatus"], "ENABLE");
    let iot = aws_sdk_iot::Client::new(&cvm_aws::load_sdk_config().await);
    let d = iot
        .describe_ca_certificate()
        .certificate_id(out["certificateId"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let ca = std::fs::read_to_string(env("CVM_PCA_CA_CERT")).unwrap();
    assert_eq!(
        d.certificate_description()
            .unwrap()
            .certificate_pem()
            .unwrap()
            .trim(),
        ca.trim()
    );
    let again = registered(&admin(&["register-ca", "--pca-arn", &arn], false));
    assert_eq!(again["alreadyRegistered"], true);
    assert_eq!(again["status"], "ACTIVE");
    assert_eq!(again["autoRegistrationStatus"], "ENABLE");
}
