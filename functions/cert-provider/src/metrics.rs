//! The certificate provider's metrics (namespace and format: [`cvm_core::emf`]).

use std::time::Duration;

pub use cvm_core::emf::Metrics;
use cvm_core::emf::{Metric, MetricGroup};

/// One invocation: its latency, and whether it failed (`outcome` is `issued` or the error
/// type, kept as a property for Logs Insights, not as a dimension).
pub fn record_invocation(metrics: &Metrics, outcome: &str, failed: bool, latency: Duration) {
    metrics.emit(
        &[("Outcome", outcome)],
        &[MetricGroup {
            dimensions: &[],
            metrics: &[
                Metric::milliseconds("ProviderLatency", latency),
                Metric::count("ProviderErrors", u32::from(failed)),
            ],
        }],
    );
}
