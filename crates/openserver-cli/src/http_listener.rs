//! The accept loop both HTTP listeners of `serve` share (the metrics endpoint and the HTTP
//! API): HTTP/1 with hyper, a bounded number of connections, a header timeout and a bounded
//! connection lifetime, so that no client can hold the listener or its memory. With a TLS
//! configuration it serves HTTPS, the handshake bounded like the headers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Time a client gets to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Serves `listener` until the task is dropped: each request is answered by `respond`. At
/// most `max_connections` at once; more are closed at accept. `what` names the listener in
/// its log lines. With `tls`, every connection starts with a TLS handshake.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    max_connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    respond: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, usually: the server's sessions come first.
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "{what}: too many connections; closed");
            continue;
        };
        let respond = respond.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(stream, what, peer, respond).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, what, peer, respond).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "{what}: TLS failed"),
                        Err(_) => tracing::debug!(%peer, "{what}: TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One connection's requests, until it closes or its lifetime ends.
async fn serve_connection<S, F, Fut>(stream: S, what: &'static str, peer: SocketAddr, respond: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = respond(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
        tracing::debug!(%peer, error = %e, "{what}: connection failed");
    }
}
