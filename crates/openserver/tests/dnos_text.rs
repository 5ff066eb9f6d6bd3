//! Non-ASCII text from the DotNetOpenServer clients, with the bytes they write: the Java (and
//! Objective-C) client one byte per char, the C# client UTF-8. Logins and Hello over 127.0.0.1.

mod support;

use openserver::auth::SqliteUserStore;
use openserver::server::ServerConfig;
use openserver::wire::Secret;
use std::sync::Arc;
use support::harness::{config, fast_hasher, start_with, Raw, TestServer, ALICE};
use support::text_capture_pairs;

/// A server whose store holds `jose` with the password `pässwörd` (stored from UTF-8 as
/// `openserver user add` stores it) as user 7, the id the captured answer carries, and alice
/// as user 8.
async fn server(config: ServerConfig) -> TestServer {
    let store = SqliteUserStore::open_in_memory(fast_hasher()).unwrap();
    for i in 1..=6 {
        store
            .add_user(&format!("filler{i}"), &Secret::new("x"), &[])
            .await
            .unwrap();
    }
    for (name, password) in [("jose", "pässwörd"), ALICE] {
        store
            .add_user(name, &Secret::new(password), &[])
            .await
            .unwrap();
    }
    let store = Arc::new(store);
    start_with(config, move |b| b.user_store(store)).await
}

/// A string as the Java client writes it: the char count (7-bit encoded), then each UTF-16
/// char's low byte.
fn java_string(s: &str) -> Vec<u8> {
    let units: Vec<u16> = s.encode_utf16().collect();
    assert!(units.len() < 0x80, "one-byte length in these tests");
    let mut out = vec![units.len() as u8];
    out.extend(units.iter().map(|&u| u as u8));
    out
}

/// A frame of `protocol` with `body`.
fn frame(protocol: u16, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x53, 0x55];
    out.extend(((body.len() + 2) as i32).to_le_bytes());
    out.extend(protocol.to_le_bytes());
    out.extend(body);
    out
}

#[tokio::test]
async fn the_java_client_logs_in_and_reads_its_hellos_back_exactly() {
    let server = server(config()).await;
    let pairs = text_capture_pairs();
    let mut raw = Raw::connect(server.addr).await;
    // DatabaseAuth jose / pässwörd, then Hello café, Jürgen Müßig, naïve façade ½.
    for (sent, answer) in &pairs[..4] {
        raw.send_bytes(sent).await;
        assert_eq!(
            hex::encode(raw.recv_bytes().await),
            hex::encode(answer),
            "answer to {}",
            hex::encode(sent)
        );
    }
    // The session is jose's, logged in with the password stored as UTF-8.
    let session = server.handle.sessions();
    assert_eq!(session[0].user().unwrap().name, "jose");
}

#[tokio::test]
async fn the_java_client_logs_in_with_winauth() {
    let server = server(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    // WinAuth AUTHENTICATE jose / pässwörd / "" as the Java client writes it.
    let mut body = vec![0x01];
    body.extend(java_string("jose"));
    body.extend(java_string("pässwörd"));
    body.extend(java_string(""));
    let login = frame(2, &body);
    assert_eq!(
        hex::encode(&login),
        "535512000000020001046a6f73650870e4737377f6726400"
    );
    raw.send_bytes(&login).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000020002");
    // And its Hello is answered one byte per char.
    raw.send_bytes(&frame(10, &java_string("café"))).await;
    assert_eq!(
        hex::encode(raw.recv_bytes().await),
        "53550d0000000a000a48656c6c6f20636166e9"
    );
}

#[tokio::test]
async fn a_wrong_java_password_is_still_denied() {
    let server = server(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    let mut body = vec![0x01];
    body.extend(java_string("jose"));
    body.extend(java_string("passwörd"));
    raw.send_bytes(&frame(3, &body)).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), "535503000000030003");
}

#[tokio::test]
async fn the_csharp_clients_utf8_and_everyones_ascii_keep_working() {
    let server = server(config()).await;
    let (sent, answer) = text_capture_pairs().pop().unwrap();
    let mut raw = Raw::connect(server.addr).await;
    // The captured Java login of alice is ASCII: the same bytes from every client.
    raw.send_bytes(&hex::decode("53551000000003000105616c69636506736563726574").unwrap())
        .await;
    assert_eq!(
        hex::encode(raw.recv_bytes().await),
        "53550700000003000208000000"
    );
    raw.send_bytes(&sent).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), hex::encode(&answer));
    raw.send_bytes(&hex::decode("5355080000000a0005616c696365").unwrap())
        .await;
    assert_eq!(
        hex::encode(raw.recv_bytes().await),
        "53550e0000000a000b48656c6c6f20616c696365"
    );
    // A C# login with a non-ASCII password (UTF-8) works too.
    let mut raw = Raw::connect(server.addr).await;
    let mut body = vec![0x01, 4];
    body.extend(b"jose");
    body.push("pässwörd".len() as u8);
    body.extend("pässwörd".as_bytes());
    raw.send_bytes(&frame(3, &body)).await;
    assert_eq!(
        hex::encode(raw.recv_bytes().await),
        "53550700000003000207000000"
    );
    // And its UTF-8 Hello on that session is answered in UTF-8.
    raw.send_bytes(&sent).await;
    assert_eq!(hex::encode(raw.recv_bytes().await), hex::encode(&answer));
}

#[tokio::test]
async fn strict_utf8_refuses_the_java_clients_bytes_with_a_clear_error() {
    let server = server(ServerConfig {
        strict_utf8: true,
        ..config()
    })
    .await;
    let pairs = text_capture_pairs();
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&pairs[0].0).await;
    let refused = raw.recv().await.expect("an answer");
    assert_eq!(refused.protocol_id, 0);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(
        text.contains("malformed packet: string is not valid UTF-8"),
        "{text}"
    );
    // Nothing was learned: WinAuth's one-byte-per-char password is refused the same way.
    raw.send_bytes(&hex::decode("535512000000020001046a6f73650870e4737377f6726400").unwrap())
        .await;
    let refused = raw.recv().await.expect("an answer");
    assert_eq!(refused.protocol_id, 0);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(text.contains("not valid UTF-8"), "{text}");
    assert!(server.handle.sessions()[0].user().is_none());
}
