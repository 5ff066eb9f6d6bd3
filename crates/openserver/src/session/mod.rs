//! The session: one connection's state, shared by the server and the client.
//!
//! - [`Session`]: a cheap, clonable handle to one connection: its id, peer, user, outbound
//!   queue and close signal. Protocol handlers and server push use it.
//! - `outbox`: the bounded queue of encoded frames waiting for the socket.
//! - `engine`: the one task per connection that reads frames, writes the outbox in batches,
//!   and keeps the deadlines (write, idle, authentication) and the heartbeat.
//! - [`Login`] (`login.rs`): the login powers (authenticate, record denied logins), which only
//!   login protocols get.
//! - `telemetry`: the `SessionHost` trait through which a server session reaches its server
//!   (penalties, metrics) without this layer knowing the server.
//!
//! The server side of a connection (auth gate, dispatch, logins) is the server's
//! (`server/driver.rs`); nothing here imports from `server`.

pub(crate) mod engine;
mod login;
mod outbox;
pub(crate) mod telemetry;

use crate::auth::User;
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::{DecodeError, Frame, Message, TextMode};
pub use login::Login;
use outbox::{Outbox, PushError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Identifies a session for the lifetime of the process.
pub type SessionId = u64;

/// Why a session ended. The first reason recorded wins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent QUIT.
    Quit,
    /// The peer closed the TCP connection.
    PeerClosed,
    /// This side closed the session on purpose (client `quit`, the application).
    Local,
    /// An administrator closed the session ([`Session::kick`], the Admin protocol).
    Kicked,
    /// No frame arrived within the idle timeout.
    Idle,
    /// The peer did not authenticate within the deadline.
    AuthTimeout,
    /// The peer reached the limit of denied logins on one connection
    /// (`security.max_auth_failures`).
    AuthFailures,
    /// Keep-alive was running and the peer fell silent for longer than its timeout.
    KeepAliveLost,
    /// The peer did not read what was sent to it within the write deadline, or its queue filled.
    SlowConsumer,
    /// The byte stream broke the framing rules (bad magic, bad length, oversized frame).
    ProtocolError(String),
    /// Reading or writing the socket failed.
    Io(String),
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every [`label`](Self::label), in declaration order: what metrics pre-register and what
    /// alert filters accept.
    pub const LABELS: [&'static str; 12] = [
        "quit",
        "peer_closed",
        "local",
        "kicked",
        "idle",
        "auth_timeout",
        "auth_failures",
        "keep_alive_lost",
        "slow_consumer",
        "protocol_error",
        "io_error",
        "shutdown",
    ];

    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Local => "local",
            CloseReason::Kicked => "kicked",
            CloseReason::Idle => "idle",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::AuthFailures => "auth_failures",
            CloseReason::KeepAliveLost => "keep_alive_lost",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolError(_) => "protocol_error",
            CloseReason::Io(_) => "io_error",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Whether the connection was lost (heartbeats stopped, the socket failed) rather than
    /// ended by either side. A plain TCP close is not a loss: the Java client ends sessions
    /// that way, without QUIT.
    pub fn is_lost(&self) -> bool {
        matches!(self, CloseReason::KeepAliveLost | CloseReason::Io(_))
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ProtocolError(e) => write!(f, "protocol error: {e}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
            other => f.write_str(other.label()),
        }
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed or closing.
    #[error("session closed")]
    Closed,
    /// The outbound queue is full (only from non-waiting sends).
    #[error("outbound queue full")]
    Full,
}

/// A handle to one session. Clones share the session.
#[derive(Clone)]
pub struct Session {
    /// Shared so handlers, the registry and the writer see one state.
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique within the process; appears in every log line of the session.
    id: SessionId,
    /// The remote address, for logs and per-address limits.
    peer: SocketAddr,
    /// When the connection was accepted.
    since: SystemTime,
    /// `since` on the monotonic clock: the base of `last_frame_ms` and `heartbeat_seen_ms`.
    started: Instant,
    /// Milliseconds from `started` to the last frame from the peer: one relaxed store per
    /// read, so the read loop pays almost nothing for it.
    last_frame_ms: AtomicU64,
    /// Milliseconds from `started` to when the peer was last heard from by the heartbeat.
    heartbeat_seen_ms: AtomicU64,
    /// A heartbeat the engine should start: interval and timeout in milliseconds, packed
    /// (high and low half); 0 when none is asked for. An atomic, as the engine checks it on
    /// every turn.
    heartbeat_request: AtomicU64,
    /// Denied logins so far, counted by [`Login::record_auth_failure`].
    auth_failures: AtomicU32,
    /// Set once authentication succeeds (`cold.user` is set): read on every frame, so it is
    /// not behind the lock.
    authenticated: AtomicBool,
    /// Set when the session starts closing.
    closing: AtomicBool,
    /// Log every outbound frame in hex.
    log_packets: bool,
    /// The peer's text encoding as far as the session knows it: a [`TextMode`] as a byte
    /// (see `text_mode_byte`).
    text: AtomicU8,
    /// The server's penalties, pre-login caps and metrics; set by the server's driver, absent
    /// on the client side.
    server: OnceLock<Arc<dyn telemetry::SessionHost>>,
    /// The bounded queue of encoded frames that the engine writes. Its notify also wakes
    /// those waiting in [`Session::closed`].
    outbox: Outbox,
    /// What changes a few times in a session's life, under one lock: every idle session
    /// pays for each field of this struct.
    cold: Mutex<Cold>,
}

/// The rarely written part of a session.
#[derive(Default)]
struct Cold {
    /// Ids of the protocols whose handler runs on this session, ascending.
    protocols: Vec<u16>,
    /// Set once authentication succeeds; gates application protocols.
    user: Option<User>,
    /// The first close reason recorded.
    reason: Option<CloseReason>,
    /// The name given with the last denied login, until the driver reports it.
    denied_login: Option<String>,
}

impl Session {
    /// Creates a session whose outbound queue holds at most `queue_depth` frames; with
    /// `log_packets`, every frame queued is logged in hex.
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        queue_depth: usize,
        log_packets: bool,
    ) -> Session {
        Session {
            inner: Arc::new(Inner {
                id,
                peer,
                since: SystemTime::now(),
                started: Instant::now(),
                last_frame_ms: AtomicU64::new(0),
                heartbeat_seen_ms: AtomicU64::new(0),
                auth_failures: AtomicU32::new(0),
                authenticated: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                heartbeat_request: AtomicU64::new(0),
                log_packets,
                text: AtomicU8::new(text_mode_byte(TextMode::Detect)),
                server: OnceLock::new(),
                outbox: Outbox::new(queue_depth),
                cold: Mutex::new(Cold::default()),
            }),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The id by reference, for sets of sessions searched by id.
    pub(crate) fn id_ref(&self) -> &SessionId {
        &self.inner.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    /// When the connection was accepted.
    pub fn since(&self) -> SystemTime {
        self.inner.since
    }

    /// When the connection was accepted, on the monotonic clock: the authentication deadline
    /// counts from here.
    pub(crate) fn started(&self) -> Instant {
        self.inner.started
    }

    /// When the last frame arrived from the peer, to the millisecond; the accept time until
    /// one has. Kept by the server's read loop (a client session always answers `since`).
    pub fn last_activity(&self) -> SystemTime {
        let ms = self.inner.last_frame_ms.load(Ordering::Relaxed);
        self.inner.since + Duration::from_millis(ms)
    }

    /// Records that a frame arrived `ms` milliseconds after the session started.
    pub(crate) fn touch_ms(&self, ms: u64) {
        self.inner.last_frame_ms.store(ms, Ordering::Relaxed);
    }

    /// Milliseconds from the session's start to `at`.
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        // u64 milliseconds outlast any session; the cast cannot truncate in practice.
        at.saturating_duration_since(self.inner.started).as_millis() as u64
    }

    /// Asks the engine to start a heartbeat: KEEP_ALIVE every `interval`, and the session
    /// lost after `timeout` without [`heartbeat_seen`](Self::heartbeat_seen). A second call
    /// replaces the timing.
    pub(crate) fn start_heartbeat(&self, interval: Duration, timeout: Duration) {
        self.heartbeat_seen();
        // Whole milliseconds, at least one, at most u32::MAX (49 days): both halves nonzero.
        let ms = |d: Duration| {
            u64::try_from(d.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, u64::from(u32::MAX))
        };
        let packed = (ms(interval) << 32) | ms(timeout);
        self.inner
            .heartbeat_request
            .store(packed, Ordering::Release);
        self.inner.outbox.wake_engine();
    }

    /// For the engine: the heartbeat asked for since it last looked, as (interval, timeout).
    pub(crate) fn take_heartbeat_request(&self) -> Option<(Duration, Duration)> {
        if self.inner.heartbeat_request.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let packed = self.inner.heartbeat_request.swap(0, Ordering::Acquire);
        (packed != 0).then(|| {
            let interval = Duration::from_millis(packed >> 32);
            let timeout = Duration::from_millis(packed & u64::from(u32::MAX));
            (interval, timeout)
        })
    }

    /// Records that the peer was heard from, for the heartbeat's loss detection.
    pub(crate) fn heartbeat_seen(&self) {
        let ms = self.ms_at(Instant::now());
        self.inner.heartbeat_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// When the peer was last heard from, for the heartbeat: milliseconds after the start.
    pub(crate) fn heartbeat_seen_ms(&self) -> u64 {
        self.inner.heartbeat_seen_ms.load(Ordering::Relaxed)
    }

    /// The protocols in use: the ids of those the server has started for this session (on
    /// their first packet, or at login), ascending. Capabilities is not listed.
    pub fn protocols(&self) -> Vec<u16> {
        lock(&self.inner.cold).protocols.clone()
    }

    /// Records that the protocol `id` now runs on this session.
    pub(crate) fn record_protocol(&self, id: u16) {
        let protocols = &mut lock(&self.inner.cold).protocols;
        if let Err(at) = protocols.binary_search(&id) {
            protocols.insert(at, id);
        }
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<User> {
        lock(&self.inner.cold).user.clone()
    }

    /// Whether the session has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.inner.authenticated.load(Ordering::Acquire)
    }

    /// Denied logins recorded on this session.
    pub fn auth_failures(&self) -> u32 {
        self.inner.auth_failures.load(Ordering::Relaxed)
    }

    /// On a server session, the peer sent a TLS record where a frame should start (a TLS
    /// client on a plaintext listener): logs it once per source and queues the fixed answer
    /// that tells the client this server speaks plaintext. Nothing on a client session.
    pub(crate) fn peer_speaks_tls(&self) {
        if let Some(host) = self.host() {
            host.peer_speaks_tls(self.inner.peer);
            let _ = self.try_send(crate::wire::notice::plaintext_only_frame());
        }
    }

    /// Whether the peer's source is serving a failed-login penalty. A login protocol that sees
    /// `true` must deny the attempt, after the same work as a real check so that neither the
    /// answer nor its timing depends on the credentials, and record the denial with
    /// [`Login::record_auth_failure`]. Ask before the check starts.
    pub fn source_penalized(&self) -> bool {
        self.host()
            .is_some_and(|host| host.source_penalized(self.inner.peer.ip()))
    }

    /// Queues a frame, waiting while the queue is full. Waiting is the back-pressure that keeps
    /// a handler from outrunning its peer; the write deadline bounds it.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_with(frame.protocol_id, |dst| {
            frame.encode_into(dst)?;
            Ok(frame.wire_len())
        })
        .await
    }

    /// How the session reads the peer's strings now: [`TextMode::Detect`] until a string that
    /// is not UTF-8 shows a peer that writes one byte per char (the DNOS Java and Objective-C
    /// clients), [`TextMode::Latin1`] from then on; [`TextMode::StrictUtf8`] on a server
    /// configured with `strict_utf8`. Answers are written in [`TextMode::encoding`].
    pub fn text_mode(&self) -> TextMode {
        match self.inner.text.load(Ordering::Relaxed) {
            0 => TextMode::StrictUtf8,
            2 => TextMode::Latin1,
            _ => TextMode::Detect,
        }
    }

    /// Records what the session now knows of its peer's text encoding.
    pub fn set_text_mode(&self, mode: TextMode) {
        let byte = text_mode_byte(mode);
        // A plain load first: the mode is learnt once, and a swap on every message (a locked
        // instruction) would cost more than the check.
        if self.inner.text.load(Ordering::Relaxed) == byte {
            return;
        }
        if self.inner.text.swap(byte, Ordering::Relaxed) != byte && mode == TextMode::Latin1 {
            tracing::debug!(
                session = self.id(),
                "peer writes one byte per char (Latin-1); answering in kind"
            );
        }
    }

    /// Decodes a message whose strings are in the peer's text encoding, and learns that
    /// encoding from it (see [`text_mode`](Self::text_mode)).
    pub fn decode<M: Message>(&self, body: &[u8]) -> Result<M, DecodeError> {
        let mut mode = self.text_mode();
        let decoded = M::decode_text(body, &mut mode);
        self.set_text_mode(mode);
        decoded
    }

    /// Queues a typed message, waiting while the queue is full. The message is encoded
    /// straight into the queue, its strings in the peer's text encoding.
    pub async fn send_message<M: Message + Sync>(&self, message: &M) -> Result<(), SendError> {
        let text = self.text_mode().encoding();
        self.send_body(M::PROTOCOL_ID, |body| message.encode_text(body, text))
            .await
    }

    /// Queues a frame of `protocol_id` whose body `body` writes straight into the queue, so
    /// that an answer needs no buffer of its own; waits while the queue is full. `body` runs
    /// again after such a wait, and must write the same bytes each time.
    pub async fn send_body(
        &self,
        protocol_id: u16,
        body: impl Fn(&mut bytes::BytesMut) + Sync,
    ) -> Result<(), SendError> {
        self.send_with(protocol_id, |dst| {
            Frame::encode_with(protocol_id, dst, &body)
        })
        .await
    }

    /// Queues a frame of `protocol_id` whose body `body` writes straight into the queue,
    /// without waiting: `Full` if the queue is full (nothing is queued then).
    pub fn try_send_body(
        &self,
        protocol_id: u16,
        body: impl Fn(&mut bytes::BytesMut),
    ) -> Result<(), SendError> {
        self.push_encoded(false, protocol_id, &|dst| {
            Frame::encode_with(protocol_id, dst, &body)
        })
    }

    /// Whether the outbound queue has room for a frame now.
    pub(crate) fn has_room(&self) -> bool {
        self.inner.outbox.has_room()
    }

    /// Queues the frame `encode` writes even if the queue has filled since
    /// [`has_room`](Self::has_room) said yes: the fast path's reply, whose room was held.
    /// Each packet gets at most one, so the queue overshoots its depth by at most one frame.
    pub(crate) fn push_reserved(
        &self,
        protocol_id: u16,
        encode: &dyn Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError>,
    ) -> Result<(), SendError> {
        self.push_with(false, true, protocol_id, encode)
    }

    /// Queues a frame without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        self.push_encoded(false, frame.protocol_id, &|dst| {
            frame.encode_into(dst)?;
            Ok(frame.wire_len())
        })
    }

    /// Queues the frame `encode` writes, waiting for room while the queue is full or until the
    /// session closes.
    async fn send_with(
        &self,
        protocol_id: u16,
        encode: impl Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError> + Sync,
    ) -> Result<(), SendError> {
        match self.push_encoded(false, protocol_id, &encode) {
            // Boxed: the wait is rare, and every handler's future would carry it inline.
            Err(SendError::Full) => Box::pin(self.wait_and_push(protocol_id, &encode)).await,
            sent => sent,
        }
    }

    /// The slow path of [`send_with`](Self::send_with): waits for room, then queues.
    async fn wait_and_push(
        &self,
        protocol_id: u16,
        encode: &(dyn Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError> + Sync),
    ) -> Result<(), SendError> {
        let outbox = &self.inner.outbox;
        loop {
            // Registered before the retry, so that a take in between still wakes us.
            let room = outbox.room().notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            match self.push_encoded(true, protocol_id, encode) {
                Err(SendError::Full) => {}
                sent => return sent,
            }
            // The push registered this sender; unregister however the wait ends.
            let _waiting = Unregister(outbox);
            if self.is_closing() {
                return Err(SendError::Closed);
            }
            room.await;
        }
    }

    /// One attempt at queueing; see [`Outbox::push_checked`].
    fn push_encoded(
        &self,
        register: bool,
        protocol_id: u16,
        encode: &dyn Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError>,
    ) -> Result<(), SendError> {
        self.push_with(register, false, protocol_id, encode)
    }

    /// One attempt at queueing; `reserved` skips the depth check (see
    /// [`push_reserved`](Self::push_reserved)).
    fn push_with(
        &self,
        register: bool,
        reserved: bool,
        protocol_id: u16,
        encode: &dyn Fn(&mut bytes::BytesMut) -> Result<usize, crate::wire::FrameError>,
    ) -> Result<(), SendError> {
        if self.is_closing() {
            return Err(SendError::Closed);
        }
        let log_packets = self.inner.log_packets;
        let pushed = self
            .inner
            .outbox
            .push_checked(register, !reserved, protocol_id, |dst| {
                let start = dst.len();
                let len = encode(dst)?;
                if log_packets {
                    tracing::info!(
                        direction = "out",
                        protocol_id,
                        bytes = %hex::encode(&dst[start..]),
                        "packet"
                    );
                }
                Ok(len)
            });
        match pushed {
            Ok(ended) => {
                // The queue counts its last run itself, when the engine takes it.
                if let (Some(run), Some(host)) = (ended, self.host()) {
                    host.frames_sent(run);
                }
                Ok(())
            }
            Err(PushError::Full) => Err(SendError::Full),
            Err(PushError::Encode(e)) => {
                self.close(CloseReason::ProtocolError(e.to_string()));
                Err(SendError::Closed)
            }
        }
    }

    /// Queues a frame for server push: a full queue means the peer is not keeping up, so the
    /// session is closed as a slow consumer rather than buffering without bound.
    pub fn push(&self, frame: Frame) -> Result<(), SendError> {
        let sent = self.try_send(frame);
        if sent == Err(SendError::Full) {
            self.close(CloseReason::SlowConsumer);
        }
        sent
    }

    /// Starts closing the session. Frames already queued are still written (bounded by the
    /// write deadline), then the connection closes. Later reasons are ignored.
    pub fn close(&self, reason: CloseReason) {
        {
            let slot = &mut lock(&self.inner.cold).reason;
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        if !self.inner.closing.swap(true, Ordering::AcqRel) {
            // The engine, waiting senders and those in `closed` all look again.
            self.inner.outbox.wake_all();
        }
    }

    /// Announces the end to the peer with QUIT, then closes as [`CloseReason::Shutdown`].
    pub fn shut_down(&self) {
        self.quit_and_close(CloseReason::Shutdown);
    }

    /// An administrator's kick: QUIT to the peer, then close as [`CloseReason::Kicked`].
    pub fn kick(&self) {
        self.quit_and_close(CloseReason::Kicked);
    }

    fn quit_and_close(&self, reason: CloseReason) {
        // Without waiting: a full queue means the peer is not reading, and it loses the QUIT.
        let _ = self.try_send(KeepAliveMessage::Quit.to_frame());
        self.close(reason);
    }

    /// Whether the session is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Resolves once the session starts closing.
    pub async fn closed(&self) {
        loop {
            let notified = self.inner.outbox.room().notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a close in between is not missed.
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.inner.cold).reason.clone()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("user", &self.user().map(|u| u.name))
            .field("closing", &self.is_closing())
            .finish()
    }
}

/// A [`TextMode`] as the byte [`Session::text_mode`] stores.
fn text_mode_byte(mode: TextMode) -> u8 {
    match mode {
        TextMode::StrictUtf8 => 0,
        TextMode::Detect => 1,
        TextMode::Latin1 => 2,
    }
}

/// Takes a waiting sender off the outbox's count when its wait ends, however it ends.
struct Unregister<'a>(&'a Outbox);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.unregister();
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain field updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(depth: usize) -> (Session, ()) {
        (
            Session::new(1, "127.0.0.1:1".parse().unwrap(), depth, false),
            (),
        )
    }

    /// The frames queued on `s`, decoded.
    fn queued(s: &Session) -> Vec<Frame> {
        use tokio_util::codec::Decoder;
        let mut bytes = s.inner.outbox.peek();
        let mut codec = crate::wire::FrameCodec::default();
        std::iter::from_fn(|| codec.decode(&mut bytes).unwrap()).collect()
    }

    #[test]
    fn first_close_reason_wins() {
        let (s, _rx) = session(1);
        s.close(CloseReason::Idle);
        s.close(CloseReason::Shutdown);
        assert_eq!(s.close_reason(), Some(CloseReason::Idle));
        assert_eq!(s.try_send(Frame::new(1, vec![1u8])), Err(SendError::Closed));
    }

    #[test]
    fn kick_sends_quit_then_closes() {
        let (s, _) = session(4);
        s.kick();
        assert_eq!(s.close_reason(), Some(CloseReason::Kicked));
        assert_eq!(CloseReason::Kicked.label(), "kicked");
        assert!(!CloseReason::Kicked.is_lost());
        assert_eq!(queued(&s), vec![KeepAliveMessage::Quit.to_frame()]);
    }

    #[test]
    fn protocols_are_kept_sorted_once_each() {
        let (s, _rx) = session(1);
        for id in [10, 3, 10, 1] {
            s.record_protocol(id);
        }
        assert_eq!(s.protocols(), vec![1, 3, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn last_activity_follows_touches() {
        let (s, _rx) = session(1);
        assert_eq!(s.last_activity(), s.since());
        tokio::time::advance(Duration::from_millis(1500)).await;
        s.touch_ms(s.ms_at(Instant::now()));
        assert_eq!(s.last_activity(), s.since() + Duration::from_millis(1500));
    }

    #[test]
    fn push_to_full_queue_closes_as_slow_consumer() {
        let (s, _rx) = session(1);
        s.push(Frame::new(1, vec![1u8])).unwrap();
        assert_eq!(s.push(Frame::new(1, vec![1u8])), Err(SendError::Full));
        assert_eq!(s.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_full_send_waits_for_room_and_a_close_ends_the_wait() {
        let (s, _) = session(1);
        s.send(Frame::new(1, vec![1u8])).await.unwrap();
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.send_message(&KeepAliveMessage::KeepAlive).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The engine takes the queue: the waiting sender gets its room.
        let waker = futures::task::noop_waker();
        assert!(s
            .inner
            .outbox
            .take(&mut bytes::BytesMut::new(), &waker)
            .is_some());
        waiting.await.unwrap().unwrap();
        assert_eq!(queued(&s), vec![KeepAliveMessage::KeepAlive.to_frame()]);
        let blocked = tokio::spawn({
            let s = s.clone();
            async move { s.send(Frame::new(1, vec![2u8])).await }
        });
        tokio::task::yield_now().await;
        s.close(CloseReason::Local);
        assert_eq!(blocked.await.unwrap(), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn closed_resolves_for_waiters_and_after_the_fact() {
        let bound = Duration::from_secs(5);
        let (s, _) = session(1);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.closed().await }
        });
        // An open session's `closed` does not resolve, however often it is polled.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiter.is_finished(),
            "closed() resolved on an open session"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.closed())
                .await
                .is_err(),
            "closed() resolved on an open session"
        );
        s.close(CloseReason::Quit);
        tokio::time::timeout(bound, waiter)
            .await
            .expect("a waiter wakes when the session closes")
            .unwrap();
        tokio::time::timeout(bound, s.closed())
            .await
            .expect("closed() resolves at once after the close");
    }
}
