//! The session-layer frame and its codec.
//!
//! Every packet on the wire is wrapped in a six-byte header:
//!
//! ```text
//! +--------+--------+--------+--------+--------+--------+--------+--------+-----------
//! |  0x53  |  0x55  |      payload length N (i32 LE)    | protocol id (u16 |  body ...
//! | magic 0x5553 LE |     counts the payload only       |      LE)         | N-2 bytes
//! +--------+--------+--------+--------+--------+--------+--------+--------+-----------
//!                                                       |<----------- payload ----------->|
//! ```
//!
//! One read may hold part of a frame or many frames; [`FrameCodec`] reassembles them. The length
//! is checked against a configurable limit before any buffer is reserved for the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The magic number that starts every frame (`53 55` on the wire).
pub const MAGIC: u16 = 0x5553;
/// Bytes of the frame header: magic (2) and payload length (4).
pub const HEADER_LEN: usize = 6;
/// Smallest legal payload: the protocol id alone.
pub const MIN_PAYLOAD: usize = 2;
/// Payload limit of [`FrameCodec::default`] (64 KiB). The server sets its own limits from
/// `Limits::max_frame_unauthenticated` (4 KiB by default) and `max_frame_authenticated`.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// One application packet: a protocol id and that protocol's body.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Selects the protocol that handles `body`.
    pub protocol_id: u16,
    /// The protocol's bytes, after the id.
    pub body: Bytes,
}

impl Frame {
    /// Builds a frame from a protocol id and a body.
    pub fn new(protocol_id: u16, body: impl Into<Bytes>) -> Self {
        Frame {
            protocol_id,
            body: body.into(),
        }
    }

    /// Size of this frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + MIN_PAYLOAD + self.body.len()
    }

    /// Appends the whole frame (header, id, body) to `dst`.
    ///
    /// Fails only for a body longer than the i32 length field can describe.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload = MIN_PAYLOAD + self.body.len();
        let len = i32::try_from(payload).map_err(|_| FrameError::TooLarge {
            len: payload as u64,
            max: i32::MAX as usize,
        })?;
        dst.reserve(HEADER_LEN + payload);
        dst.put_u16_le(MAGIC);
        dst.put_i32_le(len);
        dst.put_u16_le(self.protocol_id);
        dst.put_slice(&self.body);
        Ok(())
    }

    /// Appends a frame of `protocol_id` whose body `body` writes straight into `dst`, so a
    /// message needs no buffer of its own before it is framed. Returns the frame's wire length.
    /// On error (a body too long for the length field) `dst` is left as it was.
    pub fn encode_with(
        protocol_id: u16,
        dst: &mut BytesMut,
        body: impl FnOnce(&mut BytesMut),
    ) -> Result<usize, FrameError> {
        let start = dst.len();
        let [m0, m1] = MAGIC.to_le_bytes();
        let [p0, p1] = protocol_id.to_le_bytes();
        // The length (zero here) is patched in once the body is written.
        dst.put_slice(&[m0, m1, 0, 0, 0, 0, p0, p1]);
        body(dst);
        let wire_len = dst.len() - start;
        let payload = wire_len - HEADER_LEN;
        let Ok(len) = i32::try_from(payload) else {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len: payload as u64,
                max: i32::MAX as usize,
            });
        };
        dst[start + 2..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        Ok(wire_len)
    }

    /// The whole frame as bytes, header included.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut dst = BytesMut::with_capacity(self.wire_len());
        self.encode_into(&mut dst)?;
        Ok(dst.freeze())
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("protocol_id", &format_args!("{:#06x}", self.protocol_id))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What to add to a bad magic that is the start of a PROXY protocol header (`PR` of v1,
/// CR LF of v2): the connection came from a proxy the server does not trust.
fn proxy_hint(magic: u16) -> &'static str {
    match magic.to_le_bytes() {
        [b'P', b'R'] | [b'\r', b'\n'] => {
            "; this looks like a PROXY protocol header from an address that is not in \
             server.trusted_proxies (--trusted-proxy)"
        }
        _ => "",
    }
}

/// A broken byte stream. Every variant but `Io` is the peer's fault, and each closes the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes of a header were not the magic number.
    #[error("bad frame magic {0:#06x} (expected 0x5553){hint}", hint = proxy_hint(*.0))]
    BadMagic(u16),
    /// The length field was negative.
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    /// The payload cannot even hold a protocol id.
    #[error("frame payload of {0} bytes is shorter than the 2-byte protocol id")]
    PayloadTooShort(i32),
    /// The length field exceeds the configured limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What the header announced.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes and encodes [`Frame`]s; see the [module docs](self) for the layout.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Largest payload accepted; checked before reserving space for it. The session raises it
    /// once the peer has authenticated.
    max_payload: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameCodec {
    /// A codec that rejects payloads larger than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        FrameCodec {
            max_payload: max_payload.max(MIN_PAYLOAD),
        }
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Changes the payload limit for frames not yet started.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload.max(MIN_PAYLOAD);
    }

    /// Whether `src` starts with a whole frame that [`decode`](Decoder::decode) would return
    /// now (`false` for a partial or refused one).
    pub(crate) fn has_frame(&self, src: &[u8]) -> bool {
        src.len() >= HEADER_LEN
            && self
                .check_header(&src[..HEADER_LEN])
                .is_ok_and(|payload| src.len() >= HEADER_LEN + payload)
    }

    /// Validates a complete header and returns the payload length it announces.
    fn check_header(&self, header: &[u8]) -> Result<usize, FrameError> {
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let len = i32::from_le_bytes([header[2], header[3], header[4], header[5]]);
        if len < 0 {
            return Err(FrameError::NegativeLength(len));
        }
        if (len as usize) < MIN_PAYLOAD {
            return Err(FrameError::PayloadTooShort(len));
        }
        if len as usize > self.max_payload {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_payload,
            });
        }
        Ok(len as usize)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            // A wrong magic is detectable from the first two bytes: fail early rather than
            // waiting for a header that a garbage stream may never complete.
            if src.len() >= 2 {
                let magic = u16::from_le_bytes([src[0], src[1]]);
                if magic != MAGIC {
                    return Err(FrameError::BadMagic(magic));
                }
            }
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        }
        let payload = self.check_header(&src[..HEADER_LEN])?;
        let total = HEADER_LEN + payload;
        if src.len() < total {
            // Bounded by `max_payload`, which `check_header` enforced.
            src.reserve(total - src.len());
            return Ok(None);
        }
        // `check_header` guaranteed the protocol id is there. One advance past header and id.
        let protocol_id = u16::from_le_bytes([src[HEADER_LEN], src[HEADER_LEN + 1]]);
        src.advance(HEADER_LEN + MIN_PAYLOAD);
        let body = src.split_to(payload - MIN_PAYLOAD).freeze();
        Ok(Some(Frame { protocol_id, body }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn decodes_one_frame() {
        let bytes = [0x53, 0x55, 0x03, 0, 0, 0, 0x01, 0x00, 0x01];
        let frames = decode_all(&mut FrameCodec::default(), &bytes).unwrap();
        assert_eq!(frames, vec![Frame::new(1, vec![1u8])]);
    }

    #[test]
    fn has_frame_says_what_decode_would_return() {
        let bytes = [0x53, 0x55, 0x03, 0, 0, 0, 0x01, 0x00, 0x01];
        let codec = FrameCodec::default();
        for cut in 0..bytes.len() {
            assert!(!codec.has_frame(&bytes[..cut]), "cut at {cut}");
        }
        assert!(codec.has_frame(&bytes));
        assert!(
            !codec.has_frame(&[0xFF, 0xFF, 3, 0, 0, 0, 1, 0, 1]),
            "a bad magic is no frame"
        );
    }

    #[test]
    fn partial_header_and_body_need_more() {
        let bytes = [0x53, 0x55, 0x03, 0, 0, 0, 0x01, 0x00, 0x01];
        let mut codec = FrameCodec::default();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_wrong_magic_from_two_bytes() {
        let mut buf = BytesMut::from(&b"GE"[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(0x4547)));
    }

    #[test]
    fn rejects_negative_short_and_oversized_lengths() {
        let mut codec = FrameCodec::new(100);
        let neg = [0x53, 0x55, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&neg[..])),
            Err(FrameError::NegativeLength(-1))
        ));
        let short = [0x53, 0x55, 0x01, 0, 0, 0, 0x00];
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&short[..])),
            Err(FrameError::PayloadTooShort(1))
        ));
        let big = [0x53, 0x55, 101, 0, 0, 0];
        let mut buf = BytesMut::from(&big[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        // Nothing was reserved for the announced payload.
        assert!(buf.capacity() < 101);
    }

    #[test]
    fn eof_inside_frame_is_truncated() {
        let bytes = [0x53, 0x55, 0x03, 0, 0, 0, 0x01];
        let err = decode_all(&mut FrameCodec::default(), &bytes).unwrap_err();
        assert!(matches!(err, FrameError::Truncated(7)));
    }

    #[test]
    fn encode_with_matches_encode_into() {
        let mut direct = BytesMut::from(&b"xy"[..]);
        let len = Frame::encode_with(0x0a, &mut direct, |dst| dst.put_slice(b"\x02m0")).unwrap();
        assert_eq!(len, 11);
        let mut framed = BytesMut::from(&b"xy"[..]);
        Frame::new(0x0a, &b"\x02m0"[..])
            .encode_into(&mut framed)
            .unwrap();
        assert_eq!(direct, framed);
    }

    #[test]
    fn encode_matches_wire_layout() {
        let mut dst = BytesMut::new();
        FrameCodec::default()
            .encode(Frame::new(0x0a, &b"\x02m0"[..]), &mut dst)
            .unwrap();
        assert_eq!(&dst[..], &[0x53, 0x55, 5, 0, 0, 0, 0x0a, 0, 2, b'm', b'0']);
    }

    /// A header announcing `len` payload bytes.
    fn header(len: i32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u16_le(MAGIC);
        b.put_i32_le(len);
        b
    }

    #[test]
    fn the_default_limit_is_64_kib_inclusive() {
        let mut codec = FrameCodec::default();
        assert_eq!(codec.max_payload(), 64 * 1024);
        // A header at the limit waits for its payload; one byte more is refused at once.
        assert!(codec.decode(&mut header(64 * 1024)).unwrap().is_none());
        assert!(matches!(
            codec.decode(&mut header(64 * 1024 + 1)),
            Err(FrameError::TooLarge {
                len: 65_537,
                max: 65_536
            })
        ));
    }

    #[test]
    fn a_payload_of_exactly_the_limit_decodes() {
        let mut codec = FrameCodec::new(100);
        let mut bytes = header(100);
        bytes.put_u16_le(7);
        bytes.put_slice(&[0xab; 98]);
        let frames = decode_all(&mut codec, &bytes).unwrap();
        assert_eq!(frames, vec![Frame::new(7, vec![0xab; 98])]);
    }

    #[test]
    fn raising_the_limit_admits_larger_frames() {
        let mut codec = FrameCodec::new(10);
        assert_eq!(codec.max_payload(), 10);
        assert!(codec.decode(&mut header(11)).is_err());
        codec.set_max_payload(200);
        assert_eq!(codec.max_payload(), 200);
        let mut bytes = header(150);
        bytes.put_u16_le(1);
        bytes.put_slice(&[1; 148]);
        assert_eq!(decode_all(&mut codec, &bytes).unwrap()[0].body.len(), 148);
        // No limit goes below the protocol id itself.
        codec.set_max_payload(0);
        assert_eq!(codec.max_payload(), MIN_PAYLOAD);
        assert_eq!(FrameCodec::new(0).max_payload(), MIN_PAYLOAD);
    }

    #[test]
    fn an_empty_body_decodes_and_a_zero_length_is_too_short() {
        let bytes = [0x53, 0x55, 0x02, 0, 0, 0, 0x09, 0x00];
        let frames = decode_all(&mut FrameCodec::default(), &bytes).unwrap();
        assert_eq!(frames, vec![Frame::new(9, Bytes::new())]);
        assert!(matches!(
            FrameCodec::default().decode(&mut header(0)),
            Err(FrameError::PayloadTooShort(0))
        ));
    }

    #[test]
    fn consecutive_frames_of_different_sizes_decode_in_order() {
        let mut bytes = BytesMut::new();
        // Ids with both bytes set: the id is read from its own two bytes, not the length's.
        Frame::new(0x0102, &b"hello"[..])
            .encode_into(&mut bytes)
            .unwrap();
        Frame::new(2, &b""[..]).encode_into(&mut bytes).unwrap();
        Frame::new(0xff03, vec![0u8; 300])
            .encode_into(&mut bytes)
            .unwrap();
        let frames = decode_all(&mut FrameCodec::default(), &bytes).unwrap();
        let seen: Vec<(u16, usize)> = frames
            .iter()
            .map(|f| (f.protocol_id, f.body.len()))
            .collect();
        assert_eq!(seen, [(0x0102, 5), (2, 0), (0xff03, 300)]);
        assert_eq!(&frames[0].body[..], b"hello");
    }

    #[test]
    fn a_proxy_header_from_an_untrusted_address_gets_a_hint() {
        let hint = "server.trusted_proxies (--trusted-proxy)";
        for start in [&b"PROXY TCP4 "[..], &b"\r\n\r\n\0\r\nQUIT\n"[..]] {
            let err = FrameCodec::default()
                .decode(&mut BytesMut::from(start))
                .unwrap_err();
            assert!(err.to_string().contains(hint), "{err}");
        }
        let err = FrameCodec::default()
            .decode(&mut BytesMut::from(&b"GET / HTTP/1.1"[..]))
            .unwrap_err();
        assert_eq!(err.to_string(), "bad frame magic 0x4547 (expected 0x5553)");
    }

    #[test]
    fn debug_shows_the_id_and_length_but_not_the_body() {
        let frame = Frame::new(0x0a, &b"secret"[..]);
        assert_eq!(
            format!("{frame:?}"),
            "Frame { protocol_id: 0x000a, body_len: 6 }"
        );
    }

    #[test]
    fn both_encoders_write_the_same_bytes() {
        let frame = Frame::new(0x0a, &b"\x02m0"[..]);
        let mut by_ref = BytesMut::new();
        FrameCodec::default().encode(&frame, &mut by_ref).unwrap();
        let mut by_value = BytesMut::new();
        FrameCodec::default()
            .encode(frame.clone(), &mut by_value)
            .unwrap();
        assert_eq!(by_ref, by_value);
        assert_eq!(frame.to_bytes().unwrap(), by_value.freeze());
    }

    #[test]
    fn encoding_reserves_the_frame_not_a_multiple_of_it() {
        // A 16 MiB push must not hold several times that in the output buffer.
        let frame = Frame::new(1, vec![0u8; 1000]);
        let mut dst = BytesMut::new();
        frame.encode_into(&mut dst).unwrap();
        assert_eq!(dst.len(), frame.wire_len());
        assert!(dst.capacity() < 2 * frame.wire_len(), "{}", dst.capacity());
    }

    #[test]
    fn a_header_reserves_room_for_its_whole_frame() {
        // The rest of an announced frame (within the limit) is read without regrowing.
        let mut codec = FrameCodec::new(100);
        let mut buf = header(100);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= HEADER_LEN + 100, "{}", buf.capacity());
    }

    #[test]
    fn encode_with_patches_the_length_after_any_prefix() {
        for prefix in [&b""[..], &b"abc"[..], &[0u8; 17][..]] {
            let mut direct = BytesMut::from(prefix);
            let len = Frame::encode_with(0x0a, &mut direct, |dst| dst.put_slice(b"body")).unwrap();
            assert_eq!(len, 12);
            let mut framed = BytesMut::from(prefix);
            Frame::new(0x0a, &b"body"[..])
                .encode_into(&mut framed)
                .unwrap();
            assert_eq!(direct, framed, "after {} bytes", prefix.len());
        }
    }
}
