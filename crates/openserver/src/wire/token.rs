//! Token login, "TokenAuth" (protocol 7, openserver only): a signed token instead of a
//! password, and the resume tokens a server hands out so that reconnecting costs no password
//! hash. docs/PROTOCOL.md has the layout byte by byte.

use super::primitives::decode_text;
use super::{protocol_id, DecodeError, Message, Reader, Secret, TextEncoding, TextMode, WireWrite};
use bytes::{BufMut, BytesMut};

/// Command byte of [`TokenAuthMessage::Authenticate`].
pub const AUTHENTICATE: u8 = 0x01;
/// Command byte of [`TokenAuthMessage::Authenticated`].
pub const AUTHENTICATED: u8 = 0x02;
/// Command byte of [`TokenAuthMessage::AccessDenied`].
pub const ACCESS_DENIED: u8 = 0x03;
/// Command byte of [`TokenAuthMessage::RequestResume`].
pub const REQUEST_RESUME: u8 = 0x04;
/// Command byte of [`TokenAuthMessage::Resume`].
pub const RESUME: u8 = 0x05;
/// Command byte of [`TokenAuthMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// Why a token was refused, as [`TokenAuthMessage::AccessDenied`] says it.
pub mod denied {
    /// The token's `exp` has passed (leeway included): get a new one.
    pub const EXPIRED: &str = "expired";
    /// Anything else: a bad signature, a malformed token, a wrong issuer or audience, a
    /// resume token of a user that no longer exists, a penalised source.
    pub const INVALID: &str = "invalid";
}

/// A TokenAuth packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAuthMessage {
    /// Client: log in with a token (the application's JWT, or a resume token).
    Authenticate {
        /// The token, as compact JWS (`header.claims.signature`).
        token: Secret,
    },
    /// Server: the session is authenticated; here is a resume token for the next login.
    Authenticated {
        /// The user's numeric id in the store; 0 for a user the store does not hold.
        user_id: i32,
        /// The user the token named.
        user: String,
        /// A fresh resume token for the same user.
        resume: Secret,
        /// Seconds the resume token is valid for.
        resume_ttl_secs: i32,
    },
    /// Server: denied; the reason is one of [`denied`].
    AccessDenied {
        /// [`denied::EXPIRED`] or [`denied::INVALID`].
        reason: String,
    },
    /// Client, once logged in by any protocol: asks for a resume token.
    RequestResume,
    /// Server: the answer to [`RequestResume`](Self::RequestResume).
    Resume {
        /// The resume token.
        token: Secret,
        /// Seconds it is valid for.
        ttl_secs: i32,
    },
    /// Either side: the request could not be processed.
    Error(String),
}

impl Message for TokenAuthMessage {
    const PROTOCOL_ID: u16 = protocol_id::TOKEN_AUTH;

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
            TokenAuthMessage::Authenticate { token } => {
                dst.put_u8(AUTHENTICATE);
                dst.put_string_in(token.expose(), text);
            }
            TokenAuthMessage::Authenticated {
                user_id,
                user,
                resume,
                resume_ttl_secs,
            } => {
                dst.put_u8(AUTHENTICATED);
                dst.put_i32_le(*user_id);
                dst.put_string_in(user, text);
                dst.put_string_in(resume.expose(), text);
                dst.put_i32_le(*resume_ttl_secs);
            }
            TokenAuthMessage::AccessDenied { reason } => {
                dst.put_u8(ACCESS_DENIED);
                dst.put_string_in(reason, text);
            }
            TokenAuthMessage::RequestResume => dst.put_u8(REQUEST_RESUME),
            TokenAuthMessage::Resume { token, ttl_secs } => {
                dst.put_u8(RESUME);
                dst.put_string_in(token.expose(), text);
                dst.put_i32_le(*ttl_secs);
            }
            TokenAuthMessage::Error(message) => {
                dst.put_u8(ERROR);
                dst.put_string_in(message, text);
            }
        }
    }
}

impl TokenAuthMessage {
    /// The fields of one body (`finish` is the caller's).
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let msg = match r.command()? {
            AUTHENTICATE => TokenAuthMessage::Authenticate {
                token: Secret::new(r.string()?),
            },
            AUTHENTICATED => TokenAuthMessage::Authenticated {
                user_id: r.i32()?,
                user: r.string()?,
                resume: Secret::new(r.string()?),
                resume_ttl_secs: r.i32()?,
            },
            ACCESS_DENIED => TokenAuthMessage::AccessDenied {
                reason: r.string()?,
            },
            REQUEST_RESUME => TokenAuthMessage::RequestResume,
            RESUME => TokenAuthMessage::Resume {
                token: Secret::new(r.string()?),
                ttl_secs: r.i32()?,
            },
            ERROR => TokenAuthMessage::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_as_documented() {
        let frame = TokenAuthMessage::Authenticate {
            token: Secret::new("a.b.c"),
        }
        .to_frame();
        // Frame header, protocol 7, command 1, string "a.b.c" (length 5).
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            "5355090000000700010561 2e622e63".replace(' ', "")
        );
        let mut body = BytesMut::new();
        TokenAuthMessage::Resume {
            token: Secret::new("t"),
            ttl_secs: 600,
        }
        .encode(&mut body);
        assert_eq!(hex::encode(&body), "05017458020000");
        assert_eq!(
            TokenAuthMessage::decode(&[REQUEST_RESUME]),
            Ok(TokenAuthMessage::RequestResume)
        );
        assert_eq!(
            TokenAuthMessage::decode(&[0x42]),
            Err(DecodeError::UnknownCommand(0x42))
        );
    }
}
