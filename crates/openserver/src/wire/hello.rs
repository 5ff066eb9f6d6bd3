//! Hello (protocol 10), the sample application protocol: no command byte, just a string.
//!
//! The client sends `s`; the server answers `"Hello " + s`.

use super::primitives::{decode_text, text_len};
use super::{protocol_id, DecodeError, Message, Reader, TextEncoding, TextMode, WireWrite};
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

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

    /// The string of a Hello body in the peer's text encoding, updating `text` with what it
    /// showed: borrowed from the body unless it had to be converted (non-ASCII Latin-1).
    pub fn parse_text<'a>(
        body: &'a [u8],
        text: &mut TextMode,
    ) -> Result<Cow<'a, str>, DecodeError> {
        decode_text(body, text, Reader::text)
    }

    /// Writes the body of the answer to `s` (`"Hello " + s`) without building the string:
    /// the same bytes as `HelloMessage(s).reply().encode(dst)`.
    pub fn encode_reply(s: &str, dst: &mut BytesMut) {
        Self::encode_reply_text(s, TextEncoding::Utf8, dst)
    }

    /// [`encode_reply`](Self::encode_reply) with the answer in `text`.
    pub fn encode_reply_text(s: &str, text: TextEncoding, dst: &mut BytesMut) {
        dst.put_varint_len(GREETING.len() + text_len(s, text));
        dst.put_slice(GREETING.as_bytes());
        dst.put_text(s, text);
    }
}

impl Message for HelloMessage {
    const PROTOCOL_ID: u16 = protocol_id::HELLO;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_text(body, &mut TextMode::StrictUtf8)
    }

    fn decode_text(body: &[u8], text: &mut TextMode) -> Result<Self, DecodeError> {
        decode_text(body, text, Reader::string).map(HelloMessage)
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_string(&self.0);
    }

    fn encode_text(&self, dst: &mut BytesMut, text: TextEncoding) {
        dst.put_string_in(&self.0, text);
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

    #[test]
    fn java_hello_is_answered_one_byte_per_char() {
        // The captured Java client's Hello "café" and the answer it reads as "Hello café".
        let mut text = TextMode::Detect;
        let body = hex::decode("04636166e9").unwrap();
        let name = HelloMessage::parse_text(&body, &mut text).unwrap();
        assert_eq!((&*name, text), ("café", TextMode::Latin1));
        let mut answer = BytesMut::new();
        HelloMessage::encode_reply_text(&name, text.encoding(), &mut answer);
        assert_eq!(hex::encode(answer), "0a48656c6c6f20636166e9");
    }
}
