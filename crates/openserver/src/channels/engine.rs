//! The channels engine of one server: rules, this server's subscribers, fan-out, recovery.
//!
//! The [`Broker`] numbers, keeps and delivers publications; the engine decides who may do
//! what, keeps the sessions subscribed on this server, and hands each publication the broker
//! delivers to them. A push never waits: a session whose outbound queue is full is closed as a
//! slow consumer (as every server push), so one slow session never delays the others.
//!
//! Recovery without a gap: a subscribing session is registered (as starting) before the node
//! subscribes to the broker and before the history is read; publications delivered meanwhile
//! wait in its (bounded) start buffer. When the history has been read, under the channel's
//! lock, the answer is queued with the missed publications and then the buffered ones newer
//! than them, and the session becomes live: every publication after the answer's position is
//! either in the answer or pushed after it, once.
//!
//! A gap in the broker's delivery (its connection lost and back, [`BrokerSink::resync`]):
//! the channel's deliveries are held while the history after the last offset handed on is
//! read; the missed publications go out first, then the held ones. If the history cannot
//! cover the gap, the channel's subscriptions end with the reason: a client that subscribes
//! again from its position learns exactly what was lost. Never a silent gap.

use super::broker::{
    now_ms, Broker, BrokerError, BrokerSink, ClientInfo, History, HistoryOptions, Position,
    Publication,
};
use super::config::{Access, ChannelsConfig, NamespaceConfig};
use super::messages::{
    codes, ChannelPush, HistoryReply, PublicationMessage, Recovery, Reply, Subscribed, CHANNELS_ID,
};
use super::name::{self, Kind, NameError};
use crate::app::envelope::{self, PUSH, RESPONSE};
use crate::app::AppError;
use crate::auth::User;
use crate::server::events::{EventBus, SessionEvent};
use crate::server::metrics::channels::{ChannelMetrics, NamespaceMetrics};
use crate::session::{lock, Session, SessionId};
use crate::wire::Frame;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// The most publications a starting subscription buffers while its history is read; past it,
/// the subscribe is refused with `unavailable` (retry) rather than buffering without bound.
const MIN_START_BUFFER: usize = 1024;

/// What a client asks to do, for a [`ChannelPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Subscribe.
    Subscribe,
    /// Publish.
    Publish,
    /// Read presence or presence counts.
    Presence,
    /// Read history.
    History,
}

/// An application's own authorization of channel actions ("alice may join room 7"),
/// consulted after the namespace's rules allowed the action. Server code is never asked about.
#[async_trait]
pub trait ChannelPolicy: Send + Sync + 'static {
    /// Whether `user` may do `action` on `channel`. `Err` refuses with that message (the client
    /// sees the code `forbidden`).
    async fn authorize(&self, user: &User, action: Action, channel: &str) -> Result<(), String>;
}

/// Why a channel operation failed. [`code`](Self::code) is what a client sees as the error
/// code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The name is not a channel name.
    #[error("{0}")]
    BadChannel(#[from] NameError),
    /// The channel's namespace is not configured.
    #[error("namespace {0:?} is not configured on this server; use a configured namespace or add [channels.namespaces.{0}]")]
    UnknownNamespace(String),
    /// The user may not do this here.
    #[error("{0}")]
    Forbidden(String),
    /// Subscribed already.
    #[error("already subscribed to {0:?}")]
    AlreadySubscribed(String),
    /// Not subscribed.
    #[error("not subscribed to {0:?}")]
    NotSubscribed(String),
    /// `max_channels_per_session` reached.
    #[error("this session is subscribed to {0} channels, the most allowed (channels.max_channels_per_session); unsubscribe from one first")]
    TooManyChannels(usize),
    /// `max_subscribers` reached.
    #[error("the channel has {0} subscribers, the most its namespace allows (max_subscribers)")]
    TooManySubscribers(usize),
    /// The data is too large.
    #[error(
        "the publication is {len} bytes; at most {max} are allowed (channels.max_publication)"
    )]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many publishes per second.
    #[error("more than {0} publications per second from this session (channels.publishes_per_second); slow down")]
    RateLimited(u32),
    /// The namespace keeps no presence.
    #[error("channel {0:?} keeps no presence (its namespace has presence = false)")]
    NoPresence(String),
    /// Cannot be done now or at all from this position; retry or start over.
    #[error("{0}")]
    Unavailable(String),
    /// The broker failed; the operation may not have happened.
    #[error("{0}; retry later")]
    Broker(#[from] BrokerError),
    /// Channels are not enabled on the server.
    #[error("channels are not enabled on this server (ServerBuilder::channels)")]
    Disabled,
}

impl ChannelError {
    /// The stable code of [`codes`].
    pub fn code(&self) -> &'static str {
        match self {
            ChannelError::BadChannel(_) => codes::BAD_CHANNEL,
            ChannelError::UnknownNamespace(_) => codes::UNKNOWN_NAMESPACE,
            ChannelError::Forbidden(_) => codes::FORBIDDEN,
            ChannelError::AlreadySubscribed(_) => codes::ALREADY_SUBSCRIBED,
            ChannelError::NotSubscribed(_) => codes::NOT_SUBSCRIBED,
            ChannelError::TooManyChannels(_) => codes::TOO_MANY_CHANNELS,
            ChannelError::TooManySubscribers(_) => codes::TOO_MANY_SUBSCRIBERS,
            ChannelError::TooLarge { .. } => codes::TOO_LARGE,
            ChannelError::RateLimited(_) => codes::RATE_LIMITED,
            ChannelError::NoPresence(_) => codes::NO_PRESENCE,
            ChannelError::Unavailable(_) => codes::UNAVAILABLE,
            ChannelError::Broker(_) => codes::BROKER,
            ChannelError::Disabled => codes::DISABLED,
        }
    }
}

impl From<ChannelError> for AppError {
    fn from(e: ChannelError) -> AppError {
        AppError::new(e.code(), e.to_string())
    }
}

/// The channels of a server: publish from server code, read presence and history, end a
/// session's subscription. Cheap to clone. From
/// [`ServerHandle::channels`](crate::server::ServerHandle::channels) or an application
/// handler's [`Context::channels`](crate::app::Context::channels).
#[derive(Clone)]
pub struct Channels {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

/// The rules of one namespace, with its metric handles.
struct Namespace {
    label: String,
    config: NamespaceConfig,
    history: HistoryOptions,
    metrics: NamespaceMetrics,
}

pub(crate) struct Engine {
    config: ChannelsConfig,
    default: Namespace,
    personal: Namespace,
    named: BTreeMap<String, Namespace>,
    broker: Arc<dyn Broker>,
    policy: Option<Arc<dyn ChannelPolicy>>,
    /// Channels with subscribers on this server. Locked to find, add or remove one (and to
    /// add or remove a subscriber, so that an emptied channel is never removed under a new
    /// subscriber); never across an await or a fan-out.
    local: Mutex<HashMap<String, Arc<Local>>>,
    /// Each session's subscriptions, for the per-session limit and for its end. The names
    /// are those of the [`Local`]s, shared: a subscription costs no copy of its channel name.
    sessions: Mutex<HashMap<SessionId, SessionChannels>>,
    metrics: ChannelMetrics,
    events: EventBus,
    /// The engine itself, for the tasks that fill gaps.
    me: std::sync::OnceLock<std::sync::Weak<Engine>>,
}

/// One channel's subscribers on this server.
struct Local {
    /// The channel's name, shared with the sessions' sets.
    name: Arc<str>,
    join_leave: bool,
    metrics: NamespaceMetrics,
    subs: Mutex<Subs>,
    /// What the broker delivered, for filling a gap after an interruption. Locked before
    /// `subs` (never the other way round), and held across a fan-out, so that deliveries and
    /// a gap's filling keep offset order.
    feed: Mutex<Feed>,
}

/// A channel's delivery on this server, for [`BrokerSink::resync`].
#[derive(Default)]
struct Feed {
    /// The last publication handed to the channel's sessions, or the position the first of
    /// them went live at: where a gap starts.
    last: Option<Position>,
    /// While a gap is filled: what the broker delivered meanwhile, in order.
    held: Option<Vec<(String, Publication)>>,
    /// `held` outgrew its bound: the gap cannot be filled in order.
    overflowed: bool,
    /// Another interruption was reported while the gap was being filled.
    again: bool,
}

/// A channel's subscribers on this server. A settled subscription, the common case, is one
/// session handle in `members` (8 bytes, keyed by the session's own id); only a starting one
/// also has an entry in `starting`, which holds nothing (no allocation) once every
/// subscription has started.
#[derive(Default)]
struct Subs {
    members: HashSet<Member>,
    /// The members whose subscription is starting: what was delivered meanwhile.
    starting: HashMap<SessionId, StartBuffer>,
}

impl Subs {
    fn insert(&mut self, session: &Session) {
        self.members.replace(Member(session.clone()));
        self.starting.insert(session.id(), StartBuffer::default());
    }

    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let member = self.members.take(&id)?;
        self.end_start(id);
        Some(member.0)
    }

    /// Ends the start of `id`'s subscription: its buffer, if it was starting.
    fn end_start(&mut self, id: SessionId) -> Option<StartBuffer> {
        let buffer = self.starting.remove(&id);
        if self.starting.is_empty() && self.starting.capacity() > 0 {
            // A subscribe burst must not leave its spare room behind on every channel.
            self.starting = HashMap::new();
        }
        buffer
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// A subscriber: its session, hashed and compared by the session's id, so that the set needs
/// no separate key.
struct Member(Session);

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for Member {}

impl Hash for Member {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `SessionId` hashes, so that the set is searched by id (`Borrow` below).
        self.0.id().hash(state);
    }
}

impl std::borrow::Borrow<SessionId> for Member {
    fn borrow(&self) -> &SessionId {
        self.0.id_ref()
    }
}

/// A session's channels: the shared names, sorted, in a vector sized to fit. A session has a
/// few (`max_channels_per_session`, 128 by default), for which a sorted vector is both
/// smaller than a hash set (16 bytes a channel, no spare room) and fast enough to search.
#[derive(Default)]
struct SessionChannels(Vec<Arc<str>>);

impl SessionChannels {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|name| (**name).cmp(channel))
    }

    fn contains(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `name` (not there yet): room for one more only, as most sessions stop at a few.
    fn insert(&mut self, name: Arc<str>) {
        if let Err(at) = self.find(&name) {
            self.0.reserve_exact(1);
            self.0.insert(at, name);
        }
    }

    /// Removes `channel`; whether it was there. Gives back room once half of it is unused.
    fn remove(&mut self, channel: &str) -> bool {
        let Ok(at) = self.find(channel) else {
            return false;
        };
        self.0.remove(at);
        if self.0.capacity() >= 2 * self.0.len().max(2) {
            self.0.shrink_to_fit();
        }
        true
    }
}

#[derive(Default)]
struct StartBuffer {
    publications: Vec<(String, Publication)>,
    overflowed: bool,
}

/// A channel name's rules.
struct Rules<'a> {
    ns: &'a Namespace,
    /// For a personal channel, its user.
    owner: Option<&'a str>,
}

fn allowed(access: &Access, user: &User) -> bool {
    match access {
        Access::Users => true,
        Access::Role(role) => user.has_role(role),
        Access::Server => false,
    }
}

fn message(channel: &str, epoch: &str, p: &Publication) -> PublicationMessage {
    PublicationMessage {
        channel: channel.to_string(),
        epoch: epoch.to_string(),
        offset: p.offset,
        data: p.data.clone(),
        user: p.user.clone(),
    }
}

fn push_frame(push: &ChannelPush) -> Option<Frame> {
    match envelope::encode(PUSH, 0, push) {
        Ok(body) => Some(Frame::new(CHANNELS_ID, body)),
        Err(e) => {
            tracing::error!(error = %e, "channel push not encoded");
            None
        }
    }
}

impl Engine {
    pub(crate) fn new(
        config: ChannelsConfig,
        broker: Arc<dyn Broker>,
        policy: Option<Arc<dyn ChannelPolicy>>,
        metrics: ChannelMetrics,
        events: EventBus,
    ) -> Arc<Engine> {
        let outcomes: Vec<&'static str> = Recovery::ALL.iter().map(|r| r.label()).collect();
        let meta = config.history_meta_ttl;
        let namespace = |label: &str, config: &NamespaceConfig| Namespace {
            label: label.to_string(),
            config: config.clone(),
            history: config.history(meta),
            metrics: metrics.namespace(label, &outcomes),
        };
        let engine = Arc::new(Engine {
            default: namespace("default", &config.default),
            personal: namespace("personal", &config.personal),
            named: config
                .namespaces
                .iter()
                .map(|(name, ns)| (name.clone(), namespace(name, ns)))
                .collect(),
            config,
            broker,
            policy,
            local: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            metrics,
            events,
            me: std::sync::OnceLock::new(),
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        let sink: Arc<dyn BrokerSink> = engine.clone();
        engine.broker.attach(Arc::downgrade(&sink));
        engine
    }

    pub(crate) fn config(&self) -> &ChannelsConfig {
        &self.config
    }

    fn rules<'a>(&'a self, channel: &'a str) -> Result<Rules<'a>, ChannelError> {
        Ok(match name::parse(channel, self.config.max_channel_name)? {
            Kind::Default => Rules {
                ns: &self.default,
                owner: None,
            },
            Kind::Personal(user) => Rules {
                ns: &self.personal,
                owner: Some(user),
            },
            Kind::Namespace(ns) => Rules {
                ns: self
                    .named
                    .get(ns)
                    .ok_or_else(|| ChannelError::UnknownNamespace(ns.to_string()))?,
                owner: None,
            },
        })
    }

    /// Whether `user` may do `action` on `channel` under `rules` and the policy.
    async fn authorize(
        &self,
        user: &User,
        action: Action,
        channel: &str,
        rules: &Rules<'_>,
    ) -> Result<(), ChannelError> {
        if let Some(owner) = rules.owner {
            if action != Action::Publish && owner != user.name {
                return Err(ChannelError::Forbidden(format!(
                    "{channel:?} is {owner}'s personal channel"
                )));
            }
        }
        let access = match action {
            Action::Publish => &rules.ns.config.publish,
            _ => &rules.ns.config.subscribe,
        };
        if !allowed(access, user) {
            let who = match access {
                Access::Server => "only server code".to_string(),
                Access::Role(role) => format!("only users with the role {role}"),
                Access::Users => "logged-in users".to_string(),
            };
            let verb = if action == Action::Publish {
                "publish"
            } else {
                "subscribe"
            };
            return Err(ChannelError::Forbidden(format!(
                "in namespace {}, {who} may {verb}",
                rules.ns.label
            )));
        }
        if let Some(policy) = &self.policy {
            policy
                .authorize(user, action, channel)
                .await
                .map_err(ChannelError::Forbidden)?;
        }
        Ok(())
    }

    /// Publishes `data` on `channel` as `user` (empty: server code); no access check.
    async fn publish_as(
        &self,
        channel: &str,
        data: Bytes,
        user: &str,
        rules: &Rules<'_>,
    ) -> Result<Position, ChannelError> {
        if data.len() > self.config.max_publication {
            return Err(ChannelError::TooLarge {
                len: data.len(),
                max: self.config.max_publication,
            });
        }
        match self
            .broker
            .publish(channel, data, user, &rules.ns.history)
            .await
        {
            Ok(position) => {
                rules.ns.metrics.publications.inc();
                Ok(position)
            }
            Err(e) => {
                rules.ns.metrics.publish_errors.inc();
                tracing::warn!(channel, error = %e, "publication refused: the broker failed");
                Err(e.into())
            }
        }
    }

    /// A client's publish.
    pub(crate) async fn publish(
        &self,
        session: &Session,
        channel: &str,
        data: Bytes,
    ) -> Result<Position, ChannelError> {
        let user = session_user(session)?;
        let rules = self.rules(channel)?;
        self.authorize(&user, Action::Publish, channel, &rules)
            .await?;
        self.publish_as(channel, data, &user.name, &rules).await
    }

    /// A client's subscribe: on success the answer has been queued (with any recovered
    /// publications), so that no push of the channel can overtake it.
    pub(crate) async fn subscribe(
        &self,
        session: &Session,
        request_id: u32,
        channel: &str,
        since: Option<Position>,
    ) -> Result<(), ChannelError> {
        let user = session_user(session)?;
        let rules = self.rules(channel)?;
        self.authorize(&user, Action::Subscribe, channel, &rules)
            .await?;
        self.add_subscriber(session, channel, &rules)?;
        match self
            .start(session, &user, request_id, channel, since, &rules)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.remove_subscriber(session.id(), channel);
                Err(e)
            }
        }
    }

    /// Registers the session as starting a subscription of `channel`.
    fn add_subscriber(
        &self,
        session: &Session,
        channel: &str,
        rules: &Rules<'_>,
    ) -> Result<(), ChannelError> {
        // The name the channel's `Local` holds, if it has one already (if that `Local` goes
        // before the one below is made, the name is merely not shared).
        let name = match lock(&self.local).get(channel) {
            Some(local) => local.name.clone(),
            None => Arc::<str>::from(channel),
        };
        {
            let mut sessions = lock(&self.sessions);
            let set = sessions.entry(session.id()).or_default();
            if set.contains(channel) {
                return Err(ChannelError::AlreadySubscribed(channel.to_string()));
            }
            if set.len() >= self.config.max_channels_per_session {
                return Err(ChannelError::TooManyChannels(set.len()));
            }
            set.insert(name.clone());
        }
        let mut local = lock(&self.local);
        let entry = local.entry(channel.to_string()).or_insert_with(|| {
            rules.ns.metrics.channels.inc();
            Arc::new(Local {
                name,
                join_leave: rules.ns.config.join_leave,
                metrics: rules.ns.metrics.clone(),
                subs: Mutex::new(Subs::default()),
                feed: Mutex::new(Feed::default()),
            })
        });
        let mut subs = lock(&entry.subs);
        if subs.len() >= rules.ns.config.max_subscribers {
            let count = subs.len();
            drop(subs);
            drop(local);
            self.forget_session_channel(session.id(), channel);
            return Err(ChannelError::TooManySubscribers(count));
        }
        subs.insert(session);
        rules.ns.metrics.subscriptions.inc();
        Ok(())
    }

    fn forget_session_channel(&self, id: SessionId, channel: &str) -> bool {
        let mut sessions = lock(&self.sessions);
        let Some(set) = sessions.get_mut(&id) else {
            return false;
        };
        let removed = set.remove(channel);
        if set.is_empty() {
            sessions.remove(&id);
        }
        removed
    }

    /// Removes the session from `channel` on this server; whether it was there.
    fn remove_subscriber(&self, id: SessionId, channel: &str) -> Option<Session> {
        self.forget_session_channel(id, channel);
        let mut local = lock(&self.local);
        let entry = local.get(channel)?.clone();
        let mut subs = lock(&entry.subs);
        let session = subs.remove(id)?;
        entry.metrics.subscriptions.dec();
        if subs.is_empty() {
            drop(subs);
            local.remove(channel);
            entry.metrics.channels.dec();
        }
        Some(session)
    }

    /// The node subscription, the history read, the answer; then presence and join.
    async fn start(
        &self,
        session: &Session,
        user: &User,
        request_id: u32,
        channel: &str,
        since: Option<Position>,
        rules: &Rules<'_>,
    ) -> Result<(), ChannelError> {
        self.broker.subscribe(channel).await?;
        let read = self.read_recovery(channel, since.as_ref(), rules).await;
        let (history, recovery) = match read {
            Ok(read) => read,
            Err(e) => {
                let _ = self.broker.unsubscribe(channel).await;
                return Err(e);
            }
        };
        if let Some(recovery) = recovery {
            self.metrics.recovery(&rules.ns.label, recovery.label());
        }
        if let Err((e, still_registered)) =
            self.go_live(session, request_id, channel, history, recovery)
        {
            // Whoever removed a subscription that is gone released its node subscription.
            if still_registered {
                let _ = self.broker.unsubscribe(channel).await;
            }
            return Err(e);
        }
        let client = ClientInfo {
            user: user.name.clone(),
            session: session.id(),
            since: now_ms(),
        };
        // The subscription stands; a presence or join the broker fails to take is logged, not
        // undone (the client already has its answer).
        if rules.ns.config.presence {
            if let Err(e) = self.broker.presence_add(channel, &client).await {
                tracing::warn!(channel, error = %e, "presence not recorded");
            }
        }
        if rules.ns.config.join_leave {
            if let Err(e) = self.broker.publish_join(channel, &client).await {
                tracing::warn!(channel, error = %e, "join not delivered");
            }
        }
        self.events.publish(|| SessionEvent::Subscribed {
            id: session.id(),
            user: user.name.clone(),
            channel: channel.to_string(),
        });
        Ok(())
    }

    /// Reads the history a subscribe needs and judges the recovery asked for.
    async fn read_recovery(
        &self,
        channel: &str,
        since: Option<&Position>,
        rules: &Rules<'_>,
    ) -> Result<(History, Option<Recovery>), ChannelError> {
        let size = rules.ns.history.size;
        let Some(since) = since else {
            let history = self
                .broker
                .history(channel, None, 0, &rules.ns.history)
                .await?;
            return Ok((history, None));
        };
        let mut history = self
            .broker
            .history(channel, Some(since.offset), size, &rules.ns.history)
            .await?;
        let top = &history.top;
        let recovery = if since.epoch != top.epoch || since.offset > top.offset {
            Recovery::EpochChanged
        } else if since.offset.saturating_add(1) < history.first_kept
            || history.publications.len() as u64 != top.offset - since.offset
        {
            Recovery::TooOld
        } else {
            Recovery::Recovered
        };
        if recovery != Recovery::Recovered {
            // Never a partial recovery: the client learns what it missed cannot be had.
            history.publications.clear();
        }
        Ok((history, Some(recovery)))
    }

    /// Under the channel's lock: queues the answer (recovered and buffered publications) and
    /// makes the subscription live.
    fn go_live(
        &self,
        session: &Session,
        request_id: u32,
        channel: &str,
        history: History,
        recovery: Option<Recovery>,
    ) -> Result<(), (ChannelError, bool)> {
        let ended = || {
            let e = format!("the subscription to {channel:?} ended while it started");
            (ChannelError::Unavailable(e), false)
        };
        let local = lock(&self.local).get(channel).cloned().ok_or_else(ended)?;
        let mut feed = lock(&local.feed);
        if feed
            .last
            .as_ref()
            .is_none_or(|last| last.epoch != history.top.epoch)
        {
            feed.last = Some(history.top.clone());
        }
        let mut subs = lock(&local.subs);
        if !subs.members.contains(&session.id()) {
            return Err(ended());
        }
        let buffer = subs.end_start(session.id()).unwrap_or_default();
        if buffer.overflowed {
            let e = format!("{channel:?} published too fast while the subscription started; retry");
            return Err((ChannelError::Unavailable(e), true));
        }
        let epoch = history.top.epoch.clone();
        let mut last = history.top.offset;
        let mut publications: Vec<PublicationMessage> = history
            .publications
            .iter()
            .map(|p| message(channel, &epoch, p))
            .collect();
        for (pub_epoch, p) in &buffer.publications {
            if *pub_epoch == epoch && p.offset <= last {
                continue;
            }
            publications.push(message(channel, pub_epoch, p));
            if *pub_epoch == epoch {
                last = p.offset;
            }
        }
        let reply = Reply::Subscribed(Subscribed {
            position: Position {
                epoch,
                offset: last,
            },
            recovery,
            publications,
        });
        let body = envelope::encode(RESPONSE, request_id, &reply)
            .map_err(|e| (ChannelError::Unavailable(e.to_string()), true))?;
        // Queued without waiting, under the lock: no push of this channel overtakes it. A full
        // queue closes the session as a slow consumer, as any push would.
        let _ = session.push(Frame::new(CHANNELS_ID, body));
        Ok(())
    }

    /// A client's unsubscribe.
    pub(crate) async fn unsubscribe(
        &self,
        session: &Session,
        channel: &str,
    ) -> Result<(), ChannelError> {
        let user = session_user(session)?;
        if self.remove_subscriber(session.id(), channel).is_none() {
            return Err(ChannelError::NotSubscribed(channel.to_string()));
        }
        self.after_leave(session.id(), &user.name, channel, "client")
            .await;
        Ok(())
    }

    /// What follows a subscription's end: the node unsubscription, presence, leave, event.
    async fn after_leave(&self, id: SessionId, user: &str, channel: &str, reason: &'static str) {
        if let Err(e) = self.broker.unsubscribe(channel).await {
            tracing::warn!(channel, error = %e, "node unsubscription failed");
        }
        if let Ok(rules) = self.rules(channel) {
            let client = ClientInfo {
                user: user.to_string(),
                session: id,
                since: now_ms(),
            };
            if rules.ns.config.presence {
                if let Err(e) = self.broker.presence_remove(channel, id).await {
                    tracing::warn!(channel, error = %e, "presence not removed");
                }
            }
            if rules.ns.config.join_leave {
                if let Err(e) = self.broker.publish_leave(channel, &client).await {
                    tracing::warn!(channel, error = %e, "leave not delivered");
                }
            }
        }
        self.events.publish(|| SessionEvent::Unsubscribed {
            id,
            user: user.to_string(),
            channel: channel.to_string(),
            reason,
        });
    }

    /// The session ended: every subscription of it ends.
    pub(crate) async fn session_closed(&self, session: &Session) {
        let channels = lock(&self.sessions)
            .remove(&session.id())
            .unwrap_or_default();
        let user = session.user().map(|u| u.name).unwrap_or_default();
        for channel in channels.0 {
            if self.remove_subscriber(session.id(), &channel).is_some() {
                self.after_leave(session.id(), &user, &channel, "closed")
                    .await;
            }
        }
    }

    /// Presence of `channel` as `session`'s user may read it.
    pub(crate) async fn presence_for(
        &self,
        session: &Session,
        channel: &str,
    ) -> Result<Vec<ClientInfo>, ChannelError> {
        let user = session_user(session)?;
        let rules = self.rules(channel)?;
        self.authorize(&user, Action::Presence, channel, &rules)
            .await?;
        self.presence_of(channel, &rules).await
    }

    async fn presence_of(
        &self,
        channel: &str,
        rules: &Rules<'_>,
    ) -> Result<Vec<ClientInfo>, ChannelError> {
        if !rules.ns.config.presence {
            return Err(ChannelError::NoPresence(channel.to_string()));
        }
        Ok(self.broker.presence(channel).await?)
    }

    /// History of `channel` as `session`'s user may read it.
    pub(crate) async fn history_for(
        &self,
        session: &Session,
        channel: &str,
        since: Option<Position>,
        limit: Option<u32>,
    ) -> Result<HistoryReply, ChannelError> {
        let user = session_user(session)?;
        let rules = self.rules(channel)?;
        self.authorize(&user, Action::History, channel, &rules)
            .await?;
        self.history_of(channel, since, limit, &rules).await
    }

    async fn history_of(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: Option<u32>,
        rules: &Rules<'_>,
    ) -> Result<HistoryReply, ChannelError> {
        let max = self.config.max_history_limit;
        let limit = limit.map_or(max, |l| (l as usize).min(max));
        let after = since.as_ref().map(|p| p.offset);
        let history = self
            .broker
            .history(channel, after, limit, &rules.ns.history)
            .await?;
        if let Some(since) = &since {
            if since.epoch != history.top.epoch {
                return Err(ChannelError::Unavailable(format!(
                    "position {since} is of another epoch of {channel:?} (now {}): its \
                     history was lost; read it from the start",
                    history.top.epoch
                )));
            }
            if since.offset.saturating_add(1) < history.first_kept {
                return Err(ChannelError::Unavailable(format!(
                    "publications after {since} are no longer kept (the oldest kept is {}); \
                     read from the start",
                    history.first_kept
                )));
            }
        }
        let epoch = history.top.epoch.clone();
        Ok(HistoryReply {
            publications: history
                .publications
                .iter()
                .map(|p| message(channel, &epoch, p))
                .collect(),
            position: history.top,
        })
    }
}

fn session_user(session: &Session) -> Result<User, ChannelError> {
    session
        .user()
        .ok_or_else(|| ChannelError::Forbidden("log in first".into()))
}

impl BrokerSink for Engine {
    fn publication(&self, channel: &str, epoch: &str, publication: &Publication) {
        let Some(local) = lock(&self.local).get(channel).cloned() else {
            return;
        };
        let mut feed = lock(&local.feed);
        if let Some(held) = &mut feed.held {
            if held.len() >= MIN_START_BUFFER {
                feed.overflowed = true;
            } else {
                held.push((epoch.to_string(), publication.clone()));
            }
            return;
        }
        feed.last = Some(Position {
            epoch: epoch.to_string(),
            offset: publication.offset,
        });
        fan_out(&local, channel, epoch, publication);
    }

    fn join(&self, channel: &str, client: &ClientInfo, here: bool) {
        self.presence_event(channel, client, true, here);
    }

    fn leave(&self, channel: &str, client: &ClientInfo, here: bool) {
        self.presence_event(channel, client, false, here);
    }

    fn resync(&self, channel: &str) {
        let Some(local) = lock(&self.local).get(channel).cloned() else {
            return;
        };
        let mut feed = lock(&local.feed);
        if feed.held.is_some() {
            feed.again = true;
            return;
        }
        feed.held = Some(Vec::new());
        drop(feed);
        let (Some(engine), Ok(runtime)) = (
            self.me.get().and_then(std::sync::Weak::upgrade),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let channel = channel.to_string();
        runtime.spawn(async move { engine.fill_gap(local, channel).await });
    }
}

/// How many times a gap's history read is tried before the subscriptions are ended.
const FILL_ATTEMPTS: u32 = 3;

impl Engine {
    /// After an interruption of `channel`'s delivery: reads what was missed from the history
    /// and hands it on, then what arrived meanwhile; if that cannot be had, ends the
    /// channel's subscriptions with the reason, so that no client misses anything silently.
    async fn fill_gap(self: Arc<Self>, local: Arc<Local>, channel: String) {
        let Ok(rules) = self.rules(&channel) else {
            return;
        };
        let mut failures = 0;
        let why = loop {
            let since = lock(&local.feed).last.clone();
            let read = match &since {
                Some(since) => Some(
                    self.broker
                        .history(
                            &channel,
                            Some(since.offset),
                            rules.ns.history.size,
                            &rules.ns.history,
                        )
                        .await,
                ),
                None => None,
            };
            let missed = match (since, read) {
                // Nothing was delivered and nobody went live yet: each starting subscription
                // reads the history itself.
                (None, _) | (_, None) => Vec::new(),
                (Some(since), Some(Ok(history))) => {
                    let top = &history.top;
                    if top.epoch != since.epoch {
                        break format!(
                            "its history was lost meanwhile (epoch {} is now {})",
                            since.epoch, top.epoch
                        );
                    }
                    let owed = top.offset.saturating_sub(since.offset);
                    if owed > 0
                        && (since.offset + 1 < history.first_kept
                            || history.publications.len() as u64 != owed)
                    {
                        break format!(
                            "{owed} publications after offset {} are owed and the history                              no longer keeps them all",
                            since.offset
                        );
                    }
                    history.publications
                }
                (Some(_), Some(Err(e))) => {
                    failures += 1;
                    if failures >= FILL_ATTEMPTS {
                        break format!("its history could not be read: {e}");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500 * failures as u64))
                        .await;
                    continue;
                }
            };
            let mut feed = lock(&local.feed);
            if feed.overflowed {
                break "it published too fast while the gap was being filled".to_string();
            }
            let mut last = feed.last.clone();
            let mut deliver = |epoch: &str, p: &Publication| {
                if let Some(l) = &last {
                    if l.epoch == epoch && p.offset <= l.offset {
                        return;
                    }
                }
                fan_out(&local, &channel, epoch, p);
                last = Some(Position {
                    epoch: epoch.to_string(),
                    offset: p.offset,
                });
            };
            let epoch = feed.last.as_ref().map(|l| l.epoch.clone());
            if let Some(epoch) = &epoch {
                for p in &missed {
                    deliver(epoch, p);
                }
            }
            if feed.again {
                // Interrupted again: what was held may follow another gap; read again from
                // here (the history has the held publications too).
                feed.again = false;
                feed.held = Some(Vec::new());
                feed.last = last;
                failures = 0;
                continue;
            }
            for (epoch, p) in feed.held.take().unwrap_or_default() {
                deliver(&epoch, &p);
            }
            feed.last = last;
            drop(feed);
            self.metrics.gap(&rules.ns.label, "filled");
            if !missed.is_empty() {
                tracing::info!(
                    channel,
                    recovered = missed.len(),
                    "publications missed while the broker link was down were delivered from                      the history"
                );
            }
            return;
        };
        {
            let mut feed = lock(&local.feed);
            *feed = Feed::default();
        }
        self.metrics.gap(&rules.ns.label, "ended");
        tracing::warn!(
            channel,
            why,
            "subscriptions ended: a gap could not be filled"
        );
        let reason = format!(
            "the server's link to the channel broker was interrupted and what {channel:?}              published meanwhile cannot be delivered ({why}); subscribe again from the last              position seen to learn what was lost"
        );
        // Only the sessions of this `Local`: one made since (all left, someone came back)
        // started after the interruption.
        let current = lock(&self.local)
            .get(&channel)
            .is_some_and(|l| Arc::ptr_eq(l, &local));
        if !current {
            return;
        }
        let ids: Vec<SessionId> = lock(&local.subs).members.iter().map(|m| m.0.id()).collect();
        for id in ids {
            let Some(session) = self.remove_subscriber(id, &channel) else {
                continue;
            };
            if let Some(frame) = push_frame(&ChannelPush::Ended {
                channel: channel.clone(),
                reason: reason.clone(),
            }) {
                let _ = session.push(frame);
            }
            let user = session.user().map(|u| u.name).unwrap_or_default();
            self.after_leave(id, &user, &channel, "broker").await;
        }
    }
}

/// Hands one publication to the channel's sessions on this server (under its feed lock).
fn fan_out(local: &Local, channel: &str, epoch: &str, publication: &Publication) {
    {
        let cap = MIN_START_BUFFER;
        let mut frame = None;
        let mut delivered = 0u64;
        let mut subs = lock(&local.subs);
        let Subs { members, starting } = &mut *subs;
        for member in members.iter() {
            // No lookup while nobody starts, the common case.
            let buffer = if starting.is_empty() {
                None
            } else {
                starting.get_mut(&member.0.id())
            };
            match buffer {
                Some(buffer) if buffer.publications.len() >= cap => buffer.overflowed = true,
                Some(buffer) => buffer
                    .publications
                    .push((epoch.to_string(), publication.clone())),
                None => {
                    let frame = frame.get_or_insert_with(|| {
                        push_frame(&ChannelPush::Publication(message(
                            channel,
                            epoch,
                            publication,
                        )))
                    });
                    // Never waits: a full queue closes that session, the others go on.
                    if let Some(frame) = frame {
                        if member.0.push(frame.clone()).is_ok() {
                            delivered += 1;
                        }
                    }
                }
            }
        }
        drop(subs);
        local.metrics.deliveries.inc_by(delivered);
    }
}

impl Engine {
    /// Pushes a join or leave to the channel's live sessions here, but not to the session it
    /// is about.
    fn presence_event(&self, channel: &str, client: &ClientInfo, join: bool, here: bool) {
        let Some(local) = lock(&self.local).get(channel).cloned() else {
            return;
        };
        if !local.join_leave {
            return;
        }
        let push = if join {
            ChannelPush::Join {
                channel: channel.to_string(),
                client: client.clone(),
            }
        } else {
            ChannelPush::Leave {
                channel: channel.to_string(),
                client: client.clone(),
            }
        };
        let Some(frame) = push_frame(&push) else {
            return;
        };
        let subs = lock(&local.subs);
        for member in &subs.members {
            let id = member.0.id();
            let about_itself = here && id == client.session;
            if !about_itself && !subs.starting.contains_key(&id) {
                let _ = member.0.push(frame.clone());
            }
        }
    }
}

impl Channels {
    pub(crate) fn new(engine: Arc<Engine>) -> Channels {
        Channels { engine }
    }

    /// Publishes `data` on `channel` from server code: any namespace's rules allow it, and
    /// `#alice` reaches every session of alice's subscribed to it (with history, so a
    /// reconnecting client recovers it). Returns the publication's position; a broker
    /// failure is an error, never a silent drop.
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<Bytes>,
    ) -> Result<Position, ChannelError> {
        let rules = self.engine.rules(channel)?;
        self.engine
            .publish_as(channel, data.into(), "", &rules)
            .await
    }

    /// Publishes `value` as MessagePack (with field names, as typed protocols write it).
    pub async fn publish_value<T: serde::Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<Position, ChannelError> {
        let data = rmp_serde::to_vec_named(value)
            .map_err(|e| ChannelError::Unavailable(format!("cannot encode the value: {e}")))?;
        self.publish(channel, data).await
    }

    /// Whether the broker delivers end to end ([`Broker::ready`]); `Err` says why not.
    pub async fn ready(&self) -> Result<(), ChannelError> {
        self.engine
            .broker
            .ready()
            .await
            .map_err(ChannelError::Broker)
    }

    /// The sessions subscribed to `channel` (where its namespace keeps presence).
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, ChannelError> {
        let rules = self.engine.rules(channel)?;
        self.engine.presence_of(channel, &rules).await
    }

    /// The kept publications of `channel` after `since` (from the oldest kept without it),
    /// at most `limit` (capped at `max_history_limit`), and its latest position.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: Option<u32>,
    ) -> Result<HistoryReply, ChannelError> {
        let rules = self.engine.rules(channel)?;
        self.engine.history_of(channel, since, limit, &rules).await
    }

    /// The channels the session `id` is subscribed to on this server, sorted.
    pub fn subscriptions(&self, id: SessionId) -> Vec<String> {
        let channels: Vec<String> = lock(&self.engine.sessions)
            .get(&id)
            .map(|s| s.0.iter().map(|name| name.to_string()).collect())
            .unwrap_or_default();
        // Sorted already: a session keeps its channels in order.
        channels
    }

    /// Ends the session's subscription to `channel` from server code; the client gets an
    /// `ended` push with the reason `server`. Whether it was subscribed.
    pub async fn unsubscribe(&self, id: SessionId, channel: &str) -> bool {
        let Some(session) = self.engine.remove_subscriber(id, channel) else {
            return false;
        };
        if let Some(frame) = push_frame(&ChannelPush::Ended {
            channel: channel.to_string(),
            reason: "server".into(),
        }) {
            let _ = session.push(frame);
        }
        let user = session.user().map(|u| u.name).unwrap_or_default();
        self.engine.after_leave(id, &user, channel, "server").await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_costs_one_pointer_in_its_channel_and_one_name_in_its_session() {
        assert_eq!(std::mem::size_of::<Member>(), 8);
        assert_eq!(std::mem::size_of::<Arc<str>>(), 16);
    }

    #[test]
    fn a_sessions_channels_stay_sorted_unique_and_fitted() {
        let mut set = SessionChannels::default();
        for name in ["b", "a", "c", "a"] {
            set.insert(Arc::from(name));
        }
        let names: Vec<&str> = set.0.iter().map(|n| &**n).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(set.0.capacity(), 3, "room for one more at a time only");
        assert!(set.contains("b") && !set.contains("d"));
        assert!(set.remove("b"));
        assert!(!set.remove("b"));
        assert_eq!(set.len(), 2);
        for name in ["a", "c"] {
            assert!(set.remove(name));
        }
        assert!(set.is_empty());
    }
}
