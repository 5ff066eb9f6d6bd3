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

mod config;
pub(crate) mod gate;
mod penalty;
mod registry;

pub use config::{Limits, Security, ServerConfig, DEFAULT_PORT};

use crate::auth::{User, UserStore};
use crate::protocol::dbauth::DatabaseAuth;
use crate::protocol::hello::Hello;
use crate::protocol::keepalive::KeepAlive;
use crate::protocol::scram::ScramAuth;
use crate::protocol::winauth::WinAuth;
use crate::protocol::{Protocol, ProtocolSet};
use crate::session::driver::{self, DriverContext};
use crate::session::{lock, SendError, Session, SessionId};
use crate::tls::ServerTls;
use crate::wire::Frame;
use registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

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
}

impl ServerBuilder {
    /// Serves every connection over TLS. With a client CA configured in `tls`, a verified
    /// client certificate whose subject common name is a user's name logs that user in (the
    /// user store must be set with [`user_store`](Self::user_store)).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
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

    /// Binds the listening socket (with the configured backlog) and returns the server, ready
    /// to [`run`](Server::run).
    pub async fn bind(mut self) -> io::Result<Server> {
        self.config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if self
            .protocols
            .get(crate::wire::protocol_id::KEEP_ALIVE)
            .is_none()
        {
            self.protocols
                .insert(Arc::new(KeepAlive::new(self.config.keep_alive)));
        }
        if self.scram {
            let store = self.store.clone().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "scram() needs a user_store()")
            })?;
            self.protocols.insert(Arc::new(ScramAuth::new(store)));
        }
        let listener = listen(self.config.listen, self.config.limits.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        let limits = self.config.limits.clone();
        Ok(Server {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                connections: Arc::new(Semaphore::new(limits.max_connections)),
                ctx: DriverContext {
                    limits,
                    log_packets: self.config.log_packets,
                    protocols: self.protocols,
                    gate: Arc::new(gate::Gatekeeper::new(self.config.security.clone())),
                },
                registry: Registry::default(),
                next_id: AtomicU64::new(1),
                per_ip: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                tls: self.tls,
                store: self.store,
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
    /// Live sessions, for push and shutdown.
    registry: Registry,
    /// Source of session ids.
    next_id: AtomicU64,
    /// One permit per open connection: the total cap.
    connections: Arc<Semaphore>,
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
    /// Applies the connection caps and starts the connection's task. Nothing here waits.
    fn admit(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // First, as the cheapest: a source penalised for failed logins gets no task, no read
        // and no password check. Debug level, since a flood would otherwise flood the log.
        let penalty = self.ctx.gate.penalty_remaining(peer.ip());
        if !penalty.is_zero() {
            tracing::debug!(%peer, ?penalty, "connection refused: source penalized for failed logins");
            return;
        }
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            return;
        };
        let Some(mut ip_slot) = IpSlot::take(&self, peer.ip()) else {
            tracing::warn!(%peer, "connection refused: max_connections_per_ip reached");
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.ctx.gate.admit(id, peer.ip()) {
            Ok(pending) => ip_slot.pending = Some(pending),
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "connection refused before login");
                return;
            }
        }
        let span = tracing::info_span!("session", id, %peer);
        let shared = self.clone();
        self.tasks.spawn(
            shared
                .serve(stream, peer, id, permit, ip_slot)
                .instrument(span),
        );
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        id: SessionId,
        _permit: OwnedSemaphorePermit,
        _ip_slot: IpSlot,
    ) {
        let accepted = tokio::time::Instant::now();
        // Interactive request/response traffic: don't let Nagle hold small frames back.
        let _ = stream.set_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            return self.run_session(stream, peer, id, None, accepted).await;
        };
        // The handshake runs here, in the connection's own task, never in the accept loop.
        let deadline = self.ctx.limits.tls_handshake_timeout;
        let stream = match tokio::time::timeout(deadline, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(?deadline, "TLS handshake timed out");
                return;
            }
        };
        let user = self.certificate_login(&stream).await;
        self.run_session(stream, peer, id, user, accepted).await
    }

    /// Maps a verified client certificate to a user: the subject's common name is the user
    /// name. rustls has already verified the certificate against the configured client CA.
    async fn certificate_login<S>(
        &self,
        stream: &tokio_rustls::server::TlsStream<S>,
    ) -> Option<User> {
        let cert = stream.get_ref().1.peer_certificates()?.first()?;
        let Some(name) = crate::tls::certificate_user(cert) else {
            tracing::info!("client certificate has no subject common name; not logged in");
            return None;
        };
        let store = self.store.as_ref()?;
        match store.find_user(&name).await {
            Ok(Some(user)) => {
                tracing::info!(user = %user.name, protocol = "client_certificate", "authenticated");
                Some(user)
            }
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
    async fn run_session<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        id: SessionId,
        user: Option<User>,
        accepted: tokio::time::Instant,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (session, queue) = Session::new(id, peer, self.ctx.limits.outbound_queue);
        if let Some(user) = user {
            session.authenticate(user);
        }
        self.registry.insert(session.clone());
        if self.shutdown.is_cancelled() {
            // Accepted just as shutdown began, after its sweep: treat it the same way.
            session.shut_down();
        }
        tracing::info!("session opened");
        let reason = driver::drive(stream, session.clone(), queue, &self.ctx, accepted).await;
        self.registry.remove(id);
        let user = session.user().map(|u| u.name).unwrap_or_default();
        if reason.is_lost() {
            tracing::warn!(%user, %reason, "session closed: connection lost");
        } else {
            tracing::info!(%user, %reason, "session closed");
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
        let grace = self.ctx.limits.shutdown_grace;
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

/// Holds one connection's place in the per-address count; gives it back on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// The connection's place among those not yet logged in. The driver gives it back at
    /// login; dropping it here covers every other end, a failed TLS handshake included.
    pending: Option<gate::PendingLogin>,
}

impl IpSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = lock(&shared.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= shared.ctx.limits.max_connections_per_ip {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            shared: shared.clone(),
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

    /// Pushes a frame to one session. A session whose queue is full is closed as a slow
    /// consumer (and `Full` returned).
    pub fn send_to(&self, id: SessionId, frame: Frame) -> Result<(), SendError> {
        self.shared.registry.push_to(id, frame)
    }

    /// Pushes a frame to every session authenticated as `user`; returns how many got it.
    pub fn send_to_user(&self, user: &str, frame: Frame) -> usize {
        self.shared
            .registry
            .push_where(&frame, |s| s.user().is_some_and(|u| u.name == user))
    }

    /// Pushes a frame to every authenticated session; returns how many got it.
    pub fn broadcast(&self, frame: Frame) -> usize {
        self.shared
            .registry
            .push_where(&frame, Session::is_authenticated)
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
