//! Warm-up during init: one harmless, authorised call per AWS service a function's requests
//! use, all at once, so the TLS handshakes (and the credential and endpoint resolution behind
//! them) happen while the execution environment starts, concurrently, instead of one after
//! another inside the first request. AWS describes the first SDK call in a new environment as
//! paying most of a second for its handshake; `make bench` shows what it buys here.
//!
//! A warm-up call that fails or is slow costs nothing but the warm-up: it is logged and the
//! first request opens its own connection, as it would without warm-up. It never fails init.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cvm_core::ports::PortError;

/// Longest init waits for the warm-up. Beyond it, the calls are abandoned (their connections
/// may still land in the pool) and init goes on.
pub const WARM_UP_BUDGET: Duration = Duration::from_secs(2);

/// One warm-up call: the service it warms and the call.
pub type WarmUpCall<'a> = (
    &'static str,
    Pin<Box<dyn Future<Output = Result<(), PortError>> + Send + 'a>>,
);

/// Runs the calls concurrently within [`WARM_UP_BUDGET`], logging what each did. Returns how
/// many succeeded, for tests.
pub async fn run(calls: Vec<WarmUpCall<'_>>) -> usize {
    run_within(calls, WARM_UP_BUDGET).await
}

async fn run_within(calls: Vec<WarmUpCall<'_>>, budget: Duration) -> usize {
    if calls.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let services: Vec<&str> = calls.iter().map(|(service, _)| *service).collect();
    let timed = calls.into_iter().map(|(service, call)| async move {
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(service, error = %e, "warm-up call failed; the first request opens its own connection");
                false
            }
            Err(_) => {
                tracing::warn!(service, budget_ms = budget.as_millis() as u64, "warm-up call timed out; init goes on");
                false
            }
        }
    });
    let warmed = futures_util::future::join_all(timed)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
    tracing::info!(
        services = services.join(","),
        warmed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "warm-up done"
    );
    warmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvm_core::ports::FailureKind;

    fn call<'a>(
        service: &'static str,
        delay: Duration,
        result: Result<(), PortError>,
    ) -> WarmUpCall<'a> {
        (
            service,
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                result
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn calls_run_at_once_and_failures_do_not_stop_the_others() {
        let started = tokio::time::Instant::now();
        let warmed = run_within(
            vec![
                call("dynamodb", Duration::from_millis(300), Ok(())),
                call("iot", Duration::from_millis(300), Ok(())),
                call(
                    "acm-pca",
                    Duration::from_millis(100),
                    Err(PortError::new(
                        FailureKind::Throttled,
                        "acm-pca:DescribeCertificateAuthority",
                    )),
                ),
            ],
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(warmed, 2);
        // Concurrent: the longest call, not the sum.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_abandoned_at_the_budget() {
        let started = tokio::time::Instant::now();
        let warmed = run_within(
            vec![
                call("dynamodb", Duration::from_millis(50), Ok(())),
                call("iot", Duration::from_secs(30), Ok(())),
            ],
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(warmed, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(run_within(Vec::new(), Duration::from_secs(2)).await, 0);
    }
}
