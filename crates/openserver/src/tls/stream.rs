//! The server's side of a TLS connection, on rustls' unbuffered API.
//!
//! tokio-rustls drives rustls' buffered connection, which keeps a 4 KiB receive buffer for as
//! long as the connection lives, plus a queue of records each way. An idle TLS session should
//! cost little more than a plaintext one, so the server drives `UnbufferedServerConnection`
//! itself: TLS bytes wait in a buffer only while a record is incomplete, answers are encrypted
//! straight into the outgoing buffer, and every buffer is freed as soon as it is empty.
//!
//! ```text
//!   socket --read--> incoming (TLS) --rustls--> plaintext --> reader (the session engine)
//!   socket <--write-- outgoing (TLS) <--rustls encrypts-- writer
//! ```
//!
//! Handshake messages, key updates and alerts that rustls produces go into `outgoing` too,
//! in order, and leave before the stream waits for the peer.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most TLS bytes one read takes from the socket (the stack buffer it reads into): a
/// whole record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// Encrypted bytes waiting for the socket past which a write waits: back-pressure for a peer
/// that does not read.
const MAX_PENDING: usize = 64 * 1024;

/// Room for rustls' record framing around `len` bytes of application data (header, type byte
/// and tag for each 16 KiB record).
fn sealed_len(len: usize) -> usize {
    len + (len / (16 * 1024) + 1) * 64
}

/// An established (or establishing) server TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed: an incomplete record.
    incoming: Vec<u8>,
    /// TLS bytes to send; `outgoing[sent..]` has not been written yet.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted application data the reader has not taken; `plaintext[taken..]` is left.
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer sent close_notify: no more application data will come.
    peer_closed: bool,
    /// This side queued its close_notify.
    close_sent: bool,
}

/// Where processing the received records stopped.
enum Step {
    /// Application data is in `plaintext`.
    Data,
    /// More bytes from the peer are needed (handshake in progress, or nothing to read).
    NeedRead,
    /// The request (encrypt, close_notify) is done.
    Done,
    /// The peer closed (close_notify received).
    PeerClosed,
}

/// What processing should do once rustls can send application data.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// Nothing: stop there.
    None,
    /// Encrypt these bytes into `outgoing`.
    Encrypt(&'a [u8]),
    /// Queue a close_notify.
    CloseNotify,
}

impl TlsStream {
    /// Runs a server handshake on `tcp` with `config`. The caller bounds it with the handshake
    /// deadline.
    pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plaintext: Vec::new(),
            taken: 0,
            peer_closed: false,
            close_sent: false,
        };
        let shaken = poll_fn(|cx| stream.poll_handshake(cx)).await;
        match shaken {
            Ok(()) => Ok(stream),
            Err(e) => {
                // The alert rustls queued tells the peer why; best effort, the caller's
                // deadline bounds it. (A plaintext client reads the alert as a TLS record
                // and can say that the server speaks TLS.)
                let _ = poll_fn(|cx| stream.poll_send(cx)).await;
                let plaintext = matches!(
                    crate::wire::notice::classify(&stream.incoming),
                    crate::wire::notice::FirstBytes::Plaintext
                        | crate::wire::notice::FirstBytes::Refused(_)
                );
                if plaintext {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, PlaintextPeer(e)));
                }
                Err(e)
            }
        }
    }

    /// The certificates the client presented, if any (verified against the client CA).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // The peer waits for these before it sends more.
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.process(Request::None)? {
                // Application data with the client's last flight: kept for the reader.
                Step::Data | Step::Done => continue,
                // Processing the client's last flight ended the handshake: waiting for more
                // would stall a client that expects the server to speak first.
                Step::NeedRead if !self.conn.is_handshaking() => continue,
                Step::NeedRead => {
                    // What processing queued (our flight) must reach the peer first.
                    ready!(self.poll_send(cx))?;
                    if ready!(self.poll_recv(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        )));
                    }
                }
                Step::PeerClosed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed during the TLS handshake",
                    )))
                }
            }
        }
    }

    /// Processes what has been received until rustls needs I/O, or has done `request`. What
    /// rustls wants sent is queued in `outgoing`; application data goes to `plaintext`.
    fn process(&mut self, request: Request<'_>) -> io::Result<Step> {
        loop {
            let TlsStream {
                conn,
                incoming,
                outgoing,
                plaintext,
                ..
            } = self;
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
            let step = match state {
                Err(e) => {
                    incoming.drain(..discard.min(incoming.len()));
                    self.queue_alert();
                    return Err(invalid(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    Some(Step::Data)
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // Early data is off in the server's configuration; should a client send
                    // some anyway, it is application data like any other.
                    while let Some(record) = early.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    Some(Step::Data)
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append(outgoing, 1024, |room| encoded(encode.encode(room)))?;
                    None
                }
                // What was encoded is in `outgoing`, which leaves in order before this stream
                // waits for the peer.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Step::NeedRead),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match request {
                    Request::None => Some(Step::NeedRead),
                    Request::Encrypt(data) => {
                        append(outgoing, sealed_len(data.len()), |room| {
                            encrypted(traffic.encrypt(data, room))
                        })?;
                        Some(Step::Done)
                    }
                    Request::CloseNotify => {
                        append(outgoing, 64, |room| {
                            encrypted(traffic.queue_close_notify(room))
                        })?;
                        Some(Step::Done)
                    }
                },
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Some(Step::PeerClosed)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Some(Step::PeerClosed)
                }
                Ok(_) => return Err(invalid("unexpected TLS connection state")),
            };
            let incoming = &mut self.incoming;
            incoming.drain(..discard.min(incoming.len()));
            if incoming.is_empty() {
                // Nothing incomplete: an idle connection keeps no receive buffer.
                *incoming = Vec::new();
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// After an error, rustls may have queued an alert for the peer: encodes it into
    /// `outgoing`.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let TlsStream { conn, outgoing, .. } = self;
            let status = conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if append(outgoing, 64, |room| encoded(encode.encode(room))).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Reads what the socket has into `incoming`: the byte count, 0 at end of stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        self.incoming.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Writes `outgoing` to the socket until it is all sent (then frees it) or the socket is
    /// full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Processes until rustls has done `request` (encrypting needs a `WriteTraffic` state).
    fn request(&mut self, request: Request<'_>) -> io::Result<()> {
        loop {
            match self.process(request)? {
                Step::Done => return Ok(()),
                // Data that came with it waits for the reader.
                Step::Data | Step::PeerClosed => continue,
                Step::NeedRead => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS connection cannot send yet",
                    ))
                }
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.taken);
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // Key-update answers and the like leave before this side waits for more; a full
            // socket does not stop the reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            match this.process(Request::None)? {
                Step::Data | Step::Done => continue,
                Step::PeerClosed => return Poll::Ready(Ok(())),
                Step::NeedRead => {
                    // What processing queued (a key-update answer) leaves before the wait.
                    if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                        return Poll::Ready(Err(e));
                    }
                    if ready!(this.poll_recv(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed connection without sending TLS close_notify",
                        )));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.sent >= MAX_PENDING {
            ready!(this.poll_send(cx))?;
        }
        this.request(Request::Encrypt(data))?;
        // Sent now if the socket takes it; the rest goes on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            this.close_sent = true;
            this.request(Request::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// What one attempt to write TLS bytes into a slice came to.
enum Wrote {
    /// This many bytes were written.
    Bytes(usize),
    /// The slice was too small: rustls needs this many bytes.
    Needs(usize),
}

/// Appends to `out` what `write` puts into the room it is given: `guess` bytes at first, then
/// as many as rustls asks for. On error `out` is left as it was.
fn append(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> io::Result<Wrote>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + guess, 0);
    loop {
        match write(&mut out[start..]) {
            Ok(Wrote::Bytes(n)) => {
                out.truncate(start + n);
                return Ok(());
            }
            Ok(Wrote::Needs(n)) => out.resize(start + n, 0),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// [`append`]'s view of a handshake-message encoding.
fn encoded(result: Result<usize, EncodeError>) -> io::Result<Wrote> {
    match result {
        Ok(n) => Ok(Wrote::Bytes(n)),
        Err(EncodeError::InsufficientSize(need)) => Ok(Wrote::Needs(need.required_size)),
        Err(e) => Err(invalid(e)),
    }
}

/// [`append`]'s view of an encryption (application data or close_notify).
fn encrypted(result: Result<usize, EncryptError>) -> io::Result<Wrote> {
    match result {
        Ok(n) => Ok(Wrote::Bytes(n)),
        Err(EncryptError::InsufficientSize(need)) => Ok(Wrote::Needs(need.required_size)),
        Err(e) => Err(invalid(e)),
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A failed TLS accept whose peer sent a session-layer frame: a plaintext client.
#[derive(Debug, thiserror::Error)]
#[error("the client sent plaintext, not TLS ({0})")]
struct PlaintextPeer(io::Error);

/// Whether a [`TlsStream::accept`] error means that the client spoke plaintext.
pub(crate) fn is_plaintext_peer(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<PlaintextPeer>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClientTls, ServerTls, ServerVerification};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A handshake over 127.0.0.1 with the client library's own TLS settings (a tokio-rustls
    /// client pinning the development certificate); returns both ends. The client sends nothing
    /// after its handshake, so the server's side must finish on the client's Finished alone.
    async fn pair() -> (
        TlsStream,
        tokio_rustls::client::TlsStream<TcpStream>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::self_signed::ensure(dir.path(), &[]).unwrap();
        let server = ServerTls::from_pem_files(&certs.cert, &certs.key, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = ClientTls::new(ServerVerification::Fingerprint(server.fingerprint()));
        let (connector, name) = client.connector("127.0.0.1").unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let ours = TlsStream::accept(server.config(), tcp).await.unwrap();
        (ours, connecting.await.unwrap(), dir)
    }

    #[tokio::test]
    async fn data_crosses_both_ways_and_an_idle_stream_holds_no_buffers() {
        let (mut ours, mut theirs, _dir) = pair().await;
        theirs.write_all(b"ping").await.unwrap();
        theirs.flush().await.unwrap();
        let mut got = [0u8; 4];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // An answer larger than one record, in one write.
        let big = vec![7u8; 40_000];
        ours.write_all(&big).await.unwrap();
        ours.flush().await.unwrap();
        let mut back = vec![0u8; big.len()];
        theirs.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big);
        assert_eq!(ours.incoming.capacity(), 0);
        assert_eq!(ours.outgoing.capacity(), 0);
        assert_eq!(ours.plaintext.capacity(), 0);
    }

    #[tokio::test]
    async fn a_second_connection_resumes_with_a_stateless_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::self_signed::ensure(dir.path(), &[]).unwrap();
        let server = ServerTls::from_pem_files(&certs.cert, &certs.key, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = ClientTls::new(ServerVerification::Fingerprint(server.fingerprint()));
        // One client configuration, so the second connection has the first one's ticket.
        let (connector, name) = client.connector("127.0.0.1").unwrap();
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (connector, name) = (connector.clone(), name.clone());
            let connecting = tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                // The tickets come after the handshake: read until the server's byte.
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.unwrap();
                tls.get_ref().1.handshake_kind()
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ours = TlsStream::accept(server.config(), tcp).await.unwrap();
            ours.write_all(b"x").await.unwrap();
            ours.flush().await.unwrap();
            kinds.push(connecting.await.unwrap());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_both_ways() {
        let (mut ours, mut theirs, _dir) = pair().await;
        theirs.shutdown().await.unwrap();
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        ours.shutdown().await.unwrap();
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_peer_that_ends_tcp_without_close_notify_is_an_unexpected_eof() {
        let (mut ours, theirs, _dir) = pair().await;
        // FIN without close_notify: a truncation the reader must not take for a clean end.
        let (mut tcp, _) = theirs.into_inner();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let err = ours.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
