//! `enroll`: key, CSR, one HTTPS call, files. Safe to re-run after any interruption: the key
//! is kept, so a retry after a lost response gets the same certificate back, and the
//! metadata file that marks success is written last (and removed first when files change).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::clock::{ClockCheck, ClockError, Reference};
use crate::csr::{build_csr, key_fingerprint, CsrError};
use crate::files::{ensure_dir, share_file, write_atomic, Sharing};
use crate::http::{self, Verdict};
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
    /// The clock and how long to wait for it to be set (a board without an RTC).
    pub clock: ClockCheck,
    /// Who may read the files written (`group` in the config).
    pub sharing: Sharing,
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
    #[error(transparent)]
    Clock(#[from] ClockError),
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

/// Exponential backoff from 1 s, capped at 30 s, with up to 25% jitter.
pub fn backoff(attempt: u32) -> Duration {
    Backoff::default().delay(attempt)
}

/// One answer of the API.
struct Answer {
    status: u16,
    /// What `Retry-After` asks for, capped.
    retry_after: Option<Duration>,
    /// The server's `Date`, and when it arrived.
    date: Option<(SystemTime, Instant)>,
    body: String,
}

/// One attempt's result: an answer, or a transport failure (transient).
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    clock: &ClockCheck,
) -> Result<Answer, String> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let received = Instant::now();
    let status = response.status().as_u16();
    let date = http::date(response.headers());
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| http::retry_after(v, date, clock.now()));
    // A connection lost while the body arrives is as transient as one lost before.
    let text = response.text().await.map_err(|e| error_chain(&e))?;
    Ok(Answer {
        status,
        retry_after,
        date: date.map(|d| (d, received)),
        body: text,
    })
}

/// How many times an answer whose `Date` disagrees with the clock is asked again, once the
/// clock has been set (each after a bounded wait).
const CLOCK_RETRIES: u32 = 2;

pub async fn enroll(store: &dyn KeyStore, options: &EnrollOptions) -> Result<Outcome, EnrollError> {
    let fingerprint = key_fingerprint(store)?;
    if let Some(existing) = existing(&options.out, &options.serial, &fingerprint) {
        // Nothing to ask; the files still follow the configured sharing.
        share(&options.out, options.sharing)?;
        return Ok(Outcome::AlreadyEnrolled(existing));
    }
    // Where the result goes must be writable, with the configured group, before the token is
    // spent: a certificate that cannot be stored would be asked for again and again.
    ensure_dir(&options.out, options.sharing).map_err(io(&options.out))?;
    // A clock that was never set would fail TLS, or judge the server's certificate wrongly.
    options.clock.settle(&Reference::Build).await?;
    let csr = build_csr(store, &options.serial)?;
    let client = client(options.ca.as_deref())?;
    let url = format!("{}/v1/certificates", options.url.trim_end_matches('/'));
    let body = serde_json::json!({
        "serial": options.serial,
        "token": options.token.expose_secret(),
        "csr": csr,
    });

    let mut attempts = 0;
    let mut clock_retries = 0;
    let (status, response) = loop {
        attempts += 1;
        let last = attempts >= options.max_attempts.max(1);
        let answer = match attempt(&client, &url, &body, &options.clock).await {
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
        if let Some((date, received)) = answer.date {
            // TLS judged the server's certificate by this clock: an answer received with a
            // clock far from the server's is not acted on. Once the clock is set, ask again
            // (a certificate already issued comes back, for the same key).
            let reference = Reference::Server { date, received };
            if options.clock.problem(&reference).is_some() {
                options.clock.settle(&reference).await?;
                clock_retries += 1;
                if clock_retries > CLOCK_RETRIES {
                    return Err(EnrollError::Clock(ClockError {
                        problem: "the server's Date still disagrees with the system clock \
                                  after it was set"
                            .into(),
                        waited: Duration::ZERO,
                    }));
                }
                attempts -= 1;
                continue;
            }
        }
        let status = answer.status;
        if status == 200 || status == 201 {
            break (status, answer.body);
        }
        let (code, message) = match serde_json::from_str::<serde_json::Value>(&answer.body) {
            Ok(v) => (
                v["code"].as_str().unwrap_or("unknown").to_owned(),
                v["message"].as_str().unwrap_or("").to_owned(),
            ),
            Err(_) => (
                "unknown".to_owned(),
                answer.body.chars().take(200).collect(),
            ),
        };
        let (code, message) = (one_line(&code), one_line(&message));
        match http::verdict(status, &code) {
            Verdict::Transient if !last => {
                let wait = answer
                    .retry_after
                    .unwrap_or_else(|| options.backoff.delay(attempts));
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
        options.sharing,
    )?;
    Ok(Outcome::Enrolled {
        enrollment,
        new: status == 201,
    })
}

/// Gives the enrollment directory and the files in it the configured mode and group.
fn share(out: &Path, sharing: Sharing) -> Result<(), EnrollError> {
    ensure_dir(out, sharing).map_err(io(out))?;
    for name in crate::files::CLIENT_FILES {
        let path = out.join(name);
        share_file(&path, sharing).map_err(io(&path))?;
    }
    Ok(())
}

fn save(
    out: &Path,
    certificate: &str,
    cas: &[String],
    enrollment: &Enrollment,
    sharing: Sharing,
) -> Result<(), EnrollError> {
    ensure_dir(out, sharing).map_err(io(out))?;
    let meta_path = out.join(METADATA_FILE);
    // An older enrollment (another serial or key) stops being "complete" before its files
    // are replaced, so no mix of old and new is ever taken for a finished enrollment.
    match std::fs::remove_file(&meta_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&meta_path)(e)),
        _ => {}
    }
    let cert_path = out.join(CERTIFICATE_FILE);
    write_atomic(&cert_path, certificate.as_bytes(), sharing).map_err(io(&cert_path))?;
    let ca_path = out.join(CA_FILE);
    write_atomic(&ca_path, cas.join("\n").as_bytes(), sharing).map_err(io(&ca_path))?;
    // Written last: its presence means the enrollment is complete.
    let meta = serde_json::to_vec_pretty(enrollment)
        .map_err(|e| EnrollError::InvalidResponse(e.to_string()))?;
    write_atomic(&meta_path, &meta, sharing).map_err(io(&meta_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_initial_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) <= Duration::from_millis(1250));
        assert!(backoff(2) >= Duration::from_secs(2));
        assert!(backoff(10) <= Duration::from_millis(37_500));
        assert!(backoff(1000) <= Duration::from_millis(37_500));
    }
}
