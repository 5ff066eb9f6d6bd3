//! The chat-client binary as the README runs it: a piped input's lines are seen before the
//! client quits, and errors are one `error:` line without a backtrace.

use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::server::{Server, ServerConfig};
use openserver::wire::Secret;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

async fn server() -> String {
    let hasher = PasswordHasher::new(HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
    })
    .unwrap();
    let store = SqliteUserStore::open_in_memory(hasher).unwrap();
    store
        .add_user("alice", &Secret::new("secret1"), &[])
        .await
        .unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::builder(config)
        .user_store(Arc::new(store))
        .channels(chat::config())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    tokio::spawn(server.run());
    addr
}

/// Runs chat-client with `input` on its standard input; returns (success, stdout, stderr).
async fn chat_client(addr: &str, input: &'static str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args([
            "--server",
            addr,
            "--user",
            "alice",
            "--password-stdin",
            "--room",
            "lobby",
        ])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("chat-client did not finish")
    .unwrap()
    .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[tokio::test]
async fn the_readme_one_liner_prints_what_it_said() {
    let addr = server().await;
    let (ok, stdout, stderr) = chat_client(&addr, "secret1\nhello\n").await;
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("[lobby] alice: hello"), "stdout: {stdout}");
}

#[tokio::test]
async fn a_wrong_password_is_one_error_line_without_a_backtrace() {
    let addr = server().await;
    let (ok, _, stderr) = chat_client(&addr, "wrong\nhello\n").await;
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        format!("error: cannot log in to {addr} as alice: access denied")
    );
}
