//! The server: listener, connection caps, per-connection tasks, push, graceful shutdown.
//!
//! ```no_run
//! use openserver::server::{Server, ServerConfig};
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::builder(ServerConfig::default()).hello().bind().await?;
//! println!("listening on {}", server.local_addr());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod cluster;
mod config;
pub(crate) mod driver;
pub(crate) mod events;
pub(crate) mod gate;
mod link;
mod live;
pub(crate) mod metrics;
mod penalty;
pub mod proxy;
pub(crate) mod registry;

pub use cluster::{
    Cluster, ClusterError, ClusterSession, ClusterSessions, DEFAULT_LISTED_PER_NODE,
    MAX_LISTED_PER_NODE,
};

pub use config::{Limits, Security, ServerConfig, DEFAULT_PORT};
pub use events::{RefusalReason, SessionEvent, EVENT_CAPACITY};
pub use metrics::Metrics;

use crate::auth::{User, UserStore};
use crate::channels::{Broker, ChannelError, ChannelPolicy, Channels, ChannelsConfig};
use crate::protocol::admin::Admin;
use crate::protocol::dbauth::DatabaseAuth;
use crate::protocol::hello::Hello;
use crate::protocol::keepalive::{KeepAlive, KeepAliveConfig};
use crate::protocol::scram::ScramAuth;
use crate::protocol::winauth::WinAuth;
use crate::protocol::{Protocol, ProtocolSet};
use crate::session::engine::Engine;
use crate::session::{lock, Login, SendError, Session, SessionId};
use crate::tls::stream::TlsStream;
use crate::tls::ServerTls;
use crate::wire::notice::Refusal;
use crate::wire::{Frame, TextMode};
use driver::DriverContext;
use link::ServerLink;
use live::{ConnectionPermit, LiveLimits, OpenConnections};
use metrics::{SessionGauge, SessionState};
use registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

/// Assembles a server: configuration, user store, protocols.
pub struct ServerBuilder {
    /// Settings, validated at bind.
    config: ServerConfig,
    /// Protocols added so far; keep-alive is added at bind with the configured timing.
    protocols: ProtocolSet,
    /// The user store given to [`user_store`](Self::user_store), for logins that need it
    /// outside a protocol (client certificates) or later in the build (SCRAM).
    store: Option<Arc<dyn UserStore>>,
    /// TLS for every connection; plaintext when `None`.
    tls: Option<ServerTls>,
    /// Whether [`scram`](Self::scram) was called; ScramAuth is added at bind, with the store.
    scram: bool,
    /// Set by [`token_auth`](Self::token_auth); TokenAuth is added at bind, with the store.
    token: Option<crate::auth::token::TokenConfig>,
    /// The role of [`admin`](Self::admin), if called; Admin is added at bind, with the
    /// session registry.
    admin_role: Option<String>,
    /// Set by [`danger_allow_plaintext_non_loopback`](Self::danger_allow_plaintext_non_loopback).
    allow_plaintext_non_loopback: bool,
    /// The live sessions: made here rather than at bind, so that typed protocols
    /// ([`crate::app`]) can hold it from the moment they are added.
    registry: Arc<Registry>,
    /// Set by [`channels`](Self::channels): the engine is built at bind.
    channels: Option<ChannelsSetup>,
    /// The channels engine once built, shared with every [`Hub`](crate::app::Hub) made
    /// before bind.
    channels_slot: Arc<OnceLock<Channels>>,
}

/// What [`ServerBuilder::channels`] and its companions set.
struct ChannelsSetup {
    config: ChannelsConfig,
    broker: Option<Arc<dyn Broker>>,
    policy: Option<Arc<dyn ChannelPolicy>>,
}

impl ServerBuilder {
    /// Serves every connection over TLS. With a client CA configured in `tls`, a verified
    /// client certificate whose subject common name is a user's name logs that user in (the
    /// user store must be set with [`user_store`](Self::user_store)).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Allows serving plaintext (no [`tls`](Self::tls)) on an address other than loopback.
    /// Passwords and every packet then cross the network in the clear: only for a network
    /// that is itself encrypted or trusted. Without it, [`bind`](Self::bind) refuses.
    pub fn danger_allow_plaintext_non_loopback(mut self) -> Self {
        self.allow_plaintext_non_loopback = true;
        self
    }

    /// Adds WinAuth (2) and DatabaseAuth (3), checking credentials against `store`.
    pub fn user_store(mut self, store: Arc<dyn UserStore>) -> Self {
        self.protocols.insert(Arc::new(WinAuth::new(
            store.clone(),
            self.config.realm.clone(),
        )));
        self.protocols
            .insert(Arc::new(DatabaseAuth::new(store.clone())));
        self.store = Some(store);
        self
    }

    /// Adds a protocol, replacing any earlier one with the same id.
    pub fn protocol(mut self, protocol: impl Protocol) -> Self {
        self.protocols.insert(Arc::new(protocol));
        self
    }

    /// Adds the Hello sample protocol (10).
    pub fn hello(self) -> Self {
        self.protocol(Hello)
    }

    /// Adds ScramAuth (4): SCRAM-SHA-256 logins, the password never sent, against the store
    /// given to [`user_store`](Self::user_store) (in either order; without a store,
    /// [`bind`](Self::bind) fails). Not part of `user_store` because it changes the
    /// PROTOCOL_IDS answer that existing clients may expect.
    pub fn scram(mut self) -> Self {
        self.scram = true;
        self
    }

    /// Adds TokenAuth (7): logins with the application's signed tokens (JWT) as `config`
    /// says, and resume tokens for every logged-in session, so that a reconnect costs no
    /// password hash ([`crate::auth::token`]). With a [`user_store`](Self::user_store), a
    /// resume login needs the user to still exist there, and an application token of a user
    /// it holds gets that user's id (and roles, unless the token has its own). Keys are
    /// checked at [`bind`](Self::bind).
    pub fn token_auth(mut self, config: crate::auth::token::TokenConfig) -> Self {
        self.token = Some(config);
        self
    }

    /// Adds Admin (5): users holding `role` can list every session and kick one (the
    /// `openserver sessions` command). Others get a Capabilities ERROR `Requires role ROLE.`
    pub fn admin(mut self, role: impl Into<String>) -> Self {
        self.admin_role = Some(role.into());
        self
    }

    /// The server's live sessions, for the application layer's push.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Adds Channels (6): publish/subscribe with presence, history and recovery
    /// ([`crate::channels`]), with these rules (validated at bind). The broker is the
    /// in-memory one unless [`channel_broker`](Self::channel_broker) gives another.
    pub fn channels(mut self, config: ChannelsConfig) -> Self {
        let setup = self.channels.get_or_insert_with(|| ChannelsSetup {
            config: ChannelsConfig::default(),
            broker: None,
            policy: None,
        });
        setup.config = config;
        self
    }

    /// The broker of [`channels`](Self::channels) (which it enables with the default rules
    /// if not called): [`RedisBroker`](crate::channels::RedisBroker) shares the channels of
    /// every node on one Redis (`docs/CLUSTER.md`).
    pub fn channel_broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self = self.channels_enabled();
        if let Some(setup) = self.channels.as_mut() {
            setup.broker = Some(broker);
        }
        self
    }

    /// The application's own authorization of channel actions, consulted after the
    /// namespace's rules (enables [`channels`](Self::channels) with the default rules if not
    /// called).
    pub fn channel_policy(mut self, policy: impl ChannelPolicy) -> Self {
        self = self.channels_enabled();
        if let Some(setup) = self.channels.as_mut() {
            setup.policy = Some(Arc::new(policy));
        }
        self
    }

    fn channels_enabled(self) -> Self {
        if self.channels.is_some() {
            self
        } else {
            self.channels(ChannelsConfig::default())
        }
    }

    /// The channels engine's slot, filled at bind.
    pub(crate) fn channels_slot(&self) -> Arc<OnceLock<Channels>> {
        self.channels_slot.clone()
    }

    /// Binds the listening socket (with the configured backlog) and returns the server, ready
    /// to [`run`](Server::run).
    ///
    /// Without [`tls`](Self::tls), only a loopback address is accepted (unless
    /// [`danger_allow_plaintext_non_loopback`](Self::danger_allow_plaintext_non_loopback)):
    /// an `InvalidInput` error says so.
    pub async fn bind(mut self) -> io::Result<Server> {
        self.config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let addr = self.config.listen;
        if self.tls.is_none() && !addr.ip().is_loopback() && !self.allow_plaintext_non_loopback {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "refusing to serve plaintext on {addr}: passwords would cross the network \
                     in the clear; add .tls(...), listen on a loopback address, or call \
                     .danger_allow_plaintext_non_loopback()"
                ),
            ));
        }
        // Kept so that ServerHandle::set_keep_alive can change it; an application's own
        // keep-alive protocol is the application's to change.
        let mut keep_alive = None;
        if self
            .protocols
            .get(crate::wire::protocol_id::KEEP_ALIVE)
            .is_none()
        {
            let built_in = KeepAlive::new(self.config.keep_alive);
            self.protocols.insert(Arc::new(built_in.clone()));
            keep_alive = Some(built_in);
        }
        let registry = self.registry.clone();
        if self.scram {
            let store = self.store.clone().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "scram() needs a user_store()")
            })?;
            self.protocols.insert(Arc::new(ScramAuth::new(store)));
        }
        if let Some(config) = self.token.take() {
            let verifier = crate::auth::token::TokenVerifier::new(&config).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("token_auth: {e}"))
            })?;
            self.protocols
                .insert(Arc::new(crate::protocol::token::TokenAuth::new(
                    Arc::new(verifier),
                    self.store.clone(),
                )));
        }
        let events = events::EventBus::new();
        let mut channel_metrics = None;
        let mut shared_broker = None;
        if let Some(setup) = self.channels.take() {
            setup
                .config
                .validate()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let broker = setup
                .broker
                .unwrap_or_else(|| Arc::new(crate::channels::MemoryBroker::new()));
            // Other nodes' requests (push, kick, list) are answered from the registry.
            let node: Weak<dyn crate::channels::nodes::NodeSink> =
                Arc::downgrade(&registry) as Weak<Registry>;
            broker.attach_node(node);
            shared_broker = Some(broker.clone());
            let counted =
                metrics::channels::ChannelMetrics::default().with_broker(broker.metrics());
            let engine = crate::channels::Engine::new(
                setup.config,
                broker,
                setup.policy,
                counted.clone(),
                events.clone(),
            );
            self.protocols
                .insert(Arc::new(crate::channels::protocol::ChannelsProtocol {
                    engine: engine.clone(),
                }));
            let _ = self.channels_slot.set(Channels::new(engine));
            channel_metrics = Some(counted);
        }
        let cluster = Cluster::new(registry.clone(), shared_broker);
        // Admin reads the sessions through the cluster handle: holding the registry, not the
        // server, keeps the protocol set from owning the server that owns it.
        if let Some(role) = self.admin_role {
            self.protocols.insert(Arc::new(Admin::new(
                Arc::new(cluster.clone()),
                role,
                self.store.clone(),
            )));
        }
        let listener = listen(self.config.listen, self.config.limits.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        let gate = Arc::new(gate::Gatekeeper::new(self.config.security.clone()));
        let metrics = Arc::new(metrics::ServerMetrics::new(
            &self.protocols,
            &gate,
            channel_metrics.as_ref(),
        ));
        Ok(Server {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                connections: Arc::new(OpenConnections::default()),
                limits: LiveLimits::new(self.config.limits.clone()),
                keep_alive,
                ctx: DriverContext {
                    log_packets: self.config.log_packets,
                    link: Arc::new(ServerLink { gate, metrics }),
                    protocols: self.protocols,
                    events,
                },
                registry,
                cluster,
                channels: self.channels_slot,
                next_id: AtomicU64::new(1),
                per_ip: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                tls: self.tls,
                store: self.store,
                trusted_proxies: proxy::TrustedProxies::new(self.config.trusted_proxies),
                text_mode: if self.config.strict_utf8 {
                    TextMode::StrictUtf8
                } else {
                    TextMode::Detect
                },
            }),
        })
    }
}

/// A bound server. [`run`](Server::run) accepts connections until shutdown.
pub struct Server {
    /// The bound listener.
    listener: TcpListener,
    /// Where it listens (the real port when the configuration said 0).
    local_addr: SocketAddr,
    /// State shared with connection tasks and handles.
    shared: Arc<Shared>,
}

struct Shared {
    /// Per-session settings and the protocol set.
    ctx: DriverContext,
    /// Frame sizes, deadlines, queue depth, caps: each connection reads them once, at accept.
    limits: LiveLimits,
    /// The built-in keep-alive, whose timing a running server can change.
    keep_alive: Option<KeepAlive>,
    /// Live sessions, for push, shutdown and Admin.
    registry: Arc<Registry>,
    /// The sessions of every node, through the channels' broker.
    cluster: Cluster,
    /// The channels engine, if enabled.
    channels: Arc<OnceLock<Channels>>,
    /// Source of session ids.
    next_id: AtomicU64,
    /// Open connections: the total cap.
    connections: Arc<OpenConnections>,
    /// Open connections per address: the per-address cap.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Cancelled to start a graceful shutdown.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// TLS for every connection, if configured.
    tls: Option<ServerTls>,
    /// For certificate logins.
    store: Option<Arc<dyn UserStore>>,
    /// Whose connections start with a PROXY header.
    trusted_proxies: proxy::TrustedProxies,
    /// How sessions start reading strings: detecting the peer's encoding, or strict UTF-8.
    text_mode: TextMode,
}

impl Server {
    /// A builder with the given configuration and no protocols yet.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            protocols: ProtocolSet::new(),
            store: None,
            tls: None,
            scram: false,
            token: None,
            admin_role: None,
            registry: Arc::new(Registry::default()),
            allow_plaintext_non_loopback: false,
            channels: None,
            channels_slot: Arc::new(OnceLock::new()),
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for pushing to sessions and for shutting the server down.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until [`ServerHandle::shutdown`] is called, then shuts down
    /// gracefully.
    pub async fn run(self) -> io::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Accepts connections until `signal` completes or [`ServerHandle::shutdown`] is called.
    /// Then: stop accepting, send QUIT to every session, give them `limits.shutdown_grace` to
    /// drain, and return.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            listener,
            local_addr,
            shared,
        } = self;
        tracing::info!(%local_addr, "accepting connections");
        tokio::pin!(signal);
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                () = &mut signal => break,
                () = shared.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    shared.clone().admit(stream, peer);
                }
                Err(e) => {
                    // Usually out of file descriptors: wait for sessions to close.
                    tracing::error!(error = %e, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        drop(listener);
        shared.shut_down().await;
        Ok(())
    }
}

impl Shared {
    /// Starts a connection: one from a trusted proxy reads its PROXY header first, in a task
    /// of its own, and is admitted as the client it names; any other is admitted at once.
    fn admit(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if self.trusted_proxies.is_empty() || !self.trusted_proxies.contains(peer.ip()) {
            return self.admit_as(stream, peer, None);
        }
        // The total cap applies before the header is read, so that a flood of connections
        // from the proxy cannot hold more tasks than it; the rest waits for the client's
        // address.
        self.note_accepted();
        let limits = self.limits.current();
        let Some(permit) = self.connections.try_open(limits.max_connections) else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            self.note_refused(peer, RefusalReason::MaxConnections);
            return;
        };
        let span = tracing::info_span!("proxied", proxy = %peer);
        let task = self.clone().read_proxy_header(stream, peer, permit, limits);
        self.tasks.spawn(task.instrument(span));
    }

    /// Reads the PROXY header of a trusted proxy's connection within the handshake deadline,
    /// then admits the connection as the client it names (the proxy itself for v2 LOCAL).
    async fn read_proxy_header(
        self: Arc<Self>,
        mut stream: TcpStream,
        proxy: SocketAddr,
        permit: ConnectionPermit,
        limits: Arc<Limits>,
    ) {
        let deadline = limits.tls_handshake_timeout;
        let read = proxy::read_header(&mut stream, limits.max_proxy_header);
        let error = match tokio::time::timeout(deadline, read).await {
            Ok(Ok(client)) => {
                let peer = client.unwrap_or(proxy);
                tracing::debug!(%peer, "PROXY header read");
                return self.admit_as(stream, peer, Some(permit));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no complete PROXY header within {deadline:?}"),
        };
        tracing::info!(error, "connection from a trusted proxy refused");
        self.note_refused(proxy, RefusalReason::ProxyHeader);
    }

    /// Applies the connection caps to a connection from `peer` (the client's address, from
    /// a PROXY header when there was one) and starts the connection's task. Nothing here
    /// waits. `permit` is the connection's place in the total count if it already has one.
    fn admit_as(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Option<ConnectionPermit>,
    ) {
        if permit.is_none() {
            self.note_accepted();
        }
        let gate = &self.ctx.link.gate;
        // First, as the cheapest: a source penalised for failed logins gets no task, no read
        // and no password check, only the fixed notice. The gate rate-limits its log line.
        if let Some(penalty) = gate.penalized_refusal(peer) {
            self.note_refused(peer, RefusalReason::Penalized);
            gate.refuse(
                stream,
                Refusal::FailedLogins {
                    retry_after: penalty,
                },
            );
            return;
        }
        // Read once: the connection keeps these limits for its whole life.
        let limits = self.limits.current();
        let Some(permit) = permit.or_else(|| self.connections.try_open(limits.max_connections))
        else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            self.note_refused(peer, RefusalReason::MaxConnections);
            gate.refuse(stream, Refusal::Busy);
            return;
        };
        let Some(mut ip_slot) =
            IpSlot::take(&self, permit, peer.ip(), limits.max_connections_per_ip)
        else {
            tracing::warn!(%peer, "connection refused: max_connections_per_ip reached");
            self.note_refused(peer, RefusalReason::MaxConnectionsPerIp);
            gate.refuse(stream, Refusal::TooManyFromAddress);
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match gate.admit(id, peer.ip()) {
            Ok(pending) => ip_slot.pending = Some(pending),
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "connection refused before login");
                self.note_refused(peer, refusal.into());
                let notice = match refusal {
                    gate::Refusal::SourceFull => Refusal::TooManyFromAddress,
                    gate::Refusal::Full | gate::Refusal::EarlyDrop => Refusal::Busy,
                };
                gate.refuse(stream, notice);
                return;
            }
        }
        // Created at accept, so that its clocks (the authentication deadline) start here; it
        // joins the registry once it is a session (after the TLS handshake).
        let session = Session::new(id, peer, limits.outbound_queue, self.ctx.log_packets);
        if self.text_mode != TextMode::Detect {
            session.set_text_mode(self.text_mode);
        }
        // Interactive request/response traffic: don't let Nagle hold small frames back.
        let _ = stream.set_nodelay(true);
        // The session's span gives its log lines their `session{id, peer}` context. It is
        // entered where a session logs (its start and end, the TLS handshake, packets that
        // wait for their handler, errors), not on every poll of the task: with a subscriber
        // that records it (the CLI's, at its default level `info`), entering and leaving a
        // span costs shared-lock traffic between the worker threads, which on every wake-up
        // of every busy session was the largest cost `serve` had over the bench's server.
        // With `log_packets`, a debugging mode that logs every packet, every poll is in it.
        let span = tracing::info_span!("session", id, %peer);
        let per_poll = if self.ctx.log_packets {
            span.clone()
        } else {
            Span::none()
        };
        // Two kinds of task: a plaintext connection's future is what every idle session
        // costs, so it does not carry the TLS handshake's state.
        match self.tls.as_ref().map(ServerTls::config) {
            None => {
                let engine = driver::engine(stream, &session, &limits);
                let task = self.clone().serve(engine, session, ip_slot, limits, span);
                self.tasks.spawn(task.instrument(per_poll));
            }
            Some(tls) => {
                let task = self
                    .clone()
                    .serve_tls(tls, stream, session, ip_slot, limits, span);
                self.tasks.spawn(task.instrument(per_poll));
            }
        }
    }

    /// A plaintext connection's task: the session on its engine. (An `async` block, not an
    /// `async fn`: an `async fn` keeps a second copy of its arguments in its state.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    fn serve(
        self: Arc<Self>,
        mut engine: Engine<TcpStream>,
        session: Session,
        slot: IpSlot,
        limits: Arc<Limits>,
        span: Span,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // Moved in and held to the end: the connection's places in the caps.
            let _slot = &slot;
            self.run_session(&mut engine, &session, &limits, &span)
                .await
        }
    }

    /// A TLS connection's task: the handshake, a certificate login, the session. The handshake
    /// and the TLS stream are boxed: the task's own future stays as small as a plaintext
    /// one's, the handshake's memory goes when it ends, and the stream takes what it needs.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    fn serve_tls(
        self: Arc<Self>,
        tls: Arc<rustls::ServerConfig>,
        stream: TcpStream,
        session: Session,
        slot: IpSlot,
        limits: Arc<Limits>,
        span: Span,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // Moved in and held to the end: the connection's places in the caps.
            let _slot = &slot;
            // Until the session starts, with its own count in the gauges.
            let handshaking =
                SessionGauge::new(self.ctx.link.metrics.clone(), SessionState::Handshaking);
            // The handshake runs here, in the connection's own task, never in the accept loop.
            let deadline = limits.tls_handshake_timeout;
            let accept = TlsStream::accept(tls, stream);
            // The handshake is short and may log: in the session's span.
            let handshake = tokio::time::timeout(deadline, accept).instrument(span.clone());
            let stream = match Box::pin(handshake).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) if crate::tls::stream::is_plaintext_peer(&e) => {
                    self.ctx
                        .link
                        .gate
                        .transport_mismatch(session.peer(), gate::Mismatch::PlaintextClient);
                    tracing::debug!(error = %e, "TLS handshake failed: the client sent plaintext");
                    self.note_refused(session.peer(), RefusalReason::TlsHandshake);
                    return;
                }
                Ok(Err(e)) => {
                    span.in_scope(|| tracing::info!(error = %e, "TLS handshake failed"));
                    self.note_refused(session.peer(), RefusalReason::TlsHandshake);
                    return;
                }
                Err(_) => {
                    span.in_scope(|| tracing::info!(?deadline, "TLS handshake timed out"));
                    self.note_refused(session.peer(), RefusalReason::TlsHandshake);
                    return;
                }
            };
            let login = self.certificate_login(&stream).instrument(span.clone());
            if let Some(user) = Box::pin(login).await {
                Login::new(&session).authenticate(user);
            }
            drop(handshaking);
            let mut engine = driver::engine(stream, &session, &limits);
            self.run_session(&mut engine, &session, &limits, &span)
                .await
        }
    }

    /// Maps a verified client certificate to a user: the subject's common name is the user
    /// name. rustls has already verified the certificate against the configured client CA.
    async fn certificate_login(&self, stream: &TlsStream) -> Option<User> {
        let cert = stream.peer_certificates()?.first()?;
        let Some(name) = crate::tls::certificate_user(cert) else {
            tracing::info!("client certificate has no subject common name; not logged in");
            return None;
        };
        let store = self.store.as_ref()?;
        match store.find_user(&name).await {
            // Logged by `run_session`, after `session opened`.
            Ok(Some(user)) => Some(user),
            Ok(None) => {
                tracing::info!(user = %name, "client certificate names no known user; not logged in");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "user store failed during certificate login");
                None
            }
        }
    }

    /// Runs an established (plain or TLS) connection as a session until it closes.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    fn run_session<'a, S>(
        &'a self,
        engine: &'a mut Engine<S>,
        session: &'a Session,
        limits: &'a Limits,
        span: &'a Span,
    ) -> impl Future<Output = ()> + 'a
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        async move {
            self.registry.insert(session.clone());
            if self.shutdown.is_cancelled() {
                // Accepted just as shutdown began, after its sweep: treat it the same way.
                session.shut_down();
            }
            span.in_scope(|| {
                tracing::info!("session opened");
                if let Some(user) = session.user() {
                    // Logged in during the TLS handshake, by its client certificate.
                    tracing::info!(user = %user.name, protocol = "client_certificate", "authenticated");
                }
            });
            self.note_opened(session);
            let reason = driver::drive(engine, session, &self.ctx, limits, span).await;
            self.registry.remove(session.id());
            self.note_closed(session, &reason, session.started().elapsed());
            let _in_span = span.enter();
            // A session that never logged in has no user to name: it says so instead of
            // logging an empty one.
            match (session.user(), reason.is_lost()) {
                (Some(user), true) => {
                    tracing::warn!(user = %user.name, %reason, "session closed: connection lost")
                }
                (Some(user), false) => tracing::info!(user = %user.name, %reason, "session closed"),
                (None, true) => {
                    tracing::warn!(%reason, "session closed before login: connection lost")
                }
                (None, false) => tracing::info!(%reason, "session closed before login"),
            }
        }
    }

    async fn shut_down(&self) {
        self.shutdown.cancel();
        let sessions = self.registry.snapshot();
        tracing::info!(sessions = sessions.len(), "shutting down: sending QUIT");
        for session in sessions {
            session.shut_down();
        }
        self.tasks.close();
        let grace = self.limits.current().shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                ?grace,
                "shutdown grace period over; sessions still draining are abandoned"
            );
        } else {
            tracing::info!("all sessions closed");
        }
    }
}

/// Holds one connection's places in the connection count and the per-address count; gives
/// them back on drop.
struct IpSlot {
    shared: Arc<Shared>,
    /// The place in the total count.
    _permit: ConnectionPermit,
    ip: IpAddr,
    /// The connection's place among those not yet logged in. The driver gives it back at
    /// login; dropping it here covers every other end, a failed TLS handshake included.
    pending: Option<gate::PendingLogin>,
}

impl IpSlot {
    fn take(
        shared: &Arc<Shared>,
        permit: ConnectionPermit,
        ip: IpAddr,
        max_per_ip: usize,
    ) -> Option<IpSlot> {
        let mut per_ip = lock(&shared.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            shared: shared.clone(),
            _permit: permit,
            ip,
            pending: None,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Reaches into a running server: push to sessions, list them, shut down. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The server's live sessions, for the application layer's push.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.shared.registry.clone()
    }

    /// The channels engine's slot, for [`Hub`](crate::app::Hub)s.
    pub(crate) fn channels_slot(&self) -> Arc<OnceLock<Channels>> {
        self.shared.channels.clone()
    }

    /// The server's channels, if [`ServerBuilder::channels`] enabled them: publish from
    /// server code, presence, history.
    pub fn channels(&self) -> Option<Channels> {
        self.shared.channels.get().cloned()
    }

    /// Publishes `data` on `channel` from server code (see [`Channels::publish`]).
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<bytes::Bytes>,
    ) -> Result<crate::channels::Position, ChannelError> {
        match self.shared.channels.get() {
            Some(channels) => channels.publish(channel, data).await,
            None => Err(ChannelError::Disabled),
        }
    }

    /// The session with this id, if open.
    pub fn session(&self, id: SessionId) -> Option<Session> {
        self.shared.registry.get(id)
    }

    /// Every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared.registry.snapshot()
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Push, kick and list sessions on every node of this server's cluster (this node alone
    /// outside a cluster). The methods below act on this node's sessions only.
    pub fn cluster(&self) -> Cluster {
        self.shared.cluster.clone()
    }

    /// Pushes a frame to one session. A session whose queue is full is closed as a slow
    /// consumer (and `Full` returned).
    pub fn send_to(&self, id: SessionId, frame: Frame) -> Result<(), SendError> {
        self.shared.registry.push_to(id, frame)
    }

    /// Pushes a frame to every session authenticated as `user`; returns how many got it.
    pub fn send_to_user(&self, user: &str, frame: Frame) -> usize {
        self.shared.registry.push_to_user(user, &frame)
    }

    /// Pushes a frame to every authenticated session; returns how many got it.
    pub fn broadcast(&self, frame: Frame) -> usize {
        self.shared.registry.broadcast(&frame)
    }

    /// Kicks the session with this id: QUIT, then close as
    /// [`CloseReason::Kicked`](crate::session::CloseReason::Kicked). Returns the session, or
    /// `None` if no session with this id is open.
    pub fn kick(&self, id: SessionId) -> Option<Session> {
        let session = self.shared.registry.get(id)?;
        session.kick();
        Some(session)
    }

    /// The limits connections accepted now get.
    pub fn limits(&self) -> Limits {
        Limits::clone(&self.shared.limits.current())
    }

    /// Changes the limits for connections accepted from now on; open sessions keep theirs.
    /// A lower `max_connections` or `max_connections_per_ip` refuses new connections until
    /// enough have closed, and closes none. `shutdown_grace` applies to the next shutdown.
    /// `listen_backlog` has no effect: the socket is already listening. Invalid limits are
    /// refused with the setting named, and nothing changes.
    pub fn set_limits(&self, limits: Limits) -> Result<(), String> {
        limits.validate()?;
        self.shared.limits.replace(limits);
        Ok(())
    }

    /// The keep-alive timing of sessions that start keep-alive now; `None` if the
    /// application registered its own keep-alive protocol.
    pub fn keep_alive(&self) -> Option<KeepAliveConfig> {
        self.shared.keep_alive.as_ref().map(KeepAlive::config)
    }

    /// Changes the keep-alive timing for sessions that start keep-alive from now on;
    /// heartbeats already running keep theirs. Fails if the timing is invalid or if the
    /// application registered its own keep-alive protocol (change that one directly).
    pub fn set_keep_alive(&self, config: KeepAliveConfig) -> Result<(), String> {
        config::validate_keep_alive(&config)?;
        let keep_alive = self.shared.keep_alive.as_ref().ok_or_else(|| {
            "keep-alive is the application's own protocol; change it there".to_string()
        })?;
        keep_alive.set_config(config);
        Ok(())
    }

    /// Whether this server should be sent new clients (a load balancer's readiness check): it
    /// is not shutting down, and its channels' broker delivers end to end. `Err` says why not.
    pub async fn ready(&self) -> Result<(), String> {
        if self.shared.shutdown.is_cancelled() {
            return Err("shutting down".to_string());
        }
        if let Some(channels) = self.shared.channels.get() {
            channels.ready().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts a graceful shutdown; [`Server::run`] returns once it is done.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }
}

/// Binds a listener with an explicit backlog (std's default is 128, too few for reconnect
/// storms).
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
