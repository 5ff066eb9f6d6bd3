//! The server over real sockets, spoken to in raw bytes as existing clients speak.

mod support;

use bytes::{BufMut, BytesMut};
use openserver::server::RefusalReason;
use openserver::server::ServerConfig;
use openserver::session::CloseReason;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::{notice, protocol_id, Frame, Message};
use std::time::Duration;
use support::harness::{config, ending, start, Ending, Raw, ALICE, AT_ONCE};
use support::{java_capture, Side};

/// The capture's frames grouped by section: the DatabaseAuth session, the WinAuth session.
fn capture_sessions() -> Vec<Vec<support::CapturedFrame>> {
    let frames = java_capture();
    let get_ids = hex::decode("535503000000000001").unwrap();
    let mut sessions: Vec<Vec<support::CapturedFrame>> = Vec::new();
    for frame in frames {
        if frame.side == Side::Client && frame.bytes == get_ids {
            sessions.push(Vec::new());
        }
        if let Some(s) = sessions.last_mut() {
            s.push(frame);
        }
    }
    // Only the two login sessions; the keep-alive and error lines are tested on their own.
    sessions.truncate(2);
    for s in &mut sessions {
        let ka = s
            .iter()
            .position(|f| f.bytes[6..8] == [1, 0])
            .unwrap_or(s.len());
        s.truncate(ka);
        let err = s
            .iter()
            .position(|f| f.bytes[6..8] == [0, 0] && f.bytes[8] == 0xff)
            .unwrap_or(s.len());
        s.truncate(err);
    }
    sessions
}

fn side_bytes(frames: &[support::CapturedFrame], side: Side) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| f.side == side)
        .flat_map(|f| f.bytes.clone())
        .collect()
}

#[tokio::test]
async fn java_client_session_replays_byte_for_byte() {
    let server = start(config()).await;
    let sessions = capture_sessions();
    assert_eq!(
        sessions.len(),
        2,
        "capture has a DatabaseAuth and a WinAuth session"
    );
    for session in sessions {
        let mut raw = Raw::connect(server.addr).await;
        for frame in &session {
            match frame.side {
                Side::Client => raw.send_bytes(&frame.bytes).await,
                Side::Server => assert_eq!(
                    hex::encode(raw.recv_bytes().await),
                    hex::encode(&frame.bytes)
                ),
            }
        }
    }
}

#[tokio::test]
async fn every_split_point_of_the_recorded_session_gives_the_same_answers() {
    // One wrong password per split point is a guesser's pattern, which penalties would stop.
    let mut cfg = config();
    cfg.security.penalties = false;
    let server = start(cfg).await;
    let session = &capture_sessions()[0];
    let client = side_bytes(session, Side::Client);
    let expected = side_bytes(session, Side::Server);
    for cut in 0..=client.len() {
        let mut raw = Raw::connect(server.addr).await;
        raw.send_bytes(&client[..cut]).await;
        // Let the server read the first part on its own before the rest arrives.
        tokio::time::sleep(Duration::from_millis(2)).await;
        raw.send_bytes(&client[cut..]).await;
        let answers = raw.recv_exact(expected.len()).await;
        assert_eq!(
            hex::encode(answers),
            hex::encode(&expected),
            "split at {cut}"
        );
    }
}

#[tokio::test]
async fn byte_at_a_time_and_all_at_once() {
    let server = start(config()).await;
    let session = &capture_sessions()[1];
    let client = side_bytes(session, Side::Client);
    let expected = side_bytes(session, Side::Server);

    let mut raw = Raw::connect(server.addr).await;
    for byte in &client {
        raw.send_bytes(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(raw.recv_exact(expected.len()).await, expected);

    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&client).await;
    assert_eq!(raw.recv_exact(expected.len()).await, expected);
}

async fn login(raw: &mut Raw) {
    raw.send(
        DatabaseAuthMessage::Authenticate {
            user: ALICE.0.into(),
            password: ALICE.1.into(),
        }
        .to_frame(),
    )
    .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(
        DatabaseAuthMessage::decode(&answer.body).unwrap(),
        DatabaseAuthMessage::Authenticated { user_id: 7 }
    );
}

fn capabilities_error(frame: &Frame) -> (u16, String) {
    assert_eq!(frame.protocol_id, protocol_id::CAPABILITIES, "{frame:?}");
    match CapabilitiesMessage::decode(&frame.body).unwrap() {
        CapabilitiesMessage::Error {
            protocol_id,
            message,
        } => (protocol_id, message),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_gate_refuses_application_protocols_until_login() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr).await;

    // The exact frame of the capture: Hello before authentication.
    raw.send(HelloMessage("early".into()).to_frame()).await;
    assert_eq!(
        hex::encode(raw.recv_bytes().await),
        "5355180000000000ff0a00124e6f742061757468656e746963617465642e"
    );
    raw.send(KeepAliveMessage::KeepAlive.to_frame()).await;
    assert_eq!(
        capabilities_error(&raw.recv().await.unwrap()),
        (protocol_id::KEEP_ALIVE, "Not authenticated.".into())
    );
    raw.send(Frame::new(0x63, vec![1u8, 2, 3])).await;
    let (id, message) = capabilities_error(&raw.recv().await.unwrap());
    assert_eq!(id, 0x63);
    assert!(message.contains("not supported"), "{message}");

    login(&mut raw).await;
    raw.send(HelloMessage("now".into()).to_frame()).await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(HelloMessage::decode(&answer.body).unwrap().0, "Hello now");
    // Unknown protocols stay unknown after login.
    raw.send(Frame::new(0x63, vec![1u8])).await;
    assert_eq!(capabilities_error(&raw.recv().await.unwrap()).0, 0x63);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_plain_denial() {
    let server = start(config()).await;
    let mut events = server.handle.events();
    let mut raw = Raw::connect(server.addr).await;
    let attempt = |user: &str, password: &str| {
        DatabaseAuthMessage::Authenticate {
            user: user.into(),
            password: password.into(),
        }
        .to_frame()
    };
    for (user, password) in [("alice", "wrong"), ("nobody", "secret")] {
        raw.send(attempt(user, password)).await;
        assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000030003");
    }
    // Still not authenticated.
    raw.send(HelloMessage("x".into()).to_frame()).await;
    assert_eq!(
        capabilities_error(&raw.recv().await.unwrap()).1,
        "Not authenticated."
    );
    // The third denial (security.max_auth_failures) is sent too, then the connection closes
    // at once (not at the login deadline), as auth_failures.
    raw.send(attempt("", "")).await;
    let frames = raw.expect_closed(AT_ONCE).await;
    assert_eq!(frames, vec![DatabaseAuthMessage::AccessDenied.to_frame()]);
    assert_eq!(
        ending(&mut events, raw.peer_id()).await,
        Ending::Closed(CloseReason::AuthFailures)
    );
}

#[tokio::test]
async fn winauth_domain_must_match_the_realm() {
    let mut cfg = config();
    cfg.realm = "CORP".into();
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    let win = |domain: &str, password: &str| {
        openserver::wire::winauth::WinAuthMessage::Authenticate {
            user: ALICE.0.into(),
            password: password.into(),
            domain: domain.into(),
        }
        .to_frame()
    };
    raw.send(win("OTHER", ALICE.1)).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000020003");
    raw.send(win("corp", "wrong")).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000020003");
    raw.send(win("corp", ALICE.1)).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000020002");
}

#[tokio::test]
async fn malformed_bodies_get_an_error_and_the_session_goes_on() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr).await;

    // Truncated password string before login.
    raw.send(Frame::new(
        3,
        hex::decode("0105616c69636506736563").unwrap(),
    ))
    .await;
    let (id, message) = capabilities_error(&raw.recv().await.unwrap());
    assert_eq!(id, 3);
    assert!(message.contains("malformed"), "{message}");
    // Unknown command byte, empty capabilities body.
    raw.send(Frame::new(3, vec![0x09u8])).await;
    assert!(capabilities_error(&raw.recv().await.unwrap())
        .1
        .contains("unknown command"));
    raw.send(Frame::new(0, Vec::<u8>::new())).await;
    assert_eq!(capabilities_error(&raw.recv().await.unwrap()).0, 0);

    login(&mut raw).await;
    // "é" as the Java client writes it: one byte that is not UTF-8, so the session learns
    // that its peer writes one byte per char, and answers in kind (docs/PROTOCOL.md).
    raw.send(Frame::new(10, vec![1u8, 0xe9])).await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(hex::encode(&answer.body), "0748656c6c6f20e9");
    // A string length running past the body.
    raw.send(Frame::new(10, vec![0xffu8, 0xff, 0xff, 0xff, 0x07, b'a']))
        .await;
    assert_eq!(capabilities_error(&raw.recv().await.unwrap()).0, 10);

    raw.send(HelloMessage("still here".into()).to_frame()).await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(
        HelloMessage::decode(&answer.body).unwrap().0,
        "Hello still here"
    );
}

#[tokio::test]
async fn framing_violations_close_the_connection() {
    let server = start(config()).await;
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x53, 0x55, 0xff, 0xff, 0xff, 0xff],
        &[0x53, 0x55, 0x01, 0, 0, 0, 0],
        // Announces 64 KiB + 1 before authentication; no body follows and none is awaited.
        &[0x53, 0x55, 0x01, 0x00, 0x01, 0x00],
    ];
    for bytes in cases {
        let mut events = server.handle.events();
        let mut raw = Raw::connect(server.addr).await;
        raw.send_bytes(bytes).await;
        assert!(raw.expect_closed(AT_ONCE).await.is_empty(), "{bytes:?}");
        let end = ending(&mut events, raw.peer_id()).await;
        assert!(
            matches!(&end, Ending::Closed(CloseReason::ProtocolError(_))),
            "{bytes:?}: {end:?}"
        );
    }
}

#[tokio::test]
async fn frame_limit_rises_after_authentication() {
    let server = start(config()).await;
    let mut events = server.handle.events();
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let big = "x".repeat(200 * 1024);
    raw.send(HelloMessage(big.clone()).to_frame()).await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(
        HelloMessage::decode(&answer.body).unwrap().0,
        format!("Hello {big}")
    );

    let mut header = BytesMut::new();
    header.put_u16_le(0x5553);
    header.put_i32_le(16 * 1024 * 1024 + 1);
    raw.send_bytes(&header).await;
    assert!(raw.expect_closed(AT_ONCE).await.is_empty());
    let end = ending(&mut events, raw.peer_id()).await;
    assert!(
        matches!(&end, Ending::Closed(CloseReason::ProtocolError(_))),
        "{end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn unauthenticated_sessions_close_at_the_auth_deadline() {
    let server = start(config()).await;
    let mut events = server.handle.events();
    let started = tokio::time::Instant::now();
    let mut raw = Raw::connect(server.addr).await;
    assert!(raw.expect_closed(Duration::from_secs(12)).await.is_empty());
    assert_waited(started, 10, 11);
    assert_eq!(
        ending(&mut events, raw.peer_id()).await,
        Ending::Closed(CloseReason::AuthTimeout)
    );
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_close_at_the_idle_timeout() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_secs(60);
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let started = tokio::time::Instant::now();
    assert!(raw.expect_closed(Duration::from_secs(62)).await.is_empty());
    assert_waited(started, 59, 61);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_loss_is_detected_after_thirty_silent_seconds() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_secs(3600);
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    raw.send(KeepAliveMessage::KeepAlive.to_frame()).await;
    let started = tokio::time::Instant::now();
    // The server heartbeats every 10 s, then gives up on the silent client at 30 s.
    let frames = raw.expect_closed(Duration::from_secs(32)).await;
    assert_waited(started, 30, 31);
    let beats = frames
        .iter()
        .filter(|f| f.protocol_id == protocol_id::KEEP_ALIVE && f.body[..] == [1])
        .count();
    assert!((2..=3).contains(&beats), "{beats} heartbeats: {frames:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_keeps_beating_stays_connected_and_quit_closes() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_secs(3600);
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    for _ in 0..12 {
        raw.send(KeepAliveMessage::KeepAlive.to_frame()).await;
        let beat = raw.recv().await.expect("still connected");
        assert_eq!(beat.protocol_id, protocol_id::KEEP_ALIVE);
    }
    assert_eq!(server.handle.session_count(), 1);
    raw.send(KeepAliveMessage::Quit.to_frame()).await;
    raw.expect_closed(AT_ONCE).await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_disconnected_as_slow_consumer() {
    let mut cfg = config();
    cfg.limits.write_timeout = Duration::from_millis(300);
    // Room for everything pushed below: the queue never fills, so only the write deadline
    // can end the session.
    cfg.limits.outbound_queue = 1000;
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let session = server.handle.sessions().pop().unwrap();
    // 16 MiB, more than loopback socket buffers hold; the client never reads.
    let chunk = Frame::new(10, vec![0u8; 256 * 1024]);
    for _ in 0..64 {
        server.handle.send_to(session.id(), chunk.clone()).unwrap();
    }
    // The 300 ms deadline from the config, with room for a loaded machine; a deadline not
    // taken from the config (the 30 s default, or none) leaves the session open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !session.is_closing() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(session.close_reason(), Some(CloseReason::SlowConsumer));
    drop(raw);
}

#[tokio::test]
async fn server_push_reaches_a_session_a_user_and_everyone() {
    let server = start(config()).await;
    let mut alice1 = Raw::connect(server.addr).await;
    login(&mut alice1).await;
    let mut alice2 = Raw::connect(server.addr).await;
    login(&mut alice2).await;
    let mut bob = Raw::connect(server.addr).await;
    bob.send(
        DatabaseAuthMessage::Authenticate {
            user: "bob".into(),
            password: "hunter2".into(),
        }
        .to_frame(),
    )
    .await;
    bob.recv().await.unwrap();
    let mut stranger = Raw::connect(server.addr).await;

    let push = |s: &str| HelloMessage(s.into()).to_frame();
    assert_eq!(server.handle.send_to_user("alice", push("for alice")), 2);
    for raw in [&mut alice1, &mut alice2] {
        assert_eq!(raw.recv().await.unwrap(), push("for alice"));
    }
    assert_eq!(server.handle.broadcast(push("for all")), 3);
    for raw in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(raw.recv().await.unwrap(), push("for all"));
    }
    let bob_id = server
        .handle
        .sessions()
        .into_iter()
        .find(|s| s.user().is_some_and(|u| u.name == "bob"))
        .unwrap()
        .id();
    server.handle.send_to(bob_id, push("for bob")).unwrap();
    assert_eq!(bob.recv().await.unwrap(), push("for bob"));
    // The unauthenticated session got none of it.
    stranger
        .send(CapabilitiesMessage::GetProtocolIds.to_frame())
        .await;
    let first = stranger.recv().await.unwrap();
    assert_eq!(first.protocol_id, protocol_id::CAPABILITIES);
}

#[tokio::test]
async fn the_cluster_handle_of_a_lone_server_reaches_its_own_sessions() {
    let server = start(config()).await;
    let mut alice = Raw::connect(server.addr).await;
    login(&mut alice).await;
    let cluster = server.handle.cluster();
    assert_eq!(cluster.node_id(), None);
    let push = |s: &str| HelloMessage(s.into()).to_frame();
    assert_eq!(cluster.send_to_user("alice", push("a")).await, Ok(1));
    assert_eq!(alice.recv().await.unwrap(), push("a"));
    assert_eq!(cluster.broadcast(push("b")).await, Ok(1));
    assert_eq!(alice.recv().await.unwrap(), push("b"));
    let listed = cluster.sessions().await.unwrap();
    assert_eq!(listed.unanswered, 0);
    assert_eq!(listed.sessions.len(), 1);
    let (node, id) = (&listed.sessions[0].node, listed.sessions[0].session.id);
    assert_eq!(
        (node.as_str(), listed.sessions[0].session.user.as_str()),
        ("", "alice")
    );
    assert_eq!(cluster.send_to("", id, push("c")).await, Ok(true));
    assert_eq!(alice.recv().await.unwrap(), push("c"));
    // Listing is bounded per node: the lowest ids, and a count of the rest.
    let mut second = Raw::connect(server.addr).await;
    login(&mut second).await;
    let capped = cluster.sessions_at_most(1).await.unwrap();
    assert_eq!(capped.sessions.len(), 1);
    assert_eq!((capped.sessions[0].session.id, capped.omitted), (id, 1));
    assert_eq!(cluster.sessions().await.unwrap().sessions.len(), 2);
    // There are no other nodes to name.
    let err = cluster.send_to("n2", id, push("d")).await.unwrap_err();
    assert!(err.to_string().contains("not in a cluster"), "{err}");
    assert_eq!(cluster.kick_user("nobody").await, Ok(vec![]));
    assert_eq!(cluster.kick("", id).await, Ok(true));
    let frames = alice.expect_closed(AT_ONCE).await;
    assert_eq!(frames, vec![KeepAliveMessage::Quit.to_frame()]);
}

#[tokio::test]
async fn graceful_shutdown_sends_quit_and_returns() {
    let server = start(config()).await;
    let mut a = Raw::connect(server.addr).await;
    login(&mut a).await;
    let mut b = Raw::connect(server.addr).await;
    // One round trip, so b is accepted rather than waiting in the kernel's backlog (which
    // shutdown closes without a word).
    b.send(CapabilitiesMessage::GetProtocolIds.to_frame()).await;
    b.recv().await.unwrap();
    server.handle.shutdown();
    for raw in [&mut a, &mut b] {
        let frames = raw.expect_closed(AT_ONCE).await;
        assert_eq!(frames, vec![KeepAliveMessage::Quit.to_frame()]);
    }
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server returns within the grace period")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

/// A logged-in session with 16 MiB queued that its client does not read yet.
async fn a_session_with_a_backlog(server: &support::harness::TestServer) -> Raw {
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let session = server.handle.sessions().pop().unwrap();
    let chunk = Frame::new(10, vec![0u8; 256 * 1024]);
    for _ in 0..64 {
        server.handle.send_to(session.id(), chunk.clone()).unwrap();
    }
    raw
}

#[tokio::test]
async fn shutdown_waits_for_sessions_to_drain_within_the_grace_period() {
    let mut cfg = config();
    cfg.limits.outbound_queue = 1000;
    cfg.limits.shutdown_grace = Duration::from_secs(60);
    let server = start(cfg).await;
    let mut raw = a_session_with_a_backlog(&server).await;
    server.handle.shutdown();
    // The client has not read its backlog: the server waits for it rather than returning.
    let mut task = server.task;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err(),
        "the server returned while a session was still draining"
    );
    // The client reads everything, the QUIT last; then the server returns.
    let frames = raw.expect_closed(Duration::from_secs(30)).await;
    assert_eq!(frames.len(), 65);
    assert_eq!(frames.last(), Some(&KeepAliveMessage::Quit.to_frame()));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server returns once its sessions are closed")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stuck_session_after_the_grace_period() {
    let mut cfg = config();
    cfg.limits.outbound_queue = 1000;
    cfg.limits.shutdown_grace = Duration::from_millis(500);
    let server = start(cfg).await;
    let _raw = a_session_with_a_backlog(&server).await;
    let started = std::time::Instant::now();
    server.handle.shutdown();
    // The client never reads: the server returns after the grace period, not the 30 s write
    // deadline.
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server returns after its grace period")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connection_caps_close_extra_connections() {
    let mut cfg: ServerConfig = config();
    cfg.limits.max_connections_per_ip = 2;
    let server = start(cfg).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(CapabilitiesMessage::GetProtocolIds.to_frame())
            .await;
        raw.recv().await.unwrap();
        kept.push(raw);
    }
    let mut events = server.handle.events();
    let mut third = Raw::connect(server.addr).await;
    // Refused at once, told why in the one refusal notice.
    assert_eq!(
        third.expect_closed(AT_ONCE).await,
        [notice::Refusal::TooManyFromAddress.to_frame()]
    );
    assert_eq!(
        ending(&mut events, third.peer_id()).await,
        Ending::Refused(RefusalReason::MaxConnectionsPerIp)
    );
    // A slot frees when a session leaves.
    drop(kept.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(CapabilitiesMessage::GetProtocolIds.to_frame())
            .await;
        if raw.recv().await.is_some() {
            again = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "a freed slot is reusable");

    let mut cfg = config();
    cfg.limits.max_connections = 1;
    let server = start(cfg).await;
    let mut first = Raw::connect(server.addr).await;
    first
        .send(CapabilitiesMessage::GetProtocolIds.to_frame())
        .await;
    first.recv().await.unwrap();
    let mut events = server.handle.events();
    let mut second = Raw::connect(server.addr).await;
    assert_eq!(
        second.expect_closed(AT_ONCE).await,
        [notice::Refusal::Busy.to_frame()]
    );
    assert_eq!(
        ending(&mut events, second.peer_id()).await,
        Ending::Refused(RefusalReason::MaxConnections)
    );
}

#[tokio::test]
async fn capabilities_lists_the_registered_protocols() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(CapabilitiesMessage::GetProtocolIds.to_frame())
        .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(
        CapabilitiesMessage::decode(&answer.body).unwrap(),
        CapabilitiesMessage::ProtocolIds(vec![1, 2, 3, 10])
    );
}

#[tokio::test(start_paused = true)]
async fn server_started_keep_alive_beats_first_and_drops_a_silent_client() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_secs(3600);
    cfg.keep_alive.start_on_login = true;
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let started = tokio::time::Instant::now();
    // The client never sends KEEP_ALIVE; the server beats anyway and gives up at 30 s.
    let frames = raw.expect_closed(Duration::from_secs(32)).await;
    assert_waited(started, 30, 31);
    assert!(
        frames.contains(&KeepAliveMessage::KeepAlive.to_frame()),
        "{frames:?}"
    );
}

/// A protocol only administrators may use.
struct AdminOnly;

impl openserver::protocol::Protocol for AdminOnly {
    fn id(&self) -> u16 {
        0x0150
    }
    fn name(&self) -> &'static str {
        "admin_only"
    }
    fn required_role(&self) -> Option<&str> {
        Some("admin")
    }
    fn new_handler(
        &self,
        _: &openserver::session::Session,
    ) -> Box<dyn openserver::protocol::ProtocolHandler> {
        Box::new(openserver::protocol::hello::Hello)
    }
}

#[tokio::test]
async fn protocols_can_require_a_role() {
    let server = support::harness::start_with(config(), |b| b.protocol(AdminOnly)).await;
    // bob has no roles.
    let mut bob = Raw::connect(server.addr).await;
    bob.send(
        DatabaseAuthMessage::Authenticate {
            user: "bob".into(),
            password: "hunter2".into(),
        }
        .to_frame(),
    )
    .await;
    bob.recv().await.unwrap();
    bob.send(Frame::new(0x0150, HelloMessage("x".into()).to_frame().body))
        .await;
    assert_eq!(
        capabilities_error(&bob.recv().await.unwrap()),
        (0x0150, "Requires role admin.".to_string())
    );
    // alice is an admin.
    let mut alice = Raw::connect(server.addr).await;
    login(&mut alice).await;
    alice
        .send(Frame::new(0x0150, HelloMessage("x".into()).to_frame().body))
        .await;
    let answer = alice.recv().await.unwrap();
    assert_eq!(HelloMessage::decode(&answer.body).unwrap().0, "Hello x");
}

/// Asserts that between `min` and `max` seconds (of paused, so exact, time) passed since
/// `started`.
fn assert_waited(started: tokio::time::Instant, min: u64, max: u64) {
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(min) && waited <= Duration::from_secs(max),
        "waited {waited:?}, expected {min}..={max} s"
    );
}

/// A protocol whose handlers echo packets and report what the server told them (a peer's
/// error about the protocol, the end of the session) on a channel.
struct Recorder(tokio::sync::mpsc::UnboundedSender<String>);

struct RecorderHandler(tokio::sync::mpsc::UnboundedSender<String>);

const RECORDER: u16 = 0x0151;

impl openserver::protocol::Protocol for Recorder {
    fn id(&self) -> u16 {
        RECORDER
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn new_handler(
        &self,
        _: &openserver::session::Session,
    ) -> Box<dyn openserver::protocol::ProtocolHandler> {
        Box::new(RecorderHandler(self.0.clone()))
    }
}

#[async_trait::async_trait]
impl openserver::protocol::ProtocolHandler for RecorderHandler {
    async fn on_packet(
        &mut self,
        session: &openserver::session::Session,
        body: bytes::Bytes,
    ) -> Result<(), openserver::protocol::HandlerError> {
        session.send(Frame::new(RECORDER, body)).await?;
        Ok(())
    }
    async fn on_error(&mut self, _: &openserver::session::Session, message: &str) {
        let _ = self.0.send(format!("error: {message}"));
    }
    async fn on_close(&mut self, _: &openserver::session::Session) {
        let _ = self.0.send("closed".into());
    }
}

/// The next thing a [`Recorder`] handler was told, within [`AT_ONCE`].
async fn next(told: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(AT_ONCE, told.recv())
        .await
        .expect("told in time")
        .expect("channel open")
}

#[tokio::test]
async fn handlers_hear_the_peers_errors_about_their_protocol_and_the_session_end() {
    let (tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    let server = support::harness::start_with(config(), |b| b.protocol(Recorder(tx))).await;
    let mut raw = Raw::connect(server.addr).await;
    login(&mut raw).await;
    let error = |protocol_id: u16, message: &str| {
        CapabilitiesMessage::Error {
            protocol_id,
            message: message.into(),
        }
        .to_frame()
    };
    // An error about a protocol this session has not used yet reaches no handler.
    raw.send(error(RECORDER, "too early")).await;
    raw.send(Frame::new(RECORDER, vec![1u8, 2])).await;
    assert_eq!(
        raw.recv().await.unwrap(),
        Frame::new(RECORDER, vec![1u8, 2])
    );
    // Now it is running: its handler gets the peer's error, and only about its own id.
    raw.send(error(protocol_id::HELLO, "not mine")).await;
    raw.send(error(RECORDER, "bad answer")).await;
    assert_eq!(next(&mut told).await, "error: bad answer");
    // The session goes on, and at its end the handler is told once.
    raw.send(Frame::new(RECORDER, vec![3u8])).await;
    assert_eq!(raw.recv().await.unwrap(), Frame::new(RECORDER, vec![3u8]));
    raw.send(KeepAliveMessage::Quit.to_frame()).await;
    raw.expect_closed(AT_ONCE).await;
    assert_eq!(next(&mut told).await, "closed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(told.try_recv().is_err(), "told once");
}
