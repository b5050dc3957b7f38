//! The certificate provider's metrics (namespace and format: [`cvm_core::emf`]).
//!
//! Device mistakes (an invalid CSR, a refused subject) and faults (Private CA errors,
//! timeouts, certificates that do not match) are counted apart: a fleet of misconfigured
//! devices must not page anyone, a failing CA must.

use std::time::Duration;

pub use cvm_core::emf::Metrics;
use cvm_core::emf::{Metric, MetricGroup};

/// Why an invocation gave no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request was at fault: `ProviderRefusals`.
    Refusal,
    /// The CA or this function was: `ProviderFaults`.
    Fault,
}

/// One invocation: its latency, and whether it was refused or failed (`outcome` is `issued`
/// or the error type, kept as a property for Logs Insights, not as a dimension).
pub fn record_invocation(
    metrics: &Metrics,
    outcome: &str,
    failure: Option<Failure>,
    latency: Duration,
) {
    metrics.emit(
        &[("Outcome", outcome)],
        &[MetricGroup {
            dimensions: &[],
            metrics: &[
                Metric::milliseconds("ProviderLatency", latency),
                Metric::count(
                    "ProviderRefusals",
                    u32::from(failure == Some(Failure::Refusal)),
                ),
                Metric::count("ProviderFaults", u32::from(failure == Some(Failure::Fault))),
            ],
        }],
    );
}
