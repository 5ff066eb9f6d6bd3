//! SCRAM-SHA-256 login, "ScramAuth" (protocol 4): the RFC 5802 / RFC 7677 messages, each
//! carried as one string after a command byte.
//!
//! | cmd  | name          | direction | body after the command byte                          |
//! |------|---------------|-----------|------------------------------------------------------|
//! | `01` | CLIENT_FIRST  | client    | string: client-first-message (`n,,n=user,r=nonce`)   |
//! | `02` | SERVER_FIRST  | server    | string: server-first-message (`r=...,s=salt,i=4096`) |
//! | `03` | CLIENT_FINAL  | client    | string: client-final-message (`c=biws,r=...,p=...`)  |
//! | `04` | SERVER_FINAL  | server    | string: server-final-message (`v=signature`); login succeeded |
//! | `05` | ACCESS_DENIED | server    | nothing: wrong password or unknown user              |
//! | `FF` | ERROR         | (decoded, never sent by the server) | string                 |
//!
//! The SCRAM grammar itself is checked by [`crate::auth::scram`]; here a message is just a
//! UTF-8 string.

use super::{protocol_id, DecodeError, Message, Reader, WireWrite};
use bytes::{BufMut, BytesMut};

/// Command byte of [`ScramMessage::ClientFirst`].
pub const CLIENT_FIRST: u8 = 0x01;
/// Command byte of [`ScramMessage::ServerFirst`].
pub const SERVER_FIRST: u8 = 0x02;
/// Command byte of [`ScramMessage::ClientFinal`].
pub const CLIENT_FINAL: u8 = 0x03;
/// Command byte of [`ScramMessage::ServerFinal`].
pub const SERVER_FINAL: u8 = 0x04;
/// Command byte of [`ScramMessage::AccessDenied`].
pub const ACCESS_DENIED: u8 = 0x05;
/// Command byte of [`ScramMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// A ScramAuth packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramMessage {
    /// Client: the client-first message; starts a login.
    ClientFirst(String),
    /// Server: the server-first message (nonce, salt, iteration count).
    ServerFirst(String),
    /// Client: the client-final message with the proof.
    ClientFinal(String),
    /// Server: the proof checked out and the session is authenticated; carries the server's
    /// signature (`v=`), which the client must verify before trusting the server.
    ServerFinal(String),
    /// Server: denied. The same for a wrong password and an unknown user.
    AccessDenied,
    /// Either side: the request could not be processed. The openserver server reports errors
    /// as Capabilities ERRORs instead.
    Error(String),
}

impl Message for ScramMessage {
    const PROTOCOL_ID: u16 = protocol_id::SCRAM_AUTH;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.command()? {
            CLIENT_FIRST => ScramMessage::ClientFirst(r.string()?),
            SERVER_FIRST => ScramMessage::ServerFirst(r.string()?),
            CLIENT_FINAL => ScramMessage::ClientFinal(r.string()?),
            SERVER_FINAL => ScramMessage::ServerFinal(r.string()?),
            ACCESS_DENIED => ScramMessage::AccessDenied,
            ERROR => ScramMessage::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        let (command, text) = match self {
            ScramMessage::ClientFirst(s) => (CLIENT_FIRST, Some(s)),
            ScramMessage::ServerFirst(s) => (SERVER_FIRST, Some(s)),
            ScramMessage::ClientFinal(s) => (CLIENT_FINAL, Some(s)),
            ScramMessage::ServerFinal(s) => (SERVER_FINAL, Some(s)),
            ScramMessage::AccessDenied => (ACCESS_DENIED, None),
            ScramMessage::Error(s) => (ERROR, Some(s)),
        };
        dst.put_u8(command);
        if let Some(text) = text {
            dst.put_string(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let frame = ScramMessage::ClientFirst("n,,n=user,r=abc".into()).to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            "5355130000000400010f6e2c2c6e3d757365722c723d616263"
        );
        assert_eq!(
            hex::encode(ScramMessage::AccessDenied.to_frame().to_bytes().unwrap()),
            "535503000000040005"
        );
    }

    #[test]
    fn round_trips_and_errors() {
        for msg in [
            ScramMessage::ClientFirst("n,,n=user,r=abc".into()),
            ScramMessage::ServerFirst("r=abcdef,s=QSXCR+Q6sek8bf92,i=4096".into()),
            ScramMessage::ClientFinal("c=biws,r=abcdef,p=AAAA".into()),
            ScramMessage::ServerFinal("v=AAAA".into()),
            ScramMessage::AccessDenied,
            ScramMessage::Error("oops".into()),
        ] {
            let frame = msg.to_frame();
            assert_eq!(ScramMessage::decode(&frame.body), Ok(msg));
        }
        assert_eq!(ScramMessage::decode(&[]), Err(DecodeError::MissingCommand));
        assert_eq!(
            ScramMessage::decode(&[0x06]),
            Err(DecodeError::UnknownCommand(6))
        );
        assert_eq!(
            ScramMessage::decode(&[ACCESS_DENIED, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            ScramMessage::decode(&[CLIENT_FIRST, 1, 0xff]),
            Err(DecodeError::InvalidUtf8)
        );
    }
}
