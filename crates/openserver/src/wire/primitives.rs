//! The .NET `BinaryWriter`/`BinaryReader` conventions that message bodies use.
//!
//! | type        | encoding                                                          |
//! |-------------|-------------------------------------------------------------------|
//! | integers    | little-endian, fixed width                                        |
//! | bool        | one byte, 0 or 1                                                  |
//! | string      | byte length as a 7-bit varint (LEB128), then the text's bytes     |
//! | array of T  | i32 count, then the elements                                      |
//! | byte array  | i32 length, then the bytes                                        |
//! | date-time   | i64 count of 100 ns ticks since 0001-01-01T00:00:00               |
//!
//! [`Reader`] never allocates more than the bytes it was given, whatever a length field claims.
//!
//! # Text encodings
//!
//! The C# client writes strings as UTF-8. The Java client (and the Objective-C one, generated
//! from it) writes each UTF-16 char as one byte, its low 8 bits, with the char count as the
//! length, and reads each byte back as one char: Latin-1 (ISO 8859-1) for U+0000..U+00FF. For
//! ASCII the two are the same bytes. A [`TextMode`] says how a [`Reader`] takes strings; a
//! session learns its peer's ([`TextMode::Detect`] turns into [`TextMode::Latin1`] at the first
//! string that is not valid UTF-8) and answers in the same [`TextEncoding`].

use bytes::BufMut;
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A body that does not follow its protocol's layout. The session answers it with an ERROR and
/// goes on; it never closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body ended before a field did.
    #[error("body truncated: needed {needed} more bytes, {remaining} left")]
    Truncated {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A string's bytes were not valid UTF-8 where only UTF-8 is read (a strict
    /// [`TextMode`], such as a server with `server.strict_utf8`).
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A 7-bit length prefix ran past 5 bytes or past i32.
    #[error("malformed 7-bit length prefix")]
    InvalidVarint,
    /// A count or length field was negative.
    #[error("negative length {0}")]
    NegativeLength(i32),
    /// A bool byte other than 0 or 1.
    #[error("invalid bool byte {0:#04x}")]
    InvalidBool(u8),
    /// The command byte names no command of this protocol.
    #[error("unknown command {0:#04x}")]
    UnknownCommand(u8),
    /// The body is empty where a command byte was expected.
    #[error("empty body, expected a command byte")]
    MissingCommand,
    /// Bytes were left after the last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// Ticks (100 ns) between 0001-01-01 and the Unix epoch, as .NET counts them.
pub const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

/// Converts a time to .NET ticks; times outside the i64 range saturate.
pub fn ticks_from_system_time(time: SystemTime) -> i64 {
    let ticks_of = |d: Duration| i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX);
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH_TICKS.saturating_add(ticks_of(after)),
        Err(before) => UNIX_EPOCH_TICKS.saturating_sub(ticks_of(before.duration())),
    }
}

/// Converts .NET ticks to a time.
pub fn system_time_from_ticks(ticks: i64) -> SystemTime {
    let offset = i128::from(ticks) - i128::from(UNIX_EPOCH_TICKS);
    let nanos = offset.unsigned_abs() * 100;
    let d = Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    );
    if offset >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A password or other secret: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// How strings are written: what a session answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8 bytes, the byte count as the length (the C# client, openserver's own).
    #[default]
    Utf8,
    /// One byte per char, the char count as the length (the Java and Objective-C clients).
    /// Chars above U+00FF, which that form cannot carry, are written as `?`.
    Latin1,
}

/// How a [`Reader`] takes strings: the session's knowledge of its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMode {
    /// UTF-8 only; a string that is not valid UTF-8 is [`DecodeError::InvalidUtf8`].
    StrictUtf8,
    /// UTF-8 while strings are valid UTF-8; the first that is not shows a peer that writes one
    /// byte per char, and the mode becomes [`Latin1`](Self::Latin1).
    #[default]
    Detect,
    /// Every string is one byte per char (the peer was seen to write that way).
    Latin1,
}

impl TextMode {
    /// The encoding answers to a peer read in this mode are written in.
    pub fn encoding(self) -> TextEncoding {
        match self {
            TextMode::Latin1 => TextEncoding::Latin1,
            TextMode::StrictUtf8 | TextMode::Detect => TextEncoding::Utf8,
        }
    }
}

/// Decodes one body with `read`, taking strings as `mode` says, and updates `mode` with what it
/// learned. When a string of the body shows a one-byte-per-char peer, the whole body is read
/// again as Latin-1, so that strings before that one are not taken as UTF-8.
pub fn decode_text<'a, T>(
    body: &'a [u8],
    mode: &mut TextMode,
    read: impl Fn(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut r = Reader::with_text(body, *mode);
    let first = read(&mut r).and_then(|value| r.finish_keeping().map(|()| value));
    if r.text == *mode {
        return first;
    }
    *mode = TextMode::Latin1;
    let mut r = Reader::with_text(body, TextMode::Latin1);
    let value = read(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Latin-1 bytes as text: borrowed when they are ASCII (the same in every encoding).
fn latin1(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.is_ascii() {
        // ASCII is valid UTF-8; the check cannot fail.
        Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())
    }
}

/// Reads fields from a body, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// What is still unread.
    buf: &'a [u8],
    /// How strings are taken; `Detect` becomes `Latin1` at a string that is not UTF-8.
    text: TextMode,
}

impl<'a> Reader<'a> {
    /// Reads from `buf`; strings must be UTF-8.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader::with_text(buf, TextMode::StrictUtf8)
    }

    /// Reads from `buf`, taking strings as `text` says (see [`decode_text`]).
    pub fn with_text(buf: &'a [u8], text: TextMode) -> Self {
        Reader { buf, text }
    }

    /// The text mode now: `Latin1` once a `Detect` reader met a string that is not UTF-8.
    pub fn text_mode(&self) -> TextMode {
        self.text
    }

    /// [`finish`](Self::finish) by reference, for [`decode_text`].
    fn finish_keeping(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads the command byte that starts most protocol bodies; an empty body is
    /// [`DecodeError::MissingCommand`].
    pub fn command(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::MissingCommand);
        }
        self.u8()
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a u16, little-endian.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads an i32, little-endian.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// Reads an i64, little-endian.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Reads a bool byte (0 or 1).
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::InvalidBool(b)),
        }
    }

    /// Reads a 7-bit encoded length as .NET writes it: at most 5 bytes, within i32.
    pub fn varint_len(&mut self) -> Result<usize, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.u8()?;
            // The fifth byte may carry only the top 4 bits of a 32-bit value.
            if i == 4 && byte > 0x0f {
                return Err(DecodeError::InvalidVarint);
            }
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return i32::try_from(value)
                    .map(|v| v as usize)
                    .map_err(|_| DecodeError::InvalidVarint);
            }
        }
        Err(DecodeError::InvalidVarint)
    }

    /// Reads a 7-bit-length-prefixed string in the reader's [`TextMode`].
    pub fn string(&mut self) -> Result<String, DecodeError> {
        self.text().map(Cow::into_owned)
    }

    /// Reads a 7-bit-length-prefixed string in the reader's [`TextMode`], borrowed from the
    /// body unless it had to be converted (non-ASCII Latin-1).
    pub fn text(&mut self) -> Result<Cow<'a, str>, DecodeError> {
        let len = self.varint_len()?;
        let bytes = self.take(len)?;
        if self.text == TextMode::Latin1 {
            return Ok(latin1(bytes));
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) if self.text == TextMode::Detect => {
                self.text = TextMode::Latin1;
                Ok(latin1(bytes))
            }
            Err(_) => Err(DecodeError::InvalidUtf8),
        }
    }

    /// Reads a 7-bit-length-prefixed UTF-8 string without copying it, whatever the reader's
    /// text mode.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.varint_len()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Reads a string, replacing invalid UTF-8 with U+FFFD. For text that is only displayed or
    /// logged (error messages), where a peer's encoding mistake should not lose the message.
    pub fn string_lossy(&mut self) -> Result<String, DecodeError> {
        let len = self.varint_len()?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    /// Reads an i32 count and checks it is not negative.
    pub fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))
    }

    /// Reads an i32-length-prefixed byte array.
    pub fn byte_array(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count()?;
        self.take(n)
    }

    /// Reads an i32-count-prefixed array, each element read by `item`. The count is checked
    /// against the bytes left (`min_item_len` each) before anything is allocated.
    pub fn array_of<T>(
        &mut self,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count()?;
        let needed = n.saturating_mul(min_item_len.max(1));
        if needed > self.remaining() {
            return Err(DecodeError::Truncated {
                needed,
                remaining: self.remaining(),
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    /// Reads a .NET date-time (i64 ticks).
    pub fn date_time(&mut self) -> Result<SystemTime, DecodeError> {
        Ok(system_time_from_ticks(self.i64()?))
    }
}

/// Writes fields in the same conventions; implemented for every [`BufMut`].
pub trait WireWrite: BufMut {
    /// Writes a 7-bit encoded length.
    fn put_varint_len(&mut self, mut len: usize) {
        while len >= 0x80 {
            self.put_u8((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        self.put_u8(len as u8);
    }

    /// Writes a 7-bit-length-prefixed UTF-8 string.
    fn put_string(&mut self, s: &str) {
        self.put_varint_len(s.len());
        self.put_slice(s.as_bytes());
    }

    /// Writes a 7-bit-length-prefixed string in `encoding`.
    fn put_string_in(&mut self, s: &str, encoding: TextEncoding) {
        self.put_varint_len(text_len(s, encoding));
        self.put_text(s, encoding);
    }

    /// Writes the bytes of `s` in `encoding`, without a length (for a string assembled from
    /// parts after [`text_len`]). Latin-1 writes chars above U+00FF as `?`.
    fn put_text(&mut self, s: &str, encoding: TextEncoding) {
        match encoding {
            TextEncoding::Latin1 if !s.is_ascii() => {
                for c in s.chars() {
                    self.put_u8(u8::try_from(u32::from(c)).unwrap_or(b'?'));
                }
            }
            TextEncoding::Latin1 | TextEncoding::Utf8 => self.put_slice(s.as_bytes()),
        }
    }

    /// Writes a bool as one byte.
    fn put_bool(&mut self, b: bool) {
        self.put_u8(u8::from(b));
    }

    /// Writes an i32 count; slices longer than i32 cannot be described by the format.
    fn put_count(&mut self, n: usize) {
        self.put_i32_le(i32::try_from(n).unwrap_or(i32::MAX));
    }

    /// Writes an i32-length-prefixed byte array.
    fn put_byte_array(&mut self, bytes: &[u8]) {
        self.put_count(bytes.len());
        self.put_slice(bytes);
    }

    /// Writes a .NET date-time (i64 ticks).
    fn put_date_time(&mut self, time: SystemTime) {
        self.put_i64_le(ticks_from_system_time(time));
    }
}

impl<B: BufMut + ?Sized> WireWrite for B {}

/// The length prefix of `s` in `encoding`: its UTF-8 bytes, or its chars (one byte each).
pub fn text_len(s: &str, encoding: TextEncoding) -> usize {
    match encoding {
        TextEncoding::Latin1 if !s.is_ascii() => s.chars().count(),
        TextEncoding::Latin1 | TextEncoding::Utf8 => s.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    #[test]
    fn empty_string_is_one_zero_byte() {
        let mut b = BytesMut::new();
        b.put_string("");
        assert_eq!(&b[..], &[0]);
        assert_eq!(Reader::new(&b).string().unwrap(), "");
    }

    #[test]
    fn varint_matches_dotnet() {
        let mut b = BytesMut::new();
        b.put_varint_len(300);
        assert_eq!(&b[..], &[0xac, 0x02]);
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x07]).varint_len(),
            Ok(i32::MAX as usize)
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]).varint_len(),
            Err(DecodeError::InvalidVarint)
        );
        assert_eq!(
            Reader::new(&[0xff; 6]).varint_len(),
            Err(DecodeError::InvalidVarint)
        );
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        // The error names the whole claimed length, so the check ran before anything was
        // allocated or read (Linux overcommits, so a missing check would not crash).
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x07, b'a']);
        assert_eq!(
            r.string(),
            Err(DecodeError::Truncated {
                needed: i32::MAX as usize,
                remaining: 1
            })
        );
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x7f, 1, 2]);
        let mut items = 0;
        assert_eq!(
            r.array_of(2, |r| {
                items += 1;
                r.u16()
            }),
            Err(DecodeError::Truncated {
                needed: 2 * i32::MAX as usize,
                remaining: 2
            })
        );
        assert_eq!(items, 0, "no element is read before the count is checked");
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.byte_array(), Err(DecodeError::NegativeLength(-1)));
    }

    #[test]
    fn java_latin1_bytes_are_invalid_utf8_but_decode_lossily() {
        // "é" as the Java client sends it: one byte 0xE9.
        let body = [1u8, 0xe9];
        assert_eq!(Reader::new(&body).string(), Err(DecodeError::InvalidUtf8));
        assert_eq!(Reader::new(&body).string_lossy().unwrap(), "\u{fffd}");
    }

    /// A string as the Java client writes it: the char count, then each UTF-16 char's low byte.
    fn java_writes(s: &str) -> Vec<u8> {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut b = BytesMut::new();
        b.put_varint_len(units.len());
        for unit in units {
            b.put_u8(unit as u8);
        }
        b.to_vec()
    }

    /// A string as the C# client writes it: UTF-8 byte count, then the UTF-8 bytes.
    fn csharp_writes(s: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_varint_len(s.len());
        b.put_slice(s.as_bytes());
        b.to_vec()
    }

    /// A string as the Java client reads it: each byte one char.
    fn java_reads(bytes: &[u8]) -> String {
        let mut r = Reader::new(bytes);
        let len = r.varint_len().unwrap();
        let s = r
            .take(len)
            .unwrap()
            .iter()
            .map(|&b| char::from(b))
            .collect();
        r.finish().unwrap();
        s
    }

    #[test]
    fn detect_learns_latin1_from_the_java_clients_bytes() {
        // "café" as the captured Java client wrote it.
        let body = hex::decode("04636166e9").unwrap();
        assert_eq!(java_writes("café"), body);
        let mut mode = TextMode::Detect;
        let s = decode_text(&body, &mut mode, |r| r.string()).unwrap();
        assert_eq!((s.as_str(), mode), ("café", TextMode::Latin1));
        // Strict UTF-8 refuses it and stays strict.
        let mut strict = TextMode::StrictUtf8;
        assert_eq!(
            decode_text(&body, &mut strict, |r| r.string()),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(strict, TextMode::StrictUtf8);
        // C#'s UTF-8 keeps a detecting session on UTF-8.
        let mut mode = TextMode::Detect;
        let s = decode_text(&csharp_writes("héllo ✓"), &mut mode, |r| r.string()).unwrap();
        assert_eq!((s.as_str(), mode), ("héllo ✓", TextMode::Detect));
    }

    #[test]
    fn a_latin1_string_later_in_a_body_rereads_the_earlier_ones() {
        // "Ã©" then "é", both one byte per char: the first alone would pass as UTF-8 "é".
        let mut body = java_writes("Ã©");
        body.extend(java_writes("é"));
        let mut mode = TextMode::Detect;
        let pair = decode_text(&body, &mut mode, |r| Ok((r.string()?, r.string()?))).unwrap();
        assert_eq!(pair, ("Ã©".to_string(), "é".to_string()));
        assert_eq!(mode, TextMode::Latin1);
    }

    #[test]
    fn latin1_answers_carry_what_fits_and_question_marks_for_the_rest() {
        let mut b = BytesMut::new();
        b.put_string_in("Hello café ✓", TextEncoding::Latin1);
        assert_eq!(java_reads(&b), "Hello café ?");
        assert_eq!(text_len("café", TextEncoding::Latin1), 4);
        assert_eq!(text_len("café", TextEncoding::Utf8), 5);
    }

    #[test]
    fn ticks_epoch() {
        assert_eq!(ticks_from_system_time(UNIX_EPOCH), UNIX_EPOCH_TICKS);
        assert_eq!(
            system_time_from_ticks(0),
            UNIX_EPOCH - Duration::from_secs(62_135_596_800)
        );
    }

    proptest! {
        #[test]
        fn string_round_trips(s in ".*") {
            let mut b = BytesMut::new();
            b.put_string(&s);
            let mut r = Reader::new(&b);
            prop_assert_eq!(r.string().unwrap(), s);
            prop_assert!(r.finish().is_ok());
        }

        /// Any text of U+0000..U+00FF that the Java client writes reads back as itself on a
        /// session that knows its peer, and, on a session still detecting, whenever the bytes
        /// are not UTF-8 (when they are, they read as UTF-8, and the answer in UTF-8 gives the
        /// Java client back its own bytes: see the next property).
        #[test]
        fn java_written_latin1_decodes_to_itself(s in "[\\x00-\\xff]{0,40}") {
            let bytes = java_writes(&s);
            let mut known = TextMode::Latin1;
            prop_assert_eq!(&decode_text(&bytes, &mut known, |r| r.string()).unwrap(), &s);
            let mut detect = TextMode::Detect;
            let read = decode_text(&bytes, &mut detect, |r| r.string()).unwrap();
            if std::str::from_utf8(&bytes[bytes.len() - s.chars().count()..]).is_err() {
                prop_assert_eq!(&read, &s);
                prop_assert_eq!(detect, TextMode::Latin1);
            }
            // Answered in the session's encoding, the Java client reads what it sent.
            let mut answer = BytesMut::new();
            answer.put_string_in(&read, detect.encoding());
            prop_assert_eq!(java_reads(&answer), s);
        }

        /// Any text the C# client writes (UTF-8) decodes to itself on a detecting session, which
        /// stays on UTF-8, and on a strict one.
        #[test]
        fn csharp_written_utf8_decodes_to_itself(s in "\\PC{0,40}") {
            let bytes = csharp_writes(&s);
            for start in [TextMode::Detect, TextMode::StrictUtf8] {
                let mut mode = start;
                prop_assert_eq!(&decode_text(&bytes, &mut mode, |r| r.string()).unwrap(), &s);
                prop_assert_eq!(mode, start);
            }
        }

        #[test]
        fn proxy_header_reader_holds_its_invariants(
            bound in any::<u8>(),
            kind in 0u8..3,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            // Random bytes after each version's signature, so that the parser is reached.
            let mut data = vec![bound];
            match kind {
                0 => data.extend(b"PROXY "),
                1 => data.extend(b"\r\n\r\n\0\r\nQUIT\n"),
                _ => {}
            }
            data.extend(rest);
            crate::fuzzing::proxy_header(&data);
        }

        #[test]
        fn varint_round_trips(n in 0usize..=i32::MAX as usize) {
            let mut b = BytesMut::new();
            b.put_varint_len(n);
            prop_assert_eq!(Reader::new(&b).varint_len().unwrap(), n);
        }

        #[test]
        fn ticks_round_trip(t in -UNIX_EPOCH_TICKS..(3_155_378_975_999_999_999i64 - UNIX_EPOCH_TICKS)) {
            let ticks = t + UNIX_EPOCH_TICKS;
            prop_assert_eq!(ticks_from_system_time(system_time_from_ticks(ticks)), ticks);
        }

        #[test]
        fn reader_never_panics(
            s in ".{0,8}",
            items in proptest::collection::vec(any::<u16>(), 0..8),
            blob in proptest::collection::vec(any::<u8>(), 0..8),
            ticks in 0i64..i64::MAX,
            flag in any::<bool>(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<(proptest::sample::Index, u8)>(),
        ) {
            // A valid record of every field kind: it reads back exactly. Random bytes would
            // fail on the first length and never reach the later readers.
            let mut b = BytesMut::new();
            b.put_string(&s);
            b.put_i32_le(items.len() as i32);
            for item in &items {
                b.put_u16_le(*item);
            }
            b.put_i32_le(blob.len() as i32);
            b.put_slice(&blob);
            b.put_i64_le(ticks);
            b.put_u8(u8::from(flag));
            let read = |bytes: &[u8]| -> Result<_, DecodeError> {
                let mut r = Reader::new(bytes);
                let out = (
                    r.string()?,
                    r.array_of(2, |r| r.u16())?,
                    r.byte_array()?.to_vec(),
                    r.i64()?,
                    r.bool()?,
                );
                r.finish()?;
                Ok(out)
            };
            prop_assert_eq!(read(&b), Ok((s, items, blob, ticks, flag)));
            // Cut short anywhere, it is an error, never a panic or a partial success.
            let at = cut.index(b.len());
            prop_assert!(read(&b[..at]).is_err());
            // One byte changed anywhere: any outcome but a panic.
            let mut damaged = b.to_vec();
            let (i, x) = flip;
            let i = i.index(damaged.len());
            damaged[i] ^= x;
            let _ = read(&damaged);
        }
    }
}
