//! CloudWatch metrics as Embedded Metric Format lines on stdout: no API call, no latency,
//! CloudWatch extracts them from the function's log.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NAMESPACE: &str = "CertificateVendingMachine";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metrics {
    /// EMF to stdout (in Lambda).
    Emf,
    /// Nothing (local server, tests).
    Off,
}

impl Metrics {
    /// One vend: count by outcome and latency.
    pub fn vend(&self, outcome: &str, upstream_throttled: bool, latency: Duration) {
        if *self == Metrics::Off {
            return;
        }
        let mut line = emf_line(outcome, upstream_throttled, latency);
        line.push('\n');
        // A metric line lost to a closed stdout is not worth failing a vend for.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

fn emf_line(outcome: &str, upstream_throttled: bool, latency: Duration) -> String {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let throttled = u8::from(upstream_throttled);
    let lockout = u8::from(outcome == "locked");
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Outcome"]],
                    "Metrics": [{"Name": "Vends", "Unit": "Count"}]
                },
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [[]],
                    "Metrics": [
                        {"Name": "VendLatency", "Unit": "Milliseconds"},
                        {"Name": "UpstreamThrottles", "Unit": "Count"},
                        {"Name": "Lockouts", "Unit": "Count"}
                    ]
                }
            ]
        },
        "Outcome": outcome,
        "Vends": 1,
        "VendLatency": latency.as_secs_f64() * 1000.0,
        "UpstreamThrottles": throttled,
        "Lockouts": lockout,
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
            serde_json::from_str(&emf_line("issued", false, Duration::from_millis(12))).unwrap();
        for group in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(group["Namespace"], NAMESPACE);
            for m in group["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                assert!(v.get(name).is_some(), "{name} declared but absent");
            }
        }
        assert_eq!(v["Outcome"], "issued");
        assert_eq!(v["VendLatency"], 12.0);
    }
}
