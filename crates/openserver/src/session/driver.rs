//! The server side of one connection, on top of the [engine](super::engine): the auth gate,
//! dispatch to protocol handlers, logins.
//!
//! Frames are handled one at a time, so a session's packets are processed in arrival order.
//! While a handler waits, the engine keeps writing what is queued, so a slow handler never
//! stops replies or pushes from leaving, and a peer that does not read meets the write
//! deadline.

use super::engine::{Engine, EngineOptions};
use super::{CloseReason, Session};
use crate::protocol::{HandlerError, Protocol, ProtocolHandler, ProtocolSet, TryPacket};
use crate::server::events::{EventBus, SessionEvent};
use crate::server::gate::Gatekeeper;
use crate::server::metrics::{ServerMetrics, SessionGauge, SessionState};
use crate::server::Limits;
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::{protocol_id, Frame, FrameCodec, Message};
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// What every session of a server shares. (The limits are not here: each session gets its
/// own copy, read at accept, so that a reload never changes them under it.)
pub(crate) struct DriverContext {
    /// Log every packet in hex.
    pub log_packets: bool,
    /// The protocols this server speaks.
    pub protocols: ProtocolSet,
    /// Failed-login limits and penalties, pre-login connection slots.
    pub gate: Arc<Gatekeeper>,
    /// Where session events go to subscribers.
    pub events: EventBus,
    /// The server's metrics.
    pub metrics: Arc<ServerMetrics>,
}

/// One protocol's handler on this session.
struct Slot {
    id: u16,
    /// For logs.
    name: &'static str,
    /// The protocol has no role requirement, so a packet may go straight to the handler: the
    /// auth gate was passed when it was created, and a session never loses its login.
    direct: bool,
    handler: Box<dyn ProtocolHandler>,
}

/// The handlers of one session's protocols: a handful, so a vector beats a map.
#[derive(Default)]
struct Handlers(Vec<Slot>);

impl Handlers {
    fn position(&self, id: u16) -> Option<usize> {
        self.0.iter().position(|slot| slot.id == id)
    }

    fn get_mut(&mut self, id: u16) -> Option<&mut Box<dyn ProtocolHandler>> {
        let at = self.position(id)?;
        Some(&mut self.0[at].handler)
    }

    /// The slot of `protocol`'s handler, created (and recorded on the session) on first use.
    fn get_or_start(&mut self, protocol: &dyn Protocol, session: &Session) -> usize {
        let id = protocol.id();
        self.position(id).unwrap_or_else(|| {
            session.record_protocol(id);
            self.0.push(Slot {
                id,
                name: protocol.name(),
                direct: protocol.required_role().is_none(),
                handler: protocol.new_handler(session),
            });
            self.0.len() - 1
        })
    }

    /// The slot of `id` if its packets need no checks.
    fn direct(&self, id: u16) -> Option<usize> {
        self.position(id).filter(|at| self.0[*at].direct)
    }
}

/// Runs a session until it closes and returns why it closed. `limits` are the session's for
/// its whole life. `accepted` is when the TCP connection was accepted: the authentication
/// deadline counts from then.
pub(crate) async fn drive<S>(
    stream: S,
    session: Session,
    ctx: &DriverContext,
    limits: &Limits,
    accepted: Instant,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    session.attach_gate(ctx.gate.clone());
    session.attach_metrics(ctx.metrics.clone());
    let mut gauge = SessionGauge::new(ctx.metrics.clone(), SessionState::Authenticating);
    let mut engine = Engine::new(
        stream,
        session.clone(),
        EngineOptions {
            max_frame: limits.max_frame_unauthenticated,
            write_timeout: limits.write_timeout,
            idle_timeout: Some(limits.idle_timeout),
            // Counted from accept, so a slow TLS handshake does not extend it.
            auth_deadline: Some(accepted + limits.auth_timeout),
        },
    );
    let mut handlers = Handlers::default();
    if session.is_authenticated() {
        // Logged in before the first frame (client certificate).
        on_login(ctx, limits, &session, &mut handlers, engine.codec_mut());
        report_login(ctx, &session, &mut gauge, CERTIFICATE_LOGIN);
    }
    while let Some(frame) = engine.next_frame().await {
        let id = frame.protocol_id;
        ctx.metrics.protocol(id).received(frame.wire_len());
        if ctx.log_packets {
            log_inbound(&frame);
        }
        let was_authenticated = session.is_authenticated();
        let failures = session.auth_failures();
        // Straight to a handler that already passed the checks; the stack routes the rest.
        let route = match handlers.direct(id) {
            Some(at) => Route::Handler(at),
            None => route(ctx, &session, &mut handlers, id),
        };
        match route {
            Route::Handler(at) => {
                let Slot { name, handler, .. } = &mut handlers.0[at];
                let handled = match handler.try_packet(&session, frame.body) {
                    TryPacket::Done(handled) => handled,
                    TryPacket::Wait(body) => engine.run(handler.on_packet(&session, body)).await,
                };
                ctx.metrics.protocol(id).handled(engine.lap());
                match handled {
                    Ok(()) | Err(HandlerError::Closed) => {}
                    Err(e) => {
                        tracing::debug!(session = session.id(), protocol = *name, error = ?e, "handler failed");
                        // Boxed, as every rare path here: the session's task stays small.
                        engine
                            .run(Box::pin(refuse(&session, id, e.to_string())))
                            .await;
                    }
                }
            }
            Route::Capabilities => {
                let answered = capabilities(ctx, &session, &mut handlers, frame.body);
                engine.run(Box::pin(answered)).await;
                engine.lap();
            }
            Route::Refuse(message) => {
                engine.run(Box::pin(refuse(&session, id, message))).await;
                engine.lap();
            }
        }
        report_denials(ctx, &session, id, failures);
        if !was_authenticated && session.is_authenticated() {
            on_login(ctx, limits, &session, &mut handlers, engine.codec_mut());
            report_login(ctx, &session, &mut gauge, protocol_name(ctx, id));
        } else if !session.is_authenticated()
            && session.auth_failures() >= ctx.gate.max_auth_failures()
        {
            // Here, not in the login protocols, so that every protocol gets the limit; the
            // denial is already queued and is written before the close.
            session.close(CloseReason::AuthFailures);
        }
    }
    drop(handlers);
    // What was queued (a QUIT, a last answer) still goes out, within the write deadline.
    engine.finish().await;
    session.close_reason().unwrap_or(CloseReason::Local)
}

/// What changes once a session authenticates: the larger frame limit, and the protocols the
/// server starts itself.
fn on_login(
    ctx: &DriverContext,
    limits: &Limits,
    session: &Session,
    handlers: &mut Handlers,
    codec: &mut FrameCodec,
) {
    // The session no longer counts toward the pre-login caps.
    ctx.gate.logged_in(session.id());
    codec.set_max_payload(limits.max_frame_authenticated);
    for protocol in ctx.protocols.started_on_login() {
        handlers.get_or_start(protocol.as_ref(), session);
    }
}

/// Where one frame goes.
enum Route {
    /// To the handler in this slot.
    Handler(usize),
    /// To the stack's own Capabilities protocol.
    Capabilities,
    /// Nowhere: answered with a Capabilities ERROR carrying this text.
    Refuse(String),
}

/// Routes a frame of protocol `id`: Capabilities to the stack, everything else through the
/// auth gate and the role check to its protocol's handler (started on first use).
fn route(ctx: &DriverContext, session: &Session, handlers: &mut Handlers, id: u16) -> Route {
    if id == protocol_id::CAPABILITIES {
        return Route::Capabilities;
    }
    let Some(protocol) = ctx.protocols.get(id) else {
        return Route::Refuse(format!("Protocol {id} is not supported."));
    };
    if protocol.requires_auth() && !session.is_authenticated() {
        return Route::Refuse("Not authenticated.".into());
    }
    if let Some(role) = protocol.required_role() {
        if !session.user().is_some_and(|u| u.has_role(role)) {
            return Route::Refuse(format!("Requires role {role}."));
        }
    }
    Route::Handler(handlers.get_or_start(protocol.as_ref(), session))
}

async fn capabilities(
    ctx: &DriverContext,
    session: &Session,
    handlers: &mut Handlers,
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
        }) => match handlers.get_mut(protocol_id) {
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

/// The `protocol` of certificate logins in events and metrics.
const CERTIFICATE_LOGIN: &str = "client_certificate";

/// The name of protocol `id`, for events and metrics about logins through it.
fn protocol_name(ctx: &DriverContext, id: u16) -> &'static str {
    ctx.protocols.get(id).map_or("unknown", |p| p.name())
}

/// Reports a login through `protocol`: gauges, metrics and the Authenticated event. The one
/// place for it, so login protocols only call `Session::authenticate`.
fn report_login(
    ctx: &DriverContext,
    session: &Session,
    gauge: &mut SessionGauge,
    protocol: &'static str,
) {
    gauge.enter(SessionState::Authenticated);
    ctx.metrics.auth_succeeded(protocol);
    if !ctx.events.is_observed() {
        return;
    }
    if let Some(user) = session.user() {
        ctx.events.publish(|| SessionEvent::Authenticated {
            id: session.id(),
            peer: session.peer(),
            user,
            protocol,
        });
    }
}

/// Reports the logins protocol `id` denied while handling one packet (the session's failure
/// count went up from `before`): metrics and AuthFailed events. Login protocols only record
/// the denial on the session.
fn report_denials(ctx: &DriverContext, session: &Session, id: u16, before: u32) {
    let denied = session.auth_failures().saturating_sub(before);
    if denied == 0 {
        return;
    }
    let protocol = protocol_name(ctx, id);
    let user = session.take_denied_login().unwrap_or_default();
    for _ in 0..denied {
        ctx.metrics.auth_failed(protocol);
        ctx.events.publish(|| SessionEvent::AuthFailed {
            id: session.id(),
            peer: session.peer(),
            user: user.clone(),
            protocol,
        });
    }
}
