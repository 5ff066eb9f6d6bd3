//! Hello (protocol 10), the sample application protocol: no command byte, just a string.
//!
//! The client sends `s`; the server answers `"Hello " + s`.

use super::{protocol_id, DecodeError, Message, Reader, WireWrite};
use bytes::BytesMut;

/// A Hello packet in either direction: one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloMessage(pub String);

impl HelloMessage {
    /// The server's answer to this request.
    pub fn reply(&self) -> HelloMessage {
        HelloMessage(format!("Hello {}", self.0))
    }
}

impl Message for HelloMessage {
    const PROTOCOL_ID: u16 = protocol_id::HELLO;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let s = r.string()?;
        r.finish()?;
        Ok(HelloMessage(s))
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_string(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_capture() {
        let req = HelloMessage::decode(&hex::decode("05616c696365").unwrap()).unwrap();
        let reply = req.reply().to_frame().to_bytes().unwrap();
        assert_eq!(
            hex::encode(reply),
            "53550e0000000a000b48656c6c6f20616c696365"
        );
    }
}
