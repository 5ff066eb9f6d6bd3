//! The server side of one connection: framing, the auth gate, dispatch and deadlines.
//!
//! Frames are read and handled one at a time, so a session's packets are processed in arrival
//! order. Writing happens in a separate task (`outbound`), so a slow handler never stops
//! queued replies from leaving, and a peer that does not read cannot stall the reader forever.

use super::outbound::{self, WriterOptions};
use super::{CloseReason, Session};
use crate::protocol::{HandlerError, ProtocolHandler, ProtocolSet};
use crate::server::gate::Gatekeeper;
use crate::server::Limits;
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::{protocol_id, Frame, FrameCodec, FrameError, Message};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_util::codec::FramedRead;

/// What every session of a server shares.
pub(crate) struct DriverContext {
    /// Frame sizes, deadlines, queue depth.
    pub limits: Limits,
    /// Log every packet in hex.
    pub log_packets: bool,
    /// The protocols this server speaks.
    pub protocols: ProtocolSet,
    /// Failed-login limits and penalties, pre-login connection slots.
    pub gate: Arc<Gatekeeper>,
}

/// Runs a session until it closes and returns why it closed. `accepted` is when the TCP
/// connection was accepted: the authentication deadline counts from then.
pub(crate) async fn drive<S>(
    stream: S,
    session: Session,
    queue: mpsc::Receiver<Frame>,
    ctx: &DriverContext,
    accepted: Instant,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    session.attach_gate(ctx.gate.clone());
    let (reader, writer) = tokio::io::split(stream);
    let writer = tokio::spawn(outbound::write_loop(
        writer,
        queue,
        session.clone(),
        WriterOptions {
            write_timeout: ctx.limits.write_timeout,
            log_packets: ctx.log_packets,
        },
    ));
    let mut frames = FramedRead::new(
        reader,
        FrameCodec::new(ctx.limits.max_frame_unauthenticated),
    );
    let mut handlers: HashMap<u16, Box<dyn ProtocolHandler>> = HashMap::new();
    if session.is_authenticated() {
        // Logged in before the first frame (client certificate).
        on_login(ctx, &session, &mut handlers, frames.decoder_mut());
    }
    // Counted from accept, so a slow TLS handshake does not extend it.
    let auth_deadline = tokio::time::sleep_until(accepted + ctx.limits.auth_timeout);
    let idle = sleep(ctx.limits.idle_timeout);
    tokio::pin!(auth_deadline, idle);

    loop {
        tokio::select! {
            biased;
            () = session.closed() => break,
            () = &mut auth_deadline, if !session.is_authenticated() => {
                session.close(CloseReason::AuthTimeout);
            }
            () = &mut idle => session.close(CloseReason::Idle),
            next = frames.next() => match next {
                None => session.close(CloseReason::PeerClosed),
                Some(Err(FrameError::Io(e))) => session.close(CloseReason::Io(e.to_string())),
                Some(Err(e)) => {
                    tracing::warn!(session = session.id(), peer = %session.peer(), error = %e, "framing violation");
                    session.close(CloseReason::ProtocolError(e.to_string()));
                }
                Some(Ok(frame)) => {
                    idle.as_mut().reset(Instant::now() + ctx.limits.idle_timeout);
                    if ctx.log_packets {
                        log_inbound(&frame);
                    }
                    let was_authenticated = session.is_authenticated();
                    dispatch(ctx, &session, &mut handlers, frame).await;
                    if !was_authenticated && session.is_authenticated() {
                        on_login(ctx, &session, &mut handlers, frames.decoder_mut());
                    } else if !session.is_authenticated()
                        && session.auth_failures() >= ctx.gate.max_auth_failures()
                    {
                        // Here, not in the login protocols, so that every protocol gets the
                        // limit; the denial is already queued and is written before the close.
                        session.close(CloseReason::AuthFailures);
                    }
                }
            },
        }
    }
    drop(handlers);
    // The writer drains what was queued, bounded by the write deadline, then ends.
    let _ = writer.await;
    session.close_reason().unwrap_or(CloseReason::Local)
}

/// What changes once a session authenticates: the larger frame limit, and the protocols the
/// server starts itself.
fn on_login(
    ctx: &DriverContext,
    session: &Session,
    handlers: &mut HashMap<u16, Box<dyn ProtocolHandler>>,
    codec: &mut FrameCodec,
) {
    // The session no longer counts toward the pre-login caps.
    ctx.gate.logged_in(session.id());
    codec.set_max_payload(ctx.limits.max_frame_authenticated);
    for protocol in ctx.protocols.started_on_login() {
        handlers
            .entry(protocol.id())
            .or_insert_with(|| protocol.new_handler(session));
    }
}

/// Routes one frame: Capabilities to the stack, everything else through the auth gate to its
/// protocol's handler, created on first use.
async fn dispatch(
    ctx: &DriverContext,
    session: &Session,
    handlers: &mut HashMap<u16, Box<dyn ProtocolHandler>>,
    frame: Frame,
) {
    let id = frame.protocol_id;
    if id == protocol_id::CAPABILITIES {
        return capabilities(ctx, session, handlers, frame.body).await;
    }
    let Some(protocol) = ctx.protocols.get(id) else {
        return refuse(session, id, format!("Protocol {id} is not supported.")).await;
    };
    if protocol.requires_auth() && !session.is_authenticated() {
        return refuse(session, id, "Not authenticated.".into()).await;
    }
    if let Some(role) = protocol.required_role() {
        if !session.user().is_some_and(|u| u.has_role(role)) {
            return refuse(session, id, format!("Requires role {role}.")).await;
        }
    }
    let handler = handlers
        .entry(id)
        .or_insert_with(|| protocol.new_handler(session));
    match handler.on_packet(session, frame.body).await {
        Ok(()) | Err(HandlerError::Closed) => {}
        Err(e) => {
            tracing::debug!(session = session.id(), protocol = protocol.name(), error = ?e, "handler failed");
            refuse(session, id, e.to_string()).await;
        }
    }
}

async fn capabilities(
    ctx: &DriverContext,
    session: &Session,
    handlers: &mut HashMap<u16, Box<dyn ProtocolHandler>>,
    body: Bytes,
) {
    match CapabilitiesMessage::decode(&body) {
        Ok(CapabilitiesMessage::GetProtocolIds) => {
            let ids = CapabilitiesMessage::ProtocolIds(ctx.protocols.ids());
            let _ = session.send_message(&ids).await;
        }
        Ok(CapabilitiesMessage::ProtocolIds(ids)) => {
            tracing::debug!(session = session.id(), ?ids, "peer announced its protocols");
        }
        Ok(CapabilitiesMessage::Error {
            protocol_id,
            message,
        }) => match handlers.get_mut(&protocol_id) {
            Some(handler) => handler.on_error(session, &message).await,
            None => {
                tracing::debug!(
                    session = session.id(),
                    protocol_id,
                    message,
                    "peer error for an idle protocol"
                );
            }
        },
        Err(e) => {
            refuse(
                session,
                protocol_id::CAPABILITIES,
                format!("malformed packet: {e}"),
            )
            .await
        }
    }
}

/// Answers a packet with a Capabilities ERROR naming its protocol.
async fn refuse(session: &Session, protocol_id: u16, message: String) {
    let error = CapabilitiesMessage::Error {
        protocol_id,
        message,
    };
    let _ = session.send_message(&error).await;
}

fn log_inbound(frame: &Frame) {
    match frame.to_bytes() {
        Ok(bytes) => {
            tracing::info!(direction = "in", protocol_id = frame.protocol_id, bytes = %hex::encode(bytes), "packet")
        }
        Err(e) => {
            tracing::info!(direction = "in", protocol_id = frame.protocol_id, error = %e, "packet")
        }
    }
}
