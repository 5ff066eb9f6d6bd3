//! The application envelope: how a typed protocol's packet body is laid out.
//!
//! ```text
//! REQUEST   0x01  id:u32 LE  MessagePack(request)    client -> server
//! RESPONSE  0x02  id:u32 LE  MessagePack(response)   server -> client, answers request `id`
//! ERROR     0x03  id:u32 LE  MessagePack({"code": str, "message": str})   answers `id`
//! PUSH      0x04             MessagePack(push)       server -> client, unrequested
//! ```
//!
//! MessagePack values are written with field names (structs as maps), so that a newer peer
//! may add fields an older one ignores. `docs/PROTOCOL.md` ("Application envelope") is the
//! reference for other languages.

use super::AppError;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The kind byte of a request.
pub const REQUEST: u8 = 0x01;
/// The kind byte of a successful answer.
pub const RESPONSE: u8 = 0x02;
/// The kind byte of an application error answer.
pub const ERROR: u8 = 0x03;
/// The kind byte of a server push.
pub const PUSH: u8 = 0x04;

/// One decoded envelope; `body` is the MessagePack value, still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A request with its correlation id.
    Request {
        /// Chosen by the client; echoed in the answer.
        id: u32,
        /// MessagePack of the protocol's request type.
        body: &'a [u8],
    },
    /// The successful answer to request `id`.
    Response {
        /// The request's id.
        id: u32,
        /// MessagePack of the protocol's response type.
        body: &'a [u8],
    },
    /// The application refused request `id`.
    Error {
        /// The request's id.
        id: u32,
        /// MessagePack of `{"code": ..., "message": ...}`.
        body: &'a [u8],
    },
    /// An unrequested message from the server.
    Push {
        /// MessagePack of the protocol's push type.
        body: &'a [u8],
    },
}

/// Why a body is not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body is empty: no kind byte.
    #[error("empty application packet: expected a kind byte")]
    Empty,
    /// The kind byte is not one of 1-4.
    #[error("unknown application packet kind {0:#04x}")]
    UnknownKind(u8),
    /// A request, response or error shorter than its 4-byte id.
    #[error("application packet truncated: the request id needs 4 bytes")]
    MissingId,
}

impl<'a> Envelope<'a> {
    /// Reads the envelope of one packet body (the bytes after the protocol id).
    pub fn decode(body: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let (&kind, rest) = body.split_first().ok_or(EnvelopeError::Empty)?;
        if kind == PUSH {
            return Ok(Envelope::Push { body: rest });
        }
        if !matches!(kind, REQUEST | RESPONSE | ERROR) {
            return Err(EnvelopeError::UnknownKind(kind));
        }
        let (id, body) = rest
            .split_first_chunk::<4>()
            .ok_or(EnvelopeError::MissingId)?;
        let id = u32::from_le_bytes(*id);
        Ok(match kind {
            REQUEST => Envelope::Request { id, body },
            RESPONSE => Envelope::Response { id, body },
            _ => Envelope::Error { id, body },
        })
    }
}

/// A value could not be written as MessagePack (a map with non-string keys is fine; a
/// `Serialize` impl that fails is not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {type_name} as MessagePack: {message}")]
pub struct EncodeError {
    /// The Rust type that failed.
    pub type_name: &'static str,
    /// The serializer's message.
    pub message: String,
}

/// Encodes an envelope of `kind` (with `id` unless it is a push) around `value`.
pub fn encode<T: Serialize + ?Sized>(kind: u8, id: u32, value: &T) -> Result<Bytes, EncodeError> {
    let mut dst = BytesMut::with_capacity(64);
    dst.put_u8(kind);
    if kind != PUSH {
        dst.put_u32_le(id);
    }
    let mut writer = (&mut dst).writer();
    rmp_serde::encode::write_named(&mut writer, value).map_err(|e| EncodeError {
        type_name: std::any::type_name::<T>(),
        message: e.to_string(),
    })?;
    Ok(dst.freeze())
}

/// The error answer to request `id`.
pub fn encode_error(id: u32, error: &AppError) -> Bytes {
    // AppError is two strings: it always encodes.
    encode(ERROR, id, error).unwrap_or_else(|_| Bytes::from_static(&[ERROR, 0, 0, 0, 0]))
}

/// Reads a MessagePack value of type `T`; the error text names the type.
pub fn decode_value<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(body).map_err(|e| {
        let name = std::any::type_name::<T>();
        format!("body is not a valid {name}: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Set {
        game: String,
        score: i64,
    }

    #[test]
    fn a_request_is_kind_id_then_a_named_map() {
        let bytes = encode(
            REQUEST,
            0x0102_0304,
            &Set {
                game: "chess".into(),
                score: 3,
            },
        )
        .unwrap();
        // 0x82: a map of two; 0xa4 "game"; 0xa5 "chess"; 0xa5 "score"; 3.
        let mut expected = vec![0x01, 0x04, 0x03, 0x02, 0x01, 0x82, 0xa4];
        expected.extend_from_slice(b"game");
        expected.push(0xa5);
        expected.extend_from_slice(b"chess");
        expected.push(0xa5);
        expected.extend_from_slice(b"score");
        expected.push(0x03);
        assert_eq!(&bytes[..], &expected[..]);
        let Envelope::Request { id, body } = Envelope::decode(&bytes).unwrap() else {
            panic!("not a request");
        };
        assert_eq!(id, 0x0102_0304);
        assert_eq!(
            decode_value::<Set>(body).unwrap(),
            Set {
                game: "chess".into(),
                score: 3
            }
        );
    }

    #[test]
    fn a_push_has_no_id_and_bad_bodies_are_refused() {
        let bytes = encode(PUSH, 99, &7u8).unwrap();
        assert_eq!(&bytes[..], &[0x04, 0x07]);
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(
            Envelope::decode(&[0x09]),
            Err(EnvelopeError::UnknownKind(9))
        );
        assert_eq!(
            Envelope::decode(&[0x02, 1, 2]),
            Err(EnvelopeError::MissingId)
        );
        assert!(decode_value::<Set>(&[0xc1])
            .unwrap_err()
            .contains("is not a valid"));
    }

    #[test]
    fn a_newer_peer_may_add_fields() {
        #[derive(Serialize)]
        struct SetV2 {
            game: String,
            score: i64,
            note: String,
        }
        let bytes = encode(
            RESPONSE,
            1,
            &SetV2 {
                game: "go".into(),
                score: 1,
                note: "new".into(),
            },
        )
        .unwrap();
        let Envelope::Response { body, .. } = Envelope::decode(&bytes).unwrap() else {
            panic!("not a response");
        };
        assert_eq!(decode_value::<Set>(body).unwrap().game, "go");
    }

    /// The example in docs/PROTOCOL.md 7.1, byte for byte.
    #[test]
    fn the_documented_example() {
        #[derive(Serialize)]
        enum Request {
            Get(String),
        }
        #[derive(Serialize)]
        struct Update {
            game: &'static str,
            score: i64,
        }
        let frame = |body: Bytes| {
            let bytes = crate::wire::Frame::new(0x0300, body).to_bytes().unwrap();
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let request = frame(encode(REQUEST, 1, &Request::Get("chess".into())).unwrap());
        let response = frame(encode(RESPONSE, 1, &Some(3i64)).unwrap());
        let update = Update {
            game: "chess",
            score: 4,
        };
        let push = frame(encode(PUSH, 0, &update).unwrap());
        let doc = include_str!("../../../../docs/PROTOCOL.md");
        for (side, bytes) in [("C", request), ("S", response), ("S", push)] {
            // The document groups header, protocol id, kind, id and value with two spaces.
            let wanted: String = doc
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{side}  ")))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .find(|l| *l == bytes)
                .unwrap_or_else(|| panic!("PROTOCOL.md 7.1 lacks `{side}  {bytes}`"));
            assert_eq!(wanted, bytes);
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(kind in 0u8..6, id: u32, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![kind];
            if kind != PUSH { bytes.extend_from_slice(&id.to_le_bytes()); }
            bytes.extend_from_slice(&body);
            match Envelope::decode(&bytes) {
                Ok(Envelope::Request { id: got, body: b }) | Ok(Envelope::Response { id: got, body: b }) | Ok(Envelope::Error { id: got, body: b }) => {
                    prop_assert_eq!(got, id);
                    prop_assert_eq!(b, &body[..]);
                }
                Ok(Envelope::Push { body: b }) => prop_assert_eq!(b, &body[..]),
                Err(e) => prop_assert_eq!(e, EnvelopeError::UnknownKind(kind)),
            }
            let _ = decode_value::<Set>(&body);
        }
    }
}
