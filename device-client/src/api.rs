//! JSON requests to the vending API over HTTPS, asked again while the answer says asking again
//! can succeed: one loop for every command that talks to the API (`enroll`, `renew`), so they
//! agree on timeouts, backoff, `Retry-After` and the server's clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::clock::{ClockCheck, ClockError, Reference};
use crate::http::{self, Verdict};
use crate::tls::{error_chain, one_line};

/// Waits between attempts when the server gives no Retry-After: `initial`, doubling, capped
/// at `max`, each with up to 25% jitter so a fleet that lost power together does not retry
/// together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        let base = self.initial.saturating_mul(factor).min(self.max);
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// How persistently one request is made.
#[derive(Debug, Clone)]
pub struct Retries {
    /// Attempts in all (at least one).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The clock, checked against each answer's `Date`.
    pub clock: ClockCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API's last word: a final refusal, or the last of the transient ones.
    #[error("{code} ({status}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the API at {url}: {message}")]
    Network { url: String, message: String },
    #[error("--ca {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// An HTTPS-only client trusting the PEM roots in `ca`, or the system's.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, ApiError> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("cvm-device/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let ca_error = |message: String| ApiError::Ca {
            path: path.to_owned(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| ApiError::Network {
        url: String::new(),
        message: e.to_string(),
    })
}

/// One answer of the API.
struct Answer {
    status: u16,
    /// What `Retry-After` asks for, capped.
    retry_after: Option<Duration>,
    /// The server's `Date`, and when it arrived.
    date: Option<(SystemTime, Instant)>,
    body: String,
}

/// One attempt's result: an answer, or a transport failure (transient).
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    clock: &ClockCheck,
) -> Result<Answer, String> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let received = Instant::now();
    let status = response.status().as_u16();
    let date = http::date(response.headers());
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| http::retry_after(v, date, clock.now()));
    // A connection lost while the body arrives is as transient as one lost before.
    let text = response.text().await.map_err(|e| error_chain(&e))?;
    Ok(Answer {
        status,
        retry_after,
        date: date.map(|d| (d, received)),
        body: text,
    })
}

/// How many times an answer whose `Date` disagrees with the clock is asked again, once the
/// clock has been set (each after a bounded wait).
const CLOCK_RETRIES: u32 = 2;

/// A successful answer (200 or 201): its status and body.
#[derive(Debug)]
pub struct Success {
    pub status: u16,
    pub body: String,
}

/// `POST url` with `body`, asked again on network errors and transient answers (see
/// [`http::verdict`]) up to `retries.max_attempts` times, after `Retry-After` when the API
/// gives one, else with backoff. An answer whose `Date` is far from the system clock is not
/// acted on: once the clock is set, the same request is made again (every request of the
/// API is safe to repeat).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    retries: &Retries,
) -> Result<Success, ApiError> {
    let mut attempts = 0;
    let mut clock_retries = 0;
    loop {
        attempts += 1;
        let last = attempts >= retries.max_attempts.max(1);
        let answer = match attempt(client, url, body, &retries.clock).await {
            Ok(answer) => answer,
            Err(message) if !last => {
                let wait = retries.backoff.delay(attempts);
                eprintln!(
                    "cvm-device: {url} unreachable ({message}); retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(message) => {
                return Err(ApiError::Network {
                    url: url.to_owned(),
                    message,
                })
            }
        };
        if let Some((date, received)) = answer.date {
            // TLS judged the server's certificate by this clock: an answer received with a
            // clock far from the server's is not acted on.
            let reference = Reference::Server { date, received };
            if retries.clock.problem(&reference).is_some() {
                retries.clock.settle(&reference).await?;
                clock_retries += 1;
                if clock_retries > CLOCK_RETRIES {
                    return Err(ApiError::Clock(ClockError {
                        problem: "the server's Date still disagrees with the system clock \
                                  after it was set"
                            .into(),
                        waited: Duration::ZERO,
                    }));
                }
                attempts -= 1;
                continue;
            }
        }
        let status = answer.status;
        if status == 200 || status == 201 {
            return Ok(Success {
                status,
                body: answer.body,
            });
        }
        let (code, message) = error_body(&answer.body);
        match http::verdict(status, &code) {
            Verdict::Transient if !last => {
                let wait = answer
                    .retry_after
                    .unwrap_or_else(|| retries.backoff.delay(attempts));
                eprintln!(
                    "cvm-device: {code} ({status}); retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            _ => {
                return Err(ApiError::Refused {
                    status,
                    code,
                    message,
                })
            }
        }
    }
}

/// The `{code, message}` of an error answer, on one line each; `unknown` and the start of the
/// body when it is not that.
fn error_body(body: &str) -> (String, String) {
    let (code, message) = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => (
            v["code"].as_str().unwrap_or("unknown").to_owned(),
            v["message"].as_str().unwrap_or("").to_owned(),
        ),
        Err(_) => ("unknown".to_owned(), body.chars().take(200).collect()),
    };
    (one_line(&code), one_line(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_initial_grows_and_is_capped() {
        let b = Backoff::default();
        assert!(b.delay(1) >= Duration::from_secs(1) && b.delay(1) <= Duration::from_millis(1250));
        assert!(b.delay(2) >= Duration::from_secs(2));
        assert!(b.delay(10) <= Duration::from_millis(37_500));
        assert!(b.delay(1000) <= Duration::from_millis(37_500));
    }

    #[test]
    fn error_bodies_are_read_or_summarized_on_one_line() {
        assert_eq!(
            error_body(r#"{"code":"nothing_to_renew","message":"no\nrenewal"}"#),
            ("nothing_to_renew".into(), "no renewal".into())
        );
        assert_eq!(
            error_body(r#"{"message":"m"}"#),
            ("unknown".into(), "m".into())
        );
        let (code, message) = error_body(&format!("<html>\n{}", "x".repeat(500)));
        assert_eq!(code, "unknown");
        assert_eq!(message.chars().count(), 200);
        assert!(!message.contains('\n'));
        assert_eq!(error_body("[1]"), ("unknown".into(), String::new()));
    }
}
