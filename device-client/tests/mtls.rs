//! The enrolled identity at work over mutual TLS, against local servers that speak the AWS IoT
//! credentials provider's and HTTPS publish's shapes and require a client certificate from
//! the device CA: `credentials` (also through the AWS SDK's `credential_process`) and
//! `publish`, with a file key, the stand-in Zymkey and SoftHSM2; a certificate from another
//! CA is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use aws_credential_types::provider::ProvideCredentials;
use common::*;
use cvm_device::keystore::{self, KeySpec, OpenOptions, ZymkeyStore};
use cvm_device::KeyStore;
use serde_json::json;

const ROLE_ALIAS: &str = "cvm-device-role-alias";
const EXPIRATION: &str = "2031-06-01T12:34:56Z";

/// A device CA, a server CA, and a local server trusting the first and presenting the second.
struct Iot {
    device_ca: TestCa,
    server_ca: TestCa,
    server: TestServer,
}

/// The credentials provider: `GET /role-aliases/<alias>/credentials` with the thing name
/// header, answered for the thing `thing` only.
async fn credentials_provider(thing: &'static str) -> Iot {
    let device_ca = TestCa::new("device CA");
    let server_ca = TestCa::new("endpoint CA");
    let handler: Handler = Arc::new(move |r: &Received| {
        let thing_header = r
            .headers
            .get("x-amzn-iot-thingname")
            .and_then(|v| v.to_str().ok());
        if r.method != "GET" || r.target != format!("/role-aliases/{ROLE_ALIAS}/credentials") {
            return Reply::json(404, json!({"message": "no such role alias"}));
        }
        if thing_header != Some(thing) || r.client_certificate.is_none() {
            return Reply::json(403, json!({"message": "Access Denied"}));
        }
        Reply::json(
            200,
            json!({"credentials": {
                "accessKeyId": "ASIAEXAMPLEEXAMPLE",
                "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "sessionToken": "session-token-example",
                "expiration": EXPIRATION
            }}),
        )
    });
    let server = TestServer::start(server_tls(&server_ca, Some(&device_ca)), handler).await;
    Iot {
        device_ca,
        server_ca,
        server,
    }
}

/// HTTPS publish: `POST /topics/<topic>?qos=1`.
async fn data_endpoint() -> Iot {
    let device_ca = TestCa::new("device CA");
    let server_ca = TestCa::new("endpoint CA");
    let handler: Handler = Arc::new(|r: &Received| {
        if r.method == "POST" && r.target.starts_with("/topics/") && r.target.ends_with("?qos=1") {
            Reply::json(200, json!({"message": "OK", "traceId": "trace"}))
        } else {
            Reply::json(400, json!({"message": "bad publish"}))
        }
    });
    let server = TestServer::start(server_tls(&server_ca, Some(&device_ca)), handler).await;
    Iot {
        device_ca,
        server_ca,
        server,
    }
}

/// An enrollment directory as `enroll` leaves it, for `store`, certified by `certifier`,
/// with endpoints pointing at `iot`.
fn enrolled_dir(dir: &Path, store: &dyn KeyStore, certifier: &TestCa, iot: &Iot, thing: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let certificate = certifier.client_for(store.public_key().unwrap(), thing);
    std::fs::write(dir.join("certificate.pem"), certificate).unwrap();
    iot.server_ca.write(&dir.join("ca.pem"));
    let endpoint = iot.server.addr.to_string();
    let enrollment = json!({
        "serial": thing,
        "thingName": thing,
        "certificateId": "c0ffee",
        "certificateArn": "arn:aws:iot:us-east-1:123456789012:cert/c0ffee",
        "publicKeyFingerprint": cvm_device::csr::key_fingerprint(store).unwrap(),
        "endpoints": {"data": endpoint, "credentials": endpoint},
        "policyName": "cvm-device-default",
        "roleAlias": ROLE_ALIAS,
        "issuedAt": "2030-01-01T00:00:00Z",
        "key": store.describe(),
    });
    std::fs::write(
        dir.join("enrollment.json"),
        serde_json::to_vec_pretty(&enrollment).unwrap(),
    )
    .unwrap();
}

fn file_store(dir: &Path) -> Box<dyn KeyStore> {
    let spec = KeySpec::File(dir.join("device.key"));
    keystore::open(
        &spec,
        &OpenOptions {
            may_generate: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The DER of `<dir>/certificate.pem`, to compare with what the server saw.
fn certificate_der(dir: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(dir.join("certificate.pem"))
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn credentials_prints_a_credential_process_document() {
    let iot = credentials_provider("thing-1").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    enrolled_dir(&dir, store.as_ref(), &iot.device_ca, &iot, "thing-1");

    let run = run_device(&["credentials", "--dir", dir.to_str().unwrap()], &[]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let document: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        document,
        json!({
            "Version": 1,
            "AccessKeyId": "ASIAEXAMPLEEXAMPLE",
            "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "SessionToken": "session-token-example",
            "Expiration": EXPIRATION
        })
    );
    let requests = iot.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].client_certificate.as_deref(),
        Some(certificate_der(&dir).as_slice()),
        "the client certificate presented is the device's"
    );
}

#[tokio::test]
async fn the_aws_sdk_loads_credentials_through_credential_process() {
    let iot = credentials_provider("thing-sdk").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    enrolled_dir(&dir, store.as_ref(), &iot.device_ca, &iot, "thing-sdk");
    let config = tmp.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile device]\nregion = us-east-1\n\
             credential_process = {DEVICE_BIN} --config /dev/null credentials --dir {}\n",
            dir.display()
        ),
    )
    .unwrap();

    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
    let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
        .profile_files(
            EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Config, &config)
                .build(),
        )
        .profile_name("device")
        .build();
    let credentials = provider.provide_credentials().await.unwrap();
    assert_eq!(credentials.access_key_id(), "ASIAEXAMPLEEXAMPLE");
    assert_eq!(
        credentials.secret_access_key(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    );
    assert_eq!(credentials.session_token(), Some("session-token-example"));
    let expiry = credentials.expiry().unwrap();
    let seconds = expiry
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        seconds, 1_938_083_696,
        "2031-06-01T12:34:56Z, the provider's expiration"
    );
}

#[tokio::test]
async fn flags_override_enrollment_json_and_refusals_are_one_line() {
    let iot = credentials_provider("thing-2").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    enrolled_dir(&dir, store.as_ref(), &iot.device_ca, &iot, "thing-other");

    // enrollment.json names another thing: the provider refuses...
    let run = run_device(&["credentials", "--dir", dir.to_str().unwrap()], &[]).await;
    assert_one_line_failure(&run, "refused the request: 403: Access Denied");
    // ...and the flag fixes it.
    let run = run_device(
        &[
            "credentials",
            "--dir",
            dir.to_str().unwrap(),
            "--thing-name",
            "thing-2",
        ],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        iot.server.requests()[1].headers["x-amzn-iot-thingname"],
        "thing-2"
    );
    // A wrong role alias.
    let run = run_device(
        &[
            "credentials",
            "--dir",
            dir.to_str().unwrap(),
            "--thing-name",
            "thing-2",
            "--role-alias",
            "other-alias",
        ],
        &[],
    )
    .await;
    assert_one_line_failure(&run, "404: no such role alias");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_by_the_server() {
    let iot = credentials_provider("thing-3").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    let stranger = TestCa::new("not the device CA");
    enrolled_dir(&dir, store.as_ref(), &stranger, &iot, "thing-3");

    let run = run_device(&["credentials", "--dir", dir.to_str().unwrap()], &[]).await;
    assert_one_line_failure(&run, "could not reach");
    assert!(
        run.stderr.to_lowercase().contains("certificate") || run.stderr.contains("alert"),
        "{}",
        run.stderr
    );
    assert!(iot.server.requests().is_empty(), "no request got through");
}

#[tokio::test]
async fn a_certificate_for_another_key_is_caught_before_connecting() {
    let iot = credentials_provider("thing-4").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    let other = file_store(&tmp.path().join("other"));
    enrolled_dir(&dir, other.as_ref(), &iot.device_ca, &iot, "thing-4");
    // enrollment.json now names the other key: point at this one.
    let run = run_device(
        &[
            "credentials",
            "--dir",
            dir.to_str().unwrap(),
            "--key",
            &store.describe(),
        ],
        &[],
    )
    .await;
    assert_one_line_failure(&run, "is not the certificate of this device's key");
    assert!(iot.server.requests().is_empty());
}

#[tokio::test]
async fn an_unenrolled_device_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_device(&["credentials", "--dir", tmp.path().to_str().unwrap()], &[]).await;
    assert_one_line_failure(&run, "no credentials endpoint");
    let run = run_device(
        &[
            "publish",
            "--dir",
            tmp.path().to_str().unwrap(),
            "--endpoint",
            "127.0.0.1:9",
            "--topic",
            "t",
            "--message",
            "m",
        ],
        &[],
    )
    .await;
    assert_one_line_failure(&run, "device.key");
}

/// Publishes with the identity enrolled in `dir` and checks what the endpoint received.
async fn publish_and_check(iot: &Iot, dir: &Path, env: &[(&str, &str)]) {
    let topic = "devices/thing-5/hello world";
    let run = run_device(
        &[
            "publish",
            "--dir",
            dir.to_str().unwrap(),
            "--topic",
            topic,
            "--message",
            "{\"hello\":\"world\"}",
        ],
        env,
    )
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("published 17 bytes to {topic}"));
    let requests = iot.server.requests();
    let last = requests.last().unwrap();
    assert_eq!(
        last.target,
        "/topics/devices%2Fthing-5%2Fhello%20world?qos=1"
    );
    assert_eq!(last.body, b"{\"hello\":\"world\"}");
    // The server verified the certificate and the handshake signature made with its key.
    assert_eq!(
        last.client_certificate.as_deref(),
        Some(certificate_der(dir).as_slice())
    );
}

#[tokio::test]
async fn publish_works_with_a_key_file() {
    let iot = data_endpoint().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let store = file_store(&dir);
    enrolled_dir(&dir, store.as_ref(), &iot.device_ca, &iot, "thing-5");
    publish_and_check(&iot, &dir, &[]).await;
}

#[tokio::test]
async fn publish_works_with_the_zymkey() {
    let iot = data_endpoint().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    // The binary uses the same stand-in module (key directory) as this process.
    let module = standin_module_dir().to_str().unwrap();
    let lib = standin_library().to_str().unwrap();
    let store = ZymkeyStore::open(Some(standin_library()), 2).unwrap();
    enrolled_dir(&dir, &store, &iot.device_ca, &iot, "thing-5");
    publish_and_check(
        &iot,
        &dir,
        &[("ZK_STANDIN_DIR", module), ("CVM_ZYMKEY_LIB", lib)],
    )
    .await;
}

#[tokio::test]
async fn publish_works_with_a_pkcs11_token() {
    let iot = data_endpoint().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cvm");
    let hsm = {
        let (hsm, _in_process) = softhsm();
        hsm.init_token("publish");
        let spec = KeySpec::parse(&hsm.spec("publish", "device")).unwrap();
        // Makes the key pair on the token, as enroll would; closed again before the binary
        // opens it.
        let enroll = OpenOptions {
            may_generate: true,
            ..Default::default()
        };
        let store = keystore::open(&spec, &enroll).unwrap();
        enrolled_dir(&dir, store.as_ref(), &iot.device_ca, &iot, "thing-5");
        hsm
    };
    publish_and_check(&iot, &dir, &[("SOFTHSM2_CONF", hsm.conf.to_str().unwrap())]).await;
}
