//! The certificate provider AWS IoT invokes during fleet provisioning (self-managed
//! certificate signing): `{"certificateSigningRequest", "principalId", "clientId"}` in,
//! `{"certificatePem"}` out, signed by AWS Private CA, within AWS IoT's 5 seconds.
//!
//! The workflow is [`cvm_core::provider`]; the Private CA adapter is [`cvm_aws::pca`]. This
//! crate adds the configuration, the deadline, the error responses and the metrics, shared by
//! the Lambda binary (`cert-provider`) and the local runner (`cert-provider-local`).
//!
//! Environment:
//! - `CVM_PCA_ARN` (required), `CVM_PCA_TEMPLATE_ARN`, `CVM_VALIDITY_DAYS` (default 365),
//!   `CVM_SIGNING_ALGORITHM` (default: from the CA's key type, asked once at start-up);
//! - `CVM_CN_PATTERN`: a regular expression the CSR's whole common name must match (default:
//!   the serial alphabet, `[A-Za-z0-9:_-]{1,128}`, so a claim can only get a certificate whose
//!   subject could name a device);
//! - `CVM_PROVIDER_BUDGET_MS`: answer or fail within this long (default 4500, below AWS IoT's
//!   5 s), or earlier if the invocation's own deadline is closer.

pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cvm_aws::config::{stage, ConfigError, Env, PcaSettings};
use cvm_aws::pca::{issue_settings, AcmPca, TokioTimer};
use cvm_core::ports::PortError;
use cvm_core::provider::{
    CertificateProvider, IssueSettings, PrivateCa, Provided, ProviderError, ProviderRequest,
    ProviderResponse,
};
use lambda_runtime::{Diagnostic, LambdaEvent};

pub use metrics::Metrics;

/// Default time to answer or fail, from the start of an invocation.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(4500);
/// Kept free before the invocation's deadline, for the answer to get out.
pub const DEADLINE_RESERVE: Duration = Duration::from_millis(300);
/// No `GetCertificate` poll starts later than this before the answer is due, so the last one
/// can finish in time.
pub const LAST_POLL_RESERVE: Duration = Duration::from_millis(250);
/// Longest a single Private CA call may take before the SDK retries it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The default subject rule: a common name that could be a serial or a thing name.
pub const DEFAULT_CN_PATTERN: &str = "[A-Za-z0-9:_-]{1,128}";

/// The provider's configuration, read and checked once at start-up.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub pca: PcaSettings,
    /// Anchored: the whole common name must match.
    pub cn_pattern: regex_lite::Regex,
    pub budget: Duration,
    /// The metrics' `Stage` dimension (`CVM_STAGE`).
    pub stage: String,
    /// `CVM_WARM_UP`: open the Private CA connection during init.
    pub warm_up: bool,
}

impl ProviderConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let pca = PcaSettings::from_lookup(env)?;
        let pattern = env("CVM_CN_PATTERN")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_CN_PATTERN.to_owned());
        let cn_pattern = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            ConfigError::Invalid {
                name: "CVM_CN_PATTERN",
                reason: e.to_string(),
            }
        })?;
        let budget_ms = match env("CVM_PROVIDER_BUDGET_MS").filter(|v| !v.trim().is_empty()) {
            None => DEFAULT_BUDGET.as_millis() as u64,
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "CVM_PROVIDER_BUDGET_MS",
                reason: format!("{v:?} is not a number"),
            })?,
        };
        if !(500..=60_000).contains(&budget_ms) {
            return Err(ConfigError::Invalid {
                name: "CVM_PROVIDER_BUDGET_MS",
                reason: "must be 500 to 60000".into(),
            });
        }
        Ok(Self {
            pca,
            cn_pattern,
            budget: Duration::from_millis(budget_ms),
            stage: stage(env)?,
            warm_up: cvm_aws::config::warm_up(env)?,
        })
    }
}

/// Start-up failures: they fail the cold start, loudly.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not describe the Private CA {arn}: {source}")]
    PrivateCa {
        arn: String,
        #[source]
        source: PortError,
    },
}

/// The provider, built once per execution environment.
pub struct Provider<P> {
    core: CertificateProvider<P, TokioTimer>,
    budget: Duration,
    metrics: Metrics,
}

/// Builds the SDK client and learns the CA's key type (unless configured): at cold start.
pub async fn build(
    sdk: &aws_config::SdkConfig,
    config: ProviderConfig,
    metrics: Metrics,
) -> Result<Provider<AcmPca>, StartError> {
    let ca = AcmPca::from_sdk(sdk, config.pca.ca_arn.clone(), ATTEMPT_TIMEOUT);
    // Without a configured algorithm, start-up asks the CA anyway, which opens the connection.
    if config.warm_up && config.pca.signing_algorithm.is_some() {
        cvm_aws::warm_up::run(vec![("acm-pca", Box::pin(ca.warm_up()))]).await;
    }
    let settings =
        issue_settings(&config.pca, &ca)
            .await
            .map_err(|source| StartError::PrivateCa {
                arn: config.pca.ca_arn.clone(),
                source,
            })?;
    tracing::info!(
        ca = %config.pca.ca_arn,
        signing_algorithm = %settings.signing_algorithm,
        validity_days = settings.validity_days,
        template = settings.template_arn.as_deref().unwrap_or("default"),
        "certificate provider ready"
    );
    Ok(Provider::new(
        ca,
        settings,
        config.cn_pattern,
        config.budget,
        metrics,
    ))
}

impl<P: PrivateCa> Provider<P> {
    pub fn new(
        ca: P,
        settings: IssueSettings,
        cn_pattern: regex_lite::Regex,
        budget: Duration,
        metrics: Metrics,
    ) -> Self {
        let core = CertificateProvider::new(ca, TokioTimer, settings)
            .with_subject_policy(Arc::new(move |cn: &str| cn_pattern.is_match(cn)));
        Self {
            core,
            budget,
            metrics,
        }
    }

    pub fn ca(&self) -> &P {
        self.core.ca()
    }

    pub fn settings(&self) -> &IssueSettings {
        self.core.settings()
    }

    /// When the answer is due (see [`cvm_core::deadline::answer_by`]).
    pub fn answer_by(&self, started: Instant, invocation_deadline: Option<SystemTime>) -> Instant {
        cvm_core::deadline::answer_by(started, self.budget, invocation_deadline, DEADLINE_RESERVE)
    }

    /// One Lambda invocation.
    pub async fn handle_event(
        &self,
        event: LambdaEvent<serde_json::Value>,
    ) -> Result<ProviderResponse, Diagnostic> {
        let deadline = event.context.deadline();
        self.handle(event.payload, Some(deadline)).await
    }

    /// One request, from its JSON: the certificate, or a [`Diagnostic`] with a stable
    /// `error_type`. Logs one line and emits one metric line per request.
    pub async fn handle(
        &self,
        payload: serde_json::Value,
        invocation_deadline: Option<SystemTime>,
    ) -> Result<ProviderResponse, Diagnostic> {
        let started = Instant::now();
        let answer_by = self.answer_by(started, invocation_deadline);
        let result = match serde_json::from_value::<ProviderRequest>(payload) {
            Ok(request) => self
                .provide(&request, answer_by)
                .await
                .map(|p| (request, p)),
            Err(e) => Err(Failure::Provider(ProviderError::InvalidRequest(format!(
                "expected {{\"certificateSigningRequest\", \"principalId\", \"clientId\"}}: {e}"
            )))),
        };
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as u64;
        match result {
            Ok((request, provided)) => {
                tracing::info!(
                    outcome = "issued",
                    latency_ms,
                    certificate_arn = %provided.certificate_arn,
                    common_name = %provided.common_name,
                    principal_id = %request.principal_id,
                    client_id = %request.client_id,
                    "certificate provided"
                );
                metrics::record_invocation(&self.metrics, "issued", None, latency);
                Ok(ProviderResponse {
                    certificate_pem: provided.certificate_pem,
                })
            }
            Err(e) => {
                let error_type = e.error_type();
                let kind = if e.is_refusal() {
                    tracing::info!(outcome = error_type, latency_ms, error = %e, "refused");
                    metrics::Failure::Refusal
                } else {
                    // The full cause (operation, service code, source chain) for operators.
                    tracing::error!(outcome = error_type, latency_ms, error = ?e, "failed");
                    metrics::Failure::Fault
                };
                metrics::record_invocation(&self.metrics, error_type, Some(kind), latency);
                Err(Diagnostic {
                    error_type: error_type.to_owned(),
                    error_message: e.public_message(),
                })
            }
        }
    }

    /// The core workflow under a hard timeout at `answer_by`, whatever the SDK does.
    async fn provide(
        &self,
        request: &ProviderRequest,
        answer_by: Instant,
    ) -> Result<Provided, Failure> {
        let started = Instant::now();
        let last_poll = answer_by
            .checked_sub(LAST_POLL_RESERVE)
            .unwrap_or(answer_by);
        match tokio::time::timeout_at(answer_by.into(), self.core.provide(request, last_poll)).await
        {
            Ok(result) => result.map_err(Failure::Provider),
            Err(_) => Err(Failure::Deadline(started.elapsed())),
        }
    }
}

/// Why a request got no certificate.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Provider(ProviderError),
    /// A Private CA call was still running when the answer was due.
    #[error("Private CA did not answer within {0:?}; giving up before AWS IoT does")]
    Deadline(Duration),
}

impl Failure {
    /// What AWS IoT (and the device) is told; the cause stays in the log.
    fn public_message(&self) -> String {
        match self {
            Failure::Provider(e) => e.public_message(),
            Failure::Deadline(_) => "Private CA did not answer in time; retry later".to_owned(),
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Failure::Provider(e) => e.error_type(),
            Failure::Deadline(_) => "IssuanceTimedOut",
        }
    }

    fn is_refusal(&self) -> bool {
        matches!(self, Failure::Provider(e) if e.is_refusal())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::collections::HashMap;

    const PCA: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555";

    fn config(pairs: &[(&str, &str)]) -> Result<ProviderConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProviderConfig::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn the_sample_event_is_a_valid_request() {
        let request: ProviderRequest =
            serde_json::from_str(include_str!("../../../events/cert-provider.json")).unwrap();
        let csr = cvm_core::Csr::parse_pem(&request.certificate_signing_request).unwrap();
        assert_eq!(csr.key_kind(), cvm_core::KeyKind::EcP256);
        assert_eq!(csr.common_name(), "fleet-device-0001");
        assert_eq!(request.principal_id.len(), 64);
    }

    #[test]
    fn configuration_defaults_and_refusals() {
        let c = config(&[("CVM_PCA_ARN", PCA)]).unwrap();
        assert_eq!(c.budget, DEFAULT_BUDGET);
        assert_eq!(c.pca.validity_days, 365);
        assert!(
            c.cn_pattern.is_match("ZK-0001:a_b"),
            "the default admits serials"
        );
        for refused in ["", "has space", "evil.example.com", "a/b", &"a".repeat(129)] {
            assert!(!c.cn_pattern.is_match(refused), "{refused:?}");
        }
        assert!(c
            .pca
            .template_arn
            .ends_with(":template/EndEntityClientAuthCertificate/V1"));

        let c = config(&[("CVM_PCA_ARN", PCA), ("CVM_CN_PATTERN", "fleet-[0-9]+")]).unwrap();
        let re = c.cn_pattern;
        assert!(re.is_match("fleet-42"));
        assert!(!re.is_match("xfleet-42"), "the pattern is anchored");
        assert!(!re.is_match("fleet-42x"), "the pattern is anchored");

        for (pairs, name) in [
            (vec![], "CVM_PCA_ARN"),
            (
                vec![("CVM_PCA_ARN", PCA), ("CVM_CN_PATTERN", "(")],
                "CVM_CN_PATTERN",
            ),
            (
                vec![("CVM_PCA_ARN", PCA), ("CVM_PROVIDER_BUDGET_MS", "10")],
                "CVM_PROVIDER_BUDGET_MS",
            ),
            (
                vec![("CVM_PCA_ARN", PCA), ("CVM_PROVIDER_BUDGET_MS", "x")],
                "CVM_PROVIDER_BUDGET_MS",
            ),
            (
                vec![("CVM_PCA_ARN", PCA), ("CVM_VALIDITY_DAYS", "-1")],
                "CVM_VALIDITY_DAYS",
            ),
        ] {
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }
}
