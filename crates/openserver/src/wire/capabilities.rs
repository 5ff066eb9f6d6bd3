//! Capabilities (protocol 0): which protocols a side speaks, and errors about protocols.
//!
//! Always allowed, before authentication too.

use super::{protocol_id, DecodeError, Message, Reader, TextEncoding, WireWrite};
use bytes::{BufMut, BytesMut};

/// Command byte of [`CapabilitiesMessage::GetProtocolIds`].
pub const GET_PROTOCOL_IDS: u8 = 0x01;
/// Command byte of [`CapabilitiesMessage::ProtocolIds`].
pub const PROTOCOL_IDS: u8 = 0x02;
/// Command byte of [`CapabilitiesMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// A Capabilities packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapabilitiesMessage {
    /// Asks the peer which protocols it supports; answered with `ProtocolIds`.
    GetProtocolIds,
    /// The protocol ids this side supports.
    ProtocolIds(Vec<u16>),
    /// A packet of `protocol_id` was refused or failed; the receiver hands `message` to its
    /// instance of that protocol.
    Error {
        /// The protocol the error is about.
        protocol_id: u16,
        /// A human-readable reason.
        message: String,
    },
}

impl Message for CapabilitiesMessage {
    const PROTOCOL_ID: u16 = protocol_id::CAPABILITIES;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.command()? {
            GET_PROTOCOL_IDS => CapabilitiesMessage::GetProtocolIds,
            PROTOCOL_IDS => CapabilitiesMessage::ProtocolIds(r.array_of(2, Reader::u16)?),
            ERROR => CapabilitiesMessage::Error {
                protocol_id: r.u16()?,
                message: r.string_lossy()?,
            },
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        self.encode_text(dst, TextEncoding::Utf8)
    }

    /// The ERROR text in the peer's encoding; a peer's ERROR is read lossily whatever it is.
    fn encode_text(&self, dst: &mut BytesMut, text: TextEncoding) {
        match self {
            CapabilitiesMessage::GetProtocolIds => dst.put_u8(GET_PROTOCOL_IDS),
            CapabilitiesMessage::ProtocolIds(ids) => {
                dst.put_u8(PROTOCOL_IDS);
                dst.put_count(ids.len());
                for id in ids {
                    dst.put_u16_le(*id);
                }
            }
            CapabilitiesMessage::Error {
                protocol_id,
                message,
            } => {
                dst.put_u8(ERROR);
                dst.put_u16_le(*protocol_id);
                dst.put_string_in(message, text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ids_match_capture() {
        // S 53550f000000000002040000000100020003000a00
        let frame = CapabilitiesMessage::ProtocolIds(vec![1, 2, 3, 10]).to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            "53550f000000000002040000000100020003000a00"
        );
    }

    #[test]
    fn error_matches_capture() {
        let frame = CapabilitiesMessage::Error {
            protocol_id: 10,
            message: "Not authenticated.".into(),
        }
        .to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            "5355180000000000ff0a00124e6f742061757468656e746963617465642e"
        );
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            CapabilitiesMessage::decode(&[]),
            Err(DecodeError::MissingCommand)
        );
        assert_eq!(
            CapabilitiesMessage::decode(&[7]),
            Err(DecodeError::UnknownCommand(7))
        );
        assert_eq!(
            CapabilitiesMessage::decode(&[1, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
