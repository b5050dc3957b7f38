//! Wrong tokens slow a serial down; they never lock it for good.
//!
//! Every wrong token (or a CSR for a key other than the registered one, without a token) is a
//! failure. The first `free_attempts - 1` failures cost nothing; from the `free_attempts`-th
//! on, each failure closes the serial for a window that doubles per failure (`base`, `2 base`,
//! `4 base`, ...) up to `max`. Failures are forgotten one per `decay` of quiet, so a serial left
//! alone returns to its free attempts by itself. While the window is open every request for the
//! serial, right token or wrong, is answered `429 enrollment_locked` with `Retry-After`, and is
//! neither compared nor counted: guessing gets nowhere and the window does not grow by itself.
//!
//! What this bounds: a guesser gets `free_attempts`, then about one guess per `max`
//! (15 minutes by default), against a 192-bit token. What it cannot prevent: whoever knows a
//! serial can keep it slowed down by guessing once per window; the device still gets in at its
//! next retry after a window, and ops can lift the lockout (`cvm-admin unlock`).

use std::time::Duration;

/// The lockout state of a record. All times are seconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockout {
    /// Failures counted, before decay.
    pub failures: u32,
    pub last_failure_at: i64,
    /// Requests are refused until then (0: not locked).
    pub locked_until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures before the first window opens (that failure opens it).
    pub free_attempts: u32,
    /// The first window.
    pub base: Duration,
    /// The longest window.
    pub max: Duration,
    /// One failure is forgotten per this much time without failures.
    pub decay: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            free_attempts: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(900),
            decay: Duration::from_secs(900),
        }
    }
}

impl Lockout {
    /// How long the serial stays closed at `now`, if it is.
    pub fn retry_after(&self, now: i64) -> Option<Duration> {
        (self.locked_until > now)
            .then(|| Duration::from_secs(u64::try_from(self.locked_until - now).unwrap_or(1)))
    }

    /// Failures still counted at `now`, after decay.
    pub fn effective_failures(&self, policy: &LockoutPolicy, now: i64) -> u32 {
        let decay = i64::try_from(policy.decay.as_secs().max(1)).unwrap_or(i64::MAX);
        let quiet = now.saturating_sub(self.last_failure_at).max(0);
        let forgotten = u32::try_from(quiet / decay).unwrap_or(u32::MAX);
        self.failures.saturating_sub(forgotten)
    }

    /// The state after one more failure at `now`.
    pub fn after_failure(&self, policy: &LockoutPolicy, now: i64) -> Lockout {
        let failures = self.effective_failures(policy, now).saturating_add(1);
        let locked_until = match failures.checked_sub(policy.free_attempts.max(1)) {
            None => 0,
            Some(doublings) => {
                let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
                let window = policy.base.saturating_mul(factor).min(policy.max);
                now.saturating_add(i64::try_from(window.as_secs()).unwrap_or(i64::MAX))
            }
        };
        Lockout {
            failures,
            last_failure_at: now,
            locked_until,
        }
    }

    /// Whether this failure opened a window (worth an entry in the audit trail).
    pub fn opened_window(&self, before: &Lockout, now: i64) -> bool {
        self.retry_after(now).is_some() && before.retry_after(now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy::default()
    }

    #[test]
    fn free_attempts_then_doubling_windows_up_to_the_cap() {
        let p = policy();
        let mut l = Lockout::default();
        let now = 1_000_000;
        for _ in 1..p.free_attempts {
            l = l.after_failure(&p, now);
            assert_eq!(l.retry_after(now), None);
        }
        let mut windows = Vec::new();
        for _ in 0..8 {
            l = l.after_failure(&p, now);
            windows.push(l.retry_after(now).unwrap().as_secs());
        }
        assert_eq!(windows, [30, 60, 120, 240, 480, 900, 900, 900]);
    }

    #[test]
    fn windows_close_by_themselves() {
        let p = policy();
        let mut l = Lockout::default();
        for _ in 0..20 {
            l = l.after_failure(&p, 0);
        }
        assert_eq!(l.retry_after(0), Some(Duration::from_secs(900)));
        assert_eq!(l.retry_after(899), Some(Duration::from_secs(1)));
        assert_eq!(l.retry_after(900), None, "never locked for good");
    }

    #[test]
    fn failures_decay_with_quiet() {
        let p = policy();
        let mut l = Lockout::default();
        for _ in 0..p.free_attempts {
            l = l.after_failure(&p, 0);
        }
        assert_eq!(l.effective_failures(&p, 0), p.free_attempts);
        let after_an_hour = 3600;
        assert_eq!(l.effective_failures(&p, after_an_hour), p.free_attempts - 4);
        let much_later = 10 * 3600;
        assert_eq!(l.effective_failures(&p, much_later), 0);
        // A failure long after starts over: no window.
        let next = l.after_failure(&p, much_later);
        assert_eq!(next.failures, 1);
        assert_eq!(next.retry_after(much_later), None);
    }

    #[test]
    fn the_window_opening_is_noticed_once() {
        let p = policy();
        let mut l = Lockout::default();
        for _ in 1..p.free_attempts {
            let next = l.after_failure(&p, 0);
            assert!(!next.opened_window(&l, 0));
            l = next;
        }
        let locked = l.after_failure(&p, 0);
        assert!(locked.opened_window(&l, 0));
        let extended = locked.after_failure(&p, 0);
        assert!(!extended.opened_window(&locked, 0));
    }

    #[test]
    fn clock_going_backwards_does_not_forgive_or_panic() {
        let p = policy();
        let l = Lockout {
            failures: 7,
            last_failure_at: 1000,
            locked_until: 2000,
        };
        assert_eq!(l.effective_failures(&p, 0), 7);
        let _ = l.after_failure(&p, i64::MIN);
        let _ = l.after_failure(&p, i64::MAX);
    }
}
