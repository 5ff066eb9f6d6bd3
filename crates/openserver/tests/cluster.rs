//! Channels on Redis (`RedisBroker`): several servers in this process share one real
//! `redis-server` and act as one service. Publications cross nodes in order, a client
//! recovers on another node what it missed, presence and join/leave span the nodes, a dead
//! node's sessions leave presence within 10 s (and a live node whose lease lapsed puts its
//! own back), a lost pub/sub connection is reopened and its gap filled from history, and a
//! Redis outage is refused plainly and never leaves a silent gap; server code on any node
//! pushes to a session, a user or everyone, lists and kicks sessions on every node. The
//! broker's contract is also checked on its own. Each test starts its own Redis (see `support/redis.rs`).

mod support;

use bytes::Bytes;
use openserver::channels::{
    Broker, BrokerSink, ChannelItem, ChannelSubscription, ChannelsClient, ChannelsConfig,
    ClientInfo, Gap, HistoryOptions, Position, Publication, Recovery, RedisBroker,
    RedisBrokerConfig,
};
use openserver::client::{Client, ClientConfig, Incoming};
use openserver::session::CloseReason;
use openserver::wire::Frame;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::harness::{config, start_with, TestServer, ALICE, BOB, WAIT};
use support::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// One server on the shared Redis.
struct Node {
    server: TestServer,
    broker: Arc<RedisBroker>,
}

fn broker_config(redis: &RedisServer, id: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        node_id: id.into(),
        command_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        reconnect_delay: Duration::from_millis(100),
        reconnect_max_delay: Duration::from_millis(500),
        ..RedisBrokerConfig::new(redis.url())
    }
}

async fn node_with(config_: RedisBrokerConfig, channels: ChannelsConfig) -> Node {
    let broker = RedisBroker::connect(config_)
        .await
        .expect("connect to Redis");
    let shared = broker.clone();
    let server = start_with(config(), move |b| {
        b.channels(channels).channel_broker(shared)
    })
    .await;
    Node { server, broker }
}

async fn node(redis: &RedisServer, id: &str, channels: ChannelsConfig) -> Node {
    node_with(broker_config(redis, id), channels).await
}

fn join_leave() -> ChannelsConfig {
    let mut config = ChannelsConfig::default();
    config.default.join_leave = true;
    config
}

async fn login(node: &Node, (user, password): (&str, &str)) -> (Client, ChannelsClient) {
    let client = Client::connect(node.server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    client.authenticate_db(user, password).await.unwrap();
    let channels = client.channels();
    (client, channels)
}

async fn next(sub: &mut ChannelSubscription) -> ChannelItem {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an item in time")
        .expect("the subscription goes on")
}

/// The next publication's (offset, data), failing on anything else.
async fn publication(sub: &mut ChannelSubscription) -> (u64, String) {
    match next(sub).await {
        ChannelItem::Publication(p) => (p.offset, String::from_utf8(p.data.to_vec()).unwrap()),
        other => panic!("expected a publication, got {other:?}"),
    }
}

#[tokio::test]
async fn publications_cross_nodes_in_order() {
    let Some(redis) = RedisServer::start("publications_cross_nodes_in_order").await else {
        return;
    };
    let a = node(&redis, "a", ChannelsConfig::default()).await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    a.broker.ready().await.unwrap();
    b.broker.ready().await.unwrap();
    let (_ca, alice) = login(&a, ALICE).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_a = alice.subscribe("lobby").await.unwrap();
    let mut on_b = bob.subscribe("lobby").await.unwrap();
    // Publishers on both nodes, clients and server code, interleaved.
    for n in 1..=30u64 {
        let data = n.to_string();
        let position = match n % 3 {
            0 => alice.publish("lobby", data).await.unwrap(),
            1 => bob.publish("lobby", data).await.unwrap(),
            _ => a.server.handle.publish("lobby", data).await.unwrap(),
        };
        assert_eq!(position.offset, n);
    }
    for sub in [&mut on_a, &mut on_b] {
        for n in 1..=30u64 {
            assert_eq!(publication(sub).await, (n, n.to_string()));
        }
    }
    a.server.handle.publish("lobby", "31").await.unwrap();
    assert_eq!(publication(&mut on_a).await, (31, "31".into()));
    // Many subscribers on one node: one node subscription, each gets everything.
    let (_c2, alice2) = login(&a, ALICE).await;
    let mut second = alice2.subscribe("lobby").await.unwrap();
    drop(on_a);
    b.server.handle.publish("lobby", "32").await.unwrap();
    assert_eq!(publication(&mut second).await, (32, "32".into()));
    assert_eq!(publication(&mut on_b).await.0, 31);
    assert_eq!(publication(&mut on_b).await.0, 32);
}

#[tokio::test]
async fn a_client_recovers_on_another_node_what_it_missed() {
    let Some(redis) = RedisServer::start("a_client_recovers_on_another_node_what_it_missed").await
    else {
        return;
    };
    let a = node(&redis, "a", ChannelsConfig::default()).await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let (client, alice) = login(&b, ALICE).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    a.server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await, (1, "1".into()));
    let seen: Position = sub.position().unwrap();
    // Node B's client goes away; A publishes meanwhile; the client comes back on A.
    drop(sub);
    client.quit().await;
    for n in 2..=4 {
        a.server
            .handle
            .publish("feed", n.to_string())
            .await
            .unwrap();
    }
    let (_client, alice) = login(&a, ALICE).await;
    let mut sub = alice.subscribe_since("feed", Some(seen)).await.unwrap();
    for n in 2..=4u64 {
        assert_eq!(publication(&mut sub).await, (n, n.to_string()));
    }
    b.server.handle.publish("feed", "5").await.unwrap();
    assert_eq!(publication(&mut sub).await, (5, "5".into()));
    // The history is the same on every node.
    let h = b
        .server
        .handle
        .channels()
        .unwrap()
        .history("feed", None, None)
        .await
        .unwrap();
    assert_eq!(h.position.offset, 5);
    assert_eq!(h.publications.len(), 5);
    // A position of an epoch Redis never had is not taken as current.
    let old = Position {
        epoch: "0000000000000000".into(),
        offset: 3,
    };
    let mut other = alice.subscribe_since("other", Some(old)).await.unwrap();
    match next(&mut other).await {
        ChannelItem::Gap(Gap::Unrecoverable { reason, .. }) => {
            assert_eq!(reason, Recovery::EpochChanged)
        }
        other => panic!("expected an unrecoverable gap, got {other:?}"),
    }
}

/// Waits until `node`'s presence of `channel` lists exactly `users` (sorted).
async fn presence_is(node: &Node, channel: &str, users: &[&str]) {
    let channels = node.server.handle.channels().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut now: Vec<String> = channels
            .presence(channel)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.user)
            .collect();
        now.sort();
        if now == users {
            return;
        }
        assert!(Instant::now() < deadline, "presence stayed {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presence_and_join_leave_span_the_nodes() {
    let Some(redis) = RedisServer::start("presence_and_join_leave_span_the_nodes").await else {
        return;
    };
    let a = node(&redis, "a", join_leave()).await;
    let b = node(&redis, "b", join_leave()).await;
    let (_ca, alice) = login(&a, ALICE).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_a = alice.subscribe("room").await.unwrap();
    presence_is(&b, "room", &["alice"]).await;
    let _on_b = bob.subscribe("room").await.unwrap();
    match next(&mut on_a).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's join, got {other:?}"),
    }
    presence_is(&a, "room", &["alice", "bob"]).await;
    // Join and leave come in order with the publications, from either node.
    b.server
        .handle
        .publish("room", "after the join")
        .await
        .unwrap();
    assert_eq!(publication(&mut on_a).await.1, "after the join");
    bob.unsubscribe("room").await.unwrap();
    match next(&mut on_a).await {
        ChannelItem::Leave(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    presence_is(&a, "room", &["alice"]).await;
    presence_is(&b, "room", &["alice"]).await;
}

#[tokio::test]
async fn a_dead_nodes_sessions_leave_presence_within_10_s() {
    let Some(redis) = RedisServer::start("a_dead_nodes_sessions_leave_presence_within_10_s").await
    else {
        return;
    };
    let a = node(&redis, "a", join_leave()).await;
    // Node b runs the default lease settings: the 10 s promise is theirs.
    let b = node_with(
        RedisBrokerConfig {
            node_id: "b".into(),
            ..RedisBrokerConfig::new(redis.url())
        },
        join_leave(),
    )
    .await;
    let (_ca, alice) = login(&a, ALICE).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_a = alice.subscribe("room").await.unwrap();
    let _on_b = bob.subscribe("room").await.unwrap();
    match next(&mut on_a).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's join, got {other:?}"),
    }
    presence_is(&a, "room", &["alice", "bob"]).await;
    // Node b "dies": no cleanup, no more lease renewals.
    b.broker.stop_without_cleanup();
    let died = Instant::now();
    let leave = tokio::time::timeout(Duration::from_secs(10), next(&mut on_a))
        .await
        .expect("bob's leave within 10 s of his node's death");
    match leave {
        ChannelItem::Leave(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    assert!(died.elapsed() < Duration::from_secs(10));
    presence_is(&a, "room", &["alice"]).await;
    // The dead node's broker refuses plainly.
    let e = b.broker.ready().await.unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
}

#[tokio::test]
async fn a_lost_pubsub_connection_is_reopened_and_the_gap_filled_from_history() {
    let Some(redis) = RedisServer::start("a_lost_pubsub_connection_is_reopened").await else {
        return;
    };
    // A waits a whole second before reconnecting: publications in between miss it for sure.
    let a = node_with(
        RedisBrokerConfig {
            reconnect_delay: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_secs(1),
            ..broker_config(&redis, "a")
        },
        ChannelsConfig::default(),
    )
    .await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let (_ca, alice) = login(&a, ALICE).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    b.server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await, (1, "1".into()));
    // Redis drops every pub/sub connection (as it does to a subscriber over its output
    // buffer limit).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "{killed} pub/sub connections killed");
    for n in 2..=5 {
        b.server
            .handle
            .publish("feed", n.to_string())
            .await
            .unwrap();
    }
    // Filled from the history once A is back, in order, then live again.
    for n in 2..=5u64 {
        assert_eq!(publication(&mut sub).await, (n, n.to_string()));
    }
    b.server.handle.publish("feed", "6").await.unwrap();
    assert_eq!(publication(&mut sub).await, (6, "6".into()));
    a.broker.ready().await.unwrap();
    let metrics = a.server.handle.metrics().encode_prometheus();
    assert!(
        metrics
            .contains("openserver_channel_gaps_total{namespace=\"default\",outcome=\"filled\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_redis_outage_is_refused_plainly_and_never_leaves_a_silent_gap() {
    let Some(mut redis) = RedisServer::start("a_redis_outage_is_refused_plainly").await else {
        return;
    };
    let a = node(&redis, "a", ChannelsConfig::default()).await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let (_ca, alice) = login(&a, ALICE).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    b.server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await, (1, "1".into()));
    let seen = sub.position().unwrap();

    redis.stop();
    // Refused with a clear error, quickly (bounded by command_timeout), from server code and
    // from a client alike.
    let started = Instant::now();
    let e = b.server.handle.publish("feed", "lost").await.unwrap_err();
    assert!(e.to_string().contains("Redis"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = bob.publish("feed", "lost").await.unwrap_err();
    assert!(e.to_string().contains("Redis"), "{e}");
    assert!(a.broker.ready().await.is_err());

    redis.restart().await;
    // The nodes find Redis again by themselves.
    let deadline = Instant::now() + Duration::from_secs(20);
    let position = loop {
        match b.server.handle.publish("feed", "after").await {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    while a.broker.ready().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "node a's pub/sub never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis lost the history (a new epoch): alice cannot get what she missed, and she is told.
    assert_ne!(position.epoch, seen.epoch);
    match next(&mut sub).await {
        ChannelItem::Ended(reason) => {
            assert!(reason.contains("broker was interrupted"), "{reason}")
        }
        other => panic!("expected the subscription's end, got {other:?}"),
    }
    let metrics = a.server.handle.metrics().encode_prometheus();
    assert!(
        metrics
            .contains("openserver_channel_gaps_total{namespace=\"default\",outcome=\"ended\"} 1"),
        "{metrics}"
    );
    // Subscribing again from her last position tells her what was lost, then goes on live.
    let mut sub = alice.subscribe_since("feed", Some(seen)).await.unwrap();
    match next(&mut sub).await {
        ChannelItem::Gap(Gap::Unrecoverable { reason, .. }) => {
            assert_eq!(reason, Recovery::EpochChanged)
        }
        other => panic!("expected an unrecoverable gap, got {other:?}"),
    }
    bob.publish("feed", "live").await.unwrap();
    assert_eq!(
        publication(&mut sub).await,
        (position.offset + 1, "live".into())
    );
}

/// What a broker delivered, as lines.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<String>>);

impl BrokerSink for Seen {
    fn publication(&self, channel: &str, _epoch: &str, p: &Publication) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{channel} {}", p.offset));
    }
    fn join(&self, channel: &str, c: &ClientInfo, here: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{channel} join {} {here}", c.user));
    }
    fn leave(&self, channel: &str, c: &ClientInfo, here: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{channel} leave {} {here}", c.user));
    }
    fn resync(&self, channel: &str) {
        self.0.lock().unwrap().push(format!("{channel} resync"));
    }
}

#[tokio::test]
async fn the_broker_numbers_keeps_and_delivers_as_the_contract_says() {
    let Some(redis) = RedisServer::start("the_broker_numbers_keeps_and_delivers").await else {
        return;
    };
    let broker = RedisBroker::connect(broker_config(&redis, "solo"))
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let sink: Arc<dyn BrokerSink> = seen.clone();
    broker.attach(Arc::downgrade(&sink));
    let keep3 = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    };
    // Two subscriptions, one node subscription.
    broker.subscribe("a").await.unwrap();
    broker.subscribe("a").await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let numsub: (String, u64) = redis::cmd("PUBSUB")
        .arg(&["NUMSUB", "openserver:ch:a:pub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(numsub.1, 1);
    let mut epoch = None;
    for n in 1..=5u64 {
        let p = broker
            .publish("a", Bytes::from(vec![n as u8]), "alice", &keep3)
            .await
            .unwrap();
        assert_eq!(p.offset, n);
        assert_eq!(epoch.get_or_insert(p.epoch.clone()), &p.epoch);
    }
    broker.publish("b", Bytes::new(), "", &keep3).await.unwrap();
    let h = broker.history("a", Some(1), 10, &keep3).await.unwrap();
    assert_eq!(h.top.offset, 5);
    assert_eq!(h.first_kept, 3);
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(h.publications[0].user, "alice");
    assert_eq!(&h.publications[2].data[..], &[5]);
    // The canary follows everything published before it on the same connection.
    broker.ready().await.unwrap();
    assert_eq!(
        *seen.0.lock().unwrap(),
        ["a 1", "a 2", "a 3", "a 4", "a 5"],
        "b was never subscribed"
    );
    broker.unsubscribe("a").await.unwrap();
    broker.publish("a", Bytes::new(), "", &keep3).await.unwrap();
    broker.ready().await.unwrap();
    assert_eq!(
        seen.0.lock().unwrap().last().unwrap(),
        "a 6",
        "still one left"
    );
    broker.unsubscribe("a").await.unwrap();
    broker.publish("a", Bytes::new(), "", &keep3).await.unwrap();
    broker.ready().await.unwrap();
    assert_eq!(seen.0.lock().unwrap().last().unwrap(), "a 6", "none left");

    // Size 0 keeps nothing but still numbers.
    let none = HistoryOptions { size: 0, ..keep3 };
    broker.publish("z", Bytes::new(), "", &none).await.unwrap();
    let p = broker.publish("z", Bytes::new(), "", &none).await.unwrap();
    assert_eq!(p.offset, 2);
    let h = broker.history("z", None, 10, &none).await.unwrap();
    assert_eq!((h.top, h.first_kept, h.publications.len()), (p, 3, 0));

    // Publications expire after ttl, the epoch after meta_ttl.
    let short = HistoryOptions {
        size: 10,
        ttl: Duration::from_millis(300),
        meta_ttl: Duration::from_millis(1500),
    };
    let first = broker.publish("t", Bytes::new(), "", &short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = broker.history("t", None, 10, &short).await.unwrap();
    assert_eq!(h.top, first, "the epoch outlives its publications");
    assert!(h.publications.is_empty());
    assert_eq!(h.first_kept, 2);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let again = broker.publish("t", Bytes::new(), "", &short).await.unwrap();
    assert_ne!(again.epoch, first.epoch);
    assert_eq!(again.offset, 1);

    // Presence per session; joins and leaves on the channel's topic, marked as this node's.
    broker.subscribe("p").await.unwrap();
    let c = |session, user: &str| ClientInfo {
        user: user.into(),
        session,
        since: session,
    };
    broker.presence_add("p", &c(1, "alice")).await.unwrap();
    broker.presence_add("p", &c(2, "bob")).await.unwrap();
    broker.presence_add("p", &c(2, "bob")).await.unwrap();
    assert_eq!(broker.presence("p").await.unwrap().len(), 2);
    broker.presence_remove("p", 1).await.unwrap();
    assert_eq!(broker.presence("p").await.unwrap(), vec![c(2, "bob")]);
    broker.publish_join("p", &c(2, "bob")).await.unwrap();
    broker.publish_leave("p", &c(2, "bob")).await.unwrap();
    broker.ready().await.unwrap();
    let lines = seen.0.lock().unwrap().clone();
    assert_eq!(
        lines[lines.len() - 2..],
        ["p join bob true", "p leave bob true"]
    );
    // A clean shutdown takes the node's presence along.
    broker.shutdown().await.unwrap();
    let left: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg("openserver:ch:p:presence")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty());
    assert!(broker.publish("a", Bytes::new(), "", &keep3).await.is_err());
}

#[tokio::test]
async fn a_node_whose_lease_lapsed_puts_its_presence_back() {
    let Some(redis) = RedisServer::start("a_node_whose_lease_lapsed_puts_its_presence_back").await
    else {
        return;
    };
    let a = node(&redis, "a", join_leave()).await;
    let b = node(&redis, "b", join_leave()).await;
    let (_ca, alice) = login(&a, ALICE).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_b = bob.subscribe("room").await.unwrap();
    let _on_a = alice.subscribe("room").await.unwrap();
    match next(&mut on_b).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "alice"),
        other => panic!("expected alice's join, got {other:?}"),
    }
    presence_is(&b, "room", &["alice", "bob"]).await;
    // As if node a had stalled for longer than its lease: the lease gone, and a sweeper
    // having removed alice's entry. Node a, renewing, finds its lease gone and puts her back.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("openserver:ch:room:presence")
        .query_async(&mut conn)
        .await
        .unwrap();
    let alices: Vec<&String> = fields.iter().filter(|f| f.starts_with("a/")).collect();
    assert_eq!(alices.len(), 1, "{fields:?}");
    let removed: (u64, u64) = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg("openserver:node:a:lease")
        .cmd("HDEL")
        .arg("openserver:ch:room:presence")
        .arg(alices[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, (1, 1));
    match next(&mut on_b).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "alice"),
        other => panic!("expected alice's join, got {other:?}"),
    }
    presence_is(&b, "room", &["alice", "bob"]).await;
}

/// A TCP proxy to Redis that can turn the pub/sub connections open at that moment deaf: kept
/// open, nothing forwarded either way, as a half-open connection after a failover or a cut
/// without reset. Connections opened later work.
struct DeafProxy {
    port: u16,
    /// Subscribed connections with an id below this are deaf.
    cutoff: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl DeafProxy {
    async fn start(redis_port: u16) -> DeafProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cutoff = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (c, n) = (cutoff.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let id = n.fetch_add(1, Ordering::SeqCst);
                let subscribed = Arc::new(AtomicBool::new(false));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let deaf = {
                    let (c, s) = (c.clone(), subscribed.clone());
                    move || s.load(Ordering::SeqCst) && id < c.load(Ordering::SeqCst)
                };
                tokio::spawn(pump(cr, sw, Some(subscribed), deaf.clone()));
                tokio::spawn(pump(sr, cw, None, deaf));
            }
        });
        DeafProxy { port, cutoff, next }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn deafen_open_pubsub_connections(&self) {
        self.cutoff
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mark: Option<Arc<AtomicBool>>,
    deaf: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(mark) = &mark {
            if buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                mark.store(true, Ordering::SeqCst);
            }
        }
        if !deaf() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_deaf_pubsub_connection_is_found_by_its_canaries_and_reopened() {
    let Some(redis) = RedisServer::start("a_deaf_pubsub_connection_is_found").await else {
        return;
    };
    let proxy = DeafProxy::start(redis.port).await;
    let a = node_with(
        RedisBrokerConfig {
            url: proxy.url(),
            lease_renew: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(2),
            ..broker_config(&redis, "a")
        },
        ChannelsConfig::default(),
    )
    .await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let (_ca, alice) = login(&a, ALICE).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    b.server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await, (1, "1".into()));
    proxy.deafen_open_pubsub_connections();
    for n in 2..=4 {
        b.server
            .handle
            .publish("feed", n.to_string())
            .await
            .unwrap();
    }
    // Nothing closed the connection: only the lost canaries tell, then the gap is filled.
    for n in 2..=4u64 {
        assert_eq!(publication(&mut sub).await, (n, n.to_string()));
    }
    b.server.handle.publish("feed", "5").await.unwrap();
    assert_eq!(publication(&mut sub).await, (5, "5".into()));
    a.broker.ready().await.unwrap();
}

/// The next packet a raw push subscription receives.
async fn pushed(sub: &mut openserver::client::Subscription) -> Bytes {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Some(Incoming::Packet(body))) => body,
        other => panic!("expected a pushed packet, got {other:?}"),
    }
}

#[tokio::test]
async fn server_code_on_any_node_pushes_lists_and_kicks_on_every_node() {
    let Some(redis) = RedisServer::start("cluster_wide_operations").await else {
        return;
    };
    let a = node(&redis, "a", ChannelsConfig::default()).await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let c = node(&redis, "c", ChannelsConfig::default()).await;
    for n in [&a, &b, &c] {
        n.broker.ready().await.unwrap();
    }
    let (alice_a, _) = login(&a, ALICE).await;
    let (alice_b, _) = login(&b, ALICE).await;
    let (bob_c, _) = login(&c, BOB).await;
    const PUSH: u16 = 0x0300;
    let mut on_alice_a = alice_a.subscribe(PUSH);
    let mut on_alice_b = alice_b.subscribe(PUSH);
    let mut on_bob_c = bob_c.subscribe(PUSH);
    let frame = |s: &'static str| Frame::new(PUSH, s.as_bytes());
    let cluster_a = a.server.handle.cluster();
    let cluster_c = c.server.handle.cluster();
    assert_eq!(cluster_a.node_id(), Some("a"));

    // A push to alice from the node where she is not reaches both her sessions, elsewhere.
    assert_eq!(
        cluster_c.send_to_user("alice", frame("for alice")).await,
        Ok(2)
    );
    assert_eq!(pushed(&mut on_alice_a).await, "for alice");
    assert_eq!(pushed(&mut on_alice_b).await, "for alice");
    // Everyone, from node a; bob's first packet is this one: he got no push for alice.
    assert_eq!(cluster_a.broadcast(frame("for all")).await, Ok(3));
    for sub in [&mut on_alice_a, &mut on_alice_b, &mut on_bob_c] {
        assert_eq!(pushed(sub).await, "for all");
    }

    // Every node's sessions, from any node, with their node.
    let listed = b.server.handle.cluster().sessions().await.unwrap();
    assert_eq!(listed.unanswered, 0);
    let mut seen: Vec<(&str, &str)> = listed
        .sessions
        .iter()
        .map(|s| (s.node.as_str(), s.session.user.as_str()))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [("a", "alice"), ("b", "alice"), ("c", "bob")]);
    let id_on = |node: &str| {
        listed
            .sessions
            .iter()
            .find(|s| s.node == node)
            .map(|s| s.session.id)
            .unwrap()
    };

    // One session of another node.
    assert_eq!(
        cluster_a.send_to("c", id_on("c"), frame("for bob")).await,
        Ok(true)
    );
    assert_eq!(pushed(&mut on_bob_c).await, "for bob");
    assert_eq!(
        cluster_a.send_to("c", 9999, frame("nobody")).await,
        Ok(false)
    );
    let err = cluster_a
        .send_to("nope", 1, frame("x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"nope\"") && err.contains("not connected"),
        "{err}"
    );

    // Kick alice's session on b from node a: her client hears QUIT.
    assert_eq!(cluster_a.kick("b", id_on("b")).await, Ok(true));
    let reason = tokio::time::timeout(WAIT, alice_b.closed()).await;
    assert_eq!(
        reason.expect("alice's client on b closes"),
        CloseReason::Quit
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let now = cluster_c.sessions().await.unwrap();
        if now.sessions.iter().all(|s| s.node != "b") {
            break;
        }
        assert!(Instant::now() < deadline, "the kicked session stays listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster_a.kick("b", id_on("b")).await, Ok(false));
    // Every session of a user, from a node where the user has none.
    assert_eq!(
        cluster_c.kick_user("alice").await,
        Ok(vec![("a".to_string(), id_on("a"))])
    );
    let reason = tokio::time::timeout(WAIT, alice_a.closed()).await;
    assert_eq!(
        reason.expect("alice's client on a closes"),
        CloseReason::Quit
    );

    // A node that is gone is not waited for: the others still answer in full. (Until Redis
    // has seen c's connections close, it still counts c as a listener, and an answer
    // reports c unanswered: that is the documented "Incomplete", so the loop waits it out.)
    c.broker.stop_without_cleanup();
    let deadline = Instant::now() + WAIT;
    loop {
        let now = cluster_a.sessions().await.unwrap();
        if now.sessions.iter().all(|s| s.node != "c") && now.unanswered == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stopped node stays listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `name` (labels included) in a rendered scrape, if there is one.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn every_node_shows_its_broker_round_trip_lag_and_id() {
    let Some(redis) = RedisServer::start("every_node_shows_its_broker_round_trip_lag_and_id").await
    else {
        return;
    };
    let a = node(&redis, "a", ChannelsConfig::default()).await;
    let b = node(&redis, "b", ChannelsConfig::default()).await;
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_b = bob.subscribe("lobby").await.unwrap();
    for n in 1..=5u64 {
        a.server
            .handle
            .publish("lobby", n.to_string())
            .await
            .unwrap();
    }
    for n in 1..=5u64 {
        assert_eq!(publication(&mut on_b).await, (n, n.to_string()));
    }
    a.server.handle.ready().await.unwrap();
    b.server.handle.ready().await.unwrap();
    let text = b.server.handle.metrics().encode_prometheus();
    let lagged = sample(&text, "openserver_broker_lag_seconds_count")
        .unwrap_or_else(|| panic!("lag missing from\n{text}"));
    assert!(lagged >= 5.0, "{lagged} publications lagged:\n{text}");
    for (node, text) in [
        ("a", a.server.handle.metrics().encode_prometheus()),
        ("b", text),
    ] {
        let trips = sample(&text, "openserver_broker_round_trip_seconds_count")
            .unwrap_or_else(|| panic!("round trips missing from\n{text}"));
        assert!(trips >= 1.0, "{trips} round trips:\n{text}");
        assert_eq!(sample(&text, "openserver_broker_up"), Some(1.0), "{text}");
        let info = format!("openserver_node_info{{node=\"{node}\"}}");
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "openserver_broker_errors_total{op=\"publish\"}"),
            Some(0.0),
            "{text}"
        );
    }
    // OpenMetrics too: the histogram under its own name.
    let open = b.server.handle.metrics().encode_openmetrics();
    assert!(
        open.contains("# TYPE openserver_broker_lag_seconds histogram\n"),
        "{open}"
    );
    // A single server (its broker in-process) shows no broker metrics.
    let single = start_with(config(), |b| b.channels(ChannelsConfig::default())).await;
    let text = single.handle.metrics().encode_prometheus();
    assert!(
        !text.contains("openserver_broker") && !text.contains("openserver_node_info"),
        "{text}"
    );
    assert!(
        text.contains("openserver_channel_publications_total"),
        "{text}"
    );
}

#[tokio::test]
async fn nodes_share_channels_over_tls_to_redis_and_a_wrong_ca_is_refused() {
    let Some(redis) = RedisServer::start_tls("redis_over_tls").await else {
        return;
    };
    let tls = |id: &str| RedisBrokerConfig {
        tls_ca_file: redis.tls_ca.clone(),
        ..broker_config(&redis, id)
    };
    assert!(redis.url().starts_with("rediss://"));
    let a = node_with(tls("a"), ChannelsConfig::default()).await;
    let b = node_with(tls("b"), ChannelsConfig::default()).await;
    a.broker.ready().await.unwrap();
    b.broker.ready().await.unwrap();
    let (_cb, bob) = login(&b, BOB).await;
    let mut on_b = bob.subscribe("lobby").await.unwrap();
    a.server.handle.publish("lobby", "over tls").await.unwrap();
    assert_eq!(publication(&mut on_b).await, (1, "over tls".into()));

    // Another CA: the certificate is refused, and the error says where.
    let other = tempfile::tempdir().unwrap();
    let ca = other.path().join("other-ca.pem");
    let made = openserver::tls::self_signed::generate(&[]).unwrap();
    std::fs::write(&ca, made.ca_pem).unwrap();
    let err = RedisBroker::connect(RedisBrokerConfig {
        tls_ca_file: Some(ca),
        ..broker_config(&redis, "c")
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot connect to Redis at rediss://127.0.0.1:"),
        "{err}"
    );
    // A CA file that is not there.
    let err = RedisBroker::connect(RedisBrokerConfig {
        tls_ca_file: Some(other.path().join("missing.pem")),
        ..broker_config(&redis, "d")
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read the Redis CA file"), "{err}");
}
