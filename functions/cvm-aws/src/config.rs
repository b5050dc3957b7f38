//! Configuration read from the environment and checked once at start-up, for every function
//! and the local servers: the vend service's settings ([`VendSettings`]), a Private CA's
//! ([`PcaSettings`]), the lockout's ([`lockout_policy`]). A bad value fails the cold start with
//! a message naming the variable.

use std::time::Duration;

use cvm_core::ports::PortError;
use cvm_core::provider::SigningAlgorithm;
use cvm_core::renew::RenewalPolicy;
use cvm_core::{Endpoints, LockoutPolicy, PolicyName};

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
    pub lockout: LockoutPolicy,
    pub renewal: RenewalPolicy,
    pub claim_lease: Duration,
    pub endpoints: Option<Endpoints>,
    pub ca_certificates: Vec<String>,
    pub role_alias: Option<String>,
    /// The metrics' `Stage` dimension.
    pub stage: String,
    /// `CVM_WARM_UP`: open the AWS connections during init (see [`crate::warm_up`]).
    pub warm_up: bool,
    /// The account's quotas, AWS's defaults unless `CVM_AWS_QUOTAS` says otherwise.
    pub quotas: cvm_core::pacing::Quotas,
}

/// Looks a setting up by name (the process environment, or a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env() -> impl Fn(&str) -> Option<String> {
    |name| std::env::var(name).ok()
}

pub fn required(env: Env, name: &'static str) -> Result<String, ConfigError> {
    env(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

pub fn number<T: std::str::FromStr>(
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

/// `CVM_ISSUER` and, in `acm-pca` mode, the Private CA settings: how the deployment issues
/// (the vend service, and ops tools that revoke what it issued).
pub fn issuer_mode(env: Env) -> Result<IssuerMode, ConfigError> {
    match env("CVM_ISSUER").as_deref().map(str::trim) {
        None | Some("") | Some("iot") => Ok(IssuerMode::Iot),
        Some("acm-pca") => Ok(IssuerMode::AcmPca(PcaVendSettings::from_lookup(env)?)),
        Some(other) => Err(ConfigError::Invalid {
            name: "CVM_ISSUER",
            reason: format!("{other:?} (supported: iot, acm-pca)"),
        }),
    }
}

impl VendSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let issuer = issuer_mode(env)?;
        let default_policy = PolicyName::parse(&required(env, "CVM_DEFAULT_POLICY_NAME")?)
            .map_err(|e| ConfigError::Invalid {
                name: "CVM_DEFAULT_POLICY_NAME",
                reason: e.to_string(),
            })?;
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
            lockout: lockout_policy(env)?,
            renewal: renewal_policy(env)?,
            claim_lease: Duration::from_secs(lease),
            endpoints,
            ca_certificates,
            role_alias: env("CVM_ROLE_ALIAS").filter(|v| !v.is_empty()),
            stage: stage(env)?,
            warm_up: warm_up(env)?,
            quotas: quotas(env)?,
        })
    }
}

/// `CVM_LOCKOUT_FREE_ATTEMPTS` (default 5) wrong tokens before the first window, and
/// `CVM_LOCKOUT_MAX_SECONDS` (default 900) the longest window; windows start at 30 s (or the
/// maximum, if lower) and a failure is forgotten per maximum window of quiet
/// (see [`cvm_core::lockout`]).
pub fn lockout_policy(env: Env) -> Result<LockoutPolicy, ConfigError> {
    let free_attempts = number(env, "CVM_LOCKOUT_FREE_ATTEMPTS", 5u32)?;
    if !(1..=100).contains(&free_attempts) {
        return Err(ConfigError::Invalid {
            name: "CVM_LOCKOUT_FREE_ATTEMPTS",
            reason: "must be 1 to 100".into(),
        });
    }
    let max = number(env, "CVM_LOCKOUT_MAX_SECONDS", 900u64)?;
    if !(1..=86_400).contains(&max) {
        return Err(ConfigError::Invalid {
            name: "CVM_LOCKOUT_MAX_SECONDS",
            reason: "must be 1 to 86400 (a day): a lockout must end by itself".into(),
        });
    }
    let max = Duration::from_secs(max);
    Ok(LockoutPolicy {
        free_attempts,
        base: Duration::from_secs(30).min(max),
        max,
        decay: max,
    })
}

/// `CVM_RENEWAL_GRACE_HOURS` (default 168): how long a renewed certificate waits for the
/// device's proof; `CVM_RENEWAL_EXPIRED_GRACE_DAYS` (default 30): how long after expiry a
/// certificate may still be renewed.
pub fn renewal_policy(env: Env) -> Result<RenewalPolicy, ConfigError> {
    let grace = number(env, "CVM_RENEWAL_GRACE_HOURS", 168u64)?;
    if !(1..=2160).contains(&grace) {
        return Err(ConfigError::Invalid {
            name: "CVM_RENEWAL_GRACE_HOURS",
            reason: "must be 1 to 2160 (90 days)".into(),
        });
    }
    let expired = number(env, "CVM_RENEWAL_EXPIRED_GRACE_DAYS", 30u64)?;
    if expired > 365 {
        return Err(ConfigError::Invalid {
            name: "CVM_RENEWAL_EXPIRED_GRACE_DAYS",
            reason: "must be 0 to 365".into(),
        });
    }
    Ok(RenewalPolicy {
        grace: Duration::from_secs(grace * 3600),
        expired_grace: Duration::from_secs(expired * 24 * 3600),
    })
}

/// AWS's default quotas (calls per second per account and region) for the operations a vend
/// makes, by the operation names the adapters report: AWS IoT's `CreateCertificateFromCsr` and
/// `AttachPolicy` 15, `CreateThing` and `AttachThingPrincipal` 100, `RegisterCertificate*` 10;
/// AWS Private CA's `IssueCertificate` 25 and `GetCertificate` 75. Operations without a figure
/// here (`UpdateCertificate`, the detaches and deletes; DynamoDB on demand has no fixed rate)
/// are paced at 10, the lowest of them: a guess on the safe side.
pub fn aws_quotas() -> cvm_core::pacing::Quotas {
    cvm_core::pacing::Quotas::new(
        [
            ("iot:CreateCertificateFromCsr", 15.0),
            ("iot:AttachPolicy", 15.0),
            ("iot:CreateThing", 100.0),
            ("iot:AttachThingPrincipal", 100.0),
            ("iot:RegisterCertificate", 10.0),
            ("iot:RegisterCertificateWithoutCA", 10.0),
            ("acm-pca:IssueCertificate", 25.0),
            ("acm-pca:GetCertificate", 75.0),
        ],
        10.0,
    )
}

/// [`aws_quotas`] with the rates `CVM_AWS_QUOTAS` gives, for an account whose quotas AWS
/// raised: `iot:CreateCertificateFromCsr=50,iot:AttachPolicy=50` (calls per second).
pub fn quotas(env: Env) -> Result<cvm_core::pacing::Quotas, ConfigError> {
    let mut quotas = aws_quotas();
    let Some(list) = env("CVM_AWS_QUOTAS").filter(|v| !v.trim().is_empty()) else {
        return Ok(quotas);
    };
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "CVM_AWS_QUOTAS",
            reason: format!("{item:?}: {reason}"),
        };
        let (operation, rate) = item
            .split_once('=')
            .ok_or_else(|| invalid("expected service:Operation=calls-per-second"))?;
        let (service, name) = operation
            .trim()
            .split_once(':')
            .ok_or_else(|| invalid("the operation is service:Operation, e.g. iot:AttachPolicy"))?;
        if service.is_empty() || name.is_empty() {
            return Err(invalid(
                "the operation is service:Operation, e.g. iot:AttachPolicy",
            ));
        }
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| invalid("the rate is a number of calls per second"))?;
        if !(rate.is_finite() && (0.1..=100_000.0).contains(&rate)) {
            return Err(invalid("the rate must be 0.1 to 100000 calls per second"));
        }
        quotas = quotas.with_rate(operation.trim(), rate);
    }
    Ok(quotas)
}

/// `CVM_WARM_UP` (`on` by default, or `off`): whether a function opens its AWS connections
/// during init, so its first request does not pay the TLS handshakes (see [`crate::warm_up`]).
pub fn warm_up(env: Env) -> Result<bool, ConfigError> {
    match env("CVM_WARM_UP").as_deref().map(str::trim) {
        None | Some("") | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            name: "CVM_WARM_UP",
            reason: format!("{other:?} (on or off)"),
        }),
    }
}

/// `CVM_STAGE`: the deployment's stage, a dimension of every metric (default `default`).
pub fn stage(env: Env) -> Result<String, ConfigError> {
    let stage = env("CVM_STAGE")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let ok = stage.len() <= 64
        && stage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ConfigError::Invalid {
            name: "CVM_STAGE",
            reason: "must be 1 to 64 characters of A-Z a-z 0-9 - _".into(),
        });
    }
    Ok(stage)
}

/// Private CA's client-authentication end-entity template, the default for device
/// certificates: CA:FALSE, TLS client authentication only, and no subject alternative names
/// from the CSR.
pub const CLIENT_AUTH_TEMPLATE: &str = "acm-pca:::template/EndEntityClientAuthCertificate/V1";

/// Where a Private CA and its issuing parameters are configured, for the certificate provider
/// and the vend API alike:
/// `CVM_PCA_ARN` (required), `CVM_PCA_TEMPLATE_ARN` (default: the client-authentication
/// end-entity template; only end-entity templates are accepted), `CVM_VALIDITY_DAYS`
/// (default 365), `CVM_SIGNING_ALGORITHM` (default: from the CA's key type, asked once at
/// start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcaSettings {
    pub ca_arn: String,
    pub template_arn: String,
    pub validity_days: u32,
    pub signing_algorithm: Option<SigningAlgorithm>,
}

impl PcaSettings {
    pub fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let ca_arn = required(env, "CVM_PCA_ARN")?;
        if !ca_arn.starts_with("arn:") || !ca_arn.contains(":certificate-authority/") {
            return Err(ConfigError::Invalid {
                name: "CVM_PCA_ARN",
                reason: format!("{ca_arn:?} is not a Private CA ARN"),
            });
        }
        let ca_arn = ca_arn.trim().to_owned();
        let partition = ca_arn.split(':').nth(1).unwrap_or("aws").to_owned();
        let template_arn = match env("CVM_PCA_TEMPLATE_ARN").filter(|v| !v.trim().is_empty()) {
            None => format!("arn:{partition}:{CLIENT_AUTH_TEMPLATE}"),
            Some(t) => {
                let t = t.trim().to_owned();
                let name = t.split(":template/").nth(1).unwrap_or("");
                if !t.starts_with("arn:") || name.is_empty() {
                    return Err(ConfigError::Invalid {
                        name: "CVM_PCA_TEMPLATE_ARN",
                        reason: format!("{t:?} is not a Private CA template ARN"),
                    });
                }
                // Device certificates are end entities: a CA template would let a device
                // (or a fleet claim) sign certificates of its own.
                if !name.starts_with("EndEntity") {
                    return Err(ConfigError::Invalid {
                        name: "CVM_PCA_TEMPLATE_ARN",
                        reason: format!("{name:?} is not an end-entity template (EndEntity*)"),
                    });
                }
                t
            }
        };
        let validity_days = number(env, "CVM_VALIDITY_DAYS", 365u32)?;
        if !(1..=36_500).contains(&validity_days) {
            return Err(ConfigError::Invalid {
                name: "CVM_VALIDITY_DAYS",
                reason: "must be 1 to 36500".into(),
            });
        }
        let signing_algorithm = match env("CVM_SIGNING_ALGORITHM").filter(|v| !v.trim().is_empty())
        {
            None => None,
            Some(v) => Some(
                SigningAlgorithm::parse(&v).ok_or_else(|| ConfigError::Invalid {
                    name: "CVM_SIGNING_ALGORITHM",
                    reason: format!(
                        "{v:?} (supported: SHA256WITHRSA, SHA384WITHRSA, SHA512WITHRSA, \
                     SHA256WITHECDSA, SHA384WITHECDSA, SHA512WITHECDSA)"
                    ),
                })?,
            ),
        };
        Ok(Self {
            ca_arn,
            template_arn,
            validity_days,
            signing_algorithm,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

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
    fn quotas_default_to_awss_and_can_be_raised() {
        let q = settings(&BASE).unwrap().quotas;
        assert_eq!(q.rate("iot:CreateCertificateFromCsr"), 15.0);
        assert_eq!(q.rate("iot:UpdateCertificate"), 10.0);
        let q = settings(&[
            BASE[0],
            BASE[1],
            (
                "CVM_AWS_QUOTAS",
                " iot:CreateCertificateFromCsr=50, iot:AttachPolicy = 40.5 ,",
            ),
        ])
        .unwrap()
        .quotas;
        assert_eq!(q.rate("iot:CreateCertificateFromCsr"), 50.0);
        assert_eq!(q.rate("iot:AttachPolicy"), 40.5);
        assert_eq!(q.rate("iot:CreateThing"), 100.0);
        for bad in [
            "iot:AttachPolicy",
            "AttachPolicy=5",
            ":AttachPolicy=5",
            "iot:=5",
            "iot:AttachPolicy=fast",
            "iot:AttachPolicy=0",
            "iot:AttachPolicy=-3",
            "iot:AttachPolicy=NaN",
            "iot:AttachPolicy=1e9",
        ] {
            let e = settings(&[BASE[0], BASE[1], ("CVM_AWS_QUOTAS", bad)]).unwrap_err();
            assert!(e.to_string().contains("CVM_AWS_QUOTAS"), "{bad}: {e}");
        }
    }

    #[test]
    fn warm_up_is_on_unless_turned_off() {
        assert!(settings(&BASE).unwrap().warm_up);
        assert!(
            settings(&[BASE[0], BASE[1], ("CVM_WARM_UP", "on")])
                .unwrap()
                .warm_up
        );
        assert!(
            !settings(&[BASE[0], BASE[1], ("CVM_WARM_UP", "off")])
                .unwrap()
                .warm_up
        );
        for bad in ["yes", "true", "0", "OFF "] {
            let e = settings(&[BASE[0], BASE[1], ("CVM_WARM_UP", bad)]).unwrap_err();
            assert!(e.to_string().contains("CVM_WARM_UP"), "{bad}: {e}");
        }
    }

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
        assert_eq!(
            p.pca.template_arn, "arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1",
            "the client-authentication template by default"
        );
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
        assert_eq!(s.lockout.free_attempts, 5);
        assert_eq!(s.lockout.max, Duration::from_secs(900));
        assert_eq!(s.renewal.grace, Duration::from_secs(168 * 3600));
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
                &[BASE[0], BASE[1], ("CVM_LOCKOUT_FREE_ATTEMPTS", "x")],
                "CVM_LOCKOUT_FREE_ATTEMPTS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_LOCKOUT_FREE_ATTEMPTS", "0")],
                "CVM_LOCKOUT_FREE_ATTEMPTS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_LOCKOUT_MAX_SECONDS", "100000")],
                "CVM_LOCKOUT_MAX_SECONDS",
            ),
            (
                &[BASE[0], BASE[1], ("CVM_RENEWAL_GRACE_HOURS", "0")],
                "CVM_RENEWAL_GRACE_HOURS",
            ),
            (&[BASE[0], BASE[1], ("CVM_STAGE", "no spaces")], "CVM_STAGE"),
            (
                &[
                    BASE[0],
                    BASE[1],
                    ("CVM_ISSUER", "acm-pca"),
                    ("CVM_PCA_ARN", PCA),
                    (
                        "CVM_PCA_TEMPLATE_ARN",
                        "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1",
                    ),
                ],
                "CVM_PCA_TEMPLATE_ARN",
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
