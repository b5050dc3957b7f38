//! `enroll`: key, CSR, one HTTPS call, files. Safe to re-run after any interruption: the key
//! is kept, so a retry after a lost response gets the same certificate back, and the
//! metadata file that marks success is written last (and removed first when files change).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::api::{self, ApiError, Retries, Success};
use crate::clock::{ClockCheck, ClockError, Reference};
use crate::csr::{build_csr, key_fingerprint, CsrError};
use crate::files::{ensure_dir, share_file, write_atomic, FileError, Sharing};
use crate::identity;
use crate::keystore::{KeyStore, KeyStoreError};

pub use crate::identity::{CA_FILE, CERTIFICATE_FILE, METADATA_FILE};

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

pub use crate::api::Backoff;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub data: String,
    pub credentials: String,
}

/// What the API returns for a vend, a renewal and its confirmation (the fields the device
/// keeps).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VendResponse {
    pub thing_name: String,
    pub certificate_id: String,
    pub certificate_arn: String,
    pub certificate_pem: String,
    pub ca_certificates: Vec<String>,
    pub endpoints: Endpoints,
    pub policy_name: Option<String>,
    pub role_alias: Option<String>,
    pub issued_at: Option<String>,
}

/// What the device stores next to its certificate; later commands read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    pub serial: String,
    pub thing_name: String,
    pub certificate_id: String,
    /// `None` after fleet provisioning, whose answers do not give it.
    pub certificate_arn: Option<String>,
    pub public_key_fingerprint: String,
    pub endpoints: Endpoints,
    pub policy_name: Option<String>,
    pub role_alias: Option<String>,
    pub issued_at: Option<String>,
    /// The key store spec (`zymkey:0`, `pkcs11:...`, `file:...`) the certificate is for.
    pub key: String,
}

impl Enrollment {
    /// What a vend (or renewal) answer says, for `serial` and the key store `key` whose public
    /// key has `fingerprint`.
    pub(crate) fn from_vend(
        serial: &str,
        vended: &VendResponse,
        fingerprint: String,
        key: String,
    ) -> Self {
        Self {
            serial: serial.to_owned(),
            thing_name: vended.thing_name.clone(),
            certificate_id: vended.certificate_id.clone(),
            certificate_arn: Some(vended.certificate_arn.clone()),
            public_key_fingerprint: fingerprint,
            endpoints: vended.endpoints.clone(),
            policy_name: vended.policy_name.clone(),
            role_alias: vended.role_alias.clone(),
            issued_at: vended.issued_at.clone(),
            key,
        }
    }

    /// As stored in `enrollment.json`.
    pub fn to_json(&self) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The enrollment recorded in `dir`, if there is a complete one.
    pub fn load(dir: &Path) -> Result<Self, String> {
        Self::load_from(&identity::path(dir, METADATA_FILE))
    }

    /// The enrollment recorded in the file `path`.
    pub fn load_from(path: &Path) -> Result<Self, String> {
        let raw = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is missing: this device is not enrolled yet (run `cvm-device enroll` \
                     or `cvm-device provision`)",
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

impl From<FileError> for EnrollError {
    fn from(e: FileError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// The stored enrollment, if it is for this serial and this key.
pub fn existing(out: &Path, serial: &str, fingerprint: &str) -> Option<Enrollment> {
    let raw = std::fs::read(identity::path(out, METADATA_FILE)).ok()?;
    let e: Enrollment = serde_json::from_slice(&raw).ok()?;
    let complete =
        identity::path(out, CERTIFICATE_FILE).exists() && identity::path(out, CA_FILE).exists();
    (complete && e.serial == serial && e.public_key_fingerprint == fingerprint).then_some(e)
}

/// Exponential backoff from 1 s, capped at 30 s, with up to 25% jitter.
pub fn backoff(attempt: u32) -> Duration {
    Backoff::default().delay(attempt)
}

impl From<ApiError> for EnrollError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Refused {
                status,
                code,
                message,
            } => Self::Api {
                status,
                code,
                message,
            },
            ApiError::Network { url, message } => Self::Network { url, message },
            ApiError::Ca { path, message } => Self::Ca { path, message },
            ApiError::Clock(e) => Self::Clock(e),
        }
    }
}

pub async fn enroll(store: &dyn KeyStore, options: &EnrollOptions) -> Result<Outcome, EnrollError> {
    let fingerprint = key_fingerprint(store)?;
    if let Some(existing) = existing(&options.out, &options.serial, &fingerprint) {
        // Nothing to ask; the files still follow the configured sharing.
        share(&options.out, options.sharing)?;
        return Ok(Outcome::AlreadyEnrolled(existing));
    }
    // Where the result goes must be writable, with the configured group, before the token is
    // spent: a certificate that cannot be stored would be asked for again and again.
    ensure_dir(&options.out, options.sharing).map_err(FileError::at(&options.out))?;
    // A clock that was never set would fail TLS, or judge the server's certificate wrongly.
    options.clock.settle(&Reference::Build).await?;
    let csr = build_csr(store, &options.serial)?;
    let client = api::client(options.ca.as_deref())?;
    let url = format!("{}/v1/certificates", options.url.trim_end_matches('/'));
    let body = serde_json::json!({
        "serial": options.serial,
        "token": options.token.expose_secret(),
        "csr": csr,
    });

    let retries = Retries {
        max_attempts: options.max_attempts,
        backoff: options.backoff,
        clock: options.clock.clone(),
    };
    // Asked again after a lost answer or a clock that was not set, the API gives the
    // certificate already issued back, for the same key.
    let Success {
        status,
        body: response,
    } = api::post(&client, &url, &body, &retries).await?;

    let vended: VendResponse =
        serde_json::from_str(&response).map_err(|e| EnrollError::InvalidResponse(e.to_string()))?;
    if !crate::tls::certificate_is_for(store, &vended.certificate_pem)? {
        return Err(EnrollError::InvalidResponse(
            "the certificate is not for this device's key".into(),
        ));
    }
    let enrollment = Enrollment::from_vend(&options.serial, &vended, fingerprint, store.describe());
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

/// Gives the enrollment directory and the files in it the configured mode and group: the
/// client's files, and a key file in it that a renewal named (`device-r2.key`).
pub(crate) fn share(out: &Path, sharing: Sharing) -> Result<(), FileError> {
    ensure_dir(out, sharing).map_err(FileError::at(out))?;
    let renewed_key = Enrollment::load(out)
        .ok()
        .and_then(|e| e.key.strip_prefix("file:").map(PathBuf::from))
        .filter(|key| key.parent() == Some(out));
    let names = crate::files::CLIENT_FILES.iter().map(|name| out.join(name));
    for path in names.chain(renewed_key) {
        share_file(&path, sharing).map_err(FileError::at(&path))?;
    }
    Ok(())
}

/// Writes a complete identity into `out`: certificate, CA chain, then `enrollment.json`. A
/// renewal prepared for the identity it replaces is dropped first.
pub(crate) fn save(
    out: &Path,
    certificate: &str,
    cas: &[String],
    enrollment: &Enrollment,
    sharing: Sharing,
) -> Result<(), FileError> {
    ensure_dir(out, sharing).map_err(FileError::at(out))?;
    let meta_path = out.join(METADATA_FILE);
    // An older enrollment (another serial or key) stops being "complete" before its files
    // are replaced, so no mix of old and new is ever taken for a finished enrollment.
    match std::fs::remove_file(&meta_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(FileError::at(&meta_path)(e))
        }
        _ => {}
    }
    let next = out.join(identity::NEXT_DIR);
    match std::fs::remove_dir_all(&next) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(FileError::at(&next)(e)),
        _ => {}
    }
    let cert_path = out.join(CERTIFICATE_FILE);
    write_atomic(&cert_path, certificate.as_bytes(), sharing).map_err(FileError::at(&cert_path))?;
    let ca_path = out.join(CA_FILE);
    write_atomic(&ca_path, cas.join("\n").as_bytes(), sharing).map_err(FileError::at(&ca_path))?;
    // Written last: its presence means the enrollment is complete.
    enrollment
        .to_json()
        .and_then(|meta| write_atomic(&meta_path, &meta, sharing))
        .map_err(FileError::at(&meta_path))
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
