//! ScramAuth (protocol 4) against a real server over 127.0.0.1: the client library, and raw
//! frames to check what crosses the wire.

mod support;

use async_trait::async_trait;
use bytes::Bytes;
use openserver::auth::scram::{ClientExchange, ClientFirst};
use openserver::auth::SqliteUserStore;
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::protocol::{HandlerError, Protocol, ProtocolHandler};
use openserver::server::{Server, ServerConfig};
use openserver::session::CloseReason;
use openserver::session::Session;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::scram::ScramMessage;
use openserver::wire::{protocol_id, Frame, Message, Secret};
use std::net::SocketAddr;
use std::sync::Arc;
use support::harness::{
    config, ending, fast_hasher, start, start_with, Ending, Raw, TestServer, ALICE, AT_ONCE, BOB,
};

/// A config whose abuse limits stay out of the way of tests that fail on purpose; one test
/// below checks that SCRAM denials do count.
fn lenient() -> ServerConfig {
    let mut config = config();
    config.security.max_auth_failures = 100;
    config.security.penalties = false;
    config
}

async fn scram_server() -> TestServer {
    start_with(lenient(), |b| b.scram()).await
}

/// The ACCESS_DENIED frame, whole: magic, length 3, protocol 4, command 05.
const DENIED: &[u8] = &[0x53, 0x55, 0x03, 0, 0, 0, 0x04, 0x00, 0x05];

fn scram_frame(message: ScramMessage) -> Frame {
    message.to_frame()
}

/// The next frame, which must be a ScramAuth one.
async fn recv_scram(raw: &mut Raw) -> ScramMessage {
    let frame = raw.recv().await.expect("an answer");
    assert_eq!(frame.protocol_id, protocol_id::SCRAM_AUTH, "{frame:?}");
    ScramMessage::decode(&frame.body).unwrap()
}

/// The next frame, which must be a Capabilities ERROR about ScramAuth; returns its text.
async fn recv_error(raw: &mut Raw) -> String {
    let frame = raw.recv().await.expect("an answer");
    match CapabilitiesMessage::decode(&frame.body) {
        Ok(CapabilitiesMessage::Error {
            protocol_id: protocol_id::SCRAM_AUTH,
            message,
        }) if frame.protocol_id == protocol_id::CAPABILITIES => message,
        other => panic!("expected an ERROR about protocol 4, got {frame:?}: {other:?}"),
    }
}

/// Sends CLIENT_FIRST for `user` and returns the server-first and the exchange to finish.
async fn raw_first(raw: &mut Raw, user: &str, password: &str) -> (String, ClientExchange) {
    let exchange = ClientExchange::new(user, &Secret::new(password)).unwrap();
    raw.send(scram_frame(ScramMessage::ClientFirst(
        exchange.client_first(),
    )))
    .await;
    match recv_scram(raw).await {
        ScramMessage::ServerFirst(server_first) => (server_first, exchange),
        other => panic!("expected SERVER_FIRST, got {other:?}"),
    }
}

/// A whole raw exchange; returns the client-final sent and the answer's frame bytes.
async fn raw_login(raw: &mut Raw, user: &str, password: &str) -> (String, Vec<u8>) {
    let (server_first, exchange) = raw_first(raw, user, password).await;
    let (client_final, _) = exchange.client_final(&server_first).unwrap();
    raw.send(scram_frame(ScramMessage::ClientFinal(client_final.clone())))
        .await;
    (client_final, raw.recv_bytes().await)
}

async fn raw_hello(raw: &mut Raw) -> Frame {
    raw.send(HelloMessage("x".into()).to_frame()).await;
    raw.recv().await.expect("an answer")
}

#[tokio::test]
async fn right_password_logs_in_and_hello_works() {
    let server = scram_server().await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(client.protocol_ids().await.unwrap(), vec![1, 2, 3, 4, 10]);
    client.authenticate_scram(ALICE.0, ALICE.1).await.unwrap();
    assert_eq!(client.hello("alice").await.unwrap(), "Hello alice");
    let session = server.handle.sessions().pop().unwrap();
    let user = session.user().unwrap();
    assert_eq!((user.id, user.name.as_str()), (7, "alice"));
    assert!(user.has_role("admin"));
    client.quit().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_denial() {
    let server = scram_server().await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert!(matches!(
        client.authenticate_scram(ALICE.0, "wrong").await,
        Err(ClientError::AccessDenied)
    ));
    assert!(matches!(
        client.authenticate_scram("mallory", "anything").await,
        Err(ClientError::AccessDenied)
    ));
    assert!(matches!(
        client.authenticate_scram("", "anything").await,
        Err(ClientError::AccessDenied)
    ));
    client.quit().await;

    let mut raw = Raw::connect(server.addr).await;
    let (_, wrong) = raw_login(&mut raw, ALICE.0, "wrong").await;
    let (_, unknown) = raw_login(&mut raw, "mallory", "anything").await;
    assert_eq!(wrong, DENIED);
    assert_eq!(unknown, DENIED);

    // The server-first of an unknown user looks like a real one's, and is as stable.
    let shape = |server_first: &str| {
        let parts: Vec<&str> = server_first.split(',').collect();
        assert_eq!(parts.len(), 3, "{server_first}");
        assert_eq!(parts[2], "i=4096");
        (parts[1].to_owned(), parts[1].len())
    };
    let (real_salt, real_len) = shape(&raw_first(&mut raw, ALICE.0, "x").await.0);
    raw.send(scram_frame(ScramMessage::Error("abandoned".into())))
        .await;
    let (fake_salt, fake_len) = shape(&raw_first(&mut raw, "mallory", "x").await.0);
    raw.send(scram_frame(ScramMessage::Error("abandoned".into())))
        .await;
    assert_eq!(real_len, fake_len, "{real_salt} vs {fake_salt}");
    assert_eq!(
        shape(&raw_first(&mut raw, "mallory", "x").await.0).0,
        fake_salt
    );
    raw.send(scram_frame(ScramMessage::Error("abandoned".into())))
        .await;
    assert_eq!(
        shape(&raw_first(&mut raw, ALICE.0, "x").await.0).0,
        real_salt
    );
    // Still not logged in.
    assert_eq!(
        raw_hello(&mut raw).await.protocol_id,
        protocol_id::CAPABILITIES
    );
}

#[tokio::test]
async fn the_password_never_crosses_the_wire() {
    let server = scram_server().await;
    let mut raw = Raw::connect(server.addr).await;
    let exchange = ClientExchange::new(BOB.0, &Secret::new(BOB.1)).unwrap();
    let mut sent = Vec::new();
    let mut received = Vec::new();

    let first = scram_frame(ScramMessage::ClientFirst(exchange.client_first()));
    sent.extend_from_slice(&first.to_bytes().unwrap());
    raw.send(first).await;
    let answer = raw.recv().await.unwrap();
    received.extend_from_slice(&answer.to_bytes().unwrap());
    let ScramMessage::ServerFirst(server_first) = ScramMessage::decode(&answer.body).unwrap()
    else {
        panic!("expected SERVER_FIRST");
    };
    let (client_final, pending) = exchange.client_final(&server_first).unwrap();
    let last = scram_frame(ScramMessage::ClientFinal(client_final));
    sent.extend_from_slice(&last.to_bytes().unwrap());
    raw.send(last).await;
    let answer = raw.recv().await.unwrap();
    received.extend_from_slice(&answer.to_bytes().unwrap());
    let ScramMessage::ServerFinal(server_final) = ScramMessage::decode(&answer.body).unwrap()
    else {
        panic!("expected SERVER_FINAL, got {answer:?}");
    };
    pending.verify(&server_final).unwrap();
    assert_eq!(
        HelloMessage::decode(&raw_hello(&mut raw).await.body)
            .unwrap()
            .0,
        "Hello x"
    );

    let password = BOB.1.as_bytes();
    for (side, bytes) in [("sent", &sent), ("received", &received)] {
        assert!(
            !bytes.windows(password.len()).any(|w| w == password),
            "password in the {side} bytes"
        );
    }
}

#[tokio::test]
async fn a_replayed_client_final_is_denied() {
    let server = scram_server().await;
    let mut first = Raw::connect(server.addr).await;
    let exchange = ClientExchange::new(ALICE.0, &Secret::new(ALICE.1)).unwrap();
    let client_first = exchange.client_first();
    first
        .send(scram_frame(ScramMessage::ClientFirst(client_first.clone())))
        .await;
    let ScramMessage::ServerFirst(server_first) = recv_scram(&mut first).await else {
        panic!("expected SERVER_FIRST");
    };
    let (client_final, _) = exchange.client_final(&server_first).unwrap();
    first
        .send(scram_frame(ScramMessage::ClientFinal(client_final.clone())))
        .await;
    assert!(matches!(
        recv_scram(&mut first).await,
        ScramMessage::ServerFinal(_)
    ));

    // An eavesdropper replays both messages: the server picks a new nonce, so the recorded
    // proof is for another exchange.
    let mut replay = Raw::connect(server.addr).await;
    replay
        .send(scram_frame(ScramMessage::ClientFirst(client_first)))
        .await;
    let ScramMessage::ServerFirst(second_server_first) = recv_scram(&mut replay).await else {
        panic!("expected SERVER_FIRST");
    };
    assert_ne!(second_server_first, server_first);
    replay
        .send(scram_frame(ScramMessage::ClientFinal(client_final)))
        .await;
    assert_eq!(replay.recv_bytes().await, DENIED);
    assert_eq!(
        raw_hello(&mut replay).await.protocol_id,
        protocol_id::CAPABILITIES,
        "still not logged in"
    );
}

#[tokio::test]
async fn out_of_order_messages_get_an_error_and_the_session_goes_on() {
    let server = scram_server().await;
    let mut raw = Raw::connect(server.addr).await;

    // A final with no exchange under way.
    raw.send(scram_frame(ScramMessage::ClientFinal(
        "c=biws,r=x,p=AAAA".into(),
    )))
    .await;
    assert!(recv_error(&mut raw).await.contains("CLIENT_FINAL"));

    // A second CLIENT_FIRST abandons the first exchange, so its final is out of order too.
    let (server_first, exchange) = raw_first(&mut raw, ALICE.0, ALICE.1).await;
    let again = ClientExchange::new(ALICE.0, &Secret::new(ALICE.1)).unwrap();
    raw.send(scram_frame(ScramMessage::ClientFirst(again.client_first())))
        .await;
    assert!(recv_error(&mut raw).await.contains("CLIENT_FIRST"));
    let (client_final, _) = exchange.client_final(&server_first).unwrap();
    raw.send(scram_frame(ScramMessage::ClientFinal(client_final)))
        .await;
    assert!(recv_error(&mut raw).await.contains("CLIENT_FINAL"));

    // Server messages, malformed SCRAM and undecodable bodies from a client.
    raw.send(scram_frame(ScramMessage::ServerFinal("v=AAAA".into())))
        .await;
    recv_error(&mut raw).await;
    raw.send(scram_frame(ScramMessage::ClientFirst(
        "p=tls-unique,,n=alice,r=abc".into(),
    )))
    .await;
    assert!(recv_error(&mut raw)
        .await
        .contains("channel-binding-not-supported"));
    raw.send(scram_frame(ScramMessage::ClientFirst("n,,n=alice".into())))
        .await;
    assert!(recv_error(&mut raw).await.contains("invalid-encoding"));
    raw.send(Frame::new(
        protocol_id::SCRAM_AUTH,
        Bytes::from_static(&[0x42]),
    ))
    .await;
    assert!(recv_error(&mut raw).await.contains("malformed"));
    // A malformed final also ends the exchange under way.
    let (_, _) = raw_first(&mut raw, ALICE.0, ALICE.1).await;
    raw.send(scram_frame(ScramMessage::ClientFinal("c=biws".into())))
        .await;
    recv_error(&mut raw).await;
    raw.send(scram_frame(ScramMessage::ClientFinal(
        "c=biws,r=x,p=AAAA".into(),
    )))
    .await;
    assert!(recv_error(&mut raw).await.contains("CLIENT_FINAL"));

    // None of it cost the session: a proper exchange still works.
    let (_, answer) = raw_login(&mut raw, ALICE.0, ALICE.1).await;
    let answer = Frame::new(
        protocol_id::SCRAM_AUTH,
        Bytes::copy_from_slice(&answer[8..]),
    );
    assert!(matches!(
        ScramMessage::decode(&answer.body),
        Ok(ScramMessage::ServerFinal(_))
    ));
    assert_eq!(raw_hello(&mut raw).await.protocol_id, protocol_id::HELLO);
    // And once logged in, more SCRAM is refused.
    raw.send(scram_frame(ScramMessage::ClientFirst(
        "n,,n=alice,r=abc".into(),
    )))
    .await;
    assert!(recv_error(&mut raw).await.contains("already authenticated"));
}

#[tokio::test]
async fn denials_count_toward_the_connection_limit() {
    // Default security: three denied logins per connection.
    let server = start_with(config(), |b| b.scram()).await;
    let mut events = server.handle.events();
    let mut raw = Raw::connect(server.addr).await;
    for _ in 0..2 {
        assert_eq!(raw_login(&mut raw, BOB.0, "wrong").await.1, DENIED);
    }
    let (_, third) = raw_login(&mut raw, "mallory", "wrong").await;
    assert_eq!(third, DENIED);
    // Closed at once after the third denial, not left to the login deadline.
    assert!(raw.expect_closed(AT_ONCE).await.is_empty());
    assert_eq!(
        ending(&mut events, raw.peer_id()).await,
        Ending::Closed(CloseReason::AuthFailures)
    );
}

#[tokio::test]
async fn a_penalised_source_is_denied_even_with_the_right_password() {
    // Penalties on (the default), with a penalty long enough that it cannot end mid-test;
    // the per-connection limit is out of the way so one connection can make every attempt.
    let mut cfg = config();
    cfg.security.max_auth_failures = 100;
    cfg.security.penalty_initial = std::time::Duration::from_secs(60);
    let server = start_with(cfg, |b| b.scram()).await;
    // Three free failures, then the fourth starts the source's penalty.
    let mut raw = Raw::connect(server.addr).await;
    for _ in 0..4 {
        assert_eq!(raw_login(&mut raw, BOB.0, "wrong").await.1, DENIED);
    }
    // The right password is denied like any other attempt while the penalty runs.
    assert_eq!(raw_login(&mut raw, ALICE.0, ALICE.1).await.1, DENIED);
    assert_eq!(
        raw_hello(&mut raw).await.protocol_id,
        protocol_id::CAPABILITIES,
        "still not logged in"
    );
    // Another source logs in with SCRAM as usual.
    let neighbour = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut other = Raw::connect_from(server.addr, neighbour).await;
    let (_, answer) = raw_login(&mut other, ALICE.0, ALICE.1).await;
    assert_ne!(answer, DENIED);
    assert_eq!(
        HelloMessage::decode(&raw_hello(&mut other).await.body)
            .unwrap()
            .0,
        "Hello x"
    );
}

#[tokio::test]
async fn scram_is_opt_in_and_needs_a_store() {
    let server = start(config()).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(client.protocol_ids().await.unwrap(), vec![1, 2, 3, 10]);
    assert!(matches!(
        client.authenticate_scram(ALICE.0, ALICE.1).await,
        Err(ClientError::Remote { protocol_id: 4, .. })
    ));
    client.quit().await;

    let err = Server::builder(config())
        .scram()
        .bind()
        .await
        .err()
        .expect("bind without a store fails");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_user_from_before_scram_gains_it_at_a_password_login() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    {
        // The database as the first schema version left it: a user without SCRAM columns.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 password_hash TEXT NOT NULL,
                 created_at INTEGER NOT NULL DEFAULT (unixepoch())
             );
             CREATE TABLE user_roles (
                 user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                 role TEXT NOT NULL,
                 PRIMARY KEY (user_id, role)
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO users (name, password_hash) VALUES (?1, ?2)",
            rusqlite::params![ALICE.0, fast_hasher().hash_blocking(ALICE.1).unwrap()],
        )
        .unwrap();
    }
    let store = SqliteUserStore::open(&path, fast_hasher())
        .and_then(|s| s.with_scram(support::harness::SCRAM_TEST_ITERATIONS))
        .unwrap();
    let server = Server::builder(lenient())
        .user_store(Arc::new(store))
        .scram()
        .hello()
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());

    let login = |kind: &'static str| async move {
        let client = connect(addr).await;
        let outcome = match kind {
            "scram" => client.authenticate_scram(ALICE.0, ALICE.1).await,
            _ => client.authenticate_db(ALICE.0, ALICE.1).await.map(drop),
        };
        client.quit().await;
        outcome
    };
    assert!(matches!(
        login("scram").await,
        Err(ClientError::AccessDenied)
    ));
    login("db").await.unwrap();
    login("scram").await.unwrap();
}

async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap()
}

/// A server impostor on protocol 4: answers like a SCRAM server but does not hold the keys.
struct Impostor {
    iterations: u32,
}

#[async_trait]
impl ProtocolHandler for Impostor {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let answer = match ScramMessage::decode(&body)? {
            ScramMessage::ClientFirst(first) => {
                let first = ClientFirst::parse(&first).unwrap();
                ScramMessage::ServerFirst(format!(
                    "r={}impostor,s=c2FsdHNhbHRzYWx0,i={}",
                    first.nonce(),
                    self.iterations
                ))
            }
            ScramMessage::ClientFinal(_) => {
                ScramMessage::ServerFinal("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into())
            }
            _ => return Ok(()),
        };
        session.send_message(&answer).await?;
        Ok(())
    }
}

impl Protocol for Impostor {
    fn id(&self) -> u16 {
        protocol_id::SCRAM_AUTH
    }
    fn name(&self) -> &'static str {
        "impostor"
    }
    fn requires_auth(&self) -> bool {
        false
    }
    fn new_handler(&self, _: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(Impostor {
            iterations: self.iterations,
        })
    }
}

#[tokio::test]
async fn the_client_checks_the_server() {
    let server = start_with(lenient(), |b| b.protocol(Impostor { iterations: 4096 })).await;
    let mut events = server.handle.events();
    let client = connect(server.addr).await;
    let peer = loop {
        match events.recv().await.expect("events") {
            openserver::server::SessionEvent::Opened { peer, .. } => break peer,
            _ => continue,
        }
    };
    assert!(matches!(
        client.authenticate_scram(ALICE.0, ALICE.1).await,
        Err(ClientError::ServerNotVerified(_))
    ));
    // Nothing more goes to a server that could not prove itself: the client hangs up at once.
    assert!(!client.is_connected());
    assert!(client.protocol_ids().await.is_err());
    let end = tokio::time::timeout(AT_ONCE, ending(&mut events, peer)).await;
    assert_eq!(
        end.expect("the client hangs up at once"),
        Ending::Closed(CloseReason::PeerClosed)
    );

    for iterations in [1, 4095, 1_000_001] {
        let server = start_with(lenient(), |b| b.protocol(Impostor { iterations })).await;
        let client = connect(server.addr).await;
        let outcome = client.authenticate_scram(ALICE.0, ALICE.1).await;
        assert!(
            matches!(outcome, Err(ClientError::Unexpected(ref m)) if m.contains("iterations")),
            "{iterations}: {outcome:?}"
        );
        client.quit().await;
    }
}
