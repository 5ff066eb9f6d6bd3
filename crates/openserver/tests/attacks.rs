//! Attacks on a running server over 127.0.0.1. After each one, a real client (DatabaseAuth as
//! alice, then Hello) must still log in and get its answer. `docs/SECURITY.md` describes the
//! protections these exercise.
//!
//! Deadlines are tested in paused time, so they cost no wall time. Floods use plain blocking
//! sockets opened on the blocking pool (which holds paused time still while it runs), so the
//! server accepts them in connect order.

mod support;

use openserver::server::RefusalReason;
use openserver::server::ServerConfig;
use openserver::session::CloseReason;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::{notice, protocol_id, Frame, Message};
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use support::harness::{config, ending, start, Ending, Raw, ALICE, AT_ONCE};
use tokio::time::Instant;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// DatabaseAuth ACCESS_DENIED as it goes over the wire.
const DENIED: &str = "535503000000030003";

fn login_frame(user: &str, password: &str) -> Frame {
    DatabaseAuthMessage::Authenticate {
        user: user.into(),
        password: password.into(),
    }
    .to_frame()
}

/// A real client from `from`: logs in as alice and gets its Hello answered.
async fn real_client_from(addr: SocketAddr, from: IpAddr) {
    let mut raw = Raw::connect_from(addr, from).await;
    raw.send(login_frame(ALICE.0, ALICE.1)).await;
    let answer = raw.recv().await.expect("the server answers the login");
    assert_eq!(
        DatabaseAuthMessage::decode(&answer.body).unwrap(),
        DatabaseAuthMessage::Authenticated { user_id: 7 },
        "a real client from {from} logs in"
    );
    raw.send(HelloMessage("still there?".into()).to_frame())
        .await;
    let answer = raw.recv().await.expect("the server answers Hello");
    assert_eq!(
        HelloMessage::decode(&answer.body).unwrap().0,
        "Hello still there?"
    );
}

async fn real_client(addr: SocketAddr) {
    real_client_from(addr, HOME).await;
}

/// Asserts that between `min` and `max` seconds of (paused, so exact) time passed.
fn assert_waited(started: Instant, min: u64, max: u64) {
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(min) && waited <= Duration::from_secs(max),
        "waited {waited:?}, expected {min}..={max} s"
    );
}

#[tokio::test]
async fn garbage_bytes_are_cut_off() {
    let server = start(config()).await;
    // Deterministic noise that does not start with the magic.
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = std::iter::once(0u8)
        .chain((0..4096).map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        }))
        .collect();
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        // The start of a TLS ClientHello, sent to the plaintext port.
        &[0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0],
        &[0u8; 1024],
        // Half the magic.
        &[0x53, 0x00, 0x10, 0x00, 0x00, 0x00],
        &noise,
    ];
    for bytes in cases {
        let mut events = server.handle.events();
        let mut raw = Raw::connect(server.addr).await;
        // The server may close before all of it is written; that is the point.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, bytes).await;
        let answer = raw.expect_closed(AT_ONCE).await;
        if bytes[0] == 0x16 {
            // A TLS client is told, in a frame, that this server speaks plaintext.
            assert_eq!(answer, [notice::plaintext_only_frame()]);
        } else {
            assert!(answer.is_empty(), "{:?}", &bytes[..8]);
        }
        assert!(
            matches!(
                ending(&mut events, raw.peer_id()).await,
                Ending::Closed(CloseReason::ProtocolError(_))
            ),
            "{:?}",
            &bytes[..8]
        );
        real_client(server.addr).await;
    }
}

#[tokio::test]
async fn wrong_magic_and_bad_lengths_are_cut_off_before_any_body_is_read() {
    let server = start(config()).await;
    let header = |magic: [u8; 2], len: i32| {
        let mut h = magic.to_vec();
        h.extend_from_slice(&len.to_le_bytes());
        h
    };
    let cases = [
        header([0x55, 0x53], 10),
        header([0x53, 0x55], -1),
        header([0x53, 0x55], i32::MIN),
        header([0x53, 0x55], 0),
        header([0x53, 0x55], 1),
        header([0x53, 0x55], i32::MAX),
        // One byte over the 4 KiB pre-login limit; no body follows and none is awaited.
        header([0x53, 0x55], 4097),
    ];
    for bytes in cases {
        let mut events = server.handle.events();
        let mut raw = Raw::connect(server.addr).await;
        raw.send_bytes(&bytes).await;
        // At once: a limit that let the 4,097-byte frame through would wait for its body
        // until the login deadline.
        assert!(raw.expect_closed(AT_ONCE).await.is_empty(), "{bytes:02x?}");
        let end = ending(&mut events, raw.peer_id()).await;
        assert!(
            matches!(&end, Ending::Closed(CloseReason::ProtocolError(_))),
            "{bytes:02x?}: {end:?}"
        );
        real_client(server.addr).await;
    }
}

#[tokio::test]
async fn the_pre_login_frame_limit_is_4_kib_and_rises_after_login() {
    let server = start(config()).await;
    // Exactly 4096 bytes of payload is read (and refused by the auth gate, not the framing).
    let mut raw = Raw::connect(server.addr).await;
    raw.send(Frame::new(protocol_id::HELLO, vec![b'x'; 4094]))
        .await;
    let answer = raw.recv().await.expect("a 4096-byte payload is accepted");
    assert_eq!(
        CapabilitiesMessage::decode(&answer.body).unwrap(),
        CapabilitiesMessage::Error {
            protocol_id: protocol_id::HELLO,
            message: "Not authenticated.".into()
        }
    );
    // After login the same connection takes far more.
    raw.send(login_frame(ALICE.0, ALICE.1)).await;
    raw.recv().await.expect("login answer");
    let big = "y".repeat(100_000);
    raw.send(HelloMessage(big.clone()).to_frame()).await;
    let answer = raw.recv().await.expect("Hello answer");
    assert_eq!(
        HelloMessage::decode(&answer.body).unwrap().0,
        format!("Hello {big}")
    );
    real_client(server.addr).await;
}

#[tokio::test(start_paused = true)]
async fn byte_at_a_time_frames_work_but_do_not_extend_the_auth_deadline() {
    let server = start(config()).await;
    // A slow but honest client: one byte at a time, quickly, logs in.
    let login = login_frame(ALICE.0, ALICE.1).to_bytes().unwrap();
    let mut raw = Raw::connect(server.addr).await;
    for byte in login.iter() {
        raw.send_bytes(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    let answer = raw.recv().await.unwrap();
    assert_eq!(
        DatabaseAuthMessage::decode(&answer.body).unwrap(),
        DatabaseAuthMessage::Authenticated { user_id: 7 }
    );

    // Slowloris: a byte a second keeps the connection busy, but the deadline counts from
    // accept, not from the last byte.
    let started = Instant::now();
    let mut slow = Raw::connect(server.addr).await;
    for byte in &login[..9] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow.send_bytes(&[*byte]).await;
    }
    assert!(slow.expect_closed(Duration::from_secs(5)).await.is_empty());
    assert_waited(started, 10, 11);
    real_client(server.addr).await;
}

#[tokio::test(start_paused = true)]
async fn trickling_after_login_does_not_reset_the_idle_timeout() {
    let mut cfg = config();
    cfg.limits.idle_timeout = Duration::from_secs(60);
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(login_frame(ALICE.0, ALICE.1)).await;
    raw.recv().await.unwrap();
    let started = Instant::now();
    // Only whole frames count as activity: bytes of a frame that never completes do not.
    let header = Frame::new(protocol_id::HELLO, vec![b'z'; 50])
        .to_bytes()
        .unwrap();
    for byte in &header[..2] {
        tokio::time::sleep(Duration::from_secs(20)).await;
        raw.send_bytes(&[*byte]).await;
    }
    assert!(raw.expect_closed(Duration::from_secs(25)).await.is_empty());
    assert_waited(started, 60, 61);
    real_client(server.addr).await;
}

#[tokio::test(start_paused = true)]
async fn half_sent_frames_then_silence_are_closed_at_the_auth_deadline() {
    let server = start(config()).await;
    let frame = Frame::new(protocol_id::DATABASE_AUTH, vec![1u8; 98])
        .to_bytes()
        .unwrap();
    let started = Instant::now();
    let mut stalled = Vec::new();
    // Part of a header; a whole header; a header and half the body.
    for cut in [3, 6, 56] {
        let mut raw = Raw::connect(server.addr).await;
        raw.send_bytes(&frame[..cut]).await;
        stalled.push(raw);
    }
    // They hold nothing a real client needs.
    real_client(server.addr).await;
    for raw in &mut stalled {
        assert!(raw.expect_closed(Duration::from_secs(12)).await.is_empty());
    }
    assert_waited(started, 10, 11);
    real_client(server.addr).await;
}

#[tokio::test(start_paused = true)]
async fn silent_clients_are_closed_at_the_auth_deadline() {
    let server = start(config()).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(Raw::connect(server.addr).await);
    }
    real_client(server.addr).await;
    for raw in &mut silent {
        assert!(raw.expect_closed(Duration::from_secs(12)).await.is_empty());
    }
    assert_waited(started, 10, 11);
    real_client(server.addr).await;
}

/// Asserts that a new connection from `from` is refused at once (not left to the 10 s login
/// deadline) because its source is penalised.
async fn assert_penalised(server: &support::harness::TestServer, from: IpAddr) {
    let mut events = server.handle.events();
    let mut refused = Raw::connect_from(server.addr, from).await;
    assert!(is_notice(
        &refused.expect_closed(AT_ONCE).await,
        "too many failed logins"
    ));
    assert_eq!(
        ending(&mut events, refused.peer_id()).await,
        Ending::Refused(RefusalReason::Penalized)
    );
}

// Real time, not paused: penalties are judged on real sockets, where a paused clock could jump
// ahead while a refusal is still in flight. The penalty is scaled down from the default 1 s to
// 500 ms so the doubling shows in seconds, with margins of 1.5 s for a loaded machine.
#[tokio::test]
async fn password_guessing_is_throttled_per_source() {
    // 3 denials per connection; 3 free failures per source, then 500 ms doubling.
    let mut cfg = config();
    cfg.security.penalty_initial = Duration::from_millis(500);
    let server = start(cfg).await;
    let addr = server.addr;
    // A connection the guesser opens early, before any penalty.
    let mut spare = Raw::connect(addr).await;
    spare
        .send(CapabilitiesMessage::GetProtocolIds.to_frame())
        .await;
    spare.recv().await.unwrap();

    // Three wrong guesses: each denied, the third denial sent, then the connection closed at
    // once (not at the login deadline), as auth_failures.
    let mut events = server.handle.events();
    let mut first = Raw::connect(addr).await;
    for guess in ["123456", "password"] {
        first.send(login_frame(ALICE.0, guess)).await;
        assert_eq!(hex::encode(first.recv_bytes().await), DENIED);
    }
    first.send(login_frame(ALICE.0, "qwerty")).await;
    assert_eq!(
        first.expect_closed(AT_ONCE).await,
        vec![DatabaseAuthMessage::AccessDenied.to_frame()]
    );
    assert_eq!(
        ending(&mut events, first.peer_id()).await,
        Ending::Closed(CloseReason::AuthFailures)
    );

    // The free failures are used up: the fourth starts a penalty. While it runs, even the
    // right password gets the same plain denial, here and on connections already open.
    let mut second = Raw::connect(addr).await;
    second.send(login_frame(ALICE.0, "letmein")).await;
    assert_eq!(hex::encode(second.recv_bytes().await), DENIED);
    second.send(login_frame(ALICE.0, ALICE.1)).await;
    assert_eq!(hex::encode(second.recv_bytes().await), DENIED);
    spare.send(login_frame(ALICE.0, ALICE.1)).await;
    assert_eq!(hex::encode(spare.recv_bytes().await), DENIED);
    let sixth = Instant::now();

    // New connections from the guesser's address are turned away at once, before any read.
    assert_penalised(&server, HOME).await;
    // Another address is not affected.
    real_client_from(addr, NEIGHBOUR).await;

    // Six failures: the penalty is 4 x 500 ms = 2 s. Once it is over the address is welcome
    // again...
    tokio::time::sleep_until(sixth + Duration::from_millis(2500)).await;
    real_client(addr).await;
    // ...but remembered: the next failure doubles it to 4 s straight away (8 s at the default
    // 1 s), so 2.5 s later, past the previous penalty, the address is still turned away.
    let mut again = Raw::connect(addr).await;
    again.send(login_frame(ALICE.0, "dragon")).await;
    assert_eq!(hex::encode(again.recv_bytes().await), DENIED);
    let seventh = Instant::now();
    assert_penalised(&server, HOME).await;
    tokio::time::sleep_until(seventh + Duration::from_millis(2500)).await;
    assert!(
        seventh.elapsed() < Duration::from_millis(3900),
        "the machine stalled too long to judge the 4 s penalty"
    );
    assert_penalised(&server, HOME).await;
    tokio::time::sleep_until(seventh + Duration::from_millis(4500)).await;
    real_client(addr).await;
}

#[tokio::test]
async fn logged_in_sessions_leave_the_pre_login_caps() {
    let mut cfg = config();
    cfg.security.max_unauthenticated = 2;
    cfg.security.unauthenticated_drop_start = 2;
    cfg.security.max_unauthenticated_per_ip = 2;
    let server = start(cfg).await;
    // Far more logged-in sessions than the caps allow waiting ones.
    let mut logged_in = Vec::new();
    for _ in 0..5 {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(login_frame(ALICE.0, ALICE.1)).await;
        let answer = raw.recv().await.expect("admitted and answered");
        assert_eq!(
            DatabaseAuthMessage::decode(&answer.body).unwrap(),
            DatabaseAuthMessage::Authenticated { user_id: 7 }
        );
        logged_in.push(raw);
    }
    // Two that do not log in fill the caps; a third is turned away at once.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(CapabilitiesMessage::GetProtocolIds.to_frame())
            .await;
        raw.recv().await.expect("admitted");
        waiting.push(raw);
    }
    let mut events = server.handle.events();
    let mut third = Raw::connect(server.addr).await;
    assert!(is_notice(
        &third.expect_closed(AT_ONCE).await,
        "too many connections from this address"
    ));
    assert_eq!(
        ending(&mut events, third.peer_id()).await,
        Ending::Refused(RefusalReason::MaxUnauthenticatedPerIp)
    );
    // Once one of them leaves, a real client fits again.
    drop(waiting.pop());
    for attempt in 0.. {
        let mut raw = Raw::connect(server.addr).await;
        raw.send(login_frame(ALICE.0, ALICE.1)).await;
        if raw.recv().await.is_some() {
            break;
        }
        assert!(attempt < 100, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens `n` sockets from 127.0.0.1 that never send a byte, one after another (so the server
/// accepts them in this order), on the blocking pool.
async fn flood(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .expect("flood connect");
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Whether `frames` are exactly one refusal notice whose text contains `says`.
fn is_notice(frames: &[Frame], says: &str) -> bool {
    let [frame] = frames else {
        return false;
    };
    match CapabilitiesMessage::decode(&frame.body) {
        Ok(CapabilitiesMessage::Error { message, .. }) => {
            notice::Refusal::parse(&message).is_some() && message.contains(says)
        }
        _ => false,
    }
}

/// Whether the server has closed `socket`, asked without waiting.
fn closed_by_server(mut socket: &std::net::TcpStream) -> bool {
    let mut bytes = [0u8; 256];
    match socket.read(&mut bytes) {
        Ok(0) => true,
        // A refused socket gets the refusal notice, then the close.
        Ok(n)
            if matches!(
                notice::classify(&bytes[..n]),
                notice::FirstBytes::Refused(_)
            ) =>
        {
            true
        }
        Ok(_) => panic!("the server sent something to a silent socket"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Which flood sockets the server still holds open.
fn still_open(sockets: &[std::net::TcpStream]) -> Vec<bool> {
    sockets.iter().map(|s| !closed_by_server(s)).collect()
}

/// Waits (in paused time, so instantly) until the server has closed every flood socket.
async fn until_all_closed(sockets: &[std::net::TcpStream]) {
    for _ in 0..200 {
        if !still_open(sockets).contains(&true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("flood sockets still open");
}

/// After a flood, connects from `from` and exchanges Capabilities if admitted. Accept is in
/// order, so once this returns the server has judged every flood socket. Returns whether it
/// was admitted.
async fn sentinel(addr: SocketAddr, from: IpAddr) -> bool {
    let mut raw = Raw::connect_from(addr, from).await;
    let frame = CapabilitiesMessage::GetProtocolIds.to_frame();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &frame.to_bytes().unwrap()).await;
    raw.recv().await.is_some()
}

#[tokio::test(start_paused = true)]
async fn an_idle_socket_flood_from_one_address_stops_at_its_cap() {
    // Defaults: 32 connections per address may wait to log in.
    let server = start(config()).await;
    let sockets = flood(server.addr, 2000).await;
    // A real client elsewhere logs in during the flood: the flood's address is at its cap,
    // the server is not.
    assert!(sentinel(server.addr, NEIGHBOUR).await);
    real_client_from(server.addr, NEIGHBOUR).await;
    let open = still_open(&sockets);
    assert_eq!(open.iter().filter(|o| **o).count(), 32);
    // Accept order: the first 32 are the ones held.
    assert!(open[..32].iter().all(|o| *o));

    // The deadline clears them; then the flood's own address can log in again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    until_all_closed(&sockets).await;
    real_client(server.addr).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_socket_flood_is_thinned_then_capped_then_cleared_by_the_deadline() {
    let mut cfg: ServerConfig = config();
    cfg.security.max_unauthenticated = 64;
    cfg.security.unauthenticated_drop_start = 32;
    // Let one address reach the global cap.
    cfg.security.max_unauthenticated_per_ip = 10_000;
    let server = start(cfg).await;
    let sockets = flood(server.addr, 2000).await;
    sentinel(server.addr, NEIGHBOUR).await;
    let open = still_open(&sockets);
    let held = open.iter().filter(|o| **o).count();
    assert!((33..=64).contains(&held), "{held} held");
    // Up to the drop start every connection is admitted.
    assert!(open[..33].iter().all(|o| *o));
    // Random early drop: some connection was refused while a later one still got in, so
    // refusals began below the cap.
    let first_refused = open.iter().position(|o| !*o).unwrap();
    let last_held = open.iter().rposition(|o| *o).unwrap();
    assert!(
        first_refused < last_held,
        "refused from {first_refused}, held up to {last_held}"
    );

    tokio::time::sleep(Duration::from_secs(11)).await;
    until_all_closed(&sockets).await;
    real_client(server.addr).await;
}
