//! `bench cluster`: the fan-out of [`crate::fanout`] against N `openserver serve` nodes
//! sharing one `redis-server` (subscribers spread round-robin over the nodes, publishers on
//! node 1), alternating with the same load on one node alone; plus a cross-node latency probe
//! (publications on node 1 at a fixed rate to one subscriber on node 2).
//!
//! The Redis runs for the whole command and is emptied (`FLUSHALL`) before each cluster round,
//! so a round never sees the leases and presence of the previous round's killed nodes.

use crate::fanout::{self, FanoutReport, FanoutSpec, Peer};
use crate::target::{
    ChildTarget, ClusterNode, InProcessTarget, Launcher, RedisTarget, TargetKind, TargetOptions,
};
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the nodes run.
#[derive(Debug, Clone)]
pub enum NodeLauncher {
    /// `openserver serve --cluster URL --node-id nK` children of this executable, with the
    /// fan-out's `[channels]` settings ([`fanout::serve_config`]).
    Serve(Launcher),
    /// The bench's own openserver in this process, its channels on a `RedisBroker` (tests:
    /// no memory figures, client and servers share the process).
    InProcess,
}

/// How `bench cluster` runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The fan-out load, the same for the cluster and the single node.
    pub spec: FanoutSpec,
    /// Nodes of the cluster (at least 2).
    pub nodes: usize,
    /// Rounds; each runs the cluster, then the single node.
    pub rounds: usize,
    /// Publications per second of the cross-node probe; `None`: no probe.
    pub probe_rate: Option<f64>,
    /// How long the probe publishes.
    pub probe_duration: Duration,
    /// The `redis-server` executable.
    pub redis_server: PathBuf,
    /// How the nodes are started.
    pub launcher: NodeLauncher,
    /// Print each round's result to stderr as it ends.
    pub verbose: bool,
    /// Worker threads of each cluster node's runtime (`None`: one per CPU, the default); the
    /// single node always runs with the default.
    pub node_threads: Option<usize>,
}

/// The medians of one setup's rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupMedians {
    /// `cluster` or `single`.
    pub setup: String,
    /// Rounds.
    pub rounds: usize,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Publications per second.
    pub publications_per_sec: f64,
    /// Lost deliveries, summed over the rounds.
    pub lost_total: u64,
    /// Publications refused or unanswered, summed over the rounds.
    pub publish_errors_total: u64,
    /// Publish-to-delivery latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Memory of all nodes per subscription, bytes (child processes only).
    pub rss_per_subscription_bytes: Option<f64>,
}

/// Everything `bench cluster` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterResult {
    /// The load.
    pub spec: FanoutSpec,
    /// Nodes of the cluster.
    pub nodes: usize,
    /// Each cluster round's fan-out, in order.
    pub cluster_runs: Vec<FanoutReport>,
    /// Each single-node round's fan-out, in order.
    pub single_runs: Vec<FanoutReport>,
    /// Each round's cross-node probe.
    pub probe_runs: Vec<FanoutReport>,
    /// Medians of the cluster rounds.
    pub cluster: SetupMedians,
    /// Medians of the single-node rounds.
    pub single: SetupMedians,
    /// Medians of the probes.
    pub probe: Option<SetupMedians>,
    /// Median cluster deliveries/s over median single-node deliveries/s.
    pub ratio_cluster_vs_single: f64,
}

/// The cluster throughput target of the issue: at least this share of one node's.
pub const TARGET_RATIO: f64 = 0.7;
/// The cross-node latency target: p99 at most this, in microseconds.
pub const TARGET_PROBE_P99_US: f64 = 5_000.0;

/// A running node.
pub(crate) enum Node {
    /// Boxed: a child's handle is several times an in-process node's.
    Child(Box<ChildTarget>),
    Local(InProcessTarget),
}

impl Node {
    async fn start(launcher: &NodeLauncher, options: &TargetOptions) -> Result<Node> {
        Ok(match launcher {
            NodeLauncher::Serve(l) => Node::Child(Box::new(ChildTarget::spawn(l, options).await?)),
            NodeLauncher::InProcess => {
                let mut local = options.clone();
                local.kind = TargetKind::Openserver;
                Node::Local(InProcessTarget::start(&local).await?)
            }
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Node::Child(c) => c.addr,
            Node::Local(l) => l.addr,
        }
    }

    fn rss_kib(&self) -> Option<u64> {
        match self {
            Node::Child(c) => c.rss_kib(),
            Node::Local(_) => None,
        }
    }

    /// Kills it: SIGKILL for a child; an in-process node can only be stopped.
    pub(crate) async fn kill(self) {
        match self {
            Node::Child(c) => c.kill().await,
            Node::Local(l) => l.stop().await,
        }
    }

    pub(crate) async fn stop(self) {
        match self {
            Node::Child(c) => c.stop().await,
            Node::Local(l) => l.stop().await,
        }
    }
}

/// The nodes' summed memory, if every one could be read.
fn total_rss(nodes: &[Node]) -> Option<u64> {
    nodes.iter().map(Node::rss_kib).sum()
}

pub(crate) async fn stop_all(nodes: Vec<Node>) {
    for n in nodes {
        n.stop().await;
    }
}

/// Empties the Redis between rounds (RESP `FLUSHALL`, answered `+OK`).
pub(crate) async fn flush_redis(addr: SocketAddr) -> Result<()> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .context("redis did not answer FLUSHALL within 10 s")??;
    if !buf[..n].starts_with(b"+OK") {
        bail!(
            "redis answered FLUSHALL with {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    Ok(())
}

/// Starts `count` nodes of the cluster on `redis` (`count` 1 and `redis` `None`: one node
/// alone).
async fn start_nodes(
    options: &ClusterOptions,
    count: usize,
    redis: Option<&str>,
) -> Result<Vec<Node>> {
    start_nodes_with(&options.launcher, count, redis, &|_, target| {
        target.login = options.spec.login.clone();
        target.serve_config = Some(fanout::serve_config(None));
        if redis.is_some() {
            target.worker_threads = options.node_threads;
        }
    })
    .await
}

/// Starts `count` nodes (`nK` for K from 1) on `redis`, each set up by `configure(K, ..)`
/// after its cluster settings; stops those started if one fails.
pub(crate) async fn start_nodes_with(
    launcher: &NodeLauncher,
    count: usize,
    redis: Option<&str>,
    configure: &(dyn Fn(usize, &mut TargetOptions) + Sync),
) -> Result<Vec<Node>> {
    let mut nodes = Vec::with_capacity(count);
    for k in 1..=count {
        let mut target = TargetOptions::new(TargetKind::Serve);
        target.cluster = redis.map(|url| ClusterNode {
            redis: url.to_string(),
            node_id: format!("n{k}"),
        });
        configure(k, &mut target);
        match Node::start(launcher, &target).await {
            Ok(n) => nodes.push(n),
            Err(e) => {
                stop_all(nodes).await;
                return Err(e.context(format!("cannot start node n{k}")));
            }
        }
    }
    Ok(nodes)
}

/// The cross-node probe's load: one subscriber, one channel, one publisher at `rate`.
fn probe_spec(options: &ClusterOptions, rate: f64) -> FanoutSpec {
    let mut spec = FanoutSpec::new(1, 1, options.spec.login.clone());
    spec.rate = Some(rate);
    spec.payload = options.spec.payload;
    spec.duration = options.probe_duration;
    spec.drain = options.spec.drain;
    spec
}

/// Runs the rounds: in each, the cluster (fan-out, then the probe), then one node alone.
pub async fn run(options: &ClusterOptions) -> Result<ClusterResult> {
    if options.nodes < 2 {
        bail!("--nodes must be at least 2 (the cluster is compared with one node alone)");
    }
    if let Some(r) = options.probe_rate {
        if !(r > 0.0 && r.is_finite()) {
            bail!("--probe-rate must be a positive number of publications per second");
        }
    }
    let redis = RedisTarget::spawn(&options.redis_server)
        .await
        .context("cannot start the cluster's redis-server")?;
    let url = format!("redis://{}/", redis.addr);
    let result = rounds(options, &redis, &url).await;
    redis.stop().await;
    result
}

async fn rounds(options: &ClusterOptions, redis: &RedisTarget, url: &str) -> Result<ClusterResult> {
    let (mut cluster_runs, mut single_runs, mut probe_runs) = (Vec::new(), Vec::new(), Vec::new());
    let say = |label: &str, round: usize, r: &FanoutReport| {
        if options.verbose {
            eprintln!(
                "round {round} {label}: {:.0} deliveries/s, lost {}, errors {}, p50 {:.0} us, p99 {:.0} us",
                r.deliveries_per_sec, r.lost, r.publish_errors, r.latency.p50_us, r.latency.p99_us
            );
        }
    };
    for round in 1..=options.rounds.max(1) {
        flush_redis(redis.addr).await?;
        let nodes = start_nodes(options, options.nodes, Some(url)).await?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
        let r = fanout::run_spread(Peer::Openserver, &addrs, addrs[0], &options.spec, &|| {
            total_rss(&nodes)
        })
        .await
        .with_context(|| format!("round {round}, cluster of {} nodes", options.nodes));
        let probe = match (&r, options.probe_rate) {
            (Ok(_), Some(rate)) => Some(
                fanout::run_spread(
                    Peer::Openserver,
                    &addrs[1..2],
                    addrs[0],
                    &probe_spec(options, rate),
                    &|| None,
                )
                .await
                .with_context(|| format!("round {round}, cross-node probe")),
            ),
            _ => None,
        };
        stop_all(nodes).await;
        let r = r?;
        say("cluster", round, &r);
        cluster_runs.push(r);
        if let Some(p) = probe {
            let p = p?;
            say("probe n1->n2", round, &p);
            probe_runs.push(p);
        }

        let nodes = start_nodes(options, 1, None).await?;
        let addr = nodes[0].addr();
        let r = fanout::run_spread(Peer::Openserver, &[addr], addr, &options.spec, &|| {
            total_rss(&nodes)
        })
        .await
        .with_context(|| format!("round {round}, one node alone"));
        stop_all(nodes).await;
        let r = r?;
        say("single", round, &r);
        single_runs.push(r);
    }
    let cluster = medians("cluster", &cluster_runs);
    let single = medians("single", &single_runs);
    let ratio = if single.deliveries_per_sec > 0.0 {
        cluster.deliveries_per_sec / single.deliveries_per_sec
    } else {
        0.0
    };
    Ok(ClusterResult {
        spec: options.spec.clone(),
        nodes: options.nodes,
        probe: (!probe_runs.is_empty()).then(|| medians("probe", &probe_runs)),
        cluster,
        single,
        cluster_runs,
        single_runs,
        probe_runs,
        ratio_cluster_vs_single: ratio,
    })
}

fn medians(setup: &str, runs: &[FanoutReport]) -> SetupMedians {
    let m = |f: &dyn Fn(&FanoutReport) -> f64| {
        crate::stats::median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let per_sub: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.rss_per_subscription_bytes)
        .collect();
    SetupMedians {
        setup: setup.into(),
        rounds: runs.len(),
        deliveries_per_sec: m(&|r| r.deliveries_per_sec),
        publications_per_sec: m(&|r| r.publications_per_sec),
        lost_total: runs.iter().map(|r| r.lost).sum(),
        publish_errors_total: runs.iter().map(|r| r.publish_errors).sum(),
        p50_us: m(&|r| r.latency.p50_us),
        p99_us: m(&|r| r.latency.p99_us),
        rss_per_subscription_bytes: (!per_sub.is_empty()).then(|| crate::stats::median(&per_sub)),
    }
}

/// How `bench cluster --idle` runs.
#[derive(Debug, Clone)]
pub struct ClusterIdleOptions {
    /// The idle measurement, the same for both setups (`cluster` is set per round).
    pub idle: crate::idle::IdleOptions,
    /// Rounds; each runs the cluster node, then the node alone.
    pub rounds: usize,
    /// The `redis-server` executable.
    pub redis_server: PathBuf,
    /// Print each round's result to stderr as it ends.
    pub verbose: bool,
}

/// Everything `bench cluster --idle` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterIdleResult {
    /// Sessions asked for.
    pub sessions: usize,
    /// Each round of the node started with `--cluster`, in order.
    pub cluster_runs: Vec<crate::idle::IdleResult>,
    /// Each round of the same node without it.
    pub single_runs: Vec<crate::idle::IdleResult>,
    /// Median bytes per idle session, cluster node.
    pub cluster_bytes_per_session: f64,
    /// Median bytes per idle session, node alone.
    pub single_bytes_per_session: f64,
    /// Cluster over alone.
    pub ratio_cluster_vs_single: f64,
    /// Lost sessions and setup failures, summed over every run.
    pub errors_total: u64,
}

/// The idle-memory target of the issue: a cluster node's bytes per idle session within this
/// factor of a single node's.
pub const TARGET_IDLE_RATIO: f64 = 1.1;

/// Idle sessions on one `serve --cluster` node (its Redis started here, emptied before each
/// round) against the same node without `--cluster`, in alternating rounds.
pub async fn run_idle(options: &ClusterIdleOptions) -> Result<ClusterIdleResult> {
    let redis = RedisTarget::spawn(&options.redis_server)
        .await
        .context("cannot start the cluster's redis-server")?;
    let url = format!("redis://{}/", redis.addr);
    let result = idle_rounds(options, &redis, &url).await;
    redis.stop().await;
    result
}

async fn idle_rounds(
    options: &ClusterIdleOptions,
    redis: &RedisTarget,
    url: &str,
) -> Result<ClusterIdleResult> {
    let (mut cluster_runs, mut single_runs) = (Vec::new(), Vec::new());
    for round in 1..=options.rounds.max(1) {
        for clustered in [true, false] {
            let mut idle = options.idle.clone();
            if clustered {
                flush_redis(redis.addr).await?;
                idle.cluster = Some(ClusterNode {
                    redis: url.to_string(),
                    node_id: "n1".into(),
                });
            } else {
                idle.cluster = None;
            }
            let label = if clustered {
                "cluster node"
            } else {
                "node alone"
            };
            let r = crate::idle::run(&idle)
                .await
                .with_context(|| format!("round {round}, {label}"))?;
            if options.verbose {
                eprintln!(
                    "round {round} {label}: {} of {} sessions, {} B/session (idle {} KiB, loaded {} KiB), lost {}, errors {}",
                    r.connected,
                    r.connections,
                    r.bytes_per_session.map_or("-".into(), |b| format!("{b:.0}")),
                    r.idle_rss_kib.unwrap_or(0),
                    r.loaded_rss_kib.unwrap_or(0),
                    r.lost,
                    r.errors
                );
            }
            if clustered {
                cluster_runs.push(r);
            } else {
                single_runs.push(r);
            }
        }
    }
    let per = |runs: &[crate::idle::IdleResult]| {
        crate::stats::median(
            &runs
                .iter()
                .filter_map(|r| r.bytes_per_session)
                .collect::<Vec<_>>(),
        )
    };
    let cluster = per(&cluster_runs);
    let single = per(&single_runs);
    Ok(ClusterIdleResult {
        sessions: options.idle.connections,
        errors_total: cluster_runs
            .iter()
            .chain(&single_runs)
            .map(|r| r.errors)
            .sum(),
        cluster_runs,
        single_runs,
        cluster_bytes_per_session: cluster,
        single_bytes_per_session: single,
        ratio_cluster_vs_single: if single > 0.0 { cluster / single } else { 0.0 },
    })
}
