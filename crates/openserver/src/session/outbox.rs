//! The outbound queue of one session: frames waiting for the socket, already encoded.
//!
//! Senders (protocol handlers, server push, the heartbeat) append encoded frames to one buffer
//! under a short lock; the session's engine takes the whole buffer in one swap and hands it to
//! the socket in one write. Encoding at send time keeps the queue to one buffer instead of a
//! slot per frame, and an empty queue holds no memory at all.
//!
//! The queue is bounded in frames (`limits.outbound_queue`). A full queue makes
//! [`Session::send`](super::Session::send) wait for the engine to take it (back-pressure) and
//! non-waiting sends fail with `Full`.

use super::lock;
use super::telemetry::Tally;
use crate::wire::FrameError;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::Waker;
use tokio::sync::Notify;

/// The first allocation of an empty queue: room for a burst of small answers, so that a batch
/// does not regrow its buffer frame by frame.
const INITIAL_CAPACITY: usize = 512;

/// Frames waiting for the socket, and who waits on them.
pub(crate) struct Outbox {
    /// Locked for one append or one take, never across an await.
    state: Mutex<State>,
    /// `State::frames`, written under the lock and read without it: the fast path asks
    /// "is there room?" for every packet, and a lock costs more than the answer is worth
    /// (a stale reading only lets the fast path's one reply overshoot, as it may anyway).
    queued: AtomicU32,
    /// The most frames the queue may hold.
    depth: u32,
    /// Senders waiting for room: notified when the engine takes the queue, and on close.
    room: Notify,
}

struct State {
    /// Encoded frames, in order.
    buf: BytesMut,
    /// How many frames `buf` holds.
    frames: u32,
    /// The frames of the last run of one protocol in `buf`, counted when the engine takes
    /// them (earlier runs were handed back to their senders to count).
    run: Tally,
    /// Senders registered in `room`, so that a take notifies only when someone waits.
    waiting: u32,
    /// The engine's waker, while it waits for something to write.
    engine: Option<Waker>,
}

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The queue holds `depth` frames already.
    Full,
    /// The frame could not be encoded (a body too long for the length field).
    Encode(FrameError),
}

impl Outbox {
    /// An empty queue of at most `depth` frames (at least one).
    pub(crate) fn new(depth: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                buf: BytesMut::new(),
                frames: 0,
                run: Tally::default(),
                engine: None,
                waiting: 0,
            }),
            queued: AtomicU32::new(0),
            depth: u32::try_from(depth).unwrap_or(u32::MAX).max(1),
            room: Notify::new(),
        }
    }

    /// A bounded [`push_checked`](Self::push_checked), for tests.
    #[cfg(test)]
    pub(crate) fn push(
        &self,
        register: bool,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, FrameError>,
    ) -> Result<Option<Tally>, PushError> {
        self.push_checked(register, true, 7, encode)
    }

    /// Appends one frame of `protocol_id` that `encode` writes (returning its wire length)
    /// and wakes the engine if it waits. With `register` set, a full queue also counts the
    /// caller among the senders waiting for room (see [`room`](Self::room) and
    /// [`unregister`](Self::unregister)). The depth is checked only if `bounded`: a fast-path
    /// reply whose room [`has_room`](Self::has_room) saw goes in even if another sender took
    /// it since. A frame of another protocol than the queue's last ends that protocol's run,
    /// which is returned for the caller to count.
    pub(crate) fn push_checked(
        &self,
        register: bool,
        bounded: bool,
        protocol_id: u16,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, FrameError>,
    ) -> Result<Option<Tally>, PushError> {
        let mut state = lock(&self.state);
        if bounded && state.frames >= self.depth {
            state.waiting += u32::from(register);
            return Err(PushError::Full);
        }
        if state.buf.capacity() == 0 {
            state.buf.reserve(INITIAL_CAPACITY);
        }
        let start = state.buf.len();
        let len = match encode(&mut state.buf) {
            Ok(len) => len,
            Err(e) => {
                // Whatever the encoder wrote of the frame must not reach the wire.
                state.buf.truncate(start);
                return Err(PushError::Encode(e));
            }
        };
        state.frames += 1;
        self.queued.store(state.frames, Ordering::Relaxed);
        let ended = state.run.add(protocol_id, len);
        let engine = state.engine.take();
        drop(state);
        if let Some(engine) = engine {
            engine.wake();
        }
        Ok(ended)
    }

    /// Where senders wait for room; create the `Notified` and enable it before the `push`
    /// that registers, so a take in between is not missed.
    pub(crate) fn room(&self) -> &Notify {
        &self.room
    }

    /// Whether a sender waits for room now.
    pub(crate) fn has_waiting(&self) -> bool {
        lock(&self.state).waiting > 0
    }

    /// Removes a sender that `push` registered and that stopped waiting.
    pub(crate) fn unregister(&self) {
        let mut state = lock(&self.state);
        state.waiting = state.waiting.saturating_sub(1);
    }

    /// For the engine: swaps every queued frame into `dst` (which must be empty; its
    /// allocation becomes the queue's, for the next frames) and returns the last run of
    /// frames, to be counted; or, with nothing queued, keeps `waker` to be woken by the next
    /// push and returns `None`.
    pub(crate) fn take(&self, dst: &mut BytesMut, waker: &Waker) -> Option<Tally> {
        let mut state = lock(&self.state);
        if state.buf.is_empty() {
            if !state.engine.as_ref().is_some_and(|w| w.will_wake(waker)) {
                state.engine = Some(waker.clone());
            }
            return None;
        }
        debug_assert!(dst.is_empty());
        dst.clear();
        std::mem::swap(&mut state.buf, dst);
        state.frames = 0;
        self.queued.store(0, Ordering::Relaxed);
        let run = std::mem::take(&mut state.run);
        let notify = state.waiting > 0;
        drop(state);
        if notify {
            self.room.notify_waiters();
        }
        Some(run)
    }

    /// Frees the queue's buffer if it holds nothing (the session has gone quiet).
    pub(crate) fn release(&self) {
        let mut state = lock(&self.state);
        if state.buf.is_empty() {
            state.buf = BytesMut::new();
        }
    }

    /// For the engine, once it runs again: forgets its waker, so that its own handlers'
    /// answers do not wake it again for nothing.
    pub(crate) fn disarm(&self) {
        lock(&self.state).engine = None;
    }

    /// Wakes the engine and every waiting sender (the session is closing, or the engine has
    /// something new to look at).
    pub(crate) fn wake_all(&self) {
        let engine = lock(&self.state).engine.take();
        if let Some(engine) = engine {
            engine.wake();
        }
        self.room.notify_waiters();
    }

    /// Wakes the engine only.
    pub(crate) fn wake_engine(&self) {
        let engine = lock(&self.state).engine.take();
        if let Some(engine) = engine {
            engine.wake();
        }
    }

    /// Whether a bounded push would find room now.
    pub(crate) fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < self.depth
    }

    /// The most frames the queue holds.
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    /// Frames queued now.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed) as usize
    }

    /// The queued bytes, for tests.
    #[cfg(test)]
    pub(crate) fn peek(&self) -> BytesMut {
        lock(&self.state).buf.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn push(outbox: &Outbox, body: &'static [u8]) -> Result<Option<Tally>, PushError> {
        outbox.push(false, |dst| {
            let frame = Frame::new(7, body);
            frame.encode_into(dst)?;
            Ok(frame.wire_len())
        })
    }

    #[test]
    fn frames_queue_in_order_up_to_the_depth() {
        let outbox = Outbox::new(2);
        assert_eq!(push(&outbox, b"a").unwrap(), None);
        push(&outbox, b"b").unwrap();
        assert!(matches!(push(&outbox, b"c"), Err(PushError::Full)));
        assert_eq!(outbox.len(), 2);
        let mut expected = BytesMut::new();
        Frame::new(7, &b"a"[..]).encode_into(&mut expected).unwrap();
        Frame::new(7, &b"b"[..]).encode_into(&mut expected).unwrap();
        assert_eq!(outbox.peek(), expected);
    }

    #[test]
    fn a_take_empties_the_queue_and_an_empty_take_arms_the_waker() {
        let outbox = Outbox::new(1);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut dst = BytesMut::new();
        assert!(outbox.take(&mut dst, &waker).is_none());
        push(&outbox, b"a").unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the push woke the engine"
        );
        push(&outbox, b"b").unwrap_err();
        let run = outbox.take(&mut dst, &waker).expect("a frame was queued");
        assert_eq!((run.protocol_id, run.frames, run.bytes), (7, 1, 9));
        assert_eq!(dst.len(), 9);
        assert_eq!(outbox.len(), 0);
        // Room again; the waker was used up by the first push.
        push(&outbox, b"b").unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_disarmed_engine_is_not_woken() {
        let outbox = Outbox::new(4);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(outbox.take(&mut BytesMut::new(), &waker).is_none());
        outbox.disarm();
        push(&outbox, b"a").unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn runs_of_one_protocol_are_counted_once_each() {
        let outbox = Outbox::new(8);
        let frame = |id: u16| {
            move |dst: &mut BytesMut| {
                let frame = Frame::new(id, &b"x"[..]);
                frame.encode_into(dst)?;
                Ok(frame.wire_len())
            }
        };
        assert_eq!(
            outbox.push_checked(false, true, 10, frame(10)).unwrap(),
            None
        );
        assert_eq!(
            outbox.push_checked(false, true, 10, frame(10)).unwrap(),
            None
        );
        let ended = outbox.push_checked(false, true, 1, frame(1)).unwrap();
        assert_eq!(
            ended.map(|r| (r.protocol_id, r.frames, r.bytes)),
            Some((10, 2, 18))
        );
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let last = outbox.take(&mut BytesMut::new(), &waker).unwrap();
        assert_eq!((last.protocol_id, last.frames), (1, 1));
        assert_eq!(outbox.len(), 0);
        assert!(outbox.has_room());
    }

    #[test]
    fn an_encoding_error_queues_nothing() {
        let outbox = Outbox::new(4);
        let err = outbox.push(false, |dst| {
            dst.extend_from_slice(b"partial");
            Err(FrameError::Truncated(7))
        });
        assert!(matches!(err, Err(PushError::Encode(_))));
        assert_eq!(outbox.len(), 0);
        assert!(outbox.peek().is_empty());
    }
}
