//! Holding idle sessions: what one process (the bench itself or a worker) does with its
//! share of an idle run. Both `idle` (which runs the measurement) and `worker` (which holds a
//! share in another process) use it; it imports neither, so the arrows go one way.

use crate::load::{Conn, LoadSpec, SetupReport};
use crate::stats::{HistPairs, Recorder};
use crate::stream::BenchStream;
use bytes::BytesMut;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::{protocol_id, FrameCodec, Message};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::codec::Decoder as _;
use tokio_util::sync::CancellationToken;

/// One process's share of an idle hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleSpec {
    /// Server, login, TLS, sources and connect concurrency (the workload is ignored).
    pub load: LoadSpec,
    /// How often each connection sends KEEP_ALIVE; also the server's interval.
    pub keep_alive_interval: Duration,
}

/// What one process saw during the hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleReport {
    /// Connection setup.
    pub setup: SetupReport,
    /// How long the connections were held.
    pub held_secs: f64,
    /// Connections that closed during the hold.
    pub lost: u64,
    /// KEEP_ALIVEs received from the server.
    pub heartbeats: u64,
    /// Lateness of the server's heartbeats (gap less the interval).
    pub heartbeat_late: HistPairs,
}

impl IdleReport {
    pub(crate) fn merge(&self, other: &IdleReport) -> IdleReport {
        IdleReport {
            setup: self.setup.merge(&other.setup),
            held_secs: self.held_secs.max(other.held_secs),
            lost: self.lost + other.lost,
            heartbeats: self.heartbeats + other.heartbeats,
            heartbeat_late: self.heartbeat_late.merge(&other.heartbeat_late),
        }
    }
}

/// Holds `conns` with keep-alive until `stop`, then closes them.
pub(crate) async fn hold(
    spec: &IdleSpec,
    conns: Vec<Conn>,
    setup: SetupReport,
    stop: CancellationToken,
) -> IdleReport {
    let recorder = Arc::new(Recorder::default());
    let start = Instant::now();
    let n = conns.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        // Spread the client heartbeats over the interval instead of sending N at once.
        let offset = spec.keep_alive_interval.mul_f64(i as f64 / n.max(1) as f64);
        let interval = spec.keep_alive_interval;
        let rec = recorder.local(i);
        let stop = stop.clone();
        tasks.spawn(async move {
            let Conn { stream, rbuf } = conn;
            // The login buffer is large; an idle connection needs little.
            let rbuf = if rbuf.is_empty() {
                BytesMut::with_capacity(64)
            } else {
                rbuf
            };
            match stream {
                BenchStream::Plain(mut tcp) => {
                    let (r, w) = tcp.split();
                    hold_one(r, w, rbuf, interval, offset, rec, stop).await;
                }
                BenchStream::Tls(tls) => {
                    let (r, w) = tokio::io::split(*tls);
                    hold_one(r, w, rbuf, interval, offset, rec, stop).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    IdleReport {
        setup,
        held_secs: start.elapsed().as_secs_f64(),
        lost: recorder.lost(),
        heartbeats: recorder.completed(),
        heartbeat_late: recorder.total(),
    }
}

async fn hold_one<R, W>(
    mut reader: R,
    mut writer: W,
    mut rbuf: BytesMut,
    interval: Duration,
    offset: Duration,
    mut rec: crate::stats::LocalRecorder,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let beat = KeepAliveMessage::KeepAlive
        .to_frame()
        .to_bytes()
        .unwrap_or_default();
    // The server starts its heartbeat on the first KEEP_ALIVE it gets.
    if writer.write_all(&beat).await.is_err() || writer.flush().await.is_err() {
        rec.lost();
        return;
    }
    let mut codec = FrameCodec::new(64 * 1024);
    let mut ticker = tokio::time::interval_at(Instant::now() + offset + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                if writer.write_all(&beat).await.is_err() || writer.flush().await.is_err() {
                    rec.lost();
                    return;
                }
            }
            read = reader.read_buf(&mut rbuf) => {
                let now = Instant::now();
                if !matches!(read, Ok(n) if n > 0) {
                    rec.lost();
                    return;
                }
                while let Ok(Some(frame)) = codec.decode(&mut rbuf) {
                    if frame.protocol_id == protocol_id::KEEP_ALIVE {
                        if let Some(prev) = last_beat {
                            let late = (now - prev).saturating_sub(interval);
                            rec.record(late, now.into_std());
                        }
                        last_beat = Some(now);
                    }
                }
            }
        }
    }
    let _ = writer.shutdown().await;
}
