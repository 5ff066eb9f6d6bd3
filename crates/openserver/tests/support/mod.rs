//! Helpers shared by the integration tests: the recorded Java client session, and a frame
//! decoder driver that feeds bytes in chunks the way a framed reader would.
#![allow(dead_code)] // Each test binary compiles this module and uses only part of it.

use bytes::BytesMut;
use openserver::wire::{Frame, FrameCodec};
use tokio_util::codec::Decoder;

/// The recorded session: frames the public Java client sent and a test server answered.
pub const JAVA_CAPTURE: &str = include_str!("../data/java-client-session.hex");

/// Which peer sent a captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Java client (`C` lines).
    Client,
    /// The server (`S` lines).
    Server,
}

/// One whole frame of the capture, header included, as it went over the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Who sent it.
    pub side: Side,
    /// The frame's bytes: magic, length, protocol id, body.
    pub bytes: Vec<u8>,
}

/// Every frame of `java-client-session.hex`, in file order.
pub fn java_capture() -> Vec<CapturedFrame> {
    parse_capture(JAVA_CAPTURE)
}

/// The bytes one side sent, all frames concatenated in order.
pub fn stream(side: Side) -> Vec<u8> {
    java_capture()
        .into_iter()
        .filter(|f| f.side == side)
        .flat_map(|f| f.bytes)
        .collect()
}

/// Parses capture text: `C <hex>` and `S <hex>` lines; blank lines and `#` comments are skipped.
/// Panics on anything else, so a typo in the data fails the tests loudly.
pub fn parse_capture(text: &str) -> Vec<CapturedFrame> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(n, line)| {
            let (tag, hex) = line
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("capture line {}: no side tag", n + 1));
            let side = match tag {
                "C" => Side::Client,
                "S" => Side::Server,
                other => panic!("capture line {}: unknown side {other:?}", n + 1),
            };
            let bytes = hex::decode(hex.trim())
                .unwrap_or_else(|e| panic!("capture line {}: bad hex: {e}", n + 1));
            CapturedFrame { side, bytes }
        })
        .collect()
}

/// What decoding a byte stream produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The frames, in order, up to the first error.
    pub frames: Vec<Frame>,
    /// The first error's display text (`FrameError` has no `PartialEq`).
    pub error: Option<String>,
}

/// Feeds `chunks` to a fresh [`FrameCodec`] as a framed reader would: decode after every chunk
/// until it needs more, then `decode_eof` once the input ends; stops at the first error.
pub fn decode_chunks<'a>(
    max_payload: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Decoded {
    let mut codec = FrameCodec::new(max_payload);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    return Decoded {
                        frames,
                        error: Some(err.to_string()),
                    }
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                return Decoded {
                    frames,
                    error: None,
                }
            }
            Err(err) => {
                return Decoded {
                    frames,
                    error: Some(err.to_string()),
                }
            }
        }
    }
}

/// [`decode_chunks`] with the whole input as one chunk.
pub fn decode_all(max_payload: usize, bytes: &[u8]) -> Decoded {
    decode_chunks(max_payload, std::iter::once(bytes))
}
pub mod haproxy;
pub mod harness;
pub mod postgres;

/// Non-ASCII text as the public DNOS clients write it (Java first, then C#): `C` frames the
/// client sent and the `S` answers it reads back as the same text.
pub const TEXT_CAPTURE: &str = include_str!("../data/dnos-client-text.hex");

/// The frames of `dnos-client-text.hex` as (client frame, expected answer) pairs, Java's first
/// (login, then three Hellos), the C# Hello last.
pub fn text_capture_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    let frames = parse_capture(TEXT_CAPTURE);
    frames
        .chunks(2)
        .map(|pair| {
            assert_eq!((pair[0].side, pair[1].side), (Side::Client, Side::Server));
            (pair[0].bytes.clone(), pair[1].bytes.clone())
        })
        .collect()
}
pub mod redis;
