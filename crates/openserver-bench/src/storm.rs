//! `bench cluster --storm`: the reconnect storm of a cluster that loses a node.
//!
//! Three `openserver serve --cluster` nodes on one Redis behind HAProxy
//! ([`crate::target::HAPROXY_CLUSTER_CFG`], the `contrib/haproxy/cluster.cfg` users run), sharing a resume
//! secret. One publisher and S subscribers, each a [`Client`] of the client library with
//! reconnecting on ([`ReconnectPolicy::default`]) and resume tokens (its default), all
//! through HAProxy, which spreads them `leastconn`. The publisher publishes at a steady rate
//! over C channels (subscriber i is on channel i mod C). After a while the node holding the
//! most subscribers (never the publisher's) is killed with SIGKILL. Its clients reconnect
//! through HAProxy to the survivors, log in again and resubscribe from the last position they
//! saw (the channels client does that by itself).
//!
//! Measured, per round: the time from the kill until every session of the killed node has
//! reconnected (logged in, resubscribed) and has received every publication the publisher had
//! had accepted when it reconnected, in order; the publications lost (every subscriber must
//! end with every offset published during the run, checked offset by offset); the logins the
//! survivors counted during the storm, by protocol (`token_auth` is a resume token,
//! `database_auth` a password). Every wait is bounded; a session that does not come back
//! within the deadline fails the run with the counts.

use crate::cluster::{flush_redis, start_nodes_with, stop_all, Node, NodeLauncher};
use crate::load::Login;
use crate::target::{HaproxyTarget, Launcher, RedisTarget};

use anyhow::{anyhow, bail, Context as _, Result};
use openserver::channels::{ChannelItem, ChannelSubscription};
use openserver::client::{Client, ClientConfig, ClientEvent, ReconnectPolicy};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How `bench cluster --storm` runs.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Subscribing sessions, spread over the nodes by HAProxy.
    pub sessions: usize,
    /// Channels (subscriber i is on channel i mod C).
    pub channels: usize,
    /// Publications per second in all, round-robin over the channels.
    pub rate: f64,
    /// Rounds (each on fresh nodes, HAProxy and an emptied Redis).
    pub rounds: usize,
    /// Publishing before the kill.
    pub before_kill: Duration,
    /// Publishing after every session is back.
    pub after_recovery: Duration,
    /// Longest time from the kill until every session of the killed node is back.
    pub deadline: Duration,
    /// `history_size` of the nodes' default namespace: at least what is published while a
    /// session is away (per channel), or it cannot be recovered.
    pub history_size: usize,
    /// Sessions set up at once.
    pub connect_concurrency: usize,
    /// The user every session logs in as.
    pub login: Login,
    /// The `redis-server` executable.
    pub redis_server: PathBuf,
    /// The `haproxy` executable.
    pub haproxy: PathBuf,
    /// Starts `openserver serve` (the nodes must be child processes, to be killed).
    pub launcher: Launcher,
    /// Print each round's result to stderr as it ends.
    pub verbose: bool,
}

/// The storm's target: every session of the killed node back within this.
pub const TARGET_RECOVERY_SECS: f64 = 20.0;

/// What one round measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormRound {
    /// Subscribing sessions set up.
    pub sessions: usize,
    /// Authenticated sessions of each node before the kill (the publisher's included).
    pub sessions_per_node: Vec<u64>,
    /// The killed node.
    pub killed: String,
    /// Sessions the killed node held (by its metrics just before the kill).
    pub killed_sessions: u64,
    /// Subscribers that lost their connection.
    pub disconnected: u64,
    /// Of them, those that reconnected (logged in, resubscribed).
    pub reconnected: u64,
    /// Of them, those that also received every publication missed.
    pub recovered: u64,
    /// Seconds from the kill to the last reconnect.
    pub secs_to_all_reconnected: f64,
    /// Seconds from the kill to the last recovery: the storm's figure.
    pub secs_to_all_recovered: f64,
    /// Median over the killed node's sessions of the seconds from the kill to recovery.
    pub recovery_p50_secs: f64,
    /// Reconnect attempts that failed (HAProxy sent them to the dead node, say).
    pub failed_attempts: u64,
    /// Logins the surviving nodes counted from the kill to the end of the storm, by resume
    /// token (`token_auth`).
    pub token_logins: u64,
    /// The same, by password (`database_auth`).
    pub password_logins: u64,
    /// Authenticated sessions of the surviving nodes once every session is back.
    pub sessions_after: Vec<u64>,
    /// Publications accepted.
    pub publications: u64,
    /// Publications refused or unanswered.
    pub publish_errors: u64,
    /// Publications accepted per second over the publishing time (below the rate asked for
    /// when the machine cannot deliver that many).
    pub publications_per_sec: f64,
    /// Deliveries due: for each subscriber, the publications on its channel after it
    /// subscribed.
    pub expected: u64,
    /// Deliveries received, each at the next offset of its channel.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Publications lost: per channel, the most any one subscriber lacks, summed over the
    /// channels (at least that many distinct publications did not reach everyone).
    pub publications_lost: u64,
    /// Gaps the client library reported (unrecoverable, skipped, lagged).
    pub gaps: u64,
    /// Subscribers that ended with something missing.
    pub incomplete_subscribers: u64,
}

/// Everything `bench cluster --storm` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormResult {
    /// Subscribing sessions.
    pub sessions: usize,
    /// Channels.
    pub channels: usize,
    /// Publications per second.
    pub rate: f64,
    /// Each round.
    pub rounds: Vec<StormRound>,
    /// Median over the rounds of [`StormRound::secs_to_all_recovered`].
    pub median_secs_to_all_recovered: f64,
    /// Median over the rounds of [`StormRound::secs_to_all_reconnected`].
    pub median_secs_to_all_reconnected: f64,
    /// Median over the rounds of [`StormRound::recovery_p50_secs`].
    pub median_recovery_p50_secs: f64,
    /// Publications lost, summed over the rounds.
    pub publications_lost_total: u64,
    /// Deliveries lost, summed over the rounds.
    pub lost_total: u64,
    /// Resume-token logins, summed over the rounds.
    pub token_logins_total: u64,
    /// Password logins, summed over the rounds.
    pub password_logins_total: u64,
}

/// Runs the rounds.
pub async fn run(options: &StormOptions) -> Result<StormResult> {
    if options.sessions < 3 {
        bail!("--sessions must be at least 3 (one node's share is killed)");
    }
    if options.channels == 0 {
        bail!("--channels must be at least 1");
    }
    if !(options.rate > 0.0 && options.rate.is_finite()) {
        bail!("--rate must be a positive number of publications per second");
    }
    let redis = RedisTarget::spawn(&options.redis_server)
        .await
        .context("cannot start the cluster's redis-server")?;
    let url = format!("redis://{}/", redis.addr);
    let mut rounds = Vec::new();
    let mut failure = None;
    for round in 1..=options.rounds.max(1) {
        let r = match flush_redis(redis.addr).await {
            Ok(()) => run_round(options, &url).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => {
                if options.verbose {
                    eprintln!(
                        "round {round}: killed {} ({} sessions); {} disconnected, {} back; all reconnected {:.2} s, all recovered {:.2} s after the kill (p50 {:.2} s); logins token {} / password {}; {} publications ({:.0}/s); lost {} ({} publications), gaps {}",
                        r.killed, r.killed_sessions, r.disconnected, r.recovered,
                        r.secs_to_all_reconnected, r.secs_to_all_recovered, r.recovery_p50_secs,
                        r.token_logins, r.password_logins, r.publications, r.publications_per_sec,
                        r.lost, r.publications_lost, r.gaps
                    );
                }
                rounds.push(r);
            }
            Err(e) => {
                failure = Some(e.context(format!("storm round {round}")));
                break;
            }
        }
    }
    redis.stop().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let m = |f: &dyn Fn(&StormRound) -> f64| {
        crate::stats::median(&rounds.iter().map(f).collect::<Vec<_>>())
    };
    Ok(StormResult {
        sessions: options.sessions,
        channels: options.channels,
        rate: options.rate,
        median_secs_to_all_recovered: m(&|r| r.secs_to_all_recovered),
        median_secs_to_all_reconnected: m(&|r| r.secs_to_all_reconnected),
        median_recovery_p50_secs: m(&|r| r.recovery_p50_secs),
        publications_lost_total: rounds.iter().map(|r| r.publications_lost).sum(),
        lost_total: rounds.iter().map(|r| r.lost).sum(),
        token_logins_total: rounds.iter().map(|r| r.token_logins).sum(),
        password_logins_total: rounds.iter().map(|r| r.password_logins).sum(),
        rounds,
    })
}

/// A free loopback address (bound, then released for a node's metrics listener).
fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The nodes' configuration: the fan-out's `[channels]` with `history_size`, the shared
/// resume secret, HAProxy trusted, the metrics listener (for HAProxy's `/readyz` checks and
/// the login counts), and the per-address caps raised: every client of the bench comes from
/// 127.0.0.1, where real clients come from thousands of addresses.
fn node_config(history_size: usize, secret: &std::path::Path, metrics: SocketAddr) -> String {
    let mut text = crate::fanout::serve_config(Some(history_size));
    text.push_str(&format!(
        "\n[auth.token]\nresume_secret_file = {secret:?}\n\n\
         [server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [server.limits]\nmax_connections_per_ip = 1000000\n\n\
         [server.security]\nmax_unauthenticated = 1000000\nunauthenticated_drop_start = 1000000\n\
         max_unauthenticated_per_ip = 1000000\n\n\
         [metrics]\nlisten = \"{metrics}\"\n",
        secret = secret.display().to_string()
    ));
    text
}

/// One HTTP GET of a node's `/metrics`, bounded to 5 s.
async fn scrape(metrics: SocketAddr) -> Result<String> {
    let get = async {
        let mut tcp = tokio::net::TcpStream::connect(metrics).await?;
        tcp.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| anyhow!("{metrics}/metrics did not answer within 5 s"))?
}

/// The value of sample `name` (labels included) in a Prometheus text body; 0 if absent.
fn sample(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

const AUTHENTICATED: &str = "openserver_sessions{state=\"authenticated\"}";
const TOKEN_LOGINS: &str = "openserver_auth_successes_total{protocol=\"token_auth\"}";
const PASSWORD_LOGINS: &str = "openserver_auth_successes_total{protocol=\"database_auth\"}";

/// Each node's sample `name`.
async fn samples(metrics: &[SocketAddr], name: &str) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(metrics.len());
    for m in metrics {
        out.push(sample(&scrape(*m).await?, name));
    }
    Ok(out)
}

/// The publisher's view: the last offset accepted on each channel.
struct Published {
    last: Vec<AtomicU64>,
    accepted: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// A subscriber's progress, read by the round while it runs.
#[derive(Default)]
struct Progress {
    disconnected: AtomicU64,
    reconnected: AtomicU64,
    recovered: AtomicU64,
    failed_attempts: AtomicU64,
    /// Offsets past the kill, in nanoseconds since the round's base: reconnect and recovery.
    reconnect_ns: Mutex<Vec<u64>>,
    recover_ns: Mutex<Vec<u64>>,
    /// A subscriber that cannot go on (closed for good, subscription ended): the first reason.
    fatal: Mutex<Option<String>>,
}

/// What one subscriber saw.
#[derive(Default)]
struct SubReport {
    channel: usize,
    start: u64,
    last: u64,
    received: u64,
    gaps: u64,
}

fn channel_name(k: usize) -> String {
    format!("storm.{k}")
}

fn client_config() -> ClientConfig {
    ClientConfig::default().with_reconnect(ReconnectPolicy::default())
}

/// Connects, logs in and subscribes one subscriber through HAProxy.
async fn subscriber(
    front: SocketAddr,
    login: &Login,
    channel: usize,
) -> Result<(Client, ChannelSubscription)> {
    let client = Client::connect(front.to_string(), client_config()).await?;
    client.authenticate_db(&login.user, &login.password).await?;
    let sub = client.channels().subscribe(&channel_name(channel)).await?;
    Ok((client, sub))
}

/// Reads one subscriber's events and publications until `stop`.
#[allow(clippy::too_many_arguments)]
async fn follow(
    client: Client,
    mut sub: ChannelSubscription,
    channel: usize,
    published: Arc<Published>,
    progress: Arc<Progress>,
    last_seen: Arc<AtomicU64>,
    base: Instant,
    stop: CancellationToken,
) -> SubReport {
    let mut events = client.events();
    let start = sub.position().map_or(0, |p| p.offset);
    let mut report = SubReport {
        channel,
        start,
        last: start,
        ..SubReport::default()
    };
    // After a reconnect: the offset to reach (what the publisher had accepted then).
    let mut owed: Option<u64> = None;
    let mut lost_connection = false;
    let fatal = |why: String| {
        lock(&progress.fatal).get_or_insert(why);
    };
    let since = |at: Instant| u64::try_from((at - base).as_nanos()).unwrap_or(u64::MAX);
    let check_recovered = |owed: &mut Option<u64>, last: u64| {
        if owed.is_some_and(|o| last >= o) {
            *owed = None;
            lock(&progress.recover_ns).push(since(Instant::now()));
            progress.recovered.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = events.recv() => match event {
                Ok(ClientEvent::Disconnected(_)) => {
                    if !lost_connection {
                        lost_connection = true;
                        progress.disconnected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(ClientEvent::Reconnecting { attempt, .. }) if attempt > 1 => {
                    progress.failed_attempts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ClientEvent::RestoreFailed { error, .. }) => {
                    fatal(format!("a resubscribe failed: {error}"));
                }
                Ok(ClientEvent::Reconnected) => {
                    lock(&progress.reconnect_ns).push(since(Instant::now()));
                    progress.reconnected.fetch_add(1, Ordering::Relaxed);
                    owed = Some(published.last[channel].load(Ordering::Acquire));
                    check_recovered(&mut owed, report.last);
                }
                Ok(ClientEvent::Closed(reason)) => {
                    fatal(format!("a client closed for good: {reason}"));
                    break;
                }
                Ok(_) => {}
                // Only events were missed; the counts of the others still hold.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            item = sub.next() => match item {
                Some(ChannelItem::Publication(p)) => {
                    if p.offset == report.last + 1 {
                        report.received += 1;
                    }
                    report.last = report.last.max(p.offset);
                    last_seen.store(report.last, Ordering::Release);
                    check_recovered(&mut owed, report.last);
                }
                Some(ChannelItem::Gap(gap)) => {
                    report.gaps += 1;
                    fatal(format!("a subscriber missed publications: {gap:?}"));
                }
                Some(ChannelItem::Ended(reason)) => {
                    fatal(format!("a subscription ended: {reason}"));
                    break;
                }
                Some(_) => {}
                None => {
                    fatal("a subscription ended with its client".into());
                    break;
                }
            },
        }
    }
    client.quit().await;
    report
}

/// Publishes round-robin over the channels at `rate` until `stop`.
async fn publish(
    client: Client,
    channels: usize,
    rate: f64,
    published: Arc<Published>,
    stop: CancellationToken,
) {
    let ch = client.channels();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let payload = vec![0u8; 64];
    for n in 0usize.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let k = n % channels;
        match ch.publish(&channel_name(k), payload.clone()).await {
            Ok(position) => {
                published.last[k].fetch_max(position.offset, Ordering::AcqRel);
                published.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                published.errors.fetch_add(1, Ordering::Relaxed);
                lock(&published.first_error).get_or_insert(e.to_string());
            }
        }
    }
    client.quit().await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn run_round(options: &StormOptions, url: &str) -> Result<StormRound> {
    let secrets = tempfile::Builder::new()
        .prefix("openserver-bench-storm")
        .tempdir()?;
    let secret = secrets.path().join("resume.secret");
    std::fs::write(&secret, hex::encode(rand::random::<[u8; 32]>()))?;
    let metrics: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_>>()?;
    let launcher = NodeLauncher::Serve(options.launcher.clone());
    let nodes = start_nodes_with(&launcher, 3, Some(url), &|k, target| {
        target.login = options.login.clone();
        target.serve_config = Some(node_config(options.history_size, &secret, metrics[k - 1]));
    })
    .await?;
    let pairs: Vec<(SocketAddr, SocketAddr)> = nodes
        .iter()
        .map(Node::addr)
        .zip(metrics.iter().copied())
        .collect();
    let haproxy = match HaproxyTarget::spawn(&options.haproxy, &pairs).await {
        Ok(h) => h,
        Err(e) => {
            stop_all(nodes).await;
            return Err(e);
        }
    };
    let r = storm(options, nodes, &metrics, &haproxy).await;
    let r = r.map_err(|e| {
        let tail = haproxy.log_tail(5);
        if tail.is_empty() {
            e
        } else {
            e.context(format!("haproxy's log ends:\n{tail}"))
        }
    });
    haproxy.stop().await;
    r
}

/// Waits until `done` holds, polling every 50 ms; `Err` after `within`.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let end = Instant::now() + within;
    while !done() {
        if Instant::now() >= end {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn storm(
    options: &StormOptions,
    mut nodes: Vec<Node>,
    metrics: &[SocketAddr],
    haproxy: &HaproxyTarget,
) -> Result<StormRound> {
    let front = haproxy.addr;
    // HAProxy takes a node in after two passed checks 1 s apart: wait until all three are.
    let ready = async {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let mut up = 0;
            for m in metrics {
                if scrape(*m).await.is_ok() {
                    up += 1;
                }
            }
            if up == metrics.len() || Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
    };
    ready.await;

    let publisher = Client::connect(front.to_string(), ClientConfig::default())
        .await
        .context("the publisher cannot connect through haproxy")?;
    publisher
        .authenticate_db(&options.login.user, &options.login.password)
        .await
        .context("the publisher cannot log in")?;
    let with_publisher = samples(metrics, AUTHENTICATED).await?;
    let Some(publisher_node) = with_publisher.iter().position(|&n| n == 1) else {
        stop_all(nodes).await;
        bail!(
            "cannot tell the publisher's node: authenticated sessions per node {with_publisher:?}"
        );
    };

    // The subscribers, `connect_concurrency` at a time.
    let set_up_start = Instant::now();
    let mut subs = Vec::with_capacity(options.sessions);
    {
        use futures::StreamExt as _;
        let login = &options.login;
        let mut made = futures::stream::iter(0..options.sessions)
            .map(|i| async move {
                let channel = i % options.channels;
                (channel, subscriber(front, login, channel).await)
            })
            .buffer_unordered(options.connect_concurrency.max(1));
        while let Some((channel, r)) = made.next().await {
            match r {
                Ok((client, sub)) => subs.push((channel, client, sub)),
                Err(e) => {
                    drop(made);
                    for (_, c, _) in &subs {
                        c.quit().await;
                    }
                    stop_all(nodes).await;
                    return Err(e.context(format!(
                        "subscriber {} of {} could not connect, log in and subscribe",
                        subs.len() + 1,
                        options.sessions
                    )));
                }
            }
        }
    }
    if options.verbose {
        eprintln!(
            "{} subscribers set up in {:.1} s",
            subs.len(),
            set_up_start.elapsed().as_secs_f64()
        );
    }
    let per_node = samples(metrics, AUTHENTICATED).await?;
    // The victim: the node with the most sessions, never the publisher's.
    let victim = (0..nodes.len())
        .filter(|&k| k != publisher_node)
        .max_by_key(|&k| per_node[k])
        .unwrap_or(0);

    let base = Instant::now();
    let published = Arc::new(Published {
        last: (0..options.channels).map(|_| AtomicU64::new(0)).collect(),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let progress = Arc::new(Progress::default());
    let stop_subs = CancellationToken::new();
    let mut last_seen = Vec::with_capacity(subs.len());
    let mut tasks = Vec::with_capacity(subs.len());
    for (channel, client, sub) in subs {
        let seen = Arc::new(AtomicU64::new(0));
        last_seen.push((channel, seen.clone()));
        tasks.push(tokio::spawn(follow(
            client,
            sub,
            channel,
            published.clone(),
            progress.clone(),
            seen,
            base,
            stop_subs.clone(),
        )));
    }
    let stop_pub = CancellationToken::new();
    let publish_start = Instant::now();
    let publishing = tokio::spawn(publish(
        publisher,
        options.channels,
        options.rate,
        published.clone(),
        stop_pub.clone(),
    ));

    let outcome = async {
        tokio::time::sleep(options.before_kill).await;
        let victim_sessions = samples(&metrics[victim..=victim], AUTHENTICATED).await?[0];
        let survivors: Vec<SocketAddr> = (0..metrics.len())
            .filter(|&k| k != victim)
            .map(|k| metrics[k])
            .collect();
        let tokens_before = samples(&survivors, TOKEN_LOGINS).await?;
        let passwords_before = samples(&survivors, PASSWORD_LOGINS).await?;
        let node = nodes.remove(victim);
        let killed_at = Instant::now();
        node.kill().await;
        let all_back = || {
            let d = progress.disconnected.load(Ordering::Relaxed);
            d >= victim_sessions && progress.recovered.load(Ordering::Relaxed) >= d
        };
        let waited = wait_until(options.deadline, || {
            all_back() || lock(&progress.fatal).is_some()
        })
        .await;
        if let Some(why) = lock(&progress.fatal).clone() {
            bail!("{why}");
        }
        if waited.is_err() {
            bail!(
                "not every session of the killed node n{} came back within {:.0} s: it held {} sessions; {} subscribers lost their connection, {} reconnected, {} recovered what they missed ({} failed reconnect attempts)",
                victim + 1,
                options.deadline.as_secs_f64(),
                victim_sessions,
                progress.disconnected.load(Ordering::Relaxed),
                progress.reconnected.load(Ordering::Relaxed),
                progress.recovered.load(Ordering::Relaxed),
                progress.failed_attempts.load(Ordering::Relaxed),
            );
        }
        let tokens_after = samples(&survivors, TOKEN_LOGINS).await?;
        let passwords_after = samples(&survivors, PASSWORD_LOGINS).await?;
        let sessions_after = samples(&survivors, AUTHENTICATED).await?;
        tokio::time::sleep(options.after_recovery).await;
        anyhow::Ok((
            killed_at,
            victim_sessions,
            tokens_after.iter().sum::<u64>() - tokens_before.iter().sum::<u64>(),
            passwords_after.iter().sum::<u64>() - passwords_before.iter().sum::<u64>(),
            sessions_after,
        ))
    }
    .await;
    stop_pub.cancel();
    let _ = publishing.await;
    let publish_secs = publish_start.elapsed().as_secs_f64();
    // Let every subscriber reach the last publication of its channel (bounded).
    let finals: Vec<u64> = published
        .last
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .collect();
    let drained = match &outcome {
        Ok(_) => wait_until(Duration::from_secs(10), || {
            last_seen
                .iter()
                .all(|(ch, seen)| seen.load(Ordering::Acquire) >= finals[*ch])
        })
        .await
        .is_ok(),
        Err(_) => true,
    };
    stop_subs.cancel();
    let mut reports = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            reports.push(r);
        }
    }
    stop_all(nodes).await;
    let (killed_at, victim_sessions, token_logins, password_logins, sessions_after) = outcome?;
    let secs = |ns: &[u64]| -> Vec<f64> {
        ns.iter()
            .map(|&n| (base + Duration::from_nanos(n)).saturating_duration_since(killed_at))
            .map(|d| d.as_secs_f64())
            .collect()
    };
    let reconnects = secs(&lock(&progress.reconnect_ns));
    let recoveries = secs(&lock(&progress.recover_ns));
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);

    let mut round = StormRound {
        sessions: reports.len(),
        sessions_per_node: per_node,
        killed: format!("n{}", victim + 1),
        killed_sessions: victim_sessions,
        disconnected: progress.disconnected.load(Ordering::Relaxed),
        reconnected: progress.reconnected.load(Ordering::Relaxed),
        recovered: progress.recovered.load(Ordering::Relaxed),
        secs_to_all_reconnected: max(&reconnects),
        secs_to_all_recovered: max(&recoveries),
        recovery_p50_secs: crate::stats::median(&recoveries),
        failed_attempts: progress.failed_attempts.load(Ordering::Relaxed),
        token_logins,
        password_logins,
        sessions_after,
        publications: published.accepted.load(Ordering::Relaxed),
        publish_errors: published.errors.load(Ordering::Relaxed),
        publications_per_sec: published.accepted.load(Ordering::Relaxed) as f64 / publish_secs,
        ..StormRound::default()
    };
    // Every subscriber owes every offset of its channel after its subscribe, up to the last
    // one accepted; a publication is lost if any subscriber lacks it.
    // Every subscriber owes every offset of its channel after its subscribe, up to the last
    // one accepted.
    let mut worst = vec![0u64; options.channels];
    for r in &reports {
        let due = finals[r.channel].saturating_sub(r.start);
        round.expected += due;
        round.received += r.received.min(due);
        round.gaps += r.gaps;
        let short = due.saturating_sub(r.received);
        if short > 0 {
            round.incomplete_subscribers += 1;
        }
        worst[r.channel] = worst[r.channel].max(short);
    }
    round.lost = round.expected - round.received;
    round.publications_lost = worst.iter().sum();
    if let Some(e) = lock(&published.first_error).clone() {
        bail!(
            "{} publications failed (the publisher was on a surviving node): {e}",
            round.publish_errors
        );
    }
    if !drained {
        bail!(
            "{} subscribers did not receive every publication within 10 s of the last one ({} deliveries lost)",
            round.incomplete_subscribers,
            round.lost
        );
    }
    Ok(round)
}
