//! Provider latency with Private CA issuance delayed by 0, 100, 500 and 2000 ms: the
//! provider's capped exponential backoff against the "sleep 1 s, then GetCertificate"
//! strategy of the AWS sample, measured in the same run on the same fake Private CA (real
//! signing, real clock, a simulated round trip per API call).
//!
//! ```text
//! cargo run --release -p cert-provider --example provider_latency [-- --runs 5 --round-trip-ms 10]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cvm_aws::pca::TokioTimer;
use cvm_core::provider::fake::{FakePrivateCa, Issuance};
use cvm_core::provider::{
    Backoff, CertificateProvider, IdempotencyToken, IssueRequest, IssueSettings, PrivateCa,
    ProviderRequest, SigningAlgorithm,
};
use std::sync::atomic::Ordering;

const EVENT: &str = include_str!("../../../events/cert-provider.json");
const DELAYS_MS: [u64; 4] = [0, 100, 500, 2000];
/// What AWS IoT allows, and what the provider gives itself by default.
const IOT_LIMIT: Duration = Duration::from_secs(5);
const BUDGET: Duration = Duration::from_millis(4500);

fn settings() -> IssueSettings {
    IssueSettings {
        signing_algorithm: SigningAlgorithm::Sha256WithEcdsa,
        validity_days: 365,
        template_arn: None,
    }
}

struct Sample {
    latency: Duration,
    gets: u32,
    ok: bool,
}

async fn backoff_once(request: &ProviderRequest, delay: Duration, rtt: Duration) -> Sample {
    let ca = FakePrivateCa::new(TokioTimer, Issuance::After(delay)).with_round_trip(rtt);
    let provider = CertificateProvider::new(ca.clone(), TokioTimer, settings());
    let started = Instant::now();
    let ok = provider.provide(request, started + BUDGET).await.is_ok();
    Sample {
        latency: started.elapsed(),
        gets: ca.get_calls.load(Ordering::SeqCst),
        ok,
    }
}

/// The AWS sample's strategy: IssueCertificate, sleep one second, GetCertificate once.
async fn fixed_once(request: &ProviderRequest, delay: Duration, rtt: Duration) -> Sample {
    let ca = FakePrivateCa::new(TokioTimer, Issuance::After(delay)).with_round_trip(rtt);
    let settings = settings();
    let token = IdempotencyToken::random().unwrap();
    let started = Instant::now();
    let arn = ca
        .issue(&IssueRequest {
            csr_pem: &request.certificate_signing_request,
            settings: &settings,
            idempotency_token: &token,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = matches!(ca.get(&arn).await, Ok(Some(_)));
    Sample {
        latency: started.elapsed(),
        gets: ca.get_calls.load(Ordering::SeqCst),
        ok,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn summary(samples: &[Sample]) -> String {
    let failures = samples.iter().filter(|s| !s.ok).count();
    let latency = median(samples.iter().map(|s| s.latency).collect());
    let max = samples.iter().map(|s| s.latency).max().unwrap_or_default();
    let gets = samples.iter().map(|s| s.gets).max().unwrap_or_default();
    if failures == samples.len() {
        format!("fails: RequestInProgressException at {}", ms(latency))
    } else if failures > 0 {
        format!("{} / {} ({failures} failed)", ms(latency), ms(max))
    } else {
        format!("{} / {} ({gets} Get)", ms(latency), ms(max))
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let runs = arg("--runs", 5).max(1);
    let rtt = Duration::from_millis(arg("--round-trip-ms", 10));
    let request: ProviderRequest = serde_json::from_str(EVENT).unwrap();
    let backoff = Backoff::default();

    println!(
        "Certificate provider latency: fake Private CA ready after the delay, {} per API call, \
         {runs} runs each, median / max",
        ms(rtt)
    );
    println!(
        "backoff: first poll at once, then {} doubling to a {} cap, giving up by {} (AWS IoT \
         allows {})",
        ms(backoff.first),
        ms(backoff.max),
        ms(BUDGET),
        ms(IOT_LIMIT)
    );
    println!();
    println!(
        "| {:>14} | {:<34} | {:<50} |",
        "issuance delay", "backoff (this provider)", "fixed: sleep 1 s then get (AWS sample)"
    );
    println!("|{:-<16}|{:-<36}|{:-<52}|", "", "", "");
    for delay_ms in DELAYS_MS {
        let delay = Duration::from_millis(delay_ms);
        let mut with_backoff = Vec::new();
        let mut fixed = Vec::new();
        for _ in 0..runs {
            with_backoff.push(backoff_once(&request, delay, rtt).await);
            fixed.push(fixed_once(&request, delay, rtt).await);
        }
        println!(
            "| {:>14} | {:<34} | {:<50} |",
            ms(delay),
            summary(&with_backoff),
            summary(&fixed)
        );
    }
}
