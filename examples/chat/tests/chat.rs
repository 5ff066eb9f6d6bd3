//! The chat protocol end to end: a real server on 127.0.0.1:0 with a SQLite user store, and the
//! chat client library.

use chat::client::{ChatClient, ChatClientError, ChatEvents};
use chat::messages::{Event, LimitError, Request, JOIN, MAX_TEXT_BYTES, PROTOCOL_ID};
use chat::server::ChatProtocol;
use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::client::{Client, ClientConfig};
use openserver::server::{Server, ServerConfig, ServerHandle};
use openserver::session::CloseReason;
use openserver::wire::{Message, Secret};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::timeout;

/// The longest any test waits for the server.
const WAIT: Duration = Duration::from_secs(10);
const USERS: [(&str, &str); 3] = [("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

struct Fixture {
    addr: String,
    /// A clone of the server's protocol, to look at its rooms.
    chat: ChatProtocol,
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
    let chat = ChatProtocol::new();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .hello()
        .protocol(chat.clone())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    tokio::spawn(server.run());
    Fixture {
        addr,
        chat,
        handle,
        _dir: dir,
    }
}

impl Fixture {
    async fn login(&self, user: &str) -> (ChatClient, ChatEvents) {
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        timeout(WAIT, ChatClient::connect(&self.addr, user, password))
            .await
            .unwrap()
            .unwrap()
    }

    /// Waits until the server's rooms satisfy `ok`.
    async fn until(&self, what: &str, ok: impl Fn(&ChatProtocol) -> bool) {
        let poll = async {
            while !ok(&self.chat) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(WAIT, poll)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", self.chat));
    }
}

async fn next(events: &mut ChatEvents) -> Event {
    timeout(WAIT, events.next())
        .await
        .expect("timed out waiting for a chat event")
        .expect("client closed")
}

async fn join(client: &ChatClient, events: &mut ChatEvents, room: &str) -> Vec<String> {
    client.join(room).await.unwrap();
    match next(events).await {
        Event::Joined { room: r, members } if r == room => members,
        other => panic!("expected JOINED {room}, got {other:?}"),
    }
}

fn presence(room: &str, user: &str, joined: bool) -> Event {
    Event::Presence {
        room: room.into(),
        user: user.into(),
        joined,
    }
}

fn said(event: Event) -> (String, String, String) {
    match event {
        Event::Message {
            room,
            from,
            sent_at,
            text,
        } => {
            let age = SystemTime::now().duration_since(sent_at).unwrap();
            assert!(age < WAIT, "sent_at {age:?} ago");
            (room, from, text)
        }
        other => panic!("expected MESSAGE, got {other:?}"),
    }
}

fn triple(room: &str, from: &str, text: &str) -> (String, String, String) {
    (room.into(), from.into(), text.into())
}

#[tokio::test]
async fn members_hear_each_other_and_non_members_do_not() {
    let f = start().await;
    let (alice, mut alice_events) = f.login("alice").await;
    let (bob, mut bob_events) = f.login("bob").await;
    let (carol, mut carol_events) = f.login("carol").await;
    assert_eq!(join(&alice, &mut alice_events, "lobby").await, ["alice"]);
    assert_eq!(join(&bob, &mut bob_events, "lobby").await, ["alice", "bob"]);
    assert_eq!(join(&carol, &mut carol_events, "side").await, ["carol"]);
    assert_eq!(
        next(&mut alice_events).await,
        presence("lobby", "bob", true)
    );

    alice.say("lobby", "hi bob").await.unwrap();
    assert_eq!(
        said(next(&mut bob_events).await),
        triple("lobby", "alice", "hi bob")
    );
    assert_eq!(
        said(next(&mut alice_events).await),
        triple("lobby", "alice", "hi bob")
    );
    // Bob has it, so it was pushed to everyone it went to before carol speaks: had carol been
    // sent it, it would come before her own message.
    carol.say("side", "anyone?").await.unwrap();
    assert_eq!(
        said(next(&mut carol_events).await),
        triple("side", "carol", "anyone?")
    );

    bob.say("side", "sneaking in").await.unwrap();
    assert_eq!(
        next(&mut bob_events).await,
        Event::Error("not in room \"side\"".into())
    );
}

#[tokio::test]
async fn presence_on_join_and_leave() {
    let f = start().await;
    let (alice, mut alice_events) = f.login("alice").await;
    let (bob, mut bob_events) = f.login("bob").await;
    join(&alice, &mut alice_events, "lobby").await;
    join(&bob, &mut bob_events, "lobby").await;
    assert_eq!(
        next(&mut alice_events).await,
        presence("lobby", "bob", true)
    );
    // Joining again is answered, but announces nothing.
    assert_eq!(join(&bob, &mut bob_events, "lobby").await, ["alice", "bob"]);

    bob.leave("lobby").await.unwrap();
    assert_eq!(
        next(&mut alice_events).await,
        presence("lobby", "bob", false)
    );
    assert_eq!(f.chat.members("lobby"), ["alice"]);
    bob.leave("lobby").await.unwrap();
    assert_eq!(
        next(&mut bob_events).await,
        Event::Error("not in room \"lobby\"".into())
    );
    alice.leave("lobby").await.unwrap();
    f.until("the empty room to go", |c| c.rooms().is_empty())
        .await;
}

#[tokio::test]
async fn a_closed_session_leaves_its_rooms() {
    let f = start().await;
    let (alice, mut alice_events) = f.login("alice").await;
    let (bob, mut bob_events) = f.login("bob").await;
    join(&alice, &mut alice_events, "lobby").await;
    join(&alice, &mut alice_events, "den").await;
    join(&bob, &mut bob_events, "lobby").await;
    join(&bob, &mut bob_events, "den").await;
    for _ in 0..2 {
        assert!(matches!(
            next(&mut alice_events).await,
            Event::Presence { joined: true, .. }
        ));
    }

    // Bob's client goes away.
    bob.quit().await;
    let mut left = vec![next(&mut alice_events).await, next(&mut alice_events).await];
    left.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        left,
        [
            presence("den", "bob", false),
            presence("lobby", "bob", false)
        ]
    );
    assert_eq!(f.chat.members("lobby"), ["alice"]);
    assert_eq!(f.chat.members("den"), ["alice"]);

    // The server drops alice: nothing of her stays behind.
    for session in f.handle.sessions() {
        session.close(CloseReason::Local);
    }
    f.until("every room to go", |c| c.rooms().is_empty()).await;
    assert_eq!(timeout(WAIT, alice_events.next()).await.unwrap(), None);
}

#[tokio::test]
async fn unauthenticated_clients_are_refused() {
    let f = start().await;
    let client = timeout(WAIT, Client::connect(&f.addr, ClientConfig::default()))
        .await
        .unwrap()
        .unwrap();
    let (chat, mut events) = ChatClient::new(client);
    chat.join("lobby").await.unwrap();
    // The framework's Capabilities ERROR for 0x0100, not a chat ERROR.
    assert_eq!(
        next(&mut events).await,
        Event::Error("Not authenticated.".into())
    );
    assert!(f.chat.rooms().is_empty());
}

#[tokio::test]
async fn malformed_and_refused_requests_get_an_error_and_the_session_goes_on() {
    let f = start().await;
    let (alice, mut events) = f.login("alice").await;
    let raw = alice.client();
    let mut expect_error = async |body: Vec<u8>, needle: &str| {
        raw.send(PROTOCOL_ID, body).await.unwrap();
        match next(&mut events).await {
            Event::Error(text) => assert!(text.contains(needle), "{text:?} lacks {needle:?}"),
            other => panic!("expected ERROR, got {other:?}"),
        }
    };
    expect_error(vec![JOIN, 5, b'a'], "malformed packet: body truncated").await;
    expect_error(vec![0x42], "unknown command 0x42").await;
    expect_error(vec![], "empty body").await;
    let long_room = Request::Join("r".repeat(65)).to_frame().body.to_vec();
    expect_error(long_room, "room name is 65 bytes, the limit is 64").await;
    let long_text = Request::Say {
        room: "lobby".into(),
        text: "t".repeat(MAX_TEXT_BYTES + 1),
    };
    expect_error(long_text.to_frame().body.to_vec(), "the limit is 4096").await;

    // The client library checks limits before sending.
    assert!(matches!(
        alice.say("lobby", &"t".repeat(MAX_TEXT_BYTES + 1)).await,
        Err(ChatClientError::Invalid(LimitError::TextTooLong(_)))
    ));
    assert!(matches!(
        alice.join("").await,
        Err(ChatClientError::Invalid(LimitError::EmptyRoom))
    ));

    assert_eq!(join(&alice, &mut events, "lobby").await, ["alice"]);
    alice.say("lobby", "still here").await.unwrap();
    assert_eq!(
        said(next(&mut events).await),
        triple("lobby", "alice", "still here")
    );
}
