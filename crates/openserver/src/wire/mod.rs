//! The wire format: bytes in, typed messages out. Nothing here does I/O.
//!
//! - [`codec`]: the session-layer frame (magic + length) as a tokio-util
//!   [`Decoder`](tokio_util::codec::Decoder)/[`Encoder`](tokio_util::codec::Encoder).
//! - [`primitives`]: the .NET `BinaryWriter` conventions every message body uses
//!   (little-endian integers, 7-bit-length UTF-8 strings, arrays, ticks).
//! - [`notice`]: the fixed refusal notices sent before a close, and how a client recognises
//!   them and the first bytes of the wrong transport (TLS or plaintext).
//! - One file per built-in protocol with its typed messages: [`capabilities`], [`keepalive`],
//!   [`winauth`], [`dbauth`], [`scram`], [`admin`] and [`hello`].
//!
//! `docs/PROTOCOL.md` describes the same format for client authors.

pub mod admin;
pub mod capabilities;
pub mod codec;
pub mod dbauth;
pub mod hello;
pub mod keepalive;
pub mod notice;
pub mod primitives;
pub mod scram;
pub mod token;
pub mod winauth;

pub use codec::{Frame, FrameCodec, FrameError};
pub use primitives::{DecodeError, Reader, Secret, TextEncoding, TextMode, WireWrite};

use bytes::BytesMut;

/// Protocol ids of the built-in protocols, as they appear in the first two payload bytes.
pub mod protocol_id {
    /// Capabilities: which protocols a side speaks, and errors about protocols.
    pub const CAPABILITIES: u16 = 0x0000;
    /// Keep-alive (heartbeat) and QUIT.
    pub const KEEP_ALIVE: u16 = 0x0001;
    /// Password authentication with a domain ("WinAuth").
    pub const WIN_AUTH: u16 = 0x0002;
    /// Password authentication against the user database ("DatabaseAuth").
    pub const DATABASE_AUTH: u16 = 0x0003;
    /// SCRAM-SHA-256 login, the password never sent ("ScramAuth"). Not registered by default.
    pub const SCRAM_AUTH: u16 = 0x0004;
    /// Session administration: list sessions, kick one (openserver only; admin role).
    pub const ADMIN: u16 = 0x0005;
    /// Login with a signed token (the application's JWT, or a resume token) ("TokenAuth";
    /// openserver only).
    pub const TOKEN_AUTH: u16 = 0x0007;
    /// The sample application protocol: the server answers `"Hello " + s`.
    pub const HELLO: u16 = 0x000A;
}

/// A typed message of one protocol: decodes from and encodes to a frame body.
///
/// Bodies exclude the frame header and the protocol id; [`Message::to_frame`] adds the id.
pub trait Message: Sized {
    /// The protocol id this message travels under.
    const PROTOCOL_ID: u16;

    /// Decodes one whole body. Trailing bytes are an error, so every body has one reading.
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;

    /// Appends the encoded body to `dst`.
    fn encode(&self, dst: &mut BytesMut);

    /// Decodes one whole body with strings taken as `text` says, and updates `text` with what
    /// the body showed of the peer (see [`primitives::decode_text`]). Messages with strings
    /// override this; the default is [`decode`](Self::decode).
    fn decode_text(body: &[u8], text: &mut TextMode) -> Result<Self, DecodeError> {
        let _ = text;
        Self::decode(body)
    }

    /// Appends the encoded body to `dst`, strings in `text`. Messages with strings override
    /// this; the default is [`encode`](Self::encode).
    fn encode_text(&self, dst: &mut BytesMut, text: TextEncoding) {
        let _ = text;
        self.encode(dst)
    }

    /// Wraps the encoded body in a [`Frame`] of this message's protocol.
    fn to_frame(&self) -> Frame {
        let mut body = BytesMut::new();
        self.encode(&mut body);
        Frame::new(Self::PROTOCOL_ID, body.freeze())
    }
}
