//! The vend API's metrics (namespace and format: [`cvm_core::emf`]).

use std::time::Duration;

pub use cvm_core::emf::Metrics;
use cvm_core::emf::{Metric, MetricGroup};

/// One request: a vend is counted in `Vends`, a renewal or its confirmation in `Renewals`, by
/// outcome, each with its latency; AWS throttling and lockout refusals counted.
pub fn record_request(
    metrics: &Metrics,
    operation: &str,
    outcome: &str,
    upstream_throttled: bool,
    latency: Duration,
) {
    let (count, latency_name) = match operation {
        "vend" => ("Vends", "VendLatency"),
        _ => ("Renewals", "RenewalLatency"),
    };
    metrics.emit(
        &[("Outcome", outcome), ("Operation", operation)],
        &[
            MetricGroup {
                dimensions: &["Outcome"],
                metrics: &[Metric::count(count, 1)],
            },
            MetricGroup {
                dimensions: &[],
                metrics: &[
                    Metric::milliseconds(latency_name, latency),
                    Metric::count("UpstreamThrottles", u32::from(upstream_throttled)),
                    Metric::count("Lockouts", u32::from(outcome == "locked")),
                ],
            },
        ],
    );
}
