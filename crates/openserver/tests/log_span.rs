//! Log lines of a session carry its `session{id, peer}` span, though the span is entered only
//! where a session may log (its start and end, packets whose handler waits, errors) rather
//! than on every poll of its task. A subscriber of its own: this file is its own test binary.

mod support;

use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::Message;
use std::io::Write;
use std::sync::{Arc, Mutex};
use support::harness::{config, start, Raw, ALICE, WAIT};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_lines_carry_the_session_span() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    let local = raw.stream.local_addr().unwrap();
    let login = DatabaseAuthMessage::Authenticate {
        user: ALICE.0.into(),
        password: ALICE.1.into(),
    };
    raw.send(login.to_frame()).await;
    raw.recv().await.expect("login answer");
    // Hello's answer takes the fast path, outside the span.
    raw.send(HelloMessage("span".into()).to_frame()).await;
    raw.recv().await.expect("hello answer");
    drop(raw);
    let prefix = format!("peer={local}}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !lines.text().contains("session closed") {
        assert!(tokio::time::Instant::now() < deadline, "{}", lines.text());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let text = lines.text();
    for message in ["session opened", "authenticated", "session closed"] {
        let line = text
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no `{message}` line in {text}"));
        assert!(
            line.contains("session{id=") && line.contains(&prefix),
            "`{message}` is not in the session's span: {line}"
        );
    }

    // With `log_packets`, every packet in is logged whole, in hex (what the answer is logged as
    // is the session's part).
    let mut cfg = config();
    cfg.log_packets = true;
    let server = start(cfg).await;
    let mut raw = Raw::connect(server.addr).await;
    let hello = HelloMessage("logged".into()).to_frame();
    raw.send(hello.clone()).await;
    raw.recv().await.expect("the not-authenticated answer");
    let want = format!(
        "packet direction=\"in\" protocol_id=10 bytes={}",
        hex::encode(hello.to_bytes().unwrap())
    );
    // Logged before the packet is handled, so already written when its answer arrives.
    assert!(
        lines.text().contains(&want),
        "no `{want}` in {}",
        lines.text()
    );
}
