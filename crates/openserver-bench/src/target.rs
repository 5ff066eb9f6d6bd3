//! The servers the bench runs against: `openserver serve` as users run it, the bench's own
//! openserver (caps raised), a bare tokio frame echo (the practical limit), and redis-server
//! (a well-known peer).
//!
//! Each runs either in this process (tests) or, for measurements, as a child process of the
//! same binary (`openserver serve ...` or `openserver bench target KIND`), so client and server
//! do not share a runtime and the server's memory and CPU time can be read from /proc.

use crate::echo::Echo;
use crate::load::Login;
use anyhow::{anyhow, bail, Context as _, Result};
use futures::{SinkExt, StreamExt as _};
use openserver::auth::{HashParams, PasswordHasher, SqliteUserStore};
use openserver::channels::{RedisBroker, RedisBrokerConfig};
use openserver::protocol::keepalive::KeepAliveConfig;
use openserver::server::{Server, ServerConfig};
use openserver::tls::ServerTls;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::{protocol_id, Frame, FrameCodec, Message, Secret};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Which server a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum TargetKind {
    /// `openserver serve` with its default configuration (see [`ChildTarget::spawn`] for the
    /// few settings the bench gives it). In this process (tests): a server built the way
    /// `serve` builds it, from the library's defaults, without the CLI's logging.
    Serve,
    /// The bench's own openserver: DatabaseAuth, Hello and the echo protocol, every cap
    /// raised, penalties off, no SCRAM or Admin, logging at `error`.
    Openserver,
    /// A bare tokio server that echoes every frame, parsed with the same `FrameCodec`, with
    /// no session logic.
    Echo,
}

impl TargetKind {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Serve => "serve",
            TargetKind::Openserver => "openserver",
            TargetKind::Echo => "echo",
        }
    }
}

/// How a target server is set up.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// Which server.
    pub kind: TargetKind,
    /// Where it listens (port 0: any free port).
    pub listen: SocketAddr,
    /// TLS with the development certificate set in this directory (generated if missing).
    pub tls_dir: Option<PathBuf>,
    /// Heartbeat interval of the openserver target (its timeout is three intervals).
    pub keep_alive_interval: Option<Duration>,
    /// The one user of the openserver target.
    pub login: Login,
    /// `serve` only: TOML appended to the configuration file the bench gives it (e.g. the
    /// `[channels]` settings of `bench fanout`).
    pub serve_config: Option<String>,
    /// Join this cluster: `serve --cluster URL --node-id NAME`; in this process, the
    /// openserver target with its channels on a `RedisBroker` (`bench cluster`).
    pub cluster: Option<ClusterNode>,
    /// `serve` only: the async runtime's worker threads (`TOKIO_WORKER_THREADS`); `None`:
    /// one per CPU, the default.
    pub worker_threads: Option<usize>,
}

/// A node of a cluster: the Redis every node shares and this node's name.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// `redis://HOST:PORT/`.
    pub redis: String,
    /// The node's name, unique among the live nodes.
    pub node_id: String,
}

impl TargetOptions {
    /// A plaintext target of `kind` on 127.0.0.1, any port, user `bench`/`bench`.
    pub fn new(kind: TargetKind) -> Self {
        TargetOptions {
            kind,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_dir: None,
            keep_alive_interval: None,
            login: Login {
                user: "bench".into(),
                password: "bench".into(),
            },
            serve_config: None,
            cluster: None,
            worker_threads: None,
        }
    }
}

/// The argon2 parameters of the openserver target: the test suite's, far cheaper than the
/// production default. Logins are setup, not what the bench measures, and tens of thousands
/// of them at 19 MiB each would dominate the idle-connection runs.
pub fn bench_hash_params() -> HashParams {
    HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
    }
}

/// The openserver target's configuration: every cap raised so that the bench's own load,
/// all from loopback, is never refused, and keep-alive at `interval` if given.
pub fn bench_server_config(listen: SocketAddr, interval: Option<Duration>) -> ServerConfig {
    let mut config = ServerConfig {
        listen,
        ..ServerConfig::default()
    };
    let limits = &mut config.limits;
    limits.max_connections = 1_000_000;
    limits.max_connections_per_ip = 1_000_000;
    limits.listen_backlog = 4096;
    limits.auth_timeout = Duration::from_secs(120);
    limits.idle_timeout = Duration::from_secs(3600);
    let security = &mut config.security;
    security.max_unauthenticated = 1_000_000;
    security.unauthenticated_drop_start = 1_000_000;
    security.max_unauthenticated_per_ip = 1_000_000;
    security.penalties = false;
    if let Some(interval) = interval {
        config.keep_alive = keep_alive_every(interval);
    }
    config
}

/// The Channels settings of the bench's own openserver: those `bench fanout` gives `serve`
/// ([`crate::fanout::serve_config`]): publishers not rate limited, no join/leave pushes.
pub fn bench_channels_config() -> openserver::channels::ChannelsConfig {
    let mut config = openserver::channels::ChannelsConfig {
        publishes_per_second: 1_000_000,
        ..Default::default()
    };
    config.default.join_leave = false;
    config
}

/// A target running in this process.
pub struct InProcessTarget {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The cluster broker of a cluster node, left cleanly at stop.
    broker: Option<Arc<RedisBroker>>,
}

impl InProcessTarget {
    /// Starts the target on this runtime.
    pub async fn start(options: &TargetOptions) -> Result<Self> {
        let stop = CancellationToken::new();
        let mut broker = None;
        let (addr, task) = match options.kind {
            TargetKind::Openserver | TargetKind::Serve => {
                let server = match (options.kind, &options.cluster) {
                    (TargetKind::Serve, None) => serve_like_server(options).await?,
                    (TargetKind::Serve, Some(_)) => {
                        bail!("an in-process cluster node is the openserver target, not serve")
                    }
                    (_, None) => openserver_server(options, None).await?,
                    (_, Some(node)) => {
                        let config = RedisBrokerConfig {
                            node_id: node.node_id.clone(),
                            ..RedisBrokerConfig::new(node.redis.clone())
                        };
                        let b = RedisBroker::connect(config).await.map_err(|e| {
                            anyhow!("node {} cannot join {}: {e}", node.node_id, node.redis)
                        })?;
                        broker = Some(b.clone());
                        openserver_server(options, Some(b)).await?
                    }
                };
                let addr = server.local_addr();
                let stop = stop.clone();
                let task = tokio::spawn(async move {
                    let _ = server.run_until(stop.cancelled_owned()).await;
                });
                (addr, task)
            }
            TargetKind::Echo => {
                let tls = options.tls_dir.as_deref().map(echo_acceptor).transpose()?;
                let listener = listen(options.listen)?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn(run_echo(listener, tls, stop.clone()));
                (addr, task)
            }
        };
        Ok(InProcessTarget {
            addr,
            stop,
            task,
            broker,
        })
    }

    /// Stops it and waits until it has (a cluster node leaves the cluster too).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Some(broker) = self.broker {
            let _ = broker.shutdown().await;
        }
    }
}

/// The openserver target, bound and ready to run; its channels on `broker` if given.
pub async fn openserver_server(
    options: &TargetOptions,
    broker: Option<Arc<RedisBroker>>,
) -> Result<Server> {
    let hasher = PasswordHasher::new(bench_hash_params())?;
    let store = SqliteUserStore::open_in_memory(hasher)?;
    store
        .add_user(
            &options.login.user,
            &Secret::new(options.login.password.clone()),
            &[],
        )
        .await?;
    let config = bench_server_config(options.listen, options.keep_alive_interval);
    let mut builder = Server::builder(config)
        .user_store(Arc::new(store))
        .hello()
        .protocol(Echo)
        .channels(bench_channels_config());
    if let Some(broker) = broker {
        builder = builder.channel_broker(broker);
    }
    if let Some(dir) = &options.tls_dir {
        let set = crate::tls::dev_certs(dir)?;
        builder = builder.tls(ServerTls::from_pem_files(&set.cert, &set.key, None)?);
    }
    Ok(builder.bind().await?)
}

/// A server built as `openserver serve` builds it with its default configuration: the
/// library's default limits and security (penalties on, per-address caps at their defaults),
/// Hello, ScramAuth and Admin (role `admin`); only the listen address, the keep-alive
/// interval if given and the user's test-speed password hash differ. (The CLI's logging and
/// alert consumers are not part of the library; the child-process target runs the real
/// `serve` with them.)
pub async fn serve_like_server(options: &TargetOptions) -> Result<Server> {
    let hasher = PasswordHasher::new(bench_hash_params())?;
    let store = SqliteUserStore::open_in_memory(hasher)?;
    store
        .add_user(
            &options.login.user,
            &Secret::new(options.login.password.clone()),
            &[],
        )
        .await?;
    let mut config = ServerConfig {
        listen: options.listen,
        ..ServerConfig::default()
    };
    if let Some(interval) = options.keep_alive_interval {
        config.keep_alive = keep_alive_every(interval);
    }
    let mut builder = Server::builder(config)
        .user_store(Arc::new(store))
        .hello()
        .scram()
        .admin("admin");
    if let Some(dir) = &options.tls_dir {
        let set = crate::tls::dev_certs(dir)?;
        builder = builder.tls(ServerTls::from_pem_files(&set.cert, &set.key, None)?);
    }
    Ok(builder.bind().await?)
}

/// Keep-alive every `interval`, lost after three.
fn keep_alive_every(interval: Duration) -> KeepAliveConfig {
    KeepAliveConfig {
        interval,
        timeout: interval * 3,
        ..KeepAliveConfig::default()
    }
}

fn echo_acceptor(dir: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let set = crate::tls::dev_certs(dir)?;
    crate::tls::acceptor(&set.cert, &set.key)
}

/// A listener with the same backlog as openserver's (4096).
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(4096)?)
}

/// The bare echo server: accept, then per connection read frames and write them back.
async fn run_echo(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, usually: let connections close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            match tls {
                None => echo_connection(stream, stop).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        echo_connection(stream, stop).await;
                    }
                }
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
}

/// Echoes every frame. The one exception is a DatabaseAuth request, answered with a canned
/// AUTHENTICATED, so the bench's connections log in the same way against every target.
/// Frames decoded from one read are written back with one flush, as openserver's writer
/// batches them.
async fn echo_connection<S>(stream: S, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, FrameCodec::new(64 * 1024 * 1024));
    let authenticated = DatabaseAuthMessage::Authenticated { user_id: 1 }.to_frame();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = framed.next() => next,
        };
        let Some(Ok(mut frame)) = next else { return };
        loop {
            let reply = if frame.protocol_id == protocol_id::DATABASE_AUTH {
                authenticated.clone()
            } else {
                frame
            };
            if framed.feed(reply).await.is_err() {
                return;
            }
            // Answer everything already buffered before flushing once.
            match futures::FutureExt::now_or_never(framed.next()) {
                Some(Some(Ok(more))) => frame = more,
                Some(_) => {
                    let _ = SinkExt::<Frame>::flush(&mut framed).await;
                    return;
                }
                None => break,
            }
        }
        if SinkExt::<Frame>::flush(&mut framed).await.is_err() {
            return;
        }
    }
}

/// Runs a target in this process until stdin closes (the parent bench went away) or
/// `max_time` passes; prints `listening on ADDR` first.
pub async fn serve_target(options: &TargetOptions, max_time: Duration) -> Result<()> {
    use std::io::Write as _;
    let target = InProcessTarget::start(options).await?;
    println!("listening on {}", target.addr);
    std::io::stdout().flush()?;
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    tokio::select! {
        // EOF or an error: the parent is gone or wants us gone.
        _ = stdin.read_line(&mut line) => {}
        () = tokio::time::sleep(max_time) => {}
    }
    target.stop().await;
    Ok(())
}

/// How to start this program again as a bench helper: the executable and the arguments
/// that lead to `bench` (so `bench target ...` and `bench worker` can be appended).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The executable.
    pub exe: PathBuf,
    /// Arguments before the helper's own, e.g. `["bench"]`.
    pub prefix: Vec<OsString>,
}

impl Launcher {
    /// This executable, with `bench` before the helper arguments.
    pub fn current() -> Result<Self> {
        Ok(Launcher {
            exe: std::env::current_exe().context("cannot find this executable")?,
            prefix: vec!["bench".into()],
        })
    }

    /// `openserver serve ARGS`: the same executable without the bench prefix, with the
    /// logging `serve` configures itself (`RUST_LOG` removed), stdin closed and stderr (its
    /// log) into `log`.
    fn serve_command(&self, args: &[OsString], log: std::fs::File) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        command
    }

    pub(crate) fn command(&self, args: &[OsString]) -> Command {
        let mut command = Command::new(&self.exe);
        command.args(&self.prefix).args(args);
        // The helpers log only errors unless asked otherwise: a run of thousands of sessions
        // would otherwise log each one.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "error");
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        command
    }
}

/// A target running as a child process.
pub struct ChildTarget {
    /// Which server.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    /// `serve`'s data directory (users.db, its log), removed when the target is dropped.
    data_dir: Option<tempfile::TempDir>,
}

impl ChildTarget {
    /// Starts the target and waits for its `listening on` line.
    ///
    /// [`TargetKind::Serve`] runs `openserver serve` with its default configuration in a fresh
    /// data directory. What the bench sets, and nothing else: `--listen` (a free loopback
    /// port), `--data-dir`, a `users.db` it creates beforehand holding the one user with a
    /// password hash at the test parameters of [`bench_hash_params`] (the server's own
    /// `[hash]` settings stay the defaults: they apply to new hashes, and a login checks the
    /// stored hash with the parameters stored in it), `--no-tls` or, for TLS, `--tls-cert` and
    /// `--tls-key` naming the development certificate in `tls_dir`, and with
    /// `keep_alive_interval` a configuration file setting only `[server.keep_alive]`. Its log
    /// (stderr, at its default level) goes to a file in the data directory.
    /// The others run `bench target KIND`.
    pub async fn spawn(launcher: &Launcher, options: &TargetOptions) -> Result<Self> {
        if options.kind == TargetKind::Serve {
            return Self::spawn_serve(launcher, options).await;
        }
        let mut args: Vec<OsString> = vec![
            "target".into(),
            options.kind.name().into(),
            "--listen".into(),
            options.listen.to_string().into(),
            "--user".into(),
            options.login.user.clone().into(),
            "--password".into(),
            options.login.password.clone().into(),
        ];
        if let Some(dir) = &options.tls_dir {
            args.push("--tls-dir".into());
            args.push(dir.into());
        }
        if let Some(interval) = options.keep_alive_interval {
            args.push("--keep-alive-interval-ms".into());
            args.push(interval.as_millis().to_string().into());
        }
        let child = launcher
            .command(&args)
            .spawn()
            .with_context(|| format!("cannot start {}", launcher.exe.display()))?;
        Self::started(child, options.kind, None).await
    }

    async fn spawn_serve(launcher: &Launcher, options: &TargetOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("openserver-bench-serve")
            .tempdir()?;
        {
            let hasher = PasswordHasher::new(bench_hash_params())?;
            let store = SqliteUserStore::open(SqliteUserStore::default_path(dir.path()), hasher)?;
            store
                .add_user(
                    &options.login.user,
                    &Secret::new(options.login.password.clone()),
                    &[],
                )
                .await?;
        }
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            options.listen.to_string().into(),
            "--data-dir".into(),
            dir.path().into(),
        ];
        match &options.tls_dir {
            None => args.push("--no-tls".into()),
            Some(tls_dir) => {
                let set = crate::tls::dev_certs(tls_dir)?;
                args.extend(["--tls-cert".into(), set.cert.into()]);
                args.extend(["--tls-key".into(), set.key.into()]);
            }
        }
        if let Some(node) = &options.cluster {
            args.extend(["--cluster".into(), node.redis.clone().into()]);
            args.extend(["--node-id".into(), node.node_id.clone().into()]);
        }
        let mut text = String::new();
        if let Some(interval) = options.keep_alive_interval {
            let ms = interval.as_millis().max(1);
            text.push_str(&format!(
                "# Written by openserver bench: only the keep-alive timing differs from the defaults.\n\
                 [server.keep_alive]\ninterval = \"{ms}ms\"\ntimeout = \"{}ms\"\n",
                ms * 3
            ));
        }
        if let Some(extra) = &options.serve_config {
            text.push_str(extra);
        }
        if !text.is_empty() {
            let path = dir.path().join("bench.toml");
            std::fs::write(&path, text)?;
            args.extend(["--config".into(), path.into()]);
        }
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = launcher.serve_command(&args, log);
        if let Some(threads) = options.worker_threads {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", launcher.exe.display()))?;
        match Self::started(child, TargetKind::Serve, Some(dir)).await {
            Ok(target) => Ok(target),
            Err(e) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(e.context(format!("serve's log ends: {}", tail.join(" | "))))
            }
        }
    }

    /// Waits for a started child's `listening on` line.
    async fn started(
        mut child: Child,
        kind: TargetKind,
        data_dir: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("target stdout not captured"))?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.trim().parse::<SocketAddr>()?);
                }
            }
            bail!("the {} target exited before listening", kind.name())
        })
        .await
        .map_err(|_| anyhow!("the {} target did not start in 60 s", kind.name()))??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ChildTarget {
            name: kind.name().into(),
            addr,
            child,
            stdin,
            data_dir,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(|pid| crate::procfs::rss_kib(Some(pid)))
    }

    /// Its CPU time so far, in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.pid()
            .and_then(|pid| crate::procfs::cpu_secs(Some(pid)))
    }

    /// Kills it with SIGKILL, no shutdown of any kind (a crashed node), and waits.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks it to stop (closes its stdin), kills it after 15 s, and waits. `serve`, which
    /// does not read stdin (it stops on SIGTERM), is killed at once: its data directory is
    /// thrown away.
    pub async fn stop(mut self) {
        if self.data_dir.is_some() {
            let _ = self.child.kill().await;
            return;
        }
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `redis-server` on a free loopback port, persistence off.
pub struct RedisTarget {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    /// Its working directory (nothing is saved there; removed when dropped).
    _dir: tempfile::TempDir,
}

/// The `redis-server` executable on `PATH`, if any.
pub fn find_redis() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

impl RedisTarget {
    /// Starts `exe` on 127.0.0.1 and waits until it accepts connections.
    pub async fn spawn(exe: &Path) -> Result<Self> {
        // Ask the kernel for a free port; the tiny race with another process is harmless
        // here (redis would fail to bind, and the error says so).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::Builder::new()
            .prefix("openserver-bench-redis")
            .tempdir()?;
        let mut child = Command::new(exe)
            .current_dir(dir.path())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Bound to 127.0.0.1 only; protected mode would refuse the bench's 127.x.y.z
            // sources, and 10,000 subscribers need more than the default 10,000 clients.
            .args(["--protected-mode", "no", "--maxclients", "18000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(RedisTarget {
                    addr,
                    child,
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited ({status}) before listening");
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!("redis-server did not listen on {addr} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its CPU time so far, in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.child
            .id()
            .and_then(|pid| crate::procfs::cpu_secs(Some(pid)))
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child
            .id()
            .and_then(|pid| crate::procfs::rss_kib(Some(pid)))
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Where Debian's `nats-server` package puts the executable.
const NATS_DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// The `nats-server` executable on `PATH` or at `/usr/sbin/nats-server`, if any.
pub fn find_nats() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(NATS_DEBIAN_PATH)).filter(|p| p.is_file()))
}

/// `nats-server` on a free loopback port, with its defaults otherwise.
pub struct NatsTarget {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl NatsTarget {
    /// Starts `exe` on 127.0.0.1 and waits until it accepts connections.
    pub async fn spawn(exe: &Path) -> Result<Self> {
        // The same harmless race as for redis: a lost port makes nats-server fail, and say so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(exe)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(NatsTarget { addr, child });
            }
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited ({status}) before listening");
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!("nats-server did not listen on {addr} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child
            .id()
            .and_then(|pid| crate::procfs::rss_kib(Some(pid)))
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `contrib/haproxy/cluster.cfg`, built in, so that the bench runs the configuration users
/// run wherever the executable is.
pub const HAPROXY_CLUSTER_CFG: &str = include_str!("../../../contrib/haproxy/cluster.cfg");

/// `haproxy -db -f cluster.cfg` in front of three nodes, on a free loopback port.
pub struct HaproxyTarget {
    /// Where the clients connect.
    pub addr: SocketAddr,
    child: Child,
    /// Holds the configuration and HAProxy's log (`haproxy.log`).
    dir: tempfile::TempDir,
}

impl HaproxyTarget {
    /// Starts `exe` with [`HAPROXY_CLUSTER_CFG`]: `nodes` are the three nodes' client and
    /// metrics listeners. Waits (at most 15 s) until it accepts connections.
    pub async fn spawn(exe: &Path, nodes: &[(SocketAddr, SocketAddr)]) -> Result<Self> {
        if nodes.len() != 3 {
            bail!(
                "contrib/haproxy/cluster.cfg names three nodes, not {}",
                nodes.len()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::Builder::new()
            .prefix("openserver-bench-haproxy")
            .tempdir()?;
        let cfg = dir.path().join("cluster.cfg");
        std::fs::write(&cfg, HAPROXY_CLUSTER_CFG)?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let mut command = Command::new(exe);
        command
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("LISTEN", addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, (client, metrics)) in nodes.iter().enumerate() {
            command.env(format!("NODE{}", k + 1), client.to_string());
            command.env(
                format!("NODE{}_METRICS_PORT", k + 1),
                metrics.port().to_string(),
            );
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (install haproxy, or name it with --haproxy PATH)",
                exe.display()
            )
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(HaproxyTarget { addr, child, dir });
            }
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
                bail!("haproxy exited ({status}) before listening: {}", log.trim());
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!("haproxy did not listen on {addr} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
