//! Running a release bootstrap as Lambda would: a fresh process per execution environment,
//! the Lambda variables, its own Runtime API, and the events its trigger sends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::runtime_api::{Outcome, RuntimeApi};
use crate::Error;

/// The memory the functions are deployed with (infra: `memorySize: 256`).
pub const MEMORY_MB: u32 = 256;
const INIT_TIMEOUT: Duration = Duration::from_secs(20);
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// One function: its bootstrap and its configuration.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: &'static str,
    pub bootstrap: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Function {
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut f = self.clone();
        f.env.retain(|(k, _)| k != name);
        f.env.push((name.to_owned(), value.to_owned()));
        f
    }

    pub fn without(&self, name: &str) -> Self {
        let mut f = self.clone();
        f.env.retain(|(k, _)| k != name);
        f
    }
}

/// One execution environment: the process and its Runtime API.
pub struct Environment {
    pub api: RuntimeApi,
    child: Child,
    /// From exec to the first `/next`.
    pub init: Duration,
}

impl Drop for Environment {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Environment {
    /// Starts the bootstrap and waits for the end of its init.
    pub async fn start(function: &Function, log: &Path) -> Result<Self, Error> {
        let api = RuntimeApi::start(function.name).await?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(&function.bootstrap);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TZ", ":UTC")
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", function.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", MEMORY_MB.to_string())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", function.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("_HANDLER", "bootstrap")
            .envs(function.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let ready = tokio::select! {
            ready = api.wait_init(INIT_TIMEOUT) => ready,
            status = child.wait() => Err(format!("{} exited during init ({})", function.name, status?).into()),
        };
        let ready = match ready {
            Ok(at) => at,
            Err(e) => {
                let _ = child.start_kill();
                return Err(format!("{}: {e} (log: {})", function.name, log.display()).into());
            }
        };
        Ok(Self {
            api,
            child,
            init: ready.saturating_duration_since(started),
        })
    }

    pub async fn invoke(&self, payload: Bytes) -> Result<Outcome, Error> {
        self.api.invoke(payload, INVOKE_TIMEOUT).await
    }

    /// Peak and current resident set size in KiB (`VmHWM`, `VmRSS`).
    pub fn memory_kib(&self) -> Result<(u64, u64), Error> {
        let pid = self.child.id().ok_or("the process has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (field("VmHWM:"), field("VmRSS:")) {
            (Some(hwm), Some(rss)) => Ok((hwm, rss)),
            _ => Err(format!("no VmHWM/VmRSS in /proc/{pid}/status").into()),
        }
    }
}

/// A P-256 key and a CSR for it with the given common name.
pub fn csr_pem(common_name: &str) -> Result<String, Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    Ok(params.serialize_request(&key)?.pem()?)
}

const VEND_EVENT: &str = include_str!("../../events/vend-http-api.json");

/// The API Gateway HTTP API (payload 2.0) event of `POST /v1/certificates`.
pub fn vend_event(n: usize, serial: &str, token: &str) -> Result<Bytes, Error> {
    let csr = csr_pem(serial)?;
    let body = serde_json::json!({"serial": serial, "token": token, "csr": csr}).to_string();
    let mut event: serde_json::Value = serde_json::from_str(VEND_EVENT)?;
    event["headers"]["content-length"] = body.len().to_string().into();
    event["requestContext"]["requestId"] = format!("bench-{n}").into();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    event["requestContext"]["timeEpoch"] = now_ms.into();
    event["body"] = body.into();
    Ok(Bytes::from(serde_json::to_vec(&event)?))
}

/// The certificate provider's event from AWS IoT (`CreateCertificateFromCsr` over MQTT).
pub fn provider_event(n: usize) -> Result<Bytes, Error> {
    let client = format!("bench-fleet-{n:05}");
    let csr = csr_pem(&client)?;
    let event = serde_json::json!({
        "certificateSigningRequest": csr,
        "principalId": format!("{:064x}", n + 1),
        "clientId": client,
    });
    Ok(Bytes::from(serde_json::to_vec(&event)?))
}

/// Whether an invocation succeeded by its function's own contract.
pub fn vend_status(outcome: &Outcome) -> Option<u16> {
    if !outcome.ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&outcome.body).ok()?;
    v["statusCode"].as_u64().and_then(|s| u16::try_from(s).ok())
}

pub fn provider_succeeded(outcome: &Outcome) -> bool {
    outcome.ok
        && serde_json::from_slice::<serde_json::Value>(&outcome.body)
            .ok()
            .and_then(|v| {
                v["certificatePem"]
                    .as_str()
                    .map(|p| p.contains("BEGIN CERTIFICATE"))
            })
            .unwrap_or(false)
}
