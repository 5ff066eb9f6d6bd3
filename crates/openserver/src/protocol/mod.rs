//! The protocol stack: the trait every protocol implements, and the built-in protocols.
//!
//! A packet's protocol id selects a [`Protocol`]. The first packet of that id in a session
//! (or the local side starting it) creates the protocol's per-session [`ProtocolHandler`],
//! which then receives every packet of that id in arrival order.
//!
//! Built in, each in its own file: [`keepalive`], [`winauth`], [`dbauth`], [`scram`],
//! [`token`], [`admin`] and [`hello`].
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
//! [`try_packet`](ProtocolHandler::try_packet), the fast path the server tries first, whose
//! one answer cannot fail for lack of room; the Hello protocol ([`hello`]) shows how. Most
//! applications want the typed layer instead: [`crate::app`].

pub mod admin;
pub mod dbauth;
pub mod hello;
pub mod keepalive;
pub mod scram;
pub mod token;
pub mod winauth;

pub(crate) mod password;

use crate::session::engine::Stage;
use crate::session::{SendError, Session};
use crate::wire::DecodeError;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A protocol: an id on the wire and a factory of per-session handlers.
pub trait Protocol: Send + Sync + 'static {
    /// The protocol id in the first two payload bytes. Ids 0-6 and 10 are the built-ins.
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

    /// The answer to a packet of this protocol that the server refuses before any handler
    /// sees it (`message` is the stack's reason: "Not authenticated.", "Requires role R."),
    /// for protocols whose packets carry their own request ids and answer refusals by id.
    /// `None`, the default, answers with a Capabilities ERROR naming the protocol, as DNOS
    /// does.
    fn refusal(&self, body: &[u8], message: &str) -> Option<Bytes> {
        let _ = (body, message);
        None
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
    /// The server calls this first whenever the session's outbound queue has room, with a
    /// [`Reply`] that holds that room: the one answer sent through it is queued whatever
    /// else fills the queue meanwhile, so a handler that has acted never has to hand the
    /// packet back. To hand a packet on to [`on_packet`](Self::on_packet) (because it needs
    /// to wait, say for a database), return [`TryPacket::Wait`] with the body and the unused
    /// `Reply`, before doing anything: having sent through the `Reply`, the handler no longer
    /// has one to give back. The default hands every packet on. When the queue is full, the
    /// server skips this and calls `on_packet`, which waits for room: back-pressure applies.
    ///
    /// A handler that answers from memory implements it to save the allocation and polling of
    /// an async call per packet. Send only through the `Reply` here.
    fn try_packet<'a>(
        &mut self,
        session: &Session,
        body: Bytes,
        reply: Reply<'a>,
    ) -> TryPacket<'a> {
        let _ = session;
        TryPacket::Wait(body, reply)
    }

    /// The session has ended: called once, after the last packet, for every handler the
    /// session created. Sends fail by now. The session's task waits for it, so keep it short.
    async fn on_close(&mut self, session: &Session) {
        let _ = session;
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
pub enum TryPacket<'a> {
    /// Handled, with the outcome `on_packet` would have returned.
    Done(Result<(), HandlerError>),
    /// Not handled, nothing done: the body goes on to `on_packet`, and the unused reply back.
    Wait(Bytes, Reply<'a>),
}

/// The fast path's one answer, with its room in the outbound queue held: see
/// [`ProtocolHandler::try_packet`]. Sending consumes it.
#[derive(Debug)]
pub struct Reply<'a> {
    session: &'a Session,
    /// Room behind the bytes waiting for the socket, when the engine has it: the answer
    /// skips the outbound queue's lock.
    stage: Option<Stage<'a>>,
}

impl<'a> Reply<'a> {
    /// A reply if the session's queue has room now (or the engine has staging room);
    /// `None` sends the packet to `on_packet`.
    pub(crate) fn reserve(session: &'a Session, stage: Option<Stage<'a>>) -> Option<Reply<'a>> {
        (stage.is_some() || session.has_room()).then_some(Reply { session, stage })
    }

    /// Queues the frame `encode` writes: staged, or in the queue, whose room was held.
    fn push(
        self,
        protocol_id: u16,
        encode: &dyn Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError>,
    ) -> TryPacket<'a> {
        let sent = match self.stage {
            Some(stage) => stage.push(self.session, protocol_id, encode),
            None => self.session.push_reserved(protocol_id, encode),
        };
        TryPacket::Done(sent.map_err(HandlerError::from))
    }

    /// Queues the answer of `protocol_id` whose body `body` writes straight into the queue.
    /// Never fails for lack of room; the only error is a closed session.
    pub fn send_body(self, protocol_id: u16, body: impl Fn(&mut bytes::BytesMut)) -> TryPacket<'a> {
        self.push(protocol_id, &|dst| {
            crate::wire::Frame::encode_with(protocol_id, dst, &body)
        })
    }

    /// Queues `frame` as the answer. Never fails for lack of room.
    pub fn send(self, frame: crate::wire::Frame) -> TryPacket<'a> {
        self.push(frame.protocol_id, &|dst| {
            frame.encode_into(dst)?;
            Ok(frame.wire_len())
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    /// Trap 3 of issue 15: the fast path's answer cannot fail for lack of room, so a handler
    /// that has acted never has to hand its packet back (and run a second time).
    #[test]
    fn a_reply_keeps_its_room_and_a_full_queue_skips_the_fast_path() {
        let session = Session::new(1, "127.0.0.1:1".parse().unwrap(), 1, false);
        let reply = Reply::reserve(&session, None).expect("an empty queue has room");
        // A push from elsewhere takes the last place between the reservation and the answer.
        session.try_send(Frame::new(7, vec![1u8])).unwrap();
        assert_eq!(
            session.try_send(Frame::new(7, vec![2u8])),
            Err(SendError::Full)
        );
        assert!(matches!(
            reply.send_body(7, |dst| dst.extend_from_slice(b"answer")),
            TryPacket::Done(Ok(()))
        ));
        // Full now: the server goes straight to on_packet, which waits for room.
        assert!(Reply::reserve(&session, None).is_none());
        session.close(crate::session::CloseReason::Local);
    }
}
