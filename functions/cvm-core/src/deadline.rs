//! When a function invoked by AWS IoT must answer: within its own budget, and before the
//! invocation's deadline (less a reserve for the answer to get out). AWS IoT waits 5 seconds
//! for a certificate provider and for a pre-provisioning hook.

use std::time::{Duration, Instant, SystemTime};

/// Lambda's longest timeout: an invocation deadline further away cannot be real.
pub const MAX_LAMBDA_TIMEOUT: Duration = Duration::from_secs(900);

/// The time left before `deadline`, if it is one a Lambda invocation can have at its start:
/// more than `reserve` away, and no further than Lambda's longest timeout.
pub fn plausible_time_left(
    deadline: SystemTime,
    now: SystemTime,
    reserve: Duration,
) -> Option<Duration> {
    let left = deadline.duration_since(now).ok()?;
    (left > reserve && left <= MAX_LAMBDA_TIMEOUT).then_some(left)
}

/// The instant to answer by: `budget` after `started`, or `reserve` before the invocation's
/// deadline, whichever is first. A deadline that cannot be a real one (already passed or
/// within the reserve at the start, or beyond Lambda's longest timeout, as local emulators may
/// hand over) is ignored and logged: the budget alone bounds the answer.
pub fn answer_by(
    started: Instant,
    budget: Duration,
    invocation_deadline: Option<SystemTime>,
    reserve: Duration,
) -> Instant {
    let by_budget = started + budget;
    let Some(deadline) = invocation_deadline else {
        return by_budget;
    };
    match plausible_time_left(deadline, SystemTime::now(), reserve) {
        Some(left) => by_budget.min(Instant::now() + left.saturating_sub(reserve)),
        None => {
            let epoch_ms = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            tracing::warn!(
                deadline_epoch_ms = epoch_ms,
                budget_ms = budget.as_millis() as u64,
                "the invocation's deadline cannot be right; answering within the budget alone"
            );
            by_budget
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVE: Duration = Duration::from_millis(300);

    #[test]
    fn real_deadlines_are_kept_impossible_ones_ignored() {
        let now = SystemTime::now();
        assert_eq!(
            plausible_time_left(now + Duration::from_secs(5), now, RESERVE),
            Some(Duration::from_secs(5))
        );
        for impossible in [
            now - Duration::from_secs(1),
            now,
            now + Duration::from_millis(3),
            now + Duration::from_secs(901),
            SystemTime::UNIX_EPOCH,
        ] {
            assert_eq!(plausible_time_left(impossible, now, RESERVE), None);
        }
    }

    #[test]
    fn the_earlier_of_budget_and_deadline() {
        let started = Instant::now();
        let budget = Duration::from_millis(4500);
        // No deadline, or an impossible one: the budget.
        assert_eq!(answer_by(started, budget, None, RESERVE), started + budget);
        let past = SystemTime::now() - Duration::from_secs(10);
        assert_eq!(
            answer_by(started, budget, Some(past), RESERVE),
            started + budget
        );
        // A deadline 2 s away: 300 ms before it.
        let soon = SystemTime::now() + Duration::from_secs(2);
        let by = answer_by(started, budget, Some(soon), RESERVE);
        assert!(by < started + Duration::from_millis(1800));
        assert!(by > started + Duration::from_millis(1500));
        // A deadline far away: the budget.
        let late = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(
            answer_by(started, budget, Some(late), RESERVE),
            started + budget
        );
    }
}
