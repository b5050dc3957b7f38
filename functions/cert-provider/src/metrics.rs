//! CloudWatch metrics of the certificate provider as Embedded Metric Format lines on stdout,
//! in the same namespace as the vend API's.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NAMESPACE: &str = "CertificateVendingMachine";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metrics {
    /// EMF to stdout (in Lambda).
    Emf,
    /// Nothing (local runner, tests).
    Off,
}

impl Metrics {
    /// One invocation: its latency, and whether it failed (`outcome` is `issued` or the
    /// error type, kept as a property for Logs Insights, not as a dimension).
    pub fn invocation(&self, outcome: &str, failed: bool, latency: Duration) {
        if *self == Metrics::Off {
            return;
        }
        let mut line = emf_line(outcome, failed, latency);
        line.push('\n');
        // A lost metric line is not worth failing a signing for.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

pub fn emf_line(outcome: &str, failed: bool, latency: Duration) -> String {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [[]],
                    "Metrics": [
                        {"Name": "ProviderLatency", "Unit": "Milliseconds"},
                        {"Name": "ProviderErrors", "Unit": "Count"}
                    ]
                }
            ]
        },
        "Outcome": outcome,
        "ProviderLatency": latency.as_secs_f64() * 1000.0,
        "ProviderErrors": u8::from(failed),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn emf_line_names_every_metric_it_declares() {
        let v: serde_json::Value =
            serde_json::from_str(&emf_line("InvalidCsr", true, Duration::from_millis(7))).unwrap();
        for group in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(group["Namespace"], NAMESPACE);
            for m in group["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                assert!(v.get(name).is_some(), "{name} declared but absent");
            }
        }
        assert_eq!(v["ProviderErrors"], 1);
        assert_eq!(v["ProviderLatency"], 7.0);
        assert_eq!(v["Outcome"], "InvalidCsr");
    }
}
