//! The protocol stack: the trait every protocol implements, and the built-in protocols.
//!
//! A packet's protocol id selects a [`Protocol`]. The first packet of that id in a session
//! (or the local side starting it) creates the protocol's per-session [`ProtocolHandler`],
//! which then receives every packet of that id in arrival order.
//!
//! Built in, each in its own file: [`keepalive`], [`winauth`], [`dbauth`], [`scram`],
//! [`admin`] and [`hello`].
//! Capabilities (id 0) is part of the stack itself (`server/driver.rs`), since it answers for
//! every other protocol.
//!
//! # Writing a protocol
//!
//! ```
//! use openserver::protocol::{HandlerError, Protocol, ProtocolHandler};
//! use openserver::session::Session;
//! use openserver::wire::Frame;
//! use bytes::Bytes;
//!
//! /// Echoes every packet back, counting them per session.
//! struct Echo;
//!
//! struct EchoHandler {
//!     count: u64,
//! }
//!
//! impl Protocol for Echo {
//!     fn id(&self) -> u16 { 0x0100 }
//!     fn name(&self) -> &'static str { "echo" }
//!     fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
//!         Box::new(EchoHandler { count: 0 })
//!     }
//! }
//!
//! #[async_trait::async_trait]
//! impl ProtocolHandler for EchoHandler {
//!     async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
//!         self.count += 1;
//!         session.send(Frame::new(0x0100, body)).await?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! A handler that never needs to wait can also implement
//! [`try_packet`](ProtocolHandler::try_packet), the fast path the server tries first; the
//! Hello protocol ([`hello`]) shows how.

pub mod admin;
pub mod dbauth;
pub mod hello;
pub mod keepalive;
pub mod scram;
pub mod winauth;

pub(crate) mod password;

use crate::session::{SendError, Session};
use crate::wire::DecodeError;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A protocol: an id on the wire and a factory of per-session handlers.
pub trait Protocol: Send + Sync + 'static {
    /// The protocol id in the first two payload bytes. Ids 0-5 and 10 are the built-ins.
    fn id(&self) -> u16;

    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Whether packets need an authenticated session. Before authentication, a packet of a
    /// protocol that requires it is answered with a Capabilities ERROR and not run.
    fn requires_auth(&self) -> bool {
        true
    }

    /// A role the session's user must hold to use this protocol (checked after
    /// authentication; sessions without it get a Capabilities ERROR and the packet is not
    /// run). `None`: any authenticated user.
    fn required_role(&self) -> Option<&str> {
        None
    }

    /// Whether the server starts this protocol on every session as soon as it authenticates,
    /// rather than when the peer's first packet of it arrives.
    fn start_on_login(&self) -> bool {
        false
    }

    /// Creates this protocol's state for one session.
    fn new_handler(&self, session: &Session) -> Box<dyn ProtocolHandler>;
}

/// One protocol's state within one session.
#[async_trait]
pub trait ProtocolHandler: Send + 'static {
    /// Handles one packet body (the bytes after the protocol id). Packets of a session arrive
    /// one at a time, in order. An `Err` is answered with a Capabilities ERROR naming this
    /// protocol, and the session goes on.
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError>;

    /// The fast path: handles a packet at once when that needs no waiting, or hands it on.
    ///
    /// The server calls this first for every packet; [`on_packet`](Self::on_packet) runs only
    /// when it returns [`TryPacket::Wait`] with the body. The default hands every packet on.
    /// A handler that answers from memory (as most application protocols do) implements it to
    /// save the allocation and polling of an async call per packet. It must queue only with
    /// the sends that never wait ([`Session::try_send_body`], [`Session::try_send`]) and hand
    /// the packet on, untouched, when they find the queue full: `on_packet` then waits for
    /// room, so back-pressure still applies.
    fn try_packet(&mut self, session: &Session, body: Bytes) -> TryPacket {
        let _ = session;
        TryPacket::Wait(body)
    }

    /// The peer reported an error about this protocol (a Capabilities ERROR naming it).
    async fn on_error(&mut self, session: &Session, message: &str) {
        tracing::debug!(
            session = session.id(),
            message,
            "peer reported a protocol error"
        );
    }
}

/// What [`ProtocolHandler::try_packet`] did with a packet.
#[derive(Debug)]
pub enum TryPacket {
    /// Handled, with the outcome `on_packet` would have returned.
    Done(Result<(), HandlerError>),
    /// Not handled, nothing done: the body goes on to `on_packet`.
    Wait(Bytes),
}

impl TryPacket {
    /// The outcome of a send made in `try_packet`: done when queued (or when the session is
    /// closed), and `Wait(body)` when the queue is full, so that `on_packet` waits for room.
    pub fn after_send(sent: Result<(), SendError>, body: Bytes) -> TryPacket {
        match sent {
            Err(SendError::Full) => TryPacket::Wait(body),
            other => TryPacket::Done(other.map_err(HandlerError::from)),
        }
    }
}

/// Why a handler could not process a packet; the text goes to the peer in the ERROR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The body did not follow the protocol's layout.
    #[error("malformed packet: {0}")]
    Malformed(#[from] DecodeError),
    /// The request was understood and refused.
    #[error("{0}")]
    Rejected(String),
    /// The session closed while the handler was sending.
    #[error("session closed")]
    Closed,
    /// Something failed on this side; the detail is logged, the peer sees a generic message.
    #[error("internal error")]
    Internal(String),
}

impl From<SendError> for HandlerError {
    fn from(_: SendError) -> Self {
        HandlerError::Closed
    }
}

/// The protocols one side speaks, by id.
#[derive(Clone, Default)]
pub struct ProtocolSet {
    /// Sorted by id so PROTOCOL_IDS answers are stable.
    by_id: BTreeMap<u16, Arc<dyn Protocol>>,
}

impl ProtocolSet {
    /// An empty set. Capabilities is part of the stack and is never added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a protocol, replacing any earlier one with the same id. Id 0 is Capabilities,
    /// which the stack itself speaks: a protocol claiming it is ignored (and logged).
    pub fn insert(&mut self, protocol: Arc<dyn Protocol>) {
        if protocol.id() == crate::wire::protocol_id::CAPABILITIES {
            tracing::error!(
                name = protocol.name(),
                "protocol id 0 is reserved for Capabilities; not registered"
            );
            return;
        }
        self.by_id.insert(protocol.id(), protocol);
    }

    /// The protocols to start when a session authenticates.
    pub fn started_on_login(&self) -> impl Iterator<Item = &Arc<dyn Protocol>> {
        self.by_id.values().filter(|p| p.start_on_login())
    }

    /// The protocol with this id.
    pub fn get(&self, id: u16) -> Option<&Arc<dyn Protocol>> {
        self.by_id.get(&id)
    }

    /// The ids of the registered protocols, ascending: what PROTOCOL_IDS announces. As in
    /// the original, Capabilities (0) itself is not listed.
    pub fn ids(&self) -> Vec<u16> {
        self.by_id.keys().copied().collect()
    }
}

impl std::fmt::Debug for ProtocolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.by_id.iter().map(|(id, p)| (id, p.name())))
            .finish()
    }
}
