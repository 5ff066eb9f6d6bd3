//! Keep-alive (protocol 1): heartbeats and the closing QUIT.

use super::{protocol_id, DecodeError, Message, Reader};
use bytes::{BufMut, BytesMut};

/// Command byte of [`KeepAliveMessage::KeepAlive`].
pub const KEEP_ALIVE: u8 = 0x01;
/// Command byte of [`KeepAliveMessage::Quit`].
pub const QUIT: u8 = 0xFF;

/// A Keep-alive packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveMessage {
    /// A heartbeat; each side that runs the protocol sends one every interval.
    KeepAlive,
    /// The sender is closing the session.
    Quit,
}

impl Message for KeepAliveMessage {
    const PROTOCOL_ID: u16 = protocol_id::KEEP_ALIVE;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.command()? {
            KEEP_ALIVE => KeepAliveMessage::KeepAlive,
            QUIT => KeepAliveMessage::Quit,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(match self {
            KeepAliveMessage::KeepAlive => KEEP_ALIVE,
            KeepAliveMessage::Quit => QUIT,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_capture() {
        let ka = KeepAliveMessage::KeepAlive.to_frame().to_bytes().unwrap();
        assert_eq!(hex::encode(ka), "535503000000010001");
        let quit = KeepAliveMessage::Quit.to_frame().to_bytes().unwrap();
        assert_eq!(hex::encode(quit), "5355030000000100ff");
    }
}
