//! `fault-proxy`: a reverse proxy between a service and the local stack's AWS endpoint that
//! recognises each AWS operation and, per operation and per occurrence, throttles it, fails it
//! with a 5xx, or lets it commit and loses the answer; with optional added latency, TLS
//! termination (with a handshake delay) and per-operation rate limits, for fault tests and
//! benchmarks through the real SDK.
//!
//! Run it (the service's `AWS_ENDPOINT_URL` points at the proxy, the proxy at moto):
//!
//! ```text
//! cargo build -p cvm-tests --bin fault-proxy; set -a; . .local/env; set +a
//! target/debug/fault-proxy --upstream "$AWS_ENDPOINT_URL" --listen 127.0.0.1:4600 --control 127.0.0.1:4601 &
//! AWS_ENDPOINT_URL=http://127.0.0.1:4600 CVM_TABLE_NAME=... target/debug/vend-local
//! curl -X PUT 127.0.0.1:4601/rules -d '{"rules":[{"operation":"UpdateItem","occurrence":2,"fault":"throttle"}]}'
//! curl 127.0.0.1:4601/log
//! ```
//!
//! Options (each also an environment variable): `--listen`/`FAULT_PROXY_LISTEN` (default
//! `127.0.0.1:0`, the chosen address is printed), `--control`/`FAULT_PROXY_CONTROL`,
//! `--upstream`/`FAULT_PROXY_UPSTREAM` (an `http://` URL), `--latency-ms`/
//! `FAULT_PROXY_LATENCY_MS` (added before every request is answered or forwarded),
//! `--tls-cert`/`--tls-key` (`FAULT_PROXY_TLS_CERT`/`_KEY`, PEM; serve HTTPS, the service then
//! needs `SSL_CERT_FILE` with the issuing CA), `--tls-handshake-delay-ms`, `--limit OP=RATE[:BURST]`
//! (repeatable) and `--aws-quotas` (AWS's default quotas, [`limits::AWS_DEFAULT_QUOTAS`]). On
//! start it prints one JSON line: `{"listen": URL, "control": URL|null, "upstream": URL}`.
//!
//! Control API (plain HTTP on `--control`, JSON bodies):
//! - `PUT /rules` `{"rules": [Rule...]}` replaces the rules ([`rules::Rule`]: `operation`,
//!   optional `occurrence`, `fault` = `throttle` | `server-error` | `lose-answer`, optional
//!   `attempts`, `code`, `status`); `GET /rules`; `DELETE /rules`. An occurrence counts SDK
//!   invocations, not attempts: every retry of one call carries the same
//!   `amz-sdk-invocation-id` (see [`rules`]), so `throttle` and `server-error` outlast the SDK's
//!   retries and `lose-answer` loses the first attempt's answer only.
//! - `POST /reset` forgets the occurrence counters and the log (rules and limits stay).
//! - `GET /log` `{"entries": [LogEntry...], "dropped": N}` in arrival order.
//! - `PUT /limits` `{"limits": {"iot:CreateThing": {"rate": 100, "burst": 100}}}`; `GET /limits`.
//! - `PUT /latency` `{"ms": 20}`; `GET /health`.

pub mod limits;
pub mod operation;
pub mod rules;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::http::{Method, Request, Response, StatusCode, Uri};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use limits::{Limiter, RateLimit};
use rules::{Fault, Rule, Tracker};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpConnector, Incoming>;

/// The log keeps this many entries; older ones are dropped (and counted).
const MAX_LOG_ENTRIES: usize = 100_000;
/// Control requests are small JSON documents.
const MAX_CONTROL_BODY: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first) and its PEM private key.
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    /// Waited after accepting a connection and before the handshake.
    pub handshake_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// The control API's address; none for a proxy driven in-process.
    pub control: Option<SocketAddr>,
    /// Where requests go: `http://host:port` (moto).
    pub upstream: Uri,
    /// Added to every request before it is answered or forwarded.
    pub latency: Duration,
    pub tls: Option<TlsSettings>,
    pub limits: HashMap<String, RateLimit>,
}

impl ProxyConfig {
    /// A plain-HTTP proxy on a free loopback port with a control API on another.
    pub fn local(upstream: Uri) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            upstream,
            latency: Duration::ZERO,
            tls: None,
            limits: HashMap::new(),
        }
    }
}

/// What the proxy did with one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// Arrival order, from 1.
    pub seq: u64,
    /// Milliseconds since the proxy started, at arrival.
    pub at_ms: u64,
    pub service: String,
    pub operation: String,
    pub occurrence: u32,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<String>,
    /// `forwarded`, `throttle`, `server-error`, `lose-answer` (forwarded, answer not sent),
    /// `rate-limited`, or `upstream-error` (answered 502).
    pub action: String,
    /// The status the upstream answered (forwarded, lose-answer) or the proxy answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Time in the proxy, including the added latency.
    pub elapsed_ms: f64,
}

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    tracker: Tracker,
    limiter: Limiter,
    log: VecDeque<LogEntry>,
    dropped: u64,
}

struct State {
    inner: Mutex<Inner>,
    seq: AtomicU64,
    latency_ms: AtomicU64,
    started: Instant,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, entry: LogEntry) {
        let mut inner = self.lock();
        if inner.log.len() >= MAX_LOG_ENTRIES {
            inner.log.pop_front();
            inner.dropped += 1;
        }
        inner.log.push_back(entry);
    }
}

/// A running proxy. Dropping it stops accepting connections.
pub struct Proxy {
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    scheme: &'static str,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn tls_acceptor(tls: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&tls.cert_chain)
        .map_err(|e| format!("{}: {e}", tls.cert_chain.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert_chain.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl Proxy {
    pub async fn start(config: ProxyConfig) -> Result<Self, Error> {
        if config.upstream.scheme_str() != Some("http") || config.upstream.authority().is_none() {
            return Err(format!("upstream {} must be an http:// URL", config.upstream).into());
        }
        for limit in config.limits.values() {
            limit.validate()?;
        }
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let state = Arc::new(State {
            inner: Mutex::new(Inner::default()),
            seq: AtomicU64::new(0),
            latency_ms: AtomicU64::new(
                u64::try_from(config.latency.as_millis()).unwrap_or(u64::MAX),
            ),
            started: Instant::now(),
        });
        state.lock().limiter.set(config.limits.clone());

        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let upstream_client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
        let handshake_delay = config
            .tls
            .as_ref()
            .map_or(Duration::ZERO, |t| t.handshake_delay);
        let forward = Arc::new(Forward {
            state: state.clone(),
            client: upstream_client,
            upstream: config.upstream.clone(),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut tasks = vec![tokio::spawn(serve_data(
            listener,
            forward,
            tls,
            handshake_delay,
        ))];

        let control_addr = match config.control {
            Some(at) => {
                let listener = TcpListener::bind(at).await?;
                let control_addr = listener.local_addr()?;
                tasks.push(tokio::spawn(serve_control(listener, state.clone())));
                Some(control_addr)
            }
            None => None,
        };
        Ok(Self {
            addr,
            control_addr,
            scheme,
            state,
            tasks,
        })
    }

    /// What the service's `AWS_ENDPOINT_URL` should be.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn control_url(&self) -> Option<String> {
        self.control_addr.map(|a| format!("http://{a}"))
    }

    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), String> {
        rules.iter().try_for_each(Rule::validate)?;
        self.state.lock().rules = rules;
        Ok(())
    }

    pub fn reset(&self) {
        let mut inner = self.state.lock();
        inner.tracker = Tracker::default();
        inner.log.clear();
        inner.dropped = 0;
    }

    pub fn log(&self) -> Vec<LogEntry> {
        sorted_log(&self.state.lock())
    }
}

fn sorted_log(inner: &Inner) -> Vec<LogEntry> {
    let mut entries: Vec<_> = inner.log.iter().cloned().collect();
    entries.sort_by_key(|e| e.seq);
    entries
}

async fn serve_data(
    listener: TcpListener,
    forward: Arc<Forward>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_delay: Duration,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let forward = forward.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let forward = forward.clone();
                async move { forward.handle(req).await }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            // Connection errors (including the ones a lost answer causes on purpose) end only
            // that connection.
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    tokio::time::sleep(handshake_delay).await;
                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(tls_stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

/// The answer was deliberately not sent: hyper closes the connection on a service error.
#[derive(Debug)]
struct AnswerLost;

impl std::fmt::Display for AnswerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer deliberately lost")
    }
}

impl std::error::Error for AnswerLost {}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

struct Forward {
    state: Arc<State>,
    client: Upstream,
    upstream: Uri,
}

impl Forward {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, AnswerLost> {
        let started = Instant::now();
        let op = operation::recognise(req.method(), req.uri().path(), req.headers());
        let invocation = req
            .headers()
            .get("amz-sdk-invocation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let seq = self.state.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let (position, rule, admitted) = {
            let mut inner = self.state.lock();
            let position = inner.tracker.position(&op, invocation.as_deref());
            let rule = rules::decide(&inner.rules, &op, position).cloned();
            // A faulted request never reaches AWS, so it takes no token.
            let admitted = rule.as_ref().is_some_and(|r| r.fault != Fault::LoseAnswer)
                || inner.limiter.admit(|s| op.is(s), Instant::now());
            (position, rule, admitted)
        };
        let latency = self.state.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let log = |action: &str, status: Option<u16>| LogEntry {
            seq,
            at_ms: u64::try_from(
                started
                    .saturating_duration_since(self.state.started)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            service: op.service.clone(),
            operation: op.name.clone(),
            occurrence: position.occurrence,
            attempt: position.attempt,
            invocation: invocation.clone(),
            action: action.to_owned(),
            status,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        let request_id = format!("fault-proxy-{seq}");

        let error_answer = |fault: Fault, rule: Option<&Rule>| {
            let (code, status) = wire::default_error(&op, fault);
            let code = rule.and_then(|r| r.code.clone()).unwrap_or(code.to_owned());
            let status = rule.and_then(|r| r.status).unwrap_or(status);
            wire::error_response(&op, &code, status, &request_id).map(full)
        };
        match &rule {
            Some(r) if r.fault != Fault::LoseAnswer => {
                let response = error_answer(r.fault, Some(r));
                self.state
                    .record(log(r.fault.as_str(), Some(response.status().as_u16())));
                return Ok(response);
            }
            _ => {}
        }
        if !admitted {
            let response = error_answer(Fault::Throttle, None);
            self.state
                .record(log("rate-limited", Some(response.status().as_u16())));
            return Ok(response);
        }

        let forwarded = match self.forward(req).await {
            Ok(response) => response,
            Err(e) => {
                self.state.record(log("upstream-error", Some(502)));
                let mut response = Response::new(full(format!("fault-proxy: upstream: {e}\n")));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                return Ok(response);
            }
        };
        let status = forwarded.status().as_u16();
        if rule.is_some() {
            // Lose the answer only once the upstream has produced all of it: the call committed.
            let _ = forwarded.into_body().collect().await;
            self.state
                .record(log(Fault::LoseAnswer.as_str(), Some(status)));
            return Err(AnswerLost);
        }
        self.state.record(log("forwarded", Some(status)));
        Ok(forwarded.map(BodyExt::boxed))
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let (mut parts, body) = req.into_parts();
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri)?;
        // The Host header stays the one the SDK signed.
        Ok(self
            .client
            .request(Request::from_parts(parts, body))
            .await?)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesBody {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    limits: HashMap<String, RateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBody {
    ms: u64,
}

async fn serve_control(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream: TcpStream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(control(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::http::HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: impl std::fmt::Display) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": message.to_string()}),
    )
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let bytes = Limited::new(req.into_body(), MAX_CONTROL_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("body: {e}"))
}

async fn control(state: &State, req: Request<Incoming>) -> Response<Body> {
    let ok = |v: serde_json::Value| json_response(StatusCode::OK, &v);
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/health") => ok(serde_json::json!({"ok": true})),
        (Method::GET, "/rules") => ok(serde_json::json!({"rules": state.lock().rules})),
        (Method::PUT, "/rules") => match read_json::<RulesBody>(req).await {
            Ok(body) => match body.rules.iter().try_for_each(Rule::validate) {
                Ok(()) => {
                    let mut inner = state.lock();
                    inner.rules = body.rules;
                    ok(serde_json::json!({"rules": inner.rules}))
                }
                Err(e) => bad_request(e),
            },
            Err(e) => bad_request(e),
        },
        (Method::DELETE, "/rules") => {
            state.lock().rules.clear();
            ok(serde_json::json!({"rules": []}))
        }
        (Method::POST, "/reset") => {
            let mut inner = state.lock();
            inner.tracker = Tracker::default();
            inner.log.clear();
            inner.dropped = 0;
            ok(serde_json::json!({"reset": true}))
        }
        (Method::GET, "/log") => {
            let inner = state.lock();
            ok(serde_json::json!({"entries": sorted_log(&inner), "dropped": inner.dropped}))
        }
        (Method::GET, "/limits") => {
            ok(serde_json::json!({"limits": state.lock().limiter.limits()}))
        }
        (Method::PUT, "/limits") => match read_json::<LimitsBody>(req).await {
            Ok(body) => match body.limits.values().try_for_each(RateLimit::validate) {
                Ok(()) => {
                    let mut inner = state.lock();
                    inner.limiter.set(body.limits);
                    ok(serde_json::json!({"limits": inner.limiter.limits()}))
                }
                Err(e) => bad_request(e),
            },
            Err(e) => bad_request(e),
        },
        (Method::GET, "/latency") => {
            ok(serde_json::json!({"ms": state.latency_ms.load(Ordering::Relaxed)}))
        }
        (Method::PUT, "/latency") => match read_json::<LatencyBody>(req).await {
            Ok(body) => {
                state.latency_ms.store(body.ms, Ordering::Relaxed);
                ok(serde_json::json!({"ms": body.ms}))
            }
            Err(e) => bad_request(e),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown control endpoint"}),
        ),
    }
}
