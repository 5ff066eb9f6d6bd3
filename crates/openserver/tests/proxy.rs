//! PROXY protocol headers on the listener, over 127.0.0.1: the proxied address is the session's
//! peer; headers that are missing, bad, truncated, too long or from an untrusted address close
//! the connection.

mod support;

use openserver::server::{RefusalReason, ServerConfig, SessionEvent};
use openserver::session::CloseReason;
use openserver::tls::{self, ServerTls};
use openserver::wire::notice;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use support::harness::{config, start, start_with, Raw, TestServer, AT_ONCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The captured Java login of alice and its answer.
const LOGIN: &str = "53551000000003000105616c69636506736563726574";
const LOGGED_IN: &str = "53550700000003000207000000";
/// Hello "alice" and its answer.
const HELLO: &str = "5355080000000a0005616c696365";
const HELLO_ANSWER: &str = "53550e0000000a000b48656c6c6f20616c696365";

/// A server trusting 127.0.0.1 (only) as its proxy.
fn proxied_config() -> ServerConfig {
    ServerConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..config()
    }
}

/// A v2 PROXY (command 1) or LOCAL (0) header for a TCP over IPv4 connection from `client`.
fn v2(command: u8, client: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    let SocketAddr::V4(client) = client else {
        panic!("IPv4 only here")
    };
    if command == 0 {
        h.extend([0x00, 0x00, 0x00]);
        return h;
    }
    h.push(0x11);
    h.extend(((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend(client.ip().octets());
    h.extend([127, 0, 0, 1]);
    h.extend(client.port().to_be_bytes());
    h.extend(21843u16.to_be_bytes());
    h.extend(tlvs);
    h
}

/// Logs in and says Hello with the captured frames.
async fn login_and_hello(raw: &mut Raw) {
    raw.send_bytes(&hex::decode(LOGIN).unwrap()).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), LOGGED_IN);
    raw.send_bytes(&hex::decode(HELLO).unwrap()).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), HELLO_ANSWER);
}

/// The peer of the only open session.
fn only_peer(server: &TestServer) -> SocketAddr {
    let sessions = server.handle.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions[0].peer()
}

#[tokio::test]
async fn a_v2_header_makes_the_client_the_sessions_peer() {
    let server = start(proxied_config()).await;
    let mut events = server.handle.events();
    let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
    let mut raw = Raw::connect(server.addr).await;
    // With a NOOP TLV, which HAProxy may add: skipped.
    let mut first = v2(1, client, &[0x04, 0x00, 0x02, 0, 0]);
    // The first frame in the same segment as the header: nothing of it may be lost.
    first.extend(hex::decode(LOGIN).unwrap());
    raw.send_bytes(&first).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), LOGGED_IN);
    raw.send_bytes(&hex::decode(HELLO).unwrap()).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), HELLO_ANSWER);
    assert_eq!(only_peer(&server), client);
    // Events (what alerts and logs are built from) name the client too.
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Ok(SessionEvent::Opened { peer, .. })) => assert_eq!(peer, client),
        other => panic!("expected Opened, got {other:?}"),
    }
}

#[tokio::test]
async fn a_v1_header_makes_the_client_the_sessions_peer() {
    let server = start(proxied_config()).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(b"PROXY TCP6 2001:db8::7 ::1 40000 21843\r\n")
        .await;
    login_and_hello(&mut raw).await;
    assert_eq!(
        only_peer(&server),
        "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap()
    );
}

#[tokio::test]
async fn v2_local_and_v1_unknown_keep_the_proxys_address() {
    let server = start(proxied_config()).await;
    for header in [
        v2(0, "0.0.0.0:0".parse().unwrap(), &[]),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ] {
        let mut raw = Raw::connect(server.addr).await;
        raw.send_bytes(&header).await;
        login_and_hello(&mut raw).await;
        assert_eq!(only_peer(&server), raw.stream.local_addr().unwrap());
        drop(raw);
        wait_for_no_sessions(&server).await;
    }
}

/// Waits (bounded) until the server has no session open; fails if one stays.
async fn wait_for_no_sessions(server: &TestServer) {
    for _ in 0..1000 {
        if server.handle.session_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sessions still open: {:?}", server.handle.sessions());
}

/// Connects, sends `bytes`, and asserts the server closes the connection without a frame and
/// without a session left open; returns the refusal reason it reported (`None` when a session
/// was opened and closed instead).
async fn refused(server: &TestServer, from: IpAddr, bytes: &[u8]) -> Option<RefusalReason> {
    refused_or_closed(server, from, bytes).await.err()
}

/// As [`refused`], for a connection that became a session: why the session closed.
async fn closed(server: &TestServer, from: IpAddr, bytes: &[u8]) -> CloseReason {
    match refused_or_closed(server, from, bytes).await {
        Ok(reason) => reason,
        Err(refusal) => panic!("refused ({refusal}) rather than closed"),
    }
}

async fn refused_or_closed(
    server: &TestServer,
    from: IpAddr,
    bytes: &[u8],
) -> Result<CloseReason, RefusalReason> {
    let mut events = server.handle.events();
    let mut raw = Raw::connect_from(server.addr, from).await;
    raw.send_bytes(bytes).await;
    let frames = raw.expect_closed(AT_ONCE).await;
    assert!(frames.is_empty(), "{frames:?}");
    wait_for_no_sessions(server).await;
    loop {
        match events.try_recv() {
            Ok(SessionEvent::Refused { reason, .. }) => return Err(reason),
            Ok(SessionEvent::Closed { reason, .. }) => return Ok(reason),
            Ok(_) => {}
            Err(e) => panic!("no Refused or Closed event: {e:?}"),
        }
    }
}

#[tokio::test]
async fn bad_headers_from_the_trusted_proxy_close_the_connection() {
    let server = start(proxied_config()).await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let client: SocketAddr = "192.0.2.7:1".parse().unwrap();
    // No header at all: the DNOS frame itself.
    let missing = refused(&server, local, &hex::decode(LOGIN).unwrap()).await;
    assert_eq!(missing, Some(RefusalReason::ProxyHeader));
    // A v2 length far beyond limits.max_proxy_header: refused from the fixed 16 bytes.
    let mut huge = v2(1, client, &[]);
    huge[14..16].copy_from_slice(&0xfff0u16.to_be_bytes());
    let reason = refused(&server, local, &huge[..16]).await;
    assert_eq!(reason, Some(RefusalReason::ProxyHeader));
    // A v1 line that never ends within 107 bytes.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend([b'1'; 200]);
    assert_eq!(
        refused(&server, local, &long).await,
        Some(RefusalReason::ProxyHeader)
    );
    // Malformed addresses; a truncated header followed by the peer closing its side.
    assert_eq!(
        refused(&server, local, b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n").await,
        Some(RefusalReason::ProxyHeader)
    );
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&v2(1, client, &[])[..20]).await;
    raw.stream.shutdown().await.unwrap();
    assert!(raw.expect_closed(AT_ONCE).await.is_empty());
    wait_for_no_sessions(&server).await;
}

#[tokio::test]
async fn a_header_from_an_untrusted_address_closes_the_connection() {
    // 127.0.0.2 is not the trusted proxy: its first bytes are the session's, and a PROXY
    // header there is a framing error.
    let server = start(proxied_config()).await;
    let stranger: IpAddr = "127.0.0.2".parse().unwrap();
    let header = v2(1, "192.0.2.7:1".parse().unwrap(), &[]);
    let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n";
    // Closed as a framing error that names the cause (not at the login deadline).
    for bytes in [&header[..], &v1[..]] {
        match closed(&server, stranger, bytes).await {
            CloseReason::ProtocolError(e) => {
                assert!(e.contains("not in server.trusted_proxies"), "{e}")
            }
            other => panic!("closed as {other:?}"),
        }
    }
    // Without any trusted proxy (the default), a header is refused from everyone.
    let plain = start(config()).await;
    let reason = closed(&plain, "127.0.0.1".parse().unwrap(), &header).await;
    assert!(
        matches!(reason, CloseReason::ProtocolError(_)),
        "{reason:?}"
    );
    // And the untrusted address's own frames work as ever.
    let mut raw = Raw::connect_from(server.addr, stranger).await;
    login_and_hello(&mut raw).await;
    assert_eq!(only_peer(&server).ip(), stranger);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_header_is_abandoned_at_the_handshake_deadline() {
    let server = start(proxied_config()).await;
    let started = tokio::time::Instant::now();
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&v2(1, "192.0.2.7:1".parse().unwrap(), &[])[..10])
        .await;
    assert!(raw.expect_closed(Duration::from_secs(8)).await.is_empty());
    let waited = started.elapsed();
    // limits.tls_handshake_timeout, 5 s by default.
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test]
async fn per_ip_caps_count_the_proxied_address() {
    let mut cfg = proxied_config();
    cfg.limits.max_connections_per_ip = 1;
    let server = start(cfg).await;
    let a: SocketAddr = "192.0.2.7:1000".parse().unwrap();
    let b: SocketAddr = "192.0.2.8:1000".parse().unwrap();
    // Two clients behind the one proxy address: both get in.
    let mut first = Raw::connect(server.addr).await;
    first.send_bytes(&v2(1, a, &[])).await;
    login_and_hello(&mut first).await;
    let mut second = Raw::connect(server.addr).await;
    second.send_bytes(&v2(1, b, &[])).await;
    login_and_hello(&mut second).await;
    // A second connection of the first client is over its cap.
    let mut events = server.handle.events();
    let mut again = Raw::connect(server.addr).await;
    again
        .send_bytes(&v2(1, "192.0.2.7:1001".parse().unwrap(), &[]))
        .await;
    // Refused at once, and told why in the one refusal notice.
    assert_eq!(
        again.expect_closed(AT_ONCE).await,
        [notice::Refusal::TooManyFromAddress.to_frame()]
    );
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Ok(SessionEvent::Refused { peer, reason, .. })) => {
            assert_eq!(reason, RefusalReason::MaxConnectionsPerIp);
            assert_eq!(peer.ip(), a.ip());
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let metrics = server.handle.metrics().encode_prometheus();
    assert!(
        metrics
            .contains("openserver_connections_refused_total{reason=\"max_connections_per_ip\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn tls_still_ends_at_openserver_behind_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let set = tls::self_signed::ensure(dir.path(), &[]).unwrap();
    let server_tls = ServerTls::from_pem_files(&set.cert, &set.key, None).unwrap();
    let server = start_with(proxied_config(), move |b| b.tls(server_tls)).await;
    let client: SocketAddr = "198.51.100.9:4242".parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&v2(1, client, &[])).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(&set.ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(&hex::decode(LOGIN).unwrap())
        .await
        .unwrap();
    let mut answer = vec![0u8; LOGGED_IN.len() / 2];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hex::encode(answer), LOGGED_IN);
    assert_eq!(only_peer(&server), client);
}
