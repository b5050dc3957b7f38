//! The vend service's typed configuration, read from the environment and checked once at
//! start-up, and the wiring of clients, adapters and the workflow. Shared by the Lambda
//! binary and the local HTTPS server so both run exactly the same code.

use std::sync::Arc;
use std::time::Duration;

use cvm_core::ports::{CertificateIssuer, PortError};
use cvm_core::record::CertificateRef;
use cvm_core::{Csr, Endpoints, PolicyName, VendConfig, Vendor};
use cvm_http::{Api, Metrics};

use crate::pca::{AcmPca, PcaIssuer, PcaSettings, Registration};
use crate::{describe_endpoints, DynamoStore, IotIssuer, IotRegistry};

/// Amazon's roots for the ATS endpoints (RSA and EC), what a device trusts by default.
const AMAZON_ROOTS: [&str; 2] = [
    include_str!("../certs/AmazonRootCA1.pem"),
    include_str!("../certs/AmazonRootCA3.pem"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("could not read {name} from {path}: {source}")]
    File {
        name: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not look up the AWS IoT endpoints (set CVM_IOT_DATA_ENDPOINT and CVM_IOT_CREDENTIALS_ENDPOINT to skip): {0}")]
    Endpoints(#[source] PortError),
    #[error("could not read the Private CA {arn} (CVM_PCA_ARN): {source}")]
    PrivateCa {
        arn: String,
        #[source]
        source: PortError,
    },
}

/// Which CA signs device certificates (`CVM_ISSUER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerMode {
    /// `iot` (default): `iot:CreateCertificateFromCsr` (Amazon's CA).
    Iot,
    /// `acm-pca`: AWS Private CA signs (`CVM_PCA_ARN`), AWS IoT registers the certificate.
    AcmPca(PcaVendSettings),
}

/// The vend API's Private CA settings: the CA's ([`PcaSettings`]), plus
/// `CVM_PCA_REGISTERED_WITH_IOT` (`true`: the CA is registered with AWS IoT and certificates
/// are registered with it, `RegisterCertificate`; default `false`:
/// `RegisterCertificateWithoutCA`) and `CVM_PCA_ISSUE_TIMEOUT_MS` (how long a vend waits for
/// Private CA, default 5000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcaVendSettings {
    pub pca: PcaSettings,
    pub registered_with_iot: bool,
    pub issue_timeout: Duration,
}

impl PcaVendSettings {
    fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let registered_with_iot = match env("CVM_PCA_REGISTERED_WITH_IOT").as_deref().map(str::trim)
        {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "CVM_PCA_REGISTERED_WITH_IOT",
                    reason: format!("{other:?} (true or false)"),
                })
            }
        };
        let timeout_ms = number(env, "CVM_PCA_ISSUE_TIMEOUT_MS", 5000u64)?;
        if !(500..=20_000).contains(&timeout_ms) {
            return Err(ConfigError::Invalid {
                name: "CVM_PCA_ISSUE_TIMEOUT_MS",
                reason: "must be 500 to 20000".into(),
            });
        }
        Ok(Self {
            pca: PcaSettings::from_lookup(env)?,
            registered_with_iot,
            issue_timeout: Duration::from_millis(timeout_ms),
        })
    }
}

#[derive(Debug, Clone)]
pub struct VendSettings {
    pub table_name: String,
    pub issuer: IssuerMode,
    pub default_policy: PolicyName,
    pub max_failed_attempts: u32,
    pub claim_lease: Duration,
    pub endpoints: Option<Endpoints>,
    pub ca_certificates: Vec<String>,
    pub role_alias: Option<String>,
}

/// Looks a setting up by name (the process environment, or a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn required(env: Env, name: &'static str) -> Result<String, ConfigError> {
    env(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

pub(crate) fn number<T: std::str::FromStr>(
    env: Env,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match env(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
            name,
            reason: format!("{v:?} is not a number"),
        }),
    }
}

/// Splits a PEM bundle into its certificates, refusing anything that is not one.
fn pem_certificates(name: &'static str, bundle: &str) -> Result<Vec<String>, ConfigError> {
    let mut certs = Vec::new();
    let mut current = String::new();
    for line in bundle.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line == "-----END CERTIFICATE-----" {
            certs.push(std::mem::take(&mut current));
        }
    }
    if certs.is_empty() {
        return Err(ConfigError::Invalid {
            name,
            reason: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

impl VendSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let issuer = match env("CVM_ISSUER").as_deref().map(str::trim) {
            None | Some("") | Some("iot") => IssuerMode::Iot,
            Some("acm-pca") => IssuerMode::AcmPca(PcaVendSettings::from_lookup(env)?),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "CVM_ISSUER",
                    reason: format!("{other:?} (supported: iot, acm-pca)"),
                })
            }
        };
        let default_policy = PolicyName::parse(&required(env, "CVM_DEFAULT_POLICY_NAME")?)
            .map_err(|e| ConfigError::Invalid {
                name: "CVM_DEFAULT_POLICY_NAME",
                reason: e.to_string(),
            })?;
        let max_failed_attempts = number(env, "CVM_MAX_FAILED_ATTEMPTS", 5u32)?;
        if max_failed_attempts == 0 {
            return Err(ConfigError::Invalid {
                name: "CVM_MAX_FAILED_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        let lease = number(env, "CVM_CLAIM_LEASE_SECONDS", 60u64)?;
        if lease < 15 {
            return Err(ConfigError::Invalid {
                name: "CVM_CLAIM_LEASE_SECONDS",
                reason: "must exceed the function timeout; at least 15".into(),
            });
        }
        let endpoints = match (
            env("CVM_IOT_DATA_ENDPOINT").filter(|v| !v.is_empty()),
            env("CVM_IOT_CREDENTIALS_ENDPOINT").filter(|v| !v.is_empty()),
        ) {
            (Some(data), Some(credentials)) => Some(Endpoints { data, credentials }),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid {
                name: "CVM_IOT_DATA_ENDPOINT",
                reason:
                    "set both CVM_IOT_DATA_ENDPOINT and CVM_IOT_CREDENTIALS_ENDPOINT, or neither"
                        .into(),
            }),
        };
        let ca_certificates = match (env("CVM_CA_CERTIFICATES_FILE"), env("CVM_CA_CERTIFICATES")) {
            (Some(path), _) => {
                let bundle =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                        name: "CVM_CA_CERTIFICATES_FILE",
                        path: path.clone(),
                        source,
                    })?;
                pem_certificates("CVM_CA_CERTIFICATES_FILE", &bundle)?
            }
            (None, Some(bundle)) => pem_certificates("CVM_CA_CERTIFICATES", &bundle)?,
            (None, None) => AMAZON_ROOTS.iter().map(|s| s.to_string()).collect(),
        };
        Ok(Self {
            table_name: required(env, "CVM_TABLE_NAME")?,
            issuer,
            default_policy,
            max_failed_attempts,
            claim_lease: Duration::from_secs(lease),
            endpoints,
            ca_certificates,
            role_alias: env("CVM_ROLE_ALIAS").filter(|v| !v.is_empty()),
        })
    }
}

/// The deployment's issuer, one type for both modes so there is one router type.
#[derive(Clone)]
pub enum AnyIssuer {
    Iot(IotIssuer),
    Pca(PcaIssuer),
}

impl CertificateIssuer for AnyIssuer {
    async fn issue(&self, csr: &Csr) -> Result<cvm_core::ports::NewCertificate, PortError> {
        match self {
            AnyIssuer::Iot(i) => i.issue(csr).await,
            AnyIssuer::Pca(i) => i.issue(csr).await,
        }
    }

    async fn activate(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.activate(certificate).await,
            AnyIssuer::Pca(i) => i.activate(certificate).await,
        }
    }

    async fn discard(&self, certificate: &CertificateRef) -> Result<(), PortError> {
        match self {
            AnyIssuer::Iot(i) => i.discard(certificate).await,
            AnyIssuer::Pca(i) => i.discard(certificate).await,
        }
    }
}

pub type VendApi = Api<DynamoStore, AnyIssuer, IotRegistry>;

/// Longest a single Private CA call may take before the SDK retries it.
const PCA_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the issuer: in `acm-pca` mode, asks the CA once for its key type (unless
/// `CVM_SIGNING_ALGORITHM` is set) and, when registering with the CA, for its certificate.
async fn build_issuer(
    sdk: &aws_config::SdkConfig,
    iot: &aws_sdk_iot::Client,
    mode: IssuerMode,
) -> Result<AnyIssuer, ConfigError> {
    let settings = match mode {
        IssuerMode::Iot => return Ok(AnyIssuer::Iot(IotIssuer::new(iot.clone()))),
        IssuerMode::AcmPca(settings) => settings,
    };
    let arn = settings.pca.ca_arn.clone();
    let pca = AcmPca::from_sdk(sdk, arn.clone(), PCA_ATTEMPT_TIMEOUT);
    let ca_error = |source| ConfigError::PrivateCa {
        arn: arn.clone(),
        source,
    };
    let issue_settings = settings.pca.issue_settings(&pca).await.map_err(ca_error)?;
    let registration = if settings.registered_with_iot {
        let (ca_certificate_pem, _chain) = pca.ca_certificate().await.map_err(ca_error)?;
        Registration::WithCa { ca_certificate_pem }
    } else {
        Registration::WithoutCa
    };
    tracing::info!(
        ca = %arn,
        signing_algorithm = %issue_settings.signing_algorithm,
        validity_days = issue_settings.validity_days,
        registered_with_iot = settings.registered_with_iot,
        "issuing with AWS Private CA"
    );
    Ok(AnyIssuer::Pca(PcaIssuer::new(
        pca,
        iot.clone(),
        issue_settings,
        registration,
        settings.issue_timeout,
    )))
}

/// Builds clients once and wires the workflow. Called at cold start, never per request.
pub async fn build_vend_api(
    sdk: &aws_config::SdkConfig,
    settings: VendSettings,
    metrics: Metrics,
) -> Result<Arc<VendApi>, ConfigError> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let iot = aws_sdk_iot::Client::new(sdk);
    // Independent start-up lookups run concurrently.
    let (endpoints, issuer) = tokio::join!(
        async {
            match settings.endpoints {
                Some(e) => Ok(e),
                None => describe_endpoints(&iot)
                    .await
                    .map_err(ConfigError::Endpoints),
            }
        },
        build_issuer(sdk, &iot, settings.issuer),
    );
    let config = VendConfig {
        default_policy: settings.default_policy,
        max_failed_attempts: settings.max_failed_attempts,
        claim_lease: settings.claim_lease,
        endpoints: endpoints?,
        ca_certificates: settings.ca_certificates,
        role_alias: settings.role_alias,
    };
    let vendor = Vendor::new(
        DynamoStore::new(dynamodb, settings.table_name),
        issuer?,
        IotRegistry::new(iot),
        config,
    );
    Ok(Arc::new(Api { vendor, metrics }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<VendSettings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VendSettings::from_lookup(&move |k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [("CVM_TABLE_NAME", "t"), ("CVM_DEFAULT_POLICY_NAME", "p")];
    const PCA: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555";

    #[test]
    fn acm_pca_mode_reads_its_settings() {
        let s = settings(&[
            BASE[0],
            BASE[1],
            ("CVM_ISSUER", "acm-pca"),
            ("CVM_PCA_ARN", PCA),
        ])
        .unwrap();
        let IssuerMode::AcmPca(p) = s.issuer else {
            panic!("not acm-pca")
        };
        assert_eq!(p.pca.ca_arn, PCA);
        assert_eq!(p.pca.validity_days, 365);
        assert_eq!(p.pca.signing_algorithm, None);
        assert_eq!(p.pca.template_arn, None);
        assert!(!p.registered_with_iot);
        assert_eq!(p.issue_timeout, Duration::from_secs(5));

        let s = settings(&[
            BASE[0],
            BASE[1],
            ("CVM_ISSUER", "acm-pca"),
            ("CVM_PCA_ARN", PCA),
            ("CVM_VALIDITY_DAYS", "30"),
            ("CVM_SIGNING_ALGORITHM", "SHA384WITHECDSA"),
            (
                "CVM_PCA_TEMPLATE_ARN",
                "arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1",
            ),
            ("CVM_PCA_REGISTERED_WITH_IOT", "true"),
        ])
        .unwrap();
        let IssuerMode::AcmPca(p) = s.issuer else {
            panic!("not acm-pca")
        };
        assert_eq!(p.pca.validity_days, 30);
        assert_eq!(
            p.pca.signing_algorithm,
            Some(cvm_core::provider::SigningAlgorithm::Sha384WithEcdsa)
        );
        assert!(p
            .pca
            .template_arn
            .unwrap()
            .ends_with("EndEntityClientAuthCertificate/V1"));
        assert!(p.registered_with_iot);
        // The default mode ignores the Private CA settings.
        assert_eq!(
            settings(&[BASE[0], BASE[1], ("CVM_PCA_ARN", "x")])
                .unwrap()
                .issuer,
            IssuerMode::Iot
        );
    }

    #[test]
    fn defaults_are_safe() {
        let s = settings(&BASE).unwrap();
        assert_eq!(s.max_failed_attempts, 5);
        assert_eq!(s.claim_lease, Duration::from_secs(60));
        assert_eq!(s.ca_certificates.len(), 2);
        assert!(s.ca_certificates[0].starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(s.endpoints.is_none());
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CVM_DEFAULT_POLICY_NAME", "p")], "CVM_TABLE_NAME"),
            (&[("CVM_TABLE_NAME", "t")], "CVM_DEFAULT_POLICY_NAME"),
            (&[BASE[0], BASE[1], ("CVM_ISSUER", "vault")], "CVM_ISSUER"),
            (
                &[BASE[0], BASE[1], ("CVM_MAX_FAILED_ATTEMPTS", "x")],
                "CVM_MAX_FAILED_ATTEMPTS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_MAX_FAILED_ATTEMPTS", "0")],
                "CVM_MAX_FAILED_ATTEMPTS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_CLAIM_LEASE_SECONDS", "5")],
                "CVM_CLAIM_LEASE_SECONDS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_IOT_DATA_ENDPOINT", "d")],
                "CVM_IOT_DATA_ENDPOINT",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_CA_CERTIFICATES", "nope")],
                "CVM_CA_CERTIFICATES",
            ),
            (
                &[
                    BASE[0],
                    BASE[1],
                    ("CVM_CA_CERTIFICATES_FILE", "/nonexistent"),
                ],
                "CVM_CA_CERTIFICATES_FILE",
            ),
        ];
        for (pairs, name) in cases {
            let err = settings(pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }
}
