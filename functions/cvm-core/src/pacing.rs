//! `Retry-After` for requests refused because AWS throttled us, derived from the quota of the
//! operation that was throttled rather than a fixed number.
//!
//! When AWS refuses an operation whose account quota is R calls per second, every device
//! told "retry after the same N seconds" comes back together and is throttled again. The
//! pacer hands out retry slots instead: the n-th throttled request within a burst is told to
//! come back when the quota will have room for it, about n / R seconds later. Each function
//! instance paces the requests it answers; with several instances the devices also spread by
//! their own jitter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Calls per second AWS allows an operation, by the operation names the adapters report
/// (`iot:CreateCertificateFromCsr`, ...).
#[derive(Debug, Clone)]
pub struct Quotas {
    rates: HashMap<String, f64>,
    /// For an operation without a published quota.
    default_rate: f64,
}

impl Default for Quotas {
    /// No published rates: every operation paced at 10 calls per second.
    fn default() -> Self {
        Self::new([], 10.0)
    }
}

impl Quotas {
    pub fn new(rates: impl IntoIterator<Item = (&'static str, f64)>, default_rate: f64) -> Self {
        Self {
            rates: rates
                .into_iter()
                .filter(|(_, r)| *r > 0.0)
                .map(|(op, r)| (op.to_owned(), r))
                .collect(),
            default_rate: default_rate.max(0.1),
        }
    }

    /// The same quotas with `operation` at `rate` (an account whose quota AWS raised).
    pub fn with_rate(mut self, operation: impl Into<String>, rate: f64) -> Self {
        if rate > 0.0 {
            self.rates.insert(operation.into(), rate);
        }
        self
    }

    pub fn rate(&self, operation: &str) -> f64 {
        self.rates
            .get(operation)
            .copied()
            .unwrap_or(self.default_rate)
    }
}

/// The next free retry slot per operation.
#[derive(Debug, Default)]
pub struct Pacer {
    quotas: Quotas,
    next_slot: Mutex<HashMap<String, Instant>>,
}

/// The shortest and longest wait a throttled request is told.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

impl Pacer {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            next_slot: Mutex::default(),
        }
    }

    /// How long the request refused now because `operation` was throttled should wait:
    /// its slot in the queue of throttled requests, one slot per 1/R seconds.
    pub fn retry_after(&self, operation: &str, now: Instant) -> Duration {
        let interval = Duration::from_secs_f64(1.0 / self.quotas.rate(operation));
        let mut slots = match self.next_slot.lock() {
            Ok(s) => s,
            // A poisoned map only means another request panicked while holding it; the
            // slots are advisory.
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = slots.entry(operation.to_owned()).or_insert(now);
        let slot = (*next).max(now) + interval;
        *next = slot;
        let wait_ms = slot.saturating_duration_since(now).as_millis();
        // Whole seconds, as Retry-After carries them, rounded up (with a millisecond's slack
        // for the rounding of 1/R); never 0.
        let secs = u64::try_from(wait_ms.saturating_sub(1).div_ceil(1000)).unwrap_or(u64::MAX);
        Duration::from_secs(secs).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_spread_at_the_quota_rate() {
        let pacer = Pacer::new(Quotas::new([("iot:CreateCertificateFromCsr", 15.0)], 50.0));
        let now = Instant::now();
        let waits: Vec<u64> = (0..45)
            .map(|_| {
                pacer
                    .retry_after("iot:CreateCertificateFromCsr", now)
                    .as_secs()
            })
            .collect();
        // 15 per second: the first 15 come back after 1 s, the next 15 after 2 s, ...
        assert_eq!(waits.iter().filter(|w| **w == 1).count(), 15);
        assert_eq!(waits.iter().filter(|w| **w == 2).count(), 15);
        assert_eq!(waits.iter().filter(|w| **w == 3).count(), 15);
        // Another operation has its own queue and rate.
        assert_eq!(
            pacer
                .retry_after("dynamodb:UpdateItem(claim)", now)
                .as_secs(),
            1
        );
    }

    #[test]
    fn the_queue_drains_with_time_and_waits_are_bounded() {
        let pacer = Pacer::new(Quotas::new([("op", 1.0)], 1.0));
        let now = Instant::now();
        for _ in 0..10 {
            pacer.retry_after("op", now);
        }
        assert_eq!(pacer.retry_after("op", now).as_secs(), 11);
        // Later, the slots already passed are free again.
        let later = now + Duration::from_secs(60);
        assert_eq!(pacer.retry_after("op", later).as_secs(), 1);
        for _ in 0..1000 {
            pacer.retry_after("op", later);
        }
        assert_eq!(pacer.retry_after("op", later), MAX_RETRY_AFTER);
    }
}
