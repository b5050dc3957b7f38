//! `cvm-admin register-ca`: registers an own CA with AWS IoT, so AWS IoT accepts device
//! certificates it signed (`RegisterCertificate`, just-in-time registration).
//!
//! AWS IoT wants proof that the caller holds the CA's key: a verification certificate whose
//! subject CN is the account's registration code (`GetRegistrationCode`), signed by the CA.
//! - `--ca-cert F --ca-key F`: the CA is a certificate and key on disk. The key is checked
//!   against the certificate and used here, locally, to sign the verification certificate;
//!   it is never sent anywhere.
//! - `--pca-arn ARN`: the CA is an AWS Private CA. Its certificate comes from
//!   `GetCertificateAuthorityCertificate`, and the CA itself issues the verification
//!   certificate (a CSR for a fresh key with CN = the registration code).
//!
//! Then `RegisterCACertificate` with `setAsActive` (and `allowAutoRegistration` when asked).
//! A CA that is already registered is made active (and its auto-registration set) instead,
//! so the command can be re-run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_iot::operation::register_ca_certificate::RegisterCACertificateError;
use aws_sdk_iot::types::{AutoRegistrationStatus, CaCertificateStatus};
use cvm_aws::error::port_error;
use cvm_aws::pca::{AcmPca, TokioTimer};
use cvm_core::ports::PortError;
use cvm_core::provider::{
    issue_and_await, Backoff, IdempotencyToken, IssueSettings, PrivateCa, SigningAlgorithm,
};
use cvm_core::Csr;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;
use x509_cert::der::{DecodePem, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;
use zeroize::Zeroizing;

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    Files { certificate: PathBuf, key: PathBuf },
    PrivateCa { arn: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterCaError {
    #[error("could not read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA certificate is not a readable PEM X.509 certificate: {0}")]
    BadCertificate(String),
    #[error(
        "the CA key is not a readable private key (PEM: PKCS#8 \"PRIVATE KEY\", SEC1 \"EC PRIVATE \
         KEY\" or PKCS#1 \"RSA PRIVATE KEY\", unencrypted; EC P-256/P-384 or RSA): {0}"
    )]
    BadKey(String),
    #[error(
        "the key does not match the CA certificate: the certificate's public key is another one"
    )]
    KeyMismatch,
    #[error(
        "the certificate is not a CA certificate (no basic constraints with CA:TRUE): {subject}"
    )]
    NotCa { subject: String },
    #[error("the CA certificate expired on {not_after} (now {now}): {subject}")]
    Expired {
        subject: String,
        not_after: String,
        now: String,
    },
    #[error("the CA certificate is not valid before {not_before}: {subject}")]
    NotYetValid { subject: String, not_before: String },
    #[error("could not make the verification certificate: {0}")]
    Verification(String),
    #[error("{}", chain(.0))]
    Aws(#[from] PortError),
}

/// An error with its causes, for the operator (SDK errors keep the service's message there).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A CA certificate that passed the local checks.
#[derive(Debug)]
pub struct CaCertificate {
    pub pem: String,
    pub der: Vec<u8>,
    pub subject: String,
    /// The raw public key (the SubjectPublicKeyInfo's BIT STRING).
    public_key: Vec<u8>,
    not_after: SystemTime,
}

/// Parses the first certificate of a PEM bundle and checks it can be registered as a CA:
/// basic constraints CA:TRUE, valid now.
pub fn check_ca_certificate(pem: &str, now: SystemTime) -> Result<CaCertificate, RegisterCaError> {
    let first = first_certificate_pem(pem)
        .ok_or_else(|| RegisterCaError::BadCertificate("no CERTIFICATE block".into()))?;
    let cert = Certificate::from_pem(first.as_bytes())
        .map_err(|e| RegisterCaError::BadCertificate(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let subject = tbs.subject().to_string();
    let is_ca = tbs
        .get_extension::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|(_critical, bc)| bc.ca);
    if !is_ca {
        return Err(RegisterCaError::NotCa { subject });
    }
    let validity = tbs.validity();
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    if now > not_after {
        return Err(RegisterCaError::Expired {
            subject,
            not_after: validity.not_after.to_string(),
            now: cvm_core::vend::rfc3339(time::OffsetDateTime::from(now)),
        });
    }
    if now < not_before {
        return Err(RegisterCaError::NotYetValid {
            subject,
            not_before: validity.not_before.to_string(),
        });
    }
    let der = cert
        .to_der()
        .map_err(|e| RegisterCaError::BadCertificate(e.to_string()))?;
    Ok(CaCertificate {
        pem: first,
        der,
        subject,
        public_key: tbs
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
            .to_vec(),
        not_after,
    })
}

fn first_certificate_pem(bundle: &str) -> Option<String> {
    let begin = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = bundle[begin..].find(end_marker)? + begin + end_marker.len();
    Some(format!("{}\n", &bundle[begin..end]))
}

/// Reads the CA's private key (any of the usual unencrypted PEM forms; other PEM blocks such
/// as openssl's `EC PARAMETERS` are skipped) and checks it is the certificate's key.
pub fn load_ca_key(key_pem: &[u8], ca: &CaCertificate) -> Result<rcgen::KeyPair, RegisterCaError> {
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| RegisterCaError::BadKey(e.to_string()))?;
    let key = rcgen::KeyPair::try_from(&der).map_err(|e| RegisterCaError::BadKey(e.to_string()))?;
    if key.public_key_raw() != ca.public_key.as_slice() {
        return Err(RegisterCaError::KeyMismatch);
    }
    Ok(key)
}

/// The verification certificate: CN = the registration code, a fresh key, signed by the CA
/// key, valid for a day (within the CA's validity).
pub fn verification_certificate(
    ca: &CaCertificate,
    ca_key: rcgen::KeyPair,
    registration_code: &str,
    now: SystemTime,
) -> Result<String, RegisterCaError> {
    let fail = |e: rcgen::Error| RegisterCaError::Verification(e.to_string());
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem, ca_key).map_err(fail)?;
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, registration_code);
    let now = time::OffsetDateTime::from(now);
    params.not_before = now - time::Duration::minutes(5);
    params.not_after =
        (now + time::Duration::days(1)).min(time::OffsetDateTime::from(ca.not_after));
    Ok(params.signed_by(&key, &issuer).map_err(fail)?.pem())
}

/// What the command prints.
#[derive(Debug)]
pub struct Registered {
    pub certificate_id: String,
    pub certificate_arn: String,
    pub status: String,
    pub auto_registration_status: String,
    pub already_registered: bool,
    pub subject: String,
}

impl Registered {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "certificateId": self.certificate_id,
            "certificateArn": self.certificate_arn,
            "status": self.status,
            "autoRegistrationStatus": self.auto_registration_status,
            "alreadyRegistered": self.already_registered,
            "subject": self.subject,
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, RegisterCaError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| RegisterCaError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// Runs the whole registration. Every local check happens before the first AWS call.
pub async fn register_ca(
    sdk: &aws_config::SdkConfig,
    source: &CaSource,
    auto_registration: bool,
) -> Result<Registered, RegisterCaError> {
    let now = SystemTime::now();
    let iot = aws_sdk_iot::Client::new(sdk);
    let (ca, verification) = match source {
        CaSource::Files { certificate, key } => {
            let cert_pem = read("the CA certificate", certificate)?;
            let cert_pem = String::from_utf8_lossy(&cert_pem).into_owned();
            let ca = check_ca_certificate(&cert_pem, now)?;
            let key_pem = read("the CA key", key)?;
            let ca_key = load_ca_key(&key_pem, &ca)?;
            let code = registration_code(&iot).await?;
            let verification = verification_certificate(&ca, ca_key, &code, now)?;
            (ca, verification)
        }
        CaSource::PrivateCa { arn } => {
            let pca = AcmPca::from_sdk(sdk, arn.clone(), Duration::from_secs(5));
            let (cert_pem, _chain) = pca.ca_certificate().await?;
            let ca = check_ca_certificate(&cert_pem, now)?;
            let code = registration_code(&iot).await?;
            let verification = verification_by_private_ca(&pca, &code).await?;
            (ca, verification)
        }
    };
    register(&iot, &ca, &verification, auto_registration).await
}

async fn registration_code(iot: &aws_sdk_iot::Client) -> Result<String, RegisterCaError> {
    const OP: &str = "iot:GetRegistrationCode";
    let out = iot
        .get_registration_code()
        .send()
        .await
        .map_err(|e| port_error(OP, e))?;
    out.registration_code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            RegisterCaError::Aws(
                PortError::new(cvm_core::ports::FailureKind::Other, OP)
                    .with_code("MissingField(registrationCode)"),
            )
        })
}

/// Has the Private CA issue the verification certificate: CSR for a fresh key with
/// CN = the registration code, `IssueCertificate` (one day, SHA-256 with the CA's key type),
/// `GetCertificate` until ready.
async fn verification_by_private_ca(pca: &AcmPca, code: &str) -> Result<String, RegisterCaError> {
    let fail = |e: rcgen::Error| RegisterCaError::Verification(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, code);
    let csr_pem = params
        .serialize_request(&key)
        .map_err(fail)?
        .pem()
        .map_err(fail)?;
    let csr = Csr::parse_pem(&csr_pem).map_err(|e| RegisterCaError::Verification(e.to_string()))?;
    let settings = IssueSettings {
        signing_algorithm: SigningAlgorithm::for_key_type(pca.key_type().await?),
        validity_days: 1,
        template_arn: None,
    };
    let token = IdempotencyToken::random()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (_arn, pem) = issue_and_await(
        pca,
        &TokioTimer,
        &csr,
        &settings,
        &token,
        deadline,
        Backoff::default(),
    )
    .await
    .map_err(|e| RegisterCaError::Verification(chain(&e)))?;
    Ok(pem)
}

async fn register(
    iot: &aws_sdk_iot::Client,
    ca: &CaCertificate,
    verification: &str,
    auto_registration: bool,
) -> Result<Registered, RegisterCaError> {
    const OP: &str = "iot:RegisterCACertificate";
    let result = iot
        .register_ca_certificate()
        .ca_certificate(&ca.pem)
        .verification_certificate(verification)
        .set_as_active(true)
        .allow_auto_registration(auto_registration)
        .send()
        .await;
    let (id, already_registered) = match result {
        Ok(out) => (
            out.certificate_id.ok_or_else(|| {
                PortError::new(cvm_core::ports::FailureKind::Other, OP)
                    .with_code("MissingField(certificateId)")
            })?,
            false,
        ),
        Err(e) => match e.as_service_error() {
            Some(RegisterCACertificateError::ResourceAlreadyExistsException(exists)) => {
                // AWS IoT's certificate ids are the SHA-256 of the DER certificate.
                let id = exists.resource_id().map(str::to_owned).unwrap_or_else(|| {
                    hex::encode(aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        &ca.der,
                    ))
                });
                iot.update_ca_certificate()
                    .certificate_id(&id)
                    .new_status(CaCertificateStatus::Active)
                    .new_auto_registration_status(if auto_registration {
                        AutoRegistrationStatus::Enable
                    } else {
                        AutoRegistrationStatus::Disable
                    })
                    .send()
                    .await
                    .map_err(|e| port_error("iot:UpdateCACertificate", e))?;
                (id, true)
            }
            _ => return Err(port_error(OP, e).into()),
        },
    };
    let described = iot
        .describe_ca_certificate()
        .certificate_id(&id)
        .send()
        .await
        .map_err(|e| port_error("iot:DescribeCACertificate", e))?;
    let description = described.certificate_description();
    Ok(Registered {
        certificate_arn: description
            .and_then(|d| d.certificate_arn())
            .unwrap_or_default()
            .to_owned(),
        status: description
            .and_then(|d| d.status())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        auto_registration_status: description
            .and_then(|d| d.auto_registration_status())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        certificate_id: id,
        already_registered,
        subject: ca.subject.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ca(is_ca: bool, not_after: time::OffsetDateTime) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Fleet CA");
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
        params.not_after = not_after;
        (params.self_signed(&key).unwrap().pem(), key)
    }

    fn later() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() + time::Duration::days(365)
    }

    #[test]
    fn a_valid_ca_and_its_key_make_a_verification_certificate() {
        let (pem, key) = ca(true, later());
        let checked = check_ca_certificate(&pem, SystemTime::now()).unwrap();
        assert!(checked.subject.contains("Test Fleet CA"));
        let key = load_ca_key(key.serialize_pem().as_bytes(), &checked).unwrap();
        let v = verification_certificate(&checked, key, "c0de", SystemTime::now()).unwrap();
        let cert = Certificate::from_pem(v.as_bytes()).unwrap();
        assert_eq!(cert.tbs_certificate().subject().to_string(), "CN=c0de");
        assert_eq!(
            cert.tbs_certificate().issuer().to_der().unwrap(),
            Certificate::from_pem(checked.pem.as_bytes())
                .unwrap()
                .tbs_certificate()
                .subject()
                .to_der()
                .unwrap()
        );
    }

    #[test]
    fn refusals_are_specific() {
        let (pem, _) = ca(true, later());
        let checked = check_ca_certificate(&pem, SystemTime::now()).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let err = load_ca_key(other.serialize_pem().as_bytes(), &checked).unwrap_err();
        assert!(matches!(err, RegisterCaError::KeyMismatch), "{err}");

        let err = load_ca_key(
            b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n",
            &checked,
        )
        .unwrap_err();
        assert!(matches!(err, RegisterCaError::BadKey(_)), "{err}");

        let (leaf, _) = ca(false, later());
        let err = check_ca_certificate(&leaf, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");

        let (expired, _) = ca(
            true,
            time::OffsetDateTime::now_utc() - time::Duration::days(1),
        );
        let err = check_ca_certificate(&expired, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let err = check_ca_certificate("hello", SystemTime::now()).unwrap_err();
        assert!(matches!(err, RegisterCaError::BadCertificate(_)), "{err}");
    }
}
