//! The Prometheus endpoint of `serve`: `GET /metrics` on `[metrics] listen` /
//! `--metrics-listen`, on its own task and listener, off by default.
//!
//! It has no authentication: listen on loopback or a management network, or put it behind a
//! proxy that authenticates.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use openserver::server::Metrics;
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

/// Binds the endpoint on `addr`; returns the bound address and the task that serves it.
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
) -> Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the metrics endpoint has no authentication; firewall it or keep it on loopback");
    }
    Ok((local, serve(listener, metrics)))
}

async fn serve(listener: TcpListener, metrics: Metrics) {
    let respond = move |request: Request<Incoming>| {
        let response = respond(&metrics, &request);
        async move { response }
    };
    crate::http_listener::serve(listener, "metrics endpoint", MAX_CONNECTIONS, None, respond).await;
}

/// `GET /metrics` renders the metrics, in OpenMetrics when the scraper asks for it (Prometheus
/// does), else in the Prometheus text format; anything else is 404 or 405.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
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

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
