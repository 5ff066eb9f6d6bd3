//! The load engine: open N connections (TCP, TLS, DatabaseAuth login), then keep D requests
//! in flight on each (closed loop) or send at a fixed rate (open loop), and record every
//! answer's latency.
//!
//! DNOS has no request ids, but a server answers one protocol's requests in order, so each
//! connection keeps a FIFO of send times and pairs every answer with the oldest. In open-loop
//! mode the FIFO holds each request's *scheduled* time, so a request held back by a slow
//! server (or by the in-flight cap) still counts its whole delay: no coordinated omission.

use crate::stats::{HistPairs, IntervalPairs, LocalRecorder, Recorder, Summary};
use crate::stream::{tcp_connect, tls_handshake, BenchStream};
use crate::tls::{ClientTlsSpec, Connector};
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt as _;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::{protocol_id, FrameCodec, Message, Secret};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// How long one connection's TCP connect, TLS handshake and login may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the run ends, how long answers to requests still in flight are awaited; those that
/// do not come count as errors.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer accepted (the echo of the largest payload, with room).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    /// A Hello (protocol 10) round trip.
    Hello,
    /// An echo-protocol round trip with a body of `payload` bytes.
    Echo {
        /// Body bytes of each request (and answer).
        payload: usize,
    },
    /// A redis `PING` (inline command), answered `+PONG`; no login, no TLS.
    RedisPing,
    /// A new connection per request: TCP connect, TLS handshake (when TLS is on) and one
    /// Capabilities round trip (proving the server finished its side), then close.
    Handshake,
}

impl Workload {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Workload::Hello => "hello".into(),
            Workload::Echo { payload } => format!("echo {payload} B"),
            Workload::RedisPing => "redis PING".into(),
            Workload::Handshake => "handshake".into(),
        }
    }

    /// Whether connections log in before the load starts.
    fn logs_in(&self) -> bool {
        !matches!(self, Workload::RedisPing | Workload::Handshake)
    }

    /// One request, as bytes on the wire.
    fn request(&self) -> Bytes {
        match self {
            // Frame encoding fails only above 2 GiB; these bodies are tiny.
            Workload::Hello => frame_bytes(&HelloMessage("bench".into()).to_frame()),
            Workload::Echo { payload } => frame_bytes(&openserver::wire::Frame::new(
                crate::echo::ECHO_PROTOCOL_ID,
                vec![0x5a; *payload],
            )),
            Workload::RedisPing => Bytes::from_static(b"PING\r\n"),
            Workload::Handshake => frame_bytes(&CapabilitiesMessage::GetProtocolIds.to_frame()),
        }
    }

    /// How answers are recognised.
    fn answer(&self) -> Answer {
        match self {
            Workload::Hello => Answer::Frame(protocol_id::HELLO),
            Workload::Echo { .. } => Answer::Frame(crate::echo::ECHO_PROTOCOL_ID),
            Workload::RedisPing => Answer::Pong,
            Workload::Handshake => Answer::Frame(protocol_id::CAPABILITIES),
        }
    }
}

fn frame_bytes(frame: &openserver::wire::Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.wire_len());
    // Bodies here are at most the payload flag's value, far below the 2 GiB frame limit.
    let _ = frame.encode_into(&mut buf);
    buf.freeze()
}

/// The credentials each connection logs in with (DatabaseAuth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// A load run: where, how many connections, what each does, for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// The server.
    pub addr: SocketAddr,
    /// Connections (for [`Workload::Handshake`]: connection attempts running at once).
    pub connections: usize,
    /// Requests in flight per connection (the cap, in open-loop mode).
    pub depth: usize,
    /// Run this long (measured from when every connection is ready).
    pub duration: Option<Duration>,
    /// Or send this many requests in all.
    pub count: Option<u64>,
    /// Open loop: requests per second in all, spread evenly over the connections.
    pub rate: Option<f64>,
    /// What each request is.
    pub workload: Workload,
    /// Log in with these credentials (ignored for redis and handshakes).
    pub login: Option<Login>,
    /// TLS, or plaintext when `None`.
    pub tls: Option<ClientTlsSpec>,
    /// Source addresses to spread connections over. Empty: for a server on IPv4 loopback
    /// (and a workload other than handshakes), addresses 127.B.0.x picked per run ([`crate::stream::loopback_sources`]), so that a
    /// server's per-address limits at their defaults do not refuse the load; otherwise the
    /// kernel's choice.
    pub sources: Vec<IpAddr>,
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// Period of the time series (plot, progress).
    pub sample_interval: Duration,
    /// Hard limit on the run, whatever `count` says.
    pub max_time: Duration,
}

impl LoadSpec {
    /// One connection, one request in flight, for ten seconds, plaintext, no login.
    pub fn new(addr: SocketAddr, workload: Workload) -> Self {
        LoadSpec {
            addr,
            connections: 1,
            depth: 1,
            duration: Some(Duration::from_secs(10)),
            count: None,
            rate: None,
            workload,
            login: None,
            tls: None,
            sources: Vec::new(),
            connect_concurrency: 256,
            sample_interval: Duration::from_secs(1),
            max_time: Duration::from_secs(3600),
        }
    }

    /// When the load stops, measured from its start.
    fn run_time(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d.min(self.max_time),
            (None, _) => self.max_time,
        }
    }

    fn source(&self, n: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()])
    }

    /// This spec with its sources filled in for `count` connections when it names none and
    /// the server is on IPv4 loopback.
    fn spread(&self, count: usize) -> std::borrow::Cow<'_, LoadSpec> {
        if !(self.sources.is_empty() && self.addr.ip().is_loopback() && self.addr.is_ipv4()) {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut spec = self.clone();
        spec.sources = crate::stream::loopback_sources(
            crate::stream::run_octet(),
            0,
            count,
            self.connect_concurrency,
        );
        std::borrow::Cow::Owned(spec)
    }
}

/// How connection setup went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections ready (connected, TLS done, logged in).
    pub connected: usize,
    /// Connections that failed to set up.
    pub errors: u64,
    /// The first setup failure, for the error message.
    pub first_error: Option<String>,
    /// Wall time of the whole setup phase.
    pub secs: f64,
    /// TCP connect latencies.
    pub connect: HistPairs,
    /// TLS handshake latencies.
    pub handshake: HistPairs,
    /// Login round-trip latencies.
    pub login: HistPairs,
}

impl SetupReport {
    /// Connections set up per second (connect, TLS and login, at the configured concurrency).
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.connected as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Combines the setup of several worker processes that ran at the same time.
    pub fn merge(&self, other: &SetupReport) -> SetupReport {
        SetupReport {
            requested: self.requested + other.requested,
            connected: self.connected + other.connected,
            errors: self.errors + other.errors,
            first_error: self.first_error.clone().or(other.first_error.clone()),
            secs: self.secs.max(other.secs),
            connect: self.connect.merge(&other.connect),
            handshake: self.handshake.merge(&other.handshake),
            login: self.login.merge(&other.login),
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// What each request was.
    pub workload: Workload,
    /// Connections asked for.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Whether TLS was on.
    pub tls: bool,
    /// Open-loop target rate, if any.
    pub rate: Option<f64>,
    /// Connection setup.
    pub setup: SetupReport,
    /// Length of the measured phase (until the last answer or the drain timeout).
    pub elapsed_secs: f64,
    /// Answers received.
    pub completed: u64,
    /// Failed requests and lost connections (setup failures not included).
    pub errors: u64,
    /// Connections that closed during the run.
    pub lost: u64,
    /// Every answer's latency.
    pub latency: HistPairs,
    /// Period of `series`.
    pub interval_secs: f64,
    /// Latencies per interval.
    pub series: Vec<IntervalPairs>,
}

impl LoadReport {
    /// Answers per second over the measured phase.
    pub fn messages_per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.completed as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// Latency percentiles.
    pub fn summary(&self) -> Summary {
        self.latency.summary()
    }

    /// Every error: setup failures, failed requests, lost connections.
    pub fn total_errors(&self) -> u64 {
        self.errors + self.setup.errors
    }

    /// Combines reports of worker processes that ran the same load at the same time.
    pub fn merge(&self, other: &LoadReport) -> LoadReport {
        let len = self.series.len().max(other.series.len());
        let series = (0..len)
            .map(|i| {
                let a = self.series.get(i).cloned().unwrap_or_default();
                let b = other.series.get(i).cloned().unwrap_or_default();
                IntervalPairs {
                    latency: a.latency.merge(&b.latency),
                }
            })
            .collect();
        LoadReport {
            workload: self.workload,
            connections: self.connections + other.connections,
            depth: self.depth,
            tls: self.tls,
            rate: match (self.rate, other.rate) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
            setup: self.setup.merge(&other.setup),
            elapsed_secs: self.elapsed_secs.max(other.elapsed_secs),
            completed: self.completed + other.completed,
            errors: self.errors + other.errors,
            lost: self.lost + other.lost,
            latency: self.latency.merge(&other.latency),
            interval_secs: self.interval_secs,
            series,
        }
    }
}

/// Told how the run goes, once per sample interval.
pub trait Progress: Send + Sync {
    /// `completed` answers and `errors` so far, `elapsed` into the run; `last` is the interval
    /// just ended.
    fn update(&self, elapsed: Duration, completed: u64, errors: u64, last: &Summary);
    /// The run is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: Duration, _: u64, _: u64, _: &Summary) {}
}

/// A set-up connection: its stream and what was read past the login answer.
pub(crate) struct Conn {
    pub(crate) stream: BenchStream,
    pub(crate) rbuf: BytesMut,
}

impl Conn {
    /// Reads the next frame.
    async fn read_frame(&mut self, codec: &mut FrameCodec) -> Result<openserver::wire::Frame> {
        loop {
            if let Some(frame) = codec.decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("server closed the connection");
            }
        }
    }

    /// Logs in with DatabaseAuth.
    pub(crate) async fn login(&mut self, login: &Login) -> Result<()> {
        let request = DatabaseAuthMessage::Authenticate {
            user: login.user.clone(),
            password: Secret::new(login.password.clone()),
        };
        self.stream
            .write_all(&frame_bytes(&request.to_frame()))
            .await?;
        self.stream.flush().await?;
        let mut codec = FrameCodec::new(MAX_FRAME);
        loop {
            let frame = self.read_frame(&mut codec).await?;
            match frame.protocol_id {
                protocol_id::DATABASE_AUTH => {
                    return match DatabaseAuthMessage::decode(&frame.body)? {
                        DatabaseAuthMessage::Authenticated { .. } => Ok(()),
                        other => Err(anyhow!("login as {:?} refused: {other:?}", login.user)),
                    }
                }
                protocol_id::CAPABILITIES => {
                    bail!(
                        "login refused: {:?}",
                        CapabilitiesMessage::decode(&frame.body)?
                    )
                }
                _ => {}
            }
        }
    }
}

/// Durations of one connection's setup steps.
struct SetupTimes {
    connect: Duration,
    handshake: Option<Duration>,
    login: Option<Duration>,
}

async fn open_conn(
    spec: &LoadSpec,
    connector: Option<&Connector>,
    index: usize,
) -> Result<(Conn, SetupTimes)> {
    let t0 = Instant::now();
    let tcp = tcp_connect(spec.addr, spec.source(index))
        .await
        .with_context(|| format!("cannot connect to {}", spec.addr))?;
    let t1 = Instant::now();
    let stream = match connector {
        Some(tls) => tls_handshake(tcp, tls).await?,
        None => BenchStream::Plain(tcp),
    };
    let t2 = Instant::now();
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(8 * 1024),
    };
    let mut login = None;
    if let (Some(credentials), true) = (&spec.login, spec.workload.logs_in()) {
        conn.login(credentials).await?;
        login = Some(t2.elapsed());
    }
    Ok((
        conn,
        SetupTimes {
            connect: t1 - t0,
            handshake: connector.map(|_| t2 - t1),
            login,
        },
    ))
}

/// Sets up `count` connections, `connect_concurrency` at a time; connection `i` gets index
/// `first + i` (which picks its source address).
pub(crate) async fn setup(spec: &LoadSpec, count: usize, first: usize) -> (Vec<Conn>, SetupReport) {
    let spec = &*spec.spread(count);
    let mut report = SetupReport {
        requested: count,
        ..SetupReport::default()
    };
    let connector = match spec.tls.as_ref().map(ClientTlsSpec::connector).transpose() {
        Ok(c) => c,
        Err(e) => {
            report.errors = count as u64;
            report.first_error = Some(format!("{e:#}"));
            return (Vec::new(), report);
        }
    };
    let start = Instant::now();
    let mut connect = crate::stats::new_histogram();
    let mut handshake = crate::stats::new_histogram();
    let mut login = crate::stats::new_histogram();
    let mut conns = Vec::with_capacity(count);
    let connector = connector.as_ref();
    let mut results = futures::stream::iter(first..first + count)
        .map(|i| async move {
            tokio::time::timeout(SETUP_TIMEOUT, open_conn(spec, connector, i))
                .await
                .unwrap_or_else(|_| Err(anyhow!("setup timed out after {SETUP_TIMEOUT:?}")))
        })
        .buffer_unordered(spec.connect_concurrency.max(1));
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    while let Some(result) = results.next().await {
        match result {
            Ok((conn, times)) => {
                connect.saturating_record(ns(times.connect));
                if let Some(d) = times.handshake {
                    handshake.saturating_record(ns(d));
                }
                if let Some(d) = times.login {
                    login.saturating_record(ns(d));
                }
                conns.push(conn);
            }
            Err(e) => {
                report.errors += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    report.connected = conns.len();
    report.connect = HistPairs::from_histogram(&connect);
    report.handshake = HistPairs::from_histogram(&handshake);
    report.login = HistPairs::from_histogram(&login);
    (conns, report)
}

/// Runs the whole load in this process: setup, then the measured phase.
pub async fn run_local(spec: &LoadSpec, progress: &dyn Progress) -> Result<LoadReport> {
    if spec.connections == 0 || spec.depth == 0 {
        bail!("--connections and --depth must be at least 1");
    }
    if spec.workload == Workload::Handshake {
        return run_handshakes(spec, progress).await;
    }
    let (conns, setup) = setup(spec, spec.connections, 0).await;
    Ok(run_connected(spec, conns, setup, progress).await)
}

/// Splits `total` into `parts` near-equal shares.
fn shares(total: u64, parts: usize) -> impl Iterator<Item = u64> {
    let parts = parts.max(1) as u64;
    (0..parts).map(move |i| total / parts + u64::from(i < total % parts))
}

/// The measured phase on connections already set up.
pub(crate) async fn run_connected(
    spec: &LoadSpec,
    conns: Vec<Conn>,
    setup: SetupReport,
    progress: &dyn Progress,
) -> LoadReport {
    let recorder = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let n = conns.len();
    let request = spec.workload.request();
    let answer = spec.workload.answer();
    // Open loop: each connection sends at rate / n, the first requests staggered over one
    // period so that connections do not fire in lockstep.
    let period = spec
        .rate
        .filter(|r| *r > 0.0 && n > 0)
        .map(|r| Duration::from_secs_f64(n as f64 / r));
    let mut budgets: Box<dyn Iterator<Item = Option<u64>> + Send> = match spec.count {
        Some(count) => Box::new(shares(count, n).map(Some)),
        None => Box::new(std::iter::repeat(None)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let first_due = period.map(|p| start + p.mul_f64(i as f64 / n.max(1) as f64));
        let params = DriveParams {
            request: request.clone(),
            answer,
            depth: spec.depth,
            period,
            first_due: first_due.unwrap_or(start),
            budget: budgets.next().flatten(),
        };
        let rec = recorder.local(i);
        let stop = stop.clone();
        tasks.spawn(drive(conn, params, rec, stop));
    }
    let deadline = tokio::time::sleep_until(start + spec.run_time());
    tokio::pin!(deadline);
    let mut stopped = false;
    let mut ticker = tokio::time::interval_at(start + spec.sample_interval, spec.sample_interval);
    let mut series = Vec::new();
    loop {
        tokio::select! {
            () = &mut deadline => {
                if stopped {
                    tasks.abort_all();
                } else {
                    stop.cancel();
                    stopped = true;
                }
                // Every task gives up on its in-flight requests after DRAIN_TIMEOUT; this is
                // the backstop should one not return.
                deadline.as_mut().reset(Instant::now() + DRAIN_TIMEOUT * 2);
            }
            _ = ticker.tick() => {
                let interval = recorder.take_interval();
                progress.update(start.elapsed(), recorder.completed(), recorder.errors(), &interval.summary());
                series.push(IntervalPairs { latency: interval });
            }
            joined = tasks.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    // A last, partial interval would show as a dip in the throughput plot: only kept when it
    // is the only one.
    if series.is_empty() {
        series.push(IntervalPairs {
            latency: recorder.take_interval(),
        });
    }
    progress.finish();
    LoadReport {
        workload: spec.workload,
        connections: spec.connections,
        depth: spec.depth,
        tls: spec.tls.is_some(),
        rate: spec.rate,
        setup,
        elapsed_secs: elapsed.as_secs_f64(),
        completed: recorder.completed(),
        errors: recorder.errors(),
        lost: recorder.lost(),
        latency: recorder.total(),
        interval_secs: spec.sample_interval.as_secs_f64(),
        series,
    }
}

/// How answers are recognised.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A frame of this protocol; any other frame but keep-alive is an error answer.
    Frame(u16),
    /// A redis reply line, `+PONG`.
    Pong,
}

/// What one connection task does.
struct DriveParams {
    request: Bytes,
    answer: Answer,
    depth: usize,
    /// Open loop: one request per period.
    period: Option<Duration>,
    first_due: Instant,
    /// Requests this connection may send; `None`: until stopped.
    budget: Option<u64>,
}

async fn drive(conn: Conn, params: DriveParams, rec: LocalRecorder, stop: CancellationToken) {
    let Conn { stream, rbuf } = conn;
    match stream {
        BenchStream::Plain(mut tcp) => {
            let (r, w) = tcp.split();
            drive_io(r, w, false, rbuf, params, rec, stop).await;
        }
        BenchStream::Tls(tls) => {
            let (r, w) = tokio::io::split(*tls);
            drive_io(r, w, true, rbuf, params, rec, stop).await;
        }
    }
}

/// One answer parsed from the read buffer.
enum Parsed {
    Answer,
    ErrorAnswer,
    /// Not an answer (a keep-alive from the server).
    Other,
}

fn parse(answer: Answer, codec: &mut FrameCodec, rbuf: &mut BytesMut) -> Result<Option<Parsed>> {
    match answer {
        Answer::Frame(id) => Ok(codec.decode(rbuf)?.map(|frame| {
            if frame.protocol_id == id {
                Parsed::Answer
            } else if frame.protocol_id == protocol_id::KEEP_ALIVE {
                Parsed::Other
            } else {
                Parsed::ErrorAnswer
            }
        })),
        Answer::Pong => {
            let Some(end) = rbuf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let ok = &rbuf[..end] == b"+PONG";
            rbuf.advance(end + 2);
            Ok(Some(if ok {
                Parsed::Answer
            } else {
                Parsed::ErrorAnswer
            }))
        }
    }
}

async fn drive_io<R, W>(
    mut reader: R,
    mut writer: W,
    needs_flush_after_write: bool,
    mut rbuf: BytesMut,
    params: DriveParams,
    mut rec: LocalRecorder,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(params.depth);
    let mut wbuf = BytesMut::with_capacity(params.request.len() * params.depth.min(64));
    let mut remaining = params.budget;
    let mut sending = remaining != Some(0);
    let mut needs_flush = false;
    let mut next_due = params.first_due;
    let stopped = stop.cancelled();
    let tick = tokio::time::sleep_until(next_due);
    let drain = tokio::time::sleep(DRAIN_TIMEOUT);
    tokio::pin!(stopped, tick, drain);
    let mut now = Instant::now();
    loop {
        if sending {
            match params.period {
                None => {
                    while inflight.len() < params.depth && remaining != Some(0) {
                        wbuf.put_slice(&params.request);
                        inflight.push_back(now);
                        remaining = remaining.map(|r| r - 1);
                    }
                }
                Some(period) => {
                    // Requests due while the in-flight cap is reached wait, but keep their
                    // scheduled time: their latency includes the wait.
                    let before = next_due;
                    while next_due <= now && inflight.len() < params.depth && remaining != Some(0) {
                        wbuf.put_slice(&params.request);
                        inflight.push_back(next_due);
                        next_due += period;
                        remaining = remaining.map(|r| r - 1);
                    }
                    if next_due != before {
                        tick.as_mut().reset(next_due);
                    }
                }
            }
            if remaining == Some(0) {
                sending = false;
                drain.as_mut().reset(now + DRAIN_TIMEOUT);
            }
        }
        if !sending && inflight.is_empty() && wbuf.is_empty() {
            break;
        }
        let may_write = !wbuf.is_empty() || needs_flush;
        tokio::select! {
            biased;
            read = reader.read_buf(&mut rbuf) => {
                now = Instant::now();
                match read {
                    Ok(0) | Err(_) => break rec_lost(&mut rec, &inflight, sending, now),
                    Ok(_) => {}
                }
                loop {
                    match parse(params.answer, &mut codec, &mut rbuf) {
                        Ok(None) => break,
                        Ok(Some(Parsed::Other)) => {}
                        Ok(Some(parsed)) => match inflight.pop_front() {
                            Some(sent) => match parsed {
                                Parsed::Answer => rec.record(now.saturating_duration_since(sent), now.into_std()),
                                _ => rec.error(),
                            },
                            // An answer nobody asked for.
                            None => rec.error(),
                        },
                        Err(_) => {
                            rec_lost(&mut rec, &inflight, sending, now);
                            return;
                        }
                    }
                }
            }
            written = async {
                if wbuf.is_empty() {
                    writer.flush().await.map(|()| true)
                } else {
                    writer.write_buf(&mut wbuf).await.map(|_| false)
                }
            }, if may_write => {
                match written {
                    Ok(flushed) => needs_flush = needs_flush_after_write && !flushed,
                    Err(_) => break rec_lost(&mut rec, &inflight, sending, Instant::now()),
                }
            }
            // Only while below the cap, or a due-but-capped request would spin this branch.
            () = &mut tick, if sending && params.period.is_some() && inflight.len() < params.depth => {
                now = Instant::now();
            }
            () = &mut stopped, if sending => {
                now = Instant::now();
                sending = false;
                drain.as_mut().reset(now + DRAIN_TIMEOUT);
            }
            () = &mut drain, if !sending => {
                // Answers that never came.
                for _ in 0..inflight.len() {
                    rec.error();
                }
                break;
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// Counts a connection that broke: its in-flight requests failed, and it was lost unless the
/// run was already over and nothing was outstanding.
fn rec_lost(rec: &mut LocalRecorder, inflight: &VecDeque<Instant>, sending: bool, now: Instant) {
    for _ in 0..inflight.len() {
        rec.error();
    }
    if sending || !inflight.is_empty() {
        rec.lost();
    }
    rec.flush(now.into_std());
}

/// The handshake workload: `connections` loops, each opening, probing and closing
/// connections one after another.
/// Connections come from the kernel's choice of source unless the spec names sources: bound
/// sources would take their ports at bind time, where loopback's reuse of TIME_WAIT ports on
/// connect does not help, and a few thousand handshakes a second would run out of ports.
async fn run_handshakes(spec: &LoadSpec, progress: &dyn Progress) -> Result<LoadReport> {
    let connector = spec
        .tls
        .as_ref()
        .map(ClientTlsSpec::connector)
        .transpose()?;
    let recorder = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let n = spec.connections;
    let mut budgets: Box<dyn Iterator<Item = Option<u64>> + Send> = match spec.count {
        Some(count) => Box::new(shares(count, n).map(Some)),
        None => Box::new(std::iter::repeat(None)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let spec = spec.clone();
        let connector = connector.clone();
        let mut rec = recorder.local(i);
        let stop = stop.clone();
        let mut remaining = budgets.next().flatten();
        tasks.spawn(async move {
            let probe = spec.workload.request();
            let mut attempt = i;
            while !stop.is_cancelled() && remaining != Some(0) {
                remaining = remaining.map(|r| r - 1);
                let t0 = Instant::now();
                let one = probe_once(&spec, connector.as_ref(), attempt, &probe);
                match tokio::time::timeout(SETUP_TIMEOUT, one).await {
                    Ok(Ok(())) => {
                        let now = Instant::now();
                        rec.record(now - t0, now.into_std());
                    }
                    _ => rec.error(),
                }
                attempt += n;
            }
        });
    }
    let deadline = tokio::time::sleep_until(start + spec.run_time());
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval_at(start + spec.sample_interval, spec.sample_interval);
    let mut series = Vec::new();
    loop {
        tokio::select! {
            () = &mut deadline, if !stop.is_cancelled() => stop.cancel(),
            _ = ticker.tick() => {
                let interval = recorder.take_interval();
                progress.update(start.elapsed(), recorder.completed(), recorder.errors(), &interval.summary());
                series.push(IntervalPairs { latency: interval });
            }
            joined = tasks.join_next() => if joined.is_none() { break },
        }
    }
    let elapsed = start.elapsed();
    if series.is_empty() {
        series.push(IntervalPairs {
            latency: recorder.take_interval(),
        });
    }
    progress.finish();
    Ok(LoadReport {
        workload: spec.workload,
        connections: n,
        depth: 1,
        tls: spec.tls.is_some(),
        rate: None,
        setup: SetupReport::default(),
        elapsed_secs: elapsed.as_secs_f64(),
        completed: recorder.completed(),
        errors: recorder.errors(),
        lost: 0,
        latency: recorder.total(),
        interval_secs: spec.sample_interval.as_secs_f64(),
        series,
    })
}

/// One connection of the handshake workload: connect, TLS, one Capabilities round trip.
async fn probe_once(
    spec: &LoadSpec,
    connector: Option<&Connector>,
    attempt: usize,
    probe: &Bytes,
) -> Result<()> {
    let tcp = tcp_connect(spec.addr, spec.source(attempt)).await?;
    let stream = match connector {
        Some(tls) => tls_handshake(tcp, tls).await?,
        None => BenchStream::Plain(tcp),
    };
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(256),
    };
    conn.stream.write_all(probe).await?;
    conn.stream.flush().await?;
    let mut codec = FrameCodec::new(MAX_FRAME);
    let frame = conn.read_frame(&mut codec).await?;
    if frame.protocol_id != protocol_id::CAPABILITIES {
        bail!("unexpected answer on protocol {}", frame.protocol_id);
    }
    // A clean close (TLS close_notify, then FIN), so the server sees an orderly end rather
    // than a lost connection.
    conn.stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let s: Vec<u64> = shares(10, 3).collect();
        assert_eq!(s, vec![4, 3, 3]);
        assert_eq!(shares(2, 4).sum::<u64>(), 2);
    }

    #[test]
    fn parses_pong_lines() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&b"+PONG\r\n-ERR x\r\n+PO"[..]);
        assert!(matches!(
            parse(Answer::Pong, &mut codec, &mut buf),
            Ok(Some(Parsed::Answer))
        ));
        assert!(matches!(
            parse(Answer::Pong, &mut codec, &mut buf),
            Ok(Some(Parsed::ErrorAnswer))
        ));
        assert!(matches!(
            parse(Answer::Pong, &mut codec, &mut buf),
            Ok(None)
        ));
    }
}
