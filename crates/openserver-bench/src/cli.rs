//! `openserver bench`: its arguments and what each mode does. The CLI crate only forwards to
//! [`run`].

use crate::compare::CompareOptions;
use crate::idle::IdleOptions;
use crate::load::{LoadSpec, Login, NoProgress, Workload};
use crate::report::{self, Bar, BenchJson};
use crate::target::{ChildTarget, Launcher, TargetKind, TargetOptions};
use crate::tls::{ClientTlsSpec, Verify};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `openserver bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A mode other than a plain load run.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// The plain load run (boxed: it is the largest of the `openserver` subcommands' args).
    #[command(flatten)]
    pub run: Box<RunArgs>,
}

/// The modes of `openserver bench`.
#[derive(Subcommand, Debug)]
pub enum BenchMode {
    /// Run the same load against openserver, a bare frame-echo server (the practical limit)
    /// and redis-server with PING (if installed), alternating, and print medians and ratios.
    Compare(CompareArgs),
    /// Hold N authenticated sessions with keep-alive and report the server's memory per
    /// session, lost sessions and heartbeat lateness.
    Idle(IdleArgs),
    /// Publish/subscribe fan-out: S subscribers on C channels, P publishers; deliveries/s,
    /// losses, publish-to-delivery latency and server memory per subscription, against
    /// `openserver serve` and, with --compare, nats-server and redis-server in alternating
    /// rounds.
    Fanout(FanoutArgs),
    /// The fan-out against N `openserver serve --cluster` nodes on one redis-server
    /// (subscribers round-robin over the nodes, publishers on node 1), alternating with the
    /// same load on one node alone; plus a cross-node latency probe (node 1 to node 2).
    Cluster(ClusterArgs),
    /// (internal) Run a server for the bench: prints `listening on ADDR`, stops when stdin
    /// closes.
    #[command(hide = true)]
    Target(TargetArgs),
    /// (internal) Hold a share of the connections for a bench in another process.
    #[command(hide = true)]
    Worker,
}

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A Hello (protocol 10) round trip.
    Hello,
    /// An echo-protocol (0x7E00) round trip with a --payload byte body.
    Echo,
    /// A new connection each time: connect, TLS handshake, one Capabilities round trip.
    Handshake,
}

/// The load shape, shared by `bench` and `bench compare`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Connections (for --kind handshake: handshakes running at once).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection (with --rate: the most in flight).
    #[arg(long, short = 'd', default_value_t = 1)]
    pub depth: usize,
    /// Seconds to run, counted once every connection is set up [default: 10].
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Send this many requests in all instead of running for a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Open loop: this many requests per second in all, on a fixed schedule; latency counts
    /// from each request's scheduled time.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// What each request is.
    #[arg(long, value_enum, default_value_t = Kind::Hello)]
    pub kind: Kind,
    /// Body bytes of each --kind echo request.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub payload: usize,
    /// Connections set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Period of the time series (progress bar, plot), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub sample_ms: u64,
    /// Connections per process: more are spread over worker processes, each connecting from
    /// its own loopback addresses (127.B.W.x).
    #[arg(long, default_value_t = default_per_worker())]
    pub per_worker: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Draw latency percentiles and throughput over time into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// Connections one process holds: what `ulimit -n` leaves after a margin, at most 10,000
/// (about a third of one source address's ephemeral ports).
fn default_per_worker() -> usize {
    crate::procfs::fd_limit()
        .map(|limit| limit.saturating_sub(1024).clamp(64, 10_000) as usize)
        .unwrap_or(10_000)
}

/// `openserver bench` without a mode: drive one server.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The load shape.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Server to drive (loopback only); without it the bench starts its own (--target).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The server the bench starts when --server is not given: `serve` is `openserver serve`
    /// with its default configuration, `openserver` the bench's own server (caps raised).
    #[arg(long, value_enum, default_value_t = TargetKind::Serve, conflicts_with = "server")]
    pub target: TargetKind,
    /// TLS on the bench's own server (a development certificate in a temporary directory).
    #[arg(long, conflicts_with = "server")]
    pub tls: bool,
    /// User to log in as (DatabaseAuth).
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// Password of --user.
    #[arg(
        long,
        env = "OPENSERVER_BENCH_PASSWORD",
        default_value = "bench",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub password: String,
    /// Trust server certificates issued by the CA in this PEM file.
    #[arg(long, value_name = "FILE", requires = "server", conflicts_with_all = ["fingerprint", "no_tls"])]
    pub ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint.
    #[arg(
        long,
        value_name = "SHA256",
        requires = "server",
        conflicts_with = "no_tls"
    )]
    pub fingerprint: Option<String>,
    /// Connect to --server in plaintext.
    #[arg(long, requires = "server")]
    pub no_tls: bool,
    /// Verify the server under this name instead of the host in --server.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// `openserver bench compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The load shape, identical for every target.
    #[command(flatten)]
    pub load: LoadArgs,
    /// TLS for openserver and the echo server (redis is then skipped).
    #[arg(long)]
    pub tls: bool,
    /// Also run openserver over TLS as a further target, for TLS against plaintext in the
    /// same alternating runs (prints ratio_tls_vs_plain).
    #[arg(long, conflicts_with = "tls")]
    pub with_tls: bool,
    /// Runs per target, alternating between targets.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Leave redis out even if redis-server is installed.
    #[arg(long)]
    pub no_redis: bool,
    /// Measure the bench's own openserver (every cap raised, penalties off, no SCRAM or
    /// Admin, logging at error) as "openserver" instead of `openserver serve` with its
    /// default configuration.
    #[arg(long)]
    pub bench_server: bool,
    /// Also run the bench's own openserver as a further target (`openserver_bench`), next to
    /// `openserver serve`, in the same alternating rounds.
    #[arg(long, conflicts_with = "bench_server")]
    pub with_bench_server: bool,
    /// Also run `serve` of another openserver executable (a build of an earlier commit, say)
    /// as a further target named `baseline_FILENAME`, in the same alternating rounds, with the
    /// same settings as `openserver serve`: before and after a change in one run. Repeatable.
    #[arg(long, value_name = "PATH", conflicts_with = "bench_server")]
    pub baseline: Vec<PathBuf>,
    /// The redis-server executable [default: redis-server on PATH].
    #[arg(long, value_name = "PATH")]
    pub redis_server: Option<PathBuf>,
}

/// `openserver bench idle`.
#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Sessions to hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Keep-alive interval of the server and the clients, in seconds (lost after three).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub keep_alive_interval: f64,
    /// TLS sessions.
    #[arg(long)]
    pub tls: bool,
    /// Sessions per process: more are spread over worker processes, each from its own
    /// loopback addresses (127.B.W.x).
    #[arg(long, default_value_t = default_per_worker())]
    pub per_worker: usize,
    /// Sessions set up at once (per process).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Hold the sessions on the bench's own openserver (caps raised, penalties off, no SCRAM
    /// or Admin, logging at error) instead of `openserver serve` with its default
    /// configuration.
    #[arg(long)]
    pub bench_server: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `openserver bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// The load.
    #[command(flatten)]
    pub load: FanoutLoadArgs,
    /// Rounds (each runs every server once, alternating).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Also run nats-server and redis-server pub/sub (skipped with the reason if missing).
    #[arg(long)]
    pub compare: bool,
    /// Instead of the fan-out: resubscribe after this many missed publications and time the
    /// recovery (openserver only; sets the default namespace's history_size to at least it).
    #[arg(long, value_name = "N")]
    pub resubscribe: Option<usize>,
}

/// `openserver bench cluster`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The load, the same for the cluster and the single node.
    #[command(flatten)]
    pub load: FanoutLoadArgs,
    /// Nodes of the cluster (at least 2).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Rounds (each runs the cluster, then one node alone).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Publications per second of the cross-node latency probe (one subscriber on node 2,
    /// the publisher on node 1), run after each cluster fan-out.
    #[arg(long, value_name = "PER_SEC", default_value_t = 1000.0)]
    pub probe_rate: f64,
    /// Seconds the probe publishes [default: --duration].
    #[arg(long, value_name = "SECS")]
    pub probe_duration: Option<f64>,
    /// No cross-node probe.
    #[arg(long)]
    pub no_probe: bool,
    /// The redis-server executable [default: redis-server on PATH].
    #[arg(long, value_name = "PATH")]
    pub redis_server: Option<PathBuf>,
    /// Worker threads of each cluster node (sets `TOKIO_WORKER_THREADS` for it), e.g. 1 for
    /// three nodes sharing two CPUs [default: one per CPU]; the single node keeps the default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub node_threads: Option<u16>,
    /// Instead of the fan-out: the reconnect storm. Three nodes behind HAProxy
    /// (contrib/haproxy/cluster.cfg), --sessions subscribers of the client library
    /// (reconnecting, resume tokens) on --channels channels, one publisher at --rate (default
    /// 100/s); the node holding the most subscribers is killed (SIGKILL) and the time until
    /// every one of its sessions is back and has recovered what it missed is measured, with
    /// the publications lost.
    #[arg(long, conflicts_with = "idle")]
    pub storm: bool,
    /// Instead of the fan-out: memory per idle logged-in session of one node started with
    /// --cluster against the same node without it, alternating (--duration is the hold).
    #[arg(long)]
    pub idle: bool,
    /// --storm: subscribing sessions [default: 6000]; --idle: sessions held [default: 10000].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// --storm: the haproxy executable.
    #[arg(long, value_name = "PATH", default_value = "haproxy")]
    pub haproxy: PathBuf,
    /// --storm: seconds from the kill by which every session of the killed node must be back,
    /// or the run fails.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub deadline: f64,
    /// --storm: seconds of publishing before the kill.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub before_kill: f64,
    /// --storm: seconds of publishing after every session is back.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub after_recovery: f64,
    /// --storm: history_size of the nodes' default namespace (publications kept per channel
    /// for recovery: at least what is published on one channel while a session is away).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub history_size: usize,
    /// --idle: keep-alive interval of the node and the sessions, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub keep_alive_interval: f64,
    /// --idle: sessions per process; more are spread over worker processes.
    #[arg(long, default_value_t = default_per_worker())]
    pub per_worker: usize,
}

/// The fan-out load, shared by `bench fanout` and `bench cluster`.
#[derive(Args, Debug)]
pub struct FanoutLoadArgs {
    /// Subscribing sessions.
    #[arg(long, short = 's', default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels.
    #[arg(long, short = 'C', default_value_t = 1)]
    pub channels: usize,
    /// Channels each subscriber is on.
    #[arg(long, default_value_t = 1)]
    pub channels_per_sub: usize,
    /// Publishing sessions.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers: usize,
    /// Publications per second in all; without it, as fast as the deliveries keep up.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Payload bytes of each publication (the first 16 carry the send time and a sequence).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds of publishing per run.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds without a delivery, after publishing, before the rest counts as lost.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub drain: f64,
    /// As fast as possible: most publications per subscription published but not yet
    /// delivered, on average, before the publishers pause.
    #[arg(long, default_value_t = 100)]
    pub lag: u64,
    /// Publications in flight per publisher at most.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Sessions set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `openserver bench target` (internal).
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Which server.
    #[arg(value_enum)]
    pub kind: TargetKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve TLS with the development certificate in this directory (generated if missing).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Keep-alive interval in milliseconds (openserver target).
    #[arg(long, value_name = "MS")]
    pub keep_alive_interval_ms: Option<u64>,
    /// The user the openserver target accepts.
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// Its password.
    #[arg(long, default_value = "bench")]
    pub password: String,
    /// Stop after this many seconds whatever happens.
    #[arg(long, value_name = "SECS", default_value_t = 4 * 3600)]
    pub max_time: u64,
}

/// Runs `openserver bench` with `args`.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.mode {
        None => run_bench(*args.run).await,
        Some(BenchMode::Compare(a)) => run_compare(a).await,
        Some(BenchMode::Idle(a)) => run_idle(a).await,
        Some(BenchMode::Fanout(a)) => run_fanout(a).await,
        Some(BenchMode::Cluster(a)) => run_cluster(a).await,
        Some(BenchMode::Target(a)) => run_target(a).await,
        Some(BenchMode::Worker) => crate::worker::run_worker().await,
    }
}

fn workload(load: &LoadArgs) -> Workload {
    match load.kind {
        Kind::Hello => Workload::Hello,
        Kind::Echo => Workload::Echo {
            payload: load.payload,
        },
        Kind::Handshake => Workload::Handshake,
    }
}

/// A spec with the load shape of `load`; address, login and TLS to be filled in.
fn spec_of(load: &LoadArgs) -> Result<LoadSpec> {
    if load.sample_ms == 0 {
        bail!("--sample-ms must be at least 1");
    }
    if load.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let duration = match (load.duration, load.count) {
        (_, Some(_)) => None,
        (Some(d), None) if d > 0.0 && d.is_finite() => Some(Duration::from_secs_f64(d)),
        (Some(_), None) => bail!("--duration must be a positive number of seconds"),
        (None, None) => Some(Duration::from_secs(10)),
    };
    let mut spec = LoadSpec::new(SocketAddr::from(([127, 0, 0, 1], 0)), workload(load));
    spec.connections = load.connections;
    spec.depth = load.depth;
    spec.duration = duration;
    spec.count = load.count;
    spec.rate = load.rate;
    spec.connect_concurrency = load.connect_concurrency.max(1);
    spec.sample_interval = Duration::from_millis(load.sample_ms);
    Ok(spec)
}

/// Resolves `server` and refuses anything but loopback: the bench is a load generator.
async fn loopback_addr(server: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve {server}"))?
        .collect();
    match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(addr) => Ok(*addr),
        None => bail!("{server} is not a loopback address: the bench drives local servers only"),
    }
}

async fn run_bench(args: RunArgs) -> Result<()> {
    let load = &args.load;
    let mut spec = spec_of(load)?;
    let login = Login {
        user: args.user.clone(),
        password: args.password.clone(),
    };
    spec.login = Some(login.clone());
    let launcher = Launcher::current()?;
    let tls_dir = tempfile::tempdir()?;
    let mut own = None;
    match &args.server {
        Some(server) => {
            spec.addr = loopback_addr(server).await?;
            if !args.no_tls {
                let verify = match (&args.ca, &args.fingerprint) {
                    (Some(ca), _) => Verify::Ca(ca.clone()),
                    (None, Some(fp)) => Verify::Fingerprint(fp.clone()),
                    (None, None) => Verify::SystemRoots,
                };
                let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                spec.tls = Some(ClientTlsSpec {
                    verify,
                    server_name: args.server_name.clone().unwrap_or_else(|| host.to_owned()),
                });
            }
        }
        None => {
            // `serve` has no echo protocol: an echo load runs on the bench's own server.
            let kind = match (args.target, spec.workload) {
                (TargetKind::Serve, Workload::Echo { .. }) => TargetKind::Openserver,
                (kind, _) => kind,
            };
            let mut target = TargetOptions::new(kind);
            target.login = login;
            if args.tls {
                target.tls_dir = Some(tls_dir.path().to_owned());
            }
            let child = ChildTarget::spawn(&launcher, &target).await?;
            spec.addr = child.addr;
            if args.tls {
                let name = args
                    .server_name
                    .clone()
                    .unwrap_or_else(|| child.addr.ip().to_string());
                spec.tls = Some(crate::tls::pinned(tls_dir.path(), &name)?);
            }
            own = Some(child);
        }
    }
    let total = spec.duration.unwrap_or(spec.max_time);
    let result = if spec.connections > load.per_worker && spec.workload != Workload::Handshake {
        crate::worker::run_load(&spec, &launcher, load.per_worker).await
    } else {
        let bar = Bar::new(
            report::progress_visible(load.quiet || load.json),
            total,
            spec.sample_interval,
        );
        bar.set_prefix(spec.workload.label());
        crate::load::run_local(&spec, &bar).await
    };
    let rss = own.as_ref().and_then(ChildTarget::rss_kib);
    if let Some(child) = own {
        child.stop().await;
    }
    let report = result?;
    let json = BenchJson::of(&report, rss);
    if load.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        report::print_bench(&json);
    }
    if let Some(path) = &load.plot {
        let title = format!(
            "openserver bench: {}, {} connections x {} in flight",
            report.workload.label(),
            report.connections,
            report.depth
        );
        crate::plot::draw(&report, path, &title)?;
        if !load.json {
            println!("plot          {}", path.display());
        }
    }
    Ok(())
}

async fn run_compare(args: CompareArgs) -> Result<()> {
    let load = &args.load;
    let spec = spec_of(load)?;
    let redis = if args.no_redis {
        None
    } else {
        args.redis_server.clone().or_else(crate::target::find_redis)
    };
    let options = CompareOptions {
        load: spec.clone(),
        tls: args.tls,
        with_tls: args.with_tls,
        rounds: args.rounds,
        openserver: if args.bench_server {
            TargetKind::Openserver
        } else {
            TargetKind::Serve
        },
        with_bench_server: args.with_bench_server,
        baseline: args.baseline.clone(),
        redis,
        launcher: Some(Launcher::current()?),
        per_worker: load.per_worker,
    };
    let visible = report::progress_visible(load.quiet || load.json);
    let bar = Bar::new(
        visible,
        spec.duration.unwrap_or(spec.max_time),
        spec.sample_interval,
    );
    let announce = |name: &str, round: usize| bar.set_prefix(format!("{name} #{round}"));
    let result = crate::compare::run(&options, &announce, &bar).await?;
    if load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_compare(&result);
    }
    if let (Some(path), Some(last)) = (&load.plot, &result.last_openserver) {
        let title = format!(
            "openserver (last compare run): {}, {} connections x {} in flight",
            last.workload.label(),
            last.connections,
            last.depth
        );
        crate::plot::draw(last, path, &title)?;
    }
    Ok(())
}

async fn run_idle(args: IdleArgs) -> Result<()> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.keep_alive_interval >= 0.01 && args.keep_alive_interval.is_finite()) {
        bail!("--keep-alive-interval must be at least 0.01 seconds");
    }
    let options = IdleOptions {
        connections: args.connections,
        hold: Duration::from_secs_f64(args.duration),
        keep_alive_interval: Duration::from_secs_f64(args.keep_alive_interval),
        tls: args.tls,
        per_worker: args.per_worker,
        connect_concurrency: args.connect_concurrency.max(1),
        launcher: Some(Launcher::current()?),
        server: if args.bench_server {
            TargetKind::Openserver
        } else {
            TargetKind::Serve
        },
        cluster: None,
    };
    let result = crate::idle::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_idle(&result);
    }
    Ok(())
}

/// `v` seconds, refused unless positive and finite (`name` is the option, for the error).
fn positive_secs(v: f64, name: &str) -> Result<Duration> {
    if v > 0.0 && v.is_finite() {
        Ok(Duration::from_secs_f64(v))
    } else {
        bail!("--{name} must be a positive number of seconds")
    }
}

/// The fan-out spec of `args`, for the bench's user.
fn fanout_spec(args: &FanoutLoadArgs) -> Result<crate::fanout::FanoutSpec> {
    let login = TargetOptions::new(TargetKind::Serve).login;
    let mut spec = crate::fanout::FanoutSpec::new(args.subscribers, args.channels, login);
    spec.channels_per_sub = args.channels_per_sub;
    spec.publishers = args.publishers;
    spec.rate = args.rate;
    spec.payload = args.payload;
    spec.duration = positive_secs(args.duration, "duration")?;
    spec.drain = positive_secs(args.drain, "drain")?;
    spec.lag = args.lag.max(1);
    spec.window = args.window.max(1);
    spec.connect_concurrency = args.connect_concurrency.max(1);
    Ok(spec)
}

async fn run_fanout(args: FanoutArgs) -> Result<()> {
    let launcher = Launcher::current()?;
    if let Some(missed) = args.resubscribe {
        let login = TargetOptions::new(TargetKind::Serve).login;
        return run_resubscribe(
            &launcher,
            login,
            missed,
            args.load.payload,
            args.rounds,
            args.load.json,
        )
        .await;
    }
    let options = crate::fanout::RoundsOptions {
        spec: fanout_spec(&args.load)?,
        rounds: args.rounds.max(1),
        peers: args.compare,
        launcher,
        history_size: None,
        verbose: !args.load.json,
    };
    let result = crate::fanout::run_rounds(&options).await?;
    if args.load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_fanout(&result);
    }
    Ok(())
}

async fn run_cluster(args: ClusterArgs) -> Result<()> {
    let redis_server = match args.redis_server.clone().or_else(crate::target::find_redis) {
        Some(exe) => exe,
        None => bail!(
            "bench cluster needs redis-server: install it (Debian: apt-get install redis-server) or name it with --redis-server PATH"
        ),
    };
    if args.storm {
        return run_storm(args, redis_server).await;
    }
    if args.idle {
        return run_cluster_idle(args, redis_server).await;
    }
    let spec = fanout_spec(&args.load)?;
    let probe_duration = match args.probe_duration {
        Some(v) => positive_secs(v, "probe-duration")?,
        None => spec.duration,
    };
    let options = crate::cluster::ClusterOptions {
        spec,
        nodes: args.nodes,
        rounds: args.rounds.max(1),
        probe_rate: (!args.no_probe).then_some(args.probe_rate),
        probe_duration,
        redis_server,
        launcher: crate::cluster::NodeLauncher::Serve(Launcher::current()?),
        verbose: !args.load.json,
        node_threads: args.node_threads.map(usize::from),
    };
    let result = crate::cluster::run(&options).await?;
    if args.load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_cluster(&result);
    }
    Ok(())
}

async fn run_storm(args: ClusterArgs, redis_server: PathBuf) -> Result<()> {
    if args.nodes != 3 {
        bail!("--storm runs three nodes (contrib/haproxy/cluster.cfg names three): drop --nodes or give 3");
    }
    let options = crate::storm::StormOptions {
        sessions: args.sessions.unwrap_or(6000),
        channels: args.load.channels,
        rate: args.load.rate.unwrap_or(100.0),
        rounds: args.rounds.max(1),
        before_kill: positive_secs(args.before_kill, "before-kill")?,
        after_recovery: positive_secs(args.after_recovery, "after-recovery")?,
        deadline: positive_secs(args.deadline, "deadline")?,
        history_size: args.history_size,
        connect_concurrency: args.load.connect_concurrency.max(1),
        login: TargetOptions::new(TargetKind::Serve).login,
        redis_server,
        haproxy: args.haproxy,
        launcher: Launcher::current()?,
        verbose: !args.load.json,
    };
    let result = crate::storm::run(&options).await?;
    if args.load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_storm(&result);
    }
    Ok(())
}

async fn run_cluster_idle(args: ClusterArgs, redis_server: PathBuf) -> Result<()> {
    if !(args.keep_alive_interval >= 0.01 && args.keep_alive_interval.is_finite()) {
        bail!("--keep-alive-interval must be at least 0.01 seconds");
    }
    let idle = IdleOptions {
        connections: args.sessions.unwrap_or(10_000),
        hold: positive_secs(args.load.duration, "duration")?,
        keep_alive_interval: Duration::from_secs_f64(args.keep_alive_interval),
        tls: false,
        per_worker: args.per_worker,
        connect_concurrency: args.load.connect_concurrency.max(1),
        launcher: Some(Launcher::current()?),
        server: TargetKind::Serve,
        cluster: None,
    };
    let options = crate::cluster::ClusterIdleOptions {
        idle,
        rounds: args.rounds.max(1),
        redis_server,
        verbose: !args.load.json,
    };
    let result = crate::cluster::run_idle(&options).await?;
    if args.load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        report::print_cluster_idle(&result);
    }
    Ok(())
}

async fn run_resubscribe(
    launcher: &Launcher,
    login: crate::load::Login,
    missed: usize,
    payload: usize,
    rounds: usize,
    json: bool,
) -> Result<()> {
    let mut target = TargetOptions::new(TargetKind::Serve);
    target.login = login.clone();
    target.serve_config = Some(crate::fanout::serve_config(Some(missed.max(100))));
    let mut reports = Vec::new();
    for round in 0..rounds.max(1) {
        let t = ChildTarget::spawn(launcher, &target).await?;
        let r =
            crate::fanout::resubscribe(t.addr, &login, &format!("resub.{round}"), missed, payload)
                .await;
        t.stop().await;
        reports.push(r?);
    }
    let millis: Vec<f64> = reports.iter().map(|r| r.millis).collect();
    let median = crate::stats::median(&millis);
    if json {
        println!(
            "{}",
            serde_json::json!({"runs": reports, "median_millis": median})
        );
    } else {
        for r in &reports {
            println!(
                "resubscribe after {} missed: {} delivered, in order {}, recovery {}, {:.2} ms",
                r.missed, r.delivered, r.in_order, r.recovery, r.millis
            );
        }
        println!("median {median:.2} ms over {} rounds", reports.len());
    }
    Ok(())
}

async fn run_target(args: TargetArgs) -> Result<()> {
    let mut options = TargetOptions::new(args.kind);
    options.listen = args.listen;
    options.tls_dir = args.tls_dir;
    options.keep_alive_interval = args.keep_alive_interval_ms.map(Duration::from_millis);
    options.login = Login {
        user: args.user,
        password: args.password,
    };
    crate::target::serve_target(&options, Duration::from_secs(args.max_time)).await
}

/// Runs a load with no output, for tests and embedding.
pub async fn run_quietly(spec: &LoadSpec) -> Result<crate::load::LoadReport> {
    crate::load::run_local(spec, &NoProgress).await
}
