//! The Redis broker: several nodes share channels through one Redis (7 or later, standalone).
//!
//! - History: a hash per channel (`epoch`, `top`) and a stream of the kept publications
//!   (entry id `OFFSET-0`). One Lua script numbers, keeps and publishes each publication, so
//!   numbering and delivery are in offset order on every node.
//! - Delivery: one pub/sub topic per channel carries publications, joins and leaves
//!   (`payload.rs`); the node subscribes once per channel, however many of its sessions do,
//!   on one dedicated connection. Commands go over a [`ConnectionManager`] (reconnects by
//!   itself); every command is bounded by `command_timeout`.
//! - Presence: a hash per channel, its fields `NODE/SESSION`; each node renews a lease, and
//!   every node sweeps: a node whose lease expired has its entries removed and their leaves
//!   published, in one script.
//! - A lost pub/sub connection is reopened by itself (with backoff) and its channels
//!   resubscribed; what was published meanwhile missed live delivery, so the engine is told
//!   ([`BrokerSink::resync`]) before anything newer is delivered, and fills the gap from history.
//!   A watchdog's canaries find a connection that is open but deaf (half-open) and reopen it.
//!
//! `docs/CLUSTER.md` ("Channels on Redis") has the key layout and the guarantees.

mod config;
mod keys;
mod nodes;
mod op;
mod payload;
mod scripts;

pub use config::RedisBrokerConfig;

use super::broker::{
    now_ms, Broker, BrokerError, BrokerSink, ClientInfo, History, HistoryOptions, Position,
    Publication,
};
use super::nodes::{NodeAnswer, NodeAnswers, NodeRequest, NodeSink};
use crate::server::metrics::broker::BrokerMetrics;
use crate::session::{lock, SessionId};
use async_trait::async_trait;
use bytes::Bytes;
use config::redact;
use futures::StreamExt;
use keys::Keys;
use op::Op;
use payload::Event;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{RedisResult, Value};
use scripts::Scripts;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// A [`Broker`] on Redis, shared by every node of a service. Make it with
/// [`connect`](Self::connect) and hand it to
/// [`ServerBuilder::channel_broker`](crate::server::ServerBuilder::channel_broker).
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("redis", &self.inner.target)
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RedisBrokerConfig,
    /// The Redis server as errors name it (the URL without its credentials).
    target: String,
    keys: Keys,
    /// This process's lease token: tells this process from an earlier one of the same node id.
    token: String,
    client: redis::Client,
    conn: ConnectionManager,
    scripts: Scripts,
    /// Node subscriptions, channel to count. Changed only under `pubsub`'s lock.
    counts: Mutex<HashMap<String, usize>>,
    /// The pub/sub connection's command half; `None` while it is down. Held across a
    /// (un)subscribe, so that a reconnect resubscribes exactly the channels counted.
    pubsub: tokio::sync::Mutex<Option<PubSubSink>>,
    sink: OnceLock<Weak<dyn BrokerSink>>,
    /// Who answers other nodes' requests (the server).
    node_sink: OnceLock<Weak<dyn NodeSink>>,
    /// Requests to other nodes awaiting answers: nonce to mailbox.
    asks: Mutex<HashMap<String, tokio::sync::mpsc::Sender<(String, NodeAnswer)>>>,
    /// Canaries in flight: nonce to waiter.
    canaries: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// This node's presence entries, put back if the lease lapsed and a sweeper removed them.
    mine: Mutex<HashMap<(String, SessionId), ClientInfo>>,
    stopped: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Tells the pub/sub reader to drop its connection and open another (the watchdog found
    /// it deaf: half-open after a failover or a cut without reset).
    reset: Arc<tokio::sync::Notify>,
    /// Canary round trips, delivery lag, failures; the server renders them.
    metrics: BrokerMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The client for `config.url`: with `rediss://`, TLS checked against `tls_ca_file` (or the
/// system's roots).
fn open_client(config: &RedisBrokerConfig, target: &str) -> Result<redis::Client, BrokerError> {
    let bad_url = |e: redis::RedisError| BrokerError(format!("bad Redis URL {target:?}: {e}"));
    match &config.tls_ca_file {
        Some(path) if config.is_tls() => {
            let pem = std::fs::read(path).map_err(|e| {
                BrokerError(format!(
                    "cannot read the Redis CA file {}: {e}; tls_ca_file names the PEM file of \
                     the CA that signed Redis's certificate",
                    path.display()
                ))
            })?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(|e| {
                BrokerError(format!(
                    "cannot use {} as the CA for Redis at {target}: {e}",
                    path.display()
                ))
            })
        }
        _ => redis::Client::open(config.url.as_str()).map_err(bad_url),
    }
}

/// Offsets above this are not real (2^53: what the scripts' numbers hold exactly).
const MAX_OFFSET: u64 = 1 << 53;

impl RedisBroker {
    /// Connects to Redis, takes this node's lease (removing the presence a previous process of
    /// the same node id left), opens the pub/sub connection and starts the lease and sweep
    /// task. Fails with a clear error when Redis cannot be reached in `connect_timeout`.
    pub async fn connect(config: RedisBrokerConfig) -> Result<Arc<RedisBroker>, BrokerError> {
        config
            .validate()
            .map_err(|e| BrokerError(format!("bad Redis broker settings: {e}")))?;
        let target = redact(&config.url);
        let client = open_client(&config, &target)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.reconnect_max_delay);
        let unreachable = |e: String| {
            BrokerError(format!(
                "cannot connect to Redis at {target}: {e}; check that it runs and the URL"
            ))
        };
        let conn = tokio::time::timeout(
            config.connect_timeout,
            client.get_connection_manager_with_config(manager),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| unreachable(e.to_string()))?;
        let keys = Keys::new(&config.prefix, &config.node_id);
        let inner = Arc::new(Inner {
            target: target.clone(),
            keys,
            token: new_epoch(),
            client,
            conn,
            scripts: Scripts::new(),
            counts: Mutex::new(HashMap::new()),
            pubsub: tokio::sync::Mutex::new(None),
            sink: OnceLock::new(),
            node_sink: OnceLock::new(),
            asks: Mutex::new(HashMap::new()),
            canaries: Mutex::new(HashMap::new()),
            mine: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            reset: Arc::new(tokio::sync::Notify::new()),
            metrics: BrokerMetrics::new(&config.node_id),
            config,
        });
        let pong: String = inner
            .run(Op::Ping, redis::cmd("PING").query_async(&mut inner.conn()))
            .await?;
        if pong != "PONG" {
            return Err(BrokerError(format!(
                "Redis at {target} answered PING with {pong:?}"
            )));
        }
        // A previous process of this node id is gone (or this one takes its place): its
        // sessions are not there any more.
        let left = inner.sweep(Some(inner.keys.node())).await?;
        if left > 0 {
            tracing::info!(
                node = %inner.config.node_id,
                left,
                "removed the presence a previous process of this node left"
            );
        }
        inner.renew(true).await?;
        let stream = inner.open_pubsub().await?;
        let reader = tokio::spawn(read_pubsub(
            Arc::downgrade(&inner),
            inner.reset.clone(),
            stream,
        ));
        let lease = tokio::spawn(keep_lease(Arc::downgrade(&inner)));
        let watchdog = tokio::spawn(watch_pubsub(Arc::downgrade(&inner)));
        lock(&inner.tasks).extend([
            reader.abort_handle(),
            lease.abort_handle(),
            watchdog.abort_handle(),
        ]);
        tracing::info!(redis = %target, node = %inner.config.node_id, "channel broker on Redis");
        Ok(Arc::new(RedisBroker { inner }))
    }

    /// The settings it runs with.
    pub fn config(&self) -> &RedisBrokerConfig {
        &self.inner.config
    }

    /// The health check: a canary published on this node's own topic must come back through
    /// the pub/sub connection within `command_timeout`. `Err` says which part failed.
    pub async fn ready(&self) -> Result<(), BrokerError> {
        self.inner.canary().await.map_err(|(e, _)| e)
    }

    /// Leaves cleanly: removes this node's presence entries (publishing their leaves) and its
    /// lease, and stops. Later calls fail. Without it, the entries go when the lease expires.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check()?;
        let removed = inner.sweep(Some(inner.keys.node())).await;
        let released: RedisResult<()> = async {
            let mut conn = inner.conn();
            redis::cmd("DEL")
                .arg(inner.keys.lease())
                .query_async(&mut conn)
                .await
        }
        .await;
        self.stop_without_cleanup();
        removed?;
        released.map_err(|e| inner.failed(Op::ReleaseLease, e))
    }

    /// Stops at once, leaving everything in Redis as it is, as if the process had died: the
    /// lease is no longer renewed and every later call fails. For tests and failure drills;
    /// the other nodes remove this node's presence when its lease expires.
    pub fn stop_without_cleanup(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        if let Ok(mut pubsub) = self.inner.pubsub.try_lock() {
            *pubsub = None;
        }
    }
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn check(&self) -> Result<(), BrokerError> {
        if self.stopped.load(Ordering::SeqCst) {
            Err(BrokerError(format!(
                "the Redis broker of node {} was stopped",
                self.config.node_id
            )))
        } else {
            Ok(())
        }
    }

    /// The error of `op` (not counted: [`run`](Self::run) counts what it runs).
    fn failed(&self, op: Op, e: redis::RedisError) -> BrokerError {
        BrokerError(format!(
            "Redis at {} failed to {}: {e}",
            self.target,
            op.what()
        ))
    }

    /// Runs one Redis operation, bounded by `command_timeout`; a failure is counted under
    /// `op`'s label.
    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        self.check()?;
        let result = match tokio::time::timeout(self.config.command_timeout, call).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => self.failed(op, e),
            Err(_) => BrokerError(format!(
                "Redis at {} did not {} within {:?} (command_timeout)",
                self.target,
                op.what(),
                self.config.command_timeout
            )),
        };
        self.metrics.error(op.label());
        Err(result)
    }

    /// Sends a canary through pub/sub. `Err` with `true` when the command went through but the
    /// pub/sub connection did not deliver it: that connection is broken even if it looks open.
    async fn canary(&self) -> Result<(), (BrokerError, bool)> {
        self.check().map_err(|e| (e, false))?;
        let nonce = new_epoch();
        let (tx, rx) = oneshot::channel();
        lock(&self.canaries).insert(nonce.clone(), tx);
        let sent = Instant::now();
        let result = async {
            let receivers: u64 = self
                .run(
                    Op::PublishCanary,
                    redis::cmd("PUBLISH")
                        .arg(self.keys.canary())
                        .arg(&nonce)
                        .query_async(&mut self.conn()),
                )
                .await
                .map_err(|e| (e, false))?;
            if receivers == 0 {
                return Err((
                    BrokerError(format!(
                        "this node's pub/sub connection to Redis at {} is down (reconnecting)",
                        self.target
                    )),
                    true,
                ));
            }
            match tokio::time::timeout(self.config.command_timeout, rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err((
                    BrokerError(format!(
                        "the canary published on Redis at {} did not come back through pub/sub \
                         within {:?}",
                        self.target, self.config.command_timeout
                    )),
                    true,
                )),
            }
        }
        .await;
        lock(&self.canaries).remove(&nonce);
        // A failed PUBLISH was counted by `run`; a canary lost on the way back is counted here.
        if let Err((_, true)) = result {
            self.metrics.error(Op::PublishCanary.label());
        }
        self.metrics.canary(result.is_ok().then(|| sent.elapsed()));
        result
    }

    fn sink(&self) -> Option<Arc<dyn BrokerSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// Removes the presence entries of `node` (escaped), or of every node whose lease expired.
    async fn sweep(&self, node: Option<&str>) -> Result<u64, BrokerError> {
        let mut conn = self.conn();
        let mut call = self.scripts.sweep.prepare_invoke();
        call.arg(self.keys.prefix()).arg(node.unwrap_or(""));
        self.run(Op::Sweep, call.invoke_async(&mut conn)).await
    }

    /// Renews the lease (`take`: whoever holds it); puts this node's presence back if it had
    /// lapsed.
    async fn renew(&self, take: bool) -> Result<(), BrokerError> {
        let mut conn = self.conn();
        let mut call = self.scripts.renew.key(self.keys.lease());
        call.arg(&self.token)
            .arg(millis(self.config.lease_ttl))
            .arg(if take { "1" } else { "0" });
        let state: i64 = self
            .run(Op::RenewLease, call.invoke_async(&mut conn))
            .await?;
        match state {
            1 if !take => {
                tracing::warn!(
                    node = %self.config.node_id,
                    "this node's lease had lapsed (Redis was unreachable or restarted); \
                     putting its presence back"
                );
                self.restore_presence().await
            }
            -1 => Err(BrokerError(format!(
                "another process holds the lease of node id {:?}: two nodes must never share \
                 a node id",
                self.config.node_id
            ))),
            _ => Ok(()),
        }
    }

    /// Puts this node's presence entries back, publishing a join for each that was gone.
    async fn restore_presence(&self) -> Result<(), BrokerError> {
        let entries: Vec<(String, ClientInfo)> = lock(&self.mine)
            .iter()
            .map(|((channel, _), c)| (channel.clone(), c.clone()))
            .collect();
        for (channel, client) in entries {
            if self.add_presence(&channel, &client).await? {
                self.publish_event(&channel, true, &client).await?;
            }
        }
        Ok(())
    }

    /// Adds a presence entry; whether it is new.
    async fn add_presence(&self, channel: &str, client: &ClientInfo) -> Result<bool, BrokerError> {
        let ch = self.keys.channel(channel);
        let mut conn = self.conn();
        let mut call = self.scripts.presence_add.key(&ch.presence);
        call.key(self.keys.node_presence())
            .key(self.keys.nodes())
            .arg(self.keys.presence_field(client.session))
            .arg(payload::encode_client(client))
            .arg(format!("{} {}", client.session, keys::escape(channel)))
            .arg(self.keys.node());
        let new: i64 = self
            .run(Op::AddPresence, call.invoke_async(&mut conn))
            .await?;
        Ok(new == 1)
    }

    async fn publish_event(
        &self,
        channel: &str,
        join: bool,
        client: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let topic = self.keys.channel(channel).topic;
        let event = payload::encode_presence_event(join, client, self.keys.node());
        let op = if join {
            Op::PublishJoin
        } else {
            Op::PublishLeave
        };
        let _: u64 = self
            .run(
                op,
                redis::cmd("PUBLISH")
                    .arg(topic)
                    .arg(event)
                    .query_async(&mut self.conn()),
            )
            .await?;
        Ok(())
    }

    /// Opens the pub/sub connection and subscribes to the canary and every counted channel;
    /// returns its message stream. Call with no (un)subscribe under way: it takes `pubsub`.
    async fn open_pubsub(&self) -> Result<PubSubStream, BrokerError> {
        let mut slot = self.pubsub.lock().await;
        let unreachable = |e: String| {
            BrokerError(format!(
                "cannot open the pub/sub connection to Redis at {}: {e}",
                self.target
            ))
        };
        let pubsub =
            tokio::time::timeout(self.config.connect_timeout, self.client.get_async_pubsub())
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "no answer within {:?}",
                        self.config.connect_timeout
                    ))
                })?
                .map_err(|e| unreachable(e.to_string()))?;
        let (mut sink, stream) = pubsub.split();
        self.run(Op::SubscribeCanary, sink.subscribe(self.keys.canary()))
            .await?;
        for topic in [self.keys.commands(), self.keys.own_commands()] {
            self.run(Op::SubscribeRequests, sink.subscribe(topic))
                .await?;
        }
        let channels: Vec<String> = lock(&self.counts).keys().cloned().collect();
        for channel in channels {
            let topic = self.keys.channel(&channel).topic;
            self.run(Op::Resubscribe, sink.subscribe(topic)).await?;
        }
        *slot = Some(sink);
        Ok(stream)
    }

    /// Hands one pub/sub message on.
    fn deliver(&self, topic: &str, bytes: &[u8]) {
        if topic == self.keys.canary() {
            if let Ok(nonce) = std::str::from_utf8(bytes) {
                if let Some(waiter) = lock(&self.canaries).remove(nonce) {
                    let _ = waiter.send(());
                }
            }
            return;
        }
        let Some(channel) = self.keys.channel_of_topic(topic) else {
            return;
        };
        if !lock(&self.counts).contains_key(&channel) {
            return;
        }
        let Some(sink) = self.sink() else {
            return;
        };
        match payload::decode(bytes) {
            Ok(Event::Publication {
                epoch,
                publication,
                stamp,
            }) => {
                if let Some(stamp) = stamp {
                    self.metrics.lag(stamp, now_ms());
                }
                sink.publication(&channel, &epoch, &publication)
            }
            Ok(Event::Join { client, node }) => {
                sink.join(&channel, &client, node == self.keys.node())
            }
            Ok(Event::Leave { client, node }) => {
                sink.leave(&channel, &client, node == self.keys.node())
            }
            Err(e) => {
                // Perhaps a publication: never a silent gap.
                tracing::error!(channel, error = %e, "unreadable message on the channel's topic");
                sink.resync(&channel);
            }
        }
    }
}

/// Reads the pub/sub connection; reopens it when lost, resubscribes, and tells the engine.
async fn read_pubsub(weak: Weak<Inner>, reset: Arc<tokio::sync::Notify>, mut stream: PubSubStream) {
    // As a session's task does: a feed whose messages never stop coming hands its worker to
    // the sessions its fan-out woke at least once per slice.
    let mut turn_began = std::time::Instant::now();
    loop {
        let why = loop {
            if turn_began.elapsed() >= crate::session::engine::SLICE {
                tokio::task::yield_now().await;
                turn_began = std::time::Instant::now();
            }
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        break "lost";
                    };
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let topic = msg.get_channel_name();
                    if topic == inner.keys.commands() || topic == inner.keys.own_commands() {
                        nodes::receive(&inner, msg.get_payload_bytes());
                    } else {
                        inner.deliver(topic, msg.get_payload_bytes());
                    }
                }
                _ = reset.notified() => break "deaf (canaries did not come back)",
            }
        };
        drop(stream);
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        tracing::warn!(redis = %inner.target, why, "pub/sub connection to Redis dropped; reconnecting");
        *inner.pubsub.lock().await = None;
        let mut delay = inner.config.reconnect_delay;
        drop(inner);
        stream = loop {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            match inner.open_pubsub().await {
                Ok(stream) => {
                    let channels: Vec<String> = lock(&inner.counts).keys().cloned().collect();
                    tracing::info!(
                        redis = %inner.target,
                        channels = channels.len(),
                        "pub/sub connection to Redis back; channels resubscribed"
                    );
                    // Before anything on the new connection is read: the engine learns of
                    // the gap before any publication after it.
                    if let Some(sink) = inner.sink() {
                        for channel in &channels {
                            sink.resync(channel);
                        }
                    }
                    break stream;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "pub/sub reconnection failed");
                    delay = (delay * 2).min(inner.config.reconnect_max_delay);
                }
            }
        };
    }
}

/// Renews the lease and sweeps dead nodes' presence, for as long as the broker lives.
async fn keep_lease(weak: Weak<Inner>) {
    let (every, renew_every) = match weak.upgrade() {
        Some(inner) => (
            inner.config.sweep_every.min(inner.config.lease_renew),
            inner.config.lease_renew,
        ),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if renewed.elapsed() + every / 2 >= renew_every {
            match inner.renew(false).await {
                Ok(()) => renewed = Instant::now(),
                Err(e) => tracing::warn!(error = %e, "lease not renewed"),
            }
        }
        match inner.sweep(None).await {
            Ok(0) => {}
            Ok(left) => tracing::info!(left, "removed the presence of nodes whose lease expired"),
            Err(e) => tracing::debug!(error = %e, "sweep failed"),
        }
    }
}

/// How many canaries in a row may get lost before the pub/sub connection is reopened.
const DEAF_AFTER: u32 = 2;

/// Sends a canary every `lease_renew`; when the commands work but the canaries do not come
/// back, the pub/sub connection is deaf (half-open): the reader reopens it.
async fn watch_pubsub(weak: Weak<Inner>) {
    let every = match weak.upgrade() {
        Some(inner) => inner.config.lease_renew,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost = 0;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        match inner.canary().await {
            Ok(()) => lost = 0,
            Err((_, true)) => {
                lost += 1;
                // While the reader reconnects there is no sink; it needs no push then.
                let connected = inner.pubsub.try_lock().map_or(true, |p| p.is_some());
                if lost >= DEAF_AFTER && connected {
                    tracing::warn!(
                        redis = %inner.target,
                        "the pub/sub connection delivers nothing (canaries lost); reopening it"
                    );
                    inner.reset.notify_waiters();
                    lost = 0;
                }
            }
            // Redis itself is unreachable: nothing to tell about the pub/sub connection.
            Err((_, false)) => lost = 0,
        }
    }
}

/// Reads the history script's answer.
fn parse_history(value: Value) -> Result<History, String> {
    let Value::Array(items) = value else {
        return Err(format!("expected an array, got {value:?}"));
    };
    let text = |v: &Value| -> Result<Vec<u8>, String> {
        match v {
            Value::BulkString(b) => Ok(b.clone()),
            Value::SimpleString(s) => Ok(s.clone().into_bytes()),
            other => Err(format!("expected a string, got {other:?}")),
        }
    };
    let int = |v: &Value| -> Result<u64, String> {
        match v {
            Value::Int(n) => u64::try_from(*n).map_err(|_| format!("negative number {n}")),
            other => Err(format!("expected a number, got {other:?}")),
        }
    };
    if items.len() < 3 || (items.len() - 3) % 3 != 0 {
        return Err(format!("{} fields", items.len()));
    }
    let epoch = String::from_utf8(text(&items[0])?).map_err(|_| "epoch not UTF-8".to_string())?;
    let top = int(&items[1])?;
    let first_kept = int(&items[2])?;
    let publications = items[3..]
        .chunks(3)
        .map(|c| {
            Ok(Publication {
                offset: int(&c[0])?,
                user: String::from_utf8(text(&c[1])?).map_err(|_| "user not UTF-8".to_string())?,
                data: Bytes::from(text(&c[2])?),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(History {
        top: Position { epoch, offset: top },
        first_kept,
        publications,
    })
}

#[async_trait]
impl Broker for RedisBroker {
    fn attach(&self, sink: Weak<dyn BrokerSink>) {
        if self.inner.sink.set(sink).is_err() {
            tracing::error!("RedisBroker attached twice; the first engine keeps it");
        }
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        user: &str,
        history: &HistoryOptions,
    ) -> Result<Position, BrokerError> {
        let inner = &self.inner;
        let ch = inner.keys.channel(channel);
        let mut conn = inner.conn();
        let mut call = inner.scripts.publish.key(&ch.meta);
        call.key(&ch.stream)
            .arg(new_epoch())
            .arg(history.size)
            .arg(millis(history.ttl))
            .arg(millis(history.meta_ttl))
            .arg(user)
            .arg(data.as_ref())
            .arg(&ch.topic)
            .arg(now_ms());
        let (epoch, offset): (String, u64) =
            inner.run(Op::Publish, call.invoke_async(&mut conn)).await?;
        Ok(Position { epoch, offset })
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check()?;
        let topic = inner.keys.channel(channel).topic;
        let op = async {
            let mut slot = inner.pubsub.lock().await;
            let Some(sink) = slot.as_mut() else {
                return Err(BrokerError(format!(
                    "the pub/sub connection to Redis at {} is down (reconnecting)",
                    inner.target
                )));
            };
            if let Some(count) = lock(&inner.counts).get_mut(channel) {
                *count += 1;
                return Ok(());
            }
            // Confirmed by Redis before it returns: every later publication reaches us.
            inner.run(Op::Subscribe, sink.subscribe(&topic)).await?;
            lock(&inner.counts).insert(channel.to_string(), 1);
            Ok(())
        };
        match tokio::time::timeout(inner.config.command_timeout * 2, op).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError(format!(
                "subscribing to {channel:?} on Redis at {} took longer than {:?}",
                inner.target,
                inner.config.command_timeout * 2
            ))),
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check()?;
        let topic = inner.keys.channel(channel).topic;
        let op = async {
            let mut slot = inner.pubsub.lock().await;
            {
                let mut counts = lock(&inner.counts);
                match counts.get_mut(channel) {
                    Some(count) if *count > 1 => {
                        *count -= 1;
                        return Ok(());
                    }
                    Some(_) => {
                        counts.remove(channel);
                    }
                    None => return Ok(()),
                }
            }
            // Messages still on their way are dropped: the channel is no longer counted.
            match slot.as_mut() {
                Some(sink) => inner.run(Op::Unsubscribe, sink.unsubscribe(&topic)).await,
                None => Ok(()),
            }
        };
        match tokio::time::timeout(inner.config.command_timeout * 2, op).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError(format!(
                "unsubscribing from {channel:?} on Redis at {} took longer than {:?}",
                inner.target,
                inner.config.command_timeout * 2
            ))),
        }
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        history: &HistoryOptions,
    ) -> Result<History, BrokerError> {
        let inner = &self.inner;
        let ch = inner.keys.channel(channel);
        let mut conn = inner.conn();
        let mut call = inner.scripts.history.key(&ch.meta);
        call.key(&ch.stream)
            .arg(new_epoch())
            .arg(after.map_or(String::new(), |a| a.min(MAX_OFFSET).to_string()))
            .arg(limit)
            .arg(millis(history.ttl))
            .arg(millis(history.meta_ttl));
        let value: Value = inner
            .run(Op::ReadHistory, call.invoke_async(&mut conn))
            .await?;
        parse_history(value).map_err(|e| {
            BrokerError(format!(
                "Redis at {} answered the history of {channel:?} oddly: {e}",
                inner.target
            ))
        })
    }

    async fn presence_add(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check()?;
        lock(&inner.mine).insert((channel.to_string(), client.session), client.clone());
        inner.add_presence(channel, client).await.map(|_| ())
    }

    async fn presence_remove(&self, channel: &str, session: SessionId) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check()?;
        lock(&inner.mine).remove(&(channel.to_string(), session));
        let ch = inner.keys.channel(channel);
        let mut conn = inner.conn();
        let mut call = inner.scripts.presence_remove.key(&ch.presence);
        call.key(inner.keys.node_presence())
            .arg(inner.keys.presence_field(session))
            .arg(format!("{session} {}", keys::escape(channel)));
        let _: i64 = inner
            .run(Op::RemovePresence, call.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let inner = &self.inner;
        let key = inner.keys.channel(channel).presence;
        let entries: Vec<Vec<u8>> = inner
            .run(
                Op::ReadPresence,
                redis::cmd("HVALS").arg(key).query_async(&mut inner.conn()),
            )
            .await?;
        let mut clients: Vec<ClientInfo> = entries
            .iter()
            .filter_map(|e| match payload::decode_client(e) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(channel, error = %e, "unreadable presence entry skipped");
                    None
                }
            })
            .collect();
        clients.sort_by_key(|c| (c.since, c.session));
        Ok(clients)
    }

    async fn publish_join(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        self.inner.publish_event(channel, true, client).await
    }

    async fn publish_leave(&self, channel: &str, client: &ClientInfo) -> Result<(), BrokerError> {
        self.inner.publish_event(channel, false, client).await
    }

    fn node_id(&self) -> Option<&str> {
        Some(&self.inner.config.node_id)
    }

    fn attach_node(&self, node: Weak<dyn NodeSink>) {
        if self.inner.node_sink.set(node).is_err() {
            tracing::error!("RedisBroker's node attached twice; the first server keeps it");
        }
    }

    async fn ask_nodes(
        &self,
        to: Option<&str>,
        request: &NodeRequest,
    ) -> Result<NodeAnswers, BrokerError> {
        nodes::ask(&self.inner, to, request).await
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        RedisBroker::ready(self).await
    }

    fn metrics(&self) -> Option<BrokerMetrics> {
        Some(self.inner.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_answers_are_read_and_odd_ones_refused() {
        let ok = Value::Array(vec![
            Value::BulkString(b"ep".to_vec()),
            Value::Int(5),
            Value::Int(4),
            Value::Int(4),
            Value::BulkString(b"alice".to_vec()),
            Value::BulkString(vec![0, 1]),
            Value::Int(5),
            Value::BulkString(vec![]),
            Value::BulkString(vec![]),
        ]);
        let h = parse_history(ok).unwrap();
        assert_eq!(h.top.to_string(), "ep:5");
        assert_eq!(h.first_kept, 4);
        assert_eq!(h.publications.len(), 2);
        assert_eq!(h.publications[0].user, "alice");
        assert_eq!(&h.publications[0].data[..], &[0, 1]);
        assert!(parse_history(Value::Int(1)).is_err());
        assert!(parse_history(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(parse_history(Value::Array(vec![
            Value::BulkString(b"e".to_vec()),
            Value::Int(-1),
            Value::Int(0)
        ]))
        .unwrap_err()
        .contains("negative"));
    }
}
