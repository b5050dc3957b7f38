//! Shared by the `cvm-admin` tests against the local stack: the real binary, the stack's
//! vend API, and direct reads of what the commands changed.

use std::path::Path;
use std::process::{Command, Output};

use cvm_core::ports::DeviceStore;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack (make up) and export .local/env, or run make test")
    })
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs the real binary with the stack's environment plus `extra_env`.
pub fn admin_with(args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cvm-admin"));
    cmd.args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn admin(args: &[&str]) -> Output {
    admin_with(args, &[])
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary and requires success; its stdout.
pub fn admin_ok(args: &[&str]) -> String {
    let out = admin(args);
    assert!(
        out.status.success(),
        "cvm-admin {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(json)
        .collect()
}

pub async fn sdk() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    cvm_aws::load_sdk_config().await
}

pub async fn iot() -> aws_sdk_iot::Client {
    aws_sdk_iot::Client::new(&sdk().await)
}

pub async fn store(table: &str) -> cvm_aws::DynamoStore {
    cvm_aws::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), table)
}

pub async fn record(table: &str, serial: &str) -> cvm_core::DeviceRecord {
    store(table)
        .await
        .get(&cvm_core::Serial::parse(serial).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record for {serial}"))
}

/// A device table of its own (same schema as the stack's), so a test's records and the
/// certificates they name are the only ones it sees.
pub async fn private_table() -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let name = unique("cvm-admin-test");
    aws_sdk_dynamodb::Client::new(&sdk().await)
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("serial")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("serial")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    name
}

pub fn shared_table() -> String {
    env("CVM_TABLE_NAME")
}

/// An EC P-256 key and a CSR for it with this CN.
pub fn key_and_csr(cn: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

pub fn http() -> reqwest::Client {
    let ca = std::fs::read(env("CVM_API_CA")).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap()
}

/// `POST /v1/certificates` on a vend API of the stack (`CVM_API_URL` or `CVM_PCA_API_URL`).
pub async fn vend(api_url: &str, serial: &str, token: &str, csr: &str) -> (u16, serde_json::Value) {
    let r = http()
        .post(format!("{api_url}/v1/certificates"))
        .json(&serde_json::json!({"serial": serial, "token": token, "csr": csr}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Enrolls through the binary; the token.
pub fn enroll(table: &str, serial: &str) -> String {
    let out = admin_ok(&["--table", table, "enroll", "--serial", serial, "--json"]);
    json(&out)["token"].as_str().unwrap().to_owned()
}

pub async fn certificate_status(iot: &aws_sdk_iot::Client, id: &str) -> Option<String> {
    match iot.describe_certificate().certificate_id(id).send().await {
        Ok(d) => d
            .certificate_description()
            .and_then(|c| c.status())
            .map(|s| s.as_str().to_owned()),
        Err(e) => {
            let code = aws_sdk_iot::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
            assert_eq!(code.as_deref(), Some("ResourceNotFoundException"), "{e:?}");
            None
        }
    }
}

/// A certificate made directly in AWS IoT (not by a vend), INACTIVE unless `active`.
pub async fn loose_certificate(
    iot: &aws_sdk_iot::Client,
    cn: &str,
    active: bool,
) -> (String, String, String) {
    let (_, csr) = key_and_csr(cn);
    let out = iot
        .create_certificate_from_csr()
        .certificate_signing_request(csr)
        .set_as_active(active)
        .send()
        .await
        .unwrap();
    (
        out.certificate_id.unwrap(),
        out.certificate_arn.unwrap(),
        out.certificate_pem.unwrap(),
    )
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// One request that went through a [`RecordingProxy`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `X-Amz-Target` (the operation of a JSON-protocol service).
    pub target: String,
    pub body: serde_json::Value,
    pub status: u16,
}

/// An HTTP/1.1 proxy between the binary and the local stack that records what passes
/// (a double at the wire: the product's SDK calls are the real ones). Point one service at it
/// with `AWS_ENDPOINT_URL_<SERVICE>`.
pub struct RecordingProxy {
    pub url: String,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

pub async fn recording_proxy(upstream: String) -> RecordingProxy {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (client, upstream, record) = (client.clone(), upstream.clone(), record.clone());
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("GET").to_owned(),
                        parts.next().unwrap_or("/").to_owned(),
                    );
                    let mut headers = Vec::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap();
                        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.parse().unwrap();
                        }
                        headers.push((name, value));
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let mut forward =
                        client.request(method.parse().unwrap(), format!("{upstream}{path}"));
                    for (name, value) in &headers {
                        if !["host", "content-length", "connection"]
                            .contains(&name.to_ascii_lowercase().as_str())
                        {
                            forward = forward.header(name, value);
                        }
                    }
                    let response = forward.body(body.clone()).send().await.unwrap();
                    let status = response.status().as_u16();
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/x-amz-json-1.1")
                        .to_owned();
                    let answer = response.bytes().await.unwrap();
                    let target = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-target"))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    record.lock().unwrap().push(Recorded {
                        target,
                        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        status,
                    });
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if write.write_all(head.as_bytes()).await.is_err()
                        || write.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    RecordingProxy { url, seen }
}

/// Deletes a table made by [`private_table`] (the shared emulator keeps everything).
pub async fn drop_table(name: &str) {
    aws_sdk_dynamodb::Client::new(&sdk().await)
        .delete_table()
        .table_name(name)
        .send()
        .await
        .unwrap();
}
