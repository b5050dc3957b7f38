//! The benchmark's own AWS emulator: private moto servers started with the local stack's
//! launcher (`tests/local-stack/stack.py`: same fixes, same PKI layout), its table, policy and
//! Private CA, and enrolled serials. Private so 2,000 benchmark devices never land in the
//! stack other work shares, and so nothing else's traffic lands in the measurements.
//!
//! Two servers, one for DynamoDB and one for AWS IoT and Private CA: moto runs on one core
//! (Python), and at the quota's 15 vends a second one server would be the bottleneck.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::Error;

pub const TABLE: &str = "cvm-bench-devices";
pub const POLICY: &str = "cvm-device-default";
pub const ROLE_ALIAS: &str = "cvm-device-role-alias";
pub const REGION: &str = "us-east-1";

/// Paths of the repository's tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub root: PathBuf,
    pub python: PathBuf,
    pub stack_py: PathBuf,
    pub cvm_admin: PathBuf,
}

impl Tools {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            python: root.join(".local/venv/bin/python"),
            stack_py: root.join("tests/local-stack/stack.py"),
            cvm_admin: root.join("target/debug/cvm-admin"),
        }
    }
}

pub struct Moto {
    /// AWS IoT and Private CA.
    pub url: String,
    /// DynamoDB.
    pub dynamodb_url: String,
    pub pki: PathBuf,
    pub pca_arn: String,
    pub pca_ca: PathBuf,
    children: Vec<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}

/// The variables every AWS client of the benchmark gets (credentials moto accepts).
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn run(cmd: &mut Command, what: &str) -> Result<String, Error> {
    let output = cmd.stdin(Stdio::null()).output().await?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Moto {
    pub async fn start(tools: &Tools, work: &Path) -> Result<Self, Error> {
        let pki = work.join("pki");
        run(
            Command::new(&tools.python)
                .arg(&tools.stack_py)
                .arg("pki")
                .arg(&pki),
            "stack.py pki",
        )
        .await?;
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for name in ["moto-iot", "moto-dynamodb"] {
            let port = free_port()?;
            let log = std::fs::File::create(work.join(format!("{name}.log")))?;
            children.push(
                Command::new(&tools.python)
                    .arg(&tools.stack_py)
                    .args(["serve", "--port", &port.to_string(), "--pki"])
                    .arg(&pki)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()?,
            );
            urls.push((port, format!("http://127.0.0.1:{port}")));
        }
        let mut moto = Self {
            url: urls[0].1.clone(),
            dynamodb_url: urls[1].1.clone(),
            pki: pki.clone(),
            pca_arn: String::new(),
            pca_ca: pki.join("pca-ca.pem"),
            children,
        };
        for (port, _) in &urls {
            let mut up = false;
            for _ in 0..150 {
                if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok()
                {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !up {
                return Err("moto did not come up (see target/bench/moto-*.log)".into());
            }
        }
        // The launcher makes the table and the policy at one endpoint: used where each lives.
        for url in [&moto.url, &moto.dynamodb_url] {
            run(
                Command::new(&tools.python)
                    .arg(&tools.stack_py)
                    .args([
                        "provision",
                        "--endpoint",
                        url,
                        "--table",
                        TABLE,
                        "--policy",
                        POLICY,
                    ])
                    .envs(aws_env(url)),
                "stack.py provision",
            )
            .await?;
        }
        let arn = run(
            Command::new(&tools.python)
                .arg(&tools.stack_py)
                .args(["provision-pca", "--endpoint", &moto.url, "--ca-out"])
                .arg(&moto.pca_ca)
                .envs(aws_env(&moto.url)),
            "stack.py provision-pca",
        )
        .await?;
        moto.pca_arn = arn.trim().to_owned();
        Ok(moto)
    }

    /// Enrolls the serials in one `cvm-admin enroll --csv` run; returns serial -> token.
    pub async fn enroll(
        &self,
        tools: &Tools,
        work: &Path,
        serials: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        let csv = work.join("serials.csv");
        let factory = work.join("factory.csv");
        let _ = std::fs::remove_file(&factory);
        let mut rows = String::from("serial\n");
        for s in serials {
            rows.push_str(s);
            rows.push('\n');
        }
        std::fs::write(&csv, rows)?;
        run(
            Command::new(&tools.cvm_admin)
                .args(["--table", TABLE, "enroll", "--csv"])
                .arg(&csv)
                .arg("--factory-file")
                .arg(&factory)
                .envs(aws_env(&self.dynamodb_url))
                .env("CVM_DEFAULT_POLICY_NAME", POLICY),
            "cvm-admin enroll --csv",
        )
        .await?;
        let text = std::fs::read_to_string(&factory)?;
        let tokens: HashMap<String, String> = text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (serial, token) = line.split_once(',')?;
                Some((serial.trim().to_owned(), token.trim().to_owned()))
            })
            .collect();
        if tokens.len() != serials.len() {
            return Err(format!(
                "cvm-admin enrolled {} of {} serials",
                tokens.len(),
                serials.len()
            )
            .into());
        }
        Ok(tokens)
    }

    /// Everything moto holds (`/moto-api/data.json`).
    pub async fn data(&self) -> Result<serde_json::Value, Error> {
        crate::http_get_json(&format!("{}/moto-api/data.json", self.url)).await
    }
}

/// The size DynamoDB bills a device record at, approximately: attribute names plus values
/// (strings and binaries by length, numbers by digits, maps and lists by their members plus
/// 3 bytes). Read with a GetItem straight to moto, which does not check signatures.
pub async fn item_size(moto_url: &str, serial: &str) -> Result<usize, Error> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({"TableName": TABLE, "Key": {"serial": {"S": serial}}});
    let request = hyper::Request::post(moto_url)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", "DynamoDB_20120810.GetItem")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(Full::new(bytes::Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)?;
    let item = value["Item"]
        .as_object()
        .ok_or_else(|| format!("no item for {serial}"))?;
    Ok(item.iter().map(|(k, v)| k.len() + attribute_size(v)).sum())
}

fn attribute_size(v: &serde_json::Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S" | "B", serde_json::Value::String(s)) => s.len(),
        ("N", serde_json::Value::String(s)) => s.len().div_ceil(2) + 1,
        ("BOOL" | "NULL", _) => 1,
        ("M", serde_json::Value::Object(m)) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + attribute_size(v))
                .sum::<usize>()
        }
        ("L", serde_json::Value::Array(a)) => 3 + a.iter().map(attribute_size).sum::<usize>(),
        ("SS" | "NS" | "BS", serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(str::len)
            .sum(),
        _ => 0,
    }
}
