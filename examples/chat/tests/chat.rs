//! Chat on channels end to end: a real server on 127.0.0.1:0 with a SQLite user store, and
//! clients joining rooms with `chat::join`.

use chat::{Room, MAX_TEXT};
use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::channels::{ChannelItem, ChannelsClient};
use openserver::client::{Client, ClientConfig, ClientError, ClientEvent, ReconnectPolicy};
use openserver::server::{Server, ServerConfig, ServerHandle};
use openserver::session::CloseReason;
use openserver::wire::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// The longest any test waits for the server.
const WAIT: Duration = Duration::from_secs(10);
const USERS: [(&str, &str); 3] = [("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

struct Fixture {
    addr: String,
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Small argon2 parameters: the tests are about chat, not hashing.
    let hasher = PasswordHasher::new(HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
    })
    .unwrap();
    let store = SqliteUserStore::open(SqliteUserStore::default_path(dir.path()), hasher).unwrap();
    for (name, password) in USERS {
        store
            .add_user(name, &Secret::new(password), &[])
            .await
            .unwrap();
    }
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .channels(chat::config())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    tokio::spawn(server.run());
    Fixture {
        addr,
        handle,
        _dir: dir,
    }
}

impl Fixture {
    async fn login_with(&self, user: &str, config: ClientConfig) -> (Client, ChannelsClient) {
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let client = timeout(WAIT, Client::connect(&self.addr, config))
            .await
            .unwrap()
            .unwrap();
        client.authenticate_db(user, password).await.unwrap();
        let channels = client.channels();
        (client, channels)
    }

    async fn login(&self, user: &str) -> (Client, ChannelsClient) {
        self.login_with(user, ClientConfig::default()).await
    }
}

async fn join(channels: &ChannelsClient, room: &str) -> Room {
    timeout(WAIT, chat::join(channels, room))
        .await
        .unwrap()
        .unwrap()
}

async fn say(channels: &ChannelsClient, room: &str, text: &str) {
    let channel = chat::channel(room);
    let said = channels.publish(&channel, text.to_owned());
    timeout(WAIT, said).await.unwrap().unwrap();
}

async fn next(room: &mut Room) -> ChannelItem {
    timeout(WAIT, room.messages.next())
        .await
        .expect("timed out waiting for the room")
        .expect("the subscription goes on")
}

/// The next message's (user, text), passing over joins and leaves; a gap fails the test.
async fn said(room: &mut Room) -> (String, String) {
    loop {
        match next(room).await {
            ChannelItem::Publication(p) => {
                return (p.user, String::from_utf8(p.data.to_vec()).unwrap())
            }
            ChannelItem::Join(_) | ChannelItem::Leave(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn pair(user: &str, text: &str) -> (String, String) {
    (user.into(), text.into())
}

#[tokio::test]
async fn two_clients_in_a_room_exchange_messages() {
    let f = start().await;
    let (_a, alice) = f.login("alice").await;
    let (_b, bob) = f.login("bob").await;
    let (_c, carol) = f.login("carol").await;
    let mut a = join(&alice, "lobby").await;
    let mut b = join(&bob, "lobby").await;
    let mut elsewhere = join(&carol, "kitchen").await;
    say(&alice, "lobby", "hi bob").await;
    assert_eq!(said(&mut b).await, pair("alice", "hi bob"));
    say(&bob, "lobby", "hi alice").await;
    assert_eq!(
        said(&mut a).await,
        pair("alice", "hi bob"),
        "the speaker too"
    );
    assert_eq!(said(&mut a).await, pair("bob", "hi alice"));
    // Another room hears none of it.
    say(&carol, "kitchen", "anyone?").await;
    assert_eq!(said(&mut elsewhere).await, pair("carol", "anyone?"));
}

#[tokio::test]
async fn a_late_joiner_sees_the_recent_messages_then_the_live_ones() {
    let f = start().await;
    let (_a, alice) = f.login("alice").await;
    let _a_room = join(&alice, "lobby").await;
    for text in ["one", "two", "three"] {
        say(&alice, "lobby", text).await;
    }
    let (_c, carol) = f.login("carol").await;
    let mut c = join(&carol, "lobby").await;
    let recent: Vec<(String, String)> = c
        .recent
        .iter()
        .map(|p| (p.user.clone(), String::from_utf8(p.data.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        recent,
        [
            pair("alice", "one"),
            pair("alice", "two"),
            pair("alice", "three")
        ]
    );
    say(&alice, "lobby", "four").await;
    assert_eq!(said(&mut c).await, pair("alice", "four"), "nothing twice");
}

#[tokio::test]
async fn presence_lists_who_is_there_and_joins_and_leaves_show_up() {
    let f = start().await;
    let (_a, alice) = f.login("alice").await;
    let mut a = join(&alice, "lobby").await;
    assert_eq!(a.members, ["alice"]);
    let (bob_client, bob) = f.login("bob").await;
    let b = join(&bob, "lobby").await;
    assert_eq!(b.members, ["alice", "bob"]);
    match next(&mut a).await {
        ChannelItem::Join(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's join, got {other:?}"),
    }
    bob_client.quit().await;
    match next(&mut a).await {
        ChannelItem::Leave(who) => assert_eq!(who.user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    let (_c, carol) = f.login("carol").await;
    assert_eq!(join(&carol, "lobby").await.members, ["alice", "carol"]);
}

#[tokio::test]
async fn a_client_whose_connection_is_cut_misses_nothing_said_meanwhile() {
    let f = start().await;
    // Reconnects wait long enough for bob to speak while alice is away.
    let reconnect = ReconnectPolicy::new(Duration::from_millis(300), Duration::from_millis(600));
    let (alice_client, alice) = f
        .login_with("alice", ClientConfig::default().with_reconnect(reconnect))
        .await;
    let mut a = join(&alice, "lobby").await;
    let (_b, bob) = f.login("bob").await;
    let _b_room = join(&bob, "lobby").await;
    say(&bob, "lobby", "before").await;
    assert_eq!(said(&mut a).await, pair("bob", "before"));

    let mut events = alice_client.events();
    for session in f.handle.sessions() {
        if session.user().is_some_and(|u| u.name == "alice") {
            session.close(CloseReason::Local);
        }
    }
    let lost = async { while !matches!(events.recv().await, Ok(ClientEvent::Disconnected(_))) {} };
    timeout(WAIT, lost).await.expect("alice sees the cut");
    for text in ["while", "you", "were", "away"] {
        say(&bob, "lobby", text).await;
    }
    for text in ["while", "you", "were", "away"] {
        assert_eq!(said(&mut a).await, pair("bob", text));
    }
    say(&bob, "lobby", "welcome back").await;
    assert_eq!(said(&mut a).await, pair("bob", "welcome back"));
}

#[tokio::test]
async fn a_text_over_the_limit_is_refused_and_the_room_goes_on() {
    let f = start().await;
    let (_a, alice) = f.login("alice").await;
    let mut a = join(&alice, "lobby").await;
    let long = "x".repeat(MAX_TEXT + 1);
    match alice.publish(&chat::channel("lobby"), long).await {
        Err(ClientError::Application { code, .. }) => assert_eq!(code, "too_large"),
        other => panic!("expected too_large, got {other:?}"),
    }
    say(&alice, "lobby", "short").await;
    assert_eq!(said(&mut a).await, pair("alice", "short"));
}
