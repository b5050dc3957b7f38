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
//! Then `RegisterCACertificate`, ACTIVE unless `--set-active false`, with auto-registration
//! when `--auto-registration [enable]` is given.
//!
//! Running it again for a CA that is already registered (found by its id, the SHA-256 of its
//! DER certificate, before any registration code or verification certificate is made)
//! reports the CA's current state (id, status, auto-registration) and changes it only as
//! asked: `--set-active true|false`, `--auto-registration enable|disable`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_iot::operation::register_ca_certificate::RegisterCACertificateError;
use aws_sdk_iot::types::{AutoRegistrationStatus, CaCertificateStatus};
use clap::ArgGroup;
use cvm_aws::error::{error_code, port_error};
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

use crate::error::chain;

#[derive(clap::Args)]
#[command(group(ArgGroup::new("ca").required(true).args(["ca_cert", "pca_arn"])))]
pub struct Args {
    /// The CA certificate (PEM).
    #[arg(long, requires = "ca_key", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM, unencrypted). Used locally to sign the verification
    /// certificate; never sent anywhere.
    #[arg(long, requires = "ca_cert", value_name = "FILE")]
    ca_key: Option<PathBuf>,
    /// Register this AWS Private CA instead; it issues the verification certificate.
    #[arg(long, value_name = "ARN", conflicts_with_all = ["ca_cert", "ca_key"])]
    pca_arn: Option<String>,
    /// Let AWS IoT register device certificates this CA signed when they first connect
    /// (`--auto-registration` alone means enable). At the first registration the default is
    /// disable; for a CA already registered it changes only when given.
    #[arg(long, value_name = "enable|disable", num_args = 0..=1, default_missing_value = "enable")]
    auto_registration: Option<Toggle>,
    /// ACTIVE (true) or INACTIVE (false). At the first registration the default is true; for
    /// a CA already registered it changes only when given.
    #[arg(long, value_name = "true|false")]
    set_active: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Enable,
    Disable,
}

/// What the operator asked to be true of the CA (`None`: as it is, or the default at the
/// first registration).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub active: Option<bool>,
    pub auto_registration: Option<bool>,
}

pub async fn run(
    ctx: &crate::context::Context,
    args: Args,
) -> Result<(), crate::error::AdminError> {
    let source = match (args.ca_cert, args.ca_key, args.pca_arn) {
        (Some(certificate), Some(key), None) => CaSource::Files { certificate, key },
        (None, None, Some(arn)) => CaSource::PrivateCa { arn },
        _ => {
            return Err(crate::error::AdminError::Usage(
                "give --ca-cert and --ca-key, or --pca-arn".into(),
            ))
        }
    };
    let wanted = Wanted {
        active: args.set_active,
        auto_registration: args.auto_registration.map(|t| t == Toggle::Enable),
    };
    let registered = register_ca(ctx.sdk(), &source, wanted).await?;
    super::print_json(&registered.to_json())
}

/// Private CA's end-entity template for TLS client authentication.
const CLIENT_AUTH_TEMPLATE: &str = "arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1";

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
    /// What this run changed on a CA that was registered already.
    pub changed: Vec<&'static str>,
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
            "changed": self.changed,
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

/// Runs the whole registration. Every local check happens before the first AWS call; a CA
/// already registered is found by its id before a verification certificate is made.
pub async fn register_ca(
    sdk: &aws_config::SdkConfig,
    source: &CaSource,
    wanted: Wanted,
) -> Result<Registered, RegisterCaError> {
    let now = SystemTime::now();
    let iot = aws_sdk_iot::Client::new(sdk);
    match source {
        CaSource::Files { certificate, key } => {
            let cert_pem = read("the CA certificate", certificate)?;
            let cert_pem = String::from_utf8_lossy(&cert_pem).into_owned();
            let ca = check_ca_certificate(&cert_pem, now)?;
            let key_pem = read("the CA key", key)?;
            let ca_key = load_ca_key(&key_pem, &ca)?;
            if let Some(id) = registered_id(&iot, &ca).await? {
                return update(&iot, &ca, id, wanted, true).await;
            }
            let code = registration_code(&iot).await?;
            let verification = verification_certificate(&ca, ca_key, &code, now)?;
            register(&iot, &ca, &verification, wanted).await
        }
        CaSource::PrivateCa { arn } => {
            let pca = AcmPca::from_sdk(sdk, arn.clone(), Duration::from_secs(5));
            let (cert_pem, _chain) = pca.ca_certificate().await?;
            let ca = check_ca_certificate(&cert_pem, now)?;
            if let Some(id) = registered_id(&iot, &ca).await? {
                return update(&iot, &ca, id, wanted, true).await;
            }
            let code = registration_code(&iot).await?;
            let verification = verification_by_private_ca(&pca, &code).await?;
            register(&iot, &ca, &verification, wanted).await
        }
    }
}

/// AWS IoT's id of a CA certificate: the SHA-256 of its DER.
fn ca_id(ca: &CaCertificate) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &ca.der,
    ))
}

/// The CA's id if AWS IoT has it registered already.
async fn registered_id(
    iot: &aws_sdk_iot::Client,
    ca: &CaCertificate,
) -> Result<Option<String>, RegisterCaError> {
    let id = ca_id(ca);
    match iot
        .describe_ca_certificate()
        .certificate_id(&id)
        .send()
        .await
    {
        Ok(_) => Ok(Some(id)),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(port_error("iot:DescribeCACertificate", e).into()),
    }
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
        // An end-entity certificate for client authentication only: the issuing path checks
        // what it gets as it checks a device's certificate, and AWS IoT needs nothing more
        // of a verification certificate than its subject and the CA's signature.
        template_arn: Some(CLIENT_AUTH_TEMPLATE.into()),
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
    wanted: Wanted,
) -> Result<Registered, RegisterCaError> {
    const OP: &str = "iot:RegisterCACertificate";
    let result = iot
        .register_ca_certificate()
        .ca_certificate(&ca.pem)
        .verification_certificate(verification)
        .set_as_active(wanted.active.unwrap_or(true))
        .allow_auto_registration(wanted.auto_registration.unwrap_or(false))
        .send()
        .await;
    match result {
        Ok(out) => {
            let id = out.certificate_id.ok_or_else(|| {
                PortError::new(cvm_core::ports::FailureKind::Other, OP)
                    .with_code("MissingField(certificateId)")
            })?;
            describe(iot, ca, id, false, Vec::new()).await
        }
        Err(e) => match e.as_service_error() {
            // Registered by someone else since we looked: as for a re-run.
            Some(RegisterCACertificateError::ResourceAlreadyExistsException(exists)) => {
                let id = exists
                    .resource_id()
                    .map(str::to_owned)
                    .unwrap_or_else(|| ca_id(ca));
                update(iot, ca, id, wanted, true).await
            }
            _ => Err(port_error(OP, e).into()),
        },
    }
}

/// A CA registered already: changes what was asked and differs, then reports its state.
async fn update(
    iot: &aws_sdk_iot::Client,
    ca: &CaCertificate,
    id: String,
    wanted: Wanted,
    already_registered: bool,
) -> Result<Registered, RegisterCaError> {
    let current = describe(iot, ca, id.clone(), already_registered, Vec::new()).await?;
    let mut changed = Vec::new();
    let mut request = iot.update_ca_certificate().certificate_id(&id);
    if let Some(active) = wanted.active {
        let target = if active { "ACTIVE" } else { "INACTIVE" };
        if current.status != target {
            request = request.new_status(if active {
                CaCertificateStatus::Active
            } else {
                CaCertificateStatus::Inactive
            });
            changed.push("status");
        }
    }
    if let Some(auto) = wanted.auto_registration {
        let target = if auto { "ENABLE" } else { "DISABLE" };
        if current.auto_registration_status != target {
            request = request.new_auto_registration_status(if auto {
                AutoRegistrationStatus::Enable
            } else {
                AutoRegistrationStatus::Disable
            });
            changed.push("autoRegistrationStatus");
        }
    }
    if changed.is_empty() {
        return Ok(current);
    }
    request
        .send()
        .await
        .map_err(|e| port_error("iot:UpdateCACertificate", e))?;
    describe(iot, ca, id, already_registered, changed).await
}

async fn describe(
    iot: &aws_sdk_iot::Client,
    ca: &CaCertificate,
    id: String,
    already_registered: bool,
    changed: Vec<&'static str>,
) -> Result<Registered, RegisterCaError> {
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
        changed,
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
