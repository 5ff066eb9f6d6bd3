//! The echo protocol: the server sends every packet's body back unchanged. It gives the bench a
//! request whose payload size it chooses, with the least possible server-side work.

use async_trait::async_trait;
use bytes::Bytes;
use openserver::protocol::{HandlerError, Protocol, ProtocolHandler, Reply, TryPacket};
use openserver::session::Session;
use openserver::wire::Frame;

/// The echo protocol's id: in the application range, far from the built-ins (0-3, 10).
pub const ECHO_PROTOCOL_ID: u16 = 0x7E00;

/// The server side of the echo protocol. Requires an authenticated session, like any
/// application protocol.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Protocol for Echo {
    fn id(&self) -> u16 {
        ECHO_PROTOCOL_ID
    }

    fn name(&self) -> &'static str {
        "bench_echo"
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(Echo)
    }
}

#[async_trait]
impl ProtocolHandler for Echo {
    /// Only when the queue was full, so that [`try_packet`](Self::try_packet) was skipped.
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        session.send(Frame::new(ECHO_PROTOCOL_ID, body)).await?;
        Ok(())
    }

    /// The body is copied straight into the session's queue.
    fn try_packet<'a>(&mut self, _: &Session, body: Bytes, reply: Reply<'a>) -> TryPacket<'a> {
        reply.send_body(ECHO_PROTOCOL_ID, |dst| dst.extend_from_slice(&body))
    }
}
