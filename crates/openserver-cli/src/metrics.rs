//! The operations endpoint of `serve`: `GET /metrics` (Prometheus), `GET /healthz` (the
//! process answers) and `GET /readyz` (it should get clients: not shutting down, and the
//! channels' broker delivers end to end) on `[metrics] listen` / `--metrics-listen`, on its
//! own task and listener, off by default.
//!
//! It has no authentication: listen on loopback or a management network, or put it behind a
//! proxy that authenticates.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use openserver::server::{Metrics, ServerHandle};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Scrapers connected at once; more are closed on accept. Prometheus uses one per target.
const MAX_CONNECTIONS: usize = 16;

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the endpoint; absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

/// How long `/readyz` waits for the broker's canary before answering "not ready": under the
/// 1 s a Kubernetes probe waits by default and HAProxy's 2 s, so that a slow broker gets a
/// 503 with a reason from here rather than a timeout at the balancer.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Binds the endpoint on `addr`; returns the bound address and the task that serves it.
pub async fn bind(
    addr: SocketAddr,
    server: ServerHandle,
) -> Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the metrics endpoint has no authentication; firewall it or keep it on loopback");
    }
    Ok((local, serve(listener, server)))
}

async fn serve(listener: TcpListener, server: ServerHandle) {
    let respond = move |request: Request<Incoming>| {
        let server = server.clone();
        async move {
            if let Some(refused) = refuse_method(&request) {
                return refused;
            }
            match request.uri().path() {
                "/healthz" => plain(StatusCode::OK, "ok\n".to_string()),
                "/readyz" => readiness(&server).await,
                _ => respond(&server.metrics(), &request),
            }
        }
    };
    crate::http_listener::serve(listener, "metrics endpoint", MAX_CONNECTIONS, None, respond).await;
}

/// Only GET and HEAD are served: 405 for anything else.
fn refuse_method(request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return None;
    }
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_string());
    response
        .headers_mut()
        .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

/// `GET /readyz`: 200 `ready`, or 503 with the reason (shutting down, the broker failing or
/// too slow), for load balancers' health checks.
async fn readiness(server: &ServerHandle) -> Response<Full<Bytes>> {
    match tokio::time::timeout(READY_TIMEOUT, server.ready()).await {
        Ok(Ok(())) => plain(StatusCode::OK, "ready\n".to_string()),
        Ok(Err(why)) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the readiness check took over {READY_TIMEOUT:?}\n"),
        ),
    }
}

/// `GET /metrics` renders the metrics, in OpenMetrics when the scraper asks for it (Prometheus
/// does), else in the Prometheus text format; any other path is 404.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; this endpoint serves /metrics, /healthz and /readyz\n".to_string(),
        );
    }
    let head = request.method() == Method::HEAD;
    let openmetrics = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            metrics.encode_openmetrics(),
            Metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            metrics.encode_prometheus(),
            Metrics::PROMETHEUS_CONTENT_TYPE,
        )
    };
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
