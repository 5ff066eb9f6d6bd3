//! A server on 127.0.0.1:0 with a real SQLite user store, and a raw-bytes client to poke it.

use bytes::BytesMut;
use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::server::{RefusalReason, Server, ServerConfig, ServerHandle, SessionEvent};
use openserver::session::CloseReason;
use openserver::wire::{Frame, FrameCodec, Secret};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

/// Users every test server has: (name, password, roles). Six fillers come first so that
/// alice gets id 7, the id the recorded session expects.
pub const ALICE: (&str, &str) = ("alice", "secret");
pub const BOB: (&str, &str) = ("bob", "hunter2");

/// PBKDF2 iterations of the test stores' SCRAM credentials: the fewest clients accept.
pub const SCRAM_TEST_ITERATIONS: u32 = openserver::auth::scram::MIN_ITERATIONS;

/// Argon2 parameters small enough for fast tests; production defaults are tested in the
/// auth module.
pub fn fast_hasher() -> PasswordHasher {
    PasswordHasher::new(HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
    })
    .expect("valid test params")
}

pub async fn test_store() -> Arc<SqliteUserStore> {
    // SCRAM at the RFC's minimum iterations: the production default would cost seconds per
    // password set in an unoptimised build.
    let store = SqliteUserStore::open_in_memory(fast_hasher())
        .and_then(|s| s.with_scram(SCRAM_TEST_ITERATIONS))
        .expect("in-memory store");
    for i in 1..=6 {
        store
            .add_user(&format!("filler{i}"), &Secret::new("x"), &[])
            .await
            .unwrap();
    }
    store
        .add_user(ALICE.0, &Secret::new(ALICE.1), &["admin".to_string()])
        .await
        .unwrap();
    store
        .add_user(BOB.0, &Secret::new(BOB.1), &[])
        .await
        .unwrap();
    Arc::new(store)
}

/// A running server and how to reach it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// A config listening on 127.0.0.1:0.
pub fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    }
}

/// Starts a server with the user store, Hello, and whatever `extra` adds.
pub async fn start_with(
    config: ServerConfig,
    extra: impl FnOnce(openserver::server::ServerBuilder) -> openserver::server::ServerBuilder,
) -> TestServer {
    let builder = Server::builder(config)
        .user_store(test_store().await)
        .hello();
    let server = extra(builder).bind().await.expect("bind");
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.run());
    TestServer { addr, handle, task }
}

pub async fn start(config: ServerConfig) -> TestServer {
    start_with(config, |b| b).await
}

/// A client that speaks raw frames, to test what existing clients send byte for byte.
pub struct Raw {
    pub stream: TcpStream,
    codec: FrameCodec,
    buf: BytesMut,
}

/// How long a test waits for an answer before failing. Paused-time tests auto-advance to it
/// when nothing else is due, so it must outlast every deadline they test (at most 61 s).
pub const WAIT: Duration = Duration::from_secs(120);

/// The bound for a connection the server must cut on sight (a framing violation, a cap, the
/// last allowed denial): generous for a loaded 2-core machine, and far under the 10 s login
/// deadline that would otherwise close it anyway.
pub const AT_ONCE: Duration = Duration::from_secs(3);

/// How a connection ended, as the server reported it in its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It became a session, which closed for this reason.
    Closed(CloseReason),
    /// It was refused before it became a session.
    Refused(RefusalReason),
}

/// Waits (up to [`WAIT`]) for the event that ends the connection from `peer`, skipping every
/// other event. Subscribe with `handle.events()` before the connection is made.
pub async fn ending(events: &mut broadcast::Receiver<SessionEvent>, peer: SocketAddr) -> Ending {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Closed {
                    peer: p, reason, ..
                }) if p == peer => return Ending::Closed(reason),
                Ok(SessionEvent::Refused {
                    peer: p, reason, ..
                }) if p == peer => return Ending::Refused(reason),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lost {n} events"),
                Err(broadcast::error::RecvError::Closed) => panic!("the server went away"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the connection's closing event in time")
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            codec: FrameCodec::new(64 * 1024 * 1024),
            buf: BytesMut::new(),
        }
    }

    /// Connects from a chosen local address, such as 127.0.0.2 (all of 127/8 is loopback on
    /// Linux), so a test can be a second source.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind local address");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            codec: FrameCodec::new(64 * 1024 * 1024),
            buf: BytesMut::new(),
        }
    }

    /// Wraps an accepted connection, for a test that plays the server.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            codec: FrameCodec::new(64 * 1024 * 1024),
            buf: BytesMut::new(),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, frame: Frame) {
        let bytes = frame.to_bytes().unwrap();
        self.send_bytes(&bytes).await;
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).expect("server framing") {
                return Some(frame);
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for the server");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame as raw wire bytes.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        let frame = self.recv().await.expect("server closed the connection");
        frame.to_bytes().unwrap().to_vec()
    }

    /// Reads exactly `n` bytes of answers.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for the server")
                .expect("read");
            assert!(
                read > 0,
                "server closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.split_to(n).to_vec()
    }

    /// Asserts the server closes the connection within `within` (the bound the feature under
    /// test promises: [`AT_ONCE`] for a connection cut on sight, a deadline plus a margin for
    /// one closed by a timer), skipping frames it sends first (a QUIT, an answer); returns
    /// those frames. A bound well under the 10 s login deadline is what makes a protection
    /// that fails open fail the test: otherwise the deadline would close the connection too.
    pub async fn expect_closed(&mut self, within: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let drain = async {
            while let Some(frame) = self.recv().await {
                frames.push(frame);
                assert!(frames.len() < 10_000, "server keeps sending");
            }
        };
        tokio::time::timeout(within, drain)
            .await
            .unwrap_or_else(|_| {
                panic!("the server did not close the connection within {within:?}")
            });
        frames
    }

    /// The server's view of this connection's address (its peer), to find its events.
    pub fn peer_id(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }
}

/// A raw session logged in as `user` over DatabaseAuth; panics unless the login is accepted.
pub async fn db_login(server: &TestServer, (user, password): (&str, &str)) -> Raw {
    use openserver::wire::dbauth::DatabaseAuthMessage;
    use openserver::wire::Message;
    let mut raw = Raw::connect(server.addr).await;
    let login = DatabaseAuthMessage::Authenticate {
        user: user.into(),
        password: Secret::new(password),
    };
    raw.send(login.to_frame()).await;
    let answer = raw.recv().await.expect("login answer");
    assert!(matches!(
        DatabaseAuthMessage::decode(&answer.body),
        Ok(DatabaseAuthMessage::Authenticated { .. })
    ));
    raw
}
