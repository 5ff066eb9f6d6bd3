//! The writer task: drains a session's bounded queue onto the socket.
//!
//! Frames queued together go out in one write and one flush, so a burst of replies or pushes
//! costs one syscall, not one each. A write that does not complete within the deadline means
//! the peer stopped reading: the session closes as a slow consumer instead of buffering more.

use super::{CloseReason, Session};
use crate::server::metrics::ServerMetrics;
use crate::wire::Frame;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Stop gathering more frames into one write past this many bytes.
const BATCH_BYTES: usize = 64 * 1024;

/// How the writer behaves; copied from the server or client configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterOptions {
    /// How long one batch may take to be accepted by the socket.
    pub write_timeout: Duration,
    /// Log every outbound frame in hex.
    pub log_packets: bool,
}

/// Runs until the session closes (after writing what was queued) or the socket fails.
pub(crate) async fn write_loop<W>(
    mut writer: W,
    mut queue: mpsc::Receiver<Frame>,
    session: Session,
    options: WriterOptions,
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Server sessions count what they send; the driver attached the metrics before this task.
    let metrics = session.metrics().cloned();
    let metrics = metrics.as_deref();
    loop {
        let first = tokio::select! {
            biased;
            frame = queue.recv() => frame,
            () = session.closed() => None,
        };
        let Some(first) = first else { break };
        if let Err(reason) = encode(&mut buf, first, &options, metrics) {
            session.close(reason);
            break;
        }
        while buf.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    if let Err(reason) = encode(&mut buf, frame, &options, metrics) {
                        session.close(reason);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if let Err(reason) = flush(&mut writer, &mut buf, options.write_timeout).await {
            session.close(reason);
            return;
        }
    }
    // Closing: what was queued before the close (a QUIT, a last answer) still goes out.
    while let Ok(frame) = queue.try_recv() {
        if encode(&mut buf, frame, &options, metrics).is_err() {
            break;
        }
    }
    if flush(&mut writer, &mut buf, options.write_timeout)
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(options.write_timeout, writer.shutdown()).await;
    }
}

fn encode(
    buf: &mut BytesMut,
    frame: Frame,
    options: &WriterOptions,
    metrics: Option<&ServerMetrics>,
) -> Result<(), CloseReason> {
    let start = buf.len();
    frame
        .encode_into(buf)
        .map_err(|e| CloseReason::ProtocolError(e.to_string()))?;
    if let Some(metrics) = metrics {
        metrics.protocol(frame.protocol_id).sent(buf.len() - start);
    }
    if options.log_packets {
        tracing::info!(
            direction = "out",
            protocol_id = frame.protocol_id,
            bytes = %hex::encode(&buf[start..]),
            "packet"
        );
    }
    Ok(())
}

async fn flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut BytesMut,
    deadline: Duration,
) -> Result<(), CloseReason> {
    if buf.is_empty() {
        return Ok(());
    }
    let write = async {
        writer.write_all(buf).await?;
        writer.flush().await
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => {
            buf.clear();
            // Keep a burst's large buffer from pinning memory on an idle session.
            if buf.capacity() > 4 * BATCH_BYTES {
                *buf = BytesMut::with_capacity(8 * 1024);
            }
            Ok(())
        }
        Ok(Err(e)) => Err(CloseReason::Io(e.to_string())),
        Err(_) => Err(CloseReason::SlowConsumer),
    }
}
