//! Per-operation request rates, as AWS enforces its API quotas: a token bucket per operation
//! that refills at `rate` per second up to `burst`; a request finding it empty is answered
//! with the service's throttling error and not forwarded.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second.
    pub rate: f64,
    /// Bucket size; `rate` (at least 1) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("rate {} must be a positive number", self.rate));
        }
        if let Some(b) = self.burst {
            if !(b.is_finite() && b >= 1.0) {
                return Err(format!("burst {b} must be at least 1"));
            }
        }
        Ok(())
    }

    fn capacity(&self) -> f64 {
        self.burst.unwrap_or(self.rate.max(1.0))
    }
}

/// The defaults of the AWS quotas the vend path meets (requests per second per account and
/// region): AWS IoT `CreateCertificateFromCsr` and `AttachPolicy` 15,
/// `RegisterCertificate`/`RegisterCertificateWithoutCA` 10, `CreateThing` 100; AWS Private CA
/// `IssueCertificate` 25, `GetCertificate` 75. Adjustable quotas differ per account: pass
/// `--limit` for the numbers of a real one.
pub const AWS_DEFAULT_QUOTAS: &[(&str, f64)] = &[
    ("iot:CreateCertificateFromCsr", 15.0),
    ("iot:AttachPolicy", 15.0),
    ("iot:RegisterCertificate", 10.0),
    ("iot:RegisterCertificateWithoutCA", 10.0),
    ("iot:CreateThing", 100.0),
    ("acm-pca:IssueCertificate", 25.0),
    ("acm-pca:GetCertificate", 75.0),
];

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct Limiter {
    limits: HashMap<String, RateLimit>,
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// Replaces the limits (keys are operation selectors: `Name` or `service:Name`).
    pub fn set(&mut self, limits: HashMap<String, RateLimit>) {
        self.limits = limits;
        self.buckets.clear();
    }

    pub fn limits(&self) -> &HashMap<String, RateLimit> {
        &self.limits
    }

    /// Takes a token for the first limit whose selector `matches`; false if it has none left.
    pub fn admit(&mut self, matches: impl Fn(&str) -> bool, now: Instant) -> bool {
        let Some((selector, limit)) = self.limits.iter().find(|(s, _)| matches(s)) else {
            return true;
        };
        let capacity = limit.capacity();
        let bucket = self.buckets.entry(selector.clone()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let mut l = Limiter::default();
        l.set(HashMap::from([(
            "iot:CreateThing".to_owned(),
            RateLimit {
                rate: 10.0,
                burst: Some(2.0),
            },
        )]));
        let t0 = Instant::now();
        let thing = |s: &str| s == "iot:CreateThing";
        assert!(l.admit(thing, t0));
        assert!(l.admit(thing, t0));
        assert!(!l.admit(thing, t0));
        // 100 ms at 10/s is one more token.
        assert!(l.admit(thing, t0 + Duration::from_millis(100)));
        assert!(!l.admit(thing, t0 + Duration::from_millis(100)));
        // Never more than the burst, however long it waited.
        let later = t0 + Duration::from_secs(60);
        assert!(l.admit(thing, later) && l.admit(thing, later));
        assert!(!l.admit(thing, later));
        // Unlimited operations pass.
        assert!(l.admit(|s| s == "iot:AttachPolicy", t0));
    }

    #[test]
    fn nonsense_limits_are_refused() {
        for (rate, burst) in [
            (0.0, None),
            (-1.0, None),
            (f64::NAN, None),
            (f64::INFINITY, None),
            (1.0, Some(0.5)),
        ] {
            assert!(
                RateLimit { rate, burst }.validate().is_err(),
                "{rate} {burst:?}"
            );
        }
        assert!(serde_json::from_str::<RateLimit>(r#"{"rate": 1, "per": "minute"}"#).is_err());
    }
}
