//! One bench connection: TCP (from a chosen source address) and optionally TLS.

use crate::tls::Connector;
use anyhow::{Context as _, Result};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// A plaintext or TLS connection.
pub(crate) enum BenchStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections per source address at most: half of the server's default per-address cap
/// (`limits.max_connections_per_ip`, 1,000), so that a default server never refuses the load.
const PER_SOURCE: usize = 500;

/// Logins in progress per source address at most, on average: half of the server's default
/// `security.max_unauthenticated_per_ip` (32). Connections are set up `connect_concurrency` at
/// a time and dealt over the sources in turn.
const SETUP_PER_SOURCE: usize = 16;

/// Source addresses for one process's `count` connections set up `concurrency` at a time:
/// 127.B.W.2, 127.B.W.3, ..., enough that no address holds more than [`PER_SOURCE`]
/// connections or about [`SETUP_PER_SOURCE`] logins in progress (at most 250, at most one per
/// connection). W is the process's index and B is picked at random per run (never 0, so
/// 127.0.0.1 stays the server's): a fresh B each run keeps the ports still in TIME_WAIT from
/// an earlier run off this run's addresses, where they would slow every bind down.
///
/// The bench spreads its load this way rather than asking the server to lift its per-address
/// limits: a server with its default settings serves it as it would serve many clients.
pub(crate) fn loopback_sources(
    run: u8,
    process: usize,
    count: usize,
    concurrency: usize,
) -> Vec<IpAddr> {
    let n = count
        .div_ceil(PER_SOURCE)
        .max(concurrency.min(count).div_ceil(SETUP_PER_SOURCE))
        .clamp(1, 250);
    (0..n)
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, run, (process % 256) as u8, 2 + k as u8)))
        .collect()
}

/// A random second octet for [`loopback_sources`].
pub(crate) fn run_octet() -> u8 {
    rand::random::<u8>().max(1)
}

/// Opens a TCP connection to `addr`, from `source` (port chosen by the kernel) if given.
/// Binding distinct 127.x.y.z sources gives each its own range of ephemeral ports.
pub(crate) async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs the TLS handshake over `tcp`.
pub(crate) async fn tls_handshake(tcp: TcpStream, tls: &Connector) -> Result<BenchStream> {
    let stream = tls
        .connector
        .connect(tls.name.clone(), tcp)
        .await
        .context("TLS handshake failed")?;
    Ok(BenchStream::Tls(Box::new(stream)))
}

impl AsyncRead for BenchStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BenchStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_under_the_default_per_address_caps() {
        let s = loopback_sources(7, 3, 12_000, 256);
        assert_eq!(s.len(), 24);
        assert_eq!(s[0].to_string(), "127.7.3.2");
        assert_eq!(s[23].to_string(), "127.7.3.25");
        // 50 connections set up 256 at a time: 50 logins at once, over 4 addresses.
        assert_eq!(loopback_sources(7, 0, 50, 256).len(), 4);
        assert_eq!(loopback_sources(7, 0, 1, 256).len(), 1);
        // 1,000 connections: 16 addresses (256 at once), 63 connections each.
        assert_eq!(loopback_sources(7, 0, 1000, 256).len(), 16);
        assert_eq!(loopback_sources(7, 0, 1_000_000, 256).len(), 250);
        assert!(run_octet() > 0);
    }
}
