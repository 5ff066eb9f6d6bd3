//! A real `redis-server` for a test: on a free 127.0.0.1 port, in a temp dir, without
//! persistence; killed on drop, and stoppable and restartable on the same port.
//! Without `redis-server`, [`RedisServer::start`] fails when `CI` is set and otherwise says
//! loudly that the test is skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long Redis may take to answer PING after it was started.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A running (or stopped) `redis-server` of a test.
pub struct RedisServer {
    /// The port it listens on, kept across restarts.
    pub port: u16,
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TLS only (`start_tls`): the CA file clients trust; the server's files sit beside it.
    pub tls_ca: Option<PathBuf>,
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl RedisServer {
    /// Starts one for `test`; `None` (after a loud SKIPPED line) when `redis-server` is not
    /// installed and `CI` is not set.
    pub async fn start(test: &str) -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{test}: redis-server is not installed and CI is set; install it \
                     (apt-get install redis-server; .ci/run does)"
                );
            }
            eprintln!(
                "\n*** SKIPPED {test}: redis-server not found (apt-get install redis-server) ***\n"
            );
            return None;
        };
        let mut server = RedisServer {
            port: free_port(),
            binary,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            tls_ca: None,
        };
        server.restart().await;
        Some(server)
    }

    /// As [`start`](Self::start), but serving TLS only, with a certificate for 127.0.0.1 and
    /// localhost signed by a CA of its own (`tls_ca`).
    #[allow(dead_code)]
    pub async fn start_tls(test: &str) -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            return Self::start(test).await;
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let made = openserver::tls::self_signed::generate(&[]).expect("certificates");
        for (name, pem) in [
            ("ca.pem", &made.ca_pem),
            ("cert.pem", &made.cert_pem),
            ("key.pem", &made.key_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let mut server = RedisServer {
            port: free_port(),
            binary,
            tls_ca: Some(dir.path().join("ca.pem")),
            dir,
            child: None,
        };
        server.restart().await;
        Some(server)
    }

    /// The URL a broker connects to.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty, and waits for PING.
    pub async fn restart(&mut self) {
        self.stop();
        let dir = self.dir.path();
        let mut command = Command::new(&self.binary);
        if self.tls_ca.is_some() {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer PING within {READY_WITHIN:?}; its log:\n{log}",
            self.port
        );
    }

    async fn ping(&self) -> bool {
        if let Some(ca) = &self.tls_ca {
            // redis-cli comes with redis-server (Debian's redis-tools), and speaks TLS.
            let cli = self.binary.with_file_name("redis-cli");
            let (ca, port) = (ca.clone(), self.port.to_string());
            let answer = tokio::task::spawn_blocking(move || {
                Command::new(cli)
                    .args(["--tls", "--cacert"])
                    .arg(ca)
                    .args(["-h", "127.0.0.1", "-p", &port, "PING"])
                    .stdin(Stdio::null())
                    .output()
            })
            .await;
            return matches!(answer, Ok(Ok(out)) if out.stdout.starts_with(b"PONG"));
        }
        let attempt = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 7];
            stream.read_exact(&mut buf).await.ok()?;
            Some(&buf == b"+PONG\r\n")
        };
        tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
