//! The local stack as the provisioning and renewal tests use it: its settings (`.local/env`,
//! exported by `make test`), serials enrolled with the real `cvm-admin`, AWS IoT (moto) through
//! the AWS SDK, and the device's identity put to work on the MQTT broker.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cvm_device::enroll::Enrollment;
use cvm_device::identity::{self, CERTIFICATE_FILE};
use cvm_device::keystore::{self, KeySpec, OpenOptions};
use cvm_device::mqtt::{Endpoint, Session, Timeouts};
use cvm_device::tls::{identity_config, ClientKey};
use x509_cert::der::DecodePem;

pub struct Stack {
    pub api_url: String,
    pub api_ca: String,
    pub admin: String,
    pub mqtt_port: u16,
    pub mqtt_alpn_port: u16,
    pub mqtt_ca: String,
    pub claim_cert: String,
    pub claim_key: String,
    pub template: String,
    /// The CA fleet provisioning's certificates chain to (the certificate provider's).
    pub pca_ca: String,
    pub default_policy: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the local stack: make up (then export .local/env, as \
             `make test` does)"
        )
    })
}

pub fn stack() -> Stack {
    Stack {
        api_url: var("CVM_API_URL"),
        api_ca: var("CVM_API_CA"),
        admin: var("CVM_ADMIN"),
        mqtt_port: var("CVM_MQTT_PORT").parse().unwrap(),
        mqtt_alpn_port: var("CVM_MQTT_ALPN_PORT").parse().unwrap(),
        mqtt_ca: var("CVM_MQTT_CA"),
        claim_cert: var("CVM_CLAIM_CERT"),
        claim_key: var("CVM_CLAIM_KEY"),
        template: var("CVM_FLEET_TEMPLATE"),
        pca_ca: var("CVM_PCA_CA_CERT"),
        default_policy: var("CVM_DEFAULT_POLICY_NAME"),
    }
}

impl Stack {
    /// The broker's mutual-TLS listener (AWS IoT's 8883).
    pub fn mqtt_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
    }

    /// A serial enrolled with `cvm-admin enroll --serial S --json [extra]`, and its token in
    /// a 0600 file in `dir`.
    pub fn enroll_serial(&self, prefix: &str, extra: &[&str], dir: &Path) -> (String, PathBuf) {
        let serial = unique_serial(prefix);
        let out = std::process::Command::new(&self.admin)
            .args(["enroll", "--serial", &serial, "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cvm-admin enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["serial"], serial.as_str());
        let token = dir.join(format!("{serial}.token"));
        std::fs::write(&token, answer["token"].as_str().unwrap()).unwrap();
        (serial, token)
    }

    /// The record as `cvm-admin show --serial S` prints it (JSON).
    pub fn show(&self, serial: &str) -> serde_json::Value {
        let out = std::process::Command::new(&self.admin)
            .args(["show", "--serial", serial])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cvm-admin show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `cvm-device provision` against the stack, for `serial`, into `dir`, with the device
    /// key `key` and the claim key given (a file or a key store).
    pub fn provision_args(
        &self,
        serial: &str,
        token: Option<&Path>,
        dir: &Path,
        key: &str,
        claim_key: &str,
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "provision",
            "--dir",
            dir.to_str().unwrap(),
            "--serial",
            serial,
            "--key",
            key,
            "--mqtt-endpoint",
            &self.mqtt_endpoint(),
            "--mqtt-ca",
            &self.mqtt_ca,
            "--template",
            &self.template,
            "--claim-cert",
            &self.claim_cert,
            "--claim-key",
            claim_key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match token {
            Some(path) => args.extend(["--token-file".into(), path.display().to_string()]),
            None => args.push("--no-token".into()),
        }
        args
    }

    /// `cvm-device enroll` against the vend API.
    pub fn enroll_args(&self, serial: &str, token: &Path, dir: &Path, key: &str) -> Vec<String> {
        [
            "enroll",
            "--url",
            &self.api_url,
            "--ca",
            &self.api_ca,
            "--serial",
            serial,
            "--token-file",
            token.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "--key",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `cvm-device renew` against the vend API, the proof on the stack's broker.
    pub fn renew_args(&self, dir: &Path) -> Vec<String> {
        [
            "renew",
            "--dir",
            dir.to_str().unwrap(),
            "--url",
            &self.api_url,
            "--ca",
            &self.api_ca,
            "--mqtt-endpoint",
            &self.mqtt_endpoint(),
            "--mqtt-ca",
            &self.mqtt_ca,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Whether the identity in `dir`, as the device's commands read it (through a promotion
    /// under way too), connects to the broker as its thing and publishes to its own topic.
    pub async fn identity_works(&self, dir: &Path, open: &OpenOptions) -> Result<(), String> {
        let enrollment = Enrollment::load(dir)?;
        let spec = KeySpec::parse(&enrollment.key).map_err(|e| e.to_string())?;
        let store = keystore::open(
            &spec,
            &OpenOptions {
                may_generate: false,
                ..open.clone()
            },
        )
        .map_err(|e| e.to_string())?;
        let tls = identity_config(
            &ClientKey::Store(Arc::from(store)),
            &identity::path(dir, CERTIFICATE_FILE),
            Path::new(&self.mqtt_ca),
            &[],
        )
        .map_err(|e| e.to_string())?;
        let endpoint = Endpoint::parse(&self.mqtt_endpoint(), false)?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(20),
            answer: Duration::from_secs(10),
        };
        let thing = &enrollment.thing_name;
        let mut session = Session::connect(&endpoint, thing, tls, timeouts)
            .await
            .map_err(|e| e.to_string())?;
        let published = session
            .publish(&format!("things/{thing}/test"), b"hello".to_vec())
            .await
            .map_err(|e| e.to_string());
        session.disconnect().await;
        published
    }
}

/// A serial no other test uses, so tests can share one stack and run in parallel.
pub fn unique_serial(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn iot() -> aws_sdk_iot::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_iot::Client::new(&config)
}

pub async fn certificate_status(iot: &aws_sdk_iot::Client, id: &str) -> String {
    iot.describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .unwrap()
        .certificate_description()
        .and_then(|d| d.status())
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// The subject CN of a PEM certificate.
pub fn common_name(pem: &str) -> Option<String> {
    let certificate = x509_cert::Certificate::from_pem(pem.as_bytes()).ok()?;
    certificate
        .tbs_certificate()
        .subject()
        .common_name()
        .ok()
        .flatten()
        .map(|cn| cn.value().into_owned())
}

/// The ids of the ACTIVE certificates in AWS IoT whose subject CN is `cn`, among those
/// created since `since` (the stack is shared; older ones are other tests').
pub async fn active_certificates_for(
    iot: &aws_sdk_iot::Client,
    cn: &str,
    since: SystemTime,
) -> Vec<String> {
    let since = aws_sdk_iot::primitives::DateTime::from(since - Duration::from_secs(5));
    let mut found = Vec::new();
    let mut marker = None;
    loop {
        let page = iot
            .list_certificates()
            .set_marker(marker.clone())
            .page_size(250)
            .send()
            .await
            .unwrap();
        for c in page.certificates() {
            let recent = c.creation_date().is_some_and(|d| d.secs() >= since.secs());
            let active = c.status().is_some_and(|s| s.as_str() == "ACTIVE");
            if !(recent && active) {
                continue;
            }
            let id = c.certificate_id().unwrap_or_default();
            let described = iot
                .describe_certificate()
                .certificate_id(id)
                .send()
                .await
                .unwrap();
            let pem = described
                .certificate_description()
                .and_then(|d| d.certificate_pem())
                .unwrap_or_default();
            if common_name(pem).as_deref() == Some(cn) {
                found.push(id.to_owned());
            }
        }
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            return found;
        }
    }
}

/// `openssl verify` of a certificate against a CA file.
pub fn chains_to(certificate: &Path, ca: &str) -> bool {
    std::process::Command::new("openssl")
        .args(["verify", "-CAfile", ca])
        .arg(certificate)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The enrollment.json in `dir`, as JSON.
pub fn enrollment_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("enrollment.json")).unwrap()).unwrap()
}
