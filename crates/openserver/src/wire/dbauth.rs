//! Password authentication against the user database, "DatabaseAuth" (protocol 3).

use super::primitives::decode_text;
use super::{protocol_id, DecodeError, Message, Reader, Secret, TextEncoding, TextMode, WireWrite};
use bytes::{BufMut, BytesMut};

/// Command byte of [`DatabaseAuthMessage::Authenticate`].
pub const AUTHENTICATE: u8 = 0x01;
/// Command byte of [`DatabaseAuthMessage::Authenticated`].
pub const AUTHENTICATED: u8 = 0x02;
/// Command byte of [`DatabaseAuthMessage::AccessDenied`].
pub const ACCESS_DENIED: u8 = 0x03;
/// Command byte of [`DatabaseAuthMessage::UserNotFound`].
pub const USER_NOT_FOUND: u8 = 0x04;
/// Command byte of [`DatabaseAuthMessage::InvalidPassword`].
pub const INVALID_PASSWORD: u8 = 0x05;
/// Command byte of [`DatabaseAuthMessage::EmailNotVerified`].
pub const EMAIL_NOT_VERIFIED: u8 = 0x06;
/// Command byte of [`DatabaseAuthMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// A DatabaseAuth packet.
///
/// `UserNotFound`, `InvalidPassword` and `EmailNotVerified` exist in the original protocol and
/// decode here, but the openserver server never sends them: they tell a stranger which user
/// names exist. It answers every denial with `AccessDenied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseAuthMessage {
    /// Client: log in.
    Authenticate {
        /// The user name.
        user: String,
        /// The password, in the clear (inside TLS when TLS is on).
        password: Secret,
    },
    /// Server: the session is authenticated as the user with this id.
    Authenticated {
        /// The user's numeric id in the store.
        user_id: i32,
    },
    /// Server: denied.
    AccessDenied,
    /// Server (original only): no such user.
    UserNotFound,
    /// Server (original only): wrong password.
    InvalidPassword,
    /// Server (original only): the user's e-mail address is not verified.
    EmailNotVerified,
    /// Either side: the request could not be processed.
    Error(String),
}

impl Message for DatabaseAuthMessage {
    const PROTOCOL_ID: u16 = protocol_id::DATABASE_AUTH;

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
            DatabaseAuthMessage::Authenticate { user, password } => {
                dst.put_u8(AUTHENTICATE);
                dst.put_string_in(user, text);
                dst.put_string_in(password.expose(), text);
            }
            DatabaseAuthMessage::Authenticated { user_id } => {
                dst.put_u8(AUTHENTICATED);
                dst.put_i32_le(*user_id);
            }
            DatabaseAuthMessage::AccessDenied => dst.put_u8(ACCESS_DENIED),
            DatabaseAuthMessage::UserNotFound => dst.put_u8(USER_NOT_FOUND),
            DatabaseAuthMessage::InvalidPassword => dst.put_u8(INVALID_PASSWORD),
            DatabaseAuthMessage::EmailNotVerified => dst.put_u8(EMAIL_NOT_VERIFIED),
            DatabaseAuthMessage::Error(message) => {
                dst.put_u8(ERROR);
                dst.put_string_in(message, text);
            }
        }
    }
}

impl DatabaseAuthMessage {
    /// The fields of one body (`finish` is the caller's).
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let msg = match r.command()? {
            AUTHENTICATE => DatabaseAuthMessage::Authenticate {
                user: r.string()?,
                password: Secret::new(r.string()?),
            },
            AUTHENTICATED => DatabaseAuthMessage::Authenticated { user_id: r.i32()? },
            ACCESS_DENIED => DatabaseAuthMessage::AccessDenied,
            USER_NOT_FOUND => DatabaseAuthMessage::UserNotFound,
            INVALID_PASSWORD => DatabaseAuthMessage::InvalidPassword,
            EMAIL_NOT_VERIFIED => DatabaseAuthMessage::EmailNotVerified,
            ERROR => DatabaseAuthMessage::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_matches_capture() {
        let frame = DatabaseAuthMessage::Authenticated { user_id: 7 }.to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            "53550700000003000207000000"
        );
    }

    #[test]
    fn truncated_password_is_an_error() {
        // user "alice", then a password claiming 6 bytes with only 3 present.
        let body = hex::decode("0105616c69636506736563").unwrap();
        assert!(matches!(
            DatabaseAuthMessage::decode(&body),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
