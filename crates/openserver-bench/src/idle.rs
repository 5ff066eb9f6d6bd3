//! Idle sessions: open N authenticated connections with keep-alive running, hold them, and
//! report what they cost the server.
//!
//! - Memory per session: the server's resident memory with every session open, less that of
//!   the idle server (after one warm-up login), divided by the sessions.
//! - Memory after all clients leave, relative to the idle server.
//! - Connections lost during the hold.
//! - Heartbeat lateness: keep-alive sends no reply, so there is no round trip to time; each
//!   connection times the gap between two KEEP_ALIVEs from the server, less the server's
//!   interval. It shows how late the server's timers fire with N sessions to serve.

pub use crate::hold::{IdleReport, IdleSpec};
use crate::load::{LoadSpec, Login, NoProgress, Workload};
use crate::stats::Summary;
use crate::stream::{loopback_sources, run_octet};
use crate::target::{ChildTarget, InProcessTarget, Launcher, TargetKind, TargetOptions};
use crate::worker::{self, Event, Job, Worker};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How to run an idle measurement.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// Sessions to hold.
    pub connections: usize,
    /// How long to hold them.
    pub hold: Duration,
    /// Keep-alive interval of both sides.
    pub keep_alive_interval: Duration,
    /// TLS sessions instead of plaintext.
    pub tls: bool,
    /// Connections per process; more are spread over worker processes.
    pub per_worker: usize,
    /// Connections being set up at once (per process).
    pub connect_concurrency: usize,
    /// Start the server and workers as child processes of this program; `None` runs
    /// everything in this process (no memory figures: client and server share it).
    pub launcher: Option<Launcher>,
    /// The server holding the sessions: [`TargetKind::Serve`] (`openserver serve`, default
    /// configuration but for the keep-alive interval) or [`TargetKind::Openserver`] (the
    /// bench's own server).
    pub server: TargetKind,
    /// Start the server as a node of this cluster (`serve --cluster URL --node-id NAME`).
    pub cluster: Option<crate::target::ClusterNode>,
}

/// The result of an idle measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    /// The server: `serve` or `openserver` (the bench's own).
    pub server: String,
    /// Sessions asked for.
    pub connections: usize,
    /// Sessions set up (connected, TLS, logged in, keep-alive started).
    pub connected: usize,
    /// Whether TLS was on.
    pub tls: bool,
    /// Worker processes used (0: the sessions were held by this process).
    pub workers: usize,
    /// Sessions set up per second.
    pub setup_per_sec: f64,
    /// Setup failures.
    pub setup_errors: u64,
    /// The first setup failure.
    pub first_error: Option<String>,
    /// How long they were held.
    pub held_secs: f64,
    /// Sessions lost during the hold.
    pub lost: u64,
    /// Keep-alive interval.
    pub keep_alive_interval_secs: f64,
    /// Heartbeats received from the server.
    pub heartbeats: u64,
    /// Heartbeat lateness.
    pub heartbeat_late: Summary,
    /// Server memory after one login came and went, before the sessions (KiB).
    pub idle_rss_kib: Option<u64>,
    /// Server memory with every session open, at the end of the hold (KiB).
    pub loaded_rss_kib: Option<u64>,
    /// The highest server memory sampled during the hold (KiB).
    pub peak_rss_kib: Option<u64>,
    /// Server memory once every client has left and it stopped falling (KiB).
    pub after_rss_kib: Option<u64>,
    /// Seconds from the last session's close to the `after_rss_kib` reading.
    pub after_settle_secs: f64,
    /// (loaded - idle) / sessions, in bytes.
    pub bytes_per_session: Option<f64>,
    /// after / idle.
    pub after_vs_idle: Option<f64>,
    /// Errors: setup failures plus lost sessions.
    pub errors: u64,
}

/// Runs an idle measurement against a server it starts.
pub async fn run(options: &IdleOptions) -> Result<IdleResult> {
    if options.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let tls_dir = tempfile::tempdir()?;
    if options.server == TargetKind::Echo {
        bail!("idle sessions need an openserver target, not echo");
    }
    let mut target = TargetOptions::new(options.server);
    target.keep_alive_interval = Some(options.keep_alive_interval);
    target.cluster = options.cluster.clone();
    if options.tls {
        target.tls_dir = Some(tls_dir.path().to_owned());
    }
    enum Running {
        Child(Box<ChildTarget>),
        Local(InProcessTarget),
    }
    let (addr, running) = match &options.launcher {
        Some(launcher) => {
            let child = ChildTarget::spawn(launcher, &target).await?;
            (child.addr, Running::Child(Box::new(child)))
        }
        None => {
            let local = InProcessTarget::start(&target).await?;
            (local.addr, Running::Local(local))
        }
    };
    let rss = |running: &Running| match running {
        Running::Child(child) => child.rss_kib(),
        Running::Local(_) => None,
    };
    let fds = |running: &Running| match running {
        Running::Child(child) => child.pid().and_then(|p| crate::procfs::open_fds(Some(p))),
        Running::Local(_) => None,
    };
    let mut load = LoadSpec::new(addr, Workload::Hello);
    load.login = Some(target.login.clone());
    load.connect_concurrency = options.connect_concurrency;
    if options.tls {
        load.tls = Some(crate::tls::pinned(tls_dir.path(), &addr.ip().to_string())?);
    }
    // Warm-up: one session comes and goes, so one-time allocations (the user store's first
    // query, TLS state) are part of the idle figure, not of the first session's.
    let mut warm = load.clone();
    warm.duration = None;
    warm.count = Some(10);
    let warmed = crate::load::run_local(&warm, &NoProgress).await?;
    if warmed.total_errors() > 0 {
        bail!(
            "warm-up against the target failed: {}",
            warmed.setup.first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss(&running);
    let idle_fds = fds(&running);

    let spec = IdleSpec {
        load,
        keep_alive_interval: options.keep_alive_interval,
    };
    let shares = worker::split(options.connections, options.per_worker);
    let use_workers = options.launcher.is_some() && shares.len() > 1;
    let run = run_octet();
    let mut workers = Vec::new();
    let stop = CancellationToken::new();
    let mut local: Option<tokio::task::JoinHandle<IdleReport>> = None;
    if use_workers {
        let launcher = options.launcher.clone();
        let mut first = 0;
        for (i, &count) in shares.iter().enumerate() {
            let mut spec = spec.clone();
            spec.load.sources = loopback_sources(run, i, count, options.connect_concurrency);
            if let Some(launcher) = &launcher {
                workers.push(Worker::spawn(launcher, &Job::Idle { spec, first, count }).await?);
            }
            first += count;
        }
        for worker in &mut workers {
            match worker.event().await? {
                Event::Ready(_) => {}
                other => bail!("worker: expected ready, got {other:?}"),
            }
        }
    } else {
        let mut spec = spec.clone();
        if addr.ip().is_loopback() && addr.is_ipv4() {
            spec.load.sources =
                loopback_sources(run, 0, options.connections, options.connect_concurrency);
        }
        let (conns, setup) = crate::load::setup(&spec.load, options.connections, 0).await;
        let stop = stop.clone();
        local = Some(tokio::spawn(async move {
            crate::hold::hold(&spec, conns, setup, stop).await
        }));
    }
    // Let the first heartbeats and any lazy allocation settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2).min(options.hold)).await;
    let hold_end = Instant::now() + options.hold;
    let mut peak = rss(&running);
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
        peak = peak.max(rss(&running));
    }
    let loaded_rss = rss(&running);
    stop.cancel();
    let mut report: Option<IdleReport> = None;
    for worker in &mut workers {
        worker.say("stop").await?;
    }
    for mut worker in workers {
        let r = match worker.event().await? {
            Event::Idle(r) => *r,
            other => bail!("worker: expected an idle report, got {other:?}"),
        };
        worker.wait().await;
        report = Some(match report {
            None => r,
            Some(m) => m.merge(&r),
        });
    }
    if let Some(task) = local {
        report = Some(task.await?);
    }
    let report = report.unwrap_or_default();
    // Wait for the server to close every session (its descriptors back to the idle count).
    let settle_end = Instant::now() + Duration::from_secs(60);
    while let (Some(now), Some(idle)) = (fds(&running), idle_fds) {
        if now <= idle + 2 || Instant::now() > settle_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed_at = Instant::now();
    let after_rss = settled_rss(|| rss(&running)).await;
    let after_settle_secs = closed_at.elapsed().as_secs_f64();
    match running {
        Running::Child(child) => (*child).stop().await,
        Running::Local(local) => local.stop().await,
    }
    let connected = report.setup.connected;
    let bytes_per_session = match (idle_rss, loaded_rss) {
        (Some(idle), Some(loaded)) if connected > 0 => {
            Some((loaded.saturating_sub(idle) as f64 * 1024.0) / connected as f64)
        }
        _ => None,
    };
    let after_vs_idle = match (idle_rss, after_rss) {
        (Some(idle), Some(after)) if idle > 0 => Some(after as f64 / idle as f64),
        _ => None,
    };
    Ok(IdleResult {
        server: options.server.name().to_owned(),
        connections: options.connections,
        connected,
        tls: options.tls,
        workers: if use_workers { shares.len() } else { 0 },
        setup_per_sec: report.setup.per_sec(),
        setup_errors: report.setup.errors,
        first_error: report.setup.first_error.clone(),
        held_secs: report.held_secs,
        lost: report.lost,
        keep_alive_interval_secs: options.keep_alive_interval.as_secs_f64(),
        heartbeats: report.heartbeats,
        heartbeat_late: report.heartbeat_late.summary(),
        idle_rss_kib: idle_rss,
        loaded_rss_kib: loaded_rss,
        peak_rss_kib: peak,
        after_rss_kib: after_rss,
        after_settle_secs,
        bytes_per_session,
        after_vs_idle,
        errors: report.setup.errors + report.lost,
    })
}

/// How long the server may take to give back the memory of sessions that left: its
/// allocator returns freed pages after a decay time (1 s for the `openserver` binary), from a
/// background thread.
const SETTLE_MAX: Duration = Duration::from_secs(20);

/// The server's memory once it has stopped falling: sampled every 500 ms until a reading is no
/// lower than the one 2 s before, or [`SETTLE_MAX`] has passed.
pub(crate) async fn settled_rss(rss: impl Fn() -> Option<u64>) -> Option<u64> {
    let end = Instant::now() + SETTLE_MAX;
    let mut readings: Vec<u64> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss()?;
        readings.push(now);
        let settled = readings.len() > 4 && now >= readings[readings.len() - 5];
        if settled || Instant::now() >= end {
            return readings.iter().copied().min();
        }
    }
}

/// The credentials of the bench's own server.
pub fn bench_login() -> Login {
    TargetOptions::new(TargetKind::Openserver).login
}
