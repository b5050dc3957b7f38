//! `enroll`: key, CSR, one HTTPS call, files. Safe to re-run after any interruption: the key
//! is kept, so a retry after a lost response gets the same certificate back, and the
//! metadata file that marks success is written last (and removed first when files change).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::csr::{build_csr, key_fingerprint, CsrError};
use crate::files::{ensure_private_dir, write_atomic};
use crate::keystore::{KeyStore, KeyStoreError};
use crate::tls::{error_chain, one_line};

pub const CERTIFICATE_FILE: &str = "certificate.pem";
pub const CA_FILE: &str = "ca.pem";
pub const METADATA_FILE: &str = "enrollment.json";

pub struct EnrollOptions {
    /// Base URL of the vending API, e.g. `https://cvm.example.com`.
    pub url: String,
    pub serial: String,
    pub token: SecretString,
    /// PEM roots to trust for the API instead of the system's.
    pub ca: Option<PathBuf>,
    pub out: PathBuf,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// Waits between attempts when the server gives no Retry-After: `initial`, doubling, capped
/// at `max`, each with up to 25% jitter so a fleet that lost power together does not retry
/// together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        let base = self.initial.saturating_mul(factor).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub data: String,
    pub credentials: String,
}

/// What the API returns (the fields the device keeps).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VendResponse {
    thing_name: String,
    certificate_id: String,
    certificate_arn: String,
    certificate_pem: String,
    ca_certificates: Vec<String>,
    endpoints: Endpoints,
    policy_name: Option<String>,
    role_alias: Option<String>,
    issued_at: Option<String>,
}

/// What the device stores next to its certificate; later commands read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    pub serial: String,
    pub thing_name: String,
    pub certificate_id: String,
    pub certificate_arn: String,
    pub public_key_fingerprint: String,
    pub endpoints: Endpoints,
    pub policy_name: Option<String>,
    pub role_alias: Option<String>,
    pub issued_at: Option<String>,
    /// The key store spec (`zymkey:0`, `pkcs11:...`, `file:...`) the certificate is for.
    pub key: String,
}

impl Enrollment {
    /// The enrollment recorded in `dir`, if there is a complete one.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(METADATA_FILE);
        let raw = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is missing: this device is not enrolled yet (run `cvm-device enroll`)",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            }
        })?;
        serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// Files were already there for this key and serial; nothing was asked.
    AlreadyEnrolled(Enrollment),
    /// The API answered 201 (new) or 200 (the certificate this key already had).
    Enrolled { enrollment: Enrollment, new: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error("the API refused the enrollment: {code} ({status}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the API at {url}: {message}")]
    Network { url: String, message: String },
    #[error("the API answered something unexpected: {0}")]
    InvalidResponse(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ca {path}: {message}")]
    Ca { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The stored enrollment, if it is for this serial and this key.
pub fn existing(out: &Path, serial: &str, fingerprint: &str) -> Option<Enrollment> {
    let raw = std::fs::read(out.join(METADATA_FILE)).ok()?;
    let e: Enrollment = serde_json::from_slice(&raw).ok()?;
    let complete = out.join(CERTIFICATE_FILE).exists() && out.join(CA_FILE).exists();
    (complete && e.serial == serial && e.public_key_fingerprint == fingerprint).then_some(e)
}

fn client(ca: Option<&Path>) -> Result<reqwest::Client, EnrollError> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("cvm-device/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|e| EnrollError::Ca {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| EnrollError::Ca {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(EnrollError::Ca {
                path: path.to_owned(),
                message: "no PEM certificate in the file".into(),
            });
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| EnrollError::Network {
        url: String::new(),
        message: e.to_string(),
    })
}

/// Whether an answer is worth asking again, and after how long.
fn retry_delay(
    status: u16,
    code: &str,
    retry_after: Option<u64>,
    attempt: u32,
    backoff: &Backoff,
) -> Option<Duration> {
    let transient =
        status == 429 || status >= 500 || (status == 409 && code == "enrollment_in_progress");
    transient.then(|| {
        retry_after
            .map(Duration::from_secs)
            .unwrap_or_else(|| backoff.delay(attempt))
    })
}

/// Exponential backoff from 1 s, capped at 30 s, with up to 25% jitter.
pub fn backoff(attempt: u32) -> Duration {
    Backoff::default().delay(attempt)
}

/// One attempt's result: an answer (status, Retry-After, body) or a transport failure.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(u16, Option<u64>, String), String> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.min(300));
    // A connection lost while the body arrives is as transient as one lost before.
    let text = response.text().await.map_err(|e| error_chain(&e))?;
    Ok((status, retry_after, text))
}

pub async fn enroll(store: &dyn KeyStore, options: &EnrollOptions) -> Result<Outcome, EnrollError> {
    let fingerprint = key_fingerprint(store)?;
    if let Some(existing) = existing(&options.out, &options.serial, &fingerprint) {
        return Ok(Outcome::AlreadyEnrolled(existing));
    }
    let csr = build_csr(store, &options.serial)?;
    let client = client(options.ca.as_deref())?;
    let url = format!("{}/v1/certificates", options.url.trim_end_matches('/'));
    let body = serde_json::json!({
        "serial": options.serial,
        "token": options.token.expose_secret(),
        "csr": csr,
    });

    let mut attempts = 0;
    let (status, response) = loop {
        attempts += 1;
        let last = attempts >= options.max_attempts.max(1);
        let (status, retry_after, text) = match attempt(&client, &url, &body).await {
            Ok(answer) => answer,
            Err(message) if !last => {
                let wait = options.backoff.delay(attempts);
                eprintln!(
                    "cvm-device: {url} unreachable ({message}); retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(message) => return Err(EnrollError::Network { url, message }),
        };
        if status == 200 || status == 201 {
            break (status, text);
        }
        let (code, message) = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => (
                v["code"].as_str().unwrap_or("unknown").to_owned(),
                v["message"].as_str().unwrap_or("").to_owned(),
            ),
            Err(_) => ("unknown".to_owned(), text.chars().take(200).collect()),
        };
        let (code, message) = (one_line(&code), one_line(&message));
        match retry_delay(status, &code, retry_after, attempts, &options.backoff) {
            Some(wait) if !last => {
                eprintln!(
                    "cvm-device: {code} ({status}); retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            _ => {
                return Err(EnrollError::Api {
                    status,
                    code,
                    message,
                })
            }
        }
    };

    let vended: VendResponse =
        serde_json::from_str(&response).map_err(|e| EnrollError::InvalidResponse(e.to_string()))?;
    if !crate::tls::certificate_is_for(store, &vended.certificate_pem)? {
        return Err(EnrollError::InvalidResponse(
            "the certificate is not for this device's key".into(),
        ));
    }
    let enrollment = Enrollment {
        serial: options.serial.clone(),
        thing_name: vended.thing_name,
        certificate_id: vended.certificate_id,
        certificate_arn: vended.certificate_arn,
        public_key_fingerprint: fingerprint,
        endpoints: vended.endpoints,
        policy_name: vended.policy_name,
        role_alias: vended.role_alias,
        issued_at: vended.issued_at,
        key: store.describe(),
    };
    save(
        &options.out,
        &vended.certificate_pem,
        &vended.ca_certificates,
        &enrollment,
    )?;
    Ok(Outcome::Enrolled {
        enrollment,
        new: status == 201,
    })
}

fn save(
    out: &Path,
    certificate: &str,
    cas: &[String],
    enrollment: &Enrollment,
) -> Result<(), EnrollError> {
    ensure_private_dir(out).map_err(io(out))?;
    let meta_path = out.join(METADATA_FILE);
    // An older enrollment (another serial or key) stops being "complete" before its files
    // are replaced, so no mix of old and new is ever taken for a finished enrollment.
    match std::fs::remove_file(&meta_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&meta_path)(e)),
        _ => {}
    }
    let cert_path = out.join(CERTIFICATE_FILE);
    write_atomic(&cert_path, certificate.as_bytes()).map_err(io(&cert_path))?;
    let ca_path = out.join(CA_FILE);
    write_atomic(&ca_path, cas.join("\n").as_bytes()).map_err(io(&ca_path))?;
    // Written last: its presence means the enrollment is complete.
    let meta = serde_json::to_vec_pretty(enrollment)
        .map_err(|e| EnrollError::InvalidResponse(e.to_string()))?;
    write_atomic(&meta_path, &meta).map_err(io(&meta_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_what_can_succeed_later() {
        let b = Backoff::default();
        assert!(
            retry_delay(503, "service_unavailable", Some(2), 1, &b) == Some(Duration::from_secs(2))
        );
        assert!(retry_delay(429, "", None, 1, &b).is_some());
        assert!(retry_delay(409, "enrollment_in_progress", Some(1), 1, &b).is_some());
        for (status, code) in [
            (409, "already_issued"),
            (403, "invalid_credentials"),
            (400, "csr_malformed"),
            (413, "request_too_large"),
        ] {
            assert!(
                retry_delay(status, code, None, 1, &b).is_none(),
                "{status} {code}"
            );
        }
    }

    #[test]
    fn backoff_starts_at_initial_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) <= Duration::from_millis(1250));
        assert!(backoff(2) >= Duration::from_secs(2));
        assert!(backoff(10) <= Duration::from_millis(37_500));
        assert!(backoff(1000) <= Duration::from_millis(37_500));
    }
}
