//! Fuzz entry points: one function per target in `fuzz/fuzz_targets/`.
//!
//! Each takes arbitrary bytes, must never panic on its own, and asserts the invariants the wire
//! code promises, so that a failed assertion is a bug the fuzzer reports. The seed-replay test
//! (`tests/fuzz_seeds.rs`) runs the same functions on `fuzz/corpus/` under stable `cargo test`.

use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::codec::DEFAULT_MAX_PAYLOAD;
use crate::wire::dbauth::DatabaseAuthMessage;
use crate::wire::hello::HelloMessage;
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::winauth::WinAuthMessage;
use crate::wire::{DecodeError, Frame, FrameCodec, Message, Reader};
use bytes::BytesMut;
use std::fmt::Debug;
use tokio_util::codec::Decoder;

/// Decodes a byte stream with [`FrameCodec`], fed in chunks, and checks that chunking changes
/// nothing.
///
/// Input layout: byte 0 picks the chunk size (1 to 256), byte 1 the payload limit (`0xFF` for
/// the default, otherwise the byte's value, which the codec raises to at least 2); the rest is
/// the stream. Asserts that one-shot, chunked and byte-at-a-time decoding give the same frames,
/// the same error and the same stopping point, that the frames re-encode to exactly the bytes
/// consumed, and that no frame exceeds the limit.
pub fn frame_decoder(data: &[u8]) {
    let (chunk, max_payload, stream) = match data {
        [c, m, rest @ ..] => {
            let max = match *m {
                0xFF => DEFAULT_MAX_PAYLOAD,
                m => usize::from(m),
            };
            (usize::from(*c) + 1, max, rest)
        }
        _ => (1, DEFAULT_MAX_PAYLOAD, data),
    };

    let whole = decode_chunks(max_payload, std::iter::once(stream));
    let chunked = decode_chunks(max_payload, stream.chunks(chunk));
    let bytewise = decode_chunks(max_payload, stream.chunks(1));
    assert_eq!(whole, chunked, "chunk size {chunk} changed the result");
    assert_eq!(whole, bytewise, "byte-at-a-time feeding changed the result");

    // The frame encoding is canonical, so what was consumed is exactly the frames re-encoded.
    let mut reencoded = BytesMut::new();
    for frame in &whole.frames {
        frame
            .encode_into(&mut reencoded)
            .expect("a decoded frame fits the length field");
    }
    assert_eq!(&reencoded[..], &stream[..whole.consumed]);

    let limit = FrameCodec::new(max_payload).max_payload();
    for frame in &whole.frames {
        assert!(
            frame.body.len() + 2 <= limit,
            "frame over the payload limit"
        );
    }
    if whole.error.is_none() {
        assert_eq!(whole.consumed, stream.len(), "clean end left bytes behind");
    }
}

/// Decodes a Capabilities body; see [`winauth`] for the invariants.
pub fn capabilities(data: &[u8]) {
    check_message::<CapabilitiesMessage>(data, |m| match m {
        CapabilitiesMessage::GetProtocolIds | CapabilitiesMessage::ProtocolIds(_) => {
            Canonical::Exact
        }
        CapabilitiesMessage::Error { message, .. } => Canonical::lossy(message),
    });
}

/// Decodes a Keep-alive body: one command byte, so a decoded body re-encodes to itself.
pub fn keepalive(data: &[u8]) {
    check_message::<KeepAliveMessage>(data, |_| Canonical::Exact);
}

/// Decodes a WinAuth body and checks the invariants every message target shares:
///
/// - the re-encoding decodes to the same message and is the body of `to_frame()`;
/// - bodies are self-delimiting: one byte more is `TrailingBytes(1)`, one byte less fails;
/// - fields without strings re-encode byte for byte;
/// - strictly decoded strings re-encode byte for byte unless the input used an over-long 7-bit
///   length prefix (which the reader accepts, like .NET's), and then the re-encoding is shorter;
/// - an ERROR text with U+FFFD may have been decoded lossily from invalid UTF-8 (the Java
///   client's Latin-1 bytes), so only the round trip of the decoded message holds for it.
pub fn winauth(data: &[u8]) {
    check_message::<WinAuthMessage>(data, |m| match m {
        WinAuthMessage::Authenticate { .. } => Canonical::UnlessOverlong,
        WinAuthMessage::Authenticated | WinAuthMessage::AccessDenied => Canonical::Exact,
        WinAuthMessage::Error(message) => Canonical::lossy(message),
    });
}

/// Decodes a DatabaseAuth body; see [`winauth`] for the invariants.
pub fn dbauth(data: &[u8]) {
    check_message::<DatabaseAuthMessage>(data, |m| match m {
        DatabaseAuthMessage::Authenticate { .. } => Canonical::UnlessOverlong,
        DatabaseAuthMessage::Error(message) => Canonical::lossy(message),
        DatabaseAuthMessage::Authenticated { .. }
        | DatabaseAuthMessage::AccessDenied
        | DatabaseAuthMessage::UserNotFound
        | DatabaseAuthMessage::InvalidPassword
        | DatabaseAuthMessage::EmailNotVerified => Canonical::Exact,
    });
}

/// Decodes a Hello body; see [`winauth`] for the invariants. Also checks that the body is a
/// length prefix announcing exactly the string's bytes, followed by those bytes.
pub fn hello(data: &[u8]) {
    if let Some(HelloMessage(s)) =
        check_message::<HelloMessage>(data, |_| Canonical::UnlessOverlong)
    {
        assert!(data.ends_with(s.as_bytes()));
        let mut prefix = Reader::new(&data[..data.len() - s.len()]);
        assert_eq!(prefix.varint_len(), Ok(s.len()));
        assert_eq!(prefix.finish(), Ok(()));
    }
}

/// What a decoded message's re-encoding must be, compared with the input body.
enum Canonical {
    /// The same bytes.
    Exact,
    /// The same bytes, or fewer when the input had an over-long length prefix.
    UnlessOverlong,
    /// Nothing beyond the round trip of the decoded message.
    RoundTripOnly,
}

impl Canonical {
    /// For a lossily decoded text: lossy decoding only ever inserts U+FFFD, so a text without one
    /// was valid UTF-8 and behaves like a strict string.
    fn lossy(text: &str) -> Self {
        if text.contains('\u{FFFD}') {
            Canonical::RoundTripOnly
        } else {
            Canonical::UnlessOverlong
        }
    }
}

/// Decodes `data` as `M`; if that succeeds, asserts the shared invariants and the one `canon`
/// picks, and returns the message.
fn check_message<M>(data: &[u8], canon: impl FnOnce(&M) -> Canonical) -> Option<M>
where
    M: Message + PartialEq + Debug,
{
    let msg = match M::decode(data) {
        Ok(msg) => msg,
        Err(err) => {
            // Error text goes to logs and ERROR replies; formatting it must not panic either.
            let _ = err.to_string();
            return None;
        }
    };

    let mut encoded = BytesMut::new();
    msg.encode(&mut encoded);
    assert_eq!(
        M::decode(&encoded).as_ref(),
        Ok(&msg),
        "re-encoding decodes differently"
    );
    let frame = msg.to_frame();
    assert_eq!(frame.protocol_id, M::PROTOCOL_ID);
    assert_eq!(&frame.body[..], &encoded[..]);

    let mut longer = data.to_vec();
    longer.push(0);
    assert_eq!(M::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    let (_, shorter) = data.split_last().expect("an empty body never decodes");
    assert!(M::decode(shorter).is_err(), "a cut body still decoded");

    match canon(&msg) {
        Canonical::Exact => assert_eq!(&encoded[..], data),
        Canonical::UnlessOverlong => assert!(
            encoded[..] == *data || encoded.len() < data.len(),
            "re-encoding differs without being shorter"
        ),
        Canonical::RoundTripOnly => {}
    }
    Some(msg)
}

/// What decoding a stream produced: the frames, the first error, and the bytes consumed by
/// the frames.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    /// Compared by display text: `FrameError` has no `PartialEq` (it can hold an `io::Error`).
    error: Option<String>,
    consumed: usize,
}

/// Feeds `chunks` to a fresh codec as a framed reader would: decode after every chunk until it
/// needs more, then `decode_eof` at the end, stopping at the first error.
fn decode_chunks<'a>(max_payload: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut codec = FrameCodec::new(max_payload);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err.to_string());
                    break 'feed;
                }
            }
        }
    }
    if error.is_none() {
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err.to_string());
                    break;
                }
            }
        }
    }
    Outcome {
        frames,
        error,
        consumed: fed - buf.len(),
    }
}
