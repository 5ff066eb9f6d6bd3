//! The in-memory broker: one node's history, presence and delivery, the default.
//!
//! Each channel's history is a bounded queue under its own lock, so that publishing on one
//! channel never waits for another's fan-out; the map of channels is locked only to find or
//! create one. The history's epoch is drawn at random when the channel's history starts (the
//! first publication, subscription or history read after the process started or after the
//! history expired), so positions from before a restart are recognised as another epoch.
//! Expired histories are swept by a task started at [`attach`](Broker::attach).

use super::broker::{
    Broker, BrokerError, BrokerSink, ClientInfo, History, HistoryOptions, Position, Publication,
};
use crate::session::{lock, SessionId};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often expired histories are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The default [`Broker`]: everything in this process's memory.
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Histories by channel name.
    streams: Mutex<HashMap<String, Arc<Mutex<Stream>>>>,
    /// Presence by channel name, then session.
    presence: Mutex<Presence>,
    /// Node-level subscriptions: channel name to count.
    subscribed: Mutex<HashMap<String, usize>>,
    sink: OnceLock<Weak<dyn BrokerSink>>,
}

/// Every channel's presence, compact: an entry is the session id, a shared user name (one
/// pointer) and the time, 24 bytes, since presence is on by default and counts once per
/// subscription.
#[derive(Default)]
struct Presence {
    channels: HashMap<String, HashMap<SessionId, Present>>,
    /// Each present user's name once; the entries share it, and how many do is its
    /// reference count.
    users: HashSet<UserName>,
}

/// A user's name, shared by their presence entries. A thin pointer (the name's length lives
/// with it): 8 bytes in each entry instead of 16.
#[derive(Clone)]
struct UserName(Arc<Box<str>>);

impl UserName {
    fn as_str(&self) -> &str {
        &self.0
    }

    /// How many presence entries share the name (the set's own copy not counted).
    fn entries(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

impl PartialEq for UserName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for UserName {}

impl std::hash::Hash for UserName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that the set is searched by name (`Borrow` below).
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for UserName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// One session in a channel's presence.
struct Present {
    user: UserName,
    since: u64,
}

impl Presence {
    /// The shared copy of `user`'s name.
    fn intern(&mut self, user: &str) -> UserName {
        if let Some(name) = self.users.get(user) {
            return name.clone();
        }
        let name = UserName(Arc::new(Box::from(user)));
        self.users.insert(name.clone());
        name
    }

    /// Drops one entry's copy of `user`'s name, forgetting the name with the last.
    fn release(&mut self, user: UserName) {
        if user.entries() == 1 {
            self.users.remove(user.as_str());
        }
    }

    fn add(&mut self, channel: &str, client: &ClientInfo) {
        let user = self.intern(&client.user);
        let entry = Present {
            user,
            since: client.since,
        };
        let old = match self.channels.get_mut(channel) {
            Some(sessions) => sessions.insert(client.session, entry),
            None => {
                let mut sessions = HashMap::new();
                sessions.insert(client.session, entry);
                self.channels.insert(channel.to_string(), sessions);
                None
            }
        };
        if let Some(old) = old {
            self.release(old.user);
        }
    }

    fn remove(&mut self, channel: &str, session: SessionId) {
        let Some(sessions) = self.channels.get_mut(channel) else {
            return;
        };
        let removed = sessions.remove(&session);
        if sessions.is_empty() {
            self.channels.remove(channel);
        }
        if let Some(old) = removed {
            self.release(old.user);
        }
    }

    fn list(&self, channel: &str) -> Vec<ClientInfo> {
        self.channels
            .get(channel)
            .map(|sessions| {
                sessions
                    .iter()
                    .map(|(&session, p)| ClientInfo {
                        user: p.user.as_str().to_string(),
                        session,
                        since: p.since,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One channel's history.
struct Stream {
    epoch: String,
    top: u64,
    /// Kept publications with the time each was published, oldest first.
    kept: VecDeque<(Instant, Publication)>,
    /// When the history was last written or read.
    touched: Instant,
    /// How long the epoch outlives the last use.
    meta_ttl: Duration,
}

impl Stream {
    fn new(meta_ttl: Duration) -> Self {
        Stream {
            epoch: format!("{:016x}", rand::random::<u64>()),
            top: 0,
            kept: VecDeque::new(),
            touched: Instant::now(),
            meta_ttl,
        }
    }

    /// Drops publications past their time or beyond the size.
    fn trim(&mut self, history: &HistoryOptions, now: Instant) {
        while self.kept.len() > history.size {
            self.kept.pop_front();
        }
        while self
            .kept
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= history.ttl)
        {
            self.kept.pop_front();
        }
    }

    fn first_kept(&self) -> u64 {
        self.kept.front().map_or(self.top + 1, |(_, p)| p.offset)
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.touched) >= self.meta_ttl
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                streams: Mutex::new(HashMap::new()),
                presence: Mutex::new(Presence::default()),
                subscribed: Mutex::new(HashMap::new()),
                sink: OnceLock::new(),
            }),
        }
    }

    /// How many channels have a history now, for tests and metrics.
    pub fn histories(&self) -> usize {
        lock(&self.inner.streams).len()
    }
}

impl Inner {
    /// The history of `channel`, made (with a new epoch) if it has none or it expired.
    fn stream(&self, channel: &str, history: &HistoryOptions) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        let now = Instant::now();
        if let Some(stream) = streams.get(channel) {
            let mut s = lock(stream);
            if !s.expired(now) {
                s.touched = now;
                s.meta_ttl = history.meta_ttl;
                drop(s);
                return stream.clone();
            }
        }
        let stream = Arc::new(Mutex::new(Stream::new(history.meta_ttl)));
        streams.insert(channel.to_string(), stream.clone());
        stream
    }

    fn sink(&self) -> Option<Arc<dyn BrokerSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    fn is_subscribed(&self, channel: &str) -> bool {
        lock(&self.subscribed).contains_key(channel)
    }

    /// Removes histories whose epoch has expired.
    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.streams).retain(|_, s| !lock(s).expired(now));
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, sink: Weak<dyn BrokerSink>) {
        if self.inner.sink.set(sink).is_err() {
            tracing::error!("MemoryBroker attached twice; the first engine keeps it");
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = Arc::downgrade(&self.inner);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match inner.upgrade() {
                        Some(inner) => inner.sweep(),
                        None => break,
                    }
                }
            });
        }
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        user: &str,
        history: &HistoryOptions,
    ) -> Result<Position, BrokerError> {
        let stream = self.inner.stream(channel, history);
        let sink = self.inner.sink();
        let subscribed = self.inner.is_subscribed(channel);
        // Numbered, kept and delivered under the channel's lock: deliveries go out in offset
        // order, and a subscriber reading the history sees each publication either there or
        // delivered.
        let mut s = lock(&stream);
        let now = Instant::now();
        s.top += 1;
        let publication = Publication {
            offset: s.top,
            data,
            user: user.to_string(),
        };
        if history.size > 0 {
            s.kept.push_back((now, publication.clone()));
        }
        s.trim(history, now);
        s.touched = now;
        let position = Position {
            epoch: s.epoch.clone(),
            offset: s.top,
        };
        if let (Some(sink), true) = (sink, subscribed) {
            sink.publication(channel, &s.epoch, &publication);
        }
        Ok(position)
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        *lock(&self.inner.subscribed)
            .entry(channel.to_string())
            .or_insert(0) += 1;
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut subscribed = lock(&self.inner.subscribed);
        if let Some(count) = subscribed.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                subscribed.remove(channel);
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        history: &HistoryOptions,
    ) -> Result<History, BrokerError> {
        let stream = self.inner.stream(channel, history);
        let mut s = lock(&stream);
        s.trim(history, Instant::now());
        let after = after.unwrap_or(0);
        let publications = s
            .kept
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.offset > after)
            .take(limit)
            .cloned()
            .collect();
        Ok(History {
            top: Position {
                epoch: s.epoch.clone(),
                offset: s.top,
            },
            first_kept: s.first_kept(),
            publications,
        })
    }

    async fn presence_add(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        lock(&self.inner.presence).add(channel, client);
        Ok(())
    }

    async fn presence_remove(&self, channel: &str, session: SessionId) -> Result<(), BrokerError> {
        lock(&self.inner.presence).remove(channel, session);
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let mut clients = lock(&self.inner.presence).list(channel);
        clients.sort_by_key(|c| (c.since, c.session));
        Ok(clients)
    }

    async fn publish_join(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        if let (Some(sink), true) = (self.inner.sink(), self.inner.is_subscribed(channel)) {
            sink.join(channel, client, true);
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        if let (Some(sink), true) = (self.inner.sink(), self.inner.is_subscribed(channel)) {
            sink.leave(channel, client, true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP3: HistoryOptions = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    };

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, u64)>>);
    impl BrokerSink for Seen {
        fn publication(&self, channel: &str, _epoch: &str, p: &Publication) {
            lock(&self.0).push((channel.to_string(), p.offset));
        }
        fn join(&self, _: &str, _: &ClientInfo, _: bool) {}
        fn leave(&self, _: &str, _: &ClientInfo, _: bool) {}
        fn resync(&self, _: &str) {}
    }

    #[tokio::test]
    async fn offsets_grow_history_is_bounded_and_only_subscribed_channels_are_delivered() {
        let broker = MemoryBroker::new();
        let seen = Arc::new(Seen::default());
        let sink: Arc<dyn BrokerSink> = seen.clone();
        broker.attach(Arc::downgrade(&sink));
        broker.subscribe("a").await.unwrap();
        let mut epoch = None;
        for n in 1..=5u64 {
            let p = broker
                .publish("a", Bytes::from(vec![n as u8]), "alice", &KEEP3)
                .await
                .unwrap();
            assert_eq!(p.offset, n);
            assert_eq!(epoch.get_or_insert(p.epoch.clone()), &p.epoch);
        }
        broker.publish("b", Bytes::new(), "", &KEEP3).await.unwrap();
        let h = broker.history("a", Some(1), 10, &KEEP3).await.unwrap();
        assert_eq!(h.top.offset, 5);
        assert_eq!(h.first_kept, 3);
        let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(h.publications[0].user, "alice");
        let delivered: Vec<u64> = lock(&seen.0).iter().map(|(_, o)| *o).collect();
        assert_eq!(delivered, [1, 2, 3, 4, 5], "b was never subscribed");
        broker.unsubscribe("a").await.unwrap();
        broker.publish("a", Bytes::new(), "", &KEEP3).await.unwrap();
        assert_eq!(lock(&seen.0).len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_history_starts_a_new_epoch() {
        let broker = MemoryBroker::new();
        let short = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(20),
        };
        let first = broker.publish("a", Bytes::new(), "", &short).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        let h = broker.history("a", None, 10, &short).await.unwrap();
        assert_eq!(h.top, first, "the epoch outlives its publications");
        assert!(h.publications.is_empty());
        assert_eq!(h.first_kept, 2);
        tokio::time::advance(Duration::from_secs(21)).await;
        broker.inner.sweep();
        assert_eq!(broker.histories(), 0);
        let again = broker.publish("a", Bytes::new(), "", &short).await.unwrap();
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(again.offset, 1);
    }

    #[tokio::test]
    async fn presence_is_per_session() {
        let broker = MemoryBroker::new();
        let c = |session, user: &str| ClientInfo {
            user: user.into(),
            session,
            since: session,
        };
        broker.presence_add("a", &c(1, "alice")).await.unwrap();
        broker.presence_add("a", &c(2, "bob")).await.unwrap();
        broker.presence_add("a", &c(2, "bob")).await.unwrap();
        assert_eq!(broker.presence("a").await.unwrap().len(), 2);
        broker.presence_remove("a", 1).await.unwrap();
        assert_eq!(broker.presence("a").await.unwrap(), vec![c(2, "bob")]);
        broker.presence_remove("a", 2).await.unwrap();
        let presence = lock(&broker.inner.presence);
        assert!(presence.channels.is_empty() && presence.users.is_empty());
    }

    #[test]
    fn a_presence_entry_is_a_pointer_and_a_time() {
        assert_eq!(std::mem::size_of::<Present>(), 16);
    }

    #[tokio::test]
    async fn a_users_name_is_kept_once_for_all_their_entries() {
        let broker = MemoryBroker::new();
        let c = |session, user: &str| ClientInfo {
            user: user.into(),
            session,
            since: 7,
        };
        for channel in ["a", "b", "c"] {
            broker.presence_add(channel, &c(1, "alice")).await.unwrap();
        }
        broker.presence_add("a", &c(2, "alice")).await.unwrap();
        // Re-adding a session replaces its entry without counting the name twice.
        broker.presence_add("a", &c(2, "bob")).await.unwrap();
        {
            let presence = lock(&broker.inner.presence);
            assert_eq!(presence.users.len(), 2);
            assert_eq!(presence.users.get("alice").map(UserName::entries), Some(3));
            let a = &presence.channels["a"];
            assert!(Arc::ptr_eq(
                &a[&1].user.0,
                &presence.channels["b"][&1].user.0
            ));
        }
        assert_eq!(
            broker.presence("a").await.unwrap(),
            vec![c(1, "alice"), c(2, "bob")]
        );
        for channel in ["a", "b", "c"] {
            broker.presence_remove(channel, 1).await.unwrap();
        }
        broker.presence_remove("a", 2).await.unwrap();
        let presence = lock(&broker.inner.presence);
        assert!(presence.channels.is_empty() && presence.users.is_empty());
    }
}
