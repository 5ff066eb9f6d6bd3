//! openserver behind a real HAProxy started from `contrib/haproxy/*.cfg`, on free loopback
//! ports: a TLS 1.0 client (Python's ssl, TLS 1.0 only, as the DNOS C# client asks) logs in and
//! says Hello through `legacy-tls.cfg`; plain TCP clients are balanced over two nodes by
//! `tcp.cfg`. The client connects from 127.0.0.2, and openserver must see that address.
//!
//! Needs `haproxy` (Debian's package; `.ci/run` installs it) and `python3`. Without haproxy the
//! tests say so loudly and pass, except in CI (`CI=true`), where they fail.

mod support;

use openserver::server::{ServerConfig, SessionEvent};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::haproxy::{contrib, free_port, haproxy_available, Haproxy};
use support::harness::{config, start, TestServer};

/// Where the client connects from: not the proxy's address (127.0.0.1).
const CLIENT_IP: &str = "127.0.0.2";
/// How long any step may take before the test fails.
const WAIT: Duration = support::haproxy::WAIT;

/// A DNOS client in Python, connecting from `CLIENT_IP`: TLS 1.0 only with security level 0
/// when asked (what the DNOS C# client speaks), verifying the server against a CA file. It logs
/// in with the captured Java frames (ASCII, the same bytes from every client), says Hello,
/// prints each answer in hex, then holds the session open until a line arrives on stdin.
const PY_CLIENT: &str = r#"
import socket, ssl, sys
host, port, source, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.create_connection((host, port), timeout=30, source_address=(source, 0))
if mode != "plain":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_verify_locations(mode)
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
    print("tls", sock.version(), sock.cipher()[0], flush=True)
def exchange(request, n):
    sock.sendall(bytes.fromhex(request))
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf.hex()
print("login", exchange("53551000000003000105616c69636506736563726574", 13), flush=True)
print("hello", exchange("5355080000000a0005616c696365", 20), flush=True)
sys.stdin.readline()
sock.close()
"#;

/// The Python client, its output lines arriving on a channel.
struct PyClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl PyClient {
    /// Connects to `addr`; `mode` is `plain` or the CA file of a TLS 1.0 connection.
    fn connect(addr: SocketAddr, mode: &str) -> PyClient {
        let mut child = Command::new("python3")
            .args(["-c", PY_CLIENT])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args([CLIENT_IP, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PyClient {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("the Python client stopped without an answer")
    }

    /// Asserts the login and Hello answers the client printed.
    fn expect_session(&self) {
        assert_eq!(self.line(), "login 53550700000003000207000000");
        assert_eq!(
            self.line(),
            "hello 53550e0000000a000b48656c6c6f20616c696365"
        );
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plaintext openserver trusting HAProxy's loopback address as its proxy.
async fn node() -> TestServer {
    start(ServerConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..config()
    })
    .await
}

/// The sessions of `server` from the client's address.
fn client_sessions(server: &TestServer) -> usize {
    let client: IpAddr = CLIENT_IP.parse().unwrap();
    server
        .handle
        .sessions()
        .iter()
        .filter(|s| s.peer().ip() == client)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_0_client_logs_in_through_legacy_tls_cfg_with_its_own_address() {
    if !haproxy_available("a_tls_1_0_client_logs_in_through_legacy_tls_cfg") {
        return;
    }
    let server = node().await;
    let dir = tempfile::tempdir().unwrap();
    let generated = openserver::tls::self_signed::generate(&[]).unwrap();
    let pem = dir.path().join("site.pem");
    std::fs::write(&pem, format!("{}{}", generated.cert_pem, generated.key_pem)).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &generated.ca_pem).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = server.addr.to_string();
    let ca = ca.to_str().unwrap().to_string();
    let server = std::sync::Arc::new(server);
    let checked = server.clone();
    tokio::task::spawn_blocking(move || {
        let haproxy = Haproxy::start(
            &contrib("legacy-tls.cfg"),
            listen,
            &[
                ("OPENSERVER_BACKEND", backend),
                ("TLS_PEM", pem.to_str().unwrap().to_string()),
            ],
        );
        let client = PyClient::connect(haproxy.listen, &ca);
        let tls = client.line();
        assert!(tls.starts_with("tls TLSv1 "), "negotiated {tls}");
        client.expect_session();
        // openserver sees the client's address, not HAProxy's.
        assert_eq!(
            client_sessions(&checked),
            1,
            "{:?}",
            checked.handle.sessions()
        );
        let client_ip: IpAddr = CLIENT_IP.parse().unwrap();
        let sessions = checked.handle.sessions();
        let session = sessions
            .iter()
            .find(|s| s.peer().ip() == client_ip)
            .unwrap();
        assert_eq!(session.user().unwrap().name, "alice");
        drop(client);
        drop(haproxy);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_cfg_balances_over_two_nodes_with_the_clients_address_and_health_checks() {
    if !haproxy_available("tcp_cfg_balances_over_two_nodes") {
        return;
    }
    let (one, two) = (node().await, node().await);
    let mut checks = one.handle.events();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = [
        ("OPENSERVER_BACKEND", one.addr.to_string()),
        ("OPENSERVER_BACKEND2", two.addr.to_string()),
    ];
    let nodes = std::sync::Arc::new((one, two));
    let checked = nodes.clone();
    let haproxy = tokio::task::spawn_blocking(move || {
        let haproxy = Haproxy::start(&contrib("tcp.cfg"), listen, &env);
        // Four sessions held open at once: leastconn gives each node two.
        let clients: Vec<PyClient> = (0..4)
            .map(|_| {
                let client = PyClient::connect(haproxy.listen, "plain");
                client.expect_session();
                client
            })
            .collect();
        let (one, two) = &*checked;
        assert_eq!(
            (client_sessions(one), client_sessions(two)),
            (2, 2),
            "{:?} / {:?}",
            one.handle.sessions(),
            two.handle.sessions()
        );
        drop(clients);
        haproxy
    })
    .await
    .unwrap();
    // HAProxy's health checks reach the node as PROXY v2 LOCAL: sessions with the proxy's own
    // address, never refused for their header.
    let proxy_ip: IpAddr = "127.0.0.1".parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, checks.recv()).await {
            Ok(Ok(SessionEvent::Opened { peer, .. }))
                if peer.ip() == proxy_ip && !haproxy.probes.contains(&peer) =>
            {
                break
            }
            Ok(Ok(SessionEvent::Refused { peer, reason, .. })) => {
                panic!("a connection from {peer} was refused: {reason}")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("events: {e}"),
            Err(_) => panic!("no health check reached the node within {WAIT:?}"),
        }
    }
    drop(haproxy);
}
