//! Fan-out: S subscribing sessions on C channels, P publishers, and every delivery's
//! publish-to-delivery latency; against openserver Channels, nats-server and redis pub/sub
//! in alternating rounds ([`run_rounds`]). Plus the recovery probe of openserver
//! ([`resubscribe`]): the time a session resubscribing with `since` takes to get the
//! publications it missed.
//!
//! Each payload starts with the send time (8 bytes, nanoseconds since the run's start, little
//! endian) and the publisher's sequence number (8 bytes); the rest is filler. Publishers and
//! subscribers are tasks of this process, so one clock serves both.

use crate::load::Login;
use crate::stats::Summary;
use crate::stream::{loopback_sources, run_octet, tcp_connect};
use crate::target::{ChildTarget, Launcher, NatsTarget, RedisTarget, TargetKind, TargetOptions};
use crate::{channels_client, nats_client, redis_pubsub};
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::BytesMut;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes of the payload header: send time and sequence number.
pub const PAYLOAD_HEADER: usize = 16;
/// Publications written in one go by a publisher.
const BATCH: usize = 64;
/// Latency histograms shared by the subscriber tasks (each task records a whole read's
/// deliveries under one lock).
const SHARDS: usize = 16;

/// One message read from a server, whatever its protocol.
pub(crate) enum Event<'a> {
    /// A publication delivered to a subscriber: its payload.
    Delivery(&'a [u8]),
    /// The answer to a subscribe, a publish or (nats) a `PING`.
    Ack,
    /// An error answer, as text.
    Error(String),
    /// A nats `PING`, to be answered with `PONG`.
    Ping,
}

/// Which server a fan-out round drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// `openserver serve`, Channels (protocol 6).
    Openserver,
    /// `nats-server`, core publish/subscribe.
    Nats,
    /// `redis-server`, `SUBSCRIBE`/`PUBLISH`.
    Redis,
}

impl Peer {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Openserver => "openserver",
            Peer::Nats => "nats",
            Peer::Redis => "redis",
        }
    }
}

/// One fan-out run's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutSpec {
    /// Subscribing sessions.
    pub subscribers: usize,
    /// Channels.
    pub channels: usize,
    /// Channels each subscriber is on (subscriber i: channels i*k .. i*k+k-1, modulo C).
    pub channels_per_sub: usize,
    /// Publishing sessions (publisher p publishes on channels p, p+P, ...).
    pub publishers: usize,
    /// Publications per second in all; `None`: as fast as the deliveries keep up (see `lag`).
    pub rate: Option<f64>,
    /// Payload bytes of each publication (at least [`PAYLOAD_HEADER`]).
    pub payload: usize,
    /// How long the publishers publish.
    pub duration: Duration,
    /// After publishing, how long to wait without a new delivery before counting the rest
    /// lost.
    pub drain: Duration,
    /// As fast as possible: publishers pause while more than `lag` publications per
    /// subscription, on average, are published but not yet delivered, so the rate found is
    /// the one the deliveries sustain rather than one that overflows every queue.
    pub lag: u64,
    /// Publications in flight (sent, not yet answered) per publisher at most.
    pub window: usize,
    /// Sessions set up at once.
    pub connect_concurrency: usize,
    /// The openserver user.
    pub login: Login,
}

impl FanoutSpec {
    /// `subscribers` sessions on `channels` channels, one each, one publisher, as fast as
    /// possible, 100-byte payloads, 5 s.
    pub fn new(subscribers: usize, channels: usize, login: Login) -> Self {
        FanoutSpec {
            subscribers,
            channels,
            channels_per_sub: 1,
            publishers: 1,
            rate: None,
            payload: 100,
            duration: Duration::from_secs(5),
            drain: Duration::from_secs(2),
            lag: 100,
            window: 256,
            connect_concurrency: 256,
            login,
        }
    }

    fn check(&self) -> Result<()> {
        if self.subscribers == 0 || self.channels == 0 || self.publishers == 0 {
            bail!("--subscribers, --channels and --publishers must be at least 1");
        }
        if self.channels_per_sub == 0 || self.channels_per_sub > self.channels {
            bail!("--channels-per-sub must be between 1 and --channels");
        }
        if self.payload < PAYLOAD_HEADER {
            bail!("--payload must be at least {PAYLOAD_HEADER} bytes (send time and sequence)");
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate must be a positive number of publications per second");
            }
        }
        Ok(())
    }

    /// The channels of subscriber `i`.
    fn channels_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.channels_per_sub).map(move |j| (i * self.channels_per_sub + j) % self.channels)
    }
}

/// What one fan-out run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutReport {
    /// The server.
    pub peer: String,
    /// Subscribing sessions set up.
    pub subscribers: usize,
    /// Subscriptions made.
    pub subscriptions: u64,
    /// Publications the server accepted (answered; for nats, acknowledged by a `PONG`).
    pub publications: u64,
    /// Publications refused or left unanswered.
    pub publish_errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Deliveries due: each accepted publication times its channel's subscribers.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// `expected - received`, after the drain.
    pub lost: u64,
    /// Subscriber connections the server closed during the run.
    pub subscribers_closed: u64,
    /// Seconds from the first publication to the last delivery.
    pub secs: f64,
    /// Deliveries per second over `secs`.
    pub deliveries_per_sec: f64,
    /// Publications per second over the publishing time.
    pub publications_per_sec: f64,
    /// Publish-to-delivery latency.
    pub latency: Summary,
    /// Server RSS with the sessions connected (logged in), before subscribing, once settled, KiB.
    pub rss_sessions_kib: Option<u64>,
    /// Server RSS once every subscription is made and the RSS has settled, KiB.
    pub rss_subscribed_kib: Option<u64>,
    /// (subscribed - sessions) / subscriptions, in bytes.
    pub rss_per_subscription_bytes: Option<f64>,
}

/// State shared by the subscriber and publisher tasks.
struct Shared {
    base: Instant,
    received: AtomicU64,
    /// Deliveries due for what was sent so far (at send time, for the lag gate).
    sent_expected: AtomicU64,
    last_delivery_ns: AtomicU64,
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A protocol's parser.
enum Parser {
    Openserver(channels_client::Parser),
    Nats(nats_client::Parser),
    Redis(redis_pubsub::Parser),
}

impl Parser {
    fn new(peer: Peer) -> Self {
        match peer {
            Peer::Openserver => Parser::Openserver(channels_client::Parser::new()),
            Peer::Nats => Parser::Nats(nats_client::Parser),
            Peer::Redis => Parser::Redis(redis_pubsub::Parser),
        }
    }

    fn parse(&mut self, rbuf: &mut BytesMut, on: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        match self {
            Parser::Openserver(p) => p.parse(rbuf, on),
            Parser::Nats(p) => p.parse(rbuf, on),
            Parser::Redis(p) => p.parse(rbuf, on),
        }
    }
}

fn channel_name(c: usize) -> String {
    format!("fan.{c}")
}

async fn connect(
    peer: Peer,
    addr: SocketAddr,
    source: Option<IpAddr>,
    login: &Login,
) -> Result<(TcpStream, BytesMut)> {
    match peer {
        Peer::Openserver => channels_client::connect(addr, source, login).await,
        Peer::Nats => nats_client::connect(addr, source).await,
        Peer::Redis => Ok((tcp_connect(addr, source).await?, BytesMut::new())),
    }
}

/// Subscribes one connection to `channels` and waits for the confirmations.
async fn subscribe_all(
    peer: Peer,
    tcp: &mut TcpStream,
    rbuf: &mut BytesMut,
    channels: &[usize],
) -> Result<()> {
    let mut wbuf = BytesMut::new();
    for (k, &c) in channels.iter().enumerate() {
        let name = channel_name(c);
        match peer {
            Peer::Openserver => channels_client::subscribe(&mut wbuf, k as u32, &name, None),
            Peer::Nats => nats_client::subscribe(&mut wbuf, k as u32 + 1, &name),
            Peer::Redis => redis_pubsub::subscribe(&mut wbuf, &name),
        }
    }
    let mut acks_due = channels.len();
    if peer == Peer::Nats {
        nats_client::ping(&mut wbuf);
        acks_due = 1;
    }
    tcp.write_all(&wbuf).await?;
    let mut parser = Parser::new(peer);
    let mut acks = 0;
    loop {
        let mut failed = None;
        parser.parse(rbuf, &mut |e| match e {
            Event::Ack => acks += 1,
            Event::Error(e) => failed = Some(e),
            _ => {}
        })?;
        if let Some(e) = failed {
            bail!("subscribe refused: {e}");
        }
        if acks >= acks_due {
            return Ok(());
        }
        if tcp.read_buf(rbuf).await? == 0 {
            bail!("the server closed the connection while subscribing");
        }
    }
}

/// Reads one subscriber's deliveries until `stop`.
async fn read_deliveries(
    peer: Peer,
    mut tcp: TcpStream,
    mut rbuf: BytesMut,
    shared: Arc<Shared>,
    shard: usize,
    stop: CancellationToken,
) -> bool {
    let mut parser = Parser::new(peer);
    let mut latencies: Vec<u64> = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return true,
            n = tcp.read_buf(&mut rbuf) => n,
        };
        let Ok(n) = n else { return false };
        if n == 0 {
            return false;
        }
        let now = shared.now_ns();
        let mut ping = false;
        let parsed = parser.parse(&mut rbuf, &mut |e| match e {
            Event::Delivery(data) => {
                let sent = data
                    .first_chunk::<8>()
                    .map(|b| u64::from_le_bytes(*b))
                    .unwrap_or(now);
                latencies.push(now.saturating_sub(sent).max(1));
            }
            Event::Ping => ping = true,
            _ => {}
        });
        if parsed.is_err() {
            return false;
        }
        if ping && tcp.write_all(b"PONG\r\n").await.is_err() {
            return false;
        }
        if !latencies.is_empty() {
            if let Ok(mut h) = shared.hists[shard].lock() {
                for &l in &latencies {
                    h.saturating_record(l);
                }
            }
            shared
                .received
                .fetch_add(latencies.len() as u64, Ordering::Relaxed);
            shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
            latencies.clear();
        }
    }
}

/// What one publisher achieved.
#[derive(Default)]
struct PublisherResult {
    publications: u64,
    expected: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Publishes on `mine` (channel index, its subscriber count) until `end`, then waits up to
/// `drain` for the answers still due.
#[allow(clippy::too_many_arguments)]
async fn publish(
    peer: Peer,
    mut tcp: TcpStream,
    mut rbuf: BytesMut,
    mine: Vec<(usize, u64)>,
    period: Option<Duration>,
    spec: Arc<FanoutSpec>,
    shared: Arc<Shared>,
    end: Instant,
    lag_cap: u64,
) -> PublisherResult {
    let names: Vec<String> = mine.iter().map(|&(c, _)| channel_name(c)).collect();
    let mut payload = vec![0x5a_u8; spec.payload];
    let mut result = PublisherResult::default();
    // Units in flight: (publications, deliveries due); nats answers a whole batch with one
    // PONG, the others each publication.
    let mut inflight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut inflight_pubs = 0usize;
    let mut parser = Parser::new(peer);
    let mut wbuf = BytesMut::with_capacity(BATCH * (spec.payload + 64));
    let mut seq: u64 = 0;
    let mut next_due = Instant::now();
    let mut id: u32 = 0;
    loop {
        let now = Instant::now();
        let publishing = now < end;
        if publishing {
            let mut batch = (0u64, 0u64);
            while inflight_pubs + (batch.0 as usize) < spec.window && (batch.0 as usize) < BATCH {
                if period.is_some_and(|_| next_due > now) {
                    break;
                }
                if period.is_none()
                    && shared.sent_expected.load(Ordering::Relaxed)
                        > shared.received.load(Ordering::Relaxed) + lag_cap
                {
                    break;
                }
                let k = (seq as usize) % mine.len();
                payload[..8].copy_from_slice(&shared.now_ns().to_le_bytes());
                payload[8..16].copy_from_slice(&seq.to_le_bytes());
                let name = &names[k];
                match peer {
                    Peer::Openserver => channels_client::publish(&mut wbuf, id, name, &payload),
                    Peer::Nats => nats_client::publish(&mut wbuf, name, &payload),
                    Peer::Redis => redis_pubsub::publish(&mut wbuf, name, &payload),
                }
                id = id.wrapping_add(1);
                seq += 1;
                shared.sent_expected.fetch_add(mine[k].1, Ordering::Relaxed);
                if peer == Peer::Nats {
                    batch = (batch.0 + 1, batch.1 + mine[k].1);
                } else {
                    inflight.push_back((1, mine[k].1));
                    inflight_pubs += 1;
                }
                if let Some(p) = period {
                    next_due += p;
                }
            }
            if batch.0 > 0 {
                nats_client::ping(&mut wbuf);
                inflight.push_back(batch);
                inflight_pubs += batch.0 as usize;
            }
            if !wbuf.is_empty() {
                if let Err(e) = tcp.write_all(&wbuf).await {
                    result.first_error.get_or_insert(format!("publish: {e}"));
                    break;
                }
                wbuf.clear();
            }
        } else if inflight.is_empty() {
            break;
        }
        // Wait for answers, the next due publication, a gate opening, or the end.
        let wake = if !publishing {
            end + spec.drain
        } else if inflight_pubs >= spec.window {
            end
        } else if let Some(_p) = period {
            next_due.min(end)
        } else {
            // Gated on the deliveries (or the batch was full): look again soon.
            now + Duration::from_millis(1)
        };
        if !publishing && Instant::now() >= wake {
            break;
        }
        let read = tokio::select! {
            r = tcp.read_buf(&mut rbuf) => Some(r),
            () = tokio::time::sleep_until(wake) => None,
        };
        match read {
            None => continue,
            Some(Ok(0)) | Some(Err(_)) => {
                result
                    .first_error
                    .get_or_insert("publisher connection closed".into());
                break;
            }
            Some(Ok(_)) => {}
        }
        let mut ping = false;
        let parsed = parser.parse(&mut rbuf, &mut |e| match e {
            Event::Ack | Event::Error(_) => {
                if let Some((n, due)) = inflight.pop_front() {
                    inflight_pubs -= n as usize;
                    if let Event::Error(text) = e {
                        result.errors += n;
                        result.first_error.get_or_insert(text);
                    } else {
                        result.publications += n;
                        result.expected += due;
                    }
                }
            }
            Event::Ping => ping = true,
            Event::Delivery(_) => {}
        });
        if let Err(e) = parsed {
            result.first_error.get_or_insert(format!("{e:#}"));
            break;
        }
        if ping && tcp.write_all(b"PONG\r\n").await.is_err() {
            break;
        }
    }
    let unanswered: u64 = inflight.iter().map(|u| u.0).sum();
    if unanswered > 0 {
        result.errors += unanswered;
        result
            .first_error
            .get_or_insert(format!("{unanswered} publications unanswered"));
    }
    result
}

/// Runs one fan-out against `addr` (a server of kind `peer`); `rss` reads the server's
/// resident memory in KiB.
pub async fn run(
    peer: Peer,
    addr: SocketAddr,
    spec: &FanoutSpec,
    rss: &(dyn Fn() -> Option<u64> + Sync),
) -> Result<FanoutReport> {
    run_spread(peer, &[addr], addr, spec, rss).await
}

/// Runs one fan-out with subscriber `i` on `subscribe_on[i % len]` and every publisher on
/// `publish_on`: the nodes of a cluster (`bench cluster`), or one server for all.
pub async fn run_spread(
    peer: Peer,
    subscribe_on: &[SocketAddr],
    publish_on: SocketAddr,
    spec: &FanoutSpec,
    rss: &(dyn Fn() -> Option<u64> + Sync),
) -> Result<FanoutReport> {
    spec.check()?;
    if subscribe_on.is_empty() {
        bail!("no server to subscribe on");
    }
    let spec = Arc::new(spec.clone());
    let addr = publish_on;
    let all_v4_loopback = std::iter::once(&publish_on)
        .chain(subscribe_on)
        .all(|a| a.ip().is_loopback() && a.is_ipv4());
    let sources = if all_v4_loopback {
        loopback_sources(
            run_octet(),
            0,
            spec.subscribers + spec.publishers,
            spec.connect_concurrency,
        )
    } else {
        Vec::new()
    };
    let source = |i: usize| (!sources.is_empty()).then(|| sources[i % sources.len()]);
    let login = &spec.login;
    // Sessions first, then the subscriptions, each with the server's memory after it.
    let conns: Vec<Result<(TcpStream, BytesMut)>> = futures::stream::iter(0..spec.subscribers)
        .map(|i| async move {
            tokio::time::timeout(
                crate::load::SETUP_TIMEOUT,
                connect(peer, subscribe_on[i % subscribe_on.len()], source(i), login),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("setup timed out")))
        })
        .buffered(spec.connect_concurrency.max(1))
        .collect()
        .await;
    let mut subs = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        subs.push(c.with_context(|| format!("subscriber {i} could not connect"))?);
    }
    // Settled readings, as `bench idle` takes them: the allocator hands back what a burst of
    // logins or subscriptions freed only after its decay time.
    let rss_sessions = crate::idle::settled_rss(rss).await;
    let spec_ref = &spec;
    let subscribed: Vec<Result<(TcpStream, BytesMut)>> =
        futures::stream::iter(subs.into_iter().enumerate())
            .map(|(i, (mut tcp, mut rbuf))| async move {
                let channels: Vec<usize> = spec_ref.channels_of(i).collect();
                subscribe_all(peer, &mut tcp, &mut rbuf, &channels).await?;
                Ok((tcp, rbuf))
            })
            .buffered(spec.connect_concurrency.max(1))
            .collect()
            .await;
    let mut subs = Vec::with_capacity(subscribed.len());
    for (i, c) in subscribed.into_iter().enumerate() {
        subs.push(c.with_context(|| format!("subscriber {i} could not subscribe"))?);
    }
    let rss_subscribed = crate::idle::settled_rss(rss).await;
    let subscriptions = (spec.subscribers * spec.channels_per_sub) as u64;
    let mut per_channel = vec![0u64; spec.channels];
    for i in 0..spec.subscribers {
        for c in spec.channels_of(i) {
            per_channel[c] += 1;
        }
    }

    let mut pubs = Vec::with_capacity(spec.publishers);
    for p in 0..spec.publishers {
        let conn = connect(peer, addr, source(spec.subscribers + p), login)
            .await
            .with_context(|| format!("publisher {p} could not connect"))?;
        pubs.push(conn);
    }

    let shared = Arc::new(Shared {
        base: Instant::now(),
        received: AtomicU64::new(0),
        sent_expected: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        hists: (0..SHARDS)
            .map(|_| Mutex::new(crate::stats::new_histogram()))
            .collect(),
    });
    let stop = CancellationToken::new();
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, (tcp, rbuf))| {
            tokio::spawn(read_deliveries(
                peer,
                tcp,
                rbuf,
                shared.clone(),
                i % SHARDS,
                stop.clone(),
            ))
        })
        .collect();
    let start = Instant::now();
    let start_ns = shared.now_ns();
    let end = start + spec.duration;
    let period = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.publishers as f64 / r));
    let lag_cap = spec.lag.saturating_mul(subscriptions).max(1);
    let publishers: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(p, (tcp, rbuf))| {
            let mine: Vec<(usize, u64)> = if spec.channels >= spec.publishers {
                (p..spec.channels)
                    .step_by(spec.publishers)
                    .map(|c| (c, per_channel[c]))
                    .collect()
            } else {
                vec![(p % spec.channels, per_channel[p % spec.channels])]
            };
            tokio::spawn(publish(
                peer,
                tcp,
                rbuf,
                mine,
                period,
                spec.clone(),
                shared.clone(),
                end,
                lag_cap,
            ))
        })
        .collect();
    let mut report = FanoutReport {
        peer: peer.name().into(),
        subscribers: spec.subscribers,
        subscriptions,
        rss_sessions_kib: rss_sessions,
        rss_subscribed_kib: rss_subscribed,
        rss_per_subscription_bytes: match (rss_sessions, rss_subscribed) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) * 1024.0 / subscriptions as f64),
            _ => None,
        },
        ..FanoutReport::default()
    };
    for p in publishers {
        let r = p.await.unwrap_or_default();
        report.publications += r.publications;
        report.expected += r.expected;
        report.publish_errors += r.errors;
        if report.first_error.is_none() {
            report.first_error = r.first_error;
        }
    }
    let published_secs = start
        .elapsed()
        .as_secs_f64()
        .min(spec.duration.as_secs_f64());
    // Drain: until everything due arrived, or nothing arrived for `drain`.
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.received.load(Ordering::Relaxed);
        if now >= report.expected {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= spec.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for r in readers {
        if !r.await.unwrap_or(false) {
            report.subscribers_closed += 1;
        }
    }
    report.received = shared.received.load(Ordering::Relaxed);
    report.lost = report.expected.saturating_sub(report.received);
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    report.secs = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    if report.secs > 0.0 {
        report.deliveries_per_sec = report.received as f64 / report.secs;
    }
    if published_secs > 0.0 {
        report.publications_per_sec = report.publications as f64 / published_secs;
    }
    let mut total = crate::stats::new_histogram();
    for h in &shared.hists {
        if let Ok(h) = h.lock() {
            let _ = total.add(&*h);
        }
    }
    report.latency = Summary::of(&total);
    Ok(report)
}

/// The `[channels]` settings `openserver serve` gets for fan-out: publishers not rate
/// limited, no join/leave pushes (the peers have none), and `history_size` if given.
pub fn serve_config(history_size: Option<usize>) -> String {
    let mut text = String::from(
        "# Written by openserver bench fanout: only these differ from the defaults.\n\
         [channels]\npublishes_per_second = 1000000\n\n[channels.default]\njoin_leave = false\n",
    );
    if let Some(n) = history_size {
        text.push_str(&format!("history_size = {n}\n"));
    }
    text
}

/// How the rounds are run.
#[derive(Debug, Clone)]
pub struct RoundsOptions {
    /// The load.
    pub spec: FanoutSpec,
    /// Rounds; each runs every peer once, openserver first.
    pub rounds: usize,
    /// Also run nats-server and redis-server (skipped, with the reason printed, if missing).
    pub peers: bool,
    /// Start `openserver serve` from this executable.
    pub launcher: Launcher,
    /// `history_size` of the default namespace, if not the server's default.
    pub history_size: Option<usize>,
    /// Print each round's result to stderr as it ends.
    pub verbose: bool,
}

/// Every round's reports and the medians per peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundsResult {
    /// The load.
    pub spec: FanoutSpec,
    /// Peers skipped, with why.
    pub skipped: Vec<String>,
    /// Each round's reports, in the order run.
    pub runs: Vec<FanoutReport>,
    /// Medians per peer.
    pub medians: Vec<Medians>,
}

/// The medians of one peer's rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Medians {
    /// The peer.
    pub peer: String,
    /// Rounds.
    pub rounds: usize,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Publications per second.
    pub publications_per_sec: f64,
    /// Lost deliveries (largest of the rounds).
    pub lost_max: u64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Server memory per subscription, bytes.
    pub rss_per_subscription_bytes: Option<f64>,
}

/// Runs the rounds, alternating peers.
pub async fn run_rounds(options: &RoundsOptions) -> Result<RoundsResult> {
    let mut skipped = Vec::new();
    let mut peers = vec![Peer::Openserver];
    let (mut nats, mut redis) = (None, None);
    if options.peers {
        match crate::target::find_nats() {
            Some(exe) => {
                peers.push(Peer::Nats);
                nats = Some(exe);
            }
            None => skipped.push("nats: nats-server not found on PATH or at /usr/sbin".into()),
        }
        match crate::target::find_redis() {
            Some(exe) => {
                peers.push(Peer::Redis);
                redis = Some(exe);
            }
            None => skipped.push("redis: redis-server not found on PATH".into()),
        }
    }
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    let mut runs = Vec::new();
    for round in 0..options.rounds.max(1) {
        for &peer in &peers {
            let report = match peer {
                Peer::Openserver => {
                    let mut target = TargetOptions::new(TargetKind::Serve);
                    target.login = options.spec.login.clone();
                    target.serve_config = Some(serve_config(options.history_size));
                    let t = ChildTarget::spawn(&options.launcher, &target).await?;
                    let r = run(peer, t.addr, &options.spec, &|| t.rss_kib()).await;
                    t.stop().await;
                    r
                }
                Peer::Nats => {
                    let exe = nats.as_ref().ok_or_else(|| anyhow!("no nats"))?;
                    let t = NatsTarget::spawn(exe).await?;
                    let r = run(peer, t.addr, &options.spec, &|| t.rss_kib()).await;
                    t.stop().await;
                    r
                }
                Peer::Redis => {
                    let exe = redis.as_ref().ok_or_else(|| anyhow!("no redis"))?;
                    let t = RedisTarget::spawn(exe).await?;
                    let r = run(peer, t.addr, &options.spec, &|| t.rss_kib()).await;
                    t.stop().await;
                    r
                }
            }
            .with_context(|| format!("round {} against {}", round + 1, peer.name()))?;
            if options.verbose {
                eprintln!(
                    "round {} {}: {:.0} deliveries/s, lost {}, subscribers closed {}, p99 {:.0} us",
                    round + 1,
                    report.peer,
                    report.deliveries_per_sec,
                    report.lost,
                    report.subscribers_closed,
                    report.latency.p99_us
                );
            }
            runs.push(report);
        }
    }
    let medians = peers
        .iter()
        .map(|peer| {
            let mine: Vec<&FanoutReport> = runs.iter().filter(|r| r.peer == peer.name()).collect();
            let m = |f: &dyn Fn(&FanoutReport) -> f64| {
                crate::stats::median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let per_sub: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.rss_per_subscription_bytes)
                .collect();
            Medians {
                peer: peer.name().into(),
                rounds: mine.len(),
                deliveries_per_sec: m(&|r| r.deliveries_per_sec),
                publications_per_sec: m(&|r| r.publications_per_sec),
                lost_max: mine.iter().map(|r| r.lost).max().unwrap_or(0),
                p50_us: m(&|r| r.latency.p50_us),
                p99_us: m(&|r| r.latency.p99_us),
                p999_us: m(&|r| r.latency.p999_us),
                rss_per_subscription_bytes: (!per_sub.is_empty())
                    .then(|| crate::stats::median(&per_sub)),
            }
        })
        .collect();
    Ok(RoundsResult {
        spec: options.spec.clone(),
        skipped,
        runs,
        medians,
    })
}

/// One recovery probe's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResubscribeReport {
    /// Publications missed while unsubscribed.
    pub missed: usize,
    /// Publications the resubscribe returned.
    pub delivered: usize,
    /// Whether they came with offsets one apart, right after the old position.
    pub in_order: bool,
    /// The server's recovery outcome.
    pub recovery: String,
    /// Milliseconds from sending the subscribe to having all of them.
    pub millis: f64,
}

/// Subscribes, unsubscribes, lets `missed` publications pass, then resubscribes with
/// `since` and times the recovery (the server needs `history_size >= missed`).
pub async fn resubscribe(
    addr: SocketAddr,
    login: &Login,
    channel: &str,
    missed: usize,
    payload: usize,
) -> Result<ResubscribeReport> {
    use openserver::channels::messages::Reply;
    let (mut sub, mut sbuf) = channels_client::connect(addr, None, login).await?;
    let (mut publ, mut pbuf) = channels_client::connect(addr, None, login).await?;
    let mut sp = channels_client::Parser::new();
    let mut wbuf = BytesMut::new();
    channels_client::subscribe(&mut wbuf, 1, channel, None);
    sub.write_all(&wbuf).await?;
    let Reply::Subscribed(first) =
        channels_client::read_reply(&mut sub, &mut sbuf, &mut sp).await?
    else {
        bail!("unexpected answer to subscribe");
    };
    wbuf.clear();
    let command = openserver::channels::messages::Command::Unsubscribe {
        channel: channel.into(),
    };
    if let Ok(body) =
        openserver::app::envelope::encode(openserver::app::envelope::REQUEST, 2, &command)
    {
        let _ = openserver::wire::Frame::new(openserver::channels::CHANNELS_ID, body)
            .encode_into(&mut wbuf);
    }
    sub.write_all(&wbuf).await?;
    channels_client::read_reply(&mut sub, &mut sbuf, &mut sp).await?;
    // The missed publications, pipelined, all answered before the resubscribe.
    let data = vec![0x5a_u8; payload.max(1)];
    wbuf.clear();
    for k in 0..missed {
        channels_client::publish(&mut wbuf, k as u32, channel, &data);
    }
    publ.write_all(&wbuf).await?;
    let mut pp = channels_client::Parser::new();
    let mut answered = 0;
    while answered < missed {
        if publ.read_buf(&mut pbuf).await? == 0 {
            bail!("the server closed the publisher");
        }
        let mut failed = None;
        pp.parse(&mut pbuf, &mut |e| match e {
            Event::Ack => answered += 1,
            Event::Error(e) => failed = Some(e),
            _ => {}
        })?;
        if let Some(e) = failed {
            bail!("publish refused: {e}");
        }
    }
    wbuf.clear();
    channels_client::subscribe(&mut wbuf, 3, channel, Some(first.position.clone()));
    let t0 = Instant::now();
    sub.write_all(&wbuf).await?;
    let reply = channels_client::read_reply(&mut sub, &mut sbuf, &mut sp).await?;
    let millis = t0.elapsed().as_secs_f64() * 1000.0;
    let Reply::Subscribed(again) = reply else {
        bail!("unexpected answer to the resubscribe");
    };
    let in_order = again.publications.iter().enumerate().all(|(k, p)| {
        p.epoch == first.position.epoch && p.offset == first.position.offset + 1 + k as u64
    });
    Ok(ResubscribeReport {
        missed,
        delivered: again.publications.len(),
        in_order,
        recovery: again
            .recovery
            .map(|r| r.label().to_string())
            .unwrap_or_default(),
        millis,
    })
}
