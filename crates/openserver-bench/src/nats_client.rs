//! The bench's minimal client of the NATS text protocol (core publish/subscribe only):
//! `CONNECT`, `SUB`, `PUB`, `PING`/`PONG`, and `MSG` deliveries.

use crate::fanout::Event;
use crate::stream::tcp_connect;
use anyhow::{bail, Result};
use bytes::{Buf as _, BufMut as _, BytesMut};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Connects from `source`, sends `CONNECT` and waits for the `PONG` of a `PING`, so the
/// server has taken the connection in.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<(TcpStream, BytesMut)> {
    let mut tcp = tcp_connect(addr, source).await?;
    tcp.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await?;
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut parser = Parser;
    loop {
        let mut ponged = false;
        let mut failed = None;
        parser.parse(&mut rbuf, &mut |e| match e {
            Event::Ack => ponged = true,
            Event::Error(e) => failed = Some(e),
            _ => {}
        })?;
        if let Some(e) = failed {
            bail!("nats refused the connection: {e}");
        }
        if ponged {
            return Ok((tcp, rbuf));
        }
        if tcp.read_buf(&mut rbuf).await? == 0 {
            bail!("nats closed the connection");
        }
    }
}

/// Appends a `SUB` (unanswered: follow the last with [`ping`]).
pub(crate) fn subscribe(buf: &mut BytesMut, sid: u32, subject: &str) {
    buf.put_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// Appends a `PUB` (unanswered with verbose off).
pub(crate) fn publish(buf: &mut BytesMut, subject: &str, payload: &[u8]) {
    buf.put_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Appends a `PING`, answered by `PONG` ([`Event::Ack`]) once the server has handled
/// everything before it.
pub(crate) fn ping(buf: &mut BytesMut) {
    buf.put_slice(b"PING\r\n");
}

/// The server's messages; `PING` must be answered with `PONG` by the caller
/// ([`Event::Ping`]).
pub(crate) struct Parser;

impl Parser {
    /// Hands every complete message in `rbuf` to `on`, consuming it.
    pub(crate) fn parse(
        &mut self,
        rbuf: &mut BytesMut,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        loop {
            let Some(end) = find_crlf(rbuf) else {
                return Ok(());
            };
            let line = &rbuf[..end];
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let len = rest
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(len) = len else {
                    bail!(
                        "bad MSG line from nats: {:?}",
                        String::from_utf8_lossy(line)
                    );
                };
                if rbuf.len() < end + 2 + len + 2 {
                    return Ok(()); // the payload is not all here yet
                }
                on(Event::Delivery(&rbuf[end + 2..end + 2 + len]));
                rbuf.advance(end + 2 + len + 2);
                continue;
            }
            if line == b"PING" {
                on(Event::Ping);
            } else if line == b"PONG" {
                on(Event::Ack);
            } else if line.starts_with(b"-ERR") {
                on(Event::Error(String::from_utf8_lossy(line).into_owned()));
            }
            // INFO and +OK need nothing.
            rbuf.advance(end + 2);
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_msg_ping_and_partial_payloads() {
        let mut buf =
            BytesMut::from(&b"INFO {}\r\nMSG a 1 3\r\nabc\r\nPING\r\nMSG b 2 r 2\r\nx"[..]);
        let mut seen = Vec::new();
        Parser
            .parse(&mut buf, &mut |e| {
                seen.push(match e {
                    Event::Delivery(d) => String::from_utf8_lossy(d).into_owned(),
                    Event::Ping => "ping".into(),
                    _ => "other".into(),
                })
            })
            .unwrap();
        assert_eq!(seen, ["abc", "ping"]);
        assert_eq!(&buf[..], b"MSG b 2 r 2\r\nx");
    }
}
