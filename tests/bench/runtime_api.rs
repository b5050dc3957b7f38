//! A Lambda Runtime API on a loopback port, enough to run a real bootstrap the way Lambda
//! does: `GET /2018-06-01/runtime/invocation/next` hands out one queued event with the
//! `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms` and
//! `Lambda-Runtime-Invoked-Function-Arn` headers; `POST .../invocation/{id}/response` and
//! `.../{id}/error` answer it; `POST /2018-06-01/runtime/init/error` reports a failed init.
//!
//! It times what a benchmark needs: the first `/next` (the end of the function's init) and,
//! per invocation, the time from handing the event out to receiving its answer (what Lambda
//! bills as duration).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Error;

const PREFIX: &str = "/2018-06-01/runtime";
/// Lambda's limit for a synchronous response payload.
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// What the bootstrap is told it has left (the functions' configured timeout).
const DEADLINE: Duration = Duration::from_secs(10);

/// How one invocation ended.
#[derive(Debug)]
pub struct Outcome {
    /// `true` for `/response`, `false` for `/error`.
    pub ok: bool,
    pub body: Bytes,
    /// From handing the event out (the `/next` answer) to receiving the answer.
    pub duration: Duration,
}

/// The end of init: the first `/next`, or an `/init/error`.
#[derive(Debug, Clone)]
pub enum Init {
    Pending,
    Ready(Instant),
    Failed(String),
}

struct Queued {
    payload: Bytes,
    reply: oneshot::Sender<Outcome>,
}

struct Shared {
    function_arn: String,
    queue: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    in_flight: Mutex<HashMap<String, (Instant, oneshot::Sender<Outcome>)>>,
    init: watch::Sender<Init>,
    next_id: Mutex<u64>,
}

impl Shared {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<String, (Instant, oneshot::Sender<Outcome>)>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running Runtime API for one execution environment (one bootstrap process).
pub struct RuntimeApi {
    addr: SocketAddr,
    sender: mpsc::Sender<Queued>,
    init: watch::Receiver<Init>,
    task: JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuntimeApi {
    pub async fn start(function_name: &str) -> Result<Self, Error> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = mpsc::channel(16);
        let (init_tx, init_rx) = watch::channel(Init::Pending);
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
            queue: tokio::sync::Mutex::new(receiver),
            in_flight: Mutex::new(HashMap::new()),
            init: init_tx,
            next_id: Mutex::new(0),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            sender,
            init: init_rx,
            task,
        })
    }

    /// `AWS_LAMBDA_RUNTIME_API` for the bootstrap.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Waits for the end of init (the first `/next` or an init error), at most `timeout`.
    pub async fn wait_init(&self, timeout: Duration) -> Result<Instant, Error> {
        let mut init = self.init.clone();
        let ended = tokio::time::timeout(timeout, async {
            loop {
                match &*init.borrow_and_update() {
                    Init::Ready(at) => return Ok(*at),
                    Init::Failed(e) => return Err(format!("init failed: {e}")),
                    Init::Pending => {}
                }
                if init.changed().await.is_err() {
                    return Err("the runtime API stopped".to_owned());
                }
            }
        })
        .await
        .map_err(|_| format!("no /next within {timeout:?}"))?;
        Ok(ended?)
    }

    /// Queues one event and waits for its answer, at most `timeout`.
    pub async fn invoke(&self, payload: Bytes, timeout: Duration) -> Result<Outcome, Error> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Queued { payload, reply })
            .await
            .map_err(|_| "the runtime API stopped")?;
        let outcome = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|_| "the invocation was dropped")?;
        Ok(outcome)
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn read_body(req: Request<Incoming>) -> Bytes {
    match Limited::new(req.into_body(), MAX_PAYLOAD).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return reply(StatusCode::NOT_FOUND, "unknown path");
    };
    match (req.method().clone(), rest) {
        (Method::GET, "/invocation/next") => next(shared).await,
        (Method::POST, "/init/error") => {
            let body = read_body(req).await;
            shared
                .init
                .send_replace(Init::Failed(String::from_utf8_lossy(&body).into_owned()));
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (Method::POST, rest) => {
            let Some(rest) = rest.strip_prefix("/invocation/") else {
                return reply(StatusCode::NOT_FOUND, "unknown path");
            };
            let (id, ok) = match rest.rsplit_once('/') {
                Some((id, "response")) => (id.to_owned(), true),
                Some((id, "error")) => (id.to_owned(), false),
                _ => return reply(StatusCode::NOT_FOUND, "unknown path"),
            };
            let body = read_body(req).await;
            let received = Instant::now();
            let Some((dispatched, sender)) = shared.in_flight().remove(&id) else {
                return reply(StatusCode::BAD_REQUEST, "unknown request id");
            };
            let _ = sender.send(Outcome {
                ok,
                body,
                duration: received.saturating_duration_since(dispatched),
            });
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        _ => reply(StatusCode::NOT_FOUND, "unknown path"),
    }
}

async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.init.send_if_modified(|init| match init {
        Init::Pending => {
            *init = Init::Ready(Instant::now());
            true
        }
        _ => false,
    });
    let queued = {
        let mut queue = shared.queue.lock().await;
        queue.recv().await
    };
    let Some(queued) = queued else {
        return reply(StatusCode::GONE, "shutting down");
    };
    let id = {
        let mut n = shared
            .next_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *n += 1;
        format!("bench-{n:08}")
    };
    let deadline = SystemTime::now()
        .checked_add(DEADLINE)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis());
    let mut response = reply(StatusCode::OK, queued.payload);
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = hyper::http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", id.clone());
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        shared.function_arn.clone(),
    );
    set(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned(),
    );
    set("content-type", "application/json".to_owned());
    shared
        .in_flight()
        .insert(id, (Instant::now(), queued.reply));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    /// A runtime client as `lambda_runtime` drives the API: poll, answer, poll again.
    #[tokio::test]
    async fn an_event_goes_out_with_lambdas_headers_and_its_answer_comes_back() {
        let api = RuntimeApi::start("fn").await.unwrap();
        let base = format!("http://{}{PREFIX}", api.address());
        let runtime = tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let next = client
                .get(format!("{base}/invocation/next").parse().unwrap())
                .await
                .unwrap();
            let headers = next.headers().clone();
            let id = headers["lambda-runtime-aws-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(headers["lambda-runtime-deadline-ms"]
                .to_str()
                .unwrap()
                .parse::<u128>()
                .is_ok());
            assert_eq!(
                headers["lambda-runtime-invoked-function-arn"],
                "arn:aws:lambda:us-east-1:123456789012:function:fn"
            );
            let event = next.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&event[..], b"{\"n\":1}");
            let unknown = client
                .request(
                    Request::post(format!("{base}/invocation/nope/response"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
            let answered = client
                .request(
                    Request::post(format!("{base}/invocation/{id}/response"))
                        .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(answered.status(), StatusCode::ACCEPTED);
        });
        let before = Instant::now();
        let outcome = api
            .invoke(Bytes::from_static(b"{\"n\":1}"), Duration::from_secs(5))
            .await
            .unwrap();
        runtime.await.unwrap();
        assert!(outcome.ok);
        assert_eq!(&outcome.body[..], b"{\"ok\":true}");
        assert!(outcome.duration <= before.elapsed());
        assert!(api.wait_init(Duration::from_secs(1)).await.unwrap() >= before);
    }

    #[tokio::test]
    async fn an_init_error_ends_the_wait_with_its_message() {
        let api = RuntimeApi::start("fn").await.unwrap();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        client
            .request(
                Request::post(format!("http://{}{PREFIX}/init/error", api.address()))
                    .body(Full::new(Bytes::from_static(b"CVM_TABLE_NAME is required")))
                    .unwrap(),
            )
            .await
            .unwrap();
        let err = api.wait_init(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            err.to_string().contains("CVM_TABLE_NAME is required"),
            "{err}"
        );
    }
}
