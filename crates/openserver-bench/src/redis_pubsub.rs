//! The bench's minimal redis pub/sub client (RESP2): `SUBSCRIBE` on one connection, `PUBLISH`
//! on another, and the `message` pushes.

use crate::fanout::Event;
use anyhow::{bail, Result};
use bytes::{Buf as _, BufMut as _, BytesMut};

/// Appends a command as a RESP array of bulk strings.
fn command(buf: &mut BytesMut, parts: &[&[u8]]) {
    buf.put_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        buf.put_slice(format!("${}\r\n", part.len()).as_bytes());
        buf.put_slice(part);
        buf.put_slice(b"\r\n");
    }
}

/// Appends `SUBSCRIBE channel` (confirmed by one [`Event::Ack`]).
pub(crate) fn subscribe(buf: &mut BytesMut, channel: &str) {
    command(buf, &[b"SUBSCRIBE", channel.as_bytes()]);
}

/// Appends `PUBLISH channel payload` (answered by one [`Event::Ack`]).
pub(crate) fn publish(buf: &mut BytesMut, channel: &str, payload: &[u8]) {
    command(buf, &[b"PUBLISH", channel.as_bytes(), payload]);
}

/// One RESP value's extent: where it ends, and what the bench makes of it.
enum Value {
    Integer,
    Error,
    Bulk(usize, usize),
    Array(Vec<Value>),
    Other,
}

/// Parses one value at `at`; `None` if it is not all in `buf` yet.
fn value(buf: &[u8], at: usize) -> Result<Option<(Value, usize)>> {
    let Some(end) = buf[at..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| at + p)
    else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let number = || -> Result<i64> {
        let text = std::str::from_utf8(&buf[at + 1..end])?;
        Ok(text.parse::<i64>()?)
    };
    Ok(match kind {
        b':' => Some((Value::Integer, end + 2)),
        b'+' => Some((Value::Other, end + 2)),
        b'-' => Some((Value::Error, end + 2)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Value::Other, end + 2)));
            }
            let n = n as usize;
            if buf.len() < end + 2 + n + 2 {
                return Ok(None);
            }
            Some((Value::Bulk(end + 2, end + 2 + n), end + 2 + n + 2))
        }
        b'*' => {
            let n = number()?.max(0) as usize;
            let mut items = Vec::with_capacity(n.min(8));
            let mut next = end + 2;
            for _ in 0..n {
                match value(buf, next)? {
                    Some((v, after)) => {
                        items.push(v);
                        next = after;
                    }
                    None => return Ok(None),
                }
            }
            Some((Value::Array(items), next))
        }
        other => bail!("bad RESP type byte {other:#04x} from redis"),
    })
}

/// Reads redis replies and pushes.
pub(crate) struct Parser;

impl Parser {
    /// Hands every complete message in `rbuf` to `on`, consuming it.
    pub(crate) fn parse(
        &mut self,
        rbuf: &mut BytesMut,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        let mut at = 0;
        while let Some((v, after)) = value(rbuf, at)? {
            match v {
                Value::Integer => on(Event::Ack),
                Value::Error => on(Event::Error(
                    String::from_utf8_lossy(&rbuf[at..after - 2]).into_owned(),
                )),
                Value::Array(items) => match items.as_slice() {
                    [Value::Bulk(k0, k1), _, Value::Bulk(d0, d1)]
                        if &rbuf[*k0..*k1] == b"message" =>
                    {
                        on(Event::Delivery(&rbuf[*d0..*d1]))
                    }
                    [Value::Bulk(k0, k1), _, Value::Integer] if &rbuf[*k0..*k1] == b"subscribe" => {
                        on(Event::Ack)
                    }
                    _ => {}
                },
                _ => {}
            }
            at = after;
        }
        rbuf.advance(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes_confirmations_and_partial_values() {
        let mut buf = BytesMut::new();
        buf.put_slice(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n");
        buf.put_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nabc\r\n:5\r\n");
        buf.put_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nab");
        let mut seen = Vec::new();
        Parser
            .parse(&mut buf, &mut |e| {
                seen.push(match e {
                    Event::Delivery(d) => String::from_utf8_lossy(d).into_owned(),
                    Event::Ack => "ack".into(),
                    _ => "other".into(),
                })
            })
            .unwrap();
        assert_eq!(seen, ["ack", "abc", "ack"]);
        assert!(buf.starts_with(b"*3\r\n$7\r\nmessage"));
    }
}
