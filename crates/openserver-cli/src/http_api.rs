//! The server API for backends: publish, push to a user, presence, history and disconnect
//! over HTTP with JSON, on `[http_api] listen`, its own task and listener, off by default.
//!
//! Every request carries one of `[http_api] api_keys` (`Authorization: Bearer KEY` or
//! `X-API-Key: KEY`). Plain HTTP listens on loopback only; with `[http_api] tls` it serves
//! HTTPS with the server's own certificate (and its reloads) and may listen anywhere.
//! docs/OPERATIONS.md shows the endpoints.

use anyhow::{Context as _, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use openserver::channels::{ChannelError, Position};
use openserver::server::ServerHandle;
use openserver::tls::ServerTls;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

/// Backend connections at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// The shortest API key accepted: a guessable key is no key.
pub const MIN_KEY_LEN: usize = 16;

/// `[http_api]`: the HTTP API for backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Address of the API; absent: no API. Loopback only, unless `tls` is on.
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the server's own certificate (`[tls]`, reloaded with it on SIGHUP),
    /// which lets the API listen on any address.
    pub tls: bool,
    /// The keys a request may carry; at least one (of 16 characters or more) when on.
    pub api_keys: Vec<String>,
    /// The largest request body, in bytes; larger ones are answered 413.
    pub max_body: usize,
    /// Bound on one request, body included; slower ones are answered 408 or 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            listen: None,
            tls: false,
            api_keys: Vec::new(),
            max_body: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpApiConfig {
    /// Refuses an API that would be open, exposed or unusable.
    pub fn check(&self) -> Result<()> {
        let Some(listen) = self.listen else {
            return Ok(());
        };
        if !listen.ip().is_loopback() && !self.tls {
            anyhow::bail!(
                "refusing http_api.listen = {listen}: without TLS the API keys and data would \
                 cross the network in the clear; set http_api.tls = true (HTTPS with the \
                 server's certificate) or listen on loopback (127.0.0.1 or [::1])"
            );
        }
        if self.api_keys.is_empty() {
            anyhow::bail!(
                "http_api.api_keys is empty: the HTTP API needs at least one key \
                 (e.g. the output of `openssl rand -hex 32`)"
            );
        }
        if let Some(i) = self.api_keys.iter().position(|k| k.len() < MIN_KEY_LEN) {
            anyhow::bail!(
                "http_api.api_keys[{i}] is shorter than {MIN_KEY_LEN} characters; use a long \
                 random key (e.g. the output of `openssl rand -hex 32`)"
            );
        }
        if self.max_body == 0 {
            anyhow::bail!("http_api.max_body must be at least 1 byte");
        }
        if self.request_timeout.is_zero() {
            anyhow::bail!("http_api.request_timeout must be more than 0s");
        }
        Ok(())
    }
}

/// Binds the API on `config.listen`; returns the bound address and the task that serves it.
/// `tls` is the server's TLS, which `http_api.tls` needs.
pub async fn bind(
    config: &HttpApiConfig,
    tls: Option<&ServerTls>,
    server: ServerHandle,
) -> Result<Option<(SocketAddr, impl Future<Output = ()>)>> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    config.check()?;
    let tls = match (config.tls, tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls.config()),
        (true, None) => anyhow::bail!(
            "http_api.tls = true needs the server's TLS, which is off (--no-tls or \
             tls.enabled = false): turn TLS on, or set http_api.tls = false and listen on \
             loopback"
        ),
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the HTTP API on {addr}"))?;
    let local = listener.local_addr()?;
    let api = Arc::new(Api {
        server,
        keys: config.api_keys.clone(),
        max_body: config.max_body,
        timeout: config.request_timeout,
    });
    Ok(Some((local, serve(listener, tls, api))))
}

struct Api {
    server: ServerHandle,
    keys: Vec<String>,
    max_body: usize,
    timeout: Duration,
}

async fn serve(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, api: Arc<Api>) {
    let respond = move |request: Request<Incoming>| {
        let api = api.clone();
        async move {
            match tokio::time::timeout(api.timeout, api.respond(request)).await {
                Ok(response) => response,
                Err(_) => error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request took longer than http_api.request_timeout; retry",
                ),
            }
        }
    };
    crate::http_listener::serve(listener, "HTTP API", MAX_CONNECTIONS, tls, respond).await;
}

/// An answer other than 200: its status and the JSON `{code, message}`.
#[derive(Debug)]
struct Failure(StatusCode, &'static str, String);

impl Failure {
    fn bad(message: impl Into<String>) -> Failure {
        Failure(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }
}

/// A cluster operation that could not reach every node: the backend may retry.
fn unavailable(e: openserver::server::ClusterError) -> Failure {
    Failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        e.to_string(),
    )
}

impl From<ChannelError> for Failure {
    fn from(e: ChannelError) -> Failure {
        let status = match &e {
            ChannelError::UnknownNamespace(_) => StatusCode::NOT_FOUND,
            ChannelError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ChannelError::Forbidden(_) => StatusCode::FORBIDDEN,
            ChannelError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ChannelError::Unavailable(_) => StatusCode::CONFLICT,
            ChannelError::Broker(_) | ChannelError::Disabled => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Failure(status, e.code(), e.to_string())
    }
}

/// `{channel, data | data_base64}` of publish; `{user, ...}` of push_user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    user: Option<String>,
    data: Option<String>,
    data_base64: Option<String>,
}

/// `{session[, node]}` or `{user}` of disconnect.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    session: Option<u64>,
    /// The node of `session` in a cluster; this node when absent.
    node: Option<String>,
    user: Option<String>,
}

impl Api {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.route(request).await {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(Failure(status, code, message)) => error(status, code, &message),
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<serde_json::Value, Failure> {
        let path = request.uri().path().to_string();
        let method = match path.as_str() {
            "/api/v1/publish" | "/api/v1/push_user" | "/api/v1/disconnect" => Method::POST,
            "/api/v1/presence" | "/api/v1/history" => Method::GET,
            _ => {
                return Err(Failure(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no endpoint {path:?}; the API has /api/v1/publish, push_user, \
                         presence, history and disconnect"
                    ),
                ))
            }
        };
        // Before the body is read: a caller without a key costs no more than its headers.
        self.authenticate(&request)?;
        if request.method() != method {
            return Err(Failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} takes {method}"),
            ));
        }
        let query = request.uri().query().unwrap_or("").to_string();
        match path.as_str() {
            "/api/v1/publish" => {
                let body: PublishBody = self.body(request).await?;
                let channel = body
                    .channel
                    .clone()
                    .ok_or_else(|| Failure::bad("the body has no \"channel\""))?;
                if body.user.is_some() {
                    return Err(Failure::bad(
                        "publish takes \"channel\", not \"user\"; use /api/v1/push_user",
                    ));
                }
                self.publish(&channel, data_of(&body)?).await
            }
            "/api/v1/push_user" => {
                let body: PublishBody = self.body(request).await?;
                let user = body
                    .user
                    .clone()
                    .ok_or_else(|| Failure::bad("the body has no \"user\""))?;
                if body.channel.is_some() {
                    return Err(Failure::bad(
                        "push_user takes \"user\", not \"channel\"; use /api/v1/publish",
                    ));
                }
                if user.is_empty() {
                    return Err(Failure::bad("\"user\" is empty"));
                }
                self.publish(&format!("#{user}"), data_of(&body)?).await
            }
            "/api/v1/presence" => {
                let params = parse_query(&query)?;
                let channel = param(&params, "channel")?
                    .ok_or_else(|| Failure::bad("presence needs ?channel=NAME"))?;
                let clients = self.channels()?.presence(&channel).await?;
                Ok(json!({ "clients": clients }))
            }
            "/api/v1/history" => {
                let params = parse_query(&query)?;
                let channel = param(&params, "channel")?
                    .ok_or_else(|| Failure::bad("history needs ?channel=NAME"))?;
                let since = param(&params, "since")?
                    .map(|s| s.parse::<Position>())
                    .transpose()
                    .map_err(|e| Failure::bad(format!("since: {e}")))?;
                let limit = param(&params, "limit")?
                    .map(|s| s.parse::<u32>())
                    .transpose()
                    .map_err(|_| Failure::bad("limit is not a whole number (0..=4294967295)"))?;
                let reply = self.channels()?.history(&channel, since, limit).await?;
                let publications: Vec<_> = reply
                    .publications
                    .iter()
                    .map(|p| {
                        let mut entry = json!({
                            "epoch": p.epoch,
                            "offset": p.offset,
                            "user": p.user,
                            "data_base64":
                                base64::engine::general_purpose::STANDARD.encode(&p.data),
                        });
                        // Text as text, so a backend need not decode what it sent as text.
                        if let Ok(text) = std::str::from_utf8(&p.data) {
                            entry["data"] = json!(text);
                        }
                        entry
                    })
                    .collect();
                Ok(json!({
                    "epoch": reply.position.epoch,
                    "offset": reply.position.offset,
                    "publications": publications,
                }))
            }
            _ => {
                let body: DisconnectBody = self.body(request).await?;
                let cluster = self.server.cluster();
                // (node, session) pairs: session ids are numbered per node.
                let kicked: Vec<(String, u64)> = match (body.session, body.user, body.node) {
                    (Some(id), None, node) => {
                        let node = node.unwrap_or_default();
                        if cluster.kick(&node, id).await.map_err(unavailable)? {
                            vec![(node, id)]
                        } else {
                            Vec::new()
                        }
                    }
                    (None, Some(user), None) => {
                        cluster.kick_user(&user).await.map_err(unavailable)?
                    }
                    _ => return Err(Failure::bad(
                        "disconnect takes {\"session\": ID} (with \"node\": NAME in a cluster) \
                         or {\"user\": NAME}, one of them",
                    )),
                };
                let disconnected: Vec<serde_json::Value> = kicked
                    .into_iter()
                    .map(|(node, id)| json!({ "node": node, "session": id }))
                    .collect();
                if disconnected.is_empty() {
                    return Err(Failure(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no open session matches; `openserver sessions` lists them".into(),
                    ));
                }
                tracing::info!(sessions = ?disconnected, "HTTP API: disconnected");
                let ids: Vec<&serde_json::Value> =
                    disconnected.iter().map(|d| &d["session"]).collect();
                Ok(json!({ "disconnected": ids, "sessions": disconnected }))
            }
        }
    }

    fn channels(&self) -> Result<openserver::channels::Channels, Failure> {
        self.server
            .channels()
            .ok_or_else(|| ChannelError::Disabled.into())
    }

    async fn publish(&self, channel: &str, data: Bytes) -> Result<serde_json::Value, Failure> {
        let position = self.channels()?.publish(channel, data).await?;
        Ok(json!({ "epoch": position.epoch, "offset": position.offset }))
    }

    /// Constant time per key, so that timing tells nothing about how much of a key was right.
    fn authenticate(&self, request: &Request<Incoming>) -> Result<(), Failure> {
        let headers = request.headers();
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let Some(given) = given else {
            return Err(Failure(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no API key; send `Authorization: Bearer KEY` or `X-API-Key: KEY` with a key \
                 of http_api.api_keys"
                    .into(),
            ));
        };
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            ok |= key.as_bytes().ct_eq(given.as_bytes());
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Failure(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is not one of http_api.api_keys".into(),
            ))
        }
    }

    /// Reads at most `max_body` bytes and parses them as JSON.
    async fn body<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<Incoming>,
    ) -> Result<T, Failure> {
        let too_large = || {
            Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body is larger than {} bytes (http_api.max_body)",
                    self.max_body
                ),
            )
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let bytes = match Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => return Err(Failure::bad(format!("cannot read the body: {e}"))),
        };
        serde_json::from_slice(&bytes).map_err(|e| Failure::bad(format!("invalid JSON body: {e}")))
    }
}

/// The bytes of `data` (a string, sent as UTF-8) or `data_base64`: exactly one.
fn data_of(body: &PublishBody) -> Result<Bytes, Failure> {
    match (&body.data, &body.data_base64) {
        (Some(text), None) => Ok(Bytes::from(text.clone().into_bytes())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|e| Failure::bad(format!("data_base64 is not base64: {e}"))),
        _ => Err(Failure::bad(
            "give the data as \"data\" (a string) or \"data_base64\", one of them",
        )),
    }
}

/// `a=1&b=x%20y` as pairs, `+` and %-escapes decoded. As browsers do (WHATWG
/// `application/x-www-form-urlencoded`), a `%` not followed by two hex digits stays as it is;
/// what decodes to bytes that are not UTF-8 is refused rather than replaced.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, Failure> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| Failure::bad(format!("the query part {text:?} is not UTF-8 once decoded")))
    };
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// The one value of `name`; twice is an error rather than a guess.
fn param(params: &[(String, String)], name: &str) -> Result<Option<String>, Failure> {
    let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
    let first = values.next().cloned();
    if values.next().is_some() {
        return Err(Failure::bad(format!("{name} is given more than once")));
    }
    Ok(first)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, POST"));
    }
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "code": code, "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_refuse_bad_escapes() {
        let params = parse_query("channel=chat%3Alobby&since=ab%3A3&x=a+b").unwrap();
        assert_eq!(param(&params, "channel").unwrap().unwrap(), "chat:lobby");
        assert_eq!(param(&params, "since").unwrap().unwrap(), "ab:3");
        assert_eq!(param(&params, "x").unwrap().unwrap(), "a b");
        // A lone `%` stays literal, as in browsers; bytes that are not UTF-8 are refused.
        assert_eq!(
            param(&parse_query("channel=%4&b=%zz").unwrap(), "channel")
                .unwrap()
                .unwrap(),
            "%4"
        );
        assert_eq!(
            param(&parse_query("b=%zz").unwrap(), "b").unwrap().unwrap(),
            "%zz"
        );
        assert!(parse_query("channel=%ff").is_err());
        assert!(parse_query("channel=%e2%82").is_err());
        assert!(param(&parse_query("a=1&a=2").unwrap(), "a").is_err());
    }

    #[test]
    fn the_config_refuses_open_or_exposed_apis() {
        let key = "0123456789abcdef".to_string();
        let mut config = HttpApiConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            api_keys: vec![key.clone()],
            ..HttpApiConfig::default()
        };
        config.check().unwrap();
        config.api_keys = vec![];
        assert!(config.check().is_err());
        config.api_keys = vec!["short".into()];
        assert!(config.check().is_err());
        config.api_keys = vec![key];
        config.listen = Some("0.0.0.0:8080".parse().unwrap());
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("loopback") && e.contains("http_api.tls"), "{e}");
        config.tls = true;
        config.check().unwrap();
        HttpApiConfig::default().check().unwrap();
    }
}
