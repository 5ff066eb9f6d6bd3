//! The HTTP API for backends (`[http_api]`) of `openserver serve`, over 127.0.0.1: what a
//! backend sends with curl, and what subscribed clients see.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{lines_of, run, stderr, Serve, BIN, WAIT};

const KEY: &str = "test-key-0123456789abcdef";

/// `serve` with the API on a free loopback port; returns it, its address, the API's address
/// and the data dir.
fn start(extra: &str) -> (Serve, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("openserver.toml");
    std::fs::write(
        &config,
        format!("[http_api]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{KEY}\"]\n{extra}"),
    )
    .unwrap();
    let data = dir.path().to_str().unwrap();
    let serve = Serve::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        config.to_str().unwrap(),
    ]);
    let (lines, addr) = serve.until_listening();
    let api = lines
        .iter()
        .find_map(|l| l.strip_prefix("http api on "))
        .unwrap_or_else(|| panic!("no `http api on` in {lines:?}"))
        .to_string();
    (serve, addr, api, dir)
}

/// One request with `Connection: close`; returns the status and the body as JSON.
fn request(api: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(api).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A refused large body may close the connection before all of it is written.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn call(api: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let auth = format!("Authorization: Bearer {KEY}");
    let (status, text) = request(api, method, path, &[&auth], body.as_bytes());
    let value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{status}: body {text:?} is not JSON: {e}"));
    (status, value)
}

fn add_user(data: &str, name: &str) {
    let add = run(
        &["user", "add", name, "--password-stdin", "--data-dir", data],
        &format!("pw-{name}\n"),
    );
    assert!(add.status.success(), "{}", stderr(&add));
}

/// `openserver subscribe CHANNEL --count 1` as `user`.
fn subscriber(addr: &str, data: &std::path::Path, user: &str, channel: &str) -> Child {
    subscriber_since(addr, data, user, channel, &[])
}

fn subscriber_since(
    addr: &str,
    data: &std::path::Path,
    user: &str,
    channel: &str,
    extra: &[&str],
) -> Child {
    let ca = data.join("tls").join("ca.pem");
    let mut child = Command::new(BIN)
        .args(["subscribe", "--server", addr, "--ca", ca.to_str().unwrap()])
        .args(["--user", user, "--password-stdin", channel, "--count", "1"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("pw-{user}\n").as_bytes())
        .unwrap();
    child
}

/// Presence of `channel` until `done` holds for it (bounded).
fn presence_until(
    api: &str,
    channel: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let path = format!("/api/v1/presence?channel={}", channel.replace('#', "%23"));
        let (status, value) = call(api, "GET", &path, "");
        assert_eq!(status, 200, "{value}");
        let clients = value["clients"].as_array().unwrap().clone();
        if done(&clients) {
            return clients;
        }
        assert!(start.elapsed() < WAIT, "presence stayed {clients:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first stdout line of `child`, bounded.
fn first_line(child: &mut Child) -> String {
    let lines = lines_of(child.stdout.take().unwrap());
    lines.recv_timeout(WAIT).expect("no publication received")
}

#[test]
fn publish_presence_history_push_and_disconnect() {
    let (_serve, addr, api, dir) = start("");
    let data = dir.path().to_str().unwrap();
    add_user(data, "alice");
    add_user(data, "bob");

    // A subscribed client gets what the backend publishes.
    let mut live = subscriber(&addr, dir.path(), "alice", "lobby");
    let clients = presence_until(&api, "lobby", |c| !c.is_empty());
    assert_eq!(clients[0]["user"], "alice", "{clients:?}");
    let (status, published) = call(
        &api,
        "POST",
        "/api/v1/publish",
        r#"{"channel":"lobby","data":"hello from the backend"}"#,
    );
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["offset"], 1);
    let epoch = published["epoch"].as_str().unwrap().to_string();
    assert_eq!(first_line(&mut live), "1 hello from the backend");
    assert!(live.wait().unwrap().success());

    // History: all, then after a position, and binary data.
    let (status, _) = call(
        &api,
        "POST",
        "/api/v1/publish",
        r#"{"channel":"lobby","data_base64":"AAEC"}"#,
    );
    assert_eq!(status, 200);
    let (status, history) = call(&api, "GET", "/api/v1/history?channel=lobby", "");
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["offset"], 2);
    let publications = history["publications"].as_array().unwrap();
    assert_eq!(publications.len(), 2, "{history}");
    assert_eq!(publications[0]["data"], "hello from the backend");
    assert_eq!(publications[1]["data_base64"], "AAEC");
    let path = format!("/api/v1/history?channel=lobby&since={epoch}%3A1&limit=10");
    let (status, since) = call(&api, "GET", &path, "");
    assert_eq!(status, 200, "{since}");
    let publications = since["publications"].as_array().unwrap();
    assert_eq!(publications.len(), 1, "{since}");
    assert_eq!(publications[0]["offset"], 2);

    // push_user reaches the user's personal channel.
    // Personal channels keep no presence: the session recovers the push from its history.
    let (status, pushed) = call(
        &api,
        "POST",
        "/api/v1/push_user",
        r#"{"user":"bob","data":"for bob only"}"#,
    );
    assert_eq!(status, 200, "{pushed}");
    let since = format!("{}:0", pushed["epoch"].as_str().unwrap());
    let mut personal = subscriber_since(&addr, dir.path(), "bob", "#bob", &["--since", &since]);
    assert_eq!(first_line(&mut personal), "1 for bob only");
    assert!(personal.wait().unwrap().success());

    // disconnect closes the session: it leaves presence.
    let _waiting = KillOnDrop(subscriber(&addr, dir.path(), "alice", "lobby"));
    let clients = presence_until(&api, "lobby", |c| !c.is_empty());
    let session = clients[0]["session"].as_u64().unwrap();
    let (status, answer) = call(
        &api,
        "POST",
        "/api/v1/disconnect",
        &format!(r#"{{"session":{session}}}"#),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["disconnected"], serde_json::json!([session]));
    presence_until(&api, "lobby", |c| {
        c.iter().all(|x| x["session"].as_u64() != Some(session))
    });
    // A session that is gone is 404.
    let (status, answer) = call(
        &api,
        "POST",
        "/api/v1/disconnect",
        &format!(r#"{{"session":{session}}}"#),
    );
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = call(&api, "POST", "/api/v1/disconnect", r#"{"user":"nobody"}"#);
    assert_eq!(status, 404, "{answer}");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn keys_bad_input_and_body_limit() {
    let (_serve, _addr, api, _dir) = start("max_body = 1024\n");
    let body = br#"{"channel":"lobby","data":"x"}"#;
    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-key-0123456789abcdef"],
        vec!["X-API-Key: test-key-0123456789abcdeX"],
    ] {
        let (status, text) = request(&api, "POST", "/api/v1/publish", &headers, body);
        assert_eq!(status, 401, "{headers:?}: {text}");
        assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
    }
    let header = format!("X-API-Key: {KEY}");
    let (status, text) = request(&api, "POST", "/api/v1/publish", &[&header], body);
    assert_eq!(status, 200, "{text}");

    let big = format!(r#"{{"channel":"lobby","data":"{}"}}"#, "x".repeat(2000));
    let (status, value) = call(&api, "POST", "/api/v1/publish", &big);
    assert_eq!(status, 413, "{value}");
    assert_eq!(value["code"], "too_large");

    for (method, path, body, want) in [
        ("POST", "/api/v1/publish", "not json", 400),
        ("POST", "/api/v1/publish", r#"{"channel":"lobby"}"#, 400),
        (
            "POST",
            "/api/v1/publish",
            r#"{"channel":"a","data_base64":"!"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/publish",
            r#"{"channel":"nope:x","data":"x"}"#,
            404,
        ),
        ("GET", "/api/v1/history?channel=lobby&since=zz", "", 400),
        ("GET", "/api/v1/presence", "", 400),
        ("GET", "/api/v1/publish", "", 405),
        ("GET", "/api/v2/anything", "", 404),
    ] {
        let (status, value) = call(&api, method, path, body);
        assert_eq!(status, want, "{method} {path} {body}: {value}");
        assert!(value["message"].is_string(), "{value}");
    }
}

#[test]
fn a_non_loopback_listen_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("openserver.toml");
    std::fs::write(
        &config,
        format!("[http_api]\nlisten = \"0.0.0.0:0\"\napi_keys = [\"{KEY}\"]\n"),
    )
    .unwrap();
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing http_api.listen") && err.contains("loopback"),
        "{err}"
    );
}

/// One HTTPS request to `api` that trusts only the server's development CA.
fn https_get(api: &str, ca: &std::path::Path, path: &str) -> String {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(api).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    // The server may end without close_notify once it has answered; the answer is complete.
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
}

#[test]
fn with_tls_the_api_serves_https_with_the_servers_certificate() {
    let (_serve, _addr, api, dir) = start("tls = true\n");
    let answer = https_get(
        &api,
        &dir.path().join("tls").join("ca.pem"),
        "/api/v1/presence?channel=lobby",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""clients":[]"#), "{answer}");

    // Plain HTTP gets no answer: keys never cross in the clear.
    let mut plain = TcpStream::connect(&api).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!("GET /api/v1/presence?channel=lobby HTTP/1.1\r\nHost: {api}\r\n\r\n");
    plain.write_all(head.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");
}

#[test]
fn https_without_the_servers_tls_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("openserver.toml");
    std::fs::write(
        &config,
        format!("[http_api]\nlisten = \"0.0.0.0:0\"\ntls = true\napi_keys = [\"{KEY}\"]\n"),
    )
    .unwrap();
    let out = run(
        &[
            "serve",
            "--no-tls",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("http_api.tls = true needs the server's TLS"),
        "{err}"
    );
}
