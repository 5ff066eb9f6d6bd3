//! Hello (protocol 10), the sample application protocol: no command byte, just a string.
//!
//! The client sends `s`; the server answers `"Hello " + s`.

use super::{protocol_id, DecodeError, Message, Reader, WireWrite};
use bytes::{BufMut, BytesMut};

/// A Hello packet in either direction: one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloMessage(pub String);

/// What the server puts before the client's string.
const GREETING: &str = "Hello ";

impl HelloMessage {
    /// The server's answer to this request.
    pub fn reply(&self) -> HelloMessage {
        HelloMessage(format!("{GREETING}{}", self.0))
    }

    /// The string of a Hello body, borrowed from it: what a server reads without copying.
    pub fn parse(body: &[u8]) -> Result<&str, DecodeError> {
        let mut r = Reader::new(body);
        let s = r.str()?;
        r.finish()?;
        Ok(s)
    }

    /// Writes the body of the answer to `s` (`"Hello " + s`) without building the string:
    /// the same bytes as `HelloMessage(s).reply().encode(dst)`.
    pub fn encode_reply(s: &str, dst: &mut BytesMut) {
        dst.put_varint_len(GREETING.len() + s.len());
        dst.put_slice(GREETING.as_bytes());
        dst.put_slice(s.as_bytes());
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

    #[test]
    fn the_borrowed_reply_matches_the_owned_one() {
        for s in ["", "alice", &"x".repeat(200), "héllo"] {
            let mut direct = BytesMut::new();
            HelloMessage::encode_reply(s, &mut direct);
            let mut owned = BytesMut::new();
            HelloMessage(s.into()).reply().encode(&mut owned);
            assert_eq!(direct, owned, "{s}");
            let mut request = BytesMut::new();
            HelloMessage(s.into()).encode(&mut request);
            assert_eq!(HelloMessage::parse(&request).unwrap(), s);
        }
        assert!(
            HelloMessage::parse(&[1, b'a', b'b']).is_err(),
            "trailing bytes"
        );
    }
}
