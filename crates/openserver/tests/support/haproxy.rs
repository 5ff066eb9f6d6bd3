//! A real HAProxy for a test, from `contrib/haproxy/*.cfg`, on free loopback ports; killed on
//! drop. Without `haproxy`, [`haproxy_available`] fails when `CI=true` and otherwise says
//! loudly that the test is skipped. Also used by the CLI's tests (`#[path]`).
#![allow(dead_code)] // Each test binary uses part of it.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long HAProxy may take to listen.
pub const WAIT: Duration = Duration::from_secs(30);

/// Whether haproxy can run here; outside CI, its absence skips the test with a loud message.
pub fn haproxy_available(test: &str) -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "haproxy is not installed, and CI=true: .ci/run must install it (apt-get install -y haproxy)"
        );
        eprintln!(
            "\n*** SKIPPED {test}: haproxy is not installed (apt-get install -y haproxy). ***\n"
        );
    }
    found
}

pub fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/haproxy")
        .join(name)
}

/// A free loopback port (bound, then released for HAProxy to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running HAProxy, killed (it is our own child) on drop.
pub struct Haproxy {
    pub child: Child,
    pub listen: SocketAddr,
    /// The local addresses of the connections that probed for the listener.
    pub probes: Vec<SocketAddr>,
}

impl Haproxy {
    /// Starts `haproxy -db -f CONFIG` with `env`, and waits (bounded) until it accepts on
    /// `listen`, remembering the probes' addresses so that they are told apart later.
    pub fn start(config: &Path, listen: SocketAddr, env: &[(&str, String)]) -> Haproxy {
        let mut command = Command::new("haproxy");
        command
            .args(["-db", "-f"])
            .arg(config)
            .env("LISTEN", listen.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start haproxy");
        let deadline = Instant::now() + WAIT;
        let mut probes = Vec::new();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log);
                panic!("haproxy exited ({status}) before listening:\n{log}");
            }
            let probe = std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200));
            if let Ok(probe) = probe {
                probes.push(probe.local_addr().unwrap());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {listen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drain its log so that it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("haproxy: {line}");
            }
        });
        Haproxy {
            child,
            listen,
            probes,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
