//! `cvm-bench`: the figures of `make bench`, each next to its reference measured in the same
//! run, in one table (stdout and `target/bench/report.md`).
//!
//! 1. cold start of the release bootstraps under a loopback Lambda Runtime API, next to a
//!    hello-world `lambda_runtime` function, with the functions' AWS calls through TLS
//!    proxies that add latency and a handshake delay;
//! 2. the vend's critical path: latency and sequential AWS round trips, next to the same
//!    workflow with its calls serialised;
//! 3. throughput under AWS's quotas with 30 concurrent `cvm-device enroll` processes;
//! 4. the certificate provider's latency (from the `provider_latency` example's output);
//! 5. bootstrap sizes and peak memory over warm invocations;
//! 6. cost per device from the measured duration and call counts.
//!
//! Run by `tests/bench.sh`, which builds what it needs first.

mod forwarder;
mod lambda;
mod prices;
mod runtime_api;
mod stack;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use cvm_tests::fault_proxy::limits::{RateLimit, AWS_DEFAULT_QUOTAS};
use cvm_tests::fault_proxy::{LogEntry, Proxy, ProxyConfig, TlsSettings};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use lambda::{Environment, Function};
use stack::{Moto, Tools};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "The project's benchmarks, as one table of ratios measured side by side")]
struct Args {
    /// The repository root.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where the report, logs and the private emulator's files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Milliseconds added to every AWS call (L).
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Milliseconds added to every new TLS connection to AWS, cold-start part.
    #[arg(long, default_value_t = 100)]
    handshake_ms: u64,
    /// Cold starts per configuration.
    #[arg(long, default_value_t = 5)]
    cold_runs: usize,
    /// Warm invocations after each cold start.
    #[arg(long, default_value_t = 5)]
    warm_per_run: usize,
    /// Vends per issuer and mode on the critical-path part.
    #[arg(long, default_value_t = 100)]
    path_vends: usize,
    /// Warm invocations of each function for peak memory.
    #[arg(long, default_value_t = 1000)]
    rss_invocations: usize,
    /// Enrollments and concurrent device processes of the throughput part.
    #[arg(long, default_value_t = 300)]
    enrollments: usize,
    #[arg(long, default_value_t = 30)]
    concurrency: usize,
    /// A second throughput run with CreateCertificateFromCsr and AttachPolicy limited to
    /// this rate (0: none), so the quota binds even where the machine cannot drive 15/s.
    #[arg(long, default_value_t = 5.0)]
    scaled_quota: f64,
    #[arg(long, default_value_t = 100)]
    scaled_enrollments: usize,
    /// Serials of the bulk-enrollment part (`cvm-admin enroll --csv`), timed next to a tenth
    /// of them; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    bulk: usize,
    /// The output of the cert-provider example `provider_latency`.
    #[arg(long)]
    provider_latency: Option<PathBuf>,
    /// Bootstraps built another way (e.g. another release profile), measured in the same
    /// run next to the project's for size, peak memory and warm duration: NAME=PATH with
    /// NAME `vend` or `cert-provider`; repeatable.
    #[arg(long = "compare", value_parser = parse_compare)]
    compare: Vec<(String, PathBuf)>,
}

fn parse_compare(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    if !["vend", "cert-provider"].contains(&name) {
        return Err(format!("{name:?}: vend or cert-provider"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_ms(d: Duration) -> String {
    let v = ms(d);
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The p-quantile (nearest rank) of the samples.
fn quantile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn median(samples: &[Duration]) -> Duration {
    quantile(samples, 0.5)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

pub async fn http_get_json(url: &str) -> Result<serde_json::Value, Error> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// Sequential AWS round trips of one request: calls whose time in the proxy overlaps (by
/// more than 2 ms, the log's arrival times being whole milliseconds) count once.
fn round_trips(entries: &[LogEntry]) -> usize {
    let mut spans: Vec<(f64, f64)> = entries
        .iter()
        .map(|e| (e.at_ms as f64, e.at_ms as f64 + e.elapsed_ms))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rounds = 0;
    let mut end = f64::NEG_INFINITY;
    for (start, stop) in spans {
        if start >= end - 2.0 {
            rounds += 1;
            end = stop;
        } else {
            end = end.max(stop);
        }
    }
    rounds
}

/// Time during which at least one AWS call of the request was in the proxy, in ms.
fn time_in_aws(entries: &[LogEntry]) -> f64 {
    let mut spans: Vec<(f64, f64)> = entries
        .iter()
        .map(|e| (e.at_ms as f64, e.at_ms as f64 + e.elapsed_ms))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (start, stop) in spans {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(stop))),
            Some((s, e)) => {
                total += e - s;
                Some((start, stop))
            }
            None => Some((start, stop)),
        };
    }
    if let Some((s, e)) = current {
        total += e - s;
    }
    total
}

// ---------------------------------------------------------------------------------------
// The table

struct Row {
    item: &'static str,
    figure: String,
    measured: String,
    reference: String,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        item: &'static str,
        figure: impl Into<String>,
        measured: impl Into<String>,
        reference: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            item,
            figure: figure.into(),
            measured: measured.into(),
            reference: reference.into(),
            target: target.into(),
            met,
        });
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn render(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        let _ = writeln!(
            out,
            "| # | figure | measured | reference, same run | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "-",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.item, r.figure, r.measured, r.reference, r.target, met
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Serials and events

struct Devices {
    tokens: HashMap<String, String>,
    next: HashMap<&'static str, usize>,
    counter: usize,
}

impl Devices {
    fn names(group: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("BENCH-{group}-{i:05}")).collect()
    }

    /// The next unused serial of a group, and its token.
    fn take(&mut self, group: &'static str) -> Result<(String, String), Error> {
        let i = self.next.entry(group).or_insert(0);
        *i += 1;
        let serial = format!("BENCH-{group}-{:05}", *i);
        let token = self
            .tokens
            .get(&serial)
            .cloned()
            .ok_or_else(|| format!("serial group {group} exhausted at {serial}"))?;
        Ok((serial, token))
    }

    fn vend_events(&mut self, group: &'static str, n: usize) -> Result<VecDeque<Bytes>, Error> {
        let mut events = VecDeque::with_capacity(n);
        for _ in 0..n {
            let (serial, token) = self.take(group)?;
            self.counter += 1;
            events.push_back(lambda::vend_event(self.counter, &serial, &token)?);
        }
        Ok(events)
    }

    fn provider_events(&mut self, n: usize) -> Result<VecDeque<Bytes>, Error> {
        let mut events = VecDeque::with_capacity(n);
        for _ in 0..n {
            self.counter += 1;
            events.push_back(lambda::provider_event(self.counter)?);
        }
        Ok(events)
    }
}

fn hello_events(n: usize) -> VecDeque<Bytes> {
    (0..n)
        .map(|_| Bytes::from_static(br#"{"name":"bench"}"#))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Cold start

struct ColdSample {
    init: Duration,
    init_calls: usize,
    first: Duration,
    warm: Vec<Duration>,
    failures: usize,
}

struct ColdSummary {
    label: String,
    init: Duration,
    init_calls: usize,
    first: Duration,
    warm: Duration,
    failures: usize,
}

impl ColdSummary {
    fn of(label: &str, samples: &[ColdSample]) -> Self {
        let warm: Vec<Duration> = samples.iter().flat_map(|s| s.warm.clone()).collect();
        Self {
            label: label.to_owned(),
            init: median(&samples.iter().map(|s| s.init).collect::<Vec<_>>()),
            init_calls: samples.iter().map(|s| s.init_calls).max().unwrap_or(0),
            first: median(&samples.iter().map(|s| s.first).collect::<Vec<_>>()),
            warm: median(&warm),
            failures: samples.iter().map(|s| s.failures).sum(),
        }
    }
}

fn succeeded(function: &Function, outcome: &runtime_api::Outcome) -> bool {
    match function.name {
        "vend" => lambda::vend_status(outcome) == Some(201),
        "cert-provider" => lambda::provider_succeeded(outcome),
        _ => outcome.ok,
    }
}

async fn cold_starts(
    function: &Function,
    runs: usize,
    warm_per_run: usize,
    events: &mut VecDeque<Bytes>,
    proxies: &[&Proxy],
    log: &Path,
) -> Result<Vec<ColdSample>, Error> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        for p in proxies {
            p.reset();
        }
        let env = Environment::start(function, log).await?;
        let init_calls = proxies.iter().map(|p| p.log().len()).sum();
        let mut failures = 0;
        let first_event = events.pop_front().ok_or("out of events")?;
        let first = env.invoke(first_event).await?;
        if !succeeded(function, &first) {
            failures += 1;
        }
        let mut warm = Vec::new();
        for _ in 0..warm_per_run {
            let event = events.pop_front().ok_or("out of events")?;
            let outcome = env.invoke(event).await?;
            if !succeeded(function, &outcome) {
                failures += 1;
            }
            warm.push(outcome.duration);
        }
        samples.push(ColdSample {
            init: env.init,
            init_calls,
            first: first.duration,
            warm,
            failures,
        });
        drop(env);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// 2. Critical path

struct PathRun {
    latencies: Vec<Duration>,
    /// The latency less the emulator's own time beyond the injected latency on the critical
    /// path (moto's processing stands for part of AWS's round trip, which L already is).
    service_latencies: Vec<Duration>,
    rounds: Vec<usize>,
    calls: Vec<usize>,
    operations: BTreeMap<String, usize>,
    failures: usize,
}

async fn critical_path(
    function: &Function,
    proxy: &Proxy,
    events: &mut VecDeque<Bytes>,
    warm_up: usize,
    n: usize,
    latency: Duration,
    log: &Path,
) -> Result<PathRun, Error> {
    let env = Environment::start(function, log).await?;
    for _ in 0..warm_up {
        let event = events.pop_front().ok_or("out of events")?;
        env.invoke(event).await?;
    }
    let mut run = PathRun {
        latencies: Vec::new(),
        service_latencies: Vec::new(),
        rounds: Vec::new(),
        calls: Vec::new(),
        operations: BTreeMap::new(),
        failures: 0,
    };
    for _ in 0..n {
        let event = events.pop_front().ok_or("out of events")?;
        proxy.reset();
        let outcome = env.invoke(event).await?;
        let entries = proxy.log();
        if lambda::vend_status(&outcome) != Some(201) {
            run.failures += 1;
            continue;
        }
        let rounds = round_trips(&entries);
        let emulator_ms = (time_in_aws(&entries) - (rounds as f64) * ms(latency)).max(0.0);
        run.latencies.push(outcome.duration);
        run.service_latencies.push(
            outcome
                .duration
                .saturating_sub(Duration::from_secs_f64(emulator_ms / 1000.0)),
        );
        run.rounds.push(rounds);
        run.calls.push(entries.len());
        for e in &entries {
            *run.operations
                .entry(format!("{}:{}", e.service, e.operation))
                .or_insert(0) += 1;
        }
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// 3. Throughput under quota

struct Enrollment {
    ok: bool,
    ended: Instant,
    retries: usize,
    waits: Vec<f64>,
    codes: Vec<String>,
}

/// `cvm-device: <code> (<status>); retrying in <s> s`
fn parse_retry(line: &str) -> Option<(String, f64)> {
    let rest = line.strip_prefix("cvm-device: ")?;
    let (code, rest) = rest.split_once(" (")?;
    let wait = rest.split("retrying in ").nth(1)?.strip_suffix(" s")?;
    Some((code.to_owned(), wait.trim().parse().ok()?))
}

async fn enroll_device(
    device: &Path,
    url: &str,
    ca: &Path,
    dir: &Path,
    serial: &str,
    token: &str,
) -> Result<Enrollment, Error> {
    std::fs::create_dir_all(dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let output = tokio::process::Command::new(device)
        .arg("enroll")
        .args(["--url", url, "--serial", serial])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--ca")
        .arg(ca)
        .arg("--dir")
        .arg(dir.join("enrollment"))
        .arg("--insecure-software-key")
        .env_remove("CVM_CONFIG")
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        std::fs::write(dir.join("cvm-device.stderr"), stderr.as_bytes())?;
        progress(format!(
            "{serial}: cvm-device enroll failed ({}): {}",
            output.status,
            stderr.lines().last().unwrap_or("")
        ));
    }
    let mut waits = Vec::new();
    let mut codes = Vec::new();
    for (code, wait) in stderr.lines().filter_map(parse_retry) {
        waits.push(wait);
        codes.push(code);
    }
    Ok(Enrollment {
        ok: output.status.success(),
        ended: Instant::now(),
        retries: waits.len(),
        waits,
        codes,
    })
}

struct QuotaRun {
    successes: usize,
    failures: usize,
    wall: Duration,
    /// When each enrollment that succeeded ended, from the start.
    completions: Vec<Duration>,
    retries: usize,
    waits: Vec<f64>,
    codes: BTreeMap<String, usize>,
    rate_limited: BTreeMap<String, usize>,
    forwarded: BTreeMap<String, usize>,
}

#[allow(clippy::too_many_arguments)]
async fn throughput(
    tools: &Tools,
    moto: &Moto,
    upstream: &str,
    devices: &mut Devices,
    work: &Path,
    latency: Duration,
    group: &'static str,
    enrollments: usize,
    concurrency: usize,
    binding_rate: f64,
) -> Result<(QuotaRun, Vec<String>), Error> {
    let mut limits = HashMap::new();
    for (operation, rate) in AWS_DEFAULT_QUOTAS {
        limits.insert(
            (*operation).to_owned(),
            RateLimit {
                rate: *rate,
                burst: None,
            },
        );
    }
    // The IoT path's binding quotas, scaled down when asked (a machine that cannot drive 15
    // enrollments a second still shows how the service behaves at its quota).
    for operation in ["iot:CreateCertificateFromCsr", "iot:AttachPolicy"] {
        limits.insert(
            operation.to_owned(),
            RateLimit {
                rate: binding_rate,
                burst: None,
            },
        );
    }
    limits.insert(
        "iot:AttachThingPrincipal".to_owned(),
        RateLimit {
            rate: 100.0,
            burst: None,
        },
    );
    let mut config = ProxyConfig::local(upstream.parse()?);
    config.control = None;
    config.latency = latency;
    config.limits = limits;
    let proxy = Proxy::start(config).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(work.join("vend-local.log"))?;
    let mut service = tokio::process::Command::new(tools.root.join("target/debug/vend-local"))
        .envs(stack::aws_env(&proxy.url()))
        .env("CVM_TABLE_NAME", stack::TABLE)
        .env("CVM_DEFAULT_POLICY_NAME", stack::POLICY)
        .env("CVM_ROLE_ALIAS", stack::ROLE_ALIAS)
        .env("CVM_CA_CERTIFICATES_FILE", moto.pki.join("device-ca.pem"))
        .env(
            "CVM_IOT_DATA_ENDPOINT",
            "bench-ats.iot.us-east-1.amazonaws.com",
        )
        .env(
            "CVM_IOT_CREDENTIALS_ENDPOINT",
            "bench.credentials.iot.us-east-1.amazonaws.com",
        )
        .env("CVM_LOCAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("CVM_LOCAL_TLS_CERT", moto.pki.join("api-server.pem"))
        .env("CVM_LOCAL_TLS_KEY", moto.pki.join("api-server.key"))
        .env("RUST_LOG", "warn")
        // The quotas the service paces its Retry-After by, when it reads them from the
        // environment: the proxy's, also when scaled down.
        .env(
            "CVM_AWS_QUOTAS",
            format!("iot:CreateCertificateFromCsr={binding_rate},iot:AttachPolicy={binding_rate}"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let mut up = false;
    for _ in 0..150 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        let _ = service.start_kill();
        return Err("vend-local did not come up (see target/bench/vend-local.log)".into());
    }

    let url = format!("https://127.0.0.1:{port}");
    let ca = moto.pki.join("api-ca.pem");
    let device = tools.root.join("target/debug/cvm-device");
    let mut queue = VecDeque::new();
    let mut serials = Vec::new();
    for _ in 0..enrollments {
        let (serial, token) = devices.take(group)?;
        serials.push(serial.clone());
        queue.push_back((serial, token));
    }
    let queue = Arc::new(Mutex::new(queue));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let results = results.clone();
        let (device, url, ca) = (device.clone(), url.clone(), ca.clone());
        let devices_dir = work.join("devices");
        workers.push(tokio::spawn(async move {
            loop {
                let Some((serial, token)) = queue.lock().await.pop_front() else {
                    break;
                };
                let dir = devices_dir.join(&serial);
                let outcome = enroll_device(&device, &url, &ca, &dir, &serial, &token).await;
                results.lock().await.push(outcome);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let _ = service.start_kill();
    let results = std::mem::take(&mut *results.lock().await);
    let mut run = QuotaRun {
        successes: 0,
        failures: 0,
        wall: Duration::ZERO,
        completions: Vec::new(),
        retries: 0,
        waits: Vec::new(),
        codes: BTreeMap::new(),
        rate_limited: BTreeMap::new(),
        forwarded: BTreeMap::new(),
    };
    let mut last = started;
    for r in results {
        match r {
            Ok(e) => {
                if e.ok {
                    run.successes += 1;
                    last = last.max(e.ended);
                    run.completions
                        .push(e.ended.saturating_duration_since(started));
                } else {
                    run.failures += 1;
                }
                run.retries += e.retries;
                run.waits.extend(e.waits);
                for c in e.codes {
                    *run.codes.entry(c).or_insert(0) += 1;
                }
            }
            Err(e) => {
                progress(format!("a device process could not run: {e}"));
                run.failures += 1;
            }
        }
    }
    run.wall = last.saturating_duration_since(started);
    for e in proxy.log() {
        let key = format!("{}:{}", e.service, e.operation);
        let bucket = if e.action == "rate-limited" {
            &mut run.rate_limited
        } else {
            &mut run.forwarded
        };
        *bucket.entry(key).or_insert(0) += 1;
    }
    Ok((run, serials))
}

/// Enrollments per second between the 10th and the 90th percentile of completions: the rate
/// the service sustains, without the start (a full token bucket) and the tail (the last
/// devices' retries).
fn steady_rate(completions: &[Duration]) -> Option<f64> {
    let mut v = completions.to_vec();
    v.sort();
    let (low, high) = (v.len() / 10, v.len() * 9 / 10);
    let span = v.get(high)?.checked_sub(*v.get(low)?)?.as_secs_f64();
    (high > low && span > 0.0).then(|| (high - low) as f64 / span)
}

/// ACTIVE certificates per serial in moto (by the certificate's subject CN).
fn active_certificates(data: &serde_json::Value) -> HashMap<String, usize> {
    let mut per_serial = HashMap::new();
    let empty = Vec::new();
    let certs = data["iot"]["FakeCertificate"].as_array().unwrap_or(&empty);
    for c in certs {
        if c["status"].as_str() != Some("ACTIVE") {
            continue;
        }
        let Some(pem) = c["certificate_pem"].as_str() else {
            continue;
        };
        if let Some(cn) = common_name(pem) {
            *per_serial.entry(cn).or_insert(0) += 1;
        }
    }
    per_serial
}

fn common_name(pem: &str) -> Option<String> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).ok()?;
    let cn = cert.tbs_certificate().subject().common_name().ok()??;
    Some(String::from(cn))
}

// ---------------------------------------------------------------------------------------
// 4. Provider latency (the example's table)

struct ProviderRow {
    delay: Duration,
    backoff: Duration,
    fixed: Option<Duration>,
}

fn parse_ms(text: &str) -> Option<Duration> {
    let v: f64 = text.trim().strip_suffix("ms")?.trim().parse().ok()?;
    Some(Duration::from_secs_f64(v / 1000.0))
}

/// Rows `| 100 ms | 115 ms / 130 ms (2 Get) | 1010 ms / 1011 ms (1 Get) |`.
fn parse_provider_latency(text: &str) -> Vec<ProviderRow> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            if cells.len() != 3 {
                return None;
            }
            let delay = parse_ms(cells[0])?;
            let first = |cell: &str| parse_ms(cell.split('/').next()?);
            Some(ProviderRow {
                delay,
                backoff: first(cells[1])?,
                fixed: first(cells[2]),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 6. Cost

/// The price of the n-th certificate issued in a month.
fn pca_price(certificates_this_month: u64) -> f64 {
    prices::PCA_CERTIFICATE_TIERS
        .iter()
        .find(|(tier_end, _)| certificates_this_month <= *tier_end)
        .map_or(0.0, |(_, price)| *price)
}

struct CostInputs {
    billed_ms: f64,
    memory_mb: f64,
    writes: f64,
    reads: f64,
    write_units_each: f64,
    registry_ops: f64,
    pca_certificates: f64,
}

fn cost_per_device(c: &CostInputs) -> (f64, String) {
    let lambda = prices::LAMBDA_REQUEST
        + prices::LAMBDA_ARM_GB_SECOND * (c.memory_mb / 1024.0) * (c.billed_ms / 1000.0);
    let api = prices::HTTP_API_REQUEST;
    let dynamo = c.writes * c.write_units_each * prices::DYNAMODB_WRITE_UNIT
        + c.reads * prices::DYNAMODB_READ_UNIT;
    let iot = c.registry_ops * prices::IOT_REGISTRY_OPERATION;
    let pca = c.pca_certificates * pca_price(1_000);
    let total = lambda + api + dynamo + iot + pca;
    let parts = format!(
        "Lambda ${lambda:.7} + HTTP API ${api:.7} + DynamoDB ${dynamo:.7} + IoT registry ${iot:.7}{}",
        if c.pca_certificates > 0.0 {
            format!(" + Private CA ${pca:.3}")
        } else {
            String::new()
        }
    );
    (total, parts)
}

// ---------------------------------------------------------------------------------------

fn env_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn tls_proxy(
    upstream: &str,
    pki: &Path,
    latency: Duration,
    handshake: Duration,
) -> Result<Proxy, Error> {
    let mut config = ProxyConfig::local(upstream.parse()?);
    config.control = None;
    config.latency = latency;
    config.tls = Some(TlsSettings {
        cert_chain: pki.join("api-server.pem"),
        key: pki.join("api-server.key"),
        handshake_delay: handshake,
    });
    Proxy::start(config).await
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpus} CPUs ({model}), {mem_gib:.1} GiB")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let root = std::fs::canonicalize(&args.root)?;
    let work = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    std::fs::create_dir_all(&work)?;
    // A device directory left by an earlier run holds an enrollment, and `cvm-device enroll`
    // would take it for its own and succeed without asking: every run starts without them.
    for stale in ["devices", "bulk"] {
        let path = work.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
    }
    let run_started = Instant::now();
    let tools = Tools::new(&root);
    let latency = Duration::from_millis(args.latency_ms);
    let handshake = Duration::from_millis(args.handshake_ms);
    let mut report = Report::default();

    let lambda_dir = root.join("target/lambda");
    let bootstrap = |name: &str| lambda_dir.join(name).join("bootstrap");
    for name in ["vend", "cert-provider", "provisioning-hook", "lambda-hello"] {
        if !bootstrap(name).exists() {
            return Err(format!(
                "{} is missing: build it with `cargo lambda build --release` (tests/bench.sh does)",
                bootstrap(name).display()
            )
            .into());
        }
    }

    progress("starting a private moto server and enrolling the benchmark's serials");
    let moto = Moto::start(&tools, &work).await?;
    // Every proxy below forwards to moto through this (see forwarder.rs).
    let moto_keep_alive = forwarder::Forwarder::routed(
        moto.url.parse()?,
        vec![("dynamodb".to_owned(), moto.dynamodb_url.parse()?)],
        false,
    )
    .await?;
    let upstream = moto_keep_alive.url();
    let cold_vends = 3 * args.cold_runs * (1 + args.warm_per_run);
    let groups: [(&str, usize); 5] = [
        ("COLD", cold_vends),
        ("PATH", 4 * (args.path_vends + 3)),
        ("RSS", args.rss_invocations * (1 + args.compare.len())),
        ("QUOTA", args.enrollments),
        ("SCALED", args.scaled_enrollments),
    ];
    let mut all = Vec::new();
    for (group, n) in groups {
        all.extend(Devices::names(group, n));
    }
    let tokens = moto.enroll(&tools, &work, &all).await?;
    let mut devices = Devices {
        tokens,
        next: HashMap::new(),
        counter: 0,
    };

    // The functions trust Amazon's roots, built in, and what SSL_CERT_FILE adds: here the
    // local CA of the TLS proxies standing in for AWS's endpoints.
    let bundle = moto.pki.join("api-ca.pem").to_string_lossy().into_owned();
    let device_ca = moto
        .pki
        .join("device-ca.pem")
        .to_string_lossy()
        .into_owned();
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;

    let vend_base = |endpoint_env: Vec<(String, String)>| Function {
        name: "vend",
        bootstrap: bootstrap("vend"),
        env: [
            endpoint_env,
            env_pairs(&[
                ("AWS_REGION", stack::REGION),
                ("AWS_ACCESS_KEY_ID", "local"),
                ("AWS_SECRET_ACCESS_KEY", "local"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("SSL_CERT_FILE", &bundle),
                ("CVM_TABLE_NAME", stack::TABLE),
                ("CVM_DEFAULT_POLICY_NAME", stack::POLICY),
                ("CVM_ROLE_ALIAS", stack::ROLE_ALIAS),
                ("CVM_CA_CERTIFICATES_FILE", &device_ca),
                (
                    "CVM_IOT_DATA_ENDPOINT",
                    "bench-ats.iot.us-east-1.amazonaws.com",
                ),
                (
                    "CVM_IOT_CREDENTIALS_ENDPOINT",
                    "bench.credentials.iot.us-east-1.amazonaws.com",
                ),
                ("CVM_STAGE", "bench"),
            ]),
        ]
        .concat(),
    };
    let provider_base = |endpoint_env: Vec<(String, String)>| Function {
        name: "cert-provider",
        bootstrap: bootstrap("cert-provider"),
        env: [
            endpoint_env,
            env_pairs(&[
                ("AWS_REGION", stack::REGION),
                ("AWS_ACCESS_KEY_ID", "local"),
                ("AWS_SECRET_ACCESS_KEY", "local"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("SSL_CERT_FILE", &bundle),
                ("CVM_PCA_ARN", &moto.pca_arn),
                ("CVM_STAGE", "bench"),
            ]),
        ]
        .concat(),
    };
    let hello = Function {
        name: "lambda-hello",
        bootstrap: bootstrap("lambda-hello"),
        env: Vec::new(),
    };

    // ----------------------------------------------------------------------------------
    // 1. Cold start
    progress(format!(
        "cold starts: {} runs per configuration, AWS calls through TLS proxies (L = {} ms, handshake + {} ms)",
        args.cold_runs, args.latency_ms, args.handshake_ms
    ));
    let dynamo_proxy = tls_proxy(&upstream, &moto.pki, latency, handshake).await?;
    let iot_proxy = tls_proxy(&upstream, &moto.pki, latency, handshake).await?;
    let pca_proxy = tls_proxy(&upstream, &moto.pki, latency, handshake).await?;
    let per_service = vec![
        ("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), dynamo_proxy.url()),
        ("AWS_ENDPOINT_URL_IOT".to_owned(), iot_proxy.url()),
        ("AWS_ENDPOINT_URL_ACM_PCA".to_owned(), pca_proxy.url()),
    ];
    let proxies = [&dynamo_proxy, &iot_proxy, &pca_proxy];
    let cold_log = logs.join("cold-start.log");

    let mut hello_events_q = hello_events(args.cold_runs * (1 + args.warm_per_run));
    let hello_cold = ColdSummary::of(
        "hello-world (no SDK)",
        &cold_starts(
            &hello,
            args.cold_runs,
            args.warm_per_run,
            &mut hello_events_q,
            &[],
            &cold_log,
        )
        .await?,
    );
    let vend_cold_fn = vend_base(per_service.clone());
    let mut summaries = Vec::new();
    for (label, function) in [
        (
            "vend, no AWS call at init (endpoints configured)",
            vend_cold_fn.with("CVM_WARM_UP", "off"),
        ),
        (
            "vend, endpoint lookup at init (endpoints not configured)",
            vend_cold_fn
                .without("CVM_IOT_DATA_ENDPOINT")
                .without("CVM_IOT_CREDENTIALS_ENDPOINT")
                .with("CVM_WARM_UP", "off"),
        ),
        (
            "vend, warm-up at init (CVM_WARM_UP=on, the default)",
            vend_cold_fn.with("CVM_WARM_UP", "on"),
        ),
    ] {
        let mut events = devices.vend_events("COLD", args.cold_runs * (1 + args.warm_per_run))?;
        let samples = cold_starts(
            &function,
            args.cold_runs,
            args.warm_per_run,
            &mut events,
            &proxies,
            &cold_log,
        )
        .await?;
        summaries.push(ColdSummary::of(label, &samples));
    }
    let provider_cold_fn = provider_base(per_service.clone());
    for (label, function) in [
        (
            "cert-provider, no AWS call at init (algorithm set, CVM_WARM_UP=off)",
            provider_cold_fn
                .with("CVM_SIGNING_ALGORITHM", "SHA256WITHRSA")
                .with("CVM_WARM_UP", "off"),
        ),
        (
            "cert-provider, warm-up at init (algorithm set, CVM_WARM_UP=on, the default)",
            provider_cold_fn.with("CVM_SIGNING_ALGORITHM", "SHA256WITHRSA"),
        ),
    ] {
        let mut events = devices.provider_events(args.cold_runs * (1 + args.warm_per_run))?;
        let samples = cold_starts(
            &function,
            args.cold_runs,
            args.warm_per_run,
            &mut events,
            &proxies,
            &cold_log,
        )
        .await?;
        summaries.push(ColdSummary::of(label, &samples));
    }
    drop((dynamo_proxy, iot_proxy, pca_proxy));

    report.row(
        "1",
        "init, exec to first /next: hello-world (reference)",
        fmt_ms(hello_cold.init),
        "-",
        "-",
        None,
    );
    for s in &summaries {
        let init_ratio = ratio(s.init, hello_cold.init);
        let first_ratio = ratio(s.first, s.warm);
        report.row(
            "1",
            format!("init: {} ({} AWS calls)", s.label, s.init_calls),
            fmt_ms(s.init),
            format!("hello-world {}: ×{init_ratio:.1}", fmt_ms(hello_cold.init)),
            "≤ 1.5× hello-world",
            Some(init_ratio <= 1.5),
        );
        report.row(
            "1",
            format!(
                "first invocation: {}{}",
                s.label,
                if s.failures > 0 {
                    format!(" ({} failed)", s.failures)
                } else {
                    String::new()
                }
            ),
            fmt_ms(s.first),
            format!("warm {}: ×{first_ratio:.2}", fmt_ms(s.warm)),
            "≤ 2× warm",
            Some(first_ratio <= 2.0 && s.failures == 0),
        );
        // What the first caller waits on an on-demand cold start: init, then the request.
        report.row(
            "1",
            format!("cold request, init + first invocation: {}", s.label),
            fmt_ms(s.init + s.first),
            format!(
                "warm {}: ×{:.2}",
                fmt_ms(s.warm),
                ratio(s.init + s.first, s.warm)
            ),
            "-",
            None,
        );
    }
    report.note(format!(
        "Cold start: medians of {} fresh processes per configuration and {} warm invocations after each; \
         each service (DynamoDB, AWS IoT, Private CA) behind its own TLS proxy (own endpoint, own connections) \
         adding {} ms per call and {} ms per new TLS connection; the functions trust Amazon's roots and the proxies' CA (SSL_CERT_FILE).",
        args.cold_runs, args.warm_per_run, args.latency_ms, args.handshake_ms
    ));

    // ----------------------------------------------------------------------------------
    // 2. Critical path
    progress(format!(
        "critical path: {} vends per issuer, concurrent calls vs serialised, L = {} ms",
        args.path_vends, args.latency_ms
    ));
    let mut path_proxy_config = ProxyConfig::local(upstream.parse()?);
    path_proxy_config.control = None;
    path_proxy_config.latency = latency;
    let path_proxy = Proxy::start(path_proxy_config).await?;
    let serialiser = forwarder::Forwarder::start(path_proxy.url().parse()?, true).await?;
    let path_log = logs.join("critical-path.log");
    let mut vend_p50 = BTreeMap::new();
    let mut vend_ops = BTreeMap::new();
    for issuer in ["iot", "acm-pca"] {
        let mut function = vend_base(env_pairs(&[("AWS_ENDPOINT_URL", &path_proxy.url())]));
        if issuer == "acm-pca" {
            function = function
                .with("CVM_ISSUER", "acm-pca")
                .with("CVM_PCA_ARN", &moto.pca_arn)
                .with("CVM_SIGNING_ALGORITHM", "SHA256WITHRSA")
                .with("CVM_CA_CERTIFICATES_FILE", &moto.pca_ca.to_string_lossy());
        }
        let mut events = devices.vend_events("PATH", args.path_vends + 3)?;
        let concurrent = critical_path(
            &function,
            &path_proxy,
            &mut events,
            3,
            args.path_vends,
            latency,
            &path_log,
        )
        .await?;
        let serial_fn = function.with("AWS_ENDPOINT_URL", &serialiser.url());
        let mut events = devices.vend_events("PATH", args.path_vends + 3)?;
        let sequential = critical_path(
            &serial_fn,
            &path_proxy,
            &mut events,
            3,
            args.path_vends,
            latency,
            &path_log,
        )
        .await?;
        let p50 = quantile(&concurrent.latencies, 0.5);
        let service_p50 = quantile(&concurrent.service_latencies, 0.5);
        let p99 = quantile(&concurrent.latencies, 0.99);
        let s50 = quantile(&sequential.latencies, 0.5);
        let s99 = quantile(&sequential.latencies, 0.99);
        let mut rounds = concurrent.rounds.clone();
        rounds.sort_unstable();
        let rounds_median = rounds.get(rounds.len() / 2).copied().unwrap_or(0);
        let rounds_max = rounds.last().copied().unwrap_or(0);
        let mut calls = concurrent.calls.clone();
        calls.sort_unstable();
        let calls_median = calls.get(calls.len() / 2).copied().unwrap_or(0);
        let mut seq_rounds = sequential.rounds.clone();
        seq_rounds.sort_unstable();
        let seq_rounds_median = seq_rounds.get(seq_rounds.len() / 2).copied().unwrap_or(0);
        let budget = Duration::from_millis(args.latency_ms * rounds_median as u64 + 10);
        let failures = concurrent.failures + sequential.failures;
        report.row(
            "2",
            format!(
                "vend `{issuer}`: sequential AWS round trips (median / max of {}), {calls_median} calls",
                concurrent.rounds.len()
            ),
            format!("{rounds_median} / {rounds_max}"),
            format!("serialised: {seq_rounds_median}"),
            if issuer == "iot" { "≤ 5 (4 if possible)" } else { "-" },
            (issuer == "iot").then_some(rounds_max <= 5),
        );
        report.row(
            "2",
            format!(
                "vend `{issuer}`: latency p50 / p99{}",
                if failures > 0 {
                    format!(" ({failures} failed)")
                } else {
                    String::new()
                }
            ),
            format!("{} / {}", fmt_ms(p50), fmt_ms(p99)),
            format!(
                "serialised {} / {}: ×{:.2} faster at p50",
                fmt_ms(s50),
                fmt_ms(s99),
                ratio(s50, p50)
            ),
            "-",
            None,
        );
        report.row(
            "2",
            format!(
                "vend `{issuer}`: p50 less the emulator's own time beyond L on the critical path"
            ),
            fmt_ms(service_p50),
            format!("emulator time: {}", fmt_ms(p50.saturating_sub(service_p50))),
            format!(
                "p50 ≤ {rounds_median} × {} + 10 = {}",
                args.latency_ms,
                fmt_ms(budget)
            ),
            Some(service_p50 <= budget && failures == 0),
        );
        vend_p50.insert(issuer, p50);
        let per_vend: BTreeMap<String, f64> = concurrent
            .operations
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    *v as f64 / concurrent.latencies.len().max(1) as f64,
                )
            })
            .collect();
        report.note(format!(
            "Calls per vend (`{issuer}`): {}",
            per_vend
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        vend_ops.insert(issuer, per_vend);
    }
    drop(serialiser);
    drop(path_proxy);

    // ----------------------------------------------------------------------------------
    // 5. Size and memory
    progress(format!(
        "peak memory over {} warm invocations per function",
        args.rss_invocations
    ));
    let mut sizes = Vec::new();
    for name in ["vend", "cert-provider", "provisioning-hook", "lambda-hello"] {
        let size = std::fs::metadata(bootstrap(name))?.len();
        sizes.push((name.to_owned(), size));
    }
    let rss_dynamo = tls_proxy(&upstream, &moto.pki, Duration::ZERO, Duration::ZERO).await?;
    let rss_iot = tls_proxy(&upstream, &moto.pki, Duration::ZERO, Duration::ZERO).await?;
    let rss_pca = tls_proxy(&upstream, &moto.pki, Duration::ZERO, Duration::ZERO).await?;
    let rss_endpoints = vec![
        ("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), rss_dynamo.url()),
        ("AWS_ENDPOINT_URL_IOT".to_owned(), rss_iot.url()),
        ("AWS_ENDPOINT_URL_ACM_PCA".to_owned(), rss_pca.url()),
    ];
    let rss_log = logs.join("memory.log");
    let mut memory = Vec::new();
    let mut measured = vec![
        (
            String::new(),
            hello.clone(),
            hello_events(args.rss_invocations),
        ),
        (
            String::new(),
            vend_base(rss_endpoints.clone()),
            devices.vend_events("RSS", args.rss_invocations)?,
        ),
        (
            String::new(),
            provider_base(rss_endpoints.clone()).with("CVM_SIGNING_ALGORITHM", "SHA256WITHRSA"),
            devices.provider_events(args.rss_invocations)?,
        ),
    ];
    for (name, path) in &args.compare {
        let (function, events) = if name == "vend" {
            (
                vend_base(rss_endpoints.clone()),
                devices.vend_events("RSS", args.rss_invocations)?,
            )
        } else {
            (
                provider_base(rss_endpoints.clone()).with("CVM_SIGNING_ALGORITHM", "SHA256WITHRSA"),
                devices.provider_events(args.rss_invocations)?,
            )
        };
        sizes.push((
            format!("{name}, --compare {}", path.display()),
            std::fs::metadata(path)?.len(),
        ));
        measured.push((
            format!(" (--compare {})", path.display()),
            Function {
                bootstrap: path.clone(),
                ..function
            },
            events,
        ));
    }
    for (variant, function, mut events) in measured {
        let env = Environment::start(&function, &rss_log).await?;
        let (hwm_after_init, _) = env.memory_kib()?;
        let mut failures = 0;
        let mut durations = Vec::new();
        while let Some(event) = events.pop_front() {
            let outcome = env.invoke(event).await?;
            if !succeeded(&function, &outcome) {
                failures += 1;
            }
            durations.push(outcome.duration);
        }
        let (hwm, rss) = env.memory_kib()?;
        memory.push((
            format!("{}{variant}", function.name),
            hwm_after_init,
            hwm,
            rss,
            failures,
            median(&durations),
        ));
    }
    drop((rss_dynamo, rss_iot, rss_pca));

    // ----------------------------------------------------------------------------------
    // 3. Throughput under quota
    let mut runs = vec![("QUOTA", args.enrollments, 15.0)];
    if args.scaled_quota > 0.0 && args.scaled_enrollments > 0 {
        runs.push(("SCALED", args.scaled_enrollments, args.scaled_quota));
    }
    let mut quota_serials = Vec::new();
    for (group, enrollments, binding) in runs {
        progress(format!(
            "throughput: {enrollments} enrollments from {} concurrent cvm-device processes, binding quota {binding}/s",
            args.concurrency
        ));
        let (quota, serials) = throughput(
            &tools,
            &moto,
            &upstream,
            &mut devices,
            &work,
            latency,
            group,
            enrollments,
            args.concurrency,
            binding,
        )
        .await?;
        let data = moto.data().await?;
        let active = active_certificates(&data);
        let duplicates = serials
            .iter()
            .filter(|s| active.get(*s).copied().unwrap_or(0) > 1)
            .count();
        let without = serials
            .iter()
            .filter(|s| active.get(*s).copied().unwrap_or(0) == 0)
            .count();
        let rate = quota.successes as f64 / quota.wall.as_secs_f64().max(1e-9);
        let scaled = if group == "SCALED" {
            ", quota scaled down"
        } else {
            ""
        };
        report.row(
            "3",
            format!(
                "enrollments per second{scaled} ({} of {enrollments} enrolled in {:.1} s)",
                quota.successes,
                quota.wall.as_secs_f64()
            ),
            format!("{rate:.2}/s"),
            format!(
                "binding quota {binding}/s (CreateCertificateFromCsr, AttachPolicy): {:.0} %; \
                 steady state (10th to 90th percentile of completions): {}",
                100.0 * rate / binding,
                steady_rate(&quota.completions).map_or("-".to_owned(), |r| format!(
                    "{r:.2}/s, {:.0} %",
                    100.0 * r / binding
                ))
            ),
            format!("≥ 95 % of {binding}/s"),
            Some(rate >= 0.95 * binding),
        );
        report.row(
            "3",
            format!("failed enrollments{scaled} (device gave up after its retries)"),
            quota.failures.to_string(),
            "-",
            "0",
            Some(quota.failures == 0),
        );
        report.row(
            "3",
            format!("serials with more than one ACTIVE certificate{scaled} (moto)"),
            duplicates.to_string(),
            format!("{without} serials with none"),
            "0",
            Some(duplicates == 0),
        );
        let mut waits = quota.waits.clone();
        waits.sort_by(f64::total_cmp);
        let wait_summary = if waits.is_empty() {
            "no retries".to_owned()
        } else {
            let distinct: std::collections::BTreeSet<String> =
                waits.iter().map(|w| format!("{w:.1}")).collect();
            format!(
                "{} retries; Retry-After values (s): {}",
                quota.retries,
                distinct.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        report.row(
            "3",
            format!("service answers to overload{scaled}, as the devices saw them"),
            if quota.codes.is_empty() {
                "none".to_owned()
            } else {
                quota
                    .codes
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            wait_summary,
            "429/503 with Retry-After from the quota",
            None,
        );
        report.note(format!(
            "Throughput{scaled}: AWS calls the proxy throttled: {}; forwarded: {}.",
            quota
                .rate_limited
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            quota
                .forwarded
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        quota_serials.extend(serials);
    }

    // ----------------------------------------------------------------------------------
    // 4. Provider latency
    match args
        .provider_latency
        .as_ref()
        .map(std::fs::read_to_string)
        .transpose()?
    {
        Some(text) => {
            let rows = parse_provider_latency(&text);
            if rows.is_empty() {
                report.note("Provider latency: no rows found in the example's output.");
            }
            for r in rows {
                let target = r.delay + Duration::from_millis(100);
                report.row(
                    "4",
                    format!(
                        "certificate provider, issuance delay D = {}",
                        fmt_ms(r.delay)
                    ),
                    fmt_ms(r.backoff),
                    match r.fixed {
                        Some(f) => format!("sleep 1 s then get: {}", fmt_ms(f)),
                        None => "sleep 1 s then get: fails".to_owned(),
                    },
                    format!("≤ D + 100 = {}", fmt_ms(target)),
                    Some(r.backoff <= target),
                );
            }
        }
        None => report.note("Provider latency: not run (no --provider-latency file)."),
    }

    // ----------------------------------------------------------------------------------
    // 5. (rows)
    const SIZE_TARGET: u64 = 8_000_000;
    const SIZE_BEFORE: [(&str, u64); 2] = [("vend", 10_035_120), ("cert-provider", 7_964_744)];
    let project_size = |name: &str| {
        sizes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, size)| *size)
    };
    for (name, size) in &sizes {
        let is_product = name != "lambda-hello";
        let base = name.split(',').next().unwrap_or(name);
        let reference = if name.contains("--compare") {
            let project = project_size(base);
            format!(
                "project build {project} B: {:+.1} %",
                100.0 * (*size as f64 - project as f64) / (project.max(1) as f64)
            )
        } else if let Some(before) = SIZE_BEFORE.iter().find(|(n, _)| n == name) {
            // Measured at the commit before the size work (aws-lc-rs, the SDK's default
            // credential chain, tracing-subscriber's env-filter); not rebuilt every run.
            format!("{} B before the size work", before.1)
        } else {
            "-".to_owned()
        };
        report.row(
            "5",
            format!("bootstrap size, {name} (x86_64, stripped)"),
            format!("{size} B ({:.2} MB)", *size as f64 / 1e6),
            reference,
            if is_product { "≤ 8 MB" } else { "reference" },
            is_product.then_some(*size <= SIZE_TARGET),
        );
    }
    for (name, init_hwm, hwm, rss, failures, warm) in &memory {
        report.row(
            "5",
            format!(
                "peak RSS (VmHWM) over {} warm invocations, {name}{}",
                args.rss_invocations,
                if *failures > 0 {
                    format!(" ({failures} failed)")
                } else {
                    String::new()
                }
            ),
            format!("{:.1} MiB", *hwm as f64 / 1024.0),
            format!(
                "after init {:.1} MiB, at the end {:.1} MiB; warm p50 {}",
                *init_hwm as f64 / 1024.0,
                *rss as f64 / 1024.0,
                fmt_ms(*warm)
            ),
            format!("well under {} MB configured", lambda::MEMORY_MB),
            Some(*hwm < u64::from(lambda::MEMORY_MB) * 1024 / 2 && *failures == 0),
        );
    }
    report.note("Sizes are for x86_64 (`cargo lambda build --release`); the arm64 target the deployment uses cannot be built on this machine.");

    // ----------------------------------------------------------------------------------
    // 6. Cost per device
    // A write is billed on the larger of the item before and after it: the issued record.
    let record_bytes = match quota_serials.first() {
        Some(serial) => stack::item_size(&moto.dynamodb_url, serial)
            .await
            .unwrap_or(0),
        None => 0,
    };
    let write_units_each = (record_bytes as f64 / 1024.0).ceil().max(1.0);
    report.note(format!(
        "DynamoDB: an issued device record is about {record_bytes} B (attribute names and values), so {write_units_each:.0} WRU per write."
    ));
    for issuer in ["iot", "acm-pca"] {
        let Some(p50) = vend_p50.get(issuer) else {
            continue;
        };
        let ops = vend_ops.get(issuer).cloned().unwrap_or_default();
        let get = |k: &str| ops.get(k).copied().unwrap_or(0.0);
        let writes = get("dynamodb:UpdateItem") + get("dynamodb:PutItem");
        let reads = get("dynamodb:GetItem");
        let registry: f64 = prices::IOT_CHARGED_REGISTRY_OPERATIONS
            .iter()
            .map(|op| get(&format!("iot:{op}")))
            .sum();
        let inputs = CostInputs {
            billed_ms: ms(*p50).ceil(),
            memory_mb: f64::from(lambda::MEMORY_MB),
            writes,
            reads,
            write_units_each,
            registry_ops: registry,
            pca_certificates: if issuer == "acm-pca" { 1.0 } else { 0.0 },
        };
        let (total, parts) = cost_per_device(&inputs);
        report.row(
            "6",
            format!("cost per device, `{issuer}` issuer"),
            format!("${total:.6}"),
            format!(
                "{parts}; from p50 {} at {} MB arm64, {writes:.0} writes × {write_units_each:.0} WRU, {reads:.0} reads, {registry:.0} registry ops",
                fmt_ms(*p50),
                lambda::MEMORY_MB
            ),
            "-",
            None,
        );
    }
    report.note(format!(
        "Prices (us-east-1, checked {}; the ones marked \"to confirm\" in tests/bench/prices.rs were not seen on a page that day): Lambda arm64 ${}/GB-s and $0.20 per million requests; HTTP API $1.00 per million; \
         DynamoDB on-demand $0.625 per million WRU, $0.125 per million RRU; AWS IoT registry operations $1.25 per million \
         (CreateThing and AttachThingPrincipal are registry operations; certificate and policy calls are not charged); \
         Private CA general-purpose $0.75 per certificate for the first 1,000 a month ($0.35 to 10,000, $0.001 above), \
         plus ${:.0} per CA per month, not per device.",
        prices::READ_ON,
        prices::LAMBDA_ARM_GB_SECOND,
        prices::PCA_MONTHLY_FEE
    ));

    // ----------------------------------------------------------------------------------
    // 7. Bulk enrollment
    if args.bulk > 0 {
        let tenth = (args.bulk / 10).max(1);
        progress(format!(
            "bulk enrollment: cvm-admin enroll --csv of {tenth}, then {} serials",
            args.bulk
        ));
        let bulk_dir = work.join("bulk");
        std::fs::create_dir_all(&bulk_dir)?;
        let started = Instant::now();
        moto.enroll(&tools, &bulk_dir, &Devices::names("BULKREF", tenth))
            .await?;
        let small = started.elapsed();
        let started = Instant::now();
        moto.enroll(&tools, &bulk_dir, &Devices::names("BULK", args.bulk))
            .await?;
        let large = started.elapsed();
        let per_second = args.bulk as f64 / large.as_secs_f64().max(1e-9);
        report.row(
            "7",
            format!(
                "bulk enrollment, `cvm-admin enroll --csv` of {} serials (local stack: moto)",
                args.bulk
            ),
            format!("{:.1} s ({per_second:.0}/s)", large.as_secs_f64()),
            format!(
                "{tenth} serials: {:.1} s; ×{:.1} the time for ×{:.0} the serials",
                small.as_secs_f64(),
                ratio(large, small),
                args.bulk as f64 / tenth as f64
            ),
            "-",
            None,
        );
    }

    let header = format!(
        "# make bench\n\nMachine: {}. L = {} ms per AWS call, TLS handshake + {} ms. Run took {:.0} s.",
        machine(),
        args.latency_ms,
        args.handshake_ms,
        run_started.elapsed().as_secs_f64()
    );
    let table = report.render(&header);
    println!("{table}");
    std::fs::write(work.join("report.md"), &table)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(at_ms: u64, elapsed_ms: f64) -> LogEntry {
        LogEntry {
            seq: 0,
            at_ms,
            service: "iot".into(),
            operation: "X".into(),
            occurrence: 1,
            attempt: 1,
            invocation: None,
            action: "forwarded".into(),
            status: Some(200),
            elapsed_ms,
        }
    }

    #[test]
    fn overlapping_calls_count_once() {
        // claim; issue ‖ thing; pending ‖ policy ‖ attach; activate; complete.
        let log = [
            entry(0, 21.0),
            entry(22, 21.0),
            entry(22, 23.0),
            entry(46, 21.0),
            entry(46, 21.5),
            entry(47, 20.5),
            entry(69, 21.0),
            entry(91, 21.0),
        ];
        assert_eq!(round_trips(&log), 5);
        // The same calls one after another.
        let serial: Vec<_> = (0..8).map(|i| entry(i * 22, 21.0)).collect();
        assert_eq!(round_trips(&serial), 8);
        assert_eq!(round_trips(&[]), 0);
    }

    #[test]
    fn time_in_aws_is_the_union_of_the_spans() {
        let log = [entry(0, 20.0), entry(5, 20.0), entry(40, 10.0)];
        assert!((time_in_aws(&log) - 35.0).abs() < 1e-9);
        assert_eq!(time_in_aws(&[]), 0.0);
    }

    #[test]
    fn the_steady_rate_leaves_out_the_start_and_the_tail() {
        // A burst of 5 at once, 90 completions 50 ms apart (20/s), and a slow tail of 5.
        let mut v: Vec<Duration> = (0..5).map(|_| Duration::from_millis(5)).collect();
        v.extend((1..=90).map(|i| Duration::from_millis(5 + 50 * i)));
        v.extend((1..=5).map(|i| Duration::from_secs(10 + i)));
        let r = steady_rate(&v).unwrap();
        assert!((r - 20.0).abs() < 0.5, "{r}");
        assert_eq!(steady_rate(&[]), None);
        assert_eq!(steady_rate(&[Duration::from_secs(1); 20]), None);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn device_retry_lines_parse() {
        assert_eq!(
            parse_retry("cvm-device: service_busy (503); retrying in 2.0 s"),
            Some(("service_busy".into(), 2.0))
        );
        assert_eq!(parse_retry("cvm-device: enrolled"), None);
        assert_eq!(parse_retry("cvm-device: x (503); retrying in soon s"), None);
    }

    #[test]
    fn provider_table_rows_parse() {
        let text = "| issuance delay | backoff | fixed |\n|---|---|---|\n\
                    |           0 ms | 21 ms / 23 ms (1 Get) | 1021 ms / 1022 ms (1 Get) |\n\
                    |        2000 ms | 2061 ms / 2070 ms (6 Get) | fails: RequestInProgressException at 1021 ms |\n";
        let rows = parse_provider_latency(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].backoff, Duration::from_millis(21));
        assert_eq!(rows[0].fixed, Some(Duration::from_millis(1021)));
        assert_eq!(rows[1].delay, Duration::from_millis(2000));
        assert_eq!(rows[1].fixed, None);
    }

    #[test]
    fn private_ca_price_follows_the_tiers() {
        assert_eq!(pca_price(1), 0.75);
        assert_eq!(pca_price(1_000), 0.75);
        assert_eq!(pca_price(1_001), 0.35);
        assert_eq!(pca_price(10_001), 0.001);
    }
}
