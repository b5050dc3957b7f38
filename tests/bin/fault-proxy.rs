//! `fault-proxy`: the fault-injecting AWS proxy as a process (see `cvm_tests::fault_proxy` for
//! the rules, the control API and an example).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cvm_tests::fault_proxy::limits::{RateLimit, AWS_DEFAULT_QUOTAS};
use cvm_tests::fault_proxy::{Error, Proxy, ProxyConfig, TlsSettings};

#[derive(Parser)]
#[command(
    about = "A reverse proxy to an AWS endpoint that injects throttling, 5xx, lost answers, latency and rate limits"
)]
struct Args {
    /// Where the service connects (its AWS_ENDPOINT_URL); port 0 picks a free one.
    #[arg(long, env = "FAULT_PROXY_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The control API's address (plain HTTP); none if absent.
    #[arg(long, env = "FAULT_PROXY_CONTROL")]
    control: Option<SocketAddr>,
    /// The AWS endpoint requests are forwarded to, e.g. moto's http://127.0.0.1:PORT.
    #[arg(long, env = "FAULT_PROXY_UPSTREAM")]
    upstream: hyper::Uri,
    /// Milliseconds added to every request.
    #[arg(long, env = "FAULT_PROXY_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// PEM certificate chain to serve HTTPS with (with --tls-key).
    #[arg(long, env = "FAULT_PROXY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FAULT_PROXY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Milliseconds waited before each TLS handshake.
    #[arg(
        long,
        env = "FAULT_PROXY_TLS_HANDSHAKE_DELAY_MS",
        default_value_t = 0,
        requires = "tls_cert"
    )]
    tls_handshake_delay_ms: u64,
    /// A rate limit, OPERATION=RATE[:BURST] (OPERATION is Name or service:Name); repeatable.
    #[arg(long = "limit", value_parser = parse_limit)]
    limits: Vec<(String, RateLimit)>,
    /// Apply AWS's default quotas for the vend path's operations (explicit --limit wins).
    #[arg(long)]
    aws_quotas: bool,
}

fn parse_limit(s: &str) -> Result<(String, RateLimit), String> {
    let (operation, numbers) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected OPERATION=RATE[:BURST]"))?;
    let (rate, burst) = match numbers.split_once(':') {
        Some((r, b)) => (r, Some(b)),
        None => (numbers, None),
    };
    let number = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{s:?}: {e}"));
    let limit = RateLimit {
        rate: number(rate)?,
        burst: burst.map(number).transpose()?,
    };
    limit.validate().map_err(|e| format!("{s:?}: {e}"))?;
    if operation.trim().is_empty() {
        return Err(format!("{s:?}: no operation"));
    }
    Ok((operation.trim().to_owned(), limit))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut limits = HashMap::new();
    if args.aws_quotas {
        for (operation, rate) in AWS_DEFAULT_QUOTAS {
            limits.insert(
                (*operation).to_owned(),
                RateLimit {
                    rate: *rate,
                    burst: None,
                },
            );
        }
    }
    limits.extend(args.limits);
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_chain), Some(key)) => Some(TlsSettings {
            cert_chain,
            key,
            handshake_delay: Duration::from_millis(args.tls_handshake_delay_ms),
        }),
        _ => None,
    };
    let proxy = Proxy::start(ProxyConfig {
        listen: args.listen,
        control: args.control,
        upstream: args.upstream.clone(),
        latency: Duration::from_millis(args.latency_ms),
        tls,
        limits,
    })
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "listen": proxy.url(),
            "control": proxy.control_url(),
            "upstream": args.upstream.to_string(),
        })
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_limit("iot:CreateThing=100").unwrap(),
            (
                "iot:CreateThing".to_owned(),
                RateLimit {
                    rate: 100.0,
                    burst: None
                }
            )
        );
        assert_eq!(
            parse_limit("GetItem=2.5:5").unwrap().1,
            RateLimit {
                rate: 2.5,
                burst: Some(5.0)
            }
        );
        for bad in ["CreateThing", "=1", "X=0", "X=abc", "X=1:0", "X=1:y"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }
}
