//! What the client reads from an HTTP answer besides its body: whether an error answer is worth
//! asking again, how long the server asks it to wait (`Retry-After`), and the server's clock
//! (`Date`). Shared by every command that talks to a server, so they all agree.

use std::time::{Duration, SystemTime};

/// The longest wait a `Retry-After` can impose on one attempt. A longer one (a lockout that
/// lasts an hour, say) is waited out in steps of this size, one request per step.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What an HTTP error answer means for the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Asking again later can succeed: the server is failing or busy, or asks us to wait.
    Transient,
    /// The server's last word on this request: asking again gets the same answer, and repeated
    /// wrong tokens make things worse (the server slows the serial down).
    Final,
}

/// 5xx, 429 (throttled, or `enrollment_locked` while a lockout lasts: it ends by itself), 408
/// (the server gave up waiting for the request) and `409 enrollment_in_progress` (another
/// request holds the claim) are transient; every other 4xx is final.
pub fn verdict(status: u16, code: &str) -> Verdict {
    let transient = status >= 500
        || status == 429
        || status == 408
        || (status == 409 && code == "enrollment_in_progress");
    if transient {
        Verdict::Transient
    } else {
        Verdict::Final
    }
}

/// The wait a `Retry-After` value asks for (RFC 9110 section 10.2.3): delta-seconds, or an
/// HTTP-date. A date is measured against the server's own `Date` when the answer has one (both
/// are the server's clock, so a device clock that is off does not matter), else against
/// `now`. A date in the past means no wait. Capped at [`MAX_RETRY_AFTER`]; `None` when the
/// value is neither form.
pub fn retry_after(
    value: &str,
    server_date: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(server_date.unwrap_or(now))
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The server's `Date` header, if it has a valid one.
pub fn date(headers: &reqwest::header::HeaderMap) -> Option<SystemTime> {
    let value = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    // 1_800_000_000 is Fri, 15 Jan 2027 08:00:00 GMT.
    const T: u64 = 1_800_000_000;

    #[test]
    fn final_and_transient_answers() {
        for (status, code) in [
            (500, "internal_error"),
            (502, ""),
            (503, "service_unavailable"),
            (429, "throttled"),
            (429, "enrollment_locked"),
            (408, ""),
            (409, "enrollment_in_progress"),
        ] {
            assert_eq!(verdict(status, code), Verdict::Transient, "{status} {code}");
        }
        for (status, code) in [
            (400, "csr_malformed"),
            (403, "invalid_credentials"),
            (403, "enrollment_locked"),
            (403, "device_revoked"),
            (404, ""),
            (409, "already_issued"),
            (409, ""),
            (413, "request_too_large"),
        ] {
            assert_eq!(verdict(status, code), Verdict::Final, "{status} {code}");
        }
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after("7", None, at(T)), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", None, at(T)), Some(Duration::ZERO));
        assert_eq!(retry_after("86400", None, at(T)), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("99999999999999999999999", None, at(T)),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_as_an_http_date_in_each_rfc_9110_form() {
        for value in [
            "Fri, 15 Jan 2027 08:00:30 GMT",
            "Friday, 15-Jan-27 08:00:30 GMT",
            "Fri Jan 15 08:00:30 2027",
        ] {
            assert_eq!(
                retry_after(value, None, at(T)),
                Some(Duration::from_secs(30)),
                "{value}"
            );
        }
    }

    #[test]
    fn a_retry_after_date_is_measured_on_the_server_clock_when_it_gives_one() {
        // The device clock is a day behind: its own clock would make this a day-long wait.
        let device_now = at(T - 86_400);
        let value = "Fri, 15 Jan 2027 08:00:10 GMT";
        assert_eq!(
            retry_after(value, Some(at(T)), device_now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(retry_after(value, None, device_now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn a_retry_after_date_in_the_past_means_now_and_far_future_is_capped() {
        assert_eq!(
            retry_after("Fri, 15 Jan 2027 07:59:00 GMT", None, at(T)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("Sat, 15 Jan 2050 08:00:00 GMT", None, at(T)),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_that_is_neither_form_is_ignored() {
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "+3",
            "0x10",
            "Fri, 15 Jan 2027",
            "Fri, 32 Jan 2027 08:00:00 GMT",
            "Fri, 15 Jan 2027 08:00:00 PST",
        ] {
            assert_eq!(retry_after(bad, None, at(T)), None, "{bad:?}");
        }
    }

    #[test]
    fn dates_are_read_from_headers() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(date(&headers), None);
        headers.insert(
            reqwest::header::DATE,
            reqwest::header::HeaderValue::from_static("Fri, 15 Jan 2027 08:00:00 GMT"),
        );
        assert_eq!(date(&headers), Some(at(T)));
        headers.insert(
            reqwest::header::DATE,
            reqwest::header::HeaderValue::from_static("yesterday"),
        );
        assert_eq!(date(&headers), None);
    }
}
