//! Whether the system clock can be trusted yet. A board without a real-time clock boots in
//! 1970 (or, with fake-hwclock, at the time it was last shut down) and keeps that time until
//! an NTP client sets it. Until then TLS fails, or worse, judges certificates by the wrong
//! time. Two references tell a wrong clock: the time this binary was built (the real time
//! cannot be earlier), and, once a server has answered, that server's `Date` header. While the
//! clock disagrees with them, commands wait a bounded time for time synchronization, then give
//! up with a transient failure so that the supervisor runs them again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall clock, injectable so tests can set it back.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// When this binary was built (see build.rs); 1970 if the value is unreadable, which only
/// disables the check.
pub fn build_time() -> SystemTime {
    let seconds = env!("CVM_BUILD_EPOCH").parse::<u64>().unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// How far below the build time the clock may be: the build machine's clock may be a little
/// ahead of the device's. A clock that was never set is decades off.
pub const BUILD_TIME_SLACK: Duration = Duration::from_secs(24 * 3600);

/// How far the clock may be from a server's `Date` (plus the time since it was received). AWS
/// refuses SigV4 requests whose time is more than 5 minutes off, so a device clock worse than
/// that makes the AWS credentials it obtains useless anyway.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// What the clock is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Reference {
    /// This binary's build time.
    Build,
    /// A server's `Date`, received at `received` (monotonic, unaffected by the wall clock).
    Server { date: SystemTime, received: Instant },
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{problem}; {}: check that an NTP client (systemd-timesyncd, chrony) runs and reaches its \
     servers, and order this service after time-sync.target (systemd-time-wait-sync.service)",
    waited_for(*.waited)
)]
pub struct ClockError {
    pub problem: String,
    pub waited: Duration,
}

fn waited_for(waited: Duration) -> String {
    if waited.is_zero() {
        "the time is not synchronized".to_owned()
    } else {
        format!(
            "waited {} s for time synchronization",
            waited.as_secs_f64().round()
        )
    }
}

/// Checks the clock against a [`Reference`], and waits for it to be set.
#[derive(Clone)]
pub struct ClockCheck {
    clock: Arc<dyn Clock>,
    built: SystemTime,
    max_wait: Duration,
    poll: Duration,
}

impl std::fmt::Debug for ClockCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockCheck")
            .field("built", &rfc3339(self.built))
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl ClockCheck {
    /// The system clock against this binary's build time, waiting at most `max_wait`.
    pub fn system(max_wait: Duration) -> Self {
        Self::new(
            Arc::new(SystemClock),
            build_time(),
            max_wait,
            Duration::from_secs(1),
        )
    }

    /// Any clock against any build time; the clock is read every `poll` while waiting.
    pub fn new(
        clock: Arc<dyn Clock>,
        built: SystemTime,
        max_wait: Duration,
        poll: Duration,
    ) -> Self {
        Self {
            clock,
            built,
            max_wait,
            poll: poll.max(Duration::from_millis(1)),
        }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// What is wrong with the clock against `reference`, if anything.
    pub fn problem(&self, reference: &Reference) -> Option<String> {
        let now = self.clock.now();
        match *reference {
            Reference::Build => (now + BUILD_TIME_SLACK < self.built).then(|| {
                format!(
                    "the system clock says {}, before this program was built ({}): the time \
                     has not been set yet (a board without a real-time clock?)",
                    rfc3339(now),
                    rfc3339(self.built)
                )
            }),
            Reference::Server { date, received } => {
                let expected = date + received.elapsed();
                let (off, direction) = match expected.duration_since(now) {
                    Ok(behind) => (behind, "behind"),
                    Err(ahead) => (ahead.duration(), "ahead of"),
                };
                (off > MAX_SKEW).then(|| {
                    format!(
                        "the system clock ({}) is {} {direction} the server's ({})",
                        rfc3339(now),
                        human(off),
                        rfc3339(expected)
                    )
                })
            }
        }
    }

    /// Returns once the clock agrees with `reference`, or fails after waiting the configured
    /// time (at once when that is zero). Says on stderr that it waits, once.
    pub async fn settle(&self, reference: &Reference) -> Result<(), ClockError> {
        let Some(mut problem) = self.problem(reference) else {
            return Ok(());
        };
        let started = Instant::now();
        if !self.max_wait.is_zero() {
            eprintln!(
                "cvm-device: {problem}; waiting up to {} s for time synchronization",
                self.max_wait.as_secs_f64().round()
            );
        }
        loop {
            let waited = started.elapsed();
            if waited >= self.max_wait {
                let waited = if self.max_wait.is_zero() {
                    Duration::ZERO
                } else {
                    waited
                };
                return Err(ClockError { problem, waited });
            }
            tokio::time::sleep(self.poll.min(self.max_wait - waited)).await;
            match self.problem(reference) {
                None => {
                    eprintln!(
                        "cvm-device: the system clock is set now ({}); going on",
                        rfc3339(self.clock.now())
                    );
                    return Ok(());
                }
                Some(still) => problem = still,
            }
        }
    }
}

/// A duration for people: the two largest units.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min {seconds} s")
    } else {
        format!("{seconds} s")
    }
}

/// `YYYY-MM-DDThh:mm:ssZ`, for any time a broken clock may report (before 1970 too).
pub fn rfc3339(t: SystemTime) -> String {
    let seconds: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock that a test sets, and that can be set forward from another task (as an NTP
    /// client would).
    struct TestClock(Mutex<SystemTime>);

    impl TestClock {
        fn at(t: SystemTime) -> Arc<Self> {
            Arc::new(Self(Mutex::new(t)))
        }
        fn set(&self, t: SystemTime) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    const BUILT: u64 = 1_800_000_000; // 2027-01-15T08:00:00Z
    const BOOT_1970: u64 = 5; // a board without an RTC, 5 s after power-on

    fn check(clock: Arc<TestClock>, max_wait: Duration) -> ClockCheck {
        ClockCheck::new(clock, at(BUILT), max_wait, Duration::from_millis(10))
    }

    #[test]
    fn times_are_formatted_for_any_clock() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(BUILT)), "2027-01-15T08:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 7200)), "3 d 2 h");
        assert_eq!(human(Duration::from_secs(61)), "1 min 1 s");
    }

    #[test]
    fn the_build_time_is_embedded() {
        // The binary was built after this code was written (2026).
        assert!(
            build_time() > at(1_767_225_600),
            "{}",
            rfc3339(build_time())
        );
    }

    #[test]
    fn a_clock_before_the_build_is_not_set() {
        let c = check(TestClock::at(at(BOOT_1970)), Duration::ZERO);
        let problem = c.problem(&Reference::Build).unwrap_or_default();
        assert!(problem.contains("1970-01-01T00:00:05Z"), "{problem}");
        assert!(problem.contains("2027-01-15T08:00:00Z"), "{problem}");
        // A clock a few hours behind the build machine is within the slack; a clock after
        // the build is fine.
        for ok in [BUILT - 3600, BUILT, BUILT + 86_400 * 400] {
            assert_eq!(
                check(TestClock::at(at(ok)), Duration::ZERO).problem(&Reference::Build),
                None
            );
        }
    }

    #[test]
    fn a_clock_far_from_the_servers_date_is_wrong_either_way() {
        let server = Reference::Server {
            date: at(BUILT + 86_400),
            received: Instant::now(),
        };
        // Set after the build, but to the last shutdown a day ago (fake-hwclock).
        let behind = check(TestClock::at(at(BUILT)), Duration::ZERO);
        let problem = behind.problem(&server).unwrap_or_default();
        assert!(problem.contains("1 d 0 h behind the server's"), "{problem}");
        let ahead = check(TestClock::at(at(BUILT + 3 * 86_400)), Duration::ZERO);
        let problem = ahead.problem(&server).unwrap_or_default();
        assert!(problem.contains("ahead of the server's"), "{problem}");
        let close = check(TestClock::at(at(BUILT + 86_400 + 30)), Duration::ZERO);
        assert_eq!(close.problem(&server), None);
    }

    #[tokio::test]
    async fn without_a_wait_a_wrong_clock_fails_at_once() {
        let c = check(TestClock::at(at(BOOT_1970)), Duration::ZERO);
        let started = Instant::now();
        let err = c
            .settle(&Reference::Build)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(started.elapsed() < Duration::from_millis(100));
        let err = err.unwrap_or_default();
        assert!(err.contains("has not been set yet"), "{err}");
        assert!(err.contains("the time is not synchronized"), "{err}");
        assert!(err.contains("systemd-time-wait-sync.service"), "{err}");
    }

    #[tokio::test]
    async fn the_wait_is_bounded_when_the_clock_is_never_set() {
        let c = check(TestClock::at(at(BOOT_1970)), Duration::from_millis(200));
        let started = Instant::now();
        let err = c.settle(&Reference::Build).await.err();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("s for time synchronization"), "{err}");
        assert!(err.contains("has not been set yet"), "{err}");
    }

    #[tokio::test]
    async fn waiting_ends_as_soon_as_time_sync_sets_the_clock() {
        let clock = TestClock::at(at(BOOT_1970));
        let c = check(clock.clone(), Duration::from_secs(10));
        let ntp = tokio::spawn({
            let clock = clock.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                clock.set(at(BUILT + 600));
            }
        });
        let started = Instant::now();
        let settled = c.settle(&Reference::Build).await;
        assert!(settled.is_ok(), "{settled:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(ntp.await.is_ok());
    }

    #[tokio::test]
    async fn a_right_clock_does_not_wait() {
        let c = check(TestClock::at(at(BUILT + 60)), Duration::from_secs(10));
        let started = Instant::now();
        assert!(c.settle(&Reference::Build).await.is_ok());
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
