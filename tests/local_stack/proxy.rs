//! The fault proxy itself, through the real SDK: its errors are read by the SDK as the
//! service's own (same code, retried the same way), a lost answer is a committed call the SDK
//! retries, rate limits and latency do what they say, and the binary serves a real vend over
//! TLS with its control API.

use std::time::{Duration, Instant};

use aws_sdk_iot::error::ProvideErrorMetadata;
use cvm_tests::fault_proxy::limits::RateLimit;
use cvm_tests::fault_proxy::rules::{Fault, Rule};
use cvm_tests::fault_proxy::{LogEntry, Proxy, ProxyConfig};

use crate::helpers::*;

async fn proxy() -> Proxy {
    Proxy::start(ProxyConfig::local(env("AWS_ENDPOINT_URL").parse().unwrap()))
        .await
        .unwrap()
}

async fn sdk_via(url: &str, max_attempts: u32) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(max_attempts))
        .load()
        .await
}

fn rule(operation: &str, fault: Fault) -> Rule {
    Rule {
        operation: operation.into(),
        occurrence: None,
        fault,
        attempts: None,
        code: None,
        status: None,
    }
}

fn attempts(log: &[LogEntry], action: &str) -> usize {
    log.iter().filter(|e| e.action == action).count()
}

/// One call per service through a proxy that fails every attempt; returns the error code the
/// SDK reports and the proxy's log.
async fn failing_call(service: &str, fault: Fault) -> (Option<String>, Vec<LogEntry>) {
    let proxy = proxy().await;
    let sdk = sdk_via(&proxy.url(), 3).await;
    let operation = match service {
        "dynamodb" => "dynamodb:DescribeTable",
        "iot" => "iot:ListThings",
        _ => "acm-pca:DescribeCertificateAuthority",
    };
    proxy.set_rules(vec![rule(operation, fault)]).unwrap();
    let code = match service {
        "dynamodb" => aws_sdk_dynamodb::Client::new(&sdk)
            .describe_table()
            .table_name(env("CVM_TABLE_NAME"))
            .send()
            .await
            .unwrap_err()
            .code()
            .map(str::to_owned),
        "iot" => aws_sdk_iot::Client::new(&sdk)
            .list_things()
            .send()
            .await
            .unwrap_err()
            .code()
            .map(str::to_owned),
        _ => aws_sdk_acmpca::Client::new(&sdk)
            .describe_certificate_authority()
            .certificate_authority_arn(env("CVM_PCA_ARN"))
            .send()
            .await
            .unwrap_err()
            .code()
            .map(str::to_owned),
    };
    (code, proxy.log())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_reads_injected_errors_as_the_services_own_and_retries_them() {
    let cases = [
        (
            "dynamodb",
            Fault::Throttle,
            "ProvisionedThroughputExceededException",
        ),
        ("dynamodb", Fault::ServerError, "InternalServerError"),
        ("iot", Fault::Throttle, "ThrottlingException"),
        ("iot", Fault::ServerError, "ServiceUnavailableException"),
        ("acm-pca", Fault::Throttle, "ThrottlingException"),
        ("acm-pca", Fault::ServerError, "InternalFailure"),
    ];
    let results =
        futures::future::join_all(cases.iter().map(|(s, f, _)| failing_call(s, *f))).await;
    for ((service, fault, expected), (code, log)) in cases.iter().zip(results) {
        assert_eq!(code.as_deref(), Some(*expected), "{service} {fault:?}");
        // Retryable: the SDK made all its attempts, each one the same invocation.
        assert_eq!(
            attempts(&log, fault.as_str()),
            3,
            "{service} {fault:?}: {log:?}"
        );
        assert!(
            log.iter().all(|e| e.occurrence == 1),
            "{service} {fault:?}: {log:?}"
        );
        assert_eq!(log.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    }
}

#[tokio::test]
async fn a_lost_answer_is_a_committed_call_the_sdk_retries() {
    let proxy = proxy().await;
    let iot = aws_sdk_iot::Client::new(&sdk_via(&proxy.url(), 3).await);
    let name = unique_serial("fault-proxy-policy");
    proxy
        .set_rules(vec![rule("iot:CreatePolicy", Fault::LoseAnswer)])
        .unwrap();
    let err = iot
        .create_policy()
        .policy_name(&name)
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iot:Connect","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap_err();
    // The first attempt created the policy; the SDK's retry finds it there.
    assert_eq!(
        err.code(),
        Some("ResourceAlreadyExistsException"),
        "{err:?}"
    );
    let log = proxy.log();
    assert_eq!(
        log.iter()
            .map(|e| (e.action.as_str(), e.status, e.attempt))
            .collect::<Vec<_>>(),
        [("lose-answer", Some(200), 1), ("forwarded", Some(409), 2)],
        "{log:?}"
    );
    iot.delete_policy().policy_name(&name).send().await.unwrap();
}

#[tokio::test]
async fn rate_limits_throttle_past_the_bucket_and_latency_is_added() {
    let proxy = Proxy::start(ProxyConfig {
        limits: [(
            "iot:ListThings".to_owned(),
            RateLimit {
                rate: 0.5,
                burst: Some(2.0),
            },
        )]
        .into(),
        latency: Duration::from_millis(150),
        ..ProxyConfig::local(env("AWS_ENDPOINT_URL").parse().unwrap())
    })
    .await
    .unwrap();
    // One attempt per call, so each throttle is seen as the caller's.
    let iot = aws_sdk_iot::Client::new(&sdk_via(&proxy.url(), 1).await);
    let mut codes = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let result = iot.list_things().send().await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        codes.push(result.err().and_then(|e| e.code().map(str::to_owned)));
    }
    assert_eq!(
        codes,
        [
            None,
            None,
            Some("ThrottlingException".into()),
            Some("ThrottlingException".into())
        ]
    );
    assert_eq!(attempts(&proxy.log(), "rate-limited"), 2);
    // Other operations are not limited.
    iot.list_policies().send().await.unwrap();
}

/// The binary, as a benchmark would run it: TLS with the stack's server certificate, the
/// control API, and the real service reaching AWS through it.
#[tokio::test]
async fn the_binary_proxies_a_real_vend_over_tls_and_is_driven_by_its_control_api() {
    use std::io::BufRead;
    let pki = std::path::PathBuf::from(env("CVM_API_CA"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fault-proxy"))
        .args(["--upstream", &env("AWS_ENDPOINT_URL")])
        .args(["--control", "127.0.0.1:0", "--tls-handshake-delay-ms", "20"])
        .arg("--tls-cert")
        .arg(pki.join("api-server.pem"))
        .arg("--tls-key")
        .arg(pki.join("api-server.key"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _child = Kill(child);
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let listen = started["listen"].as_str().unwrap().to_owned();
    let control = started["control"].as_str().unwrap().to_owned();
    assert!(listen.starts_with("https://127.0.0.1:"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let api_ca = env("CVM_API_CA");
    let service = VendService::spawn(
        "iot",
        &listen,
        dir.path().join("vend.log"),
        &[("SSL_CERT_FILE", api_ca.as_str())],
    )
    .await;
    let plain = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| {
        plain
            .put(format!("{control}{path}"))
            .body(body.to_string())
            .send()
    };
    let refused = put(
        "/rules",
        serde_json::json!({"rules": [{"operation": "GetItem", "occurrence": 0, "fault": "throttle"}]}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    plain.post(format!("{control}/reset")).send().await.unwrap();
    let ok = put(
        "/rules",
        serde_json::json!({"rules": [{"operation": "iot:CreateThing", "fault": "lose-answer"}]}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);

    let serial = unique_serial("FP-TLS");
    let token = enroll(&serial, &[]);
    let (status, body) = post(
        &http(),
        &service.api,
        &serde_json::json!({"serial": serial, "token": token, "csr": rcgen_csr(&serial)}),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let log: serde_json::Value = plain
        .get(format!("{control}/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!(
                    "{}:{}",
                    e["service"].as_str().unwrap(),
                    e["operation"].as_str().unwrap()
                ),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("iot:CreateThing".into(), "lose-answer".into()))
            && seen.contains(&("iot:CreateCertificateFromCsr".into(), "forwarded".into())),
        "{seen:?}"
    );
}
