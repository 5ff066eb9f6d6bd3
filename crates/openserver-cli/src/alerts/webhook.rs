//! The webhook sink: an HTTP POST of each alert's JSON to `alerts.webhook`, over plain HTTP
//! or HTTPS (the system's trusted roots, or `alerts.webhook_ca`), with a few retries.

use super::payload::Alert;
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// Tries per alert: the first and two retries.
const ATTEMPTS: u32 = 3;

/// Where and how alerts are posted.
#[derive(Clone)]
pub struct Webhook {
    /// Scheme, host and port of the URL, for log lines: the path and query may hold a secret
    /// (many webhook services put their token there), so they are never logged.
    url: String,
    /// Host to connect to (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path and query to post to.
    path: String,
    /// TLS for `https` URLs.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Bound on one attempt: connect, TLS, request and response headers.
    timeout: Duration,
    /// Wait before the first retry; doubles for the next.
    backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

/// Checks a webhook URL: `http` or `https`, with a host. Errors name `alerts.webhook` and
/// show at most its scheme, host and port, never a path or query that may hold a token.
pub fn parse_url(url: &str) -> Result<Uri> {
    let uri: Uri = url.parse().map_err(|e| {
        anyhow!("alerts.webhook is not a URL ({e}); expected http(s)://host[:port]/path")
    })?;
    let shown = display_url(&uri);
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("alerts.webhook {shown:?} must start with http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("alerts.webhook {shown:?} has no host");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        bail!("alerts.webhook: credentials in the URL are not supported");
    }
    Ok(uri)
}

/// What logs show of a webhook URL: scheme, host and port (`https://hooks.example:443`),
/// without user info, path or query.
pub fn display_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(match scheme {
        "https" => 443,
        _ => 80,
    });
    format!("{scheme}://{host}:{port}")
}

impl Webhook {
    /// A webhook posting to `url`; `ca` (PEM) replaces the system's roots for HTTPS.
    pub fn new(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<Webhook> {
        let uri = parse_url(url)?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| anyhow!("alerts.webhook host {host:?}: {e}"))?;
            Some((tls_connector(ca)?, name))
        } else {
            None
        };
        Ok(Webhook {
            url: display_url(&uri),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
            host,
            tls,
            timeout,
            backoff: Duration::from_secs(1),
        })
    }

    /// The same webhook with another first retry delay (tests use short ones).
    #[cfg(test)]
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Posts every alert queued, one at a time, until the queue closes.
    pub async fn run(self, mut queue: mpsc::Receiver<Alert>) {
        while let Some(alert) = queue.recv().await {
            self.deliver(&alert).await;
        }
    }

    /// Posts one alert, retrying connection failures, timeouts, 408, 429 and 5xx answers up
    /// to [`ATTEMPTS`] tries with a doubling pause. Returns whether it was delivered.
    pub async fn deliver(&self, alert: &Alert) -> bool {
        let body = Bytes::from(alert.to_json());
        let mut pause = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let outcome = match tokio::time::timeout(self.timeout, self.post(body.clone())).await {
                Ok(Ok(status)) if status.is_success() => {
                    tracing::debug!(url = %self.url, %status, alert = alert.describe(), "alert posted");
                    return true;
                }
                Ok(Ok(status)) if !retryable(status) => {
                    tracing::error!(url = %self.url, %status, alert = alert.describe(), "alert webhook refused the alert; not retried");
                    return false;
                }
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            if attempt == ATTEMPTS {
                tracing::error!(url = %self.url, error = %outcome, attempts = ATTEMPTS, alert = alert.describe(), "alert webhook failed; alert dropped");
                return false;
            }
            tracing::warn!(url = %self.url, error = %outcome, retry_in = ?pause, alert = alert.describe(), "alert webhook failed; retrying");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        false
    }

    /// One attempt: connect, post, read the status. One connection per alert: alerts are
    /// rare by design, and a fresh connection has no stale state to handle.
    async fn post(&self, body: Bytes) -> Result<StatusCode> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("openserver/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONNECTION, "close")
            .body(Full::new(body))?;
        match &self.tls {
            None => exchange(tcp, request).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake failed")?;
                exchange(tls, request).await
            }
        }
    }
}

/// Sends `request` over `io` with HTTP/1.1 and returns the answer's status.
async fn exchange<S>(io: S, request: Request<Full<Bytes>>) -> Result<StatusCode>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection is driven by its own task, ended once the status is in: the body of
    // the answer is not needed.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    drop(driver);
    Ok(response.status())
}

/// Aborts a task when dropped, also when the caller's timeout drops the future.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether another try may succeed.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// TLS trusting the CA certificates in `ca`, or the system's roots.
fn tls_connector(ca: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read alerts.webhook_ca {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.with_context(|| {
                    format!("alerts.webhook_ca {}: bad certificate", path.display())
                })?;
                roots.add(cert).with_context(|| {
                    format!("alerts.webhook_ca {}: unusable certificate", path.display())
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unparsable system certificate should not disable all the others.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!("alerts.webhook is https but no trusted CA certificate was found (set alerts.webhook_ca)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("http://127.0.0.1:8080/hook?x=1").is_ok());
        assert!(parse_url("https://hooks.example/a").is_ok());
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "http://",
            "http://u:p@host/",
            "not a url",
        ] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(err.contains("alerts.webhook"), "{bad}: {err}");
        }
        let w = Webhook::new("http://[::1]:9/x", None, Duration::from_secs(1)).unwrap();
        assert_eq!((w.host.as_str(), w.port, w.path.as_str()), ("::1", 9, "/x"));
        assert_eq!(w.authority, "[::1]:9");
        let w = Webhook::new("http://127.0.0.1", None, Duration::from_secs(1)).unwrap();
        assert_eq!((w.port, w.path.as_str()), (80, "/"));
    }

    /// Answers one request per connection with the next of `statuses`, then 200 to any more;
    /// every body received is pushed to the returned list before its answer is sent, so it is
    /// complete once `deliver` returns.
    async fn receiver(
        statuses: Vec<u16>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let received = bodies.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let status = statuses.get(n).copied().unwrap_or(200);
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if body.len() >= length {
                        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
                        break body.to_string();
                    }
                };
                received.lock().unwrap().push(body);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (url, bodies)
    }

    fn alert() -> Alert {
        Alert::Session(crate::alerts::payload::SessionAlert::new(
            9,
            "127.0.0.1:5".parse().unwrap(),
            None,
            &openserver::session::CloseReason::KeepAliveLost,
            Duration::from_secs(2),
            std::time::SystemTime::now(),
        ))
    }

    #[tokio::test]
    async fn a_failed_post_is_retried_and_a_refused_one_is_not() {
        let (url, received) = receiver(vec![503, 200]).await;
        let hook = Webhook::new(&url, None, Duration::from_secs(30))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert!(hook.deliver(&alert()).await);
        let bodies = received.lock().unwrap().clone();
        assert_eq!(
            bodies.len(),
            2,
            "one retry after the 503, none after the 200"
        );
        assert_eq!(bodies[0], bodies[1]);
        let json: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        assert_eq!(json["reason"], "keep_alive_lost");

        // The receiver would take a retry (and answer 200): none comes after a 404.
        let (url, received) = receiver(vec![404]).await;
        let hook = Webhook::new(&url, None, Duration::from_secs(30))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert!(!hook.deliver(&alert()).await);
        assert_eq!(
            received.lock().unwrap().len(),
            1,
            "a refused alert is not retried"
        );
    }

    #[tokio::test]
    async fn a_failing_webhook_gets_exactly_three_tries() {
        let (url, received) = receiver(vec![503, 502, 500]).await;
        let hook = Webhook::new(&url, None, Duration::from_secs(30))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert!(!hook.deliver(&alert()).await);
        // A fourth try would have been answered 200.
        assert_eq!(received.lock().unwrap().len(), ATTEMPTS as usize);
        assert_eq!(ATTEMPTS, 3);
    }

    #[tokio::test]
    async fn an_unreachable_webhook_gives_up_after_three_tries() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hook = Webhook::new(
            &format!("http://127.0.0.1:{port}/"),
            None,
            Duration::from_secs(5),
        )
        .unwrap()
        .with_backoff(Duration::from_millis(10));
        assert!(!hook.deliver(&alert()).await);
    }

    #[tokio::test]
    async fn https_webhooks_verify_the_server_against_webhook_ca() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let generated = openserver::tls::self_signed::generate(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &generated.ca_pem).unwrap();
        let certs = rustls_pemfile::certs(&mut generated.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut generated.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // The first client trusts the CA and posts; the next ones do not and fail.
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("\"event\"") {
                let n = tls.read(&mut buf).await.unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
            let mut refused = 0;
            for _ in 0..ATTEMPTS {
                let (tcp, _) = listener.accept().await.unwrap();
                if acceptor.accept(tcp).await.is_err() {
                    refused += 1;
                }
            }
            (String::from_utf8(request).unwrap(), refused)
        });
        let url = format!("https://127.0.0.1:{port}/secure");
        let hook = Webhook::new(&url, Some(&ca), Duration::from_secs(30)).unwrap();
        assert!(hook.deliver(&alert()).await);

        // Trusting another CA, the client refuses the server's certificate every time.
        let other = openserver::tls::self_signed::generate(&[]).unwrap();
        std::fs::write(&ca, &other.ca_pem).unwrap();
        let hook = Webhook::new(&url, Some(&ca), Duration::from_secs(10))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        assert!(!hook.deliver(&alert()).await);

        let (request, refused) = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            request.starts_with("POST /secure HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(refused, ATTEMPTS);
    }

    /// Log lines written while `f` runs, as text.
    pub(crate) async fn logged<F: std::future::Future>(f: F) -> (F::Output, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // The test runtime is single-threaded: its tasks log through this thread's default.
        let _guard = tracing::subscriber::set_default(subscriber);
        let out = f.await;
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[tokio::test]
    async fn logs_show_only_scheme_host_and_port() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/hooks/T0KEN-in-path?token=S3CRET");
        let hook = Webhook::new(&url, None, Duration::from_secs(5))
            .unwrap()
            .with_backoff(Duration::from_millis(10));
        let (delivered, text) = logged(hook.deliver(&alert())).await;
        assert!(!delivered);
        assert!(text.contains("retrying"), "{text}");
        assert!(text.contains("alert dropped"), "{text}");
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
        assert!(
            !text.contains("T0KEN") && !text.contains("S3CRET"),
            "{text}"
        );
        assert!(!format!("{hook:?}").contains("T0KEN"));

        // Nor do configuration errors repeat the secret part.
        for bad in [
            "ftp://host/T0KEN",
            "not a url T0KEN",
            "http://user:T0KEN@host/",
        ] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(!err.contains("T0KEN"), "{err}");
        }
        assert_eq!(
            display_url(&"https://[::1]/x?y".parse().unwrap()),
            "https://[::1]:443"
        );
    }

    #[test]
    fn only_transient_answers_are_retried() {
        assert!(retryable(StatusCode::BAD_GATEWAY));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(StatusCode::NOT_FOUND));
        assert!(!retryable(StatusCode::UNAUTHORIZED));
    }
}
