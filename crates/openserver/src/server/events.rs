//! Session events: what happened to connections, for alerts, audit and dashboards.
//!
//! The server publishes a [`SessionEvent`] when a connection is refused, a session opens, a
//! login succeeds or fails, a session subscribes to a channel or unsubscribes, and a session
//! closes. [`ServerHandle::events`] subscribes.
//!
//! Publishing never waits: the events go through a bounded [`broadcast`] channel, and a
//! subscriber that falls more than [`EVENT_CAPACITY`] events behind loses the oldest ones and
//! learns how many from [`RecvError::Lagged`](broadcast::error::RecvError::Lagged). With no
//! subscriber, nothing is even built.

use super::gate::Refusal;
use super::{ServerHandle, Shared};
use crate::auth::User;
use crate::session::{CloseReason, Session, SessionId};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it loses the oldest. A few thousand
/// absorb a mass disconnect of that many sessions while costing well under a megabyte.
pub const EVENT_CAPACITY: usize = 4096;

/// Something that happened to a connection. Every variant is `non_exhaustive`: match with
/// `..`, fields may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session started: the connection is accepted and, with TLS, its handshake is done.
    #[non_exhaustive]
    Opened {
        /// The session's id.
        id: SessionId,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A login succeeded.
    #[non_exhaustive]
    Authenticated {
        /// The session's id.
        id: SessionId,
        /// The client's address.
        peer: SocketAddr,
        /// Who logged in.
        user: User,
        /// How: the login protocol's name (`database_auth`, `win_auth`, `scram_auth`, ...) or
        /// `client_certificate`.
        protocol: &'static str,
    },
    /// A login was denied (wrong password, unknown user, penalised source, ...).
    #[non_exhaustive]
    AuthFailed {
        /// The session's id.
        id: SessionId,
        /// The client's address.
        peer: SocketAddr,
        /// The user name tried; empty if the login protocol did not say.
        user: String,
        /// The login protocol's name.
        protocol: &'static str,
    },
    /// A session ended.
    #[non_exhaustive]
    Closed {
        /// The session's id.
        id: SessionId,
        /// The client's address.
        peer: SocketAddr,
        /// Who was logged in, if anyone.
        user: Option<User>,
        /// Why it ended; [`CloseReason::is_lost`] tells a lost connection.
        reason: CloseReason,
        /// How long the connection lasted, from accept.
        duration: Duration,
    },
    /// A session subscribed to a channel ([`crate::channels`]).
    #[non_exhaustive]
    Subscribed {
        /// The session's id.
        id: SessionId,
        /// Its user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// A session's subscription to a channel ended.
    #[non_exhaustive]
    Unsubscribed {
        /// The session's id.
        id: SessionId,
        /// Its user.
        user: String,
        /// The channel.
        channel: String,
        /// Why: `client` (the client unsubscribed), `server` (server code did), `closed`
        /// (the session ended) or `broker` (publications were lost while the link to the
        /// broker was down, and the history could not fill the gap).
        reason: &'static str,
    },
    /// A connection was closed before it became a session.
    #[non_exhaustive]
    Refused {
        /// The client's address.
        peer: SocketAddr,
        /// Which cap or check refused it.
        reason: RefusalReason,
    },
}

/// Why a connection was refused before it became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// `limits.max_connections` connections were open.
    MaxConnections,
    /// `limits.max_connections_per_ip` connections were open from the address.
    MaxConnectionsPerIp,
    /// The source is serving a failed-login penalty.
    Penalized,
    /// `security.max_unauthenticated` connections were waiting to log in.
    MaxUnauthenticated,
    /// The source held `security.max_unauthenticated_per_ip` connections not logged in.
    MaxUnauthenticatedPerIp,
    /// Random early drop past `security.unauthenticated_drop_start`.
    EarlyDrop,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// A connection from a trusted proxy had no valid PROXY header within the handshake
    /// deadline (missing, malformed, truncated or too long).
    ProxyHeader,
}

impl RefusalReason {
    /// Every reason, for metrics that show each one from the start.
    pub(crate) const ALL: [RefusalReason; 8] = [
        RefusalReason::MaxConnections,
        RefusalReason::MaxConnectionsPerIp,
        RefusalReason::Penalized,
        RefusalReason::MaxUnauthenticated,
        RefusalReason::MaxUnauthenticatedPerIp,
        RefusalReason::EarlyDrop,
        RefusalReason::TlsHandshake,
        RefusalReason::ProxyHeader,
    ];

    /// A short stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::MaxConnections => "max_connections",
            RefusalReason::MaxConnectionsPerIp => "max_connections_per_ip",
            RefusalReason::Penalized => "penalty",
            RefusalReason::MaxUnauthenticated => "max_unauthenticated",
            RefusalReason::MaxUnauthenticatedPerIp => "max_unauthenticated_per_ip",
            RefusalReason::EarlyDrop => "early_drop",
            RefusalReason::TlsHandshake => "tls_handshake",
            RefusalReason::ProxyHeader => "proxy_header",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl From<Refusal> for RefusalReason {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => RefusalReason::MaxUnauthenticated,
            Refusal::EarlyDrop => RefusalReason::EarlyDrop,
            Refusal::SourceFull => RefusalReason::MaxUnauthenticatedPerIp,
        }
    }
}

/// The sending side, shared by the accept loop, every session's driver and the channels
/// engine.
#[derive(Clone)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<SessionEvent>,
}

impl EventBus {
    pub(crate) fn new() -> Self {
        let (sender, _) = broadcast::channel(EVENT_CAPACITY);
        EventBus { sender }
    }

    /// Whether anyone listens: callers with costly events check first.
    pub(crate) fn is_observed(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Publishes the event `build` makes, if anyone listens. Never waits.
    pub(crate) fn publish(&self, build: impl FnOnce() -> SessionEvent) {
        // Skips the clones of user and reason on servers nobody observes.
        if self.is_observed() {
            // Err only when the last receiver went away meanwhile: nobody to tell.
            let _ = self.sender.send(build());
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.sender.subscribe()
    }
}

impl ServerHandle {
    /// Subscribes to the server's [`SessionEvent`]s from now on. Each receiver gets every
    /// event published after it subscribed, unless it falls more than [`EVENT_CAPACITY`]
    /// behind: then `recv` returns [`Lagged(n)`](broadcast::error::RecvError::Lagged) once
    /// with the number lost, and continues with the oldest kept. The server never waits for a
    /// receiver. Subscribe before [`Server::run`](super::Server::run) to see every session.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.shared.ctx.events.subscribe()
    }
}

/// The accept loop's and connection tasks' reports: metrics and events in one call each.
impl Shared {
    /// A connection was accepted (before any cap is checked).
    pub(super) fn note_accepted(&self) {
        self.ctx.link.metrics.accepted();
    }

    /// A connection was refused before it became a session.
    pub(super) fn note_refused(&self, peer: SocketAddr, reason: RefusalReason) {
        self.ctx.link.metrics.refused(reason);
        self.ctx
            .events
            .publish(|| SessionEvent::Refused { peer, reason });
    }

    /// A session opened.
    pub(super) fn note_opened(&self, session: &Session) {
        self.ctx.events.publish(|| SessionEvent::Opened {
            id: session.id(),
            peer: session.peer(),
        });
    }

    /// A session closed after `duration`.
    pub(super) fn note_closed(&self, session: &Session, reason: &CloseReason, duration: Duration) {
        self.ctx.link.metrics.closed(reason);
        self.ctx.events.publish(|| SessionEvent::Closed {
            id: session.id(),
            peer: session.peer(),
            user: session.user(),
            reason: reason.clone(),
            duration,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_built_without_a_receiver_and_lagging_receivers_learn_it() {
        let bus = EventBus::new();
        bus.publish(|| unreachable!("no receiver, no event"));
        let mut rx = bus.subscribe();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for id in 0..(EVENT_CAPACITY as u64 + 3) {
            bus.publish(|| SessionEvent::Opened { id, peer });
        }
        assert_eq!(rx.recv().await, Err(broadcast::error::RecvError::Lagged(3)));
        assert_eq!(rx.recv().await, Ok(SessionEvent::Opened { id: 3, peer }));
    }

    #[test]
    fn refusal_labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            RefusalReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        assert_eq!(
            RefusalReason::from(Refusal::SourceFull).label(),
            "max_unauthenticated_per_ip"
        );
    }
}
