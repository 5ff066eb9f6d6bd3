//! Where the client's reader hands over packets nobody requested: subscriptions.
//!
//! The reader must never wait for an application: one protocol's slow consumer would stop
//! every other protocol's answers and the heartbeat. So every hand-over here is immediate. A
//! [`Subscription`] is a bounded queue that, when full, drops its **oldest** packet and counts
//! it; the next [`recv`](Subscription::recv) then reports [`Incoming::Lagged`] with how many
//! were lost before it hands over the packets that remain (the policy of tokio's broadcast
//! channel).

use super::Incoming;
use crate::session::{lock, CloseReason};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Receives, without waiting, what the reader routes to one protocol id.
pub(crate) trait Sink: Send + Sync {
    /// Takes one packet (or error) from the server. Must not block. `false`: the receiving
    /// side is gone, and the reader forgets this sink.
    fn deliver(&self, incoming: Incoming) -> bool;

    /// The connection this sink was receiving from has ended (a reconnect may follow).
    fn disconnected(&self, reason: &CloseReason) {
        let _ = reason;
    }
}

/// The packets of one protocol that no request was waiting for (server pushes), and the
/// server's errors about it, from [`Client::subscribe`](super::Client::subscribe).
///
/// Holds at most `queue_depth` ([`ClientConfig::queue_depth`](super::ClientConfig)) items.
/// When the application falls behind, the oldest are dropped and [`recv`](Self::recv) reports
/// [`Incoming::Lagged`] before the next item: a slow subscriber loses its own packets, never
/// the connection's other traffic.
pub struct Subscription {
    queue: Arc<Queue>,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    /// Wakes the receiver on a new item or the end.
    ready: Notify,
    /// Cleared when the [`Subscription`] is dropped, so the reader stops delivering.
    receiving: AtomicBool,
    capacity: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Incoming>,
    /// Dropped since the receiver last heard of it.
    lagged: u64,
    /// The client is closed for good: no more items.
    ended: bool,
}

impl Subscription {
    /// A queue of at most `capacity` items (at least one), and the sink that fills it.
    pub(crate) fn new(capacity: usize) -> (Subscription, Arc<QueueSink>) {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            receiving: AtomicBool::new(true),
            capacity: capacity.max(1),
        });
        (
            Subscription {
                queue: queue.clone(),
            },
            Arc::new(QueueSink(queue)),
        )
    }

    /// The next item: [`Incoming::Lagged`] first if packets were dropped since the last call;
    /// `None` once the client is closed for good and everything queued has been received.
    pub async fn recv(&mut self) -> Option<Incoming> {
        let queue = self.queue.clone();
        loop {
            let ready = queue.ready.notified();
            let mut ready = std::pin::pin!(ready);
            // Registered before the check, so an item queued in between wakes us.
            ready.as_mut().enable();
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if lock(&queue.state).ended {
                return None;
            }
            ready.await;
        }
    }

    /// The next item if one is queued now, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        let mut state = lock(&self.queue.state);
        if state.lagged > 0 {
            return Some(Incoming::Lagged(std::mem::take(&mut state.lagged)));
        }
        state.items.pop_front()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.receiving.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.queue.state);
        f.debug_struct("Subscription")
            .field("queued", &state.items.len())
            .field("lagged", &state.lagged)
            .finish()
    }
}

/// The reader's end of a [`Subscription`]; dropping it (the client closed for good) ends the
/// subscription.
pub(crate) struct QueueSink(Arc<Queue>);

impl Sink for QueueSink {
    fn deliver(&self, incoming: Incoming) -> bool {
        let queue = &self.0;
        if !queue.receiving.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut state = lock(&queue.state);
            if state.items.len() >= queue.capacity {
                state.items.pop_front();
                state.lagged = state.lagged.saturating_add(1);
            }
            state.items.push_back(incoming);
        }
        queue.ready.notify_one();
        true
    }
}

impl Drop for QueueSink {
    fn drop(&mut self) {
        lock(&self.0.state).ended = true;
        self.0.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(n: u8) -> Incoming {
        Incoming::Packet(Bytes::from(vec![n]))
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_reports_the_lag_first() {
        let (mut sub, sink) = Subscription::new(2);
        for n in 0..5 {
            assert!(sink.deliver(packet(n)));
        }
        assert_eq!(sub.recv().await, Some(Incoming::Lagged(3)));
        assert_eq!(sub.recv().await, Some(packet(3)));
        assert_eq!(sub.recv().await, Some(packet(4)));
        assert_eq!(sub.try_recv(), None);
        drop(sink);
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_dropped_one_refuses_delivery() {
        let (mut sub, sink) = Subscription::new(4);
        let waiter = tokio::spawn(async move {
            let first = sub.recv().await;
            (first, sub)
        });
        tokio::task::yield_now().await;
        assert!(sink.deliver(packet(9)));
        let (first, sub) = waiter.await.unwrap();
        assert_eq!(first, Some(packet(9)));
        drop(sub);
        assert!(!sink.deliver(packet(1)));
    }
}
