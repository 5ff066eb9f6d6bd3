//! Helpers shared by the tests that run the `openserver` binary.
#![allow(dead_code)] // Each test binary compiles this module and uses only part of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_openserver");
/// How long a test waits for the binary before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// The lines of `pipe`, read on a thread of their own, as they arrive.
pub fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `openserver serve`, its stdout lines arriving on a channel. Killed on drop.
pub struct Serve {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Serve {
    /// `serve ARGS`, logging only warnings (discarded).
    pub fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openserver serve");
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        Serve { child, lines }
    }

    /// `serve ARGS` with RUST_LOG=info; also returns its stderr (log) lines.
    pub fn start_logging(args: &[&str]) -> (Serve, mpsc::Receiver<String>) {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openserver serve");
        let logs = lines_of(child.stderr.take().expect("piped stderr"));
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        (Serve { child, lines }, logs)
    }

    /// Stdout lines up to and including `listening on ADDR`; returns them and ADDR.
    pub fn until_listening(&self) -> (Vec<String>, String) {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no `listening on` after {seen:?}"));
            seen.push(line.clone());
            if let Some(addr) = line.strip_prefix("listening on ") {
                return (seen, addr.to_string());
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `SIG<signal>` and waits (bounded) for the exit status.
    pub fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openserver ARGS` with `stdin` piped in.
pub fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openserver");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for openserver")
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
