//! `openserver` as the DotNetOpenServer clients meet it: a user added with a non-ASCII password
//! by `openserver user add` logs in with the Java client's bytes (DatabaseAuth and WinAuth),
//! through a trusted proxy named with `--trusted-proxy`, and `openserver sessions` lists the
//! client's address from the PROXY header.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use support::{run, stderr, stdout, Serve, WAIT};

/// The proxy: 127.0.0.3 (all of 127/8 is loopback on Linux). The commands connect from
/// 127.0.0.1, which is not trusted and sends no header.
const PROXY_IP: &str = "127.0.0.3";

/// Connects from the proxy's address and sends a PROXY v2 header naming `client`.
fn via_proxy(server: &str, client: SocketAddr) -> TcpStream {
    let server: SocketAddr = server.parse().unwrap();
    let stream = bind_and_connect(PROXY_IP, server);
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let SocketAddr::V4(client) = client else {
        unreachable!()
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(client.ip().octets());
    header.extend([127, 0, 0, 1]);
    header.extend(client.port().to_be_bytes());
    header.extend(server.port().to_be_bytes());
    let mut stream = stream;
    stream.write_all(&header).unwrap();
    stream
}

/// A TCP connection from `local` to `server`, with the tokio socket API (std cannot bind
/// before connecting).
fn bind_and_connect(local: &str, server: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(local.parse().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(server).await.unwrap();
        stream.into_std().unwrap()
    })
}

/// Sends one frame (hex) and returns the answer frame (hex), which is `len` bytes long.
fn exchange(stream: &mut TcpStream, frame: &str, len: usize) -> String {
    stream.write_all(&hex::decode(frame).unwrap()).unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).unwrap();
    hex::encode(answer)
}

#[test]
fn java_client_with_a_non_ascii_password_through_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--no-tls",
        "--trusted-proxy",
        PROXY_IP,
    ]);
    let (lines, addr) = serve.until_listening();
    let admin_password = lines
        .iter()
        .find_map(|l| l.strip_prefix("created user admin with password "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("first start prints the admin password")
        .to_string();
    // Typed in UTF-8, as a terminal sends it.
    let add = run(
        &[
            "user",
            "add",
            "jose",
            "--password-stdin",
            "--data-dir",
            data,
        ],
        "pässwörd\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));

    // DatabaseAuth as the captured Java client wrote it (user 2: admin is 1), then Hello.
    let client: SocketAddr = "203.0.113.9:50514".parse().unwrap();
    let mut db = via_proxy(&addr, client);
    assert_eq!(
        exchange(
            &mut db,
            "535511000000030001046a6f73650870e4737377f67264",
            13
        ),
        "53550700000003000202000000"
    );
    assert_eq!(
        exchange(&mut db, "5355070000000a0004636166e9", 19),
        "53550d0000000a000a48656c6c6f20636166e9"
    );
    // WinAuth, domain empty, the same one-byte-per-char password.
    let mut win = via_proxy(&addr, "203.0.113.10:40000".parse().unwrap());
    assert_eq!(
        exchange(
            &mut win,
            "535512000000020001046a6f73650870e4737377f6726400",
            9
        ),
        "535503000000020002"
    );

    // The administrator sees the clients' addresses, not the proxy's.
    let listed = run(
        &[
            "sessions",
            "--server",
            &addr,
            "--no-tls",
            "--user",
            "admin",
            "--password-stdin",
        ],
        &format!("{admin_password}\n"),
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    let jose: Vec<&str> = table
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("jose"))
        .collect();
    assert_eq!(jose.len(), 2, "{table}");
    assert!(
        jose.iter().any(|l| l.contains("203.0.113.9:50514")),
        "{table}"
    );
    assert!(
        jose.iter().any(|l| l.contains("203.0.113.10:40000")),
        "{table}"
    );
    assert!(!table.contains(PROXY_IP), "{table}");
    drop((db, win));
    assert!(serve.terminate().success());
}

#[test]
fn a_bad_trusted_proxy_is_a_clear_error() {
    let out = run(&["serve", "--trusted-proxy", "10.0.0.0/33"], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("neither a CIDR network"),
        "{}",
        stderr(&out)
    );
}
