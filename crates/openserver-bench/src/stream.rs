//! One bench connection: TCP (from a chosen source address) and optionally TLS.

use crate::tls::Connector;
use anyhow::{Context as _, Result};
use std::io;
use std::net::{IpAddr, SocketAddr};
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
