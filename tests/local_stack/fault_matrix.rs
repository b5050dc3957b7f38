//! The fault matrix: every AWS call a vend makes × {throttled past the SDK's retries, 5xx past
//! them, committed but the answer lost}, for each vend mode, through the real service binary
//! and the real SDK, with the fault-injecting proxy between the service and the local stack.
//!
//! The calls are not listed here: one clean vend per mode through the proxy is read from the
//! proxy's log (operation and occurrence), so the matrix follows the workflow when it changes.
//! Each case gets a fresh serial, its own proxy and its own `vend-local`; the device asks once
//! with the fault armed, then, with the fault cleared, asks again as `cvm-device` does (429,
//! 5xx and 409 `enrollment_in_progress` are retried after `Retry-After`), then replays once.
//! The service runs with the SDK's default retry settings (3 attempts, standard mode).
//!
//! A case passes when: the fault fired; the device got a certificate; every answer it got
//! named the same certificate; the certificate is for the device's key and chains to the
//! mode's CA; it is ACTIVE in AWS IoT and attached to the thing and the policy; the record
//! names it; and it is the only ACTIVE certificate carrying the serial. Leftovers (certificates
//! carrying the serial, not ACTIVE, that the record does not name) are counted, not failed:
//! a sweep removes them.
//!
//! `CVM_FAULT_MATRIX_PARALLEL` (default 14) bounds the cases run at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use cvm_tests::fault_proxy::rules::{Fault, Rule};
use cvm_tests::fault_proxy::{LogEntry, Proxy, ProxyConfig};
use x509_cert::der::{DecodePem, Encode};

use crate::helpers::*;

const FAULTS: [Fault; 3] = [Fault::Throttle, Fault::ServerError, Fault::LoseAnswer];
/// How long a device keeps asking after the fault: past the claim lease (60 s) and then some.
const DEVICE_PATIENCE: Duration = Duration::from_secs(120);

/// One AWS call of the workflow: `service:Operation` and which invocation of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    operation: String,
    occurrence: u32,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.operation, self.occurrence)
    }
}

struct Shared {
    iot: aws_sdk_iot::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    http: reqwest::Client,
    moto: hyper::Uri,
    table: String,
    dir: PathBuf,
    /// Certificate id -> subject CN; certificates do not change, so each is described once.
    common_names: Mutex<HashMap<String, Option<String>>>,
    /// Unix seconds, a little before the first serial was enrolled: older certificates cannot
    /// carry one of this run's serials and are not described.
    not_before: i64,
}

#[derive(Debug, Default)]
struct Verdict {
    failures: Vec<String>,
    leftovers: Vec<(String, String)>,
}

struct Outcome {
    mode: &'static str,
    step: Step,
    fault: Fault,
    verdict: Verdict,
    /// Status of each answer the device got, in order.
    answers: Vec<u16>,
    took: Duration,
    log: Vec<LogEntry>,
    warnings: Vec<String>,
}

fn modes() -> Vec<&'static str> {
    let mut modes = vec!["iot"];
    if std::env::var("CVM_PCA_ARN").is_ok_and(|v| !v.is_empty()) {
        modes.push("acm-pca");
    }
    modes
}

/// A device's key and a CSR for it.
fn device_key(serial: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

async fn enroll_async(serial: &str) -> String {
    let serial = serial.to_owned();
    tokio::task::spawn_blocking(move || enroll(&serial, &[]))
        .await
        .unwrap()
}

/// One answer of the vend API: status, Retry-After, body.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, Option<u64>, serde_json::Value) {
    let response = http
        .post(format!("{url}/v1/certificates"))
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, retry_after, value)
}

fn is_transient(status: u16, body: &serde_json::Value) -> bool {
    status == 429 || status >= 500 || (status == 409 && body["code"] == "enrollment_in_progress")
}

async fn proxy_for(shared: &Shared) -> Proxy {
    Proxy::start(ProxyConfig {
        control: None,
        ..ProxyConfig::local(shared.moto.clone())
    })
    .await
    .unwrap()
}

/// The steps of one clean vend, read from the proxy's log.
async fn discover(shared: &Shared, mode: &'static str) -> Vec<Step> {
    let proxy = proxy_for(shared).await;
    let service = VendService::spawn(
        mode,
        &proxy.url(),
        shared.dir.join(format!("{mode}-discover.log")),
        &[],
    )
    .await;
    proxy.reset(); // forget the start-up calls
    let serial = unique_serial("FM-CLEAN");
    let token = enroll_async(&serial).await;
    let (_key, csr) = device_key(&serial);
    let body = serde_json::json!({"serial": serial, "token": token, "csr": csr});
    let (status, _, answer) = ask(&shared.http, &service.api.url, &body).await;
    assert_eq!(
        status,
        201,
        "{mode}: the clean vend failed: {answer}\n{}",
        service.warnings().join("\n")
    );
    let log = proxy.log();
    println!("\n{mode}: one clean vend through the proxy");
    print_log(&log);
    log.iter()
        .filter(|e| e.attempt == 1)
        .map(|e| Step {
            operation: format!("{}:{}", e.service, e.operation),
            occurrence: e.occurrence,
        })
        .collect()
}

fn print_log(log: &[LogEntry]) {
    for e in log {
        println!(
            "  {:>3} {:>6} ms  {}:{}#{} attempt {}  {} {}",
            e.seq,
            e.at_ms,
            e.service,
            e.operation,
            e.occurrence,
            e.attempt,
            e.action,
            e.status.map(|s| s.to_string()).unwrap_or_default()
        );
    }
}

async fn run_case(shared: Arc<Shared>, mode: &'static str, step: Step, fault: Fault) -> Outcome {
    let started = Instant::now();
    let proxy = proxy_for(&shared).await;
    let name = format!(
        "{mode}-{}-{}-{}",
        step.operation.replace(':', "_"),
        step.occurrence,
        fault.as_str()
    );
    let service = VendService::spawn(
        mode,
        &proxy.url(),
        shared.dir.join(format!("{name}.log")),
        &[],
    )
    .await;
    proxy.reset();
    let serial = unique_serial("FM");
    let token = enroll_async(&serial).await;
    let (key, csr) = device_key(&serial);
    let body = serde_json::json!({"serial": serial, "token": token, "csr": csr});

    proxy
        .set_rules(vec![Rule {
            operation: step.operation.clone(),
            occurrence: Some(step.occurrence),
            fault,
            attempts: None,
            code: None,
            status: None,
        }])
        .unwrap();
    let mut answers = Vec::new();
    let mut deliveries = Vec::new();
    let (mut status, mut retry_after, mut answer) =
        ask(&shared.http, &service.api.url, &body).await;
    proxy.set_rules(Vec::new()).unwrap();
    let fired = proxy.log().iter().any(|e| {
        e.action == fault.as_str() && format!("{}:{}", e.service, e.operation) == step.operation
    });

    // With the fault cleared, the device asks again as cvm-device does.
    let deadline = Instant::now() + DEVICE_PATIENCE;
    loop {
        answers.push(status);
        if status == 200 || status == 201 {
            deliveries.push(answer.clone());
            break;
        }
        if !is_transient(status, &answer) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30))).await;
        (status, retry_after, answer) = ask(&shared.http, &service.api.url, &body).await;
    }
    // The device lost that answer too, and asks once more with the same token and key.
    if !deliveries.is_empty() {
        let (s, _, replay) = ask(&shared.http, &service.api.url, &body).await;
        answers.push(s);
        if s == 200 || s == 201 {
            deliveries.push(replay);
        } else {
            deliveries.push(serde_json::json!({"replayFailed": s, "answer": replay}));
        }
    }

    let mut verdict = Verdict::default();
    if !fired {
        verdict.failures.push(format!(
            "the fault never fired: {step} is not in this vend any more"
        ));
    }
    check(
        &shared,
        mode,
        &serial,
        &key,
        &deliveries,
        &answer,
        &mut verdict,
    )
    .await;
    Outcome {
        mode,
        step,
        fault,
        verdict,
        answers,
        took: started.elapsed(),
        log: proxy.log(),
        warnings: service.warnings(),
    }
}

/// The invariant, checked against AWS IoT and the table themselves.
async fn check(
    shared: &Shared,
    mode: &'static str,
    serial: &str,
    key: &rcgen::KeyPair,
    deliveries: &[serde_json::Value],
    last_answer: &serde_json::Value,
    verdict: &mut Verdict,
) {
    let fail = |verdict: &mut Verdict, m: String| verdict.failures.push(m);
    let delivered = deliveries.first();
    let ids: Vec<_> = deliveries
        .iter()
        .map(|d| d["certificateId"].as_str().unwrap_or("<none>").to_owned())
        .collect();
    if ids.windows(2).any(|w| w[0] != w[1]) {
        fail(
            verdict,
            format!("answers named different certificates: {ids:?}"),
        );
    }
    let certs = certificates_of(shared, serial).await;
    let record = record_strings(shared, serial).await;
    let record_status = record.get("status").cloned().unwrap_or_default();
    let named_by_record = |id: &str| record.values().any(|v| v == id);
    let active: Vec<_> = certs
        .iter()
        .filter(|(_, s)| s == "ACTIVE")
        .map(|(id, _)| id.clone())
        .collect();
    verdict.leftovers = certs
        .iter()
        .filter(|(id, s)| s != "ACTIVE" && !named_by_record(id))
        .cloned()
        .collect();

    let Some(delivered) = delivered else {
        fail(
            verdict,
            format!("no certificate delivered; last answer {last_answer}"),
        );
        if !active.is_empty() {
            fail(
                verdict,
                format!("ACTIVE certificates nobody got: {active:?}"),
            );
        }
        return;
    };
    let id = delivered["certificateId"].as_str().unwrap_or_default();
    let arn = delivered["certificateArn"].as_str().unwrap_or_default();
    let pem = delivered["certificatePem"].as_str().unwrap_or_default();

    // For the device's key, and chains to the mode's CA.
    match x509_cert::Certificate::from_pem(pem.as_bytes()) {
        Ok(cert) => {
            let spki = cert
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .unwrap();
            if spki != rcgen::PublicKeyData::subject_public_key_info(key) {
                fail(
                    verdict,
                    "the certificate is not for the device's key".into(),
                );
            }
        }
        Err(e) => fail(verdict, format!("unreadable certificate: {e}")),
    }
    let ca = match mode {
        "iot" => env("CVM_DEVICE_CA"),
        _ => env("CVM_PCA_CA_CERT"),
    };
    if let Err(e) = verify_chain(&shared.dir, serial, pem, Path::new(&ca)) {
        fail(verdict, format!("does not chain to the {mode} CA: {e}"));
    }

    // In AWS IoT: ACTIVE, on the thing, with the policy; the only ACTIVE one for the serial.
    match shared
        .iot
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
    {
        Ok(d) => {
            let status = d
                .certificate_description()
                .and_then(|c| c.status())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            if status != "ACTIVE" {
                fail(verdict, format!("delivered certificate is {status} in IoT"));
            }
        }
        Err(e) => fail(
            verdict,
            format!("delivered certificate is not in IoT: {}", service_code(&e)),
        ),
    }
    let thing = delivered["thingName"].as_str().unwrap_or_default();
    let principals = shared
        .iot
        .list_thing_principals()
        .thing_name(thing)
        .send()
        .await
        .map(|p| p.principals().to_vec())
        .unwrap_or_default();
    if !principals.iter().any(|p| p == arn) {
        fail(
            verdict,
            format!("not attached to thing {thing}: {principals:?}"),
        );
    }
    let policy = delivered["policyName"].as_str().unwrap_or_default();
    let policies: Vec<String> = shared
        .iot
        .list_attached_policies()
        .target(arn)
        .send()
        .await
        .map(|p| {
            p.policies()
                .iter()
                .filter_map(|p| p.policy_name().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !policies.iter().any(|p| p == policy) {
        fail(
            verdict,
            format!("policy {policy} not attached: {policies:?}"),
        );
    }
    if active != [id.to_owned()] {
        fail(
            verdict,
            format!("ACTIVE certificates for the serial: {active:?}, delivered {id}"),
        );
    }
    if record_status != "issued" || record.get("certificateId").map(String::as_str) != Some(id) {
        fail(
            verdict,
            format!(
                "the record ({record_status}, certificateId {:?}) does not name the delivered certificate",
                record.get("certificateId")
            ),
        );
    }
}

fn service_code<E: aws_sdk_iot::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_iot::error::SdkError<E, R>,
) -> String {
    e.as_service_error()
        .and_then(|e| e.code())
        .unwrap_or("no service error code")
        .to_owned()
}

fn verify_chain(dir: &Path, serial: &str, pem: &str, ca: &Path) -> Result<(), String> {
    let path = dir.join(format!("{serial}.pem"));
    std::fs::write(&path, pem).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(&path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// Every certificate in AWS IoT whose subject CN is `serial`, with its status.
async fn certificates_of(shared: &Shared, serial: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut marker = None;
    loop {
        let page = shared
            .iot
            .list_certificates()
            .set_marker(marker.clone())
            .page_size(250)
            .send()
            .await
            .unwrap();
        for c in page.certificates() {
            let (Some(id), Some(status)) = (c.certificate_id(), c.status()) else {
                continue;
            };
            if c.creation_date()
                .is_some_and(|t| t.secs() < shared.not_before)
            {
                continue;
            }
            let known = shared.common_names.lock().unwrap().get(id).cloned();
            let cn = match known {
                Some(cn) => cn,
                None => {
                    let Ok(d) = shared
                        .iot
                        .describe_certificate()
                        .certificate_id(id)
                        .send()
                        .await
                    else {
                        continue; // deleted meanwhile
                    };
                    let cn = d
                        .certificate_description()
                        .and_then(|c| c.certificate_pem())
                        .and_then(|pem| x509_cert::Certificate::from_pem(pem.as_bytes()).ok())
                        .and_then(|cert| {
                            cert.tbs_certificate()
                                .subject()
                                .common_name()
                                .ok()
                                .flatten()
                                .map(|s| s.value().into_owned())
                        });
                    shared
                        .common_names
                        .lock()
                        .unwrap()
                        .insert(id.to_owned(), cn.clone());
                    cn
                }
            };
            if cn.as_deref() == Some(serial) {
                found.push((id.to_owned(), status.as_str().to_owned()));
            }
        }
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            return found;
        }
    }
}

/// The record's string attributes, read strongly consistently (whatever its schema, a
/// certificate the record knows is one of these values).
async fn record_strings(shared: &Shared, serial: &str) -> BTreeMap<String, String> {
    fn flatten(prefix: &str, v: &AttributeValue, out: &mut BTreeMap<String, String>) {
        match v {
            AttributeValue::S(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            AttributeValue::M(m) => {
                for (k, v) in m {
                    flatten(&format!("{prefix}.{k}"), v, out);
                }
            }
            AttributeValue::L(l) => {
                for (i, v) in l.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), v, out);
                }
            }
            AttributeValue::Ss(l) => {
                for (i, s) in l.iter().enumerate() {
                    out.insert(format!("{prefix}[{i}]"), s.clone());
                }
            }
            _ => {}
        }
    }
    let item = shared
        .dynamodb
        .get_item()
        .table_name(&shared.table)
        .key("serial", AttributeValue::S(serial.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (k, v) in item.item().cloned().unwrap_or_default() {
        flatten(&k, &v, &mut out);
    }
    out
}

fn cell(outcome: &Outcome) -> String {
    let mut text = if outcome.verdict.failures.is_empty() {
        "pass".to_owned()
    } else {
        "FAIL".to_owned()
    };
    if !outcome.verdict.leftovers.is_empty() {
        text.push_str(&format!(" +{} left", outcome.verdict.leftovers.len()));
    }
    text.push_str(&format!(" ({:.0}s)", outcome.took.as_secs_f64()));
    text
}

/// One row per step (in workflow order), one column per fault; outcomes come in case order.
fn print_table(outcomes: &[Outcome]) {
    println!(
        "\n{:<8} {:<40} {:<18} {:<18} {:<18}",
        "mode", "operation#occurrence", "throttled", "5xx", "answer lost"
    );
    for row in outcomes.chunk_by(|a, b| a.mode == b.mode && a.step == b.step) {
        let mut cells: [String; 3] = Default::default();
        for o in row {
            cells[FAULTS.iter().position(|f| *f == o.fault).unwrap()] = cell(o);
        }
        println!(
            "{:<8} {:<40} {:<18} {:<18} {:<18}",
            row[0].mode,
            row[0].step.to_string(),
            cells[0],
            cells[1],
            cells[2]
        );
    }
}

fn print_details(o: &Outcome) {
    println!(
        "\n--- {} {} {}: answers {:?}",
        o.mode,
        o.step,
        o.fault.as_str(),
        o.answers
    );
    for f in &o.verdict.failures {
        println!("  - {f}");
    }
    if !o.verdict.leftovers.is_empty() {
        println!("  leftovers: {:?}", o.verdict.leftovers);
    }
    println!("  proxy log:");
    print_log(&o.log);
    println!("  service warnings:");
    for w in &o.warnings {
        println!("    {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_aws_call_of_a_vend_survives_every_fault() {
    let started = Instant::now();
    let sdk = cvm_aws::load_sdk_config().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(Shared {
        iot: aws_sdk_iot::Client::new(&sdk),
        dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
        http: http(),
        moto: env("AWS_ENDPOINT_URL").parse().unwrap(),
        table: env("CVM_TABLE_NAME"),
        dir: dir.path().to_path_buf(),
        common_names: Mutex::new(HashMap::new()),
        not_before: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            - 60,
    });

    let mut cases = Vec::new();
    for mode in modes() {
        let steps = discover(&shared, mode).await;
        assert!(!steps.is_empty(), "{mode}: no AWS call seen");
        for step in steps {
            for fault in FAULTS {
                cases.push((mode, step.clone(), fault));
            }
        }
    }
    let parallel = std::env::var("CVM_FAULT_MATRIX_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14usize)
        .max(1);
    println!(
        "\n{} cases, {parallel} at a time (discovery took {:.1}s)",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(mode, step, fault)| {
            let shared = shared.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                run_case(shared, mode, step, fault).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }

    print_table(&outcomes);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.verdict.failures.is_empty())
        .collect();
    let leftovers: usize = outcomes.iter().map(|o| o.verdict.leftovers.len()).sum();
    println!(
        "\n{} of {} cases failed, {leftovers} leftover certificates, {:.1}s",
        failed.len(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    // What happened in every case that failed or left something behind.
    for o in outcomes
        .iter()
        .filter(|o| !o.verdict.failures.is_empty() || !o.verdict.leftovers.is_empty())
    {
        print_details(o);
    }
    assert!(
        failed.is_empty(),
        "{} fault cases broke the invariant: {:?}",
        failed.len(),
        failed
            .iter()
            .map(|o| format!("{} {} {}", o.mode, o.step, o.fault.as_str()))
            .collect::<Vec<_>>()
    );
}
