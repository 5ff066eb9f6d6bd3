//! The client library against a real server over 127.0.0.1.

mod support;

use async_trait::async_trait;
use bytes::Bytes;
use openserver::client::{
    Client, ClientConfig, ClientError, ClientEvent, Incoming, ReconnectPolicy,
};
use openserver::protocol::{HandlerError, Protocol, ProtocolHandler};
use openserver::session::{CloseReason, Session};
use openserver::wire::Frame;
use std::time::Duration;
use support::harness::{config, start, start_with, ALICE, BOB};

/// Test protocol: echoes each packet, then pushes a count of packets seen so far.
struct Echo;
struct EchoState {
    seen: u32,
}
const ECHO: u16 = 0x0200;

impl Protocol for Echo {
    fn id(&self) -> u16 {
        ECHO
    }
    fn name(&self) -> &'static str {
        "echo"
    }
    fn new_handler(&self, _: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(EchoState { seen: 0 })
    }
}

#[async_trait]
impl ProtocolHandler for EchoState {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        if body.is_empty() {
            return Err(HandlerError::Rejected("empty echo".into()));
        }
        self.seen += 1;
        session.send(Frame::new(ECHO, body)).await?;
        Ok(())
    }
}

#[tokio::test]
async fn connect_list_login_and_hello() {
    let server = start(config()).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(client.protocol_ids().await.unwrap(), vec![1, 2, 3, 10]);
    match client.hello("early").await {
        Err(ClientError::Remote {
            protocol_id: 10,
            message,
        }) => {
            assert_eq!(message, "Not authenticated.")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.authenticate_db(ALICE.0, "wrong").await,
        Err(ClientError::AccessDenied)
    ));
    assert_eq!(client.authenticate_db(ALICE.0, ALICE.1).await.unwrap(), 7);
    assert_eq!(client.hello("world").await.unwrap(), "Hello world");
    client.quit().await;
    assert_eq!(client.closed().await, CloseReason::Local);
}

#[tokio::test]
async fn winauth_login() {
    let server = start(config()).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    assert!(matches!(
        client.authenticate_win(BOB.0, BOB.1, "SOMEDOMAIN").await,
        Err(ClientError::AccessDenied)
    ));
    client.authenticate_win(BOB.0, BOB.1, "").await.unwrap();
    assert_eq!(client.hello("bob").await.unwrap(), "Hello bob");
}

#[tokio::test]
async fn application_protocol_requests_in_order_and_errors() {
    let server = start_with(config(), |b| b.protocol(Echo)).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..50u32 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            let body = Bytes::from(i.to_le_bytes().to_vec());
            let answer = c.request(ECHO, body.clone()).await.unwrap();
            assert_eq!(answer, body);
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    match client.request(ECHO, Bytes::new()).await {
        Err(ClientError::Remote {
            protocol_id,
            message,
        }) => {
            assert_eq!((protocol_id, message.as_str()), (ECHO, "empty echo"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn subscriptions_receive_server_push() {
    let server = start(config()).await;
    let client = Client::connect(server.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    let mut pushes = client.subscribe(0x0300);
    assert_eq!(
        server
            .handle
            .send_to_user("alice", Frame::new(0x0300, &b"news"[..])),
        1
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await
            .unwrap(),
        Some(Incoming::Packet(Bytes::from_static(b"news")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_reported_lost_by_keep_alive() {
    // A "server" that accepts and then never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(socket);
    });
    let client = Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let mut events = client.events();
    let started = tokio::time::Instant::now();
    client.start_keep_alive().await.unwrap();
    assert_eq!(client.closed().await, CloseReason::KeepAliveLost);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    assert_eq!(
        events.recv().await.unwrap(),
        ClientEvent::Disconnected(CloseReason::KeepAliveLost)
    );
    assert_eq!(
        events.recv().await.unwrap(),
        ClientEvent::Closed(CloseReason::KeepAliveLost)
    );
}

#[tokio::test]
async fn keep_alive_against_a_real_server_keeps_the_session() {
    let mut cfg = config();
    cfg.keep_alive.interval = Duration::from_millis(50);
    cfg.keep_alive.timeout = Duration::from_millis(400);
    let server = start(cfg.clone()).await;
    let client_cfg = ClientConfig::default().with_keep_alive(cfg.keep_alive);
    let client = Client::connect(server.addr.to_string(), client_cfg)
        .await
        .unwrap();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    client.start_keep_alive().await.unwrap();
    // Several timeouts' worth of time pass with no application traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client.is_connected());
    assert_eq!(client.hello("alive").await.unwrap(), "Hello alive");
}

/// Trap 1 of issue 15: a subscription the application never reads must not stop the client's
/// reader. With a blocking hand-over, the fifth push here would stall the reader, the hello
/// would time out and keep-alive would declare the connection lost.
#[tokio::test]
async fn an_unread_subscription_stalls_neither_requests_nor_keep_alive() {
    let mut cfg = config();
    cfg.keep_alive.interval = Duration::from_millis(50);
    cfg.keep_alive.timeout = Duration::from_millis(400);
    let server = start(cfg.clone()).await;
    let client_cfg = ClientConfig::default()
        .with_keep_alive(cfg.keep_alive)
        .with_queue_depth(4)
        .with_request_timeout(Duration::from_secs(10));
    let client = Client::connect(server.addr.to_string(), client_cfg)
        .await
        .unwrap();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    client.start_keep_alive().await.unwrap();
    let mut pushes = client.subscribe(0x0300);
    for n in 0..100u8 {
        assert_eq!(
            server
                .handle
                .send_to_user("alice", Frame::new(0x0300, vec![n])),
            1
        );
    }
    // Answered after all 100 pushes, on the same connection.
    assert_eq!(
        client.hello("still here").await.unwrap(),
        "Hello still here"
    );
    // Several keep-alive timeouts pass while the pushes sit unread.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client.is_connected());
    assert_eq!(client.hello("alive").await.unwrap(), "Hello alive");
    // The subscription kept the newest four and says how many it dropped before them.
    assert_eq!(pushes.try_recv(), Some(Incoming::Lagged(96)));
    for n in 96..100u8 {
        assert_eq!(
            pushes.try_recv(),
            Some(Incoming::Packet(Bytes::from(vec![n])))
        );
    }
    assert_eq!(pushes.try_recv(), None);
}

#[tokio::test]
async fn reconnects_with_backoff_and_replays_the_login() {
    let server = start(config()).await;
    let policy = ReconnectPolicy::new(Duration::from_millis(20), Duration::from_millis(200));
    let client = Client::connect(
        server.addr.to_string(),
        ClientConfig::default().with_reconnect(policy),
    )
    .await
    .unwrap();
    client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    let mut events = client.events();
    // An administrator kicks the session.
    for session in server.handle.sessions() {
        session.close(CloseReason::Local);
    }
    assert!(matches!(
        next_event(&mut events).await,
        ClientEvent::Disconnected(_)
    ));
    assert!(matches!(
        next_event(&mut events).await,
        ClientEvent::Reconnecting { attempt: 1, .. }
    ));
    assert_eq!(next_event(&mut events).await, ClientEvent::Reconnected);
    // Authenticated again without the application doing anything.
    assert_eq!(client.hello("again").await.unwrap(), "Hello again");
}

#[tokio::test]
async fn reconnect_attempts_wait_the_doubling_delay_then_give_up() {
    let server = start(config()).await;
    let policy = ReconnectPolicy::new(Duration::from_millis(100), Duration::from_millis(400))
        .with_max_attempts(4);
    let client = Client::connect(
        server.addr.to_string(),
        ClientConfig::default().with_reconnect(policy),
    )
    .await
    .unwrap();
    let mut events = client.events();
    // The server goes away for good: every attempt fails.
    server.handle.shutdown();
    server.task.await.unwrap().unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        ClientEvent::Disconnected(_)
    ));
    let mut attempts = Vec::new();
    for expected in 1..=4u32 {
        match next_event(&mut events).await {
            ClientEvent::Reconnecting { attempt, delay } => {
                assert_eq!(attempt, expected);
                attempts.push((std::time::Instant::now(), delay));
            }
            other => panic!("expected attempt {expected}, got {other:?}"),
        }
    }
    // 100, 200, 400 (the cap), 400 ms, each with up to 25% jitter off.
    for ((_, delay), base) in attempts.iter().zip([100u64, 200, 400, 400]) {
        let base = Duration::from_millis(base);
        assert!(
            *delay <= base && *delay >= base.mul_f64(0.75),
            "{delay:?} for base {base:?}"
        );
    }
    // Each announced delay was actually waited before the next attempt was announced (a
    // lower bound only, which a loaded machine cannot break).
    for pair in attempts.windows(2) {
        let ((at, delay), (next_at, _)) = (pair[0], pair[1]);
        assert!(
            next_at - at >= delay,
            "attempt announced {:?} after a delay of {delay:?}",
            next_at - at
        );
    }
    // After the fourth failure the client gives up and says so.
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("the client gives up after four attempts");
}

#[tokio::test]
async fn connect_errors_are_clear() {
    // Bind then drop, so the port is (almost certainly) closed.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    match Client::connect(addr.to_string(), ClientConfig::default()).await {
        Err(ClientError::NotListening { addr: a }) => assert_eq!(a, addr.to_string()),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

async fn next_event(events: &mut tokio::sync::broadcast::Receiver<ClientEvent>) -> ClientEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("event stream open")
}
