//! A plain-HTTP forwarder, for two jobs:
//! - in front of moto, it keeps connections open: moto's server answers every request with
//!   `Connection: close`, and a proxy that passed that hop-by-hop header on would make the
//!   service open (and, over TLS, handshake) a new connection for every AWS call, which AWS
//!   does not. The forwarder drops hop-by-hop headers (RFC 9110, 7.6.1) from answers.
//! - with `one_at_a_time`, it lets one request through at a time: the service's concurrent
//!   AWS calls then run one after another, which is what the same workflow costs without its
//!   concurrency (the "strictly sequential" reference of the critical-path benchmark).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{Request, Response, StatusCode, Uri};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Error;

pub struct Forwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Forward {
    upstream: Uri,
    /// Requests signed for this SigV4 service go to its own upstream instead.
    routes: Vec<(String, Uri)>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Held across each forwarded request when serialising.
    turn: Option<tokio::sync::Mutex<()>>,
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Forwarder {
    pub async fn start(upstream: Uri, one_at_a_time: bool) -> Result<Self, Error> {
        Self::routed(upstream, Vec::new(), one_at_a_time).await
    }

    /// Forwards to `upstream`, except requests signed for a service in `routes`.
    pub async fn routed(
        upstream: Uri,
        routes: Vec<(String, Uri)>,
        one_at_a_time: bool,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let forward = Arc::new(Forward {
            upstream,
            routes,
            client: Client::builder(TokioExecutor::new()).build(connector),
            turn: one_at_a_time.then(|| tokio::sync::Mutex::new(())),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let forward = forward.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let forward = forward.clone();
                        async move { Ok::<_, Infallible>(forward.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Forward {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.forward(req).await {
            Ok(response) => response,
            Err(e) => {
                let mut response = Response::new(Full::new(Bytes::from(format!(
                    "forwarder: upstream: {e}\n"
                ))));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Error> {
        let (mut parts, body) = req.into_parts();
        // Read the request before taking the turn: only the AWS call itself is serialised.
        let body = body.collect().await?.to_bytes();
        let service = signing_service(&parts.headers);
        let upstream = self
            .routes
            .iter()
            .find(|(name, _)| Some(name.as_str()) == service)
            .map_or(&self.upstream, |(_, uri)| uri);
        let mut uri = upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri)?;
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        let _turn = match &self.turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        };
        let response = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (mut parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

/// The service of a SigV4 `Authorization: ... Credential=AKID/DATE/REGION/SERVICE/aws4_request`.
fn signing_service(headers: &hyper::http::HeaderMap) -> Option<&str> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?.split([',', ' ']).next()?;
    scope.split('/').nth(3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_signing_service_comes_from_the_credential_scope() {
        let mut headers = hyper::http::HeaderMap::new();
        assert_eq!(signing_service(&headers), None);
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=00"
                .parse()
                .unwrap(),
        );
        assert_eq!(signing_service(&headers), Some("dynamodb"));
        headers.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(signing_service(&headers), None);
    }
}
