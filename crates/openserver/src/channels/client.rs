//! The client side of Channels: subscriptions that survive reconnects.
//!
//! [`Client::channels`] starts a small task that reads the protocol's pushes and hands each to
//! its subscription, and adds a [reconnect hook](Client::on_reconnect) that resubscribes
//! every channel from the last position it saw, so the server recovers what was missed. As a
//! hook it runs on the new connection before the application can use it: a publish made
//! after a reconnect never overtakes the resubscription.
//! Every subscription checks that offsets follow each other: whatever cannot be delivered (a
//! recovery the server refused, pushes lost on the way, items the application did not read in
//! time) becomes an explicit [`Gap`] in the stream, at the place it happened.

use super::broker::{ClientInfo, Position};
use super::messages::{
    ChannelPush, ChannelsApi, Command, HistoryReply, PublicationMessage, Recovery, Reply,
    Subscribed,
};
use crate::app::{PushError, Remote};
use crate::client::{Client, ClientError};
use crate::session::lock;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

impl Client {
    /// Channels on this connection: subscribe, publish, presence, history. Call it once per
    /// client and clone the result: like [`Client::api`], a second call takes the protocol's
    /// pushes over from the first.
    pub fn channels(&self) -> ChannelsClient {
        let inner = Arc::new(Inner {
            remote: self.api::<ChannelsApi>(),
            slots: Mutex::new(HashMap::new()),
            depth: self.config().queue_depth.max(1),
        });
        tokio::spawn(read_pushes(inner.clone()));
        let weak = Arc::downgrade(&inner);
        self.on_reconnect(move |_client| {
            let inner = weak.upgrade();
            async move {
                if let Some(inner) = inner {
                    inner.resubscribe_all().await;
                }
                Ok(())
            }
        });
        ChannelsClient { inner }
    }
}

/// Channels on a client connection. Cheap to clone; clones share the subscriptions.
#[derive(Clone)]
pub struct ChannelsClient {
    inner: Arc<Inner>,
}

struct Inner {
    remote: Remote<ChannelsApi>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    depth: usize,
}

/// One subscription's state, shared by the push reader, the resubscriber and its stream.
struct Slot {
    state: Mutex<SlotState>,
    ready: Notify,
}

#[derive(Default)]
struct SlotState {
    /// The last position received (or reported as reached by the server): what a
    /// resubscribe recovers from, since unread items stay queued across a reconnect.
    position: Option<Position>,
    /// The last publication the application took from the queue.
    read: Option<Position>,
    /// A subscribe is under way: pushes wait in `held` until its answer is applied.
    starting: bool,
    held: Vec<ChannelPush>,
    /// What the application has not read yet.
    queue: VecDeque<ChannelItem>,
    /// Items dropped since the queue filled; reported as one [`Gap::Lagged`] once the
    /// application has read what came before.
    dropped: u64,
    /// The subscription is over (ended by the server, or the client closed).
    closed: bool,
}

/// What a [`ChannelSubscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelItem {
    /// A publication, in offset order.
    Publication(PublicationMessage),
    /// A session joined the channel.
    Join(ClientInfo),
    /// A session left the channel.
    Leave(ClientInfo),
    /// Publications were missed, and are not in the stream.
    Gap(Gap),
    /// The server ended the subscription, with its reason; nothing follows.
    Ended(String),
}

/// Publications a subscription could not deliver, reported where they were missed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gap {
    /// After a reconnect, the server could not recover what was published since `last_seen`
    /// (`reason` says why); the stream goes on from `resumed_at`.
    Unrecoverable {
        /// Why.
        reason: Recovery,
        /// The last position seen before the reconnect.
        last_seen: Position,
        /// Where the stream goes on.
        resumed_at: Position,
    },
    /// A publication arrived whose offset does not follow the last one: those between were
    /// lost on the way (pushes dropped because the client fell behind).
    Skipped {
        /// The last position seen.
        last_seen: Position,
        /// The position that arrived.
        next: Position,
    },
    /// This many items were dropped because the application did not read the subscription
    /// in time (it holds the client's `queue_depth`).
    Lagged {
        /// How many.
        missed: u64,
    },
}

impl SlotState {
    /// Queues an item for the application, or counts it as dropped.
    fn enqueue(&mut self, item: ChannelItem, depth: usize) {
        if self.dropped > 0 || self.queue.len() >= depth {
            self.dropped += 1;
        } else {
            self.queue.push_back(item);
        }
    }

    /// With nothing unread, the application has read up to `position`: keep that as its
    /// read position before queueing more.
    fn note_caught_up(&mut self) {
        if self.queue.is_empty() && self.dropped == 0 {
            self.read = self.position.clone();
        }
    }

    /// Hands a push on, checking that offsets follow each other.
    fn deliver(&mut self, push: ChannelPush, depth: usize) {
        self.note_caught_up();
        match push {
            ChannelPush::Publication(p) => {
                if let Some(last) = &self.position {
                    if last.epoch == p.epoch && p.offset <= last.offset {
                        return; // seen already (a recovery overlapping live pushes)
                    }
                    if last.epoch != p.epoch || p.offset != last.offset + 1 {
                        let gap = Gap::Skipped {
                            last_seen: last.clone(),
                            next: p.position(),
                        };
                        self.enqueue(ChannelItem::Gap(gap), depth);
                    }
                }
                self.position = Some(p.position());
                self.enqueue(ChannelItem::Publication(p), depth);
            }
            ChannelPush::Join { client, .. } => self.enqueue(ChannelItem::Join(client), depth),
            ChannelPush::Leave { client, .. } => self.enqueue(ChannelItem::Leave(client), depth),
            ChannelPush::Ended { reason, .. } => {
                self.enqueue(ChannelItem::Ended(reason), depth);
                self.closed = true;
            }
        }
    }

    /// Applies the answer to a subscribe made from `since`, then what was held meanwhile.
    fn apply(&mut self, since: Option<Position>, answer: Subscribed, channel: &str, depth: usize) {
        self.note_caught_up();
        match (answer.recovery, since) {
            (Some(Recovery::Recovered), _) | (None, _) => {}
            (Some(reason), Some(last_seen)) => {
                let gap = Gap::Unrecoverable {
                    reason,
                    last_seen,
                    resumed_at: answer.position.clone(),
                };
                self.enqueue(ChannelItem::Gap(gap), depth);
                self.position = None;
            }
            (Some(_), None) => {}
        }
        if answer.recovery != Some(Recovery::Recovered) {
            // Nothing before the answer's publications is owed: they start the stream.
            self.position = None;
        }
        for p in answer.publications {
            if p.channel == channel {
                self.deliver(ChannelPush::Publication(p), depth);
            }
        }
        let reached = answer.position;
        let behind = match &self.position {
            None => true,
            Some(p) => p.epoch != reached.epoch || p.offset < reached.offset,
        };
        if behind {
            self.position = Some(reached);
        }
        self.starting = false;
        for push in std::mem::take(&mut self.held) {
            self.deliver(push, depth);
        }
    }
}

/// One channel's stream of [`ChannelItem`]s. Dropping it unsubscribes (in the background).
pub struct ChannelSubscription {
    channel: String,
    slot: Arc<Slot>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChannelSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSubscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl ChannelSubscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The position the application has read up to: that of the last publication
    /// [`next`](Self::next) returned or, with nothing left unread, the last the server reported.
    /// Publications received but not read yet are not counted, so waiting until this reaches
    /// a position means having read everything up to it.
    pub fn position(&self) -> Option<Position> {
        let state = lock(&self.slot.state);
        if state.queue.is_empty() && state.dropped == 0 {
            state.position.clone()
        } else {
            state.read.clone()
        }
    }

    /// The next item; `None` once the subscription is over (after [`ChannelItem::Ended`], or
    /// when the client is closed for good). Survives reconnects.
    pub async fn next(&mut self) -> Option<ChannelItem> {
        loop {
            let ready = self.slot.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut state = lock(&self.slot.state);
                if let Some(item) = state.queue.pop_front() {
                    match &item {
                        ChannelItem::Publication(p) => state.read = Some(p.position()),
                        ChannelItem::Gap(Gap::Unrecoverable { resumed_at, .. }) => {
                            state.read = Some(resumed_at.clone())
                        }
                        _ => {}
                    }
                    return Some(item);
                }
                if state.dropped > 0 {
                    let missed = std::mem::take(&mut state.dropped);
                    return Some(ChannelItem::Gap(Gap::Lagged { missed }));
                }
                if state.closed {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// The next publication's data decoded as `T` (MessagePack, as
    /// [`ChannelsClient::publish_value`] writes it), skipping joins and leaves. Gaps and the
    /// end still come through as `Err`, so that none goes unseen.
    pub async fn next_value<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Option<Result<(Position, T), ChannelItem>> {
        loop {
            match self.next().await? {
                ChannelItem::Publication(p) => match rmp_serde::from_slice(&p.data) {
                    Ok(value) => return Some(Ok((p.position(), value))),
                    Err(_) => return Some(Err(ChannelItem::Publication(p))),
                },
                ChannelItem::Join(_) | ChannelItem::Leave(_) => {}
                other => return Some(Err(other)),
            }
        }
    }
}

impl Drop for ChannelSubscription {
    fn drop(&mut self) {
        let mut slots = lock(&self.inner.slots);
        if slots
            .get(&self.channel)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            slots.remove(&self.channel);
            drop(slots);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let remote = self.inner.remote.clone();
                let channel = std::mem::take(&mut self.channel);
                runtime.spawn(async move {
                    let _ = remote.request(&Command::Unsubscribe { channel }).await;
                });
            }
        }
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("channels answered {reply:?}"))
}

impl ChannelsClient {
    /// Subscribes to `channel`. Publications come in offset order; after a reconnect the
    /// subscription is renewed from its last position and what was missed is recovered, or a
    /// [`Gap`] says it could not be. One subscription per channel at a time.
    pub async fn subscribe(&self, channel: &str) -> Result<ChannelSubscription, ClientError> {
        self.subscribe_since(channel, None).await
    }

    /// Subscribes to `channel`, first recovering what was published after `since` (a
    /// position from an earlier run, say). If it cannot be recovered, the stream starts with a
    /// [`Gap::Unrecoverable`].
    pub async fn subscribe_since(
        &self,
        channel: &str,
        since: Option<Position>,
    ) -> Result<ChannelSubscription, ClientError> {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                starting: true,
                ..SlotState::default()
            }),
            ready: Notify::new(),
        });
        {
            let mut slots = lock(&self.inner.slots);
            if slots.contains_key(channel) {
                return Err(ClientError::Application {
                    protocol_id: super::CHANNELS_ID,
                    code: super::messages::codes::ALREADY_SUBSCRIBED.into(),
                    message: format!("already subscribed to {channel:?} on this client"),
                });
            }
            slots.insert(channel.to_string(), slot.clone());
        }
        let command = Command::Subscribe {
            channel: channel.to_string(),
            since: since.clone(),
        };
        let answer = match self.inner.remote.request(&command).await {
            Ok(Reply::Subscribed(answer)) => answer,
            Ok(other) => {
                lock(&self.inner.slots).remove(channel);
                return Err(unexpected(other));
            }
            Err(e) => {
                lock(&self.inner.slots).remove(channel);
                return Err(e);
            }
        };
        lock(&slot.state).apply(since, answer, channel, self.inner.depth);
        slot.ready.notify_waiters();
        Ok(ChannelSubscription {
            channel: channel.to_string(),
            slot,
            inner: self.inner.clone(),
        })
    }

    /// Ends the subscription to `channel` (its stream ends too).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        if let Some(slot) = lock(&self.inner.slots).remove(channel) {
            lock(&slot.state).closed = true;
            slot.ready.notify_waiters();
        }
        let command = Command::Unsubscribe {
            channel: channel.to_string(),
        };
        match self.inner.remote.request(&command).await? {
            Reply::Unsubscribed {} => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes `data` on `channel`; its position once the server has it.
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<Bytes>,
    ) -> Result<Position, ClientError> {
        let command = Command::Publish {
            channel: channel.to_string(),
            data: data.into(),
        };
        match self.inner.remote.request(&command).await? {
            Reply::Published(position) => Ok(position),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes `value` as MessagePack with field names (read it back with
    /// [`ChannelSubscription::next_value`]).
    pub async fn publish_value<T: serde::Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<Position, ClientError> {
        let data = rmp_serde::to_vec_named(value)
            .map_err(|e| ClientError::Unexpected(format!("cannot encode the value: {e}")))?;
        self.publish(channel, data).await
    }

    /// The sessions subscribed to `channel`.
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, ClientError> {
        let command = Command::Presence {
            channel: channel.to_string(),
        };
        match self.inner.remote.request(&command).await? {
            Reply::Presence { clients } => Ok(clients),
            other => Err(unexpected(other)),
        }
    }

    /// How many sessions and distinct users are subscribed to `channel`.
    pub async fn presence_counts(&self, channel: &str) -> Result<(u64, u64), ClientError> {
        let command = Command::PresenceCounts {
            channel: channel.to_string(),
        };
        match self.inner.remote.request(&command).await? {
            Reply::PresenceCounts { sessions, users } => Ok((sessions, users)),
            other => Err(unexpected(other)),
        }
    }

    /// The kept publications of `channel` after `since` (from the oldest without it), at
    /// most `limit`.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: Option<u32>,
    ) -> Result<HistoryReply, ClientError> {
        let command = Command::History {
            channel: channel.to_string(),
            since,
            limit,
        };
        match self.inner.remote.request(&command).await? {
            Reply::History(history) => Ok(history),
            other => Err(unexpected(other)),
        }
    }
}

impl Inner {
    fn slot(&self, channel: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(channel).cloned()
    }

    fn close_all(&self) {
        for slot in lock(&self.slots).values() {
            lock(&slot.state).closed = true;
            slot.ready.notify_waiters();
        }
    }

    /// Renews every subscription, all at once (one round trip for them all, within the
    /// hook's time).
    async fn resubscribe_all(&self) {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.slots)
            .iter()
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect();
        futures::future::join_all(
            slots
                .iter()
                .map(|(channel, slot)| self.resubscribe(channel, slot)),
        )
        .await;
    }

    /// Renews the subscription of `channel` from its last position.
    async fn resubscribe(&self, channel: &str, slot: &Arc<Slot>) {
        let since = {
            let mut state = lock(&slot.state);
            if state.closed {
                return;
            }
            state.starting = true;
            state.position.clone()
        };
        let command = Command::Subscribe {
            channel: channel.to_string(),
            since: since.clone(),
        };
        let answer = self.remote.request(&command).await;
        let mut state = lock(&slot.state);
        match answer {
            Ok(Reply::Subscribed(answer)) => state.apply(since, answer, channel, self.depth),
            Ok(other) => {
                tracing::warn!(channel, answer = ?other, "unexpected answer to a resubscribe");
                state.starting = false;
            }
            Err(ClientError::Application { code, .. })
                if code == super::messages::codes::ALREADY_SUBSCRIBED =>
            {
                // The server still holds it (this session never ended): it stands.
                state.starting = false;
                let held = std::mem::take(&mut state.held);
                for push in held {
                    state.deliver(push, self.depth);
                }
            }
            Err(ClientError::Application { code, message, .. }) => {
                // Refused now (say the rules changed): the subscription is over.
                state.starting = false;
                state.enqueue(
                    ChannelItem::Ended(format!("{message} ({code})")),
                    self.depth,
                );
                state.closed = true;
                drop(state);
                lock(&self.slots).remove(channel);
            }
            Err(e) => {
                // The connection went again: the next reconnect retries.
                tracing::debug!(channel, error = %e, "resubscribe failed");
                state.starting = false;
                let held = std::mem::take(&mut state.held);
                for push in held {
                    state.deliver(push, self.depth);
                }
            }
        }
        slot.ready.notify_waiters();
    }
}

/// Hands each push to its subscription.
async fn read_pushes(inner: Arc<Inner>) {
    while let Some(push) = inner.remote.next_push().await {
        let push = match push {
            Ok(push) => push,
            Err(PushError::Lagged(n)) => {
                // The offsets of what follows show each subscription what it lost.
                tracing::warn!(
                    dropped = n,
                    "channel pushes dropped: the client fell behind"
                );
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "channels push not understood");
                continue;
            }
        };
        let channel = match &push {
            ChannelPush::Publication(p) => p.channel.clone(),
            ChannelPush::Join { channel, .. }
            | ChannelPush::Leave { channel, .. }
            | ChannelPush::Ended { channel, .. } => channel.clone(),
        };
        let Some(slot) = inner.slot(&channel) else {
            continue;
        };
        let ended = matches!(push, ChannelPush::Ended { .. });
        {
            let mut state = lock(&slot.state);
            if state.starting {
                state.held.push(push);
                // Bounded like the queue: a subscribe that never answers cannot hold more.
                if state.held.len() > inner.depth {
                    state.held.remove(0);
                    state.dropped += 1;
                }
            } else {
                state.deliver(push, inner.depth);
            }
        }
        if ended {
            let mut slots = lock(&inner.slots);
            if slots.get(&channel).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&channel);
            }
        }
        slot.ready.notify_waiters();
    }
    inner.close_all();
}
