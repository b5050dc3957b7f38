//! The pre-provisioning hook AWS IoT calls on every fleet-provisioning `RegisterThing`:
//! `{claimCertificateId, certificateId, certificatePem, templateArn, clientId, parameters}` in,
//! `{allowProvisioning, parameterOverrides}` out, within AWS IoT's 5 seconds.
//!
//! The decision is [`cvm_core::fleet`] over the same device table as the vend API; this crate
//! adds the configuration, the deadline, the logs and the metrics.
//!
//! Environment: `CVM_TABLE_NAME`, `CVM_DEFAULT_POLICY_NAME` (required),
//! `CVM_LOCKOUT_FREE_ATTEMPTS`, `CVM_LOCKOUT_MAX_SECONDS` (as the vend API: one lockout for both
//! doors), `CVM_STAGE`, `CVM_HOOK_BUDGET_MS` (default 4500: answer within this long, or
//! earlier if the invocation's own deadline is closer).

use std::time::{Duration, Instant, SystemTime};

use cvm_aws::config::{lockout_policy, number, process_env, required, stage, ConfigError, Env};
use cvm_aws::{DynamoStore, IotIssuer};
use cvm_core::emf::{Metric, MetricGroup};
use cvm_core::fleet::{Decision, HookConfig, HookRequest, HookResponse, ProvisioningHook};
use cvm_core::ports::{CertificateIssuer, DeviceStore};
use cvm_core::PolicyName;
use lambda_runtime::{Diagnostic, LambdaEvent};

pub use cvm_core::emf::Metrics;

/// Default time to answer or fail, from the start of an invocation.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(4500);
/// Kept free before the invocation's deadline, for the answer to get out.
pub const DEADLINE_RESERVE: Duration = Duration::from_millis(300);

/// The hook's configuration, read and checked once at start-up.
#[derive(Debug, Clone)]
pub struct HookSettings {
    pub table_name: String,
    pub config: HookConfig,
    pub budget: Duration,
    pub stage: String,
}

impl HookSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env())
    }

    pub fn from_lookup(env: Env) -> Result<Self, ConfigError> {
        let default_policy = PolicyName::parse(&required(env, "CVM_DEFAULT_POLICY_NAME")?)
            .map_err(|e| ConfigError::Invalid {
                name: "CVM_DEFAULT_POLICY_NAME",
                reason: e.to_string(),
            })?;
        let budget_ms = number(env, "CVM_HOOK_BUDGET_MS", DEFAULT_BUDGET.as_millis() as u64)?;
        if !(500..=4800).contains(&budget_ms) {
            return Err(ConfigError::Invalid {
                name: "CVM_HOOK_BUDGET_MS",
                reason: "must be 500 to 4800 (AWS IoT waits 5 s)".into(),
            });
        }
        Ok(Self {
            table_name: required(env, "CVM_TABLE_NAME")?,
            config: HookConfig {
                default_policy,
                lockout: lockout_policy(env)?,
            },
            budget: Duration::from_millis(budget_ms),
            stage: stage(env)?,
        })
    }
}

/// The hook, built once per execution environment.
pub struct Hook<S, I> {
    core: ProvisioningHook<S, I>,
    budget: Duration,
    metrics: Metrics,
}

/// Builds the clients: at cold start.
pub fn build(
    sdk: &aws_config::SdkConfig,
    settings: HookSettings,
    metrics: Metrics,
) -> Hook<DynamoStore, IotIssuer> {
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), settings.table_name);
    let iot = IotIssuer::new(aws_sdk_iot::Client::new(sdk));
    tracing::info!(stage = %settings.stage, "provisioning hook ready");
    Hook::new(
        ProvisioningHook::new(store, iot, settings.config),
        settings.budget,
        metrics,
    )
}

/// Why the hook answered with an error rather than a decision.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("the event is not a pre-provisioning hook request: {0}")]
    InvalidEvent(String),
    #[error(transparent)]
    Dependency(cvm_core::ports::PortError),
    #[error("no decision within {0:?}")]
    Deadline(Duration),
}

impl Fault {
    fn error_type(&self) -> &'static str {
        match self {
            Fault::InvalidEvent(_) => "InvalidEvent",
            Fault::Dependency(e) if e.kind == cvm_core::ports::FailureKind::Throttled => {
                "DependencyThrottled"
            }
            Fault::Dependency(_) => "DependencyFailed",
            Fault::Deadline(_) => "DecisionTimedOut",
        }
    }
}

impl<S: DeviceStore, I: CertificateIssuer> Hook<S, I> {
    pub fn new(core: ProvisioningHook<S, I>, budget: Duration, metrics: Metrics) -> Self {
        Self {
            core,
            budget,
            metrics,
        }
    }

    /// One Lambda invocation.
    pub async fn handle_event(
        &self,
        event: LambdaEvent<serde_json::Value>,
    ) -> Result<HookResponse, Diagnostic> {
        let deadline = event.context.deadline();
        self.handle(event.payload, Some(deadline)).await
    }

    /// One request, from its JSON: a decision (a refused device is `allowProvisioning: false`,
    /// not an error), or a [`Diagnostic`] when the hook could not decide (AWS IoT then denies
    /// the device, which may retry). One log line and one metric line per request.
    pub async fn handle(
        &self,
        payload: serde_json::Value,
        invocation_deadline: Option<SystemTime>,
    ) -> Result<HookResponse, Diagnostic> {
        let started = Instant::now();
        let answer_by = cvm_core::deadline::answer_by(
            started,
            self.budget,
            invocation_deadline,
            DEADLINE_RESERVE,
        );
        let result = match serde_json::from_value::<HookRequest>(payload) {
            Ok(request) => {
                match tokio::time::timeout_at(answer_by.into(), self.core.decide(&request)).await {
                    Ok(Ok(decision)) => Ok(decision),
                    Ok(Err(e)) => Err(Fault::Dependency(e)),
                    Err(_) => Err(Fault::Deadline(started.elapsed())),
                }
            }
            Err(e) => Err(Fault::InvalidEvent(e.to_string())),
        };
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as u64;
        match result {
            Ok(decision) => {
                let allowed = !matches!(decision, Decision::Denied(_));
                tracing::info!(
                    outcome = decision.outcome(),
                    allowed,
                    latency_ms,
                    "provisioning decided"
                );
                self.record(if allowed { "allowed" } else { "denied" }, false, latency);
                Ok(decision.response())
            }
            Err(fault) => {
                // The full cause for operators; the caller learns the kind only.
                tracing::error!(outcome = fault.error_type(), latency_ms, error = ?fault, "no decision");
                self.record("denied", true, latency);
                Err(Diagnostic {
                    error_type: fault.error_type().to_owned(),
                    error_message: match &fault {
                        Fault::InvalidEvent(_) => fault.to_string(),
                        Fault::Dependency(e) => format!("{} failed; retry later", e.operation),
                        Fault::Deadline(_) => "no decision in time; retry later".to_owned(),
                    },
                })
            }
        }
    }

    fn record(&self, outcome: &str, fault: bool, latency: Duration) {
        self.metrics.emit(
            &[("Outcome", outcome)],
            &[
                MetricGroup {
                    dimensions: &["Outcome"],
                    metrics: &[Metric::count("HookDecisions", 1)],
                },
                MetricGroup {
                    dimensions: &[],
                    metrics: &[
                        Metric::milliseconds("HookLatency", latency),
                        Metric::count("HookFaults", u32::from(fault)),
                    ],
                },
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<HookSettings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HookSettings::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn settings_defaults_and_refusals() {
        let s = settings(&[("CVM_TABLE_NAME", "t"), ("CVM_DEFAULT_POLICY_NAME", "p")]).unwrap();
        assert_eq!(s.budget, DEFAULT_BUDGET);
        assert_eq!(s.config.lockout.free_attempts, 5);
        assert_eq!(s.stage, "default");
        for (pairs, name) in [
            (vec![("CVM_DEFAULT_POLICY_NAME", "p")], "CVM_TABLE_NAME"),
            (vec![("CVM_TABLE_NAME", "t")], "CVM_DEFAULT_POLICY_NAME"),
            (
                vec![
                    ("CVM_TABLE_NAME", "t"),
                    ("CVM_DEFAULT_POLICY_NAME", "p"),
                    ("CVM_HOOK_BUDGET_MS", "6000"),
                ],
                "CVM_HOOK_BUDGET_MS",
            ),
            (
                vec![
                    ("CVM_TABLE_NAME", "t"),
                    ("CVM_DEFAULT_POLICY_NAME", "p"),
                    ("CVM_LOCKOUT_MAX_SECONDS", "0"),
                ],
                "CVM_LOCKOUT_MAX_SECONDS",
            ),
        ] {
            let err = settings(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }
}
