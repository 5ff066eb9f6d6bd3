//! The engine of one connection: a single task reads frames, writes what the session queued,
//! and keeps the session's deadlines and heartbeat. The server's driver and the client's
//! connection both run on it.
//!
//! Reading, writing and timers share one task, so an answer needs no hand-over to a writer
//! task: the frames of one read are handled in order, their answers gather in the
//! [outbox](super::outbox), and they leave in one write once the read buffer holds no further
//! complete frame, the way a bare echo server batches. Frames queued by other tasks (server
//! push, administration) wake the engine through the outbox. While a handler waits (for the
//! user store, for room in the queue), the engine keeps writing and keeps the heartbeat going.
//!
//! A busy session reuses its read and write buffers; an idle one holds none: reads land on the
//! stack first, and the buffers are freed once the session has been quiet for a moment. One
//! timer stands for every deadline, and deadlines move lazily: a frame only records its
//! arrival, and the timer, when it fires early, re-arms itself for the real deadline.

use super::telemetry::Tally;
use super::{CloseReason, SendError, Session};
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::{Frame, FrameCodec, FrameError, Message};
use bytes::{Buf, BytesMut};
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Decoder;

/// The most one read takes from the socket: the size of the stack buffer it reads into.
const READ_CHUNK: usize = 16 * 1024;

/// A time on the engine's clock: milliseconds since the session started, on tokio's clock
/// (so paused-time tests control it). Eight bytes where an `Instant` takes sixteen: every
/// idle session carries a handful, and the timer is millisecond-grained anyway.
type Ms = u64;

/// No such time (no deadline, no blocked write).
const UNSET: Ms = Ms::MAX;

/// A deadline far enough away to mean "none" that the timer can still be armed for it: 30
/// years after the session started.
const NEVER: Ms = 30 * 365 * 24 * 3600 * 1000;

/// The longest a session that closed because its peer stopped reading (a slow consumer, or a
/// login deadline that passed while a handler waited for queue room) spends writing what is
/// left before it lets go of the connection: such a peer is unlikely to read it, and its slot
/// (a pre-login one especially) should not be held for another full write deadline.
const DRAIN_AFTER_STALL: Duration = Duration::from_secs(1);

/// How long a session may be quiet before its buffers are freed: long enough that a busy
/// session keeps reusing them, short enough that idle sessions hold none.
const RELEASE_AFTER: Ms = 250;

/// How long one poll of a session's task may go on handing out frames before it yields its
/// worker thread. A session whose packets keep coming (a publisher whose every packet fans out
/// to thousands of sessions) would otherwise keep the thread for as long as its peer keeps
/// sending, and the sessions its pushes woke on that thread would wait for all of it: tokio
/// cannot move a task off a thread that never returns to the scheduler.
pub(crate) const SLICE: Duration = Duration::from_millis(1);

/// Frames handed out between two looks at the clock: a look costs a tenth of the cheapest
/// packet's handling, and a poll of a pipelining client's 16 packets should read it at most
/// twice.
const SLICE_CHECK_EVERY: u16 = 8;

/// A duration on the engine's clock.
fn ms(d: Duration) -> Ms {
    u64::try_from(d.as_millis()).unwrap_or(NEVER).min(NEVER)
}

/// How an engine behaves; the server's limits or the client's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineOptions {
    /// The largest frame payload accepted (the server raises it at login).
    pub max_frame: usize,
    /// How long queued bytes may wait for a peer that does not read: past it the session
    /// closes as a slow consumer.
    pub write_timeout: Duration,
    /// Close after this long without a frame from the peer (server sessions).
    pub idle_timeout: Option<Duration>,
    /// Close if the session is not authenticated by then (server sessions).
    pub auth_deadline: Option<Instant>,
}

/// The part of [`EngineOptions`] the engine keeps, on its clock.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    write_timeout: Ms,
    /// `UNSET`: none.
    idle_timeout: Ms,
    /// `UNSET`: none.
    auth_deadline: Ms,
}

/// A running heartbeat: KEEP_ALIVE every `interval`; silence for `timeout` loses the session.
#[derive(Debug, Clone, Copy)]
struct Beat {
    interval: Ms,
    timeout: Ms,
    next_send: Ms,
}

/// One connection's I/O and timers; see the [module docs](self).
pub(crate) struct Engine<S> {
    /// The connection, read and written by this task only.
    stream: S,
    /// The session the connection carries.
    session: Session,
    /// Frames the peer's bytes; its limit changes at login.
    codec: FrameCodec,
    /// Received bytes not yet handed out as frames: a partial frame, or the rest of a read.
    read_buf: BytesMut,
    /// Bytes taken from the outbox that the socket has not accepted yet, and the fast path's
    /// answers [staged](Self::stage) behind them.
    write_buf: BytesMut,
    /// Frames staged into `write_buf` since it was last empty: they count toward the
    /// outbound queue's depth.
    staged_frames: u32,
    /// The staged frames not counted in the metrics yet.
    staged_run: Tally,
    /// `read_buf`, `write_buf` or the outbox may hold an allocation: kept for reuse while the
    /// session is busy, freed once it has been quiet for [`RELEASE_AFTER`].
    buffers_held: bool,
    /// Since when the session has been quiet: its last read, or the first write since the
    /// buffers were last freed.
    quiet_since: Ms,
    /// Bytes were written since the last flush (TLS keeps records until flushed).
    flush_owed: bool,
    /// When the socket first refused more of the current write: the write deadline counts
    /// from here.
    write_blocked_since: Ms,
    /// The write, idle and authentication limits.
    deadlines: Deadlines,
    /// When the bytes of the last read arrived.
    read_at: Ms,
    /// When the last whole frame arrived: the idle deadline counts from here.
    last_frame: Ms,
    /// Where the current packet's handling time counts from: the end of the previous
    /// packet's, or the read that brought it. One reading of the cheap clock per packet.
    lap_start: quanta::Instant,
    /// The heartbeat, once the session starts one.
    heartbeat: Option<Beat>,
    /// One timer for every deadline, armed at the earliest.
    timer: Pin<Box<Sleep>>,
    /// What `timer` is armed for.
    armed: Ms,
    /// The idle or authentication deadline passed while a handler ran; those two are acted
    /// on only between frames, so a login in progress is not cut short.
    frame_deadline_due: bool,
    /// Frames handed out in this poll of the task (wrapping), and when the first was.
    slice_frames: u16,
    slice_began: quanta::Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Engine<S> {
    /// An engine for `session` on `stream`.
    pub(crate) fn new(stream: S, session: Session, options: EngineOptions) -> Self {
        let now = session.ms_at(Instant::now());
        let auth_deadline = options.auth_deadline.map_or(UNSET, |at| session.ms_at(at));
        let never = session.started() + Duration::from_millis(NEVER);
        let mut engine = Engine {
            stream,
            session,
            codec: FrameCodec::new(options.max_frame),
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            staged_frames: 0,
            staged_run: Tally::default(),
            buffers_held: false,
            quiet_since: now,
            flush_owed: false,
            write_blocked_since: UNSET,
            deadlines: Deadlines {
                write_timeout: ms(options.write_timeout),
                idle_timeout: options.idle_timeout.map_or(UNSET, ms),
                auth_deadline,
            },
            read_at: now,
            last_frame: now,
            lap_start: quanta::Instant::now(),
            heartbeat: None,
            timer: Box::pin(tokio::time::sleep_until(never)),
            armed: NEVER,
            frame_deadline_due: false,
            slice_frames: 0,
            slice_began: quanta::Instant::now(),
        };
        engine.rearm();
        engine
    }

    /// The time since the previous lap (or since the read that brought the current frame):
    /// how long the packet just handled took. Called once per packet.
    pub(crate) fn lap(&mut self) -> Duration {
        let now = quanta::Instant::now();
        let lap = now.saturating_duration_since(self.lap_start);
        self.lap_start = now;
        lap
    }

    /// Whether the next [`next_frame`](Self::next_frame) has a whole frame at hand, so that
    /// it returns without writing or reading: what was handled so far is not the read's last.
    pub(crate) fn frame_ready(&self) -> bool {
        !self.session.is_closing() && self.codec.has_frame(&self.read_buf)
    }

    /// Where the fast path's answer may go without the outbox's lock: straight behind the
    /// bytes waiting for the socket, when nothing is queued that it must not overtake (the
    /// outbox is empty, so every frame this task queued earlier has been taken), the socket
    /// is not refusing bytes, and the staged frames leave room in the queue's depth. Each
    /// answer through the outbox costs a lock and an unlock, two atomic instructions, as much
    /// as a small handler. `None`: the answer goes through the outbox.
    pub(crate) fn stage(&mut self) -> Option<Stage<'_>> {
        let outbox = &self.session.inner.outbox;
        let open = self.write_blocked_since == UNSET
            && !self.session.inner.log_packets
            && outbox.len() == 0
            && self.staged_frames < outbox.depth();
        open.then_some(Stage {
            buf: &mut self.write_buf,
            frames: &mut self.staged_frames,
            run: &mut self.staged_run,
        })
    }

    /// The frame codec, to change its limit.
    pub(crate) fn codec_mut(&mut self) -> &mut FrameCodec {
        &mut self.codec
    }

    /// The next frame from the peer, writing what is queued while it waits; `None` once the
    /// session is closing (the reason is recorded on the session).
    pub(crate) fn next_frame(&mut self) -> NextFrame<'_, S> {
        NextFrame { engine: self }
    }

    /// Runs `handler` (one packet's handling) to completion while the queued frames keep
    /// leaving and the heartbeat keeps beating. Packets are not read meanwhile: a session's
    /// packets are handled one at a time, in order.
    pub(crate) fn run<F: Future + Unpin>(&mut self, handler: F) -> Running<'_, S, F> {
        Running {
            engine: self,
            handler,
        }
    }

    /// What the engine does while a handler waits: writes, heartbeats, the write deadline.
    fn poll_aside(&mut self, cx: &mut Context<'_>) {
        while !self.session.is_closing() {
            if let Err(reason) = self.poll_write(cx) {
                self.session.close(reason);
                break;
            }
            if self.login_overdue_while_waiting() {
                self.session.close(CloseReason::AuthTimeout);
                break;
            }
            match self.poll_timers(cx, false) {
                None => break,
                Some(Ok(())) => continue,
                Some(Err(reason)) => self.session.close(reason),
            }
        }
    }

    /// The login deadline has passed while the handler waits for room in the queue. A login
    /// in progress (a password being hashed) may otherwise finish past the deadline, but this
    /// one waits on a peer that does not read, and would hold its pre-login slot until the
    /// write deadline.
    fn login_overdue_while_waiting(&self) -> bool {
        let auth = self.deadlines.auth_deadline;
        auth != UNSET
            && !self.session.is_authenticated()
            && self.session.inner.outbox.has_waiting()
            && self.clock() >= auth
    }

    /// Once the session is closing: writes what is still queued (a QUIT, a last answer) and
    /// shuts the connection down, each within the write deadline, or within
    /// [`DRAIN_AFTER_STALL`] when the session closed because its peer stopped reading.
    pub(crate) async fn finish(&mut self) {
        let mut deadline = Duration::from_millis(self.deadlines.write_timeout);
        if matches!(
            self.session.close_reason(),
            Some(CloseReason::SlowConsumer | CloseReason::AuthTimeout)
        ) {
            deadline = deadline.min(DRAIN_AFTER_STALL);
        }
        let drained = tokio::time::timeout(
            deadline,
            poll_fn(|cx| match self.poll_write(cx) {
                Ok(true) => Poll::Ready(true),
                Ok(false) => Poll::Pending,
                Err(_) => Poll::Ready(false),
            }),
        )
        .await;
        if drained == Ok(true) {
            let shutdown = poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx));
            let _ = tokio::time::timeout(deadline, shutdown).await;
        }
    }

    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        loop {
            if self.session.is_closing() {
                return Poll::Ready(None);
            }
            if self.frame_deadline_due {
                self.frame_deadline_due = false;
                if let Some(reason) = self.frame_deadline(self.clock()) {
                    self.session.close(reason);
                    continue;
                }
                self.rearm();
            }
            if !self.read_buf.is_empty() {
                if self.slice_spent() {
                    // What the frames so far answered leaves first, then the others' turn.
                    if let Err(reason) = self.poll_write(cx) {
                        self.session.close(reason);
                        continue;
                    }
                    self.slice_frames = 0;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match self.codec.decode(&mut self.read_buf) {
                    Ok(Some(frame)) => {
                        self.frame_arrived();
                        return Poll::Ready(Some(frame));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.framing_violation(&e);
                        continue;
                    }
                }
            }
            // No whole frame left: the answers to the frames so far leave now, together.
            if let Err(reason) = self.poll_write(cx) {
                self.session.close(reason);
                continue;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) => {
                    if self.read_buf.is_empty() {
                        self.session.close(CloseReason::PeerClosed);
                    } else {
                        self.framing_violation(&FrameError::Truncated(self.read_buf.len()));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    self.session.close(CloseReason::Io(e.to_string()));
                    continue;
                }
                Poll::Pending => {}
            }
            match self.poll_timers(cx, true) {
                None => {}
                Some(Ok(())) => continue,
                Some(Err(reason)) => {
                    self.session.close(reason);
                    continue;
                }
            }
            if self.buffers_held {
                // The timer frees the buffers if the session stays quiet.
                let release_at = self.quiet_since.saturating_add(RELEASE_AFTER);
                if release_at < self.armed {
                    self.arm(release_at);
                    continue;
                }
            }
            self.slice_frames = 0;
            return Poll::Pending;
        }
    }

    /// Counts a frame about to be handed out in this poll; `true` once this poll has handed
    /// out frames for [`SLICE`]. The clock is read every [`SLICE_CHECK_EVERY`] frames only,
    /// from the first such frame on: a poll with fewer frames, the common case, reads none.
    fn slice_spent(&mut self) -> bool {
        let n = self.slice_frames.wrapping_add(1);
        self.slice_frames = n;
        if n % SLICE_CHECK_EVERY != 0 {
            return false;
        }
        if n == SLICE_CHECK_EVERY {
            self.slice_began = quanta::Instant::now();
            return false;
        }
        self.slice_began.elapsed() >= SLICE
    }

    fn frame_arrived(&mut self) {
        // Once per read, not per frame: the frames of one read arrived together.
        if self.last_frame != self.read_at {
            self.last_frame = self.read_at;
            self.session.touch_ms(self.read_at);
        }
    }

    fn framing_violation(&self, e: &FrameError) {
        let session = &self.session;
        if matches!(e, FrameError::BadMagic(_))
            && crate::wire::notice::looks_like_tls(&self.read_buf)
        {
            // The peer speaks TLS: a configuration mismatch, not an attack. A server session
            // answers and logs it once per source; a client reports it to its caller.
            tracing::debug!(session = session.id(), peer = %session.peer(), "peer speaks TLS");
            session.peer_speaks_tls();
        } else {
            tracing::warn!(session = session.id(), peer = %session.peer(), error = %e, "framing violation");
        }
        session.close(CloseReason::ProtocolError(e.to_string()));
    }

    /// Received bytes not handed out as frames: after a framing violation, what broke the
    /// framing (the client looks at them to tell a TLS server's answer).
    pub(crate) fn unread(&self) -> &[u8] {
        &self.read_buf
    }

    /// Reads what the socket has: `Ok(true)` if bytes arrived, `Ok(false)` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let got = if self.read_buf.capacity() - self.read_buf.len() >= READ_CHUNK {
            // A large frame in progress (the codec reserved room for all of it): read in place.
            let stream = Pin::new(&mut self.stream);
            ready!(tokio_util::io::poll_read_buf(
                stream,
                cx,
                &mut self.read_buf
            ))? > 0
        } else {
            let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            self.read_buf.extend_from_slice(buf.filled());
            !buf.filled().is_empty()
        };
        if got {
            self.read_at = self.clock();
            self.buffers_held = true;
            self.quiet_since = self.read_at;
            self.lap_start = quanta::Instant::now();
            // The answers to what arrived are this task's own: they need no wake-up.
            self.session.inner.outbox.disarm();
        }
        Poll::Ready(Ok(got))
    }

    /// Writes what is queued as far as the socket takes it. `Ok(true)`: everything is written
    /// and the outbox is empty (its next frame wakes this task); `Ok(false)`: the socket is
    /// full, and its readiness wakes this task.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let io = |e: std::io::Error| CloseReason::Io(e.to_string());
        if let Some(run) = self.staged_run.take() {
            if let Some(host) = self.session.host() {
                host.frames_sent(run);
            }
        }
        loop {
            while !self.write_buf.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf) {
                    Poll::Ready(Ok(0)) => {
                        return Err(CloseReason::Io(
                            "the connection accepts no more bytes".into(),
                        ))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.write_buf.advance(n);
                        self.flush_owed = true;
                        if !self.buffers_held {
                            self.buffers_held = true;
                            self.quiet_since = self.clock();
                        }
                    }
                    Poll::Ready(Err(e)) => return Err(io(e)),
                    Poll::Pending => {
                        self.write_blocked();
                        return Ok(false);
                    }
                }
            }
            self.staged_frames = 0;
            if self.flush_owed {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flush_owed = false,
                    Poll::Ready(Err(e)) => return Err(io(e)),
                    Poll::Pending => {
                        self.write_blocked();
                        return Ok(false);
                    }
                }
            }
            self.write_blocked_since = UNSET;
            // Swapped for the next batch: this buffer becomes the outbox's.
            let outbox = &self.session.inner.outbox;
            let Some(run) = outbox.take(&mut self.write_buf, cx.waker()) else {
                return Ok(true);
            };
            if let Some(host) = self.session.host() {
                host.frames_sent(run);
            }
        }
    }

    fn write_blocked(&mut self) {
        if self.write_blocked_since == UNSET {
            let now = self.clock();
            self.write_blocked_since = now;
            let at = now.saturating_add(self.deadlines.write_timeout);
            if at < self.armed {
                self.arm(at);
            }
        }
    }

    /// Starts a heartbeat the session asked for, and acts on the deadlines once the timer
    /// fires. `None`: nothing happened (the timer will wake this task); `Some(Ok)`: something
    /// was done (a heartbeat queued), look again; `Some(Err)`: close for this reason.
    /// `between_frames`: the idle and authentication deadlines may close the session now.
    fn poll_timers(
        &mut self,
        cx: &mut Context<'_>,
        between_frames: bool,
    ) -> Option<Result<(), CloseReason>> {
        if let Some((interval, timeout)) = self.session.take_heartbeat_request() {
            let interval = ms(interval);
            self.heartbeat = Some(Beat {
                interval,
                timeout: ms(timeout),
                next_send: self.clock().saturating_add(interval),
            });
            self.rearm();
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let now = self.clock();
        let since = self.write_blocked_since;
        if since != UNSET && now >= since.saturating_add(self.deadlines.write_timeout) {
            return Some(Err(CloseReason::SlowConsumer));
        }
        if let Some(beat) = &mut self.heartbeat {
            if now
                >= self
                    .session
                    .heartbeat_seen_ms()
                    .saturating_add(beat.timeout)
            {
                let session = &self.session;
                tracing::warn!(
                    session = session.id(),
                    peer = %session.peer(),
                    user = session.user().map(|u| u.name).unwrap_or_default(),
                    silent_for = ?Duration::from_millis(beat.timeout),
                    "connection lost: no keep-alive from peer"
                );
                return Some(Err(CloseReason::KeepAliveLost));
            }
            if now >= beat.next_send {
                // A full queue already carries traffic the peer must read; skipping one beat
                // is harmless, and the write deadline deals with a peer that reads nothing.
                let _ = self
                    .session
                    .try_send(KeepAliveMessage::KeepAlive.to_frame());
                beat.next_send = now.saturating_add(beat.interval);
            }
        }
        if let Some(reason) = self.frame_deadline(now) {
            if between_frames {
                return Some(Err(reason));
            }
            self.frame_deadline_due = true;
        }
        if self.buffers_held && now >= self.quiet_since.saturating_add(RELEASE_AFTER) {
            self.release_buffers();
        }
        self.rearm();
        Some(Ok(()))
    }

    /// Frees the buffers that hold nothing: the session has gone quiet.
    fn release_buffers(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        if self.write_buf.is_empty() {
            self.write_buf = BytesMut::new();
        }
        self.session.inner.outbox.release();
        // What still holds bytes (a partial frame, a blocked write) is freed by the next
        // release after it empties: the activity that empties it marks the buffers held.
        self.buffers_held = false;
    }

    /// The authentication or idle deadline that has passed at `now`, if any.
    fn frame_deadline(&self, now: Ms) -> Option<CloseReason> {
        let auth = self.deadlines.auth_deadline;
        if auth != UNSET && now >= auth && !self.session.is_authenticated() {
            return Some(CloseReason::AuthTimeout);
        }
        let idle = self.deadlines.idle_timeout;
        if idle != UNSET && now >= self.last_frame.saturating_add(idle) {
            return Some(CloseReason::Idle);
        }
        None
    }

    /// The earliest deadline that has not been acted on.
    fn next_deadline(&self) -> Ms {
        let mut at = NEVER;
        if self.write_blocked_since != UNSET {
            at = at.min(
                self.write_blocked_since
                    .saturating_add(self.deadlines.write_timeout),
            );
        }
        if let Some(beat) = &self.heartbeat {
            let lost_at = self
                .session
                .heartbeat_seen_ms()
                .saturating_add(beat.timeout);
            at = at.min(beat.next_send).min(lost_at);
        }
        if self.buffers_held {
            at = at.min(self.quiet_since.saturating_add(RELEASE_AFTER));
        }
        if !self.frame_deadline_due {
            let auth = self.deadlines.auth_deadline;
            if auth != UNSET && !self.session.is_authenticated() {
                at = at.min(auth);
            }
            let idle = self.deadlines.idle_timeout;
            if idle != UNSET {
                at = at.min(self.last_frame.saturating_add(idle));
            }
        }
        at
    }

    /// Now, on the engine's clock.
    fn clock(&self) -> Ms {
        self.session.ms_at(Instant::now())
    }

    fn rearm(&mut self) {
        let at = self.next_deadline();
        self.arm(at);
    }

    fn arm(&mut self, at: Ms) {
        self.armed = at;
        let deadline = self.session.started() + Duration::from_millis(at);
        self.timer.as_mut().reset(deadline);
    }
}

/// Room for one answer behind the bytes waiting for the socket: see [`Engine::stage`].
#[derive(Debug)]
pub(crate) struct Stage<'e> {
    buf: &'e mut BytesMut,
    frames: &'e mut u32,
    run: &'e mut Tally,
}

impl Stage<'_> {
    /// Writes the frame of `protocol_id` that `encode` writes (returning its wire length), as
    /// [`Session::push_reserved`] would queue it.
    pub(crate) fn push(
        self,
        session: &Session,
        protocol_id: u16,
        encode: &dyn Fn(&mut BytesMut) -> Result<usize, crate::wire::FrameError>,
    ) -> Result<(), SendError> {
        if session.is_closing() {
            return Err(SendError::Closed);
        }
        let start = self.buf.len();
        match encode(self.buf) {
            Ok(len) => {
                *self.frames += 1;
                if let (Some(run), Some(host)) = (self.run.add(protocol_id, len), session.host()) {
                    host.frames_sent(run);
                }
                Ok(())
            }
            Err(e) => {
                // Whatever the encoder wrote of the frame must not reach the wire.
                self.buf.truncate(start);
                session.close(CloseReason::ProtocolError(e.to_string()));
                Err(SendError::Closed)
            }
        }
    }
}

/// The future of [`Engine::next_frame`]: a pointer, so that a session's task stays small.
pub(crate) struct NextFrame<'a, S> {
    engine: &'a mut Engine<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for NextFrame<'_, S> {
    type Output = Option<Frame>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.engine.poll_next_frame(cx)
    }
}

/// The future of [`Engine::run`].
pub(crate) struct Running<'a, S, F> {
    engine: &'a mut Engine<S>,
    handler: F,
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: Future + Unpin> Future for Running<'_, S, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.handler).poll(cx) {
            return Poll::Ready(out);
        }
        this.engine.poll_aside(cx);
        // The task yields here: the next frame starts a new slice.
        this.engine.slice_frames = 0;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn session() -> Session {
        Session::new(1, "127.0.0.1:1".parse().unwrap(), 16, false)
    }

    fn options() -> EngineOptions {
        EngineOptions {
            max_frame: 1024,
            write_timeout: Duration::from_secs(5),
            idle_timeout: None,
            auth_deadline: None,
        }
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| f.to_bytes().unwrap().to_vec())
            .collect()
    }

    /// A stream that counts the writes reaching it.
    struct Counting {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(_)) = written {
                self.writes.fetch_add(1, SeqCst);
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_answers_to_one_read_leave_in_one_write() {
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(AtomicUsize::new(0));
        let session = session();
        let stream = Counting {
            inner: ours,
            writes: writes.clone(),
        };
        let mut engine = Engine::new(stream, session.clone(), options());
        let requests: Vec<Frame> = (0..3u8).map(|i| Frame::new(10, vec![i])).collect();
        peer.write_all(&wire(&requests)).await.unwrap();
        for i in 0..3u8 {
            let frame = engine.next_frame().await.unwrap();
            assert_eq!(frame.body.as_ref(), &[i]);
            session.try_send(Frame::new(10, vec![i + 100])).unwrap();
            assert_eq!(writes.load(SeqCst), 0, "nothing leaves while frames remain");
        }
        // Looking for a fourth frame, the engine writes what the three produced.
        let waited = tokio::time::timeout(Duration::from_millis(50), engine.next_frame()).await;
        assert!(waited.is_err());
        assert_eq!(writes.load(SeqCst), 1);
        let answers: Vec<Frame> = (0..3u8).map(|i| Frame::new(10, vec![i + 100])).collect();
        let mut got = vec![0u8; wire(&answers).len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, wire(&answers));
    }

    /// A peer that never stops sending: every read gets a buffer full of whole frames at once,
    /// and it never makes the task wait (nor spends tokio's budget, as a socket does).
    struct Endless {
        frames: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            while buf.remaining() > 0 {
                let at = self.at;
                let n = buf.remaining().min(self.frames.len() - at);
                buf.put_slice(&self.frames[at..at + n]);
                self.at = (at + n) % self.frames.len();
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Endless {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// On one thread, as the publisher's worker in a fan-out: a session whose packets never
    /// stop coming and cost time each must let the thread's other tasks run.
    #[tokio::test(flavor = "current_thread")]
    async fn a_session_whose_peer_never_pauses_lets_the_other_tasks_of_its_thread_run() {
        let stream = Endless {
            frames: wire(&[Frame::new(10, vec![1u8; 20])]),
            at: 0,
        };
        let mut engine = Engine::new(stream, session(), options());
        let other_ran = Arc::new(AtomicUsize::new(0));
        let other = tokio::spawn({
            let other_ran = other_ran.clone();
            async move {
                other_ran.fetch_add(1, SeqCst);
            }
        });
        // 400 packets of 100 us each: 40 ms of handling, 40 slices.
        let mut handled = 0;
        while handled < 400 && other_ran.load(SeqCst) == 0 {
            engine.next_frame().await.unwrap();
            std::thread::sleep(Duration::from_micros(100));
            handled += 1;
        }
        assert_eq!(
            other_ran.load(SeqCst),
            1,
            "the other task never ran in {handled} packets"
        );
        assert!(handled < 400);
        other.await.unwrap();
    }

    fn staged(engine: &mut Engine<DuplexStream>, session: &Session, byte: u8) -> bool {
        let Some(stage) = engine.stage() else {
            return false;
        };
        let frame = Frame::new(10, vec![byte]);
        let encode = |dst: &mut BytesMut| {
            frame.encode_into(dst)?;
            Ok(frame.wire_len())
        };
        stage.push(session, 10, &encode).unwrap();
        true
    }

    fn write_now(engine: &mut Engine<DuplexStream>) {
        let waker = std::task::Waker::noop();
        let written = engine.poll_write(&mut Context::from_waker(waker));
        assert_eq!(written, Ok(true), "the peer has room for everything");
    }

    #[tokio::test]
    async fn a_staged_answer_never_overtakes_a_queued_frame_and_counts_toward_the_depth() {
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let session = session();
        let mut engine = Engine::new(ours, session.clone(), options());
        // Queued by another task: staging waits until the engine has taken it.
        session.try_send(Frame::new(10, vec![1])).unwrap();
        assert!(!staged(&mut engine, &session, 0));
        write_now(&mut engine);
        assert!(staged(&mut engine, &session, 2));
        session.try_send(Frame::new(10, vec![3])).unwrap();
        write_now(&mut engine);
        let expected = wire(&[1u8, 2, 3].map(|b| Frame::new(10, vec![b])));
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        // Unwritten staged frames fill the queue's depth (16) like queued ones.
        for i in 0..16 {
            assert!(staged(&mut engine, &session, i), "frame {i}");
        }
        assert!(!staged(&mut engine, &session, 16), "the depth is reached");
        write_now(&mut engine);
        assert!(staged(&mut engine, &session, 17), "room again once written");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_session_frees_its_buffers() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let session = session();
        let mut engine = Engine::new(ours, session.clone(), options());
        peer.write_all(&wire(&[Frame::new(10, vec![1])]))
            .await
            .unwrap();
        engine.next_frame().await.unwrap();
        session.try_send(Frame::new(10, vec![2])).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), engine.next_frame()).await;
        assert!(waited.is_err());
        assert!(
            engine.buffers_held,
            "a session that just spoke keeps its buffers"
        );
        let waited = tokio::time::timeout(Duration::from_millis(300), engine.next_frame()).await;
        assert!(waited.is_err());
        assert!(!engine.buffers_held);
        assert_eq!(engine.read_buf.capacity(), 0);
        assert_eq!(engine.write_buf.capacity(), 0);
        let mut answer = vec![0u8; 9];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, wire(&[Frame::new(10, vec![2])]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_a_slow_consumer() {
        // 64 bytes of room, and the peer never reads.
        let (ours, _peer) = tokio::io::duplex(64);
        let session = session();
        let options = EngineOptions {
            write_timeout: Duration::from_secs(2),
            ..options()
        };
        let mut engine = Engine::new(ours, session.clone(), options);
        session.try_send(Frame::new(10, vec![0; 200])).unwrap();
        let started = Instant::now();
        assert!(engine.next_frame().await.is_none());
        assert_eq!(session.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(started.elapsed().as_secs(), 2);
        // What is left is not drained for another write deadline: the peer does not read.
        engine.finish().await;
        assert!(
            started.elapsed() <= Duration::from_secs(2) + DRAIN_AFTER_STALL,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pre_login_peer_that_stops_reading_is_closed_at_the_login_deadline() {
        // 64 bytes of room, a queue of two frames, and a peer that sends but never reads.
        let (ours, _peer) = tokio::io::duplex(64);
        let session = Session::new(1, "127.0.0.1:1".parse().unwrap(), 2, false);
        let options = EngineOptions {
            write_timeout: Duration::from_secs(30),
            auth_deadline: Some(session.started() + Duration::from_secs(10)),
            ..options()
        };
        let mut engine = Engine::new(ours, session.clone(), options);
        let started = Instant::now();
        // A handler answering as a login protocol would: it soon waits for queue room.
        let answering = {
            let session = session.clone();
            async move {
                loop {
                    if session.send(Frame::new(10, vec![0; 100])).await.is_err() {
                        return;
                    }
                }
            }
        };
        engine.run(Box::pin(answering)).await;
        assert_eq!(session.close_reason(), Some(CloseReason::AuthTimeout));
        assert_eq!(
            started.elapsed().as_secs(),
            10,
            "closed at the login deadline"
        );
        engine.finish().await;
        // The slot is let go about the login deadline, not after two write deadlines.
        assert!(
            started.elapsed() <= Duration::from_secs(10) + DRAIN_AFTER_STALL,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_beats_and_a_silent_peer_is_lost() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let session = session();
        let mut engine = Engine::new(ours, session.clone(), options());
        session.start_heartbeat(Duration::from_secs(10), Duration::from_secs(30));
        let started = Instant::now();
        let running = tokio::spawn(async move { engine.next_frame().await.is_none() });
        let beat = wire(&[KeepAliveMessage::KeepAlive.to_frame()]);
        let mut got = vec![0u8; beat.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, beat);
        assert_eq!(started.elapsed().as_secs(), 10);
        assert!(running.await.unwrap(), "the engine ends");
        assert_eq!(session.close_reason(), Some(CloseReason::KeepAliveLost));
        assert_eq!(started.elapsed().as_secs(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_counts_from_the_last_frame() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let session = session();
        let options = EngineOptions {
            idle_timeout: Some(Duration::from_secs(10)),
            ..options()
        };
        let mut engine = Engine::new(ours, session.clone(), options);
        let started = Instant::now();
        let running = tokio::spawn(async move {
            let mut frames = 0;
            while engine.next_frame().await.is_some() {
                frames += 1;
            }
            frames
        });
        let ping = wire(&[Frame::new(10, vec![1])]);
        peer.write_all(&ping).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        peer.write_all(&ping).await.unwrap();
        assert_eq!(running.await.unwrap(), 2);
        assert_eq!(session.close_reason(), Some(CloseReason::Idle));
        assert_eq!(started.elapsed().as_secs(), 18);
    }
}
