//! The client library: connect, list the server's protocols, authenticate, keep alive, say
//! hello, exchange packets on application protocols, and hear about a lost connection.
//!
//! ```no_run
//! use openserver::client::{Client, ClientConfig};
//! # async fn run() -> Result<(), openserver::client::ClientError> {
//! let client = Client::connect("127.0.0.1:21843", ClientConfig::default()).await?;
//! let user_id = client.authenticate_db("alice", "secret").await?;
//! client.start_keep_alive().await?;
//! assert_eq!(client.hello("world").await?, "Hello world");
//! client.quit().await;
//! # Ok(()) }
//! ```
//!
//! With [`ClientConfig::reconnect`] set, a lost connection is re-established with backoff and
//! the last successful login and keep-alive are replayed; [`Client::events`] reports each step.
//!
//! # What survives a reconnect
//!
//! The server sees a new session: whatever it kept for the old one (a typed protocol's
//! per-session state, say, a watch on a game) is gone, and the old session's
//! [`on_close`](crate::app::Handler::on_close) has run. On the client:
//!
//! - **Kept**: the [`Client`] and its clones; every [`Subscription`] and
//!   [`Remote`](crate::app::Remote) (the same receivers, with what they had queued; pushes
//!   the server sent while no connection was up are not replayed); the login and keep-alive,
//!   replayed before anything else.
//! - **Restored by the application**: server-side state, through hooks added with
//!   [`Client::on_reconnect`] (or [`Remote::on_reconnect`](crate::app::Remote::on_reconnect)).
//!   They run in the order they were added, on the new connection, after the login and
//!   keep-alive replay and **before** the connection is handed to anyone else: until every
//!   hook has finished, other calls fail fast with [`ClientError::Closed`], so no request of
//!   the application reaches a server that has not been set up again. A failing hook (or one
//!   that takes longer than [`ClientConfig::request_timeout`]) is reported as
//!   [`ClientEvent::RestoreFailed`]; the client keeps the connection and runs the remaining
//!   hooks, then reports [`ClientEvent::Reconnected`].
//! - **Lost**: requests in flight when the connection dropped fail with
//!   [`ClientError::Closed`] carrying the reason, and so do calls made while reconnecting
//!   (until [`ClientEvent::Reconnected`]); the client does not resend them, since it cannot
//!   know whether the server acted on them.

mod config;
mod connection;
mod restore;
pub(crate) mod subscription;

pub use config::{ClientConfig, ReconnectPolicy};
pub use connection::Incoming;
pub use restore::ReconnectHookId;
pub use subscription::Subscription;

use crate::auth::scram::ClientExchange;
use crate::session::{lock, CloseReason, Session};
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::dbauth::DatabaseAuthMessage;
use crate::wire::hello::HelloMessage;
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::notice::{self, FirstBytes};
use crate::wire::scram::ScramMessage;
use crate::wire::token::{denied as token_denied, TokenAuthMessage};
use crate::wire::winauth::WinAuthMessage;
use crate::wire::{protocol_id, DecodeError, Frame, Message, Secret};
use bytes::Bytes;
use connection::{ConnectionParts, Pending, Subscriptions};
use restore::Hooks;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made (for a reason none of the variants below names:
    /// a name that does not resolve, a timeout, an unreachable network).
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What failed.
        message: String,
    },
    /// Nothing accepted the TCP connection (connection refused): no server runs at `addr`,
    /// or it listens on another address or port.
    #[error("nothing listens on {addr}")]
    NotListening {
        /// The address tried.
        addr: String,
    },
    /// The address is not `HOST:PORT`.
    #[error("{addr:?} is not HOST:PORT: {message}")]
    BadAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// The client's TLS settings cannot be used: a CA or certificate file that cannot be
    /// read or holds nothing usable, a malformed fingerprint, an invalid server name.
    #[error("{0}")]
    TlsConfig(String),
    /// The server's certificate was not accepted: an unknown issuer, another name, expired,
    /// or not the pinned fingerprint.
    #[error("cannot verify the server at {addr}: {message}")]
    TlsVerification {
        /// The address connected to.
        addr: String,
        /// rustls' reason.
        message: String,
    },
    /// The TLS handshake failed for another reason: the server closed the connection during
    /// it, or sent a TLS alert.
    #[error("TLS handshake with {addr} failed: {message}")]
    TlsHandshake {
        /// The address connected to.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The server refused the connection before login and said why in its notice
    /// ([`notice::Refusal`]; `docs/PROTOCOL.md`, "Refusals before login").
    #[error("{addr} refused the connection: {}", refusal_reason(.refusal))]
    Refused {
        /// The address connected to.
        addr: String,
        /// The server's reason, with the wait it gave.
        refusal: notice::Refusal,
    },
    /// The server speaks TLS, and this client connected in plaintext: its answer was a TLS
    /// record.
    #[error("the server at {addr} speaks TLS; connect with TLS")]
    ServerSpeaksTls {
        /// The address connected to.
        addr: String,
    },
    /// The server speaks plaintext, and this client connected with TLS: its answer to the
    /// ClientHello was a session-layer frame.
    #[error("the server at {addr} speaks plaintext, not TLS; connect without TLS")]
    ServerSpeaksPlaintext {
        /// The address connected to.
        addr: String,
    },
    /// The server denied the login.
    #[error("access denied")]
    AccessDenied,
    /// The server refused the login token because it has expired: get a new one from the
    /// application's backend.
    #[error("access denied: the token has expired")]
    TokenExpired,
    /// The server answered with an ERROR about this protocol.
    #[error("server error for protocol {protocol_id}: {message}")]
    Remote {
        /// The protocol the error is about.
        protocol_id: u16,
        /// The server's message.
        message: String,
    },
    /// The server's answer did not decode.
    #[error("malformed answer from server: {0}")]
    Malformed(#[from] DecodeError),
    /// The server answered something the request does not expect.
    #[error("unexpected answer from server: {0}")]
    Unexpected(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection is closed (with the reason, when known).
    #[error("connection closed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<CloseReason>),
    /// The application refused a request of a typed protocol ([`crate::app`]): the code and
    /// message its handler returned as an [`AppError`](crate::app::AppError).
    #[error("{message} ({code})")]
    Application {
        /// The typed protocol's id.
        protocol_id: u16,
        /// The application's stable error code, e.g. `"not_found"`.
        code: String,
        /// The application's message.
        message: String,
    },
    /// A SCRAM login was accepted, but the server could not prove it holds the user's keys
    /// (its signature did not verify): it may be an impostor, so the client closed the
    /// connection. Carries what went wrong.
    #[error("server not verified: {0}")]
    ServerNotVerified(String),
}

/// A refusal's reason in words, for [`ClientError::Refused`].
fn refusal_reason(refusal: &notice::Refusal) -> String {
    match refusal {
        notice::Refusal::FailedLogins { retry_after } => format!(
            "too many failed logins from this address; retry in {} s",
            retry_after.as_secs()
        ),
        notice::Refusal::TooManyFromAddress => "too many connections from this address".into(),
        _ => "the server is busy; retry later".into(),
    }
}

/// What happens to the connection, as [`Client::events`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The connection ended without [`Client::quit`]: the server closed it (QUIT on shutdown,
    /// a kick), or it was lost ([`CloseReason::is_lost`]: keep-alive silence, a reset).
    Disconnected(CloseReason),
    /// A reconnect attempt will start after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a loss.
        attempt: u32,
        /// The wait before it.
        delay: std::time::Duration,
    },
    /// A hook added with [`Client::on_reconnect`] failed (or took longer than the request
    /// timeout) while the new connection was being set up. What it should have restored is
    /// not in place; the connection is kept and the other hooks still run. Comes before
    /// [`Reconnected`](Self::Reconnected).
    RestoreFailed {
        /// The hook, as [`Client::on_reconnect`] returned it.
        hook: ReconnectHookId,
        /// Why it failed.
        error: ClientError,
    },
    /// Connected again, with the login and keep-alive replayed and every reconnect hook run;
    /// from now on calls use the new connection.
    Reconnected,
    /// The client is closed for good: by [`Client::quit`], or reconnecting gave up or is off.
    Closed(CloseReason),
}

/// Credentials remembered for replay after a reconnect.
#[derive(Clone)]
enum Login {
    Database {
        user: String,
        password: Secret,
    },
    Win {
        user: String,
        password: Secret,
        domain: String,
    },
    Scram {
        user: String,
        password: Secret,
    },
    Token {
        token: Secret,
    },
}

/// A resume token the server gave, and when it stops being worth trying.
struct Resume {
    token: Secret,
    until: tokio::time::Instant,
}

/// Who a token login logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLogin {
    /// The user's numeric id in the server's store; 0 for a user it does not hold.
    pub user_id: i32,
    /// The user the token named.
    pub user: String,
}

/// One live connection.
#[derive(Clone)]
struct Conn {
    session: Session,
    pending: Arc<Pending>,
    /// Resolves with the close reason when the connection's task ends.
    done: watch::Receiver<Option<CloseReason>>,
}

/// A connection to an openserver (or DotNetOpenServer) server. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where to (re)connect.
    addr: String,
    config: ClientConfig,
    /// The current connection; replaced on reconnect.
    conn: Mutex<Conn>,
    subscriptions: Arc<Subscriptions>,
    /// The running heartbeat, if keep-alive was started; the read loop refreshes it.
    heartbeat: Arc<Mutex<Option<Heartbeat>>>,
    /// What the application re-establishes after a reconnect.
    hooks: Mutex<Hooks>,
    /// Whether keep-alive should run (replayed after reconnect).
    keep_alive: Mutex<bool>,
    /// The last successful login (replayed after reconnect).
    login: Mutex<Option<Login>>,
    /// The latest resume token, tried before `login` after a reconnect.
    resume: Mutex<Option<Resume>>,
    /// Keeps register-then-send atomic so answers match requests in order.
    request_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<ClientEvent>,
    /// Cancelled by `quit`: no more reconnects.
    quitting: CancellationToken,
    /// The final close reason, once the client is closed for good.
    closed: watch::Sender<Option<CloseReason>>,
}

use crate::protocol::keepalive::Heartbeat;

impl Client {
    /// Connects to `addr` (`host:port`) over TCP, then TLS if [`ClientConfig::tls`] is set.
    pub async fn connect(
        addr: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let addr = addr.into();
        let subscriptions = Arc::new(Subscriptions::default());
        let heartbeat = Arc::new(Mutex::new(None));
        let conn = open(&addr, &config, &subscriptions, &heartbeat).await?;
        let (events, _) = broadcast::channel(64);
        let (closed, _) = watch::channel(None);
        let client = Client {
            shared: Arc::new(Shared {
                addr,
                config,
                conn: Mutex::new(conn),
                subscriptions,
                heartbeat,
                hooks: Mutex::new(Hooks::default()),
                keep_alive: Mutex::new(false),
                login: Mutex::new(None),
                resume: Mutex::new(None),
                request_lock: tokio::sync::Mutex::new(()),
                events,
                quitting: CancellationToken::new(),
                closed,
            }),
        };
        tokio::spawn(supervise(client.shared.clone()));
        Ok(client)
    }

    /// The protocol ids the server supports (Capabilities GET_PROTOCOL_IDS).
    pub async fn protocol_ids(&self) -> Result<Vec<u16>, ClientError> {
        let body = self
            .request(
                protocol_id::CAPABILITIES,
                CapabilitiesMessage::GetProtocolIds.to_frame().body,
            )
            .await?;
        match CapabilitiesMessage::decode(&body)? {
            CapabilitiesMessage::ProtocolIds(ids) => Ok(ids),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Logs in with DatabaseAuth; returns the user's numeric id.
    pub async fn authenticate_db(&self, user: &str, password: &str) -> Result<i32, ClientError> {
        let login = Login::Database {
            user: user.into(),
            password: password.into(),
        };
        let conn = self.current();
        let id = self.login_on(&conn, &login).await?;
        self.logged_in(&conn, login).await;
        Ok(id)
    }

    /// Logs in with WinAuth; `domain` may be empty.
    pub async fn authenticate_win(
        &self,
        user: &str,
        password: &str,
        domain: &str,
    ) -> Result<(), ClientError> {
        let login = Login::Win {
            user: user.into(),
            password: password.into(),
            domain: domain.into(),
        };
        let conn = self.current();
        self.login_on(&conn, &login).await?;
        self.logged_in(&conn, login).await;
        Ok(())
    }

    /// Logs in with ScramAuth (SCRAM-SHA-256, protocol 4): the password never crosses the
    /// wire, and the server proves it holds the user's keys. The server must offer protocol 4
    /// (see [`protocol_ids`](Self::protocol_ids)).
    ///
    /// A denial is [`ClientError::AccessDenied`] (an empty user name is denied without asking,
    /// since SCRAM cannot express it). A server whose signature does not verify is
    /// [`ClientError::ServerNotVerified`], and the connection is closed. A server-first
    /// message asking for fewer than 4096 or more than 1,000,000 iterations is refused as
    /// [`ClientError::Unexpected`].
    pub async fn authenticate_scram(&self, user: &str, password: &str) -> Result<(), ClientError> {
        let login = Login::Scram {
            user: user.into(),
            password: password.into(),
        };
        let conn = self.current();
        self.login_on(&conn, &login).await?;
        self.logged_in(&conn, login).await;
        Ok(())
    }

    /// Logs in with TokenAuth (protocol 7) with a token signed by the application's backend
    /// (a JWT naming the user in `sub`; see [`crate::auth::token`]). An expired token is
    /// [`ClientError::TokenExpired`], any other refusal [`ClientError::AccessDenied`]. The
    /// server must offer protocol 7 (`openserver serve` does). After a reconnect the client
    /// logs in with the resume token the server gave, else with this token again.
    pub async fn authenticate_token(&self, token: &str) -> Result<TokenLogin, ClientError> {
        let token = Secret::new(token);
        let conn = self.current();
        let answer = token_login(&self.shared, &conn, &token).await?;
        *lock(&self.shared.login) = Some(Login::Token { token });
        Ok(answer)
    }

    /// Remembers `login` for reconnects, and fetches a resume token for them.
    async fn logged_in(&self, conn: &Conn, login: Login) {
        *lock(&self.shared.login) = Some(login);
        fetch_resume(&self.shared, conn).await;
    }

    /// Starts keep-alive: a heartbeat every `keep_alive.interval`; silence from the server for
    /// `keep_alive.timeout` closes the connection as lost. Call after authenticating (the
    /// server accepts keep-alive only then).
    pub async fn start_keep_alive(&self) -> Result<(), ClientError> {
        *lock(&self.shared.keep_alive) = true;
        let conn = self.current();
        start_heartbeat(&self.shared, &conn).await
    }

    /// Sends `message` on Hello (10) and returns the server's answer.
    pub async fn hello(&self, message: &str) -> Result<String, ClientError> {
        let request = HelloMessage(message.to_owned()).to_frame();
        let body = self.request(protocol_id::HELLO, request.body).await?;
        Ok(HelloMessage::decode(&body)?.0)
    }

    /// Sends one packet on any protocol without waiting for an answer.
    pub async fn send(&self, protocol_id: u16, body: impl Into<Bytes>) -> Result<(), ClientError> {
        let conn = self.current();
        conn.session
            .send(Frame::new(protocol_id, body))
            .await
            .map_err(|_| conn.pending.closed(conn.session.close_reason()))
    }

    /// Sends one packet and waits for the next packet of the same protocol, for protocols that
    /// answer every request. DNOS packets carry no request ids, so the answer is simply the
    /// next packet of that id (requests of one protocol are answered in order): don't use it
    /// on a protocol on which the server also pushes unrequested packets; use
    /// [`send`](Self::send) and [`subscribe`](Self::subscribe) there.
    pub async fn request(
        &self,
        protocol_id: u16,
        body: impl Into<Bytes>,
    ) -> Result<Bytes, ClientError> {
        let conn = self.current();
        request_on(
            &self.shared,
            &conn,
            protocol_id,
            Frame::new(protocol_id, body),
        )
        .await
    }

    /// Receives every packet of `protocol_id` that no request is waiting for (server pushes),
    /// and the server's errors about it. A later call replaces the earlier subscription. The
    /// subscription survives reconnects and ends (`recv` gives `None`) when the client closes
    /// for good.
    ///
    /// The reader never waits for a subscriber: each subscription queues up to
    /// [`ClientConfig::queue_depth`] packets, and one that falls behind loses its oldest
    /// packets and hears [`Incoming::Lagged`] (see [`Subscription`]). Requests on other
    /// protocols and the heartbeat go on regardless.
    pub fn subscribe(&self, protocol_id: u16) -> Subscription {
        let (subscription, sink) = Subscription::new(self.shared.config.queue_depth);
        self.subscribe_sink(protocol_id, sink);
        subscription
    }

    /// Routes the packets of `protocol_id` that no request waits for to `sink`, replacing any
    /// earlier subscription (the application layer's typed clients use this).
    pub(crate) fn subscribe_sink(&self, protocol_id: u16, sink: Arc<dyn subscription::Sink>) {
        lock(&self.shared.subscriptions).insert(protocol_id, sink);
    }

    /// Adds a hook that re-establishes application state after each automatic reconnect
    /// (see "What survives a reconnect" in the [module docs](self)): re-subscribing on the
    /// server, re-sending a protocol's setup. It gets the client; every call it makes on it
    /// (directly or through a [`Remote`](crate::app::Remote) of this client) goes to the new
    /// connection, which the rest of the application gets only once every hook has run.
    /// Hooks run in the order they were added, each within
    /// [`ClientConfig::request_timeout`]; an `Err` is reported as
    /// [`ClientEvent::RestoreFailed`] and the client goes on. Tasks a hook spawns are not
    /// part of it and see the new connection only after [`ClientEvent::Reconnected`].
    ///
    /// The hook is not run for the first connection: set the state up there yourself. It is
    /// dropped when the client closes for good, or with
    /// [`remove_reconnect_hook`](Self::remove_reconnect_hook).
    ///
    /// ```no_run
    /// # use openserver::client::{Client, ClientConfig, ReconnectPolicy};
    /// # async fn run(client: Client) -> Result<(), openserver::client::ClientError> {
    /// client.send(0x0200, &b"watch chess"[..]).await?;
    /// client.on_reconnect(|client| async move { client.send(0x0200, &b"watch chess"[..]).await });
    /// # Ok(()) }
    /// ```
    pub fn on_reconnect<F, Fut>(&self, hook: F) -> ReconnectHookId
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
    {
        lock(&self.shared.hooks).add(hook)
    }

    /// Removes a hook added with [`on_reconnect`](Self::on_reconnect); whether it was there.
    /// A reconnect already under way may still run it once.
    pub fn remove_reconnect_hook(&self, id: ReconnectHookId) -> bool {
        lock(&self.shared.hooks).remove(id)
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// Connection events: losses, reconnect attempts, the final close.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }

    /// Whether the current connection is open.
    pub fn is_connected(&self) -> bool {
        !self.current().session.is_closing()
    }

    /// Waits until the client is closed for good and returns why: after [`quit`](Self::quit),
    /// or after a loss when reconnecting is off or gave up.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return CloseReason::Local;
            }
        }
    }

    /// Sends QUIT and closes the connection; no reconnect follows.
    pub async fn quit(&self) {
        self.shared.quitting.cancel();
        let conn = self.current();
        let _ = conn.session.try_send(KeepAliveMessage::Quit.to_frame());
        conn.session.close(CloseReason::Local);
        let mut done = conn.done.clone();
        let _ = done.wait_for(Option::is_some).await;
    }

    /// The connection calls use: the published one, or the one being set up when called
    /// from a reconnect hook.
    fn current(&self) -> Conn {
        if let Some(conn) = restore::restoring_conn(&self.shared) {
            return conn;
        }
        lock(&self.shared.conn).clone()
    }

    async fn login_on(&self, conn: &Conn, login: &Login) -> Result<i32, ClientError> {
        login_on(&self.shared, conn, login).await
    }
}

async fn open(
    addr: &str,
    config: &ClientConfig,
    subscriptions: &Arc<Subscriptions>,
    heartbeat: &Arc<Mutex<Option<Heartbeat>>>,
) -> Result<Conn, ClientError> {
    let connect_error = |message: String| ClientError::Connect {
        addr: addr.to_owned(),
        message,
    };
    if !addr.contains(':') {
        return Err(ClientError::BadAddress {
            addr: addr.to_owned(),
            message: "no port".into(),
        });
    }
    let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(format!("timed out after {:?}", config.connect_timeout)))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ClientError::NotListening {
                addr: addr.to_owned(),
            },
            // std's word for an address it cannot parse.
            std::io::ErrorKind::InvalidInput => ClientError::BadAddress {
                addr: addr.to_owned(),
                message: e.to_string(),
            },
            _ => connect_error(e.to_string()),
        })?;
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_err(|e| connect_error(e.to_string()))?;
    match &config.tls {
        None => Ok(start_connection(
            stream,
            peer,
            config,
            subscriptions,
            heartbeat,
        )),
        Some(tls) => {
            let (connector, name) = tls
                .connector(host_of(addr))
                .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
            // The first bytes the server sends are kept until the handshake is over: if it
            // fails, they say whether the server refused us or speaks plaintext.
            let recorded = FirstBytesRecorder::new(stream);
            let handshake = connector.connect(name, recorded).into_fallible();
            let mut stream = tokio::time::timeout(config.connect_timeout, handshake)
                .await
                .map_err(|_| ClientError::TlsHandshake {
                    addr: addr.to_owned(),
                    message: format!("no answer within {:?}", config.connect_timeout),
                })?
                .map_err(|(error, recorder)| {
                    let failure = HandshakeFailure {
                        error,
                        first_bytes: recorder.first.unwrap_or_default(),
                    };
                    handshake_error(addr, &failure)
                })?;
            stream.get_mut().0.stop();
            Ok(start_connection(
                stream,
                peer,
                config,
                subscriptions,
                heartbeat,
            ))
        }
    }
}

/// What a failed TLS handshake with `addr` means for the user.
fn handshake_error(addr: &str, e: &HandshakeFailure) -> ClientError {
    let addr = addr.to_owned();
    match notice::classify(&e.first_bytes) {
        FirstBytes::Refused(refusal) => return ClientError::Refused { addr, refusal },
        FirstBytes::Plaintext => return ClientError::ServerSpeaksPlaintext { addr },
        _ => {}
    }
    let rustls_error = e
        .error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => ClientError::TlsVerification {
            addr,
            message: certificate_problem(why),
        },
        _ if e.first_bytes.is_empty()
            && matches!(
                e.error.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            ClientError::TlsHandshake {
                addr,
                message: "the server closed the connection without answering".into(),
            }
        }
        _ => ClientError::TlsHandshake {
            addr,
            message: e.error.to_string(),
        },
    }
}

/// Why the server's certificate was not accepted, in words.
pub(crate) fn certificate_problem(why: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match why {
        E::UnknownIssuer => "its certificate is not issued by a trusted CA".into(),
        // The issuer's name is a trusted CA's, the signature is not: another CA of that name.
        E::BadSignature => {
            "its certificate is not signed by the trusted CA of its issuer's name (another CA \
             of the same name, or a damaged certificate)"
                .into()
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "its certificate is not valid for this server name".into()
        }
        E::Expired | E::ExpiredContext { .. } => "its certificate has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "its certificate is not valid yet".into(),
        E::Revoked => "its certificate is revoked".into(),
        // Our own verifiers' reasons (a fingerprint that does not match) read as they are.
        E::Other(other) => other.0.to_string(),
        other => format!("its certificate was refused ({other:?})"),
    }
}

/// A failed handshake: the error, and the first bytes the server sent.
struct HandshakeFailure {
    error: std::io::Error,
    first_bytes: Vec<u8>,
}

/// Keeps the first bytes read from a stream (at most [`FirstBytesRecorder::KEEP`]) until
/// [`stop`](FirstBytesRecorder::stop) is called; passes everything through.
struct FirstBytesRecorder<S> {
    inner: S,
    /// `None` once stopped.
    first: Option<Vec<u8>>,
}

impl<S> FirstBytesRecorder<S> {
    /// Enough for a refusal notice, which is all it is read for.
    const KEEP: usize = 512;

    fn new(inner: S) -> Self {
        FirstBytesRecorder {
            inner,
            first: Some(Vec::new()),
        }
    }

    /// Stops recording and frees what was kept.
    fn stop(&mut self) {
        self.first = None;
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytesRecorder<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(first) = &mut self.first {
            let new = &buf.filled()[before..];
            let room = Self::KEEP.saturating_sub(first.len());
            first.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytesRecorder<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Starts the read loop and writer of an established connection.
fn start_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    config: &ClientConfig,
    subscriptions: &Arc<Subscriptions>,
    heartbeat: &Arc<Mutex<Option<Heartbeat>>>,
) -> Conn
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::new(0, peer, config.queue_depth, config.log_packets);
    let pending = Arc::new(Pending::default());
    let (done_tx, done) = watch::channel(None);
    let parts = ConnectionParts {
        session: session.clone(),
        pending: pending.clone(),
        subscriptions: subscriptions.clone(),
        heartbeat: heartbeat.clone(),
        max_frame: config.max_frame,
        write_timeout: config.write_timeout,
        log_packets: config.log_packets,
    };
    tokio::spawn(async move {
        let reason = connection::run(stream, parts).await;
        done_tx.send_replace(Some(reason));
    });
    Conn {
        session,
        pending,
        done,
    }
}

async fn request_on(
    shared: &Shared,
    conn: &Conn,
    protocol_id: u16,
    frame: Frame,
) -> Result<Bytes, ClientError> {
    let (tx, rx) = oneshot::channel();
    {
        let _order = shared.request_lock.lock().await;
        conn.pending.push(protocol_id, tx);
        conn.session
            .send(frame)
            .await
            .map_err(|_| conn.pending.closed(conn.session.close_reason()))?;
    }
    let timeout = shared.config.request_timeout;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(conn.pending.closed(conn.session.close_reason())),
        Err(_) => Err(ClientError::Timeout(timeout)),
    }
}

async fn login_on(shared: &Shared, conn: &Conn, login: &Login) -> Result<i32, ClientError> {
    match login {
        Login::Database { user, password } => {
            let request = DatabaseAuthMessage::Authenticate {
                user: user.clone(),
                password: password.clone(),
            };
            let body =
                request_on(shared, conn, protocol_id::DATABASE_AUTH, request.to_frame()).await?;
            match DatabaseAuthMessage::decode(&body)? {
                DatabaseAuthMessage::Authenticated { user_id } => Ok(user_id),
                DatabaseAuthMessage::AccessDenied
                | DatabaseAuthMessage::UserNotFound
                | DatabaseAuthMessage::InvalidPassword
                | DatabaseAuthMessage::EmailNotVerified => Err(ClientError::AccessDenied),
                DatabaseAuthMessage::Error(message) => Err(ClientError::Remote {
                    protocol_id: protocol_id::DATABASE_AUTH,
                    message,
                }),
                other => Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        Login::Win {
            user,
            password,
            domain,
        } => {
            let request = WinAuthMessage::Authenticate {
                user: user.clone(),
                password: password.clone(),
                domain: domain.clone(),
            };
            let body = request_on(shared, conn, protocol_id::WIN_AUTH, request.to_frame()).await?;
            match WinAuthMessage::decode(&body)? {
                WinAuthMessage::Authenticated => Ok(0),
                WinAuthMessage::AccessDenied => Err(ClientError::AccessDenied),
                WinAuthMessage::Error(message) => Err(ClientError::Remote {
                    protocol_id: protocol_id::WIN_AUTH,
                    message,
                }),
                other => Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        Login::Scram { user, password } => {
            scram_login(shared, conn, user, password).await.map(|()| 0)
        }
        Login::Token { token } => token_login(shared, conn, token)
            .await
            .map(|login| login.user_id),
    }
}

/// One TokenAuth login; keeps the resume token it brings.
async fn token_login(
    shared: &Shared,
    conn: &Conn,
    token: &Secret,
) -> Result<TokenLogin, ClientError> {
    let request = TokenAuthMessage::Authenticate {
        token: token.clone(),
    };
    let body = request_on(shared, conn, protocol_id::TOKEN_AUTH, request.to_frame()).await?;
    match TokenAuthMessage::decode(&body)? {
        TokenAuthMessage::Authenticated {
            user_id,
            user,
            resume,
            resume_ttl_secs,
        } => {
            keep_resume(shared, resume, resume_ttl_secs);
            Ok(TokenLogin { user_id, user })
        }
        TokenAuthMessage::AccessDenied { reason } if reason == token_denied::EXPIRED => {
            Err(ClientError::TokenExpired)
        }
        TokenAuthMessage::AccessDenied { .. } => Err(ClientError::AccessDenied),
        TokenAuthMessage::Error(message) => Err(ClientError::Remote {
            protocol_id: protocol_id::TOKEN_AUTH,
            message,
        }),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Keeps a resume token, if reconnecting will use it; a little before its expiry it is no
/// longer tried, since the server would refuse it.
fn keep_resume(shared: &Shared, token: Secret, ttl_secs: i32) {
    if !shared.config.resume_tokens || shared.config.reconnect.is_none() {
        return;
    }
    let ttl = std::time::Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
    let until = tokio::time::Instant::now() + ttl.saturating_sub(std::time::Duration::from_secs(5));
    *lock(&shared.resume) = Some(Resume { token, until });
}

/// After a password login: asks the server for a resume token if it offers TokenAuth.
/// A resume token only saves the server work, so a failure here is logged, not returned.
async fn fetch_resume(shared: &Shared, conn: &Conn) {
    if !shared.config.resume_tokens || shared.config.reconnect.is_none() {
        return;
    }
    let fetch = async {
        let body = request_on(
            shared,
            conn,
            protocol_id::CAPABILITIES,
            CapabilitiesMessage::GetProtocolIds.to_frame(),
        )
        .await?;
        let CapabilitiesMessage::ProtocolIds(ids) = CapabilitiesMessage::decode(&body)? else {
            return Err(ClientError::Unexpected("not PROTOCOL_IDS".into()));
        };
        if !ids.contains(&protocol_id::TOKEN_AUTH) {
            return Ok(());
        }
        let request = TokenAuthMessage::RequestResume.to_frame();
        let body = request_on(shared, conn, protocol_id::TOKEN_AUTH, request).await?;
        match TokenAuthMessage::decode(&body)? {
            TokenAuthMessage::Resume { token, ttl_secs } => {
                keep_resume(shared, token, ttl_secs);
                Ok(())
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    };
    if let Err(e) = fetch.await {
        tracing::debug!(addr = %shared.addr, error = %e, "no resume token");
    }
}

/// Runs one ScramAuth exchange: CLIENT_FIRST, CLIENT_FINAL with the proof, then the check of
/// the server's signature.
async fn scram_login(
    shared: &Shared,
    conn: &Conn,
    user: &str,
    password: &Secret,
) -> Result<(), ClientError> {
    let exchange = ClientExchange::new(user, password).map_err(|_| ClientError::AccessDenied)?;
    let first = ScramMessage::ClientFirst(exchange.client_first());
    let server_first = match scram_request(shared, conn, first).await? {
        ScramMessage::ServerFirst(message) => message,
        other => return Err(scram_refusal(other)),
    };
    // PBKDF2 with the server's iteration count (up to about a second): off the async threads.
    let computed = tokio::task::spawn_blocking(move || exchange.client_final(&server_first))
        .await
        .map_err(|e| ClientError::Unexpected(format!("SCRAM task failed: {e}")))?;
    let (client_final, pending) = match computed {
        Ok(done) => done,
        Err(e) => {
            // Tell the server, so its half-done exchange does not refuse our next attempt.
            let _ = conn.session.try_send(
                CapabilitiesMessage::Error {
                    protocol_id: protocol_id::SCRAM_AUTH,
                    message: e.to_string(),
                }
                .to_frame(),
            );
            return Err(ClientError::Unexpected(format!(
                "server-first refused: {e}"
            )));
        }
    };
    let server_final =
        match scram_request(shared, conn, ScramMessage::ClientFinal(client_final)).await? {
            ScramMessage::ServerFinal(message) => message,
            other => return Err(scram_refusal(other)),
        };
    pending.verify(&server_final).map_err(|e| {
        // The session is logged in to something that does not know the user's keys: nothing
        // more may be sent to it.
        conn.session.close(CloseReason::Local);
        ClientError::ServerNotVerified(e.to_string())
    })
}

async fn scram_request(
    shared: &Shared,
    conn: &Conn,
    message: ScramMessage,
) -> Result<ScramMessage, ClientError> {
    let body = request_on(shared, conn, protocol_id::SCRAM_AUTH, message.to_frame()).await?;
    Ok(ScramMessage::decode(&body)?)
}

/// The error for a ScramAuth answer that does not continue the exchange.
fn scram_refusal(answer: ScramMessage) -> ClientError {
    match answer {
        ScramMessage::AccessDenied => ClientError::AccessDenied,
        ScramMessage::Error(message) => ClientError::Remote {
            protocol_id: protocol_id::SCRAM_AUTH,
            message,
        },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

async fn start_heartbeat(shared: &Shared, conn: &Conn) -> Result<(), ClientError> {
    // The server creates its keep-alive instance on our first packet, so send one now.
    conn.session
        .send(KeepAliveMessage::KeepAlive.to_frame())
        .await
        .map_err(|_| conn.pending.closed(conn.session.close_reason()))?;
    let hb = Heartbeat::start(conn.session.clone(), shared.config.keep_alive);
    *lock(&shared.heartbeat) = Some(hb);
    Ok(())
}

/// Watches the connection; on loss, reports it and reconnects if the policy says so.
async fn supervise(shared: Arc<Shared>) {
    loop {
        let mut done = lock(&shared.conn).done.clone();
        let reason = match done.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Local),
            Err(_) => CloseReason::Local,
        };
        *lock(&shared.heartbeat) = None;
        if shared.quitting.is_cancelled() {
            return finish(&shared, reason);
        }
        if reason.is_lost() {
            tracing::warn!(addr = %shared.addr, %reason, "connection lost");
        } else {
            tracing::info!(addr = %shared.addr, %reason, "disconnected");
        }
        let _ = shared
            .events
            .send(ClientEvent::Disconnected(reason.clone()));
        let Some(policy) = shared.config.reconnect.clone() else {
            return finish(&shared, reason);
        };
        if !reconnect(&shared, &policy).await {
            return finish(&shared, reason);
        }
    }
}

/// Tries to reconnect until it succeeds, the policy gives up, or the client quits.
async fn reconnect(shared: &Arc<Shared>, policy: &ReconnectPolicy) -> bool {
    let mut attempt = 0u32;
    loop {
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            return false;
        }
        let delay = policy.delay(attempt);
        attempt += 1;
        let _ = shared
            .events
            .send(ClientEvent::Reconnecting { attempt, delay });
        tokio::select! {
            () = shared.quitting.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        match reestablish(shared).await {
            Ok(conn) => {
                // The application's state first, so that nothing it sends meets a server
                // that has not been set up again.
                let failures = tokio::select! {
                    () = shared.quitting.cancelled() => Vec::new(),
                    failures = restore::run_hooks(shared, &conn) => failures,
                };
                if conn.session.is_closing() && !shared.quitting.is_cancelled() {
                    // Lost again while being set up: this attempt failed.
                    tracing::warn!(
                        addr = %shared.addr,
                        attempt,
                        "connection lost during the reconnect hooks"
                    );
                    continue;
                }
                *lock(&shared.conn) = conn.clone();
                if shared.quitting.is_cancelled() {
                    // `quit` may have closed the old connection before this one was
                    // published; close this one too (after the publish, so one of us does).
                    conn.session.close(CloseReason::Local);
                    return true;
                }
                for (hook, error) in failures {
                    let _ = shared
                        .events
                        .send(ClientEvent::RestoreFailed { hook, error });
                }
                tracing::info!(addr = %shared.addr, attempt, "reconnected");
                let _ = shared.events.send(ClientEvent::Reconnected);
                return true;
            }
            Err(e) => tracing::warn!(addr = %shared.addr, attempt, error = %e, "reconnect failed"),
        }
    }
}

/// A new connection with the last login and keep-alive replayed.
async fn reestablish(shared: &Arc<Shared>) -> Result<Conn, ClientError> {
    let conn = open(
        &shared.addr,
        &shared.config,
        &shared.subscriptions,
        &shared.heartbeat,
    )
    .await?;
    let login = lock(&shared.login).clone();
    let resume = lock(&shared.resume)
        .as_ref()
        .filter(|r| r.until > tokio::time::Instant::now())
        .map(|r| r.token.clone());
    let replay = async {
        if let Some(login) = login {
            // The resume token first: it costs the server no password hash. Refused (the
            // user was deleted, or another node's secret differs), the login itself.
            let resumed = match resume {
                Some(token) => match token_login(shared, &conn, &token).await {
                    Ok(_) => true,
                    Err(e @ (ClientError::Closed(_) | ClientError::Timeout(_))) => return Err(e),
                    Err(e) => {
                        tracing::info!(addr = %shared.addr, error = %e, "resume token refused; logging in again");
                        *lock(&shared.resume) = None;
                        false
                    }
                },
                None => false,
            };
            if !resumed {
                login_on(shared, &conn, &login).await?;
                if !matches!(login, Login::Token { .. }) {
                    fetch_resume(shared, &conn).await;
                }
            }
        }
        if *lock(&shared.keep_alive) {
            start_heartbeat(shared, &conn).await?;
        }
        Ok(())
    };
    match replay.await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.session.close(CloseReason::Local);
            Err(e)
        }
    }
}

fn finish(shared: &Shared, reason: CloseReason) {
    // Dropping the senders ends every subscription's stream.
    lock(&shared.subscriptions).clear();
    lock(&shared.hooks).clear();
    let _ = shared.events.send(ClientEvent::Closed(reason.clone()));
    shared.closed.send_replace(Some(reason));
}
