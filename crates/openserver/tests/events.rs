//! Session events and metrics, observed through a server's handle while raw clients talk to it
//! over 127.0.0.1.

mod support;

use openserver::server::{RefusalReason, SessionEvent};
use openserver::session::CloseReason;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::{Frame, Message};
use std::time::Duration;
use support::harness::{config, start, Raw, ALICE, AT_ONCE, WAIT};
use tokio::sync::broadcast;

fn login(user: &str, password: &str) -> Frame {
    DatabaseAuthMessage::Authenticate {
        user: user.into(),
        password: password.into(),
    }
    .to_frame()
}

/// The next event, failing the test after [`WAIT`].
async fn next(events: &mut broadcast::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("no event lost")
}

/// The value of the sample `name` (a full name with labels) in a Prometheus text scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[tokio::test]
async fn a_scripted_session_is_opened_denied_authenticated_and_closed() {
    let server = start(config()).await;
    let mut events = server.handle.events();
    let mut raw = Raw::connect(server.addr).await;

    let SessionEvent::Opened { id, peer, .. } = next(&mut events).await else {
        panic!("Opened first");
    };
    assert_eq!(peer, raw.stream.local_addr().unwrap());

    raw.send(login(ALICE.0, "wrong")).await;
    assert_eq!(
        DatabaseAuthMessage::decode(&raw.recv().await.unwrap().body).unwrap(),
        DatabaseAuthMessage::AccessDenied
    );
    match next(&mut events).await {
        SessionEvent::AuthFailed {
            id: failed_id,
            user,
            protocol,
            ..
        } => {
            assert_eq!(
                (failed_id, user.as_str(), protocol),
                (id, "alice", "database_auth")
            );
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }

    raw.send(login(ALICE.0, ALICE.1)).await;
    raw.recv().await.unwrap();
    match next(&mut events).await {
        SessionEvent::Authenticated {
            id: auth_id,
            user,
            protocol,
            ..
        } => {
            assert_eq!((auth_id, protocol), (id, "database_auth"));
            assert_eq!(user.name, "alice");
            assert_eq!(user.roles, ["admin"]);
        }
        other => panic!("expected Authenticated, got {other:?}"),
    }

    raw.send(HelloMessage("events".into()).to_frame()).await;
    raw.recv().await.unwrap();
    raw.send(KeepAliveMessage::Quit.to_frame()).await;
    raw.expect_closed(AT_ONCE).await;
    match next(&mut events).await {
        SessionEvent::Closed {
            id: closed_id,
            user,
            reason,
            duration,
            ..
        } => {
            assert_eq!((closed_id, reason), (id, CloseReason::Quit));
            assert_eq!(user.map(|u| u.name).as_deref(), Some("alice"));
            assert!(duration < WAIT, "{duration:?}");
        }
        other => panic!("expected Closed, got {other:?}"),
    }

    // The same session, counted.
    let text = server.handle.metrics().encode_prometheus();
    for (name, value) in [
        ("openserver_connections_accepted_total", 1.0),
        (
            "openserver_auth_failures_total{protocol=\"database_auth\"}",
            1.0,
        ),
        (
            "openserver_auth_successes_total{protocol=\"database_auth\"}",
            1.0,
        ),
        (
            "openserver_auth_successes_total{protocol=\"win_auth\"}",
            0.0,
        ),
        ("openserver_sessions_closed_total{reason=\"quit\"}", 1.0),
        (
            "openserver_sessions_closed_total{reason=\"keep_alive_lost\"}",
            0.0,
        ),
        ("openserver_frames_received_total{protocol_id=\"3\"}", 2.0),
        ("openserver_frames_sent_total{protocol_id=\"3\"}", 2.0),
        ("openserver_frames_received_total{protocol_id=\"10\"}", 1.0),
        ("openserver_frames_sent_total{protocol_id=\"10\"}", 1.0),
        ("openserver_frames_received_total{protocol_id=\"1\"}", 1.0),
        (
            "openserver_handler_duration_seconds_count{protocol_id=\"10\"}",
            1.0,
        ),
        (
            "openserver_handler_duration_seconds_count{protocol_id=\"3\"}",
            2.0,
        ),
        ("openserver_sessions{state=\"authenticated\"}", 0.0),
        ("openserver_outbound_queued_frames", 0.0),
    ] {
        assert_eq!(sample(&text, name), value, "{name}");
    }
    // Hello "events" is 6 + 2 + 1 + 6 bytes on the wire; its answer "Hello events" 6 more.
    assert_eq!(
        sample(&text, "openserver_received_bytes_total{protocol_id=\"10\"}"),
        15.0
    );
    assert_eq!(
        sample(&text, "openserver_sent_bytes_total{protocol_id=\"10\"}"),
        21.0
    );
    assert!(text.contains("# TYPE openserver_sessions_closed_total counter\n"));
    assert!(server
        .handle
        .metrics()
        .encode_openmetrics()
        .ends_with("# EOF\n"));
}

#[tokio::test]
async fn keep_alive_loss_is_a_lost_close_and_the_gauges_follow_the_session() {
    let mut cfg = config();
    cfg.keep_alive.interval = Duration::from_millis(50);
    cfg.keep_alive.timeout = Duration::from_millis(150);
    let server = start(cfg).await;
    let mut events = server.handle.events();
    let mut raw = Raw::connect(server.addr).await;
    assert!(matches!(
        next(&mut events).await,
        SessionEvent::Opened { .. }
    ));
    let gauge = |state: &str| {
        let text = server.handle.metrics().encode_prometheus();
        sample(&text, &format!("openserver_sessions{{state=\"{state}\"}}"))
    };
    // One round trip, so the session's read loop surely runs.
    raw.send(CapabilitiesMessage::GetProtocolIds.to_frame())
        .await;
    raw.recv().await.unwrap();
    assert_eq!(
        (gauge("authenticating"), gauge("authenticated")),
        (1.0, 0.0)
    );

    raw.send(login(ALICE.0, ALICE.1)).await;
    raw.recv().await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        SessionEvent::Authenticated { .. }
    ));
    assert_eq!(
        (gauge("authenticating"), gauge("authenticated")),
        (0.0, 1.0)
    );
    // One KEEP_ALIVE starts the server's heartbeat; then the client falls silent.
    raw.send(KeepAliveMessage::KeepAlive.to_frame()).await;
    match next(&mut events).await {
        SessionEvent::Closed { reason, user, .. } => {
            assert_eq!(reason, CloseReason::KeepAliveLost);
            assert!(reason.is_lost());
            assert_eq!(user.unwrap().name, "alice");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(
        (gauge("authenticating"), gauge("authenticated")),
        (0.0, 0.0)
    );
    let text = server.handle.metrics().encode_prometheus();
    assert_eq!(
        sample(
            &text,
            "openserver_sessions_closed_total{reason=\"keep_alive_lost\"}"
        ),
        1.0
    );
    // The server's heartbeats went out before it gave up.
    assert!(sample(&text, "openserver_frames_sent_total{protocol_id=\"1\"}") >= 1.0);
}

#[tokio::test]
async fn refused_connections_are_events_and_counted() {
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 1;
    let server = start(cfg).await;
    let mut events = server.handle.events();
    let _first = Raw::connect(server.addr).await;
    assert!(matches!(
        next(&mut events).await,
        SessionEvent::Opened { .. }
    ));
    let mut second = Raw::connect(server.addr).await;
    second.expect_closed(AT_ONCE).await;
    match next(&mut events).await {
        SessionEvent::Refused { peer, reason, .. } => {
            assert_eq!(reason, RefusalReason::MaxConnectionsPerIp);
            assert_eq!(peer, second.stream.local_addr().unwrap());
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let text = server.handle.metrics().encode_prometheus();
    assert_eq!(
        sample(
            &text,
            "openserver_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "openserver_connections_accepted_total"), 2.0);
}

/// The per-protocol metrics are gathered per run of packets, not per packet: one write
/// holding runs of two protocols, answered at once and through a handler that waits, must
/// still count every frame, byte and handler time.
#[tokio::test]
async fn pipelined_packets_of_several_protocols_are_each_counted() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(login(ALICE.0, ALICE.1)).await;
    assert!(matches!(
        DatabaseAuthMessage::decode(&raw.recv().await.unwrap().body).unwrap(),
        DatabaseAuthMessage::Authenticated { .. }
    ));
    let hello = HelloMessage("metrics".into()).to_frame();
    let ids = CapabilitiesMessage::GetProtocolIds.to_frame();
    // 5 Hellos, a Capabilities request (answered by a task that waits), 3 more Hellos.
    let mut batch = Vec::new();
    for frame in std::iter::repeat_n(&hello, 5)
        .chain([&ids])
        .chain(std::iter::repeat_n(&hello, 3))
    {
        batch.extend_from_slice(&frame.to_bytes().unwrap());
    }
    raw.send_bytes(&batch).await;
    let mut hello_bytes_out = 0;
    for i in 0..9 {
        let answer = tokio::time::timeout(WAIT, raw.recv())
            .await
            .expect("an answer in time")
            .expect("the session stays open");
        let expected = if i == 5 { 0 } else { 10 };
        assert_eq!(answer.protocol_id, expected, "answer {i} in request order");
        if expected == 10 {
            hello_bytes_out += answer.wire_len();
        }
    }
    let text = server.handle.metrics().encode_prometheus();
    let hello_in = 8 * hello.wire_len();
    for (name, value) in [
        ("openserver_frames_received_total{protocol_id=\"10\"}", 8.0),
        (
            "openserver_received_bytes_total{protocol_id=\"10\"}",
            hello_in as f64,
        ),
        ("openserver_frames_received_total{protocol_id=\"0\"}", 1.0),
        ("openserver_frames_sent_total{protocol_id=\"10\"}", 8.0),
        (
            "openserver_sent_bytes_total{protocol_id=\"10\"}",
            hello_bytes_out as f64,
        ),
        ("openserver_frames_sent_total{protocol_id=\"0\"}", 1.0),
        (
            "openserver_handler_duration_seconds_count{protocol_id=\"10\"}",
            8.0,
        ),
    ] {
        assert_eq!(sample(&text, name), value, "{name}");
    }
}
