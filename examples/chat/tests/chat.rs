//! The chat protocol end to end: a real server on 127.0.0.1:0 with a SQLite user store, and
//! typed clients.

use chat::{Chat, Event, Request, Rooms, MAX_TEXT};
use openserver::app::envelope::{self, Envelope};
use openserver::app::{Api, AppError, Remote};
use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::client::{Client, ClientConfig, ClientError, ClientEvent, ReconnectPolicy};
use openserver::server::{Server, ServerConfig, ServerHandle};
use openserver::session::CloseReason;
use openserver::wire::Secret;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::timeout;

/// The longest any test waits for the server.
const WAIT: Duration = Duration::from_secs(10);
const USERS: [(&str, &str); 3] = [("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

struct Fixture {
    addr: String,
    /// The server's rooms, to look at.
    rooms: Rooms,
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
    let rooms = Rooms::default();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .hello()
        .app(rooms.clone())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let handle = server.handle();
    tokio::spawn(server.run());
    Fixture {
        addr,
        rooms,
        handle,
        _dir: dir,
    }
}

impl Fixture {
    async fn login_with(&self, user: &str, config: ClientConfig) -> Remote<Chat> {
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let client = timeout(WAIT, Client::connect(&self.addr, config))
            .await
            .unwrap()
            .unwrap();
        client.authenticate_db(user, password).await.unwrap();
        client.api::<Chat>()
    }

    async fn login(&self, user: &str) -> Remote<Chat> {
        self.login_with(user, ClientConfig::default()).await
    }

    /// Waits until the server's rooms satisfy `ok`.
    async fn until(&self, what: &str, ok: impl Fn(&Rooms) -> bool) {
        let poll = async {
            while !ok(&self.rooms) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(WAIT, poll)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", self.rooms.rooms()));
    }
}

async fn next(chat: &Remote<Chat>) -> Event {
    timeout(WAIT, chat.next_push())
        .await
        .expect("timed out waiting for a chat event")
        .expect("client closed")
        .expect("a well-formed push")
}

async fn request(chat: &Remote<Chat>, request: Request) -> Result<Vec<String>, ClientError> {
    timeout(WAIT, chat.request(&request)).await.unwrap()
}

async fn join(chat: &Remote<Chat>, room: &str) -> Vec<String> {
    request(chat, Request::Join(room.into())).await.unwrap()
}

async fn say(chat: &Remote<Chat>, room: &str, text: &str) -> Result<Vec<String>, ClientError> {
    let say = Request::Say {
        room: room.into(),
        text: text.into(),
    };
    request(chat, say).await
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

/// The application's refusal `code`, as the client sees it.
fn refused(answer: Result<Vec<String>, ClientError>, code: &str) -> String {
    match answer {
        Err(ClientError::Application {
            code: got, message, ..
        }) if got == code => message,
        other => panic!("expected refusal {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn members_hear_each_other_and_non_members_do_not() {
    let f = start().await;
    let (alice, bob, carol) = (
        f.login("alice").await,
        f.login("bob").await,
        f.login("carol").await,
    );
    assert_eq!(join(&alice, "lobby").await, ["alice"]);
    assert_eq!(join(&bob, "lobby").await, ["alice", "bob"]);
    assert_eq!(join(&carol, "side").await, ["carol"]);
    assert_eq!(next(&alice).await, presence("lobby", "bob", true));

    assert_eq!(
        say(&alice, "lobby", "hi bob").await.unwrap(),
        ["alice", "bob"]
    );
    assert_eq!(said(next(&bob).await), triple("lobby", "alice", "hi bob"));
    // The speaker's own copy is queued before the answer.
    let own = alice.try_next_push().expect("queued").unwrap();
    assert_eq!(said(own), triple("lobby", "alice", "hi bob"));
    // Had carol been sent it, it would come before her own message.
    say(&carol, "side", "anyone?").await.unwrap();
    assert_eq!(said(next(&carol).await), triple("side", "carol", "anyone?"));

    let message = refused(say(&bob, "side", "sneaking in").await, "not_member");
    assert_eq!(message, "not in room \"side\"");
    assert_eq!(carol.try_next_push(), None);
}

#[tokio::test]
async fn presence_on_join_and_leave() {
    let f = start().await;
    let (alice, bob) = (f.login("alice").await, f.login("bob").await);
    join(&alice, "lobby").await;
    join(&bob, "lobby").await;
    assert_eq!(next(&alice).await, presence("lobby", "bob", true));
    // Joining again is answered, but announces nothing.
    assert_eq!(join(&bob, "lobby").await, ["alice", "bob"]);

    let left = request(&bob, Request::Leave("lobby".into())).await;
    assert_eq!(left.unwrap(), ["alice"]);
    assert_eq!(next(&alice).await, presence("lobby", "bob", false));
    assert_eq!(f.rooms.members("lobby"), ["alice"]);
    let again = request(&bob, Request::Leave("lobby".into())).await;
    assert_eq!(refused(again, "not_member"), "not in room \"lobby\"");
    request(&alice, Request::Leave("lobby".into()))
        .await
        .unwrap();
    assert!(f.rooms.rooms().is_empty());
    assert_eq!(alice.try_next_push(), None);
}

#[tokio::test]
async fn a_closed_session_leaves_its_rooms() {
    let f = start().await;
    let (alice, bob) = (f.login("alice").await, f.login("bob").await);
    for room in ["lobby", "den"] {
        join(&alice, room).await;
        join(&bob, room).await;
        assert_eq!(next(&alice).await, presence(room, "bob", true));
    }

    // Bob's client goes away.
    bob.client().quit().await;
    let mut left = vec![next(&alice).await, next(&alice).await];
    left.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        left,
        [
            presence("den", "bob", false),
            presence("lobby", "bob", false)
        ]
    );
    assert_eq!(f.rooms.members("lobby"), ["alice"]);
    assert_eq!(f.rooms.members("den"), ["alice"]);

    // The server drops alice: nothing of her stays behind.
    for session in f.handle.sessions() {
        session.close(CloseReason::Local);
    }
    f.until("every room to go", |r| r.rooms().is_empty()).await;
    assert_eq!(timeout(WAIT, alice.next_push()).await.unwrap(), None);
}

/// [`chat::join`] rejoins after an automatic reconnect: the server forgot the lost session's
/// rooms, and messages reach the same `Remote` again without the application doing anything.
#[tokio::test]
async fn a_reconnected_client_is_back_in_its_room() {
    let f = start().await;
    let policy = ReconnectPolicy::new(Duration::from_millis(20), Duration::from_millis(200));
    let alice = f
        .login_with("alice", ClientConfig::default().with_reconnect(policy))
        .await;
    let bob = f.login("bob").await;
    chat::join(&alice, "lobby").await.unwrap();
    join(&bob, "lobby").await;
    assert_eq!(next(&alice).await, presence("lobby", "bob", true));

    let mut events = alice.client().events();
    let alice_session = f
        .handle
        .sessions()
        .into_iter()
        .find(|s| s.user().is_some_and(|u| u.name == "alice"))
        .unwrap();
    alice_session.close(CloseReason::Local);
    loop {
        match timeout(WAIT, events.recv()).await.unwrap().unwrap() {
            ClientEvent::Reconnected => break,
            ClientEvent::RestoreFailed { error, .. } => panic!("rejoin failed: {error}"),
            _ => {}
        }
    }
    // Bob heard her leave and come back.
    assert_eq!(next(&bob).await, presence("lobby", "alice", false));
    assert_eq!(next(&bob).await, presence("lobby", "alice", true));
    say(&bob, "lobby", "welcome back").await.unwrap();
    assert_eq!(
        said(next(&alice).await),
        triple("lobby", "bob", "welcome back")
    );
}

#[tokio::test]
async fn unauthenticated_clients_are_refused() {
    let f = start().await;
    let client = timeout(WAIT, Client::connect(&f.addr, ClientConfig::default()))
        .await
        .unwrap()
        .unwrap();
    let chat = client.api::<Chat>();
    // The framework's refusal, not the application's.
    match request(&chat, Request::Join("lobby".into())).await {
        Err(ClientError::Remote { message, .. }) => assert_eq!(message, "Not authenticated."),
        other => panic!("{other:?}"),
    }
    assert!(f.rooms.rooms().is_empty());
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_session_goes_on() {
    let f = start().await;
    let alice = f.login("alice").await;
    let long_room = request(&alice, Request::Join("r".repeat(65))).await;
    assert_eq!(refused(long_room, "bad_room"), "1-64 bytes");
    assert_eq!(
        refused(
            request(&alice, Request::Join(String::new())).await,
            "bad_room"
        ),
        "1-64 bytes"
    );
    join(&alice, "lobby").await;
    let long_text = say(&alice, "lobby", &"t".repeat(MAX_TEXT + 1)).await;
    assert_eq!(refused(long_text, "too_long"), "4096 bytes at most");
    for n in 1..chat::MAX_ROOMS_PER_SESSION {
        join(&alice, &format!("room{n}")).await;
    }
    let one_more = request(&alice, Request::Join("one more".into())).await;
    assert_eq!(refused(one_more, "too_many_rooms"), "in 32 rooms already");
    // A body that is not a chat request is answered by id, as the envelope says.
    let raw = alice
        .client()
        .request(Chat::ID, vec![envelope::REQUEST, 7, 0, 0, 0, 0xc1])
        .await;
    let raw = raw.unwrap();
    let Ok(Envelope::Error { id: 7, body }) = Envelope::decode(&raw) else {
        panic!("not an error for request 7: {raw:?}");
    };
    let error: AppError = envelope::decode_value(body).unwrap();
    assert_eq!(error.code, AppError::BAD_REQUEST);

    say(&alice, "lobby", "still here").await.unwrap();
    assert_eq!(
        said(next(&alice).await),
        triple("lobby", "alice", "still here")
    );
}
