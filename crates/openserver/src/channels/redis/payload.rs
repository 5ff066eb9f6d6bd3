//! What travels on a channel's pub/sub topic: one MessagePack array per event.
//!
//! The Lua scripts write these (Redis's `cmsgpack`), so the format is what they can write
//! cheaply: publications `[0, epoch, offset, user, data, stamp]`, joins `[1, client, node]` and
//! leaves `[2, client, node]`, where `client` is the `[user, session, since]` array kept as
//! the value of the channel's presence hash (so that a script can publish a leave from the
//! stored entry without unpacking it) and `node` the escaped id of the session's node
//! (session ids are numbered per node). Strings may come as MessagePack `str` or `bin`: `cmsgpack` writes
//! every Lua string as `str`, whatever its bytes.
//!
//! `stamp` is when the publishing node handed the publication to Redis, in milliseconds since
//! the Unix epoch by its clock (for the lag metric). Earlier versions wrote publications
//! without it, `[0, epoch, offset, user, data]`; those are still read, with no stamp. (Readers
//! before the stamp take a stamped publication for an unreadable message and fill the gap
//! from history: upgrade every node before relying on live delivery across versions.)

use super::super::broker::{ClientInfo, Publication};
use bytes::Bytes;

/// One event of a channel's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A publication in the history of `epoch`.
    Publication {
        /// The history's epoch.
        epoch: String,
        /// The publication.
        publication: Publication,
        /// When the publishing node handed it to Redis, in milliseconds since the Unix epoch
        /// by that node's clock; `None` from writers before the stamp.
        stamp: Option<u64>,
    },
    /// A session of `node` (escaped) joined.
    Join {
        /// Who.
        client: ClientInfo,
        /// The session's node.
        node: String,
    },
    /// A session of `node` (escaped) left.
    Leave {
        /// Who.
        client: ClientInfo,
        /// The session's node.
        node: String,
    },
}

const PUBLICATION: u64 = 0;
const JOIN: u64 = 1;
const LEAVE: u64 = 2;

/// A presence entry as the presence hash keeps it: `[user, session, since]`.
pub(crate) fn encode_client(client: &ClientInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(client.user.len() + 24);
    array(&mut out, 3);
    raw(&mut out, 0xa0, 0xd9, client.user.as_bytes());
    uint(&mut out, client.session);
    uint(&mut out, client.since);
    out
}

/// A join or leave event of a session of `node` (escaped), as the sweeper script also
/// builds it from a stored presence entry.
pub(crate) fn encode_presence_event(join: bool, client: &ClientInfo, node: &str) -> Vec<u8> {
    let mut out = Vec::new();
    array(&mut out, 3);
    uint(&mut out, if join { JOIN } else { LEAVE });
    out.extend_from_slice(&encode_client(client));
    raw(&mut out, 0xa0, 0xd9, node.as_bytes());
    out
}

/// A publication event, as the publish script writes it (data as `bin` here; the script's
/// `str` reads the same), or without `stamp` as earlier versions wrote it.
#[cfg(test)]
pub(crate) fn encode_publication(
    epoch: &str,
    publication: &Publication,
    stamp: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    array(&mut out, if stamp.is_some() { 6 } else { 5 });
    uint(&mut out, PUBLICATION);
    raw(&mut out, 0xa0, 0xd9, epoch.as_bytes());
    uint(&mut out, publication.offset);
    raw(&mut out, 0xa0, 0xd9, publication.user.as_bytes());
    raw(&mut out, 0, 0xc4, &publication.data);
    if let Some(stamp) = stamp {
        uint(&mut out, stamp);
    }
    out
}

/// Reads one event; `Err` says what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Event, String> {
    let mut r = Reader { bytes, at: 0 };
    let len = r.array()?;
    let kind = r.uint()?;
    let event = match (kind, len) {
        (PUBLICATION, 5 | 6) => {
            let epoch = r.string()?;
            let offset = r.uint()?;
            let user = r.string()?;
            let data = Bytes::copy_from_slice(r.raw()?);
            let stamp = if len == 6 { Some(r.uint()?) } else { None };
            Event::Publication {
                epoch,
                publication: Publication { offset, data, user },
                stamp,
            }
        }
        (JOIN | LEAVE, 3) => {
            let client = r.client()?;
            let node = r.string()?;
            if kind == JOIN {
                Event::Join { client, node }
            } else {
                Event::Leave { client, node }
            }
        }
        _ => return Err(format!("unknown event kind {kind} with {len} fields")),
    };
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the event", bytes.len() - r.at));
    }
    Ok(event)
}

/// Reads a presence entry as [`encode_client`] writes it.
pub(crate) fn decode_client(bytes: &[u8]) -> Result<ClientInfo, String> {
    let mut r = Reader { bytes, at: 0 };
    let client = r.client()?;
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the entry", bytes.len() - r.at));
    }
    Ok(client)
}

fn array(out: &mut Vec<u8>, len: u8) {
    debug_assert!(len < 16);
    out.push(0x90 | len);
}

/// A `str` (`fix` is the fixstr marker, 0 for none) or `bin` (from `first`, the 8-bit
/// length marker; 16 and 32 follow it).
fn raw(out: &mut Vec<u8>, fix: u8, first: u8, bytes: &[u8]) {
    let len = bytes.len();
    if fix != 0 && len < 32 {
        out.push(fix | len as u8);
    } else if len <= u8::MAX as usize {
        out.extend_from_slice(&[first, len as u8]);
    } else if len <= u16::MAX as usize {
        out.push(first + 1);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(first + 2);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

fn uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[0xcc, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(0xcd);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(0xce);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn array(&mut self) -> Result<usize, String> {
        match self.byte()? {
            m @ 0x90..=0x9f => Ok(usize::from(m & 0x0f)),
            0xdc => Ok(self.be(2)? as usize),
            m => Err(format!("expected an array, found marker 0x{m:02x}")),
        }
    }

    fn uint(&mut self) -> Result<u64, String> {
        match self.byte()? {
            m @ 0x00..=0x7f => Ok(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            // Signed markers holding a value >= 0 (some writers use them).
            m @ (0xd0..=0xd3) => {
                let n = 1usize << (m - 0xd0);
                let v = self.be(n)?;
                let shift = 64 - 8 * n as u32;
                let signed = ((v << shift) as i64) >> shift;
                u64::try_from(signed).map_err(|_| format!("negative number {signed}"))
            }
            m => Err(format!("expected a number, found marker 0x{m:02x}")),
        }
    }

    fn raw(&mut self) -> Result<&'a [u8], String> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 | 0xc4 => self.be(1)? as usize,
            0xda | 0xc5 => self.be(2)? as usize,
            0xdb | 0xc6 => self.be(4)? as usize,
            m => return Err(format!("expected a string, found marker 0x{m:02x}")),
        };
        self.take(len)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.raw()?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn client(&mut self) -> Result<ClientInfo, String> {
        if self.array()? != 3 {
            return Err("a presence entry has 3 fields".into());
        }
        Ok(ClientInfo {
            user: self.string()?,
            session: self.uint()?,
            since: self.uint()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(user: &str, session: u64, since: u64) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            session,
            since,
        }
    }

    #[test]
    fn events_read_back_as_written() {
        for (offset, data_len) in [(1u64, 0usize), (200, 31), (70_000, 300), (u64::MAX, 70_000)] {
            let p = Publication {
                offset,
                data: Bytes::from(vec![0xc1; data_len]),
                user: "alice".into(),
            };
            // With the stamp, and without it as earlier versions wrote publications.
            for stamp in [Some(1_700_000_000_123), Some(0), None] {
                let bytes = encode_publication("0a1b2c3d4e5f6071", &p, stamp);
                assert_eq!(
                    decode(&bytes),
                    Ok(Event::Publication {
                        epoch: "0a1b2c3d4e5f6071".into(),
                        publication: p.clone(),
                        stamp,
                    })
                );
            }
        }
        let long = "u".repeat(40);
        for c in [
            client("bob", 7, 1_700_000_000_123),
            client(&long, u64::MAX, 0),
        ] {
            assert_eq!(decode_client(&encode_client(&c)), Ok(c.clone()));
            let node = || "web%201".to_string();
            assert_eq!(
                decode(&encode_presence_event(true, &c, "web%201")),
                Ok(Event::Join {
                    client: c.clone(),
                    node: node()
                })
            );
            assert_eq!(
                decode(&encode_presence_event(false, &c, "web%201")),
                Ok(Event::Leave {
                    client: c.clone(),
                    node: node()
                })
            );
        }
    }

    #[test]
    fn reads_what_lua_cmsgpack_writes() {
        // cmsgpack.pack({0, "ep", 300, "", "hi"}): the data as str, the offset as uint 16.
        let bytes = [
            0x95, 0x00, 0xa2, b'e', b'p', 0xcd, 0x01, 0x2c, 0xa0, 0xa2, b'h', b'i',
        ];
        assert_eq!(
            decode(&bytes),
            Ok(Event::Publication {
                epoch: "ep".into(),
                publication: Publication {
                    offset: 300,
                    data: Bytes::from_static(b"hi"),
                    user: String::new(),
                },
                stamp: None,
            })
        );
        // cmsgpack.pack({0, "ep", 300, "", "hi", 1700000000123}): the stamp as uint 64.
        let mut stamped = bytes.to_vec();
        stamped[0] = 0x96;
        stamped.push(0xcf);
        stamped.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        assert_eq!(
            decode(&stamped),
            Ok(Event::Publication {
                epoch: "ep".into(),
                publication: Publication {
                    offset: 300,
                    data: Bytes::from_static(b"hi"),
                    user: String::new(),
                },
                stamp: Some(1_700_000_000_123),
            })
        );
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let p = Publication {
            offset: 3,
            data: Bytes::from_static(b"xyz"),
            user: "u".into(),
        };
        let good = encode_publication("e", &p, None);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let stamped = encode_publication("e", &p, Some(1_700_000_000_123));
        // Cut inside the stamp, or with the stamp announced and missing.
        for cut in good.len()..stamped.len() {
            assert!(decode(&stamped[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_stamp = good.clone();
        bad_stamp[0] = 0x96;
        bad_stamp.push(0xa0);
        assert!(decode(&bad_stamp).unwrap_err().contains("number"));
        let mut seven = stamped.clone();
        seven[0] = 0x97;
        seven.push(0);
        assert!(decode(&seven).unwrap_err().contains("kind 0 with 7"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("after"));
        assert!(decode(&[0x92, 0x09, 0x90]).unwrap_err().contains("kind 9"));
        assert!(decode(&[0x92, 0x01, 0xa0])
            .unwrap_err()
            .contains("kind 1 with 2"));
        assert!(decode(&[0xc0]).unwrap_err().contains("array"));
        assert!(decode(&[0x95, 0x00, 0xa1, 0xff, 0x01, 0xa0, 0xa0])
            .unwrap_err()
            .contains("UTF-8"));
        assert!(decode(&[0x93, 0x01, 0x93, 0xa0, 0xd0, 0xff, 0x00, 0xa0])
            .unwrap_err()
            .contains("negative"));
    }
}
