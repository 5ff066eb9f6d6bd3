//! The bench's minimal client of openserver Channels (protocol 6, `PROTOCOL.md` 4.8): raw
//! frames with the application envelope, so that the load generator costs little next to the
//! server.

use crate::fanout::Event;
use crate::load::{Conn, Login};
use crate::stream::{tcp_connect, BenchStream};
use anyhow::{anyhow, bail, Result};
use bytes::{Bytes, BytesMut};
use openserver::app::envelope::{self, Envelope};
use openserver::channels::messages::{Command, Reply, CHANNELS_ID};
use openserver::channels::Position;
use openserver::wire::{Frame, FrameCodec};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder as _;

/// The largest frame accepted: a recovery of 1,000 publications fits many times over.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A publication push, read without copying its data (the fields the bench needs only).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Push<'a> {
    Publication(#[serde(borrow)] Publication<'a>),
}

#[derive(Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    data: &'a [u8],
}

/// Connects from `source` and logs in.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    login: &Login,
) -> Result<(TcpStream, BytesMut)> {
    let tcp = tcp_connect(addr, source).await?;
    let mut conn = Conn {
        stream: BenchStream::Plain(tcp),
        rbuf: BytesMut::with_capacity(8 * 1024),
    };
    conn.login(login).await?;
    match conn.stream {
        BenchStream::Plain(tcp) => Ok((tcp, conn.rbuf)),
        BenchStream::Tls(_) => bail!("unexpected TLS stream"),
    }
}

fn request(buf: &mut BytesMut, id: u32, command: &Command) {
    // The commands are a few strings and bytes: MessagePack encoding cannot fail on them.
    if let Ok(body) = envelope::encode(envelope::REQUEST, id, command) {
        // Bodies are far below the 2 GiB frame limit.
        let _ = Frame::new(CHANNELS_ID, body).encode_into(buf);
    }
}

/// Appends a subscribe request (answered by one [`Event::Ack`]).
pub(crate) fn subscribe(buf: &mut BytesMut, id: u32, channel: &str, since: Option<Position>) {
    let command = Command::Subscribe {
        channel: channel.into(),
        since,
    };
    request(buf, id, &command);
}

/// Appends a publish request (answered by one [`Event::Ack`]).
pub(crate) fn publish(buf: &mut BytesMut, id: u32, channel: &str, payload: &[u8]) {
    let command = Command::Publish {
        channel: channel.into(),
        data: Bytes::copy_from_slice(payload),
    };
    request(buf, id, &command);
}

/// A frame reader keeping its codec between reads.
pub(crate) struct Parser {
    codec: FrameCodec,
}

impl Parser {
    /// A parser accepting frames up to 64 MiB.
    pub(crate) fn new() -> Self {
        Parser {
            codec: FrameCodec::new(MAX_FRAME),
        }
    }

    /// Hands every complete message in `rbuf` to `on`, consuming it.
    pub(crate) fn parse(
        &mut self,
        rbuf: &mut BytesMut,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        while let Some(frame) = self.codec.decode(rbuf)? {
            if frame.protocol_id != CHANNELS_ID {
                continue; // keep-alive or another protocol's message: not the load's
            }
            match Envelope::decode(&frame.body)? {
                Envelope::Push { body } => {
                    if let Ok(Push::Publication(p)) = rmp_serde::from_slice::<Push<'_>>(body) {
                        on(Event::Delivery(p.data));
                    }
                }
                Envelope::Response { .. } => on(Event::Ack),
                Envelope::Error { body, .. } => on(Event::Error(error_text(body))),
                Envelope::Request { .. } => bail!("the server sent a request"),
            }
        }
        Ok(())
    }
}

fn error_text(body: &[u8]) -> String {
    match envelope::decode_value::<openserver::app::AppError>(body) {
        Ok(e) => format!("{e:?}"),
        Err(e) => e,
    }
}

/// Reads frames until the answer to a subscribe arrives; returns it.
pub(crate) async fn read_reply(
    tcp: &mut TcpStream,
    rbuf: &mut BytesMut,
    parser: &mut Parser,
) -> Result<Reply> {
    use tokio::io::AsyncReadExt as _;
    loop {
        while let Some(frame) = parser.codec.decode(rbuf)? {
            if frame.protocol_id != CHANNELS_ID {
                continue;
            }
            match Envelope::decode(&frame.body)? {
                Envelope::Response { body, .. } => {
                    return envelope::decode_value::<Reply>(body).map_err(|e| anyhow!(e))
                }
                Envelope::Error { body, .. } => bail!("refused: {}", error_text(body)),
                _ => {}
            }
        }
        if tcp.read_buf(rbuf).await? == 0 {
            bail!("server closed the connection");
        }
    }
}
