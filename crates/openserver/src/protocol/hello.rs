//! Hello (protocol 10): the sample application protocol, built with the public [`Protocol`]
//! trait like any protocol of your own. The server answers `"Hello " + s`.

use super::{HandlerError, Protocol, ProtocolHandler, Reply, TryPacket};
use crate::session::Session;
use crate::wire::hello::HelloMessage;
use crate::wire::protocol_id;
use async_trait::async_trait;
use bytes::Bytes;

/// The server side of Hello.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hello;

impl Protocol for Hello {
    fn id(&self) -> u16 {
        protocol_id::HELLO
    }

    fn name(&self) -> &'static str {
        "hello"
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(Hello)
    }
}

#[async_trait]
impl ProtocolHandler for Hello {
    /// Only when the queue was full, so that [`try_packet`](Self::try_packet) was skipped:
    /// waits for room.
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let name = parse(session, &body)?;
        let text = session.text_mode().encoding();
        session
            .send_body(protocol_id::HELLO, |dst| {
                HelloMessage::encode_reply_text(&name, text, dst)
            })
            .await?;
        Ok(())
    }

    /// Every packet, first: the string is borrowed from the request (unless it is non-ASCII
    /// Latin-1) and the answer written straight into the queue, so nothing is allocated.
    fn try_packet<'a>(
        &mut self,
        session: &Session,
        body: Bytes,
        reply: Reply<'a>,
    ) -> TryPacket<'a> {
        let name = match parse(session, &body) {
            Ok(name) => name,
            Err(e) => return TryPacket::Done(Err(e.into())),
        };
        let text = session.text_mode().encoding();
        reply.send_body(protocol_id::HELLO, |dst| {
            HelloMessage::encode_reply_text(&name, text, dst)
        })
    }
}

/// The Hello string in the peer's text encoding, which the session learns from it.
fn parse<'a>(
    session: &Session,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, str>, crate::wire::DecodeError> {
    let mut text = session.text_mode();
    let name = HelloMessage::parse_text(body, &mut text);
    session.set_text_mode(text);
    name
}
