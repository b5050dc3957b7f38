//! CloudWatch metrics as Embedded Metric Format lines on stdout: no API call and no latency
//! on the request path; CloudWatch extracts them from the function's log. Shared by every
//! function, so they all write the same shape into one namespace.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub const NAMESPACE: &str = "CertificateVendingMachine";

/// Where metric lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metrics {
    /// EMF to stdout (in Lambda), every metric with the deployment's stage as a dimension.
    Emf { stage: String },
    /// Nothing (local servers, tests).
    Off,
}

impl Metrics {
    /// Writes one record (see [`line`]): the `Stage` property is added, and every group's
    /// dimensions start with `Stage`, so each deployment's metrics stay apart.
    pub fn emit(&self, properties: &[(&str, &str)], groups: &[MetricGroup<'_>]) {
        let Metrics::Emf { stage } = self else {
            return;
        };
        let mut out = staged_line(stage, properties, groups);
        out.push('\n');
        // A lost metric line is not worth failing a request for.
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
    }
}

/// [`line`] with the `Stage` dimension on every group.
pub fn staged_line(stage: &str, properties: &[(&str, &str)], groups: &[MetricGroup<'_>]) -> String {
    let mut props = Vec::with_capacity(properties.len() + 1);
    props.push(("Stage", stage));
    props.extend_from_slice(properties);
    let dimensions: Vec<Vec<&str>> = groups
        .iter()
        .map(|g| {
            let mut d = vec!["Stage"];
            d.extend_from_slice(g.dimensions);
            d
        })
        .collect();
    let staged: Vec<MetricGroup<'_>> = groups
        .iter()
        .zip(&dimensions)
        .map(|(g, d)| MetricGroup {
            dimensions: d,
            metrics: g.metrics,
        })
        .collect();
    line(&props, &staged)
}

/// One metric value and its CloudWatch unit.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub value: f64,
}

impl<'a> Metric<'a> {
    pub fn count(name: &'a str, value: u32) -> Self {
        Self {
            name,
            unit: "Count",
            value: f64::from(value),
        }
    }
    pub fn milliseconds(name: &'a str, duration: std::time::Duration) -> Self {
        Self {
            name,
            unit: "Milliseconds",
            value: duration.as_secs_f64() * 1000.0,
        }
    }
}

/// Metrics that share a dimension set (names of `properties`; empty for none).
pub struct MetricGroup<'a> {
    pub dimensions: &'a [&'a str],
    pub metrics: &'a [Metric<'a>],
}

/// One EMF record: `properties` become top-level fields (and may serve as dimensions), each
/// metric a top-level number declared in its group.
pub fn line(properties: &[(&str, &str)], groups: &[MetricGroup<'_>]) -> String {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let declared: Vec<serde_json::Value> = groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "Namespace": NAMESPACE,
                "Dimensions": [g.dimensions],
                "Metrics": g.metrics.iter()
                    .map(|m| serde_json::json!({"Name": m.name, "Unit": m.unit}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut record = serde_json::Map::new();
    record.insert(
        "_aws".into(),
        serde_json::json!({"Timestamp": timestamp, "CloudWatchMetrics": declared}),
    );
    for (name, value) in properties {
        record.insert((*name).into(), (*value).into());
    }
    for m in groups.iter().flat_map(|g| g.metrics) {
        record.insert(m.name.into(), m.value.into());
    }
    serde_json::Value::Object(record).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_declared_metric_and_dimension_is_present() {
        let text = staged_line(
            "prod",
            &[("Outcome", "issued")],
            &[
                MetricGroup {
                    dimensions: &["Outcome"],
                    metrics: &[Metric::count("Vends", 1)],
                },
                MetricGroup {
                    dimensions: &[],
                    metrics: &[Metric::milliseconds(
                        "VendLatency",
                        Duration::from_millis(12),
                    )],
                },
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for group in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(group["Namespace"], NAMESPACE);
            for d in group["Dimensions"][0].as_array().unwrap() {
                assert!(v.get(d.as_str().unwrap()).is_some(), "dimension {d} absent");
            }
            for m in group["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                assert!(v.get(name).is_some(), "{name} declared but absent");
            }
        }
        assert_eq!(v["Vends"], 1.0);
        assert_eq!(v["VendLatency"], 12.0);
        assert_eq!(v["Outcome"], "issued");
        assert_eq!(v["Stage"], "prod");
        for group in v["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(
                group["Dimensions"][0][0], "Stage",
                "every group is per stage"
            );
        }
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            serde_json::json!(["Stage", "Outcome"])
        );
        assert!(v["_aws"]["Timestamp"].as_u64().unwrap() > 0);
    }
}
