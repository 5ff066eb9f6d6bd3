//! The chat protocol's messages (protocol id `0x0100`).
//!
//! Every body starts with a one-byte command, as in the built-in protocols; fields use the
//! .NET `BinaryWriter` encodings of [`openserver::wire`] (strings are 7-bit-length UTF-8, the
//! member list is an i32 count of strings, times are i64 ticks).
//!
//! | dir | cmd  | name     | fields                                          |
//! |-----|------|----------|-------------------------------------------------|
//! | C→S | 0x01 | JOIN     | room                                            |
//! | C→S | 0x02 | LEAVE    | room                                            |
//! | C→S | 0x03 | SAY      | room, text                                      |
//! | S→C | 0x11 | JOINED   | room, members (i32 count, then names)           |
//! | S→C | 0x12 | MESSAGE  | room, from, sent_at (i64 .NET ticks), text      |
//! | S→C | 0x13 | PRESENCE | room, user, joined (bool: 1 joined, 0 left)     |
//! | S→C | 0xFF | ERROR    | text                                            |
//!
//! Room names are 1 to [`MAX_ROOM_BYTES`] bytes and text at most [`MAX_TEXT_BYTES`]; the
//! decoders do not enforce this (their error type has no variant for it), so the server calls
//! [`Request::validate`] after decoding.

use bytes::{BufMut, BytesMut};
use openserver::wire::{DecodeError, Message, Reader, WireWrite};
use std::time::SystemTime;

/// The chat protocol's id on the wire: the first id after the built-in range.
pub const PROTOCOL_ID: u16 = 0x0100;

/// Longest room name, in UTF-8 bytes.
pub const MAX_ROOM_BYTES: usize = 64;
/// Longest SAY text, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 4 * 1024;

/// Command byte of [`Request::Join`].
pub const JOIN: u8 = 0x01;
/// Command byte of [`Request::Leave`].
pub const LEAVE: u8 = 0x02;
/// Command byte of [`Request::Say`].
pub const SAY: u8 = 0x03;
/// Command byte of [`Event::Joined`].
pub const JOINED: u8 = 0x11;
/// Command byte of [`Event::Message`].
pub const MESSAGE: u8 = 0x12;
/// Command byte of [`Event::Presence`].
pub const PRESENCE: u8 = 0x13;
/// Command byte of [`Event::Error`].
pub const ERROR: u8 = 0xFF;

/// A packet from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Enter a room; answered with [`Event::Joined`].
    Join(String),
    /// Leave a room.
    Leave(String),
    /// Send text to everyone in a room the sender has joined, the sender included.
    Say {
        /// The room.
        room: String,
        /// What to say.
        text: String,
    },
}

/// A packet from server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The session is now in `room`, with these members (itself included), sorted.
    Joined {
        /// The room.
        room: String,
        /// Names of the users in the room, one per session.
        members: Vec<String>,
    },
    /// Someone said something in a room this session is in.
    Message {
        /// The room.
        room: String,
        /// The speaker's user name.
        from: String,
        /// When the server received it.
        sent_at: SystemTime,
        /// What was said.
        text: String,
    },
    /// A user entered or left a room this session is in.
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// `true` on join, `false` on leave or disconnect.
        joined: bool,
    },
    /// A request was refused; the text says why.
    Error(String),
}

/// A field over the protocol's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The room name is empty.
    #[error("room name is empty")]
    EmptyRoom,
    /// The room name is too long.
    #[error("room name is {0} bytes, the limit is {MAX_ROOM_BYTES}")]
    RoomTooLong(usize),
    /// The text is too long.
    #[error("text is {0} bytes, the limit is {MAX_TEXT_BYTES}")]
    TextTooLong(usize),
}

/// Checks a room name against the limits.
pub fn check_room(room: &str) -> Result<(), LimitError> {
    match room.len() {
        0 => Err(LimitError::EmptyRoom),
        n if n > MAX_ROOM_BYTES => Err(LimitError::RoomTooLong(n)),
        _ => Ok(()),
    }
}

/// Checks SAY text against the limit.
pub fn check_text(text: &str) -> Result<(), LimitError> {
    match text.len() {
        n if n > MAX_TEXT_BYTES => Err(LimitError::TextTooLong(n)),
        _ => Ok(()),
    }
}

impl Request {
    /// Checks the fields against the protocol's limits.
    pub fn validate(&self) -> Result<(), LimitError> {
        match self {
            Request::Join(room) | Request::Leave(room) => check_room(room),
            Request::Say { room, text } => check_room(room).and_then(|()| check_text(text)),
        }
    }
}

impl Message for Request {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.command()? {
            JOIN => Request::Join(r.string()?),
            LEAVE => Request::Leave(r.string()?),
            SAY => Request::Say {
                room: r.string()?,
                text: r.string()?,
            },
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        match self {
            Request::Join(room) => {
                dst.put_u8(JOIN);
                dst.put_string(room);
            }
            Request::Leave(room) => {
                dst.put_u8(LEAVE);
                dst.put_string(room);
            }
            Request::Say { room, text } => {
                dst.put_u8(SAY);
                dst.put_string(room);
                dst.put_string(text);
            }
        }
    }
}

impl Message for Event {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.command()? {
            JOINED => Event::Joined {
                room: r.string()?,
                // Each name takes at least its one-byte length prefix.
                members: r.array_of(1, Reader::string)?,
            },
            MESSAGE => Event::Message {
                room: r.string()?,
                from: r.string()?,
                sent_at: r.date_time()?,
                text: r.string()?,
            },
            PRESENCE => Event::Presence {
                room: r.string()?,
                user: r.string()?,
                joined: r.bool()?,
            },
            ERROR => Event::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        match self {
            Event::Joined { room, members } => {
                dst.put_u8(JOINED);
                dst.put_string(room);
                dst.put_count(members.len());
                for member in members {
                    dst.put_string(member);
                }
            }
            Event::Message {
                room,
                from,
                sent_at,
                text,
            } => {
                dst.put_u8(MESSAGE);
                dst.put_string(room);
                dst.put_string(from);
                dst.put_date_time(*sent_at);
                dst.put_string(text);
            }
            Event::Presence { room, user, joined } => {
                dst.put_u8(PRESENCE);
                dst.put_string(room);
                dst.put_string(user);
                dst.put_bool(*joined);
            }
            Event::Error(text) => {
                dst.put_u8(ERROR);
                dst.put_string(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openserver::wire::primitives::{system_time_from_ticks, UNIX_EPOCH_TICKS};
    use proptest::prelude::*;

    fn encode<M: Message>(m: &M) -> Vec<u8> {
        m.to_frame().body.to_vec()
    }

    #[test]
    fn layouts_are_as_documented() {
        assert_eq!(encode(&Request::Join("a".into())), [JOIN, 1, b'a']);
        let say = Request::Say {
            room: "r".into(),
            text: "hi".into(),
        };
        assert_eq!(encode(&say), [SAY, 1, b'r', 2, b'h', b'i']);
        let joined = Event::Joined {
            room: "r".into(),
            members: vec!["al".into()],
        };
        assert_eq!(
            encode(&joined),
            [JOINED, 1, b'r', 1, 0, 0, 0, 2, b'a', b'l']
        );
        let message = Event::Message {
            room: "r".into(),
            from: "a".into(),
            sent_at: system_time_from_ticks(UNIX_EPOCH_TICKS),
            text: "x".into(),
        };
        let mut expected = vec![MESSAGE, 1, b'r', 1, b'a'];
        expected.extend_from_slice(&UNIX_EPOCH_TICKS.to_le_bytes());
        expected.extend_from_slice(&[1, b'x']);
        assert_eq!(encode(&message), expected);
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert_eq!(Request::decode(&[]), Err(DecodeError::MissingCommand));
        assert_eq!(
            Request::decode(&[0x42]),
            Err(DecodeError::UnknownCommand(0x42))
        );
        // A server command sent to the server is unknown there, and the other way round.
        assert_eq!(
            Request::decode(&[ERROR, 0]),
            Err(DecodeError::UnknownCommand(ERROR))
        );
        assert_eq!(
            Event::decode(&[JOIN, 0]),
            Err(DecodeError::UnknownCommand(JOIN))
        );
        assert!(matches!(
            Request::decode(&[JOIN, 5, b'a']),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            Request::decode(&[LEAVE, 0, 9]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            Event::decode(&[PRESENCE, 0, 0, 2]),
            Err(DecodeError::InvalidBool(2))
        );
    }

    #[test]
    fn limits() {
        assert_eq!(
            Request::Join(String::new()).validate(),
            Err(LimitError::EmptyRoom)
        );
        assert!(Request::Join("r".repeat(MAX_ROOM_BYTES)).validate().is_ok());
        assert_eq!(
            Request::Leave("r".repeat(MAX_ROOM_BYTES + 1)).validate(),
            Err(LimitError::RoomTooLong(MAX_ROOM_BYTES + 1))
        );
        let say = |n| Request::Say {
            room: "r".into(),
            text: "t".repeat(n),
        };
        assert!(say(MAX_TEXT_BYTES).validate().is_ok());
        assert_eq!(
            say(MAX_TEXT_BYTES + 1).validate(),
            Err(LimitError::TextTooLong(MAX_TEXT_BYTES + 1))
        );
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            ".*".prop_map(Request::Join),
            ".*".prop_map(Request::Leave),
            (".*", ".*").prop_map(|(room, text)| Request::Say { room, text }),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        // Any tick count from 0001-01-01 to 9999-12-31, the .NET DateTime range.
        let ticks = 0i64..3_155_378_975_999_999_999;
        prop_oneof![
            (".*", proptest::collection::vec(".*", 0..5))
                .prop_map(|(room, members)| Event::Joined { room, members }),
            (".*", ".*", ticks, ".*").prop_map(|(room, from, t, text)| Event::Message {
                room,
                from,
                sent_at: system_time_from_ticks(t),
                text,
            }),
            (".*", ".*", any::<bool>()).prop_map(|(room, user, joined)| Event::Presence {
                room,
                user,
                joined
            }),
            ".*".prop_map(Event::Error),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(m in request()) {
            prop_assert_eq!(Request::decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn events_round_trip(m in event()) {
            prop_assert_eq!(Event::decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Event::decode(&bytes);
        }
    }
}
