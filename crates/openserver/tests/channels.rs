//! Channels (`openserver::channels`) against a real server over 127.0.0.1: subscribe, publish
//! and unsubscribe, namespaces and permissions, presence and join/leave, personal channels,
//! recovery after a reconnect (with a gap the history covers, and one it does not), limits,
//! and a slow subscriber that does not hold up the others.

mod support;

use openserver::app::envelope::{self, Envelope, REQUEST};
use openserver::channels::messages::{codes, Command, Reply};
use openserver::channels::{
    Access, ChannelItem, ChannelSubscription, ChannelsClient, ChannelsConfig, Gap, NamespaceConfig,
    Position, Recovery, CHANNELS_ID,
};
use openserver::client::{Client, ClientConfig, ClientError, ClientEvent, ReconnectPolicy};
use openserver::server::SessionEvent;
use openserver::session::CloseReason;
use openserver::wire::Frame;
use std::time::Duration;
use support::harness::{config, db_login, start_with, TestServer, ALICE, BOB, WAIT};

async fn server(channels: ChannelsConfig) -> TestServer {
    start_with(config(), move |b| b.channels(channels)).await
}

async fn login(server: &TestServer, (user, password): (&str, &str)) -> (Client, ChannelsClient) {
    login_with(server, (user, password), ClientConfig::default()).await
}

async fn login_with(
    server: &TestServer,
    (user, password): (&str, &str),
    config: ClientConfig,
) -> (Client, ChannelsClient) {
    let client = Client::connect(server.addr.to_string(), config)
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

/// The next publication's (offset, data, user), failing on anything else.
async fn publication(sub: &mut ChannelSubscription) -> (u64, String, String) {
    match next(sub).await {
        ChannelItem::Publication(p) => (
            p.offset,
            String::from_utf8(p.data.to_vec()).unwrap(),
            p.user,
        ),
        other => panic!("expected a publication, got {other:?}"),
    }
}

fn code(e: ClientError) -> String {
    match e {
        ClientError::Application { code, .. } => code,
        other => panic!("expected an application error, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribers_get_publications_in_order_until_they_unsubscribe() {
    let mut config = ChannelsConfig::default();
    config.default.join_leave = true;
    let server = server(config).await;
    let mut events = server.handle.events();
    let (_a, alice) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    let mut a = alice.subscribe("lobby").await.unwrap();
    let mut b = bob.subscribe("lobby").await.unwrap();
    let first = bob.publish("lobby", "hi").await.unwrap();
    assert_eq!(first.offset, 1);
    let second = server
        .handle
        .publish("lobby", "from the server")
        .await
        .unwrap();
    assert_eq!(
        second,
        Position {
            offset: 2,
            ..first.clone()
        }
    );
    for sub in [&mut a, &mut b] {
        // Bob's join reaches alice before the publications; skip joins here.
        let mut got = Vec::new();
        while got.len() < 2 {
            match next(sub).await {
                ChannelItem::Publication(p) => got.push((p.offset, p.data.to_vec(), p.user)),
                ChannelItem::Join(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                (1, b"hi".to_vec(), "bob".to_string()),
                (2, b"from the server".to_vec(), String::new())
            ]
        );
    }
    // The event bus saw both subscriptions.
    let mut subscribed = Vec::new();
    while subscribed.len() < 2 {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Ok(SessionEvent::Subscribed { user, channel, .. }) => subscribed.push((user, channel)),
            Ok(_) => {}
            Err(e) => panic!("events: {e}"),
        }
    }
    subscribed.sort();
    assert_eq!(
        subscribed,
        [
            ("alice".into(), "lobby".into()),
            ("bob".into(), "lobby".into())
        ]
    );
    alice.unsubscribe("lobby").await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, a.next()).await.unwrap(), None);
    assert_eq!(
        code(alice.unsubscribe("lobby").await.unwrap_err()),
        codes::NOT_SUBSCRIBED
    );
    bob.publish("lobby", "third").await.unwrap();
    match next(&mut b).await {
        ChannelItem::Leave(who) => assert_eq!(who.user, "alice"),
        other => panic!("expected alice's leave, got {other:?}"),
    }
    assert_eq!(publication(&mut b).await.0, 3);
    let presence = server
        .handle
        .channels()
        .unwrap()
        .presence("lobby")
        .await
        .unwrap();
    let users: Vec<&str> = presence.iter().map(|c| c.user.as_str()).collect();
    assert_eq!(users, ["bob"]);
    let metrics = server.handle.metrics().encode_prometheus();
    assert!(
        metrics.contains("openserver_channel_publications_total{namespace=\"default\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn namespaces_decide_who_subscribes_and_publishes() {
    let mut config = ChannelsConfig::default();
    config.namespaces.insert(
        "news".into(),
        NamespaceConfig {
            publish: Access::Server,
            ..NamespaceConfig::default()
        },
    );
    config.namespaces.insert(
        "ops".into(),
        NamespaceConfig {
            subscribe: Access::Role("admin".into()),
            ..NamespaceConfig::default()
        },
    );
    let server = server(config).await;
    let (_a, alice) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    assert_eq!(
        code(bob.subscribe("ops:alerts").await.unwrap_err()),
        codes::FORBIDDEN
    );
    let mut ops = alice.subscribe("ops:alerts").await.unwrap();
    bob.publish("ops:alerts", "anyone may publish")
        .await
        .unwrap();
    assert_eq!(publication(&mut ops).await.1, "anyone may publish");
    assert_eq!(
        code(bob.subscribe("nope:x").await.unwrap_err()),
        codes::UNKNOWN_NAMESPACE
    );
    assert!(server.handle.publish("nope:x", "x").await.is_err());
    let mut news = bob.subscribe("news:today").await.unwrap();
    assert_eq!(
        code(bob.publish("news:today", "fake").await.unwrap_err()),
        codes::FORBIDDEN
    );
    server.handle.publish("news:today", "real").await.unwrap();
    assert_eq!(
        publication(&mut news).await,
        (1, "real".into(), String::new())
    );
}

#[tokio::test]
async fn presence_lists_sessions_and_joins_and_leaves_are_pushed() {
    let mut config = ChannelsConfig::default();
    config.default.join_leave = true;
    let server = server(config).await;
    let (_a, alice) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    let mut a = alice.subscribe("room").await.unwrap();
    let b = bob.subscribe("room").await.unwrap();
    match next(&mut a).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's join, got {other:?}"),
    }
    let presence = alice.presence("room").await.unwrap();
    let mut users: Vec<&str> = presence.iter().map(|c| c.user.as_str()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(alice.presence_counts("room").await.unwrap(), (2, 2));
    drop(b); // unsubscribes in the background
    match next(&mut a).await {
        ChannelItem::Leave(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    assert_eq!(alice.presence_counts("room").await.unwrap(), (1, 1));
}

#[tokio::test]
async fn a_personal_channel_reaches_only_its_user() {
    let server = server(ChannelsConfig::default()).await;
    let (_a, alice) = login(&server, ALICE).await;
    let (_a2, alice2) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    assert_eq!(
        code(bob.subscribe("#alice").await.unwrap_err()),
        codes::FORBIDDEN
    );
    let mut one = alice.subscribe("#alice").await.unwrap();
    let mut two = alice2.subscribe("#alice").await.unwrap();
    assert_eq!(
        code(bob.publish("#alice", "spoof").await.unwrap_err()),
        codes::FORBIDDEN
    );
    server.handle.publish("#alice", "for alice").await.unwrap();
    assert_eq!(publication(&mut one).await.1, "for alice");
    assert_eq!(publication(&mut two).await.1, "for alice");
}

/// A client whose reconnects wait long enough for the test to publish in between.
fn reconnecting() -> ClientConfig {
    ClientConfig::default().with_reconnect(ReconnectPolicy::new(
        Duration::from_millis(300),
        Duration::from_millis(600),
    ))
}

/// Closes every session of `user` and waits until its client has seen the loss.
async fn drop_connection(server: &TestServer, client: &Client, user: &str) {
    let mut events = client.events();
    for session in server.handle.sessions() {
        if session.user().is_some_and(|u| u.name == user) {
            session.close(CloseReason::Local);
        }
    }
    let lost = async {
        loop {
            if let Ok(ClientEvent::Disconnected(_)) = events.recv().await {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, lost)
        .await
        .expect("the client sees the loss");
}

#[tokio::test]
async fn a_reconnect_recovers_every_missed_publication_in_order() {
    let server = server(ChannelsConfig::default()).await;
    let (client, alice) = login_with(&server, ALICE, reconnecting()).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await.1, "1");
    drop_connection(&server, &client, "alice").await;
    for n in 2..=4 {
        server.handle.publish("feed", n.to_string()).await.unwrap();
    }
    // Recovered by the library on its own, then the live stream goes on.
    for n in 2..=4u64 {
        assert_eq!(
            publication(&mut sub).await,
            (n, n.to_string(), String::new())
        );
    }
    server.handle.publish("feed", "5").await.unwrap();
    assert_eq!(publication(&mut sub).await.0, 5);
    let metrics = server.handle.metrics().encode_prometheus();
    assert!(
        metrics.contains(
            "openserver_channel_recoveries_total{namespace=\"default\",outcome=\"recovered\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reconnect_without_a_gap_recovers_nothing_and_loses_nothing() {
    let server = server(ChannelsConfig::default()).await;
    let (client, alice) = login_with(&server, ALICE, reconnecting()).await;
    let mut sub = alice.subscribe("feed").await.unwrap();
    server.handle.publish("feed", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await.1, "1");
    let mut events = client.events();
    drop_connection(&server, &client, "alice").await;
    let back = async {
        loop {
            if let Ok(ClientEvent::Reconnected) = events.recv().await {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, back).await.unwrap();
    // The resubscribe is under way or done; either way the next publication comes next.
    let wait_subscribed = async {
        while server
            .handle
            .channels()
            .unwrap()
            .presence("feed")
            .await
            .unwrap()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, wait_subscribed).await.unwrap();
    server.handle.publish("feed", "2").await.unwrap();
    assert_eq!(publication(&mut sub).await, (2, "2".into(), String::new()));
}

#[tokio::test]
async fn a_gap_the_history_no_longer_covers_is_reported_as_such() {
    let mut config = ChannelsConfig::default();
    config.namespaces.insert(
        "tiny".into(),
        NamespaceConfig {
            history_size: 2,
            ..NamespaceConfig::default()
        },
    );
    let server = server(config).await;
    let (client, alice) = login_with(&server, ALICE, reconnecting()).await;
    let mut sub = alice.subscribe("tiny:a").await.unwrap();
    server.handle.publish("tiny:a", "1").await.unwrap();
    assert_eq!(publication(&mut sub).await.0, 1);
    drop_connection(&server, &client, "alice").await;
    for n in 2..=5 {
        server
            .handle
            .publish("tiny:a", n.to_string())
            .await
            .unwrap();
    }
    match next(&mut sub).await {
        ChannelItem::Gap(Gap::Unrecoverable {
            reason,
            last_seen,
            resumed_at,
        }) => {
            assert_eq!(reason, Recovery::TooOld);
            assert_eq!(last_seen.offset, 1);
            assert_eq!(resumed_at.offset, 5);
        }
        other => panic!("expected an unrecoverable gap, got {other:?}"),
    }
    server.handle.publish("tiny:a", "6").await.unwrap();
    assert_eq!(publication(&mut sub).await.0, 6);

    // A position of another epoch (a history lost in a restart) is never taken as current.
    let old = Position {
        epoch: "0000000000000000".into(),
        offset: 3,
    };
    let mut other = alice.subscribe_since("tiny:b", Some(old)).await.unwrap();
    match next(&mut other).await {
        ChannelItem::Gap(Gap::Unrecoverable { reason, .. }) => {
            assert_eq!(reason, Recovery::EpochChanged)
        }
        other => panic!("expected an unrecoverable gap, got {other:?}"),
    }
}

#[tokio::test]
async fn limits_refuse_with_their_own_codes() {
    let mut config = ChannelsConfig {
        max_channels_per_session: 2,
        max_channel_name: 12,
        max_publication: 8,
        publishes_per_second: 2,
        ..ChannelsConfig::default()
    };
    config.namespaces.insert(
        "one".into(),
        NamespaceConfig {
            max_subscribers: 1,
            ..NamespaceConfig::default()
        },
    );
    let server = server(config).await;
    let (_a, alice) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    let _x = alice.subscribe("x").await.unwrap();
    let _y = alice.subscribe("one:y").await.unwrap();
    assert_eq!(
        code(alice.subscribe("z").await.unwrap_err()),
        codes::TOO_MANY_CHANNELS
    );
    assert_eq!(
        code(bob.subscribe("one:y").await.unwrap_err()),
        codes::TOO_MANY_SUBSCRIBERS
    );
    assert_eq!(
        code(bob.subscribe("a-very-long-name").await.unwrap_err()),
        codes::BAD_CHANNEL
    );
    assert_eq!(
        code(bob.publish("x", "123456789").await.unwrap_err()),
        codes::TOO_LARGE
    );
    bob.publish("x", "1").await.unwrap();
    bob.publish("x", "2").await.unwrap();
    assert_eq!(
        code(bob.publish("x", "3").await.unwrap_err()),
        codes::RATE_LIMITED
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_and_never_delays_the_others() {
    let mut limits = config();
    limits.limits.outbound_queue = 8;
    let mut channels = ChannelsConfig {
        max_publication: 64 * 1024,
        publishes_per_second: 10_000,
        ..ChannelsConfig::default()
    };
    // The slow session's leave shows that cutting it off also took it out of the channel.
    channels.default.join_leave = true;
    let server = start_with(limits, move |b| b.channels(channels)).await;
    let mut events = server.handle.events();
    // Bob subscribes over raw frames and then never reads again.
    let mut slow = db_login(&server, BOB).await;
    let body = envelope::encode(
        REQUEST,
        1,
        &Command::Subscribe {
            channel: "wide".into(),
            since: None,
        },
    )
    .unwrap();
    slow.send(Frame::new(CHANNELS_ID, body)).await;
    let answer = tokio::time::timeout(WAIT, slow.recv())
        .await
        .unwrap()
        .unwrap();
    let Ok(Envelope::Response { id: 1, body }) = Envelope::decode(&answer.body) else {
        panic!("not an answer: {answer:?}");
    };
    assert!(matches!(
        envelope::decode_value::<Reply>(body).unwrap(),
        Reply::Subscribed(_)
    ));
    let slow_peer = slow.peer_id();
    let (_a, alice) = login(&server, ALICE).await;
    let mut fast = alice.subscribe("wide").await.unwrap();
    // 20 MB in all: far more than the socket buffers and the slow session's queue hold.
    let data = vec![b'x'; 64 * 1024];
    let mut left = false;
    for n in 1..=320u64 {
        server.handle.publish("wide", data.clone()).await.unwrap();
        loop {
            match next(&mut fast).await {
                ChannelItem::Publication(p) => {
                    assert_eq!(p.offset, n);
                    break;
                }
                // The slow session, cut off, leaves the channel.
                ChannelItem::Leave(who) if who.user == "bob" => left = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let closed = async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Closed { peer, reason, .. }) if peer == slow_peer => {
                    return reason
                }
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    };
    let reason = tokio::time::timeout(WAIT, closed).await.unwrap();
    assert_eq!(reason, CloseReason::SlowConsumer);
    if !left {
        match next(&mut fast).await {
            ChannelItem::Leave(who) => assert_eq!(who.user, "bob"),
            other => panic!("expected bob's leave, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn history_and_typed_values() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Tick {
        price: i64,
    }
    let server = server(ChannelsConfig::default()).await;
    let (_a, alice) = login(&server, ALICE).await;
    let mut sub = alice.subscribe("ticks").await.unwrap();
    for price in [10, 11, 12] {
        alice.publish_value("ticks", &Tick { price }).await.unwrap();
    }
    let (position, tick) = tokio::time::timeout(WAIT, sub.next_value::<Tick>())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((position.offset, tick), (1, Tick { price: 10 }));
    let history = alice
        .history("ticks", Some(position.clone()), Some(5))
        .await
        .unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [2, 3]);
    assert_eq!(history.position.offset, 3);
    let stale = Position {
        epoch: "other".into(),
        ..position
    };
    assert_eq!(
        code(alice.history("ticks", Some(stale), None).await.unwrap_err()),
        codes::UNAVAILABLE
    );
}

/// Only alice may join `room:7`; everyone else is refused by the application itself.
struct RoomSeven;

#[openserver::async_trait]
impl openserver::channels::ChannelPolicy for RoomSeven {
    async fn authorize(
        &self,
        user: &openserver::auth::User,
        action: openserver::channels::Action,
        channel: &str,
    ) -> Result<(), String> {
        if channel == "room:7"
            && action == openserver::channels::Action::Subscribe
            && user.name != "alice"
        {
            return Err(format!("{} may not join room 7", user.name));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_application_policy_decides_after_the_rules() {
    let mut config = ChannelsConfig::default();
    config
        .namespaces
        .insert("room".into(), NamespaceConfig::default());
    let server = start_with(support::harness::config(), move |b| {
        b.channels(config).channel_policy(RoomSeven)
    })
    .await;
    let (_a, alice) = login(&server, ALICE).await;
    let (_b, bob) = login(&server, BOB).await;
    let _in = alice.subscribe("room:7").await.unwrap();
    let refused = bob.subscribe("room:7").await.unwrap_err();
    match refused {
        ClientError::Application { code, message, .. } => {
            assert_eq!(code, codes::FORBIDDEN);
            assert!(message.contains("bob may not join room 7"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _other = bob.subscribe("room:8").await.unwrap();
}

#[tokio::test]
async fn position_counts_only_what_the_application_has_read() {
    let server = server(ChannelsConfig::default()).await;
    let (_a, alice) = login(&server, ALICE).await;
    let mut sub = alice.subscribe("lobby").await.unwrap();
    let start = sub.position();
    // The server queues a publisher's own push before the publish's answer: once these
    // return, both publications have reached the client, and neither has been read.
    let first = alice.publish("lobby", "one").await.unwrap();
    let second = alice.publish("lobby", "two").await.unwrap();
    alice.presence("lobby").await.unwrap();
    assert_eq!(sub.position(), start, "nothing read yet");
    assert_eq!(publication(&mut sub).await.1, "one");
    assert_eq!(sub.position(), Some(first));
    assert_eq!(publication(&mut sub).await.1, "two");
    assert_eq!(sub.position(), Some(second));
}

#[tokio::test]
async fn a_server_is_ready_until_it_shuts_down() {
    let server = server(ChannelsConfig::default()).await;
    assert_eq!(server.handle.ready().await, Ok(()));
    server.handle.shutdown();
    assert_eq!(
        server.handle.ready().await,
        Err("shutting down".to_string())
    );
}
