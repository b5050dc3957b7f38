//! The vend API's metrics (namespace and format: [`cvm_core::emf`]).

use std::time::Duration;

pub use cvm_core::emf::Metrics;
use cvm_core::emf::{Metric, MetricGroup};

/// One vend: counted by outcome, with its latency; AWS throttling and lockout refusals counted.
pub fn record_vend(metrics: &Metrics, outcome: &str, upstream_throttled: bool, latency: Duration) {
    metrics.emit(
        &[("Outcome", outcome)],
        &[
            MetricGroup {
                dimensions: &["Outcome"],
                metrics: &[Metric::count("Vends", 1)],
            },
            MetricGroup {
                dimensions: &[],
                metrics: &[
                    Metric::milliseconds("VendLatency", latency),
                    Metric::count("UpstreamThrottles", u32::from(upstream_throttled)),
                    Metric::count("Lockouts", u32::from(outcome == "locked")),
                ],
            },
        ],
    );
}
