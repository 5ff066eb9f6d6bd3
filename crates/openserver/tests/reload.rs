//! Changing a running server's limits and keep-alive timing: new sessions get the new values,
//! open sessions keep theirs.

mod support;

use bytes::{BufMut, BytesMut};
use openserver::protocol::keepalive::KeepAliveConfig;
use openserver::server::Limits;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::{notice, protocol_id, Frame, Message};
use std::time::Duration;
use support::harness::{config, start, Raw, ALICE, AT_ONCE, WAIT};

/// A Hello frame with a `len`-byte body: before login it is answered `Not authenticated.`,
/// which shows the session read it whole.
fn hello_of(len: usize) -> Frame {
    Frame::new(protocol_id::HELLO, vec![b'x'; len])
}

async fn expect_not_authenticated(raw: &mut Raw) {
    let answer = raw.recv().await.expect("an answer, not a close");
    assert_eq!(
        CapabilitiesMessage::decode(&answer.body).unwrap(),
        CapabilitiesMessage::Error {
            protocol_id: protocol_id::HELLO,
            message: "Not authenticated.".into()
        }
    );
}

#[tokio::test]
async fn set_limits_applies_to_the_next_session_only() {
    let server = start(config()).await;
    let mut old = Raw::connect(server.addr).await;
    // A round trip, so the old session has surely been accepted with the old limits.
    old.send(hello_of(10)).await;
    expect_not_authenticated(&mut old).await;

    let lower = Limits {
        max_frame_unauthenticated: 100,
        max_frame_authenticated: 1000,
        ..server.handle.limits()
    };
    server.handle.set_limits(lower.clone()).unwrap();
    assert_eq!(server.handle.limits(), lower);

    // A new session: a header claiming more than 100 bytes closes it, with nothing sent.
    let mut new = Raw::connect(server.addr).await;
    let mut header = BytesMut::new();
    header.put_u16_le(0x5553);
    header.put_i32_le(200);
    new.send_bytes(&header).await;
    assert!(new.expect_closed(AT_ONCE).await.is_empty());

    // The old session still takes 1,000 bytes before login.
    old.send(hello_of(1000)).await;
    expect_not_authenticated(&mut old).await;
    // And a new one takes what fits the new limit.
    let mut small = Raw::connect(server.addr).await;
    small.send(hello_of(50)).await;
    expect_not_authenticated(&mut small).await;

    // Invalid limits are refused, named, and change nothing.
    let err = server
        .handle
        .set_limits(Limits {
            outbound_queue: 0,
            ..Limits::default()
        })
        .unwrap_err();
    assert!(err.contains("outbound_queue"), "{err}");
    assert_eq!(server.handle.limits(), lower);
}

#[tokio::test]
async fn a_lower_max_connections_refuses_new_ones_and_closes_none() {
    let server = start(config()).await;
    let mut old = Raw::connect(server.addr).await;
    old.send(hello_of(1)).await;
    expect_not_authenticated(&mut old).await;
    server
        .handle
        .set_limits(Limits {
            max_connections: 1,
            ..server.handle.limits()
        })
        .unwrap();
    let mut refused = Raw::connect(server.addr).await;
    assert_eq!(
        refused.expect_closed(AT_ONCE).await,
        [notice::Refusal::Busy.to_frame()]
    );
    old.send(hello_of(1)).await;
    expect_not_authenticated(&mut old).await;

    // Once the old one has gone, there is room again.
    drop(old);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut next = Raw::connect(server.addr).await;
        next.send(hello_of(1)).await;
        if next.recv().await.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "room after a close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn set_keep_alive_applies_to_sessions_that_start_it_later() {
    let server = start(config()).await;
    let fast = KeepAliveConfig {
        interval: Duration::from_millis(100),
        ..KeepAliveConfig::default()
    };
    server.handle.set_keep_alive(fast).unwrap();
    assert_eq!(server.handle.keep_alive(), Some(fast));
    assert!(server
        .handle
        .set_keep_alive(KeepAliveConfig {
            interval: Duration::ZERO,
            ..fast
        })
        .unwrap_err()
        .contains("keep_alive.interval"));

    let mut raw = Raw::connect(server.addr).await;
    let login = openserver::wire::dbauth::DatabaseAuthMessage::Authenticate {
        user: ALICE.0.into(),
        password: ALICE.1.into(),
    };
    raw.send(login.to_frame()).await;
    assert!(raw.recv().await.is_some());
    raw.send(KeepAliveMessage::KeepAlive.to_frame()).await;
    // The default interval is 10 s; the new one brings the server's beat much sooner.
    let beat = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .expect("a server KEEP_ALIVE at the new interval")
        .expect("session open");
    assert_eq!(beat, KeepAliveMessage::KeepAlive.to_frame());
}
