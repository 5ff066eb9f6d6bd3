//! `bench compare`: the identical load against openserver, the bare frame echo (the practical
//! limit) and, when installed, redis-server with PING (a well-known peer), in alternating
//! runs (a, b, c, a, b, c, ...), then per-target medians and openserver's ratios.
//!
//! "openserver" is `openserver serve` with its default configuration (what users run) unless
//! the options ask for the bench's own server (caps raised, penalties off, no SCRAM or Admin,
//! logging at `error`); with `with_bench_server` the latter runs too, as `openserver_bench`.

use crate::load::{LoadReport, LoadSpec, NoProgress, Progress, Workload};
use crate::stats::median;
use crate::target::{
    ChildTarget, InProcessTarget, Launcher, RedisTarget, TargetKind, TargetOptions,
};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// How to run a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The load shape: connections, depth, duration or count, rate, workload, sample period.
    /// Its address, login and TLS are filled in per target.
    pub load: LoadSpec,
    /// TLS for openserver and the echo server (redis is then skipped).
    pub tls: bool,
    /// Also run openserver over TLS as a further target (`openserver_tls`), for TLS against
    /// plaintext in the same alternating runs (ignored with `tls`).
    pub with_tls: bool,
    /// Runs per target.
    pub rounds: usize,
    /// The server measured as "openserver": [`TargetKind::Serve`] (`openserver serve` with
    /// its default configuration) or [`TargetKind::Openserver`] (the bench's own server).
    pub openserver: TargetKind,
    /// Also run the bench's own server as a further target, `openserver_bench` (ignored when
    /// it is already the "openserver" target).
    pub with_bench_server: bool,
    /// Also run `serve` of this other openserver executable as `openserver_baseline`, with
    /// the settings `openserver serve` gets (needs a launcher).
    pub baseline: Option<PathBuf>,
    /// redis-server to start, if any.
    pub redis: Option<PathBuf>,
    /// Start the servers as child processes of this program; `None`: in this process.
    pub launcher: Option<Launcher>,
    /// Connections per process; more are spread over worker processes (needs a launcher).
    pub per_worker: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFigures {
    /// Answers per second.
    pub messages_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest latency.
    pub max_us: f64,
    /// Errors (setup included).
    pub errors: u64,
    /// Server CPU time per answer, microseconds (child-process targets only).
    pub server_cpu_us_per_msg: Option<f64>,
    /// The load generator's CPU time per answer, microseconds (this process, setup
    /// included): to check the bench is not the bottleneck.
    pub client_cpu_us_per_msg: Option<f64>,
}

impl RunFigures {
    fn of(report: &LoadReport, server_cpu_secs: Option<f64>, client_cpu_secs: Option<f64>) -> Self {
        let per_msg = |cpu: Option<f64>| {
            cpu.filter(|_| report.completed > 0)
                .map(|cpu| cpu * 1e6 / report.completed as f64)
        };
        let s = report.summary();
        RunFigures {
            messages_per_sec: report.messages_per_sec(),
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            errors: report.total_errors(),
            server_cpu_us_per_msg: per_msg(server_cpu_secs),
            client_cpu_us_per_msg: per_msg(client_cpu_secs),
        }
    }
}

/// One target's runs and their medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    /// `openserver`, `echo` or `redis`.
    pub name: String,
    /// Median answers per second.
    pub messages_per_sec: f64,
    /// Median of the runs' medians.
    pub p50_us: f64,
    /// Median 90th percentile.
    pub p90_us: f64,
    /// Median 99th percentile.
    pub p99_us: f64,
    /// Median 99.9th percentile.
    pub p999_us: f64,
    /// Median largest latency.
    pub max_us: f64,
    /// Errors over all runs.
    pub errors: u64,
    /// Median server CPU time per answer.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Median load-generator CPU time per answer.
    pub client_cpu_us_per_msg: Option<f64>,
    /// Every run, in order.
    pub runs: Vec<RunFigures>,
}

impl TargetResult {
    fn of(name: &str, runs: Vec<RunFigures>) -> Self {
        let med = |f: fn(&RunFigures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let med_opt = |f: fn(&RunFigures) -> Option<f64>| {
            let values: Vec<f64> = runs.iter().filter_map(f).collect();
            (!values.is_empty()).then(|| median(&values))
        };
        TargetResult {
            name: name.into(),
            messages_per_sec: med(|r| r.messages_per_sec),
            p50_us: med(|r| r.p50_us),
            p90_us: med(|r| r.p90_us),
            p99_us: med(|r| r.p99_us),
            p999_us: med(|r| r.p999_us),
            max_us: med(|r| r.max_us),
            errors: runs.iter().map(|r| r.errors).sum(),
            server_cpu_us_per_msg: med_opt(|r| r.server_cpu_us_per_msg),
            client_cpu_us_per_msg: med_opt(|r| r.client_cpu_us_per_msg),
            runs,
        }
    }
}

/// The comparison's result: what `--json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResult {
    /// The load: workload label.
    pub workload: String,
    /// Connections per run.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Whether TLS was on (openserver and echo).
    pub tls: bool,
    /// Runs per target.
    pub rounds: usize,
    /// Which server the "openserver" target was: `serve` (`openserver serve`, default
    /// configuration) or `openserver` (the bench's own server).
    pub openserver: String,
    /// Each target's medians and runs: openserver, echo, then redis if it ran.
    pub targets: Vec<TargetResult>,
    /// openserver's median messages/s over the echo server's.
    pub ratio_vs_echo: f64,
    /// openserver's median messages/s over redis's, when redis ran.
    pub ratio_vs_redis: Option<f64>,
    /// With `--with-tls`: openserver over TLS, median messages/s, over openserver in
    /// plaintext.
    pub ratio_tls_vs_plain: Option<f64>,
    /// With `--with-bench-server`: the bench's own server, median messages/s, over the echo
    /// server's.
    pub ratio_bench_server_vs_echo: Option<f64>,
    /// With `--baseline`: the baseline executable's `serve`, median messages/s, over the
    /// echo server's.
    pub ratio_baseline_vs_echo: Option<f64>,
    /// With `--baseline`: openserver's median messages/s over the baseline's.
    pub ratio_vs_baseline: Option<f64>,
    /// Why redis did not run, if it did not.
    pub redis_skipped: Option<String>,
    /// Errors over every run.
    pub errors: u64,
    /// The last openserver run, for the plot.
    #[serde(skip)]
    pub last_openserver: Option<LoadReport>,
}

enum Server {
    Child(ChildTarget),
    Local(InProcessTarget),
    Redis(RedisTarget),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Child(c) => c.addr,
            Server::Local(l) => l.addr,
            Server::Redis(r) => r.addr,
        }
    }

    fn cpu_secs(&self) -> Option<f64> {
        match self {
            Server::Child(c) => c.cpu_secs(),
            Server::Local(_) => None,
            Server::Redis(r) => r.cpu_secs(),
        }
    }

    async fn stop(self) {
        match self {
            Server::Child(c) => c.stop().await,
            Server::Local(l) => l.stop().await,
            Server::Redis(r) => r.stop().await,
        }
    }
}

/// Runs the comparison; `progress` is told about each run.
pub async fn run(
    options: &CompareOptions,
    announce: &dyn Fn(&str, usize),
    progress: &dyn Progress,
) -> Result<CompareResult> {
    if options.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let primary = options.openserver;
    if primary == TargetKind::Echo {
        bail!("the openserver target must be serve or the bench's own server, not echo");
    }
    if primary == TargetKind::Serve && matches!(options.load.workload, Workload::Echo { .. }) {
        bail!(
            "`openserver serve` has no echo protocol: compare --kind echo with --bench-server \
             (the bench's own server), or use --kind hello"
        );
    }
    let tls_dir = tempfile::tempdir()?;
    if options.baseline.is_some() && (primary != TargetKind::Serve || options.launcher.is_none()) {
        bail!("a baseline runs `serve` of another executable: it needs child-process targets");
    }
    // (name, server, whether it speaks TLS, another executable), in the order the runs
    // alternate.
    let mut servers: Vec<(String, Server, bool)> = Vec::new();
    let mut kinds = vec![
        ("openserver", primary, options.tls, None),
        ("echo", TargetKind::Echo, options.tls, None),
    ];
    if let Some(exe) = &options.baseline {
        kinds.push(("openserver_baseline", primary, options.tls, Some(exe)));
    }
    if options.with_tls && !options.tls {
        kinds.push(("openserver_tls", primary, true, None));
    }
    if options.with_bench_server && primary != TargetKind::Openserver {
        kinds.push((
            "openserver_bench",
            TargetKind::Openserver,
            options.tls,
            None,
        ));
    }
    for (name, kind, tls, exe) in kinds {
        let mut target = TargetOptions::new(kind);
        if tls {
            target.tls_dir = Some(tls_dir.path().to_owned());
        }
        let server = match (&options.launcher, exe) {
            (Some(launcher), Some(exe)) => {
                let other = Launcher {
                    exe: exe.clone(),
                    prefix: launcher.prefix.clone(),
                };
                Server::Child(ChildTarget::spawn(&other, &target).await?)
            }
            (Some(launcher), None) => Server::Child(ChildTarget::spawn(launcher, &target).await?),
            (None, _) => Server::Local(InProcessTarget::start(&target).await?),
        };
        servers.push((name.into(), server, tls));
    }
    let redis_skipped = if options.tls {
        Some("TLS runs compare openserver and echo only".to_owned())
    } else if options.load.workload == Workload::Handshake {
        Some("redis has no handshake workload".to_owned())
    } else {
        match &options.redis {
            None => Some("redis-server not found on PATH (apt-get install redis-server)".into()),
            Some(exe) => match RedisTarget::spawn(exe).await {
                Ok(redis) => {
                    servers.push(("redis".into(), Server::Redis(redis), false));
                    None
                }
                Err(e) => Some(format!("redis-server did not start: {e:#}")),
            },
        }
    };
    let login = TargetOptions::new(TargetKind::Openserver).login;
    let mut runs: Vec<Vec<RunFigures>> = vec![Vec::new(); servers.len()];
    let mut last_openserver = None;
    let mut outcome = Ok(());
    'rounds: for round in 0..options.rounds {
        for (i, (name, server, tls)) in servers.iter().enumerate() {
            let mut spec = options.load.clone();
            spec.addr = server.addr();
            if name == "redis" {
                spec.workload = Workload::RedisPing;
                spec.tls = None;
            } else {
                spec.login = Some(login.clone());
                if *tls {
                    let name = spec.addr.ip().to_string();
                    spec.tls = Some(crate::tls::pinned(tls_dir.path(), &name)?);
                }
            }
            announce(name, round + 1);
            let cpu_before = server.cpu_secs();
            let client_before = crate::procfs::cpu_secs(None);
            let report = match run_spec(&spec, options, progress).await {
                Ok(report) => report,
                Err(e) => {
                    outcome = Err(e);
                    break 'rounds;
                }
            };
            let cpu = match (cpu_before, server.cpu_secs()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let client = match (client_before, crate::procfs::cpu_secs(None)) {
                (Some(a), Some(b)) if options.launcher.is_some() => Some(b - a),
                _ => None,
            };
            runs[i].push(RunFigures::of(&report, cpu, client));
            if name == "openserver" {
                last_openserver = Some(report);
            }
        }
    }
    let names: Vec<String> = servers.iter().map(|(name, _, _)| name.clone()).collect();
    for (_, server, _) in servers.drain(..).rev() {
        server.stop().await;
    }
    outcome?;
    let targets: Vec<TargetResult> = runs
        .into_iter()
        .zip(&names)
        .map(|(r, name)| TargetResult::of(name, r))
        .collect();
    let mps = |name: &str| {
        targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.messages_per_sec)
            .filter(|m| *m > 0.0)
    };
    let ratio = |a: &str, b: &str| Some(mps(a)? / mps(b)?);
    Ok(CompareResult {
        workload: options.load.workload.label(),
        connections: options.load.connections,
        depth: options.load.depth,
        tls: options.tls,
        rounds: options.rounds,
        openserver: primary.name().to_owned(),
        ratio_vs_echo: ratio("openserver", "echo").unwrap_or(0.0),
        ratio_bench_server_vs_echo: ratio("openserver_bench", "echo"),
        ratio_baseline_vs_echo: ratio("openserver_baseline", "echo"),
        ratio_vs_baseline: ratio("openserver", "openserver_baseline"),
        ratio_vs_redis: ratio("openserver", "redis"),
        ratio_tls_vs_plain: ratio("openserver_tls", "openserver"),
        redis_skipped,
        errors: targets.iter().map(|t| t.errors).sum(),
        targets,
        last_openserver,
    })
}

/// One run, in this process or over workers when the connections need more descriptors
/// than one process has.
pub(crate) async fn run_spec(
    spec: &LoadSpec,
    options: &CompareOptions,
    progress: &dyn Progress,
) -> Result<LoadReport> {
    match &options.launcher {
        Some(launcher) if spec.connections > options.per_worker => {
            crate::worker::run_load(spec, launcher, options.per_worker).await
        }
        _ => crate::load::run_local(spec, progress).await,
    }
}

/// A comparison with no progress output and in-process servers (tests).
pub async fn run_quietly(options: &CompareOptions) -> Result<CompareResult> {
    run(options, &|_, _| {}, &NoProgress).await
}
