//! Password authentication with a domain, "WinAuth" (protocol 2).

use super::primitives::decode_text;
use super::{protocol_id, DecodeError, Message, Reader, Secret, TextEncoding, TextMode, WireWrite};
use bytes::{BufMut, BytesMut};

/// Command byte of [`WinAuthMessage::Authenticate`].
pub const AUTHENTICATE: u8 = 0x01;
/// Command byte of [`WinAuthMessage::Authenticated`].
pub const AUTHENTICATED: u8 = 0x02;
/// Command byte of [`WinAuthMessage::AccessDenied`].
pub const ACCESS_DENIED: u8 = 0x03;
/// Command byte of [`WinAuthMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// A WinAuth packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WinAuthMessage {
    /// Client: log in.
    Authenticate {
        /// The user name.
        user: String,
        /// The password, in the clear (inside TLS when TLS is on).
        password: Secret,
        /// The domain; may be empty.
        domain: String,
    },
    /// Server: the session is authenticated.
    Authenticated,
    /// Server: denied, for any reason.
    AccessDenied,
    /// Either side: the request could not be processed.
    Error(String),
}

impl Message for WinAuthMessage {
    const PROTOCOL_ID: u16 = protocol_id::WIN_AUTH;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_text(body, &mut TextMode::StrictUtf8)
    }

    fn decode_text(body: &[u8], text: &mut TextMode) -> Result<Self, DecodeError> {
        decode_text(body, text, Self::read)
    }

    fn encode(&self, dst: &mut BytesMut) {
        self.encode_text(dst, TextEncoding::Utf8)
    }

    fn encode_text(&self, dst: &mut BytesMut, text: TextEncoding) {
        match self {
            WinAuthMessage::Authenticate {
                user,
                password,
                domain,
            } => {
                dst.put_u8(AUTHENTICATE);
                dst.put_string_in(user, text);
                dst.put_string_in(password.expose(), text);
                dst.put_string_in(domain, text);
            }
            WinAuthMessage::Authenticated => dst.put_u8(AUTHENTICATED),
            WinAuthMessage::AccessDenied => dst.put_u8(ACCESS_DENIED),
            WinAuthMessage::Error(message) => {
                dst.put_u8(ERROR);
                dst.put_string_in(message, text);
            }
        }
    }
}

impl WinAuthMessage {
    /// The fields of one body (`finish` is the caller's).
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let msg = match r.command()? {
            AUTHENTICATE => WinAuthMessage::Authenticate {
                user: r.string()?,
                password: Secret::new(r.string()?),
                domain: r.string()?,
            },
            AUTHENTICATED => WinAuthMessage::Authenticated,
            ACCESS_DENIED => WinAuthMessage::AccessDenied,
            ERROR => WinAuthMessage::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_captured_java_request() {
        let body = hex::decode("0105616c6963650c7365637265742d77726f6e6700").unwrap();
        assert_eq!(
            WinAuthMessage::decode(&body).unwrap(),
            WinAuthMessage::Authenticate {
                user: "alice".into(),
                password: "secret-wrong".into(),
                domain: String::new(),
            }
        );
    }

    #[test]
    fn password_stays_out_of_debug() {
        let msg = WinAuthMessage::Authenticate {
            user: "alice".into(),
            password: "hunter2".into(),
            domain: String::new(),
        };
        assert!(!format!("{msg:?}").contains("hunter2"));
    }
}
